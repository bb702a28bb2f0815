"""The kernel's process-events connector: a thin, exact wrapper.

A socket(AF_NETLINK, SOCK_DGRAM, NETLINK_CONNECTOR) bound to the multicast group CN_IDX_PROC,
subscribed with PROC_CN_MCAST_LISTEN, receives one message per fork, exec, comm change and exit
of every task on the machine (drivers/connector/cn_proc.c). This module opens that socket,
decodes its datagrams into small tuples, and reports lost events; what to do with them is
procs.cache's business.

Wire format, all fields in host byte order (netlink is host-endian), messages NLMSG_ALIGN'ed:

    struct nlmsghdr {           /* include/uapi/linux/netlink.h, 16 bytes */
        __u32 nlmsg_len;        /* header included */
        __u16 nlmsg_type;       /* the connector sends NLMSG_DONE (3) */
        __u16 nlmsg_flags;
        __u32 nlmsg_seq;
        __u32 nlmsg_pid;        /* 0: from the kernel */
    };
    struct cn_msg {             /* include/uapi/linux/connector.h, 20 bytes */
        struct cb_id { __u32 idx; __u32 val; } id;   /* CN_IDX_PROC, CN_VAL_PROC */
        __u32 seq;              /* per-CPU counter, overwritten by cn_proc's send_msg() */
        __u32 ack;              /* an acknowledgement carries the request's ack + 1 */
        __u16 len;              /* of data[] */
        __u16 flags;
        __u8  data[];           /* struct proc_event */
    };
    struct proc_event {         /* include/uapi/linux/cn_proc.h */
        __u32 what;             /* PROC_EVENT_* */
        __u32 cpu;
        __u64 timestamp_ns;     /* ktime_get_ns(): CLOCK_MONOTONIC, as time.monotonic_ns() */
        union { ... } event_data;   /* at offset 16; the members this module decodes:
            ack:  __u32 err;
            fork: pid_t parent_pid, parent_tgid, child_pid, child_tgid;
            exec: pid_t process_pid, process_tgid;
            comm: pid_t process_pid, process_tgid; char comm[16];
            exit: pid_t process_pid, process_tgid; __u32 exit_code, exit_signal;
                  pid_t parent_pid, parent_tgid;   (the parent pair since Linux 4.19) */
    };

"pid" in these events is the kernel's task id (a thread's id) and "tgid" the process id that
user space calls a pid (the comment block in cn_proc.h).
"""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from typing import Any, Callable, List, NamedTuple, Optional, Tuple, Union

from oom_journal.procs import event_filter

# include/uapi/linux/netlink.h
NETLINK_CONNECTOR = 11
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
# include/uapi/linux/connector.h
CN_IDX_PROC = 1
CN_VAL_PROC = 1
# include/uapi/linux/cn_proc.h, enum proc_cn_mcast_op
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
# include/uapi/linux/cn_proc.h, enum what
PROC_EVENT_NONE = 0x00000000  # what an acknowledgement of a LISTEN/IGNORE carries
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_UID = 0x00000004
PROC_EVENT_GID = 0x00000040
PROC_EVENT_SID = 0x00000080
PROC_EVENT_PTRACE = 0x00000100
PROC_EVENT_COMM = 0x00000200
PROC_EVENT_COREDUMP = 0x40000000
PROC_EVENT_EXIT = 0x80000000
# include/uapi/asm-generic/socket.h; Python's socket module lacks it before 3.12.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

_NLMSGHDR = struct.Struct("=IHHII")  # 16 bytes
_CN_MSG = struct.Struct("=IIIIHH")  # 20 bytes
_EV_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns: 16 bytes
_NL_LEN = _NLMSGHDR.size
_CN_LEN = _CN_MSG.size
_EV_OFF = _NL_LEN + _CN_LEN  # proc_event starts 36 bytes into each netlink message
_DATA_OFF = _EV_OFF + _EV_HEAD.size  # event_data: 52 bytes in
_U32 = struct.Struct("=I")
_PAIR = struct.Struct("=ii")
_QUAD = struct.Struct("=iiii")
_COMM = struct.Struct("=ii16s")
_EXIT = struct.Struct("=iiII")
_EXIT_PARENT = struct.Struct("=iiIIii")
_HEADS = struct.Struct("=IHHIIIIIIHHIIQ")  # nlmsghdr + cn_msg + proc_event's head: 52 bytes
assert _HEADS.size == _DATA_OFF
_new = tuple.__new__  # an event tuple without the NamedTuple's __new__ frame (the hot path)

