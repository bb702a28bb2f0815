"""What it costs a first start to find this boot's kills recorded before, from root's entries only.

JournalWriter.recorded_event_ids used sd_journal_query_unique("OOM_EVENT_ID"), which reads the
field's data objects but ignores matches, so it could not tell root's entries from a forger's;
it now steps through the entries matching MESSAGE_ID + _UID=0 + _BOOT_ID (journal_writer.our_event_ids).
This builds a private journal file with systemd-journal-remote (apt-get install
systemd-journal-remote) from a generated export stream: OTHERS kernel lines, OURS root entries of
ours and as many forged ones (_UID=65534), all in one boot, and times both ways.

    .venv/bin/python bench/trust_bench.py [OTHERS] [OURS]
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from oom_journal.model import MESSAGE_ID  # noqa: E402
from oom_journal.outputs.journal import our_event_ids  # noqa: E402

REMOTE = "/lib/systemd/systemd-journal-remote"


def export_stream(boot: str, others: int, ours: int):
    t = 1_700_000_000_000_000
    mono = 1_000_000
    kinds = ["other"] * others + ["ours", "forged"] * ours
    # Spread ours and the forgeries through the others, as kills are spread through a boot.
    order = sorted(range(len(kinds)), key=lambda i: (i * 7919) % len(kinds)) if ours else range(len(kinds))
    for n, i in enumerate(order):
        kind = kinds[i]
        mono += 1000
        lines = [f"__REALTIME_TIMESTAMP={t + mono}", f"__MONOTONIC_TIMESTAMP={mono}", f"_BOOT_ID={boot}",
                 "_HOSTNAME=bench", "_MACHINE_ID=" + "0" * 32]
        if kind == "other":
            lines += ["_TRANSPORT=kernel", "PRIORITY=6", "SYSLOG_FACILITY=0", f"_SOURCE_MONOTONIC_TIMESTAMP={mono}",
                      f"MESSAGE=some kernel line number {n}"]
        else:
            uid = "0" if kind == "ours" else "65534"
            lines += ["_TRANSPORT=journal", f"_UID={uid}", f"_GID={uid}", "PRIORITY=3", f"MESSAGE_ID={MESSAGE_ID}",
                      f"OOM_EVENT_ID={boot}-{mono}-4242", "OOM_PID=4242", "OOM_COMM=python3",
                      f"OOM_KERNEL_TIMESTAMP_USEC={mono}", "MESSAGE=Memory cgroup out of memory: killed process 4242"]
        yield ("\n".join(lines) + "\n\n").encode()


def main() -> int:
    from systemd import journal

    others = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    ours = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000
    boot = uuid.uuid4().hex
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "bench.journal")
        p = subprocess.Popen([REMOTE, f"--output={out}", "-"], stdin=subprocess.PIPE)
        for chunk in export_stream(boot, others, ours):
            p.stdin.write(chunk)
        p.stdin.close()
        assert p.wait() == 0
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        r = journal.Reader(path=d)
        started = time.perf_counter()
        ids = our_event_ids(r, boot)
        ours_s = time.perf_counter() - started
        r.close()
        r = journal.Reader(path=d)
        started = time.perf_counter()
        unique = {str(v) for v in r.query_unique("OOM_EVENT_ID") if str(v).startswith(boot + "-")}
        unique_s = time.perf_counter() - started
        r.close()
    assert len(ids) == ours, (len(ids), ours)
    print(f"journal of {others + 2 * ours:,} entries ({size / 2**20:.0f} MiB): {others:,} kernel lines, "
          f"{ours:,} root entries of ours, {ours:,} forged")
    print(f"  MESSAGE_ID + _UID=0 + _BOOT_ID, stepping: {ours_s * 1000:.1f} ms, {len(ids):,} ids")
    print(f"  query_unique (ignores matches, believed the forged too): {unique_s * 1000:.1f} ms, {len(unique):,} ids")
    return 0


if __name__ == "__main__":
    sys.exit(main())
