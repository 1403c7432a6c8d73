"""Text table and JSON output."""
from __future__ import annotations

import json

from .core import BWRAP, REF, REF_BASE, SANDLOCK, UNSANDBOXED, Row, first_sandlock_call


def fmt_number(v: float) -> str:
    if v != v or v == float("inf"):
        return str(v)
    if v < 0:
        return "-" + fmt_number(-v)
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else (f"{r:.2f}x" if r < 10 else f"{r:.1f}x")


class _Footnotes:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, text: str) -> int:
        if text not in self.items:
            self.items.append(text)
        return self.items.index(text) + 1


def _cell_text(row: Row, column: str, notes: _Footnotes, with_ratio: bool) -> str:
    cell = row.cell(column)
    if cell.status == "absent":
        return "-"
    if cell.status == "na":
        return f"n/a ({cell.message})"
    if cell.status == "error":
        return f"error [{notes.add(f'{row.name} / {column}: {cell.message}')}]"
    text = f"{fmt_number(row.value(column))} {row.display_unit()}"
    if with_ratio:
        text += f" ({fmt_ratio(row.ratio(column))})"
    return text


def _cpu_text(seconds: float, wall: float | None) -> str:
    text = f"{fmt_number(seconds * 1e3)} ms"
    if wall:
        text += f" ({seconds / wall * 100:.0f}%)"
    return text


def _sup_text(row: Row, column: str, notes: _Footnotes) -> str:
    """Supervisor CPU per run, and its share of the run's wall time."""
    cell = row.cell(column)
    if cell.status != "ok":
        return "-"
    sup, why = row.supervisor_cpu(column)
    if sup is None:
        return f"n/a [{notes.add(f'{row.name} / {column} supervisor CPU: {why}')}]" if why else "-"
    text = _cpu_text(sup, cell.wall_per_run)
    tree = cell.extra.get("tree") if column == SANDLOCK else None
    if tree is not None and tree.ended:
        note = (f"{row.name}: {tree.ended} supervisor(s) ended during the workload; what they "
                f"and their sandboxes used since the last reading is counted")
        text += f" [{notes.add(note)}]"
    return text


def _render(lines: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]

    def render(cols: list[str]) -> str:
        return " | ".join(c.rjust(w) if i in right else c.ljust(w)
                          for i, (c, w) in enumerate(zip(cols, widths, strict=True))).rstrip()

    out = [render(lines[0]), "-+-".join("-" * w for w in widths)]
    return out + [render(line) for line in lines[1:]]


def table(rows: list[Row]) -> str:
    notes = _Footnotes()
    optional = [c for c in (BWRAP, REF) if any(r.cell(c).status != "absent" for r in rows)]
    header = ["workload", "n", "unsandboxed", "sandlock", "ratio", "sup. CPU"]
    for c in optional:
        header += ["bwrap (ratio)"] if c == BWRAP else ["ref sandlock (ratio)", "ref sup. CPU"]
    lines = [header]
    for r in rows:
        line = [r.name, str(r.reps),
                _cell_text(r, UNSANDBOXED, notes, False),
                _cell_text(r, SANDLOCK, notes, False),
                fmt_ratio(r.ratio(SANDLOCK)),
                _sup_text(r, SANDLOCK, notes)]
        for c in optional:
            line.append(_cell_text(r, c, notes, True))
            if c == REF:
                line.append(_sup_text(r, REF, notes))
        lines.append(line)
    out = _render(lines, {1, 2, 3, 4, 5})

    # CPU time of everything a run involves
    cpu_cols = [UNSANDBOXED, SANDLOCK] + optional
    titles = {UNSANDBOXED: "unsandboxed", SANDLOCK: "sandlock", BWRAP: "bwrap", REF: "ref sandlock"}
    cpu_lines = [["workload", *(titles[c] for c in cpu_cols)]]
    for r in rows:
        line = [r.name]
        for c in cpu_cols:
            total, caller = r.total_cpu(c)
            if r.cell(c).status != "ok":
                line.append("-")
            elif total is None:
                line.append("n/a")
            else:
                line.append(f"{fmt_number(total * 1e3)} ({fmt_number(caller * 1e3)}) ms")
        cpu_lines.append(line)

    out.append("")
    out.append("Wall: medians over n samples (after warm-up samples that are not counted); rows "
               "other than *_b2b and *_4threads pause 10 ms before every sample of every column.")
    out.append("ratio = sandboxed time / unsandboxed time: above 1 means the sandbox is slower "
               "(for MB/s rows: unsandboxed MB/s / sandboxed MB/s); ref's first_run ratio is "
               "against the same script under its own interpreter.")
    out.append("sup. CPU: CPU time of the sandbox's supervision per run (mean), outside the "
               "sandboxed program, and its share of the run's wall time. sandlock: its launch "
               "server and supervisors (from /proc); ref: the probe process's CPU time minus "
               "that of a plain subprocess.run in the same probe (its supervisor is a thread "
               "of the caller). See benchmarks/README.md.")
    out.append("What each row measures:")
    for r in rows:
        out.append(f"  {r.name}: {r.metric}")
    if first_sandlock_call:
        out.append(f"The first Sandbox.run() of this process ({first_sandlock_call['workload']}, a warm-up "
                   f"run) took {first_sandlock_call['seconds'] * 1e3:.1f} ms (one-time start-up).")
    for r in rows:
        base = r.cell(REF_BASE)
        if r.name != "first_run" and base.status == "ok" and base.median is not None:
            unit = r.display_unit()
            out.append(f"  note ({r.name}): plain subprocess.run inside the reference probe: "
                       f"{fmt_number(r.value(REF_BASE))} {unit} (the harness's: "
                       f"{fmt_number(r.value(UNSANDBOXED))} {unit})")
    for r in rows:
        out += [f"  note ({r.name}): {n}" for n in r.notes]
    for i, text in enumerate(notes.items, 1):
        out.append(f"[{i}] {text}")
    loads = [(r.name, r.others) for r in rows if r.others.get("others_pct") is not None]
    if loads:
        out.append("Other processes' CPU use while each row ran (share of all cores; hypervisor "
                   "steal): " + ", ".join(f"{n} {o['others_pct']:.0f}%/{o['steal_pct']:.0f}%"
                                          for n, o in loads))
    out.append("")
    out.append("CPU time per run (mean): every process the run involves (the caller, the children "
               "it waits for, and for sandlock its launch server's tree); in parentheses the "
               "caller's own part. n/a: the caller does other work in that row.")
    out += _render(cpu_lines, set(range(1, len(cpu_cols) + 1)))
    return "\n".join(out)


def to_json(machine: dict, settings: dict, rows: list[Row]) -> str:
    return json.dumps({
        "machine": machine,
        "settings": settings,
        "first_sandlock_call": dict(first_sandlock_call) or None,
        "workloads": {r.name: r.to_json() for r in rows},
    }, indent=2)
