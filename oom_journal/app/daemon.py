"""The daemon's loop: kernel log source -> parser -> enrichment -> journal (-> sinks).

One thread reads the kernel log and writes events; the process cache runs its own thread
(the connector must be drained promptly, whatever the journal write costs). The loop sleeps in
select() on the source's fd and a signal wake-up fd: no polling.
"""
from __future__ import annotations

import collections
import logging
import os
import selectors
import signal
import socket
import sqlite3
import threading
import time
from typing import Optional

from oom_journal.app import config as config_mod
from oom_journal.store import outbox
from oom_journal.enrich.containers import ContainerDirectory, ContainerNameReader
from oom_journal.enrich.event import (KERNEL_REPORT_LATE, OomEvent, completion_key, kernel_time_to_realtime,
                                      make_event_id)
from oom_journal.enrich.host import read_host_info
from oom_journal.enrich.incident import IncidentTracker
from oom_journal.enrich.lookup import find_cmdline
from oom_journal.enrich.userspace import UserspaceKills
from oom_journal.enrich.witness import KERNEL_REPORT_LOST, WITNESS_EXIT, WITNESS_KMSG, SecondWitness
from oom_journal.outputs.journal import JournalWriter
from oom_journal.outputs.stdout import JsonLinesWriter
from oom_journal.sources.journal_fields import journald_available
from oom_journal.parse.oom_report import OomParser
from oom_journal.parse.userspace import KillerParser
from oom_journal.procs.cache import ProcessCache
from oom_journal.model import KillerLine, Resume
from oom_journal.sources.journal import DOORBELL_GIVE_UP, JournalSource, journald_collects_kernel_messages
from oom_journal.sources.kmsg import KmsgSource
from oom_journal.delivery.worker import SinkWorker
from oom_journal.app.notify import Notifier
from oom_journal.sinks import configured_sinks, sink_settings
from oom_journal.sinks.base import SinkUnavailable
from oom_journal.store.state import StateCorrupt, StateError, StateStore

log = logging.getLogger("oom_journal")

POSITION_SAVE_INTERVAL = 5.0  # seconds; re-reading a few seconds of kernel log after a crash is cheap
RETRY_MIN, RETRY_MAX = 0.1, 5.0  # backoff for journal writes that fail (journald restarting)
# Options that only a restart applies (they choose the files and fds the daemon holds).
RESTART_ONLY = ("source", "output", "state_dir", "proc_root", "kmsg_path", "journal_dir", "process_events",
                "containerd_state", "containers_storage", "containers_runroot", "docker_root", "metrics_listen",
                "metrics_textfile")
PROBE_TIMEOUT = 5.0  # seconds the start waits for the sinks' reachability checks, all together
# Seconds a reload (or the stop) waits for the sinks' workers, all together: a delivery in progress
# ends within 10 s (each sink's timeout), and a reload must end well inside WatchdogSec=30
# (systemd/oom-journal.service) with the probes' 5 s after it.
STOP_TIMEOUT = 12.0
WATCHDOG_PING_EVERY = 1.0  # seconds between WATCHDOG=1 while the main thread waits for workers
# A kill line the journal source's doorbell read from /dev/kmsg is recorded from that copy when
# the journal has not delivered it this long after: the doorbell's own retries end at
# DOORBELL_GIVE_UP (journald stopped, busy, or it missed the line). Its command line was looked
# up when the doorbell read it, so a late journal line costs nothing.
DOORBELL_RECORD_AFTER = DOORBELL_GIVE_UP + 0.5
# Entries of the second witness kept in memory for their late kill line (Daemon.first_entries):
# far more than a burst of lost kills makes; one is a few KiB (its command line).
FIRST_ENTRIES_KEPT = 1024
# The kernel's report fields a completion carries (OomEvent.kill's): whichever the first entry lacked.
REPORT_FIELDS = ("constraint", "oom_memcg", "global_oom", "uid", "cpuset", "total_vm_kb", "anon_rss_kb",
                 "file_rss_kb", "shmem_rss_kb", "pgtables_kb", "oom_score_adj", "memcg_usage_kb", "memcg_limit_kb",
                 "trigger_comm", "trigger_pid", "trigger_gfp_mask", "trigger_order", "kill_message")
# Seconds the counters may be ahead of the kill lines read before the kills are taken as lost:
# a source's normal lateness (the journal's: the doorbell's retries; /dev/kmsg's: none).
SETTLE = {"journal": DOORBELL_RECORD_AFTER + 0.5, "kmsg": 1.0}


class StartupError(Exception):
    """The daemon cannot start; the message says what is missing."""


def choose_source(cfg):
    if cfg.source == "journal":
        return JournalSource(path=cfg.journal_dir, kmsg_path=cfg.kmsg_path, live_during_catch_up=True), "chosen by --source"
    if cfg.source == "kmsg":
        return KmsgSource(cfg.kmsg_path), "chosen by --source"
    ok, reason = journald_collects_kernel_messages()
    if ok:
        return JournalSource(kmsg_path=cfg.kmsg_path, live_during_catch_up=True), reason
    return KmsgSource(cfg.kmsg_path), reason


