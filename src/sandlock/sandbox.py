"""The Python front door: Sandbox (policy fields + run methods) and Result.

The names, fields and methods are those of the reference SDK (0.9.0); where
ours deliberately differs, docs/compat.md says how and why.
"""
from __future__ import annotations

import enum
import os
import selectors
import subprocess
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from . import launch, protocol
from .changes import Change, Entry, renames
from .exceptions import PolicyError, SandboxError
from .image import Image, ImageConfig
from .plan import compile_plan
from .policy.model import DEFAULT_MAX_PROCESSES, BranchAction, Policy, branch_action, normalize
from .protections import Protection
from .protocol import Cmd

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, SkippedFd
    from .clones import ForkResult
    from .pipeline import Stage

__all__ = ["Sandbox", "Result", "ExitReason", "Process", "StdioMode", "BranchAction", "Change",
           "Entry", "renames", "parse_ports", "Image", "ImageConfig", "Protection"]


class ExitReason(enum.IntEnum):
    """Why the sandboxed command ended."""
    EXITED = 0
    SIGNALED = 1
    KILLED = 2
    TIMEOUT = 3


class StdioMode(enum.IntEnum):
    """How popen() connects one of the command's standard streams."""
    INHERIT = 0  # the caller's own stream
    PIPED = 1    # a pipe; the caller's end is Process.stdin / stdout / stderr
    NULL = 2     # /dev/null


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
    # What the supervisor refused (denials.Denial, at most denials.MAX_RECORDS
    # distinct ones), and how many refusals past that bound were not kept.
    denials: list = field(default_factory=list)
    denials_omitted: int = 0
    # policy_fn: the events it answered "audit" (dicts: time, syscall,
    # category, pid, parent_pid, host, port, argv), how many past the bound
    # were not kept, and what it raised or returned that denied
    audit: list = field(default_factory=list)
    audit_omitted: int = 0
    policy_errors: list = field(default_factory=list)
    # The HTTP ACL proxy's request log (http_allow / http_deny): one dict per
    # request (method, host, path, scheme, verdict, status, reason,
    # credential: the *name* of an injected one), the first 1,000; how many
    # more there were. Never a query, a header or a credential's value.
    http_log: list = field(default_factory=list, repr=False)
    http_log_omitted: int = 0
    # A pipeline's or gather's run: every stage's own Result, in order
    # (producers first, then the consumer); empty for a single run.
    stages: list = field(default_factory=list, repr=False)


def parse_ports(specs: Sequence[int | str]) -> list[int]:
    """The sorted, distinct ports of a list of specs: ints, "8080",
    "9000-9005", or comma-separated lists of those. PolicyError (a
    ValueError) for anything else, "*" included (it is not a list)."""
    from .policy.ports import parse_port_specs
    ports = parse_port_specs(specs, "ports")
    if ports.any:
        raise PolicyError(f"ports: '*' (every port) cannot be listed (got {specs!r})")
    return [p for lo, hi in ports.ranges for p in range(lo, hi + 1)]


HTTP_LOG_KEYS = ("method", "host", "path", "scheme", "verdict", "status", "reason", "credential")


def _result(outcome: protocol.Finished | None, stdout: bytes, stderr: bytes) -> Result:
    """The caller's Result from the supervisor's Finished message."""
    if outcome is None:
        outcome = protocol.Finished(error="the sandbox supervisor ended without a result")
    res = _outcome(outcome, stdout, stderr)
    if outcome.denials or outcome.denials_more:
        from .denials import from_records
        res.denials, res.denials_omitted = from_records(outcome.denials), outcome.denials_more
    res.http_log = [dict(zip(HTTP_LOG_KEYS, e, strict=True)) for e in outcome.http_log]
    res.http_log_omitted = outcome.http_log_more
    return res


def _outcome(outcome: protocol.Finished, stdout: bytes, stderr: bytes) -> Result:
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

# The longest single wait of a run on the main thread. An interruption
# that wakes no system call (_thread.interrupt_main(), which is how Ray
# cancels a task: sandlock.ray) is raised at the next wake-up, and the
# run's sandbox is then killed.
MAIN_THREAD_WAKE = 0.1


def _list() -> Any:
    return field(default_factory=list)


