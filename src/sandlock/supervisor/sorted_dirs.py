"""deterministic_dirs: every directory listing in byte order of the names.

getdents64 is answered from the child's own open directory: the
supervisor takes a copy of the child's fd (pidfd_getfd: the same open
file, the same position), reads the whole directory through a fresh open
of that fd (/proc/self/fd/N: the same directory, never a path looked up
again), sorts the raw records by name bytes, and serves them from the
file position used as an index into the sorted list: d_off is the next
index, so telldir/seekdir work, and position 0 (opendir, rewinddir)
reads the directory again. Names are bytes throughout; d_ino and d_type
are the filesystem's own. The old getdents call gets ENOSYS (libc uses
getdents64), as with the other listing handlers.

Listings another handler answers first keep that handler's order: the
copy-on-write workdir's merged listing (cow.py). The private /proc's root
is filtered here with procfs's own rule.
"""
from __future__ import annotations

import errno
import os
import struct

from .._kernel import fs, memory
from ..handler import NotifAction
from .answers import Answer, child_fd

READ_SIZE = 1 << 16
MAX_CACHED = 64
_HEAD = struct.Struct("<QqHB")  # d_ino, d_off, d_reclen, d_type


class SortedDirs:
    def __init__(self, nrs: dict[str, int], proc_filter=None):
        self.getdents64_nr = nrs.get("getdents64", -1)
        # (tid, fd, dev, ino) → sorted [(name, ino, type)]
        self.cache: dict[tuple, list[tuple[bytes, int, int]]] = {}
        # st → a predicate on names, or None (procfs: the private /proc root)
        self.proc_filter = proc_filter

    def on_getdents(self, ctx):
        if ctx.syscall_nr != self.getdents64_nr:
            return errno.ENOSYS
        fd_num, buf, count = ctx.args[0] & 0xFFFFFFFF, ctx.args[1], ctx.args[2] & 0xFFFFFFFF
        try:
            fd = child_fd(ctx, fd_num)
        except Answer as a:
            return a.errno
        try:
            st = os.fstat(fd)
            pos = os.lseek(fd, 0, os.SEEK_CUR)
            # Per thread (no /proc read for its process): a thread that
            # finds no listing of its own reads the directory again.
            key = (ctx.pid, fd_num, st.st_dev, st.st_ino)
            entries = self.cache.get(key)
            if entries is None or pos == 0:
                entries = self._read(fd, st)
                self.cache.pop(key, None)
                if len(self.cache) >= MAX_CACHED:
                    self.cache.pop(next(iter(self.cache)))
                self.cache[key] = entries
            out = bytearray()
            i = pos
            while 0 <= i < len(entries):
                name, ino, dtype = entries[i]
                reclen = (_HEAD.size + len(name) + 1 + 7) & ~7
                if len(out) + reclen > count:
                    if not out:
                        return errno.EINVAL  # the buffer holds not even one entry
                    break
                out += _HEAD.pack(ino, i + 1, reclen, dtype) + name
                out += bytes(reclen - _HEAD.size - len(name))
                i += 1
            if out:
                try:
                    written = memory.write_vm(ctx.pid, buf, bytes(out))
                except OSError:
                    written = 0
                if written != len(out):
                    return errno.EFAULT
                os.lseek(fd, i, os.SEEK_SET)
            return NotifAction.returns(len(out))
        except OSError as e:
            return e.errno or errno.EIO
        finally:
            os.close(fd)

    def _read(self, fd: int, st) -> list[tuple[bytes, int, int]]:
        """The directory's entries, sorted, from a new open of the same
        directory (the child's position is left alone)."""
        keep = self.proc_filter(st) if self.proc_filter is not None else None
        own = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        entries = []
        try:
            while True:
                raw = fs.getdents64(own, READ_SIZE, self.getdents64_nr)
                if not raw:
                    break
                for rec, name in fs.dirents(raw):
                    if keep is None or keep(name):
                        ino, _off, _reclen, dtype = _HEAD.unpack_from(rec)
                        entries.append((name, ino, dtype))
        finally:
            os.close(own)
        entries.sort()
        return entries
