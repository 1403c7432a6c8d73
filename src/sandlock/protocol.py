"""Every message between sandlock's processes, in one place.

Processes and channels (fds ride along with SCM_RIGHTS where noted):

    caller ──SpareRequest──▶ launch server            (SOCK_SEQPACKET)
    caller ◀──SpareReady(+supervisor conn)/SpareFailed── launch server
    caller ◀──ChildOffer(+child request socket)── supervisor
    caller ──Launch(+ruleset, stdin, stdout, stderr, ctl, result, extra…)──▶ child
    child  ──Launch(+ctl, result)──▶ supervisor       (the same request)
    child  ──ListenerFd──▶ supervisor ──ListenerAck──▶ child   (pipes)
    child  ──ChildFailed──▶ supervisor                (error pipe)
    caller ──Command──▶ supervisor                    (control pipe)
    caller ◀──Started / PortMapped / Finished── supervisor   (result pipe)
    caller ◀──PolicyEvent── supervisor ──▶ PolicyVerdict  (policy_fn socket)

A frame is a fixed header, then the payload:

    u8 VERSION · u8 kind · u32 payload length · payload

The payload is `marshal` data of the message's fields as a tuple of plain
values (ints, strings, bytes, tuples, dicts): never code, never a pickled
object. Each message class has `_fields()` / `_build()` to map its typed
fields onto that tuple. `encode` and `decode` are the only encoder and
decoder; `decode` takes the channel and refuses a kind that does not
belong to it. The child's failure report works like CPython's
_posixsubprocess error pipe: one small fixed message (step, errno,
filename), parsed once into a real error by the caller.
"""
from __future__ import annotations

import enum
import marshal
import struct
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .fsview import FsView
from .httpacl import HttpAcl
from .netplan import NetPlan
from .policy import netrules
from .policy.ports import PortSet

VERSION = 1
_HEADER = struct.Struct("=BBI")
HEADER_SIZE = _HEADER.size
MAX_PAYLOAD = 1 << 20
# ChildSteps.extra_fds: at most this many (they ride in one SCM_RIGHTS
# message with the launch's six fds; the kernel takes 253 at most).
MAX_EXTRA_FDS = 64


class ProtocolError(Exception):
    """A frame that is not what the channel carries (a bug, or a stranger)."""


class Kind(enum.IntEnum):
    SPARE_REQUEST = 1
    SPARE_READY = 2
    SPARE_FAILED = 3
    CHILD_OFFER = 4
    LAUNCH = 5
    LISTENER_FD = 6
    LISTENER_ACK = 7
    CHILD_FAILED = 8
    COMMAND = 9
    STARTED = 10
    PORT_MAPPED = 11
    FINISHED = 12
    POLICY_EVENT = 13
    POLICY_VERDICT = 14
    POLICY_EVENTS = 15


class Channel(enum.Enum):
    SERVER = frozenset({Kind.SPARE_REQUEST, Kind.SPARE_READY, Kind.SPARE_FAILED})
    OFFER = frozenset({Kind.CHILD_OFFER})
    LAUNCH = frozenset({Kind.LAUNCH})
    HANDOFF = frozenset({Kind.LISTENER_FD, Kind.LISTENER_ACK})
    CHILD_ERROR = frozenset({Kind.CHILD_FAILED})
    CONTROL = frozenset({Kind.COMMAND})
    RESULT = frozenset({Kind.STARTED, Kind.PORT_MAPPED, Kind.FINISHED})
    POLICY = frozenset({Kind.POLICY_EVENT, Kind.POLICY_VERDICT, Kind.POLICY_EVENTS})


class Message:
    KIND: Kind

    def _fields(self) -> tuple:
        return tuple(getattr(self, f) for f in self.__dataclass_fields__)  # type: ignore[attr-defined]

    @classmethod
    def _build(cls, values: tuple) -> Any:
        return cls(*values)


M = TypeVar("M", bound=Message)


# -- launch server -------------------------------------------------------------

@dataclass
class SpareRequest(Message):
    KIND = Kind.SPARE_REQUEST


@dataclass
class SpareReady(Message):
    """With it: the new supervisor's connection."""
    KIND = Kind.SPARE_READY


@dataclass
class SpareFailed(Message):
    KIND = Kind.SPARE_FAILED
    reason: str = ""


@dataclass
class ChildOffer(Message):
    """With it: the request socket of a child the supervisor forked."""
    KIND = Kind.CHILD_OFFER
    supervisor_pid: int = 0


# -- the launch request ----------------------------------------------------------

