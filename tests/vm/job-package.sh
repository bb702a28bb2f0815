# job-package.sh - one boot (1024 MiB): install, security, a MemoryMax= kill, a group kill, two
# lost kill lines (journald stopped, the kernel's buffer overrun), a podman container's group kill, purge.
. ./lib.sh
log "system"
{ echo "kernel=$(uname -r)"; echo "debian=$(cat /etc/debian_version)"; echo "pid1=$(cat /proc/1/comm)"
  echo "cgroupfs=$(stat -fc %T /sys/fs/cgroup)"; systemctl --version | head -1 | sed 's/^/systemd=/'; } > $OUT/facts

log "install"
install_deb "$DEB" apt-install.txt
wait_until 60 active
systemctl is-active oom-journal > $OUT/is-active
systemd-analyze security --no-pager oom-journal > $OUT/security.txt 2>&1

log "MemoryMax=40M"
victim oomj-memmax.service
systemctl show oomj-memmax.service -p Result > $OUT/memmax-result
systemctl reset-failed oomj-memmax.service 2>/dev/null

log "group kill"
# Three members with distinct argv; each allocates 25 MiB only once /run/oomj-go exists (so all
# three live, and the daemon has seen their command lines, before the kill), then sleeps.
systemd-run --unit=oomj-group.service -p MemoryMax=80M -p OOMPolicy=kill sh -c '
for i in 1 2 3; do python3 -c "$0" --member=$i "--token=$1" & done; wait' \
    "import os, time; [time.sleep(0.1) for _ in iter(lambda: os.path.exists('/run/oomj-go'), True)]; b = b'x' * (25 << 20); time.sleep(120)" \
    "$TOKEN" > $OUT/group.run 2>&1
G=/sys/fs/cgroup/system.slice/oomj-group.service
wait_until 30 sh -c "[ \$(wc -l < $G/cgroup.procs) -ge 4 ]"
sleep 2
cat $G/memory.oom.group > $OUT/group-oom-group
cat $G/cgroup.procs > $OUT/group-pids
python3 -c '
import json, sys
argv = lambda p: open(f"/proc/{p}/cmdline", "rb").read().decode().split("\0")[:-1]
print(json.dumps({p: argv(p) for p in sys.argv[1:]}))' $(cat $G/cgroup.procs) > $OUT/group-members.json
touch /run/oomj-go
wait_until 60 sh -c '! systemctl -q is-active oomj-group.service'
sleep 3  # the daemon records the members one by one
systemctl show oomj-group.service -p Result > $OUT/group-result
unit_journal oomj-group.service
systemctl reset-failed oomj-group.service 2>/dev/null

log "lost: journald stopped, the kernel's buffer overrun"
# Issue 16 on cgroup v2. A cgroup of the job's own under the root (memory.max 48 MiB), a young
# victim (-S: it allocates at once) with a long argv, journald stopped while it is killed and
# 1 MiB is written into /dev/kmsg: journald misses the kill line ("Missed N kernel messages").
L=/sys/fs/cgroup/oomj-lost
mkdir $L && echo $((48 << 20)) > $L/memory.max
J=$(systemctl show -p MainPID --value systemd-journald)
sysctl -n kernel.printk_devkmsg > $OUT/devkmsg-before
devkmsg_on
stop_pid $J
sh -c 'echo $$ > "$0/cgroup.procs"; exec "$@"' $L /usr/bin/python3 -S -c "b = b'x' * (256 << 20)" \
    "young-$TOKEN" "$(printf 'y%.0s' $(seq 300))" > $OUT/lost-victim.run 2>&1
echo "rc=$?" >> $OUT/lost-victim.run
overrun "$TOKEN"
sleep 4
restore_stopped
sysctl -n kernel.printk_devkmsg > $OUT/devkmsg-after
grep '^oom_kill ' $L/memory.events > $OUT/lost-memory-events
wait_until 60 sh -c "journalctl -o cat MESSAGE_ID=$MESSAGE_ID OOM_CGROUP=/oomj-lost | grep -q ."
sleep 2  # the journal's own copy of the kill line is gone; a second entry would come by now

log "lost: the daemon stopped too; systemd removes the unit's cgroup"
# The victim's exec is read first; it allocates only once /run/oomj-lost2-go exists, made after
# journald and the daemon were stopped (with a fixed sleep instead, under TCG it was sometimes
# killed before the stop). The kernel kills it, systemd (PID 1: its journal writes do not block)
# removes the unit's cgroup, and the buffer is overrun: when the daemon runs again only the
# counters and the connector's SIGKILL exit tell of the kill; the cgroup's own memory.events is gone.
systemd-run --unit=oomj-lost2.service -p MemoryMax=48M /usr/bin/python3 -S -c \
    "import os, time; [time.sleep(0.05) for _ in iter(lambda: os.path.exists('/run/oomj-lost2-go'), True)]; b = b'x' * (256 << 20)" \
    "lost2-$TOKEN" "an argument with spaces" > $OUT/lost2.run 2>&1
sleep 1.5
D=$(systemctl show -p MainPID --value oom-journal)
grep '^oom_kill ' /proc/vmstat > $OUT/lost2-vmstat-before
systemctl show oom-journal -p StatusText > $OUT/lost2-status-before
devkmsg_on
stop_pid $J
stop_pid $D
touch /run/oomj-lost2-go
wait_until 60 sh -c '! systemctl -q is-active oomj-lost2.service'
systemctl show oomj-lost2.service -p Result > $OUT/lost2-result
wait_until 10 sh -c '[ ! -d /sys/fs/cgroup/system.slice/oomj-lost2.service ]' && echo gone > $OUT/lost2-cgroup
grep '^oom_kill ' /proc/vmstat > $OUT/lost2-vmstat-after
overrun "$TOKEN"
restore_stopped
wait_until 60 has_entry oomj-lost2.service
sleep 2
systemctl show oom-journal -p StatusText > $OUT/lost2-status-after
rm -f /run/oomj-lost2-go
unit_journal oomj-lost2.service
systemctl reset-failed oomj-lost2.service 2>/dev/null
rmdir $L

log "podman: a container's memory.oom.group kill"
podman_group_kill "oomj-web-$(echo $TOKEN | cut -c1-8)"

log "purge"
systemctl is-active oom-journal > $OUT/is-active-before-purge
apt purge -y oom-journal > $OUT/apt-purge.txt 2>&1; echo "rc=$?" >> $OUT/apt-purge.txt
{ for p in /etc/oom-journal /var/lib/oom-journal /lib/systemd/system/oom-journal.service \
           /etc/systemd/system/multi-user.target.wants/oom-journal.service /usr/bin/oom-journal \
           /usr/lib/systemd/catalog/oom-journal.catalog /usr/lib/python3/dist-packages/oom_journal; do
      [ -e "$p" ] && echo "$p"; done
  find / -xdev \( -name '*oom-journal*' -o -name '*oom_journal*' \) ; } > $OUT/purge-left 2>&1
dpkg-query -W -f '${Status}\n' oom-journal > $OUT/purge-dpkg 2>&1
systemctl is-active oom-journal > $OUT/is-active-after-purge
log "done"
