"""Start-up cost: launch_true (the headline number) and python_pass.

Wall time from the caller's side of one complete run, output captured in
every variant:
  unsandboxed  subprocess.run(cmd, capture_output=True)
  sandlock     Sandbox(fs_readable=...).run(cmd)       (construction included)
  bwrap        subprocess.run(["bwrap", --ro-bind / / --dev /dev --proc /proc
               --unshare-all --, *cmd])                (when bwrap is on PATH)
  ref          the reference SDK, same call as sandlock, in its own venv
"""
from __future__ import annotations

import sys

from ..core import (BWRAP, REF, SANDLOCK, UNSANDBOXED, Row, Settings, bwrap_status,
                    measure, readable, run_bwrap, run_plain, run_sandlock)
from ..ref import run_ref


def _startup_row(name: str, metric: str, cmd: list[str], reps: int, s: Settings) -> Row:
    policy = {"fs_readable": readable()}
    variants = {
        UNSANDBOXED: lambda: run_plain(cmd)[0],
        SANDLOCK: lambda: run_sandlock(cmd, policy, workload=name)[0],
    }
    if s.with_bwrap and bwrap_status()[0]:
        variants[BWRAP] = lambda: run_bwrap(cmd)[0]
    cells = measure(variants, reps, warmup=2)
    if s.with_ref:
        cells[REF] = run_ref(cmd, policy["fs_readable"], reps)
    return Row(name=name, metric=metric, unit="ms", reps=reps, cells=cells)


def launch_true(s: Settings) -> Row:
    """Start-up: wall time of one run of /bin/true (the headline number)."""
    return _startup_row("launch_true", "wall time of one run of /bin/true",
                        ["/bin/true"], s.reps(100, 10), s)


def python_pass(s: Settings) -> Row:
    """Start-up: wall time of one run of `python -c pass`."""
    return _startup_row("python_pass", "wall time of one run of python -c pass",
                        [sys.executable, "-c", "pass"], s.reps(30, 5), s)
