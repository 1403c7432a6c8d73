"""Generic fixtures shared by the test suite.

The suite runs as root and again as uid 65534 (from a world-readable copy
under /tmp), so anything a sandboxed process or an unprivileged user must
reach lives in a fresh 0755 directory under /tmp, not in pytest's private
tmp_path.
"""
from __future__ import annotations

import os
import sys
import tempfile

import pytest
from _shared import rmtree as _rmtree




@pytest.fixture
def world_dir():
    """A fresh directory under /tmp, mode 0755, removed afterwards."""
    d = tempfile.mkdtemp(dir="/tmp", prefix="sl-test-")
    os.chmod(d, 0o755)
    yield d
    _rmtree(d)


@pytest.fixture(scope="session")
def base_readable() -> list[str]:
    """System directories plus the interpreter's prefixes: enough for a
    sandbox to run sys.executable and the usual /bin tools."""
    paths = ["/usr", "/lib", "/lib64", "/bin", "/etc", sys.prefix, sys.base_prefix]
    out: list[str] = []
    for p in paths:
        if os.path.exists(p) and p not in out:
            out.append(p)
    return out


_PRELUDE = r'''
import errno, json, os, sys
ARGS = json.loads(sys.argv[1])
OUT = {}
def ename(n):
    return errno.errorcode.get(n, str(n))
def attempt(fn, *a, **kw):
    """fn's result ("OK" for None), or the errno name of its OSError."""
    try:
        r = fn(*a, **kw)
    except OSError as e:
        return ename(e.errno)
    return "OK" if r is None else r
def rd(p):
    def f():
        with open(p) as fh:
            return "OK:" + fh.read()
    return attempt(f)
def wr(p, text="x", mode="w"):
    def f():
        with open(p, mode) as fh:
            fh.write(text)
    return attempt(f)
def ls(p):
    return attempt(lambda: "OK:" + ",".join(sorted(os.listdir(p))))
'''
_EPILOGUE = '\nprint("RESULT " + json.dumps(OUT), flush=True)\n'


class PyProbe:
    """Runs a Python snippet (after a small prelude giving ARGS, OUT, rd, wr,
    ls, attempt, ename) and returns the OUT dict it prints: inside a sandbox,
    or unconfined as the control."""

    @staticmethod
    def argv(code: str, args: dict | None = None) -> list[str]:
        import json
        import textwrap
        return [sys.executable, "-I", "-S", "-c",
                _PRELUDE + textwrap.dedent(code) + _EPILOGUE, json.dumps(args or {})]

    @staticmethod
    def parse(stdout: bytes):
        import json
        for line in reversed(stdout.decode(errors="replace").splitlines()):
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        return None

    def sandboxed(self, sb, code: str, args: dict | None = None, timeout: float = 60) -> dict:
        r = sb.run(self.argv(code, args), timeout=timeout)
        out = self.parse(r.stdout)
        if out is None:
            pytest.fail(f"sandboxed probe gave no result: reason={r.reason!r} exit={r.exit_code} "
                        f"error={r.error!r}\nstdout={r.stdout[-2000:]!r}\nstderr={r.stderr[-2000:]!r}")
        return out

    def unconfined(self, code: str, args: dict | None = None, timeout: float = 60, **kw) -> dict:
        import subprocess
        p = subprocess.run(self.argv(code, args), capture_output=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, **kw)
        out = self.parse(p.stdout)
        if out is None:
            pytest.fail(f"unconfined probe gave no result: rc={p.returncode}\n"
                        f"stdout={p.stdout[-2000:]!r}\nstderr={p.stderr[-2000:]!r}")
        return out


@pytest.fixture(scope="session")
def py():
    return PyProbe()
