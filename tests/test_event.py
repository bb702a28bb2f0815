"""The journal entry's fields and the JSON document, rendered from a kill as the parser gives it."""
import json

from oom_journal.enrich.event import OomEvent
from oom_journal.model import MESSAGE_ID
from oom_journal.text import human_size, printable
from oom_journal.model import HostInfo
from oom_journal.model import KernelKill

HOST = HostInfo(hostname="web1", boot_id="4b280df657cf4c99b6e230a7c3f459ca", kernel="6.18.44")


class Lookup:
    def __init__(self, argv, source="exec-event", note=""):
        self.argv, self.source, self.note = argv, source, note


def kill(**kw):
    base = dict(reason="Memory cgroup out of memory", pid=1234, comm="java", timestamp_us=79928453, seq=881,
                uid=1000, total_vm_kb=3000000, anon_rss_kb=1992294, file_rss_kb=10, shmem_rss_kb=0,
                pgtables_kb=4000, oom_score_adj=0, constraint="CONSTRAINT_MEMCG", global_oom=False,
                oom_memcg="/system.slice/app.service", task_memcg="/system.slice/app.service",
                trigger_comm="java", trigger_gfp_mask="0xcc0(GFP_KERNEL)", trigger_order=0,
                kill_message="Memory cgroup out of memory: Killed process 1234 (java) ...")
    base.update(kw)
    return KernelKill(**base)


def test_message_and_fields_of_a_unit_kill():
    e = OomEvent.build(kill(), HOST, Lookup([b"java", b"-Xmx2g", b"-jar", b"app.jar"]), event_time=0)
    f = e.journal_fields()
    assert f["MESSAGE"] == ("Memory cgroup out of memory: killed process 1234 (java) of app.service: "
                            "java -Xmx2g -jar app.jar; anon-rss 1.9 GiB")
    assert f["MESSAGE_ID"] == MESSAGE_ID and f["PRIORITY"] == 3 and f["SYSLOG_IDENTIFIER"] == "oom-journal"
    assert f["OOM_EVENT_ID"] == "4b280df657cf4c99b6e230a7c3f459ca-79928453-1234"
    assert f["OOM_CMDLINE"] == b"java -Xmx2g -jar app.jar"
    assert f["OOM_ARGV"] == b"java\0-Xmx2g\0-jar\0app.jar"
    assert f["OBJECT_SYSTEMD_UNIT"] == f["OOM_UNIT"] == "app.service"
    assert f["OOM_SLICE"] == "system.slice"
    assert f["OOM_TRIGGER_GFP_MASK"] == "0xcc0(GFP_KERNEL)"
    assert "OOM_CONTAINER_ID" not in f  # absent, not empty


def test_unknown_cmdline_and_no_unit():
    e = OomEvent.build(kill(task_memcg="/", oom_memcg=None, global_oom=True, reason="Out of memory"), HOST,
                       Lookup(None, "not-found", "pid not in cache"), event_time=0)
    f = e.journal_fields()
    assert f["MESSAGE"] == "Out of memory: killed process 1234 (java): command line unknown; anon-rss 1.9 GiB"
    assert "OOM_CMDLINE" not in f and "OBJECT_SYSTEMD_UNIT" not in f
    assert f["OOM_CMDLINE_SOURCE"] == "not-found" and f["OOM_CMDLINE_NOTE"] == "pid not in cache"


def test_hostile_bytes_are_exact_in_fields_and_escaped_in_message():
    comm = "a) b (\x1b[31m" + b"\xff".decode("utf-8", "surrogateescape")
    argv = [b"evil\nline", b"\x1b]0;title\x07", b"\xff\xfe", b"<!channel>"]
    e = OomEvent.build(kill(comm=comm), HOST, Lookup(argv), event_time=0)
    f = e.journal_fields()
    assert f["OOM_COMM"] == b"a) b (\x1b[31m\xff"
    assert f["OOM_CMDLINE"] == b"evil\nline \x1b]0;title\x07 \xff\xfe <!channel>"
    msg = f["MESSAGE"]
    assert msg.isprintable(), msg
    assert "(a) b (\\x1b[31m\\xff)" in msg and "evil\\x0aline" in msg
    doc = json.loads(json.dumps(e.document()))
    assert doc["comm"] == "a) b (\x1b[31m\\xff"
    assert doc["argv"] == ["evil\nline", "\x1b]0;title\x07", "\\xff\\xfe", "<!channel>"]


SCHEMA_1_KEYS = {"schema", "event_id", "time", "hostname", "boot_id", "kernel", "message", "reason", "pid", "comm",
                 "cmdline", "argv", "cmdline_source", "uid", "cgroup", "oom_memcg", "global_oom", "unit", "slice",
                 "container_id", "container_runtime", "pod_uid", "container_name", "pod_name",
                 "pod_namespace", "constraint", "total_vm_kb", "anon_rss_kb",
                 "file_rss_kb", "shmem_rss_kb", "pgtables_kb", "oom_score_adj", "memcg_usage_kb", "memcg_limit_kb",
                 "trigger", "kernel_seq", "kernel_timestamp_us", "kernel_report", "witness", "witness_note",
                 "unseen_kills", "completes", "incident_id", "oom_group", "killer", "killer_message"}