@dataclass
class Sandbox:
    """A sandbox policy. Every field is optional; see SPEC §1 for meanings.

    Values are validated at construction (PolicyError names the field) and
    again when a command runs, in case a field was changed in between. The
    fields come in the reference SDK's order, so positional arguments mean
    the same; `no_supervisor` (ours only) comes last.
    """
    # filesystem (Landlock)
    fs_writable: Sequence[str] = _list()
    fs_readable: Sequence[str] = _list()
    fs_denied: Sequence[str] = _list()
    # syscalls
    extra_deny_syscalls: Sequence[str] = _list()
    extra_allow_syscalls: Sequence[str] = _list()
    # network
    net_allow: Sequence[str] = _list()
    net_deny: Sequence[str] = _list()
    no_coredump: bool = False
    net_allow_bind: Sequence[int | str] = _list()
    net_deny_bind: Sequence[int | str] = _list()
    # http
    http_allow: Sequence[str] = _list()
    http_deny: Sequence[str] = _list()
    http_ports: Sequence[int] = _list()
    http_ca: str | None = None
    http_key: str | None = None
    http_inject_ca: Sequence[str] = _list()
    http_ca_out: str | None = None
    # limits
    max_memory: str | int | None = None
    max_processes: int | None = DEFAULT_MAX_PROCESSES
    max_open_files: int | None = None
    max_cpu: int | None = None
    cpu_cores: Sequence[int] | None = None
    num_cpus: int | None = None
    port_remap: bool = False
    # determinism
    random_seed: int | None = None
    time_start: Any = None
    no_randomize_memory: bool = False
    no_huge_pages: bool = False
    deterministic_dirs: bool = False
    gpu_devices: Sequence[int] | None = None
    # filesystem views
    chroot: str | None = None
    image: Image | None = field(default=None, metadata={"runtime": True})
    fs_mount: Mapping[str, str] = field(default_factory=dict)
    fs_mount_ro: Mapping[str, str] = field(default_factory=dict)
    # program
    clean_env: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    uid: int | None = None
    gid: int | None = None
    notif_policy: Any = None
    # copy-on-write workdir
    workdir: str | None = None
    cwd: str | None = None
    fs_storage: str | None = None
    max_disk: str | int | None = None
    on_exit: BranchAction = BranchAction.COMMIT
    on_error: BranchAction = BranchAction.ABORT
    # Landlock protections: degrade on an older kernel, or turn off (Protection values)
    allow_degraded: Sequence[Protection] = _list()
    disable: Sequence[Protection] = _list()
    # runtime (not policy)
    name: str | None = field(default=None, repr=False, metadata={"runtime": True})
    policy_fn: Callable | None = field(default=None, repr=False, metadata={"runtime": True})
    init_fn: Callable | None = field(default=None, repr=False, metadata={"runtime": True})
    work_fn: Callable | None = field(default=None, repr=False, metadata={"runtime": True})
    # ours only
    no_supervisor: bool = False
    # ours: what policy_fn is asked about (event names, syscall names or
    # categories; None: file, network and process events), what it only
    # watches (never held), how long a held syscall waits for its verdict
    policy_fn_events: Sequence[str] | None = None
    policy_fn_observe: Sequence[str] = _list()
    policy_fn_timeout: float | None = None
    # Credentials the HTTP proxy injects (httpauth.py; CLI --credential,
    # --http-auth): sources "NAME=env:VAR|file:PATH|fd:N" (or a mapping
    # NAME -> source) and auth rules. Only where secrets are read, never
    # the secrets: those are read when a run starts.
    http_credentials: Sequence[str] | Mapping[str, str] = _list()
    http_auth: Sequence[str] = _list()

    def __post_init__(self) -> None:
        self.on_exit = branch_action(self.on_exit, "on_exit")
        self.on_error = branch_action(self.on_error, "on_error")
        normalize(self)
        self._init_runtime()

    def _init_runtime(self) -> None:
        """The state of runs (none yet): a new Sandbox's, or a stage copy's."""
        self._current: launch.Launched | None = None
        self._lock = threading.RLock()
        self._created: Any = None                 # the plan between create() and start()
        self._spawned: Process | None = None      # the process of start() / spawn()
        self._popened: weakref.ref[Process] | None = None
        self._pending: Any = None                 # a DEFER run's branch (cow.branch.Branch)
        self._dry = False                         # dry_run(): every branch is aborted

    def _policy(self) -> Policy:
        return normalize(self)

    def _stage_copy(self) -> "Sandbox":
        """The same fields, no run: one stage of a pipeline (a Sandbox runs
        one command at a time, and may be in several stages). Validated
        when its plan is compiled (_policy), not here too: a
        dataclasses.replace validated every stage twice (~0.4 ms each)."""
        import copy
        box = copy.copy(self)
        box._init_runtime()
        return box

    def cpu_pct(self) -> int | None:
        """max_cpu clamped to 1..100, or None."""
        if self.max_cpu is None:
            return None
        return max(1, min(100, int(self.max_cpu)))

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        """Leaving the block kills and reaps whatever still runs here."""
        self._created = None
        for proc in (self._spawned, self._live_popen()):
            if proc is not None and proc.result is None:
                try:
                    proc.kill()
                    proc.wait()
                except Exception:  # noqa: BLE001 - the block's own exception matters more
                    pass
        self._spawned = None

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
        return self._settle(run, _result(run.result, stdout, stderr))

    def run_with_handlers(self, cmd: Sequence[str], handlers, name: str | None = None,
                          timeout: float | None = None) -> Result:
        """Run `cmd` with extra supervisor handlers: (syscall name or number,
        Handler or callable) pairs, consulted after the built-in handlers.
        See sandlock.handler. A handler cannot be registered for a syscall
        the sandbox denies. `name` names this run's sandbox (default: the
        `name` field)."""
        import dataclasses

        from ._kernel import syscalls
        from .handler import check_handlers
        from .plan import denied_numbers
        from .policy.values import check_name
        _check_timeout(timeout)
        policy = self._policy()
        if name is not None:
            policy = dataclasses.replace(policy, name=check_name(name, "name"))
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
        return self._settle(run, _result(run.result, b"", b""))

    def popen(self, cmd: Sequence[str], stdin: Any = StdioMode.INHERIT, stdout: Any = StdioMode.INHERIT,
              stderr: Any = StdioMode.INHERIT) -> "Process":
        """Start `cmd` and return a Process. Each stream takes a StdioMode
        (INHERIT, PIPED, NULL), or as with subprocess: None (inherit),
        subprocess.PIPE, subprocess.DEVNULL, a file descriptor (a plain int)
        or a file object."""
        plan = compile_plan(self._policy(), cmd)
        proc = self._popen_plan(plan, stdin, stdout, stderr)
        self._popened = weakref.ref(proc)
        return proc

    def _popen_plan(self, plan, stdin, stdout, stderr) -> "Process":
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

    # -- explicit lifecycle: create → start → wait --------------------------

    def create(self, cmd: Sequence[str]) -> None:
        """Prepare `cmd`: the whole policy is checked and compiled now (every
        error surfaces here); start() then launches it. Unlike the
        reference, the process itself is created by start(), so `pid` is
        None until then."""
        plan = compile_plan(self._policy(), cmd)
        with self._lock:
            self._check_idle()
            self._created = plan

    def start(self) -> None:
        """Launch what create() prepared, with the caller's stdin, stdout and
        stderr; wait() collects it."""
        with self._lock:
            plan, self._created = self._created, None
        if plan is None:
            raise SandboxError("sandbox has not been created (call create(cmd) first)")
        self._spawned = self._popen_plan(plan, StdioMode.INHERIT, StdioMode.INHERIT, StdioMode.INHERIT)

    def spawn(self, cmd: Sequence[str]) -> None:
        """create(cmd) then start(): the command runs; wait() collects it."""
        self.create(cmd)
        self.start()

    def wait(self) -> Result:
        """Wait for the command of start() / spawn() and return its Result
        (stdout and stderr went to the caller's streams)."""
        proc = self._spawned
        if proc is None:
            if self._live_popen() is not None:
                raise SandboxError("this sandbox is running a process started with popen(); "
                                   "wait on the Process popen() returned")
            raise SandboxError("sandbox is not running")
        try:
            return proc.wait()
        finally:
            if proc.result is not None and self._spawned is proc:
                self._spawned = None

    @property
    def pending(self) -> bool:
        """True while a DEFER run's copy-on-write branch waits for commit() or
        abort()."""
        return self._pending is not None

    @property
    def upper_dir(self) -> str | None:
        """Where a pending branch keeps its new bytes; None unless pending."""
        return None if self._pending is None else self._pending.upper_dir

    def _pending_branch(self) -> Any:
        if self._pending is None:
            raise SandboxError("no pending branch; only a DEFER run that has exited has one")
        return self._pending

    def changes(self) -> list:
        """The pending branch's changes (sorted Change list)."""
        return self._pending_branch().changes()

    def diff(self, paths: Sequence[str] | None = None) -> str:
        """A unified diff of the pending branch's text files (all, or those
        at or under `paths`), to review before commit()."""
        return self._pending_branch().diff(paths)

    def commit(self, paths: Sequence[str] | None = None) -> None:
        """Merge the pending branch into the workdir (only the changes at or
        under `paths` if given: the rest stays pending). Refused with
        BranchConflictError, the branch kept, when a file the run changed
        was changed in the workdir meanwhile."""
        branch = self._pending_branch()
        branch.commit(paths)
        if paths is None or not branch.changes():
            if paths is not None:
                branch.abort()
            self._pending = None

    def abort(self) -> None:
        """Discard the pending branch."""
        self._pending_branch().abort()
        self._pending = None

    def dry_run(self, cmd: Sequence[str], timeout: float | None = None) -> Result:
        """Run `cmd` on a throwaway branch of the workdir: the Result's
        `changes` say what it would have changed; the workdir is untouched."""
        _check_timeout(timeout)
        policy = self._policy()
        if policy.workdir is None:
            raise PolicyError("dry_run: needs a workdir (without one the command would "
                              "change the real files)")
        with self._lock:
            self._dry = True
        try:
            return self._run_captured(compile_plan(policy, cmd), timeout)
        finally:
            self._dry = False

    # -- composition and snapshots ------------------------------------------

    def cmd(self, args: Sequence[str]) -> "Stage":
        """This sandbox bound to a command: a Stage, for `stage | stage`."""
        from .pipeline import Stage
        return Stage(self, args)

    def fork(self, n: int, timeout: float | None = None) -> "ForkResult":
        """Run init_fn once in a template process inside this sandbox, then
        n copy-on-write clones of it (os.fork), each with CLONE_ID=<i>
        running work_fn(i), all under this sandbox's supervisor, policy and
        limits; at most max_processes - 1 run at a time. Returns once every
        clone has ended: a ForkResult (pids, len, [i] with each clone's
        stdout and exit code). init_fn and work_fn are imported by name in
        the sandbox: module-level functions whose modules the policy lets it
        read, as well as the interpreter and the sandlock package (see
        sandlock.clones)."""
        if self.init_fn is None or self.work_fn is None:
            raise SandboxError("fork() requires init_fn and work_fn in Sandbox()")
        from .clones import fork
        return fork(self, n, timeout)

    def reduce(self, cmd: Sequence[str], fork_result: "ForkResult",
               timeout: float | None = None) -> Result:
        """Run `cmd` in this sandbox with every clone's stdout, in clone
        order, streamed into its stdin; its Result."""
        from .clones import reduce
        return reduce(self, cmd, fork_result, timeout)

    def checkpoint(self, save_fn: Callable[[], bytes] | None = None) -> "Checkpoint":
        """A checkpoint of the running sandbox (spawn / start / popen): its
        command, cwd, environment, policy, process facts from /proc,
        `save_fn()`'s bytes as `app_state`, and with a workdir the
        copy-on-write branch, copied while every process is stopped (then
        resumed, unless it was paused already). Not a process image: memory,
        registers and descriptors are not captured (see sandlock.checkpoint)."""
        from .checkpoint import capture
        return capture(self, save_fn)

    def restore_interactive(self, cp: "Checkpoint") -> None:
        """Restart `cp`'s command in this (idle) sandbox's policy, with the
        caller's stdio as start() does: the saved cwd and environment (this
        sandbox's `env` on top), the saved branch as a new branch's upper
        (the workdir must be the checkpoint's), `app_state` on the fd named
        by $SANDLOCK_APP_STATE_FD. A restart from saved state, not a process
        image restore; wait() collects it. `restore_skipped` then lists the
        descriptors the original process had that were not recreated."""
        from .checkpoint import restart
        self._restore_skipped = restart(self, cp)

    @property
    def restore_skipped(self) -> "list[SkippedFd]":
        """Descriptors (beyond stdio) of the checkpointed main process that
        the last restore_interactive() did not recreate: a restart recreates none."""
        return list(getattr(self, "_restore_skipped", []))

    # -- internals ---------------------------------------------------------

    def _check_idle(self) -> None:
        if self._current is not None:
            raise SandboxError("this Sandbox is already running a command; "
                               "create another Sandbox for concurrent runs")
        if self._created is not None:
            raise SandboxError("this Sandbox has a command created and not started; "
                               "call start() first")

    def _start(self, plan, stdio, timeout, new_pgrp=True, user_handlers=None,
               extra_fds=(), branch_seed=None) -> launch.Launched:
        with self._lock:
            self._check_idle()
            if plan.cow is not None and self._pending is not None:
                raise SandboxError("a DEFER branch of this sandbox is pending: commit() or abort() it first")
            branch = None
            if plan.cow is not None:
                from .cow.branch import Branch
                from .exceptions import BranchError
                try:
                    branch = Branch.create(plan.cow[0], plan.cow[1])
                except BranchError as e:
                    raise SandboxError(f"workdir: cannot create its copy-on-write branch: {e}") from None
                if branch_seed is not None:  # a restore: the saved upper and logs
                    try:
                        branch_seed(branch)
                    except BaseException:
                        branch.abort()
                        raise
            gate = None
            if plan.policy_fn is not None:
                from .policyfn import CallerGate
                gate = CallerGate(self.policy_fn, {"max_memory": plan.max_memory,
                                                   "max_processes": plan.max_processes})
            try:
                run = launch.start(plan, stdio, timeout, new_pgrp, user_handlers,
                                   branch_dir=None if branch is None else branch.branch_dir,
                                   extra_fds=extra_fds, policy_gate=gate)
            except BaseException:
                if branch is not None:
                    branch.abort()
                if gate is not None:
                    gate.abandon()
                raise
            if gate is not None:
                gate.handed_over()
            run.policy_gate = gate
            run.branch = branch
            setattr(run, "plan", plan)  # noqa: B010 - checkpoint() saves its command, cwd, env
            run.branch_actions = (plan.on_exit, plan.on_error)
            self._current = run
            return run

    def _settle(self, run: launch.Launched, res: Result) -> Result:
        """The run has ended: its branch's changes go into the Result, then
        on_exit (exit status 0) or on_error (anything else, a timeout or a
        kill included) is applied. Done here, when the run ends, never in a
        finalizer only. A failed commit keeps the branch and says where."""
        gate, run.policy_gate = getattr(run, "policy_gate", None), None
        if gate is not None:
            gate.finish(1.0)
            res.audit, res.audit_omitted = list(gate.audit), gate.audit_omitted
            res.policy_errors = list(gate.errors)
        branch, run.branch = run.branch, None
        if branch is None:
            return res
        from .exceptions import BranchError
        on_exit, on_error = run.branch_actions
        action = on_exit if res.success and res.exit_code == 0 else on_error
        if self._dry:
            action = "abort"
        try:
            res.changes = branch.changes()
            if action == "commit":
                branch.commit()
            elif action == "abort":
                branch.abort()
            elif action == "keep":
                branch.keep()
            else:
                self._pending = branch
        except BranchError as e:
            try:
                branch.keep()
            except BranchError:
                pass
            msg = f"copy-on-write {action} failed: {e} (the branch is kept in {branch.branch_dir})"
            res.error = f"{res.error}; {msg}" if res.error else msg
            res.success = False
        return res

    def _finish(self, run: launch.Launched) -> None:
        if run.closed:
            return  # finished already (e.g. by wait() and then a finalizer)
        try:
            while run.feed(os.read(run.res_r, 65536)):
                pass
        finally:
            # Under the lock: a kill()/pause() from another thread either
            # reaches this run or finds the sandbox idle, never a closed fd.
            with self._lock:
                if self._current is run:
                    self._current = None
                run.close()

    def _live_popen(self) -> "Process | None":
        proc = self._popened() if self._popened is not None else None
        return proc if proc is not None and proc.result is None else None

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
        """Kill every process of the running sandbox (nothing when idle)."""
        self._send(Cmd.KILL)

    def pause(self) -> None:
        """Stop (SIGSTOP) every process of the running sandbox."""
        if not self._send(Cmd.PAUSE):
            raise SandboxError("sandbox is not running")

    def resume(self) -> None:
        """Continue (SIGCONT) every process of a paused sandbox."""
        if not self._send(Cmd.RESUME):
            raise SandboxError("sandbox is not running")

    def _send(self, cmd: Cmd) -> bool:
        with self._lock:
            run = self._current
            if run is None:
                return False
            run.send(cmd)
            if cmd in (Cmd.PAUSE, Cmd.RESUME):
                run.paused = cmd == Cmd.PAUSE   # the caller's wish (checkpoint() keeps it)
            return True


