"""Reading (process_vm_readv) and writing (process_vm_writev, /proc/<pid>/mem) a child's memory.

Every length is capped by the caller's limit: the sandboxed child controls
addresses and lengths, never how much the supervisor reads.
"""
from __future__ import annotations

import ctypes
import os

from .libc import libc

MAX_READ = 1 << 20


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_readv = libc.process_vm_readv
_readv.restype = ctypes.c_ssize_t
_readv.argtypes = [ctypes.c_int, ctypes.POINTER(IoVec), ctypes.c_ulong,
                   ctypes.POINTER(IoVec), ctypes.c_ulong, ctypes.c_ulong]


_writev = libc.process_vm_writev
_writev.restype = ctypes.c_ssize_t
_writev.argtypes = _readv.argtypes


def write_vm(pid: int, addr: int, data: bytes) -> int:
    """Write `data` at `addr` in `pid` as the task itself could: a
    read-only or unmapped page stops the write (unlike /proc/<pid>/mem,
    which forces it). Returns the bytes written (fewer when a page ends
    the mapping); OSError (EFAULT, ESRCH) when none was."""
    if not data:
        return 0
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    local = IoVec(ctypes.addressof(buf), len(data))
    remote = IoVec(addr, len(data))
    n = _writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return n


def read(pid: int, addr: int, length: int) -> bytes:
    """Up to `length` bytes at `addr` in `pid` (fewer if the mapping ends).
    Raises OSError when nothing can be read."""
    if length <= 0:
        return b""
    length = min(length, MAX_READ)
    buf = ctypes.create_string_buffer(length)
    local = IoVec(ctypes.addressof(buf), length)
    remote = IoVec(addr, length)
    n = _readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.raw[:n]


def read_cstr(pid: int, addr: int, limit: int) -> bytes:
    """A NUL-terminated string at `addr`, at most `limit` bytes (without the
    NUL). Reads page by page so a string near the end of a mapping works.
    Raises OSError(ENAMETOOLONG) when no NUL comes within `limit`."""
    out = b""
    while len(out) <= limit:
        chunk_len = 4096 - ((addr + len(out)) % 4096)
        chunk = read(pid, addr + len(out), min(chunk_len, limit + 1 - len(out)))
        if not chunk:
            break
        nul = chunk.find(b"\0")
        if nul >= 0:
            return out + chunk[:nul]
        out += chunk
    raise OSError(36, "string too long")


def write(pid: int, addr: int, data: bytes, still_valid) -> int:
    """Write `data` at `addr` in `pid`, safely against pid reuse: the open
    /proc/<pid>/mem pins that process's memory, and `still_valid()` (the
    notification's ID_VALID check) is asked only after the open, so a pid
    recycled in between is caught instead of written to."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
    try:
        if not still_valid():
            raise OSError(3, "the task is gone")  # ESRCH
        return os.pwrite(fd, data, addr)
    finally:
        os.close(fd)