# Receive buffer asked of the kernel, which doubles it for its bookkeeping (socket(7)).
# Each queued event is a whole skb: measured on this project's 6.18 VM, 947 queued events
# (300 fork+exec+exit of /bin/true) held 787,904 bytes of Rmem in /proc/net/netlink, ~830
# bytes each. 32 MiB (64 MiB granted) holds ~80,000 events, ~25 s of a 1,000 exec/s storm
# (3 events per fork+exec+exit) while the reader is busy. It is charged only while events
# wait in the queue, never reserved.
DEFAULT_RCVBUF = 32 << 20
# An acknowledgement comes back within microseconds when the kernel accepts the request;
# none ever comes when it ignores it, so this bounds start-up in a container.
DEFAULT_ACK_TIMEOUT = 2.0
# Connector messages are at most CONNECTOR_MAX_MSG_SIZE (16 KiB) each; proc events ~90 bytes.
_RECV_BUFFER = 65536


class ForkEvent(NamedTuple):
    """PROC_EVENT_FORK: a task was created. child_pid == child_tgid for a new process."""

    parent_pid: int
    parent_tgid: int
    child_pid: int
    child_tgid: int
    timestamp_ns: int


class ExecEvent(NamedTuple):
    """PROC_EVENT_EXEC: a process completed execve(); /proc/PID/cmdline is the new argv."""

    pid: int
    tgid: int
    timestamp_ns: int


class CommEvent(NamedTuple):
    """PROC_EVENT_COMM: a task's comm was set by prctl(PR_SET_NAME) or /proc/PID/comm."""

    pid: int
    tgid: int
    comm: bytes  # up to 15 bytes, the NUL padding removed
    timestamp_ns: int


class ExitEvent(NamedTuple):
    """PROC_EVENT_EXIT: a task exited. pid == tgid for a thread-group leader."""

    pid: int
    tgid: int
    exit_code: int
    exit_signal: int
    timestamp_ns: int


class AckEvent(NamedTuple):
    """PROC_EVENT_NONE: the kernel's answer to PROC_CN_MCAST_LISTEN/IGNORE (err is an errno)."""

    err: int
    ack: int
    timestamp_ns: int


Event = Union[ForkEvent, ExecEvent, CommEvent, ExitEvent, AckEvent]


