"""The launch server: a small process that forks spare sandboxes.

Why a server: forking the caller is slow (the cost grows with the caller's
memory and fork hooks) and unsafe when the caller has threads. The server
is a fresh interpreter with only the standard library and sandlock loaded,
started once per caller process. On request it forks a spare pair (see
spare.py) and sends the caller the socket that launches it.

It is also a child subreaper: if a supervisor dies, the sandbox's processes
are re-parented here, and the server kills every child that is not one of
its supervisors. When the caller goes away (socket EOF) it kills everything.

Wire format (SOCK_SEQPACKET): the caller sends b"S" to ask for a spare; the
server answers b"S" with the spare's request socket attached.
"""
from __future__ import annotations

import os
import selectors
import signal
import socket

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
        (a sandbox process orphaned by a supervisor that died)."""
        statuses: dict[int, int] = {}
        processes.reap(statuses)
        self.supervisors -= set(statuses)
        for pid in processes.children(self.me):
            if pid not in self.supervisors:
                processes.kill_tree(pid)

    def shutdown(self) -> None:
        processes.kill_all(self.me, {})


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
        request = launch.LaunchRequest(plan.compile_plan(Policy(fs_readable=("/usr",)), ["true"]),
                                       None, 0o022, True)
        import pickle
        spare.set_template(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # noqa: BLE001 - only an optimisation
        pass


def main(sock_fd: int) -> None:
    """The server process's loop. Exits when the caller closes its end."""
    sock = socket.socket(fileno=sock_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    preload()
    server = Server()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    server.close_in_pair = [sock.fileno(), wake_r, wake_w]
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "req")
    sel.register(wake_r, selectors.EVENT_READ, "chld")
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "chld":
                    loop.drain(wake_r)
                    server.reap()
                    continue
                try:
                    msg = sock.recv(16)
                except OSError:
                    msg = b""
                if not msg:
                    return
                if msg == b"S":
                    try:
                        pair = server.new_spare()
                    except OSError:
                        sock.send(b"E")
                        continue
                    try:
                        socket.send_fds(sock, [b"S"], [pair.fileno()])
                    finally:
                        pair.close()
    finally:
        server.shutdown()
