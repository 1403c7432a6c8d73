"""Shared pieces of the benchmark harness: policies, runners, cells, rows.

Every measured sample is a duration in seconds.  A row says how to show it
(per-operation time, or throughput for a byte count), and the ratio column is
always ``sandboxed seconds / unsandboxed seconds`` so that a ratio above 1
means "the sandbox is slower", for every row.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

# Generous upper bound for any single run; a hang becomes an error cell.
RUN_TIMEOUT = 300.0

# Cell columns, in display order.
UNSANDBOXED = "unsandboxed"
SANDLOCK = "sandlock"
BWRAP = "bwrap"
REF = "ref"

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
# cells and rows


@dataclass
class Cell:
    """One table cell: samples (seconds) or a reason why there are none.

    status: "ok", "na" (not available / not implemented), "error", or
    "absent" (this column does not apply to the row)."""
    status: str = "ok"
    samples: list[float] = field(default_factory=list)
    message: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        if self.status != "ok" or not self.samples:
            return None
        return statistics.median(self.samples)

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
        if self.message:
            d["message"] = self.message
        if self.extra:
            d.update(self.extra)
        return d


@dataclass
class Row:
    """One workload's result.

    kind "time": the shown value is median / per, in `unit` ("s", "ms", "us").
    kind "throughput": the shown value is nbytes / median in MB/s (10^6 B/s).
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

    def ratio(self, column: str) -> float | None:
        base = self.cell(UNSANDBOXED).median
        m = self.cell(column).median
        if base is None or m is None or base <= 0:
            return None
        return m / base

    def display_unit(self) -> str:
        if self.kind == "throughput":
            return "MB/s"
        return {"us": "µs", "ms": "ms", "s": "s"}[self.unit]

    def to_json(self) -> dict:
        return {
            "metric": self.metric,
            "kind": self.kind,
            "unit": self.display_unit(),
            "per": self.per,
            "nbytes": self.nbytes or None,
            "reps": self.reps,
            "values": {c: self.value(c) for c in self.cells},
            "ratios": {c: self.ratio(c) for c in self.cells if c != UNSANDBOXED},
            "cells": {c: cell.to_json() for c, cell in self.cells.items()},
            "notes": self.notes,
        }


# --------------------------------------------------------------------------
# measuring


SETTLE_SECONDS = 0.01


def measure(variants: dict[str, Callable[[], float]], reps: int, warmup: int = 1) -> dict[str, Cell]:
    """Run every variant `warmup` times untimed, then `reps` times, interleaved
    (one sample of each variant per round) so drift hits all of them alike.
    Between samples the machine settles for SETTLE_SECONDS, so work one
    variant leaves running in the background (sandlock preparing its next
    child, a reference's cleanup) does not land in the next one's sample.

    A variant returns one sample in seconds.  NotImplementedError gives
    "n/a (not implemented)", Unavailable gives "n/a (its message)", any other
    exception an error cell; the other variants carry on."""
    cells: dict[str, Cell] = {}
    live: dict[str, Callable[[], float]] = {}
    for name, fn in variants.items():
        try:
            for _ in range(warmup):
                fn()
        except Exception as e:  # noqa: BLE001 - any failure becomes a cell
            cells[name] = failure_cell(e)
            continue
        cells[name] = Cell()
        live[name] = fn
    for _ in range(reps):
        for name, fn in list(live.items()):
            time.sleep(SETTLE_SECONDS)
            try:
                cells[name].samples.append(fn())
            except Exception as e:  # noqa: BLE001
                cells[name] = failure_cell(e)
                del live[name]
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


# --------------------------------------------------------------------------
# runners: each returns (wall seconds, stdout bytes) or raises


def run_plain(cmd: Sequence[str], **kw) -> tuple[float, bytes]:
    """subprocess.run, capturing output like Sandbox.run does."""
    t0 = time.perf_counter()
    p = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=RUN_TIMEOUT, **kw)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RunFailed(f"exit {p.returncode}: {_tail(p.stderr)}")
    return dt, p.stdout


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
                 handlers: list | None = None) -> tuple[float, bytes]:
    """Time `Sandbox(**policy).run(cmd)` (or run_with_handlers) end to end:
    construction included, as a user would call it."""
    sandlock = _sandlock()
    t0 = time.perf_counter()
    sb = sandlock.Sandbox(**policy)
    if handlers is None:
        r = sb.run(list(cmd), timeout=RUN_TIMEOUT)
    else:
        r = sb.run_with_handlers(list(cmd), handlers, timeout=RUN_TIMEOUT)
    dt = time.perf_counter() - t0
    if not first_sandlock_call:
        first_sandlock_call.update(seconds=dt, workload=workload)
    if not r.success:
        detail = r.error or f"exit {r.exit_code}: {_tail(r.stderr)}"
        raise RunFailed(f"sandbox run failed: {detail}")
    return dt, r.stdout


def in_program_seconds(stdout: bytes) -> float:
    """Workload programs print their own elapsed seconds as the last line."""
    try:
        return float(stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise RunFailed(f"no elapsed time in output: {stdout[-200:]!r}") from e


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


def run_bwrap(cmd: Sequence[str]) -> tuple[float, bytes]:
    path, reason = bwrap_status()
    if not path:
        raise Unavailable("bwrap not installed")
    if reason:
        raise Unavailable(reason)
    return run_plain([path, *BWRAP_ARGS, *cmd])


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
