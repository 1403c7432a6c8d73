"""Shared pieces of the benchmark harness: policies, runners, samples, cells, rows.

Every measured sample is a duration in seconds.  A row says how to show it
(per-operation time, or throughput for a byte count), and the ratio column is
always ``sandboxed seconds / baseline seconds`` so that a ratio above 1
means "the sandbox is slower", for every row.

Besides wall time, every sample carries the CPU time the harness process
used during it (``time.process_time``: all its threads) and the CPU time of
the child processes it waited for (``RUSAGE_CHILDREN``), both read just
outside the timed region; see ``measure`` for the launch server's tree.
"""
from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from . import procs

# Generous upper bound for any single run; a hang becomes an error cell.
RUN_TIMEOUT = 300.0

# Cell columns, in display order.
UNSANDBOXED = "unsandboxed"
SANDLOCK = "sandlock"
BWRAP = "bwrap"
REF = "ref"
# Measured in the same rounds but not shown as columns (see notes).
REF_BASE = "ref_base"     # plain subprocess.run inside the reference probe
EXTRA = "extra"           # a row-specific helper variant

NOT_IMPLEMENTED = "not implemented"


def readable(*extra: str) -> list[str]:
    """The benchmark policy's readable paths: system dirs, the interpreter's
    prefixes, and `extra`.  Paths missing on this machine (e.g. /lib64 on
    some aarch64 systems) are left out; duplicates are dropped."""
    out: list[str] = []
    for p in ["/usr", "/lib", "/lib64", "/bin", "/etc", sys.prefix, sys.base_prefix, *extra]:
        if os.path.exists(p) and p not in out:
            out.append(p)
    return out


class Unavailable(Exception):
    """This cell cannot be measured here; the message becomes "n/a (message)"."""


class RunFailed(Exception):
    """A run did not succeed (non-zero exit, sandbox error, bad output)."""


# --------------------------------------------------------------------------
# samples, cells and rows


@dataclass
class Sample:
    """One timed sample of one variant.

    value: what the row shows (seconds): a run's wall time, the time a
    program measured inside itself, or the wall time of a block of runs.
    wall: the caller-side wall time of everything that ran (the whole run,
    or the whole block). runs: sandbox launches in it.
    self_cpu / child_cpu: CPU seconds of the harness process / of the
    children it waited for, over the same span (None: not measured).
    program_cpu: CPU seconds the sandboxed program reported for itself."""
    value: float
    wall: float
    runs: int = 1
    self_cpu: float | None = None
    child_cpu: float | None = None
    program_cpu: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Cell:
    """One table cell: samples or a reason why there are none.

    status: "ok", "na" (not available / not implemented), "error", or
    "absent" (this column does not apply to the row).
    samples: the shown values (seconds); `runs` the recorded Sample objects."""
    status: str = "ok"
    samples: list[float] = field(default_factory=list)
    message: str = ""
    extra: dict = field(default_factory=dict)
    records: list[Sample] = field(default_factory=list)

    def add(self, s: Sample) -> None:
        self.samples.append(s.value)
        self.records.append(s)

    @property
    def median(self) -> float | None:
        if self.status != "ok" or not self.samples:
            return None
        return statistics.median(self.samples)

    @property
    def runs(self) -> int:
        return sum(r.runs for r in self.records)

    def _mean_per_run(self, attr: str) -> float | None:
        vals = [getattr(r, attr) for r in self.records]
        if self.status != "ok" or not vals or any(v is None for v in vals) or not self.runs:
            return None
        return sum(vals) / self.runs

    @property
    def wall_per_run(self) -> float | None:
        return self._mean_per_run("wall")

    @property
    def self_cpu_per_run(self) -> float | None:
        return self._mean_per_run("self_cpu")

    @property
    def child_cpu_per_run(self) -> float | None:
        return self._mean_per_run("child_cpu")

    @property
    def program_cpu_per_run(self) -> float | None:
        return self._mean_per_run("program_cpu")

    @classmethod
    def na(cls, message: str) -> "Cell":
        return cls(status="na", message=message)

    @classmethod
    def error(cls, message: str) -> "Cell":
        return cls(status="error", message=message)

    @classmethod
    def absent(cls) -> "Cell":
        return cls(status="absent")

    def to_json(self) -> dict:
        d: dict = {"status": self.status}
        if self.status == "ok":
            d["median_s"] = self.median
            d["samples_s"] = self.samples
            d["runs"] = self.runs
            d["wall_per_run_s"] = self.wall_per_run
            d["caller_cpu_per_run_s"] = self.self_cpu_per_run
            d["children_cpu_per_run_s"] = self.child_cpu_per_run
            if self.program_cpu_per_run is not None:
                d["program_cpu_per_run_s"] = self.program_cpu_per_run
        if self.message:
            d["message"] = self.message
        if self.extra:
            d.update({k: (v.to_json() if hasattr(v, "to_json") else v) for k, v in self.extra.items()})
        return d


