"""chroot and fs_mount: a virtual root, without chroot(2) or namespaces.

The command sees `chroot` as `/` and each `fs_mount` host directory at its
virtual path. Nothing of this is the kernel's: the supervisor resolves
every path the command names in this virtual tree (supervisor/chroot.py)
and acts on the command's behalf (an injected fd, an answer). This module
is the one resolver, used by the plan (to turn the virtual policy into
host grants for Landlock) and by the supervisor.

How a virtual path is resolved (traps B1, A1): its components are walked
one by one; each step opens the next name under the anchor that serves it
(the mount with the longest matching virtual prefix, else the root) with
openat2(anchor, rel, RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS). A symlink is read and followed in the virtual tree
(an absolute target restarts at the virtual `/`), `..` pops a resolved
component (never above `/`), so nothing can name a host path outside the
anchors. The final open is one more openat2 of the symlink-free result:
a name swapped for a symlink in between fails (ELOOP), it is not followed.

Some virtual names are the host's: the device files in DEVICES (opened
on the host, with the policy's check), /dev/tty and /proc (the sandbox's
/proc view).
"""
from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass

from .cow import layer
from .exceptions import PolicyError

MAX_LINKS = 40
DEVICES = (b"/dev/null", b"/dev/zero", b"/dev/full", b"/dev/random", b"/dev/urandom")
# The caller's own terminal: only the kernel knows which one it is (the
# supervisor opening it would give its own), so it is left to the kernel.
OWN_TTY = b"/dev/tty"


@dataclass(frozen=True)
class RootSpec:
    """The virtual tree: the root's host directory (canonical) and the
    mounts (virtual path, host directory, read-only), all canonical."""
    root: str
    mounts: tuple[tuple[str, str, bool], ...] = ()


def parts_of(path: bytes) -> list[bytes]:
    return [p for p in path.split(b"/") if p not in (b"", b".")]


def vpath(parts: list[bytes]) -> bytes:
    return b"/" + b"/".join(parts)


def lexical(path: bytes) -> list[bytes]:
    """An absolute path's components with `..` collapsed lexically (never
    above `/`): for names fixed by the policy, not for the command's paths."""
    out: list[bytes] = []
    for p in parts_of(path):
        if p == b"..":
            if out:
                out.pop()
        else:
            out.append(p)
    return out


class Anchor:
    __slots__ = ("virtual", "host", "read_only", "fd")

    def __init__(self, virtual: list[bytes], host: bytes, read_only: bool, fd: int):
        self.virtual, self.host, self.read_only, self.fd = virtual, host, read_only, fd