def choose_writer(cfg):
    if cfg.output == "journal" or (cfg.output == "auto" and journald_available()):
        return JournalWriter()
    return JsonLinesWriter()


# PROC_PID_INIT_INO (include/linux/proc_ns.h): the inode of the initial pid namespace.
PROC_PID_INIT_INO = 0xEFFFFFFC


def in_initial_pid_namespace(proc_root: str = "/proc") -> bool:
    """The kernel's kill line names the victim by its pid in the initial pid namespace; in any
    other (a container), /proc and the process-event connector (which serves only the initial
    namespaces: cn_proc_mcast_ctl) speak of other pids, so no pid from the kernel can be looked up."""
    try:
        return os.stat(os.path.join(proc_root, "self/ns/pid")).st_ino == PROC_PID_INIT_INO
    except OSError:
        return True  # no namespaces (an old kernel): there is only one


def make_containers(cfg) -> ContainerDirectory:
    return ContainerDirectory(ContainerNameReader(containerd_state=cfg.containerd_state,
                                                  containers_storage=cfg.containers_storage,
                                                  containers_runroot=cfg.containers_runroot,
                                                  docker_root=cfg.docker_root))


def make_cache(cfg, containers: Optional[ContainerDirectory] = None) -> ProcessCache:
    return ProcessCache(proc_root=cfg.proc_root, on_cgroup=containers.observe if containers else None,
                        use_connector=cfg.process_events == "auto" and in_initial_pid_namespace(cfg.proc_root),
                        scan_interval=cfg.process_refresh, max_entries=cfg.cache_max_processes,
                        max_cmdline_bytes=cfg.cache_max_bytes, exit_grace=cfg.exit_grace)


