# job-global.sh - one boot of a 512 MiB guest: a whole-machine OOM (a hog in a unit without any
# limit), then the daemon is still the same process and records a later MemoryMax= kill.
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
log "a later kill"
victim oomj-later.service
log "done"