class VirtualRoot:
    """The anchors' fds and the resolver. `close()` when done.

    `branch`: a copy-on-write branch over part of the tree (the
    supervisor's chroot_cow.TreeBranch), or None. Names under its workdir
    are then looked up, read and opened in its merged view (the branch's
    upper over the workdir, minus deletions), each through openat2 in
    one of the two trees, so the walk below follows the merged view's
    symlinks and never leaves either tree by itself."""

    def __init__(self, spec: RootSpec):
        self.spec = spec
        self.anchors: list[Anchor] = []
        self.branch = None
        try:
            for virtual, host, ro in [("/", spec.root, False)] + list(spec.mounts):
                fd = os.open(host, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                self.anchors.append(Anchor(lexical(os.fsencode(virtual)), os.fsencode(host), ro, fd))
        except OSError:
            self.close()
            raise
        # longest virtual prefix first
        self.anchors.sort(key=lambda a: -len(a.virtual))

    def close(self) -> None:
        while self.anchors:
            os.close(self.anchors.pop().fd)

    def anchor(self, parts: list[bytes]) -> tuple[Anchor, bytes]:
        for a in self.anchors:
            n = len(a.virtual)
            if parts[:n] == a.virtual:
                return a, b"/".join(parts[n:])
        raise AssertionError("the root anchors everything")

    def host(self, parts: list[bytes]) -> bytes:
        """The host path of resolved (symlink-free) virtual `parts`."""
        a, rel = self.anchor(parts)
        return a.host + (b"/" + rel if rel else b"") if a.host != b"/" else b"/" + rel

    def read_only(self, parts: list[bytes]) -> bool:
        return self.anchor(parts)[0].read_only

    def open(self, parts: list[bytes], flags: int, mode: int = 0) -> int:
        """openat2 of resolved `parts` under their anchor (a symlink: ELOOP)."""
        if self.branch is not None:
            cow = self.branch.rel(parts)
            if cow is not None:
                return self.branch.open(cow, flags, mode)
        a, rel = self.anchor(parts)
        return layer.open_in(a.fd, rel, flags, mode)

    def lstat(self, parts: list[bytes]) -> os.stat_result | None:
        """lstat of resolved `parts`; None if absent."""
        if self.branch is not None:
            cow = self.branch.rel(parts)
            if cow is not None:
                return self.branch.lstat(cow)
        a, rel = self.anchor(parts)
        return layer.lstat_in(a.fd, rel)

    def parent(self, parts: list[bytes]) -> int:
        """O_PATH fd of the directory holding resolved `parts` (not an anchor)."""
        return self.open(parts[:-1], os.O_PATH | os.O_DIRECTORY)

    def readlink(self, parts: list[bytes]) -> bytes:
        if self.branch is not None:
            cow = self.branch.rel(parts)
            if cow:
                return self.branch.readlink(cow)
        a, rel = self.anchor(parts)
        if not rel:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))   # an anchor is a directory
        return layer.readlink_in(a.fd, rel)

    def is_anchor(self, parts: list[bytes]) -> bool:
        return any(a.virtual == parts for a in self.anchors)

    def walk(self, start: list[bytes], path: bytes, follow: bool,
             no_symlinks: bool = False) -> tuple[list[bytes], os.stat_result | None]:
        """Resolve `path` (absolute, or relative to resolved `start`): the
        resolved components and the final entry's lstat (None: only the
        last component is missing). OSError for the rest (ENOENT, ENOTDIR,
        ELOOP), as the kernel would answer."""
        cur = [] if path.startswith(b"/") else list(start)
        fast = self._direct(cur, path, follow)
        if fast is not None:
            return fast
        todo = parts_of(path)
        todo.reverse()
        links = 0
        st: os.stat_result | None = self.lstat(cur)
        while todo:
            c = todo.pop()
            last = not todo
            if c == b"..":
                if cur:
                    cur.pop()
                st = self.lstat(cur)
                continue
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            cand = cur + [c]
            try:
                st = self.lstat(cand)
            except OSError as e:
                if e.errno == errno.ELOOP:   # replaced by a symlink meanwhile: look again
                    st = self.lstat(cand)
                else:
                    raise
            if st is None:
                if last:
                    return cand, None
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            if stat.S_ISLNK(st.st_mode) and (follow or not last):
                links += 1
                if links > MAX_LINKS or no_symlinks:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                target = self.readlink(cand)
                if target.startswith(b"/"):
                    cur = []
                st = self.lstat(cur)
                todo.extend(reversed(parts_of(target)))
                continue
            cur = cand
        return cur, st

    def _direct(self, cur: list[bytes], path: bytes,
                follow: bool) -> tuple[list[bytes], os.stat_result | None] | None:
        """The common case in one openat2: no `..` and no symlink on the
        way (RESOLVE_NO_SYMLINKS proves the latter). None: walk it."""
        names = parts_of(path)
        if b".." in names:
            return None
        cand = cur + names
        try:
            st = self.lstat(cand)
        except OSError:
            return None   # a symlink on the way (ELOOP), ENOTDIR: the walk says
        if st is None:
            if not names:
                return None
            try:
                parent = self.lstat(cand[:-1])
            except OSError:
                return None
            if parent is None or not stat.S_ISDIR(parent.st_mode):
                return None
            return cand, None
        if stat.S_ISLNK(st.st_mode) and follow:
            return None
        return cand, st

    def to_virtual(self, host: bytes) -> bytes | None:
        """The virtual name of canonical host path `host`, or None (outside
        every anchor). The deepest anchor containing it names it; a file
        of the branch's upper is named as the workdir path it stands for."""
        if self.branch is not None:
            host = self.branch.unstore(host)
            if host is None:
                return None
        best: Anchor | None = None
        for a in self.anchors:
            if host == a.host or host.startswith(a.host.rstrip(b"/") + b"/"):
                if best is None or len(a.host) > len(best.host):
                    best = a
        if best is None:
            return None
        rest = host[len(best.host):].strip(b"/")
        return vpath(best.virtual + (parts_of(rest) if rest else []))


