"""chroot and fs_mount, as the sandbox sees them: every path syscall is
resolved in the virtual tree (chroot.VirtualRoot) and done here, on the
child's behalf; the child gets our fd (injected) or our answer. The
child's memory is only read (its path) and written where the kernel would
write (a stat buffer, a link target, getcwd's buffer): never to steer the
kernel (X2).

Why it is safe: Landlock grants the sandbox only the host directories
behind the virtual policy (plan.py, chroot.host_policy), so a call that
reaches the kernel unchanged can at worst do there what the policy
allows. Every open done here is checked first against the same
filesystem view (FsView, host paths), so the supervisor never opens for
the child what Landlock would refuse it.

The working directory is virtual, kept here per process (pid and start
time), inherited from the nearest ancestor; the kernel's cwd stays where
the run started it. /proc/self/{cwd,root,exe,fd/N,map_files/R} read back as virtual
paths, and so do the files /proc/<pid>/maps names; an fd on a host file
outside the tree reads back as `file:[inode]` (B6). /proc and the device files in chroot.DEVICES are the
host's (the sandbox's /proc view; devices opened after the same check).

A copy-on-write workdir in the tree (chroot_cow.py): names under it are
read from the branch's merged view by the tree's resolver, and the
changing handlers below hand them to the branch (`self.branch`).

exec: a program is executed from an fd (execveat AT_EMPTY_PATH, as the
run starts its command, see chroot.exec_plan) or through /proc/self/exe
(busybox's applets); an exec of another path would need the kernel to
look the name up in the tree, which only rewriting the child's memory
could make it do: refused (EACCES, recorded as a denial).
"""
from __future__ import annotations

import errno
import os
import stat
from typing import Any

from .. import chroot as vroot
from .._kernel import fs, landlock
from ..denials import Refused
from ..fsview import FsView, under
from ..handler import NotifAction
from . import pathcalls, processes
from .answers import Answer, c_int, caller_proc_path, u32
from .pathcalls import inject, reply, start_time
from .selfrestrict import SelfRestriction
from .cow import (AT_EMPTY_PATH, AT_EACCESS, AT_SYMLINK_FOLLOW, AT_SYMLINK_NOFOLLOW,
                  O_TMPFILE_BIT, O_WRITES, RENAME_EXCHANGE, RENAME_NOREPLACE,
                  RENAME_WHITEOUT, _may_access, _pack_stat, _pack_statx, _umask)

MAPS = (b"maps", b"smaps", b"numa_maps")


def _process_of(tid: int) -> int | None:
    """The process (thread group) of task `tid`; None if it is gone."""
    try:
        return processes.tgid(tid)
    except (OSError, ValueError):
        return None


class Device:
    """A host device file named by its virtual (= host) path."""
    __slots__ = ("path",)

    def __init__(self, path: bytes):
        self.path = path


