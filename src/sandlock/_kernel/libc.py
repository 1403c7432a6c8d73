"""The C library handle and a raw syscall entry point.

Everything here is bound at import time so that a forked child can call it
after Landlock is applied without importing anything.
"""
from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)

_syscall = libc.syscall
_syscall.restype = ctypes.c_long

_prctl = libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _arg(a):
    # Variadic ctypes calls pass Python ints as C int: widen them to long.
    return ctypes.c_long(a) if isinstance(a, int) else a


def syscall(nr: int, *args) -> int:
    """Call syscall `nr`; raise OSError(errno) on failure, else return the result."""
    ret = _syscall(ctypes.c_long(nr), *[_arg(a) for a in args])
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def raw_syscall(nr: int, *args) -> tuple[int, int]:
    """Call syscall `nr` without raising: returns (result, errno)."""
    ret = _syscall(ctypes.c_long(nr), *[_arg(a) for a in args])
    return ret, (ctypes.get_errno() if ret == -1 else 0)


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    ret = _prctl(option, a2, a3, a4, a5)
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


# prctl options (linux/prctl.h)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_SET_THP_DISABLE = 41
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
