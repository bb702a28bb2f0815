# job-upgrade.sh - one boot: the previous version installed; its conffile changed (a Slack webhook
# on loopback where nothing listens, and a marker comment); a kill (its delivery pending); the
# upgrade to the current .deb; then the stand-in starts: the kill is delivered once.
. ./lib.sh
install_deb "$OLD_DEB" apt-install-old.txt
wait_until 60 active
dpkg-query -W -f '${Version}\n' oom-journal > $OUT/version-old
C=/etc/oom-journal/oom-journal.conf
printf '\n# changed by the administrator (vm upgrade test)\nslack-webhook = http://127.0.0.1:%s%s\n' \
    "$SLACK_PORT" "$SLACK_PATH" >> $C
chmod 600 $C   # it holds a secret now (the daemon warns otherwise)
sha256sum $C > $OUT/conffile-before
systemctl restart oom-journal
wait_until 60 active
victim oomj-old.service
sleep 2  # a delivery attempt or two, refused
state state-before.json
systemctl show oom-journal -p InvocationID > $OUT/invocation-before
log "upgrade"
install_deb "$DEB" apt-install-new.txt
wait_until 60 active
dpkg-query -W -f '${Version}\n' oom-journal > $OUT/version-new
sha256sum $C > $OUT/conffile-after
stat -c %a $C > $OUT/conffile-mode
cp $C $OUT/conffile
systemctl show oom-journal -p InvocationID > $OUT/invocation-after
state state-after.json
standin 120 1 slack-received.json
sleep 1
state state-end.json
log "done"
