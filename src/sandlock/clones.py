"""Sandbox.fork(n) and Sandbox.reduce(cmd, fork_result): copy-on-write clones.

    sb = Sandbox(fs_readable=[...], init_fn=mymod.load_model, work_fn=mymod.work)
    clones = sb.fork(100)                       # ForkResult: pids, len, [i]
    clones[3].stdout, clones[3].exit_code
    Sandbox(...).reduce(["python3", "merge.py"], clones)

The template is a Python program run as the sandbox's command
(`_fork_template`): it imports init_fn and work_fn by module and qualified
name, runs init_fn once, and forks the clones with os.fork(). Everything
happens inside that one sandbox, so every clone is under its supervisor,
policy and limits, and dies with it (see _fork_template's docstring).

The policy must let the template run: the interpreter (sys.executable and
its prefixes), the directory holding the `sandlock` package, and the
modules defining init_fn and work_fn must be readable. The clones run at
most max_processes - 1 at a time (the template is one process), each
starting as soon as an earlier one ends. fork() returns once every clone
has ended; each clone's stdout is kept in its own temporary file (in
memory up to 256 KiB, then on disk in the caller's tempfile directory), so
neither fork() nor reduce() holds all the output in memory, and the caller
drains the template's output while the clones run (no full pipe blocks
them).
"""
from __future__ import annotations

import os
import selectors
import sys
import tempfile
import threading
import time
from typing import IO, TYPE_CHECKING, Iterator, Sequence

from ._fork_template import BOOT, DATA, EXIT, FRAME, MAX_FRAME, PID

if TYPE_CHECKING:
    from .sandbox import Result, Sandbox

SPOOL_IN_MEMORY = 256 << 10
STDERR_KEPT = 4 << 20


class Clone:
    """One clone of a fork: its id, pid, exit status and stdout."""

    def __init__(self, clone_id: int):
        self.clone_id = clone_id
        self.pid: int | None = None
        self.status: int | None = None   # wait status, None if it did not end (or never started)
        self._out: IO[bytes] = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY, "w+b")
        self.size = 0

    @property
    def exit_code(self) -> int | None:
        """Its exit status, -N if signal N killed it, None if unknown."""
        if self.status is None:
            return None
        if os.WIFSIGNALED(self.status):
            return -os.WTERMSIG(self.status)
        return os.WEXITSTATUS(self.status)

    @property
    def success(self) -> bool:
        return self.exit_code == 0

    @property
    def stdout(self) -> bytes:
        """Everything the clone wrote on its stdout."""
        return b"".join(self.iter_stdout())

    def iter_stdout(self, chunk: int = 1 << 16) -> Iterator[bytes]:
        """The clone's stdout, a chunk at a time (not thread-safe)."""
        self._out.seek(0)
        while True:
            data = self._out.read(chunk)
            if not data:
                return
            yield data

    def close(self) -> None:
        self._out.close()

    def __repr__(self) -> str:
        return (f"Clone({self.clone_id}, pid={self.pid}, exit_code={self.exit_code}, "
                f"stdout={self.size} bytes)")


class ForkResult:
    """The clones of Sandbox.fork(n): `pids`, `len()`, `[i]` (a Clone),
    iteration, and `result`, the template's own Result (its stderr holds
    what init_fn and the clones wrote there; its error, limits enforced on
    the way, e.g. a clone killed past max_memory)."""

    def __init__(self, clones: list[Clone], result: "Result"):
        self.clones = clones
        self.result = result

    @property
    def pids(self) -> list[int]:
        """Each clone's pid (as the template reported it), in clone order."""
        return [c.pid if c.pid is not None else -1 for c in self.clones]

    @property
    def exit_codes(self) -> list[int | None]:
        return [c.exit_code for c in self.clones]

    def __len__(self) -> int:
        return len(self.clones)

    def __getitem__(self, i: int) -> Clone:
        return self.clones[i]

    def __iter__(self) -> Iterator[Clone]:
        return iter(self.clones)

    def close(self) -> None:
        """Drop the kept outputs now (otherwise when this is collected)."""
        for c in self.clones:
            c.close()

    def __enter__(self) -> "ForkResult":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ForkResult({len(self.clones)} clones, exit_codes={self.exit_codes})"


