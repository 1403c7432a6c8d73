"""User handlers for routed syscalls: `Sandbox.run_with_handlers`.

A handler is a `Handler` subclass (or any callable) taking a `HandlerCtx`
and returning a `NotifAction`. Handlers run in the sandbox's supervisor
process, after sandlock's built-in handlers, one notification at a time.
They see a snapshot of the caller's state taken when the run started:
changes they make to Python objects do not reach the caller.

Fail closed: a handler that raises, or returns something that is not a
NotifAction, makes the syscall fail (EPERM by default, see ExceptionPolicy;
ExceptionPolicy.CONTINUE, accepted for compatibility, fails it with EPERM).
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
    """NotifAction.kind values (the reference SDK's numbering)."""
    CONTINUE = 1
    ERRNO = 2
    RETURN_VALUE = 3
    INJECT_FD = 4
    INJECT_FD_SEND = 4   # the reference's name for INJECT_FD
    HOLD = 6
    KILL = 7


@dataclass(frozen=True)
class NotifAction:
    """A handler's decision. Build it with the class methods."""
    kind: int
    errno_value: int = 0
    return_value: int = 0
    srcfd: int = -1
    newfd_flags: int = 0
    sig: int = 0
    pgid: int = 0

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
    def inject_bytes(cls, data: bytes, *, seal: bool = True, cloexec: bool = True) -> "NotifAction":
        """Answer with a new in-memory file holding `data`, read from its
        start. Sealed by default: the task can neither write nor resize it
        (seal=False gives a writable copy)."""
        import fcntl
        flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if seal else 0)
        fd = os.memfd_create("sandlock", flags)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.lseek(fd, 0, os.SEEK_SET)
            if seal:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_WRITE
                            | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
        except OSError:
            os.close(fd)
            raise
        return cls.inject_fd_send(fd, os.O_CLOEXEC if cloexec else 0)

    @classmethod
    def hold(cls) -> "NotifAction":
        """The reference's "leave the syscall pending". Our supervisor never
        leaves a syscall unanswered: it fails it with EPERM."""
        return cls(ActionKind.HOLD)

    @classmethod
    def kill(cls, sig: int = 9, pgid: int = 0) -> "NotifAction":
        """Kill the calling process with `sig`; the syscall fails. `pgid` is
        accepted for the reference's signature; our supervisor signals the
        calling process only (never a group it cannot prove is the
        sandbox's)."""
        return cls(ActionKind.KILL, sig=sig, pgid=pgid)


class ExceptionPolicy(enum.IntEnum):
    """What happens to the syscall when a handler fails (raises, or returns
    something that is not a NotifAction). CONTINUE exists for code written
    for the reference SDK; it never lets the syscall through here: a failing
    handler whose policy is CONTINUE fails the syscall with EPERM."""
    KILL = 0
    DENY_EPERM = 1
    CONTINUE = 2
    DENY_EIO = 3


