"""policy_fn, the caller's side: the thread that runs the callback.

The supervisor (forked from this process for a run with policy_fn) sends
each event over a socket pair; the thread "sandlock-policy-fn" calls
`policy_fn(event, ctx)` one event at a time, in order, and answers held
events with a verdict. The caller's other threads are never involved: a
slow callback delays only the held syscall it judges (and the ones queued
behind it), never the sandbox's other syscalls.

Fail closed: a callback that raises, returns anything outside the verdict
table, or takes longer than policy_fn_timeout denies (the timeout is the
supervisor's: it stops waiting and denies, whatever comes later).
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
import time

from . import protocol
from .events import PolicyContext, SyscallEvent, verdict_errno

MAX_AUDIT = 10000   # audit records kept per run; past that they are counted
MSG_DONTWAIT = 0x40
_send_holding_gil = ctypes.PyDLL(None).send   # PyDLL: the GIL stays held during the call
_send_holding_gil.restype = ctypes.c_ssize_t
_send_holding_gil.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]


class CallerGate:
    """One run's policy_fn channel and thread. `supervisor_fd` goes to the
    forked supervisor (and is closed here once it has it)."""

    def __init__(self, fn, limits: dict):
        self.fn = fn
        self.limits = limits          # {"max_memory": ..., "max_processes": ...}: what may be lowered
        self.mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.supervisor_fd = theirs.detach()
        self.audit: list[dict] = []
        self.audit_omitted = 0
        self.errors: list[str] = []   # what the callback raised or returned (first few)
        self.thread: threading.Thread | None = None

    def handed_over(self) -> None:
        """The supervisor has its end: close ours of it, start answering."""
        os.close(self.supervisor_fd)
        self.supervisor_fd = -1
        self.thread = threading.Thread(target=self._serve, name="sandlock-policy-fn", daemon=True)
        self.thread.start()

    def abandon(self) -> None:
        """The run never started."""
        if self.supervisor_fd >= 0:
            os.close(self.supervisor_fd)
            self.supervisor_fd = -1
        self.mine.close()

    def finish(self, wait: float) -> None:
        """The run is over: the supervisor closed its end, so the thread ends
        once the callback it runs (if any) returns; wait at most `wait`."""
        if self.thread is not None:
            self.thread.join(wait)

    def _serve(self) -> None:
        ctx = PolicyContext(_limits=self.limits)
        try:
            while True:
                try:
                    frame = self.mine.recv(1 << 20)
                except OSError:
                    return
                if not frame:
                    return
                try:
                    msg = protocol.decode(frame, protocol.Channel.POLICY)
                except protocol.ProtocolError:
                    continue
                events = msg.events if isinstance(msg, protocol.PolicyEvents) else [msg]
                for event in events:
                    if not isinstance(event, protocol.PolicyEvent):
                        continue
                    err, changes = self._judge(event, ctx)
                    if event.id or changes:
                        try:
                            self._answer(protocol.encode(protocol.PolicyVerdict(event.id, err, changes)))
                        except OSError:
                            return
        finally:
            self.mine.close()

    def _answer(self, frame: bytes) -> None:
        """Send a verdict without letting go of the GIL: socket.send releases
        it around the syscall, and while another thread of the caller runs
        Python, taking it back costs up to the interpreter's switch interval
        (5 ms) per held syscall (benchmarks policy_fn_busy_caller). A
        non-blocking send through ctypes.PyDLL keeps it; a full socket falls
        back to the ordinary blocking send."""
        n = _send_holding_gil(self.mine.fileno(), frame, len(frame), MSG_DONTWAIT)
        if n != len(frame):
            self.mine.send(frame)

    def _judge(self, msg: protocol.PolicyEvent, ctx: PolicyContext) -> tuple[int, list]:
        event = SyscallEvent(msg.syscall, msg.category, msg.pid, msg.parent_pid, msg.host,
                             msg.port, msg.argv, msg.denied)
        try:
            value = self.fn(event, ctx)
            verdict = verdict_errno(value)
            if verdict is None:
                self._error(f"policy_fn returned {value!r}: not a verdict, denied")
        except Exception as e:  # noqa: BLE001 - the callback's failure denies, it never allows
            ctx._take()
            self._error(f"policy_fn raised {type(e).__name__}: {e}")
            return errno.EPERM, []
        if verdict is None:
            return errno.EPERM, ctx._take()
        err, audit = verdict
        if audit:
            if len(self.audit) < MAX_AUDIT:
                self.audit.append({"time": time.time(), "syscall": event.syscall,
                                   "category": event.category, "pid": event.pid,
                                   "parent_pid": event.parent_pid, "host": event.host,
                                   "port": event.port, "argv": event.argv})
            else:
                self.audit_omitted += 1
        return err, ctx._take()

    def _error(self, text: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(text)