class Chroot:
    def __init__(self, me: int, spec: vroot.RootSpec, cwd: bytes, view: FsView,
                 nrs: dict[str, int], arch: str, restriction: SelfRestriction | None = None):
        self.me = me
        # Every open and change inside the root is made here, with the
        # supervisor's rights: once the program adds a Landlock ruleset of
        # its own (which cannot be read back), they stop (selfrestrict.py).
        self.restriction = restriction if restriction is not None else SelfRestriction()
        self.root = vroot.VirtualRoot(spec)
        self.view = view
        self.nrs = nrs
        self.arch = arch
        self.cwd0 = vroot.parts_of(cwd)
        self.vcwd: dict[int, tuple[int, list[bytes]]] = {}
        self._names = {nr: name for name, nr in nrs.items()}
        self._grant_roots = [g[0] for g in view.grants]
        self.branch: Any = None   # chroot_cow.TreeBranch: a copy-on-write workdir in the tree

    def attach_branch(self, cow) -> None:
        """Serve the workdir of `cow` (a cow.Cow) from its branch."""
        from .chroot_cow import TreeBranch
        self.branch = TreeBranch(cow, self.root)

    def _cow(self, parts: list[bytes]) -> bytes | None:
        """The workdir-relative path of `parts` when the branch serves it."""
        return None if self.branch is None else self.branch.rel(parts)

    def close(self) -> None:
        self.root.close()

    def handlers(self) -> dict[str, object]:
        return pathcalls.handlers_of(self, self.nrs)

    def name_of(self, ctx) -> str:
        return self._names.get(ctx.syscall_nr, "")

    # -- the virtual cwd -------------------------------------------------------

    def cwd_of(self, tgid: int) -> list[bytes]:
        if not self.vcwd:
            return self.cwd0   # nobody changed directory yet
        ent = pathcalls.inherited(self.vcwd, tgid, self.me)
        return self.cwd0 if ent is None else ent[1]

    def set_cwd(self, tgid: int, parts: list[bytes]) -> None:
        # Processes that have not asked yet keep the cwd they inherited.
        try:
            for pid in processes.descendants(self.me):
                if pid not in self.vcwd:
                    self.vcwd[pid] = (start_time(pid), self.cwd_of(pid))
        except OSError:
            pass
        if len(self.vcwd) > 4096:   # prune the dead (A12)
            for pid, (start, _) in list(self.vcwd.items()):
                if start != start_time(pid):
                    del self.vcwd[pid]
        self.vcwd[tgid] = (start_time(tgid), parts)

    # -- finding paths ---------------------------------------------------------

    def _read_path(self, ctx, ptr: int) -> bytes:
        return pathcalls.read_path(ctx, ptr)

    def fd_parts(self, tid: int, fd: int) -> list[bytes]:
        """The virtual path of the child's fd (a directory it opened through
        us), or EACCES: an fd on something outside the tree is no base."""
        try:
            host = os.readlink(b"/proc/%d/fd/%d" % (tid, fd))
        except OSError:
            raise Answer(errno.EBADF) from None
        virtual = self.root.to_virtual(host) if host.startswith(b"/") else None
        if virtual is None or host.endswith(b" (deleted)"):
            raise Answer(Refused(errno.EACCES, "file", os.fsdecode(host)[:64], "",
                                 reason="a descriptor outside the chroot is no base for a path"))
        return vroot.parts_of(virtual)

    def _magic(self, raw: bytes, tgid: int, tid: int) -> tuple[int, bytes, list[bytes]] | None:
        """For /proc/<pid>/{root,cwd,exe,fd/N,map_files/R}[/...] of the caller or of
        another process of the sandbox: (pid, kind, the rest); None for
        any other /proc path (the host's /proc view, which refuses
        processes outside the sandbox)."""
        parts = vroot.parts_of(caller_proc_path(raw, tgid, tid))
        if len(parts) >= 4 and parts[2] == b"task":
            parts = parts[:2] + parts[4:]
        if len(parts) < 3 or not parts[1].isdigit():
            return None
        pid = _process_of(int(parts[1]))   # /proc/<tid> of a thread names its process's links too
        if pid is None:
            return None
        if parts[2] in (b"root", b"cwd", b"exe"):
            kind, rest = parts[2], parts[3:]
        elif parts[2] == b"fd" and len(parts) >= 4 and parts[3].isdigit():
            kind, rest = b"fd/" + parts[3], parts[4:]
        elif parts[2] == b"map_files" and len(parts) >= 4:
            kind, rest = b"map_files/" + parts[3], parts[4:]   # a mapped file: named like an fd's
        else:
            return None
        if pid != tgid:
            try:
                ours = pid in processes.descendants(self.me)
            except OSError:
                ours = False
            if not ours:
                return None
        return pid, kind, rest

    def locate(self, ctx, dirfd: int, ptr: int, follow: bool, empty_ok: bool = False):
        """(virtual parts, lstat or None) of the child's path; a Device;
        or Answer(None) when the kernel should see the call (/proc,
        the child's own fds, the stdio names)."""
        raw = self._read_path(ctx, ptr)
        tid = ctx.pid
        if not raw:
            if not empty_ok:
                raise Answer(errno.ENOENT)
            if dirfd != fs.AT_FDCWD:
                raise Answer(None)   # the child's own fd: the kernel acts on it
            start, raw = self.cwd_of(processes.tgid(tid)), b"."
        elif raw.startswith(b"/"):
            start = []
            norm = b"/" + b"/".join(vroot.lexical(raw))
            if norm in vroot.DEVICES and b".." not in raw:
                return Device(norm)
            if norm in (b"/dev/stdin", b"/dev/stdout", b"/dev/stderr", vroot.OWN_TTY) \
                    or norm.startswith(b"/dev/fd/"):
                raise Answer(None)   # the child's own fds and terminal, as the kernel finds them
            if vroot.parts_of(raw)[:1] == [b"proc"]:
                tgid = processes.tgid(tid)
                magic = self._magic(raw, tgid, tid)
                if magic is None:
                    raise Answer(None)   # the /proc view decides
                pid, kind, rest = magic
                if pid != tgid:
                    # another process's links: read back virtual, never walked
                    raise Answer(errno.EACCES)
                if kind == b"root":
                    start = []
                elif kind == b"cwd":
                    start = self.cwd_of(tgid)
                elif kind == b"exe" or not rest:
                    raise Answer(None)   # the magic link itself: the kernel's (Landlock decides)
                elif kind.startswith(b"map_files/"):
                    raise Answer(errno.ENOTDIR)   # a mapped file is no directory
                else:
                    start = self.fd_parts(tid, int(kind[3:]))
                raw = b"/".join(rest) or b"."
        elif dirfd == fs.AT_FDCWD:
            start = self.cwd_of(processes.tgid(tid))
        else:
            start = self.fd_parts(tid, dirfd)
        try:
            return self.root.walk(start, raw, follow)
        except OSError as e:
            raise Answer(e.errno or errno.ENOENT) from None

    # -- the policy -------------------------------------------------------------

    def _host(self, parts: list[bytes]) -> str:
        return os.fsdecode(self.root.host(parts))

    def _visible(self, parts: list[bytes]) -> bool:
        """May the sandbox see this name (stat, readlink, chdir)? Granted,
        or on the way to something granted."""
        host = self._host(parts)
        if self.view.access(host):
            return True
        return any(under(g, host) for g in self._grant_roots if g != host) \
            and not any(under(host, d) for d in self.view.denied)

    def _need(self, parts: list[bytes], bit: int, operation: str, field: str) -> None:
        if self.restriction.active:
            raise Answer(self.restriction.ERRNO)
        host = self._host(parts)
        if not self.view.access(host) & bit:
            virtual = os.fsdecode(vroot.vpath(parts))
            raise Answer(Refused(errno.EACCES, "file", virtual, operation, field, virtual))

    def _need_write(self, parts: list[bytes], operation: str) -> None:
        if self._cow(parts) is not None:
            # Written in the branch only: wherever in the workdir the
            # policy lets the command read (Landlock: read-only there).
            self._need(parts, landlock.FS_READ, operation, "fs_readable")
            return
        self._need(parts, landlock.FS_WRITE_FILE, operation, "fs_writable")

    def _existing(self, found, kind: int, wrong: int) -> list[bytes]:
        """The parts of a visible entry of type `kind`: ENOENT if absent,
        `wrong` if of another type (a device file included)."""
        if isinstance(found, Device):
            raise Answer(wrong)
        parts, st = found
        if st is None:
            raise Answer(errno.ENOENT)
        if stat.S_IFMT(st.st_mode) != kind:
            raise Answer(wrong)
        self._see(parts)
        return parts

    def _see(self, parts: list[bytes]) -> None:
        if not self._visible(parts):
            virtual = os.fsdecode(vroot.vpath(parts))
            raise Answer(Refused(errno.EACCES, "file", virtual, "", "fs_readable", virtual))

    # -- open ----------------------------------------------------------------------

    def on_open(self, ctx):
        dirfd, ptr, flags, mode = pathcalls.open_args(self.name_of(ctx), ctx.args)
        if flags & O_TMPFILE_BIT:
            return errno.EOPNOTSUPP
        if flags & os.O_PATH:
            flags &= os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        follow = not flags & os.O_NOFOLLOW and not (flags & os.O_CREAT and flags & os.O_EXCL)
        maps = self._maps(ctx, ptr, flags)
        if maps is not None:
            return maps
        found = self.locate(ctx, dirfd, ptr, follow)
        acc = flags & os.O_ACCMODE
        writes = bool(flags & O_WRITES) and not flags & os.O_PATH
        if isinstance(found, Device):
            if self.restriction.active:
                return self.restriction.ERRNO
            bits = (landlock.FS_READ_FILE if acc != os.O_WRONLY else 0) | \
                (landlock.FS_WRITE_FILE if acc != os.O_RDONLY else 0)
            if self.view.access(os.fsdecode(found.path)) & bits != bits or flags & os.O_PATH:
                return Refused(errno.EACCES, "file", os.fsdecode(found.path), "open",
                               "fs_writable" if writes else "fs_readable", os.fsdecode(found.path))
            try:
                fd = os.open(found.path, (flags & ~(os.O_CREAT | os.O_EXCL | os.O_CLOEXEC))
                             | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY)
            except OSError as e:
                return e.errno or errno.EIO
            return inject(ctx, fd, flags)
        parts, st = found
        if st is None:
            if not flags & os.O_CREAT:
                return errno.ENOENT
            self._need_write(parts, "create")
        else:
            if flags & os.O_CREAT and flags & os.O_EXCL:
                return errno.EEXIST
            if stat.S_ISLNK(st.st_mode):
                return errno.ELOOP   # O_NOFOLLOW on a symlink (O_PATH of a link: no fd to give)
            kind = stat.S_IFMT(st.st_mode)
            if kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
                return Refused(errno.EACCES, "file", os.fsdecode(vroot.vpath(parts)), "open",
                               reason="device nodes inside the chroot are not opened")
            if flags & os.O_DIRECTORY and kind != stat.S_IFDIR:
                return errno.ENOTDIR
            if kind == stat.S_IFDIR:
                if writes:
                    return errno.EISDIR
                self._need(parts, landlock.FS_READ_DIR, "open", "fs_readable")
            else:
                if acc != os.O_WRONLY or flags & os.O_PATH:
                    self._need(parts, landlock.FS_READ_FILE, "open", "fs_readable")
                if writes:
                    self._need_write(parts, "write")
        # An O_PATH fd cannot be injected (ADDFD refuses it): a read-only one.
        opened = flags if not flags & os.O_PATH else \
            (flags & (os.O_DIRECTORY | os.O_NOFOLLOW)) | os.O_RDONLY
        opened = (opened & ~os.O_CLOEXEC) | os.O_NOFOLLOW
        fifo = st is not None and stat.S_ISFIFO(st.st_mode)
        try:
            fd = self.root.open(parts, opened | (os.O_NONBLOCK if fifo else 0),
                                mode & ~_umask(ctx.pid) & 0o7777 if st is None else 0)
        except OSError as e:
            return e.errno or errno.EIO
        if fifo and not flags & os.O_NONBLOCK:
            import fcntl
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return inject(ctx, fd, flags)

    def _maps(self, ctx, ptr: int, flags: int):
        """/proc/<pid>/{maps,smaps,numa_maps} of a sandbox process: the
        kernel's text with each file named by its virtual path (or
        `file:[inode]`), never a host path. None: not one of those."""
        raw = self._read_path(ctx, ptr)
        if not raw.startswith(b"/proc/"):
            return None
        tgid = processes.tgid(ctx.pid)
        parts = vroot.parts_of(caller_proc_path(raw, tgid, ctx.pid))
        if len(parts) == 5 and parts[2] == b"task":
            parts = parts[:2] + parts[4:]
        if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in MAPS:
            return None
        pid = _process_of(int(parts[1]))
        if pid is None:
            return None
        try:
            ours = pid == tgid or pid in processes.descendants(self.me)
        except OSError:
            ours = False
        if not ours:
            return None   # the /proc view refuses it
        name = os.fsdecode(b"/proc/%d/%s" % (pid, parts[2]))
        if flags & O_WRITES or not self.view.may_read(name):
            return Refused(errno.EACCES, "file", os.fsdecode(raw), "open", "fs_readable", "/proc")
        try:
            with open(name, "rb") as f:
                text = f.read(64 << 20)
        except OSError as e:
            return e.errno or errno.EACCES
        out = []
        for line in text.splitlines(keepends=True):
            fields = line.split(None, 5)
            if len(fields) == 6 and b"-" in fields[0] and fields[5].startswith(b"/"):
                path = fields[5].rstrip(b"\n")
                start = len(line) - len(line.lstrip()) + line.lstrip().index(fields[5])
                line = line[:start] + self._mapped_name(path, fields[4]) + b"\n"
            out.append(line)
        return NotifAction.inject_bytes(b"".join(out), cloexec=bool(flags & os.O_CLOEXEC))

    def _mapped_name(self, host: bytes, inode: bytes) -> bytes:
        deleted = b" (deleted)" if host.endswith(b" (deleted)") else b""
        virtual = self.root.to_virtual(host[:len(host) - len(deleted)])
        if virtual is not None:
            return virtual + deleted
        return b"file:[%s]" % inode

    # -- stat, access, readlink, xattrs --------------------------------------------

    def _stat_of(self, ctx, dirfd: int, ptr: int, flags: int) -> os.stat_result:
        found = self.locate(ctx, dirfd, ptr, not flags & AT_SYMLINK_NOFOLLOW, bool(flags & AT_EMPTY_PATH))
        if isinstance(found, Device):
            try:
                return os.stat(found.path)
            except OSError as e:
                raise Answer(e.errno or errno.ENOENT) from None
        parts, st = found
        if st is None:
            raise Answer(errno.ENOENT)
        self._see(parts)
        return st

    def on_stat(self, ctx):
        dirfd, ptr, buf, flags = pathcalls.stat_args(self.name_of(ctx), ctx.args)
        st = self._stat_of(ctx, dirfd, ptr, flags)
        return reply(ctx, buf, _pack_stat(st, self.arch), 0)

    def on_statx(self, ctx):
        dirfd, ptr, flags, buf = c_int(ctx.args[0]), ctx.args[1], u32(ctx.args[2]), ctx.args[4]
        st = self._stat_of(ctx, dirfd, ptr, flags)
        return reply(ctx, buf, _pack_statx(st), 0)

    def on_access(self, ctx):
        dirfd, ptr, mode, flags = pathcalls.access_args(self.name_of(ctx), ctx.args)
        if mode & ~7:
            return errno.EINVAL
        found = self.locate(ctx, dirfd, ptr, not flags & AT_SYMLINK_NOFOLLOW, bool(flags & AT_EMPTY_PATH))
        if isinstance(found, Device):
            path = found.path
            st = os.stat(path)
            bits = self.view.access(os.fsdecode(path))
        else:
            parts, st = found
            if st is None:
                return errno.ENOENT
            self._see(parts)
            bits = self.view.access(self._host(parts))
        want = 0
        if mode & os.R_OK:
            want |= landlock.FS_READ_DIR if stat.S_ISDIR(st.st_mode) else landlock.FS_READ_FILE
        if mode & os.W_OK:
            want |= landlock.FS_WRITE_FILE
        if mode & os.X_OK:
            want |= landlock.FS_READ_DIR if stat.S_ISDIR(st.st_mode) else landlock.FS_EXECUTE
        if bits & want != want or not _may_access(ctx.pid, st, mode & 7, bool(flags & AT_EACCESS)):
            return errno.EACCES
        return NotifAction.returns(0)

    def on_readlink(self, ctx):
        dirfd, ptr, buf, size = pathcalls.readlink_args(self.name_of(ctx), ctx.args)
        raw = self._read_path(ctx, ptr)
        if raw.startswith(b"/") and vroot.parts_of(raw)[:1] == [b"proc"]:
            magic = self._magic(raw, processes.tgid(ctx.pid), ctx.pid)
            if magic is None:
                return None   # the /proc view decides
            if not magic[2]:
                target = self._magic_target(*magic[:2])
                return reply(ctx, buf, target[:size], len(target[:size]))
            # a path below /proc/self/{root,cwd,fd/N}: in the tree (locate)
        parts = self._existing(self.locate(ctx, dirfd, ptr, False, True), stat.S_IFLNK, errno.EINVAL)
        try:
            target = self.root.readlink(parts)
        except OSError as e:
            return e.errno or errno.EINVAL
        return reply(ctx, buf, target[:size], len(target[:size]))

    def _magic_target(self, pid: int, kind: bytes) -> bytes:
        """The virtual target of a sandbox process's /proc/<pid>/{cwd,
        root,exe,fd/N}."""
        if kind == b"root":
            return b"/"
        if kind == b"cwd":
            return vroot.vpath(self.cwd_of(pid))
        try:
            host = os.readlink(b"/proc/%d/%s" % (pid, kind))
        except OSError as e:
            raise Answer(e.errno or errno.ENOENT) from None
        return self.name_for(host, b"/proc/%d/%s" % (pid, kind))

    def name_for(self, host: bytes, link: bytes) -> bytes:
        """How a host path a magic link names reads inside the tree."""
        if not host.startswith(b"/"):
            return host   # pipe:[..], socket:[..], anon_inode:..
        deleted = b" (deleted)" if host.endswith(b" (deleted)") else b""
        virtual = self.root.to_virtual(host[:len(host) - len(deleted)])
        if virtual is not None:
            return virtual + deleted
        if host in vroot.DEVICES or host == vroot.OWN_TTY or host.startswith((b"/dev/pts/", b"/proc/")):
            return host
        try:
            ino = os.stat(link).st_ino
        except OSError:
            ino = 0
        return b"file:[%d]" % ino   # a host path outside the tree is never named (B6)

    def on_getxattr(self, ctx):
        name = self.name_of(ctx)
        found = self.locate(ctx, fs.AT_FDCWD, ctx.args[0], not name.startswith("l"))
        if isinstance(found, Device):
            return errno.ENODATA if name.endswith("getxattr") else NotifAction.returns(0)
        parts, st = found
        if st is None:
            return errno.ENOENT
        self._see(parts)
        rel = self._cow(parts)
        if stat.S_ISLNK(st.st_mode) or (rel is not None and self.branch.in_upper(rel)):
            # a branch keeps no extended attributes
            return errno.ENODATA if name.endswith("getxattr") else NotifAction.returns(0)
        try:
            fd = self.root.open(parts, os.O_PATH)
        except OSError as e:
            return e.errno or errno.EIO
        try:
            path = b"/proc/self/fd/%d" % fd
            if name.endswith("getxattr"):
                attr = self._read_path(ctx, ctx.args[1])
                buf, size = ctx.args[2], ctx.args[3]
                value = os.getxattr(path, attr)
            else:
                buf, size = ctx.args[1], ctx.args[2]
                value = b"".join(os.fsencode(n) + b"\0" for n in os.listxattr(path))
        except OSError as e:
            return e.errno or errno.EIO
        finally:
            os.close(fd)
        if size == 0:
            return NotifAction.returns(len(value))
        if size < len(value):
            return errno.ERANGE
        return reply(ctx, buf, value, len(value))

    # -- changes ----------------------------------------------------------------

    def _changing(self, ctx, dirfd: int, ptr: int, operation: str, exists: bool | None,
                  follow: bool = False):
        """Resolved target of a change, checked: (parts, lstat)."""
        found = self.locate(ctx, dirfd, ptr, follow)
        if isinstance(found, Device):
            raise Answer(errno.EPERM)
        parts, st = found
        if exists is True and st is None:
            raise Answer(errno.ENOENT)
        if exists is False and st is not None:
            raise Answer(errno.EEXIST)
        if not parts or self.root.is_anchor(parts) or self._cow(parts) == b"":
            raise Answer(errno.EBUSY)   # the root, a mount point, the workdir
        self._need_write(parts, operation)
        return parts, st

    @staticmethod
    def _do(fn, *args, **kw):
        try:
            fn(*args, **kw)
        except OSError as e:
            return e.errno or errno.EIO
        return NotifAction.returns(0)

    def _in_parent(self, parts: list[bytes], fn, *args, **kw):
        try:
            pfd = self.root.parent(parts)
        except OSError as e:
            return e.errno or errno.ENOENT
        try:
            return self._do(fn, *args, dir_fd=pfd, **kw)
        finally:
            os.close(pfd)

    def on_mkdir(self, ctx):
        dirfd, ptr, mode = pathcalls.path_and_mode(self.name_of(ctx), "mkdir", ctx.args)
        parts, _ = self._changing(ctx, dirfd, ptr, "mkdir", False)
        rel = self._cow(parts)
        if rel is not None:
            return self.branch.mkdir(rel, mode & ~_umask(ctx.pid) & 0o1777)
        return self._in_parent(parts, os.mkdir, parts[-1], mode & ~_umask(ctx.pid) & 0o1777)

    def on_mknod(self, ctx):
        dirfd, ptr, mode = pathcalls.path_and_mode(self.name_of(ctx), "mknod", ctx.args)
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            return errno.EPERM   # devices, FIFOs, sockets: never made for the sandbox (A7)
        parts, _ = self._changing(ctx, dirfd, ptr, "create", False)
        rel = self._cow(parts)
        if rel is not None:
            return self.branch.mknod(rel, mode & ~_umask(ctx.pid) & 0o7777)
        try:
            fd = self.root.open(parts, os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                                mode & ~_umask(ctx.pid) & 0o7777)
        except OSError as e:
            return e.errno or errno.EIO
        os.close(fd)
        return NotifAction.returns(0)

    def on_unlink(self, ctx):
        dirfd, ptr, rmdir = pathcalls.unlink_args(self.name_of(ctx), ctx.args)
        parts, _ = self._changing(ctx, dirfd, ptr, "rmdir" if rmdir else "unlink", True)
        rel = self._cow(parts)
        if rel is not None:
            return self.branch.unlink(rel, rmdir)
        return self._in_parent(parts, os.rmdir if rmdir else os.unlink, parts[-1])

    def on_rename(self, ctx):
        od, op, nd, np_, flags = pathcalls.two_paths(self.name_of(ctx), "rename", ctx.args)
        if flags & ~RENAME_NOREPLACE or flags & (RENAME_EXCHANGE | RENAME_WHITEOUT):
            return errno.EINVAL
        # The kernel's order: both parents, then the source's last name.
        old, ost = self._changing(ctx, od, op, "rename", None)
        new, nst = self._changing(ctx, nd, np_, "rename", None)
        if ost is None:
            return errno.ENOENT
        self._no_denied_below(old)
        if flags & RENAME_NOREPLACE and nst is not None:
            return errno.EEXIST
        return self._between(old, new, os.rename)

    def _no_denied_below(self, parts: list[bytes]) -> None:
        """A directory holding a denied path is not moved: the denial is by
        name, so under the new name its contents would be readable (what
        Landlock's refer check refuses outside a chroot)."""
        host = self._host(parts)
        inner = [d for d in self.view.denied if d != host and under(d, host)]
        if inner:
            virtual = os.fsdecode(vroot.vpath(parts))
            raise Answer(Refused(errno.EACCES, "file", virtual, "rename",
                                 reason="a directory holding an fs_denied path is not renamed"))

    def _between(self, old: list[bytes], new: list[bytes], fn, **kw):
        if self.root.anchor(old)[0] is not self.root.anchor(new)[0]:
            return errno.EXDEV   # across mounts, as the kernel says
        orel, nrel = self._cow(old), self._cow(new)
        if orel is not None or nrel is not None:
            # In the branch, both names; across the workdir's edge: EXDEV
            # (callers copy), so no second name joins a branch file to a
            # file outside it, or the reverse.
            if orel is None or nrel is None:
                return errno.EXDEV
            if fn is os.rename:
                return self.branch.rename(orel, nrel)
            return self.branch.link(orel, nrel)
        try:
            ofd = self.root.parent(old)
        except OSError as e:
            return e.errno or errno.ENOENT
        try:
            nfd = self.root.parent(new)
        except OSError as e:
            os.close(ofd)
            return e.errno or errno.ENOENT
        try:
            return self._do(fn, old[-1], new[-1], src_dir_fd=ofd, dst_dir_fd=nfd, **kw)
        finally:
            os.close(ofd)
            os.close(nfd)

    def on_symlink(self, ctx):
        tptr, dirfd, ptr = pathcalls.symlink_args(self.name_of(ctx), ctx.args)
        target = self._read_path(ctx, tptr)
        if not target:
            return errno.ENOENT
        parts, _ = self._changing(ctx, dirfd, ptr, "symlink", False)
        rel = self._cow(parts)
        if rel is not None:
            return self.branch.symlink(target, rel)
        # Kept verbatim: it is read in the tree when followed.
        return self._in_parent(parts, os.symlink, target, parts[-1])

    def on_link(self, ctx):
        od, op, nd, np_, flags = pathcalls.two_paths(self.name_of(ctx), "link", ctx.args)
        if flags & ~AT_SYMLINK_FOLLOW:
            return errno.EINVAL if flags & ~(AT_SYMLINK_FOLLOW | AT_EMPTY_PATH) else errno.ENOENT
        # Write on both names (B8): a second name of a read-only file would
        # be a writable alias of it.
        old, _ = self._changing(ctx, od, op, "link", True, bool(flags & AT_SYMLINK_FOLLOW))
        new, _ = self._changing(ctx, nd, np_, "link", False)
        return self._between(old, new, os.link, follow_symlinks=False)

    def on_truncate(self, ctx):
        length = ctx.args[1]
        if length >= 1 << 63:
            return errno.EINVAL
        parts, st = self._changing(ctx, fs.AT_FDCWD, ctx.args[0], "truncate", True, True)
        if stat.S_ISDIR(st.st_mode):
            return errno.EISDIR
        if not stat.S_ISREG(st.st_mode):
            return errno.EINVAL
        rel = self._cow(parts)
        if rel is not None:
            return self.branch.truncate(rel, length)
        try:
            fd = self.root.open(parts, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            return e.errno or errno.EIO
        try:
            return self._do(os.ftruncate, fd, length)
        finally:
            os.close(fd)

    # -- attributes.py's resolver -----------------------------------------------

    def path_fd(self, ctx, dirfd: int, ptr: int, flags: int) -> int:
        """Our O_PATH fd of what the child names (attributes.py checks it
        against the view by its host name and changes it)."""
        found = self.locate(ctx, dirfd, ptr, not flags & AT_SYMLINK_NOFOLLOW, bool(flags & AT_EMPTY_PATH))
        if isinstance(found, Device):
            return os.open(found.path, os.O_PATH | os.O_CLOEXEC)
        parts, st = found
        if st is None:
            raise Answer(errno.ENOENT)
        try:
            return self.root.open(parts, os.O_PATH | os.O_NOFOLLOW)
        except OSError as e:
            raise Answer(e.errno or errno.ENOENT) from None

    # -- the working directory -------------------------------------------------------

    def on_chdir(self, ctx):
        parts = self._existing(self.locate(ctx, fs.AT_FDCWD, ctx.args[0], True), stat.S_IFDIR, errno.ENOTDIR)
        self.set_cwd(processes.tgid(ctx.pid), parts)
        return NotifAction.returns(0)

    def on_fchdir(self, ctx):
        fd = c_int(ctx.args[0])
        parts = self.fd_parts(ctx.pid, fd)
        st = self.root.lstat(parts)
        if st is None:
            return errno.ENOENT
        if not stat.S_ISDIR(st.st_mode):
            return errno.ENOTDIR
        self.set_cwd(processes.tgid(ctx.pid), parts)
        return NotifAction.returns(0)

    def on_getcwd(self, ctx):
        buf, size = ctx.args[0], ctx.args[1]
        out = vroot.vpath(self.cwd_of(processes.tgid(ctx.pid))) + b"\0"
        if size < len(out):
            return errno.ERANGE
        return reply(ctx, buf, out, len(out))

    # -- exec --------------------------------------------------------------------------

    def on_exec(self, ctx):
        dirfd, ptr, flags = pathcalls.exec_args(self.name_of(ctx), ctx.args)
        raw = self._read_path(ctx, ptr)
        if not raw and flags & AT_EMPTY_PATH and dirfd != fs.AT_FDCWD:
            return None   # the file on the child's fd: the kernel runs it (Landlock: execute)
        if raw.startswith(b"/") and vroot.parts_of(raw)[:1] == [b"proc"]:
            tgid = processes.tgid(ctx.pid)
            magic = self._magic(raw, tgid, ctx.pid)
            if magic is not None and magic[0] == tgid and not magic[2] \
                    and magic[1] not in (b"root", b"cwd"):
                return None   # /proc/self/exe, /proc/self/fd/N: that very file
        found = self.locate(ctx, dirfd, ptr, not flags & AT_SYMLINK_NOFOLLOW)
        if isinstance(found, Device):
            return errno.EACCES
        parts, st = found
        if st is None:
            return errno.ENOENT
        virtual = os.fsdecode(vroot.vpath(parts))
        return Refused(errno.EACCES, "file", virtual, "exec",
                       reason="inside a chroot, a program runs from an fd (fexecve) or as "
                              "/proc/self/exe; exec of a path is not supported")
