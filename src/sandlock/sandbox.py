"""The Python front door: Sandbox (policy fields + run methods) and Result."""
from __future__ import annotations

import enum
import os
import selectors
import subprocess
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from . import launch, protocol
from .exceptions import SandboxError
from .plan import compile_plan
from .policy.model import DEFAULT_MAX_PROCESSES, BranchAction, Policy, normalize
from .protocol import Cmd


class ExitReason(enum.IntEnum):
    """Why the sandboxed command ended."""
    EXITED = 0
    SIGNALED = 1
    KILLED = 2
    TIMEOUT = 3


@dataclass
class Change:
    kind: str
    path: str


@dataclass
class Result:
    """The outcome of a sandboxed command."""
    success: bool
    exit_code: int = 0
    stdout: bytes = field(default=b"", repr=False)
    stderr: bytes = field(default=b"", repr=False)
    error: str | None = None
    reason: ExitReason | None = None
    signal: int = -1
    changes: list = field(default_factory=list)


def _result(outcome: protocol.Finished | None, stdout: bytes, stderr: bytes) -> Result:
    """The caller's Result from the supervisor's Finished message."""
    if outcome is None:
        outcome = protocol.Finished(error="the sandbox supervisor ended without a result")
    failure = outcome.failure
    if failure is not None and failure.step == protocol.Step.EXEC:
        # The command could not be executed: exit status 127, as a shell
        # gives, and the reason in `error` (never in the command's stderr).
        return Result(False, 127, stdout, stderr, error=failure.describe(), reason=ExitReason.EXITED)
    if outcome.error or outcome.reason is None:
        # The sandbox itself failed (the command never ran, or its fate is
        # unknown): no exit reason, only the error.
        return Result(False, -1, stdout, stderr,
                      error=outcome.error or "the supervisor ended without a result")
    notes = "; ".join(outcome.notes)
    res = Result(False, -1, stdout, stderr, error=notes or None, reason=ExitReason(int(outcome.reason)))
    status = outcome.status if outcome.status is not None else 0
    if outcome.reason == protocol.Reason.EXITED:
        res.exit_code = os.WEXITSTATUS(status)
        res.success = res.exit_code == 0
    elif outcome.reason == protocol.Reason.SIGNALED:
        res.signal = os.WTERMSIG(status)
        res.exit_code = -res.signal
    return res


# How long past its own timeout the caller waits for the supervisor's
# answer before killing the supervisor itself (fail closed even when the
# supervisor is stuck or stopped).
CALLER_GRACE = 3.0


