"""Syscalls that name another process: the filter side (plan time).

Issue 15, items 12 and 18. Landlock scopes signals (kill, tkill, tgkill,
rt_sigqueueinfo, pidfd_send_signal, F_SETOWN/SIGIO) and ptrace-mode access
(ptrace, process_vm_*, pidfd_getfd, kcmp, migrate_pages, move_pages,
get_robust_list, process_madvise) to the sandbox's own domain. It does not
look at the syscalls below, which the kernel lets any process use on every
process of the same uid (or on any process, for the lookups): a sandbox
could lower its supervisor's or its caller's RLIMIT_CPU / RLIMIT_NOFILE,
starve them with SCHED_IDLE or nice 19, or map the process tree that the
private /proc view hides (pidfd_open + PIDFD_GET_INFO, getsid, ...).
(For a root sandbox, whose capabilities are dropped, commoncap already
refuses nice / scheduler / ioprio changes on processes holding more
permitted capabilities; prlimit64 and every lookup have no such check, and
an ordinary user's sandbox has none at all.)

Rule: such a syscall may reach the calling process itself or a process of
the sandbox (any of its threads), nothing else. `SYSCALLS` is the one table
of what is gated; the supervisor side (supervisor/pidscope.py) reads it too.

Errno for a target outside the sandbox (the same whatever the target, so
the answer never tells an outside pid from a free one):
  * lookups (get*, sched_get*, sched_rr_get_interval, ioprio_get,
    getpgid, getsid, pidfd_open, prlimit64 with new_limit NULL): ESRCH, as if
    the process did not exist (what the private /proc view shows);
  * changes (set*, sched_set*, ioprio_set, prlimit64 with a new limit): EPERM;
  * CPU clocks of another process (clock_gettime, clock_getres,
    clock_nanosleep, timer_create): EINVAL, the kernel's answer for a clock
    id naming no process;
  * PRIO_USER / IOPRIO_WHO_USER (every process of a user, who=0 included):
    always EPERM;
  * PRIO_PGRP / IOPRIO_WHO_PGRP: allowed only when the group's session was
    created inside the sandbox (its leader is a live sandbox process), since
    a session can never be joined from outside; otherwise as above.

The filter (per syscall, an argument block run before the dispatch):
  * self forms and forms the kernel rejects by itself jump to "skip", i.e.
    continue to the normal dispatch, which allows them unless the policy
    denies or notifies them for another reason. Self: pid 0 (the low 32 bits:
    pid_t is an int and the kernel truncates, so 0x1_0000_0000 is also 0),
    setpriority/getpriority PRIO_PROCESS who 0, ioprio IOPRIO_WHO_PROCESS
    who 0, non-negative clock ids, thread CPU clocks (the kernel allows only
    the caller's own threads), the caller's own process CPU clock (pid
    field 0), fd clocks. Rejected by the kernel before any lookup: negative
    pids (EINVAL / ESRCH), an unknown `which` (EINVAL);
  * anything else returns USER_NOTIF from the block itself when a supervisor
    runs (it decides membership), or the errno above when there is none
    (no_supervisor: only the self forms work).

Why "skip" and a USER_NOTIF from the block rather than RET_ALLOW for the self
forms and these syscalls in NOTIFIED: a RET_ALLOW in a block would skip the
dispatch, so an `extra_deny_syscalls` entry or a user handler
(run_with_handlers) for, say, setpriority would never see the self form, and
num_cpus could not virtualize sched_getaffinity(0). With "skip" the fast path
costs only the dispatch's compares (no round trip, which is what matters).
Only pidfd_open, which has no self form a filter can see (the caller's own
pid is not 0), is in NOTIFIED.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass

from ._kernel import bpf, filter_layout
from .policy.syscall_groups import DEFAULT_DENY

# include/uapi/linux/resource.h and include/uapi/linux/ioprio.h.
PRIO_PROCESS, PRIO_PGRP, PRIO_USER = 0, 1, 2
IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP, IOPRIO_WHO_USER = 1, 2, 3

# CPU clock ids (include/linux/posix-timers_types.h): a negative clockid_t
# is ~pid << 3 | perthread << 2 | which; which == 3 without the per-thread bit
# is CLOCKFD, a dynamic clock named by an fd.
CPUCLOCK_PERTHREAD = 4
CLOCKFD, CLOCKFD_MASK = 3, 7
SIGN_BIT = 0x80000000


@dataclass(frozen=True)
class Target:
    """How a syscall names a process.

    kind "pid": args[arg] is a pid_t (0: the caller);
    kind "which": args[0] is which (`which` = its PROCESS, PGRP, USER values),
        args[1] the pid / pgid / uid;
    kind "clock": args[0] is a clockid_t, maybe a CPU clock of a process;
    kind "pidfd": args[0] is a pid, and there is no self form visible to a filter.
    `refusal` is the errno for a target outside the sandbox.
    """
    kind: str
    refusal: int
    arg: int = 0
    which: tuple[int, int, int] | None = None
    lookup_unless_arg: int | None = None  # prlimit64: ESRCH (a lookup) when this arg is NULL

    def refusal_for(self, args) -> int:
        if self.lookup_unless_arg is not None and args[self.lookup_unless_arg] == 0:
            return errno.ESRCH
        return self.refusal


_PRIO = (PRIO_PROCESS, PRIO_PGRP, PRIO_USER)
_IOPRIO = (IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP, IOPRIO_WHO_USER)

SYSCALLS: dict[str, Target] = {
    "prlimit64": Target("pid", errno.EPERM, lookup_unless_arg=2),
    "setpriority": Target("which", errno.EPERM, which=_PRIO),
    "getpriority": Target("which", errno.ESRCH, which=_PRIO),
    "ioprio_set": Target("which", errno.EPERM, which=_IOPRIO),
    "ioprio_get": Target("which", errno.ESRCH, which=_IOPRIO),
    "sched_setscheduler": Target("pid", errno.EPERM),
    "sched_setparam": Target("pid", errno.EPERM),
    "sched_setattr": Target("pid", errno.EPERM),
    "sched_setaffinity": Target("pid", errno.EPERM),
    "sched_getscheduler": Target("pid", errno.ESRCH),
    "sched_getparam": Target("pid", errno.ESRCH),
    "sched_getattr": Target("pid", errno.ESRCH),
    # With num_cpus the dispatch also notifies sched_getaffinity, for
    # procfs.on_getaffinity (see supervisor/pidscope.py about their order).
    "sched_getaffinity": Target("pid", errno.ESRCH),
    "sched_rr_get_interval": Target("pid", errno.ESRCH),
    "getpgid": Target("pid", errno.ESRCH),
    "getsid": Target("pid", errno.ESRCH),
    "clock_gettime": Target("clock", errno.EINVAL),
    "clock_getres": Target("clock", errno.EINVAL),
    "clock_nanosleep": Target("clock", errno.EINVAL),
    "timer_create": Target("clock", errno.EINVAL),
    "pidfd_open": Target("pidfd", errno.ESRCH),
}

# A syscall the policy denies by default keeps its plain denial: a block
# answering for it would let it through (today none of SYSCALLS is).
GATED: tuple[str, ...] = tuple(n for n in SYSCALLS if n not in DEFAULT_DENY)

NOTIFIED: tuple[str, ...] = tuple(n for n in GATED if SYSCALLS[n].kind == "pidfd")


def arg_blocks(table, supervised: bool) -> list:
    """filter_layout.ArgBlock list for the pid-taking syscalls of `table`."""
    blocks = []
    for name in GATED:
        nr = table.syscalls.get(name)
        if nr is None:
            continue  # e.g. an arch without this syscall
        spec = SYSCALLS[name]
        if spec.kind == "pidfd" and supervised:
            continue  # in NOTIFIED: the dispatch sends every call to the supervisor
        blocks.append(filter_layout.ArgBlock(nr, tuple(_body(spec, supervised))))
    return blocks


def _body(spec: Target, supervised: bool) -> list:
    ld, low = bpf.ld_abs, bpf.arg_low
    if spec.kind in ("pid", "pidfd"):
        return [ld(low(spec.arg)), bpf.jeq(0, jt="skip"), bpf.jset(SIGN_BIT, jt="skip"),
                *_refuse(spec, supervised, "out")]
    if spec.kind == "which" and spec.which is not None:
        proc, grp, user = spec.which
        return [ld(low(0)), bpf.jeq(proc, jf="other"),
                ld(low(1)), bpf.jeq(0, jt="skip"), bpf.jset(SIGN_BIT, jt="skip", jf="out"),
                bpf.Label("other"), bpf.jeq(grp, jt="out"), bpf.jeq(user, jt="user", jf="skip"),
                *_refuse(spec, supervised, "out"),
                bpf.Label("user"),
                bpf.ret(bpf.RET_USER_NOTIF if supervised else bpf.RET_ERRNO | errno.EPERM)]
    if spec.kind == "clock":
        return [ld(low(0)), bpf.jset(SIGN_BIT, jf="skip"),
                bpf.and_k(CLOCKFD_MASK), bpf.jeq(CLOCKFD, jt="skip"),
                bpf.jset(CPUCLOCK_PERTHREAD, jt="skip"),
                ld(low(0)), bpf.and_k(~CLOCKFD_MASK & 0xFFFFFFFF),
                bpf.jeq(~CLOCKFD_MASK & 0xFFFFFFFF, jt="skip"),  # pid field 0: the caller
                *_refuse(spec, supervised, "out")]
    raise ValueError(f"pidscope: unknown kind {spec.kind!r}")


def _refuse(spec: Target, supervised: bool, label: str) -> list:
    """The answer for a target the filter cannot place: ask the supervisor,
    or, without one, refuse."""
    out: list = [bpf.Label(label)]
    if supervised:
        return out + [bpf.ret(bpf.RET_USER_NOTIF)]
    if spec.lookup_unless_arg is not None:
        i = spec.lookup_unless_arg
        return out + [bpf.ld_abs(bpf.arg_low(i)), bpf.jeq(0, jf="change"),
                      bpf.ld_abs(bpf.arg_high(i)), bpf.jeq(0, jf="change"),
                      bpf.ret(bpf.RET_ERRNO | errno.ESRCH),
                      bpf.Label("change"), bpf.ret(bpf.RET_ERRNO | spec.refusal)]
    return out + [bpf.ret(bpf.RET_ERRNO | spec.refusal)]
