"""/proc as the sandbox sees it: its own processes only, virtual CPU and
memory figures.

How it stays TOCTOU-safe: Landlock never grants the numeric /proc entries
(nor the files virtualized here), so a path the child rewrites after we
read it cannot reach them through CONTINUE. Opens of /proc itself,
/proc/self, /proc/thread-self and /proc/<pid of this sandbox> are done here,
on the child's behalf, read-only and without following magic links
(/proc/<pid>/root, cwd, exe and fd/* would otherwise open any file with the
supervisor's rights); the fd is injected. Directory listings are done here
too, so /proc lists only the sandbox's processes.

Every answer reads the plan's filesystem view (fsview.FsView): /proc and
the virtual files are served only where the policy grants them, and the
directories a denied path splits off (the view's `passthrough`) are opened
here read-only, so they stay listable while everything inside them still
goes through Landlock.
"""
from __future__ import annotations

import errno
import os
import posixpath

from .._kernel import fs, memory, pidfd
from ..fsview import FsView
from ..denials import Refused
from ..handler import NotifAction
from . import processes
from .answers import Answer, child_fd

O_ACCMODE = os.O_ACCMODE
O_CREAT, O_EXCL, O_TRUNC, O_APPEND = os.O_CREAT, os.O_EXCL, os.O_TRUNC, os.O_APPEND
O_CLOEXEC = os.O_CLOEXEC
O_PATH = os.O_PATH
O_TMPFILE = os.O_TMPFILE & ~os.O_DIRECTORY  # __O_TMPFILE: the bit that is not O_DIRECTORY
_REFUSED_FLAGS = O_CREAT | O_EXCL | O_TRUNC | O_APPEND | O_TMPFILE
MAX_PATH = 4096
# Per-process entries the kernel guards with a ptrace access check: opened
# here with the supervisor's rights they would let one sandboxed process
# read another's memory, which ptrace and process_vm_readv are denied for.
# A process may still open its own.
PTRACE_GATED = {b"mem", b"environ", b"auxv", b"pagemap", b"stack", b"syscall", b"personality",
                b"timers", b"fd", b"fdinfo", b"map_files", b"maps", b"smaps", b"smaps_rollup",
                b"numa_maps", b"io", b"cwd", b"root", b"exe", b"ns", b"task"}
MAX_DENTS = 1 << 16



