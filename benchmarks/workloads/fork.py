"""fork_wait_300: 300 sequential fork() + waitpid() in one Python program.

Timed inside the program (interpreter start-up excluded).  Sandboxed with
max_processes=10, so a supervisor that counts processes sees every fork.
"""
from __future__ import annotations

import sys

from ..core import (SANDLOCK, UNSANDBOXED, Row, Settings, in_program, measure, readable,
                    run_plain, run_sandlock)

N = 300

PROGRAM = f"""
import os, time
t0 = time.perf_counter()
for _ in range({N}):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print(time.perf_counter() - t0)
"""


def fork_wait_300(s: Settings) -> Row:
    """300 sequential fork()+waitpid(), timed in-program; max_processes=10."""
    reps = s.reps(10, 2)
    cmd = [sys.executable, "-c", PROGRAM]
    policy = {"fs_readable": readable(), "max_processes": 10}
    cells = measure({
        UNSANDBOXED: lambda: in_program(run_plain(cmd)),
        SANDLOCK: lambda: in_program(run_sandlock(cmd, policy, workload="fork_wait_300")),
    }, reps)
    return Row(name="fork_wait_300", metric=f"in-program time of {N} fork+waitpid (max_processes=10)",
               unit="ms", reps=reps, cells=cells)


class _BusyThread:
    """One CPU-bound Python thread in the calling program while a workload
    runs: it holds the caller's GIL most of the time. A supervisor living in
    the caller's interpreter would be slowed by it; sandlock's is not."""

    def __enter__(self):
        import threading
        self.stop = False

        def spin():
            x = 0
            while not self.stop:
                x += 1

        self.thread = threading.Thread(target=spin, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()


def fork_wait_300_busy(s: Settings) -> Row:
    """fork_wait_300 while the calling program keeps one CPU-bound Python
    thread busy (both columns run under the same busy thread)."""
    reps = s.reps(10, 2)
    cmd = [sys.executable, "-c", PROGRAM]
    policy = {"fs_readable": readable(), "max_processes": 10}
    with _BusyThread():
        cells = measure({
            UNSANDBOXED: lambda: in_program(run_plain(cmd)),
            SANDLOCK: lambda: in_program(run_sandlock(cmd, policy, workload="fork_wait_300_busy")),
        }, reps)
    return Row(name="fork_wait_300_busy",
               metric=f"{N} fork+waitpid with one busy Python thread in the caller",
               unit="ms", reps=reps, cells=cells, caller_cpu=False)
