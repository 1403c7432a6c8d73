"""The path syscalls' arguments, decoded the same way for every handler
that serves them (cow.py, chroot.py): each spelling (the legacy call, its
`*at` form) gives the same tuple; and the two ways such a handler answers
on the child's behalf (an fd, bytes written where the kernel would)."""
from __future__ import annotations

import errno
import os

from .._kernel import fs, memory
from ..handler import NotifAction
from . import processes
from .answers import Answer, answering, c_int, u32

AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200

# syscall → the handler method of a path-serving feature (cow.py, chroot.py)
METHODS = {
    "open": "on_open", "openat": "on_open", "creat": "on_open",
    "stat": "on_stat", "lstat": "on_stat", "newfstatat": "on_stat", "statx": "on_statx",
    "access": "on_access", "faccessat": "on_access", "faccessat2": "on_access",
    "readlink": "on_readlink", "readlinkat": "on_readlink",
    "mkdir": "on_mkdir", "mkdirat": "on_mkdir",
    "unlink": "on_unlink", "unlinkat": "on_unlink", "rmdir": "on_unlink",
    "rename": "on_rename", "renameat": "on_rename", "renameat2": "on_rename",
    "symlink": "on_symlink", "symlinkat": "on_symlink",
    "link": "on_link", "linkat": "on_link",
    "mknod": "on_mknod", "mknodat": "on_mknod",
    "truncate": "on_truncate",
    "chdir": "on_chdir", "fchdir": "on_fchdir", "getcwd": "on_getcwd",
    "execve": "on_exec", "execveat": "on_exec",
    "getxattr": "on_getxattr", "lgetxattr": "on_getxattr",
    "listxattr": "on_getxattr", "llistxattr": "on_getxattr",
}


MAX_PATH = 4096   # PATH_MAX, with its NUL


def read_path(ctx, ptr: int) -> bytes:
    """The path argument at `ptr`, read once (the handler then acts on
    these bytes, never on a second read). EFAULT for NULL or unreadable
    memory, ENAMETOOLONG past PATH_MAX. Re-checked against the
    notification: bytes read after the task died could be another
    process's, once its pid is reused, and a change made from them would
    land before the answer failed."""
    if ptr == 0:
        raise Answer(errno.EFAULT)
    try:
        raw = memory.read_cstr(ctx.pid, ptr, MAX_PATH)
    except OSError as e:
        raise Answer(errno.ENAMETOOLONG if e.errno == errno.ENAMETOOLONG else errno.EFAULT) from None
    if ctx._valid is not None and not ctx._valid(ctx.id):
        raise Answer(errno.ESRCH)   # gone: the answer is not delivered anyway
    return raw


def handlers_of(obj, nrs: dict[str, int], extra: dict[str, str] | None = None) -> dict[str, object]:
    """name → handler for each path syscall of this arch that `obj` serves."""
    table = dict(METHODS, **(extra or {}))
    return {name: answering(getattr(obj, method)) for name, method in table.items() if name in nrs}


def open_args(name: str, a) -> tuple[int, int, int, int]:
    """(dirfd, path, flags, mode) of open, openat, creat."""
    if name == "creat":
        return fs.AT_FDCWD, a[0], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, u32(a[1])
    if name == "open":
        return fs.AT_FDCWD, a[0], u32(a[1]), u32(a[2])
    return c_int(a[0]), a[1], u32(a[2]), u32(a[3])


def stat_args(name: str, a) -> tuple[int, int, int, int]:
    """(dirfd, path, buffer, flags) of stat, lstat, newfstatat."""
    if name in ("stat", "lstat"):
        return fs.AT_FDCWD, a[0], a[1], AT_SYMLINK_NOFOLLOW if name == "lstat" else 0
    return c_int(a[0]), a[1], a[2], u32(a[3])


def access_args(name: str, a) -> tuple[int, int, int, int]:
    """(dirfd, path, mode, flags) of access, faccessat, faccessat2."""
    if name == "access":
        return fs.AT_FDCWD, a[0], u32(a[1]), 0
    return c_int(a[0]), a[1], u32(a[2]), u32(a[3]) if name == "faccessat2" else 0


