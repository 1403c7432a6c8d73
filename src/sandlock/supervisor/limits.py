"""Resource limits decided in the supervisor: processes, memory, CPU.

Every decision here is made from syscall *registers* (flags, lengths) and
from the kernel's own accounting in /proc, never from memory the child can
still change, so answering CONTINUE afterwards is safe.
"""
from __future__ import annotations

import errno
import os
import signal
import time

from . import processes

CLONE_THREAD = 0x00010000
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS = 0x01, 0x02, 0x20
PROT_WRITE = 0x2


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class ProcessLimit:
    """max_processes: peak concurrent processes (threads excluded).

    A fork is counted from the moment it is allowed (a reservation) until it
    shows in the process tree, so two forks answered back to back cannot
    both slip under the limit. A reservation ends when the forking thread's
    new child appears, when the thread is seen blocked in another syscall,
    or when it is gone.
    """

    def __init__(self, root: int, limit: int, fork_nrs: set[int], clone_nr: int):
        self.root = root
        self.limit = limit
        self.fork_nrs = fork_nrs  # fork, vfork, clone
        self.clone_nr = clone_nr
        self.pending: dict[int, tuple[frozenset[int], float]] = {}

    def _children_of(self, tid: int) -> frozenset[int]:
        return frozenset(int(x) for x in _read(f"/proc/{tid}/task/{tid}/children").split())

    def _settled(self, tid: int, before: frozenset[int], since: float) -> bool:
        try:
            if self._children_of(tid) - before:
                return True
            state = _read(f"/proc/{tid}/task/{tid}/syscall").split(b" ", 1)[0]
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno in (errno.ESRCH, errno.ENOENT):
                return True
            return time.monotonic() - since > 0.1  # unreadable: expire, fail-closed meanwhile
        return state.isdigit() and int(state) not in self.fork_nrs

    def on_fork(self, ctx):
        if ctx.syscall_nr == self.clone_nr and ctx.args[0] & CLONE_THREAD:
            return None  # a thread, not a process
        self.pending.pop(ctx.pid, None)  # its previous fork has returned
        for tid, (before, since) in list(self.pending.items()):
            if self._settled(tid, before, since):
                del self.pending[tid]
        count = len(processes.descendants(self.root)) + len(self.pending)
        if count >= self.limit:
            return errno.EAGAIN
        try:
            before = self._children_of(ctx.pid)
        except OSError:
            before = frozenset()
        self.pending[ctx.pid] = (before, time.monotonic())
        return None


def _status_fields(pid: int, names: tuple[bytes, ...]) -> int:
    total = 0
    for line in _read(f"/proc/{pid}/status").splitlines():
        key, _, rest = line.partition(b":")
        if key in names:
            total += int(rest.split()[0]) * 1024
    return total


class MemoryLimit:
    """max_memory: anonymous memory of the whole sandbox.

    Usage is what the kernel reports (VmData: private writable memory, and
    RssShmem: shared anonymous memory in use) summed over every process, so
    unmapping, exit and exec credit themselves and nothing can be laundered
    through file mappings. A call that would push usage over the limit gets
    its process (not its group) killed.
    """

    def __init__(self, root: int, limit: int, nrs: dict[str, int]):
        self.root = root
        self.limit = limit
        self.nrs = nrs
        self.killed: list[int] = []

    def usage(self) -> int:
        total = 0
        for pid in processes.descendants(self.root):
            try:
                total += _status_fields(pid, (b"VmData", b"RssShmem"))
            except (OSError, ValueError, IndexError):
                pass  # exited meanwhile
        return total

    def growth(self, ctx) -> int:
        nr, a = ctx.syscall_nr, ctx.args
        if nr == self.nrs.get("mmap"):
            length, prot, flags = a[1], a[2], a[3]
            if flags & MAP_ANONYMOUS or (flags & MAP_PRIVATE and prot & PROT_WRITE):
                return length
            return 0
        if nr == self.nrs.get("mremap"):
            return max(0, a[2] - a[1])
        if nr == self.nrs.get("mprotect"):
            return a[1] if a[2] & PROT_WRITE else 0
        if nr == self.nrs.get("brk"):
            return max(0, a[0] - _current_brk(ctx.pid)) if a[0] else 0
        return 0

    def on_alloc(self, ctx):
        grow = self.growth(ctx)
        if grow == 0:
            return None
        if grow > self.limit or self.usage() + grow > self.limit:
            tgid = _tgid(ctx.pid)
            self.killed.append(tgid)
            try:
                os.kill(tgid, signal.SIGKILL)
            except OSError:
                pass
            return errno.ENOMEM
        return None


def _tgid(tid: int) -> int:
    try:
        return processes.tgid(tid)
    except (OSError, ProcessLookupError):
        return tid


def _current_brk(pid: int) -> int:
    """The end of the heap: the [heap] mapping, or start_brk before any."""
    try:
        for line in _read(f"/proc/{pid}/maps").splitlines():
            if line.endswith(b"[heap]"):
                return int(line.split(b"-")[1].split()[0], 16)
        stat = _read(f"/proc/{pid}/stat")
        return int(stat.rsplit(b")", 1)[1].split()[44])  # field 47: start_brk
    except (OSError, ValueError, IndexError):
        return 0  # unknown: charge the whole request


class CpuThrottle:
    """max_cpu: hold the sandbox to N percent of one core by stopping and
    continuing all its processes, from their measured CPU time."""

    TICK = 0.02

    def __init__(self, root: int, percent: int):
        self.root = root
        self.rate = percent / 100.0
        self.budget = 0.0
        self.last_cpu: float | None = None
        self.last_time = time.monotonic()
        self.stopped = False

    def _cpu_seconds(self) -> float:
        total = 0
        for pid in processes.descendants(self.root):
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    total += int(_read(f"/proc/{pid}/task/{tid}/schedstat").split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return total / 1e9

    def tick(self) -> None:
        now = time.monotonic()
        cpu = self._cpu_seconds()
        if self.last_cpu is not None:
            used = max(0.0, cpu - self.last_cpu)
            self.budget = min(self.budget + (now - self.last_time) * self.rate - used, self.TICK)
        self.last_cpu, self.last_time = cpu, now
        if self.budget < 0 and not self.stopped:
            processes.signal_all(self.root, signal.SIGSTOP)
            self.stopped = True
        elif self.budget >= 0 and self.stopped:
            processes.signal_all(self.root, signal.SIGCONT)
            self.stopped = False
