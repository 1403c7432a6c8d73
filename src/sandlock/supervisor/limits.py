"""Resource limits decided in the supervisor: processes, memory, CPU.

Every decision here is made from syscall *registers* (flags, lengths) and
from the kernel's own accounting in /proc, never from memory the child can
still change, so answering CONTINUE afterwards is safe.

max_memory counts what a cgroup's memory.max would charge, as far as /proc
shows it without a cgroup: resident anonymous pages (private copies of file
pages included), shmem/tmpfs pages, swapped-out pages of both, and page
tables, of all the sandbox's processes. Reserved address space costs
nothing (1 GiB mapped with MAP_NORESERVE and one page written costs a
page), and memory freed (munmap, exit, exec) is credited as soon as the
kernel frees it.

- When. The kernel charges at fault time, which the supervisor cannot see.
  Usage is measured at the allocation syscalls (mmap, brk, mremap,
  mprotect: a stale measurement is redone) and sampled by tick(), so that
  a sandbox filling memory as fast as the machine can reaches the limit no
  sooner than the next measurement (MemoryLimit._schedule). Only an mmap
  the kernel populates before returning (MAP_POPULATE, MAP_LOCKED) is
  charged its length up front, its caller killed if that crosses the limit.
- How. Two measurements. The cheap one (every time) sums RssAnon +
  RssShmem + VmSwap + VmPTE from /proc/<pid>/status, cost independent of
  the process's size: an upper bound (pages shared after fork count in
  every sharer). Only when it is over the limit does the full one run:
  Pss_Anon + Pss_Shmem + SwapPss from smaps_rollup (a page shared by n
  processes counts 1/n in each: once in all, as the cgroup counts it; a
  page-table walk, 17 ms per resident GiB here), vfork children sharing
  their parent's mm counted once (kcmp), unnamed shmem files counted by
  size. Kills are decided on the full measurement only.
- Unnamed shmem files (memfd, O_TMPFILE, unlinked tmpfs files) held open by
  a sandbox process are charged their allocated size (st_blocks), mapped or
  not, found by stat()ing /proc/<pid>/fd/* (at most MAX_FDS per full
  measurement, else the sandbox ends: fail closed); mappings of them are
  then not counted again. Between full measurements the cheap one adds the
  growth of the machine's Shmem (/proc/meminfo) that the sandbox's mapped
  pages do not explain, summed interval by interval, so a memfd filled
  with write() pushes it over and a full measurement looks (shmem growth
  elsewhere on the machine does too: costlier, never wrong; shmem freed
  elsewhere hides the sandbox's growth for one interval at most).
- Who. The process that crossed the limit is SIGKILLed, not its group: as
  neither a sample nor a syscall shows who faulted the pages in, the one
  that touched most new memory since the previous measurement (minor
  faults, plus growth of the shmem files it holds), the largest if none
  did; then the next while the sandbox is still over. A process that
  cannot be measured (it made itself undumpable: its open files and smaps
  are closed to the supervisor, which keeps no capabilities) is counted by
  its status, and killed when shmem growth the full measurement cannot
  place would take the sandbox over the limit (it may hold it; the growth
  may also be elsewhere on the machine: fail closed).
- Cost and overshoot (2-core VM, Linux 6.18): see the comment above
  MemoryLimit.FILL_RATE_PER_CPU.

Not counted (a cgroup would count them): kernel memory other than page
tables (socket and pipe buffers, slab); named files in a writable tmpfs
directory (they outlive the sandbox: the filesystem's size limit is their
bound, as disk quota is for disk files) except their pages mapped resident;
hugetlbfs pages; SysV shm segments (denied unless the sysv_ipc group is
allowed); and pages of an unnamed shmem object that no process holds open
and no mapping covers any more while the object lives on: a shared mapping
filled, then partly munmap()ed, or a memfd filled, mapped in part and
closed, or one in flight in a unix socket (SCM_RIGHTS). Seeing those needs
a cgroup, or stat() on /proc/<pid>/map_files, which needs CAP_SYS_ADMIN or
CAP_CHECKPOINT_RESTORE.
"""
from __future__ import annotations

