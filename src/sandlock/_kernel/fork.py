"""A bare fork(2) for sandlock's own single-threaded processes.

os.fork() runs Python's at-fork hooks (threading, random, ...) in the child,
and the objects they touch are copied page by page: on our machines that
doubles the cost of a fork. The launch server and the supervisors are
single-threaded processes of ours, so they may call fork(2) directly; the
child then runs only sandlock code before it execs or exits.

The call goes through PyDLL so the GIL stays held across it: the child
starts owning the GIL, with no other thread that could hold a lock.
"""
from __future__ import annotations

import ctypes
import os

_fork = ctypes.PyDLL(None, use_errno=True).fork
_fork.restype = ctypes.c_int
_fork.argtypes = []


def single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def fork() -> int:
    """fork(2); raises OSError on failure. Caller must be single-threaded
    (checked: with other threads this falls back to os.fork)."""
    if not single_threaded():
        return os.fork()
    pid = _fork()
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid
