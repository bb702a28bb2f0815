"""The configuration: files under /etc/oom-journal/, OOM_JOURNAL_* variables, command-line flags.

Precedence, lowest first: built-in defaults, /etc/oom-journal/oom-journal.conf, then
/etc/oom-journal/conf.d/*.conf in name order, environment variables, command-line flags.
`-c FILE` (or OOM_JOURNAL_CONFIG) reads FILE instead of those files.

Every value is checked before the daemon reports READY=1. A bad one raises ConfigError, which
the CLI turns into ONE line on stderr naming the option, and exit status 78 (EX_CONFIG from
sysexits.h; the unit's RestartPreventExitStatus=78 stops systemd from restarting in a loop).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import time
import urllib.parse
from typing import Iterable, Optional

from oom_journal.redact import SECRET_OPTIONS, holds_secret, mask, mask_kafka_option, mask_userinfo, scrub

EX_CONFIG = 78
DEFAULT_CONFIG_DIR = "/etc/oom-journal"
ENV_PREFIX = "OOM_JOURNAL_"
LOG_LEVELS = ("debug", "info", "warning", "error")
# Which options hold secrets, and how they are shown (never): redact.py, the one rule.


class ConfigError(Exception):
    def __init__(self, option: Optional[str], message: str):
        self.option = option
        self.message = message
        super().__init__(f"{option}: {message}" if option else message)


def default_state_dir(environ) -> str:
    # systemd sets $STATE_DIRECTORY from StateDirectory= (colon-separated if several).
    state = environ.get("STATE_DIRECTORY")
    return state.split(":")[0] if state else "/var/lib/oom-journal"


# --- value types: each raises ValueError/ArgumentTypeError with a message that stands alone ----
def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text!r}")
    return value


def _seconds_or_auto(text: str):
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return _positive_float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or a number of seconds above 0, not {text!r}") from None


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    return parse


_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.I)


def _size(text: str) -> int:
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"must be a size such as 64M or 1048576, not {text!r}")
    factor = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[(m.group(2) or "")[:1].upper()]
    value = int(m.group(1)) * factor
    if value < 1 << 20:
        raise argparse.ArgumentTypeError(f"must be at least 1M, not {text!r}")
    return value


def _bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, not {text!r}")


def _log_level(text: str) -> str:
    lowered = text.strip().lower()
    if lowered == "warn":
        lowered = "warning"
    if lowered not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_LEVELS)}, not {text!r}")
    return lowered


def _choice(*choices: str):
    def parse(text: str) -> str:
        lowered = text.strip().lower()
        if lowered not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}, not {text!r}")
        return lowered
    return parse


def _http_url(text: str) -> str:
    # Never quotes the value: it may be a webhook (a secret) or hold user:password@.
    try:
        parsed = urllib.parse.urlsplit(text.strip())
        # urlsplit silently drops tabs and newlines (WHATWG's "unsafe bytes"): a URL holding them,
        # or any other control character or space, was mistyped.
        ok = (parsed.scheme in ("http", "https") and bool(parsed.hostname)
              and not any(c <= " " or c == "\x7f" for c in text.strip()))
        if ok:
            _ = parsed.port  # raises ValueError for a port that is not a number
    except ValueError:  # "Invalid IPv6 URL", a bad port: urllib's words would quote the URL
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError("must be an http:// or https:// URL")
    return text.strip()


SYSLOG_FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
                     "authpriv", "ftp", "local0", "local1", "local2", "local3", "local4", "local5",
                     "local6", "local7")


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, without `import shutil` for the terminal's width: argparse makes
    a formatter at every add_argument(), and shutil brings bz2 and lzma (their libraries too), 2.1
    MiB of the idle daemon's RSS (python -S -c 'import shutil': VmRSS 7.5 -> 9.7 MiB). The width
    is shutil.get_terminal_size()'s: $COLUMNS, else the terminal's, else 80."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        if width is None:
            try:
                width = int(os.environ.get("COLUMNS", "0")) or os.get_terminal_size(sys.__stdout__.fileno()).columns
            except (AttributeError, ValueError, OSError):
                width = 80
            width -= 2  # as argparse does
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting 2."""

    def error(self, message):
        m = re.match(r"argument (\S+?)(?:/\S+)?: (.*)", message, re.S)
        if m:
            option = m.group(1).split("/")[-1]
            text = m.group(2).replace("invalid _", "invalid ").strip()
            if holds_secret(option) and re.match(r"invalid \S+ value:", text):
                # argparse's "invalid X value: '<the value>'" would print the secret.
                text = "is not a valid value (not shown: it may hold a secret)"
            raise ConfigError(option, text)
        m = re.match(r"unrecognized arguments: (\S+)", message)
        if m:
            raise ConfigError(m.group(1).split("=")[0], "unknown option")
        raise ConfigError(None, message)


