"""The `oom-journal` command: the daemon (default), and its sub-commands."""
from __future__ import annotations

import logging
import sys

from oom_journal import __version__
from oom_journal.app import config as config_mod
from oom_journal.app.log import setup_logging
from oom_journal.text import printable

COMMANDS = ("run", "check-config", "test-sinks", "list", "show")
USAGE = """usage: oom-journal [run] [OPTIONS]       run the daemon in the foreground
       oom-journal check-config [OPTIONS] check the configuration; exit 0, or 78 naming the bad option
       oom-journal test-sinks [OPTIONS]   send a marked test event to each configured sink; exit 1 if one refused
       oom-journal list [--since T] [--until T] [-u UNIT] [-b [ID]] [-n N] [--json] [-D DIR]
                                          the OOM kills in the journal, newest last
       oom-journal show ID|PID|COMM       everything about one kill
       oom-journal --help | --version
Options: oom-journal run --help"""


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
        from oom_journal.app.test_sinks import test_sinks

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
