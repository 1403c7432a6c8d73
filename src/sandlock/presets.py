"""Ready-made handlers for `Sandbox.run_with_handlers`.

    from sandlock.presets import PathDenyHandler, COMMON_PATH_SYSCALLS
    deny = PathDenyHandler(["/etc/shadow", "*.pem"])
    sb.run_with_handlers(cmd, [(name, deny) for name in COMMON_PATH_SYSCALLS])

What they can and cannot do: a handler runs after sandlock's own checks
and cannot weaken them, so these only narrow what the sandbox already
allows. They decide on a path read from the task's memory, which another
thread of the task can rewrite between the read and the kernel's own read:
PathDenyHandler and PathAllowHandler stop a program that does not race
them, and Landlock (fs_readable / fs_writable / fs_denied) stays the
boundary against one that does. The audit and log handlers only observe.
"""
from __future__ import annotations

import errno as _errno
import fnmatch
import logging
from typing import Callable

from .handler import ExceptionPolicy, Handler, HandlerCtx, NotifAction

# Syscalls that take one path, for registering a path handler on each.
COMMON_PATH_SYSCALLS: list[str] = [
    "openat", "unlinkat", "newfstatat", "statx", "faccessat",
    "readlinkat", "mkdirat", "execveat", "execve",
]

_log = logging.getLogger("sandlock.audit")


def _patterns(value, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise TypeError(f"{what} must be a list of str patterns, got {value!r}")
    return list(value)


class AuditPathsHandler(Handler):
    """Call `callback(path, ctx)` for every syscall it is registered for, with
    the path read by ctx.read_path() (None when it cannot be read), and let
    the syscall proceed. An exception from the callback is logged to the
    "sandlock.audit" logger; it never decides the syscall."""

    on_exception = ExceptionPolicy.CONTINUE  # as the reference; ours fails closed all the same

    def __init__(self, callback: Callable[[str | None, HandlerCtx], None], max_len: int = 4096) -> None:
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        self.callback = callback
        self.max_len = max_len

    def handle(self, ctx: HandlerCtx) -> NotifAction:
        try:
            path = ctx.read_path(max_len=self.max_len)
        except ValueError:
            path = None
        try:
            self.callback(path, ctx)
        except Exception:  # noqa: BLE001 - an observer's failure is logged, not enforced
            _log.exception("sandlock audit callback failed")
        return NotifAction.continue_()


class PathDenyHandler(Handler):
    """Fail syscalls whose path matches one of the `fnmatch` patterns with
    `errno` (EPERM). A path that cannot be read is left to the rest of the
    policy (this is a deny-list: it claims nothing about other paths)."""

    on_exception = ExceptionPolicy.KILL

    def __init__(self, deny: list[str], errno: int = _errno.EPERM, max_len: int = 4096) -> None:
        self.deny = _patterns(deny, "deny")
        self.errno = errno
        self.max_len = max_len
        NotifAction.errno(errno)  # a bad errno fails here, not in the supervisor

    def handle(self, ctx: HandlerCtx) -> NotifAction:
        path = ctx.read_path(max_len=self.max_len)
        if path is not None and any(fnmatch.fnmatchcase(path, p) for p in self.deny):
            return NotifAction.errno(self.errno)
        return NotifAction.continue_()


class PathAllowHandler(Handler):
    """Fail every syscall whose path matches none of the `fnmatch` patterns,
    and those whose path cannot be read, with `errno` (EACCES)."""

    on_exception = ExceptionPolicy.KILL

    def __init__(self, allow: list[str], errno: int = _errno.EACCES, max_len: int = 4096) -> None:
        self.allow = _patterns(allow, "allow")
        self.errno = errno
        self.max_len = max_len
        NotifAction.errno(errno)

    def handle(self, ctx: HandlerCtx) -> NotifAction:
        path = ctx.read_path(max_len=self.max_len)
        if path is not None and any(fnmatch.fnmatchcase(path, p) for p in self.allow):
            return NotifAction.continue_()
        return NotifAction.errno(self.errno)


class LogSyscallsHandler(Handler):
    """Log one line per syscall (number, pid, arguments) and let it proceed.
    The default logger is logging.getLogger("sandlock.audit").info; a logger
    that raises is reported there and never decides the syscall."""

    on_exception = ExceptionPolicy.CONTINUE  # as the reference; ours fails closed all the same

    def __init__(self, logger: Callable[[str], None] | None = None) -> None:
        self.logger = logger or _log.info

    def handle(self, ctx: HandlerCtx) -> NotifAction:
        try:
            self.logger(f"syscall={ctx.syscall_nr} pid={ctx.pid} args={ctx.args}")
        except Exception:  # noqa: BLE001
            _log.exception("sandlock syscall logger failed")
        return NotifAction.continue_()
