"""Plan → running sandbox.

The caller builds the Landlock ruleset (errors surface here, as exceptions,
before anything forks) and sends it, with the launch request and the stdio
fds, straight to a child that a supervisor has forked ahead of time (see
supervisor/spare.py). The caller keeps a control pipe to the supervisor
and a result pipe from it. Every message is a protocol.py message.

Who forks supervisors:
- a launch server, a separate small process per caller (the default:
  forking it is cheap and it never copies the caller's threads);
- the current process itself (the CLI, which is already small and
  single-threaded);
- the caller, for run_with_handlers (the handlers are its objects).

Lifetimes: a supervisor dies with whoever forked it (a parent-death
signal it catches, to kill its sandbox first), and every forker is a
child subreaper that kills the orphans of a supervisor that died.
"""
from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from typing import Any, Sequence

from . import protocol
from ._kernel import landlock
from .exceptions import ConfinementError, SandboxError
from .plan import Plan


def build_ruleset(plan: Plan) -> int:
    """A Landlock ruleset fd holding the plan's rules."""
    try:
        fd = landlock.create_ruleset(plan.handled_fs, plan.handled_net, plan.scoped)
    except OSError as e:
        raise ConfinementError(f"cannot create the Landlock ruleset: {e.strerror}") from None
    try:
        for path, access in plan.fs.rules:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # vanished since the plan was made: no grant
            try:
                if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                    access &= landlock.FS_FILE_RIGHTS
                landlock.add_path_rule(fd, pfd, access & plan.handled_fs)
            finally:
                os.close(pfd)
        for port in plan.bind_ports:
            landlock.add_net_rule(fd, port, landlock.NET_BIND_TCP)
        if plan.handled_net & landlock.NET_CONNECT_TCP:
            for port in plan.connect_ports:
                landlock.add_net_rule(fd, port, landlock.NET_CONNECT_TCP)
    except OSError as e:
        os.close(fd)
        raise ConfinementError(f"cannot add a Landlock rule: {e.strerror}") from None
    return fd


def launch_message(plan: Plan, timeout: float | None, umask: int, new_pgrp: bool,
                   control: tuple[str, str] | None = None,
                   branch_dir: str | None = None, n_extra: int = 0) -> protocol.Launch:
    """The launch request for `plan`. The Landlock rules travel in the
    ruleset fd, not here: a big split grant would not fit one message, and
    nobody past this point reads them. `control`: (runtime directory,
    sandbox name) of the run's control socket (control.prepare). `n_extra`:
    descriptors beyond stdio, which the child gets at 3, 4, ..."""
    import dataclasses
    child = protocol.ChildSteps(
        argv=plan.argv, exec_candidates=plan.exec_candidates, envp=plan.envp, cwd=plan.cwd,
        program=plan.program, handoff=bool(plan.notify or plan.routes), rlimits=plan.rlimits,
        thp_disable=plan.thp_disable, personality=plan.personality,
        cpu_affinity=plan.cpu_affinity, umask=umask, new_pgrp=new_pgrp, ids=plan.ids,
        extra_fds=tuple(range(3, 3 + n_extra)), exec_by_fd=plan.chroot is not None)
    supervisor = protocol.SupervisorPlan(
        routes=plan.routes, fs=dataclasses.replace(plan.fs, rules=()), net=plan.net, proc=plan.proc,
        max_processes=plan.max_processes, max_memory=plan.max_memory, max_cpu=plan.max_cpu,
        num_cpus=plan.num_cpus, timeout=timeout,
        name=control[1] if control is not None else plan.name,
        control_dir=control[0] if control is not None else None,
        command=[os.fsdecode(a) for a in plan.argv], policy=plan.summary,
        determinism=plan.determinism,
        policy_fn_timeout=None if plan.policy_fn is None else plan.policy_fn.timeout,
        chroot=None if plan.chroot is None else (
            plan.chroot[0].root, plan.chroot[0].mounts, plan.chroot[1]),
        cow=None if plan.cow is None or branch_dir is None else (plan.cow[0], branch_dir, plan.cow[2]))
    return protocol.Launch(child, supervisor)


