"""The copy-on-write workdir, as the sandbox sees it: every path syscall
that names something under the workdir is answered from the merged view
(cow/layer.py: the branch's upper over the workdir, minus deletions).

Why this is safe: Landlock grants the workdir read-only (never write, see
plan.py), so whatever reaches the kernel unchanged (CONTINUE) can at
worst read the real workdir. Every change is made here, in the branch,
through the layer's openat2(RESOLVE_IN_ROOT) calls, and the child gets our
fd (injected) or our answer (a stat buffer, a listing, a link target).

How a path is found: the child's path is read once, joined to its dirfd or
cwd (a directory of the branch's storage counts as the workdir path it
stands for), and walked component by component: outside the workdir on
the host, inside it in the merged view (symlinks read from the view, `..`
and absolute links leaving it). A walk that saw nothing the kernel would
see differently (no upper entry, no deletion) lets read-only calls
through to the kernel (`touched` False): it finds the same lower file,
with Landlock's read right.

Left out (refused, never passed through wrongly): exec of a program that
exists only in the branch (EACCES), FIFOs, sockets and devices created
in the workdir (EPERM), O_TMPFILE in it (EOPNOTSUPP), rename exchange
(EINVAL), renames and links across the workdir's edge (EXDEV: callers
copy), a host path reached through an entry only the branch has (EACCES,
EXDEV for changes). A cwd the kernel cannot hold (a directory only the
branch has) is kept here: syscalls this module does not route resolve
relative paths against the kernel's (stale) cwd.
"""
from __future__ import annotations

import errno
import os
import signal
import stat
import struct

from .._kernel import fs, memory, pidfd
from ..cow.layer import Layer, SpecialFileError
from ..cow.layer import open_in as layer_open_in
from ..fsview import under
from ..handler import NotifAction
from . import pathcalls, processes
from .pathcalls import start_time as _start_time
from .answers import Answer, c_int, caller_proc_path, u32
from .selfrestrict import SelfRestriction

MAX_LINKS = 40
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
AT_EACCESS = 0x200
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
O_TMPFILE_BIT = os.O_TMPFILE & ~os.O_DIRECTORY
O_WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | O_TMPFILE_BIT


class Loc:
    """Where a path leads: `rel` under the workdir (bytes, b"" for its
    root) or `host` (a host path); `touched`: the walk used something only
    the branch knows (the kernel would walk differently)."""
    __slots__ = ("rel", "host", "touched")

    def __init__(self, rel: bytes | None, host: bytes | None, touched: bool):
        self.rel, self.host, self.touched = rel, host, touched