class Daemon:
    def __init__(self, cfg, argv, *, environ=None, source=None, writer=None, cache=None, notifier=None,
                 monotonic_ns=time.monotonic_ns):
        self.cfg = cfg
        self.monotonic_ns = monotonic_ns  # CLOCK_MONOTONIC, the kernel log's clock
        self.argv = list(argv)
        self.environ = os.environ if environ is None else environ
        self.notifier = notifier or Notifier(self.environ)
        self._source, self._writer, self._cache = source, writer, cache
        self.containers = make_containers(cfg)
        self.parser = OomParser()
        self.killer_parser = KillerParser()  # the userspace killers' lines (journal source only)
        self.userspace: Optional[UserspaceKills] = None
        self.incidents = IncidentTracker()
        # The lines that come while a first start reads the boot's history (JournalSource.read_live):
        # parsed on their own, since a report of the history may be open in self.parser.
        self.live_parser = OomParser()
        self.backlog: collections.deque = collections.deque()  # lines read, not yet parsed
        self.pending: collections.deque = collections.deque()  # events built, not yet recorded
        self.last_position = None
        self.position_dirty = False
        self.recorded = 0
        self.last_event: Optional[OomEvent] = None
        self.retry_at = 0.0
        self.retry_delay = RETRY_MIN
        self.stopping = False
        self.reload_requested = False
        self.workers: list = []
        self.sink_counters: dict = {}  # sink name -> delivered/retried/failed/dropped (app/metrics.py)
        self.metrics = None
        self.state_problem = ""  # shown in STATUS while the state directory cannot be used
        self.journaled: set = set()  # event ids in the journal whose state commit is still due
        self.status_changed = False
        self.status_sent_at = 0.0
        self.witness: Optional[SecondWitness] = None
        # The doorbell's copy of the kernel log, parsed on the side (journal source only): kill
        # (timestamp µs, pid) -> (time.monotonic() when read, the event built then).
        self.doorbell_parser = OomParser()
        self.early: dict = {}
        self.delivered: collections.OrderedDict = collections.OrderedDict()  # (kill µs, pid) the source gave, recent
        self.from_second_witness = 0  # recorded kills the source did not deliver
        self.unlogged_kills = 0  # kills those entries stand for (a counted entry may stand for several)
        # Entries recorded from the second witness (its kill line not read then), by event id, the
        # newest FIRST_ENTRIES_KEPT: a late kill line completes one (completion()) with the
        # victim's identity as the first entry had it.
        self.first_entries: collections.OrderedDict = collections.OrderedDict()
        self.completed = 0  # completions written (STATUS)

    # --- start ------------------------------------------------------------------------------
    def start(self) -> None:
        self.host = read_host_info(self.cfg.proc_root)
        self.initial_pid_namespace = in_initial_pid_namespace(self.cfg.proc_root)
        if not self.initial_pid_namespace:
            log.warning("running in a pid namespace of its own (a container): the kernel names OOM victims by "
                        "their host pids, so victims are matched by name and cgroup among the processes the "
                        "/proc scan saw, and one that lives less than a scan is not found; run oom-journal on "
                        "the host to find every victim")
        try:
            self.state = StateStore(self.cfg.state_dir, self.host.boot_id)
        except StateError as e:
            self.use_memory_state(e)  # primed from the journal below, once the writer is chosen
        if self._writer is None:
            self._writer = choose_writer(self.cfg)
        self.writer = self._writer
        if self._source is None:
            self._source, why = choose_source(self.cfg)
            log.info("reading the %s: %s", self._source.describe(), why)
        self.source = self._source
        if self._cache is None:
            self._cache = make_cache(self.cfg, self.containers)
        self.cache = self._cache
        # Before the source opens, so the victim of a kill that is read first is already known.
        self.cache.start()
        stats = self.cache.stats()
        log.info("process cache primed: %s processes; exec events: %s", stats.get("entries"), stats.get("connector"))
        self.workers = self.start_sinks(self.cfg)
        if self.cfg.metrics_listen or self.cfg.metrics_textfile:
            from oom_journal.app.metrics import Metrics  # imports prometheus_client: only when asked

            self.metrics = Metrics(self, listen=self.cfg.metrics_listen, textfile=self.cfg.metrics_textfile)
            self.metrics.start()
        # Kills that reached the journal but not the state database (a crash between the two).
        already = self.writer.recorded_event_ids(self.host.boot_id)
        # Incidents still open when the daemon stopped keep their ids (enrich/incident.py).
        self.incidents.prime_all(getattr(self.writer, "recent_incidents", lambda boot: [])(self.host.boot_id))
        try:
            if already:
                self.state.mark_recorded(already)
            resume = self.state.resume_point(self.source.name)
        except StateError as e:
            self.use_memory_state(e)
            resume = None
        try:
            self.source.open(resume)
        except OSError as e:
            raise StartupError(f"cannot open the {self.source.describe()}: {e}") from e
        # From now on: kills made while it was not running are in the source's backlog, or lost.
        try:
            saved = self.state.oom_count()
        except StateError:
            saved = None
        self.witness = SecondWitness(self.cache, self.host, proc_root=self.cfg.proc_root,
                                     settle=SETTLE.get(self.source.name, 3.0), saved=saved)
        self.userspace = UserspaceKills(self.cache, self.host, exit_grace=self.cfg.exit_grace,
                                        proc_root=self.cfg.proc_root, initial_pid_namespace=self.initial_pid_namespace,
                                        containers=self.containers, monotonic_ns=self.monotonic_ns,
                                        recorded_prefix=lambda prefix: self.state.recorded_with_prefix(prefix))
        # Kills of this boot recorded from their exit, by this daemon before or another: their
        # kill line, if the journal has it after all, is the same kill (read again below).
        self.witness.remember_recorded(already)
        if saved is not None:
            log.info("counting the kernel's OOM kills from its count %d, where the last run left off", saved[0])
        if not self.witness.available:
            log.info("no /proc/vmstat oom_kill (a kernel before 4.13): kills whose kill line is lost go unnoticed")
        if resume is None:
            log.info("no read position for this boot: reading this boot's kernel log from its start")
        else:
            log.info("resuming the %s at %s", self.source.describe(), resume.position)

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        sel = selectors.DefaultSelector()
        try:
            self.start()
            sel.register(self.source.fileno(), selectors.EVENT_READ, "source")
            sel.register(wake_r, selectors.EVENT_READ, "signal")
            killed_fd = self.cache.killed_fd()
            if killed_fd >= 0:  # a SIGKILL exit: the second witness reads the counters now
                sel.register(killed_fd, selectors.EVENT_READ, "killed")
            self.notifier.notify("READY=1", "STATUS=" + self.status())
            log.info("ready: %s", self.status())
            next_watchdog = time.monotonic()
            next_save = time.monotonic() + POSITION_SAVE_INTERVAL
            more = True  # read at once: the backlog since the resume point
            while not self.stopping:
                now = time.monotonic()
                deadlines = []
                # The periodic save wakes the daemon only when it has something to do: a read
                # position to save, sinks' backlogs to report, metrics, the state database to
                # check for the sinks' workers. An idle journal-only daemon then wakes only for
                # the second witness (CHECK_EVERY_WITH_EXITS) and the watchdog: each wake-up costs
                # ~1 ms of CPU on this machine (a VM).
                if self.position_dirty or self.workers or self.metrics is not None:
                    deadlines.append(next_save)
                if self.status_changed:
                    deadlines.append(self.status_sent_at + 1.0)
                if self.notifier.watchdog_interval:
                    if now >= next_watchdog:
                        if self.cache.alive() and all(w.alive() for w in self.workers):
                            self.notifier.notify("WATCHDOG=1")
                        else:
                            log.error("a worker thread has stopped; no longer telling the watchdog we are alive")
                        next_watchdog = now + self.notifier.watchdog_interval
                    deadlines.append(next_watchdog)
                if self.pending:
                    deadlines.append(self.retry_at)
                wake_at = self.source.wake_at()
                if wake_at is not None:
                    deadlines.append(wake_at)
                deadlines += self.witness_deadlines()
                timeout = 0 if (more and not self.pending) else max(0.0, min(deadlines, default=now + 60.0) - now)
                for key, _ in sel.select(timeout):
                    if key.data == "signal":
                        try:
                            while wake_r.recv(64):
                                pass
                        except BlockingIOError:
                            pass
                    elif key.data == "killed":
                        try:
                            os.eventfd_read(key.fd)
                        except BlockingIOError:
                            pass
                        if self.witness is not None:
                            self.witness.saw_sigkill_exit()
                    else:
                        more = True
                        self.ring_doorbell()
                if wake_at is not None and time.monotonic() >= wake_at:
                    more = True  # the source asked to be read again by now
                if self.reload_requested:
                    self.reload_requested = False
                    self.reload()
                if self.stopping:
                    break
                self.check_witnesses(busy=more or bool(self.backlog))
                if self.pending and time.monotonic() < self.retry_at:
                    continue
                more = self.process(more)
                # STATUS at most once a second: a backlog of kills after a restart must not
                # become a burst of notifications.
                if self.status_changed and time.monotonic() - self.status_sent_at >= 1.0:
                    self.notifier.notify("STATUS=" + self.status())
                    self.status_changed, self.status_sent_at = False, time.monotonic()
                if time.monotonic() >= next_save:
                    self.save_position()
                    if self.workers:  # what it is for (a query: ~2 ms here after an idle second)
                        self.check_state()
                    if self.metrics is not None:
                        self.metrics.tick()
                    if self.workers:
                        self.notifier.notify("STATUS=" + self.status())  # the sinks' backlogs move
                    next_save = time.monotonic() + POSITION_SAVE_INTERVAL
            self.notifier.notify("STOPPING=1", "STATUS=Stopping")
            log.info("stopping: %d kills recorded since start", self.recorded)
            self.save_position()
            return 0
        finally:
            sel.close()
            signal.set_wakeup_fd(old_fd)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()
            self.close()

    def _on_signal(self, signum, frame):
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stopping = True

    def process(self, read: bool) -> bool:
        """Records what is pending, then parses what the source has. Returns True if more may be waiting."""
        if not self.record_pending():
            return False
        more = False
        if read and not self.backlog:
            self.process_live()
            lines = self.source.read_available()
            self.backlog.extend(lines)
            more = len(lines) > 0
        self.ring_doorbell()
        while self.backlog and not self.pending:
            line = self.backlog.popleft()
            if isinstance(line, KillerLine):
                self.userspace_kill(line)
                continue
            kills = self.parser.feed(line)
            self.take_repeated(self.parser)
            self.last_position = line.position
            self.position_dirty = True
            if kills:
                # Look the victims up now, while the cache still holds them; a write that must
                # be retried later keeps what was found.
                self.pending.extend(self.event_of(kill) for kill in kills)
                self.pending = collections.deque(e for e in self.pending if e is not None)
                self.record_pending()
        return more or bool(self.backlog)

    def userspace_kill(self, line: KillerLine, advance: bool = True) -> None:
        """A userspace OOM killer's line: its kills' events, recorded like the kernel's. advance:
        the line is the source's reader's (not the live handle's during a catch-up)."""
        assert self.userspace is not None
        events = [e for action in self.killer_parser.feed(line) for e in self.userspace.events(action)]
        for event in events:  # oomd's victims of one kill: one cgroup, one time, so one incident
            self.incidents.assign_event(event)
        if self.witness is not None:
            # oomd's SIGKILLs raise no oom_kill counter; kept from the second witness's hands anyway,
            # should a lost kernel kill in the same cgroup be looked for at the same time.
            self.witness.taken.update(self.userspace.taken)
        if advance:
            self.last_position = line.position
            self.position_dirty = True
        if events:
            self.pending.extend(events)
            self.record_pending()

    def event_of(self, kill) -> Optional[OomEvent]:
        """The event of a kill line the source delivered: the one built when the doorbell read the
        same line (its command line found then), else built now. A late line of a kill already
        recorded from the second witness: the completion of that event (same id), or None when
        the first entry had the kernel's report already (the doorbell's copy of this same line).
        A late line of a kill an `unseen` entry counted: its own event, naming that entry."""
        self.delivered[(kill.timestamp_us, kill.pid)] = None
        while len(self.delivered) > 4096:
            self.delivered.popitem(last=False)
        early = self.early.pop((kill.timestamp_us, kill.pid), None)
        if self.witness is not None:
            self.witness.saw_kill_line(kill)
            late = self.witness.late_line(kill)
            if late is not None:
                return self.completion(late, kill)
        first = self.first_entries.get(make_event_id(self.host.boot_id, kill))
        if first is not None:
            return self.completion(first.event_id, kill)
        event = early[1] if early is not None else self.build_event(kill)
        if self.witness is not None and not self.state_knows(event.event_id):
            event.completes = self.witness.unseen_line(kill)
            if event.completes:
                log.info("the kill line of pid %d came after the kernel's counters had counted its kill as "
                         "unseen (%s): recorded as itself, naming that entry", kill.pid, event.completes)
        return event

    def state_knows(self, event_id: str) -> bool:
        try:
            return self.state.is_recorded(event_id)
        except StateError:
            return False  # record_pending asks again, and waits for the disk

    def completion(self, event_id: str, kill) -> Optional[OomEvent]:
        """The entry that completes `event_id`, recorded from the second witness before this, its
        kill line's, came: the kernel's report, under the same id (OOM_KERNEL_REPORT=late). The
        victim's command line stays the first entry's: the cache's answer now is at best the same
        (the process is gone) and often worse (its entry expired: "not-found"). None when the first
        entry already had every field of the report (a doorbell's copy of this same line)."""
        if self.state_knows(completion_key(event_id)):
            return None  # completed already (this run, or one before: the journal has it), not again
        first = self.first_entries.get(event_id)
        if first is not None and first.witness == WITNESS_KMSG:
            if all(getattr(kill, f) is None or getattr(first.kill, f) is not None for f in REPORT_FIELDS):
                log.info("the journal's copy of the kill line of pid %d, recorded from /dev/kmsg (%s): nothing "
                         "to add", kill.pid, event_id)
                return None
        lookup = None
        if first is None or not first.argv:
            lookup = find_cmdline(kill, self.cache, exit_grace=self.cfg.exit_grace, proc_root=self.cfg.proc_root,
                                  initial_pid_namespace=self.initial_pid_namespace, monotonic_ns=self.monotonic_ns)
        event = OomEvent.build(kill, self.host, lookup, containers=self.containers)
        event.event_id = event.completes = event_id
        event.kernel_report = KERNEL_REPORT_LATE
        if first is not None:
            event.witness, event.completes_time, event.incident_id = first.witness, first.time, first.incident_id
            if first.argv:
                event.argv, event.cmdline_source, event.cmdline_note = first.argv, first.cmdline_source, first.cmdline_note
            # The first entry's time, kept: a sink files the document by it (Elasticsearch's daily
            # index), so the completed document replaces the first, in the same index.
            event.time = first.time
        else:  # recorded by a run before this one: what its id says
            event.witness = WITNESS_EXIT if "-lost-" in event_id else WITNESS_KMSG
            exit_us = event_id.rsplit("-", 1)[-1]
            if event.witness == WITNESS_EXIT and exit_us.isdigit():
                event.time = event.completes_time = kernel_time_to_realtime(int(exit_us))
        event.witness_note = ("the kill line came after the kill had been recorded from the second witness: this "
                              "entry, under the same event id, completes it with the kernel's report; the command "
                              "line is the one the first entry had" if first is not None and first.argv else
                              "the kill line came after the kill had been recorded from the second witness: this "
                              "entry, under the same event id, completes it with the kernel's report")
        log.info("the kill line of pid %d came after its kill was recorded from the second witness (%s): "
                 "completing that event", kill.pid, event_id)
        return event

    # --- the second witness (enrich/witness.py) ---------------------------------------------
    def ring_doorbell(self) -> None:
        """Parses what the journal source's doorbell read from /dev/kmsg: each kill line's event is
        built at once (the victim's command line looked up while the cache has it)."""
        take = getattr(self.source, "take_kmsg_lines", None)
        if take is None:
            return
        self.source.ring()
        for line in take():
            kills = self.doorbell_parser.feed(line)
            self.take_repeated(self.doorbell_parser)
            for kill in kills:
                if self.witness is not None:
                    self.witness.saw_kill_line(kill)
                # Keyed by timestamp and pid: a memory.oom.group kill's lines can share a µs (make_event_id).
                if (kill.timestamp_us, kill.pid) in self.delivered:
                    continue  # the journal was first
                self.early.setdefault((kill.timestamp_us, kill.pid), (time.monotonic(), self.build_event(kill)))

    def take_repeated(self, parser: OomParser) -> None:
        if parser.repeated:
            if self.witness is not None:
                for ts, pid in parser.repeated:
                    self.witness.saw_repeated_line(ts, pid)
            parser.repeated.clear()

    def witness_deadlines(self) -> list:
        out = [seen + DOORBELL_RECORD_AFTER for seen, _ in self.early.values()]
        if self.witness is not None and self.witness.wake_at() is not None:
            out.append(self.witness.wake_at())
        return out

    def check_witnesses(self, busy: bool) -> None:
        """Kill lines the journal has not delivered DOORBELL_RECORD_AFTER seconds after the doorbell
        read them, and kills the kernel counted whose kill line no path read: recorded now."""
        now = time.monotonic()
        for key, (seen, event) in list(self.early.items()):
            # Busy reading (a backlog): the journal may have the line, only not read yet.
            if busy or now - seen < DOORBELL_RECORD_AFTER:
                continue
            del self.early[key]
            event.kernel_report, event.witness = KERNEL_REPORT_LOST, WITNESS_KMSG
            event.witness_note = (f"the journal did not have this kill line {now - seen:.1f} s after /dev/kmsg had it "
                                  "(journald stopped, busy, or it missed kernel messages): recorded from /dev/kmsg, "
                                  "read as the journal source's doorbell; its command line was looked up then")
            log.warning("journald has not recorded the kill line of pid %d yet: recording it from /dev/kmsg",
                        event.kill.pid)
            self.pending.append(event)
        if self.witness is not None:
            self.pending.extend(self.witness.check(busy=busy))
            point = self.witness.point()
            # Saved once what it covers is recorded (nothing pending), as a read position is.
            if self.witness.point_changed and point is not None and not self.pending and not self.early:
                try:
                    self.state.save_oom_count(*point)
                    self.witness.point_changed = False
                except StateCorrupt as e:
                    self.use_memory_state(e)
                except StateError as e:
                    log.error("%s", e)
    def process_live(self) -> None:
        """During the catch-up of a long boot, the kills of now first: they must not wait behind
        the history (bench/long_boot_bench.py: 5-7 s behind a million lines before this)."""
        read_live = getattr(self.source, "read_live", None)
        if read_live is None:
            return
        if self.source.switched_to_live:  # the history is done: the live handle is the reader now
            self.source.switched_to_live = False
            self.parser, self.live_parser = self.live_parser, OomParser()
        for line in read_live():
            # The read position stays the history's: after a restart before the catch-up ends,
            # these lines are read again, and their events, recorded already, are not written
            # twice (state.is_recorded, by event id).
            if isinstance(line, KillerLine):
                self.userspace_kill(line, advance=False)
                continue
            kills = self.live_parser.feed(line)
            self.take_repeated(self.live_parser)
            events = [e for e in (self.event_of(kill) for kill in kills) if e is not None]
            if events:
                self.pending.extend(events)
                self.record_pending()

    def record_pending(self) -> bool:
        """Writes each pending kill; False (and a retry later) if the journal would not take it."""
        while self.pending:
            event = self.pending[0]
            try:
                done = self.state.is_recorded(event.record_key)
            except StateCorrupt as e:
                self.use_memory_state(e)
                continue
            except StateError as e:
                self.state_problem = str(e)
                self.status_changed = True
                self.schedule_retry(f"{e}; the kill of pid {event.kill.pid} waits")
                return False
            if not done:
                if event.record_key not in self.journaled:
                    try:
                        self.writer.write(event)
                    except OSError as e:
                        self.schedule_retry(f"cannot write to {self.writer.describe()} ({e})")
                        return False
                    self.journaled.add(event.record_key)
                try:
                    self.state.record(event.record_key, self.source.name, self.resume_point(),
                                      sinks=[w.name for w in self.workers],
                                      document=event.document() if self.workers else None)
                except StateCorrupt as e:
                    self.use_memory_state(e)
                    continue  # recorded again, in memory: the entry is in the journal, not written again
                except StateError as e:
                    # The entry is in the journal (it is not written again); what waits is the
                    # outbox and the read position. Reading pauses until the disk takes it:
                    # the kernel's log keeps what comes meanwhile.
                    self.state_problem = str(e)
                    self.status_changed = True
                    self.schedule_retry(f"{e}; kill of pid {event.kill.pid} is in the journal, its delivery to "
                                        "the sinks waits")
                    return False
                self.journaled.discard(event.record_key)
                if self.state_problem and not self.state.path.startswith("file:"):
                    log.info("the state directory works again")
                    self.state_problem = ""
                for worker in self.workers:
                    worker.wake()
                self.position_dirty = False
                self.status_changed = True
                if event.is_completion:  # not a kill: a second entry of one recorded before
                    self.completed += 1
                    log.info("completed the OOM kill of pid %d (%s) with the kernel's late report", event.kill.pid,
                             event.event_id)
                    self.pending.popleft()
                    self.retry_delay = RETRY_MIN
                    continue
                if event.kernel_report == KERNEL_REPORT_LOST and event.witness in (WITNESS_EXIT, WITNESS_KMSG):
                    self.first_entries[event.event_id] = event
                    while len(self.first_entries) > FIRST_ENTRIES_KEPT:
                        self.first_entries.popitem(last=False)
                self.recorded += 1
                if event.kernel_report is not None:
                    self.from_second_witness += 1
                    self.unlogged_kills += event.unseen_kills or 1
                self.last_event = event
                if self.metrics is not None:
                    self.metrics.kill(event)
                log.info("%s", event.message() if not isinstance(self.writer, JournalWriter) else
                         f"recorded OOM kill of pid {event.kill.pid} by {event.kill.killer} (command line: {event.cmdline_source})")
                self.status_changed = True
            else:
                log.debug("already recorded: %s", event.event_id)
            self.pending.popleft()
            self.retry_delay = RETRY_MIN
        return True

    def use_memory_state(self, e: StateError) -> None:
        """The state database cannot be used (at start: any error; later: a corrupt file): go on
        with the state in memory rather than stop (a restart loop would record nothing), and say
        so in the log and in `systemctl status`. What it knew of this boot's recorded kills is in
        the journal (recorded_event_ids), so none is written twice; what its outbox held for the
        sinks is lost with the file. The sinks' workers read the outbox through connections of
        their own to the store's path, so they are restarted on the new one."""
        self.state_problem = f"{e}: keeping state in memory (not persisted across restarts)"
        log.error("%s", self.state_problem)
        self.status_changed = True
        old = getattr(self, "state", None)
        if old is not None:
            try:
                old.close()
            except Exception:  # a corrupt file's connection: nothing left to save in it
                pass
        self.state = StateStore(self.cfg.state_dir, self.host.boot_id, in_memory=True)
        if getattr(self, "writer", None) is not None:
            # Not those written but not yet committed (self.journaled): they are recorded (and
            # queued for the sinks) by record_pending, which does not write them again.
            self.state.mark_recorded(self.writer.recorded_event_ids(self.host.boot_id) - self.journaled)
        if self.workers:
            old_workers, self.workers = self.workers, []
            self.stop_sinks(old_workers)
            self.workers = self.start_sinks(self.cfg)

    def check_state(self) -> None:
        """While nothing is recorded, find a corrupt state database before the sinks' workers
        stop on it."""
        try:
            self.state.check()
        except StateCorrupt as e:
            self.use_memory_state(e)
        except StateError:
            pass  # transient: the next record retries and reports it

    def schedule_retry(self, problem: str) -> None:
        log.warning("%s; retrying in %.1f s", problem, self.retry_delay)
        self.retry_at = time.monotonic() + self.retry_delay
        self.retry_delay = min(RETRY_MAX, self.retry_delay * 2)

    def build_event(self, kill) -> OomEvent:
        found = find_cmdline(kill, self.cache, exit_grace=self.cfg.exit_grace, proc_root=self.cfg.proc_root,
                             initial_pid_namespace=self.initial_pid_namespace, monotonic_ns=self.monotonic_ns)
        event = OomEvent.build(kill, self.host, found, containers=self.containers)
        self.incidents.assign_event(event)
        return event

    def resume_point(self) -> Optional[Resume]:
        oldest = self.parser.oldest_open_position()
        if oldest is not None:
            return Resume(oldest, inclusive=True)
        if self.last_position is None:
            return None
        return Resume(self.last_position, inclusive=False)

    def save_position(self) -> None:
        if not self.position_dirty or self.pending:
            return
        resume = self.resume_point()
        if resume is not None:
            try:
                self.state.save_position(self.source.name, resume)
                self.position_dirty = False
            except StateCorrupt as e:
                self.use_memory_state(e)
            except StateError as e:
                log.error("%s", e)

    def status(self) -> str:
        stats = self.cache.stats()
        text = (f"Watching the {self.source.describe()}, writing to {self.writer.describe()}; "
                f"{stats.get('entries', 0)} processes cached (exec events: {stats.get('connector')}); "
                f"{self.recorded} OOM kill{'' if self.recorded == 1 else 's'} recorded")
        if self.from_second_witness:
            text += f" ({self.from_second_witness} from the second witness: their kill line was not read"
            if self.completed:
                text += f"; {self.completed} completed by the kernel's report that came later"
            text += ")"
        if self.last_event is not None:
            if self.last_event.unseen_kills is not None:
                text += ", last: victim unknown"
            else:
                text += f", last: pid {self.last_event.kill.pid} ({self.last_event.kill.comm})"
        if self.workers:
            text += "; sinks: " + "; ".join(w.summary() for w in self.workers)
        if self.state_problem:
            text += f"; PROBLEM: {self.state_problem}"
        return text

    # --- sinks ------------------------------------------------------------------------------
    def start_sinks(self, cfg) -> list:
        """Opens the configured sinks, checks each answers, and starts their workers.

        A missing sink library is a configuration error (exit 78 naming the option); a sink
        that does not answer is not: its events wait in the outbox.
        """
        return self.start_workers(self.open_sinks(cfg), cfg)

    @staticmethod
    def open_sinks(cfg) -> list:
        """The configured sinks, opened (their libraries imported); ConfigError if one cannot be."""
        sinks = configured_sinks(cfg)
        opened = []
        try:
            for sink in sinks:
                sink.open()
                opened.append(sink)
        except SinkUnavailable as e:
            for sink in opened:
                sink.close()
            raise config_mod.ConfigError(e.option, str(e)) from None
        return sinks

    def start_workers(self, sinks, cfg) -> list:
        self.drop_unconfigured_sinks([s.name for s in sinks])
        self.ping_watchdog()
        self.probe_sinks(sinks)
        self.ping_watchdog()
        workers = [SinkWorker(sink, self.state.path, cfg.outbox_max_events, cfg.outbox_max_age, cfg.outbox_max_bytes,
                              counters=self.sink_counters.setdefault(sink.name, {})) for sink in sinks]
        for worker in workers:
            worker.start()
        return workers

    def drop_unconfigured_sinks(self, names) -> None:
        """Rows of a sink the configuration no longer has would wait in the database forever."""
        try:
            dropped = outbox.drop_other_sinks(self.state.db, names)
        except sqlite3.Error as e:
            log.error("cannot drop the outbox rows of sinks no longer configured: %s", e)
            return
        for sink, count in sorted(dropped.items()):
            log.warning("the %s sink is no longer configured: dropped its %d undelivered events", sink, count)

    def ping_watchdog(self) -> None:
        """WATCHDOG=1 while the main thread waits on something bounded (a reload stopping the
        sinks' workers): it is busy, not hung. The process cache must still run."""
        if self.notifier.watchdog_interval and getattr(self, "cache", None) is not None and self.cache.alive():
            self.notifier.notify("WATCHDOG=1")

    @staticmethod
    def probe_sinks(sinks) -> None:
        results = {}

        def probe(sink):
            try:
                results[sink.name] = sink.probe()
            except Exception as e:  # a probe is advice; it must not stop the start
                results[sink.name] = f"check failed: {type(e).__name__}"

        threads = [threading.Thread(target=probe, args=(s,), daemon=True) for s in sinks]
        for t in threads:
            t.start()
        deadline = time.monotonic() + PROBE_TIMEOUT
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for sink in sinks:
            if sink.name not in results:
                log.warning("sink %s (%s): no answer within %.0f s; events wait in the outbox", sink.name,
                            sink.describe(), PROBE_TIMEOUT)
            elif results[sink.name]:
                log.warning("sink %s (%s): %s; events wait in the outbox until it answers", sink.name,
                            sink.describe(), results[sink.name])
            else:
                log.info("sink %s (%s): reachable", sink.name, sink.describe())

    def stop_sinks(self, workers, timeout: float = STOP_TIMEOUT) -> None:
        """Stops the workers all at once and waits for them together, at most `timeout` (inside
        the unit's WatchdogSec=30, pinging the watchdog meanwhile). A worker still in a delivery
        then is left to finish it and close its sink; the rows it holds stay leased to it
        (outbox.py), so the workers that replace it do not send them a second time."""
        for worker in workers:
            worker.request_stop()
        deadline = time.monotonic() + timeout
        running = [w for w in workers if w.alive()]
        while running and time.monotonic() < deadline:
            self.ping_watchdog()
            running[0].join(min(WATCHDOG_PING_EVERY, max(0.0, deadline - time.monotonic())))
            running = [w for w in running if w.alive()]
        self.ping_watchdog()
        for worker in running:
            log.warning("the %s sink did not stop within %.0f s; it finishes its delivery on its own, and its "
                        "undelivered events stay in the outbox", worker.name, timeout)

    # --- reload -----------------------------------------------------------------------------
    def reload(self) -> None:
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            new = config_mod.load(self.argv, self.environ)
        except config_mod.ConfigError as e:
            log.error("reload: the new configuration is invalid, keeping the old one: %s", e)
            self.notifier.notify("READY=1", "STATUS=" + self.status() + " (reload failed: " + str(e) + ")")
            return
        for name in RESTART_ONLY:
            if getattr(new, name) != getattr(self.cfg, name):
                log.warning("reload: %s changed; it takes effect when oom-journal restarts", name.replace("_", "-"))
                setattr(new, name, getattr(self.cfg, name))
        if sink_settings(new) != sink_settings(self.cfg):
            try:
                sinks = self.open_sinks(new)  # a missing library: nothing is stopped
            except config_mod.ConfigError as e:
                log.error("reload: %s; keeping the old configuration", e)
                self.notifier.notify("READY=1", "STATUS=" + self.status() + " (reload failed: " + str(e) + ")")
                return
            # The old workers stop FIRST: a new worker beside an old one in a delivery would be
            # a second sender of the same events (the lease covers one stuck past the bound).
            old, self.workers = self.workers, []
            self.stop_sinks(old)
            self.workers = self.start_workers(sinks, new)
            log.info("reload: sinks now: %s", ", ".join(w.name for w in self.workers) or "none")
        logging.getLogger().setLevel(new.log_level.upper())
        self.cache.reconfigure(scan_interval=new.process_refresh, max_entries=new.cache_max_processes,
                               max_cmdline_bytes=new.cache_max_bytes, exit_grace=new.exit_grace)
        self.cfg = new
        log.info("configuration reloaded")
        self.notifier.notify("READY=1", "STATUS=" + self.status())

    def close(self) -> None:
        self.stop_sinks(self.workers)
        self.workers = []
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        for thing in (getattr(self, "source", None), getattr(self, "state", None)):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # closing on the way out: nothing left to protect
                    pass
        if getattr(self, "cache", None) is not None:
            self.cache.stop()
