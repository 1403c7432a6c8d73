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


# -- user notification (include/uapi/linux/seccomp.h) ---------------------------

class SeccompData(ctypes.Structure):
    _fields_ = [("nr", ctypes.c_int32), ("arch", ctypes.c_uint32),
                ("instruction_pointer", ctypes.c_uint64), ("args", ctypes.c_uint64 * 6)]


class Notif(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("data", SeccompData)]


class NotifResp(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("val", ctypes.c_int64), ("error", ctypes.c_int32),
                ("flags", ctypes.c_uint32)]


class NotifAddfd(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("srcfd", ctypes.c_uint32),
                ("newfd", ctypes.c_uint32), ("newfd_flags", ctypes.c_uint32)]


# _IOWR('!', 0, struct seccomp_notif) etc.
IOCTL_NOTIF_RECV = 0xC0502100
IOCTL_NOTIF_SEND = 0xC0182101
IOCTL_NOTIF_ID_VALID = 0x40082102
IOCTL_NOTIF_ADDFD = 0x40182103

USER_NOTIF_FLAG_CONTINUE = 1
ADDFD_FLAG_SETFD = 1
ADDFD_FLAG_SEND = 2

from .libc import libc as _libc  # noqa: E402

_ioctl = _libc.ioctl
_ioctl.restype = ctypes.c_int
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


class Listener:
    """The supervisor's end of a seccomp listener fd, with reusable buffers."""

    def __init__(self, fd: int):
        self.fd = fd
        self._notif = Notif()
        self._notif_p = ctypes.addressof(self._notif)
        self._resp = NotifResp()
        self._resp_p = ctypes.addressof(self._resp)
        self._id = ctypes.c_uint64()
        self._id_p = ctypes.addressof(self._id)
        self._addfd = NotifAddfd()
        self._addfd_p = ctypes.addressof(self._addfd)

    def recv(self) -> Notif | None:
        """The next notification, or None when it vanished (task died: ENOENT)
        or the call was interrupted. The struct is reused: copy what you keep."""
        ctypes.memset(self._notif_p, 0, ctypes.sizeof(Notif))
        if _ioctl(self.fd, IOCTL_NOTIF_RECV, self._notif_p) < 0:
            err = ctypes.get_errno()
            if err in (_errno.ENOENT, _errno.EINTR, _errno.EAGAIN):
                return None
            raise OSError(err, "SECCOMP_IOCTL_NOTIF_RECV")
        return self._notif

    def hung_up(self) -> bool:
        """POLLHUP: the filter has no users left."""
        import select
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        return any(ev & select.POLLHUP for _fd, ev in p.poll(0))

    def id_valid(self, notif_id: int) -> bool:
        self._id.value = notif_id
        return _ioctl(self.fd, IOCTL_NOTIF_ID_VALID, self._id_p) == 0

    def respond(self, notif_id: int, val: int = 0, error: int = 0, cont: bool = False) -> bool:
        """Answer a notification: error is a positive errno (0 = success with
        `val`); cont lets the syscall run as is. False if the task is gone."""
        r = self._resp
        r.id = notif_id
        r.val = 0 if cont else val
        r.error = 0 if cont else -error
        r.flags = USER_NOTIF_FLAG_CONTINUE if cont else 0
        return _ioctl(self.fd, IOCTL_NOTIF_SEND, self._resp_p) == 0

    def inject_fd(self, notif_id: int, srcfd: int, newfd_flags: int = 0) -> int:
        """Install `srcfd` in the task and answer the syscall with its number
        (ADDFD with SEND: atomic). Returns the new fd, or -errno."""
        a = self._addfd
        a.id = notif_id
        a.flags = ADDFD_FLAG_SEND
        a.srcfd = srcfd
        a.newfd = 0
        a.newfd_flags = newfd_flags
        ret = _ioctl(self.fd, IOCTL_NOTIF_ADDFD, self._addfd_p)
        return ret if ret >= 0 else -ctypes.get_errno()
