"""random_seed: every random source the supervisor sees gives seeded bytes.

Bytes come from SHAKE-256 in counter mode keyed by the seed and a stream
label; block j of a stream is SHAKE-256(label | seed | j). One stream per
(process, source), never one shared stream: the bytes a process gets do
not depend on how the processes of the sandbox interleave.

A process is named by its place in the process tree, not by its pid: the
first process is "/0"; a child is its parent's name plus "/k", k counting
the parent's children in the order they first ask for random bytes. So
the same program gets the same bytes run after run, as long as its
processes start and first ask in the same order (siblings that race for
their first random bytes may swap names). Threads of a process share its
streams (in the order their calls reach the supervisor).

Sources:
  * getrandom(2): answered from the process's "getrandom" stream, written
    with process_vm_writev (EFAULT for a buffer the task could not write);
    GRND_* flags are checked as the kernel does; at most 1 MiB per call
    (a short count, which getrandom(2) allows above 256 bytes).
  * opens of /dev/urandom and /dev/random (any spelling the supervisor
    resolves to the device: the name must end in "random"): the process
    gets the slave of a pseudo-terminal in raw mode, a character device
    that never reaches EOF, kept filled from the process's n-th "urandom"
    stream by a pump thread. Consequence: isatty() is true on it, and a
    read() larger than what the terminal holds (about 64 KiB) returns
    fewer bytes. A write-only open goes to the real device.
  * the vDSO's getrandom: hidden (vdso.py), so libc makes the syscall.
Not controlled: AT_RANDOM (the 16 bytes the kernel gives each program at
exec, used by libc for stack and pointer guards), RDRAND/RDSEED, and a
device reached by a name not ending in "random" (e.g. a symlink named
otherwise) or a re-open through /proc/self/fd.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import select
import stat
import struct
import termios
import threading
import tty

from .._kernel import memory
from ..handler import NotifAction
from . import processes

CHUNK = 1 << 16
MAX_GETRANDOM = 1 << 20
GRND_NONBLOCK, GRND_RANDOM, GRND_INSECURE = 1, 2, 4
RANDOM_DEVICES = {os.makedev(1, 8), os.makedev(1, 9)}
TIOCSPTLCK, TIOCGPTPEER = 0x40045431, 0x5441
AT_FDCWD = -100
MAX_PATH = 4096


class Stream:
    """A seeded byte stream, read from its current position."""

    def __init__(self, seed: int, label: bytes):
        self.prefix = b"sandlock-random\0" + seed.to_bytes(8, "little") + b"\0" + label + b"\0"
        self.position = 0
        self._block = (-1, b"")

    def peek(self, n: int) -> bytes:
        out = bytearray()
        pos = self.position
        while len(out) < n:
            j, off = divmod(pos, CHUNK)
            if self._block[0] != j:
                self._block = (j, hashlib.shake_256(self.prefix + j.to_bytes(8, "little")).digest(CHUNK))
            piece = self._block[1][off:off + n - len(out)]
            out += piece
            pos += len(piece)
        return bytes(out)

    def take(self, n: int) -> bytes:
        data = self.peek(n)
        self.position += n
        return data


class Lineage:
    """Names of the sandbox's processes by their place in the tree."""

    MAX_DEPTH = 256

    def __init__(self, me: int):
        self.me = me
        self.names: dict[tuple[int, bytes], bytes] = {}  # (tgid, start time) → name
        self.counts: dict[bytes, int] = {}                # name → children named so far

    def name(self, tgid: int, depth: int = 0) -> bytes:
        fields = processes.stat_fields(tgid)
        key = (tgid, fields[19])
        known = self.names.get(key)
        if known is not None:
            return known
        ppid = int(fields[1])
        if depth > self.MAX_DEPTH:
            raise OSError(errno.ELOOP, "process tree too deep")
        parent = b"" if ppid in (self.me, 0) else self.name(ppid, depth + 1)
        n = self.counts.get(parent, 0)
        self.counts[parent] = n + 1
        name = self.names[key] = parent + b"/%d" % n
        return name


