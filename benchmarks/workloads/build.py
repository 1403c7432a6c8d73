"""compileall: a file-heavy, build-like workload.

A part of the standard library (~200 .py files, test directories left out)
is copied into a fresh temporary directory for every run (copy not timed),
then ``python -m compileall -q -f DIR`` is timed from the outside (wall time,
interpreter start-up included).  Sandboxed with that directory in
fs_writable.
"""
from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile

from ..core import (SANDLOCK, UNSANDBOXED, Row, Settings, Unavailable, measure, readable,
                    run_plain, run_sandlock)

PACKAGES = ["json", "email", "asyncio", "concurrent", "importlib", "http", "urllib", "xml",
            "logging", "unittest", "collections", "tomllib", "wsgiref", "multiprocessing",
            "ctypes", "re"]
QUICK_PACKAGES = ["json", "email", "tomllib"]
_IGNORE = shutil.ignore_patterns("__pycache__", "test", "tests", "idle_test", "*.pyc")


def _populate(dst: str, packages: list[str]) -> int:
    """Copy the stdlib packages that exist into `dst`; return the .py count."""
    stdlib = sysconfig.get_paths()["stdlib"]
    for name in packages:
        src = os.path.join(stdlib, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dst, name), ignore=_IGNORE)
    return sum(f.endswith(".py") for _, _, files in os.walk(dst) for f in files)


def sources(root: str, packages: list[str], counts: list[int]) -> tuple[str, list[str]]:
    """A fresh directory under `root` with the packages' sources (their .py
    count appended to `counts`), and the compileall command over it."""
    work = tempfile.mkdtemp(dir=root)
    n = _populate(work, packages)
    if n == 0:
        shutil.rmtree(work, ignore_errors=True)
        raise Unavailable("no stdlib sources found to compile")
    counts.append(n)
    return work, [sys.executable, "-m", "compileall", "-q", "-f", work]


def compileall(s: Settings) -> Row:
    """`python -m compileall -q -f` over ~200 copied stdlib files; fs_writable."""
    reps = s.reps(7, 1)
    packages = QUICK_PACKAGES if s.quick else PACKAGES
    root = tempfile.mkdtemp(prefix="sandlock-bench-")
    counts: list[int] = []

    def one(sandboxed: bool):
        work, cmd = sources(root, packages, counts)
        try:
            if sandboxed:
                policy = {"fs_readable": readable(), "fs_writable": [work]}
                return run_sandlock(cmd, policy, workload="compileall")
            return run_plain(cmd)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    try:
        cells = measure({UNSANDBOXED: lambda: one(False), SANDLOCK: lambda: one(True)}, reps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    files = max(counts) if counts else 0
    return Row(name="compileall", metric=f"wall time of compileall -f over {files} stdlib files",
               unit="s", reps=reps, cells=cells)
