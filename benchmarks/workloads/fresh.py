"""Fresh processes: cli_true and first_run.

cli_true   `sandlock run -- /bin/true` through the installed command (the
           console script next to this interpreter, else on PATH), timed
           from the outside until it has exited and its output is closed.
           unsandboxed: /bin/true itself; bwrap: the bwrap command line
           running /bin/true.  The reference SDK on PyPI ships no `sandlock`
           command, so that cell is n/a.  Also timed in the same rounds,
           as a note: `python -c "import sandlock.cli"`, the interpreter
           start-up and import the command pays before it does anything.

first_run  a new interpreter that imports sandlock and makes one
           Sandbox.run(["/bin/true"]), against the same interpreter doing
           the same import and one subprocess.run(["/bin/true"]).  Both are
           whole processes timed from the outside (start to exit, output
           closed: sandlock's launch server, which the process started,
           holds the output pipes until it has shut down), so the
           difference is what the first run of a fresh process costs over
           a plain subprocess.run, start-up and teardown of the launch
           server included.  bwrap: the same script running bwrap's command
           line with subprocess.run.  ref: the same two scripts under the
           reference venv's interpreter, importing the reference SDK; its
           ratio is taken against its own baseline script (REF_BASE).
"""
from __future__ import annotations

import os
import shutil
import sys

from .. import procs, ref
from ..core import (BWRAP, EXTRA, REF, REF_BASE, SANDLOCK, UNSANDBOXED, Row, Sample, Settings,
                    Unavailable, adopting, bwrap_argv, bwrap_status, measure, not_launch_server, readable,
                    run_bwrap, run_plain)

TRUE = ["/bin/true"]


def sandlock_command() -> str:
    """The installed `sandlock` console script of this interpreter's environment."""
    beside = os.path.join(os.path.dirname(sys.executable), "sandlock")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("sandlock")
    if not found:
        raise Unavailable("no installed sandlock command")
    return found


def cli_true(s: Settings) -> Row:
    """`sandlock run -- /bin/true` through the installed command."""
    reps = s.reps(20, 3)
    variants = {UNSANDBOXED: lambda: run_plain(TRUE)}
    try:
        cli = [sandlock_command(), "run", "--", *TRUE]
        variants[SANDLOCK] = lambda: run_plain(cli)
    except Unavailable as e:
        msg = str(e)

        def missing():
            raise Unavailable(msg)
        variants[SANDLOCK] = missing
    if s.with_bwrap and bwrap_status()[0]:
        variants[BWRAP] = adopting(lambda: run_bwrap(TRUE))
    variants[EXTRA] = lambda: run_plain([sys.executable, "-c", "import sandlock.cli"])
    cells = measure(variants, reps, warmup=2)
    if s.with_ref and ref.ref_python:
        from ..core import Cell
        cells[REF] = Cell.na("no CLI on PyPI")
    row = Row(name="cli_true", metric="wall time of `sandlock run -- /bin/true` (installed command)",
              unit="ms", reps=reps, cells=cells,
              sup="n/a: in the command's process tree")
    imp = cells.get(EXTRA)
    if imp is not None and imp.median is not None:
        row.notes.append(f"`python -c 'import sandlock.cli'` alone (interpreter start-up and "
                         f"import, no run): {imp.median * 1e3:.1f} ms")
    return row


# The scripts of first_run.  Each prints the seconds its import and its run
# took inside the process; the row itself shows the whole process's time.
_PRELUDE = """\
import subprocess, sys, time
t0 = time.perf_counter()
import sandlock
t1 = time.perf_counter()
"""
FIRST_RUN = _PRELUDE + """\
r = sandlock.Sandbox(fs_readable={readable!r}).run({cmd!r})
t2 = time.perf_counter()
if not r.success:
    sys.exit("sandbox run failed")
print(t1 - t0, t2 - t1)
"""
PLAIN_RUN = _PRELUDE + """\
p = subprocess.run({cmd!r}, stdin=subprocess.DEVNULL, capture_output=True)
t2 = time.perf_counter()
if p.returncode:
    sys.exit("exit %d" % p.returncode)
print(t1 - t0, t2 - t1)
"""


