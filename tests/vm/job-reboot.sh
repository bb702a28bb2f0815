# job-reboot.sh - one qemu run, two boots. Boot 1: the daemon with a Slack webhook on loopback
# where nothing listens; a kill (its delivery pending); the guest reboots itself. Boot 2: a kill;
# the Slack stand-in starts on that port; both kills are delivered, each once.
. ./lib.sh
if [ "$VMJOB_BOOT" = 1 ]; then
    mkdir -p /etc/oom-journal/conf.d
    printf 'slack-webhook = http://127.0.0.1:%s%s\n' "$SLACK_PORT" "$SLACK_PATH" > /etc/oom-journal/conf.d/50-slack.conf
    chmod 600 /etc/oom-journal/conf.d/50-slack.conf
    install_deb "$DEB" apt-install.txt
    wait_until 60 active
    victim oomj-boot1.service
    sleep 2  # a delivery attempt or two, refused
    systemctl show oom-journal -p StatusText > $OUT/status-boot1
    state state-boot1.json
    touch /run/vmjob-reboot
    log "rebooting"
else
    wait_until 60 active
    systemctl show oom-journal -p StatusText > $OUT/status-boot2-start
    victim oomj-boot2.service
    standin 120 2 slack-received.json
    state state-boot2.json
    systemctl show oom-journal -p StatusText > $OUT/status-boot2-end
    log "done"
fi
