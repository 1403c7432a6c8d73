"""Sandboxed work on a Ray cluster (`pip install 'sandlock[ray]'`).

    import ray, sandlock.ray

    @sandlock.ray.sandboxed(policy={"max_memory": "256M"}, timeout=60)
    def score(code: str) -> int:
        ...                                  # runs in a sandbox on a worker

    ray.get(score.remote("print(1)"))        # its return value, or its exception
    ray.get(sandlock.ray.run(["make", "test"], policy="build"))   # a sandlock Result

Where things run. A task of this module is an ordinary Ray task; its body
(in the unconfined worker process) makes a private task directory, builds
the Sandbox there and runs the command, or a small interpreter that loads
the function, in it. The function is pickled (cloudpickle) on the caller
and only ever unpickled inside the sandbox: the worker passes its bytes
through. The sandbox's answer (return value or exception) is unpickled by
the worker with an allow-list (plain data and built-in exceptions, plus
`allow_types`), because a pickle runs code chosen by whoever made it and
the sandboxed code may be hostile; `trust_result=True` lifts the list.

The policy travels as data (TaskPolicy) and is validated on the caller
before anything is submitted: None (the default policy), a profile name, a
dict of Sandbox fields (added to the default policy as `sandlock run -p`
adds a profile: lists extend it, other values replace it) or a Sandbox
(exactly that policy). Every task also gets its own task directory,
writable, as TMPDIR and as the working directory unless the policy sets
`cwd`; it is removed when the task ends.

The default policy is `sandlock run`'s (see default_policy()): system
directories and the worker's Python read-only, /proc (the sandbox's own
processes), a few devices, the task directory writable, credential files
denied, no network. So the cluster's control plane is out of reach: TCP to
the GCS and raylet ports is refused by Landlock, their unix sockets and the
object store's are outside every grant.

Launches are warmed once per worker process: the first sandbox of a worker
starts sandlock's launch server, later tasks on that worker reuse it.

Cancellation: `ray.cancel(ref)` interrupts the task body, which kills the
sandbox (within about 0.1 s) before the task ends; `force=True` and
`ray.kill(actor)` kill the worker, whose launch server and supervisors
then kill every sandboxed process (see README "Lifetimes").
"""
from __future__ import annotations

import builtins
import dataclasses
import io
import os
import pickle
import shutil
import stat
import sys
import tempfile
import threading
from typing import Any, Callable, Mapping, Sequence

try:
    import ray as _ray
except ImportError as _e:  # pragma: no cover - depends on the extra
    raise ImportError("sandlock.ray needs Ray: pip install 'sandlock[ray]'") from _e

from .exceptions import PolicyError, SandboxError
from .sandbox import ExitReason, Result, Sandbox

__all__ = ["sandboxed", "run", "execute", "call", "policy", "default_policy", "TaskPolicy",
           "SandboxedFunction", "SandboxedTaskError", "SandboxedFunctionError"]


# -- errors --------------------------------------------------------------------

class SandboxedTaskError(SandboxError):
    """The sandbox ended without the function's outcome: killed (a limit,
    the timeout, a cancellation), crashed, or it could not start.
    `result` is the sandbox's Result (reason, error, stderr)."""

    def __init__(self, message: str, result: Result | None = None):
        super().__init__(message, result)
        self.message = message
        self.result = result

    def __str__(self) -> str:
        return self.message


class SandboxedFunctionError(Exception):
    """The sandboxed function raised an exception that is not rebuilt here
    (its type is not allowed, see `allow_types`, or did not pickle):
    `type_name`, `message` and the sandbox's `traceback` text."""

    def __init__(self, type_name: str, message: str, traceback: str = ""):
        super().__init__(type_name, message, traceback)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


