"""The optional reference-SDK column.

The reference implementation's Python SDK (import name also ``sandlock``)
lives in a separate virtualenv; it is only ever run in a subprocess through
``_ref_probe.py``, never imported here.  When that venv is missing the column
is simply left out.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Sequence

from .core import Cell

DEFAULT_REF_PYTHON = "/tmp/refvenv/bin/python"
PROBE = Path(__file__).with_name("_ref_probe.py")

# Set by the CLI: path of the reference venv's interpreter, or None (disabled).
ref_python: str | None = None
ref_version: str | None = None


def find_ref_python(explicit: str | None) -> str | None:
    """The interpreter to use for the reference column, or None."""
    cand = explicit or os.environ.get("SANDLOCK_REF_PYTHON") or DEFAULT_REF_PYTHON
    return cand if os.path.isfile(cand) and os.access(cand, os.X_OK) else None


def run_ref(cmd: Sequence[str], readable: list[str], repeat: int, warmup: int = 2) -> Cell:
    """Time the reference SDK running `cmd`; an absent cell when disabled."""
    global ref_version
    if ref_python is None:
        return Cell.absent()
    req = {"cmd": list(cmd), "readable": readable, "repeat": repeat, "warmup": warmup}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    try:
        p = subprocess.run([ref_python, "-I", str(PROBE)], input=json.dumps(req).encode(),
                           capture_output=True, timeout=600, env=env, cwd="/")
        out = json.loads(p.stdout.decode().strip().splitlines()[-1])
    except Exception as e:  # noqa: BLE001
        tail = ""
        if isinstance(e, (ValueError, IndexError)):
            tail = p.stderr.decode(errors="replace").strip()[-200:]
        return Cell.error(f"reference probe failed: {e} {tail}".strip())
    if "error" in out:
        return Cell.error(f"reference SDK: {out['error']}")
    ref_version = out.get("version") or ref_version
    return Cell(samples=out["samples"], extra={"first_call_s": out.get("first_s")})


def probe_version() -> str | None:
    """The reference SDK's installed version, asked of its own interpreter."""
    if ref_python is None:
        return None
    code = ("import importlib.metadata as m\n"
            "try:\n    print(m.version('sandlock'))\n"
            "except Exception:\n    print('unknown version')")
    try:
        p = subprocess.run([ref_python, "-I", "-c", code], capture_output=True, text=True,
                           timeout=30, cwd="/")
        return p.stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None
