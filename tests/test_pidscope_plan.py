"""Pid scoping in the seccomp program (sandlock/pidscope.py), run through
the cBPF interpreter of test_bpf.py on the x86_64 and aarch64 tables.

Self-targeting forms must be decided in the filter (no supervisor round
trip); every other target must reach the supervisor, or be refused when
there is none (no_supervisor). Pure: nothing is forked, except the last
tests, which check the supervisor's membership rules on real processes.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import signal

import pytest

from test_bpf import (RET_ALLOW, RET_NOTIF, compile_program, decode, show, sweep,  # noqa: F401
                      verdict)
from sandlock import pidscope
from sandlock import plan as plan_mod
from sandlock._kernel import bpf, filter_layout
from sandlock._kernel.syscalls import table, table_for
from sandlock.policy.model import Policy
from sandlock.policy.syscall_groups import DEFAULT_DENY
from sandlock.supervisor import pidscope as sup_pidscope

ARCHES = ("x86_64", "aarch64")
OTHER = 4242            # some pid that is not 0
PTR = 0x7FFF_1234_5000  # a plausible user pointer
HIGH_ONLY = 1 << 32     # non-NULL, yet its low word is 0


def errno_ret(e: int) -> int:
    return bpf.RET_ERRNO | e


def cpu_clock(pid: int, which: int = 2, thread: bool = False) -> int:
    """MAKE_PROCESS_CPUCLOCK / MAKE_THREAD_CPUCLOCK as an unsigned 32-bit register."""
    return ((~pid << 3) | (4 if thread else 0) | which) & 0xFFFFFFFF


@pytest.fixture(params=ARCHES)
def tbl(request):
    return table_for(request.param)


def programs(tbl, policy: Policy | None = None, notify: tuple[str, ...] = ()):
    """(supervised program, unsupervised program) as the plan builds them."""
    policy = policy or Policy()
    sup = compile_program(tbl, policy, tuple(pidscope.NOTIFIED) + tuple(notify))
    alone = compile_program(tbl, dataclasses.replace(policy, no_supervisor=True), ())
    return sup, alone


# Calls whose target the filter places as the caller itself (or which the
# kernel rejects before looking anything up): allowed in the filter.
SELF_FORMS = [
    ("prlimit64", (0, 7, PTR, PTR)),
    ("prlimit64", (0, 7, 0, PTR)),
    ("prlimit64", (1 << 32, 7, PTR, 0)),        # the kernel truncates pid_t: pid 0
    ("prlimit64", (0xFFFF_FFFF, 7, PTR, 0)),    # pid -1: ESRCH from the kernel
    ("setpriority", (0, 0, 10)),
    ("setpriority", (0, 0xFFFF_FFFF_0000_0000, 10)),
    ("setpriority", (7, OTHER, 10)),            # unknown which: EINVAL from the kernel
    ("getpriority", (0, 0)),
    ("ioprio_set", (1, 0, 0x4007)),
    ("ioprio_get", (1, 0)),
    ("ioprio_get", (0, OTHER)),                 # unknown which
    ("sched_setscheduler", (0, 5, PTR)),
    ("sched_setparam", (0, PTR)),
    ("sched_setattr", (0, PTR, 0)),
    ("sched_setaffinity", (0, 8, PTR)),
    ("sched_getscheduler", (0,)),
    ("sched_getparam", (0, PTR)),
    ("sched_getattr", (0, PTR, 56, 0)),
    ("sched_getaffinity", (0, 8, PTR)),
    ("sched_getaffinity", (0xFFFF_FFFB, 8, PTR)),  # negative: EINVAL from the kernel
    ("sched_rr_get_interval", (0, PTR)),
    ("getpgid", (0,)),
    ("getsid", (0,)),
    ("getsid", (0x5_0000_0000,)),
    ("clock_gettime", (0, PTR)),                # CLOCK_REALTIME
    ("clock_gettime", (2, PTR)),                # CLOCK_PROCESS_CPUTIME_ID
    ("clock_gettime", (cpu_clock(0), PTR)),     # the caller's own process clock
    ("clock_gettime", (cpu_clock(OTHER, thread=True), PTR)),  # thread clocks: own threads only
    ("clock_gettime", (((~5 << 3) | 3) & 0xFFFFFFFF, PTR)),   # FD_TO_CLOCKID(5)
    ("clock_getres", (1, PTR)),
    ("clock_nanosleep", (1, 0, PTR, 0)),
    ("timer_create", (1, 0, PTR)),
]

# Calls naming another process: (name, args, errno without a supervisor).
OTHER_FORMS = [
    ("prlimit64", (OTHER, 7, PTR, PTR), errno.EPERM),
    ("prlimit64", (OTHER, 7, HIGH_ONLY, PTR), errno.EPERM),  # new_limit is not NULL
    ("prlimit64", (OTHER, 7, 0, PTR), errno.ESRCH),         # a lookup
    ("prlimit64", ((1 << 32) | OTHER, 7, PTR, 0), errno.EPERM),  # high word ignored, as the kernel does
    ("setpriority", (0, OTHER, 10), errno.EPERM),
    ("setpriority", (1, 0, 10), errno.EPERM),                # PRIO_PGRP, the caller's group
    ("setpriority", (1, OTHER, 10), errno.EPERM),
    ("setpriority", (2, 0, 10), errno.EPERM),                # PRIO_USER: every process of the user
    ("setpriority", ((1 << 32) | 2, 0, 10), errno.EPERM),
    ("getpriority", (0, OTHER), errno.ESRCH),
    ("getpriority", (1, 0), errno.ESRCH),
    ("getpriority", (2, 0), errno.EPERM),
    ("ioprio_set", (1, OTHER, 0x4007), errno.EPERM),
    ("ioprio_set", (2, 0, 0x4007), errno.EPERM),
    ("ioprio_set", (3, 0, 0x4007), errno.EPERM),
    ("ioprio_get", (1, OTHER), errno.ESRCH),
    ("ioprio_get", (2, OTHER), errno.ESRCH),
    ("ioprio_get", (3, 0), errno.EPERM),
    ("sched_setscheduler", (OTHER, 5, PTR), errno.EPERM),
    ("sched_setparam", (OTHER, PTR), errno.EPERM),
    ("sched_setattr", (OTHER, PTR, 0), errno.EPERM),
    ("sched_setaffinity", (OTHER, 8, PTR), errno.EPERM),
    ("sched_getscheduler", (OTHER,), errno.ESRCH),
    ("sched_getparam", (OTHER, PTR), errno.ESRCH),
    ("sched_getattr", (OTHER, PTR, 56, 0), errno.ESRCH),
    ("sched_getaffinity", (OTHER, 8, PTR), errno.ESRCH),
    ("sched_rr_get_interval", (OTHER, PTR), errno.ESRCH),
    ("getpgid", (OTHER,), errno.ESRCH),
    ("getsid", (OTHER,), errno.ESRCH),
    ("clock_gettime", (cpu_clock(OTHER), PTR), errno.EINVAL),
    ("clock_gettime", (cpu_clock(OTHER, which=0), PTR), errno.EINVAL),
    ("clock_getres", (cpu_clock(OTHER), PTR), errno.EINVAL),
    ("clock_nanosleep", (cpu_clock(OTHER), 0, PTR, 0), errno.EINVAL),
    ("timer_create", (cpu_clock(OTHER), 0, PTR), errno.EINVAL),
    ("pidfd_open", (OTHER, 0), errno.ESRCH),
]


def test_every_gated_syscall_has_a_block(tbl):
    """Each gated name the table has gets exactly one block (pidfd_open:
    only without a supervisor); both tables know every gated name."""
    assert set(pidscope.GATED) <= set(tbl.syscalls), set(pidscope.GATED) - set(tbl.syscalls)
    for supervised in (True, False):
        blocks = pidscope.arg_blocks(tbl, supervised)
        nrs = [b.nr for b in blocks]
        assert len(nrs) == len(set(nrs))
        want = {tbl.syscalls[n] for n in pidscope.GATED
                if not (supervised and pidscope.SYSCALLS[n].kind == "pidfd")}
        assert set(nrs) == want
        # Each block assembles on its own too (labels resolve, jumps fit).
        bpf.assemble(filter_layout.build(tbl.audit_arch, tbl.x32_bit, blocks, [], {}))


def test_gated_and_notified_stay_off_the_deny_list():
    assert not set(pidscope.GATED) & set(DEFAULT_DENY)
    assert set(pidscope.NOTIFIED) == {"pidfd_open"}


def test_a_table_without_a_syscall_is_skipped():
    full = table_for("x86_64")

    class Partial:
        syscalls = {k: v for k, v in full.syscalls.items() if k not in ("ioprio_set", "getsid")}
    names = {full.names[b.nr] for b in pidscope.arg_blocks(Partial, True)}
    assert "ioprio_set" not in names and "getsid" not in names and "setpriority" in names


@pytest.mark.parametrize("name,args", SELF_FORMS)
def test_self_forms_are_allowed_in_the_filter(tbl, name, args):
    sup, alone = programs(tbl)
    assert show(verdict(sup, tbl, name, *args)) == "ALLOW"
    assert show(verdict(alone, tbl, name, *args)) == "ALLOW"


@pytest.mark.parametrize("name,args,refusal", OTHER_FORMS)
def test_other_targets_go_to_the_supervisor_or_are_refused(tbl, name, args, refusal):
    sup, alone = programs(tbl)
    assert show(verdict(sup, tbl, name, *args)) == "USER_NOTIF"
    assert show(verdict(alone, tbl, name, *args)) == show(errno_ret(refusal))


def test_pidfd_open_always_reaches_the_supervisor(tbl):
    """A filter cannot tell the caller's own pid: every pidfd_open is notified
    (through the dispatch); without a supervisor only the kernel's own
    refusals (pid <= 0: EINVAL) pass."""
    sup, alone = programs(tbl)
    for pid in (OTHER, 1, 0):
        assert verdict(sup, tbl, "pidfd_open", pid, 0) == RET_NOTIF
    assert verdict(alone, tbl, "pidfd_open", 0, 0) == RET_ALLOW
    assert verdict(alone, tbl, "pidfd_open", 0xFFFF_FFFF, 0) == RET_ALLOW


def test_full_sweeps_still_hold(tbl):
    """Neutral (zero) arguments are self forms: the every-syscall sweep of
    test_bpf gives the usual verdict for every number, with and without a
    supervisor."""
    sup, alone = programs(tbl)
    assert sweep(sup, tbl, Policy(), pidscope.NOTIFIED) == []
    assert sweep(alone, tbl, Policy(no_supervisor=True), ()) == []


def test_a_denied_syscall_stays_denied_in_its_self_form(tbl):
    """Self forms continue to the dispatch instead of returning ALLOW, so an
    extra_deny_syscalls entry still refuses them."""
    policy = Policy(extra_deny_syscalls=("setpriority", "prlimit64", "sched_getaffinity", "pidfd_open"))
    sup, alone = programs(tbl, policy)
    for prog in (sup, alone):
        assert verdict(prog, tbl, "setpriority", 0, 0, 10) == errno_ret(errno.EPERM)
        assert verdict(prog, tbl, "prlimit64", 0, 7, 0, PTR) == errno_ret(errno.EPERM)
        assert verdict(prog, tbl, "sched_getaffinity", 0, 8, PTR) == errno_ret(errno.EPERM)
        assert verdict(prog, tbl, "pidfd_open", OTHER, 0) in (errno_ret(errno.EPERM),
                                                               errno_ret(errno.ESRCH))


def test_self_forms_still_reach_a_notifying_handler(tbl):
    """When the plan notifies a gated syscall for another reason (num_cpus
    for sched_getaffinity, a user handler), its self form is notified too."""
    sup, _ = programs(tbl, notify=("sched_getaffinity", "setpriority"))
    assert verdict(sup, tbl, "sched_getaffinity", 0, 8, PTR) == RET_NOTIF
    assert verdict(sup, tbl, "setpriority", 0, 0, 10) == RET_NOTIF
    assert verdict(sup, tbl, "getpriority", 0, 0) == RET_ALLOW


def test_the_plan_routes_pidfd_open():
    from sandlock.policy.model import normalize
    from sandlock.sandbox import Sandbox
    p = plan_mod.compile_plan(normalize(Sandbox()), ["true"], abi=7)
    assert "pidfd_open" in p.notify
    prog = decode(p.program)
    tb = table()
    assert verdict(prog, tb, "prlimit64", 0, 7, 0, PTR) == RET_ALLOW
    assert verdict(prog, tb, "prlimit64", OTHER, 7, 0, PTR) == RET_NOTIF
    p = plan_mod.compile_plan(normalize(Sandbox(no_supervisor=True)), ["true"], abi=7)
    assert "pidfd_open" not in p.notify
    assert verdict(decode(p.program), tb, "prlimit64", OTHER, 7, 0, PTR) == errno_ret(errno.ESRCH)


# -- the supervisor's rules, on real processes -----------------------------------------

class Ctx:
    """The parts of a HandlerCtx the pid handlers read."""
    def __init__(self, nr, *args, pid=None):
        self.syscall_nr = nr
        self.args = tuple(a & 0xFFFF_FFFF_FFFF_FFFF for a in args) + (0,) * (6 - len(args))
        self.pid = pid if pid is not None else os.getpid()


def test_int32_truncates_like_the_kernel():
    i32 = sup_pidscope.int32
    assert i32(0) == 0 and i32(1 << 32) == 0 and i32((1 << 32) | 5) == 5
    assert i32(0xFFFF_FFFF) == -1 and i32(0xFFFF_FFFF_FFFF_FFFF) == -1
    assert i32(0x7FFF_FFFF) == 0x7FFF_FFFF


def test_handlers_decide_by_membership():
    """Root: this test process. Its forked child (and the child's thread
    id, which is its pid) is a member; the test itself, pid 1 and a pid that
    does not exist are not."""
    tb = table()
    nrs = tb.syscalls
    h = sup_pidscope.handlers(os.getpid(), nrs)
    assert set(h) == {nrs[n] for n in pidscope.GATED}
    child = os.fork()
    if child == 0:
        signal.pause()
        os._exit(0)
    try:
        prl, setp, getp, opn = (h[nrs[n]] for n in ("prlimit64", "setpriority", "getpriority",
                                                      "pidfd_open"))
        clk, sid = h[nrs["clock_gettime"]], h[nrs["getsid"]]
        assert prl(Ctx(0, child, 7, PTR, 0)) is None
        assert prl(Ctx(0, (1 << 32) | child, 7, PTR, 0)) is None
        assert prl(Ctx(0, os.getpid(), 7, PTR, 0)) == errno.EPERM
        assert prl(Ctx(0, os.getpid(), 7, 0, PTR)) == errno.ESRCH
        assert prl(Ctx(0, 1, 7, HIGH_ONLY, 0)) == errno.EPERM
        assert prl(Ctx(0, 0, 7, PTR, 0)) is None
        assert setp(Ctx(0, 0, child, 5)) is None
        assert setp(Ctx(0, 0, 1, 5)) == errno.EPERM
        assert setp(Ctx(0, 2, 0, 5)) == errno.EPERM
        assert getp(Ctx(0, 0, 1)) == errno.ESRCH
        assert getp(Ctx(0, 9, 1)) is None      # unknown which: the kernel says EINVAL
        assert opn(Ctx(0, child, 0)) is None
        assert opn(Ctx(0, 1, 0)) == errno.ESRCH
        assert opn(Ctx(0, 0x3FFF_FFF0, 0)) == errno.ESRCH  # no such process
        assert clk(Ctx(0, cpu_clock(child), PTR)) is None
        assert clk(Ctx(0, cpu_clock(1), PTR)) == errno.EINVAL
        assert sid(Ctx(0, child)) is None and sid(Ctx(0, 1)) == errno.ESRCH
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
