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