# How a row's "supervisor CPU" cell is obtained for sandlock (see report.py).
SUP_TREE = "tree"        # launch server + supervisors, from /proc (procs.py)
SUP_PROGRAM = "program"  # supervisor forked from the caller: children CPU minus the program's own


@dataclass
class Row:
    """One workload's result.

    kind "time": the shown value is median / per, in `unit` ("s", "ms", "us").
    kind "throughput": the shown value is nbytes / median in MB/s (10^6 B/s).
    baselines: column -> the column its ratio is taken against (default
    UNSANDBOXED).  sup: SUP_TREE, SUP_PROGRAM, or "n/a: reason";
    ref_sup: "probe" (caller CPU in the probe minus REF_BASE's) or "n/a: reason".
    caller_cpu: False when the harness process does other work during the
    samples (a busy thread), so its CPU time means nothing for the row.
    """
    name: str
    metric: str
    kind: str = "time"
    unit: str = "ms"
    per: int = 1
    nbytes: int = 0
    reps: int = 0
    cells: dict[str, Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    baselines: dict[str, str] = field(default_factory=dict)
    sup: str = SUP_TREE
    ref_sup: str = "probe"
    caller_cpu: bool = True
    mode: str = "isolated"
    others: dict = field(default_factory=dict)  # the rest of the machine meanwhile (procs.OtherLoad)

    def cell(self, column: str) -> Cell:
        return self.cells.get(column) or Cell.absent()

    def value(self, column: str) -> float | None:
        m = self.cell(column).median
        if m is None:
            return None
        if self.kind == "throughput":
            return self.nbytes / m / 1e6 if m > 0 else float("inf")
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[self.unit]
        return m / self.per * scale

    def baseline(self, column: str) -> str:
        return self.baselines.get(column, UNSANDBOXED)

    def ratio(self, column: str) -> float | None:
        base = self.cell(self.baseline(column)).median
        m = self.cell(column).median
        if base is None or m is None or base <= 0:
            return None
        return m / base

    def display_unit(self) -> str:
        if self.kind == "throughput":
            return "MB/s"
        return {"us": "µs", "ms": "ms", "s": "s"}[self.unit]

    # -- CPU ---------------------------------------------------------------

    def supervisor_cpu(self, column: str) -> tuple[float | None, str]:
        """(CPU seconds per launch, "") or (None, reason) for the sandbox's
        supervision outside the sandboxed program; see benchmarks/README.md."""
        cell = self.cell(column)
        if cell.status != "ok":
            return None, ""
        if column == SANDLOCK:
            if self.sup == SUP_TREE:
                tree = cell.extra.get("tree")
                if tree is None:
                    return None, "launch server not found"
                return tree.supervisor_cpu / cell.runs, ""
            if self.sup == SUP_PROGRAM:
                base = self.cell(UNSANDBOXED)
                vals = (cell.child_cpu_per_run, cell.program_cpu_per_run,
                        base.child_cpu_per_run, base.program_cpu_per_run)
                if any(v is None for v in vals):
                    return None, "program did not report its CPU time"
                return (vals[0] - vals[1]) - (vals[2] - vals[3]), ""
            return None, self.sup.removeprefix("n/a: ")
        if column == REF:
            if self.ref_sup != "probe":
                return None, self.ref_sup.removeprefix("n/a: ")
            if not self.caller_cpu:
                return None, "busy thread in the caller"
            base = self.cell(REF_BASE)
            a, b = cell.self_cpu_per_run, base.self_cpu_per_run
            if a is None or b is None:
                return None, "no baseline in the probe"
            return a - b, ""
        return None, ""

    def total_cpu(self, column: str) -> tuple[float | None, float | None]:
        """(CPU seconds per launch of every process involved, of which the
        caller's own), or (None, None) when it cannot be known."""
        cell = self.cell(column)
        if cell.status != "ok" or not self.caller_cpu:
            return None, None
        caller, children = cell.self_cpu_per_run, cell.child_cpu_per_run
        if caller is None or children is None:
            return None, None
        total = caller + children
        if column == SANDLOCK and self.sup == SUP_TREE:
            tree = cell.extra.get("tree")
            if tree is None:
                return None, None
            total += tree.total_cpu / cell.runs
        return total, caller

    def to_json(self) -> dict:
        cpu = {}
        for c in self.cells:
            sup, why = self.supervisor_cpu(c)
            total, caller = self.total_cpu(c)
            cpu[c] = {"supervisor_cpu_per_run_s": sup, "supervisor_cpu_na": why or None,
                      "total_cpu_per_run_s": total, "caller_cpu_per_run_s": caller}
        return {
            "metric": self.metric,
            "mode": self.mode,
            "kind": self.kind,
            "unit": self.display_unit(),
            "per": self.per,
            "nbytes": self.nbytes or None,
            "reps": self.reps,
            "values": {c: self.value(c) for c in self.cells},
            "ratios": {c: self.ratio(c) for c in self.cells if c != UNSANDBOXED},
            "baselines": {c: self.baseline(c) for c in self.cells if c != UNSANDBOXED},
            "cpu": cpu,
            "cells": {c: cell.to_json() for c, cell in self.cells.items()},
            "notes": self.notes,
            "other_load": self.others,
        }


# --------------------------------------------------------------------------
# measuring


# The pause before every sample of every variant (and between blocks in the
# back-to-back rows), so that work one variant leaves in the background
# (sandlock's supervisor forking its next child, a probe's cleanup) does not
# land in the next sample.  Every column gets it; the back-to-back rows
# show what happens without it.
SETTLE_SECONDS = 0.01
# Before the first and after the last timed sample of a workload, so that
# the launch server's tree is idle when its CPU time is read (the warm-up
# runs' background work is then not counted, the last run's is).
TREE_SETTLE_SECONDS = 0.1

# pids the tree snapshot must skip (the reference probe); set by ref.py.
not_launch_server: set[int] = set()


def measure(variants: dict[str, Callable[[], Sample]], reps: int, warmup: int = 1) -> dict[str, Cell]:
    """Run every variant `warmup` times untimed, then `reps` rounds of one
    sample of each variant, interleaved so drift hits all of them alike.
    The order within a round rotates from round to round, so no variant is
    always the one that follows another.  Before every sample, whatever
    the variant, the machine settles for SETTLE_SECONDS.

    The launch server's tree is read (procs.snapshot) after the warm-up and
    after the last round; what it used in between is stored on the sandlock
    cell as extra["tree"] (only sandlock runs use it).

    A variant returns one Sample.  NotImplementedError gives
    "n/a (not implemented)", Unavailable gives "n/a (its message)", any other
    exception an error cell; the other variants carry on."""
    cells: dict[str, Cell] = {}
    live: dict[str, Callable[[], Sample]] = {}
    for name, fn in variants.items():
        try:
            for _ in range(warmup):
                fn()
        except Exception as e:  # noqa: BLE001 - any failure becomes a cell
            cells[name] = failure_cell(e)
            continue
        cells[name] = Cell()
        live[name] = fn
    time.sleep(TREE_SETTLE_SECONDS)
    before = procs.snapshot(not_launch_server)
    names = list(live)
    for i in range(reps):
        k = i % len(names) if names else 0
        for name in names[k:] + names[:k]:
            if name not in live:
                continue
            time.sleep(SETTLE_SECONDS)
            try:
                cells[name].add(live[name]())
            except Exception as e:  # noqa: BLE001
                cells[name] = failure_cell(e)
                del live[name]
    time.sleep(TREE_SETTLE_SECONDS)
    after = procs.snapshot(not_launch_server)
    if SANDLOCK in live:
        cells[SANDLOCK].extra["tree"] = procs.delta(before, after)
    return cells


def failure_cell(e: BaseException) -> Cell:
    if isinstance(e, NotImplementedError):
        return Cell.na(NOT_IMPLEMENTED)
    if isinstance(e, Unavailable):
        return Cell.na(str(e))
    msg = str(e).strip().splitlines()
    return Cell.error(f"{type(e).__name__}: {msg[-1] if msg else ''}"[:300])


def _tail(data: bytes, n: int = 300) -> str:
    text = data.decode(errors="replace").strip()
    return text.splitlines()[-1][:n] if text else ""


def cpu_now() -> tuple[float, float]:
    """(this process's CPU seconds, all threads; its waited-for children's)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time(), ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------
# runners: each runs one command and returns a Sample (value = wall time)


def run_plain(cmd: Sequence[str], **kw) -> Sample:
    """subprocess.run, capturing output like Sandbox.run does."""
    c0, ch0 = cpu_now()
    t0 = time.perf_counter()
    p = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=RUN_TIMEOUT, **kw)
    dt = time.perf_counter() - t0
    c1, ch1 = cpu_now()
    if p.returncode != 0:
        raise RunFailed(f"exit {p.returncode}: {_tail(p.stderr)}")
    return Sample(dt, dt, self_cpu=c1 - c0, child_cpu=ch1 - ch0, extra={"stdout": p.stdout})


# The first Sandbox.run() of the process carries one-time start-up work; it
# happens during a warm-up and is reported separately.
first_sandlock_call: dict = {}


def _sandlock():
    try:
        import sandlock
    except Exception as e:  # noqa: BLE001
        raise RunFailed(f"cannot import sandlock: {e}") from e
    return sandlock


def run_sandlock(cmd: Sequence[str], policy: dict, *, workload: str = "",
                 handlers: list | None = None) -> Sample:
    """Time `Sandbox(**policy).run(cmd)` (or run_with_handlers) end to end:
    construction included, as a user would call it."""
    sandlock = _sandlock()
    c0, ch0 = cpu_now()
    t0 = time.perf_counter()
    sb = sandlock.Sandbox(**policy)
    if handlers is None:
        r = sb.run(list(cmd), timeout=RUN_TIMEOUT)
    else:
        r = sb.run_with_handlers(list(cmd), handlers, timeout=RUN_TIMEOUT)
    dt = time.perf_counter() - t0
    c1, ch1 = cpu_now()
    if not first_sandlock_call:
        first_sandlock_call.update(seconds=dt, workload=workload)
    if not r.success:
        detail = r.error or f"exit {r.exit_code}: {_tail(r.stderr)}"
        raise RunFailed(f"sandbox run failed: {detail}")
    return Sample(dt, dt, self_cpu=c1 - c0, child_cpu=ch1 - ch0, extra={"stdout": r.stdout})


def stdout_of(s: Sample) -> bytes:
    return s.extra.get("stdout", b"")


def program_cpu(s: Sample) -> Sample:
    """Record the CPU time the program printed for itself on a line
    "cpu SECONDS" (the value shown stays the same)."""
    for line in stdout_of(s).decode(errors="replace").splitlines():
        if line.startswith("cpu "):
            s.program_cpu = float(line.split()[1])
    return s


def in_program(s: Sample) -> Sample:
    """The same sample, showing the time the program printed as its last
    line (the caller-side wall time stays in `wall`)."""
    lines = stdout_of(s).decode(errors="replace").strip().splitlines()
    try:
        s.value = float(lines[-1])
    except (ValueError, IndexError) as e:
        raise RunFailed(f"no elapsed time in output: {stdout_of(s)[-200:]!r}") from e
    return program_cpu(s)


# --------------------------------------------------------------------------
# blocks: many runs per sample (back to back, or from several threads)


def block(one: Callable[[], Sample], count: int, threads: int = 1) -> Sample:
    """`count` runs of `one` with no pause between them, spread over
    `threads` threads that all start together.  The sample's value and wall
    are the block's wall time; CPU is read around the whole block (per-run
    readings from several threads would overlap).  extra["latency"] holds
    the mean wall time of one run."""
    if count % threads:
        raise ValueError("count must be a multiple of threads")
    lat: list[float] = []
    errors: list[BaseException] = []
    if threads == 1:
        c0, ch0 = cpu_now()
        t0 = time.perf_counter()
        for _ in range(count):
            lat.append(one().wall)
        dt = time.perf_counter() - t0
        c1, ch1 = cpu_now()
    else:
        import threading
        start = threading.Barrier(threads + 1)

        def worker():
            try:
                start.wait()
                for _ in range(count // threads):
                    lat.append(one().wall)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
        for t in pool:
            t.start()
        c0, ch0 = cpu_now()
        start.wait()
        t0 = time.perf_counter()
        for t in pool:
            t.join()
        dt = time.perf_counter() - t0
        c1, ch1 = cpu_now()
        if errors:
            raise errors[0]
    return Sample(dt, dt, runs=count, self_cpu=c1 - c0, child_cpu=ch1 - ch0,
                  extra={"latency": sum(lat) / len(lat)})


# --------------------------------------------------------------------------
# bubblewrap (optional column)

BWRAP_ARGS = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all", "--"]
_bwrap_state: dict = {}


def bwrap_status() -> tuple[str | None, str]:
    """(path, "") when bwrap is on PATH and works, (path, reason) when it is
    on PATH but fails here, (None, "") when it is not installed."""
    if not _bwrap_state:
        path = shutil.which("bwrap")
        reason = ""
        if path:
            try:
                p = subprocess.run([path, *BWRAP_ARGS, "/bin/true"], capture_output=True, timeout=30)
                if p.returncode != 0:
                    reason = f"bwrap failed: {_tail(p.stderr, 80)}"
            except Exception as e:  # noqa: BLE001
                reason = f"bwrap failed: {e}"
        _bwrap_state.update(path=path, reason=reason)
    return _bwrap_state["path"], _bwrap_state["reason"]


def bwrap_version() -> str | None:
    path, _ = bwrap_status()
    if not path:
        return None
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


def bwrap_argv(cmd: Sequence[str]) -> list[str]:
    path, reason = bwrap_status()
    if not path:
        raise Unavailable("bwrap not installed")
    if reason:
        raise Unavailable(reason)
    return [path, *BWRAP_ARGS, *cmd]


def run_bwrap(cmd: Sequence[str]) -> Sample:
    return run_plain(bwrap_argv(cmd))


def adopting(fn: Callable[[], Sample]) -> Callable[[], Sample]:
    """Wrap a variant whose processes outlive their parent (bwrap with a PID
    namespace exits as soon as its init reports the command's status; the
    init and the command are then re-parented): the harness is their child
    subreaper during the sample, and after it (outside the timed span)
    waits for them and adds their CPU time to the sample's children CPU."""
    def run() -> Sample:
        known = set(procs.children(os.getpid()))
        procs.set_subreaper(True)
        try:
            sample = fn()
        finally:
            procs.set_subreaper(False)
        sample.child_cpu = (sample.child_cpu or 0.0) + procs.reap_adopted(known)
        return sample
    return run


# --------------------------------------------------------------------------
# settings passed to every workload


@dataclass
class Settings:
    quick: bool = False
    repeat: int | None = None     # --repeat: overrides every workload's default
    with_bwrap: bool = True
    with_ref: bool = True

    def reps(self, normal: int, quick: int) -> int:
        if self.repeat is not None:
            return self.repeat
        return quick if self.quick else normal
