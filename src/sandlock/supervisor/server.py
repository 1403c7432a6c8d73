"""The launch server: a small process that forks spare sandboxes.

Why a server: forking the caller is slow (the cost grows with the caller's
memory and fork hooks) and unsafe when the caller has threads. The server
is a fresh interpreter with only the standard library and sandlock loaded,
started once per caller process. On request it forks a spare pair (see
spare.py) and sends the caller the socket that launches it.

It is also a child subreaper: if a supervisor dies, the sandbox's processes
are re-parented here, and the server kills every child that is not one of
its supervisors. When the caller goes away (socket EOF) it kills everything.

Messages (SOCK_SEQPACKET, see protocol.py): the caller sends SpareRequest;
the server answers SpareReady with the new supervisor's connection
attached, or SpareFailed. If the caller dies (EOF, or the parent-death
signal) the server kills every process below it and exits.
"""
from __future__ import annotations

import os
import selectors
import signal
import socket
import time

from .. import protocol
from . import loop, processes, spare


class Server:
    """Forks spare pairs and reaps what they leave behind."""

    def __init__(self):
        from .._kernel.libc import PR_SET_CHILD_SUBREAPER, prctl
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.me = os.getpid()
        self.supervisors: set[int] = set()
        self.close_in_pair: list[int] = []

    def new_spare(self, rounds: int | None = None) -> socket.socket:
        """Fork a supervisor; returns its connection (see spare.py)."""
        pid, sock = spare.fork_pair(self.close_in_pair, rounds)
        self.supervisors.add(pid)
        return sock

    def reap(self) -> None:
        """Reap exited children; kill any process that is not a supervisor
        (a sandbox process orphaned by a supervisor that died), until none
        is left (one may fork while we look)."""
        statuses: dict[int, int] = {}
        for _round in range(100):
            processes.reap(statuses)
            self.supervisors -= set(statuses)
            try:
                strays = [p for p in processes.children(self.me) if p not in self.supervisors]
            except processes.ObservationError:
                self.shutdown()  # cannot tell strays from supervisors: end them all
                return
            if not strays:
                return
            for pid in strays:
                processes.kill_tree(pid)
            time.sleep(0.001)  # let them die before looking again

    def shutdown(self) -> None:
        try:
            processes.kill_all(self.me, {})
        except processes.ObservationError:
            pass  # exiting: our orphans go to the next subreaper


def preload() -> None:
    """Import and cache, once, everything a supervisor and child use, so no
    forked process pays for it (and the child never imports)."""
    from .. import child, launch, netplan, plan  # noqa: F401
    from .._kernel import syscalls
    from ..policy import netrules  # noqa: F401  (a Plan may carry resolved rules)
    from . import dispatch, limits, network, procfs  # noqa: F401
    syscalls.table()
    child._cap_state()
    child.ignored_signals()
    try:
        from ..policy.model import Policy
        template = launch.launch_message(plan.compile_plan(Policy(fs_readable=("/usr",)), ["true"]),
                                         None, 0o022, True)
        spare.set_template(protocol.encode(template))
    except Exception:  # noqa: BLE001 - only an optimisation
        pass


class _Stop(BaseException):
    """The caller died (parent-death signal) or asked us to stop."""


def _stop(*_args):
    # Once: a second signal must not interrupt the killing that follows.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stop()


def main(sock_fd: int, parent: int = 0) -> None:
    """The server process's loop. Exits when the caller closes its end or
    dies; everything below the server is killed on the way out."""
    from .._kernel.libc import PR_SET_PDEATHSIG, prctl
    sock = socket.socket(fileno=sock_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, spare.parent_death_handler(parent, _stop))
    prctl(PR_SET_PDEATHSIG, signal.SIGHUP)
    if parent and os.getppid() != parent:
        return  # the caller is already gone
    server = Server()
    try:
        preload()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        server.close_in_pair = [sock.fileno(), wake_r, wake_w]
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ, "req")
        sel.register(wake_r, selectors.EVENT_READ, "chld")
        while True:
            for key, _ in sel.select():
                if key.data == "chld":
                    loop.drain(wake_r)
                    server.reap()
                    continue
                try:
                    msg = sock.recv(256)
                except OSError:
                    msg = b""
                if not msg:
                    return
                try:
                    protocol.decode(msg, protocol.Channel.SERVER)
                except protocol.ProtocolError:
                    return  # not our caller speaking: stop
                try:
                    pair = server.new_spare()
                except OSError as e:
                    try:
                        sock.send(protocol.encode(protocol.SpareFailed(f"fork: {e.strerror}")))
                    except OSError:
                        return
                    continue
                try:
                    socket.send_fds(sock, [protocol.encode(protocol.SpareReady())], [pair.fileno()])
                except OSError:
                    return  # the caller's end is gone
                finally:
                    pair.close()
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.shutdown()
