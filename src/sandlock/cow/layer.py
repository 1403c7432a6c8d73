"""The merged view of a copy-on-write branch: upper over lower, minus whiteouts.

Used by the supervisor to serve the child's file syscalls. Paths are `rel`:
bytes relative to the workdir, already normalised by the caller (no leading
'/', no '.' or '..', no empty component); the empty path is the workdir
root and is only accepted by read-only methods.

Confinement (trap A1): every access of either tree resolves `rel` with
openat2(root fd, rel, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS |
RESOLVE_NO_SYMLINKS) and then acts on the final name relative to the parent
fd, never following it. A symlink among the parents therefore fails with
ELOOP instead of being followed: the caller resolves symlinks in the merged
view (`readlink`) and hands over the resolved path.

Deletions are subtree-aware (A2/A3): a whiteout of `a` hides every lower
path under `a`; an upper entry always wins over a whiteout, and a directory
re-created at `a` does not bring back the lower children (opaque directory).

Modes given to creating methods are applied exactly (the caller has already
applied the child's umask). Ownership is not emulated.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import stat
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from .._kernel import fs
from ..exceptions import BranchError
from .storage import BASE_LOG, DELETED_LOG, UPPER

RESOLVE = fs.RESOLVE_IN_ROOT | fs.RESOLVE_NO_MAGICLINKS | fs.RESOLVE_NO_SYMLINKS
CHUNK = 1 << 20
_TMP_PREFIX = b".sandlock-tmp-"


class SpecialFileError(BranchError):
    """The entry is a FIFO, socket or device: the branch holds only regular
    files, directories and symlinks (A6). The caller refuses the operation
    or passes a device open through to the kernel."""

    def __init__(self, rel: bytes, mode: int):
        super().__init__(f"{os.fsdecode(rel)!r}: special file (mode {mode:o}) is not copied into a branch")
        self.rel = rel
        self.mode = mode


def oserror(code: int, rel: bytes) -> OSError:
    return OSError(code, os.strerror(code), os.fsdecode(rel))


def check_rel(rel: bytes, *, root_ok: bool = False) -> bytes:
    """Validate a normalised relative path; ValueError for anything odd."""
    if not isinstance(rel, bytes):
        raise ValueError(f"path must be bytes, got {type(rel).__name__}")
    if rel == b"":
        if root_ok:
            return rel
        raise ValueError("the workdir root itself cannot be changed")
    if b"\0" in rel or rel.startswith(b"/") or len(rel) >= 4096:
        raise ValueError(f"bad relative path {rel!r}")
    for part in rel.split(b"/"):
        if part in (b"", b".", b".."):
            raise ValueError(f"path {rel!r} is not normalised")
    return rel


def split(rel: bytes) -> tuple[bytes, bytes]:
    head, _, name = rel.rpartition(b"/")
    return head, name


def join(head: bytes, name: bytes) -> bytes:
    return head + b"/" + name if head else name


def ancestors(rel: bytes) -> list[bytes]:
    """Proper prefixes of rel, shallowest first ('a/b/c' -> ['a', 'a/b'])."""
    parts = rel.split(b"/")
    return [b"/".join(parts[:i]) for i in range(1, len(parts))]


# --- confined primitives: one resolution per call, never following a symlink

def open_in(root: int, rel: bytes, flags: int, mode: int = 0) -> int:
    return fs.openat2(root, rel or b".", flags | os.O_CLOEXEC | os.O_NOFOLLOW, RESOLVE, mode)


def lstat_in(root: int, rel: bytes) -> os.stat_result | None:
    """lstat of rel under root; None if absent. ENOTDIR/ELOOP propagate."""
    try:
        fd = open_in(root, rel, os.O_PATH)
    except FileNotFoundError:
        return None
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def lstat_raw(root: int, rel: bytes) -> os.stat_result | None:
    """Like lstat_in, but a path through a non-directory or symlink is absent."""
    try:
        return lstat_in(root, rel)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            return None
        raise


@contextmanager
def parent_of(root: int, rel: bytes) -> Iterator[tuple[int, bytes]]:
    """(O_PATH fd of rel's parent directory, final name)."""
    head, name = split(rel)
    fd = open_in(root, head, os.O_PATH | os.O_DIRECTORY)
    try:
        yield fd, name
    finally:
        os.close(fd)


def listdir_in(root: int, rel: bytes) -> list[bytes]:
    fd = open_in(root, rel, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return [os.fsencode(n) for n in os.listdir(fd)]
    finally:
        os.close(fd)


def scan_in(root: int, rel: bytes) -> dict[bytes, tuple[int, int]]:
    """name → (S_IFMT, inode) of the entries of directory rel, as lstat
    gives them (fstatat on the directory's fd: one name, not followed)."""
    fd = open_in(root, rel, os.O_RDONLY | os.O_DIRECTORY)
    try:
        out = {}
        for name in os.listdir(fd):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue   # gone since the listing (or not ours to see: as lstat() would)
            out[os.fsencode(name)] = (stat.S_IFMT(st.st_mode), st.st_ino)
        return out
    finally:
        os.close(fd)


def readlink_in(root: int, rel: bytes) -> bytes:
    with parent_of(root, rel) as (pfd, name):
        return os.readlink(name, dir_fd=pfd)


def chmod_in(root: int, rel: bytes, mode: int) -> None:
    """chmod the entry itself (never a symlink target). fchmod refuses O_PATH
    fds, so go through the fd's /proc entry, which names this inode only."""
    fd = open_in(root, rel, os.O_PATH)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise oserror(errno.EOPNOTSUPP, rel)
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(mode))
    finally:
        os.close(fd)


def open_regular(root: int, rel: bytes, flags: int, expect: os.stat_result | None = None) -> int:
    """Open rel for reading/writing only if it is a regular file or a
    directory. O_NONBLOCK keeps a FIFO swapped in after an lstat from
    blocking us; it is cleared again unless asked for."""
    if flags & os.O_PATH:   # nothing else is allowed with it by openat2
        flags &= os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = open_in(root, rel, flags if flags & os.O_PATH else flags | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise SpecialFileError(rel, st.st_mode)
        if expect is not None and (st.st_ino, st.st_dev) != (expect.st_ino, expect.st_dev):
            raise BranchError(f"{os.fsdecode(rel)!r} changed while being copied")
        if not flags & os.O_NONBLOCK and not flags & os.O_PATH:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def copy_fd(src: int, dst: int) -> None:
    while True:
        buf = os.read(src, CHUNK)
        if not buf:
            return
        view = memoryview(buf)
        while view:
            view = view[os.write(dst, view):]


@contextmanager
def _temp_name(pfd: int):
    """A fresh temporary name in pfd for what the block makes and renames
    into place; removed if the block fails, so a failure never leaves a
    half-made entry behind (nor one under the real name)."""
    tmp = _TMP_PREFIX + secrets.token_hex(8).encode()
    try:
        yield tmp
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=pfd)
        except OSError:
            pass
        raise


def make_file_at(pfd: int, name: bytes, src: int | None, st: os.stat_result, *, sync: bool = False) -> None:
    """Create regular file `name` in pfd with src's bytes (or empty), st's mode
    and mtime: written under a temporary name and renamed, so a failure
    never leaves a half-written file under the real name."""
    with _temp_name(pfd) as tmp:
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=pfd)
        try:
            if src is not None:
                copy_fd(src, dst)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            if sync:
                os.fsync(dst)
        finally:
            os.close(dst)
        os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)


