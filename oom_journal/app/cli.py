"""The `oom-journal` command: the daemon (default), and its sub-commands."""
from __future__ import annotations

import logging
import os
import sys
import traceback

from oom_journal import __version__
from oom_journal.app import config as config_mod
from oom_journal.text import printable

COMMANDS = ("run", "check-config", "test-sinks", "list", "show")
USAGE = f"""usage: oom-journal [run] [OPTIONS]       run the daemon in the foreground
       oom-journal check-config [OPTIONS] check the configuration; exit 0, or 78 naming the bad option
       oom-journal test-sinks [OPTIONS]   send a marked test event to each configured sink; exit 1 if one refused
       oom-journal list [--since T] [--until T] [-u UNIT] [-b [ID]] [-n N] [--json] [-D DIR]
                                          the OOM kills in the journal, newest last
       oom-journal show ID|PID|COMM       everything about one kill
       oom-journal --help | --version
Options: oom-journal run --help"""


def setup_logging(level: str, environ=os.environ) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if environ.get("JOURNAL_STREAM"):
        # stderr goes to the journal: "<N>" prefixes set each line's priority (sd-daemon(3)),
        # and journald adds the time itself.
        handler.setFormatter(OneLineFormatter("%(message)s", priority_prefix=True))
    else:
        handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class OneLineFormatter(logging.Formatter):
    """The log's encoder: ONE line per record. journald's stream transport makes every line of
    stderr an entry of its own and reads a "<N>" at a line's start as its priority, so a process
    name such as "x\n<0>sshd[1]: Accepted ..." in a message would otherwise forge an entry at
    priority emerg; on a terminal, ESC sequences would steer it. The message (with whatever it
    quotes) is escaped by text.printable(); a traceback keeps its lines, each escaped and, for
    the journal, each with the record's priority."""

    PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self, fmt, priority_prefix: bool = False):
        super().__init__(fmt)
        self.priority_prefix = priority_prefix

    def formatMessage(self, record):  # noqa: N802 (logging's naming)
        return printable(super().formatMessage(record))

    def formatException(self, ei):  # noqa: N802
        # A frame is two lines (where, and its source); an exception's own text (which may quote
        # anything) is escaped into one line, whatever newlines it holds.
        lines = []
        for chunk in traceback.TracebackException(*ei).format(chain=True):
            if chunk.startswith("  File"):
                lines += [printable(line) for line in chunk.splitlines()]
            elif chunk.strip("\n"):
                lines.append(printable(chunk.strip("\n")))
        return "\n".join(lines)

    def formatStack(self, stack_info):  # noqa: N802
        return "\n".join(printable(line) for line in super().formatStack(stack_info).splitlines())

    def format(self, record):
        text = super().format(record)
        if not self.priority_prefix:
            return text
        prefix = f"<{self.PRIORITIES.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


def config_error(e: config_mod.ConfigError) -> int:
    # ONE line, naming the option: what systemctl status and a person's terminal show.
    print(printable(f"oom-journal: {e}"), file=sys.stderr)
    return config_mod.EX_CONFIG


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"oom-journal {__version__}")
        return 0
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(USAGE)
        return 0
    command = "run"
    if argv and not argv[0].startswith("-"):
        command = argv.pop(0)
        if command not in COMMANDS:
            print(f"oom-journal: unknown command {command!r}\n{USAGE}", file=sys.stderr)
            return 64  # EX_USAGE
    if command in ("list", "show"):
        from oom_journal.history import commands as history

        return (history.main_list if command == "list" else history.main_show)(argv)
    if "-h" in argv or "--help" in argv:
        config_mod.build_parser(prog=f"oom-journal {command}").print_help()
        return 0
    try:
        cfg = config_mod.load(argv)
    except config_mod.ConfigError as e:
        return config_error(e)
    if command == "check-config":
        return check_config(cfg)
    if command == "test-sinks":
        return test_sinks(cfg)
    return run(cfg, argv)


def check_sink_libraries(cfg) -> None:
    """A configured sink whose library is missing is a configuration error (ConfigError)."""
    from oom_journal.sinks import configured_sinks
    from oom_journal.sinks.base import SinkUnavailable

    for sink in configured_sinks(cfg):
        try:
            sink.open()
        except SinkUnavailable as e:
            raise config_mod.ConfigError(e.option, str(e)) from None
        finally:
            sink.close()


def check_config(cfg) -> int:
    try:
        check_sink_libraries(cfg)
    except config_mod.ConfigError as e:
        return config_error(e)
    print("# configuration files read: " + (", ".join(cfg.config_files) or "none"))
    for warning in cfg.warnings:
        print(f"# warning: {warning}")
    for line in config_mod.describe(cfg):
        print(line)
    print("# configuration OK")
    return 0


def test_sinks(cfg) -> int:
    """What a user runs right after configuring a sink: does it accept an event?"""
    from oom_journal.enrich.event import test_event
    from oom_journal.enrich.host import read_host_info
    from oom_journal.sinks import configured_sinks
    from oom_journal.sinks.base import OK, SinkUnavailable

    setup_logging("error" if cfg.log_level != "debug" else "debug")
    sinks = configured_sinks(cfg)
    if not sinks:
        print("no sinks are configured (see oom-journal.conf(5): syslog-server, elasticsearch-server, "
              "kafka-brokers, slack-webhook)")
        return 0
    event = test_event(read_host_info(cfg.proc_root))
    print(f"sending test event {event.event_id}")
    failures = 0
    for sink in sinks:
        try:
            sink.open()
        except SinkUnavailable as e:
            print(f"{sink.name}: FAILED: {e}")
            failures += 1
            continue
        try:
            (result,) = sink.deliver([event.document()])
        finally:
            sink.close()
        if result.outcome == OK:
            print(f"{sink.name} ({sink.describe()}): accepted")
        else:
            failures += 1
            kind = "FAILED" if result.outcome != "retry" else "FAILED (temporary: the daemon would retry)"
            print(f"{sink.name} ({sink.describe()}): {kind}: {result.error}")
    return 1 if failures else 0


def run(cfg, argv) -> int:
    from oom_journal.app.daemon import Daemon, StartupError

    try:
        check_sink_libraries(cfg)  # before any log line: a config error is ONE line on stderr
    except config_mod.ConfigError as e:
        return config_error(e)
    setup_logging(cfg.log_level)
    log = logging.getLogger("oom_journal")
    log.info("oom-journal %s starting", __version__)
    for warning in cfg.warnings:
        log.warning("%s", warning)
    try:
        return Daemon(cfg, argv).run()
    except config_mod.ConfigError as e:
        return config_error(e)
    except StartupError as e:
        log.error("cannot start: %s", e)
        return 1