import errno
import os
import signal
import stat
import time

from .._kernel.libc import raw_syscall
from ..denials import Refused
from . import processes

PAGE = os.sysconf("SC_PAGE_SIZE")
CLONE_THREAD = 0x00010000
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS = 0x01, 0x02, 0x20
PROT_WRITE = 0x2


def _read(path: str) -> bytes:
    return processes.read_proc(path)  # read at every fork: no open() buffer, fstat, ioctl


class ProcessLimit:
    """max_processes: peak concurrent processes (threads excluded).

    A fork is counted from the moment it is allowed (a reservation) until it
    shows in the process tree, so two forks answered back to back cannot
    both slip under the limit. A reservation ends when the forking thread's
    new child appears, when the thread is seen blocked in another syscall,
    or when it is gone.
    """

    # forkers beyond this many: those gone from /proc are forgotten
    PRUNE_AT = 4096

    def __init__(self, root: int, limit: int, fork_nrs: set[int], clone_nr: int):
        self.root = root
        self.limit = limit
        self.fork_nrs = fork_nrs  # fork, vfork, clone
        self.clone_nr = clone_nr
        self.pending: dict[int, tuple[frozenset[int], float]] = {}
        # The processes (thread groups) seen forking. Only they can have
        # children: every process of the sandbox is made by a fork answered
        # here (clone3 is refused with ENOSYS, plan.py), the first child
        # made none before its filter, and an orphan goes to the root (the
        # supervisor is the subreaper; a process of the sandbox that makes
        # itself one had forked first). So the count reads the children of
        # the root and of these only. Reading every process's children cost
        # 1.9 ms at 63 processes, paid by each fork (measured: fork(1000)
        # with 63 clones running spent ~1.9 s of its ~3.4 s there).
        self.forkers: set[int] = set()
        self.walk_all = False  # a forker could not be identified: read every process

    def _count(self) -> int:
        """Processes below the root (threads excluded)."""
        if self.walk_all:
            return len(processes.descendants(self.root))
        count = 0
        todo = processes.children(self.root)
        while todo:
            pid = todo.pop()
            count += 1
            if pid in self.forkers:
                todo += processes.children_if_alive(pid)
        return count

    def _note_forker(self, tid: int) -> None:
        try:
            self.forkers.add(processes.tgid(tid))
        except (OSError, ValueError):
            self.walk_all = True  # fail closed: count by the full walk from now on
            return
        if len(self.forkers) > self.PRUNE_AT:
            # A number reused by a new process stays (reading its children
            # costs a read, never a miss); only numbers gone are dropped.
            self.forkers = {p for p in self.forkers if os.path.exists(f"/proc/{p}")}

    def _children_of(self, tid: int) -> frozenset[int]:
        return frozenset(int(x) for x in _read(f"/proc/{tid}/task/{tid}/children").split())

    def _settled(self, tid: int, before: frozenset[int], since: float) -> bool:
        try:
            if self._children_of(tid) - before:
                return True
            state = _read(f"/proc/{tid}/task/{tid}/syscall").split(b" ", 1)[0]
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno in (errno.ESRCH, errno.ENOENT):
                return True
            return time.monotonic() - since > 0.1  # unreadable: expire, fail-closed meanwhile
        return state.isdigit() and int(state) not in self.fork_nrs

    def on_fork(self, ctx):
        if ctx.syscall_nr == self.clone_nr and ctx.args[0] & CLONE_THREAD:
            return None  # a thread, not a process
        self.pending.pop(ctx.pid, None)  # its previous fork has returned
        if not self.walk_all:
            self._note_forker(ctx.pid)  # before the child can exist
        for tid, (before, since) in list(self.pending.items()):
            if self._settled(tid, before, since):
                del self.pending[tid]
        count = self._count() + len(self.pending)
        if count >= self.limit:
            return Refused(errno.EAGAIN, "process", f"process {self.limit + 1}", "fork",
                           "max_processes", str(self.limit))
        try:
            before = self._children_of(ctx.pid)
        except OSError:
            before = frozenset()
        self.pending[ctx.pid] = (before, time.monotonic())
        return None