def build_parser(config_files=(), prog="oom-journal"):
    import configargparse

    class Parser(_Parser, configargparse.ArgumentParser):
        pass

    p = Parser(prog=prog, default_config_files=list(config_files), auto_env_var_prefix=ENV_PREFIX,
               add_config_file_help=False, add_env_var_help=False, allow_abbrev=False, formatter_class=_Formatter,
               description="Records every kernel OOM kill, with the victim's full command line, in the journal.")
    g = p.add_argument_group("general")
    g.add_argument("-c", "--config", metavar="FILE",
                   help=f"read this file instead of {DEFAULT_CONFIG_DIR}/oom-journal.conf and conf.d/*.conf")
    g.add_argument("--source", type=_choice("auto", "journal", "kmsg"), default="auto",
                   help="where kernel messages are read: the journal, /dev/kmsg, or auto "
                        "(the journal when journald records kernel messages; default)")
    g.add_argument("--output", type=_choice("auto", "journal", "stdout"), default="auto",
                   help="where events are written: the journal, or stdout as JSON lines; auto: the "
                        "journal when journald runs (default)")
    g.add_argument("--state-dir", metavar="DIR", default=None,
                   help="read position and recorded kills (default $STATE_DIRECTORY or /var/lib/oom-journal)")
    g.add_argument("--log-level", type=_log_level, default="info", env_var="LOGGING_LEVEL",
                   help="debug, info, warning or error (environment: LOGGING_LEVEL; default info)")
    c = p.add_argument_group("process cache")
    c.add_argument("--process-refresh", type=_seconds_or_auto, default="auto", metavar="SECONDS",
                   help="interval of the incremental /proc scan, which reads only new processes; auto (default): "
                        "10 s while exec events arrive, else as often as costs 1%% of a CPU, at most 10 times a second")
    c.add_argument("--process-events", type=_choice("auto", "off"), default="auto",
                   help="auto: learn of every exec from the kernel's process-event connector (default); "
                        "off: rely on the /proc scan alone")
    c.add_argument("--cache-max-processes", type=_int_at_least(100), default=65536, metavar="N",
                   help="most processes kept in the cache (default 65536)")
    c.add_argument("--cache-max-bytes", type=_size, default=64 << 20, metavar="SIZE",
                   help="most bytes of command lines kept in the cache (default 64M)")
    c.add_argument("--exit-grace", type=_positive_float, default=30.0, metavar="SECONDS",
                   help="how long an exited process stays in the cache (default 30)")
    c.add_argument("--proc-root", default="/proc", metavar="DIR", help=argparse.SUPPRESS)
    c.add_argument("--kmsg-path", default="/dev/kmsg", metavar="PATH", help=argparse.SUPPRESS)
    # A directory of journal files read instead of the machine's journal (--source journal): for
    # bench/long_boot_bench.py, which times a first start on a generated boot of a million kernel
    # lines without writing them to this machine's kernel log (every later first start in this
    # boot, the test suite's daemons too, would read them all). Hidden: no user needs it.
    c.add_argument("--journal-dir", default=None, metavar="DIR", help=argparse.SUPPRESS)
    n = p.add_argument_group("container names (read from the runtimes' state on this node, read-only)")
    n.add_argument("--containerd-state", metavar="DIR", default="/run/containerd",
                   help="containerd's state directory, whose OCI bundles name CRI containers and pods (default /run/containerd)")
    n.add_argument("--containers-storage", metavar="DIR", default="/var/lib/containers/storage",
                   help="podman's and CRI-O's containers-storage root (default /var/lib/containers/storage)")
    n.add_argument("--containers-runroot", metavar="DIR", default="/run/containers/storage",
                   help="podman's and CRI-O's containers-storage runroot (default /run/containers/storage)")
    n.add_argument("--docker-root", metavar="DIR", default="/var/lib/docker",
                   help="Docker's data root (default /var/lib/docker)")
    o = p.add_argument_group("outbox (events waiting for the sinks)")
    o.add_argument("--outbox-max-events", type=_int_at_least(1), default=10000, metavar="N",
                   help="most undelivered events kept per sink; beyond, the oldest are dropped and counted (default 10000)")
    o.add_argument("--outbox-max-age", type=_positive_float, default=7 * 24 * 3600.0, metavar="SECONDS",
                   help="undelivered events older than this are dropped and counted (default 604800, a week)")
    o.add_argument("--outbox-max-bytes", type=_size, default=64 << 20, metavar="SIZE",
                   help="most bytes of undelivered events kept per sink; beyond, the oldest are dropped and "
                        "counted (default 64M)")
    s = p.add_argument_group("syslog sink")
    s.add_argument("--syslog-server", metavar="HOST:PORT|PATH", help="send events to this syslog server")
    s.add_argument("--syslog-proto", type=_choice("udp", "tcp", "unix"), default="udp",
                   help="udp (default), tcp (octet-counted framing) or unix (a socket path)")
    s.add_argument("--syslog-format", type=_choice("rfc5424", "rfc3164"), default="rfc5424",
                   help="rfc5424 with structured data (default) or rfc3164")
    s.add_argument("--syslog-max-size", type=_int_at_least(480), default=8096, metavar="OCTETS",
                   help="longest record sent; longer ones are shortened (the cmdline first). Default 8096, "
                        "what a default rsyslog takes whole; raise it only with the receiver's limit "
                        "(rsyslog maxMessageSize), since a receiver splits a longer TCP frame in two")
    s.add_argument("--syslog-facility", type=_choice(*SYSLOG_FACILITIES), default="daemon",
                   help="syslog facility (default daemon)")
    e = p.add_argument_group("Elasticsearch sink")
    e.add_argument("--elasticsearch-server", action="append", metavar="URL",
                   help="an Elasticsearch node URL; give several for a cluster")
    e.add_argument("--elasticsearch-index", default="oom-events-%Y.%m.%d",
                   help="index name, with strftime date fields (default oom-events-%%Y.%%m.%%d)")
    e.add_argument("--elasticsearch-user", help="user for basic authentication")
    e.add_argument("--elasticsearch-password", help="password for basic authentication (a secret)")
    e.add_argument("--elasticsearch-api-key", help="API key, instead of user and password (a secret)")
    e.add_argument("--elasticsearch-ca-file", metavar="FILE", help="CA certificates to verify the server")
    e.add_argument("--elasticsearch-verify-tls", type=_bool, default=True, metavar="BOOL",
                   help="verify the server's certificate (default true)")
    k = p.add_argument_group("Kafka sink")
    k.add_argument("--kafka-brokers", metavar="HOST:PORT[,...]", help="bootstrap brokers")
    k.add_argument("--kafka-topic", help="topic the events go to")
    k.add_argument("--kafka-option", action="append", metavar="KEY=VALUE", default=None,
                   help="a librdkafka setting passed through (security.protocol, sasl.*, ssl.*); repeatable")
    m = p.add_argument_group("metrics (Prometheus)")
    m.add_argument("--metrics-listen", metavar="ADDR:PORT",
                   help="serve Prometheus metrics at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9561 (default off)")
    m.add_argument("--metrics-textfile", metavar="PATH",
                   help="write the metrics to this *.prom file for node_exporter's textfile collector, e.g. "
                        "/var/lib/prometheus/node-exporter/oom-journal.prom (default off)")
    sl = p.add_argument_group("Slack sink")
    sl.add_argument("--slack-webhook", metavar="URL", type=_http_url, help="incoming webhook URL (a secret)")
    sl.add_argument("--slack-channel", help="channel to post to, overriding the webhook's own")
    return p


