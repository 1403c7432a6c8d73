"""Syscalls that name another process: the supervisor side.

The filter (sandlock/pidscope.py) lets the self forms through and sends
every other call of the gated syscalls here. A handler allows (None: no
objection, CONTINUE) when the target is a process of the sandbox or one of
its threads, and otherwise answers the errno of `pidscope.SYSCALLS`.

Membership: the supervisor is a child subreaper of every sandbox process, so
its descendants are exactly the sandbox (processes.descendants). A pid
argument may name a thread: it is mapped to its thread group first. A pid
whose /proc entry cannot be read is not provably a member: refused. The
handlers never fail open: an exception becomes EPERM in the dispatcher.

Deciding from the registers and then answering CONTINUE is sound here: the
pid, which, who and clock id are registers, which the kernel does not read
again from the task's memory. What remains is the pid-reuse race: a member
named in the call can exit, be reaped by the sandbox (another thread) and
its number be given to a new outside process between this check and the
kernel's lookup. That needs the pid counter to wrap around to exactly that
number in a microsecond window, at the moment an outside process is forked;
the sandbox cannot force it.

Process groups (PRIO_PGRP, IOPRIO_WHO_PGRP): a group can hold outside
processes (the sandbox runs in its caller's session; a same-session process
may join a group). It is allowed only when its session was made inside the
sandbox: the session leader (pid == sid) is a live sandbox process. A
session cannot be joined, only created (setsid), and a sandbox process's
descendants are sandbox processes, so then every process of the session,
hence of the group, is inside; and a group cannot leave its session, so the
answer holds for who == 0 even if another thread changes the caller's group
before the kernel looks.

Order with procfs.on_getaffinity (num_cpus): spare.builtin_handlers appends
these handlers after procfs's, and procfs answers every notified
sched_getaffinity with the virtual mask whatever pid it names. So with
num_cpus an outside pid gets the virtual mask (success, even for a pid that
does not exist) instead of ESRCH: nothing of the target is read or revealed.
Registering pidscope first in builtin_handlers would make it ESRCH.
"""
from __future__ import annotations

import errno

from .. import pidscope as _filter
from ..denials import Refused
from . import processes

_MASK32 = 0xFFFFFFFF


def int32(value: int) -> int:
    """The C int the kernel sees in a 64-bit register (it truncates)."""
    value &= _MASK32
    return value - (1 << 32) if value & 0x80000000 else value


class PidScope:
    def __init__(self, root: int):
        self.root = root

    def members(self) -> set[int]:
        return set(processes.descendants(self.root))

    def is_member(self, pid: int) -> bool:
        """Is task `pid` (a process or a thread) part of the sandbox? False
        when its /proc entry cannot be read (gone, or not ours to see)."""
        try:
            group = processes.tgid(pid)
        except (OSError, ValueError):
            return False
        return group in self.members()

    def group_inside(self, caller: int, pgid: int) -> bool:
        """Is every process of group `pgid` (0: the caller's) in the sandbox?"""
        members = self.members()
        if pgid == 0:
            _pgrp, sid = stat_ids(caller)  # unreadable: raises, refused
        else:
            sid = None
            for pid in members:
                try:
                    pgrp, session = stat_ids(pid)
                except (FileNotFoundError, ProcessLookupError):
                    continue  # exited since the walk
                if pgrp == pgid:
                    sid = session
                    break
            if sid is None:
                return False  # no process of the sandbox is in that group
        if sid not in members:
            return False  # the session was made outside (e.g. by the caller's shell)
        try:
            return stat_ids(sid)[1] == sid
        except (FileNotFoundError, ProcessLookupError):
            return False


def stat_ids(pid: int) -> tuple[int, int]:
    """(process group, session) of task `pid`, from /proc/<pid>/stat."""
    fields = processes.stat_fields(pid)
    return int(fields[2]), int(fields[3])


def _outside(err: int, target: str):
    """The refusal of a call naming processes outside the sandbox."""
    return Refused(err, "process", target, reason="outside the sandbox") if err else err


def handlers(root: int, nrs: dict[str, int]) -> dict:
    """nr → handler(ctx) for every gated syscall of this arch."""
    scope = PidScope(root)
    out = {}
    for name in _filter.GATED:
        if name in nrs:
            out[nrs[name]] = _handler(scope, _filter.SYSCALLS[name])
    return out


def _handler(scope: PidScope, spec: _filter.Target):
    if spec.kind in ("pid", "pidfd"):
        def on_pid(ctx):
            pid = int32(ctx.args[spec.arg])
            if pid <= 0:
                return None  # 0: the caller; negative: the kernel refuses it (EINVAL, ESRCH)
            return None if scope.is_member(pid) else _outside(spec.refusal_for(ctx.args), f"pid {pid}")
        return on_pid
    if spec.kind == "which" and spec.which is not None:
        proc, grp, user = spec.which

        def on_which(ctx):
            which, who = int32(ctx.args[0]), int32(ctx.args[1])
            if which == proc:
                if who <= 0 or scope.is_member(who):
                    return None
                return _outside(spec.refusal, f"pid {who}")
            if which == grp:
                if who < 0 or scope.group_inside(ctx.pid, who):
                    return None  # negative: no such group, the kernel says ESRCH
                return _outside(spec.refusal, f"process group {who}")
            if which == user:
                return _outside(errno.EPERM, f"user {who}")  # every process of a user: never only the sandbox
            return None  # an unknown `which`: the kernel answers EINVAL
        return on_which
    if spec.kind == "clock":
        def on_clock(ctx):
            clock = int32(ctx.args[0])
            if clock >= 0 or clock & _filter.CLOCKFD_MASK == _filter.CLOCKFD \
                    or clock & _filter.CPUCLOCK_PERTHREAD:
                return None
            pid = ~(clock >> 3)
            if pid == 0 or scope.is_member(pid):
                return None
            return spec.refusal
        return on_clock
    raise ValueError(f"pidscope: unknown kind {spec.kind!r}")
