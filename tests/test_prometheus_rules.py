"""The example alerting rules: promtool (Debian's, unpacked by scripts/install-deps --test) accepts
them, and its unit test makes each alert fire on sample series."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROMTOOL = ROOT / ".deps" / "prometheus" / "usr" / "bin" / "promtool"
RULES = ROOT / "packaging" / "prometheus"


@pytest.fixture
def promtool():
    if not PROMTOOL.exists():
        from conftest import unavailable

        unavailable("no promtool: run scripts/install-deps --test")
    return str(PROMTOOL)


def test_promtool_accepts_the_rules(promtool):
    r = subprocess.run([promtool, "check", "rules", str(RULES / "oom-journal.rules.yml")], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS: 4 rules found" in r.stdout, r


def test_each_alert_fires_on_sample_series(promtool):
    test = (RULES / "oom-journal.rules.test.yml").read_text()
    for alert in ("OOMKill", "OOMKillsRepeatInUnit", "OOMJournalSinkBackingUp", "OOMJournalKernelLostKillLines"):
        assert f"alertname: {alert}\n" in test  # each has a case that expects it to fire
    r = subprocess.run([promtool, "test", "rules", "oom-journal.rules.test.yml"], cwd=RULES, capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r
