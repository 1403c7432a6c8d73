"""Start-up cost: launch_true (the headline number), its back-to-back and
4-thread forms, and python_pass.

Wall time from the caller's side of one complete run, output captured in
every variant:
  unsandboxed  subprocess.run(cmd, capture_output=True)
  sandlock     Sandbox(fs_readable=...).run(cmd)       (construction included)
  bwrap        subprocess.run(["bwrap", --ro-bind / / --dev /dev --proc /proc
               --unshare-all --, *cmd])                (when bwrap is on PATH)
  ref          the reference SDK, same call as sandlock, in its own venv
               (REF_BASE: plain subprocess.run in that same probe process)

isolated      one run per sample, after the pause every sample gets
back-to-back  a sample is a block of N runs with no pause between them (an
              agent calling tools in a loop); shown per run
4 threads     a block of N runs from 4 threads started together; shown per
              run (block wall time / N)
"""
from __future__ import annotations

import sys

from .. import ref
from ..core import (BWRAP, SANDLOCK, UNSANDBOXED, Row, Settings, adopting, block, bwrap_status,
                    measure, readable, run_bwrap, run_plain, run_sandlock)

TRUE = ["/bin/true"]


def _variants(name: str, cmd: list[str], s: Settings, count: int = 1, threads: int = 1) -> dict:
    policy = {"fs_readable": readable()}

    def many(one):
        return one if count == 1 else (lambda: block(one, count, threads))

    variants = {
        UNSANDBOXED: many(lambda: run_plain(cmd)),
        SANDLOCK: many(lambda: run_sandlock(cmd, policy, workload=name)),
    }
    if s.with_bwrap and bwrap_status()[0]:
        variants[BWRAP] = adopting(many(lambda: run_bwrap(cmd)))
    if s.with_ref:
        variants.update(ref.variants(cmd, policy["fs_readable"], count, threads))
    return variants


def _row(name: str, metric: str, cmd: list[str], reps: int, s: Settings,
         count: int = 1, threads: int = 1, mode: str = "isolated") -> Row:
    # Two untimed warm-up samples per variant, every variant alike.
    cells = measure(_variants(name, cmd, s, count, threads), reps, warmup=2 if count == 1 else 1)
    row = Row(name=name, metric=metric, unit="ms", per=count, reps=reps, cells=cells, mode=mode)
    if count > 1:
        lat = {c: sum(r.extra["latency"] for r in cell.records) / len(cell.records)
               for c, cell in cells.items() if cell.status == "ok" and cell.records}
        if threads > 1 and lat:
            row.notes.append("mean wall time of one run inside the block (what each thread waits): "
                             + ", ".join(f"{c} {v * 1e3:.2f} ms" for c, v in lat.items()))
    return row


def launch_true(s: Settings) -> Row:
    """Start-up: wall time of one run of /bin/true, isolated (the headline number)."""
    return _row("launch_true", "wall time of one run of /bin/true (pause before each sample)",
                TRUE, s.reps(100, 10), s)


def launch_true_b2b(s: Settings) -> Row:
    """/bin/true 200 times back to back (no pause), per run."""
    count = 50 if s.quick else 200
    return _row("launch_true_b2b", f"{count} runs of /bin/true back to back, wall time per run",
                TRUE, s.reps(5, 1), s, count=count, mode="back-to-back")


def launch_true_4threads(s: Settings) -> Row:
    """/bin/true 200 times from 4 threads at once, block wall time per run."""
    count = 40 if s.quick else 200
    return _row("launch_true_4threads",
                f"{count} runs of /bin/true from 4 threads at once, block wall time / {count}",
                TRUE, s.reps(5, 1), s, count=count, threads=4, mode="4 threads")


def python_pass(s: Settings) -> Row:
    """Start-up: wall time of one run of `python -c pass`, isolated."""
    return _row("python_pass", "wall time of one run of python -c pass (pause before each sample)",
                [sys.executable, "-c", "pass"], s.reps(30, 5), s)