class Launched:
    """The caller's view of a running sandbox: its pid and two pipes."""

    def __init__(self, ctl_w: int, res_r: int, server, token=None, supervisor_pid: int = 0):
        self.ctl_w = ctl_w
        self.res_r = res_r
        self.server = server
        self.token = token  # the supervisor connection, handed back at the end
        self.supervisor_pid = supervisor_pid
        self.child_pid: int | None = None
        self.ports: dict[int, int] = {}  # port_remap: virtual -> real
        self.result: protocol.Finished | None = None
        self._reader = protocol.Reader(protocol.Channel.RESULT)
        self.branch: Any = None  # the run's copy-on-write branch (cow.branch.Branch), if any
        self.branch_actions = ("commit", "abort")  # (on_exit, on_error) for it
        self.policy_gate: Any = None  # policy_fn's thread (policyfn.CallerGate), if any
        self.paused = False  # Sandbox.pause() was the last of pause()/resume()

    def read_pid(self) -> int:
        """Block until the supervisor reports the child's pid."""
        while self.child_pid is None and self.result is None:
            if not self.feed(os.read(self.res_r, 65536)):
                break
        if self.child_pid is None:
            raise SandboxError(self.result.error if self.result and self.result.error
                               else "the supervisor exited before starting the child")
        return self.child_pid

    def feed(self, data: bytes) -> bool:
        """Take the supervisor's messages; False at EOF."""
        if not data:
            if self.result is None:
                self.result = protocol.Finished(
                    error="the sandbox supervisor ended without a result")
            self.server.collect(self.token)
            self.token = None
            return False
        try:
            messages = self._reader.feed(data)
        except protocol.ProtocolError as e:
            messages = [protocol.Finished(error=f"bad message from the sandbox supervisor: {e}")]
        for msg in messages:
            if isinstance(msg, protocol.Started):
                self.child_pid = msg.pid
                self.supervisor_pid = msg.supervisor_pid
            elif isinstance(msg, protocol.PortMapped):
                self.ports[msg.virtual] = msg.real
            elif isinstance(msg, protocol.Finished):
                self.result = msg
        return True

    def send(self, cmd: protocol.Cmd) -> None:
        if self.ctl_w < 0:
            return  # the run is over and its pipe closed
        try:
            os.write(self.ctl_w, protocol.encode(protocol.Command(cmd)))
        except OSError:
            pass

    def kill_supervisor(self) -> None:
        """Last resort when the supervisor does not answer: kill it (its
        sandbox's processes then die with it, see supervisor/spare.py)."""
        if self.supervisor_pid > 0:
            try:
                os.kill(self.supervisor_pid, signal.SIGKILL)
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return self.res_r < 0

    def close(self) -> None:
        """Close both pipes, once: a second close would hit whatever fd
        number the process has reused meanwhile (a socket, a file)."""
        for fd in (self.ctl_w, self.res_r):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.ctl_w = self.res_r = -1


def start(plan: Plan, stdio: tuple[int, int, int], timeout: float | None,
          new_pgrp: bool = True, user_handlers=None, branch_dir: str | None = None,
          extra_fds: Sequence[int] = (), policy_gate=None) -> Launched:
    """Start the plan with `stdio` as the child's 0/1/2, and `extra_fds`
    (none by default) as its 3, 4, ... in that order.

    With user handlers, the supervisor is forked from this process instead
    (the handlers are Python objects of the caller) and the launch server is
    not used; so with a policy_gate (policyfn.CallerGate: the supervisor
    inherits its end of the channel to policy_fn).
    """
    for name, fd in zip(("stdin", "stdout", "stderr"), stdio, strict=True):
        check_fd(fd, name)
    extra_fds = list(extra_fds)
    if len(extra_fds) > protocol.MAX_EXTRA_FDS:
        raise SandboxError(f"at most {protocol.MAX_EXTRA_FDS} descriptors beyond stdio can be "
                           f"passed (got {len(extra_fds)})")
    for i, fd in enumerate(extra_fds):
        check_fd(fd, f"fd {3 + i}")
    from . import control
    where = control.prepare(plan.name)  # the private runtime directory, the name (not in use)
    ruleset = build_ruleset(plan)
    ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
    res_r, res_w = os.pipe2(os.O_CLOEXEC)
    if plan.cow is not None and branch_dir is None:
        raise SandboxError("a copy-on-write run needs its branch (Sandbox creates it)")
    data = protocol.encode(launch_message(plan, timeout, _umask(), new_pgrp, where, branch_dir,
                                          len(extra_fds)))
    if user_handlers is not None or policy_gate is not None:
        mine = [] if policy_gate is None else [policy_gate.mine.fileno()]
        server = DirectSupervisor(user_handlers, [ctl_w, res_r, *mine],
                                  None if policy_gate is None else policy_gate.supervisor_fd)
    else:
        server = current_server()
        if isinstance(server, RemoteServer) and server.starting() and _single_threaded():
            # The launch server is still starting (a fresh interpreter: tens
            # of milliseconds, measured in benchmarks "first_run"). A
            # single-threaded caller may be forked safely, so the first runs
            # do not wait for it: their supervisor is forked from here.
            # Once the server has answered, a spare it is still forking is
            # waited for instead: that takes a few ms, where forking this
            # (large) caller, a keeper and a supervisor took ~28 ms
            # (measured: the second stage of `true | true`).
            server = DirectSupervisor(None, [ctl_w, res_r])
    try:
        try:
            spare, token, supervisor_pid = server.take_spare()
        except SandboxError:
            if not isinstance(server, RemoteServer):
                raise
            # Its connection broke (the caller closed the fd, the server
            # died): once, with a new server.
            server = _replace_server(server)
            spare, token, supervisor_pid = server.take_spare()
        try:
            socket.send_fds(spare, [data], [ruleset, *stdio, ctl_r, res_w, *extra_fds])
        except OSError as e:
            server.collect(token)
            raise SandboxError(f"cannot reach the sandbox supervisor: {e}") from None
        finally:
            spare.close()
    except BaseException:
        for fd in (ctl_w, res_r):
            os.close(fd)
        raise
    finally:
        for fd in (ruleset, ctl_r, res_w):
            os.close(fd)
    return Launched(ctl_w, res_r, server, token, supervisor_pid)