def link_file_at(root: int, rel: bytes, pfd: int, name: bytes, expect: os.stat_result) -> bool:
    """Publish regular file rel of root as `name` in pfd by a hard link
    (made under a temporary name, then renamed over `name`): no byte is
    copied, and removing the branch afterwards frees no block. False, with
    nothing changed, when that cannot be done: another filesystem, or rel
    is not the file `expect` describes with no other name. Measured on a
    COW git clone's commit (1,051 files): creating and filling a copy was
    3.1 s and removing the branch's copies 3.0 s of an 8.4 s commit."""
    with _temp_name(pfd) as tmp:
        with parent_of(root, rel) as (sfd, sname):
            try:
                os.link(sname, tmp, src_dir_fd=sfd, dst_dir_fd=pfd, follow_symlinks=False)
            except OSError:
                return False
        st = os.stat(tmp, dir_fd=pfd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 2 \
                or (st.st_ino, st.st_dev) != (expect.st_ino, expect.st_dev):
            os.unlink(tmp, dir_fd=pfd)
            return False
        os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
    return True


def make_symlink_at(pfd: int, name: bytes, target: bytes, *, replace: bool = False) -> None:
    if not replace:
        os.symlink(target, name, dir_fd=pfd)
        return
    with _temp_name(pfd) as tmp:
        os.symlink(target, tmp, dir_fd=pfd)
        os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)


