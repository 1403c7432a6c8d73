"""``python -m benchmarks``: argument parsing and the run."""
from __future__ import annotations

import argparse
import sys
import time

from . import ref
from .core import Row, Settings, bwrap_status, bwrap_version, failure_cell, SANDLOCK, UNSANDBOXED
from .machine import describe, load_average
from .procs import OtherLoad
from .report import table, to_json
from .workloads import WORKLOADS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run each workload unsandboxed and under sandlock; print medians. "
                    "Speed is only reported, never asserted.")
    p.add_argument("--repeat", "-n", type=int, metavar="N",
                   help="timed runs per variant for every workload (default: per workload)")
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: few repetitions, smaller inputs (seconds, not minutes)")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only this workload (repeatable, or comma-separated)")
    p.add_argument("--json", metavar="FILE", help="also write the raw numbers to FILE as JSON")
    p.add_argument("--no-bwrap", action="store_true", help="leave out the bubblewrap column")
    p.add_argument("--no-ref", action="store_true", help="leave out the reference-SDK column")
    p.add_argument("--ref-python", metavar="PATH",
                   help="interpreter of the reference SDK's venv (default: $SANDLOCK_REF_PYTHON "
                        f"or {ref.DEFAULT_REF_PYTHON}; the column is skipped if it does not exist)")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = p.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        p.error("--repeat must be at least 1")
    names = []
    for item in args.only or []:
        names += [n.strip() for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    args.names = [n for n in WORKLOADS if n in names] if names else list(WORKLOADS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, fn in WORKLOADS.items():
            doc = (fn.__doc__ or "").strip().splitlines()[0]
            print(f"{name:22} {doc}")
        return 0

    settings = Settings(quick=args.quick, repeat=args.repeat,
                        with_bwrap=not args.no_bwrap, with_ref=not args.no_ref)
    ref.ref_python = ref.find_ref_python(args.ref_python) if settings.with_ref else None

    machine = describe()
    if settings.with_bwrap:
        path, reason = bwrap_status()
        machine["bwrap"] = (bwrap_version() or path) + (f" [{reason}]" if reason else "") if path \
            else "not on PATH (column skipped)"
    if settings.with_ref:
        machine["reference_sdk"] = (f"sandlock {ref.probe_version() or '?'} ({ref.ref_python})"
                                    if ref.ref_python else "not found (column skipped; "
                                    "sh benchmarks/make_ref_venv.sh creates it)")
    print("sandlock benchmarks" + (" (--quick)" if args.quick else ""))
    for key, value in machine.items():
        print(f"  {key + ':':16}{value}")
    print(flush=True)

    rows: list[Row] = []
    started = time.perf_counter()
    try:
        rows = _run_all(args, settings)
    finally:
        ref.close()
    elapsed = time.perf_counter() - started

    print(table(rows))
    machine["load_average_after"] = load_average()
    print(f"\nTotal benchmark time: {elapsed:.1f}s (load average at the end: "
          f"{machine['load_average_after']})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            f.write(to_json(machine, {"quick": args.quick, "repeat": args.repeat,
                                      "workloads": args.names, "elapsed_s": elapsed}, rows))
            f.write("\n")
        print(f"Raw numbers written to {args.json}")
    return 0


def _run_all(args: argparse.Namespace, settings: Settings) -> list[Row]:
    rows: list[Row] = []
    for name in args.names:
        print(f"running {name} ...", end=" ", file=sys.stderr, flush=True)
        others = OtherLoad()
        try:
            row = WORKLOADS[name](settings)
        except Exception as e:  # noqa: BLE001 - one broken workload must not stop the rest
            cell = failure_cell(e)
            row = Row(name=name, metric="(workload failed before measuring)",
                      cells={UNSANDBOXED: cell, SANDLOCK: cell})
        row.others = others.result()
        rows.append(row)
        print(f"{row.others['wall_s']:.1f}s (other processes: {row.others['others_pct']:.0f}% "
              f"of the CPUs, steal {row.others['steal_pct']:.0f}%)", file=sys.stderr, flush=True)
    return rows
