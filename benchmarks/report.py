"""Text table and JSON output."""
from __future__ import annotations

import json

from .core import BWRAP, REF, SANDLOCK, UNSANDBOXED, Row, first_sandlock_call


def fmt_number(v: float) -> str:
    if v != v or v == float("inf"):
        return str(v)
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


def table(rows: list[Row]) -> str:
    notes = _Footnotes()
    optional = [c for c in (BWRAP, REF) if any(r.cell(c).status != "absent" for r in rows)]
    header = ["workload", "n", "unsandboxed", "sandlock", "ratio"] + [
        {BWRAP: "bwrap (ratio)", REF: "ref sandlock (ratio)"}[c] for c in optional]
    lines = [header]
    for r in rows:
        line = [r.name, str(r.reps),
                _cell_text(r, UNSANDBOXED, notes, False),
                _cell_text(r, SANDLOCK, notes, False),
                fmt_ratio(r.ratio(SANDLOCK))]
        line += [_cell_text(r, c, notes, True) for c in optional]
        lines.append(line)
    widths = [max(len(l[i]) for l in lines) for i in range(len(header))]
    right = {1, 2, 3, 4}

    def render(cols: list[str]) -> str:
        return " | ".join(c.rjust(w) if i in right else c.ljust(w)
                          for i, (c, w) in enumerate(zip(cols, widths))).rstrip()

    out = [render(lines[0]), "-+-".join("-" * w for w in widths)]
    out += [render(l) for l in lines[1:]]
    out.append("")
    out.append("Medians over n runs (after warm-up runs that are not counted).")
    out.append("ratio = sandboxed time / unsandboxed time: above 1 means the sandbox is slower "
               "(for MB/s rows: unsandboxed MB/s / sandboxed MB/s).")
    out.append("What each row measures:")
    for r in rows:
        out.append(f"  {r.name}: {r.metric}")
    if first_sandlock_call:
        out.append(f"The first Sandbox.run() of this process ({first_sandlock_call['workload']}, a warm-up "
                   f"run) took {first_sandlock_call['seconds'] * 1e3:.1f} ms (one-time start-up).")
    for r in rows:
        ref = r.cell(REF)
        if ref.status == "ok" and ref.extra.get("first_call_s"):
            out.append(f"The reference SDK's first run ({r.name}, warm-up) took "
                       f"{ref.extra['first_call_s'] * 1e3:.1f} ms.")
            break
    for r in rows:
        out += [f"  note ({r.name}): {n}" for n in r.notes]
    for i, text in enumerate(notes.items, 1):
        out.append(f"[{i}] {text}")
    return "\n".join(out)


def to_json(machine: dict, settings: dict, rows: list[Row]) -> str:
    return json.dumps({
        "machine": machine,
        "settings": settings,
        "first_sandlock_call": dict(first_sandlock_call) or None,
        "workloads": {r.name: r.to_json() for r in rows},
    }, indent=2)
