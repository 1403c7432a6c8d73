"""Every task of the sandbox, found through the process tree.

The supervisor is a child subreaper: whatever the sandbox orphans
(setsid, double fork) is re-parented to it, so its descendants are exactly
the sandbox's processes.
"""
from __future__ import annotations

import os
import signal


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def descendants(root: int) -> list[int]:
    """Processes below `root`, parents before their children."""
    out: list[int] = []
    todo = _children(root)
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo += _children(pid)
    return out


def signal_all(root: int, sig: int) -> int:
    """Send `sig` to every descendant; return how many were found."""
    pids = descendants(root)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    return len(pids)


def reap(statuses: dict[int, int]) -> None:
    """Collect every exited child without blocking, recording statuses."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        statuses[pid] = status


def kill_all(root: int, statuses: dict[int, int]) -> None:
    """SIGKILL every descendant until none is left, reaping as we go.

    Killing a parent re-parents its children to us; the loop catches them
    (and anything forked in between) on the next pass.
    """
    while True:
        signal_all(root, signal.SIGKILL)
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return
        statuses[pid] = status
        reap(statuses)


def tgid(tid: int) -> int:
    """The thread group (process) of task `tid`. Notifications name the
    calling thread; pidfd_getfd and membership need its process."""
    with open(f"/proc/{tid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    raise ProcessLookupError(tid)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (all its threads')."""
    return _children(pid)


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and everything below it."""
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
