"""A million-line random-mutation run of the OOM parser over the real captured reports.

The hypothesis properties in tests/test_parser_properties.py run a few hundred examples in CI;
this runs a million lines: every fixture under tests/fixtures/kernel/, mutated (lines lost,
truncated, duplicated, reordered, hostile characters inserted, other reports interleaved), fed
in one stream. It checks the same properties and prints what it saw:
  - the parser never raises (it counts lines it had to skip internally: internal_errors);
  - it never reports a kill whose pid no kill line of the input named;
  - every kill line that survived unmutated is reported.
    .venv/bin/python bench/parser_fuzz.py [--lines N] [--seed S]
"""
from __future__ import annotations

import argparse
import random
import logging
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from oom_journal.model import KernelLine  # noqa: E402
from oom_journal.parse.oom_report import OomParser  # noqa: E402
from test_parser_properties import mutate  # noqa: E402  (the same mutations as the property tests)

KILL_LINE = re.compile(r"(?:^|: )Killed process (\d+) \(.*\) total-vm:\d+kB, anon-rss:\d+kB, file-rss:\d+kB")
TOO_LONG = re.compile(r"\d{21}")
# Any line in which the kernel says it killed a process names a kill (issue #16: shapes the parser
# does not know degrade to pid and comm; RHEL's "Killed process 8120, UID 0, (java)" among them).
ANY_KILLED = re.compile(r"Killed process (\d+)")


def main() -> int:
    # The parser warns once per unknown kill-line shape it degrades: a million mutated lines are
    # thousands of shapes; the property checked here is below, not the warnings.
    logging.getLogger("oom_journal").setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=20261121)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    reports = [[l for l in f.read_text(errors="surrogateescape").splitlines() if not l.startswith("#")]
               for f in sorted((REPO / "tests" / "fixtures" / "kernel").glob("*.txt"))]
    parser = OomParser()
    fed = kills = invented = 0
    announced: set = set()
    intact: set = set()
    reported: set = set()
    ts = 1_000_000
    started = time.perf_counter()
    while fed < args.lines:
        chunk = mutate(rnd.choice(reports), rnd)
        if rnd.random() < 0.3:  # interleave another report line by line
            other = mutate(rnd.choice(reports), rnd)
            merged = []
            for a, b in zip(chunk, other, strict=False):  # the shorter one ends the interleaving
                merged += [a, b]
            chunk = merged + chunk[len(other):] + other[len(chunk):]
        for text in chunk:
            ts += 7
            for m in ANY_KILLED.finditer(text):
                announced.add((int(m.group(1)), ts))
            m = KILL_LINE.search(text)
            # Intact: the mutations did not break it. (A number of more than 20 digits is not a
            # kernel number, u64 has 20: the parser rightly refuses such a line.)
            if m and text.endswith(("oom_score_adj:0", "kB")) and "\x00" not in text and not TOO_LONG.search(text):
                intact.add(int(m.group(1)))
            try:
                got = parser.feed(KernelLine(message=text, timestamp_us=ts, seq=fed, position=fed))
            except Exception as e:  # the property under test: this must never happen
                print(f"RAISED on line {fed}: {type(e).__name__}: {e}: {text[:200]!r}")
                return 1
            for k in got:
                kills += 1
                reported.add(k.pid)
                if (k.pid, k.timestamp_us) not in announced:
                    invented += 1
            fed += 1
    elapsed = time.perf_counter() - started
    missing = intact - reported
    print(f"lines fed: {fed:,} in {elapsed:.1f} s ({fed / elapsed:,.0f} lines/s)")
    print(f"kills reported: {kills:,}; not named by a kill line of the input: {invented}")
    print(f"well-formed kill lines' pids: {len(intact):,}; never reported: {len(missing)}")
    print(f"parser: internal errors (lines skipped) {parser.internal_errors}, reports given up {parser.dropped_bursts}")
    return 1 if invented or missing else 0


if __name__ == "__main__":
    sys.exit(main())