def _own_children() -> set[int]:
    """The harness's long-lived children (its launch server, the reference
    probe): never to be taken for an adopted orphan."""
    return set(procs.children(os.getpid())) | set(not_launch_server)


def _fresh(python: str, script: str, known: set[int]) -> Sample:
    """Run `script` in a new interpreter; adopt and reap whatever it leaves
    (its launch server) so that its CPU time is counted too."""
    sample = run_plain([python, "-I", "-c", script])
    adopted = procs.reap_adopted(known | set(not_launch_server))
    sample.child_cpu = (sample.child_cpu or 0.0) + adopted
    try:
        imp, call = (float(x) for x in sample.extra["stdout"].split())
        sample.extra.update(import_s=imp, call_s=call)
    except ValueError:
        pass
    return sample


def first_run(s: Settings) -> Row:
    """A fresh interpreter's first Sandbox.run() vs its first subprocess.run()."""
    reps = s.reps(10, 2)
    pol = readable()
    if s.with_ref and ref.ref_python:
        try:
            ref.probe()  # started now, so it is known below, not taken for an orphan
        except Exception:  # noqa: BLE001 - the launch rows report it
            pass
    known = _own_children()
    variants = {
        UNSANDBOXED: lambda: _fresh(sys.executable, PLAIN_RUN.format(cmd=TRUE), known),
        SANDLOCK: lambda: _fresh(sys.executable, FIRST_RUN.format(readable=pol, cmd=TRUE), known),
    }
    if s.with_bwrap and bwrap_status()[0]:
        variants[BWRAP] = lambda: _fresh(sys.executable, PLAIN_RUN.format(cmd=bwrap_argv(TRUE)), known)
    if s.with_ref and ref.ref_python:
        rp = ref.ref_python
        variants[REF] = lambda: _fresh(rp, FIRST_RUN.format(readable=pol, cmd=TRUE), known)
        variants[REF_BASE] = lambda: _fresh(rp, PLAIN_RUN.format(cmd=TRUE), known)
    adopted_here = procs.set_subreaper(True)
    try:
        cells = measure(variants, reps, warmup=1)
    finally:
        procs.set_subreaper(False)
    row = Row(name="first_run",
              metric="a fresh interpreter: import sandlock + one run of /bin/true, whole process "
                     "(baseline: same with subprocess.run)",
              unit="ms", reps=reps, cells=cells, baselines={REF: REF_BASE},
              sup="n/a: in the fresh process's tree", ref_sup="n/a: in the fresh process")
    if not adopted_here:
        row.caller_cpu = False
    diffs = []
    for col, base in ((SANDLOCK, UNSANDBOXED), (BWRAP, UNSANDBOXED), (REF, REF_BASE)):
        a, b = cells.get(col), cells.get(base)
        if a is not None and b is not None and a.median is not None and b.median is not None:
            diffs.append(f"{col} {(a.median - b.median) * 1e3:.1f} ms")
    if diffs:
        row.notes.append("whole-process time minus its baseline (the first run's cost): " + ", ".join(diffs))
    inside = []
    for col in (UNSANDBOXED, SANDLOCK, REF_BASE, REF):
        cell = cells.get(col)
        if cell is None or cell.status != "ok":
            continue
        calls = sorted(r.extra["call_s"] for r in cell.records if "call_s" in r.extra)
        imps = sorted(r.extra["import_s"] for r in cell.records if "import_s" in r.extra)
        if calls:
            inside.append(f"{col}: import {imps[len(imps) // 2] * 1e3:.1f} ms, "
                          f"call {calls[len(calls) // 2] * 1e3:.1f} ms")
    if inside:
        row.notes.append("inside the process (medians): " + "; ".join(inside))
    return row
