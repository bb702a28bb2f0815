# job-global.sh - one boot of a 512 MiB guest: a whole-machine OOM (a hog in a unit without any
# limit), then the daemon is still the same process, also after 45 s stopped (SIGSTOP), and
# records a later MemoryMax= kill.
. ./lib.sh
install_deb "$DEB" apt-install.txt
wait_until 60 active
systemctl show oom-journal -p MainPID -p NRestarts > $OUT/daemon-before
free -m > $OUT/free
log "global OOM"
systemd-run --wait --unit=oomj-global.service python3 -c "
a = []
while True: a.append(b'x' * (4 << 20))" "--token=$TOKEN" > $OUT/global.run 2>&1
wait_until 60 has_entry oomj-global.service
sleep 1
systemctl is-active oom-journal > $OUT/is-active-after-global
systemctl show oom-journal -p MainPID -p NRestarts > $OUT/daemon-after
# A thrash can keep the daemon from running for longer than it took above (35 s seen): stopped
# for 45 s, longer than the 30 s watchdog it had, it is still the same process after.
log "the daemon stopped for 45 s"
stop_pid "$(systemctl show oom-journal -p MainPID --value)"
sleep 45
restore_stopped
sleep 1
systemctl show oom-journal -p MainPID -p NRestarts > $OUT/daemon-after-stall
log "a later kill"
victim oomj-later.service
log "done"