class RemoteTraceback(Exception):
    """The traceback of an exception raised inside the sandbox: set as the
    rebuilt exception's __cause__ (as concurrent.futures does)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


# -- policies as data ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TaskPolicy:
    """A policy as it travels to a worker: Sandbox fields (plain values),
    on top of the default policy or alone."""
    fields: Mapping[str, Any]
    on_default: bool = True


# Fields that hold Python objects of the caller, which cannot travel.
_CALLER_ONLY = ("policy_fn", "init_fn", "work_fn", "image", "notif_policy")


def policy(spec: Any = None) -> TaskPolicy:
    """The TaskPolicy of `spec` (None, a profile name, a dict of Sandbox
    fields, a Sandbox or a TaskPolicy), validated here: PolicyError (a
    ValueError) names the field, before anything reaches the cluster."""
    if isinstance(spec, TaskPolicy):
        out = spec
    elif spec is None:
        out = TaskPolicy({})
    elif isinstance(spec, str):
        from .profiles import read_profile
        out = TaskPolicy(read_profile(spec).fields())
    elif isinstance(spec, Sandbox):
        defaults = Sandbox()
        out = TaskPolicy({f.name: getattr(spec, f.name) for f in dataclasses.fields(Sandbox)
                          if getattr(spec, f.name) != getattr(defaults, f.name)}, on_default=False)
    elif isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {f.name for f in dataclasses.fields(Sandbox)})
        if unknown:
            raise PolicyError(f"policy: unknown Sandbox field(s) {', '.join(map(repr, unknown))}")
        out = TaskPolicy(dict(spec))
    else:
        raise PolicyError(f"policy: expected None, a profile name, a dict of Sandbox fields, "
                          f"a Sandbox or a TaskPolicy, got {type(spec).__name__}")
    for name in _CALLER_ONLY:
        if out.fields.get(name) is not None:
            raise PolicyError(f"policy: {name} holds an object of this process and cannot be sent "
                              f"to a Ray worker")
    _sandbox(out, [sys.executable], os.path.join(tempfile.gettempdir(), "sandlock-ray-check"))
    return out


def default_policy(cmd: Sequence[str] | None = None, task_dir: str | None = None) -> dict[str, Any]:
    """The Sandbox fields a task gets with policy=None, as computed here
    (a worker computes its own: its Python, its paths): `sandlock run`'s
    default policy with `task_dir` (a placeholder when None) as the
    private temporary and working directory."""
    task_dir = task_dir or os.path.join(tempfile.gettempdir(), "sandlock-ray-TASK")
    return _fields(TaskPolicy({}), list(cmd or [sys.executable]), task_dir)


def _fields(spec: TaskPolicy, cmd: list[str], task_dir: str) -> dict[str, Any]:
    """The Sandbox fields of `spec` for one task whose directory is `task_dir`."""
    fields = dict(spec.fields)
    if fields.get("cwd") is None:
        fields["cwd"] = task_dir
    if not spec.on_default:
        fields["fs_writable"] = [*(fields.get("fs_writable") or ()), task_dir]
        fields["env"] = {"TMPDIR": task_dir, **(fields.get("env") or {})}
        return fields
    from .cli import add_default_policy
    from .profiles import merge_fields
    base: dict[str, Any] = {"env": dict(fields.get("env") or {}), "cwd": fields["cwd"],
                            "no_supervisor": fields.get("no_supervisor", False)}
    granted = [(f"policy {name}", os.path.abspath(p)) for name in ("fs_readable", "fs_writable")
               for p in fields.get(name) or ()]
    add_default_policy(base, cmd, task_dir, granted)
    for name in ("cwd", "no_supervisor"):
        del base[name]
    for name in ("fs_readable", "fs_writable", "fs_denied"):
        base[name] = list(dict.fromkeys(base[name]))
    return merge_fields(base, fields)


def _sandbox(spec: TaskPolicy, cmd: list[str], task_dir: str) -> Sandbox:
    return Sandbox(**_fields(spec, cmd, task_dir))


# -- running here (on a worker, or anywhere) -----------------------------------

def execute(cmd: Sequence[str], policy: Any = None, timeout: float | None = None) -> Result:
    """Run `cmd` in a sandbox of `policy` in this process, with a private
    task directory: the body of run()'s task, usable directly (e.g. from
    the threads of a threaded actor). A KeyboardInterrupt (Ray's
    cancellation) kills the sandbox before it propagates."""
    spec = _policy_of(policy)
    cmd = _command(cmd)
    with _TaskDir() as task_dir:
        return _run(_sandbox(spec, cmd, task_dir), cmd, timeout)


def call(fn: Callable, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, *,
         policy: Any = None, timeout: float | None = None, allow_types: Sequence[Any] = (),
         trust_result: bool = False) -> Any:
    """fn(*args, **kwargs) in a sandbox of `policy`, in this process: its
    return value, or its exception raised here (see the module doc for the
    allow-list). SandboxedTaskError when the sandbox ended without either."""
    return _call_blob(_dump_function(fn), tuple(args), dict(kwargs or {}), _policy_of(policy),
                      timeout, _allowed_names(allow_types), trust_result)


def _policy_of(spec: Any) -> TaskPolicy:
    return spec if isinstance(spec, TaskPolicy) else policy(spec)


def _command(cmd: Any) -> list[str]:
    if isinstance(cmd, (str, bytes)) or not isinstance(cmd, Sequence) or not cmd \
            or not all(isinstance(a, str) for a in cmd):
        raise PolicyError(f"cmd: expected a non-empty list of str, got {cmd!r}")
    return list(cmd)


_TASK_PREFIX = "sandlock-ray-"
_swept = False


class _TaskDir:
    """A private directory (0700) for one task, removed afterwards, even
    when the sandbox left unreadable or unwritable entries in it. Its name
    holds this process's pid: a worker killed mid-task (force-cancel,
    ray.kill) leaves its directory behind, and the first task of a later
    process removes the directories of processes that are gone."""

    def __enter__(self) -> str:
        global _swept
        if not _swept:
            _swept = True
            _sweep_orphans()
        self.path = tempfile.mkdtemp(prefix=f"{_TASK_PREFIX}{os.getpid()}-")
        return self.path

    def __exit__(self, *exc: Any) -> None:
        _remove_tree(self.path)


def _sweep_orphans() -> None:
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        pid = name[len(_TASK_PREFIX):].partition("-")[0]
        if not (name.startswith(_TASK_PREFIX) and pid.isdigit()) or os.path.exists(f"/proc/{pid}"):
            continue
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            _remove_tree(path)


def _remove_tree(path: str) -> None:
    def fix(_fn: Any, p: str, _exc: Any) -> None:
        # The sandbox may have chmod'ed its own entries: give them back to us.
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if not os.path.islink(p):
                os.chmod(p, 0o700)
        except OSError:
            return
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=fix)  # noqa: B028 - onexc is 3.12+


def _run(sb: Sandbox, cmd: list[str], timeout: float | None) -> Result:
    """sb.run(cmd). Ray cancels a task with _thread.interrupt_main(),
    which wakes no system call: a run on the main thread wakes every
    sandbox.MAIN_THREAD_WAKE seconds, so the KeyboardInterrupt comes
    within that, and the run kills its sandbox before passing it on."""
    return sb.run(cmd, timeout=timeout)


# -- Python functions ----------------------------------------------------------

def _pickler() -> Any:
    try:
        import cloudpickle
    except ImportError:  # Ray's own copy: works, but the sandbox then imports Ray to load it
        from ray import cloudpickle
    return cloudpickle


_dump_lock = threading.Lock()


def _dump_function(fn: Callable) -> bytes:
    """fn pickled for the sandbox. Its module is pickled by value unless it
    is importable there from the interpreter's own directories (stdlib,
    site-packages): a script or test module elsewhere is not readable in
    the sandbox."""
    if not callable(fn):
        raise TypeError(f"expected a callable, got {fn!r}")
    cp = _pickler()
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    by_value = module is not None and module.__name__ != "__main__" and not _in_python_roots(module)
    with _dump_lock:
        if by_value:
            try:
                cp.register_pickle_by_value(module)
            except ValueError:
                by_value = False
        try:
            return cp.dumps(fn, protocol=5)
        finally:
            if by_value:
                cp.unregister_pickle_by_value(module)


def _in_python_roots(module: Any) -> bool:
    path = getattr(module, "__file__", None)
    if not path:
        return True  # built-in or namespace: nothing to send by value
    path = os.path.realpath(path)
    roots = {os.path.realpath(r) for r in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return any(path.startswith(r + os.sep) for r in roots)


# The program the sandbox runs for a function: standard library only (plus
# cloudpickle when the function needs it, imported by pickle itself).
_BOOT = r"""
import os, pickle, sys, traceback
d = sys.argv[1]
sys.path[1:1] = [p for p in sys.argv[2:] if p not in sys.path]
def answer(obj):
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass
    fd = os.open(os.path.join(d, "out.pkl"), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(pickle.dumps(obj, 5))
def text(e):
    try:
        return str(e)
    except Exception:
        return "<unprintable>"
try:
    with open(os.path.join(d, "fn.pkl"), "rb") as f:
        fn = pickle.load(f)
    with open(os.path.join(d, "args.pkl"), "rb") as f:
        args, kwargs = pickle.load(f)
    value = fn(*args, **kwargs)
except BaseException as e:
    tb = traceback.format_exc()
    try:
        blob = pickle.dumps(e, 5)
    except Exception:
        blob = None
    answer(("raised", blob, type(e).__module__ + "." + type(e).__qualname__, text(e), tb))
else:
    try:
        blob = pickle.dumps(value, 5)
    except Exception as e:
        answer(("unpicklable", None, type(e).__module__ + "." + type(e).__qualname__,
                "the return value does not pickle: " + text(e), traceback.format_exc()))
    else:
        answer(("returned", blob))
"""


def _call_blob(fn_blob: bytes, args: tuple, kwargs: dict, spec: TaskPolicy, timeout: float | None,
               allowed: frozenset[str], trust_result: bool) -> Any:
    with _TaskDir() as task_dir:
        call_dir = os.path.join(task_dir, "call")
        scratch = os.path.join(task_dir, "tmp")
        os.mkdir(call_dir, 0o700)
        os.mkdir(scratch, 0o700)
        _write(os.path.join(call_dir, "fn.pkl"), fn_blob)
        _write(os.path.join(call_dir, "args.pkl"), _pickler().dumps((args, kwargs), protocol=5))
        # Opened before the run: the sandbox may rename or replace the
        # directory's name, not what this descriptor refers to.
        dir_fd = os.open(call_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            path = [p for p in sys.path if p and os.path.isabs(p)]
            cmd = [sys.executable, "-I", "-c", _BOOT, call_dir, *path]
            fields = _fields(spec, cmd, task_dir)
            if fields.get("cwd") == task_dir:
                fields["cwd"] = scratch
            fields["env"] = {**fields["env"], "TMPDIR": scratch} \
                if fields["env"].get("TMPDIR") == task_dir else fields["env"]
            res = _run(Sandbox(**fields), cmd, timeout)
            _echo(res)
            answer = _read_answer(dir_fd)
        finally:
            os.close(dir_fd)
    if answer is None:
        raise SandboxedTaskError(_failure(res), res)
    return _outcome(answer, allowed, trust_result)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)


def _echo(res: Result) -> None:
    """The function's output goes where a plain Ray task's would: the
    worker's stdout and stderr (which Ray forwards to the driver)."""
    for data, stream in ((res.stdout, sys.stdout), (res.stderr, sys.stderr)):
        if data:
            try:
                stream.write(data.decode("utf-8", "replace"))
                stream.flush()
            except (OSError, ValueError):
                pass


def _read_answer(dir_fd: int) -> bytes | None:
    """The sandbox's out.pkl: a regular file of ours with one link, never
    followed through a symlink, never blocking on a FIFO."""
    try:
        fd = os.open("out.pkl", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
            return None
        with open(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _failure(res: Result) -> str:
    if res.reason == ExitReason.TIMEOUT:
        what = "the sandboxed function timed out"
    elif res.reason == ExitReason.KILLED:
        what = "the sandbox was killed"
    elif res.reason == ExitReason.SIGNALED:
        what = f"the sandboxed interpreter died of signal {res.signal}"
    elif res.reason == ExitReason.EXITED:
        what = f"the sandboxed interpreter exited with status {res.exit_code} without an answer"
    else:
        what = "the sandbox failed"
    if res.error:
        what += f": {res.error}"
    tail = res.stderr[-2000:].decode("utf-8", "replace").strip()
    return f"{what}\n{tail}" if tail else what


# Globals an answer may name without allow_types: value types of the
# standard library and the built-in exceptions. Calling them with any
# arguments runs no code of the sandbox's choosing.
_SAFE = frozenset({
    "builtins.complex", "builtins.set", "builtins.frozenset", "builtins.bytearray",
    "builtins.slice", "builtins.range", "builtins.list", "builtins.dict", "builtins.tuple",
    "builtins.str", "builtins.bytes", "builtins.int", "builtins.float", "builtins.bool",
    "collections.OrderedDict", "collections.deque", "datetime.date", "datetime.datetime",
    "datetime.time", "datetime.timedelta", "datetime.timezone", "decimal.Decimal",
    "fractions.Fraction", "uuid.UUID", "pathlib.PurePosixPath", "pathlib.PosixPath",
})


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, allowed: frozenset[str]):
        super().__init__(io.BytesIO(data))
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        key = f"{module}.{name}"
        if module == "builtins":
            obj = getattr(builtins, name, None)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                return obj
        if key in _SAFE or key in self.allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{key} is not an allowed type (allow_types=[...] allows it)")


def _loads(data: bytes, allowed: frozenset[str], trust: bool) -> Any:
    if trust:
        return pickle.loads(data)  # noqa: S301 - asked for with trust_result=True
    return _AllowListUnpickler(data, allowed).load()


def _outcome(answer: bytes, allowed: frozenset[str], trust: bool) -> Any:
    try:
        msg = _loads(answer, frozenset(), False)
        kind = msg[0]
    except Exception as e:  # noqa: BLE001 - whatever the sandbox wrote, it is refused
        raise SandboxedTaskError(f"the sandbox's answer is not readable: {e}") from None
    if kind == "returned" and len(msg) == 2 and isinstance(msg[1], bytes):
        try:
            return _loads(msg[1], allowed, trust)
        except Exception as e:  # noqa: BLE001
            raise SandboxedFunctionError("ReturnValueRefused", str(e)) from None
    if kind in ("raised", "unpicklable") and len(msg) == 5:
        _kind, blob, type_name, message, tb = msg
        exc: Any = None
        if isinstance(blob, bytes):
            try:
                exc = _loads(blob, allowed, trust)
            except Exception:  # noqa: BLE001 - falls back to the text form
                exc = None
        if not isinstance(exc, BaseException):
            exc = SandboxedFunctionError(str(type_name), str(message), str(tb))
        else:
            exc.__cause__ = RemoteTraceback(str(tb))
        raise exc
    raise SandboxedTaskError("the sandbox's answer is not one sandlock writes")


def _allowed_names(types: Sequence[Any]) -> frozenset[str]:
    names = set()
    for t in types:
        if isinstance(t, str) and "." in t:
            names.add(t)
        elif isinstance(t, type):
            names.add(f"{t.__module__}.{t.__qualname__}")
        else:
            raise PolicyError(f"allow_types: expected types or 'module.Name' strings, got {t!r}")
    return frozenset(names)


# -- Ray tasks -----------------------------------------------------------------

def _command_task(spec: TaskPolicy, cmd: list[str], timeout: float | None) -> Result:
    return execute(cmd, spec, timeout)


def _function_task(_sandlock_header: tuple, *args: Any, **kwargs: Any) -> Any:
    # The header's name is one no caller's keyword argument will have.
    fn_blob, spec, timeout, allowed, trust = _sandlock_header
    return _call_blob(fn_blob, args, kwargs, spec, timeout, allowed, trust)


_remote_lock = threading.Lock()
_remotes: dict[str, Any] = {}


def _remote(fn: Callable) -> Any:
    """The Ray remote function of `fn`, made once."""
    with _remote_lock:
        r = _remotes.get(fn.__name__)
        if r is None:
            r = _remotes[fn.__name__] = _ray.remote(fn)
        return r


def run(cmd: Sequence[str], policy: Any = None, timeout: float | None = None, **ray_options: Any) -> Any:
    """Submit `cmd` as a Ray task (with `ray_options`, as .options() takes
    them) that runs it in a sandbox: an ObjectRef of its Result."""
    from .sandbox import _check_timeout
    spec = _policy_of(policy)
    _check_timeout(timeout)
    return _remote(_command_task).options(**ray_options).remote(spec, _command(cmd), timeout)


class SandboxedFunction:
    """A function that runs in a sandbox: `.remote(*args, **kwargs)` as a
    Ray task (an ObjectRef of its return value), `.options(**ray_options)`,
    and a plain call, which runs it in a sandbox in this process."""

    def __init__(self, fn: Callable, spec: TaskPolicy, timeout: float | None,
                 allowed: frozenset[str], trust_result: bool, ray_options: dict[str, Any]):
        self._fn = fn
        self._spec = spec
        self._timeout = timeout
        self._allowed = allowed
        self._trust = trust_result
        self._ray_options = ray_options
        self._blob: bytes | None = None
        self.__name__ = getattr(fn, "__name__", "sandboxed")
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn

    def _header(self) -> tuple:
        if self._blob is None:
            self._blob = _dump_function(self._fn)
        return (self._blob, self._spec, self._timeout, self._allowed, self._trust)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return _remote(_function_task).options(**self._ray_options).remote(self._header(), *args, **kwargs)

    def options(self, **ray_options: Any) -> "SandboxedFunction":
        out = SandboxedFunction(self._fn, self._spec, self._timeout, self._allowed, self._trust,
                                {**self._ray_options, **ray_options})
        out._blob = self._blob
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        blob, spec, timeout, allowed, trust = self._header()
        return _call_blob(blob, args, kwargs, spec, timeout, allowed, trust)


def sandboxed(fn: Callable | None = None, *, policy: Any = None, timeout: float | None = None,
              allow_types: Sequence[Any] = (), trust_result: bool = False,
              **ray_options: Any) -> Any:
    """Decorator: the function runs in a sandbox of `policy` (see the
    module doc), as a Ray task with `ray_options` when called with
    .remote(). `timeout` (seconds) kills it; `allow_types` lists the types
    (or 'module.Name' strings) its return value and exceptions may hold
    beyond plain data and built-in exceptions; `trust_result=True` accepts
    any pickle from the sandbox (only for code you trust)."""
    from .sandbox import _check_timeout
    spec = _policy_of(policy)
    _check_timeout(timeout)
    allowed = _allowed_names(allow_types)

    def wrap(f: Callable) -> SandboxedFunction:
        if not callable(f):
            raise TypeError(f"sandboxed: expected a function, got {f!r}")
        return SandboxedFunction(f, spec, timeout, allowed, bool(trust_result), dict(ray_options))

    return wrap if fn is None else wrap(fn)
