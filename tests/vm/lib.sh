# lib.sh - sourced by the jobs (tests/vm/job-*.sh) inside the guest, in /mnt/job. params.sh (written
# by tests/test_vm.py) sets DEB, OLD_DEB, SLACK_PORT, SLACK_PATH; victim.argv is the MemoryMax=
# victim's argv, NUL-separated (xargs -0 passes it exactly: spaces, non-ASCII).
set -u
. ./params.sh
OUT=/mnt/job/out
MESSAGE_ID=5ce425e9fe7448d7b3e56b5a76b5911a
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

log() { echo "[$(cut -d' ' -f1 /proc/uptime)] $*"; }

# wait_until SECONDS CMD...: CMD succeeds within SECONDS (polled every 0.2 s), else 1
wait_until() {
    t=$1; shift; n=0
    until "$@"; do n=$((n+1)); [ $n -ge $((t*5)) ] && { log "timeout ($t s): $*"; return 1; }; sleep 0.2; done
}

active() { [ "$(systemctl is-active oom-journal)" = active ]; }

# entries UNIT: how many of oom-journal's entries `journalctl -u UNIT` shows
entries() { journalctl -u "$1" MESSAGE_ID=$MESSAGE_ID -o cat --no-pager | grep -c . ; }
has_entry() { [ "$(entries "$1")" -ge "${2:-1}" ]; }

install_deb() {  # FILE NAME: apt install, as a Debian 12 user does; its output in out/NAME
    apt install -y "./$1" > $OUT/$2 2>&1; echo "rc=$?" >> $OUT/$2
}

# victim UNIT: the MemoryMax=40M unit whose python3 the kernel OOM-kills; waits for its entry
victim() {
    xargs -0 -a victim.argv systemd-run --wait --unit="$1" -p MemoryMax=40M -- > $OUT/$1.run 2>&1
    wait_until 60 has_entry "$1"
    sleep 1  # a duplicate would come right behind
    unit_journal "$1"
}

unit_journal() { journalctl -u "$1" -o json --no-pager > $OUT/$1.json; }  # what `journalctl -u` shows

# state NAME: state.sqlite3's tables (recorded, position, outbox) as JSON in out/NAME
state() {
    python3 - /var/lib/oom-journal/state.sqlite3 > $OUT/$1 2>&1 <<'PY'
import json, sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
db.row_factory = sqlite3.Row
print(json.dumps({t: [dict(r) for r in db.execute(f"SELECT * FROM {t} ORDER BY 1")]
                  for t in ("recorded", "position", "outbox")}, default=str))
PY
}

# standin SECONDS COUNT NAME: the Slack stand-in on 127.0.0.1:$SLACK_PORT until it accepted COUNT
# posts (then 5 s more: a duplicate would come then), at most SECONDS; what it received in out/NAME
standin() {
    python3 slack_guest.py "$SLACK_PORT" "$SLACK_PATH" "$1" "$2" $OUT/$3 > $OUT/$3.log 2>&1
}