@dataclass
class Sandbox:
    """A sandbox policy. Every field is optional; see SPEC §1 for meanings.

    Values are validated at construction (PolicyError names the field) and
    again when a command runs, in case a field was changed in between.
    """
    # filesystem
    fs_readable: Sequence[str] = ()
    fs_writable: Sequence[str] = ()
    fs_denied: Sequence[str] = ()
    workdir: str | None = None
    fs_storage: str | None = None
    max_disk: str | int | None = None
    on_exit: BranchAction = BranchAction.COMMIT
    on_error: BranchAction = BranchAction.ABORT
    chroot: str | None = None
    fs_mount: Mapping[str, str] = field(default_factory=dict)
    # network
    net_allow: Sequence[str] = ()
    net_deny: Sequence[str] = ()
    net_allow_bind: Sequence[int | str] = ()
    net_deny_bind: Sequence[int | str] = ()
    port_remap: bool = False
    # http
    http_allow: Sequence[str] = ()
    http_deny: Sequence[str] = ()
    http_ports: Sequence[int] = ()
    http_ca: str | None = None
    http_key: str | None = None
    http_inject_ca: Sequence[str] = ()
    http_ca_out: str | None = None
    # syscalls
    extra_deny_syscalls: Sequence[str] = ()
    extra_allow_syscalls: Sequence[str] = ()
    # limits
    max_memory: str | int | None = None
    max_processes: int | None = DEFAULT_MAX_PROCESSES
    max_open_files: int | None = None
    max_cpu: int | None = None
    cpu_cores: Sequence[int] | None = None
    num_cpus: int | None = None
    gpu_devices: Sequence[int] | None = None
    # program
    env: Mapping[str, str] = field(default_factory=dict)
    clean_env: bool = False
    cwd: str | None = None
    uid: int | None = None
    gid: int | None = None
    no_coredump: bool = False
    no_huge_pages: bool = False
    no_supervisor: bool = False
    # determinism
    random_seed: int | None = None
    time_start: Any = None
    deterministic_dirs: bool = False
    no_randomize_memory: bool = False
    # runtime (not policy)
    name: str | None = None
    policy_fn: Callable | None = None
    init_fn: Callable | None = None
    work_fn: Callable | None = None

    def __post_init__(self) -> None:
        normalize(self)
        self._current: launch.Launched | None = None
        self._lock = threading.Lock()

    def _policy(self) -> Policy:
        return normalize(self)

    # -- running -----------------------------------------------------------

    def run(self, cmd: Sequence[str], timeout: float | None = None) -> Result:
        """Run `cmd` to completion in the sandbox, capturing stdout and stderr."""
        _check_timeout(timeout)
        return self._run_captured(compile_plan(self._policy(), cmd), timeout)

    def _run_captured(self, plan, timeout, user_handlers=None) -> Result:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            run = self._start(plan, (null, out_w, err_w), timeout, user_handlers=user_handlers)
        except BaseException:
            for fd in (out_r, out_w, err_r, err_w, null):
                os.close(fd)
            raise
        for fd in (out_w, err_w, null):
            os.close(fd)
        try:
            stdout, stderr = _collect(run, out_r, err_r, timeout)
        except BaseException:
            run.send(Cmd.KILL)
            raise
        finally:
            os.close(out_r)
            os.close(err_r)
            self._finish(run)
        return _result(run.result, stdout, stderr)

    def run_with_handlers(self, cmd: Sequence[str], handlers, timeout: float | None = None) -> Result:
        """Run `cmd` with extra supervisor handlers: (syscall name or number,
        Handler or callable) pairs, consulted after the built-in handlers.
        See sandlock.handler. A handler cannot be registered for a syscall
        the sandbox denies."""
        from ._kernel import syscalls
        from .handler import check_handlers
        from .plan import denied_numbers
        _check_timeout(timeout)
        policy = self._policy()
        table = syscalls.table()
        pairs = check_handlers(handlers, table, denied_numbers(policy, table))
        user: dict[int, list] = {}
        for nr, entry in pairs:
            user.setdefault(nr, []).append(entry)
        plan = compile_plan(policy, cmd, extra_notify=tuple(table.names[nr] for nr in user))
        return self._run_captured(plan, timeout, user)

    def run_interactive(self, cmd: Sequence[str], timeout: float | None = None) -> int:
        """Run `cmd` with the caller's stdin/stdout/stderr; return its exit status
        (128+N when killed by signal N)."""
        result = self._run_with_stdio(cmd, (0, 1, 2), timeout)
        if result.error:
            raise SandboxError(result.error)
        return exit_status(result)

    def _run_with_stdio(self, cmd, stdio, timeout) -> Result:
        """Run with the given fds as the command's 0/1/2, in the caller's
        process group (the terminal's signals reach the command)."""
        _check_timeout(timeout)
        plan = compile_plan(self._policy(), cmd)
        run = self._start(plan, stdio, timeout, new_pgrp=False)
        try:
            _collect(run, None, None, timeout)
        except BaseException:
            run.send(Cmd.KILL)
            raise
        finally:
            self._finish(run)
        return _result(run.result, b"", b"")

    def popen(self, cmd: Sequence[str], stdin=None, stdout=None, stderr=None) -> "Process":
        """Start `cmd` and return a Process. stdin/stdout/stderr take None
        (inherit), subprocess.PIPE, subprocess.DEVNULL, or a file descriptor."""
        plan = compile_plan(self._policy(), cmd)
        ends, child_fds, close_after = _popen_stdio(stdin, stdout, stderr)
        try:
            run = self._start(plan, tuple(child_fds), None)
        except BaseException:
            for fd in [e for e in ends if e is not None] + close_after:
                os.close(fd)
            raise
        for fd in close_after:
            os.close(fd)
        try:
            run.read_pid()
        except BaseException:
            for fd in ends:
                if fd is not None:
                    os.close(fd)
            self._finish(run)
            raise
        return Process(self, run, *ends)

    def _start(self, plan, stdio, timeout, new_pgrp=True, user_handlers=None) -> launch.Launched:
        with self._lock:
            if self._current is not None:
                raise SandboxError("this Sandbox is already running a command; "
                                   "create another Sandbox for concurrent runs")
            self._current = launch.start(plan, stdio, timeout, new_pgrp, user_handlers)
            return self._current

    def _finish(self, run: launch.Launched) -> None:
        try:
            while run.feed(os.read(run.res_r, 65536)):
                pass
        finally:
            run.close()
            with self._lock:
                if self._current is run:
                    self._current = None

    # -- control -----------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The pid of the running command's main process, or None."""
        run = self._current
        return run.child_pid if run is not None else None

    def ports(self) -> dict[int, int]:
        """With port_remap: the running sandbox's virtual → real ports.
        (Reads what the supervisor has reported so far.)"""
        run = self._current
        if run is None:
            return {}
        _poll_messages(run)
        return dict(run.ports)

    @property
    def is_running(self) -> bool:
        run = self._current
        return run is not None and run.result is None

    def kill(self) -> None:
        """Kill every process of the running sandbox."""
        self._send(Cmd.KILL)

    def pause(self) -> None:
        """Stop (SIGSTOP) every process of the running sandbox."""
        self._send(Cmd.PAUSE)

    def resume(self) -> None:
        self._send(Cmd.RESUME)

    def _send(self, cmd: Cmd) -> None:
        run = self._current
        if run is not None:
            run.send(cmd)


