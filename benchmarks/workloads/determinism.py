"""Deterministic runs: what random_seed + time_start and deterministic_dirs cost.

python_pass_deterministic  `python -c pass` with random_seed and time_start
    (every exec's brk(NULL) hides the vDSO's functions, so the clock and
    random reads of start-up become supervisor round trips; opens are
    routed to catch /dev/urandom). The reference measured 3.3-4x for its
    version of this row (README of issue 10); its SDK column is not run
    here (its probe takes no determinism fields).
compileall_sorted_dirs  compileall over copied stdlib files with
    deterministic_dirs (every getdents64 answered by the supervisor).
"""
from __future__ import annotations

import shutil
import sys
import tempfile

from ..core import SANDLOCK, UNSANDBOXED, Row, Settings, measure, readable, run_plain, run_sandlock
from .build import PACKAGES, QUICK_PACKAGES, sources

SEEDED = {"random_seed": 1, "time_start": "2000-01-01T00:00:00Z"}


def python_pass_deterministic(s: Settings) -> Row:
    """`python -c pass` under random_seed + time_start, isolated."""
    cmd = [sys.executable, "-c", "pass"]
    plain = {"fs_readable": readable()}
    seeded = {**plain, **SEEDED}
    reps = s.reps(30, 5)
    cells = measure({UNSANDBOXED: lambda: run_plain(cmd),
                     SANDLOCK: lambda: run_sandlock(cmd, seeded, workload="python_pass_deterministic")},
                    reps, warmup=2)
    row = Row(name="python_pass_deterministic",
              metric="wall time of one run of python -c pass with random_seed + time_start "
                     "(compare the python_pass row)",
              unit="ms", reps=reps, cells=cells)
    row.notes.append("reference (its own row, another machine): 3.3-4x the unsandboxed run")
    return row


def compileall_sorted_dirs(s: Settings) -> Row:
    """compileall -f over copied stdlib files with deterministic_dirs."""
    reps = s.reps(5, 1)
    packages = QUICK_PACKAGES if s.quick else PACKAGES
    root = tempfile.mkdtemp(prefix="sandlock-bench-")
    counts: list[int] = []

    def one(policy: dict | None):
        work, cmd = sources(root, packages, counts)
        try:
            if policy is None:
                return run_plain(cmd)
            return run_sandlock(cmd, {**policy, "fs_writable": [work]}, workload="compileall_sorted_dirs")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    plain = {"fs_readable": readable()}
    try:
        cells = measure({UNSANDBOXED: lambda: one(None),
                         SANDLOCK: lambda: one({**plain, "deterministic_dirs": True})}, reps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    files = max(counts) if counts else 0
    return Row(name="compileall_sorted_dirs",
               metric=f"wall time of compileall -f over {files} stdlib files with deterministic_dirs "
                      "(compare the compileall row)", unit="s", reps=reps, cells=cells)
