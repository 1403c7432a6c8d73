"""Deterministic runs, the filter side: which calls reach the supervisor.

Argument blocks (run before the dispatch's list, see filter_layout.py), so
that the common calls cost nothing:
  * brk(NULL): the first call a freshly exec'd glibc program makes, in the
    dynamic loader (or a static program's start) before it looks up the
    vDSO's functions; the supervisor then hides the vDSO's clock and
    random functions (supervisor/vdso.py), so libc makes real syscalls;
    arch_prctl(ARCH_SET_FS) (x86_64): the same for Go programs, whose
    runtime sets its TLS before it parses the vDSO and never calls brk;
  * clock_gettime on a realtime clock (REALTIME, REALTIME_COARSE,
    REALTIME_ALARM, TAI): the supervisor answers it shifted; monotonic,
    boot-time and CPU clocks never reach it;
  * clock_nanosleep with TIMER_ABSTIME on a realtime clock: the deadline is
    in the shifted clock; the supervisor sleeps until the real deadline;
  * timerfd_settime with TFD_TIMER_ABSTIME: the supervisor reads the
    timer's clock and un-shifts a realtime deadline.
"""
from __future__ import annotations

from ._kernel import bpf, filter_layout

CLOCK_REALTIME, CLOCK_REALTIME_COARSE, CLOCK_REALTIME_ALARM, CLOCK_TAI = 0, 5, 8, 11
# Clocks that read the wall clock (TAI is the wall clock plus leap seconds).
WALL_CLOCKS = (CLOCK_REALTIME, CLOCK_REALTIME_COARSE, CLOCK_REALTIME_ALARM, CLOCK_TAI)
SLEEP_CLOCKS = (CLOCK_REALTIME, CLOCK_REALTIME_ALARM, CLOCK_TAI)  # the kernel sleeps on these
TIMER_ABSTIME = 1       # clock_nanosleep, timer_settime
TFD_TIMER_ABSTIME = 1   # timerfd_settime
ARCH_SET_FS = 0x1002


def arg_blocks(policy, table) -> list[filter_layout.ArgBlock]:
    nr = table.syscalls
    ld, low, high = bpf.ld_abs, bpf.arg_low, bpf.arg_high
    notify = bpf.ret(bpf.RET_USER_NOTIF)
    blocks = []
    if policy.random_seed is not None or policy.time_start is not None:
        if "brk" in nr:
            blocks.append(filter_layout.ArgBlock(nr["brk"], (
                ld(low(0)), bpf.jeq(0, jf="skip"), ld(high(0)), bpf.jeq(0, jf="skip"), notify)))
        if "arch_prctl" in nr:  # x86_64 only
            blocks.append(filter_layout.ArgBlock(nr["arch_prctl"], (
                ld(low(0)), bpf.jeq(ARCH_SET_FS, jf="skip"), notify)))
    if policy.time_start is None:
        return blocks
    for name in ("clock_gettime", "clock_gettime64"):
        if name in nr:  # clockid_t is an int: the kernel reads the low word
            blocks.append(filter_layout.ArgBlock(nr[name], (
                ld(low(0)), *[bpf.jeq(c, jt="wall") for c in WALL_CLOCKS], bpf.ja("skip"),
                bpf.Label("wall"), notify)))
    for name in ("clock_nanosleep", "clock_nanosleep_time64"):
        if name in nr:
            blocks.append(filter_layout.ArgBlock(nr[name], (
                ld(low(1)), bpf.jset(TIMER_ABSTIME, jf="skip"),
                ld(low(0)), *[bpf.jeq(c, jt="wall") for c in SLEEP_CLOCKS], bpf.ja("skip"),
                bpf.Label("wall"), notify)))
    if "timerfd_settime" in nr:
        blocks.append(filter_layout.ArgBlock(nr["timerfd_settime"], (
            ld(low(1)), bpf.jset(TFD_TIMER_ABSTIME, jf="skip"), notify)))
    return blocks