@contextmanager
def writable_dir(root: int, rel: bytes) -> Iterator[None]:
    """Let our own bookkeeping create or remove entries in a directory whose
    mode lacks owner write/search (e.g. a copied-up 0555 dir), then put the
    mode back. Root does not need it."""
    if os.geteuid() == 0:
        yield
        return
    st = lstat_in(root, rel)
    mode = stat.S_IMODE(st.st_mode) if st is not None and stat.S_ISDIR(st.st_mode) else None
    if mode is None or mode & 0o300 == 0o300:
        yield
        return
    chmod_in(root, rel, mode | 0o700)
    try:
        yield
    finally:
        chmod_in(root, rel, mode)


def walk_in(root: int, rel: bytes) -> Iterator[tuple[bytes, os.stat_result]]:
    """(path, lstat) of every entry strictly under directory rel, parents
    before children. Iterative: no recursion depth from a hostile tree."""
    stack = [rel]
    while stack:
        d = stack.pop()
        for name in sorted(listdir_in(root, d), reverse=True):
            p = join(d, name)
            st = lstat_in(root, p)
            if st is None:
                continue
            yield p, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(p)


def remove_tree(root: int, rel: bytes, on_remove: Callable[[os.stat_result], None] | None = None) -> None:
    """Remove rel (and everything under it) without following symlinks.
    Iterative, post-order; directories we cannot enter are opened up first."""
    stack: list[tuple[bytes, bool]] = [(rel, False)]
    while stack:
        p, emptied = stack.pop()
        st = lstat_in(root, p)
        if st is None:
            continue
        if stat.S_ISDIR(st.st_mode) and not emptied:
            if os.geteuid() != 0 and stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
                chmod_in(root, p, st.st_mode | 0o700)
            stack.append((p, True))
            stack.extend((join(p, n), False) for n in listdir_in(root, p))
            continue
        with writable_dir(root, split(p)[0]), parent_of(root, p) as (pfd, name):
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=pfd)
            else:
                if on_remove is not None:
                    on_remove(st)
                os.unlink(name, dir_fd=pfd)


# --- the two logs (append-only, one record a line)

def identity(st: os.stat_result | None) -> list[int] | None:
    return None if st is None else [st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns]