class Process:
    """A sandboxed command started by Sandbox.popen().

    stdin / stdout / stderr are unbuffered binary files for the PIPED
    streams, else None. wait() returns the Result (without stdout and
    stderr, which went to the streams); `returncode` is the shell-style
    status (128+N after signal N).

    A Process dropped without wait() (garbage-collected, or still running
    at interpreter exit) kills its sandbox and reaps it: a forgotten handle
    never leaves a command running or its Sandbox busy."""

    def __init__(self, sandbox: Sandbox, run: launch.Launched, stdin, stdout, stderr):
        self._sandbox = sandbox
        self._run = run
        self._pid = run.child_pid
        self.stdin = os.fdopen(stdin, "wb", buffering=0) if stdin is not None else None
        self.stdout = os.fdopen(stdout, "rb", buffering=0) if stdout is not None else None
        self.stderr = os.fdopen(stderr, "rb", buffering=0) if stderr is not None else None
        self.returncode: int | None = None
        self.result: Result | None = None
        self._waiting = threading.Lock()
        self._reaper = weakref.finalize(self, _reap_abandoned, sandbox, run)

    @property
    def pid(self) -> int | None:
        """The command's pid while it runs; None once wait() has reaped it."""
        return self._pid if self.result is None else None

    def ports(self) -> dict[int, int]:
        """With port_remap: virtual → real ports while the command runs."""
        if self.result is not None:
            return {}
        if self._waiting.acquire(blocking=False):
            try:
                if self.result is None:
                    _poll_messages(self._run)
            finally:
                self._waiting.release()
        return dict(self._run.ports)

    def wait(self, timeout: float | None = None) -> Result:
        """Wait for the command and return its Result. A piped stdin still
        open is closed first (so a command reading to EOF can end). With a
        timeout, a command still running then is killed and the Result's
        reason is TIMEOUT. A second call returns the same Result."""
        if timeout is not None:
            _check_timeout(timeout, zero_ok=True)
        with self._waiting:
            if self.result is not None:
                return self.result
            if self.stdin is not None and not self.stdin.closed:
                try:
                    self.stdin.close()
                except OSError:
                    pass
            timed_out = not self._wait_for_result(timeout)
            if timed_out:
                self._run.send(Cmd.KILL)
                _collect(self._run, None, None, 0.0)
            self._complete(timed_out)
            assert self.result is not None
            return self.result

    def _wait_for_result(self, timeout: float | None) -> bool:
        """Read the supervisor's messages until the result; False on timeout."""
        if self._run.closed:
            return True
        sel = selectors.DefaultSelector()
        sel.register(self._run.res_r, selectors.EVENT_READ)
        try:
            while self._run.result is None:
                if not sel.select(timeout):
                    return False
                if not self._run.feed(os.read(self._run.res_r, 65536)):
                    break
        finally:
            sel.close()
        return True

    def _complete(self, timed_out: bool) -> None:
        self._reaper.detach()
        self._sandbox._finish(self._run)
        res = _result(self._run.result, b"", b"")
        if timed_out and res.reason == ExitReason.KILLED:
            res = Result(False, -1, error=res.error, reason=ExitReason.TIMEOUT)
        res = self._sandbox._settle(self._run, res)
        self.returncode = exit_status(res)
        self.result = res

    def kill(self) -> None:
        """Kill every process of the command's sandbox (nothing once it ended)."""
        with self._sandbox._lock:
            if self.result is None and self._sandbox._current is self._run:
                self._run.send(Cmd.KILL)

    def poll(self) -> int | None:
        """The shell-style status if the command has ended, else None."""
        if self.result is None:
            if not self._waiting.acquire(blocking=False):
                return None
            try:
                if self.result is None:
                    if not self._wait_for_result(0):
                        return None
                    self._complete(False)
            finally:
                self._waiting.release()
        return self.returncode

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
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
        # Nobody will look at this run: its branch goes the on_error way.
        sandbox._settle(run, Result(False, -1, error="abandoned"))
    except Exception:  # noqa: BLE001 - a finalizer must not raise
        pass