def reserve(n: int) -> None:
    """Before starting `n` runs at once: ask the launch server for the
    supervisors they need now, so later ones do not wait for a cold fork."""
    server = current_server()
    if isinstance(server, RemoteServer):
        server.reserve(n)


def _recv_fds(sock: socket.socket, size: int, maxfds: int, flags: int = 0) -> tuple[bytes, list[int]]:
    """socket.recv_fds, honouring `flags` (Python 3.11's ignores them, so
    MSG_DONTWAIT blocked)."""
    import array
    fds = array.array("i")
    msg, ancdata, _flags, _addr = sock.recvmsg(size, socket.CMSG_LEN(maxfds * fds.itemsize), flags)
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
    return msg, list(fds)


def _fd_identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _single_threaded() -> bool:
    from ._kernel import fork
    return fork.single_threaded()


def check_fd(fd, name: str) -> None:
    """A bad stdio argument of the caller is the caller's error, named."""
    from .exceptions import PolicyError
    if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
        raise PolicyError(f"{name}: expected an open file descriptor, got {fd!r}")
    try:
        os.fstat(fd)
    except OSError as e:
        raise PolicyError(f"{name}: {fd} is not an open file descriptor ({e.strerror})") from None


def _umask() -> int:
    from .supervisor.processes import umask_of
    umask = umask_of("self")
    if umask is None:
        raise SandboxError("cannot read this process's umask from /proc/self/status")
    return umask


# -- servers -------------------------------------------------------------------

def _child_offer(supervisor: socket.socket) -> tuple[socket.socket, int] | None:
    """Wait for the supervisor to offer its next pre-forked child:
    (the child's request socket, the supervisor's pid), or None if the
    supervisor is gone."""
    try:
        msg, fds, _f, _a = socket.recv_fds(supervisor, 256, 1)
    except OSError:
        return None
    offer: protocol.ChildOffer | None
    try:
        offer = protocol.decode_as(msg, protocol.Channel.OFFER, protocol.ChildOffer)
    except protocol.ProtocolError:
        offer = None
    if offer is None or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    return socket.socket(fileno=fds[0]), offer.supervisor_pid


def _only_child(supervisor: socket.socket) -> tuple[socket.socket, int]:
    """The child a one-run supervisor offers; its connection is then closed."""
    try:
        offer = _child_offer(supervisor)
    finally:
        supervisor.close()
    if offer is None:
        raise SandboxError("the sandbox supervisor failed to start")
    return offer