class ProcFs:
    def __init__(self, root: int, nrs: dict[str, int], num_cpus: int | None, memory_limit,
                 view: FsView, proc: bool = True, static_files: dict[bytes, bytes] | None = None,
                 restriction=None):
        """proc: mediate /proc; static_files: absolute paths served with
        fixed content (e.g. the pinned /etc/hosts), where the view lets the
        sandbox read them."""
        self.root = root
        self.proc = proc
        self.view = view
        # selfrestrict.SelfRestriction: once the sandbox adds a Landlock
        # ruleset of its own, nothing is opened on its behalf any more
        # (CONTINUE: the kernel checks every ruleset the task has).
        self.restriction = restriction
        self.static_files = {k: v for k, v in (static_files or {}).items()
                             if view.may_read(os.fsdecode(k))}
        self.passthrough = _inode_set(view.passthrough)
        self.nrs = nrs
        self.num_cpus = num_cpus
        self.memory = memory_limit  # MemoryLimit or None
        self.proc_fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(self.proc_fd)
        self.proc_dev = st.st_dev
        self.proc_ino = st.st_ino
        self.getdents64_nr = nrs["getdents64"]

    def members(self) -> set[int]:
        """Pids (thread groups) of the sandbox."""
        return set(processes.descendants(self.root))

    # -- open ----------------------------------------------------------------

    def on_open(self, ctx):
        if self.restriction is not None and self.restriction.active:
            return None
        if ctx.syscall_nr == self.nrs.get("open"):
            dirfd, path_ptr, flags = fs.AT_FDCWD, ctx.args[0], ctx.args[1]
        else:
            dirfd, path_ptr, flags = _c_int(ctx.args[0]), ctx.args[1], ctx.args[2]
        try:
            raw = memory.read_cstr(ctx.pid, path_ptr, MAX_PATH)
        except OSError as e:
            return errno.ENAMETOOLONG if e.errno == 36 else errno.EFAULT
        if not ctx._valid(ctx.id):
            return errno.EPERM
        static = self.static_files.get(posixpath.normpath(raw)) if raw.startswith(b"/") else None
        if static is not None:
            return _serve_bytes(static, flags)
        if not self.proc or not (raw == b"/proc" or raw.startswith(b"/proc/")):
            return self._passthrough(ctx, dirfd, raw, flags)
        parts = [p for p in posixpath.normpath(raw).split(b"/") if p][1:]
        if not parts:
            return self._open_here(b".", flags)
        top, rest = parts[0], parts[1:]
        if not self._granted(ctx, top, rest):
            return Refused(errno.EACCES, "file", os.fsdecode(raw), "open",
                           reason="denied by the policy (fs_denied)")
        virtual = self._virtual_file(top, rest)
        if virtual is not None:
            return _serve_bytes(virtual, flags)
        if top in (b"self", b"thread-self") or top.isdigit():
            tid = ctx.pid
            tgid = processes.tgid(tid)
            if top == b"self":
                base = [str(tgid).encode()]
            elif top == b"thread-self":
                base = [str(tgid).encode(), b"task", str(tid).encode()]
            else:
                return self._open_member(int(top), tgid, rest, flags)
            return self._open_here(b"/".join(base + rest), flags)
        return None  # other /proc entries: Landlock decides

    def _granted(self, ctx, top: bytes, rest: list) -> bool:
        """Does the view let the sandbox read /proc/<top>/<rest>? A
        process's entries are checked under every name they have for the
        caller: as written, /proc/<pid>/..., and /proc/self/... (and
        thread-self) when the caller names itself."""
        names = [b"/".join([b"/proc", top, *rest])]
        if top in (b"self", b"thread-self") or top.isdigit():
            caller = processes.tgid(ctx.pid)
            target = caller if not top.isdigit() else _tgid_or_none(int(top))
            if target is not None:
                names.append(b"/".join([b"/proc", str(target).encode(), *rest]))
            if target == caller:
                names.append(b"/".join([b"/proc/self", *rest]))
                names.append(b"/".join([b"/proc/thread-self", *rest]))
        return all(self.view.may_read(os.fsdecode(n)) for n in names)

    def _passthrough(self, ctx, dirfd: int, raw: bytes, flags: int):
        """A directory the view keeps listable though Landlock has no rule
        for it: opened here read-only and injected. Anything else: None
        (CONTINUE, Landlock decides). Whatever the child's path resolves to
        here, only one of the pinned passthrough directories is ever
        handed out, so a path swapped meanwhile gains nothing."""
        if not self.passthrough or not flags & os.O_DIRECTORY or flags & O_PATH or _writes(flags):
            return None
        anchor = -1
        try:
            if raw.startswith(b"/"):
                base = fs.AT_FDCWD
            elif dirfd == fs.AT_FDCWD:
                tgid = processes.tgid(ctx.pid)
                anchor = base = os.open(f"/proc/{tgid}/task/{ctx.pid}/cwd",
                                        os.O_PATH | os.O_DIRECTORY | O_CLOEXEC)
            else:
                anchor = base = pidfd.getfd_of_task(ctx.pid, dirfd, processes.tgid)
            fd = fs.openat2(base, raw, os.O_RDONLY | os.O_DIRECTORY | O_CLOEXEC
                            | (flags & (os.O_NOFOLLOW | os.O_NONBLOCK)), fs.RESOLVE_NO_MAGICLINKS)
        except (OSError, ProcessLookupError):
            return None
        finally:
            if anchor >= 0:
                os.close(anchor)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) not in self.passthrough or not ctx._valid(ctx.id):
            os.close(fd)
            return None
        return NotifAction.inject_fd_send(fd, O_CLOEXEC if flags & O_CLOEXEC else 0)

    def _open_member(self, target: int, caller_tgid: int, rest: list, flags: int):
        """/proc/<target>/...: only for the sandbox's own processes, and the
        ptrace-guarded entries only for the caller's own thread group."""
        try:
            pidfd = os.pidfd_open(target)  # pins the process: its pid cannot be reused
        except OSError:
            return errno.ENOENT
        try:
            try:
                owner = processes.tgid(target)
            except (OSError, ProcessLookupError):
                return errno.ENOENT
            if owner not in self.members():  # not ours: as if it did not exist
                return Refused(errno.ENOENT, "process", f"/proc/{target}", "open",
                               reason="not a process of the sandbox")
            if owner != caller_tgid and rest and rest[0] in PTRACE_GATED:
                return Refused(errno.EACCES, "process", "/".join([f"/proc/{target}", *map(os.fsdecode, rest)]),
                               "open", reason="another process's private entry")
            verdict = self._open_here(b"/".join([str(target).encode()] + rest), flags)
            if _exited(pidfd):
                # It died meanwhile: the pid (and what we opened) may be another's.
                if isinstance(verdict, NotifAction) and verdict.srcfd >= 0:
                    os.close(verdict.srcfd)
                return errno.ENOENT
            return verdict
        finally:
            os.close(pidfd)

    def _open_here(self, path: bytes, flags: int):
        """Open `path` (relative to /proc) for the child: read-only, never
        leaving /proc, never through a magic link."""
        if _writes(flags):
            return Refused(errno.EACCES, "file", "/proc/" + os.fsdecode(path), "write",
                           reason="/proc is read-only in the sandbox")
        keep = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | O_PATH | os.O_NOCTTY
        try:
            fd = fs.openat2(self.proc_fd, path, (flags & keep) | O_CLOEXEC,
                            fs.RESOLVE_BENEATH | fs.RESOLVE_NO_MAGICLINKS | fs.RESOLVE_NO_XDEV)
        except OSError as e:
            return e.errno or errno.EACCES
        return NotifAction.inject_fd_send(fd, O_CLOEXEC if flags & O_CLOEXEC else 0)

    # -- virtual files -------------------------------------------------------

    def _virtual_file(self, top: bytes, rest: list) -> bytes | None:
        if rest:
            return None
        if self.num_cpus is not None and top == b"cpuinfo":
            return cpuinfo(self.num_cpus)
        if self.num_cpus is not None and top == b"stat":
            return proc_stat(self.num_cpus)
        if self.memory is not None and top == b"meminfo":
            return meminfo(self.memory.limit, self.memory.usage())
        return None

    # -- listings ------------------------------------------------------------

    def listing_filter(self, st):
        """For another listing handler (sorted_dirs.py): a predicate on the
        names of directory `st` when it is the private /proc's root, else None."""
        if st.st_dev != self.proc_dev or st.st_ino != self.proc_ino:
            return None
        members = {str(p).encode() for p in self.members()}
        return lambda name: not name.isdigit() or name in members

    def on_getdents(self, ctx):
        """Every listing is read here from the child's own open file (same
        offset), filtered when it is /proc, written back to the child."""
        if ctx.syscall_nr != self.getdents64_nr:
            return errno.ENOSYS  # the old getdents: libc uses getdents64
        fd_num, buf, count = ctx.args[0] & 0xFFFFFFFF, ctx.args[1], ctx.args[2]
        try:
            fd = child_fd(ctx, fd_num)
        except Answer as a:
            return a.errno
        try:
            st = os.fstat(fd)
            is_proc_root = st.st_dev == self.proc_dev and st.st_ino == self.proc_ino
            members = {str(p).encode() for p in self.members()} if is_proc_root else None
            size = min(count, MAX_DENTS)
            while True:
                raw = fs.getdents64(fd, size, self.getdents64_nr)
                if members is None or not raw:
                    out = raw
                    break
                out = b"".join(rec for rec, name in fs.dirents(raw)
                               if not name.isdigit() or name in members)
                if out:
                    break
        except OSError as e:
            return e.errno or errno.EIO
        finally:
            os.close(fd)
        if out and not ctx.write(buf, out):
            return errno.EFAULT
        return NotifAction.returns(len(out))

    # -- sched_getaffinity -----------------------------------------------------

    def on_getaffinity(self, ctx):
        n = self.num_cpus
        size = max(8, (n + 63) // 64 * 8)
        if ctx.args[1] < size:
            return errno.EINVAL
        mask = ((1 << n) - 1).to_bytes(size, "little")
        if not ctx.write(ctx.args[2], mask):
            return errno.EFAULT
        return NotifAction.returns(size)


def _tgid_or_none(pid: int) -> int | None:
    try:
        return processes.tgid(pid)
    except (OSError, ProcessLookupError):
        return None


def _c_int(value: int) -> int:
    """A syscall argument the kernel reads as a C int (e.g. a dirfd)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _inode_set(paths) -> frozenset[tuple[int, int]]:
    out = set()
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        out.add((st.st_dev, st.st_ino))
    return frozenset(out)


def _writes(flags: int) -> bool:
    """Would an open with these flags write, create or truncate?"""
    return flags & O_ACCMODE != os.O_RDONLY or bool(flags & _REFUSED_FLAGS)


def _serve_bytes(content: bytes, flags: int):
    """Answer a read-only open with a sealed in-memory file."""
    if _writes(flags):
        return errno.EACCES
    return NotifAction.inject_bytes(content, cloexec=bool(flags & O_CLOEXEC))


def _exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    import select
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(0))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def cpuinfo(n: int) -> bytes:
    """The first n processor blocks of the real cpuinfo, renumbered."""
    blocks = [b for b in _read("/proc/cpuinfo").split(b"\n\n") if b.strip()]
    out = []
    for i in range(n):
        lines = []
        for line in blocks[min(i, len(blocks) - 1)].split(b"\n"):
            key = line.split(b":", 1)[0].strip()
            if key == b"processor":
                line = b"processor\t: %d" % i
            elif key in (b"siblings", b"cpu cores"):
                line = key + b"\t: %d" % n
            elif key in (b"core id", b"apicid", b"initial apicid"):
                line = key + b"\t: %d" % i
            lines.append(line)
        out.append(b"\n".join(lines))
    return b"\n\n".join(out) + b"\n\n"


def proc_stat(n: int) -> bytes:
    """/proc/stat with per-CPU lines for n CPUs."""
    lines = _read("/proc/stat").split(b"\n")
    percpu = [ln for ln in lines if ln.startswith(b"cpu") and ln[3:4].isdigit()]
    out = []
    for line in lines:
        if line.startswith(b"cpu") and line[3:4].isdigit():
            if line is percpu[0]:
                for i in range(n):
                    src = percpu[min(i, len(percpu) - 1)]
                    out.append(b"cpu%d " % i + src.split(b" ", 1)[1])
            continue
        out.append(line)
    return b"\n".join(out)


def meminfo(limit: int, used: int) -> bytes:
    """/proc/meminfo with the sandbox's limit as the machine's memory."""
    total = limit // 1024
    free = max(0, limit - used) // 1024
    out = []
    for line in _read("/proc/meminfo").split(b"\n"):
        key = line.split(b":", 1)[0]
        if key == b"MemTotal":
            line = b"MemTotal:       %8d kB" % total
        elif key in (b"MemFree", b"MemAvailable"):
            line = key + b":" + b" " * (15 - len(key)) + b"%8d kB" % free
        out.append(line)
    return b"\n".join(out)
