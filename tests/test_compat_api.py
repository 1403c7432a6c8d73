"""The reference SDK's Python API, name for name (issue 8), and the table of
deliberate differences (docs/compat.md), kept true.

The lists below are literal copies of what sandlock 0.9.0 (the reference
SDK, installed from its wheel) exposes; CI does not have the reference, so
they are not computed. Behaviour is checked with real sandboxes.
"""
from __future__ import annotations

import dataclasses
import enum
import errno
import importlib
import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

import sandlock
from sandlock import (BranchAction, ExitReason, PolicyError, Protection, Sandbox, SandboxError,
                      StdioMode)
from sandlock.handler import ExceptionPolicy, Handler, HandlerCtx, NotifAction

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPAT_MD = os.path.join(ROOT, "docs", "compat.md")
SLEEP = shutil.which("sleep")
SRC = os.path.dirname(os.path.dirname(os.path.abspath(sandlock.__file__)))

# -- what the reference exposes (sandlock 0.9.0) -------------------------------------------

REF_SANDLOCK = ['BranchAction', 'BranchConflictError', 'BranchError', 'Change', 'Checkpoint', 'ChildError',
 'ConfinementError', 'Entry', 'ExceptionPolicy', 'ExitReason', 'ForkError', 'Gather',
 'GatherPipeline', 'Handler', 'HandlerCtx', 'Image', 'ImageConfig', 'LandlockUnavailableError',
 'MemoryProtectError', 'NamedStage', 'NotifAction', 'NotifError', 'Pipeline', 'PolicyContext',
 'PolicyError', 'Process', 'Protection', 'Result', 'Sandbox', 'SandboxError', 'SandlockError',
 'SeccompError', 'SkippedFd', 'Stage', 'StdioMode', 'SyscallEvent', 'confine', 'inputs',
 'landlock_abi_version', 'list_profiles', 'load_profile', 'min_landlock_abi', 'parse_ports',
 'pull_image', 'renames']

REF_ALL = ['BranchAction', 'BranchConflictError', 'BranchError', 'Change', 'Checkpoint', 'ChildError',
 'ConfinementError', 'Entry', 'ExceptionPolicy', 'ExitReason', 'ForkError', 'Gather',
 'GatherPipeline', 'Handler', 'HandlerCtx', 'Image', 'ImageConfig', 'LandlockUnavailableError',
 'MemoryProtectError', 'NamedStage', 'NotifAction', 'NotifError', 'Pipeline', 'PolicyContext',
 'PolicyError', 'Process', 'Protection', 'Result', 'Sandbox', 'SandboxError', 'SandlockError',
 'SeccompError', 'SkippedFd', 'Stage', 'StdioMode', 'SyscallEvent', '__version__', 'confine',
 'inputs', 'landlock_abi_version', 'list_profiles', 'load_profile', 'min_landlock_abi',
 'parse_ports', 'pull_image', 'renames']

REF_HANDLER = ['ExceptionPolicy', 'Handler', 'HandlerCtx', 'NotifAction']

REF_PRESETS = ['AuditPathsHandler', 'COMMON_PATH_SYSCALLS', 'LogSyscallsHandler', 'PathAllowHandler',
 'PathDenyHandler']

REF_EXCEPTIONS = ['BranchConflictError', 'BranchError', 'ChildError', 'ConfinementError', 'ForkError',
 'LandlockUnavailableError', 'MemoryProtectError', 'NotifError', 'PolicyError', 'SandboxError',
 'SandlockError', 'SeccompError']

REF_SANDBOX_FIELDS = ['fs_writable', 'fs_readable', 'fs_denied', 'extra_deny_syscalls', 'extra_allow_syscalls',
 'net_allow', 'net_deny', 'no_coredump', 'net_allow_bind', 'net_deny_bind', 'http_allow',
 'http_deny', 'http_ports', 'http_ca', 'http_key', 'http_inject_ca', 'http_ca_out', 'max_memory',
 'max_processes', 'max_open_files', 'max_cpu', 'cpu_cores', 'num_cpus', 'port_remap', 'random_seed',
 'time_start', 'no_randomize_memory', 'no_huge_pages', 'deterministic_dirs', 'gpu_devices',
 'chroot', 'image', 'fs_mount', 'fs_mount_ro', 'clean_env', 'env', 'uid', 'gid', 'notif_policy',
 'workdir', 'cwd', 'fs_storage', 'max_disk', 'on_exit', 'on_error', 'allow_degraded', 'disable',
 'name', 'policy_fn', 'init_fn', 'work_fn']

REF_SANDBOX_METHODS = {'abort': [],
 'checkpoint': ['save_fn'],
 'cmd': ['args'],
 'commit': [],
 'cpu_pct': [],
 'create': ['cmd'],
 'fork': ['n'],
 'kill': [],
 'pause': [],
 'popen': ['cmd', 'stdin', 'stdout', 'stderr'],
 'ports': [],
 'reduce': ['cmd', 'fork_result'],
 'restore_interactive': ['cp'],
 'resume': [],
 'run': ['cmd', 'timeout'],
 'run_interactive': ['cmd'],
 'run_with_handlers': ['cmd', 'handlers', 'name'],
 'spawn': ['cmd'],
 'start': [],
 'wait': []}

REF_SANDBOX_PROPERTIES = ['is_running', 'pending', 'pid', 'restore_skipped', 'upper_dir']

REF_SIGNATURES = {'Checkpoint.delete': ['name', 'store'],
 'Checkpoint.list': ['store'],
 'Checkpoint.load': ['name', 'store', 'restore_fn'],
 'Checkpoint.save': ['name', 'store'],
 'GatherPipeline.run': ['timeout'],
 'Handler.handle': ['ctx'],
 'HandlerCtx.read': ['addr', 'length'],
 'HandlerCtx.read_cstr': ['addr', 'max_len'],
 'HandlerCtx.read_path': ['arg', 'max_len'],
 'HandlerCtx.write': ['addr', 'data'],
 'ImageConfig.default_cmd': [],
 'NotifAction.continue_': [],
 'NotifAction.errno': ['value'],
 'NotifAction.hold': [],
 'NotifAction.inject_bytes': ['data', 'seal', 'cloexec'],
 'NotifAction.inject_fd_send': ['srcfd', 'newfd_flags'],
 'NotifAction.kill': ['sig', 'pgid'],
 'NotifAction.returns': ['value'],
 'Pipeline.run': ['stdout', 'timeout'],
 'PolicyContext.allow_path': ['path'],
 'PolicyContext.deny_path': ['path'],
 'PolicyContext.grant_network': ['ips'],
 'PolicyContext.restrict_max_memory': ['bytes'],
 'PolicyContext.restrict_max_processes': ['n'],
 'PolicyContext.restrict_network': ['ips'],
 'PolicyContext.restrict_pid_network': ['pid', 'ips'],
 'Process.kill': [],
 'Process.ports': [],
 'Process.wait': ['timeout'],
 'Stage.as_': ['name'],
 'Stage.run': ['timeout'],
 'SyscallEvent.argv_contains': ['s'],
 'confine': ['policy'],
 'landlock_abi_version': [],
 'list_profiles': [],
 'load_profile': ['name'],
 'min_landlock_abi': [],
 'parse_ports': ['specs'],
 'presets.AuditPathsHandler': ['callback', 'max_len'],
 'presets.LogSyscallsHandler': ['logger'],
 'presets.PathAllowHandler': ['allow', 'errno', 'max_len'],
 'presets.PathDenyHandler': ['deny', 'errno', 'max_len'],
 'pull_image': ['reference', 'cache_dir'],
 'renames': ['changes']}