def config_files(config: Optional[str], config_dir: str = DEFAULT_CONFIG_DIR) -> list:
    if config:
        if not os.path.exists(config) or os.path.isdir(config):
            raise ConfigError("--config", f"no such file: {config}")
        return [config]
    main = os.path.join(config_dir, "oom-journal.conf")
    return ([main] if os.path.isfile(main) else []) + sorted(glob.glob(os.path.join(config_dir, "conf.d", "*.conf")))


def _pre_scan_config(argv, environ) -> Optional[str]:
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config"):
            if i + 1 >= len(argv):
                raise ConfigError("--config", "expected a file name")
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg.startswith("-c") and len(arg) > 2:
            return arg[2:]
    return environ.get(ENV_PREFIX + "CONFIG")


def _check_files(parser, files) -> tuple[list, list]:
    """Unknown keys, naming the file: configargparse would only say 'unrecognized arguments'.
    Returns the files that hold a secret, and the values given for options that hold secrets."""
    known = {a.dest.replace("_", "-") for a in parser._actions}
    secret_keys = {k.replace("_", "-") for k in SECRET_OPTIONS}
    with_secrets = []
    raw = []
    for path in files:
        try:
            with open(path) as f:
                items = parser._config_file_parser.parse(f)
        except OSError as e:
            raise ConfigError("--config", f"cannot read {path}: {e.strerror}") from None
        except Exception as e:  # configargparse.ConfigFileParserException
            # Its words quote the offending line, which may hold a secret: say where, not what.
            m = re.match(r"Unexpected line (\d+)", str(e))
            # (configargparse counts lines from 0)
            what = f"line {int(m.group(1)) + 1} is not 'option = value'" if m else "cannot be parsed"
            raise ConfigError("--config", f"{path}: {what}") from None
        for key, value in items.items():
            if holds_secret(key):
                raw += value if isinstance(value, list) else [value]
        for key in items:
            if key not in known or key == "config":
                raise ConfigError(key, f"unknown option in {path}")
        kafka = items.get("kafka-option")
        kafka = kafka if isinstance(kafka, list) else [kafka] if kafka else []
        if secret_keys & set(items) or any(mask_kafka_option(str(o)) != str(o) for o in kafka):
            with_secrets.append(path)
    return with_secrets, raw