def parse_mount_spec(spec: str) -> tuple[str, str, bool] | None:
    """"VIRTUAL:HOST", "VIRTUAL:HOST:ro" or ":rw" -> (virtual, host,
    read-only); None if malformed. The suffix is taken off first, so a
    host "/x:ro" is never mounted read-write (the reference's PR #180)."""
    body, ro = spec, False
    if spec.endswith(":ro"):
        body, ro = spec[:-3], True
    elif spec.endswith(":rw"):
        body = spec[:-3]
    virtual, sep, host = body.partition(":")
    if not sep or not virtual or not host:
        return None
    return virtual, host, ro


# --- the plan's side ---------------------------------------------------------

def root_spec(chroot: str, mounts: dict, mounts_ro: dict) -> RootSpec:
    """The canonical tree, or PolicyError: the root and each mount's host
    directory must exist; host directories must not overlap (an :ro mount
    inside a writable one would be writable through it, B11)."""
    root = os.path.realpath(chroot)
    if not os.path.isdir(root):
        raise PolicyError(f"chroot: {chroot!r} is not an existing directory")
    if root == "/":
        raise PolicyError("chroot: '/' is the host's own root; leave chroot unset")
    out: list[tuple[str, str, bool]] = []
    for table, ro, name in ((mounts, False, "fs_mount"), (mounts_ro, True, "fs_mount_ro")):
        for virtual, host in table.items():
            if not str(virtual).startswith("/"):
                raise PolicyError(f"{name}: {virtual!r} is not an absolute path inside the chroot")
            virtual = os.fsdecode(vpath(lexical(os.fsencode(str(virtual)))))
            if not str(host).startswith("/"):
                raise PolicyError(f"{name}: {host!r} is not an absolute host path")
            real = os.path.realpath(str(host))
            if not os.path.isdir(real):
                raise PolicyError(f"{name}: {host!r} is not an existing directory")
            if virtual == "/":
                raise PolicyError(f"{name}: '/' is the chroot itself; mount below it")
            out.append((virtual, real, ro))
    hosts = [(root, "chroot")] + [(h, f"mount {v!r}") for v, h, _ in out]
    for i, (a, na) in enumerate(hosts):
        for b, nb in hosts[i + 1:]:
            if a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/"):
                raise PolicyError(f"fs_mount: the host directories of {na} ({a!r}) and {nb} ({b!r}) "
                                  "overlap; a host directory is shown at one place only")
    if len({v for v, _, _ in out}) != len(out):
        raise PolicyError("fs_mount / fs_mount_ro: a virtual path is mounted twice")
    spec = RootSpec(root, tuple(sorted(out)))
    vr = VirtualRoot(spec)
    try:
        for virtual, _host, _ro in out:
            parent = vpath(lexical(os.fsencode(virtual))[:-1])
            try:
                _parts, st = vr.walk([], parent, True)
            except OSError:
                st = None
            if st is None or not stat.S_ISDIR(st.st_mode):
                raise PolicyError(f"fs_mount: the mount point {virtual!r} needs its parent "
                                  f"{os.fsdecode(parent)!r} to be a directory in the chroot")
    finally:
        vr.close()
    return spec