def test_readme_documents_every_schema_1_field():
    """The README's field table names each key of the document (users read it, not the code)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("### The event document"):readme.index("## Configuration")]
    documented = {name for row in table.splitlines() if row.startswith("| `")
                  for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    assert SCHEMA_1_KEYS <= documented, SCHEMA_1_KEYS - documented


def test_document_schema():
    e = OomEvent.build(kill(task_memcg=f"/docker/{'a' * 64}"), HOST, Lookup([b"x"]), event_time=1700000000.25)
    d = e.document()
    assert d["time"] == "2023-11-14T22:13:20.250000+00:00"
    assert d["container_id"] == "a" * 64 and d["container_runtime"] == "docker" and d["unit"] is None
    assert d["trigger"] == {"comm": "java", "pid": None, "gfp_mask": "0xcc0(GFP_KERNEL)", "order": 0}
    # Schema 1 is a promise to consumers: exactly these keys, always present (null when unknown).
    # Renaming or removing one must fail here (and raise "schema"); adding one is allowed by the
    # README but must be added here, so the list below is what the README documents.
    assert set(d) == SCHEMA_1_KEYS
    assert set(d["trigger"]) == {"comm", "pid", "gfp_mask", "order"}
    assert e.message().endswith(f"of container {'a' * 12}: x; anon-rss 1.9 GiB")


def test_long_cmdline_is_whole_in_field_and_cut_in_message():
    argv = [b"x" * 200_000]
    e = OomEvent.build(kill(), HOST, Lookup(argv), event_time=0)
    assert len(e.journal_fields()["OOM_CMDLINE"]) == 200_000
    assert len(e.message()) < 2300 and "…" in e.message()


def test_human_size_and_printable():
    assert [human_size(x) for x in (None, 512, 2048, 1992294, 5 << 30)] == ["?", "512 KiB", "2.0 MiB", "1.9 GiB", "5.0 TiB"]
    assert printable("tab\there") == "tab\\x09here"


def test_printable_escapes_are_unambiguous():
    assert printable("\U000e0001" + "1") == "\\U000e00011"
    assert printable("\u2028") == "\\u2028"


def test_sink_documents_carry_at_most_32_kib_of_command_line_cut_at_a_character():
    from oom_journal.enrich.event import SINK_CMDLINE_MAX_BYTES, cap_command_line

    limit = SINK_CMDLINE_MAX_BYTES
    assert limit == 32 * 1024
    # A 3-byte character straddles the limit: it goes whole, not in part.
    argv = [b"prog", ("a" * (limit - 7)).encode(), "✓✓".encode()]
    doc = OomEvent.build(kill(), HOST, Lookup(argv), event_time=0).document()
    whole = doc["cmdline"]
    assert len(whole.encode()) == limit + 5  # the first ✓ is bytes limit - 1 to limit + 1
    capped = cap_command_line(doc)
    assert capped["cmdline"] == whole[:-2]  # "prog a..a ": limit - 1 bytes
    assert len(capped["cmdline"].encode()) == limit - 1
    assert capped["cmdline_truncated"] is True and capped["cmdline_length"] == limit + 5
    # argv: the same budget, spaces counted; whole arguments while they fit; of the last, the
    # one byte left is part of a character: no argument, rather than an empty one.
    assert capped["argv"] == ["prog", "a" * (limit - 7)]
    json.dumps(capped, ensure_ascii=False).encode("utf-8")  # valid UTF-8 throughout
    # The whole document, for the journal and stdout, is untouched; one that fits gets no fields.
    assert doc["cmdline"] == whole and "cmdline_truncated" not in doc
    small = OomEvent.build(kill(), HOST, Lookup([b"java", b"-jar", b"app.jar"]), event_time=0).document()
    assert cap_command_line(small) is small and "cmdline_length" not in small
    assert cap_command_line({"cmdline": None, "argv": None}) == {"cmdline": None, "argv": None}


def test_the_argv_budget_cuts_the_argument_it_ends_in():
    from oom_journal.enrich.event import cap_command_line

    doc = {"cmdline": "ab cdé fgh", "argv": ["ab", "cdé", "fgh"]}  # 11 bytes: é is two
    capped = cap_command_line(doc, limit=6)
    assert capped["cmdline"] == "ab cd"  # byte 6 is the middle of é: it is left out
    assert capped["argv"] == ["ab", "cd"]
    assert capped["cmdline_length"] == 11
    assert cap_command_line(doc, limit=7)["argv"] == ["ab", "cdé"]  # exactly to the end of an argument
    assert cap_command_line(doc, limit=8)["argv"] == ["ab", "cdé"]  # the space alone: no empty argument
    assert cap_command_line(doc, limit=9)["argv"] == ["ab", "cdé", "f"]
    assert cap_command_line(doc, limit=9)["cmdline"] == "ab cdé f"
    # Bytes that were not UTF-8 are \xNN in the document: counted as the four characters they are.
    odd = {"cmdline": "x\\xff\\xfe", "argv": ["x\\xff\\xfe"]}
    assert cap_command_line(odd, limit=5) == {"cmdline": "x\\xff", "argv": ["x\\xff"], "cmdline_truncated": True,
                                              "cmdline_length": 9}


def test_the_journal_and_stdout_keep_a_huge_command_line_whole():
    argv = [b"prog"] + [b"y" * 60_000] * 3
    e = OomEvent.build(kill(), HOST, Lookup(argv), event_time=0)
    assert e.journal_fields()["OOM_CMDLINE"] == b" ".join(argv)
    assert e.journal_fields()["OOM_ARGV"] == b"\0".join(argv)
    assert e.document()["cmdline"] == b" ".join(argv).decode() and "cmdline_truncated" not in e.document()