def _check_environment(parser, environ) -> None:
    known = {ENV_PREFIX + a.dest.upper() for a in parser._actions}  # (+ OOM_JOURNAL_LOG_LEVEL)
    for name in environ:
        if name.startswith(ENV_PREFIX) and name not in known:
            raise ConfigError(name, "unknown environment variable")


def _raw_secret_values(argv, environ) -> list:
    """The values given for options that hold secrets, as typed: what no error may quote."""
    values = []
    for i, arg in enumerate(argv):
        name, sep, value = arg.partition("=")
        if name.startswith("--") and holds_secret(name):
            if sep:
                values.append(value)
            elif i + 1 < len(argv):
                values.append(argv[i + 1])
    values += [v for k, v in environ.items() if k.startswith(ENV_PREFIX) and holds_secret(k[len(ENV_PREFIX):].lower())]
    return values


def _secret_parts(values: Iterable[str]) -> list:
    """Each value, and the parts of it that are the secret (a URL's password, KEY=VALUE's value)."""
    parts = []
    for value in values:
        value = str(value)
        parts.append(value)
        m = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@?#]*?:([^/@?#]*)@", value)
        if m:
            parts.append(m.group(1))
        for sep in ("=", ":", " "):
            if sep in value:
                parts.append(value.split(sep, 1)[1].strip())
                break
    return parts


def load(argv, environ=None, config_dir: str = DEFAULT_CONFIG_DIR) -> argparse.Namespace:
    """Parse and check everything; raises ConfigError naming the first bad option.

    No error quotes a secret: the checks never quote a secret option's value, and every error's
    text is scrubbed of the values given for such options, whatever shape they have."""
    environ = dict(os.environ if environ is None else environ)
    secrets = _raw_secret_values(argv, environ)
    try:
        return _load(argv, environ, config_dir, secrets)
    except ConfigError as e:
        raise ConfigError(e.option, scrub(e.message, _secret_parts(secrets))) from None
    except Exception as e:  # a check that failed in a way it did not foresee: still one line, exit 78
        raise ConfigError(None, f"the configuration could not be checked ({type(e).__name__})") from None


def _load(argv, environ, config_dir, secrets: list) -> argparse.Namespace:
    files = config_files(_pre_scan_config(argv, environ), config_dir)
    parser = build_parser(files)
    secret_files, raw = _check_files(parser, files)
    secrets += raw
    _check_environment(parser, environ)
    if ENV_PREFIX + "LOG_LEVEL" in environ:  # the seeds' LOGGING_LEVEL is the log level's variable;
        environ.setdefault("LOGGING_LEVEL", environ.pop(ENV_PREFIX + "LOG_LEVEL"))  # accept ours too
    ns = parser.parse_args(argv, env_vars=environ)
    ns.config_files = files
    ns.warnings = [f"{path} holds a secret and is readable by users other than root: chmod 600 {path}"
                   for path in secret_files if os.stat(path).st_mode & 0o044]
    if ns.state_dir is None:
        ns.state_dir = default_state_dir(environ)
    validate(ns)
    return ns


