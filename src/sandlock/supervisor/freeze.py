"""Stop the rest of the sandbox while one task's memory is judged.

policy_fn sees an exec's argv only when nothing can change it between the
read and the kernel's own read: every other process of the sandbox (threads
of the same process, CLONE_VM peers, MAP_SHARED writers are all in it) is
stopped first, and thawed only once the exec has left the kernel.

SIGSTOP rather than ptrace: the supervisor reaps its children with
waitpid(-1, WNOHANG) and without WUNTRACED, so stops never reach it as exits,
and nothing is left attached if the supervisor dies. The price, documented:
a sandboxed parent that waits with WUNTRACED sees its children stop and
continue. A task parked in one of our own notifications stays parked (the
filter waits killable once a notification is received) and counts as
stopped: it runs no user code until we answer it, and then meets the stop.
"""
from __future__ import annotations

import os
import signal
import time

from . import processes

# How long the sandbox may take to stop. A task that does not stop in time
# (stuck in the kernel) makes the judged call fail (fail closed).
STOP_SECONDS = 1.0
# How long an allowed exec may stay in the kernel before its task is killed
# rather than let the others run while it could still read its argv.
EXEC_SECONDS = 5.0


def _state(tid_dir: str) -> str:
    try:
        with open(f"{tid_dir}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return "X"  # gone
    return chr(data[data.rindex(b")") + 2])


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _tgkill(pid: int, tid: int, sig: int) -> None:
    from .._kernel import libc
    from .._kernel import syscalls as _syscalls
    try:
        libc.syscall(_syscalls.table().syscalls["tgkill"], pid, tid, sig)
    except OSError:
        pass  # gone


def _syscall(tid: int) -> int | None:
    """The syscall `tid` is blocked in (None: running, gone or unreadable)."""
    try:
        with open(f"/proc/{tid}/syscall", "rb") as f:
            first = f.read().split(b" ", 1)[0]
    except OSError:
        return None
    try:
        return int(first)
    except ValueError:
        return None  # "running"


class Frozen:
    """The processes this freeze stopped (to continue at thaw)."""

    def __init__(self, stopped: list[int]):
        self.stopped = stopped

    def thaw(self) -> None:
        for pid in self.stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        self.stopped = []


def freeze(root: int, tid: int, parked: set[int], vfork_nrs: frozenset[int]) -> Frozen | None:
    """Stop every process under `root`, `tid`'s own included (it is parked
    in our notification, and meets the stop when it leaves the syscall: see
    wait_past). `parked`: tids held in notifications we have not answered.
    None when the sandbox did not stop in time (what was stopped is thawed)."""
    seen: set[int] = set()
    frozen = Frozen([])
    deadline = time.monotonic() + STOP_SECONDS
    while True:
        # Again until no new process appears: a fork that completed while
        # we stopped its parent has a child to stop too.
        fresh = [p for p in processes.descendants(root) if p not in seen]
        if not fresh:
            break
        for pid in fresh:
            seen.add(pid)
            if _state(f"/proc/{pid}") in "tT":
                continue  # stopped already (not ours to continue)
            # To each thread: a process-wide SIGSTOP is given to one thread
            # to act on, and one parked in our notification (it waits
            # killable) never does, so the others would run on. The parked
            # one keeps its own pending stop and meets it leaving the syscall
            # (an exec cancels the group stop, not that pending signal).
            for t in _threads(pid):
                _tgkill(pid, t, signal.SIGSTOP)
            frozen.stopped.append(pid)
        if not _all_still(frozen.stopped, tid, parked, vfork_nrs, deadline):
            frozen.thaw()
            return None
    return frozen


def _all_still(pids: list[int], tid: int, parked: set[int], vfork_nrs, deadline: float) -> bool:
    pending = [(pid, t) for pid in pids for t in _threads(pid) if t != tid and t not in parked]
    while pending:
        left = []
        for pid, t in pending:
            state = _state(f"/proc/{pid}/task/{t}")
            if state in "tTZXx":
                continue
            if state == "D" and _syscall(t) in vfork_nrs:
                continue  # a vfork parent: waits in the kernel, writes nothing
            left.append((pid, t))
        if not left:
            return True
        if time.monotonic() > deadline:
            return False
        pending = left
        time.sleep(0.0002)
    return True


def wait_past(tid: int) -> bool:
    """After an allowed exec was answered: its own process was stopped too,
    so the task stops as soon as it leaves the exec (done or failed: its
    argv is read) and before any user code. True once it is stopped or
    gone; False if it is still in the kernel after EXEC_SECONDS."""
    deadline = time.monotonic() + EXEC_SECONDS
    delay = 0.0001
    while _state(f"/proc/{tid}") not in "tTZXx":
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.005)
    return True