class Cow:
    def __init__(self, me: int, workdir: str, branch_dir: str, max_disk: int | None,
                 nrs: dict[str, int], arch: str, restriction: SelfRestriction | None = None,
                 denied: tuple[str, ...] = ()):
        self.me = me
        # Once the program adds a Landlock ruleset of its own, opens and
        # changes made here with the supervisor's rights stop (selfrestrict.py).
        self.restriction = restriction if restriction is not None else SelfRestriction()
        self.layer = Layer(workdir, branch_dir)
        self.workdir = os.fsencode(os.path.realpath(workdir))
        self.upper = os.fsencode(os.path.realpath(os.path.join(branch_dir, "upper")))
        # fs_denied paths inside the workdir (the plan's view), relative to
        # it. Landlock denies them on the lower tree; the branch's changes
        # are made here, with the supervisor's rights, so they are refused
        # here: no open, copy-up, link, rename or other change names one
        # (a link or rename would give the file a name nothing denies).
        self.denied = self._rels(denied)
        # policy_fn's deny_path list (policygate.PolicyGate.denied_paths),
        # when the run has one: denied by name at run time, the same way.
        self.dynamic_denied: list[str] | None = None
        self.storage = os.fsencode(os.path.realpath(branch_dir))
        self.max_disk = max_disk
        self.nrs = nrs
        self.arch = arch
        # tgid → (its start time, the workdir-relative cwd the kernel cannot
        # hold, or None: the kernel's cwd is the real one). The start time
        # tells a reused pid from the process the entry was made for.
        self.vcwd: dict[int, tuple[int, bytes | None]] = {}
        self.written: set[bytes] = set()      # upper files handed out for writing (max_disk)
        self.orphans: dict[int, int] = {}     # inode → our O_PATH fd of a written file unlinked since
        self.killed = False
        self.reason = ""
        self.TICK = 0.1
        # Host directories whose real path is outside the workdir and the
        # branch: paths directly in them are the kernel's without a probe.
        # Measured: a probe (open O_PATH + readlink + close) per path made
        # `python -c pass` with a workdir 3x slower. A directory replaced
        # by a symlink into the workdir later is missed: the kernel then
        # gives the lower file read-only (Landlock), never a write.
        self._outside: set[bytes] = set()
        self._names: dict[int, str] | None = None   # syscall number → name
        # The last merged listing served: ((tid, fd, dev, ino, the layer's
        # generation), its entries), for the calls that read on.
        self._listing: tuple[tuple, list[tuple[bytes, int, int]]] | None = None

    def close(self) -> None:
        while self.orphans:
            os.close(self.orphans.popitem()[1])
        self.layer.close()

    # -- the handlers' table ---------------------------------------------------

    def handlers(self) -> dict[str, object]:
        return pathcalls.handlers_of(self, self.nrs, {"getdents64": "on_getdents", "getdents": "on_getdents"})

    def name_of(self, ctx) -> str:
        # A dict, not a scan of the table: the scan was 6% of a git clone's
        # supervisor time (profiled).
        names = self._names
        if names is None:
            names = self._names = {nr: name for name, nr in self.nrs.items()}
        return names.get(ctx.syscall_nr, "")

    # -- finding paths ---------------------------------------------------------

    def _read_path(self, ctx, ptr: int) -> bytes:
        return pathcalls.read_path(ctx, ptr)

    @staticmethod
    def _empty_path(ctx, ptr: int) -> bool:
        """Is the path argument ""? One byte read, not a whole string: the
        question of every fstat(), measured ~40% cheaper. False when
        it cannot be read (the walk then answers EFAULT)."""
        try:
            return memory.read(ctx.pid, ptr, 1) == b"\0"
        except OSError:
            return False

    def _base(self, ctx, dirfd: int, tgid: int | None = None) -> tuple[bytes | None, bool]:
        """The directory a relative path starts from, as a host path (the
        branch's storage mapped back to the workdir), and whether that
        mapping was needed. None: not a directory we can name (the kernel
        decides)."""
        tid = ctx.pid
        if dirfd == fs.AT_FDCWD:
            if self.vcwd:
                virtual = self._vcwd(tgid if tgid is not None else processes.tgid(tid))
                if virtual is not None:
                    return self.workdir + (b"/" + virtual if virtual else b""), True
            link = f"/proc/{tid}/cwd"   # a thread's own entry: no tgid lookup needed
        else:
            link = f"/proc/{tid}/fd/{dirfd}"
        try:
            base = os.readlink(os.fsencode(link))
        except OSError:
            return None, False
        return self._unstore(base)

    def _unstore(self, path: bytes) -> tuple[bytes | None, bool]:
        if not path.startswith(b"/") or path.endswith(b" (deleted)"):
            return None, False
        if path == self.upper or path.startswith(self.upper + b"/"):
            return self.workdir + path[len(self.upper):], True
        if path == self.storage or path.startswith(self.storage + b"/"):
            return None, False  # the branch's own files are not the sandbox's
        return path, False

    def _vcwd(self, tgid: int) -> bytes | None:
        if not self.vcwd:
            return None
        # A process started after its parent changed into a directory the
        # kernel cannot hold inherits the parent's virtual cwd (the nearest
        # ancestor with an entry decides; None there: the kernel's).
        ent = pathcalls.inherited(self.vcwd, tgid, self.me)
        return None if ent is None else ent[1]

    def _set_vcwd(self, tgid: int, rel: bytes | None) -> None:
        if rel is None and not self.vcwd:
            return
        if len(self.vcwd) > 4096:   # prune the dead (A12)
            for pid, (start, _) in list(self.vcwd.items()):
                if start != _start_time(pid):
                    del self.vcwd[pid]
        self.vcwd[tgid] = (_start_time(tgid), rel)

    def _cwd_rel(self, tgid: int) -> bytes | None:
        """The workdir-relative cwd of a process, or None (elsewhere)."""
        virtual = self._vcwd(tgid)
        if virtual is not None:
            return virtual
        try:
            real = os.readlink(b"/proc/%d/cwd" % tgid)
        except OSError:
            return None
        path, _ = self._unstore(real)
        if path is None or not _lexically_under(path, self.workdir):
            return None
        return path[len(self.workdir):].lstrip(b"/")

    def _moved(self, old: bytes, new: bytes) -> None:
        """A directory moved in the branch: the processes whose cwd was in
        it follow it (the kernel's cwd is an inode, and the kernel still
        holds the lower one, or none)."""
        try:
            pids = processes.descendants(self.me)
        except OSError:
            return
        for pid in pids:
            cur = self._cwd_rel(pid)
            if cur is not None and (cur == old or cur.startswith(old + b"/")):
                self._set_vcwd(pid, new + cur[len(old):])

    def locate(self, ctx, dirfd: int, ptr: int, follow: bool, empty_ok: bool = False) -> Loc | None:
        """Where the child's path leads, or None when it cannot reach the
        workdir (the kernel decides)."""
        raw = self._read_path(ctx, ptr)
        if raw[:1] == b"/" and self._known_outside(raw):
            return None
        # The thread group only when needed: finding it reads /proc/<tid>/status (~30 µs).
        tgid = processes.tgid(ctx.pid) if self.vcwd or b"proc" in raw else None
        if not raw:
            if not empty_ok:
                raise Answer(errno.ENOENT)
            base, mapped = self._base(ctx, dirfd, tgid)
            if base is None:
                return None
            return self._walk(base, False, mapped, tgid or 0, ctx.pid)
        if raw.startswith(b"/"):
            start, mapped = raw, False
        else:
            base, mapped = self._base(ctx, dirfd, tgid)
            if base is None:
                return None
            start = base + b"/" + raw
        if not mapped and (self._known_outside(start)
                           or not self._may_reach(start, follow, tgid or ctx.pid)):
            return None
        loc = self._walk(start, follow, mapped, tgid or 0, ctx.pid)
        if loc.rel is None and not loc.touched:
            return None  # the kernel walks it the same way
        return loc

    def _known_outside(self, path: bytes) -> bool:
        """Is absolute `path` directly in a directory already probed to be
        outside? Never for /proc (magic links), `.`/`..` or the workdir."""
        head, _, leaf = path.rpartition(b"/")
        if not head or leaf in (b".", b"..") or head.startswith(b"/proc") or b"/." in head \
                or b"//" in head:
            return False
        return head in self._outside and not _lexically_under(path, self.workdir) \
            and not _lexically_under(path, self.storage)

    def _learn_outside(self, path: bytes) -> None:
        head = path.rpartition(b"/")[0]
        if not head or head.startswith(b"/proc") or b"/." in head or b"//" in head \
                or head in self._outside:
            return
        try:
            fd = os.open(head, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            real = os.readlink(b"/proc/self/fd/%d" % fd)
        except OSError:
            return
        finally:
            os.close(fd)
        if not (_lexically_under(real, self.workdir) or _lexically_under(real, self.storage)
                or _lexically_under(self.workdir, real)):
            if len(self._outside) >= 4096:
                self._outside.clear()
            self._outside.add(head)

    def _may_reach(self, path: bytes, follow: bool, tgid: int) -> bool:
        """Can `path` lead into the workdir (or the branch)? Cheap: the
        kernel resolves it (or its deepest existing ancestor) on the host."""
        if _lexically_under(path, self.workdir) or _lexically_under(path, self.storage):
            return True
        path = caller_proc_path(path, tgid, tgid)
        flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        probe = path
        for _ in range(64):
            try:
                fd = os.open(probe, flags)
            except OSError:
                if probe in (b"/", b""):
                    return False
                probe = probe.rsplit(b"/", 1)[0] or b"/"
                flags = os.O_PATH | os.O_CLOEXEC
                continue
            try:
                real = os.readlink(b"/proc/self/fd/%d" % fd)
            except OSError:
                return True  # cannot tell: walk it
            finally:
                os.close(fd)
            inside = _lexically_under(real, self.workdir) or _lexically_under(real, self.storage)
            if not inside:
                self._learn_outside(path)
            return inside
        return True

    def _walk(self, path: bytes, follow: bool, touched: bool, tgid: int = 0, tid: int = 0) -> Loc:
        host: list[bytes] = []
        cow: list[bytes] | None = None
        if _lexically_under(path, self.workdir):
            # The workdir's path is canonical (no symlink in it): start there.
            cow, path = [], path[len(self.workdir):]
        todo = [c for c in path.split(b"/") if c not in (b"", b".")]
        todo.reverse()   # a stack: the next component is todo[-1]
        links = 0
        wd = [c for c in self.workdir.split(b"/") if c]
        while todo:
            c = todo.pop()
            if c in (b"", b"."):
                continue
            last = not todo
            if c == b"..":
                if cow is None:
                    if host:
                        host.pop()
                elif cow:
                    cow.pop()
                else:
                    cow, host = None, wd[:-1]
                continue
            if cow is not None:
                rel = b"/".join(cow + [c])
                try:
                    where, kind = self.layer.kind(rel)
                except OSError as e:
                    raise Answer(e.errno or errno.ENOENT) from None
                if where != "lower" and not touched and not (
                        where == "upper" and kind == stat.S_IFDIR and not last
                        and self.layer.lower_is_dir(rel)):
                    touched = True   # the branch has it, or hides it, or nobody has it
                # A directory copied up (a file was made in it) that the
                # workdir has as a directory too is walked through by the
                # kernel to the same entries: each one below is judged on
                # its own, and the one reached is checked after the walk.
                # Measured: without this, every source file of a package
                # that got a __pycache__ was stat-ed and opened (an fd
                # injected) here during a COW compileall.
                if where is None:
                    if last:
                        cow.append(c)
                        break
                    raise Answer(errno.ENOENT)
                if kind == stat.S_IFLNK and (follow or not last):
                    links += 1
                    if links > MAX_LINKS:
                        raise Answer(errno.ELOOP)
                    target = self.layer.readlink(rel)
                    if target.startswith(b"/"):
                        cow, host = None, []
                    todo.extend(reversed([t for t in target.split(b"/") if t]))
                    continue
                if not last and kind != stat.S_IFDIR:
                    raise Answer(errno.ENOTDIR)
                cow.append(c)
                continue
            # on the host
            if host == [b"proc"] and c in (b"self", b"thread-self"):
                tgid = tgid or processes.tgid(tid)
                # /proc/self names the caller, not us
                repl = [str(tgid).encode()] if c == b"self" else \
                    [str(tgid).encode(), b"task", str(tid).encode()]
                todo.extend(reversed(repl))
                continue
            here = b"/" + b"/".join(host + [c])
            if here == self.workdir:
                cow, host = [], []
                continue
            if here == self.upper:
                cow, host, touched = [], [], True
                continue
            if _lexically_under(here, self.storage):
                raise Answer(errno.EACCES)  # the branch's own files
            try:
                st = os.lstat(here)
            except FileNotFoundError:
                if last:
                    host.append(c)
                    break
                raise Answer(errno.ENOENT) from None
            except OSError as e:
                raise Answer(e.errno or errno.EACCES) from None
            if stat.S_ISLNK(st.st_mode) and (follow or not last):
                links += 1
                if links > MAX_LINKS:
                    raise Answer(errno.ELOOP)
                try:
                    target = os.readlink(here)
                except OSError as e:
                    raise Answer(e.errno or errno.EACCES) from None
                if not target.startswith(b"/"):
                    if here.startswith(b"/proc/"):
                        raise Answer(None)  # a magic link to no path (pipe:, socket:): the kernel's
                else:
                    mapped, was = self._unstore(target)
                    if mapped is None:
                        raise Answer(None)
                    touched = touched or was
                    target = mapped
                    host = []
                todo.extend(reversed([t for t in target.split(b"/") if t]))
                continue
            if not last and not stat.S_ISDIR(st.st_mode):
                raise Answer(errno.ENOTDIR)
            host.append(c)
        if cow is not None:
            rel = b"/".join(cow)
            if rel and not touched:
                try:
                    touched = self.layer.kind(rel)[0] != "lower"   # (`a/.`, `a/b/..`)
                except OSError as e:
                    raise Answer(e.errno or errno.ENOENT) from None
            return Loc(rel, None, touched)
        return Loc(None, b"/" + b"/".join(host), touched)

    # -- open --------------------------------------------------------------------

    def on_open(self, ctx):
        dirfd, ptr, flags, mode = pathcalls.open_args(self.name_of(ctx), ctx.args)
        if flags & os.O_PATH and not flags & O_TMPFILE_BIT:
            # the kernel ignores every other flag with O_PATH (openat2 would
            # refuse them: EINVAL)
            flags &= os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        # A final symlink is followed unless O_NOFOLLOW, or O_CREAT|O_EXCL (EEXIST)
        follow = not flags & os.O_NOFOLLOW and not (flags & os.O_CREAT and flags & os.O_EXCL)
        loc = self.locate(ctx, dirfd, ptr, follow)
        if loc is None:
            return None
        self.refuse_denied(loc.rel)
        writes = bool(flags & O_WRITES)
        if loc.rel is None:
            return self._open_host(loc, flags, writes)
        if flags & O_TMPFILE_BIT:
            return errno.EOPNOTSUPP
        if not writes and not loc.touched:
            return None  # the lower file itself, with Landlock's read right
        self._on_behalf()
        if not loc.rel:
            if writes:
                return errno.EISDIR
            return None if not loc.touched else self._inject(ctx, self._open_merged(b"", flags, mode), flags)
        if writes and self._over_quota():
            return errno.ENOSPC
        # An O_PATH fd cannot be injected (seccomp's ADDFD takes no O_PATH
        # file): the child gets a read-only one (a symlink: ELOOP, as
        # O_NOFOLLOW without O_PATH).
        opened = flags if not flags & os.O_PATH else \
            (flags & (os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)) | os.O_RDONLY
        # The umask (a /proc read, ~40 us) only matters to a file made now.
        fd = self._open_merged(loc.rel, opened,
                               mode & ~_umask(ctx.pid) & 0o7777 if flags & os.O_CREAT else 0)
        if writes:
            self.written.add(loc.rel)
        return self._inject(ctx, fd, flags)

    def _open_merged(self, rel: bytes, flags: int, mode: int) -> int:
        keep = flags & ~(os.O_CLOEXEC | os.O_NOCTTY)
        try:
            if not rel:
                return os.open(self.workdir, (flags & (os.O_DIRECTORY | os.O_NONBLOCK)) | os.O_RDONLY
                               | os.O_CLOEXEC)
            return self.layer.open(rel, keep | os.O_CLOEXEC, mode)
        except SpecialFileError:
            raise Answer(errno.EPERM) from None
        except OSError as e:
            raise Answer(e.errno or errno.EIO) from None
        except ValueError:
            raise Answer(errno.EINVAL) from None

    @staticmethod
    def _open_host(loc: Loc, flags: int, writes: bool):
        # A host file reached through an entry only the branch has: the
        # kernel cannot follow the child's path, and opening it here would
        # need Landlock's decision, which only the kernel makes. Refused.
        return errno.EXDEV if writes else errno.EACCES

    def _inject(self, ctx, fd: int, flags: int):
        return pathcalls.inject(ctx, fd, flags)

    def _over_quota(self) -> bool:
        if self.max_disk is None:
            return False
        return self._used() >= self.max_disk   # bytes written through held fds count too (A15)

    def _hold(self, rel: bytes) -> list[int]:
        """Before `rel` may leave the upper: our fds on the files at or
        under it that the child may still write through (max_disk)."""
        if self.max_disk is None:
            return []
        fds = []
        for w in self.written:
            if w == rel or w.startswith(rel + b"/"):
                try:
                    fds.append(layer_open_in(self.layer.upper, w, os.O_PATH))
                except (OSError, ValueError):
                    pass
        return fds

    def _orphaned(self, fds: list[int], res):
        """After the change: a held file that lost its last name is still
        measured (writes through the child's fd keep filling the disk)."""
        for fd in fds:
            try:
                st = os.fstat(fd)
            except OSError:
                st = None
            if st is not None and st.st_nlink == 0 and st.st_ino not in self.orphans:
                self.orphans[st.st_ino] = fd
            else:
                os.close(fd)
        return res

    def _used(self) -> int:
        """Bytes of the branch: the upper's files, re-measured, and the
        unlinked files written through fds the child may hold."""
        self._remeasure()
        extra = 0
        for fd in self.orphans.values():
            try:
                extra += os.fstat(fd).st_size
            except OSError:
                pass
        return self.layer.bytes_used() + extra

    def _remeasure(self) -> None:
        for rel in list(self.written):
            try:
                self.layer.refresh(rel)
            except (OSError, ValueError):
                self.written.discard(rel)

    # -- stat, access, readlink ------------------------------------------------

    def on_stat(self, ctx):
        dirfd, ptr, buf, flags = pathcalls.stat_args(self.name_of(ctx), ctx.args)
        st = self._stat_of(ctx, dirfd, ptr, flags)
        if st is None:
            return None
        return pathcalls.reply(ctx, buf, _pack_stat(st, self.arch), 0)

    def on_statx(self, ctx):
        dirfd, ptr, flags, buf = c_int(ctx.args[0]), ctx.args[1], u32(ctx.args[2]), ctx.args[4]
        st = self._stat_of(ctx, dirfd, ptr, flags)
        if st is None:
            return None
        return pathcalls.reply(ctx, buf, _pack_statx(st), 0)

    def _stat_of(self, ctx, dirfd: int, ptr: int, flags: int) -> os.stat_result | None:
        if ptr == 0:
            return None
        if flags & AT_EMPTY_PATH and dirfd >= 0 and self._empty_path(ctx, ptr):
            # fstat(fd) (glibc's spelling): the kernel describes the open
            # file itself, which is what the fd reads and writes: an upper
            # file we injected (the same inode the merged view names) or a
            # lower one the kernel opened read-only. Nothing to answer. A
            # cwd (AT_FDCWD) may be one only we hold: walked below.
            # Measured in a loop of fstat calls: 76 -> 32-45 us a call;
            # 20-40% of the stats of a COW compileall or git clone are these.
            return None
        loc = self.locate(ctx, dirfd, ptr, not flags & AT_SYMLINK_NOFOLLOW, bool(flags & AT_EMPTY_PATH))
        if loc is None or not loc.touched:
            return None
        if loc.rel is None:
            try:
                return os.lstat(loc.host) if loc.host is not None else None
            except OSError as e:
                raise Answer(e.errno or errno.ENOENT) from None
        try:
            return self.layer.lstat(loc.rel) if loc.rel else os.stat(self.workdir)
        except OSError as e:
            raise Answer(e.errno or errno.ENOENT) from None

    def on_access(self, ctx):
        dirfd, ptr, mode, flags = pathcalls.access_args(self.name_of(ctx), ctx.args)
        loc = self.locate(ctx, dirfd, ptr, not flags & AT_SYMLINK_NOFOLLOW, bool(flags & AT_EMPTY_PATH))
        if loc is None:
            return None
        if loc.rel is None:
            return None if not loc.touched else errno.EACCES
        if not loc.touched and not mode & os.W_OK:
            return None
        try:
            st = self.layer.lstat(loc.rel) if loc.rel else os.stat(self.workdir)
        except OSError as e:
            return e.errno or errno.ENOENT
        # The branch is writable: W_OK holds as far as the mode bits say
        # (the kernel's check, with the caller's real or effective ids).
        if not _may_access(ctx.pid, st, mode & 7, bool(flags & AT_EACCESS)):
            return errno.EACCES
        return NotifAction.returns(0)

    def on_readlink(self, ctx):
        dirfd, ptr, buf, size = pathcalls.readlink_args(self.name_of(ctx), ctx.args)
        own = self._own_magic_link(ctx, ptr)
        if own is not None:
            return own if isinstance(own, int) else self._reply(ctx, buf, own[:size])
        loc = self.locate(ctx, dirfd, ptr, False, True)
        if loc is None or not loc.touched:
            return None
        if loc.rel is None:
            try:
                target = os.readlink(loc.host) if loc.host is not None else b""
            except OSError as e:
                return e.errno or errno.EINVAL
        else:
            try:
                target = self.layer.readlink(loc.rel) if loc.rel else b""
            except OSError as e:
                return e.errno or errno.EINVAL
            if not loc.rel:
                return errno.EINVAL
        return self._reply(ctx, buf, target[:size])

    @staticmethod
    def _reply(ctx, buf: int, out: bytes):
        return pathcalls.reply(ctx, buf, out, len(out))

    def _own_magic_link(self, ctx, ptr: int) -> bytes | int | None:
        """readlink of the caller's own /proc/<self>/cwd or fd/N: what the
        kernel says, with the branch's storage named as the workdir path it
        stands for (the storage's place is not the sandbox's business) and
        a cwd only the supervisor holds given as it is. None: not one."""
        raw = self._read_path(ctx, ptr)
        if not raw.startswith(b"/proc/"):
            return None
        tgid = processes.tgid(ctx.pid)
        parts = [p for p in caller_proc_path(raw, tgid, ctx.pid).split(b"/") if p not in (b"", b".")]
        if len(parts) >= 4 and parts[2] == b"task":
            parts = parts[:2] + parts[4:]
        if len(parts) < 3 or parts[0] != b"proc" or parts[1] != str(tgid).encode():
            return None
        if parts[2:] == [b"cwd"]:
            virtual = self._vcwd(tgid)
            if virtual is not None:
                return self.workdir + (b"/" + virtual if virtual else b"")
        elif not (len(parts) == 4 and parts[2] == b"fd" and parts[3].isdigit()):
            return None
        try:
            target = os.readlink(b"/proc/%d/%s" % (tgid, b"/".join(parts[2:])))
        except OSError as e:
            return e.errno or errno.ENOENT
        suffix = b" (deleted)" if target.endswith(b" (deleted)") else b""
        mapped, was = self._unstore(target[:len(target) - len(suffix)])
        return mapped + suffix if was and mapped is not None else target

    def on_getxattr(self, ctx):
        """A branch keeps no extended attributes: an entry the kernel
        cannot see has none (ENODATA, an empty list)."""
        name = self.name_of(ctx)
        loc = self.locate(ctx, fs.AT_FDCWD, ctx.args[0], not name.startswith("l"))
        if loc is None or not loc.touched:
            return None
        if loc.rel is None:
            return errno.EACCES
        try:
            self.layer.lstat(loc.rel) if loc.rel else None
        except OSError as e:
            return e.errno or errno.ENOENT
        return errno.ENODATA if name.endswith("getxattr") else NotifAction.returns(0)

    # -- listings ------------------------------------------------------------------

    def on_getdents(self, ctx):
        fd_num, buf, count = u32(ctx.args[0]), ctx.args[1], u32(ctx.args[2])
        tgid = processes.tgid(ctx.pid)
        try:
            where = os.readlink(b"/proc/%d/task/%d/fd/%d" % (tgid, ctx.pid, fd_num))
        except OSError:
            return None
        path, _mapped = self._unstore(where)
        if path is None or not _lexically_under(path, self.workdir):
            return None
        rel = path[len(self.workdir):].lstrip(b"/")
        if ctx.syscall_nr != self.nrs.get("getdents64"):
            return errno.ENOSYS  # the old getdents: libc uses getdents64
        try:
            fd = pidfd.getfd_of_task(ctx.pid, fd_num, processes.tgid)
        except (OSError, ProcessLookupError):
            return errno.EBADF
        try:
            pos = os.lseek(fd, 0, os.SEEK_CUR)
            ident = os.fstat(fd)
            key = (ctx.pid, fd_num, ident.st_dev, ident.st_ino, self.layer.generation)
            if pos and self._listing is not None and self._listing[0] == key:
                # The same directory read on through the same fd, and the
                # branch unchanged since: the listing made for the first
                # call (a reader's last call, the one that finds the end,
                # made it all over again).
                entries = self._listing[1]
            else:
                try:
                    listed = self.layer.entries(rel)
                except OSError as e:
                    return e.errno or errno.ENOENT
                # d_ino as stat gives it for the same merged entry (programs match them)
                entries = [(b".", stat.S_IFDIR, self._ino(rel)),
                           (b"..", stat.S_IFDIR, self._ino(rel.rpartition(b"/")[0]) if rel else 1)]
                entries += listed
                self._listing = (key, entries)
            out = bytearray()
            i = pos
            while i < len(entries):
                rec = _dirent(*entries[i], i + 1)
                if len(out) + len(rec) > count:
                    if not out:
                        return errno.EINVAL
                    break
                out += rec
                i += 1
            os.lseek(fd, i, os.SEEK_SET)
        finally:
            os.close(fd)
        if out and not ctx.write(buf, bytes(out)):
            return errno.EFAULT
        return NotifAction.returns(len(out))

    def _ino(self, rel: bytes) -> int:
        try:
            return self.layer.lstat(rel).st_ino
        except OSError:
            return 1

    # -- changes ----------------------------------------------------------------

    def _changing(self, ctx, dirfd: int, ptr: int, follow: bool = False) -> Loc | None:
        """The target of a call that changes the tree: None (the kernel
        decides: Landlock), or a Loc in the workdir."""
        loc = self.locate(ctx, dirfd, ptr, follow)
        if loc is None:
            return None
        if loc.rel is None:
            raise Answer(errno.EXDEV)
        if not loc.rel:
            raise Answer(errno.EBUSY)  # the workdir itself
        self.refuse_denied(loc.rel)
        self._on_behalf()
        return loc

    def _rels(self, paths) -> tuple[bytes, ...]:
        """The canonical host `paths` inside the workdir, relative to it."""
        wd = os.fsdecode(self.workdir)
        return tuple(os.fsencode(os.path.relpath(d, wd)) for d in paths if d != wd and under(d, wd))

    def refuse_denied(self, rel: bytes | None, below: bool = False) -> None:
        """EACCES for a name at or under an fs_denied or deny_path path
        (`below`: or a directory holding one, for renames)."""
        if rel is None:
            return
        denied = self.denied + (self._rels(self.dynamic_denied) if self.dynamic_denied else ())
        for d in denied:
            if _lexically_under(rel, d) or (below and (not rel or _lexically_under(d, rel))):
                raise Answer(errno.EACCES)

    def _on_behalf(self) -> None:
        """Refuse what would be done with the supervisor's rights once the
        program restricted itself: its own ruleset cannot be read back."""
        if self.restriction.active:
            raise Answer(self.restriction.ERRNO)

    def _path_and_mode(self, ctx, legacy: str) -> tuple[int, int, int]:
        """(dirfd, path pointer, mode) of `legacy`(path, mode) or its
        `*at`(dirfd, path, mode) spelling."""
        return pathcalls.path_and_mode(self.name_of(ctx), legacy, ctx.args)

    def on_mkdir(self, ctx):
        dirfd, ptr, mode = self._path_and_mode(ctx, "mkdir")
        loc = self._changing(ctx, dirfd, ptr)
        if loc is None:
            return None
        if self._over_quota():
            return errno.ENOSPC
        return branch_change(self.layer.mkdir, loc.rel, mode & ~_umask(ctx.pid) & 0o1777)

    def on_unlink(self, ctx):
        dirfd, ptr, rmdir = pathcalls.unlink_args(self.name_of(ctx), ctx.args)
        loc = self._changing(ctx, dirfd, ptr)
        if loc is None:
            return None
        held = self._hold(loc.rel)
        return self._orphaned(held, branch_change(self.layer.rmdir if rmdir else self.layer.unlink, loc.rel))

    def on_rename(self, ctx):
        od, op, nd, np_, flags = pathcalls.two_paths(self.name_of(ctx), "rename", ctx.args)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT):
            return errno.EINVAL
        old = self.locate(ctx, od, op, False)
        new = self.locate(ctx, nd, np_, False)
        if old is None and new is None:
            return None
        if old is None or new is None or old.rel is None or new.rel is None:
            return errno.EXDEV   # across the workdir's edge: callers copy instead
        if not old.rel or not new.rel:
            return errno.EBUSY
        self.refuse_denied(old.rel, below=True)
        self.refuse_denied(new.rel, below=True)
        self._on_behalf()
        if flags & (RENAME_EXCHANGE | RENAME_WHITEOUT):
            return errno.EINVAL
        if flags & RENAME_NOREPLACE and self.layer.exists(new.rel):
            return errno.EEXIST
        if self._over_quota():
            return errno.ENOSPC
        try:
            is_dir = stat.S_ISDIR(self.layer.lstat(old.rel).st_mode)
        except OSError:
            is_dir = False
        held = self._hold(new.rel)
        res = self._orphaned(held, branch_change(self.layer.rename, old.rel, new.rel))
        if isinstance(res, NotifAction) and old.rel != new.rel:
            self.renamed_written(old.rel, new.rel)
            if is_dir:
                self._moved(old.rel, new.rel)
        return res

    def renamed_written(self, old: bytes, new: bytes) -> None:
        """After a rename in the branch: the files handed out for writing
        under `old` are still measured (max_disk), under their new name."""
        for rel in list(self.written):
            if _lexically_under(rel, old):
                self.written.discard(rel)
                self.written.add(new + rel[len(old):])

    def on_symlink(self, ctx):
        tptr, dirfd, ptr = pathcalls.symlink_args(self.name_of(ctx), ctx.args)
        loc = self._changing(ctx, dirfd, ptr)
        if loc is None:
            return None
        target = self._read_path(ctx, tptr)
        if not target:
            return errno.ENOENT
        return branch_change(self.layer.symlink, target, loc.rel)

    def on_link(self, ctx):
        od, op, nd, np_, flags = pathcalls.two_paths(self.name_of(ctx), "link", ctx.args)
        if flags & ~(AT_SYMLINK_FOLLOW | AT_EMPTY_PATH):
            return errno.EINVAL
        old = self.locate(ctx, od, op, bool(flags & AT_SYMLINK_FOLLOW), bool(flags & AT_EMPTY_PATH))
        if old is not None and old.rel and not self.layer.exists(old.rel):
            return errno.ENOENT   # the kernel looks the old path up first, whole
        new = self.locate(ctx, nd, np_, False)
        if old is None and new is None:
            return None
        if old is None or new is None or old.rel is None or new.rel is None or not old.rel:
            return errno.EXDEV
        self.refuse_denied(old.rel)
        self.refuse_denied(new.rel)
        self._on_behalf()
        if self._over_quota():
            return errno.ENOSPC
        return branch_change(self.layer.link, old.rel, new.rel)

    def on_mknod(self, ctx):
        dirfd, ptr, mode = self._path_and_mode(ctx, "mknod")
        loc = self._changing(ctx, dirfd, ptr)
        if loc is None:
            return None
        kind = stat.S_IFMT(mode)
        if kind not in (0, stat.S_IFREG):
            return errno.EPERM  # FIFOs, sockets, devices: not in a branch
        try:
            fd = self.layer.open(loc.rel, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                                 mode & ~_umask(ctx.pid) & 0o7777)
        except SpecialFileError:
            return errno.EPERM
        except OSError as e:
            return e.errno or errno.EIO
        os.close(fd)
        return NotifAction.returns(0)

    def on_truncate(self, ctx):
        length = ctx.args[1]
        if length >= 1 << 63:
            return errno.EINVAL
        loc = self._changing(ctx, fs.AT_FDCWD, ctx.args[0], True)
        if loc is None:
            return None
        return self.truncate(loc.rel, length)

    def truncate(self, rel: bytes, length: int):
        """truncate(2) of branch entry `rel` (copied up first), within max_disk."""
        if self.max_disk is not None and self._used() + length > self.max_disk:
            return errno.EFBIG
        try:
            fd = self.layer.open(rel, os.O_WRONLY | os.O_CLOEXEC)
        except SpecialFileError:
            return errno.EPERM
        except OSError as e:
            return e.errno or errno.EIO
        try:
            os.ftruncate(fd, length)
        except OSError as e:
            return e.errno or errno.EIO
        finally:
            os.close(fd)
        self.layer.refresh(rel)
        return NotifAction.returns(0)

    # -- attributes (from attributes.py) -------------------------------------------

    def chmod(self, rel: bytes, mode: int) -> None:
        self.layer.chmod(rel, mode)

    def utimens(self, rel: bytes, times) -> None:
        st = self.layer.lstat(rel)
        if stat.S_ISLNK(st.st_mode):
            return  # symlink times: not emulated
        self.layer.copy_up(rel)
        fd = self.layer.open(rel, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if stat.S_ISDIR(st.st_mode) else 0))
        try:
            if times is None:
                os.utime(fd)
            else:
                (a_s, a_ns), (m_s, m_ns) = times
                now = None
                if 0x3FFFFFFF in (a_ns, m_ns) or 0x3FFFFFFE in (a_ns, m_ns):
                    now = os.fstat(fd)
                os.utime(fd, ns=(_time_ns(a_s, a_ns, now, "atime"), _time_ns(m_s, m_ns, now, "mtime")))
        finally:
            os.close(fd)

    # -- the working directory -------------------------------------------------------

    def on_chdir(self, ctx):
        loc = self.locate(ctx, fs.AT_FDCWD, ctx.args[0], True)
        tgid = processes.tgid(ctx.pid)
        if loc is None:
            raw = self._read_path(ctx, ctx.args[0])
            if raw.startswith(b"/") and self.vcwd and not os.path.isdir(caller_proc_path(raw, tgid, ctx.pid)):
                return None   # the kernel refuses it: the cwd stays
            self._set_vcwd(tgid, None)
            return None
        if loc.rel is None:
            return errno.EACCES if loc.touched else None
        try:
            st = self.layer.lstat(loc.rel) if loc.rel else os.stat(self.workdir)
        except OSError as e:
            return e.errno or errno.ENOENT
        if not stat.S_ISDIR(st.st_mode):
            return errno.ENOTDIR
        if not loc.touched:
            self._set_vcwd(tgid, None)
            return None  # the kernel walks to the same workdir directory
        # A directory only the branch has, or reached through one: the
        # kernel cannot hold it. The cwd is kept here (walks and getcwd use
        # it); the kernel's stays where it was.
        self._set_vcwd(tgid, loc.rel)
        return NotifAction.returns(0)

    def on_fchdir(self, ctx):
        self._set_vcwd(processes.tgid(ctx.pid), None)
        return None

    def on_getcwd(self, ctx):
        buf, size = ctx.args[0], ctx.args[1]
        tgid = processes.tgid(ctx.pid)
        virtual = self._vcwd(tgid)
        if virtual is None:
            try:
                real = os.readlink(b"/proc/%d/task/%d/cwd" % (tgid, ctx.pid))
            except OSError:
                return None
            if not _lexically_under(real, self.upper):
                return None
            path = self.workdir + real[len(self.upper):]
        else:
            path = self.workdir + (b"/" + virtual if virtual else b"")
        out = path + b"\0"
        if size < len(out):
            return errno.ERANGE
        if not ctx.write(buf, out):
            return errno.EFAULT
        return NotifAction.returns(len(out))

    # -- exec --------------------------------------------------------------------------

    def on_exec(self, ctx):
        dirfd, ptr, flags = pathcalls.exec_args(self.name_of(ctx), ctx.args)
        loc = self.locate(ctx, dirfd, ptr, not flags & AT_SYMLINK_NOFOLLOW, bool(flags & AT_EMPTY_PATH))
        if loc is None or not loc.touched:
            return None
        return errno.EACCES   # a program only the branch has (or reached through it)

    # -- max_disk --------------------------------------------------------------------

    def tick(self) -> None:
        """Writes through fds the child holds are not seen one by one:
        the files handed out for writing are re-measured here."""
        if self.max_disk is None or self.killed:
            return
        used = self._used()
        if used > self.max_disk:
            self.killed = True
            self.reason = (f"max_disk: the copy-on-write branch holds {used} bytes "
                           f"(limit {self.max_disk})")
            processes.signal_all(self.me, signal.SIGKILL)