def workdir_in_tree(spec: RootSpec, workdir: str) -> str:
    """The virtual path of a copy-on-write workdir in the tree, or
    PolicyError. The workdir is named as a host path (as without a chroot,
    and as the reference does): the chroot's directory or a directory
    inside it (where the command reaches it: not hidden under a mount),
    or a writable fs_mount's host directory itself (the whole mount is
    then copy-on-write)."""
    real = os.path.realpath(workdir)
    vr = VirtualRoot(spec)
    try:
        virtual = vr.to_virtual(os.fsencode(real))
        if virtual is None:
            raise PolicyError(f"workdir: {workdir!r} is outside the chroot; with a chroot the "
                              "workdir is a host path: the chroot's directory or a directory "
                              "inside it, or an fs_mount host directory")
        parts = parts_of(virtual)
        a, rel = vr.anchor(parts)
        if os.fsencode(real) != (a.host + (b"/" + rel if rel else b"")):
            raise PolicyError(f"workdir: {workdir!r} is hidden in the chroot by the mount at "
                              f"{os.fsdecode(vpath(a.virtual))!r}; the command never sees it")
        if a.read_only:
            raise PolicyError(f"workdir: {workdir!r} is inside the read-only mount "
                              f"{os.fsdecode(vpath(a.virtual))!r}: a commit would write it")
        if a.virtual and rel:
            # The mount is writable around it: Landlock cannot grant a
            # directory but a read-only hole in it.
            raise PolicyError(f"workdir: {workdir!r} is inside the fs_mount at "
                              f"{os.fsdecode(vpath(a.virtual))!r}; give the mount's host "
                              "directory itself (the whole mount is then copy-on-write)")
        return os.fsdecode(virtual)
    finally:
        vr.close()


def host_policy(spec: RootSpec, readable, writable, denied) -> tuple[list[str], list[str], list[str]]:
    """The virtual policy as host paths (readable, writable, denied) for
    Landlock and the supervisor's checks: each virtual path resolved in the
    tree; a mount is a grant of its own (read-only for fs_mount_ro); a
    writable grant under an :ro mount is read-only (B11); the host devices
    and /proc are granted where a virtual grant covers their name."""
    vr = VirtualRoot(spec)
    try:
        def resolve(virtual: str) -> tuple[list[bytes], str] | None:
            try:
                parts, st = vr.walk([], os.fsencode(virtual), True)
            except OSError:
                return None
            if st is None:
                return None
            return parts, os.fsdecode(vr.host(parts))

        r: list[str] = []
        w: list[str] = []
        d: list[str] = []
        for _virtual, host, ro in spec.mounts:
            (r if ro else w).append(host)
        for grants, target in ((readable, r), (writable, w)):
            for virtual in grants:
                got = resolve(str(virtual))
                if got is not None:
                    (r if target is w and vr.read_only(got[0]) else target).append(got[1])
                covered = lexical(os.fsencode(str(virtual)))
                for dev in DEVICES + (OWN_TTY, b"/proc"):
                    if parts_of(dev)[:len(covered)] == covered:
                        (target if dev != b"/proc" else r).append(os.fsdecode(dev))
        for virtual in denied:
            # Denied even before it exists (it could be created later):
            # where the tree would put it, else where its name points.
            try:
                parts, _st = vr.walk([], os.fsencode(str(virtual)), True)
            except OSError:
                parts = lexical(os.fsencode(str(virtual)))
            d.append(os.fsdecode(vr.host(parts)))
            if lexical(os.fsencode(str(virtual)))[:1] in ([b"proc"], [b"dev"]):
                d.append(os.fsdecode(vpath(lexical(os.fsencode(str(virtual))))))
        return r, w, d
    finally:
        vr.close()


def host_dir(spec: RootSpec, virtual: str) -> tuple[str, str]:
    """(canonical virtual path, host path) of virtual directory `virtual`."""
    vr = VirtualRoot(spec)
    try:
        try:
            parts, st = vr.walk([], os.fsencode(virtual), True)
        except OSError as e:
            raise PolicyError(f"cwd: {virtual!r} inside the chroot: {e.strerror}") from None
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise PolicyError(f"cwd: {virtual!r} is not a directory inside the chroot")
        return os.fsdecode(vpath(parts)), os.fsdecode(vr.host(parts))
    finally:
        vr.close()