def _poll_messages(run: launch.Launched) -> None:
    """Read what the supervisor has sent so far, without blocking."""
    import select
    while not run.closed and run.result is None and select.select([run.res_r], [], [], 0)[0]:
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


def _check_timeout(timeout, zero_ok: bool = False) -> None:
    from .policy.values import bad_value
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not (timeout >= 0 if zero_ok else timeout > 0) \
            or timeout != timeout or timeout == float("inf"):
        raise bad_value("timeout", timeout, "expected a positive number of seconds")


def _collect(run: launch.Launched, out_r: int | None, err_r: int | None,
             timeout: float | None = None) -> tuple[bytes, bytes]:
    """Read stdout, stderr and the supervisor's messages until all end (see
    _collect_runs)."""
    return _collect_runs([(run, out_r, err_r)], timeout)[0]


def _collect_runs(runs: Sequence[tuple[launch.Launched, int | None, int | None]],
                  timeout: float | None = None) -> list[tuple[bytes, bytes]]:
    """Read each run's stdout, stderr and supervisor messages until all end,
    in one loop (a pipeline's stages: none waits for a reader busy with
    another; a thread per stage cost the caller ~0.3 ms each to start, and
    GIL hand-offs while the stages ran).

    With a timeout the caller keeps its own deadline: CALLER_GRACE after
    the timeout it asks the supervisors of the runs still going to kill
    their sandboxes, and after as long again it kills those supervisors
    (whose sandboxes die with them) and stops reading."""
    import time
    bufs: dict[int, list[bytes]] = {}
    by_res: dict[int, launch.Launched] = {}
    sel = selectors.DefaultSelector()
    for run, out_r, err_r in runs:
        for fd in (out_r, err_r):
            if fd is not None:
                bufs[fd] = []
                sel.register(fd, selectors.EVENT_READ)
        by_res[run.res_r] = run
        sel.register(run.res_r, selectors.EVENT_READ)
    going = set(by_res)  # result pipes not at EOF yet
    killed: list[launch.Launched] = []
    deadline = None if timeout is None else time.monotonic() + timeout + CALLER_GRACE
    on_main = threading.current_thread() is threading.main_thread()
    stage = 0
    try:
        open_fds = len(bufs) + len(by_res)
        while open_fds:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if on_main:
                wait = MAIN_THREAD_WAKE if wait is None else min(wait, MAIN_THREAD_WAKE)
            events = sel.select(wait)
            if not events and deadline is not None and time.monotonic() >= deadline:
                stage += 1
                late = [by_res[fd] for fd in going]
                if stage == 1:
                    for run in late:
                        run.send(Cmd.KILL)
                elif stage == 2:
                    for run in late:
                        run.kill_supervisor()
                    killed = late
                else:
                    break   # those still going were killed: their Result is set below
                deadline = time.monotonic() + CALLER_GRACE
                continue
            for key, _ in events:
                data = os.read(key.fd, 65536)
                if key.fd in by_res:
                    if not by_res[key.fd].feed(data):
                        sel.unregister(key.fd)
                        going.discard(key.fd)
                        open_fds -= 1
                elif data:
                    bufs[key.fd].append(data)
                else:
                    sel.unregister(key.fd)
                    open_fds -= 1
    finally:
        sel.close()
    for run in killed:
        if run.result is None or not run.result.error:
            run.result = protocol.Finished(
                error="the sandbox supervisor did not answer in time and was killed")
    return [(b"".join(bufs[out_r]) if out_r is not None else b"",
             b"".join(bufs[err_r]) if err_r is not None else b"") for _run, out_r, err_r in runs]


def _popen_stdio(stdin, stdout, stderr):
    """(caller ends, child fds, fds to close after the fork) for popen."""
    ends: list[int | None] = []
    child: list[int] = []
    close_after: list[int] = []
    for i, spec in enumerate((stdin, stdout, stderr)):
        if isinstance(spec, StdioMode):
            spec = {StdioMode.INHERIT: None, StdioMode.PIPED: subprocess.PIPE,
                    StdioMode.NULL: subprocess.DEVNULL}[spec]
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
