"""User handlers for routed syscalls: `Sandbox.run_with_handlers`.

A handler is a `Handler` subclass (or any callable) taking a `HandlerCtx`
and returning a `NotifAction`. Handlers run in the sandbox's supervisor
process, after sandlock's built-in handlers, one notification at a time.
They see a snapshot of the caller's state taken when the run started:
changes they make to Python objects do not reach the caller.

Fail closed: a handler that raises, or returns something that is not a
NotifAction, makes the syscall fail (EPERM by default, see ExceptionPolicy).
Deciding CONTINUE after reading child memory is a TOCTOU hole (another
thread of the child can rewrite it before the kernel reads it again): a
handler that decides on memory should perform the call itself and return
its result.
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass


class ActionKind(enum.IntEnum):
    CONTINUE = 1
    ERRNO = 2
    RETURN_VALUE = 3
    INJECT_FD = 4
    KILL = 5


@dataclass(frozen=True)
class NotifAction:
    """A handler's decision. Build it with the class methods."""
    kind: int
    errno_value: int = 0
    return_value: int = 0
    srcfd: int = -1
    newfd_flags: int = 0
    sig: int = 0

    @classmethod
    def continue_(cls) -> "NotifAction":
        """No objection: later handlers, then the kernel, decide."""
        return cls(ActionKind.CONTINUE)

    @classmethod
    def errno(cls, value: int) -> "NotifAction":
        """Fail the syscall with errno `value` (positive)."""
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 4096:
            raise ValueError(f"NotifAction.errno: expected an errno 1..4095, got {value!r}")
        return cls(ActionKind.ERRNO, errno_value=value)

    @classmethod
    def returns(cls, value: int) -> "NotifAction":
        """Skip the syscall; it returns `value` (>= 0)."""
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"NotifAction.returns: expected a value >= 0, got {value!r}")
        return cls(ActionKind.RETURN_VALUE, return_value=value)

    @classmethod
    def inject_fd_send(cls, srcfd: int, newfd_flags: int = 0) -> "NotifAction":
        """Install `srcfd` in the task as the syscall's result. The
        supervisor takes ownership of `srcfd` (closes it)."""
        if not isinstance(srcfd, int) or srcfd < 0:
            raise ValueError(f"NotifAction.inject_fd_send: expected an fd, got {srcfd!r}")
        return cls(ActionKind.INJECT_FD, srcfd=srcfd, newfd_flags=newfd_flags)

    @classmethod
    def inject_bytes(cls, data: bytes, *, cloexec: bool = True) -> "NotifAction":
        """Answer with a new read-only in-memory file holding `data` (a
        sealed memfd: the task can neither write nor resize it)."""
        import fcntl
        fd = os.memfd_create("sandlock", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            os.lseek(fd, 0, os.SEEK_SET)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_WRITE
                        | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
        except OSError:
            os.close(fd)
            raise
        return cls.inject_fd_send(fd, os.O_CLOEXEC if cloexec else 0)

    @classmethod
    def kill(cls, sig: int = 9) -> "NotifAction":
        """Kill the calling process (not its group) with `sig`; the syscall fails."""
        return cls(ActionKind.KILL, sig=sig)


class ExceptionPolicy(enum.IntEnum):
    """What happens to the syscall when a handler fails. Never CONTINUE."""
    KILL = 0
    DENY_EPERM = 1
    DENY_EIO = 3


class Handler:
    """Subclass and override `handle(ctx) -> NotifAction`."""
    on_exception: ExceptionPolicy = ExceptionPolicy.DENY_EPERM

    def handle(self, ctx: "HandlerCtx") -> NotifAction:
        raise NotImplementedError("Handler subclasses must override handle(ctx)")


class HandlerCtx:
    """One notification: who called what, plus safe access to its memory.

    Reads are capped at `max_len`/`length` and checked against the
    notification's validity after reading (a task that died or was
    replaced yields None).
    """
    __slots__ = ("id", "pid", "flags", "syscall_nr", "arch", "instruction_pointer", "args",
                 "_valid")

    def __init__(self, notif_id, pid, flags, nr, arch, ip, args, valid):
        self.id = notif_id
        self.pid = pid
        self.flags = flags
        self.syscall_nr = nr
        self.arch = arch
        self.instruction_pointer = ip
        self.args = args
        self._valid = valid

    def read(self, addr: int, length: int) -> bytes | None:
        from ._kernel import memory
        try:
            data = memory.read(self.pid, addr, min(max(length, 0), memory.MAX_READ))
        except OSError:
            return None
        return data if self._valid(self.id) else None

    def read_cstr(self, addr: int, max_len: int = 4096) -> str | None:
        from ._kernel import memory
        try:
            data = memory.read_cstr(self.pid, addr, min(max(max_len, 1), memory.MAX_READ))
        except OSError:
            return None
        return os.fsdecode(data) if self._valid(self.id) else None

    def write(self, addr: int, data: bytes) -> bool:
        """Write into the calling task's memory; False when it cannot be done
        (bad address, task gone)."""
        from ._kernel import memory
        try:
            return memory.write(self.pid, addr, data, lambda: self._valid(self.id)) == len(data)
        except (OSError, ValueError, OverflowError):
            return False


def check_handlers(handlers, table, denied_numbers) -> list[tuple[int, object]]:
    """Validate (syscall, handler) pairs into (number, callable) pairs."""
    from .exceptions import PolicyError
    out = []
    if isinstance(handlers, (str, bytes)) or not hasattr(handlers, "__iter__"):
        raise PolicyError(f"handlers: expected a list of (syscall, handler) pairs (got {handlers!r})")
    for item in handlers:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise PolicyError(f"handlers: expected a (syscall, handler) pair (got {item!r})")
        syscall, h = item
        if isinstance(syscall, str):
            if syscall not in table.syscalls:
                raise PolicyError(f"handlers: unknown syscall {syscall!r} on {table.arch}")
            nr = table.syscalls[syscall]
        elif isinstance(syscall, int) and not isinstance(syscall, bool) and syscall in table.names:
            nr = syscall
        else:
            raise PolicyError(f"handlers: expected a syscall name or number (got {syscall!r})")
        if nr in denied_numbers:
            raise PolicyError(f"handlers: {table.names[nr]} is denied by the sandbox; "
                              "a handler cannot be registered for it")
        fn = h.handle if isinstance(h, Handler) else h
        if not callable(fn):
            raise PolicyError(f"handlers: {h!r} is neither a Handler nor callable")
        policy = getattr(h, "on_exception", ExceptionPolicy.DENY_EPERM)
        if policy not in (ExceptionPolicy.KILL, ExceptionPolicy.DENY_EPERM, ExceptionPolicy.DENY_EIO):
            raise PolicyError(f"handlers: unsupported on_exception {policy!r} (never CONTINUE)")
        out.append((nr, (fn, ExceptionPolicy(policy))))
    return out  # type: ignore[return-value]  # (nr, (fn, policy)) pairs
