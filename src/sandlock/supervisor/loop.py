"""The supervisor's event loop.

One process per sandbox, single-threaded, outside the sandbox. It waits on:
child exits (SIGCHLD), the caller's control pipe (kill / pause / resume,
EOF = caller gone), the child's error pipe, and the deadline. When the main
process ends, every remaining task is killed. The outcome goes back to the
caller as one line on the result pipe.
"""
from __future__ import annotations

import os
import select
import selectors
import signal
import time

from . import processes

# Exit reasons on the wire (match ExitReason values).
EXITED, SIGNALED, KILLED, TIMEOUT = 0, 1, 2, 3

CMD_KILL, CMD_PAUSE, CMD_RESUME = b"k", b"p", b"r"


class Outcome:
    def __init__(self):
        self.reason = None
        self.status = None
        self.error = ""   # the sandbox itself failed
        self.notes: list[str] = []  # limits enforced on the way (not failures)

    def encode(self, pid: int) -> bytes:
        status = -1 if self.status is None else self.status
        reason = -1 if self.reason is None else self.reason
        text = self.error or "; ".join(self.notes)
        kind = "E" if self.error else "N"
        return f"R {pid} {reason} {status} {kind}{text}".encode()


def run(pid, me, wake_r, err_r, ctl_fd, timeout, dispatcher=None, tickers=()) -> Outcome:
    """Supervise child `pid` to its end; every task is dead on return.

    tickers: objects with a TICK period (seconds) and a tick() method,
    called about every TICK while the sandbox runs (CPU throttle, memory
    sampling)."""
    out = Outcome()
    statuses: dict[int, int] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(wake_r, selectors.EVENT_READ, "chld")
    sel.register(err_r, selectors.EVENT_READ, "err")
    if ctl_fd is not None:
        sel.register(ctl_fd, selectors.EVENT_READ, "ctl")
    if dispatcher is not None:
        sel.register(dispatcher.listener.fd, selectors.EVENT_READ, "notif")
    tickers = [t for t in tickers if t is not None]
    due = [time.monotonic()] * len(tickers)
    try:
        while pid not in statuses:
            wake = min((t for t in (deadline, *due) if t is not None), default=None)
            wait = None if wake is None else max(0.0, wake - time.monotonic())
            events = sel.select(wait)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                out.reason = TIMEOUT
                break
            for i, ticker in enumerate(tickers):
                if now >= due[i]:
                    ticker.tick()
                    due[i] = now + ticker.TICK
            for key, _ in events:
                if key.data == "notif":
                    if not _serve_notifications(dispatcher):
                        sel.unregister(key.fd)  # hung up: would poll readable forever
                    _watch_deferred(sel, dispatcher)
                elif key.data == "deferred":
                    sel.unregister(key.fd)
                    dispatcher.resume(key.fd)
                elif key.data == "chld":
                    drain(wake_r)
                elif key.data == "err":
                    msg = os.read(err_r, 4096)
                    sel.unregister(err_r)
                    if msg.startswith(b"C"):
                        out.error = msg[1:].decode(errors="replace").replace("\n", " ")
                elif key.data == "ctl":
                    cmd = os.read(ctl_fd, 1)
                    if cmd in (CMD_KILL, b""):
                        out.reason = KILLED
                    elif cmd == CMD_PAUSE:
                        processes.signal_all(me, signal.SIGSTOP)
                    elif cmd == CMD_RESUME:
                        processes.signal_all(me, signal.SIGCONT)
            if out.reason is not None:
                break
            if any(key.data in ("chld", "err") for key, _ in events):
                processes.reap(statuses)
    except BaseException as e:  # a supervisor failure ends the sandbox, never frees it
        out.error = out.error or f"supervisor failed: {e!r}"
        out.reason = KILLED
    finally:
        sel.close()
        processes.kill_all(me, statuses)
    status = statuses.get(pid)
    if out.reason is None and status is not None:
        out.reason = EXITED if os.WIFEXITED(status) else SIGNALED
    out.status = status
    if not out.error and status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 126:
        # Confinement failed: the message may still sit in the error pipe.
        try:
            msg = os.read(err_r, 4096)
        except OSError:
            msg = b""
        if msg.startswith(b"C"):
            out.error = msg[1:].decode(errors="replace").replace("\n", " ")
    return out


SPIN_SECONDS = 60e-6
BURST_SECONDS = 0.005


def _serve_notifications(dispatcher) -> bool:
    """Answer a notification, then keep polling for SPIN_SECONDS before
    going back to sleep: a task that traps syscalls in a loop sends the next
    one within microseconds, and waking a sleeping supervisor on another CPU
    costs more than that on a VM. False once the listener hung up."""
    poller = select.poll()
    poller.register(dispatcher.listener.fd, select.POLLIN)
    # Back to the main loop at least every BURST_SECONDS, however busy the
    # sandbox: the deadline, kill requests and child exits must be seen.
    give_back = time.monotonic() + BURST_SECONDS
    while True:
        if not dispatcher.handle_one():
            return False
        now = time.monotonic()
        if now > give_back:
            return True
        until = now + SPIN_SECONDS
        while not poller.poll(0):
            if time.monotonic() > until:
                return True


def _watch_deferred(sel, dispatcher) -> None:
    """Register fds of answers that now wait on I/O (connects in progress)."""
    for fd in dispatcher.deferred:
        try:
            sel.get_key(fd)
        except KeyError:
            sel.register(fd, selectors.EVENT_WRITE, "deferred")


def drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
