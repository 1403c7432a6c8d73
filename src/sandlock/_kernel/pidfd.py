"""pidfd_open / pidfd_getfd: take a file descriptor from another task.

A seccomp notification names the calling *thread*, and a file descriptor
number in its arguments belongs to that thread's fd table: a thread made
by clone() without CLONE_FILES has its own. pidfd_getfd on a pidfd opened
with PIDFD_THREAD (Linux 6.9+) reads exactly that thread's table, so that
is what `open_task` gives. Kernels without PIDFD_THREAD (EINVAL for the
flag) get a pidfd for the thread group instead: right for every thread
that shares its files with the group leader, which is all threads made
by pthread_create.
"""
from __future__ import annotations

import errno
import os

from .libc import syscall

NR_PIDFD_GETFD = 438  # same on every architecture
# include/uapi/linux/pidfd.h (Linux 6.9): #define PIDFD_THREAD O_EXCL
# (O_EXCL is 0o200 on x86_64 and aarch64, asm-generic/fcntl.h).
PIDFD_THREAD = os.O_EXCL

_THREAD_FLAG: list[int] = []  # [PIDFD_THREAD] or [0], once probed


def _thread_flag() -> int:
    """PIDFD_THREAD if this kernel knows it, else 0. Probed once on our own
    pid: a real call's EINVAL may also mean that its thread is gone."""
    if not _THREAD_FLAG:
        try:
            os.close(os.pidfd_open(os.getpid(), PIDFD_THREAD))
            _THREAD_FLAG.append(PIDFD_THREAD)
        except OSError:
            _THREAD_FLAG.append(0)
    return _THREAD_FLAG[0]


def getfd_from(pidfd: int, fd: int) -> int:
    """A copy (close-on-exec) of `fd` from the task `pidfd` refers to."""
    return syscall(NR_PIDFD_GETFD, pidfd, fd, 0)


def open_task(tid: int, tgid_of) -> int:
    """A pidfd whose pidfd_getfd reads the fd table of thread `tid`: a
    PIDFD_THREAD pidfd, or on kernels without that flag one for the thread
    group (looked up with `tgid_of` when `tid` is not the group leader)."""
    if _thread_flag():
        return os.pidfd_open(tid, PIDFD_THREAD)
    return open_task_group(tid, tgid_of)


def open_task_group(tid: int, tgid_of) -> int:
    """A pidfd for the thread group of task `tid`. pidfd_open refuses a
    thread that is not its group's leader (EINVAL on older kernels, ENOENT
    on newer ones: Linux 6.18 here): only then is the group looked up, with `tgid_of`."""
    try:
        return os.pidfd_open(tid)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    return os.pidfd_open(tgid_of(tid))


def getfd_of_task(tid: int, fd: int, tgid_of) -> int:
    """A copy of `fd` as thread `tid` sees it (see `open_task`)."""
    pidfd = open_task(tid, tgid_of)
    try:
        return getfd_from(pidfd, fd)
    finally:
        os.close(pidfd)
