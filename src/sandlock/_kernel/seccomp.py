"""seccomp(2): filter installation and the user-notification ioctls.

Constants from include/uapi/linux/seccomp.h (WAIT_KILLABLE_RECV: Linux 5.19).
"""
from __future__ import annotations

import ctypes
import errno as _errno

from .libc import raw_syscall

SET_MODE_FILTER = 1
GET_ACTION_AVAIL = 2
GET_NOTIF_SIZES = 3

FLAG_NEW_LISTENER = 1 << 3
FLAG_WAIT_KILLABLE_RECV = 1 << 5


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Program:
    """An encoded filter kept alive with its sock_fprog, ready to install from
    a forked child without allocating."""

    def __init__(self, encoded: bytes, seccomp_nr: int):
        self.buf = ctypes.create_string_buffer(encoded, len(encoded))
        self.fprog = SockFprog(len(encoded) // 8, ctypes.addressof(self.buf))
        self.ref = ctypes.byref(self.fprog)
        self.nr = seccomp_nr
        self.length = len(encoded) // 8

    def install(self, listener: bool) -> tuple[int, int]:
        """Install on the calling thread. Returns (listener fd or 0, errno).

        With a listener, WAIT_KILLABLE_RECV is asked for first; kernels older
        than 5.19 reject it with EINVAL, so retry without it.
        """
        if not listener:
            ret, err = raw_syscall(self.nr, SET_MODE_FILTER, 0, self.ref)
            return (0, err) if ret < 0 else (0, 0)
        ret, err = raw_syscall(self.nr, SET_MODE_FILTER,
                               FLAG_NEW_LISTENER | FLAG_WAIT_KILLABLE_RECV, self.ref)
        if ret < 0 and err == _errno.EINVAL:
            ret, err = raw_syscall(self.nr, SET_MODE_FILTER, FLAG_NEW_LISTENER, self.ref)
        return (ret, 0) if ret >= 0 else (-1, err)