# -- max_memory ----------------------------------------------------------------

MAP_TYPE, MAP_SHARED_VALIDATE = 0x0f, 0x03
MAP_LOCKED, MAP_POPULATE = 0x2000, 0x8000  # the same on x86_64 and aarch64
PROT_READ = 0x1
KCMP_VM = 1
SHMEM_FS = (b"tmpfs", b"devtmpfs")  # filesystems whose files are shmem pages

MIB = 1 << 20


class MemoryMeasureError(RuntimeError):
    """The sandbox's memory could not be read. It must not count as 0: the
    supervisor loop turns this into the end of the sandbox."""


def _gone(e: OSError) -> bool:
    return e.errno in (errno.ENOENT, errno.ESRCH)


def _denied(e: OSError) -> bool:
    return e.errno in (errno.EACCES, errno.EPERM)


_STATUS = {b"PPid": "ppid", b"VmSize": "size", b"RssAnon": "anon", b"RssShmem": "shmem",
           b"VmSwap": "swap", b"VmPTE": "pte"}


def _status(pid: int) -> dict[str, int] | None:
    """RssAnon, RssShmem, VmSwap, VmPTE, VmSize (bytes) and PPid from
    /proc/<pid>/status; None once the process is gone. A zombie (no mm) has
    none of the memory lines: all zero."""
    try:
        data = processes.read_proc(f"/proc/{pid}/status")
    except OSError as e:
        if _gone(e):
            return None
        raise MemoryMeasureError(f"cannot read /proc/{pid}/status: {e}") from None
    out = dict.fromkeys(_STATUS.values(), 0)
    for line in data.splitlines():
        key, _, rest = line.partition(b":")
        name = _STATUS.get(key)
        if name is not None:
            value = int(rest.split()[0])
            out[name] = value if name == "ppid" else value * 1024
    return out


def _status_charge(st: dict[str, int]) -> int:
    return st["anon"] + st["shmem"] + st["swap"] + st["pte"]


_ROLLUP = {b"Pss_Anon": "anon", b"Pss_Shmem": "shmem", b"SwapPss": "swap"}


def _rollup(pid: int) -> dict[str, int] | None:
    """Pss_Anon, Pss_Shmem and SwapPss (bytes) from smaps_rollup: pages
    shared between processes split between them, so the sum over processes
    counts each page once. {} once the process has exited (no memory left,
    whatever its status said a moment ago). None when unavailable (no ptrace
    read access, kernel before 5.9): the caller falls back to status."""
    try:
        data = processes.read_proc(f"/proc/{pid}/smaps_rollup")
    except OSError as e:
        if _gone(e):
            return {}
        if _denied(e):
            return None
        raise MemoryMeasureError(f"cannot read /proc/{pid}/smaps_rollup: {e}") from None
    if not data:
        return {}  # a zombie: its mm is gone
    out: dict[str, int] = {}
    for line in data.splitlines():
        key, _, rest = line.partition(b":")
        name = _ROLLUP.get(key)
        if name is not None:
            out[name] = int(rest.split()[0]) * 1024
    return out if len(out) == len(_ROLLUP) else None


def _global_shmem() -> int:
    """The machine's shmem/tmpfs pages in memory (/proc/meminfo Shmem)."""
    for line in processes.read_proc("/proc/meminfo").splitlines():
        if line.startswith(b"Shmem:"):
            return int(line.split()[1]) * 1024
    raise MemoryMeasureError("/proc/meminfo has no Shmem line")


