"""Metrics (app/metrics.py) without kills: what the exposition says for events fed to it, parsed back
with prometheus_client's own parser from the HTTP endpoint and the textfile; hostile unit names;
the unit cap; option errors (exit 78)."""
from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from oom_journal.app.metrics import OTHER, Metrics  # noqa: E402
from oom_journal.enrich.event import OomEvent  # noqa: E402
from oom_journal.model import HostInfo, KernelKill  # noqa: E402

HOST = HostInfo("h", "b" * 32, "6.1")


def event(unit_cgroup: str, ts: int, reason="Memory cgroup out of memory", source="exec-event"):
    e = OomEvent.build(KernelKill(reason=reason, pid=ts, comm="x", timestamp_us=ts, task_memcg=unit_cgroup),
                       HOST, None, event_time=1700000000.0 + ts)
    e.cmdline_source = source
    return e


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HOSTILE = 'evil\n"} 1\noom_journal_kills_total{unit="forged\\x\udcff.service'


def test_kills_by_unit_killer_and_source_and_hostile_labels_survive_both_outputs(tmp_path):
    daemon = SimpleNamespace(workers=[], sink_counters={"slack": {"delivered": 3, "retried": 2}},
                             source=SimpleNamespace(name="journal", missed=4), unlogged_kills=2)
    port = free_port()
    textfile = tmp_path / "oom-journal.prom"
    m = Metrics(daemon, listen=f"127.0.0.1:{port}", textfile=str(textfile))
    m.start()
    try:
        for ts in (1, 2, 3):
            m.kill(event("/system.slice/a.service", ts))
        m.kill(event(f"/system.slice/{HOSTILE}", 4, reason="Out of memory", source="not-found"))
        http = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for text in (http, textfile.read_text()):
            got = samples(text)
            kills = {k[1]: v for k, v in got.items() if k[0] == "oom_journal_kills_total"}
            assert kills[(("cmdline_source", "exec-event"), ("killer", "memcg"), ("unit", "a.service"))] == 3
            hostile = [labels for labels in kills if dict(labels)["unit"] != "a.service"]
            assert len(kills) == 2 and len(hostile) == 1  # no forged series from the newline
            unit = dict(hostile[0])["unit"]
            assert unit == HOSTILE.replace("/", "").replace("\udcff", "\\xff")  # whole, escaped, read back
            assert dict(hostile[0])["killer"] == "global"
            assert got[("oom_journal_last_kill_timestamp_seconds", ())] == 1700000004.0
            assert got[("oom_journal_sink_delivered_total", (("sink", "slack"),))] == 3
            assert got[("oom_journal_sink_retried_total", (("sink", "slack"),))] == 2
            assert got[("oom_journal_kernel_log_losses_total", (("source", "journal"),))] == 4
            assert got[("oom_journal_kills_unlogged_total", ())] == 2
            assert ("oom_journal_build_info", (("version", __import__("oom_journal").__version__),)) in got
    finally:
        m.stop()


def test_units_beyond_the_cap_count_as_other():
    m = Metrics(SimpleNamespace(workers=[], sink_counters={}, unlogged_kills=0), max_units=3)
    for i in range(10):
        m.kill(event(f"/system.slice/u{i}.service", i + 1))
    from prometheus_client import generate_latest

    kills = {dict(k[1])["unit"]: v for k, v in samples(generate_latest(m.registry).decode()).items()
             if k[0] == "oom_journal_kills_total"}
    assert kills == {"u0.service": 1, "u1.service": 1, "u2.service": 1, OTHER: 7}


@pytest.mark.parametrize("args,option", [
    (["--metrics-listen", "9100"], "--metrics-listen"),
    (["--metrics-listen", "127.0.0.1:0"], "--metrics-listen"),
    (["--metrics-textfile", "/tmp/x.txt"], "--metrics-textfile"),
    (["--metrics-textfile", "/nonexistent-dir/x.prom"], "--metrics-textfile"),
])
def test_bad_metrics_options_exit_78_naming_the_option(args, option):
    exe = Path(sys.executable).parent / "oom-journal"
    r = subprocess.run([str(exe), "check-config", "-c", "/dev/null", *args], capture_output=True, text=True)
    assert r.returncode == 78, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0]
