"""What the supervisor's handlers share: their integer arguments decoded as
the kernel reads them, and a way to answer a call at once from deep inside
a handler (a bad argument, a refusal) without threading errnos through
every return."""
from __future__ import annotations

import errno


class Answer(Exception):
    """Answer the call now: an errno, or None (CONTINUE: the kernel decides)."""

    def __init__(self, err: int | None):
        super().__init__(err)
        self.errno = err


def answering(fn):
    """A handler whose Answer, raised anywhere below it, is its verdict."""
    def run(ctx):
        try:
            return fn(ctx)
        except Answer as a:
            return a.errno
    run.__name__ = getattr(fn, "__name__", "handler")
    return run


def c_int(value: int) -> int:
    """A C int argument (a dirfd, an fd): the low 32 bits, signed."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def u32(value: int) -> int:
    """An unsigned 32-bit argument (flags, a mode)."""
    return value & 0xFFFFFFFF


def caller_proc_path(path: bytes, tgid: int, tid: int) -> bytes:
    """`path` as the calling task means it: /proc/self and /proc/thread-self
    name the caller, not the supervisor that resolves the path (any
    spelling: `//`, `/./`); other paths unchanged."""
    parts = [p for p in path.split(b"/") if p not in (b"", b".")]
    if len(parts) >= 2 and parts[0] == b"proc":
        if parts[1] == b"self":
            parts[1:2] = [str(tgid).encode()]
        elif parts[1] == b"thread-self":
            parts[1:2] = [str(tgid).encode(), b"task", str(tid).encode()]
        else:
            return path
        return b"/" + b"/".join(parts)
    return path


def child_fd(ctx, fd_arg: int) -> int:
    """Our copy of the calling task's fd `fd_arg` (the same open file), or
    Answer with the errno the call gets: EBADF for a bad fd, ESRCH when the
    task is gone, EPERM when its fd cannot be taken."""
    from .._kernel import pidfd
    from . import processes
    try:
        return pidfd.getfd_of_task(ctx.pid, fd_arg & 0xFFFFFFFF, processes.tgid)
    except OSError as e:
        raise Answer(errno.EBADF if e.errno == errno.EBADF else errno.EPERM) from None
    except ProcessLookupError:
        raise Answer(errno.ESRCH) from None