def _shmem_devices() -> frozenset[int]:
    """st_dev of every filesystem whose files are shmem pages: the kernel's
    internal mount (memfd, shared anonymous mappings) and tmpfs mounts."""
    devs = set()
    fd = os.memfd_create("sandlock-probe", os.MFD_CLOEXEC)
    try:
        devs.add(os.fstat(fd).st_dev)
    finally:
        os.close(fd)
    for line in processes.read_proc("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(b" - ")
        if right.split(b" ", 1)[0] in SHMEM_FS:
            major, minor = left.split()[2].split(b":")
            devs.add(os.makedev(int(major), int(minor)))
    return frozenset(devs)


def _stat(pid: int) -> tuple[int, int] | None:
    """(start time, minor faults) from /proc/<pid>/stat: the start time
    tells a pid from its reuse, the faults who has been touching new pages.
    None when gone or a zombie."""
    try:
        fields = processes.read_proc(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()
    except OSError as e:
        if _gone(e):
            return None
        raise MemoryMeasureError(f"cannot read /proc/{pid}/stat: {e}") from None
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19]), int(fields[7])


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


class _Usage:
    """One measurement: each process's own charge, plus shmem objects (files)
    counted by their allocated size, each once whatever holds it."""

    def __init__(self, precise: bool):
        self.precise = precise
        self.own: dict[int, int] = {}
        self.objects: dict[tuple[int, int], list] = {}  # (dev, ino) -> [bytes, {pid}]
        self.extra = 0  # growth of the machine's shmem not yet attributed (cheap only)
        self.unmeasurable: dict[int, str] = {}

    def total(self, without=frozenset()) -> int:
        t = self.extra + sum(v for p, v in self.own.items() if p not in without)
        for size, holders in self.objects.values():
            if not holders or not holders <= without:
                t += size
        return t

    def charge(self, pid: int) -> int:
        """What `pid` accounts for: its own pages and every object it holds
        (used to pick whom to kill, not summed)."""
        return self.own.get(pid, 0) + sum(s for s, h in self.objects.values() if pid in h)


