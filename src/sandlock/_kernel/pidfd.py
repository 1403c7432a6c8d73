"""pidfd_open / pidfd_getfd: take a file descriptor from another process."""
from __future__ import annotations

import os

from .libc import syscall

NR_PIDFD_GETFD = 438  # same on every architecture


def getfd(pid: int, fd: int) -> int:
    """A copy (close-on-exec) of `fd` from the thread group of `pid`."""
    pidfd = os.pidfd_open(pid)
    try:
        return syscall(NR_PIDFD_GETFD, pidfd, fd, 0)
    finally:
        os.close(pidfd)
