# job-package.sh - one boot (1024 MiB): install, security, a MemoryMax= kill, a group kill, purge.
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