# --- issue 16 in the guest: journald (and the daemon) stopped, the kernel's log buffer overrun ---
# Whatever happens (a failing command, set -u), at the job's exit every process stopped here is
# continued and kernel.printk_devkmsg restored: else vmjob's `journalctl --sync` would hang.
STOPPED=""
DEVKMSG_SAVED=""
restore_stopped() {
    for p in $STOPPED; do kill -CONT "$p" 2>/dev/null; done
    STOPPED=""
    [ -n "$DEVKMSG_SAVED" ] && sysctl -q -w kernel.printk_devkmsg="$DEVKMSG_SAVED"
    DEVKMSG_SAVED=""
}
trap restore_stopped EXIT
stop_pid() { kill -STOP "$1" && STOPPED="$STOPPED $1"; }
devkmsg_on() { DEVKMSG_SAVED=$(sysctl -n kernel.printk_devkmsg); sysctl -q -w kernel.printk_devkmsg=on; }
# overrun TOKEN: 1 MiB into /dev/kmsg, far more than the kernel's buffer (Debian's
# CONFIG_LOG_BUF_SHIFT=17: 128 KiB). Level 7 (debug): below console_loglevel, so not copied to
# the emulated serial console (1 MiB there is slow under TCG).
overrun() {
    python3 -S -c '
import os, sys
line = ("<7>oomj-test-overrun %s " % sys.argv[1]).encode() + b"o" * 900 + b"\n"
fd = os.open("/dev/kmsg", os.O_WRONLY)
for _ in range((1 << 20) // len(line) + 1):
    os.write(fd, line)' "$1"
}

# --- issue 13 in the guest: a podman container's memory.oom.group kill ---
# podman_group_kill NAME: a container image made here from the guest's own python3 and sh (the
# guest has no registry; `podman import` so that the container is in containers-storage, whose
# containers.json holds its name: --rootfs would bypass the storage, and the name with it), then a
# container NAME with --memory 48m and memory.oom.group=1 (what kubelet 1.28+ sets on cgroup v2)
# running sh and three python3 members that each allocate 20 MiB once /go/go exists. What it saw
# in out/podman-*.
podman_group_kill() {
    name=$1
    # The image: python3 and sh, their libraries (each by its soname link and the file; /lib and
    # /lib64 are symlinks into /usr on Debian 12, kept as such) and the standard library (less
    # its tests and tools: 36 MiB), as one tar.
    libs=$(for f in /usr/bin/python3.11 /usr/bin/dash; do ldd $f; done \
           | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}' \
           | while read f; do echo "$(realpath "$(dirname "$f")")/$(basename "$f")"; realpath "$f"; done | sort -u | sed 's,^/,,')
    log "podman import"
    P3=usr/lib/python3.11
    R=/var/tmp/oomj-ctr-rootfs
    tar -C / -c --exclude=$P3/test --exclude=$P3/idlelib --exclude=$P3/pydoc_data --exclude=$P3/lib2to3 \
        --exclude="$P3/config-*" --exclude=$P3/ensurepip --exclude=$P3/dist-packages \
        bin lib lib64 usr/lib64 usr/bin/python3 usr/bin/python3.11 usr/bin/sh usr/bin/dash $P3 $libs \
        2> $OUT/podman-tar.err | { mkdir -p $R && tar -C $R -x; }
    # ... unpacked and packed again whole: podman's import wants every parent directory's entry
    # (with the files alone: "processing tar file(no such file or directory)").
    tar -C $R -c . | podman import - localhost/oomj-mini > $OUT/podman-import.txt 2>&1
    rc=$?; echo "rc=$rc" >> $OUT/podman-import.txt
    rm -rf $R
    [ $rc = 0 ] || { log "podman import failed"; return 1; }
    podman --version > $OUT/podman-version 2>&1
    mkdir -p /run/oomj-ctr-go
    log "podman run"
    podman run -d --name "$name" --memory 48m --memory-swap 48m --network none \
        --cgroup-conf memory.oom.group=1 -v /run/oomj-ctr-go:/go localhost/oomj-mini /bin/sh -c '
for i in 1 2 3; do python3 -S -c "$0" --member=$i "--token=$1" & done; wait' \
        "import os, time; [time.sleep(0.1) for _ in iter(lambda: os.path.exists('/go/go'), True)]; b = b'x' * (20 << 20); time.sleep(120)" \
        "$TOKEN" > $OUT/podman-run.txt 2>&1
    rc=$?; echo "rc=$rc" >> $OUT/podman-run.txt
    [ $rc = 0 ] || { log "podman run failed"; podman rmi -f localhost/oomj-mini > /dev/null 2>&1; return 1; }
    podman inspect "$name" > $OUT/podman-inspect.json 2>&1
    P=$(podman inspect -f '{{.State.Pid}}' "$name")
    CG=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/$P/cgroup)
    echo "$CG" > $OUT/podman-cgroup
    # The scope that holds the limit and memory.oom.group (crun may put the processes one below).
    G=$CG; [ -e $G/memory.oom.group ] && [ "$(cat $G/memory.max)" = max ] && G=$(dirname $CG)
    echo "$G" > $OUT/podman-group-cgroup
    cat $G/memory.oom.group > $OUT/podman-oom-group 2>&1
    cat $G/memory.max > $OUT/podman-memory-max 2>&1
    wait_until 60 sh -c "[ \$(cat $CG/cgroup.procs | wc -l) -ge 4 ]"
    sleep 1  # the daemon has read each exec by now (and, at the first, the container's names)
    python3 -c '
import json, sys
argv = lambda p: open(f"/proc/{p}/cmdline", "rb").read().decode().split("\0")[:-1]
print(json.dumps({p: argv(p) for p in sys.argv[1:]}))' $(cat $CG/cgroup.procs) > $OUT/podman-members.json
    cp /var/lib/containers/storage/overlay-containers/containers.json $OUT/podman-containers.json 2>&1
    # The kernel's lines kept off the serial console meanwhile (the journal and dmesg have them
    # all): under TCG a console line costs milliseconds, and the group's scan is slow enough already
    # that the container's PID 1 (sh: the oldest task, killed first) exits and the end of its pid
    # namespace SIGKILLs members the scan has not reached; those were never the kernel's OOM
    # kills. Measured: console on, the kernel killed 2 of the 4 (the victim, sh); quiet, 3 of 4.
    printk=$(cat /proc/sys/kernel/printk)
    dmesg -n 1
    touch /run/oomj-ctr-go/go
    timeout 60 podman wait "$name" > $OUT/podman-wait 2>&1
    echo "$printk" > /proc/sys/kernel/printk
    wait_until 30 sh -c "[ \$(journalctl -o cat MESSAGE_ID=$MESSAGE_ID OOM_CONTAINER_NAME=$name | grep -c .) -ge 2 ]"
    sleep 3  # the daemon records the members one by one
    podman rm -f "$name" > /dev/null 2>&1
    podman rmi -f localhost/oomj-mini > /dev/null 2>&1
    rm -rf /run/oomj-ctr-go
}