def readlink_args(name: str, a) -> tuple[int, int, int, int]:
    """(dirfd, path, buffer, size) of readlink, readlinkat; EINVAL for a
    size that is not positive."""
    if name == "readlink":
        out = fs.AT_FDCWD, a[0], a[1], c_int(a[2])
    else:
        out = c_int(a[0]), a[1], a[2], c_int(a[3])
    if out[3] <= 0:
        raise Answer(errno.EINVAL)
    return out


def path_and_mode(name: str, legacy: str, a) -> tuple[int, int, int]:
    """(dirfd, path, mode) of `legacy`(path, mode) or its `*at` form."""
    if name == legacy:
        return fs.AT_FDCWD, a[0], u32(a[1])
    return c_int(a[0]), a[1], u32(a[2])


def unlink_args(name: str, a) -> tuple[int, int, bool]:
    """(dirfd, path, is rmdir) of unlink, unlinkat, rmdir."""
    if name == "unlinkat":
        flags = u32(a[2])
        if flags & ~AT_REMOVEDIR:
            raise Answer(errno.EINVAL)
        return c_int(a[0]), a[1], bool(flags & AT_REMOVEDIR)
    return fs.AT_FDCWD, a[0], name == "rmdir"


def two_paths(name: str, legacy: str, a) -> tuple[int, int, int, int, int]:
    """(old dirfd, old path, new dirfd, new path, flags) of rename/link and
    their `*at` forms (renameat has no flags argument)."""
    if name == legacy:
        return fs.AT_FDCWD, a[0], fs.AT_FDCWD, a[1], 0
    return c_int(a[0]), a[1], c_int(a[2]), a[3], u32(a[4]) if name != "renameat" else 0


def symlink_args(name: str, a) -> tuple[int, int, int]:
    """(target, dirfd, path) of symlink, symlinkat."""
    if name == "symlink":
        return a[0], fs.AT_FDCWD, a[1]
    return a[0], c_int(a[1]), a[2]


def exec_args(name: str, a) -> tuple[int, int, int]:
    """(dirfd, path, flags) of execve, execveat."""
    if name == "execve":
        return fs.AT_FDCWD, a[0], 0
    return c_int(a[0]), a[1], u32(a[4])


def inject(ctx, fd: int, flags: int):
    """Give the child `fd` as the call's result (close-on-exec as asked)."""
    if not ctx._valid(ctx.id):
        os.close(fd)
        return errno.ESRCH
    return NotifAction.inject_fd_send(fd, os.O_CLOEXEC if flags & os.O_CLOEXEC else 0)


def reply(ctx, buf: int, out: bytes, value: int):
    """Write `out` at the child's `buf`; the call returns `value`."""
    if not ctx.write(buf, out):
        return errno.EFAULT
    return NotifAction.returns(value)


def start_time(pid: int) -> int:
    try:
        return int(processes.stat_fields(pid)[19])
    except (OSError, ValueError, IndexError):
        return -1


def ppid(pid: int) -> int:
    try:
        return int(processes.stat_fields(pid)[1])
    except (OSError, ValueError, IndexError):
        return 0


def inherited(table: dict, tgid: int, me: int) -> tuple | None:
    """The (start time, value) entry of a per-process table (a virtual
    cwd) that holds for `tgid`: its own, else the nearest ancestor's below
    `me` (copied to `tgid`: a process started after its parent changed it
    inherited it). Entries of a reused pid (another start time) are
    dropped. None: no entry on the way."""
    pid = tgid
    for _ in range(64):
        ent = table.get(pid)
        if ent is not None:
            if ent[0] == start_time(pid):
                if pid != tgid:
                    table[tgid] = (start_time(tgid), ent[1])
                return ent
            del table[pid]
        pid = ppid(pid)
        if pid <= 1 or pid == me:
            return None
    return None