class Step(enum.IntEnum):
    """What the child was doing when it failed (ChildFailed.step)."""
    LAUNCH = 1
    PROCESS_GROUP = 2
    PARENT_DEATH_SIGNAL = 3
    STDIO = 4
    CHDIR = 5
    THP_DISABLE = 6
    PERSONALITY = 7
    CPU_AFFINITY = 8
    CAPABILITIES = 9
    NO_NEW_PRIVS = 10
    LANDLOCK = 11
    SECCOMP = 12
    LISTENER_HANDOFF = 13
    RLIMIT = 14
    EXEC = 15
    USER_NAMESPACE = 16

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


@dataclass
class ChildSteps:
    """What the child does between fork and exec."""
    argv: list[bytes]
    exec_candidates: list[bytes]
    envp: dict[bytes, bytes]
    cwd: bytes
    program: bytes                     # the encoded seccomp filter
    handoff: bool                      # hand the listener to the supervisor
    rlimits: list[tuple[int, int, int]]
    thp_disable: bool = False
    personality: int | None = None
    cpu_affinity: tuple[int, ...] | None = None
    umask: int = 0o022
    new_pgrp: bool = True
    ids: tuple[int, int] | None = None  # (uid, gid) seen inside: a user namespace
    # Descriptors beyond stdio, at these numbers (each > 2, distinct): the
    # Launch carries one fd per entry after the standard six, in this order
    # (a gather consumer's inputs). Empty: only stdio reaches the command.
    extra_fds: tuple[int, ...] = ()
    # chroot: the exec candidates are paths in the virtual tree; the child
    # opens one (through the supervisor) and executes the fd
    exec_by_fd: bool = False


@dataclass
class SupervisorPlan:
    """What the supervisor enforces."""
    routes: dict[str, tuple[str, ...]]     # feature → routed syscalls (routing.py)
    fs: FsView
    net: NetPlan
    proc: bool
    max_processes: int | None
    max_memory: int | None
    max_cpu: int | None
    num_cpus: int | None
    timeout: float | None
    name: str | None = None
    # The copy-on-write workdir: (workdir, branch dir, max_disk bytes or None)
    cow: tuple[str, str, int | None] | None = None
    # ps / inspect / kill (control.py): the runtime directory of the control
    # socket (None: no socket), the command line, the effective policy as
    # a profile-shaped dict of plain values.
    control_dir: str | None = None
    command: list[str] = field(default_factory=list)
    policy: dict = field(default_factory=dict)
    # policy_fn: how long a held syscall waits for the caller's verdict
    # (seconds; None: no policy_fn in this run)
    policy_fn_timeout: float | None = None
    # Deterministic runs: (random_seed, time_start ns, deterministic_dirs), or None
    determinism: tuple[int | None, int | None, bool] | None = None
    # chroot: (root, ((virtual, host, read_only), ...), virtual cwd bytes), or None
    chroot: tuple | None = None


@dataclass
class Launch(Message):
    KIND = Kind.LAUNCH
    child: ChildSteps
    supervisor: SupervisorPlan

    def _fields(self) -> tuple:
        c, s = self.child, self.supervisor
        return (
            (c.argv, c.exec_candidates, c.envp, c.cwd, c.program, c.handoff, c.rlimits,
             c.thp_disable, c.personality, c.cpu_affinity, c.umask, c.new_pgrp, c.ids,
             tuple(c.extra_fds), c.exec_by_fd),
            (s.routes, _fs_fields(s.fs), _net_fields(s.net), s.proc, s.max_processes,
             s.max_memory, s.max_cpu, s.num_cpus, s.timeout, s.name, s.cow, s.control_dir,
             s.command, s.policy, s.policy_fn_timeout, s.determinism, s.chroot),
        )

    @classmethod
    def _build(cls, values: tuple):
        c, s = values
        child = ChildSteps(*c)
        child.extra_fds = tuple(child.extra_fds)
        if type(child.exec_by_fd) is not bool:
            raise ValueError("exec_by_fd: expected a bool")
        if any(not isinstance(n, int) or n < 3 for n in child.extra_fds) \
                or len(set(child.extra_fds)) != len(child.extra_fds) \
                or len(child.extra_fds) > MAX_EXTRA_FDS:
            raise ValueError(f"extra_fds: expected distinct numbers above 2, got {child.extra_fds!r}")
        (routes, fs, net, proc, max_processes, max_memory, max_cpu, num_cpus, timeout, name, cow,
         control_dir, command, policy, policy_fn_timeout, determinism, chroot) = s
        return cls(child, SupervisorPlan({f: tuple(n) for f, n in routes.items()},
                                         _fs_build(fs), _net_build(net), proc, max_processes,
                                         max_memory, max_cpu, num_cpus, timeout, name,
                                         None if cow is None else tuple(cow),
                                         control_dir, list(command), dict(policy),
                                         policy_fn_timeout, _determinism(determinism),
                                         _chroot(chroot)))


