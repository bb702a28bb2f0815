"""A burst of real OOM kills in one unit, end to end: Slack (the stand-in, rate-limited as Slack is)
gets every victim within 2 s, named once, never refused for rate; the journal and the Elasticsearch
stand-in's records carry one incident id; a real Prometheus scraping --metrics-listen and a real
node_exporter reading --metrics-textfile report the count for the unit."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import MESSAGE_ID, unavailable, victim_argv, wait_for_entries
from slack_standin import SlackStandin

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".deps" / "prometheus" / "usr" / "bin"
KILLS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def get(url: str) -> bytes:
    return urllib.request.urlopen(url, timeout=5).read()


@pytest.fixture
def servers(tmp_path):
    """Prometheus and node_exporter binaries from Debian's packages, started here, stopped by pid."""
    if not (BIN / "prometheus").exists() or not (BIN / "prometheus-node-exporter").exists():
        unavailable("no prometheus / node_exporter: run scripts/install-deps --test")
    procs = []

    def start(argv, log):
        p = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_a_burst_of_kills_is_one_incident_in_slack_within_2s_and_counted_by_prometheus(
        memcg, daemon_factory, servers, tmp_path):
    from es_standin import StandinElasticsearch

    textdir = tmp_path / "textfile"
    textdir.mkdir()
    mport, nport, pport = free_port(), free_port(), free_port()
    node = servers([str(BIN / "prometheus-node-exporter"), f"--collector.textfile.directory={textdir}",
                    f"--web.listen-address=127.0.0.1:{nport}", "--collector.disable-defaults",
                    "--collector.textfile"], tmp_path / "node.log")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: oomj\n    static_configs: [{{targets: ['127.0.0.1:{mport}']}}]\n"
        f"  - job_name: node\n    static_configs: [{{targets: ['127.0.0.1:{nport}']}}]\n")
    prom = servers([str(BIN / "prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{pport}"],
                   tmp_path / "prometheus.log")

    slack = SlackStandin().start()
    slack.rate_limit(1.0)
    es = StandinElasticsearch().start()
    try:
        # This boot's earlier kills (other tests') are recorded first, without sinks, so that the
        # daemon under test starts from the saved position with nothing of theirs to send.
        history = daemon_factory().start()
        time.sleep(3)  # the backlog is read in well under a second (its kills are in the journal already)
        assert history.stop() == 0
        cg = memcg(48)
        d = daemon_factory("--slack-webhook", slack.url, "--elasticsearch-server", es.url, "--elasticsearch-index", "oom-burst",
                           "--metrics-listen", f"127.0.0.1:{mport}",
                           "--metrics-textfile", str(textdir / "oom-journal.prom")).start()
        token = uuid.uuid4().hex
        killed = {}  # pid -> time.monotonic() when its SIGKILL was seen
        started = time.monotonic()
        for i in range(KILLS):
            p = cg.run(victim_argv(f"burst-{token}-{i}", extra_len=100))
            assert p.wait(timeout=30) == -9
            killed[p.pid] = time.monotonic()
        span = time.monotonic() - started
        entries = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_UNIT={cg.unit}", count=KILLS)
        d.wait_idle(timeout=60)
        wait_until(lambda: all(re.search(rf"burst-{token}-{i}\b", "".join(r.body.decode() for r in slack.accepted()))
                               for i in range(KILLS)), timeout=90, what="every victim in Slack")

        # Slack: every victim named once, within 2 s of its kill, and no post refused.
        assert not [r for r in slack.received if r.status == 429], "a post was refused for rate"
        # Each victim by its unique argument (a message may show it twice: text and blocks).
        named = {}
        for r in slack.accepted():
            for i in set(re.findall(rf"burst-{token}-(\d+)\b", json.dumps(r.payload))):
                named.setdefault(int(i), []).append(r.time)
        order = list(killed)
        assert {i: len(named.get(i, [])) for i in range(KILLS)} == {i: 1 for i in range(KILLS)}
        late = {pid: named[i][0] - killed[pid] for i, pid in enumerate(order)}
        assert max(late.values()) < 2.0, sorted(late.values())
        print(f"\n{KILLS} kills in {span:.1f} s; {len(slack.accepted())} Slack messages; delay after the kill: "
              f"max {max(late.values()):.2f} s, median {sorted(late.values())[KILLS // 2]:.2f} s")

        # One incident: in the journal, in Elasticsearch, and named in Slack.
        incidents = {e["OOM_INCIDENT_ID"] for e in entries}
        assert len(incidents) == 1
        incident = incidents.pop()
        assert incident == min(entries, key=lambda e: int(e["OOM_KERNEL_TIMESTAMP_USEC"]))["OOM_EVENT_ID"]
        docs = [doc for doc in es.docs("oom-burst").values() if doc.get("unit") == cg.unit]
        assert len(docs) == KILLS and {doc["incident_id"] for doc in docs} == {incident}
        assert all(f"OOM_INCIDENT_ID={incident}" in json.dumps(r.payload) for r in slack.accepted()
                   if token in json.dumps(r.payload))

        # Prometheus, through its HTTP API: the count for the unit, from both exporters.
        def query(q):
            answer = json.loads(get(f"http://127.0.0.1:{pport}/api/v1/query?" + urllib.parse.urlencode({"query": q})))
            return {r["metric"].get("job"): float(r["value"][1]) for r in answer["data"]["result"]}

        q = f'sum by (job) (oom_journal_kills_total{{unit="{cg.unit}"}})'
        got = wait_until(lambda: (lambda r: r if r.get("oomj") == KILLS and r.get("node") == KILLS else None)(query(q)),
                         timeout=30, what=f"Prometheus to see {KILLS} kills from both jobs")
        assert got == {"oomj": KILLS, "node": KILLS}
        assert query('oom_journal_sink_delivered_total{sink="slack"}') and query("oom_journal_build_info")
        assert d.stop() == 0
    finally:
        slack.stop()
        es.stop()
        assert node.poll() is None and prom.poll() is None  # they ran throughout
