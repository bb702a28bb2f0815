#!/usr/bin/env python3
"""The benchmark's results (bench/results.json) as a Markdown table, and README.md's
"Performance" section between the markers <!-- bench:start --> and <!-- bench:end -->.

    python3 bench/report.py [bench/results.json] [--update-readme]
renders again from a results file without running anything.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

TARGETS = {
    "p50_ms": 10.0, "p99_ms": 50.0,
    "idle_cpu_pct_10k": 0.5,
    "rss_journal_mib": 24.0, "rss_sinks_mib": 60.0,
    "storm_cpu_pct": 5.0, "storm_us_per_exec": 50.0,
    # A first start on a long boot (issue #18): READY=1 as fast as before (0.15 s, 296,000 lines),
    # the catch-up bounded, a kill meanwhile recorded like any other, the peak RSS bounded.
    "long_ready_s": 0.5, "long_catch_up_s": 10.0, "long_live_ms": 50.0, "long_hwm_mib": 64.0,
}
AGE_LABEL = {"5ms": "~5 ms", "30ms": "~30 ms", "300ms": "~300 ms", "3s": "~3 s"}


def dur(ms) -> str:
    if ms is None:
        return "–"
    if ms >= 1000:
        return f"{ms / 1000:.1f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    return f"{ms:.1f} ms"


def lat(p: dict) -> str:
    if not p or not p.get("n"):
        return "none reported"
    return f"{dur(p['p50'])} / {dur(p['p99'])} / {dur(p['max'])}"


def ratio(base, ours, digits=0) -> str:
    if base is None or ours is None:
        return "–"
    if ours == 0:
        return "∞" if base else "–"
    r = base / ours
    if r < 0.1:
        return "<0.1×"
    if r >= 100:
        return f"{r:,.0f}×"
    if r >= 10:
        return f"{r:.0f}×"
    return f"{r:.1f}×"


def pct(part: int, n: int) -> str:
    return "–" if not n else f"{100.0 * part / n:.0f} % ({part}/{n})"


def mib(kib) -> float:
    return kib / 1024.0


def verdict(ok) -> str:
    return "–" if ok is None else ("**met**" if ok else "**missed**")


def rows(r: dict) -> list:
    out = []  # (figure, ours, baseline, ratio, target, met)
    for src, label in (("journal", "journal source"), ("kmsg", "kmsg source")):
        L = r["latency"][src]
        o, b = L["ours"], L["base"]
        ok = None
        if o.get("n"):
            ok = o["p50"] <= TARGETS["p50_ms"] and o["p99"] <= TARGETS["p99_ms"]
        out.append((f"Latency, kill line → journal entry, {label}: p50 / p99 / max (n = {o.get('n', 0)})",
                    lat(o), lat(b), ratio(b.get("p50"), o.get("p50")) + " (p50)", "p50 ≤ 10 ms, p99 ≤ 50 ms",
                    verdict(ok)))
    for bucket, c in r["completeness"].items():
        o, b = c["ours"], c["base"]
        age = c["age_ms"]
        target = "100 %" if bucket != "5ms" else "–"
        ok = None if bucket == "5ms" else (o["full"] == o["n"] and o["n"] > 0)
        extra = ""
        if o["wrong"] or b["wrong"]:
            extra = f"; wrong cmdline: ours {o['wrong']}, baseline {b['wrong']}"
        out.append((f"Full command line, victims killed {AGE_LABEL[bucket]} after exec (median {dur(age.get('p50'))}){extra}",
                    pct(o["full"], o["n"]), pct(b["full"], b["n"]),
                    ratio(o["full"], b["full"]) + " more" if b["full"] else ("∞" if o["full"] else "–"),
                    target, verdict(ok)))
    cost = r["cost"]
    for extra, c in cost["extra"].items():
        o, b = c["cpu"]["ours"]["percent"], c["cpu"]["base"]["percent"]
        ok = (o <= TARGETS["idle_cpu_pct_10k"]) if extra == "10000" else None
        bg = c["cpu"].get("background") or {}
        note = ""
        if bg:
            note = (f"; other work meanwhile: {bg['forks_per_s']:.0f} forks/s, "
                    f"{bg['kernel_records_per_s']:.0f} kernel messages/s")
        subs = c["cpu"].get("windows") or []

        def spread(name, subs=subs):
            if not subs:
                return ""
            v = [w[name]["percent"] for w in subs]
            return f" ({min(v):.1f}–{max(v):.1f} in {cost['window_s'] / 3:.0f} s thirds)"

        out.append((f"Idle CPU, {int(extra):,} extra processes (% of one core over {cost['window_s']:.0f} s{note})",
                    f"{o:.2f} %{spread('ours')}", f"{b:.2f} %{spread('base')}", ratio(b, o),
                    "≤ 0.5 % (10,000)" if extra == "10000" else "–", verdict(ok)))
    for extra, c in cost["extra"].items():
        o, b = c["mem"]["ours"], c["mem"]["base"]
        # Issue #18's target is the idle footprint (the issue measured it on this idle machine):
        # judged with no extra processes. With more, the cache holds each one's command line
        # (what it is for), and the rows show what that costs per process.
        idle = extra == "0"
        rss_ok = (mib(o["VmRSS"]) <= TARGETS["rss_journal_mib"]) if idle else None
        growth = ""
        if not idle and "0" in cost["extra"]:
            o0 = cost["extra"]["0"]["mem"]["ours"]
            growth = f"; +{(o['VmRSS'] - o0['VmRSS']) * 1024 / int(extra):.0f} bytes per extra process"
        out.append((f"RSS, journal only, {int(extra):,} extra processes (VmRSS; anon + file{growth})",
                    f"{mib(o['VmRSS']):.1f} MiB ({mib(o['RssAnon']):.1f} + {mib(o['RssFile']):.1f})",
                    f"{mib(b['VmRSS']):.1f} MiB", ratio(b["VmRSS"], o["VmRSS"]),
                    "≤ 24 MiB (idle)" if idle else "–", verdict(rss_ok)))
    ks = r["kill_storm"]
    for key, label in (("rss_sinks_idle", "idle"), ("rss_sinks_after", "after the kill storm")):
        o = ks[key]
        out.append((f"RSS, all four sinks loaded, {label} (VmRSS; anon + file; peak VmHWM)",
                    f"{mib(o['VmRSS']):.1f} MiB ({mib(o['RssAnon']):.1f} + {mib(o['RssFile']):.1f}; "
                    f"peak {mib(o['VmHWM']):.1f})", "–", "–", "≤ 60 MiB",
                    verdict(mib(o["VmRSS"]) <= TARGETS["rss_sinks_mib"])))
    es = cost["exec_storm"]
    rounds = es.get("rounds") or [es]
    us = [x["us_per_exec"] for x in rounds if "us_per_exec" in x]
    pcts = [x["cpu"]["ours"]["percent"] for x in rounds]
    mains = [x["cpu"]["ours"].get("main_thread_percent") or 0.0 for x in rounds]
    b = es["cpu"]["base"]["percent"]
    n_kills = r.get("exec_storm_kills", {}).get("ours", {}).get("n", 0) + r.get("exec_storm_kills_50ms", {}).get("ours", {}).get("n", 0)
    rates = [x["rate"] for x in rounds]

    def spread(v, f):
        return f"{f.format(statistics.median(v))} ({f.format(min(v))}–{f.format(max(v))})"

    cache_us = [x["cache_us_per_exec"] for x in rounds if "cache_us_per_exec" in x]
    cache_pcts = [x["cache_percent"] for x in rounds if "cache_percent" in x]
    if us:
        # The target is the cache's (issue #18); results of runs before the split judged the whole daemon.
        judged_us, judged_pct = (cache_us, cache_pcts) if cache_us else (us, pcts)
        ok = statistics.median(judged_us) <= TARGETS["storm_us_per_exec"] and statistics.median(judged_pct) <= TARGETS["storm_cpu_pct"]
        cache_txt = (f"the process cache (the daemon less its main thread) {spread(cache_us, '{:.0f}')} µs, "
                     f"{spread(cache_pcts, '{:.1f}')} %; " if cache_us else "")
        out.append((f"Exec storm (processes living ~5 ms), {min(rates):,}–{max(rates):,} execs/s, {len(rounds)} × {es['seconds']:.0f} s, with {n_kills} kills "
                    "in them: CPU time (utime + stime) per exec, and as % of one core, of the process cache (the target's) "
                    "and of the whole daemon; median (min–max)",
                    f"{cache_txt}daemon {spread(us, '{:.0f}')} µs, {spread(pcts, '{:.1f}')} % (main thread {statistics.median(mains):.1f})",
                    f"{b:.1f} %", "–", "cache ≤ 50 µs, ≤ 5 %", verdict(ok)))
    ll = es.get("long_lived")
    if ll:
        judged = (ll["cache_us_per_exec"], ll["cache_percent"]) if "cache_us_per_exec" in ll else (ll["us_per_exec"], ll["cpu"]["ours"]["percent"])
        ok = judged[0] <= TARGETS["storm_us_per_exec"] and judged[1] <= TARGETS["storm_cpu_pct"]
        cache_txt = (f"cache {ll['cache_us_per_exec']:.0f} µs, {ll['cache_percent']:.1f} %; " if "cache_us_per_exec" in ll else "")
        out.append((f"Exec storm of processes living ~{ll['life_s'] * 1000:.0f} ms (each read while it runs), {ll['rate']:,} execs/s, "
                    f"{ll['seconds']:.0f} s: CPU time per exec, % of one core (the process cache; the whole daemon)",
                    f"{cache_txt}daemon {ll['us_per_exec']:.0f} µs, {ll['cpu']['ours']['percent']:.1f} %", f"{ll['cpu']['base']['percent']:.1f} %",
                    "–", "cache ≤ 50 µs, ≤ 5 %", verdict(ok)))
    out.append(("Exec storm: exec events lost (connector overflow reports)", str(es["lost_reports"]),
                "– (no events)", "–", "0", verdict(es["lost_reports"] == 0)))
    sk = r["exec_storm_kills"]
    out.append(("Exec storm: ~5 ms victims killed during it, full command line",
                pct(sk["ours"]["full"], sk["ours"]["n"]), pct(sk["base"]["full"], sk["base"]["n"]), "–", "–", "–"))
    sk = r.get("exec_storm_kills_50ms")
    if sk:
        out.append(("Exec storm: ~50 ms victims killed during it, full command line",
                    pct(sk["ours"]["full"], sk["ours"]["n"]), pct(sk["base"]["full"], sk["base"]["n"]), "–", "100 %",
                    verdict(sk["ours"]["full"] == sk["ours"]["n"] and sk["ours"]["n"] > 0)))
    lb = r.get("long_boot")
    if lb:
        label = f"Long boot ({lb['lines']:,} kernel lines, {lb['journal_mib']:.0f} MiB private journal, generated in {lb['generated_s']:.0f} s)"
        out.append((f"{label}: first start, READY=1 after", f"{lb['ready_s']:.2f} s", "–", "–", "≤ 0.5 s (as before)",
                    verdict(lb["ready_s"] <= TARGETS["long_ready_s"])))
        cu = lb["catch_up_s"]
        out.append((f"{label}: catch-up (start to the daemon's log line: history read; its {lb['reports']} OOM reports: {lb['history_recorded']} recorded)",
                    "–" if cu is None else f"{cu:.1f} s", "–", "–", "≤ 10 s",
                    verdict(cu is not None and cu <= TARGETS["long_catch_up_s"] and lb["history_recorded"] == lb["reports"])))
        live = lb["live_latency_ms"]
        out.append((f"{label}: kills during the catch-up, kill line → journal entry, max ({lb['live_recorded']}/{lb['live']} recorded)",
                    (dur(max(live)) + f" ({', '.join(dur(x) for x in live)})") if live else "–", "–", "–", "≤ 50 ms",
                    verdict(bool(live) and lb["live_recorded"] == lb["live"] and max(live) <= TARGETS["long_live_ms"])))
        pk = lb["peak_kib"]
        out.append((f"{label}: peak RSS (VmHWM; RssAnon and RssFile peaks sampled every 20 ms)",
                    f"{mib(pk['VmHWM']):.1f} MiB (anon {mib(pk['RssAnon']):.1f}, file {mib(pk['RssFile']):.1f})", "–", "–",
                    "≤ 64 MiB", verdict(mib(pk["VmHWM"]) <= TARGETS["long_hwm_mib"])))
    su = r.get("startup_kills")
    if su:
        out.append((f"Start: ~5 ms and ~30 ms victims killed in the first {su['killed_in_s']:.1f} s after READY=1, "
                    f"while the daemon read this boot's kernel log ({su['catch_up_s']:.1f} s), full command line",
                    pct(su["ours"]["full"], su["ours"]["n"]), pct(su["base"]["full"], su["base"]["n"]),
                    "–", "–", "–"))
    o, b = ks["ours"], ks["base"]
    rec_o = o["n"] - o["missing"]
    rec_b = b["n"] - b["missing"]
    lost = r.get("baseline_lost_records", 0)
    out.append((f"Kill storm, {ks['kills']} kills in {ks['wall_s']:.0f} s: recorded",
                pct(rec_o, o["n"]), pct(rec_b, b["n"]) + (f"; {lost:,} kernel records overwritten unread" if lost else ""),
                "–", "all", verdict(rec_o == o["n"] and o["n"] > 0)))
    out.append(("Kill storm: with full command line (~5 ms victims)", pct(o["full"], o["n"]), pct(b["full"], b["n"]),
                "–", "–", "–"))
    out.append(("Kill storm: latency to the journal, p50 / p99 / max", lat(ks["ours_latency_ms"]),
                lat(ks["base_latency_ms"]), ratio(ks["base_latency_ms"].get("p50"), ks["ours_latency_ms"].get("p50"))
                + " (p50)", "–", "–"))
    kl = ks["kafka_latency_ms"]
    out.append(("Kill storm: delivered to Kafka (tansu); kill line → consumer p50 / p99 / max; last one after the last kill line",
                f"{pct(ks['kafka_delivered'], ks['kills'])}; {lat(kl)}; last +{dur(ks['kafka_last_after_last_kill_ms'])}",
                "– (no sinks)", "–", "all", verdict(ks["kafka_delivered"] == ks["kills"] and ks["kills"] > 0)))
    return out


def render(r: dict, heading: str = "## Benchmark results") -> str:
    m = r["machine"]
    lines = [heading, "",
             f"{r['date']}; oom-journal {r.get('version', '?')}; {m['os']}, Linux {m['kernel']}, {m['cpus']} CPUs "
             f"({m['cpu_model']}), {m['memory_gib']} GiB, Python {m['python']}; {m['processes']} processes before "
             f"the run; run took {r.get('duration_s', 0) // 60} min {r.get('duration_s', 0) % 60} s"
             + (" (--quick: a smoke run, not figures)" if r.get("quick") else "")
             + (" (--profile: py-spy sampled the daemon)" if r.get("profiled") else "") + ".",
             "",
             "| figure | oom-journal | baseline: the seeds' polling | ratio | target | |",
             "|---|---|---|---|---|---|"]
    for row in rows(r):
        lines.append("| " + " | ".join(row) + " |")
    lines += ["",
              "Ratio: baseline ÷ oom-journal for times, CPU and memory (how many times more the baseline "
              "takes); oom-journal ÷ baseline for command lines found. "
              f"Kernel timestamps are moved to CLOCK_MONOTONIC by {r['clock_offset_us']:.0f} µs, measured "
              "at the start (the kernel log's clock and journald's differ)."]
    st = r.get("startup")
    if st:
        lines.append(f"Start: READY=1 after {st['ready_s']:.2f} s; this boot's kernel log read after "
                     f"{st['catch_up_s']:.1f} s.")
    return "\n".join(lines) + "\n"


def readme_section(r: dict) -> str:
    """README.md's Performance section: how it is measured, then the latest table."""
    how = """## Performance

Measured by `bash bench/run` (as root, on Debian 12; 3 to 4 minutes). It installs what it needs
(`scripts/install-deps --test`), prints the table below and writes it to `bench/results.md`
(every figure, per kill too, in `bench/results.json`); `bash bench/run --update-readme` also
rewrites this section, `--profile` adds py-spy profiles of the daemon (`bench/profiles/`).
Everything is real: OOM kills inside memory cgroups the benchmark creates (8 MiB each) and
removes, the machine's journald, `.venv/bin/oom-journal run -c /dev/null --state-dir ...` as a
user starts it, tansu for Kafka (stand-ins for Elasticsearch and Slack, none can be had here).

The **baseline** is the seeds' design, `bench/baseline_seed.py`, running through the same run on
the same kills: every 5 s it reads the command line of every process in /proc into a dict, every
10 s it reads /dev/kmsg and looks each killed pid up in that dict.

- Latency: from the kernel's kill line (its own timestamp) to our entry in the journal
  (journald's `__MONOTONIC_TIMESTAMP`); for the baseline, to the moment it reports the kill.
- Victims: `dd bs=64M` (killed ~5 ms after its exec), and perl that sleeps, then allocates
  (~30 ms, ~300 ms, ~3 s after its exec). "Full command line": the exact argv.
- CPU: utime + stime from /proc/PID/stat over the window (10 ms ticks: 0.03 % of 30 s).
- RSS: VmRSS from /proc/PID/status, anonymous + file-backed pages (the file part is the
  interpreter, its libraries and the mapped journal files); the peak, VmHWM, is reached at start,
  when the journal is searched for kills recorded before.
- Start: a daemon with an empty state directory (a first start in the boot) reads this boot's
  kernel log from its start; victims are killed meanwhile, from the moment it says READY=1
  (while its main thread is busy, the process cache's thread must still read each exec at once).
- The machine is shared with other work; the idle figures say how much of it there was.

`bench/proc_cache_bench.py` is a micro-benchmark of the process cache alone (scans, exec storm,
exec-to-read delay).

"""
    return how + render(r, heading="### Latest results")


def update_readme(path: Path, section: str) -> None:
    text = path.read_text()
    block = f"{START}\n{section.rstrip()}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="?", default=str(BENCH / "results.json"))
    ap.add_argument("--update-readme", action="store_true")
    args = ap.parse_args(argv)
    r = json.loads(Path(args.results).read_text())
    md = render(r)
    print(md)
    if args.update_readme:
        update_readme(BENCH.parent / "README.md", readme_section(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
