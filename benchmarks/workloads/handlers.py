"""Supervisor round trips through a user handler: notify_roundtrip, getpid_10000.

Both use ``Sandbox.run_with_handlers(cmd, [(syscall_name, handler)])``
(SPEC §1); on a sandlock without it the sandlock cells print
"n/a (no run_with_handlers yet)" and the unsandboxed cells are measured
anyway.  The program makes 10,000 getpid() calls (glibc does not cache
getpid, so each one is a real syscall), each routed to a trivial handler
that lets the call proceed.

  notify_roundtrip  in-program time per getpid(): the cost of one
                    notification round trip to the supervisor and back
  getpid_10000      wall time of the whole run (launch + 10,000 round trips)

With handlers, sandlock forks the supervisor from the caller for the one run
and waits for it there, so the caller's RUSAGE_CHILDREN holds the
supervisor and the program (which the supervisor reaps).  The program
prints its own CPU time ("cpu SECONDS") just before its elapsed time; the
supervisor's CPU time is then children CPU minus the program's, less the
same difference in the unsandboxed runs (the program's exit, after it
printed), see Row.supervisor_cpu.
"""
from __future__ import annotations

import sys

from ..core import (SUP_PROGRAM, SANDLOCK, UNSANDBOXED, Row, Settings, Unavailable, in_program,
                    measure, program_cpu, readable, run_plain, run_sandlock)

CALLS = 10_000
SYSCALL = "getpid"

PROGRAM = f"""
import os, time
getpid = os.getpid
t0 = time.perf_counter()
for _ in range({CALLS}):
    getpid()
t1 = time.perf_counter()
print("cpu", time.process_time())
print(t1 - t0)
"""


def make_trivial_handler():
    """The cheapest possible handler: a `sandlock.handler.Handler` whose
    decision is always "continue" (the syscall proceeds unchanged), so the
    measured cost is the notification round trip itself.

    This is the one place that depends on the handler API; everything else
    only calls ``sb.run_with_handlers(cmd, [(SYSCALL, handler)])``."""
    try:
        from sandlock.handler import Handler, NotifAction
    except ImportError as e:
        raise Unavailable(f"run_with_handlers exists but no handler type: {e}") from e
    decision = NotifAction.continue_()

    class Continue(Handler):
        def handle(self, ctx):
            return decision

    return Continue()


def _handlers() -> list:
    import sandlock
    if not hasattr(sandlock.Sandbox, "run_with_handlers"):
        raise Unavailable("no run_with_handlers yet")
    return [(SYSCALL, make_trivial_handler())]


def _run_handled(cmd: list[str], workload: str):
    return run_sandlock(cmd, {"fs_readable": readable()}, workload=workload,
                        handlers=_handlers())


def notify_roundtrip(s: Settings) -> Row:
    """µs per getpid() routed to a trivial run_with_handlers handler."""
    reps = s.reps(10, 2)
    cmd = [sys.executable, "-c", PROGRAM]
    cells = measure({
        UNSANDBOXED: lambda: in_program(run_plain(cmd)),
        SANDLOCK: lambda: in_program(_run_handled(cmd, "notify_roundtrip")),
    }, reps)
    return Row(name="notify_roundtrip",
               metric=f"in-program time per {SYSCALL}() routed to a trivial handler",
               unit="us", per=CALLS, reps=reps, cells=cells, sup=SUP_PROGRAM)


def getpid_10000(s: Settings) -> Row:
    """Wall time of a run making 10,000 handled getpid() calls."""
    reps = s.reps(10, 2)
    cmd = [sys.executable, "-c", PROGRAM]
    cells = measure({
        UNSANDBOXED: lambda: program_cpu(run_plain(cmd)),
        SANDLOCK: lambda: program_cpu(_run_handled(cmd, "getpid_10000")),
    }, reps)
    return Row(name="getpid_10000",
               metric=f"wall time of a run making {CALLS} handled {SYSCALL}() calls",
               unit="ms", reps=reps, cells=cells, sup=SUP_PROGRAM)