class MemoryLimit:
    """max_memory: the memory the kernel charges for the sandbox.

    See the module docstring for what is counted and how. `killed` lists the
    pids killed for the limit; `reason` says why, for the run's notes.
    """

    # The loop reads TICK after every tick(): the time until the last
    # measurement expires (_schedule).
    TICK = 0.002
    MIN_TICK = 0.002
    MAX_TICK = 0.1
    # How fast one CPU can fill memory, bytes/s: the next measurement is due
    # when the sandbox, doing that on every CPU, could reach the limit.
    # Measured per CPU on the 2-core Linux 6.18 VM: page faults (memset)
    # 0.8 GB/s, bytearray() 0.3-1.1 GB/s, MAP_POPULATE 1.4 GB/s,
    # MADV_POPULATE_WRITE 1.5 GB/s, write() into a memfd 1.2 GB/s. A faster
    # machine overshoots in proportion.
    #
    # Overshoot measured there (peak of the sandbox's RssAnon + RssShmem,
    # sampled every ms from outside, 8 runs each; the figures include the
    # ~5 MiB of the waiting parent process):
    #   one process filling 1 GiB (bytearray loop, MADV_POPULATE_WRITE or a
    #   shared mapping): 64M -> 64..95 MiB (once 106), 512M -> 513..578 MiB;
    #   two processes filling at once (both CPUs busy, the supervisor
    #   competing with them for a CPU): 64M -> 70..157 MiB, 512M ->
    #   537..585 MiB (faults), up to 753 MiB (both in MADV_POPULATE_WRITE:
    #   the full measurement then took 95 ms of wall time for 21 ms of CPU).
    # A cgroup stops at the limit exactly; this is the price of sampling.
    FILL_RATE_PER_CPU = 2e9
    # A measurement costs at most 1/COST_FACTOR of the supervisor's time:
    # the next one waits at least COST_FACTOR times its CPU time.
    #
    # Supervisor CPU per second of sandbox run measured there (utime+stime of
    # the supervisor; about 0.7 ms per sample when it wakes from sleep, most
    # of it the cold /proc reads, 0.2 ms back to back):
    #   python sleeping, 512M: 1.3-1.6 %; 64M (60 MiB headroom): 3.5-5.5 %;
    #   holding 54 MiB of 64M, or 4 fork children sharing 30 MiB under 64M
    #   (full measurements every time): 9-11 % (the COST_FACTOR cap);
    #   allocating and freeing 20 MiB in a loop (every mmap trapped):
    #   11-22 %, against 30-34 % for the previous accounting.
    # Without max_memory: 0.3-1 %.
    COST_FACTOR = 10
    # Open files inspected per full measurement (about 6 us each); beyond
    # that the sandbox cannot be measured and ends (fail closed).
    MAX_FDS = 32768

    def __init__(self, root: int, limit: int, nrs: dict[str, int]):
        self.root = root
        self.limit = limit
        self.nrs = nrs
        self.killed: list[int] = []
        self.reason = ""
        self._kills: list[str] = []
        self._dying: dict[int, int | None] = {}  # pid -> start time, killed by us
        self._faults: dict[int, tuple[int, int]] = {}  # pid -> (start time, minflt) last seen
        self._held: dict[int, int] = {}  # pid -> shmem objects held at the last full measurement
        self._objects: dict[tuple[int, int], list] = {}  # from the last full measurement
        self._devs = _shmem_devices()
        # The machine's Shmem and the sandbox's mapped shmem at the last
        # measurement, and the growth not explained since the last full one.
        self._shmem_seen = _global_shmem()
        self._mapped_seen = 0
        self._unexplained = 0
        self._fill_rate = self.FILL_RATE_PER_CPU * max(1, len(os.sched_getaffinity(0)))
        self._next = 0.0  # monotonic time the last measurement is valid until
        self._failure: BaseException | None = None

    # -- the two entry points: allocation syscalls and the loop's sampling

    def on_alloc(self, ctx):
        """mmap/brk/mremap/mprotect. Address space costs nothing: only a
        call the kernel populates while serving it (MAP_POPULATE, MAP_LOCKED)
        is charged its length before it runs. Otherwise this is one more
        sampling point: the usage is measured if the last measurement is
        stale, and real use past the limit kills as in tick()."""
        if self._failure is not None:
            raise self._failure
        need = self._populates(ctx)
        if not need and time.monotonic() < self._next:
            return None
        caller = _tgid(ctx.pid)
        try:
            killed = self._check(caller, need)
        except BaseException as e:
            self._failure = e  # the next tick ends the sandbox
            self._next = 0.0
            raise
        return errno.ENOMEM if caller in killed else None

    @property
    def next_due(self) -> float:
        """When the next measurement is due (monotonic): the loop wakes for
        it even when an allocation handler moved it before TICK ran out."""
        return self._next

    def tick(self) -> None:
        if self._failure is not None:
            raise self._failure
        if time.monotonic() >= self._next:
            self._check()
        self.TICK = max(0.001, self._next - time.monotonic())

    def usage(self) -> int:
        """Current usage in bytes (the full measurement; kills nobody)."""
        self._prune_dying()
        statuses = self._statuses()
        return self._precise(statuses).total(frozenset(self._dying))

    # -- measuring

    def _populates(self, ctx) -> int:
        """Bytes an mmap makes resident before it returns."""
        if ctx.syscall_nr != self.nrs.get("mmap"):
            return 0
        length, prot, flags = ctx.args[1], ctx.args[2], ctx.args[3]
        if not flags & (MAP_POPULATE | MAP_LOCKED):
            return 0
        kind = flags & MAP_TYPE
        shared = kind in (MAP_SHARED, MAP_SHARED_VALIDATE)
        if shared and flags & MAP_ANONYMOUS and prot & (PROT_READ | PROT_WRITE):
            pass  # shmem pages, allocated even for reading
        elif kind == MAP_PRIVATE and prot & PROT_WRITE:
            pass  # anonymous, or copies of a file's pages (populated for writing)
        else:
            return 0  # zero page, or page cache of a shared file
        return (length + PAGE - 1) // PAGE * PAGE

    def _statuses(self) -> dict[int, dict[str, int]]:
        """status figures of every process, with "faulted": bytes of minor
        faults since the previous measurement (pages it touched)."""
        out = {}
        faults = {}
        for pid in processes.descendants(self.root):
            st = _status(pid)
            ident = _stat(pid)
            if st is None or ident is None:
                continue  # gone, or a zombie: nothing left to charge
            start, minflt = ident
            before = self._faults.get(pid)
            st["faulted"] = (minflt - (before[1] if before and before[0] == start else 0)) * PAGE
            faults[pid] = ident
            out[pid] = st
        self._faults = faults
        return out

    def _cheap(self, statuses) -> _Usage:
        """An upper bound from /proc/<pid>/status (whatever the process's
        size): RssAnon + RssShmem + VmSwap + VmPTE of every process (pages
        shared after fork count in each), the shmem files the last full
        measurement found, and the machine's shmem growth since then that
        mapped pages do not explain (a memfd filled with write() shows
        nowhere else)."""
        u = _Usage(False)
        for pid, st in statuses.items():
            u.own[pid] = _status_charge(st)
        u.objects = {k: [s, set(h)] for k, (s, h) in self._objects.items()}
        # Growth of the machine's Shmem that the sandbox's mapped pages
        # (RssShmem, counted above) do not explain: files growing unmapped.
        # Summed interval by interval, growth only: shmem freed elsewhere on
        # the machine can hide the sandbox's growth only within one interval.
        shmem, mapped = _global_shmem(), sum(st["shmem"] for st in statuses.values())
        self._unexplained += max(0, (shmem - self._shmem_seen) - (mapped - self._mapped_seen))
        self._shmem_seen, self._mapped_seen = shmem, mapped
        u.extra = self._unexplained
        return u

    def _precise(self, statuses) -> _Usage:
        """The full measurement (taken when the cheap bound is over the
        limit): proportional set sizes, shmem files held open or mapped
        counted once by their allocated size, vfork children not counted
        twice. Costs a page-table walk per process (smaps_rollup: 0.3 ms for
        a small python, 5 ms for node, 17 ms per resident GiB here)."""
        self._shmem_seen = _global_shmem()  # before the scan: later growth shows next time
        self._mapped_seen = sum(st["shmem"] for st in statuses.values())
        self._unexplained = 0
        u = _Usage(True)
        budget = [self.MAX_FDS]
        for pid in statuses:
            self._held_files(pid, u, budget)
        for pid, st in statuses.items():
            if pid in u.unmeasurable:
                u.own[pid] = _status_charge(st)
                continue
            if self._shares_parent_mm(pid, st, statuses):
                u.own[pid] = 0  # a vfork child before exec: its parent's pages
                continue
            r = _rollup(pid)
            if r is None:
                u.own[pid] = _status_charge(st)  # fails high, never low
                continue
            if not r:
                u.own[pid] = 0  # exited since its status was read
                continue
            shmem = r["shmem"]
            if u.objects:
                shmem -= self._counted_by_size(pid, u)
            u.own[pid] = r["anon"] + r["swap"] + st["pte"] + max(0, shmem)
        self._objects = {k: [s, set(h)] for k, (s, h) in u.objects.items()}
        return u

    def _held_files(self, pid: int, u: _Usage, budget: list[int]) -> None:
        """Unnamed shmem files (memfd, O_TMPFILE, unlinked tmpfs files) this
        process holds open: their pages live as long as it holds them,
        mapped or not. Named tmpfs files outlive the sandbox and are not
        its memory (see the module docstring)."""
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError as e:
            if _gone(e):
                return
            if _denied(e):  # undumpable (PR_SET_DUMPABLE 0): its files cannot be seen
                u.unmeasurable[pid] = f"its open files cannot be inspected ({e.strerror})"
                return
            raise MemoryMeasureError(f"cannot list /proc/{pid}/fd: {e}") from None
        budget[0] -= len(names)
        if budget[0] < 0:
            raise MemoryMeasureError(f"max_memory: the sandbox holds more than {self.MAX_FDS} "
                                     f"open files, too many to measure")
        for name in names:
            try:
                st = os.stat(f"/proc/{pid}/fd/{name}")
            except OSError as e:
                if _gone(e):
                    continue  # closed meanwhile
                if _denied(e):
                    u.unmeasurable[pid] = f"its open files cannot be inspected ({e.strerror})"
                    return
                raise MemoryMeasureError(f"cannot stat /proc/{pid}/fd/{name}: {e}") from None
            if st.st_nlink == 0 and stat.S_ISREG(st.st_mode) and st.st_dev in self._devs:
                u.objects.setdefault((st.st_dev, st.st_ino), [st.st_blocks * 512, set()])[1].add(pid)

    def _counted_by_size(self, pid: int, u: _Usage) -> int:
        """The shmem Pss of this process's mappings of objects already
        counted by size, so they are not counted twice; it holds them too."""
        try:
            maps = processes.read_proc(f"/proc/{pid}/maps")
        except OSError as e:
            if _gone(e):
                return 0
            raise MemoryMeasureError(f"cannot read /proc/{pid}/maps: {e}") from None
        ranges: dict[bytes, bool] = {}  # range -> shared
        for line in maps.splitlines():
            f = line.split(None, 5)
            if len(f) < 5 or f[4] == b"0":
                continue
            major, _, minor = f[3].partition(b":")
            key = (os.makedev(int(major, 16), int(minor, 16)), int(f[4]))
            if key in u.objects:
                u.objects[key][1].add(pid)
                ranges[f[0]] = f[1][3:4] == b"s"
        return _smaps_shmem(pid, ranges) if ranges else 0

    def _shares_parent_mm(self, pid: int, st: dict[str, int], statuses) -> bool:
        parent = statuses.get(st["ppid"])
        if parent is None or not st["size"]:
            return False
        if (parent["size"], parent["anon"], parent["pte"]) != (st["size"], st["anon"], st["pte"]):
            return False
        nr = self.nrs.get("kcmp")
        return nr is not None and raw_syscall(nr, st["ppid"], pid, KCMP_VM, 0, 0)[0] == 0

    # -- deciding

    def _prune_dying(self) -> None:
        for pid, start in list(self._dying.items()):
            ident = _stat(pid)
            if start is None or ident is None or ident[0] != start:
                del self._dying[pid]

    def _check(self, caller: int | None = None, need: int = 0) -> list[int]:
        """Measure; kill what is over the limit; schedule the next
        measurement. Returns the pids killed."""
        started = time.thread_time()  # CPU time: waiting for a CPU costs nothing
        self._prune_dying()
        statuses = self._statuses()
        without = set(self._dying)
        u = self._cheap(statuses)
        killed: list[int] = []
        if u.total(without) + need > self.limit:
            hidden = u.extra
            u = self._precise(statuses)
            killed = self._enforce(u, statuses, without, caller, need, hidden)
            self._held = {pid: u.charge(pid) - u.own[pid] for pid in u.own}
        self._schedule(self.limit - u.total(without) - need, started)
        return killed

    def _enforce(self, u: _Usage, statuses, without: set[int], caller, need: int,
                 hidden: int) -> list[int]:
        killed: list[int] = []
        before = u.total(without)
        # `hidden`: the machine's shmem growth that made the cheap bound go
        # over and that this measurement did not find. A process that cannot
        # be measured may hold it: if it may cross the limit, such processes
        # are killed (fail closed; it may also be shmem used elsewhere).
        if before + hidden > self.limit:
            for pid, why in u.unmeasurable.items():
                if pid not in without:
                    self._kill(pid, without, killed, f"killed process {pid}: {why}")
        if need and caller is not None and caller not in without \
                and u.total(without) + need > self.limit:
            self._kill(caller, without, killed,
                       f"killed process {caller}: a populated mapping of {_mib(need)} would take "
                       f"the sandbox from {_mib(u.total(without))} past the limit")
        while u.total(without) > self.limit:
            # The process that crossed the limit, as well as /proc can
            # tell: the one that touched most new memory since the previous
            # measurement (its minor faults; plus growth of the shmem files
            # it holds, which write() fills without faults); the largest
            # when none did. Not the growth of its Pss: when a fork child
            # copies a shared page, its parent's Pss grows as much.
            alive = [p for p in u.own if p not in without]
            if not alive:
                break

            def crossing(p):
                held = u.charge(p) - u.own[p]
                return (statuses[p]["faulted"] + max(0, held - self._held.get(p, 0)), u.charge(p))
            victim = max(alive, key=crossing)
            self._kill(victim, without, killed,
                       f"killed process {victim} (charged {_mib(u.charge(victim))}) when the "
                       f"sandbox used {_mib(before)}")
        return killed

    def _kill(self, pid: int, without: set[int], killed: list[int], note: str) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        without.add(pid)
        killed.append(pid)
        ident = _stat(pid)
        self._dying[pid] = ident[0] if ident else None
        self.killed.append(pid)
        self._kills.append(note)
        shown = self._kills[:3] + ([f"and {len(self._kills) - 3} more"] if len(self._kills) > 3 else [])
        self.reason = (f"max_memory: {'; '.join(shown)} "
                       f"(limit {_mib(self.limit)}: resident anonymous and shmem memory)")

    def _schedule(self, headroom: int, started: float) -> None:
        """The next measurement is due when the sandbox, filling memory as
        fast as a machine can (FILL_RATE_PER_CPU on every CPU), could reach
        the limit: within MIN_TICK..MAX_TICK, and never sooner than
        COST_FACTOR times what this one cost."""
        period = min(self.MAX_TICK, max(self.MIN_TICK, headroom / self._fill_rate))
        cost = time.thread_time() - started
        self._next = time.monotonic() + max(period, self.COST_FACTOR * cost)


