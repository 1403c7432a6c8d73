"""pidfd_open / pidfd_getfd: take a file descriptor from another process."""
from __future__ import annotations

import errno
import os

from .libc import syscall

NR_PIDFD_GETFD = 438  # same on every architecture


def getfd_from(pidfd: int, fd: int) -> int:
    """A copy (close-on-exec) of `fd` from the process `pidfd` refers to."""
    return syscall(NR_PIDFD_GETFD, pidfd, fd, 0)


def open_task_group(tid: int, tgid_of) -> int:
    """A pidfd for the thread group of task `tid` (a notification names the
    calling thread). pidfd_open refuses a thread that is not its group's
    leader (EINVAL): only then is the group looked up, with `tgid_of`."""
    try:
        return os.pidfd_open(tid)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    return os.pidfd_open(tgid_of(tid))


def getfd_of_task(tid: int, fd: int, tgid_of) -> int:
    """A copy of `fd` from the process that task `tid` belongs to."""
    pidfd = open_task_group(tid, tgid_of)
    try:
        return getfd_from(pidfd, fd)
    finally:
        os.close(pidfd)
