"""policy_fn, the supervisor's side: ask the caller, then act.

A held syscall is described (who, which syscall, the destination of a
network call, the argv of an exec) and sent to the caller's process, where
the callback runs (policyfn.py); the task waits, the supervisor goes on
serving every other syscall. The verdict comes back as errno 0 (go on with
the other handlers, which may act on the child's behalf: nothing was done
before the verdict) or an errno (denied; nothing was done at all). No
verdict within the timeout, a closed channel, or an error on our side:
denied (fail closed).

What the callback judged is what happens:
- network calls: the address bytes shown are kept on the notification
  (`ctx._judged`) and the on-behalf connect or send uses them, never a
  second read of the child's memory; a sendmmsg stops at the first message
  to another destination (a short count, which the kernel may give too);
- exec: argv is read with the whole sandbox stopped (freeze.py) and the
  sandbox stays stopped until the exec has left the kernel.

Observed syscalls are reported without waiting; the callback's verdict on
them is ignored, its PolicyContext calls are applied.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
import struct
import time
from typing import Any

from .. import protocol
from ..policy.policyfn import NAMES
from . import freeze, processes
from .network import read_sockaddr, parse_inet

MAX_ARGS = 8192          # argv entries shown; beyond: E2BIG (never a truncated argv)
MAX_ARGV_BYTES = 1 << 20
MAX_PENDING = 4096       # held syscalls waiting at once; beyond: EAGAIN


class Held:
    """A held syscall: the dispatcher resumes its handler chain at
    `resume_at` once the verdict allows it, then calls `after()`."""
    __slots__ = ("id", "ctx", "deadline", "resume_at", "after")

    def __init__(self, ident: int, ctx, deadline: float, after=None):
        self.id = ident
        self.ctx = ctx
        self.deadline = deadline
        self.resume_at = 0
        self.after = after


class LiveNetwork:
    """The network as policy_fn narrowed it, on top of the static plan (which
    always applies too): None = not narrowed. Grants never exceed the
    ceiling, the static plan's own destinations."""

    def __init__(self, net):
        self.net = net
        self.allowed: set | None = None
        self.per_pid: dict[int, set] = {}

    def _in_ceiling(self, address) -> bool:
        """May the static plan reach `address` at all (some rule's port)?"""
        if self.net.deny:
            return self.net.permits("tcp", address, 1) or self.net.permits("udp", address, 1)
        allow = self.net.allow
        if allow is None:
            return False
        for rule in allow.rules:
            port = 1 if rule.ports.any or not rule.ports.ranges else rule.ports.ranges[0][0]
            if any(allow.allows(proto, address, port) for proto in rule.protocols):
                return True
        return False

    def _addresses(self, names) -> set:
        """IPs as given; a hostname stands for the addresses the policy
        pinned for it (none if the policy does not name it: no DNS here)."""
        pinned = getattr(self.net.allow, "hosts", None) or {}
        out = set()
        for name in names if isinstance(names, (list, tuple)) else ():
            if not isinstance(name, str):
                continue
            try:
                out.add(ipaddress.ip_address(name))
            except ValueError:
                for a in pinned.get(name.lower().rstrip("."), ()):
                    out.add(ipaddress.ip_address(a))
        return out

    def permits(self, tgid: int, address) -> bool:
        mapped = getattr(address, "ipv4_mapped", None)
        address = mapped or address
        if tgid in self.per_pid:
            return address in self.per_pid[tgid]
        return self.allowed is None or address in self.allowed

    def apply(self, method: str, arg) -> None:
        if method == "restrict_network":
            ips = self._addresses(arg)
            self.allowed = ips if self.allowed is None else self.allowed & ips
        elif method == "grant_network":
            if self.allowed is not None:
                self.allowed |= {a for a in self._addresses(arg) if self._in_ceiling(a)}
        elif method == "restrict_pid_network":
            pid, ips = arg
            if isinstance(pid, int) and not isinstance(pid, bool):
                narrowed = self._addresses(ips)
                if pid in self.per_pid:
                    narrowed &= self.per_pid[pid]
                self.per_pid[pid] = narrowed