def _chroot(values) -> tuple | None:
    if values is None:
        return None
    root, mounts, cwd = values
    mounts = tuple(tuple(m) for m in mounts)
    if type(root) is not str or type(cwd) is not bytes or not cwd.startswith(b"/") or any(
            len(m) != 3 or type(m[0]) is not str or type(m[1]) is not str or type(m[2]) is not bool
            for m in mounts):
        raise ValueError(f"chroot: expected (root, mounts, virtual cwd), got {values!r}")
    return root, mounts, cwd


def _determinism(values) -> tuple[int | None, int | None, bool] | None:
    if values is None:
        return None
    seed, start, dirs = values
    if not (seed is None or type(seed) is int and 0 <= seed < 2**64) \
            or not (start is None or type(start) is int) or type(dirs) is not bool:
        raise ValueError(f"determinism: expected (seed, time_start ns, bool), got {values!r}")
    return seed, start, dirs


def _fs_fields(view: FsView) -> tuple:
    return (view.grants, view.denied, view.rules, view.passthrough)


def _fs_build(values: tuple) -> FsView:
    grants, denied, rules, passthrough = values
    return FsView(tuple(tuple(g) for g in grants), tuple(denied),
                  tuple(tuple(r) for r in rules), tuple(passthrough))


def _ports(ps: PortSet) -> tuple:
    return (ps.any, ps.ranges)


def _rule_fields(rule: netrules.NetRule) -> tuple:
    return (tuple(sorted(rule.protocols)), rule.host,
            None if rule.network is None else str(rule.network), _ports(rule.ports), rule.spec)


def _rule_build(values: tuple) -> netrules.NetRule:
    import ipaddress
    protocols, host, network, ports, spec = values
    return netrules.NetRule(frozenset(protocols), host,
                            None if network is None else ipaddress.ip_network(network),
                            PortSet(*ports), spec)


def _net_fields(net: NetPlan) -> tuple:
    allow = None
    if isinstance(net.allow, netrules.ResolvedRules):
        allow = (tuple(_rule_fields(r) for r in net.allow.rules),
                 {h: tuple(str(a) for a in addrs) for h, addrs in net.allow.hosts.items()})
    return (allow, tuple(_rule_fields(r) for r in net.deny), net.udp, net.icmp,
            net.connect_ports, _ports(net.allow_bind), _ports(net.deny_bind), net.port_remap,
            net.hosts_file, net.tcp_by_landlock, None if net.http is None else net.http.fields())


def _net_build(values: tuple) -> NetPlan:
    import ipaddress
    allow, deny, udp, icmp, connect_ports, allow_bind, deny_bind, port_remap, hosts, by_ll, http = values
    resolved = None
    if allow is not None:
        rules, pinned = allow
        resolved = netrules.ResolvedRules(
            tuple(_rule_build(r) for r in rules),
            {h: tuple(ipaddress.ip_address(a) for a in addrs) for h, addrs in pinned.items()})
    return NetPlan(allow=resolved, deny=tuple(_rule_build(r) for r in deny), udp=udp, icmp=icmp,
                   connect_ports=connect_ports, allow_bind=PortSet(*allow_bind),
                   deny_bind=PortSet(*deny_bind), port_remap=port_remap, hosts_file=hosts,
                   tcp_by_landlock=by_ll, http=None if http is None else HttpAcl.build(http))


# -- child ⇄ supervisor ---------------------------------------------------------------

@dataclass
class ListenerFd(Message):
    KIND = Kind.LISTENER_FD
    fd: int = -1


@dataclass
class ListenerAck(Message):
    KIND = Kind.LISTENER_ACK
    taken: bool = False


@dataclass
class ChildFailed(Message):
    """The child could not confine itself or exec: it never ran the command."""
    KIND = Kind.CHILD_FAILED
    step: Step = Step.LAUNCH
    errno: int = 0
    filename: str = ""

    def _fields(self) -> tuple:
        return (int(self.step), self.errno, self.filename)

    @classmethod
    def _build(cls, values: tuple):
        step, err, filename = values
        return cls(Step(step), err, filename)

    def describe(self) -> str:
        import os
        reason = os.strerror(self.errno) if self.errno else "failed"
        if self.step == Step.EXEC:
            return f"cannot execute {self.filename!r}: {reason}"
        if self.step == Step.USER_NAMESPACE:
            at = f" ({self.filename})" if self.filename else ""
            return (f"uid/gid: cannot create the user namespace that maps them{at}: {reason} (unprivileged "
                    "user namespaces are off: see sysctl user.max_user_namespaces, "
                    "kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns)")
        where = f" ({self.filename})" if self.filename else ""
        return f"sandbox setup failed at {self.step.label}{where}: {reason}"


