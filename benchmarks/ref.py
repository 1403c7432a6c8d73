"""The optional reference-SDK column.

The reference implementation's Python SDK (import name also ``sandlock``,
PyPI ``sandlock==0.9.0``) lives in a separate virtualenv; it is only ever
run in a subprocess, never imported here.  The harness does not create that
venv: it uses ``--ref-python PATH``, else ``$SANDLOCK_REF_PYTHON``, else
/tmp/refvenv/bin/python, and leaves the column out when none exists.
``benchmarks/make_ref_venv.sh`` creates the default one.

One probe process (``_ref_probe.py``) is started per harness run and kept:
each sample is one request to it, so the reference column takes part in the
same interleaved rounds, with the same pause before each sample, as the
others (see core.measure).  The probe times the run itself, exactly as the
harness times sandlock; the request and answer are outside the timed span.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from . import core
from .core import Cell, RunFailed, Sample, Unavailable

DEFAULT_REF_PYTHON = "/tmp/refvenv/bin/python"
PROBE = Path(__file__).with_name("_ref_probe.py")

# Set by the CLI: path of the reference venv's interpreter, or None (disabled).
ref_python: str | None = None
ref_version: str | None = None


def find_ref_python(explicit: str | None) -> str | None:
    """The interpreter to use for the reference column, or None."""
    cand = explicit or os.environ.get("SANDLOCK_REF_PYTHON") or DEFAULT_REF_PYTHON
    return cand if os.path.isfile(cand) and os.access(cand, os.X_OK) else None


class Probe:
    """The running probe process."""

    def __init__(self, python: str):
        self.stderr = tempfile.TemporaryFile()
        # Same working directory and environment as every other column's
        # commands (the probe's own interpreter ignores PYTHON* under -I).
        self.proc = subprocess.Popen([python, "-I", str(PROBE)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr)
        core.not_launch_server.add(self.proc.pid)
        hello = self._read()
        if "error" in hello:
            raise RunFailed(f"reference SDK: {hello['error']}")
        self.version = hello.get("version")
        self.file = hello.get("file")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.stderr.seek(0)
            tail = self.stderr.read().decode(errors="replace").strip()[-300:]
            raise RunFailed(f"reference probe exited: {tail}")
        return json.loads(line)

    def sample(self, variant: str, cmd: Sequence[str], readable: list[str],
               count: int = 1, threads: int = 1) -> Sample:
        req = {"variant": variant, "cmd": list(cmd), "readable": readable,
               "count": count, "threads": threads}
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        out = self._read()
        if "error" in out:
            raise RunFailed(f"reference SDK: {out['error']}")
        wall = out["wall"]
        return Sample(wall, wall, runs=count, self_cpu=out["self_cpu"],
                      child_cpu=out["child_cpu"], extra={"latency": out["latency"]})

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except Exception:  # noqa: BLE001
            self.proc.kill()
        self.stderr.close()


_probe: Probe | None = None
_probe_error: str | None = None


def probe() -> Probe:
    """The probe, started on first use; Unavailable when disabled."""
    global _probe, _probe_error, ref_version
    if ref_python is None:
        raise Unavailable("reference SDK not found")
    if _probe_error:
        raise RunFailed(_probe_error)
    if _probe is None:
        try:
            _probe = Probe(ref_python)
        except Exception as e:  # noqa: BLE001
            _probe_error = str(e)
            raise
        ref_version = _probe.version or ref_version
    return _probe


def close() -> None:
    global _probe
    if _probe is not None:
        _probe.close()
        _probe = None


def variants(cmd: Sequence[str], readable: list[str], count: int = 1, threads: int = 1) -> dict:
    """The REF and REF_BASE variants for core.measure (empty when disabled)."""
    if ref_python is None:
        return {}
    return {
        core.REF: lambda: probe().sample("ref", cmd, readable, count, threads),
        core.REF_BASE: lambda: probe().sample("plain", cmd, readable, count, threads),
    }


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


__all__ = ["Cell", "DEFAULT_REF_PYTHON", "find_ref_python", "probe", "close", "variants",
           "probe_version"]
