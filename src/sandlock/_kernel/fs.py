"""openat2 and getdents64, for opening and listing on a child's behalf."""
from __future__ import annotations

import ctypes
import os

from .libc import libc, raw_syscall

NR_OPENAT2 = 437  # same on every architecture
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
AT_FDCWD = -100


class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


# syscall(2) typed for openat2: the supervisor's copy-on-write layer makes
# tens of thousands of these calls per run, and converting each argument
# at call time (raw_syscall) cost ~2 us of a ~9 us call (measured).
_openat2 = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_void_p, ctypes.c_size_t, use_errno=True)(("syscall", libc))
_HOW_SIZE = ctypes.sizeof(OpenHow)


def openat2(dirfd: int, path: bytes, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2); returns the fd or raises OSError (`mode`: with O_CREAT)."""
    creates = flags & os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE
    how = OpenHow(flags, mode if creates else 0, resolve)
    fd = _openat2(NR_OPENAT2, dirfd, path, ctypes.byref(how), _HOW_SIZE)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def getdents64(fd: int, size: int, nr: int) -> bytes:
    """Raw linux_dirent64 records (at most `size` bytes) from fd's offset."""
    buf = ctypes.create_string_buffer(size)
    n, err = raw_syscall(nr, fd, buf, size)
    if n < 0:
        raise OSError(err, os.strerror(err))
    return buf.raw[:n]


def dirents(raw: bytes):
    """(record bytes, name) for each linux_dirent64 record in `raw`."""
    off = 0
    while off + 19 <= len(raw):
        reclen = int.from_bytes(raw[off + 16:off + 18], "little")
        if reclen < 19 or off + reclen > len(raw):
            return
        rec = raw[off:off + reclen]
        yield rec, rec[19:].split(b"\0", 1)[0]
        off += reclen