# -- caller ⇄ supervisor ---------------------------------------------------------------

class Cmd(enum.IntEnum):
    KILL = 1
    PAUSE = 2
    RESUME = 3


@dataclass
class Command(Message):
    KIND = Kind.COMMAND
    cmd: Cmd = Cmd.KILL

    def _fields(self) -> tuple:
        return (int(self.cmd),)

    @classmethod
    def _build(cls, values: tuple):
        return cls(Cmd(values[0]))


class Reason(enum.IntEnum):
    """Why a run ended (the values of sandbox.ExitReason)."""
    EXITED = 0
    SIGNALED = 1
    KILLED = 2
    TIMEOUT = 3


@dataclass
class Started(Message):
    KIND = Kind.STARTED
    pid: int = 0
    supervisor_pid: int = 0


@dataclass
class PortMapped(Message):
    KIND = Kind.PORT_MAPPED
    virtual: int = 0
    real: int = 0


@dataclass
class Finished(Message):
    """The run's end. reason None: the sandbox itself failed (see error)."""
    KIND = Kind.FINISHED
    reason: Reason | None = None
    status: int | None = None          # wait status of the main process
    error: str = ""                    # the sandbox failed (the command may never have run)
    notes: list[str] = field(default_factory=list)  # limits enforced on the way
    failure: ChildFailed | None = None  # the child's own report, when it failed before exec
    # The supervisor's described refusals (denials.Recorder.export): (kind,
    # target, operation, errno, field, value, reason, count) each, and how
    # many more were refused past the bound.
    denials: list[tuple] = field(default_factory=list)
    denials_more: int = 0
    # `sandlock learn` (supervisor/learning.py): (kind, target) records of
    # what the command touched, how many more past the bound, how many
    # calls could not be observed.
    learned: list[tuple] = field(default_factory=list)
    learned_more: int = 0
    learned_missed: int = 0
    # The HTTP proxy's request log (httpproxy.Proxy.export_log): (method,
    # host, path, scheme, verdict, status, reason, credential name) each,
    # and how many requests past its bound were not logged.
    http_log: list[tuple] = field(default_factory=list)
    http_log_more: int = 0

    def _fields(self) -> tuple:
        return (None if self.reason is None else int(self.reason), self.status, self.error,
                list(self.notes), None if self.failure is None else self.failure._fields(),
                [tuple(d) for d in self.denials], self.denials_more,
                [tuple(r) for r in self.learned], self.learned_more, self.learned_missed,
                [tuple(e) for e in self.http_log], self.http_log_more)

    @classmethod
    def _build(cls, values: tuple):
        (reason, status, error, notes, failure, denials, more, learned, l_more, l_missed,
         http_log, http_more) = values
        records = [tuple(d) for d in denials]
        if any(len(d) != 8 or not all(isinstance(v, str) for v in (*d[:3], *d[4:7]))
               or not isinstance(d[3], int) or not isinstance(d[7], int) for d in records) \
                or not isinstance(more, int):
            raise ValueError(f"denials: malformed records {denials!r}")
        seen = [tuple(r) for r in learned]
        if any(len(r) != 2 or not all(isinstance(v, str) for v in r) for r in seen) \
                or not isinstance(l_more, int) or not isinstance(l_missed, int):
            raise ValueError("learned: malformed records")
        log = [tuple(e) for e in http_log]
        if any(len(e) != 8 or not all(isinstance(v, str) for v in (*e[:5], *e[6:]))
               or not isinstance(e[5], int) for e in log) or not isinstance(http_more, int):
            raise ValueError("http_log: malformed records")
        return cls(None if reason is None else Reason(reason), status, error, list(notes),
                   None if failure is None else ChildFailed._build(failure), records, more,
                   seen, l_more, l_missed, log, http_more)


# -- policy_fn: the supervisor asks, the caller's callback answers ----------------

