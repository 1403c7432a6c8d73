"""Changes of a file's attributes (mode, owner, times, extended
attributes), done on the child's behalf after a policy check.

Why: Landlock has no right for these. A file the policy grants read-only
(or does not grant at all) could otherwise be chmod'ed, chown'ed (as
root), touched or given extended attributes by the sandbox, on the host,
for good. Here every such call is decided by the plan's filesystem view:
allowed only on what the sandbox may write (`FsView.may_set_attributes`,
times: `may_write`).

How it stays TOCTOU-safe: the child's path is read once and resolved
here (relative to the calling thread's cwd or dirfd, never through a
magic link), and the change is made on our own O_PATH fd of what was
checked; fd-based calls act on our copy of the child's fd. The kernel
never re-reads the child's memory.

Refused always (EPERM): set-user-ID bits, and set-group-ID on anything
but a directory (a sandbox must not leave behind a program that runs
with its user's rights for whoever starts it); mode, owner or extended
attributes of a device node. A child whose ids differ from the
supervisor's (it changed its uid, gid or groups), or that lacks a
capability the supervisor has effective (it has none: spare.py lowers
them), gets EPERM: acting for it with our rights would give it more than
its own.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct

from .._kernel import fs, memory, pidfd
from .._kernel.libc import raw_syscall
from ..denials import Refused
from ..fsview import FsView
from ..handler import NotifAction
from . import pathcalls, processes
from .answers import Answer, answering, c_int, caller_proc_path, u32

XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
_AT_FLAGS = AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH
_XATTR_FLAGS = 0x1 | 0x2  # XATTR_CREATE | XATTR_REPLACE


_OPERATIONS = {"mode": "chmod", "owner": "chown", "times": "utime", "xattr": ""}  # "": the syscall


def _name(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def _id(value: int) -> int:
    """A uid_t/gid_t argument: (uid_t)-1 means "leave unchanged"."""
    value = u32(value)
    return -1 if value == 0xFFFFFFFF else value


def _creds(status: bytes) -> tuple[tuple[bytes, ...], int]:
    """(uid, gid and groups lines, effective capabilities) of a task."""
    ids = tuple(line for line in status.splitlines() if line.startswith((b"Uid:", b"Gid:", b"Groups:")))
    eff = [line.split()[1] for line in status.splitlines() if line.startswith(b"CapEff:")]
    return ids, int(eff[0], 16) if eff else -1


class Attributes:
    def __init__(self, view: FsView, nrs: dict[str, int], cow=None, tree=None):
        self.view = view
        self.nrs = nrs
        self.cow = cow   # supervisor/cow.Cow: changes under its workdir go to the branch
        self.tree = tree  # supervisor/chroot.Chroot: paths are resolved in its virtual tree
        with open("/proc/self/status", "rb") as f:
            self.own_creds = _creds(f.read())
        self.handlers = {name: getattr(self, "on_" + name) for name in (
            "chmod", "fchmod", "fchmodat", "fchmodat2",
            "chown", "lchown", "fchown", "fchownat",
            "utime", "utimes", "futimesat", "utimensat",
            "setxattr", "lsetxattr", "fsetxattr", "setxattrat",
            "removexattr", "lremovexattr", "fremovexattr", "removexattrat")}

    # -- handlers: arguments → (target, operation) ---------------------------

    def on_chmod(self, ctx):
        return self._path_op(ctx, fs.AT_FDCWD, ctx.args[0], 0, "mode", self._chmod(ctx.args[1]))

    def on_fchmodat(self, ctx):
        return self._path_op(ctx, c_int(ctx.args[0]), ctx.args[1], 0, "mode", self._chmod(ctx.args[2]))

    def on_fchmodat2(self, ctx):
        return self._path_op(ctx, c_int(ctx.args[0]), ctx.args[1], u32(ctx.args[3]), "mode",
                             self._chmod(ctx.args[2]))

    def on_fchmod(self, ctx):
        mode = u32(ctx.args[1]) & 0o7777
        return self._fd_op(ctx, c_int(ctx.args[0]), "mode", mode, lambda fd: os.fchmod(fd, mode))

    def on_chown(self, ctx):
        return self._path_op(ctx, fs.AT_FDCWD, ctx.args[0], 0, "owner", self._chown(ctx.args[1], ctx.args[2]))

    def on_lchown(self, ctx):
        return self._path_op(ctx, fs.AT_FDCWD, ctx.args[0], AT_SYMLINK_NOFOLLOW, "owner",
                             self._chown(ctx.args[1], ctx.args[2]))

    def on_fchownat(self, ctx):
        return self._path_op(ctx, c_int(ctx.args[0]), ctx.args[1], u32(ctx.args[4]), "owner",
                             self._chown(ctx.args[2], ctx.args[3]))

    def on_fchown(self, ctx):
        uid, gid = _id(ctx.args[1]), _id(ctx.args[2])
        return self._fd_op(ctx, c_int(ctx.args[0]), "owner", None, lambda fd: os.fchown(fd, uid, gid))

    def on_utime(self, ctx):
        times = self._times(ctx, ctx.args[1], "=qq", 1)
        return self._path_op(ctx, fs.AT_FDCWD, ctx.args[0], 0, "times", self._utimens(times))

    def on_utimes(self, ctx):
        times = self._times(ctx, ctx.args[1], "=qqqq", 1000)
        return self._path_op(ctx, fs.AT_FDCWD, ctx.args[0], 0, "times", self._utimens(times))

    def on_futimesat(self, ctx):
        times = self._times(ctx, ctx.args[2], "=qqqq", 1000)
        return self._path_op(ctx, c_int(ctx.args[0]), ctx.args[1], 0, "times", self._utimens(times))

    def on_utimensat(self, ctx):
        times = self._times(ctx, ctx.args[2], "=qqqq", 0)
        flags = u32(ctx.args[3])
        if ctx.args[1] == 0:  # futimens: the fd itself
            if flags & ~AT_SYMLINK_NOFOLLOW:
                return errno.EINVAL
            return self._fd_op(ctx, c_int(ctx.args[0]), "times", None,
                               lambda fd: _utimensat(self.nrs, fd, None, times, 0))
        return self._path_op(ctx, c_int(ctx.args[0]), ctx.args[1], flags, "times", self._utimens(times))

    def on_setxattr(self, ctx, nofollow: int = 0):
        name, value, flags = self._xattr_value(ctx, ctx.args[1], ctx.args[2], ctx.args[3], ctx.args[4])
        return self._path_op(ctx, fs.AT_FDCWD, ctx.args[0], nofollow, "xattr",
                             self._setxattr(name, value, flags))

    def on_lsetxattr(self, ctx):
        return self.on_setxattr(ctx, AT_SYMLINK_NOFOLLOW)

    def on_fsetxattr(self, ctx):
        name, value, flags = self._xattr_value(ctx, ctx.args[1], ctx.args[2], ctx.args[3], ctx.args[4])
        return self._fd_op(ctx, c_int(ctx.args[0]), "xattr", None,
                           lambda fd: os.setxattr(fd, name, value, flags))

    def on_setxattrat(self, ctx):
        # setxattrat(dfd, path, at_flags, name, struct xattr_args *, size)
        if u32(ctx.args[5]) < 16:
            return errno.EINVAL
        raw = self._read(ctx, ctx.args[4], 16)
        value_ptr, size, flags = struct.unpack("=QII", raw)
        name, value, flags = self._xattr_value(ctx, ctx.args[3], value_ptr, size, flags)
        return self._path_op(ctx, c_int(ctx.args[0]), ctx.args[1], u32(ctx.args[2]), "xattr",
                             self._setxattr(name, value, flags))

    def on_removexattr(self, ctx, nofollow: int = 0):
        name = self._xattr_name(ctx, ctx.args[1])
        return self._path_op(ctx, fs.AT_FDCWD, ctx.args[0], nofollow, "xattr", self._removexattr(name))

    def on_lremovexattr(self, ctx):
        return self.on_removexattr(ctx, AT_SYMLINK_NOFOLLOW)

    def on_fremovexattr(self, ctx):
        name = self._xattr_name(ctx, ctx.args[1])
        return self._fd_op(ctx, c_int(ctx.args[0]), "xattr", None, lambda fd: os.removexattr(fd, name))

    def on_removexattrat(self, ctx):
        name = self._xattr_name(ctx, ctx.args[3])
        return self._path_op(ctx, c_int(ctx.args[0]), ctx.args[1], u32(ctx.args[2]), "xattr",
                             self._removexattr(name))

    # -- operations on our O_PATH fd of the checked target ---------------------

    def _chmod(self, mode_arg: int):
        mode = u32(mode_arg) & 0o7777
        return mode, lambda fd: os.chmod(f"/proc/self/fd/{fd}", mode)

    def _chown(self, uid_arg: int, gid_arg: int):
        uid, gid = _id(uid_arg), _id(gid_arg)
        return None, lambda fd: _fchownat_empty(self.nrs, fd, uid, gid), (uid, gid)

    def _utimens(self, times):
        return None, lambda fd: _utimensat(self.nrs, fd, b"", times, AT_EMPTY_PATH), times

    @staticmethod
    def _setxattr(name: bytes, value: bytes, flags: int):
        return None, lambda fd: os.setxattr(f"/proc/self/fd/{fd}", name, value, flags)

    @staticmethod
    def _removexattr(name: bytes):
        return None, lambda fd: os.removexattr(f"/proc/self/fd/{fd}", name)

    # -- the common path ---------------------------------------------------------

    def _path_op(self, ctx, dirfd: int, path_ptr: int, flags: int, what: str, op):
        arg, act = op[0], op[1]
        if flags & ~_AT_FLAGS:
            return errno.EINVAL
        try:
            if self.tree is not None and self.tree.branch is not None:
                verdict = self._in_tree_branch(ctx, dirfd, path_ptr, flags, what, arg, op)
                if verdict is not None:
                    return verdict
            elif self.cow is not None:
                verdict = self._in_branch(ctx, dirfd, path_ptr, flags, what, arg, op)
                if verdict is not None:
                    return verdict
            fd = self._resolve(ctx, dirfd, path_ptr, flags)
        except Answer as e:
            return e.errno
        except OSError as e:
            return e.errno or errno.EPERM
        return self._checked(ctx, fd, what, arg, act, path_based=True)

    def _in_branch(self, ctx, dirfd: int, path_ptr: int, flags: int, what: str, arg, op):
        """A path under the copy-on-write workdir changes in the branch:
        mode and times on the copied-up entry; the owner cannot change
        (the sandbox has no capability, and the branch keeps no owners);
        extended attributes are not kept by a branch. None: not there."""
        try:
            loc = self.cow.locate(ctx, dirfd, path_ptr, not flags & AT_SYMLINK_NOFOLLOW,
                                  bool(flags & AT_EMPTY_PATH))
        except Answer as a:
            return a.errno if a.errno is not None else None
        if loc is None:
            return None
        if loc.rel is None:
            return errno.EXDEV if loc.touched else None
        if not loc.rel:
            return errno.EACCES  # the workdir itself: as a granted directory
        try:
            self.cow.refuse_denied(loc.rel)   # an fs_denied path inside the workdir
        except Answer as a:
            return a.errno
        return self._branch_change(loc.rel, what, arg, op)

    def _in_tree_branch(self, ctx, dirfd: int, path_ptr: int, flags: int, what: str, arg, op):
        """_in_branch for a workdir inside a chroot: the path is resolved
        in the virtual tree; None: not under the workdir."""
        try:
            found = self.tree.locate(ctx, dirfd, path_ptr, not flags & AT_SYMLINK_NOFOLLOW,
                                     bool(flags & AT_EMPTY_PATH))
        except Answer as a:
            return a.errno   # None: one of the kernel's own names, see _resolve
        if not isinstance(found, tuple):
            return None   # a device file: the chroot's own path
        parts, st = found
        rel = self.tree.branch.rel(parts)
        if rel is None:
            return None
        if st is None:
            return errno.ENOENT
        if not rel:
            return errno.EACCES  # the workdir itself: as a granted directory
        self.tree._need_write(parts, _OPERATIONS[what])
        return self._branch_change(rel, what, arg, op)

    def _branch_change(self, rel: bytes, what: str, arg, op):
        try:
            st = self.cow.layer.lstat(rel)
            if what == "mode":
                if arg & stat.S_ISUID or (arg & stat.S_ISGID and not stat.S_ISDIR(st.st_mode)):
                    return errno.EPERM
                self.cow.chmod(rel, arg)
            elif what == "times":
                self.cow.utimens(rel, op[2])
            elif what == "owner":
                uid, gid = op[2]
                if uid not in (-1, st.st_uid) or gid not in (-1, st.st_gid):
                    return errno.EPERM
            else:
                return errno.EOPNOTSUPP
        except OSError as e:
            return e.errno or errno.EIO
        return NotifAction.returns(0)

    def _fd_op(self, ctx, child_fd: int, what: str, arg, act):
        try:
            fd = pidfd.getfd_of_task(ctx.pid, child_fd, processes.tgid)
        except ProcessLookupError:
            return errno.ESRCH
        except OSError as e:
            return e.errno or errno.EBADF
        return self._checked(ctx, fd, what, arg, act, path_based=False)

    def _checked(self, ctx, fd: int, what: str, arg, act, path_based: bool):
        """Check, then act on our fd `fd` (closed here); the call's answer."""
        try:
            try:
                st = os.fstat(fd)
                if path_based and stat.S_ISLNK(st.st_mode) and what in ("mode", "xattr"):
                    # The kernel refuses a symlink's mode (EOPNOTSUPP); its
                    # xattrs are refused here: /proc/self/fd would follow it.
                    return errno.EOPNOTSUPP if what == "mode" else errno.EPERM
                self._check(ctx, fd, st, what, arg)
                act(fd)
            finally:
                os.close(fd)
        except Answer as e:
            return e.errno
        except OSError as e:
            return e.errno or errno.EPERM
        return NotifAction.returns(0)

    def _check(self, ctx, fd: int, st: os.stat_result, what: str, mode) -> None:
        """Raise Answer unless the sandbox may change `what` of `fd`'s file."""
        if mode is not None and (mode & stat.S_ISUID
                                 or (mode & stat.S_ISGID and not stat.S_ISDIR(st.st_mode))):
            raise Answer(Refused(errno.EPERM, "file", _name(fd), _OPERATIONS[what],
                                  reason="set-user-ID and set-group-ID bits are never allowed"))
        if what != "times" and (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise Answer(errno.EPERM)
        real = os.readlink(f"/proc/self/fd/{fd}")
        if not real.startswith("/"):
            pass  # no name in any filesystem tree (pipe, socket, anon inode)
        elif self.cow is not None and real.startswith(os.fsdecode(self.cow.upper) + "/"):
            pass  # a file of the copy-on-write branch (an fd we handed out)
        elif real.endswith(" (deleted)"):
            if st.st_nlink:
                raise Answer(errno.EACCES)  # still named elsewhere: we cannot tell where
        elif not (self.view.may_write(real) if what == "times" else self.view.may_set_attributes(real)):
            raise Answer(Refused(errno.EACCES, "file", real, _OPERATIONS[what], "fs_writable", real))
        try:
            with open(f"/proc/{ctx.pid}/status", "rb") as f:
                creds = _creds(f.read())
        except OSError:
            raise Answer(errno.ESRCH) from None
        # Same ids, and no capability effective here that the child lacks
        # (the supervisor runs with none: spare.py lowers them).
        if creds[0] != self.own_creds[0] or self.own_creds[1] & ~creds[1]:
            raise Answer(errno.EPERM)
        if not ctx._valid(ctx.id):
            raise Answer(errno.ESRCH)

    def _resolve(self, ctx, dirfd: int, path_ptr: int, flags: int) -> int:
        """Our O_PATH fd of the file the child names, resolved as the
        kernel would for it but never through a magic link (other than
        the caller's own /proc/self/fd/N, taken as that fd)."""
        if self.tree is not None:
            try:
                return self.tree.path_fd(ctx, dirfd, path_ptr, flags)
            except Answer as a:
                if a.errno is not None:
                    raise
            # A name the chroot leaves to the kernel (the child's own fd,
            # /proc/self/fd/N, /proc, /dev/std*): never let the kernel
            # change it unchecked (Landlock has no right for modes, owners,
            # times): resolved as without a chroot, checked by its real path.
        raw = self._read_path(ctx, path_ptr)
        tid = ctx.pid
        tgid = processes.tgid(tid)
        follow = not flags & AT_SYMLINK_NOFOLLOW
        if not raw:
            if not flags & AT_EMPTY_PATH:
                raise Answer(errno.ENOENT)
            if dirfd == fs.AT_FDCWD:
                return os.open(f"/proc/{tgid}/task/{tid}/cwd", os.O_PATH | os.O_CLOEXEC)
            return self._child_fd(tid, dirfd)
        if raw.startswith(b"/"):
            raw = caller_proc_path(raw, tgid, tid)
            own = _own_fd(raw, tgid)
            if own is not None:
                # /proc/self/fd/N: that fd's file (a magic link, followed by
                # the kernel whatever the flags say)
                return self._reopen_path(self._child_fd(tid, own))
            anchor = -1
            base = fs.AT_FDCWD
        elif dirfd == fs.AT_FDCWD:
            anchor = base = os.open(f"/proc/{tgid}/task/{tid}/cwd",
                                    os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            anchor = base = self._child_fd(tid, dirfd)
        try:
            return fs.openat2(base, raw, os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW),
                              fs.RESOLVE_NO_MAGICLINKS)
        except OSError as e:
            raise Answer(errno.EACCES if e.errno == errno.ELOOP and b"/proc" in raw
                          else e.errno or errno.ENOENT) from None
        finally:
            if anchor >= 0:
                os.close(anchor)

    @staticmethod
    def _child_fd(tid: int, fd: int) -> int:
        try:
            return pidfd.getfd_of_task(tid, fd, processes.tgid)
        except ProcessLookupError:
            raise Answer(errno.ESRCH) from None
        except OSError as e:
            raise Answer(e.errno or errno.EBADF) from None

    @staticmethod
    def _reopen_path(fd: int) -> int:
        try:
            return os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
        finally:
            os.close(fd)

    # -- reading the child's arguments ---------------------------------------

    @staticmethod
    def _read(ctx, ptr: int, length: int) -> bytes:
        try:
            data = memory.read(ctx.pid, ptr, length)
        except OSError:
            raise Answer(errno.EFAULT) from None
        if len(data) != length:
            raise Answer(errno.EFAULT)
        return data

    @staticmethod
    def _read_path(ctx, ptr: int) -> bytes:
        return pathcalls.read_path(ctx, ptr)

    def _times(self, ctx, ptr: int, fmt: str, scale: int):
        """The child's times as ((atime s, ns), (mtime s, ns)), or None
        for "now". scale: 1 for utimbuf (seconds), 1000 for timeval (µs),
        0 for timespec (passed as is, UTIME_NOW/OMIT included)."""
        if ptr == 0:
            return None
        raw = self._read(ctx, ptr, struct.calcsize(fmt))
        values = struct.unpack(fmt, raw)
        if scale == 1:
            return ((values[0], 0), (values[1], 0))
        if scale == 1000:
            for usec in (values[1], values[3]):
                if not 0 <= usec < 1_000_000:
                    raise Answer(errno.EINVAL)
            return ((values[0], values[1] * 1000), (values[2], values[3] * 1000))
        return ((values[0], values[1]), (values[2], values[3]))

    def _xattr_name(self, ctx, ptr: int) -> bytes:
        try:
            name = memory.read_cstr(ctx.pid, ptr, XATTR_NAME_MAX + 1)
        except OSError:
            raise Answer(errno.ERANGE) from None
        if not name or len(name) > XATTR_NAME_MAX:
            raise Answer(errno.ERANGE)
        return name

    def _xattr_value(self, ctx, name_ptr: int, value_ptr: int, size: int, flags: int):
        flags = u32(flags)
        if flags & ~_XATTR_FLAGS:
            raise Answer(errno.EINVAL)
        size = size & 0xFFFFFFFFFFFFFFFF
        if size > XATTR_SIZE_MAX:
            raise Answer(errno.E2BIG)
        name = self._xattr_name(ctx, name_ptr)
        value = self._read(ctx, value_ptr, size) if size else b""
        return name, value, flags


def handlers(view: FsView, nrs: dict[str, int], cow=None, tree=None) -> dict[str, object]:
    """syscall name → handler, for every attribute-changing syscall."""
    attrs = Attributes(view, nrs, cow, tree)
    return {name: answering(fn) for name, fn in attrs.handlers.items()}


def _own_fd(path: bytes, tgid: int) -> int | None:
    """N if `path` is /proc/<caller>/fd/N (or .../task/<t>/fd/N)."""
    parts = [p for p in path.split(b"/") if p not in (b"", b".")]
    if len(parts) == 6 and parts[2] == b"task":
        parts = parts[:2] + parts[4:]
    if (len(parts) == 4 and parts[0] == b"proc" and parts[1] == str(tgid).encode()
            and parts[2] == b"fd" and parts[3].isdigit()):
        return int(parts[3])
    return None


class _Timespec2(ctypes.Structure):
    _fields_ = [("a_sec", ctypes.c_int64), ("a_nsec", ctypes.c_int64),
                ("m_sec", ctypes.c_int64), ("m_nsec", ctypes.c_int64)]


def _utimensat(nrs, fd: int, path: bytes | None, times, flags: int) -> None:
    ts = None if times is None else ctypes.byref(_Timespec2(times[0][0], times[0][1],
                                                            times[1][0], times[1][1]))
    res, err = raw_syscall(nrs["utimensat"], fd, None if path is None else ctypes.c_char_p(path),
                           ts, flags)
    if res < 0:
        raise OSError(err, os.strerror(err))


def _fchownat_empty(nrs, fd: int, uid: int, gid: int) -> None:
    res, err = raw_syscall(nrs["fchownat"], fd, ctypes.c_char_p(b""), uid & 0xFFFFFFFF,
                           gid & 0xFFFFFFFF, AT_EMPTY_PATH)
    if res < 0:
        raise OSError(err, os.strerror(err))
