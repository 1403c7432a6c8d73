"""chroot: what a virtual root costs.

python_pass_chroot  `python -c pass` with the system python copied with its
    libraries into a root (tests/_rootfs.py builds it; the standard library
    is an fs_mount_ro), so the program runs through the root's ld.so and
    every path of its start-up is resolved by the supervisor in the tree.
    Compared with the same python started bare on the host.
python_pass_chroot_cow  the same with the root as the copy-on-write
    workdir (aborted after each run).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile

from ..core import SANDLOCK, UNSANDBOXED, Row, Settings, Unavailable, measure, run_plain, run_sandlock


def _rootfs():
    """tests/_rootfs.py: the root the chroot tests use."""
    tests = os.path.join(os.path.dirname(__file__), "..", "..", "tests")
    path = os.path.join(tests, "_rootfs.py")
    spec = importlib.util.spec_from_file_location("_sandlock_bench_rootfs", path)
    if spec is None or spec.loader is None or not os.path.exists(path):
        raise Unavailable("tests/_rootfs.py is not here (run from the repository)")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, tests)   # its own helper (_shared.py)
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(tests)
    return mod


def python_pass_chroot(s: Settings) -> Row:
    """`python -c pass` in a chroot vs the same python bare, isolated."""
    return _python_pass(s, cow=False)


def python_pass_chroot_cow(s: Settings) -> Row:
    """The same with the root a copy-on-write workdir (aborted after each
    run): every path under the root is looked up in the branch's merged view."""
    return _python_pass(s, cow=True)


def _python_pass(s: Settings, cow: bool) -> Row:
    name = "python_pass_chroot_cow" if cow else "python_pass_chroot"
    rootfs = _rootfs()
    if rootfs.SYSTEM_PYTHON is None:
        raise Unavailable("no system python3 to copy into a root")
    top = tempfile.mkdtemp(prefix="sandlock-bench-chroot-")
    try:
        root, mounts = rootfs.python_root(top)
        policy = {"chroot": root, "fs_readable": ["/"], "fs_mount_ro": mounts,
                  "env": {"PATH": "/usr/bin"}}
        if cow:
            policy.update(workdir=root, on_exit="abort")
        reps = s.reps(30, 5)
        cells = measure({UNSANDBOXED: lambda: run_plain([rootfs.SYSTEM_PYTHON, "-c", "pass"]),
                         SANDLOCK: lambda: run_sandlock(["python3", "-c", "pass"], policy,
                                                        workload=name)},
                        reps, warmup=2)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return Row(name=name,
               metric="wall time of one run of python -c pass in a chroot (the system python "
                      "copied with its libraries, the stdlib mounted read-only)"
                      + (", the root a copy-on-write workdir" if cow else ""),
               unit="ms", reps=reps, cells=cells)