REF_ENUMS = {'BranchAction': {'ABORT': 'abort', 'COMMIT': 'commit', 'DEFER': 'defer', 'KEEP': 'keep'},
 'ExceptionPolicy': {'CONTINUE': 2, 'DENY_EIO': 3, 'DENY_EPERM': 1, 'KILL': 0},
 'ExitReason': {'EXITED': 0, 'KILLED': 2, 'SIGNALED': 1, 'TIMEOUT': 3},
 'Protection': {'ABSTRACT_UNIX_SOCKET_SCOPE': 5,
                'FS_IOCTL_DEV': 3,
                'FS_REFER': 0,
                'FS_TRUNCATE': 1,
                'NET_TCP': 2,
                'SIGNAL_SCOPE': 4},
 'StdioMode': {'INHERIT': 0, 'NULL': 2, 'PIPED': 1}}

REF_DATACLASS_FIELDS = {'Change': ['path', 'before', 'after'],
 'Entry': ['kind', 'mode', 'size', 'digest', 'target'],
 'Image': ['rootfs', 'config'],
 'ImageConfig': ['entrypoint', 'cmd', 'env', 'working_dir'],
 'Result': ['success', 'exit_code', 'stdout', 'stderr', 'error', 'reason', 'signal', 'changes'],
 'SyscallEvent': ['syscall', 'category', 'pid', 'parent_pid', 'host', 'port', 'argv', 'denied']}

REF_EXCEPTION_PARENT = {'BranchConflictError': 'BranchError',
 'BranchError': 'SandboxError',
 'ChildError': 'SandboxError',
 'ConfinementError': 'SandboxError',
 'ForkError': 'SandboxError',
 'LandlockUnavailableError': 'ConfinementError',
 'MemoryProtectError': 'SandlockError',
 'NotifError': 'SeccompError',
 'PolicyError': 'SandlockError',
 'SandboxError': 'SandlockError',
 'SandlockError': 'Exception',
 'SeccompError': 'ConfinementError'}

REF_MEMBERS = {'Change': ['content_unchanged', 'kind', 'type_changed'],
 'Checkpoint': ['app_state', 'delete', 'list', 'load', 'name', 'save'],
 'Gather': [],
 'GatherPipeline': ['run'],
 'Handler': ['handle', 'on_exception'],
 'HandlerCtx': ['read', 'read_cstr', 'read_path', 'write'],
 'NamedStage': [],
 'NotifAction': ['continue_', 'errno', 'errno_value', 'hold', 'inject_bytes', 'inject_fd_send',
                 'kill', 'newfd_flags', 'pgid', 'return_value', 'returns', 'sig', 'srcfd'],
 'Pipeline': ['run'],
 'PolicyContext': ['allow_path', 'deny_path', 'grant_network', 'restrict_max_memory',
                   'restrict_max_processes', 'restrict_network', 'restrict_pid_network'],
 'Process': ['kill', 'pid', 'ports', 'wait'],
 'SkippedFd': ['count', 'fd', 'index', 'path'],
 'Stage': ['as_', 'run']}


# -- helpers --------------------------------------------------------------------------------

def _resolve(dotted: str):
    """sandlock.<dotted>, looking in sandlock, then sandlock.handler / presets."""
    head, *rest = dotted.split(".")
    for mod in (sandlock, importlib.import_module("sandlock.handler"),
                importlib.import_module("sandlock.presets")):
        if hasattr(mod, head):
            obj = getattr(mod, head)
            break
    else:
        raise AttributeError(dotted)
    for part in rest:
        obj = inspect.getattr_static(obj, part) if isinstance(obj, type) else getattr(obj, part)
        if isinstance(obj, (classmethod, staticmethod)):
            obj = obj.__func__
    return obj


