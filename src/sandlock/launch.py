"""Plan → running sandbox.

The caller builds the Landlock ruleset and encodes the seccomp program
(errors surface here, as exceptions, before anything forks), then forks the
supervisor process, which forks the child. The caller keeps: the
supervisor's pid, a control pipe to it, and a result pipe from it.
"""
from __future__ import annotations

import os
import stat

from ._kernel import bpf, landlock, seccomp
from ._kernel import syscalls as _syscalls
from .child import ChildSpec
from .exceptions import ConfinementError, SandboxError
from .plan import Plan
from .supervisor import loop


def build_ruleset(plan: Plan) -> int:
    """A Landlock ruleset fd holding the plan's rules."""
    try:
        fd = landlock.create_ruleset(plan.handled_fs, plan.handled_net, plan.scoped)
    except OSError as e:
        raise ConfinementError(f"cannot create the Landlock ruleset: {e.strerror}") from None
    try:
        for path, access in plan.fs_rules:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # vanished since the plan was made: no grant
            try:
                if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                    access &= landlock.FS_FILE_RIGHTS
                landlock.add_path_rule(fd, pfd, access & plan.handled_fs)
            finally:
                os.close(pfd)
        for port in plan.bind_ports:
            landlock.add_net_rule(fd, port, landlock.NET_BIND_TCP)
    except OSError as e:
        os.close(fd)
        raise ConfinementError(f"cannot add a Landlock rule: {e.strerror}") from None
    return fd


def build_program(plan: Plan) -> seccomp.Program:
    table = _syscalls.table()
    return seccomp.Program(bpf.encode(bpf.assemble(plan.filter_items)), table.number("seccomp"))


def make_spec(plan: Plan, stdio: tuple[int, int, int], new_pgrp: bool = True) -> ChildSpec:
    return ChildSpec(plan, build_ruleset(plan), build_program(plan), stdio, -1,
                     None, new_pgrp)


class Launched:
    """The caller's view of a running sandbox."""

    def __init__(self, sup_pid: int, ctl_w: int, res_r: int):
        self.sup_pid = sup_pid
        self.ctl_w = ctl_w
        self.res_r = res_r
        self.child_pid: int | None = None
        self._buf = b""
        self.result: tuple[int, int, int, str] | None = None

    def read_pid(self) -> int:
        """Block until the supervisor reports the child's pid."""
        while self.child_pid is None and self.result is None:
            if not self.feed(os.read(self.res_r, 4096)):
                break
        if self.child_pid is None:
            raise SandboxError("the supervisor exited before starting the child")
        return self.child_pid

    def feed(self, data: bytes) -> bool:
        """Parse supervisor messages; False at EOF."""
        if not data:
            if self.result is None and self._buf.startswith(b"R "):
                self._parse_result(self._buf)
            return False
        self._buf += data
        while b"\n" in self._buf and not self._buf.startswith(b"R "):
            line, self._buf = self._buf.split(b"\n", 1)
            if line.startswith(b"P "):
                self.child_pid = int(line.split()[1])
        return True

    def _parse_result(self, raw: bytes) -> None:
        parts = raw.decode(errors="replace").split(" ", 4)
        self.child_pid = int(parts[1])
        self.result = (int(parts[2]), int(parts[3]), 0, parts[4] if len(parts) > 4 else "")

    def send(self, cmd: bytes) -> None:
        try:
            os.write(self.ctl_w, cmd)
        except OSError:
            pass

    def wait_supervisor(self) -> None:
        """Reap the supervisor after it has written its result."""
        while True:
            try:
                os.waitpid(self.sup_pid, 0)
                return
            except ChildProcessError:
                return
            except InterruptedError:
                continue

    def close(self) -> None:
        for fd in (self.ctl_w, self.res_r):
            try:
                os.close(fd)
            except OSError:
                pass


def start(plan: Plan, stdio: tuple[int, int, int], close_in_child: list[int],
          timeout: float | None, new_pgrp: bool = True) -> Launched:
    """Fork the supervisor (which forks the child). `stdio` are the fds the
    child gets as 0/1/2; `close_in_child` are the caller's ends of pipes."""
    spec = make_spec(plan, stdio, new_pgrp)
    ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
    res_r, res_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError as e:
        for fd in (ctl_r, ctl_w, res_r, res_w, spec.ruleset_fd):
            os.close(fd)
        raise SandboxError(f"cannot fork the supervisor: {e.strerror}") from None
    if pid == 0:
        _supervisor_main(spec, ctl_r, res_w, [ctl_w, res_r, *close_in_child], timeout)
    os.close(ctl_r)
    os.close(res_w)
    os.close(spec.ruleset_fd)
    return Launched(pid, ctl_w, res_r)


def _supervisor_main(spec, ctl_r, res_w, close_fds, timeout) -> None:
    """Body of the forked supervisor process. Never returns."""
    code = 0
    try:
        import signal
        # Ctrl-C is the caller's to handle. A caller that dies closes the
        # control pipe, which ends the sandbox (no PDEATHSIG here: it would
        # fire when the caller's *thread* exits, not its process).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for fd in close_fds:
            os.close(fd)
        loop.supervise(spec, ctl_r, res_w, timeout)
    except BaseException as e:  # noqa: BLE001
        code = 1
        try:
            os.write(res_w, f"R 0 -1 -1 supervisor failed: {e!r}".replace("\n", " ").encode())
        except OSError:
            pass
    finally:
        os._exit(code)
