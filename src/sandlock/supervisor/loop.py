"""The supervisor's event loop.

One process per sandbox, single-threaded, outside the sandbox. It waits on:
child exits (SIGCHLD), the caller's control pipe (kill / pause / resume,
EOF = caller gone), the child's error pipe, and the deadline. When the main
process ends, every remaining task is killed. The outcome goes back to the
caller as a protocol.Finished message.
"""
from __future__ import annotations

import os
import select
import selectors
import signal
import time

from .. import protocol
from ..protocol import Cmd, Reason
from . import processes


def run(pid, me, wake_r, err_r, ctl_fd, timeout, dispatcher=None, tickers=(),
        server=None, gate=None) -> protocol.Finished:
    """Supervise child `pid` to its end; every task is dead on return.

    tickers: objects with a TICK period (seconds) and a tick() method,
    called about every TICK while the sandbox runs (CPU throttle, memory
    sampling). An exception anywhere (a ticker or the dispatcher that could
    not observe the sandbox, a supervisor bug) ends the sandbox.

    server: the run's control socket server (control.Server), whose
    clients may ask to signal the whole tree (SIGKILL ends the run).

    gate: policy_fn's channel to the caller (policygate.PolicyGate), whose
    verdicts release held syscalls (its timeouts come as a ticker)."""
    out = protocol.Finished()
    statuses: dict[int, int] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    errors = protocol.Reader(protocol.Channel.CHILD_ERROR)
    control = protocol.Reader(protocol.Channel.CONTROL)
    sel = selectors.DefaultSelector()
    sel.register(wake_r, selectors.EVENT_READ, "chld")
    sel.register(err_r, selectors.EVENT_READ, "err")
    if ctl_fd is not None:
        sel.register(ctl_fd, selectors.EVENT_READ, "ctl")
    if dispatcher is not None:
        sel.register(dispatcher.listener.fd, selectors.EVENT_READ, "notif")
    if server is not None:
        sel.register(server.fd, selectors.EVENT_READ, "control")
    if gate is not None and gate.sock is not None:
        sel.register(gate.fd, selectors.EVENT_READ, "policy")
    tickers = [t for t in tickers if t is not None]
    due = [time.monotonic()] * len(tickers)
    try:
        while pid not in statuses:
            for i, ticker in enumerate(tickers):
                # A ticker may want to run sooner than its TICK promised
                # (a memory measurement made stale by an allocation).
                due[i] = min(due[i], getattr(ticker, "next_due", due[i]))
            wake = min((t for t in (deadline, *due) if t is not None), default=None)
            wait = None if wake is None else max(0.0, wake - time.monotonic())
            events = sel.select(wait)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                out.reason = Reason.TIMEOUT
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
                elif key.data == "policy":
                    gate.on_readable()
                    if gate.closed:
                        sel.unregister(key.fd)  # the caller hung up: would poll readable forever
                    _watch_deferred(sel, dispatcher)
                elif key.data == "deferred":
                    sel.unregister(key.fd)
                    dispatcher.resume(key.fd)
                    _watch_deferred(sel, dispatcher)  # a sleep may wait again
                elif key.data == "chld":
                    drain(wake_r)
                elif key.data == "err":
                    _read_failure(err_r, errors, out)
                    sel.unregister(err_r)
                elif key.data == "control":
                    sig = server.handle()
                    if sig == signal.SIGKILL:
                        out.reason = Reason.KILLED
                    elif sig:
                        processes.signal_all(me, sig)
                elif key.data == "ctl":
                    data = os.read(ctl_fd, 512)
                    if not data:
                        out.reason = Reason.KILLED  # the caller is gone
                    for msg in control.feed(data):
                        if not isinstance(msg, protocol.Command):
                            continue
                        if msg.cmd == Cmd.KILL:
                            out.reason = Reason.KILLED
                        elif msg.cmd == Cmd.PAUSE:
                            processes.signal_all(me, signal.SIGSTOP)
                        elif msg.cmd == Cmd.RESUME:
                            processes.signal_all(me, signal.SIGCONT)
            if out.reason is not None:
                break
            if any(key.data in ("chld", "err") for key, _ in events):
                processes.reap(statuses)
    except BaseException as e:  # a supervisor failure ends the sandbox, never frees it
        out.error = out.error or f"supervisor failed: {e!r}"
        out.reason = Reason.KILLED
        if not isinstance(e, Exception):
            processes.kill_all(me, statuses, (pid,))
            raise
    finally:
        sel.close()
    processes.kill_all(me, statuses, (pid,))
    status = statuses.get(pid)
    if out.reason is None and status is not None:
        out.reason = Reason.EXITED if os.WIFEXITED(status) else Reason.SIGNALED
    out.status = status
    if out.failure is None and status is not None and os.WIFEXITED(status) \
            and os.WEXITSTATUS(status) in (126, 127):
        _read_failure(err_r, errors, out)  # the report may still sit in the pipe
    if out.failure is not None and out.failure.step != protocol.Step.EXEC:
        out.error = out.error or out.failure.describe()
    return out


def _read_failure(err_r: int, reader: protocol.Reader, out: protocol.Finished) -> None:
    """The child's ChildFailed report, if there is one to read."""
    if not select.select([err_r], [], [], 0)[0]:
        return
    try:
        data = os.read(err_r, 4096)
    except OSError:
        return
    try:
        for msg in reader.feed(data):
            if isinstance(msg, protocol.ChildFailed):
                out.failure = msg
    except protocol.ProtocolError as e:
        out.error = out.error or f"unreadable report from the sandbox's child: {e}"


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
    """Register fds of answers that now wait on I/O (connects in progress:
    writable; sleeps on a timer: readable, see clock.py)."""
    for fd, (_ctx, waiting) in dispatcher.deferred.items():
        try:
            sel.get_key(fd)
        except KeyError:
            sel.register(fd, getattr(waiting, "events", selectors.EVENT_WRITE), "deferred")


def drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