def _function_spec(fn, field: str) -> list:
    """[module, qualname, main file] naming `fn` so that the template can
    import it; PolicyError for what cannot be imported by name."""
    from .exceptions import PolicyError
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not callable(fn) or not isinstance(module, str) or not isinstance(qualname, str) \
            or "<" in qualname:
        raise PolicyError(f"{field}: expected a module-level function (or class attribute) the "
                          f"sandbox can import by name; a lambda or a nested function cannot be "
                          f"(got {fn!r})")
    main_file = None
    obj: object
    if module == "__main__":
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if not main_file:
            raise PolicyError(f"{field}: {qualname} is defined in an interactive session; define "
                              "it in a module or a script file")
        main_file = os.path.abspath(main_file)
        obj = sys.modules["__main__"]
    else:
        import importlib
        obj = importlib.import_module(module)
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        obj = None
    if obj is not fn:
        raise PolicyError(f"{field}: {module}.{qualname} does not name {fn!r} (a bound method or "
                          "a decorated function cannot be imported by name)")
    return [module, qualname, main_file]


def fork(sb: "Sandbox", n: int, timeout: float | None) -> ForkResult:
    import json

    from . import protocol
    from .exceptions import ForkError, PolicyError
    from .plan import compile_plan
    from .sandbox import CALLER_GRACE, _check_timeout, _result
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PolicyError(f"fork: n must be a positive number of clones (got {n!r})")
    _check_timeout(timeout)
    policy = sb._policy()
    if policy.max_processes is not None and policy.max_processes < 2:
        raise PolicyError(f"fork: max_processes must be 2 or more (the template and one clone at "
                          f"a time; got {policy.max_processes})")
    concurrency = n if policy.max_processes is None else min(n, policy.max_processes - 1)
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = {"n": n, "concurrency": concurrency, "path": [p for p in sys.path if isinstance(p, str)],
            "init": _function_spec(sb.init_fn, "init_fn"),
            "work": _function_spec(sb.work_fn, "work_fn")}
    plan = compile_plan(policy, [sys.executable, "-I", "-S", "-c", BOOT, src, json.dumps(spec)])
    clones = [Clone(i) for i in range(n)]
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        run = sb._start(plan, (null, out_w, err_w), timeout)
    except BaseException:
        for fd in (out_r, out_w, err_r, err_w, null):
            os.close(fd)
        for c in clones:
            c.close()
        raise
    for fd in (out_w, err_w, null):
        os.close(fd)
    frames = _Frames(clones)
    err: list[bytes] = []
    err_size = 0
    sel = selectors.DefaultSelector()
    try:
        for fd in (out_r, err_r, run.res_r):
            sel.register(fd, selectors.EVENT_READ)
        open_fds = 3
        deadline = None if timeout is None else time.monotonic() + timeout + CALLER_GRACE
        stage = 0
        while open_fds:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            events = sel.select(wait)
            if not events and deadline is not None and time.monotonic() >= deadline:
                stage += 1   # the supervisor did not end it in time: as Sandbox.run does
                if stage == 1:
                    run.send(protocol.Cmd.KILL)
                elif stage == 2:
                    run.kill_supervisor()
                else:
                    break
                deadline = time.monotonic() + CALLER_GRACE
                continue
            for key, _ in events:
                data = os.read(key.fd, 1 << 16)
                if key.fd == run.res_r:
                    if not run.feed(data):
                        sel.unregister(key.fd)
                        open_fds -= 1
                elif not data:
                    sel.unregister(key.fd)
                    open_fds -= 1
                elif key.fd == out_r:
                    if not frames.feed(data):
                        run.send(protocol.Cmd.KILL)  # a template that lies is ended
                elif err_size < STDERR_KEPT:
                    err.append(data[:STDERR_KEPT - err_size])
                    err_size += len(err[-1])
    except BaseException:
        run.send(protocol.Cmd.KILL)
        for c in clones:
            c.close()
        raise
    finally:
        sel.close()
        os.close(out_r)
        os.close(err_r)
        sb._finish(run)
    res = sb._settle(run, _result(run.result, b"", b"".join(err)))
    if frames.error:
        res.success = False
        res.error = f"{res.error}; {frames.error}" if res.error else frames.error
    started = sum(c.pid is not None for c in clones)
    if not started and not res.success:
        for c in clones:
            c.close()
        why = res.error or res.stderr.decode(errors="replace").strip()[-2000:] \
            or f"the template exited with status {res.exit_code}"
        raise ForkError(f"fork: the template failed before any clone started: {why}")
    return ForkResult(clones, res)


