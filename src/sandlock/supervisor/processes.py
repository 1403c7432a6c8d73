"""Every task of the sandbox, found through the process tree.

The supervisor is a child subreaper: whatever the sandbox orphans
(setsid, double fork) is re-parented to it, so its descendants are exactly
the sandbox's processes.

Fail closed includes observation: a process that exits while we look is
normal (ENOENT / ESRCH), but any other failure to read the tree (EMFILE,
EACCES, ...) raises ObservationError, and the caller ends the sandbox
rather than treat "could not see" as "nothing there".
"""
from __future__ import annotations

import errno
import os
import resource
import signal
import time

_GONE = (errno.ENOENT, errno.ESRCH)


class ObservationError(OSError):
    """The sandbox's processes could not be observed."""


def read_proc(path: str) -> bytes:
    """A /proc file in open, read(s), close: open() adds an fstat, an ioctl
    and a buffer (~15% of a walk; max_processes walks at every fork, and
    max_memory samples several files per process: a third of a sample).
    The one reader of the supervisor's hot /proc files."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 65536)]
        while chunks[-1]:
            chunks.append(os.read(fd, 65536))
    finally:
        os.close(fd)
    return b"".join(chunks)


def _children(pid: int, required: bool = False) -> list[int]:
    """Children of `pid` (all its threads'). `required`: pid is one we must
    be able to read (the supervisor itself), so even ENOENT is a failure."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError as e:
        if required or e.errno not in _GONE:
            raise ObservationError(e.errno, f"cannot read the process tree at {pid}: {e.strerror}") from None
        return out
    for tid in tids:
        try:
            out += [int(x) for x in read_proc(f"/proc/{pid}/task/{tid}/children").split()]
        except OSError as e:
            if e.errno not in _GONE:
                raise ObservationError(e.errno, f"cannot read the children of {pid}: {e.strerror}") from None
    return out


def descendants(root: int) -> list[int]:
    """Processes below `root`, parents before their children."""
    out: list[int] = []
    todo = _children(root, required=True)
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


def _restore_fd_limit() -> None:
    """Raise the soft open-file limit back to the hard one: the likeliest
    reason /proc could not be read is running out of descriptors."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        pass


KILL_PATIENCE = 5.0


def kill_all(root: int, statuses: dict[int, int], known: tuple[int, ...] = ()) -> None:
    """SIGKILL every descendant until none is left, reaping as we go.

    Killing a parent re-parents its children to us; the loop catches them
    (and anything forked in between) on the next pass. Never blocks for
    ever: if the tree cannot be read, the `known` pids and their process
    groups are killed, and after KILL_PATIENCE seconds with children still
    unseen ObservationError is raised (the supervisor then exits, and the
    launch server, itself a subreaper, sweeps what is left).
    """
    give_up = time.monotonic() + KILL_PATIENCE
    while True:
        try:
            blind = signal_all(root, signal.SIGKILL) == 0
        except ObservationError:
            _restore_fd_limit()
            blind = True
        if blind:
            for pid in known:
                for kill in (os.killpg, os.kill):
                    try:
                        kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            statuses[pid] = status
            reap(statuses)
            continue
        if time.monotonic() > give_up:
            raise ObservationError(errno.EBUSY, "processes of the sandbox could not be ended")
        time.sleep(0.001)


def stat_fields(pid: int) -> list[bytes]:
    """The fields of /proc/<pid>/stat after the command name: [0] state,
    [1] ppid, [2] pgrp, [3] session, ... [19] start time (field N of
    proc(5) is [N - 3]). OSError once the process is gone."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].split()


def umask_of(pid: int | str) -> int | None:
    """The umask of process `pid` ("self": this one); None if unknown."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def tgid(tid: int) -> int:
    """The thread group (process) of task `tid`. Notifications name the
    calling thread; pidfd_getfd and membership need its process."""
    # Most callers are group leaders, and pidfd_open accepts only those
    # (EINVAL, or ENOENT on newer kernels, for any other thread): two
    # syscalls, ~3 us, where reading /proc/<tid>/status costs ~40 us
    # (measured; a COW git clone asked this ~4,700 times). What it says
    # holds at the moment of the call, as the status file's Tgid does.
    try:
        os.close(os.pidfd_open(tid))
        return tid
    except OSError:
        pass   # another thread, or gone: the status file says which
    for line in read_proc(f"/proc/{tid}/status").splitlines():
        if line.startswith(b"Tgid:"):
            return int(line.split()[1])
    raise ProcessLookupError(tid)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (all its threads')."""
    return _children(pid, required=True)


def children_if_alive(pid: int) -> list[int]:
    """Direct children of `pid`, none if it is gone (ObservationError for
    any other failure to read them)."""
    return _children(pid)


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and everything below it."""
    try:
        below = descendants(pid)
    except ObservationError:
        below = []
    for p in [pid, *below]:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


class TaskMemo:
    """Facts about tasks, kept while they hold: each is watched through
    pidfds (the task itself, and any process the fact depends on, such as
    its parent). Once one of them has exited (its pidfd is readable) the
    tid may name another task, and the fact is looked up again. A check is
    a select() on those fds, where a /proc read costs about 25 us."""

    # Tasks remembered (each holds one or two fds); past that the memo
    # starts over. Small: the supervisor may have only 1024 fds in all
    # (an ordinary user's default hard limit).
    LIMIT = 128

    def __init__(self):
        self.known: dict[int, tuple[tuple[int, ...], object]] = {}

    def get(self, tid: int, lookup):
        """The fact about `tid`: remembered, or `lookup(tid)` → (fact,
        pids it depends on) or None (not remembered then)."""
        import select

        from .._kernel import pidfd
        known = self.known.get(tid)
        if known is not None:
            if not select.select(known[0], [], [], 0)[0]:
                return known[1]
            self._drop(tid)
        try:
            fds = [pidfd.open_task(tid, tgid)]  # first: what is looked up is this task's
        except ProcessLookupError:
            return None
        except OSError as e:
            if e.errno in _GONE:
                return None
            self.clear()  # out of fds (EMFILE): give ours back, answer unremembered
            found = lookup(tid)
            return None if found is None else found[0]
        try:
            found = lookup(tid)
        except BaseException:
            os.close(fds[0])
            raise
        if found is None:
            os.close(fds[0])
            return None
        fact, depends = found
        try:
            for pid in depends:
                fds.append(os.pidfd_open(pid))
        except OSError:
            for fd in fds:
                os.close(fd)
            return fact  # not remembered
        if len(self.known) >= self.LIMIT:
            self.clear()
        self.known[tid] = (tuple(fds), fact)
        return fact

    def _drop(self, tid: int) -> None:
        fds, _fact = self.known.pop(tid)
        for fd in fds:
            os.close(fd)

    def clear(self) -> None:
        for tid in list(self.known):
            self._drop(tid)