class RemoteServer:
    """A launch server process owned by this (caller) process, and the
    supervisors it has handed us. A supervisor serves runs one after the
    other, offering a freshly forked child each time; idle ones are kept."""

    MAX_IDLE = 4
    MAX_RESERVE = 16  # reserve(): at most this many supervisors ahead

    def __init__(self):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from sandlock.supervisor import server; server.main(int(sys.argv[2]), int(sys.argv[3]))")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", code, root, str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True)
        except OSError as e:
            mine.close()
            raise SandboxError(f"cannot start the sandlock launch server: {e}") from None
        finally:
            theirs.close()
        self.sock = mine
        self.sock_id = _fd_identity(mine.fileno())
        self.owner = os.getpid()
        self.lock = threading.Lock()
        self.idle: list[socket.socket] = []
        self.idle_ids: dict[int, tuple[int, int] | None] = {}
        self.asked = 0
        self.answered = False  # the server has replied once: it is up (preloaded)
        self.keep = self.MAX_IDLE  # idle supervisors kept between runs (reserve() raises it)
        self._ask()

    def alive(self) -> bool:
        # Also: our connection is still ours. Code of the caller that closes
        # an fd number twice can close it (seen in the test suite); then the
        # server, at EOF, has ended itself and a new one is started.
        return self.owner == os.getpid() and self.proc.poll() is None \
            and _fd_identity(self.sock.fileno()) == self.sock_id

    def abandon(self) -> None:
        """Let go of a server that is no longer used. A socket whose fd
        number now names another file (the caller replaced it, e.g. with
        dup2) is detached, never closed: closing it would close the
        caller's file."""
        # Not blocked by a thread stuck on the broken server: go on anyway.
        locked = self.lock.acquire(timeout=5)
        try:
            for sock in [self.sock, *self.idle]:
                ident = self.sock_id if sock is self.sock else self.idle_ids.get(id(sock))
                if _fd_identity(sock.fileno()) == ident:
                    sock.close()
                else:
                    sock.detach()
            self.idle.clear()
            self.idle_ids.clear()
        finally:
            if locked:
                self.lock.release()

    def _keep_idle(self, sock: socket.socket) -> None:
        self.idle.append(sock)
        self.idle_ids[id(sock)] = _fd_identity(sock.fileno())

    def _drop_idle(self, sock: socket.socket) -> None:
        self.idle.remove(sock)
        self.idle_ids.pop(id(sock), None)

    def has_spare(self) -> bool:
        """Is a supervisor of this server already waiting for a run?"""
        with self.lock:
            try:
                self._receive(block=False)
            except SandboxError:
                return False
            return bool(self.idle)

    def starting(self) -> bool:
        """Is the server still starting (no reply yet, no supervisor idle)?"""
        return not self.has_spare() and not self.answered

    def reserve(self, n: int) -> None:
        """Have `n` supervisors ready or on their way, for `n` runs started
        at once (a pipeline's stages), and keep that many idle afterwards:
        with one idle supervisor, the second stage of `true | true` waited
        for a cold one every time (the pool never grew past what sequential
        runs need)."""
        n = min(n, self.MAX_RESERVE)
        try:
            with self.lock:
                self.keep = max(self.keep, n)
                for _ in range(n - len(self.idle) - self.asked):
                    self._ask()
        except OSError:
            pass  # a broken server is replaced when a run takes a spare

    def _ask(self) -> None:
        self.sock.send(protocol.encode(protocol.SpareRequest()))
        self.asked += 1

    def _receive(self, block: bool) -> None:
        """Collect the supervisors the server has forked for us."""
        flags = 0 if block else socket.MSG_DONTWAIT
        while self.asked:
            try:
                msg, fds = _recv_fds(self.sock, 256, 1, flags)
            except BlockingIOError:
                return
            self.asked -= 1
            self.answered = True
            if not msg:
                raise SandboxError("the sandlock launch server is gone")
            try:
                reply = protocol.decode(msg, protocol.Channel.SERVER)
            except protocol.ProtocolError as e:
                reply = protocol.SpareFailed(str(e))
            if isinstance(reply, protocol.SpareReady) and len(fds) == 1:
                self._keep_idle(socket.socket(fileno=fds[0]))
            else:
                for fd in fds:
                    os.close(fd)
                why = getattr(reply, "reason", "") or "no reason given"
                raise SandboxError(f"the sandlock launch server could not fork a sandbox: {why}")
            flags = socket.MSG_DONTWAIT

    def take_spare(self) -> tuple[socket.socket, socket.socket, int]:
        """(a child's request socket, its supervisor's connection, its pid)."""
        try:
            with self.lock:
                self._receive(block=False)
                while True:
                    ready = _ready(self.idle)
                    if ready is None:
                        if len(self.idle) < 2 and not self.asked:
                            self._ask()  # a second supervisor: runs can alternate
                        if not self.idle:
                            self._receive(block=True)
                            continue
                        ready = self.idle[0]
                    self._drop_idle(ready)
                    offer = _child_offer(ready)
                    if offer is not None:
                        return offer[0], ready, offer[1]
                    ready.close()  # that supervisor is gone: try another
        except OSError as e:
            raise SandboxError(f"the sandlock launch server is gone: {e}") from None

    def collect(self, token) -> None:
        """A run has ended: its supervisor is ready for another."""
        if token is None:
            return
        with self.lock:
            if len(self.idle) < self.keep:
                self._keep_idle(token)
            else:
                token.close()  # the supervisor ends when it sees this