class SeededRandom:
    def __init__(self, me: int, seed: int):
        self.seed = seed
        self.lineage = Lineage(me)
        self.streams: dict[bytes, Stream] = {}   # label → stream
        self.opens: dict[bytes, int] = {}        # process name → device opens so far
        self.threads = processes.TaskMemo()   # tid → its process's lineage name
        self.pump: Pump | None = None

    def _process_name(self, tid: int) -> bytes:
        """The lineage name of thread `tid`'s process (kept while the
        thread lives: processes.TaskMemo)."""
        name = self.threads.get(tid, lambda t: (self.lineage.name(processes.tgid(t)), ()))
        if name is None:
            raise ProcessLookupError(tid)
        return name

    def _stream(self, label: bytes) -> Stream:
        s = self.streams.get(label)
        if s is None:
            s = self.streams[label] = Stream(self.seed, label)
        return s

    def on_getrandom(self, ctx):
        buf, count, flags = ctx.args[0], ctx.args[1], ctx.args[2] & 0xFFFFFFFF
        if flags & ~(GRND_NONBLOCK | GRND_RANDOM | GRND_INSECURE) \
                or flags & (GRND_RANDOM | GRND_INSECURE) == GRND_RANDOM | GRND_INSECURE:
            return errno.EINVAL
        count = min(count, MAX_GETRANDOM)
        if count == 0:
            return NotifAction.returns(0)
        stream = self._stream(self._process_name(ctx.pid) + b"|getrandom")
        try:
            n = memory.write_vm(ctx.pid, buf, stream.peek(count))
        except OSError as e:
            return errno.ESRCH if e.errno == errno.ESRCH else errno.EFAULT
        stream.position += n  # only what the task received
        return NotifAction.returns(n)

    def on_open(self, ctx):
        at = ctx.syscall_nr == self.openat_nr
        path_ptr, flags = (ctx.args[1], ctx.args[2]) if at else (ctx.args[0], ctx.args[1])
        try:
            path = memory.read_cstr(ctx.pid, path_ptr, MAX_PATH)
        except OSError:
            return None  # the kernel gives its own answer (EFAULT, ENAMETOOLONG)
        if not path.endswith(b"random") or flags & os.O_ACCMODE == os.O_WRONLY:
            return None
        if not path.startswith(b"/"):
            dirfd = (ctx.args[0] & 0xFFFFFFFF) - (1 << 32 if ctx.args[0] & 0x80000000 else 0) \
                if at else AT_FDCWD
            where = b"cwd" if dirfd == AT_FDCWD else b"fd/%d" % dirfd
            path = b"/proc/%d/%s/%s" % (ctx.pid, where, path)
        try:
            st = os.stat(path, follow_symlinks=not flags & os.O_NOFOLLOW)
        except (OSError, ValueError):
            return None
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev not in RANDOM_DEVICES:
            return None
        name = self._process_name(ctx.pid)
        n = self.opens.get(name, 0)
        self.opens[name] = n + 1
        if self.pump is None:
            self.pump = Pump()
        slave = self.pump.add(self._stream(name + b"|urandom|%d" % n))
        if flags & os.O_NONBLOCK:
            fcntl.fcntl(slave, fcntl.F_SETFL, os.O_RDWR | os.O_NONBLOCK)
        return NotifAction.inject_fd_send(slave, os.O_CLOEXEC if flags & os.O_CLOEXEC else 0)

    openat_nr = -1

    def close(self) -> None:
        self.threads.clear()
        if self.pump is not None:
            self.pump.close()
            self.pump = None


def open_terminal() -> tuple[int, int]:
    """(master, slave) of a new pseudo-terminal, the slave in raw mode; no
    controlling terminal is taken."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            tty.setraw(slave, termios.TCSANOW)
        except BaseException:
            os.close(slave)
            raise
    except BaseException:
        os.close(master)
        raise
    return master, slave


class Pump:
    """Keeps the terminals' masters filled from their streams (a thread:
    a reader may drain one at any time). A master whose slave is closed
    everywhere is dropped."""

    def __init__(self):
        self.lock = threading.Lock()
        self.masters: dict[int, Stream] = {}
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="sandlock-random-pump", daemon=True)
        self.thread.start()

    def add(self, stream: Stream) -> int:
        master, slave = open_terminal()
        with self.lock:
            self.masters[master] = stream
        os.write(self.wake_w, b"+")
        return slave

    def close(self) -> None:
        self.stopping = True
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass
        self.thread.join(5)
        with self.lock:
            for master in self.masters:
                os.close(master)
            self.masters.clear()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _run(self) -> None:
        try:
            self._pump()
        except BaseException:  # noqa: BLE001 - never leave readers waiting on a dead pump
            with self.lock:
                for master in self.masters:
                    os.close(master)  # its readers get an error, not a hang
                self.masters.clear()

    def _pump(self) -> None:
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        watched: set[int] = set()
        while not self.stopping:
            with self.lock:
                for master in self.masters.keys() - watched:
                    poller.register(master, select.POLLIN | select.POLLOUT)
                    watched.add(master)
            for fd, events in poller.poll():
                if fd == self.wake_r:
                    try:
                        os.read(self.wake_r, 512)
                    except BlockingIOError:
                        pass
                    continue
                if self.stopping:
                    break
                if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL) or not self._serve(fd, events):
                    poller.unregister(fd)
                    watched.discard(fd)
                    with self.lock:
                        if self.masters.pop(fd, None) is not None:
                            os.close(fd)

    def _serve(self, master: int, events: int) -> bool:
        stream = self.masters.get(master)
        if stream is None:
            return False
        try:
            if events & select.POLLIN:
                os.read(master, CHUNK)  # written to the device: dropped, as entropy would be
            if events & select.POLLOUT:
                while True:
                    data = stream.peek(4096)
                    n = os.write(master, data)
                    stream.position += n
                    if n < len(data):
                        break
        except BlockingIOError:
            pass
        except OSError:
            return False
        return True