class ConnectorUnavailable(Exception):
    """The process-events connector cannot be used here; str() says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class EventsLost(Exception):
    """recv() failed with ENOBUFS: the receive queue overflowed and events were dropped.

    The socket stays usable; the events lost are not known, only that there were some.
    """


def decode(data: Union[bytes, bytearray, memoryview], length: Optional[int] = None) -> List[Event]:
    """Decode one datagram (one or more netlink messages) into events.

    Events other than fork, exec, comm, exit and acknowledgements are skipped, as are
    messages that are not the process connector's (another cb_id) and truncated tails.
    """
    end = len(data) if length is None else length
    if end >= _DATA_OFF + 16:
        # The kernel sends one event per datagram (cn_proc.c send_msg(): one cn_netlink_send()
        # each): decoded with one unpack of its three headers, and the event's body, without
        # the loop (an exec storm is three datagrams per fork+exec+exit; bench/run).
        (nl_len, nl_type, _flags, _seq, _port, idx, val, _cseq, ack, cn_len, _cflags,
         what, _cpu, ts) = _HEADS.unpack_from(data, 0)
        if (nl_type == NLMSG_DONE and idx == CN_IDX_PROC and val == CN_VAL_PROC and end - 4 < nl_len <= end
                and cn_len >= _EV_HEAD.size and nl_len >= _DATA_OFF):
            body_len = min(cn_len, nl_len - _EV_OFF) - _EV_HEAD.size
            if what == PROC_EVENT_EXEC and body_len >= 8:
                pid, tgid = _PAIR.unpack_from(data, _DATA_OFF)
                return [_new(ExecEvent, (pid, tgid, ts))]
            if what == PROC_EVENT_FORK and body_len >= 16:
                return [_new(ForkEvent, _QUAD.unpack_from(data, _DATA_OFF) + (ts,))]
            if what == PROC_EVENT_EXIT and body_len >= 16:
                return [_new(ExitEvent, _EXIT.unpack_from(data, _DATA_OFF) + (ts,))]
    return decode_messages(data, end)


def decode_messages(data: Union[bytes, bytearray, memoryview], end: int) -> List[Event]:
    """decode() without its one-message fast path: every message of the datagram, in turn."""
    events: List[Event] = []
    off = 0
    while off + _NL_LEN <= end:
        nl_len, nl_type, _flags, _seq, _port = _NLMSGHDR.unpack_from(data, off)
        if nl_len < _NL_LEN or off + nl_len > end:
            break  # malformed or truncated: nothing after it can be trusted
        if nl_type == NLMSG_DONE and nl_len >= _DATA_OFF:
            idx, val, _cseq, ack, cn_len, _cflags = _CN_MSG.unpack_from(data, off + _NL_LEN)
            if idx == CN_IDX_PROC and val == CN_VAL_PROC and cn_len >= _EV_HEAD.size:
                ev = _decode_event(data, off, min(cn_len, nl_len - _EV_OFF), ack)
                if ev is not None:
                    events.append(ev)
        off += (nl_len + 3) & ~3  # NLMSG_ALIGN
    return events


def _decode_event(data, off: int, ev_len: int, ack: int) -> Optional[Event]:
    what, _cpu, ts = _EV_HEAD.unpack_from(data, off + _EV_OFF)
    body = off + _DATA_OFF
    body_len = ev_len - _EV_HEAD.size
    if what == PROC_EVENT_EXEC and body_len >= _PAIR.size:
        pid, tgid = _PAIR.unpack_from(data, body)
        return ExecEvent(pid, tgid, ts)
    if what == PROC_EVENT_FORK and body_len >= _QUAD.size:
        ppid, ptgid, cpid, ctgid = _QUAD.unpack_from(data, body)
        return ForkEvent(ppid, ptgid, cpid, ctgid, ts)
    if what == PROC_EVENT_EXIT and body_len >= _EXIT.size:
        pid, tgid, code, sig = _EXIT.unpack_from(data, body)
        return ExitEvent(pid, tgid, code, sig, ts)
    if what == PROC_EVENT_COMM and body_len >= _COMM.size:
        pid, tgid, comm = _COMM.unpack_from(data, body)
        nul = comm.find(b"\0")
        return CommEvent(pid, tgid, comm if nul < 0 else comm[:nul], ts)
    if what == PROC_EVENT_NONE and body_len >= _U32.size:
        (err,) = _U32.unpack_from(data, body)
        return AckEvent(err, ack, ts)
    return None


def encode_mcast_op(op: int, ack: int = 0, port: int = 0) -> bytes:
    """The request PROC_CN_MCAST_LISTEN/IGNORE: nlmsghdr + cn_msg + enum proc_cn_mcast_op.

    A 4-byte op is the ABI every kernel since 2.6.15 accepts; Linux 6.6 also accepts an 8-byte
    struct proc_input with an event filter, which older kernels silently ignore, and which
    would not drop much here: thread forks and exits, the bulk of the traffic, are needed.
    """
    payload = _U32.pack(op)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, ack, len(payload), 0)
    total = _NL_LEN + len(cn) + len(payload)
    return _NLMSGHDR.pack(total, NLMSG_DONE, 0, 0, port) + cn + payload


SocketFactory = Callable[[int, int, int], socket.socket]


class ProcConnector:
    """A subscribed process-events connector socket (socket(AF_NETLINK, SOCK_DGRAM,
    NETLINK_CONNECTOR), bind to CN_IDX_PROC, PROC_CN_MCAST_LISTEN).

    The constructor subscribes and waits for the kernel's acknowledgement; it raises
    ConnectorUnavailable when any step fails. receive() never blocks: poll fileno().
    socket_factory is called as socket_factory(AF_NETLINK, SOCK_DGRAM, NETLINK_CONNECTOR).
    """

    def __init__(
        self,
        socket_factory: SocketFactory = socket.socket,
        rcvbuf: int = DEFAULT_RCVBUF,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        filtered: bool = True,
    ):
        self.lost_events = 0  # ENOBUFS seen by receive()
        # Whether the kernel drops thread events and exits without a signal (event_filter.py);
        # filter_error says why not when it was asked for and refused.
        self.filtered = False
        self.filter_error: Optional[str] = None
        self.rcvbuf = 0  # what the kernel granted (it doubles the request for bookkeeping)
        self._pending: List[Event] = []  # events that came in while waiting for the ack
        self._buf = bytearray(_RECV_BUFFER)
        self._sock: Any = None  # the netlink socket once bound (a socket.socket)
        self._listening = False
        try:
            sock = socket_factory(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as e:
            raise _unavailable("socket(AF_NETLINK, SOCK_DGRAM, NETLINK_CONNECTOR)", e,
                               (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT), " (kernel without CONFIG_CONNECTOR?)") from e
        self._sock = sock
        try:
            self._set_rcvbuf(rcvbuf)
            if filtered:
                try:
                    event_filter.attach(sock)
                    self.filtered = True
                except OSError as e:
                    self.filter_error = f"setsockopt(SO_ATTACH_FILTER): {_strerror(e)}"
            try:
                # nl_groups is a bit mask: group N is bit N-1.
                sock.bind((0, 1 << (CN_IDX_PROC - 1)))
            except OSError as e:
                raise _unavailable("bind to the CN_IDX_PROC multicast group", e,
                                   (errno.EPERM, errno.EACCES), _NEEDS_CAP) from e
            sock.setblocking(False)
            self._subscribe(ack_timeout)
        except BaseException:
            self._close_socket()
            raise

    def _set_rcvbuf(self, size: int) -> None:
        # SO_RCVBUFFORCE ignores net.core.rmem_max but needs CAP_NET_ADMIN (socket(7)).
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EACCES, errno.ENOPROTOOPT):
                raise _unavailable("setsockopt(SO_RCVBUFFORCE)", e) from e
            try:
                # Capped at net.core.rmem_max, silently.
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            except OSError:
                pass  # keep the default: a small queue only means ENOBUFS sooner
        self.rcvbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def _subscribe(self, timeout: float) -> None:
        # The acknowledgement is multicast like any event (cn_proc_ack -> send_msg), which
        # overwrites cn_msg.seq but keeps ack = request ack + 1: a random cookie tells ours
        # from another listener's.
        # From os.urandom, not the secrets module: that imports hmac, hence OpenSSL's libcrypto,
        # 3.4 MiB of the journal-only daemon's RSS for four random bytes (bench/, VmRSS).
        cookie = (int.from_bytes(os.urandom(4), "little") >> 1) + 1
        port = self._sock.getsockname()[0]
        try:
            self._sock.send(encode_mcast_op(PROC_CN_MCAST_LISTEN, cookie, port))
        except OSError as e:
            raise _unavailable("send PROC_CN_MCAST_LISTEN", e) from e
        self._listening = True
        deadline = time.monotonic() + timeout
        while True:
            try:
                events = self._recv_datagram()
            except EventsLost:
                continue  # the ack itself may be among the lost; keep waiting until the deadline
            if events is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConnectorUnavailable(
                        f"no acknowledgement of PROC_CN_MCAST_LISTEN within {timeout:g} s: the "
                        "kernel ignores listeners outside the initial user and PID namespaces "
                        "(a container?), or it was built without CONFIG_PROC_EVENTS"
                    )
                select.select([self._sock], [], [], left)
                continue
            for i, ev in enumerate(events):
                if isinstance(ev, AckEvent) and ev.ack == cookie + 1:
                    if ev.err:
                        raise ConnectorUnavailable(
                            f"PROC_CN_MCAST_LISTEN refused: {os.strerror(ev.err)}"
                            + (_NEEDS_CAP if ev.err == errno.EPERM else "")
                        )
                    # Events after the ack are the caller's, in order.
                    self._pending.extend(e for e in events[i + 1:]
                                         if not isinstance(e, AckEvent))
                    return
                if not isinstance(ev, AckEvent):
                    self._pending.append(ev)

    def fileno(self) -> int:
        if self._sock is None:
            raise ValueError("connector is closed")
        return self._sock.fileno()

    def receive(self) -> Optional[List[Event]]:
        """The events of one datagram (possibly none, e.g. a filtered kind), or None when
        nothing is queued. Raises EventsLost (and counts it) on ENOBUFS."""
        if self._pending:
            events, self._pending = self._pending, []
            return events
        return self._recv_datagram()

    def _recv_datagram(self) -> Optional[List[Event]]:
        buf = self._buf
        while True:
            try:
                n, addr = self._sock.recvfrom_into(buf)
            except BlockingIOError:
                return None
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.lost_events += 1
                    raise EventsLost() from None
                raise
            # Only the kernel (port 0) multicasts proc events; anything else is not ours to trust.
            if addr[0] != 0:
                continue
            return decode(buf, n)

    def close(self) -> None:
        """Send PROC_CN_MCAST_IGNORE (the kernel counts listeners) and close. Idempotent."""
        if self._sock is None:
            return
        if self._listening:
            try:
                self._sock.send(encode_mcast_op(PROC_CN_MCAST_IGNORE, 0,
                                                self._sock.getsockname()[0]))
            except OSError:
                pass  # closing the socket ends the subscription on any kernel that matters
            self._listening = False
        self._close_socket()

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> "ProcConnector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _strerror(e: OSError) -> str:
    if e.errno is not None:
        return f"{errno.errorcode.get(e.errno, e.errno)} ({os.strerror(e.errno)})"
    return str(e)


_NEEDS_CAP = " (needs CAP_NET_ADMIN before Linux 6.6)"


def _unavailable(what: str, e: OSError, hint_errnos: Tuple[int, ...] = (), hint: str = "") -> ConnectorUnavailable:
    """ConnectorUnavailable for a failed `what`: its errno, and `hint` if it is one of hint_errnos."""
    return ConnectorUnavailable(f"{what}: {_strerror(e)}" + (hint if e.errno in hint_errnos else ""))