class _Frames:
    """The template's frames (_fork_template), parsed as untrusted input:
    a frame that breaks the format stops the parsing for good."""

    def __init__(self, clones: list[Clone]):
        self.clones = clones
        self.buf = bytearray()
        self.error: str | None = None

    def feed(self, data: bytes) -> bool:
        if self.error:
            return True  # already reported; the rest is discarded
        self.buf += data
        while len(self.buf) >= FRAME.size:
            i, kind, length = FRAME.unpack_from(self.buf)
            if i >= len(self.clones) or kind not in (PID, DATA, EXIT) or length > MAX_FRAME \
                    or (kind != DATA and length != 4):
                return self._bad(f"frame (clone {i}, kind {kind}, {length} bytes)")
            end = FRAME.size + length
            if len(self.buf) < end:
                break
            payload = bytes(self.buf[FRAME.size:end])
            del self.buf[:end]
            clone = self.clones[i]
            if kind == PID:
                if clone.pid is not None:
                    return self._bad(f"second pid for clone {i}")
                clone.pid = int.from_bytes(payload, sys.byteorder)
            elif kind == EXIT:
                if clone.pid is None or clone.status is not None:
                    return self._bad(f"exit status out of place for clone {i}")
                clone.status = int.from_bytes(payload, sys.byteorder, signed=True)
            else:
                if clone.pid is None or clone.status is not None:
                    return self._bad(f"output out of place for clone {i}")
                clone._out.write(payload)
                clone.size += len(payload)
        return True

    def _bad(self, what: str) -> bool:
        self.error = f"fork: the template sent a malformed {what}; the sandbox was killed"
        self.buf.clear()
        return False


def reduce(sb: "Sandbox", cmd: Sequence[str], fork_result: ForkResult,
           timeout: float | None) -> "Result":
    """Run `cmd` in `sb` with every clone's stdout, in clone order, on its
    stdin (streamed from the kept outputs by a writer thread)."""
    from .exceptions import PolicyError
    from .plan import compile_plan
    from .protocol import Cmd
    from .sandbox import _check_timeout, _collect, _result
    if not isinstance(fork_result, ForkResult):
        raise PolicyError(f"reduce: fork_result must be what fork() returned (got {fork_result!r})")
    _check_timeout(timeout)
    plan = compile_plan(sb._policy(), cmd)
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        run = sb._start(plan, (in_r, out_w, err_w), timeout)
    except BaseException:
        for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
            os.close(fd)
        raise
    for fd in (in_r, out_w, err_w):
        os.close(fd)

    def feed() -> None:
        try:
            for clone in fork_result:
                for chunk in clone.iter_stdout():
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(in_w, view):]
        except OSError:
            pass  # the reducer stopped reading (it ended, or was killed)
        finally:
            os.close(in_w)

    writer = threading.Thread(target=feed, name="sandlock-reduce-feed", daemon=True)
    writer.start()
    try:
        stdout, stderr = _collect(run, out_r, err_r, timeout)
    except BaseException:
        run.send(Cmd.KILL)
        raise
    finally:
        writer.join()
        os.close(out_r)
        os.close(err_r)
        sb._finish(run)
    return sb._settle(run, _result(run.result, stdout, stderr))
