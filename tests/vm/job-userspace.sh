# job-userspace.sh - one boot (1024 MiB): the userspace OOM killers, real ones where Debian 12 has
# them: systemd-oomd (252) kills a unit of three processes under memory pressure, the packaged
# earlyoom.service (1.7, DynamicUser=yes) kills a hog it prefers; nohang (not in Debian 12) is
# replayed: its documented lines printed by a script named nohang run as nohang.service, the
# identity a real nohang has. And a forgery: earlyoom's line sent by nobody.
. ./lib.sh
install_deb "$DEB" apt-install.txt
wait_until 60 active
grep '^oom_kill ' /proc/vmstat > $OUT/vmstat-before
grep '^oom_kill ' /sys/fs/cgroup/system.slice/memory.events > $OUT/slice-events-before

log "systemd-oomd"
mkdir -p /etc/systemd/oomd.conf.d
printf '[OOM]\nDefaultMemoryPressureDurationSec=5s\n' > /etc/systemd/oomd.conf.d/test.conf
systemctl start systemd-oomd.service > $OUT/oomd-start 2>&1
systemctl is-active systemd-oomd.service >> $OUT/oomd-start
# Three processes with distinct argv: the unit's main python3 starts two sleepers, waits until
# the daemon has surely seen their execs (1 s), then makes pressure: 48 MiB of anon memory over
# MemoryHigh=40M (no swap: it stays over, throttled) and page cache faulted in again and again.
systemd-run --unit=oomj-pressure.service -p MemoryHigh=40M -p ManagedOOMMemoryPressure=kill \
    -p ManagedOOMMemoryPressureLimit=10% python3 -c "
import os, subprocess, sys, time
for i in (1, 2):
    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', f'--sleeper={i}', sys.argv[1]])
time.sleep(1)
f = '/var/tmp/pfile'
with open(f, 'wb') as fh:
    for i in range(64): fh.write(os.urandom(1 << 20))
a = [b'x' * (1 << 20) for i in range(48)]
while True:
    with open(f, 'rb') as fh:
        while fh.read(1 << 20): pass
" "--token=$TOKEN" "--role=pressure hog" > $OUT/pressure.run 2>&1
P=/sys/fs/cgroup/system.slice/oomj-pressure.service
wait_until 30 sh -c "[ \$(wc -l < $P/cgroup.procs) -ge 3 ]"
python3 -c '
import json, sys
argv = lambda p: open(f"/proc/{p}/cmdline", "rb").read().decode().split("\0")[:-1]
print(json.dumps({p: argv(p) for p in sys.argv[1:]}))' $(cat $P/cgroup.procs) > $OUT/pressure-members.json
wait_until 180 sh -c '! systemctl -q is-active oomj-pressure.service'
systemctl show oomj-pressure.service -p Result > $OUT/pressure-result
wait_until 30 has_entry oomj-pressure.service 3
sleep 2  # a duplicate, or an entry for PID 1's count, would come right behind
unit_journal oomj-pressure.service
systemctl stop systemd-oomd.service systemd-oomd.socket
rm -f /var/tmp/pfile

log "earlyoom"
cat > /etc/default/earlyoom <<'EOF'
EARLYOOM_ARGS="-m 50 -s 100 -r 5 --prefer '^python3$' --avoid '^(systemd|systemd-.*|sshd|dbus-daemon|sh|oom-journal)$'"
EOF
systemctl start earlyoom.service
systemctl is-active earlyoom.service > $OUT/earlyoom-active
sleep 2
systemd-run --wait --unit=oomj-eohog.service python3 -c "
import time
a = []
while True:
    a.append(b'x' * (4 << 20)); time.sleep(0.05)" "--token=$TOKEN" "--role=earlyoom hog" > $OUT/eohog.run 2>&1
wait_until 30 has_entry oomj-eohog.service
sleep 2
unit_journal oomj-eohog.service
systemctl stop earlyoom.service

log "nohang, replayed; a forgery"
systemd-run --unit=oomj-nohang-victim.service python3 -c "import time; time.sleep(600)" "--token=$TOKEN" "--role=nohang victim"
systemd-run --unit=oomj-relog.service python3 -c "import time; time.sleep(600)" "--token=$TOKEN" "--role=kmsg relog"
systemd-run --unit=oomj-forged.service python3 -c "import time; time.sleep(600)" "--token=$TOKEN" "--role=forged"
sleep 2
V=$(systemctl show -p MainPID --value oomj-nohang-victim.service)
R=$(systemctl show -p MainPID --value oomj-relog.service)
F=$(systemctl show -p MainPID --value oomj-forged.service)
echo "nohang=$V relog=$R forged=$F" > $OUT/replay-pids
setpriv --reuid nobody --regid nogroup --clear-groups \
    logger -t earlyoom "sending SIGTERM to process $F uid 0 \"python3\": badness 1240, VmRSS 187 MiB"
mkdir -p /usr/local/lib/oomj
cat > /usr/local/lib/oomj/nohang <<'EOF'
#!/usr/bin/python3
# nohang 0.2.0's lines (README "Userspace OOM killers"), one a line on stdout as nohang prints them.
import os, signal, sys
victim, relog = int(sys.argv[1]), int(sys.argv[2])
cmdline = open(f"/proc/{victim}/cmdline", "rb").read().replace(b"\0", b" ").decode()
for line in [f"kmsg: Out of memory: Killed process {relog} (python3) total-vm:75160kB, anon-rss:65152kB, "
             "file-rss:6644kB, shmem-rss:0kB, UID:0 pgtables:188kB oom_score_adj:0",
             "Victim status (found in 12ms):",
             f"  PID: {victim}, name: python3, state: S (sleeping), EUID: 0, badness: 900, oom_score: 900, oom_score_adj: 0",
             "  cgroup_v2: /system.slice/oomj-nohang-victim.service", "  cmdline: " + cmdline[:40],
             "Implementing a corrective action:", "  Sending SIGTERM to the victim"]:
    print(line, flush=True)
os.kill(victim, signal.SIGTERM)
print("The victim died in 0.02s", flush=True)
EOF
chmod 755 /usr/local/lib/oomj/nohang
systemd-run --wait --unit=nohang.service /usr/local/lib/oomj/nohang "$V" "$R" > $OUT/nohang.run 2>&1
wait_until 30 has_entry oomj-nohang-victim.service
# the forgery and the re-log came before the nohang kill in the journal: read by now
sleep 2
unit_journal oomj-nohang-victim.service
systemctl stop oomj-relog.service oomj-forged.service
grep '^oom_kill ' /proc/vmstat > $OUT/vmstat-after
grep '^oom_kill ' /sys/fs/cgroup/system.slice/memory.events > $OUT/slice-events-after
systemctl status oom-journal --no-pager > $OUT/status 2>&1
oom-journal list -b --full > $OUT/list.txt 2>&1
oom-journal list -b --killer systemd-oomd --json > $OUT/list-oomd.json 2>$OUT/list-oomd.err
log "done"