class Handler:
    """Subclass and override `handle(ctx) -> NotifAction`. `handle` may be an
    `async def`: it is then run to completion in the supervisor (inline, one
    notification at a time: it is not moved off the supervisor's loop)."""
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
                 "_valid", "_judged")

    def __init__(self, id, pid, flags, syscall_nr, arch, instruction_pointer, args,
                 valid=None):
        self.id = id
        self.pid = pid
        self.flags = flags
        self.syscall_nr = syscall_nr
        self.arch = arch
        self.instruction_pointer = instruction_pointer
        self.args = tuple(args)
        # The supervisor's validity check of this notification. Without one
        # (a HandlerCtx built by hand, e.g. in a handler's unit test) memory
        # reads give None and writes False: nothing of a real process is
        # touched.
        self._valid = valid
        # policy_fn: the destination address (raw sockaddr) the callback
        # judged; the on-behalf connect or send uses exactly these bytes.
        self._judged: bytes | None = None

    def __repr__(self) -> str:
        return (f"HandlerCtx(id={self.id}, pid={self.pid}, syscall_nr={self.syscall_nr}, "
                f"args={self.args})")

    def read(self, addr: int, length: int) -> bytes | None:
        from ._kernel import memory
        if self._valid is None:
            return None
        try:
            data = memory.read(self.pid, addr, min(max(length, 0), memory.MAX_READ))
        except OSError:
            return None
        return data if self._valid(self.id) else None

    def read_cstr(self, addr: int, max_len: int = 4096) -> str | None:
        from ._kernel import memory
        if self._valid is None:
            return None
        try:
            data = memory.read_cstr(self.pid, addr, min(max(max_len, 1), memory.MAX_READ))
        except OSError:
            return None
        return os.fsdecode(data) if self._valid(self.id) else None

    def read_path(self, arg: int | None = None, max_len: int = 4096) -> str | None:
        """The path argument of the syscall, read from the task's memory (None
        when it cannot be read). Without `arg`, the path argument of a
        single-path syscall (openat, execve, mkdirat, ...) is found from the
        syscall; for other syscalls pass `arg` (0-5), else ValueError.

        A path read here can change after the read (another thread of the
        task can rewrite it): decide on it only to deny, or act on it yourself."""
        if arg is None:
            from ._kernel import syscalls
            name = syscalls.table().names.get(self.syscall_nr)
            if name in MULTI_PATH_SYSCALLS:
                raise ValueError(f"read_path: {name} takes several paths; pass arg= explicitly")
            if name not in PATH_ARG:
                raise ValueError(f"read_path: syscall {name or self.syscall_nr} has no known path "
                                 "argument; pass arg= explicitly")
            arg = PATH_ARG[name]
        if isinstance(arg, bool) or not isinstance(arg, int) or not 0 <= arg < 6:
            raise ValueError(f"read_path: arg must be 0..5, got {arg!r}")
        return self.read_cstr(self.args[arg], max_len)

    def write(self, addr: int, data: bytes) -> bool:
        """Write into the calling task's memory; False when it cannot be done
        (bad address, task gone)."""
        from ._kernel import memory
        valid = self._valid
        if valid is None:
            return False
        try:
            return memory.write(self.pid, addr, data, lambda: valid(self.id)) == len(data)
        except (OSError, ValueError, OverflowError):
            return False


# The path argument's position in the syscalls that take one path.
PATH_ARG: dict[str, int] = {
    "open": 0, "creat": 0, "openat": 1, "openat2": 1,
    "stat": 0, "lstat": 0, "newfstatat": 1, "fstatat64": 1, "statx": 1, "statfs": 0,
    "access": 0, "faccessat": 1, "faccessat2": 1,
    "readlink": 0, "readlinkat": 1,
    "mkdir": 0, "mkdirat": 1, "rmdir": 0, "unlink": 0, "unlinkat": 1,
    "mknod": 0, "mknodat": 1, "chdir": 0, "chroot": 0, "truncate": 0,
    "chmod": 0, "fchmodat": 1, "fchmodat2": 1, "chown": 0, "lchown": 0, "fchownat": 1,
    "utimensat": 1, "execve": 0, "execveat": 1,
    "getxattr": 0, "lgetxattr": 0, "setxattr": 0, "lsetxattr": 0,
    "listxattr": 0, "llistxattr": 0, "removexattr": 0, "lremovexattr": 0,
}
# Syscalls with two paths: read_path needs an explicit arg.
MULTI_PATH_SYSCALLS = frozenset({"rename", "renameat", "renameat2", "link", "linkat",
                                 "symlink", "symlinkat"})


def _callable_of(h):
    """The function the supervisor calls for handler `h`; an `async def`
    handler is run to completion there."""
    import inspect
    fn = h.handle if isinstance(h, Handler) else h
    if inspect.iscoroutinefunction(fn):
        import asyncio

        def run(ctx, _fn=fn):
            return asyncio.run(_fn(ctx))
        return run
    return fn


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
        if isinstance(h, type):
            raise PolicyError(f"handlers: {h!r} is a class; pass an instance")
        fn = _callable_of(h)
        if not callable(fn):
            raise PolicyError(f"handlers: {h!r} is neither a Handler nor callable")
        policy = getattr(h, "on_exception", ExceptionPolicy.DENY_EPERM)
        if isinstance(policy, bool) or policy not in set(ExceptionPolicy):
            raise PolicyError(f"handlers: unsupported on_exception {policy!r}")
        if policy == ExceptionPolicy.CONTINUE:
            # A failing handler never lets its syscall through.
            policy = ExceptionPolicy.DENY_EPERM
        out.append((nr, (fn, ExceptionPolicy(policy))))
    return out  # type: ignore[return-value]  # (nr, (fn, policy)) pairs