def _ready(supervisors: list[socket.socket]) -> socket.socket | None:
    """A supervisor whose next child is already waiting, if any."""
    import select
    if not supervisors:
        return None
    poller = select.poll()
    for sup in supervisors:
        poller.register(sup.fileno(), select.POLLIN)
    ready = {fd for fd, _ev in poller.poll(0)}
    for sup in supervisors:
        if sup.fileno() in ready:
            return sup
    return None


class DirectSupervisor:
    """A supervisor forked from the caller, for one run: with user handlers
    (they are the caller's objects), or while the launch server starts.

    The caller is not a subreaper (we do not change that for the user's
    whole process), so the fork is a small keeper that is one: it forks the
    supervisor and, if the supervisor dies, kills whatever it orphaned.
    Without user handlers the keeper first closes every fd of the caller
    but stdio (nothing of the caller's, a listening socket say, stays open
    in it for the length of the run); handlers may use the caller's files,
    so with them nothing is closed."""

    def __init__(self, user_handlers, close_in_child: list[int], policy_fd: int | None = None):
        self.user_handlers = user_handlers
        self.close_in_child = close_in_child
        self.policy_fd = policy_fd
        self.pid: int | None = None

    def take_spare(self) -> tuple[socket.socket, None, int]:
        from .supervisor import spare
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            pid = os.fork()
        except OSError as e:
            mine.close()
            theirs.close()
            raise SandboxError(f"cannot fork the supervisor: {e.strerror}") from None
        if pid == 0:
            code = 0
            try:
                mine.close()
                for fd in self.close_in_child:
                    os.close(fd)
                if self.user_handlers is None:
                    import gc
                    gc.disable()  # the caller's objects must not be finalized on closed fds here
                    last = 2
                    kept = [theirs.fileno()] + ([] if self.policy_fd is None else [self.policy_fd])
                    for keep in sorted(kept):
                        os.closerange(last + 1, keep)
                        last = keep
                    os.closerange(last + 1, 1 << 20)
                spare.run_kept_supervisor(theirs, self.user_handlers, self.policy_fd)
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        self.pid = pid
        sock, supervisor_pid = _only_child(mine)
        return sock, None, supervisor_pid

    def collect(self, _token=None) -> None:
        if self.pid is not None:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = None


class LocalServer:
    """This process is the server (the CLI): supervisors are its children."""

    def __init__(self):
        from .supervisor.server import Server
        self.server = Server()

    def alive(self) -> bool:
        return True

    def take_spare(self) -> tuple[socket.socket, None, int]:
        sock, supervisor_pid = _only_child(self.server.new_spare(rounds=1))
        return sock, None, supervisor_pid

    def collect(self, _token=None) -> None:
        # Wait for the one-run supervisor to be gone: only then have its
        # orphans (if it was killed) been re-parented to us, to be swept.
        for pid in list(self.server.supervisors):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self.server.supervisors.discard(pid)
        self.server.reap()


_server: RemoteServer | LocalServer | None = None
_server_lock = threading.Lock()


def current_server():
    """The launch server of this process, started (again) on demand."""
    global _server
    with _server_lock:
        if _server is None or not _server.alive():
            _retire(_server)
            _server = RemoteServer()
        return _server


def _replace_server(broken):
    global _server
    with _server_lock:
        if _server is broken or _server is None:
            _retire(_server)
            _server = RemoteServer()
        return _server


def _retire(server) -> None:
    if isinstance(server, RemoteServer):
        server.abandon()


def _forget_server_in_child() -> None:
    """A forked caller starts its own server: drop the parent's connection,
    so the parent's server still sees EOF when the parent goes away."""
    global _server, _server_lock
    server = _server
    _server = None
    _server_lock = threading.Lock()  # another thread may have held it at the fork
    if isinstance(server, RemoteServer):
        try:
            server.sock.close()
            for supervisor in server.idle:
                supervisor.close()
        except OSError:
            pass


os.register_at_fork(after_in_child=_forget_server_in_child)


def use_local_server() -> None:
    """Make this process its own launch server (for the CLI)."""
    global _server
    with _server_lock:
        _server = LocalServer()