def exec_plan(spec: RootSpec, argv: list, path_var: str | None,
              depth: int = 0) -> tuple[list[bytes], list[bytes]]:
    """(exec candidates, argv) for starting `argv` inside the tree. The
    child opens a candidate (a virtual path, through the supervisor) and
    executes the fd, so the kernel never looks the name up on the host.
    A dynamic program runs through the tree's own ld.so (its PT_INTERP,
    resolved in the tree: B10), which then opens the program and its
    libraries by their virtual names; a `#!` script, through the tree's
    interpreter."""
    prog = argv[0]
    dirs = [prog] if "/" in prog else [
        os.path.join(d or ".", prog) for d in (path_var if path_var is not None else os.defpath).split(":")]
    vr = VirtualRoot(spec)
    try:
        for cand in dirs:
            try:
                parts, st = vr.walk([], os.fsencode(cand if cand.startswith("/") else "/" + cand), True)
            except OSError:
                continue
            if st is None or not stat.S_ISREG(st.st_mode):
                continue
            try:
                fd = vr.open(parts, os.O_RDONLY)
            except OSError:
                continue
            try:
                script = os.pread(fd, 256, 0)
                interp = elf_interp(fd)
            finally:
                os.close(fd)
            program = vpath(parts)
            if script.startswith(b"#!") and depth < 2:
                # The kernel would look the interpreter up on the host: run
                # the tree's interpreter with the script as its argument.
                line = script[2:].split(b"\n", 1)[0].strip().split(None, 1)
                if line:
                    shebang = [os.fsdecode(x) for x in line] + [os.fsdecode(program)]
                    return exec_plan(spec, shebang + [os.fsdecode(a) for a in argv[1:]],
                                     path_var, depth + 1)
            if interp is None:
                return [program], [os.fsencode(a) for a in argv]
            try:
                lparts, lst = vr.walk([], interp, True)
            except OSError:
                lst = None
            if lst is None:
                raise PolicyError(f"chroot: {prog!r} needs the interpreter {os.fsdecode(interp)!r}, "
                                  "which the chroot does not have")
            ld = vpath(lparts)
            rest = [os.fsencode(a) for a in argv[1:]]
            if _knows_argv0(vr, lparts):
                return [ld], [ld, b"--argv0", os.fsencode(argv[0]), program] + rest
            return [ld], [ld, program] + rest
        return [os.fsencode(d if d.startswith("/") else "/" + d) for d in dirs], \
            [os.fsencode(a) for a in argv]
    finally:
        vr.close()


def _knows_argv0(vr: VirtualRoot, parts: list[bytes]) -> bool:
    """Does this ld.so take --argv0 (glibc 2.33 and later)?"""
    try:
        fd = vr.open(parts, os.O_RDONLY)
    except OSError:
        return False
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            return b"--argv0" in f.read(4 << 20)
    finally:
        os.close(fd)


def elf_interp(fd: int) -> bytes | None:
    """The PT_INTERP of the ELF file on `fd` (None: static, or not ELF)."""
    head = os.pread(fd, 64, 0)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:
        return None
    end = "<" if head[5] == 1 else ">"
    phoff, = struct.unpack_from(end + "Q", head, 32)
    phentsize, phnum = struct.unpack_from(end + "HH", head, 54)
    if phentsize < 56 or phnum > 256:
        return None
    table = os.pread(fd, phentsize * phnum, phoff)
    for i in range(min(phnum, len(table) // phentsize)):
        ptype, = struct.unpack_from(end + "I", table, i * phentsize)
        if ptype == 3:  # PT_INTERP
            off, = struct.unpack_from(end + "Q", table, i * phentsize + 8)
            size, = struct.unpack_from(end + "Q", table, i * phentsize + 32)
            if not 0 < size <= 4096:
                return None
            return os.pread(fd, size, off).rstrip(b"\0")
    return None
