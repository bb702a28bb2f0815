"""Property tests of the OOM parser (hypothesis): it never raises, never reports a kill the
input did not contain, and reports every well-formed kill line, whatever surrounds it."""
from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oom_journal.model import KernelLine
from oom_journal.parse.oom_report import OomParser

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "kernel").glob("*.txt"))
# What the kernel says when it killed: its verb and a pid (the parser's contract: any such line,
# at the start of a message or after a reason, is a kill).
KILLED = re.compile(r"Killed process (\d+)")
KILL_VERB_LINE = re.compile(r"^(?:[^:]*out of memory[^:]*: )?Killed process ([0-9]{1,10})(?![0-9])", re.IGNORECASE)

REASONS = ["Out of memory", "Memory cgroup out of memory", "Out of memory (oom_kill_allocating_task)"]
# Whatever a process may call itself: 15 characters, parentheses, spaces, fake field text,
# control characters and non-UTF-8 bytes (as surrogate escapes, the way the sources deliver them).
COMM_CHARS = st.sampled_from(list("abcXYZ019 ()_-:,.") + ["\x1b", "\t", "\udcff", "ü", ") total-vm:1kB"])
comms = st.lists(COMM_CHARS, min_size=1, max_size=8).map("".join).map(lambda c: c[:15] or "x")
noise = st.one_of(
    st.text(max_size=120),
    st.sampled_from(["Killed process", "Killed process 12 (", "oom-kill:constraint=", "invoked oom-killer:",
                     "Memory cgroup out of memory: Killed process 5 (x) total-vm:", "Tasks state (memory values in pages):",
                     "[  pid  ]   uid  tgid total_vm      rss pgtables_bytes swapents oom_score_adj name"]),
)


def lines_of(messages, start=1_000_000):
    return [KernelLine(message=m, timestamp_us=start + i * 10, seq=i, position=i) for i, m in enumerate(messages)]


def feed(messages):
    """The kills the parser reports. feed() itself never raises by contract (it counts and skips a
    line whose handling raised), so "never raises" is checked here: no line may have been skipped."""
    parser = OomParser()
    kills = []
    for line in lines_of(messages):
        kills.extend(parser.feed(line))
    assert parser.internal_errors == 0, "the parser raised on a line (it was counted and skipped)"
    return kills


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(noise, max_size=60))
def test_never_raises_and_never_invents_a_kill(messages):
    kills = feed(messages)
    announced = {int(m.group(1)) for text in messages for m in KILLED.finditer(text)}
    assert {k.pid for k in kills} <= announced


kill_line = st.builds(
    lambda reason, pid, comm, vm, anon, file, shmem, uid, pgt, adj, shape: (
        pid, comm, anon, uid if shape == "5.4" else None,
        {"5.4": f"{reason}: Killed process {pid} ({comm}) total-vm:{vm}kB, anon-rss:{anon}kB, file-rss:{file}kB, "
                f"shmem-rss:{shmem}kB, UID:{uid} pgtables:{pgt}kB oom_score_adj:{adj}",
         "5.1": f"{reason}: Killed process {pid} ({comm}) total-vm:{vm}kB, anon-rss:{anon}kB, file-rss:{file}kB, "
                f"shmem-rss:{shmem}kB",
         "4.x": f"Killed process {pid} ({comm}) total-vm:{vm}kB, anon-rss:{anon}kB, file-rss:{file}kB, shmem-rss:{shmem}kB",
         }[shape]),
    st.sampled_from(REASONS), st.integers(1, 4194304), comms, st.integers(0, 1 << 40), st.integers(0, 1 << 40),
    st.integers(0, 1 << 30), st.integers(0, 1 << 30), st.integers(0, 65535), st.integers(0, 1 << 20),
    st.integers(-1000, 1000), st.sampled_from(["5.4", "5.1", "4.x"]))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(kill_line, min_size=1, max_size=5), st.lists(noise, max_size=20), st.randoms(use_true_random=False))
def test_every_well_formed_kill_line_is_reported_exactly(kills, junk, rnd):
    junk = [text for text in junk if not KILL_VERB_LINE.match(text.strip())]  # those are kills too: below
    messages = [k[4] for k in kills]
    # Unrelated lines anywhere, but the kill lines keep their order.
    for text in junk:
        messages.insert(rnd.randint(0, len(messages)), text)
    got = feed(messages)
    assert [(k.pid, k.comm, k.anon_rss_kb, k.uid) for k in got] == [(pid, comm, anon, uid) for pid, comm, anon, uid, _ in kills]


def mutate(lines, rnd):
    out = []
    for line in lines:
        r = rnd.random()
        if r < 0.05:
            continue  # lost
        if r < 0.10:
            cut = rnd.randint(0, len(line))
            line = line[:cut]  # truncated
        elif r < 0.15:
            i = rnd.randint(0, len(line))
            line = line[:i] + rnd.choice(["(", ")", " ", "\x00", "\udcff", "999999999999999999999", ","]) + line[i:]
        elif r < 0.18:
            out.append(line)  # duplicated
        out.append(line)
    if rnd.random() < 0.3 and len(out) > 2:
        i = rnd.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]  # reordered
    return out


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.sampled_from(FIXTURES))
def test_mutated_real_reports_never_raise_or_invent(rnd, fixture):
    lines = [l for l in fixture.read_text(errors="surrogateescape").splitlines() if not l.startswith("#")]
    messages = mutate(lines, rnd)
    kills = feed(messages)
    announced = {int(m.group(1)) for text in messages for m in KILLED.finditer(text)}
    assert {k.pid for k in kills} <= announced


# Anything after the verb and the pid: the known shapes' fields, cut anywhere, or text of no shape.
after_pid = st.one_of(
    st.text(max_size=80),
    st.builds(lambda comm, tail, cut: f" ({comm}) {tail}"[:cut], comms,
              st.sampled_from(["total-vm:1kB, anon-rss:2kB, file-rss:3kB", "vsz:1kB", "rss=4kB", ""]),
              st.integers(0, 80)),
    st.builds(lambda uid, comm: f", UID {uid}, ({comm}) total-vm:1kB, anon-rss:2kB, file-rss:3kB",
              st.integers(0, 65535), comms),
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.none(), st.sampled_from(REASONS)), st.integers(1, 4194304), after_pid,
       st.lists(noise, max_size=5))
def test_every_line_with_the_kernels_kill_verb_is_an_event(reason, pid, rest, before):
    """Issue 16: the parser never drops a kill line. Whatever follows "Killed process <pid>" (a
    shape known, one cut short, one no kernel printed yet), the kill is reported with its pid."""
    if rest[:1].isdigit():
        rest = " " + rest  # the pid ends where its digits end
    line = ("" if reason is None else reason + ": ") + f"Killed process {pid}" + rest
    assert KILL_VERB_LINE.match(line.strip())
    kills = feed([b for b in before if not KILL_VERB_LINE.match(b.strip())] + [line])
    assert [k.pid for k in kills][-1:] == [pid]
    assert kills[-1].kill_message == line