class Process:
    """A sandboxed command started by Sandbox.popen().

    A Process dropped without wait() (garbage-collected, or still running
    at interpreter exit) kills its sandbox and reaps it: a forgotten handle
    never leaves a command running or its Sandbox busy."""

    def __init__(self, sandbox: Sandbox, run: launch.Launched, stdin, stdout, stderr):
        self._sandbox = sandbox
        self._run = run
        self.pid = run.child_pid
        self.stdin = os.fdopen(stdin, "wb") if stdin is not None else None
        self.stdout = os.fdopen(stdout, "rb") if stdout is not None else None
        self.stderr = os.fdopen(stderr, "rb") if stderr is not None else None
        self.returncode: int | None = None
        self.result: Result | None = None
        self._reaper = weakref.finalize(self, _reap_abandoned, sandbox, run)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the command; return its exit status (128+N if killed by
        signal N). Raises subprocess.TimeoutExpired on timeout."""
        if self.result is None:
            sel = selectors.DefaultSelector()
            sel.register(self._run.res_r, selectors.EVENT_READ)
            try:
                while self._run.result is None:
                    if not sel.select(timeout):
                        raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
                    if not self._run.feed(os.read(self._run.res_r, 65536)):
                        break
            finally:
                sel.close()
            self._reaper.detach()
            self._sandbox._finish(self._run)
            self.result = _result(self._run.result, b"", b"")
            self.returncode = exit_status(self.result)
        return exit_status(self.result)

    def kill(self) -> None:
        self._run.send(Cmd.KILL)

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc) -> None:
        if self.result is None:
            self.kill()
            self.wait()
        for f in (self.stdin, self.stdout, self.stderr):
            if f is not None:
                f.close()


def _reap_abandoned(sandbox: Sandbox, run: launch.Launched) -> None:
    """Finalizer of a Process nobody waited for: end its sandbox."""
    try:
        run.send(Cmd.KILL)
        sandbox._finish(run)
    except Exception:  # noqa: BLE001 - a finalizer must not raise
        pass


def _poll_messages(run: launch.Launched) -> None:
    """Read what the supervisor has sent so far, without blocking."""
    import select
    while run.result is None and select.select([run.res_r], [], [], 0)[0]:
        if not run.feed(os.read(run.res_r, 4096)):
            break


def exit_status(result: Result) -> int:
    """Shell-style status: the exit code, or 128+N for signal N."""
    if result.reason == ExitReason.EXITED:
        return result.exit_code
    if result.reason == ExitReason.SIGNALED:
        return 128 + result.signal
    if result.reason in (ExitReason.KILLED, ExitReason.TIMEOUT):
        return 128 + 9
    return 125


def _check_timeout(timeout) -> None:
    from .policy.values import bad_value
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0 \
            or timeout != timeout or timeout == float("inf"):
        raise bad_value("timeout", timeout, "expected a positive number of seconds")


def _collect(run: launch.Launched, out_r: int | None, err_r: int | None,
             timeout: float | None = None) -> tuple[bytes, bytes]:
    """Read stdout, stderr and the supervisor's messages until all end.

    With a timeout the caller keeps its own deadline: CALLER_GRACE after
    the timeout it asks the supervisor to kill the sandbox, and after as
    long again it kills the supervisor itself (whose sandbox dies with it)
    and stops reading."""
    import time
    bufs: dict[int, list[bytes]] = {fd: [] for fd in (out_r, err_r) if fd is not None}
    sel = selectors.DefaultSelector()
    for fd in (*bufs, run.res_r):
        sel.register(fd, selectors.EVENT_READ)
    deadline = None if timeout is None else time.monotonic() + timeout + CALLER_GRACE
    stage = 0
    try:
        open_fds = len(bufs) + 1
        while open_fds:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            events = sel.select(wait)
            if not events and deadline is not None and time.monotonic() >= deadline:
                stage += 1
                if stage == 1:
                    run.send(Cmd.KILL)
                elif stage == 2:
                    run.kill_supervisor()
                else:
                    if run.result is None:
                        run.result = protocol.Finished(
                            error="the sandbox supervisor did not answer in time and was killed")
                    break
                deadline = time.monotonic() + CALLER_GRACE
                continue
            for key, _ in events:
                data = os.read(key.fd, 65536)
                if key.fd == run.res_r:
                    if not run.feed(data):
                        sel.unregister(key.fd)
                        open_fds -= 1
                elif data:
                    bufs[key.fd].append(data)
                else:
                    sel.unregister(key.fd)
                    open_fds -= 1
    finally:
        sel.close()
    if stage >= 2 and (run.result is None or not run.result.error):
        run.result = protocol.Finished(
            error="the sandbox supervisor did not answer in time and was killed")
    return (b"".join(bufs[out_r]) if out_r is not None else b"",
            b"".join(bufs[err_r]) if err_r is not None else b"")


def _popen_stdio(stdin, stdout, stderr):
    """(caller ends, child fds, fds to close after the fork) for popen."""
    ends: list[int | None] = []
    child: list[int] = []
    close_after: list[int] = []
    for i, spec in enumerate((stdin, stdout, stderr)):
        if spec is None:
            ends.append(None)
            child.append(i)
        elif spec == subprocess.PIPE:
            r, w = os.pipe2(os.O_CLOEXEC)
            mine, theirs = (w, r) if i == 0 else (r, w)
            ends.append(mine)
            child.append(theirs)
            close_after.append(theirs)
        elif spec == subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            ends.append(None)
            child.append(fd)
            close_after.append(fd)
        elif isinstance(spec, int) and spec >= 0:
            ends.append(None)
            child.append(spec)
        elif hasattr(spec, "fileno"):
            ends.append(None)
            child.append(spec.fileno())
        else:
            raise ValueError(f"popen: unsupported stdio value {spec!r}")
    return ends, child, close_after
