"""A copy-on-write workdir inside a chroot: the part of the virtual tree
under the workdir is the branch's merged view (cow/layer.py: upper over
the workdir, minus deletions).

The chroot's handlers (chroot.py) resolve every path in the virtual tree
as without a branch; the tree's resolver (sandlock.chroot.VirtualRoot)
asks this object for the names under the workdir (lstat, readlink,
open), so symlinks are followed in the merged view and `..` and absolute
targets stay in the virtual tree. Changes under the workdir are made
here, in the branch (copy-up, whiteouts), never in the workdir: Landlock
grants the workdir read-only (plan.py), and the branch's storage is
hidden. The merged listings come from cow.Cow's getdents handler, which
maps a directory of the upper back to its workdir path.

The workdir is given as a host path (chroot.workdir_in_tree checks it
and names it in the tree); `rel` below is a path relative to it, as the
layer and the branch's `changes` use.
"""
from __future__ import annotations

import errno
import os

from ..cow.layer import SpecialFileError, check_rel, lstat_in
from ..handler import NotifAction
from .cow import branch_change

O_WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class TreeBranch:
    def __init__(self, branch, root):
        """`branch`: the run's cow.Cow (its layer, quota and listings);
        `root`: the chroot's VirtualRoot, which consults this object from now on."""
        self.cow = branch
        self.layer = branch.layer
        self.workdir = branch.workdir
        virtual = root.to_virtual(self.workdir)
        if virtual is None:   # the plan checked it (chroot.workdir_in_tree): never here
            raise ValueError("the copy-on-write workdir is outside the chroot")
        self.parts = [p for p in virtual.split(b"/") if p]
        self.anchor = root.anchor(self.parts)[0]
        self._root = root
        root.branch = self

    def rel(self, parts: list[bytes]) -> bytes | None:
        """The workdir-relative path of resolved virtual `parts`, or None
        (outside the workdir, or in a mount inside it: the mount's)."""
        n = len(self.parts)
        if parts[:n] != self.parts or self._root.anchor(parts)[0] is not self.anchor:
            return None
        return b"/".join(parts[n:])

    def unstore(self, host: bytes) -> bytes | None:
        """A host path with the upper's files named as the workdir paths
        they stand for; None for the branch's other files."""
        path, _mapped = self.cow._unstore(host)
        return path

    # -- the resolver's calls -------------------------------------------------

    def lstat(self, rel: bytes) -> os.stat_result | None:
        """The merged entry's lstat (None: absent or deleted), as
        Layer.lstat gives it, in two lookups instead of three: the walk
        asks this for every component of every name."""
        if not rel:
            return os.stat(self.workdir)
        try:
            check_rel(rel)
        except ValueError:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL)) from None
        st = lstat_in(self.layer.upper, rel)   # ENOTDIR, ELOOP propagate
        if st is not None:
            return st
        if self.layer.hidden(rel):
            return None
        return lstat_in(self.layer.lower, rel)

    def readlink(self, rel: bytes) -> bytes:
        try:
            return self.layer.readlink(rel)
        except ValueError:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL)) from None

    def open(self, rel: bytes, flags: int, mode: int = 0) -> int:
        """Our fd of merged entry `rel`: in the upper when the flags can
        write (copied up first), else wherever the merged view has it."""
        writes = bool(flags & O_WRITES) and not flags & os.O_PATH
        if not rel:
            if writes:
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
            keep = os.O_PATH | os.O_DIRECTORY | os.O_NONBLOCK | os.O_RDONLY
            return os.open(self.workdir, (flags & keep) | os.O_DIRECTORY | os.O_CLOEXEC)
        if writes and self.cow._over_quota():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        try:
            fd = self.layer.open(rel, (flags & ~os.O_NOCTTY) | os.O_CLOEXEC, mode)
        except SpecialFileError:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM)) from None
        except ValueError:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL)) from None
        if writes:
            self.cow.written.add(rel)   # re-measured for max_disk
        return fd

    # -- changes (the chroot's handlers, for names under the workdir) ----------

    def _room(self) -> int | None:
        return errno.ENOSPC if self.cow._over_quota() else None

    def mkdir(self, rel: bytes, mode: int):
        return self._room() or branch_change(self.layer.mkdir, rel, mode)

    def mknod(self, rel: bytes, mode: int):
        if self._room():
            return errno.ENOSPC
        try:
            os.close(self.layer.open(rel, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode))
        except SpecialFileError:
            return errno.EPERM
        except OSError as e:
            return e.errno or errno.EIO
        return NotifAction.returns(0)

    def unlink(self, rel: bytes, rmdir: bool):
        return branch_change(self.layer.rmdir if rmdir else self.layer.unlink, rel)

    def rename(self, old: bytes, new: bytes):
        if not old or not new:
            return errno.EBUSY
        res = self._room() or branch_change(self.layer.rename, old, new)
        if isinstance(res, NotifAction) and old != new:
            self.cow.renamed_written(old, new)
        return res

    def symlink(self, target: bytes, rel: bytes):
        return self._room() or branch_change(self.layer.symlink, target, rel)

    def link(self, old: bytes, new: bytes):
        if not old:
            return errno.EPERM   # the workdir itself is a directory
        return self._room() or branch_change(self.layer.link, old, new)

    def truncate(self, rel: bytes, length: int):
        return self.cow.truncate(rel, length)

    def in_upper(self, rel: bytes) -> bool:
        """Does the branch hold `rel` itself (no extended attributes kept)?"""
        try:
            return bool(rel) and self.layer.lookup(rel) == "upper"
        except (OSError, ValueError):
            return False