class PolicyGate:
    TICK = 1.0  # the timeouts are checked at next_due; TICK only bounds the sleep

    def __init__(self, sock_fd: int | None, timeout: float, root: int, nrs: dict[str, int], net,
                 process_limit=None, memory_limit=None):
        # No channel (a plan checked without a caller): every held call is denied.
        self.sock = None if sock_fd is None else socket.socket(fileno=sock_fd)
        if self.sock is not None:
            self.sock.setblocking(False)
        self.timeout = timeout
        self.root = root
        self.nrs = nrs
        self.names = {nr: name for name, nr in nrs.items()}
        self.vfork_nrs = frozenset(nrs[n] for n in ("vfork", "clone") if n in nrs)
        self.net = net
        self.live = LiveNetwork(net)
        self.process_limit = process_limit
        self.memory_limit = memory_limit
        self.pending: dict[int, Held] = {}
        self.dispatcher: Any = None  # the Dispatcher answering for this gate (set by spare)
        self.frozen: freeze.Frozen | None = None
        self.dropped = 0             # observed events the channel had no room for
        self.batch: list = []        # observed events not sent yet
        self.tasks = processes.TaskMemo()  # tid → (process, parent process)
        self.batch_due: float | None = None
        self.closed = self.sock is None
        self._next = 1
        self.denied_paths: list[str] = []
        self.denied_inodes: set[tuple[int, int]] = set()
        # supervisor/chroot.Chroot when the run has a chroot: deny_path's
        # paths are then virtual, resolved in its tree
        self.tree: Any = None

    @property
    def fd(self) -> int:
        return -1 if self.sock is None else self.sock.fileno()

    @property
    def next_due(self) -> float:
        due = min((h.deadline for h in self.pending.values()), default=time.monotonic() + self.TICK)
        return due if self.batch_due is None else min(due, self.batch_due)

    def handlers(self, held: tuple[str, ...], observed: tuple[str, ...]) -> tuple[dict, dict]:
        return {n: self.on_held for n in held}, {n: self.on_observed for n in observed}

    def close(self) -> None:
        self.flush()
        self.close_pending()
        self.tasks.clear()
        if self.sock is not None:
            self.sock.close()

    # -- asking ------------------------------------------------------------------

    def on_observed(self, ctx):
        described = self._describe(ctx)
        if not isinstance(described, int):
            self._observe(_event(described, described[7]))
        return None

    # Observed events go out in batches: the first of a batch is sent at
    # most BATCH_SECONDS later, a held event flushes the batch first (the
    # callback sees everything in order). Measured (2,000 observed opens,
    # 2-core VM): one send and one wake-up of the caller's thread per event
    # cost more than the notification itself.
    BATCH_SECONDS = 0.01
    BATCH_EVENTS = 128

    def _observe(self, event) -> None:
        if not self.batch:
            self.batch_due = time.monotonic() + self.BATCH_SECONDS
        self.batch.append(event)
        if len(self.batch) >= self.BATCH_EVENTS:
            self.flush()

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        self.batch_due = None
        if batch:
            self._send(batch[0] if len(batch) == 1 else protocol.PolicyEvents(batch), held=False)

    def on_held(self, ctx):
        if self.closed:
            return errno.EPERM
        if len(self.pending) >= MAX_PENDING:
            return errno.EAGAIN
        name = self.names.get(ctx.syscall_nr, "")
        is_exec = name.startswith("exec")
        if is_exec or (self.denied_paths and NAMES.get(name, ("", ""))[1] == "file"):
            return self._hold_frozen(ctx, name, is_exec)
        described = self._describe(ctx)
        if isinstance(described, int):
            return described
        if described[7]:
            # The static policy refuses it anyway: told, not asked (the
            # handler that refuses comes next in the chain).
            self._send(_event(described, True), held=False)
            return None
        return self._hold(ctx, _event(described, False))

    def _hold(self, ctx, event, after=None):
        ident = self._next
        self._next += 1
        event.id = ident
        held = Held(ident, ctx, time.monotonic() + self.timeout, after)
        if not self._send(event, held=True):
            if after is not None:
                after(False)
            return errno.EPERM  # the caller cannot be asked: denied
        self.pending[ident] = held
        return held

    def _send(self, event, held: bool) -> bool:
        if self.sock is None:
            return False
        if held:
            self.flush()
        try:
            self.sock.send(protocol.encode(event))
            return True
        except OSError:
            if not held:
                self.dropped += len(getattr(event, "events", (event,)))
            return False

    def _describe(self, ctx):
        """(syscall, category, pid, parent_pid, host, port, argv) + denied,
        or an errno when the caller cannot be described."""
        name = self.names.get(ctx.syscall_nr, "")
        event_name, category = NAMES.get(name, (name, "file"))
        ids = self.tasks.get(ctx.pid, _ids)
        if ids is None:
            return errno.ESRCH
        tgid, ppid = ids
        host, port, denied = None, 0, False
        if category == "network":
            raw = self._address(ctx, name)
            if isinstance(raw, int):
                return raw
            parsed = parse_inet(raw) if raw else None
            if parsed is not None:
                address, port = parsed[1], parsed[2]
                host = str(address)
                if name != "bind":
                    denied = not (self.net.permits("tcp", address, port)
                                  or self.net.permits("udp", address, port)) \
                        or not self.live.permits(tgid, address)
            ctx._judged = raw
        return (event_name, category, tgid, ppid, host, port, None, denied)

    def _address(self, ctx, name: str):
        """The destination's raw sockaddr (b"" when there is none), read as
        the on-behalf handlers read it (network.read_sockaddr)."""
        if name in ("connect", "bind"):
            ptr, length = ctx.args[1], ctx.args[2]
        elif name == "sendto":
            ptr, length = ctx.args[4], ctx.args[5]
        else:   # sendmsg, sendmmsg: the (first) msghdr's msg_name, msg_namelen
            hdr = ctx.read(ctx.args[1], 12)
            if hdr is None or len(hdr) != 12:
                return errno.EFAULT
            ptr, length = struct.unpack("=QI", hdr)
        if not ptr or not length & 0xFFFFFFFF:
            return b""
        return read_sockaddr(ctx, ptr, length)

    # -- exec argv, denied paths: judged with the sandbox stopped ----------------

    def _hold_frozen(self, ctx, name: str, is_exec: bool):
        if self.frozen is not None:
            return errno.EAGAIN  # one judged exec at a time (the sandbox is stopped anyway)
        parked = {h.ctx.pid for h in self.pending.values()}
        if self.dispatcher is not None:
            parked |= {c.pid for c, _w in self.dispatcher.deferred.values()}
        frozen = freeze.freeze(self.root, ctx.pid, parked, self.vfork_nrs)
        if frozen is None:
            return errno.EAGAIN  # the sandbox would not stop: not judged, not run
        self.frozen = frozen
        if self.dispatcher is not None:
            self.dispatcher.hold_answers(ctx.pid)
        done = False
        try:
            argv = self._argv(ctx, ctx.args[2] if name == "execveat" else ctx.args[1]) \
                if is_exec else None
            described = self._describe(ctx)
            if isinstance(argv, int) or isinstance(described, int):
                return argv if isinstance(argv, int) else described
            if self.denied_paths:
                refused = self._path_refused(ctx, name)
                if refused:
                    return refused
            verdict = self._hold(ctx, _event(described, False, argv),
                                 after=lambda allowed: self._after_frozen(ctx, allowed))
            done = isinstance(verdict, Held)
            return verdict
        finally:
            if not done:
                self._thaw()

    def _argv(self, ctx, ptr: int):
        from .._kernel import memory
        out: list[str] = []
        total = 0
        try:
            while True:
                if len(out) >= MAX_ARGS:
                    return errno.E2BIG
                raw = memory.read(ctx.pid, ptr + 8 * len(out), 8) if ptr else b"\0" * 8
                if len(raw) != 8:
                    return errno.EFAULT
                addr = struct.unpack("=Q", raw)[0]
                if not addr:
                    break
                s = memory.read_cstr(ctx.pid, addr, MAX_ARGV_BYTES - total)
                total += len(s) + 1
                out.append(os.fsdecode(s))
        except OSError as e:
            return errno.E2BIG if e.errno == errno.ENAMETOOLONG else errno.EFAULT
        if not ctx._valid(ctx.id):
            return errno.EPERM
        return tuple(out)

    def _after_frozen(self, ctx, allowed: bool) -> None:
        """The call was answered. Allowed: the sandbox stays stopped until it
        has left the kernel (its argv or path is read by then)."""
        if allowed and not freeze.wait_past(ctx.pid):
            try:
                os.kill(processes.tgid(ctx.pid), 9)  # stuck in exec: never let the others run first
            except (OSError, ProcessLookupError):
                pass
        self._thaw()

    def _thaw(self) -> None:
        frozen, self.frozen = self.frozen, None
        if frozen is not None:
            frozen.thaw()
        if self.dispatcher is not None:
            self.dispatcher.release_answers()

    # -- deny_path ----------------------------------------------------------------

    def _path_refused(self, ctx, name: str) -> int:
        """EACCES when the path of this open or exec is one policy_fn denied
        (decided with the sandbox stopped: the path cannot change until the
        kernel has read it), resolved as the child would. A denied file or
        directory is also known by its inode, so another name of it (a
        hard link, a rename, of the directory too) stays denied."""
        if self.tree is not None:
            where = self._resolve_in_tree(ctx, name)
            found = [] if where is None else [where]
        else:
            found = _resolve(ctx, name, self.tasks.get(ctx.pid, _ids))
        for path, inodes in found:
            if inodes & self.denied_inodes or any(path == d or path.startswith(d.rstrip("/") + "/")
                                                  for d in self.denied_paths):
                return errno.EACCES
        return 0

    def _resolve_in_tree(self, ctx, name: str) -> tuple[str, set[tuple[int, int]]] | None:
        """_resolve() inside a chroot: the virtual path the chroot's handler
        will open, and the inodes of it and of every directory above it.
        None when the handler itself answers (an errno, or the kernel's:
        the caller's own fds, /proc)."""
        from .. import chroot as vroot
        from .answers import Answer, c_int
        if name in ("openat", "execveat"):
            dirfd, ptr = c_int(ctx.args[0]), ctx.args[1]
        else:
            dirfd, ptr = -100, ctx.args[0]   # AT_FDCWD
        try:
            found = self.tree.locate(ctx, dirfd, ptr, True, empty_ok=True)
        except Answer as a:
            if a.errno is not None or dirfd < 0 or ctx.read_cstr(ptr, 1) != "":
                return None
            try:   # execveat(fd, "", AT_EMPTY_PATH): the file on the caller's fd
                found = (self.tree.fd_parts(ctx.pid, dirfd), None)
            except Answer:
                return None
        if not isinstance(found, tuple):
            return os.fsdecode(found.path), set()   # a host device file
        parts, _st = found
        inodes = set()
        for i in range(len(parts) + 1):
            try:
                st = self.tree.root.lstat(parts[:i])
            except OSError:
                st = None
            if st is not None:
                inodes.add((st.st_dev, st.st_ino))
        return os.fsdecode(vroot.vpath(parts)), inodes

    def _named(self, path: str) -> tuple[str, tuple[int, int] | None]:
        """(canonical path, (dev, ino) or None) of a path deny_path or
        allow_path names: a host path, or a virtual one inside a chroot."""
        if self.tree is not None:
            from .. import chroot as vroot
            try:
                parts, st = self.tree.root.walk([], os.fsencode(path), True)
            except OSError:
                parts, st = vroot.lexical(os.fsencode(path)), None
            return os.fsdecode(vroot.vpath(parts)), None if st is None else (st.st_dev, st.st_ino)
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError:
            return real, None
        return real, (st.st_dev, st.st_ino)

    # -- answers --------------------------------------------------------------------

    def on_readable(self) -> None:
        while self.sock is not None:
            try:
                frame = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError:
                frame = b""
            if not frame:
                self.close_pending()
                return
            try:
                verdict = protocol.decode_as(frame, protocol.Channel.POLICY, protocol.PolicyVerdict)
            except protocol.ProtocolError:
                continue  # not a verdict: nothing is allowed by it
            for method, arg in verdict.changes:
                self._change(method, arg)
            held = self.pending.pop(verdict.id, None)
            if held is not None and self.dispatcher is not None:
                self.dispatcher.release(held, verdict.errno)

    def close_pending(self) -> None:
        """The caller is gone: every held syscall is denied from now on."""
        self.closed = True
        for h in list(self.pending.values()):
            self._expire(h, errno.EPERM)

    def tick(self) -> None:
        now = time.monotonic()
        if self.batch_due is not None and self.batch_due <= now:
            self.flush()
        for h in [h for h in self.pending.values() if h.deadline <= now]:
            self._expire(h, errno.EPERM)

    def _expire(self, held: Held, err: int) -> None:
        self.pending.pop(held.id, None)
        if self.dispatcher is not None:
            self.dispatcher.release(held, err)

    def _change(self, method: str, arg) -> None:
        if method in ("restrict_network", "grant_network", "restrict_pid_network"):
            self.live.apply(method, arg)
        elif method == "restrict_max_processes" and self.process_limit is not None:
            if isinstance(arg, int) and 0 < arg < self.process_limit.limit:
                self.process_limit.limit = arg
        elif method == "restrict_max_memory" and self.memory_limit is not None:
            if isinstance(arg, int) and 0 < arg < self.memory_limit.limit:
                self.memory_limit.limit = arg
        elif method == "deny_path" and isinstance(arg, str) and arg.startswith("/"):
            real, inode = self._named(arg)
            self.denied_paths.append(real)
            if inode is not None:
                self.denied_inodes.add(inode)  # hardlinks and renames stay denied
        elif method == "allow_path" and isinstance(arg, str):
            real, inode = self._named(arg)
            self.denied_paths[:] = [d for d in self.denied_paths if d != real]  # in place: cow.Cow shares it
            if inode is not None:
                self.denied_inodes.discard(inode)