def branch_change(fn, *args):
    """A change of the branch (the layer's mkdir, unlink, rename, ...) as
    the syscall's answer: 0, or the errno the kernel would give."""
    try:
        fn(*args)
    except SpecialFileError:
        return errno.EPERM
    except OSError as e:
        return e.errno or errno.EIO
    except ValueError:
        return errno.EINVAL
    return NotifAction.returns(0)


def _lexically_under(path: bytes, root: bytes) -> bool:
    return path == root or path.startswith(root.rstrip(b"/") + b"/")


def _may_access(pid: int, st: os.stat_result, want: int, effective: bool) -> bool:
    """access(2)'s permission check on st for the process's ids."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            fields = {k: v.split() for k, _, v in (ln.partition(b":") for ln in f)}
        which = 1 if effective else 0
        uid, gid = int(fields[b"Uid"][which]), int(fields[b"Gid"][which])
        groups = {int(g) for g in fields.get(b"Groups", [])}
    except (OSError, KeyError, ValueError, IndexError):
        return False
    if uid == 0:
        return not want & os.X_OK or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid == gid or st.st_gid in groups:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return want & ~bits == 0


def _umask(pid: int) -> int:
    umask = processes.umask_of(pid)
    return 0o022 if umask is None else umask


def _time_ns(sec: int, nsec: int, now, which: str) -> int:
    if nsec == 0x3FFFFFFF:   # UTIME_NOW
        import time
        return time.time_ns()
    if nsec == 0x3FFFFFFE:   # UTIME_OMIT
        return getattr(now, f"st_{which}_ns")
    if not 0 <= nsec < 1_000_000_000:
        raise OSError(errno.EINVAL, "bad nanoseconds")
    return sec * 1_000_000_000 + nsec


def _dirent(name: bytes, kind: int, ino: int, off: int) -> bytes:
    dtype = {stat.S_IFDIR: 4, stat.S_IFREG: 8, stat.S_IFLNK: 10, stat.S_IFCHR: 2,
             stat.S_IFBLK: 6, stat.S_IFIFO: 1, stat.S_IFSOCK: 12}.get(kind, 0)
    reclen = (19 + len(name) + 1 + 7) & ~7
    ino = ino or 1
    return struct.pack("=QqHB", ino, off, reclen, dtype) + name + b"\0" * (reclen - 19 - len(name))


def _pack_stat(st: os.stat_result, arch: str) -> bytes:
    times = (int(st.st_atime), st.st_atime_ns % 1_000_000_000, int(st.st_mtime),
             st.st_mtime_ns % 1_000_000_000, int(st.st_ctime), st.st_ctime_ns % 1_000_000_000)
    if arch == "aarch64":
        return struct.pack("=QQIIIIQQqiiqqQqQqQII", st.st_dev, st.st_ino, st.st_mode, st.st_nlink,
                           st.st_uid, st.st_gid, st.st_rdev, 0, st.st_size, st.st_blksize, 0,
                           st.st_blocks, *times, 0, 0)
    return struct.pack("=QQQIIIiQqqqqqqqqqqqq", st.st_dev, st.st_ino, st.st_nlink, st.st_mode,
                       st.st_uid, st.st_gid, 0, st.st_rdev, st.st_size, st.st_blksize,
                       st.st_blocks, *times, 0, 0, 0)


def _pack_statx(st: os.stat_result) -> bytes:
    def ts(ns: int) -> bytes:
        return struct.pack("=qIi", ns // 1_000_000_000, ns % 1_000_000_000, 0)
    head = struct.pack("=IIQIIIHHQQQQ", 0x7FF, st.st_blksize, 0, st.st_nlink, st.st_uid, st.st_gid,
                       st.st_mode, 0, st.st_ino, st.st_size, st.st_blocks, 0)
    tail = struct.pack("=IIII", os.major(st.st_rdev), os.minor(st.st_rdev),
                       os.major(st.st_dev), os.minor(st.st_dev))
    data = head + ts(st.st_atime_ns) + ts(0) + ts(st.st_ctime_ns) + ts(st.st_mtime_ns) + tail
    return data + b"\0" * (256 - len(data))