def _log_lines(path: str) -> list[bytes]:
    """Complete lines of a log. A final line without its newline is a torn
    append from a crash: that operation never completed, so it is ignored."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    finally:
        os.close(fd)
    lines = data.split(b"\n")
    return [ln for ln in lines[:-1] if ln]


def read_deleted(branch_dir: str) -> set[bytes]:
    out = set()
    for ln in _log_lines(os.path.join(branch_dir, DELETED_LOG)):
        try:
            out.add(check_rel(bytes.fromhex(ln.decode("ascii"))))
        except ValueError as e:
            raise BranchError(f"corrupt {DELETED_LOG} record {ln[:80]!r}") from e
    return out


def read_base(branch_dir: str) -> dict[bytes, list[int] | None]:
    """Path -> lower identity at first touch (the last record wins: a
    partial commit appends the new identity of what it wrote)."""
    out: dict[bytes, list[int] | None] = {}
    for ln in _log_lines(os.path.join(branch_dir, BASE_LOG)):
        try:
            rec = json.loads(ln)
            rel = check_rel(bytes.fromhex(rec["p"]))
            ident = rec["id"]
            if ident is not None and (len(ident) != 4 or not all(isinstance(x, int) for x in ident)):
                raise ValueError("bad identity")
        except (ValueError, KeyError, TypeError) as e:
            raise BranchError(f"corrupt {BASE_LOG} record {ln[:80]!r}") from e
        out[rel] = ident
    return out


def base_record(rel: bytes, st: os.stat_result | None) -> bytes:
    return json.dumps({"p": rel.hex(), "id": identity(st)}).encode() + b"\n"


def append_record(fd: int, record: bytes, *, sync: bool) -> None:
    os.write(fd, record)   # O_APPEND: one write, one record
    if sync:
        os.fdatasync(fd)


class Layer:
    """The merged view of (workdir, branch dir). Single-threaded use."""

    def __init__(self, workdir: str | bytes | os.PathLike, branch_dir: str | bytes | os.PathLike):
        bdir = os.fsdecode(branch_dir)
        self.branch_dir = bdir
        self._kinds: dict[bytes, tuple[str | None, int]] = {}   # see kind()
        self._kinds_since = 0.0
        self._lower_dirs: dict[bytes, bool] = {}   # see lower_is_dir()
        self.generation = 0   # counts the branch's changes (_changed)
        self._fds: list[int] = []
        try:
            self.lower = self._keep(os.open(workdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
            self.upper = self._keep(os.open(os.path.join(bdir, UPPER),
                                            os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW))
            flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
            self._deleted_fd = self._keep(os.open(os.path.join(bdir, DELETED_LOG), flags))
            self._base_fd = self._keep(os.open(os.path.join(bdir, BASE_LOG), flags))
            self.deleted: set[bytes] = read_deleted(bdir)
            self._based: set[bytes] = set(read_base(bdir))
            # Disk ledger (A17): bytes of regular files in the upper, by inode
            # so hard links count once; walked once here, then kept current.
            self._sizes: dict[int, int] = {}
            for _, st in walk_in(self.upper, b""):
                if stat.S_ISREG(st.st_mode):
                    self._sizes[st.st_ino] = st.st_size
            self._used = sum(self._sizes.values())
        except BaseException:
            self.close()
            raise

    def _keep(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())

    def __enter__(self) -> "Layer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- ledger

    def bytes_used(self) -> int:
        """Bytes held by regular files of the upper (running total)."""
        return self._used

    def _charge(self, st: os.stat_result) -> None:
        if stat.S_ISREG(st.st_mode):
            self._used += st.st_size - self._sizes.get(st.st_ino, 0)
            self._sizes[st.st_ino] = st.st_size

    def _release(self, st: os.stat_result) -> None:
        if stat.S_ISREG(st.st_mode) and st.st_nlink <= 1:
            self._used -= self._sizes.pop(st.st_ino, 0)

    def refresh(self, rel: bytes) -> int:
        """Re-read the size of upper file rel after the child wrote through
        an injected fd (writes are not seen otherwise: A15); returns bytes_used()."""
        st = lstat_in(self.upper, check_rel(rel))
        if st is not None:
            self._charge(st)
        return self._used

    # --- records

    def _record_base(self, rel: bytes) -> None:
        """Remember the lower's identity at rel the first time the run touches
        it (None if absent): the commit's conflict check compares it."""
        if rel in self._based:
            return
        append_record(self._base_fd, base_record(rel, lstat_raw(self.lower, rel)), sync=False)
        self._based.add(rel)

    def _record_deleted(self, rel: bytes) -> None:
        self._record_base(rel)
        append_record(self._deleted_fd, rel.hex().encode() + b"\n", sync=True)
        self.deleted.add(rel)

    # --- the merged view

    def hidden(self, rel: bytes) -> bool:
        """Whether rel or one of its ancestors is whiteouted."""
        if not self.deleted:
            return False
        return rel in self.deleted or any(a in self.deleted for a in ancestors(rel))

    def lookup(self, rel: bytes) -> str | None:
        """'upper', 'lower' or None (absent or deleted). A parent that is not
        a directory raises ENOTDIR, a symlink parent ELOOP. The root is
        'lower': its attributes are the workdir's."""
        rel = check_rel(rel, root_ok=True)
        if not rel:
            return "lower"
        if lstat_in(self.upper, rel) is not None:
            return "upper"
        if rel and self.hidden(rel):
            return None
        return "lower" if lstat_in(self.lower, rel) is not None else None

    def _root(self, where: str) -> int:
        return self.upper if where == "upper" else self.lower

    def _stat(self, rel: bytes) -> tuple[str | None, os.stat_result | None]:
        """(lookup(rel), its lstat) in one pass: the stat that finds the
        entry is the answer (looking it up, then stat-ing it again, was
        three confined opens where two do; profiled, these opens were
        1.1 s of a COW git clone's 6.7 s of supervision)."""
        rel = check_rel(rel, root_ok=True)
        if not rel:
            return "lower", lstat_in(self.lower, rel)
        st = lstat_in(self.upper, rel)
        if st is not None:
            return "upper", st
        if self.hidden(rel):
            return None, None
        st = lstat_in(self.lower, rel)
        return ("lower", st) if st is not None else (None, None)

    def kind(self, rel: bytes) -> tuple[str | None, int]:
        """(lookup(rel), the entry's S_IFMT or 0), cached: the supervisor's
        path walks ask this for every component of every path. The branch's
        names change only through this object (every changing method drops
        what it may have changed: _changed); the workdir's own may change
        under us, so entries live at most a second. Measured: a 4-deep
        lower path took 20 openat2 calls (235 µs) to walk uncached."""
        self._fresh()
        hit = self._kinds.get(rel)
        if hit is None:
            where, st = self._stat(rel)
            hit = (where, stat.S_IFMT(st.st_mode) if st is not None else 0)
            self._kinds[rel] = hit
        return hit

    def lower_is_dir(self, rel: bytes) -> bool:
        """Whether the workdir itself has a directory (no symlink on the
        way) at rel, whatever the branch did there. Cached like kind();
        the branch never changes the workdir, so only the age clears it."""
        self._fresh()
        hit = self._lower_dirs.get(rel)
        if hit is None:
            try:
                st = lstat_raw(self.lower, check_rel(rel))
            except OSError:
                st = None
            hit = self._lower_dirs[rel] = st is not None and stat.S_ISDIR(st.st_mode)
        return hit

    def _fresh(self) -> None:
        """Start the caches over once they are a second old (the workdir's
        own entries may change under us) or too big."""
        now = time.monotonic()
        if now - self._kinds_since > 1.0 or len(self._kinds) > 65536 or len(self._lower_dirs) > 65536:
            self._kinds.clear()
            self._lower_dirs.clear()
            self._kinds_since = now

    def _changed(self, rel: bytes) -> None:
        """Forget what kind() knows of rel, of its ancestors (a copy-up
        moves them to the upper) and of everything under it. Only what a
        change can reach is dropped: clearing the whole cache on every
        change made each path walk of a COW compileall start cold (every
        .pyc written clears it) at ~10 us per component."""
        self.generation += 1
        kinds = self._kinds
        if not kinds:
            return
        if not isinstance(rel, bytes):
            kinds.clear()   # the caller's check refuses it next
            return
        hit = kinds.pop(rel, None)
        for a in ancestors(rel):
            kinds.pop(a, None)
        if hit is not None and hit[1] != stat.S_IFDIR:
            # Only a directory has entries under it in the cache: kind()
            # raises (ENOTDIR, ELOOP) under anything else, and leaves no
            # entry; a name that went away took its entries with it here.
            return
        if len(kinds) > 1024:
            kinds.clear()   # a scan would cost more than starting over
            return
        prefix = rel + b"/"
        for k in [k for k in kinds if k.startswith(prefix)]:
            del kinds[k]

    def lstat(self, rel: bytes) -> os.stat_result:
        where, st = self._stat(rel)
        if st is None:
            raise oserror(errno.ENOENT, rel)
        return st

    def exists(self, rel: bytes) -> bool:
        return self.lookup(rel) is not None

    def readlink(self, rel: bytes) -> bytes:
        where, st = self._stat(rel)
        if st is None or where is None:
            raise oserror(errno.ENOENT, rel)
        if not stat.S_ISLNK(st.st_mode):
            raise oserror(errno.EINVAL, rel)
        return readlink_in(self._root(where), rel)

    def listdir(self, rel: bytes) -> list[bytes]:
        """Sorted names of merged directory rel: upper ∪ lower − deleted."""
        where, st = self._stat(rel)
        if st is None:
            raise oserror(errno.ENOENT, rel)
        if not stat.S_ISDIR(st.st_mode):
            raise oserror(errno.ENOTDIR, rel)
        names: set[bytes] = set()
        up = lstat_raw(self.upper, rel)
        if up is not None and stat.S_ISDIR(up.st_mode):
            names.update(listdir_in(self.upper, rel))
        if not (rel and self.hidden(rel)):
            low = lstat_raw(self.lower, rel)
            if low is not None and stat.S_ISDIR(low.st_mode):
                names.update(n for n in listdir_in(self.lower, rel) if not self.hidden(join(rel, n)))
        return sorted(names)

    def entries(self, rel: bytes) -> list[tuple[bytes, int, int]]:
        """(name, S_IFMT, inode) of each entry of merged directory rel, in
        listdir()'s order, as lstat gives them: each entry stat-ed through
        the listed directory's fd (fstatat of one name, no symlink
        followed), where an lstat() per entry walked the path again from
        the root, twice (measured: ~30 us an entry, now ~3)."""
        where, st = self._stat(rel)
        if st is None:
            raise oserror(errno.ENOENT, rel)
        if not stat.S_ISDIR(st.st_mode):
            raise oserror(errno.ENOTDIR, rel)
        found: dict[bytes, tuple[int, int]] = {}
        up = lstat_raw(self.upper, rel)
        if up is not None and stat.S_ISDIR(up.st_mode):
            found.update(scan_in(self.upper, rel))
        if not (rel and self.hidden(rel)):
            low = lstat_raw(self.lower, rel)
            if low is not None and stat.S_ISDIR(low.st_mode):
                for name, kind in scan_in(self.lower, rel).items():
                    if name not in found and not self.hidden(join(rel, name)):
                        found[name] = kind
        return [(name, *found[name]) for name in sorted(found)]

    # --- copy-up

    def copy_up(self, rel: bytes) -> None:
        """Make rel exist in the upper with the lower's content and mode
        (parents too). Raises SpecialFileError for FIFOs, sockets, devices."""
        rel = check_rel(rel)
        where, st = self._stat(rel)
        if where == "upper":
            return
        if st is None:
            raise oserror(errno.ENOENT, rel)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise SpecialFileError(rel, st.st_mode)   # decided before any side effect
        for a in ancestors(rel):
            if lstat_in(self.upper, a) is None:
                self._copy_entry(a)
        self._copy_entry(rel)

    def _copy_entry(self, rel: bytes, *, empty: bool = False) -> None:
        """Copy one lower entry into the upper (its parent exists there)."""
        self._changed(rel)
        st = lstat_in(self.lower, rel)
        if st is None:
            raise oserror(errno.ENOENT, rel)
        mode = st.st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            raise SpecialFileError(rel, mode)
        self._record_base(rel)
        head = split(rel)[0]
        with writable_dir(self.upper, head), parent_of(self.upper, rel) as (pfd, name):
            if stat.S_ISDIR(mode):
                os.mkdir(name, 0o700, dir_fd=pfd)
                chmod_in(self.upper, rel, mode)
            elif stat.S_ISLNK(mode):
                os.symlink(readlink_in(self.lower, rel), name, dir_fd=pfd)
            elif empty:
                make_file_at(pfd, name, None, st)
            else:
                src = open_regular(self.lower, rel, os.O_RDONLY, expect=st)
                try:
                    make_file_at(pfd, name, src, st)
                finally:
                    os.close(src)
        new = lstat_in(self.upper, rel)
        if new is not None:
            self._charge(new)

    def _parent_dir(self, rel: bytes, *, stage: bool) -> None:
        """Check the merged parent of rel is a directory; with stage, make
        it exist in the upper."""
        head = split(rel)[0]
        if not head:
            return
        where, st = self._stat(head)
        if st is None:
            raise oserror(errno.ENOENT, rel)
        if stat.S_ISLNK(st.st_mode):
            raise oserror(errno.ELOOP, rel)
        if not stat.S_ISDIR(st.st_mode):
            raise oserror(errno.ENOTDIR, rel)
        if stage and where == "lower":
            self.copy_up(head)

    # --- opening

    def open(self, rel: bytes, flags: int, mode: int = 0o666) -> int:
        """An fd (O_CLOEXEC, our own) on merged entry rel, as open(2) would
        give: in the upper whenever the flags can write (copy-up first; with
        O_TRUNC a lower file is not copied, an empty one is made). O_EXCL is
        checked against the merged view. A final symlink gives ELOOP (the
        caller resolves it); a special file raises SpecialFileError."""
        rel = check_rel(rel)
        acc = flags & os.O_ACCMODE
        creat, excl, trunc = flags & os.O_CREAT, flags & os.O_EXCL, flags & os.O_TRUNC
        writes = acc != os.O_RDONLY or creat or trunc
        if writes:
            self._changed(rel)
        where, st = self._stat(rel)
        if st is None or where is None:
            if not creat:
                raise oserror(errno.ENOENT, rel)
            self._parent_dir(rel, stage=True)
            self._record_base(rel)
            with parent_of(self.upper, rel) as (pfd, name):
                fd = os.open(name, flags | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
            try:
                os.fchmod(fd, stat.S_IMODE(mode))
                self._charge(os.fstat(fd))
            except BaseException:
                os.close(fd)
                raise
            return fd
        if creat and excl:
            raise oserror(errno.EEXIST, rel)
        if stat.S_ISLNK(st.st_mode):
            if flags & os.O_PATH and flags & os.O_NOFOLLOW and not writes:
                return open_in(self._root(where), rel, flags)
            raise oserror(errno.ELOOP, rel)
        if stat.S_ISDIR(st.st_mode):
            if writes:
                raise oserror(errno.EISDIR, rel)
        elif flags & os.O_DIRECTORY:
            raise oserror(errno.ENOTDIR, rel)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise SpecialFileError(rel, st.st_mode)
        if where == "lower" and writes:
            for a in ancestors(rel):
                if lstat_in(self.upper, a) is None:
                    self._copy_entry(a)
            self._copy_entry(rel, empty=bool(trunc))
            where = "upper"
        fd = open_regular(self._root(where), rel, flags & ~(os.O_CREAT | os.O_EXCL))
        if where == "upper" and trunc:
            self._charge(os.fstat(fd))
        return fd

    # --- changes

    def whiteout(self, rel: bytes) -> None:
        """Delete rel from the merged view: record a whiteout (fdatasynced)
        if a lower entry would show, then remove any upper entry (its whole
        subtree, iteratively)."""
        self._changed(rel)
        rel = check_rel(rel)
        if not self.hidden(rel) and lstat_raw(self.lower, rel) is not None:
            self._record_deleted(rel)
        if lstat_raw(self.upper, rel) is not None:
            remove_tree(self.upper, rel, self._release)

    def unlink(self, rel: bytes) -> None:
        st = self.lstat(check_rel(rel))
        if stat.S_ISDIR(st.st_mode):
            raise oserror(errno.EISDIR, rel)
        self.whiteout(rel)

    def rmdir(self, rel: bytes) -> None:
        st = self.lstat(check_rel(rel))
        if not stat.S_ISDIR(st.st_mode):
            raise oserror(errno.ENOTDIR, rel)
        if self.listdir(rel):   # the merged view decides (A4)
            raise oserror(errno.ENOTEMPTY, rel)
        self.whiteout(rel)

    def _create_check(self, rel: bytes) -> None:
        if self.exists(check_rel(rel)):
            raise oserror(errno.EEXIST, rel)
        self._parent_dir(rel, stage=False)

    def mkdir(self, rel: bytes, mode: int = 0o777) -> None:
        self._changed(rel)
        self._create_check(rel)
        self._parent_dir(rel, stage=True)
        self._record_base(rel)
        with parent_of(self.upper, rel) as (pfd, name):
            os.mkdir(name, 0o700, dir_fd=pfd)
        chmod_in(self.upper, rel, mode)

    def symlink(self, target: bytes, rel: bytes) -> None:
        self._changed(rel)
        if not isinstance(target, bytes) or not target or b"\0" in target or len(target) >= 4096:
            raise ValueError(f"bad symlink target {target!r}")
        self._create_check(rel)
        self._parent_dir(rel, stage=True)
        self._record_base(rel)
        with parent_of(self.upper, rel) as (pfd, name):
            os.symlink(target, name, dir_fd=pfd)

    def link(self, old: bytes, new: bytes) -> None:
        """Hard link new to old inside the upper (old is copied up first).
        The commit publishes each name as its own file."""
        self._changed(old)
        self._changed(new)
        st = self.lstat(check_rel(old))
        self._create_check(new)    # the kernel's order: ENOENT, EEXIST, then EPERM
        if stat.S_ISDIR(st.st_mode):
            raise oserror(errno.EPERM, old)
        self.copy_up(old)
        self._parent_dir(new, stage=True)
        self._record_base(new)
        with parent_of(self.upper, old) as (ofd, oname), parent_of(self.upper, new) as (nfd, nname):
            os.link(oname, nname, src_dir_fd=ofd, dst_dir_fd=nfd, follow_symlinks=False)

    def chmod(self, rel: bytes, mode: int) -> None:
        st = self.lstat(check_rel(rel))
        if stat.S_ISLNK(st.st_mode):
            raise oserror(errno.EOPNOTSUPP, rel)
        self.copy_up(rel)
        chmod_in(self.upper, rel, mode)

    def rename(self, old: bytes, new: bytes) -> None:
        """rename(2) in the merged view. The whole source tree is staged into
        the upper first, all or nothing (A5); the destination follows the
        kernel's rules; the source is whiteouted after the move."""
        self._changed(old)
        self._changed(new)
        old, new = check_rel(old), check_rel(new)
        self._parent_dir(old, stage=False)   # the kernel's order: both parents, then the source
        self._parent_dir(new, stage=False)
        st = self.lstat(old)
        if old == new:
            return
        if new.startswith(old + b"/"):
            raise oserror(errno.EINVAL, new)
        dst = self._stat(new)[1]
        if dst is not None:
            if old.startswith(new + b"/"):
                raise oserror(errno.ENOTEMPTY, new)
            if stat.S_ISDIR(st.st_mode):
                if not stat.S_ISDIR(dst.st_mode):
                    raise oserror(errno.ENOTDIR, new)
                if self.listdir(new):
                    raise oserror(errno.ENOTEMPTY, new)
            elif stat.S_ISDIR(dst.st_mode):
                raise oserror(errno.EISDIR, new)
        self._stage_tree(old)
        self._parent_dir(new, stage=True)
        self._record_base(new)
        if dst is not None:
            self.whiteout(new)   # an empty dir or a non-dir: hide the lower, drop the upper
        with parent_of(self.upper, old) as (ofd, oname), parent_of(self.upper, new) as (nfd, nname):
            os.rename(oname, nname, src_dir_fd=ofd, dst_dir_fd=nfd)
        if not self.hidden(old) and lstat_raw(self.lower, old) is not None:
            self._record_deleted(old)

    def _stage_tree(self, rel: bytes) -> None:
        """Copy the merged tree at rel into the upper; on failure remove what
        this call created, so the upper is as before."""
        self._changed(rel)
        created: list[bytes] = []
        try:
            for a in ancestors(rel) + [rel]:
                if lstat_in(self.upper, a) is None:
                    self._copy_entry(a)
                    created.append(a)
            stack = [rel]
            while stack:
                d = stack.pop()
                if not stat.S_ISDIR(self.lstat(d).st_mode):
                    continue
                for name in self.listdir(d):
                    p = join(d, name)
                    if self.lookup(p) == "lower":
                        self._copy_entry(p)
                        created.append(p)
                    stack.append(p)
        except BaseException:
            for p in reversed(created):
                remove_tree(self.upper, p, self._release)
            raise