def _ids(tid: int):
    """((process, parent process), the pids that fact depends on) of task
    `tid`, from one read of its status (for processes.TaskMemo)."""
    tgid = ppid = None
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    tgid = int(line.split()[1])
                elif line.startswith(b"PPid:"):
                    ppid = int(line.split()[1])
                    break
    except (OSError, ValueError):
        return None
    return None if tgid is None or ppid is None else ((tgid, ppid), (ppid,) if ppid else ())


def _event(d: tuple, denied: bool, argv=None) -> protocol.PolicyEvent:
    """The event of a _describe() tuple (id set when it is held)."""
    return protocol.PolicyEvent(0, d[0], d[1], d[2], d[3], d[4], d[5], argv, denied)


def _resolve(ctx, name: str, ids) -> list[tuple[str, set[tuple[int, int]]]]:
    """[(canonical path, the (dev, ino) of every directory walked through and
    of the file)] of the path this open/exec names, resolved as the task
    would, then for an exec of a `#!` script, of its interpreter (and
    theirs, as deep as the kernel goes): the kernel runs that file too.
    An absent last component: its parent's path joined to it. Empty when
    the path cannot be read (the kernel then fails the call itself)."""
    if name in ("openat", "execveat"):
        dirfd, ptr = ctx.args[0] & 0xFFFFFFFF, ctx.args[1]
    else:
        dirfd, ptr = 0xFFFFFF9C, ctx.args[0]   # AT_FDCWD
    text = ctx.read_cstr(ptr, 4096)
    if text is None or ids is None:
        return []
    cwd = f"/proc/{ctx.pid}/cwd"
    base = cwd if dirfd == 0xFFFFFF9C else f"/proc/{ctx.pid}/fd/{dirfd}"
    out: list[tuple[str, set[tuple[int, int]]]] = []
    path = os.fsencode(text) or b"."
    for _level in range(5):   # the script, then up to 4 interpreters (BINPRM_MAX_RECURSION)
        try:
            dir_fd = os.open(base, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            break
        try:
            got = _located(dir_fd, path, ids[0], ctx.pid, name.startswith("exec"))
        finally:
            os.close(dir_fd)
        if got is None:
            break
        out.append(got[:2])
        words = got[2][2:].split(b"\n", 1)[0].split() if got[2].startswith(b"#!") else []
        if not words:
            break
        path, base = words[0], cwd   # a relative interpreter: from the caller's cwd
    return out


def _located(dir_fd: int, path: bytes, tgid: int, tid: int,
             head: bool) -> tuple[str, set[tuple[int, int]], bytes] | None:
    """(canonical path, inodes walked, the file's first bytes if `head`) of
    `path` from `dir_fd`; None if not even its directory exists."""
    seen: set[tuple[int, int]] = set()
    try:
        fd = _walk(dir_fd, path, tgid, tid, seen)
        leaf = b""
    except OSError:
        parent, leaf = os.path.split(path)
        try:
            fd = _walk(dir_fd, parent or b".", tgid, tid, seen)
        except OSError:
            return None
    try:
        where = os.readlink(f"/proc/self/fd/{fd}").encode()
        first = b""
        if head and not leaf and stat.S_ISREG(os.fstat(fd).st_mode):
            try:   # the same file, through our fd (never its name again)
                rd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                pass   # unreadable to us: no script (its interpreter could not read it either)
            else:
                try:
                    first = os.pread(rd, 256, 0)
                finally:
                    os.close(rd)
        return os.fsdecode(os.path.join(where, leaf) if leaf else where), seen, first
    finally:
        os.close(fd)


def _walk(dir_fd: int, path: bytes, tgid: int, tid: int, seen: set) -> int:
    """An O_PATH fd of `path` (from `dir_fd`, following symlinks), walked one
    component at a time as task `tid` would: /proc/self and
    /proc/thread-self name the task, not the supervisor walking (also when
    reached through a link, /dev/fd or /proc/mounts); the (dev, ino) of
    every directory passed and of the result go into `seen`."""
    proc = os.stat("/proc")
    todo = path.split(b"/")
    todo.reverse()
    cur = os.open("/" if path.startswith(b"/") else ".", os.O_PATH | os.O_CLOEXEC,
                  dir_fd=dir_fd)
    links = 0
    try:
        while todo:
            c = todo.pop()
            if c in (b"", b"."):
                continue
            here = os.fstat(cur)
            seen.add((here.st_dev, here.st_ino))
            at_proc = (here.st_dev, here.st_ino) == (proc.st_dev, proc.st_ino)
            if at_proc and c in (b"self", b"thread-self"):
                todo.extend(reversed([b"%d" % tgid] if c == b"self" else [b"%d" % tgid, b"task", b"%d" % tid]))
                continue
            nxt = os.open(c, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
            st = os.fstat(nxt)
            if stat.S_ISLNK(st.st_mode) and st.st_dev == proc.st_dev and not at_proc:
                # a magic link of a named process (fd/N, cwd, root, exe): the kernel's
                os.close(nxt)
                nxt = os.open(c, os.O_PATH | os.O_CLOEXEC, dir_fd=cur)
            elif stat.S_ISLNK(st.st_mode):
                links += 1
                target = os.readlink(c, dir_fd=cur)
                os.close(nxt)
                if links > 40 or not target:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                todo.extend(reversed(target.split(b"/")))
                if target.startswith(b"/"):
                    os.close(cur)
                    cur = os.open("/", os.O_PATH | os.O_CLOEXEC)
                continue
            os.close(cur)
            cur = nxt
        here = os.fstat(cur)
        seen.add((here.st_dev, here.st_ino))
        return cur
    except BaseException:
        os.close(cur)
        raise