def validate(ns) -> None:
    """Checks that span options, or need more than a type: each names the option at fault."""
    _check_metrics(ns)
    if ns.syslog_server:
        if ns.syslog_proto == "unix":
            if not ns.syslog_server.startswith("/"):
                raise ConfigError("--syslog-server", "with --syslog-proto unix, must be a socket path")
        else:
            _host_port("--syslog-server", ns.syslog_server)
        limit = 65507 if ns.syslog_proto == "udp" else 200000
        if ns.syslog_max_size > limit:
            raise ConfigError("--syslog-max-size", f"at most {limit} octets over {ns.syslog_proto}")
    if ns.elasticsearch_server:
        for url in ns.elasticsearch_server:
            try:
                _http_url(url)
            except argparse.ArgumentTypeError as e:
                raise ConfigError("--elasticsearch-server", f"{mask_userinfo(url)!r} {e}") from None
        if ns.elasticsearch_api_key and (ns.elasticsearch_user or ns.elasticsearch_password):
            raise ConfigError("--elasticsearch-api-key", "give an API key or a user and password, not both")
        if bool(ns.elasticsearch_user) != bool(ns.elasticsearch_password):
            raise ConfigError("--elasticsearch-password" if ns.elasticsearch_user else "--elasticsearch-user",
                              "user and password go together")
        if ns.elasticsearch_ca_file and not os.path.isfile(ns.elasticsearch_ca_file):
            raise ConfigError("--elasticsearch-ca-file", f"no such file: {ns.elasticsearch_ca_file}")
        # Elasticsearch index names: lower case, none of \ / * ? " < > | space , #, not starting with - _ +
        rendered = time.strftime(ns.elasticsearch_index, time.gmtime())  # the sink renders in UTC too
        if (not rendered or rendered != rendered.lower() or rendered[0] in "-_+"
                or any(c in rendered for c in '\\/*?"<>| ,#')):
            raise ConfigError("--elasticsearch-index", "must give a lower-case index name without "
                              "spaces or \\ / * ? \" < > | , # (strftime fields such as %Y are allowed)")
    if ns.kafka_brokers or ns.kafka_topic or ns.kafka_option:
        if not ns.kafka_brokers:
            raise ConfigError("--kafka-brokers", "required when --kafka-topic or --kafka-option is set")
        if not ns.kafka_topic:
            raise ConfigError("--kafka-topic", "required with --kafka-brokers")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", ns.kafka_topic):
            raise ConfigError("--kafka-topic", "may contain only letters, digits, '.', '_' and '-'")
        for broker in ns.kafka_brokers.split(","):
            _host_port("--kafka-brokers", broker.strip())
        ns.kafka_options = {}
        for option in ns.kafka_option or ():
            key, sep, value = option.partition("=")
            if not sep or not key.strip():
                # Not quoted: "sasl.password: hunter2" is a secret with the wrong separator.
                raise ConfigError("--kafka-option", "must be KEY=VALUE, e.g. security.protocol=SASL_SSL "
                                  "(the value given is not shown: it may hold a secret)")
            ns.kafka_options[key.strip()] = value.strip()
    if ns.slack_channel and not ns.slack_webhook:
        raise ConfigError("--slack-webhook", "required with --slack-channel")


def split_listen(text: str) -> tuple:
    """ADDR:PORT (an IPv6 address in brackets) -> (addr, port); ValueError if it is not that."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(text)
    return host, int(port)


def check_textfile(path: str) -> None:
    """--metrics-textfile: a *.prom file (node_exporter reads only those) in a directory that exists."""
    if not path.endswith(".prom"):
        raise ConfigError("--metrics-textfile", "must end in .prom (node_exporter's textfile collector reads only *.prom)")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError("--metrics-textfile", f"no such directory: {directory}")


def _check_metrics(ns) -> None:
    if ns.metrics_listen:
        try:
            split_listen(ns.metrics_listen)
        except ValueError:
            raise ConfigError("--metrics-listen", f"must be ADDR:PORT, not {ns.metrics_listen!r}") from None
    if ns.metrics_textfile:
        check_textfile(ns.metrics_textfile)


def _host_port(option: str, text: str) -> None:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(option, f"must be HOST:PORT, not {text!r}")


def describe(ns) -> list:
    """`option = value` lines of the effective configuration, secrets masked."""
    lines = []
    for key, value in sorted(vars(ns).items()):
        if key in ("config_files", "kafka_options", "config", "warnings") or value is None:
            continue
        if key in SECRET_OPTIONS and value:
            value = mask(value)
        if key == "kafka_option" and value:
            value = [mask_kafka_option(v) for v in value]
        if key == "elasticsearch_server" and value:
            value = [mask_userinfo(v) for v in value]
        if isinstance(value, list):
            value = "[" + ", ".join(str(v) for v in value) + "]"
        lines.append(f"{key.replace('_', '-')} = {value}")
    return lines
