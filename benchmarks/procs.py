"""CPU time of processes the harness cannot wait for, read from /proc.

sandlock's supervisors are not children of the caller: the caller starts a
launch server (a child process), the server forks the supervisors, and the
supervisors are reused run after run, so ``getrusage(RUSAGE_CHILDREN)`` of
the caller never sees them. Instead the harness reads, before and after a
workload, the CPU time of the launch server and of every process below it.

Nothing here imports sandlock: the launch server is found from the outside,
as the harness's child process whose command line names sandlock's
supervisor server.

Per process: its own CPU time (``/proc/PID/schedstat``, nanoseconds, for a
single-threaded process; otherwise utime+stime of ``/proc/PID/stat``) and
the CPU time of its children it has reaped (cutime+cstime of
``/proc/PID/stat``, clock ticks: 10 ms resolution on the total).
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field

_TICK = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    pid: int
    ppid: int
    own: float      # seconds on CPU, this process (all its threads)
    reaped: float   # seconds: cutime + cstime (children it has waited for)
    cmdline: bytes = b""


def children(pid: int) -> list[int]:
    """Child pids of `pid` (every thread's children)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def read(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, num_threads field 20
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    threads = int(fields[17])
    own = (utime + stime) * _TICK
    if threads == 1:
        try:
            with open(f"/proc/{pid}/schedstat", "rb") as f:
                own = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            pass
    return Proc(pid, ppid, own, (cutime + cstime) * _TICK, cmdline)


def is_launch_server(cmdline: bytes) -> bool:
    return b"sandlock" in cmdline and b"server" in cmdline


@dataclass
class TreeSnapshot:
    """The launch server of this process and everything below it."""
    server: Proc | None
    procs: dict[int, Proc] = field(default_factory=dict)   # server included

    @property
    def supervisors(self) -> dict[int, Proc]:
        if self.server is None:
            return {}
        return {p.pid: p for p in self.procs.values() if p.ppid == self.server.pid}


def snapshot(exclude: set[int] = frozenset()) -> TreeSnapshot:
    """Read the launch server's tree (None server if there is none yet)."""
    server = None
    for pid in children(os.getpid()):
        if pid in exclude:
            continue
        p = read(pid)
        if p is not None and is_launch_server(p.cmdline):
            server = p
            break
    snap = TreeSnapshot(server)
    if server is None:
        return snap
    todo = [server]
    while todo:
        p = todo.pop()
        snap.procs[p.pid] = p
        for c in children(p.pid):
            q = read(c)
            if q is not None:
                todo.append(q)
    return snap


@dataclass
class TreeDelta:
    """CPU seconds used under the launch server between two snapshots."""
    supervisor_cpu: float   # the server's and the supervisors' own CPU time
    total_cpu: float        # every process of the tree: supervisors, children, programs
    supervisors: int        # supervisors alive at the end
    ended: int              # supervisors that ended in between (see note in `delta`)

    def to_json(self) -> dict:
        return {"supervisor_cpu_s": self.supervisor_cpu, "total_cpu_s": self.total_cpu,
                "supervisors": self.supervisors, "supervisors_ended": self.ended}


def delta(a: TreeSnapshot, b: TreeSnapshot) -> TreeDelta | None:
    """What the tree used between snapshots `a` and `b`; None when there is
    no launch server, or it is not the same one.

    total: the sum over the tree of own + reaped CPU at `b` minus the same
    at `a` (a process reaped in between moves into its parent's "reaped").
    supervisor: the server's own time plus each supervisor's own time. A
    supervisor that ended in between (the pool keeps at most a few idle)
    is known only through the server's reaped time, which also holds what
    its sandboxes used after `a`; that part is counted as supervisor time
    (an overestimate) and the count of such supervisors is reported."""
    if a.server is None or b.server is None or a.server.pid != b.server.pid:
        return None
    total = (sum(p.own + p.reaped for p in b.procs.values())
             - sum(p.own + p.reaped for p in a.procs.values()))
    sup_a, sup_b = a.supervisors, b.supervisors
    sup = b.server.own - a.server.own
    for pid, p in sup_b.items():
        sup += p.own - (sup_a[pid].own if pid in sup_a else 0.0)
    ended = [pid for pid in sup_a if pid not in sup_b]
    if ended or b.server.reaped != a.server.reaped:
        # What the server reaped in between (ended supervisors with their
        # reaped children, and any orphan it killed), less what those
        # supervisors had already used at `a`.
        sup += (b.server.reaped - a.server.reaped
                - sum(sup_a[pid].own + sup_a[pid].reaped for pid in ended))
    return TreeDelta(sup, total, len(sup_b), len(ended))


# -- adopting orphans (the fresh-process rows) --------------------------------

PR_SET_CHILD_SUBREAPER = 36


def set_subreaper(on: bool) -> bool:
    """Make this process the reaper of its descendants' orphans (so a fresh
    interpreter's launch server, orphaned when that interpreter exits, is
    waited for here and its CPU time becomes visible)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_adopted(known: set[int], timeout: float = 10.0) -> float:
    """Wait for every child of this process not in `known` (orphans adopted
    as subreaper) and return the CPU seconds they and their reaped children
    used. Waits at most `timeout` seconds for each."""
    import time
    used = 0.0
    for pid in children(os.getpid()):
        if pid in known:
            continue
        deadline = time.monotonic() + timeout
        while True:
            try:
                got, _status, ru = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if got == pid:
                used += ru.ru_utime + ru.ru_stime
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.002)
    return used


# -- the rest of the machine ---------------------------------------------------


def our_cpu() -> float:
    """CPU seconds used so far by this process, the children it waited for,
    and every live descendant (with what they waited for)."""
    import resource
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    todo = children(os.getpid())
    while todo:
        pid = todo.pop()
        p = read(pid)
        if p is not None:
            total += p.own + p.reaped
            todo += children(pid)
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, steal seconds) from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    v += [0] * (8 - len(v))
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq) * _TICK, steal * _TICK


class OtherLoad:
    """How much CPU the rest of the machine used while a workload ran: the
    machine's busy time (/proc/stat) minus this harness's own (itself, its
    children, the launch server's tree, the reference probe), as a share of
    all cores over the wall time; and the hypervisor's steal time."""

    def __init__(self):
        import time
        self._t = time.perf_counter()
        self._ours = our_cpu()
        self._busy, self._steal = machine_cpu()

    def result(self) -> dict:
        import time
        wall = time.perf_counter() - self._t
        ours = our_cpu() - self._ours
        busy, steal = machine_cpu()
        cap = wall * (os.cpu_count() or 1)
        return {"others_pct": max(0.0, (busy - self._busy - ours) / cap * 100) if cap else None,
                "steal_pct": (steal - self._steal) / cap * 100 if cap else None,
                "wall_s": wall}