@dataclass
class PolicyEvent(Message):
    """A syscall policy_fn sees. `id` 0: observed only (nobody waits for
    a verdict); otherwise the task is held until the PolicyVerdict of
    that id (or the timeout, which denies)."""
    KIND = Kind.POLICY_EVENT
    id: int = 0
    syscall: str = ""
    category: str = ""
    pid: int = 0
    parent_pid: int = 0
    host: str | None = None
    port: int = 0
    argv: tuple[str, ...] | None = None
    denied: bool = False

    @classmethod
    def _build(cls, values: tuple):
        msg = cls(*values)
        if not (isinstance(msg.id, int) and isinstance(msg.syscall, str) and isinstance(msg.pid, int)
                and (msg.argv is None or all(isinstance(a, str) for a in msg.argv))):
            raise ValueError("malformed event")
        if msg.argv is not None:
            msg.argv = tuple(msg.argv)
        return msg


@dataclass
class PolicyEvents(Message):
    """Observed events, several per frame (nobody waits for them: one send
    and one wake-up of the caller's thread for many)."""
    KIND = Kind.POLICY_EVENTS
    events: list[PolicyEvent] = field(default_factory=list)

    def _fields(self) -> tuple:
        return ([e._fields() for e in self.events],)

    @classmethod
    def _build(cls, values: tuple):
        (events,) = values
        return cls([PolicyEvent._build(tuple(e)) for e in events])


@dataclass
class PolicyVerdict(Message):
    """The caller's answer: errno 0 allows. `changes`: the PolicyContext
    calls the callback made, in order, as (method name, argument) pairs of
    plain values (the supervisor validates them again)."""
    KIND = Kind.POLICY_VERDICT
    id: int = 0
    errno: int = 0
    changes: list[tuple] = field(default_factory=list)

    def _fields(self) -> tuple:
        return (self.id, self.errno, [tuple(c) for c in self.changes])

    @classmethod
    def _build(cls, values: tuple):
        ident, err, changes = values
        if not isinstance(ident, int) or not isinstance(err, int) or not 0 <= err < 4096:
            raise ValueError(f"verdict {ident!r}: errno {err!r}")
        changes = [tuple(c) for c in changes]
        if any(len(c) != 2 or not isinstance(c[0], str) for c in changes):
            raise ValueError("malformed changes")
        return cls(ident, err, changes)


_CLASSES: dict[Kind, type[Message]] = {c.KIND: c for c in (
    SpareRequest, SpareReady, SpareFailed, ChildOffer, Launch, ListenerFd, ListenerAck,
    ChildFailed, Command, Started, PortMapped, Finished, PolicyEvent, PolicyVerdict,
    PolicyEvents)}


# -- the one encoder and decoder ----------------------------------------------------------

def encode(msg: Message) -> bytes:
    payload = marshal.dumps(msg._fields())
    return _HEADER.pack(VERSION, msg.KIND, len(payload)) + payload


def decode_as(frame: bytes, channel: Channel, cls: type[M]) -> M:
    """decode, for a channel point where only `cls` may arrive."""
    msg = decode(frame, channel)
    if not isinstance(msg, cls):
        raise ProtocolError(f"{channel.name}: expected {cls.__name__}, got {type(msg).__name__}")
    return msg


def decode(frame: bytes, channel: Channel) -> Message:
    """One whole frame → its message; ProtocolError if it is not one the
    channel carries."""
    if len(frame) < HEADER_SIZE:
        raise ProtocolError(f"{channel.name}: short frame ({len(frame)} bytes)")
    version, kind, length = _HEADER.unpack_from(frame)
    if version != VERSION:
        raise ProtocolError(f"{channel.name}: protocol version {version}, expected {VERSION}")
    if kind not in channel.value or len(frame) != HEADER_SIZE + length:
        raise ProtocolError(f"{channel.name}: unexpected frame (kind {kind}, {len(frame)} bytes)")
    try:
        return _CLASSES[Kind(kind)]._build(marshal.loads(frame[HEADER_SIZE:]))
    except (ValueError, TypeError, EOFError) as e:
        raise ProtocolError(f"{channel.name}: malformed {Kind(kind).name}: {e}") from None


class Reader:
    """Frames from a byte stream (a pipe): feed bytes, get whole messages."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.buf = b""

    def feed(self, data: bytes) -> list[Message]:
        self.buf += data
        out: list[Message] = []
        while len(self.buf) >= HEADER_SIZE:
            _v, _k, length = _HEADER.unpack_from(self.buf)
            if length > MAX_PAYLOAD:
                raise ProtocolError(f"{self.channel.name}: frame of {length} bytes")
            end = HEADER_SIZE + length
            if len(self.buf) < end:
                break
            out.append(decode(self.buf[:end], self.channel))
            self.buf = self.buf[end:]
        return out

    @property
    def partial(self) -> bool:
        return bool(self.buf)