def _tgid(tid: int) -> int:
    try:
        return processes.tgid(tid)
    except (OSError, ProcessLookupError):
        return tid


def _smaps_shmem(pid: int, ranges: dict[bytes, bool]) -> int:
    """Shmem Pss of the given mappings (range -> shared), from smaps: a
    shared mapping holds only shmem pages; a private one also holds its own
    anonymous copies, taken off."""
    try:
        data = processes.read_proc(f"/proc/{pid}/smaps")
    except OSError as e:
        if _gone(e):
            return 0
        raise MemoryMeasureError(f"cannot read /proc/{pid}/smaps: {e}") from None
    total = 0
    current = None
    pss = anon = 0
    for line in data.splitlines() + [b"end-"]:
        head = line.split(None, 1)[0] if line else b""
        if not head.endswith(b":"):  # a mapping's first line
            if current is not None:
                total += pss if ranges[current] else max(0, pss - anon)
            current = head if head in ranges else None
            pss = anon = 0
        elif current is not None:
            if head == b"Pss:":
                pss = int(line.split()[1]) * 1024
            elif head == b"Anonymous:":
                anon = int(line.split()[1]) * 1024
    return total


class CpuThrottle:
    """max_cpu: hold the sandbox to N percent of one core by stopping and
    continuing all its processes, from their measured CPU time."""

    TICK = 0.02

    def __init__(self, root: int, percent: int):
        self.root = root
        self.rate = percent / 100.0
        self.budget = 0.0
        self.last_cpu: float | None = None
        self.last_time = time.monotonic()
        self.stopped = False

    def _cpu_seconds(self) -> float:
        total = 0
        for pid in processes.descendants(self.root):
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    total += int(_read(f"/proc/{pid}/task/{tid}/schedstat").split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return total / 1e9

    def tick(self) -> None:
        now = time.monotonic()
        cpu = self._cpu_seconds()
        if self.last_cpu is not None:
            used = max(0.0, cpu - self.last_cpu)
            self.budget = min(self.budget + (now - self.last_time) * self.rate - used, self.TICK)
        self.last_cpu, self.last_time = cpu, now
        if self.budget < 0 and not self.stopped:
            processes.signal_all(self.root, signal.SIGSTOP)
            self.stopped = True
        elif self.budget >= 0 and self.stopped:
            processes.signal_all(self.root, signal.SIGCONT)
            self.stopped = False