def _param_names(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return True
    return data[data.rindex(b")") + 2:][:1] in (b"Z", b"X")


def _wait_until(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def _py(sb: Sandbox, code: str, *args: str, timeout: float = 60):
    return sb.run([sys.executable, "-I", "-S", "-c", code, *args], timeout=timeout)


GETCWD = "import os\ntry:\n os.getcwd(); print('ok')\nexcept OSError as e: print(e.errno)"


# -- every name imports ---------------------------------------------------------------------

def test_every_reference_name_imports():
    missing = [n for n in REF_SANDLOCK if not hasattr(sandlock, n)]
    assert not missing, missing
    assert set(REF_ALL) <= set(sandlock.__all__), set(REF_ALL) - set(sandlock.__all__)
    for n in sandlock.__all__:
        assert hasattr(sandlock, n), n
    for module, names in (("sandlock.handler", REF_HANDLER), ("sandlock.presets", REF_PRESETS),
                          ("sandlock.exceptions", REF_EXCEPTIONS)):
        mod = importlib.import_module(module)
        assert [n for n in names if not hasattr(mod, n)] == [], module
    # `from sandlock import inputs` is the accessor; the module imports too.
    mod = importlib.import_module("sandlock.inputs")
    assert sandlock.inputs is mod.inputs
    from sandlock import inputs  # noqa: F401
    from sandlock.presets import (COMMON_PATH_SYSCALLS, AuditPathsHandler,  # noqa: F401
                                  LogSyscallsHandler, PathAllowHandler, PathDenyHandler)


def test_sandbox_fields_in_reference_order():
    ours = [f.name for f in dataclasses.fields(Sandbox)]
    assert ours[:len(REF_SANDBOX_FIELDS)] == REF_SANDBOX_FIELDS
    assert ours[len(REF_SANDBOX_FIELDS):] == ["no_supervisor", "policy_fn_events", "policy_fn_observe",
                                              "policy_fn_timeout", "http_credentials",
                                              "http_auth"]  # ours only, last
    Sandbox()  # every field optional


def test_sandbox_methods_and_properties():
    for name, params in REF_SANDBOX_METHODS.items():
        fn = getattr(Sandbox, name)
        assert callable(fn), name
        assert _param_names(fn)[:len(params)] == params, (name, _param_names(fn))
    for name in REF_SANDBOX_PROPERTIES:
        assert isinstance(inspect.getattr_static(Sandbox, name), property), name
    assert hasattr(Sandbox, "__enter__") and hasattr(Sandbox, "__exit__")


@pytest.mark.parametrize("name", sorted(REF_SIGNATURES))
def test_signatures(name):
    params = REF_SIGNATURES[name]
    fn = _resolve(name.removeprefix("presets."))
    if isinstance(fn, type):
        fn = fn.__init__
    assert callable(fn), name
    assert _param_names(fn)[:len(params)] == params, (name, _param_names(fn))


@pytest.mark.parametrize("cls", sorted(REF_MEMBERS))
def test_class_members(cls):
    obj = _resolve(cls)
    missing = [m for m in REF_MEMBERS[cls] if not hasattr(obj, m)]
    assert not missing, (cls, missing)


def test_instance_attributes_and_operators(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    a, b, c = sb.cmd(["echo", "a"]), sb.cmd(["cat"]), sb.cmd(["cat"])
    assert (a.sandbox, a.args) == (sb, ["echo", "a"])
    p = a | b
    assert isinstance(p, sandlock.Pipeline) and p.stages == [a, b]
    assert (p | c).stages == [a, b, c] and (a | (b | c)).stages == [a, b, c]
    na, nb = a.as_("x"), b.as_("y")
    assert isinstance(na, sandlock.NamedStage) and (na.stage, na.name) == (a, "x")
    g = na + nb
    assert isinstance(g, sandlock.Gather) and g.sources == [("x", a), ("y", b)]
    assert (g + c.as_("z")).sources[-1] == ("z", c)
    gp = g | c
    assert isinstance(gp, sandlock.GatherPipeline) and (gp.sources, gp.consumer) == (g.sources, c)
    ctx = HandlerCtx(id=1, pid=2, flags=0, syscall_nr=3, arch=4, instruction_pointer=5,
                     args=(1, 2, 3, 4, 5, 6))
    assert (ctx.id, ctx.pid, ctx.flags, ctx.syscall_nr, ctx.arch, ctx.instruction_pointer,
            ctx.args) == (1, 2, 0, 3, 4, 5, (1, 2, 3, 4, 5, 6))
    # A HandlerCtx built by hand touches no process: reads give None.
    assert ctx.read(0x1000, 8) is None and ctx.read_cstr(0x1000, 8) is None
    assert ctx.write(0x1000, b"x") is False
    skipped = sandlock.SkippedFd(fd=3, path="pipe:[1]")
    assert (skipped.fd, skipped.path) == (3, "pipe:[1]")


@pytest.mark.parametrize("name", sorted(REF_ENUMS))
def test_enums(name):
    cls = getattr(sandlock, name)
    assert issubclass(cls, enum.Enum)
    assert {m.name: m.value for m in cls} == REF_ENUMS[name]


# Fields of ours only, after the reference's (positional construction is unchanged).
OURS_ONLY_FIELDS = {"Result": ["denials", "denials_omitted", "audit", "audit_omitted",
                               "policy_errors", "http_log", "http_log_omitted", "stages"]}


@pytest.mark.parametrize("name", sorted(REF_DATACLASS_FIELDS))
def test_dataclass_fields(name):
    assert [f.name for f in dataclasses.fields(getattr(sandlock, name))] == \
        REF_DATACLASS_FIELDS[name] + OURS_ONLY_FIELDS.get(name, [])


def test_exception_tree():
    for name, parent in REF_EXCEPTION_PARENT.items():
        cls = getattr(sandlock, name)
        assert issubclass(cls, getattr(sandlock, parent) if parent != "Exception" else Exception), name
        assert cls is getattr(importlib.import_module("sandlock.exceptions"), name)
        assert issubclass(cls, sandlock.SandlockError)
    # Catchable the way reference code catches its errors.
    assert issubclass(PolicyError, ValueError) and issubclass(PolicyError, RuntimeError)
    assert issubclass(SandboxError, RuntimeError)
    with pytest.raises(ValueError):
        Sandbox(max_memory="lots")
    with pytest.raises(RuntimeError):
        Sandbox(max_memory="lots")
    with pytest.raises(RuntimeError):
        Sandbox().pause()


def test_misc_functions():
    assert sandlock.min_landlock_abi() == 6
    assert sandlock.landlock_abi_version() >= 1
    assert sandlock.parse_ports([22, "80", "8000-8002,9000"]) == [22, 80, 8000, 8001, 8002, 9000]
    assert sandlock.parse_ports([]) == []
    for bad in ("80", ["*"], [70000], ["1-x"]):
        with pytest.raises(ValueError):
            sandlock.parse_ports(bad)
    assert isinstance(sandlock.list_profiles(), list)
    assert sandlock.ImageConfig(entrypoint=("a",), cmd=("b",)).default_cmd() == ["a", "b"]
    assert sandlock.ImageConfig().default_cmd() == ["/bin/sh"]
    ev = sandlock.SyscallEvent("execve", "process", 5, argv=("ls", "-la"))
    assert ev.argv_contains("-l") and not ev.argv_contains("x")
    assert not sandlock.SyscallEvent("connect", "network", 5, host="10.0.0.1", port=443).argv_contains("")


def test_changes_and_renames():
    Entry, Change = sandlock.Entry, sandlock.Change
    f1 = Entry("file", 0o644, 3, b"d1", None)
    f1b = Entry("file", 0o600, 3, b"d1", None)
    f2 = Entry("file", 0o644, 4, b"d2", None)
    link = Entry("symlink", 0o777, 0, None, "t")
    changes = [Change("old", f1, None), Change("new", None, f1b), Change("m", f2, f1b),
               Change("added", None, f2), Change("l", link, f2)]
    assert [c.kind for c in changes] == ["D", "A", "M", "A", "M"]
    assert changes[2].content_unchanged is False and Change("t", f1, f1b).content_unchanged
    assert changes[4].type_changed and not changes[2].type_changed
    assert str(changes[0]) == "D  old"
    assert sandlock.renames(changes) == [("old", "new")]
    # An ambiguous digest pairs nothing.
    assert sandlock.renames(changes + [Change("new2", None, f1)]) == []


# -- Sandbox: fields ------------------------------------------------------------------------

def test_list_fields_accept_lists_and_default_to_lists(base_readable):
    sb = Sandbox(fs_readable=list(base_readable), fs_writable=[], fs_denied=["/etc/shadow"],
                 extra_deny_syscalls=["ptrace"], extra_allow_syscalls=["sysv_ipc"],
                 net_allow=["127.0.0.1:80"], net_allow_bind=[8080, "9000-9001"],
                 cpu_cores=[0], allow_degraded=[Protection.FS_REFER], disable=[])
    assert sb.run(["true"], timeout=60).success
    empty = Sandbox()
    for f in ("fs_readable", "fs_writable", "fs_denied", "net_allow", "net_allow_bind",
              "extra_deny_syscalls", "http_ports", "allow_degraded", "disable"):
        assert getattr(empty, f) == [], f
    # Fields are mutable between runs, as in the reference.
    empty.fs_readable.extend(base_readable)
    assert empty.run(["true"], timeout=60).success
    assert Sandbox().fs_readable is not Sandbox().fs_readable


def test_on_exit_on_error_take_strings(tmp_path):
    wd = str(tmp_path)
    sb = Sandbox(workdir=wd, on_exit="keep", on_error="commit")
    assert (sb.on_exit, sb.on_error) == (BranchAction.KEEP, BranchAction.COMMIT)
    assert Sandbox(workdir=wd, on_exit="defer").on_exit is BranchAction.DEFER
    with pytest.raises(PolicyError, match="on_exit"):
        Sandbox(workdir=wd, on_exit="bogus")
    with pytest.raises(PolicyError, match="on_error"):
        Sandbox(workdir=wd, on_error=3)
    # an action that has no branch to act on is refused, never ignored
    with pytest.raises(PolicyError, match="needs a workdir"):
        Sandbox(on_exit="keep")


def test_protection_values_are_validated():
    assert Sandbox(allow_degraded=[Protection.NET_TCP, 4, "FS_TRUNCATE"]).allow_degraded
    for field in ("allow_degraded", "disable"):
        for bad in ([99], ["NOPE"], [True], Protection.NET_TCP):
            with pytest.raises(PolicyError, match=field):
                Sandbox(**{field: bad})


def _plan(abi: int, **kw):
    from sandlock.plan import compile_plan
    from sandlock.policy.model import normalize
    return compile_plan(normalize(Sandbox(**kw)), ["true"], abi=abi)


def test_a_missing_protection_refuses_unless_named():
    from sandlock._kernel import landlock
    with pytest.raises(sandlock.LandlockUnavailableError, match="SIGNAL_SCOPE") as info:
        _plan(5)
    assert "allow_degraded" in str(info.value) and isinstance(info.value, RuntimeError)
    with pytest.raises(sandlock.LandlockUnavailableError, match="ABSTRACT_UNIX_SOCKET_SCOPE"):
        _plan(5, allow_degraded=[Protection.SIGNAL_SCOPE])  # naming one is not naming both
    p = _plan(5, allow_degraded=[Protection.SIGNAL_SCOPE, Protection.ABSTRACT_UNIX_SOCKET_SCOPE])
    assert p.scoped == 0 and p.handled_fs & landlock.FS_IOCTL_DEV
    older = [Protection.NET_TCP, Protection.FS_IOCTL_DEV, Protection.SIGNAL_SCOPE,
             Protection.ABSTRACT_UNIX_SOCKET_SCOPE]
    with pytest.raises(sandlock.LandlockUnavailableError, match="NET_TCP"):
        _plan(3, allow_degraded=older[1:], net_allow_bind=[8080])
    p = _plan(3, allow_degraded=older, net_allow_bind=[8080])
    assert p.handled_net == 0 and p.bind_ports == [] and p.scoped == 0
    with pytest.raises(sandlock.LandlockUnavailableError):
        _plan(0, allow_degraded=list(Protection))  # no Landlock at all: never
    # Degrading names a permission to run without it, not an order to drop it.
    full = _plan(7, allow_degraded=list(Protection))
    assert full.scoped == landlock.SCOPE_SIGNAL | landlock.SCOPE_ABSTRACT_UNIX_SOCKET
    assert full.handled_fs & landlock.FS_TRUNCATE and full.handled_net


def test_disable_turns_a_protection_off():
    from sandlock._kernel import landlock
    p = _plan(7, disable=[Protection.FS_TRUNCATE, Protection.SIGNAL_SCOPE])
    assert not p.handled_fs & landlock.FS_TRUNCATE and p.handled_fs & landlock.FS_REFER
    assert p.scoped == landlock.SCOPE_ABSTRACT_UNIX_SOCKET
    p = _plan(7, disable=[Protection.NET_TCP], net_allow_bind=[8080])
    assert p.handled_net == 0 and p.bind_ports == []
    # disable also covers a protection the kernel lacks.
    assert _plan(5, disable=[Protection.SIGNAL_SCOPE],
                 allow_degraded=[Protection.ABSTRACT_UNIX_SOCKET_SCOPE]).scoped == 0


def test_disabled_signal_scope_in_a_real_sandbox(base_readable):
    outside = subprocess.Popen([SLEEP, "60"])
    try:
        code = "import os, sys\ntry:\n os.kill(int(sys.argv[1]), 0); print('OK')\nexcept OSError as e: print(e.errno)"
        r = _py(Sandbox(fs_readable=base_readable), code, str(outside.pid))
        assert r.stdout == b"%d\n" % errno.EPERM, (r.stdout, r.stderr)
        r = _py(Sandbox(fs_readable=base_readable, disable=[Protection.SIGNAL_SCOPE]), code, str(outside.pid))
        assert r.stdout == b"OK\n", (r.stdout, r.stderr)
    finally:
        outside.kill()
        outside.wait()


def test_notif_policy_none_only():
    assert Sandbox(notif_policy=None).notif_policy is None
    with pytest.raises(PolicyError, match="notif_policy"):
        Sandbox(notif_policy=object())


def test_new_fields_validated_and_pending(base_readable):
    with pytest.raises(PolicyError, match="fs_mount_ro"):
        Sandbox(fs_mount={"/w": "/tmp"}, fs_mount_ro={"/w": "/tmp"})
    with pytest.raises(PolicyError, match="image"):
        Sandbox(image="alpine")
    with pytest.raises(PolicyError, match="need a chroot"):
        Sandbox(fs_mount_ro={"/w": "/tmp"})
    with pytest.raises(PolicyError, match="give one"):
        Sandbox(image=sandlock.Image(rootfs="/tmp"), chroot="/tmp")


def test_cpu_pct():
    assert Sandbox().cpu_pct() is None
    assert Sandbox(max_cpu=50).cpu_pct() == 50
    sb = Sandbox(max_cpu=50)
    sb.max_cpu = 500
    assert sb.cpu_pct() == 100


# -- Sandbox: lifecycle ---------------------------------------------------------------------

def test_idle_lifecycle_errors():
    sb = Sandbox()
    for method in (sb.pause, sb.resume, sb.wait, sb.start, sb.commit, sb.abort, sb.checkpoint):
        with pytest.raises(SandboxError) as info:
            method()
        assert isinstance(info.value, RuntimeError)
    sb.kill()  # nothing running: nothing to do
    assert not sb.pending and sb.upper_dir is None and sb.restore_skipped == []
    assert sb.pid is None and not sb.is_running


def test_create_start_wait(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    sb.create(["sh", "-c", "exit 7"])
    assert sb.pid is None and not sb.is_running
    with pytest.raises(SandboxError):
        sb.run(["true"])  # created, not started: busy
    with pytest.raises(SandboxError):
        sb.create(["true"])
    sb.start()
    r = sb.wait()
    assert isinstance(r, sandlock.Result) and r.exit_code == 7 and r.reason == ExitReason.EXITED
    with pytest.raises(SandboxError):
        sb.wait()
    with pytest.raises(PolicyError):
        sb.create("not a list")
    assert sb.run(["true"], timeout=60).success


def test_spawn_pause_resume_kill_wait(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    sb.spawn([SLEEP, "60"])
    pid = sb.pid
    assert pid and sb.is_running
    sb.pause()
    assert _wait_until(lambda: open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T")
    sb.resume()
    assert sb.checkpoint().command == [SLEEP, "60"]
    sb.kill()
    r = sb.wait()
    assert r.reason == ExitReason.KILLED and not r.success
    assert _wait_until(lambda: _gone(pid))
    assert not sb.is_running and sb.pid is None


def test_context_manager_reaps(base_readable):
    with Sandbox(fs_readable=base_readable) as sb:
        sb.spawn([SLEEP, "60"])
        spawned = sb.pid
    assert _wait_until(lambda: _gone(spawned))
    with Sandbox(fs_readable=base_readable) as sb:
        p = sb.popen([SLEEP, "60"])
        popened = p.pid
    assert _wait_until(lambda: _gone(popened)) and p.result is not None
    with pytest.raises(ZeroDivisionError):
        with Sandbox(fs_readable=base_readable) as sb:
            sb.spawn([SLEEP, "60"])
            pid = sb.pid
            1 / 0  # noqa: B018
    assert _wait_until(lambda: _gone(pid))


def test_wait_refers_a_popen_process_to_it(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    p = sb.popen([SLEEP, "60"])
    try:
        with pytest.raises(SandboxError, match="popen"):
            sb.wait()
    finally:
        p.kill()
    assert p.wait(timeout=30).reason == ExitReason.KILLED


def test_popen_stdio_modes_and_result(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    with sb.popen(["sh", "-c", "cat; echo err >&2; exit 3"], stdin=StdioMode.PIPED,
                  stdout=StdioMode.PIPED, stderr=StdioMode.NULL) as p:
        assert p.stderr is None
        p.stdin.write(b"ping")
        r = p.wait(timeout=60)  # closes stdin first, so cat ends
        assert p.stdout.read() == b"ping"
    assert r.exit_code == 3 and r.reason == ExitReason.EXITED and r.stdout == b"" and p.returncode == 3
    assert p.ports() == {} and p.pid is None
    # A plain int is a file descriptor, as with subprocess.
    with open(os.devnull, "wb") as devnull:
        p = sb.popen(["sh", "-c", "echo hidden"], stdout=devnull.fileno(), stderr=subprocess.DEVNULL)
        assert p.wait(timeout=60).success
    p = sb.popen(["true"])  # INHERIT by default
    assert p.wait(timeout=60).success
    with pytest.raises((ValueError, PolicyError)):
        sb.popen(["true"], stdout="pipe")


def test_process_ports_with_port_remap(base_readable):
    code = ("import socket, sys, time\ns = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))\n"
            "print('bound', flush=True); time.sleep(30)")
    with socket_port() as port:
        sb = Sandbox(fs_readable=base_readable, port_remap=True, net_allow_bind=[port])
        p = sb.popen([sys.executable, "-I", "-S", "-c", code, str(port)], stdout=StdioMode.PIPED)
        try:
            assert p.stdout.readline() == b"bound\n"
            ports = p.ports()
            assert ports.get(port, port) != port and ports == sb.ports(), ports  # the port was taken
        finally:
            p.kill()
            p.wait(timeout=30)


class socket_port:
    """A port held by this process for the duration (so a sandbox binding it is remapped)."""
    def __enter__(self) -> int:
        import socket
        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return self.s.getsockname()[1]

    def __exit__(self, *exc):
        self.s.close()


def test_fork_reduce_need_importable_functions():
    with pytest.raises(SandboxError, match="init_fn and work_fn"):
        Sandbox().fork(2)
    sb = Sandbox(init_fn=lambda: None, work_fn=lambda i: None)
    with pytest.raises(PolicyError, match="lambda"):
        sb.fork(2)
    with pytest.raises(PolicyError, match="fork_result"):
        sb.reduce(["cat"], None)


# -- Stage and Pipeline ---------------------------------------------------------------------

def test_pipeline_runs_each_stage_in_its_own_sandbox(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    pipe = (sb.cmd(["sh", "-c", "echo hello; echo e0 >&2"])
            | sb.cmd(["tr", "a-z", "A-Z"])
            | Sandbox(fs_readable=base_readable).cmd(["sh", "-c", "cat; echo e2 >&2; exit 4"]))
    r = pipe.run(timeout=60)
    assert (r.stdout, r.stderr, r.exit_code, r.reason) == (b"HELLO\n", b"e2\n", 4, ExitReason.EXITED)
    assert not r.success
    assert [x.stderr for x in pipe.results] == [b"e0\n", b"", b"e2\n"]
    assert [x.exit_code for x in pipe.results] == [0, 0, 4]
    assert not sb.is_running and sb.run(["true"], timeout=60).success


def test_pipeline_stages_have_their_own_policies(base_readable, world_dir):
    secret = os.path.join(world_dir, "secret")
    with open(secret, "w") as f:
        f.write("S")
    reader = Sandbox(fs_readable=base_readable + [world_dir])
    blind = Sandbox(fs_readable=base_readable)
    r = (reader.cmd(["cat", secret]) | blind.cmd(["sh", "-c", f"cat; cat {secret} 2>/dev/null || echo -n D"])).run(
        timeout=60)
    assert r.stdout == b"SD", (r.stdout, r.stderr)


def test_pipeline_timeout_and_stdout_fd(base_readable, world_dir):
    sb = Sandbox(fs_readable=base_readable)
    r = (sb.cmd([SLEEP, "60"]) | sb.cmd(["cat"])).run(timeout=0.5)
    assert r.reason == ExitReason.TIMEOUT and r.error == "Pipeline timed out" and not r.success
    path = os.path.join(world_dir, "out")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        r = (sb.cmd(["echo", "to the fd"]) | sb.cmd(["cat"])).run(stdout=fd, timeout=60)
    finally:
        os.close(fd)
    assert r.success and r.stdout == b""
    with open(path, "rb") as f:
        assert f.read() == b"to the fd\n"


def test_pipeline_needs_two_stages_and_valid_values(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    with pytest.raises(ValueError):
        sandlock.Pipeline([sb.cmd(["true"])])
    with pytest.raises(TypeError):
        sb.cmd(["true"]) | "cat"
    with pytest.raises(PolicyError, match="timeout"):
        (sb.cmd(["true"]) | sb.cmd(["true"])).run(timeout=-1)
    bad = Sandbox(fs_readable=base_readable)
    bad.max_open_files = -5  # changed after construction: caught before any stage starts
    with pytest.raises(PolicyError, match="max_open_files"):
        (sb.cmd(["true"]) | bad.cmd(["true"])).run()
    assert not sb.is_running


def test_stage_run_honours_timeout(base_readable):
    stage = Sandbox(fs_readable=base_readable).cmd([SLEEP, "60"])
    r = stage.run(timeout=0.3)
    assert r.reason == ExitReason.TIMEOUT
    assert Sandbox(fs_readable=base_readable).cmd(["echo", "x"]).run().stdout == b"x\n"


def test_gather_builds_and_runs(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    gp = sb.cmd(["echo", "a"]).as_("a") + sb.cmd(["echo", "b"]).as_("b") | sb.cmd(["sh", "-c", "cat <&3; cat"])
    assert gp.run(timeout=60).stdout == b"a\nb\n"
    with pytest.raises(PolicyError):
        sb.cmd(["true"]).as_("a:b")


def test_inputs_reads_named_fds(monkeypatch):
    from sandlock.inputs import _Inputs
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    os.write(w1, b"one")
    os.write(w2, b"two")
    os.close(w1)
    os.close(w2)
    monkeypatch.setenv("_SANDLOCK_GATHER", f"code:{r1},data:{r2}")
    inp = _Inputs()
    assert "code" in inp and "nope" not in inp and list(inp.keys()) == ["code", "data"]
    assert inp["code"] == "one" and inp["code"] == "one"  # read once, kept
    assert inp["data"] == "two"
    with pytest.raises(KeyError, match="nope"):
        inp["nope"]
    monkeypatch.delenv("_SANDLOCK_GATHER")
    assert list(_Inputs().keys()) == []


def test_inputs_inside_a_sandbox(base_readable):
    sb = Sandbox(fs_readable=base_readable + [SRC], env={"_SANDLOCK_GATHER": "notes:0", "PYTHONPATH": SRC})
    code = "from sandlock import inputs\nprint(repr(inputs['notes']), 'notes' in inputs)"
    p = sb.popen([sys.executable, "-S", "-c", code], stdin=StdioMode.PIPED, stdout=StdioMode.PIPED)
    p.stdin.write(b"from the producer")
    r = p.wait(timeout=60)
    assert p.stdout.read() == b"'from the producer' True\n", r


# -- handlers -------------------------------------------------------------------------------

def test_notif_action_values():
    assert NotifAction.kill(9).kind == 7 and NotifAction.kill(9, pgid=5).pgid == 5
    assert NotifAction.hold().kind == 6
    assert NotifAction.continue_().kind == 1 and NotifAction.errno(13).errno_value == 13
    import fcntl
    sealed = NotifAction.inject_bytes(b"x")
    loose = NotifAction.inject_bytes(b"x", seal=False, cloexec=False)
    try:
        assert fcntl.fcntl(sealed.srcfd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
        assert not fcntl.fcntl(loose.srcfd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
        assert os.write(loose.srcfd, b"y") == 1 and loose.newfd_flags == 0
        assert sealed.newfd_flags == os.O_CLOEXEC
    finally:
        os.close(sealed.srcfd)
        os.close(loose.srcfd)


def test_exception_policy_continue_is_never_the_default_nor_lets_a_call_through(base_readable):
    assert Handler.on_exception != ExceptionPolicy.CONTINUE

    class Broken(Handler):
        on_exception = ExceptionPolicy.CONTINUE

        def handle(self, ctx):
            raise RuntimeError("boom")

    r = Sandbox(fs_readable=base_readable).run_with_handlers(
        [sys.executable, "-I", "-S", "-c", GETCWD], [("getcwd", Broken())], timeout=60)
    assert r.stdout == b"%d\n" % errno.EPERM, (r.stdout, r.stderr)


def test_async_handler_and_name(base_readable):
    class Async(Handler):
        async def handle(self, ctx):
            return NotifAction.returns(4242)

    r = Sandbox(fs_readable=base_readable).run_with_handlers(
        [sys.executable, "-I", "-S", "-c", "import os, socket; print(os.getpid(), socket.gethostname())"],
        [("getpid", Async())], "compat-box", timeout=60)
    assert r.stdout.split()[0] == b"4242", (r.stdout, r.stderr)
    with pytest.raises(PolicyError, match="name"):
        Sandbox().run_with_handlers(["true"], [], "x" * 65)


def test_read_path_table():
    from sandlock._kernel import syscalls
    table = syscalls.table()

    def ctx(name):
        return HandlerCtx(1, os.getpid(), 0, table.syscalls[name], 0, 0, (0, 0, 0, 0, 0, 0))

    assert ctx("openat").read_path() is None  # a hand-made context reads nothing
    for name in ("renameat2", "linkat", "symlinkat"):
        with pytest.raises(ValueError, match="arg"):
            ctx(name).read_path()
    with pytest.raises(ValueError):
        ctx("getpid").read_path()
    with pytest.raises(ValueError):
        ctx("openat").read_path(arg=6)
    assert ctx("renameat2").read_path(arg=1) is None


def test_presets_in_real_runs(base_readable, world_dir):
    from sandlock.presets import (COMMON_PATH_SYSCALLS, AuditPathsHandler, LogSyscallsHandler,
                                  PathAllowHandler, PathDenyHandler)
    sb = Sandbox(fs_readable=base_readable, fs_writable=[world_dir])
    log = os.path.join(world_dir, "audit.log")

    def audit(path, ctx):  # runs in the supervisor: a file, not a list, reaches the caller
        with open(log, "a") as f:
            f.write(f"{path}\n")

    code = ("import sys\nfor p in sys.argv[1:]:\n try:\n  open(p).close(); print('OK')\n"
            " except OSError as e: print(e.errno)")
    r = sb.run_with_handlers([sys.executable, "-I", "-S", "-c", code, "/etc/hostname", "/etc/passwd"],
                             [(n, PathDenyHandler(["*/hostname"])) for n in COMMON_PATH_SYSCALLS]
                             + [("openat", AuditPathsHandler(audit))], timeout=60)
    assert r.stdout == b"%d\nOK\n" % errno.EPERM, (r.stdout, r.stderr)
    with open(log) as f:
        seen = f.read().split()
    assert "/etc/passwd" in seen
    mk = "import os, sys\nfor p in sys.argv[1:]:\n try:\n  os.mkdir(p); print('OK')\n except OSError as e: print(e.errno)"
    allow = PathAllowHandler([os.path.join(world_dir, "ok*")])
    r = sb.run_with_handlers([sys.executable, "-I", "-S", "-c", mk, os.path.join(world_dir, "ok1"),
                              os.path.join(world_dir, "no1")], [("mkdirat", allow), ("mkdir", allow)]
                             if "mkdir" in _table_names() else [("mkdirat", allow)], timeout=60)
    assert r.stdout == b"OK\n%d\n" % errno.EACCES, (r.stdout, r.stderr)
    lines = os.path.join(world_dir, "lines.log")

    def logger(line):
        with open(lines, "a") as f:
            f.write(line + "\n")

    r = sb.run_with_handlers([sys.executable, "-I", "-S", "-c", "import os; os.getpid()"],
                             [("getpid", LogSyscallsHandler(logger))], timeout=60)
    assert r.success
    with open(lines) as f:
        assert f.read().startswith("syscall=")
    with pytest.raises(TypeError):
        PathDenyHandler("/etc/*")


def _table_names():
    from sandlock._kernel import syscalls
    return syscalls.table().syscalls


# -- docs/compat.md, kept true --------------------------------------------------------------

def _table(heading: str, allow_empty: bool = False) -> list[str]:
    """The backquoted names of the first column of the table under `heading`."""
    if not os.path.exists(COMPAT_MD) and not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("docs/ is not part of this copy of the tests (the checkout's run checks it)")
    with open(COMPAT_MD) as f:
        text = f.read()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)
    assert names or allow_empty, heading
    return names


def _check_construction(ctx):
    with pytest.raises(PolicyError, match="max_memory") as info:
        Sandbox(max_memory="lots")
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)


def _check_max_processes(ctx):
    from sandlock.plan import compile_plan
    from sandlock.policy.model import normalize
    assert Sandbox().max_processes == 64
    assert compile_plan(normalize(Sandbox()), ["true"]).max_processes == 64


def _check_clean_env(ctx):
    from sandlock.plan import MINIMAL_ENV
    env = shutil.which("env")
    r = Sandbox(fs_readable=ctx["base"], clean_env=True).run([env], timeout=60)
    keys = {line.split("=", 1)[0] for line in r.stdout.decode().splitlines()}
    assert "PATH" in keys and keys <= set(MINIMAL_ENV), keys


def _check_notif_policy(ctx):
    with pytest.raises(PolicyError, match="notif_policy"):
        Sandbox(notif_policy={"rules": []})


def _check_time_start(ctx):
    # an ISO string and a date before 1970, to the sub-second
    r = Sandbox(fs_readable=ctx["base"], time_start="1969-07-20T20:17:40.5Z").run(
        [sys.executable, "-c", "import time; print(time.time())"])
    assert -14182940.5 <= float(r.stdout) < -14182940.5 + 30, r


def _check_random_seed(ctx):
    # /dev/urandom is a character device, seeded
    code = "import os, stat; f = open('/dev/urandom', 'rb'); print(stat.S_ISCHR(os.fstat(f.fileno()).st_mode), f.read(8).hex())"
    runs = [Sandbox(fs_readable=ctx["base"], random_seed=1).run([sys.executable, "-c", code]).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and runs[0].startswith(b"True "), runs


def _check_deterministic_dirs(ctx):
    # names are bytes, in byte order
    for name in (b"\xff", b"b", b"a"):
        open(os.path.join(os.fsencode(ctx["dir"]), name), "wb").close()
    r = Sandbox(fs_readable=[*ctx["base"], ctx["dir"]], deterministic_dirs=True).run(
        [sys.executable, "-c", f"import os; print(os.listdir({os.fsencode(ctx['dir'])!r}))"])
    assert r.stdout.strip() == repr([b"a", b"b", b"\xff"]).encode(), r


def _check_create(ctx):
    sb = Sandbox(fs_readable=ctx["base"])
    sb.create(["true"])
    assert sb.pid is None
    sb.start()
    assert sb.wait().success


def _check_kill(ctx):
    sb = Sandbox()
    sb.kill()
    with pytest.raises(SandboxError):
        sb.pause()
    with pytest.raises(SandboxError):
        sb.resume()


def _check_pause(ctx):
    sb = Sandbox(fs_readable=ctx["base"])
    p = sb.popen([SLEEP, "60"])
    try:
        sb.pause()
        sb.resume()
    finally:
        sb.kill()
    assert p.wait(timeout=30).reason == ExitReason.KILLED


def _check_popen(ctx):
    r, w = os.pipe()
    try:
        p = Sandbox(fs_readable=ctx["base"]).popen(["echo", "via fd"], stdout=w)
        assert p.stdout is None and p.wait(timeout=60).success
        os.close(w)
        w = -1
        assert os.read(r, 100) == b"via fd\n"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def _check_run_with_handlers(ctx):
    seen: list[int] = []

    def handler(c):
        seen.append(c.syscall_nr)
        return NotifAction.continue_()

    r = Sandbox(fs_readable=ctx["base"]).run_with_handlers(
        [sys.executable, "-I", "-S", "-c", GETCWD], [("getcwd", handler)], timeout=60)
    assert r.stdout == b"ok\n" and seen == []  # the handler ran, in the supervisor's process


def _check_exit_code(ctx):
    sb = Sandbox(fs_readable=ctx["base"])
    r = sb.run(["sh", "-c", "kill -TERM $$"], timeout=60)
    assert (r.exit_code, r.signal, r.reason) == (-signal.SIGTERM, signal.SIGTERM, ExitReason.SIGNALED)
    assert sb.run_interactive(["sh", "-c", "kill -TERM $$"]) == 128 + signal.SIGTERM


def _check_error(ctx):
    r = Sandbox(fs_readable=ctx["base"]).run(["/no/such/program"], timeout=60)
    assert r.exit_code == 127 and r.stderr == b"" and "/no/such/program" in r.error


def _check_pipeline(ctx):
    sb = Sandbox(fs_readable=ctx["base"])
    pipe = sb.cmd(["sh", "-c", "echo first >&2"]) | sb.cmd(["sh", "-c", "cat; echo last >&2"])
    r = pipe.run(timeout=60)
    assert r.stderr == b"last\n" and pipe.results[0].stderr == b"first\n"


def _check_stage_run(ctx):
    assert Sandbox(fs_readable=ctx["base"]).cmd([SLEEP, "60"]).run(timeout=0.3).reason == ExitReason.TIMEOUT


def _check_parse_ports(ctx):
    for bad in ("80", ["*"]):
        with pytest.raises(PolicyError):
            sandlock.parse_ports(bad)


def _check_continue(ctx):
    class Broken(Handler):
        on_exception = ExceptionPolicy.CONTINUE

        def handle(self, c):
            raise RuntimeError("boom")

    r = Sandbox(fs_readable=ctx["base"]).run_with_handlers(
        [sys.executable, "-I", "-S", "-c", GETCWD], [("getcwd", Broken())], timeout=60)
    assert r.stdout == b"%d\n" % errno.EPERM


def _check_on_exception(ctx):
    assert Handler.on_exception == ExceptionPolicy.DENY_EPERM


def _check_async(ctx):
    order = os.path.join(ctx["dir"], "order")

    class Slow(Handler):
        async def handle(self, c):
            import asyncio
            await asyncio.sleep(0.05)
            with open(order, "a") as f:
                f.write("h")
            return NotifAction.continue_()

    code = "import os\nos.getcwd()\nprint('after')"
    r = Sandbox(fs_readable=ctx["base"]).run_with_handlers(
        [sys.executable, "-I", "-S", "-c", code], [("getcwd", Slow())], timeout=60)
    assert r.stdout == b"after\n"
    with open(order) as f:
        assert f.read() == "h"  # completed before the syscall was answered


def _check_hold(ctx):
    r = Sandbox(fs_readable=ctx["base"]).run_with_handlers(
        [sys.executable, "-I", "-S", "-c", GETCWD], [("getcwd", lambda c: NotifAction.hold())], timeout=60)
    assert r.stdout == b"%d\n" % errno.EPERM


def _check_kill_action(ctx):
    script = f"{sys.executable} -I -S -c 'import os; os.getcwd()'; echo survived $?"
    r = Sandbox(fs_readable=ctx["base"]).run_with_handlers(
        ["sh", "-c", script], [("getcwd", lambda c: NotifAction.kill(signal.SIGKILL, pgid=0))], timeout=60)
    assert r.stdout == b"survived 137\n", (r.stdout, r.stderr)


def _check_checkpoint(ctx):
    sb = Sandbox(fs_readable=ctx["base"])
    p = sb.popen([SLEEP, "60"])
    try:
        cp = sb.checkpoint()   # popen is accepted
    finally:
        p.kill()
        p.wait()
    assert cp.command == [SLEEP, "60"] and any("memory" in w for w in cp.not_captured)


def _check_restore(ctx):
    out = os.path.join(ctx["dir"], "restarted")
    sb = Sandbox(fs_readable=ctx["base"], fs_writable=[ctx["dir"]])
    sb.spawn(["sh", "-c", f'[ -n "$SANDLOCK_APP_STATE_FD" ] && echo again > {out}; exec {SLEEP} 60'])
    try:
        cp = sb.checkpoint(save_fn=lambda: b"s")
    finally:
        sb.kill()
        sb.wait()
    again = Sandbox(fs_readable=ctx["base"], fs_writable=[ctx["dir"]])
    assert again.restore_interactive(cp) is None
    try:  # the command ran again from its start
        assert _wait_until(lambda: os.path.exists(out))
    finally:
        again.kill()
        again.wait()


def _check_cli(ctx):
    p = subprocess.run([sys.executable, "-m", "sandlock", "run", "--", sys.executable, "-c", "print(1)"],
                       capture_output=True, timeout=60, stdin=subprocess.DEVNULL, cwd="/tmp")
    assert (p.returncode, p.stdout) == (0, b"1\n"), p.stderr


def _check_policy_fn(ctx):
    def fn(event, _ctx):
        if event.syscall == "execve" and event.argv[-1] == "denied":
            raise RuntimeError("a bug in the callback")
        return None
    r = Sandbox(fs_readable=ctx["base"], policy_fn=fn).run(
        ["/bin/sh", "-c", "/bin/echo ok; /bin/echo denied; echo rc=$?"])
    assert r.stdout == b"ok\nrc=126\n", r
    assert "a bug in the callback" in r.policy_errors[0]


def _check_pull_image(ctx):
    from sandlock.image import ImageError
    with pytest.raises(ImageError, match="remote registries are not supported") as info:
        sandlock.pull_image("alpine:3")
    assert isinstance(info.value, PolicyError)


def _check_image_branch(ctx):
    import tempfile

    from sandlock.policy.model import BranchAction, normalize
    rootfs = tempfile.mkdtemp(prefix="sl-compat-image-")
    try:
        policy = normalize(Sandbox(image=sandlock.Image(rootfs=rootfs)))
        assert policy.workdir == os.path.realpath(rootfs)
        assert policy.on_exit is BranchAction.ABORT and policy.on_error is BranchAction.ABORT
        for kw in ({"on_exit": "keep"}, {"workdir": rootfs}):
            with pytest.raises(PolicyError, match="only 'abort'"):
                Sandbox(image=sandlock.Image(rootfs=rootfs), **kw)
    finally:
        os.rmdir(rootfs)


DIFFERENCES = {
    "pull_image": _check_pull_image,
    "Sandbox.image": _check_image_branch,
    "Sandbox.policy_fn": _check_policy_fn,
    "Sandbox": _check_construction,
    "Sandbox.max_processes": _check_max_processes,
    "Sandbox.clean_env": _check_clean_env,
    "Sandbox.notif_policy": _check_notif_policy,
    "Sandbox.time_start": _check_time_start,
    "Sandbox.random_seed": _check_random_seed,
    "Sandbox.deterministic_dirs": _check_deterministic_dirs,
    "Sandbox.create": _check_create,
    "Sandbox.kill": _check_kill,
    "Sandbox.pause": _check_pause,
    "Sandbox.popen": _check_popen,
    "Sandbox.run_with_handlers": _check_run_with_handlers,
    "Result.exit_code": _check_exit_code,
    "Result.error": _check_error,
    "Pipeline.run": _check_pipeline,
    "Stage.run": _check_stage_run,
    "parse_ports": _check_parse_ports,
    "ExceptionPolicy.CONTINUE": _check_continue,
    "Handler.on_exception": _check_on_exception,
    "Handler.handle": _check_async,
    "NotifAction.hold": _check_hold,
    "NotifAction.kill": _check_kill_action,
    "Sandbox.checkpoint": _check_checkpoint,
    "Sandbox.restore_interactive": _check_restore,
    "sandlock run": _check_cli,
}

NOT_YET: dict = {}


def test_compat_table_lists_exactly_the_checked_differences():
    names = _table("## Deliberate differences")
    assert len(names) == len(set(names)), names
    assert set(names) == set(DIFFERENCES), set(names) ^ set(DIFFERENCES)
    for name in names:
        if name != "sandlock run":
            _resolve(name)  # the name still exists
    assert set(_table("## Names that import but are not implemented yet", True)) == set(NOT_YET)


@pytest.mark.parametrize("name", sorted(DIFFERENCES))
def test_compat_difference_holds(name, base_readable, world_dir):
    DIFFERENCES[name]({"base": base_readable, "dir": world_dir})


@pytest.mark.parametrize("name", sorted(NOT_YET))
def test_not_implemented_yet(name):
    _resolve(name)
    if NOT_YET[name] is not None:
        with pytest.raises(NotImplementedError):
            NOT_YET[name]()
