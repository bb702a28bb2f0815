#!/bin/bash
# build-image.sh DIR MIRROR - builds the Debian 12 VM image of tests/test_vm.py into DIR (which
# must not exist; tests/debian_vm.py builds into a partial directory and renames it when done):
#   DIR/rootfs.img  raw ext4 root file system (mkfs.ext4 -d: no loop mount, no root-only devices)
#   DIR/vmlinuz     Debian's own kernel (linux-image-amd64, 6.1)
#   DIR/initrd.img  a small initramfs-tools initrd (MODULES=list: virtio_pci virtio_blk ext4)
# At the end of every boot the guest runs /usr/local/sbin/vmjob (tests/vm/vmjob): it mounts the
# host's 9p share "job" on /mnt/job, runs /mnt/job/run.sh, copies the journal out, powers off.
# Adapted from the recipe verified on this machine (../shared/VM-E2E.md, vm/build-image.sh).
set -euo pipefail
DIR=${1:?usage: build-image.sh DIR MIRROR}
MIRROR=${2:?usage: build-image.sh DIR MIRROR}
SUITE=bookworm
SIZE=2G
HERE=$(cd "$(dirname "$0")" && pwd)
# Installed: a booting Debian 12 with what the jobs use (python3 for the hogs and the Slack
# stand-in, procps, systemd-oomd and earlyoom for the OOM scenarios, kmod for the 9p modules,
# podman 4.3 for a container's memory.oom.group kill: its Depends only, crun being the first of
# "crun | runc", and containernetworking-plugins for its virtual Depends container-network-stack,
# which debootstrap does not resolve; the container itself runs with --network none).
PKGS=systemd,systemd-sysv,udev,dbus,linux-image-amd64,initramfs-tools,python3,procps,systemd-oomd,earlyoom,kmod,zstd,ca-certificates,podman,containernetworking-plugins
# Downloaded, not installed: the package's Depends (packaging/debian/control) and what they need,
# Recommends included, as `apt install ./oom-journal_*.deb` would fetch them. The guest has no
# network: apt installs them from its cache, and `apt purge` + autoremove removes them again.
DEPENDENCIES="python3-systemd python3-sdnotify python3-requests python3-configargparse"

T0=$(date +%s)
mkdir "$DIR"
ROOT=$DIR/rootdir
debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$ROOT" "$MIRROR"
chroot "$ROOT" apt-get clean   # debootstrap's own .debs: not needed again
chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --download-only $DEPENDENCIES
# ... into a local repository that holds only those .debs (Debian's own files), which becomes the
# guest's one apt source: with all of bookworm's package lists (~60 MB), apt in the guest spent
# ~40 s under TCG before it installed anything; with this one, a few seconds.
mkdir "$ROOT/var/lib/vm-debs"
mv "$ROOT"/var/cache/apt/archives/*.deb "$ROOT/var/lib/vm-debs/"
(cd "$ROOT/var/lib/vm-debs" && dpkg-scanpackages --multiversion . /dev/null > Packages 2>/dev/null)
echo 'deb [trusted=yes] file:/var/lib/vm-debs ./' > "$ROOT/etc/apt/sources.list"
rm -rf "$ROOT"/var/lib/apt/lists/*
chroot "$ROOT" apt-get update -q
T1=$(date +%s)

echo deb12vm > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 deb12vm\n' > "$ROOT/etc/hosts"
echo '/dev/vda / ext4 rw,errors=remount-ro 0 0' > "$ROOT/etc/fstab"
chroot "$ROOT" passwd -d root >/dev/null   # root login on ttyS0 without password (debugging by hand)

# journald: persistent, as Debian 12 keeps it (the reboot scenario reads the previous boot), and
# without rate limits: a test must never lose a line to them.
mkdir -p "$ROOT/var/log/journal" "$ROOT/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=persistent\nRateLimitIntervalSec=0\nRateLimitBurst=0\n' \
    > "$ROOT/etc/systemd/journald.conf.d/vm.conf"

mkdir -p "$ROOT/mnt/job"
install -m 755 "$HERE/vmjob" "$ROOT/usr/local/sbin/vmjob"
cat > "$ROOT/etc/systemd/system/vmjob.service" <<'UNIT'
[Unit]
Description=Run the host-provided job (/mnt/job/run.sh), then power off
After=multi-user.target

[Service]
Type=simple
ExecStart=/usr/local/sbin/vmjob
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
UNIT
systemctl --root="$ROOT" enable vmjob.service
# Nothing a throw-away test VM does not need; earlyoom and oomd are started by the jobs.
systemctl --root="$ROOT" disable earlyoom.service systemd-oomd.service systemd-oomd.socket 2>/dev/null || true
systemctl --root="$ROOT" mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer getty@tty1.service systemd-timesyncd.service 2>/dev/null || true

printf 'virtio_pci\nvirtio_blk\next4\n' > "$ROOT/etc/initramfs-tools/modules"
printf 'MODULES=list\nCOMPRESS=zstd\n' > "$ROOT/etc/initramfs-tools/conf.d/zz-vm.conf"
mount -t proc proc "$ROOT/proc"
chroot "$ROOT" update-initramfs -u -k all || { umount "$ROOT/proc"; exit 1; }
umount "$ROOT/proc"
rm -rf "$ROOT"/var/cache/debconf/*-old

KVER=$(ls "$ROOT/lib/modules" | sort -V | tail -1)
cp "$ROOT/boot/vmlinuz-$KVER" "$DIR/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$DIR/initrd.img"
echo "$KVER" > "$DIR/kernel-version"
mkfs.ext4 -q -F -L debroot -d "$ROOT" "$DIR/rootfs.img" "$SIZE"
rm -rf "$ROOT"
T2=$(date +%s)
echo "built $DIR: kernel $KVER; debootstrap and downloads $((T1-T0)) s, total $((T2-T0)) s"
