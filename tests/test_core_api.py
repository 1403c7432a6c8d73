"""The Sandbox API with real sandboxed processes: results, limits, process
attributes, syscall and network defaults, control, and validation."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import sandlock
from sandlock import ExitReason, PolicyError, Sandbox, SandboxError
from sandlock.policy import model

IS_ROOT = os.geteuid() == 0
SLEEP = shutil.which("sleep")
ENV = shutil.which("env")


def _status_field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} not in /proc status")


def _own_status(name: str) -> str:
    with open("/proc/self/status") as f:
        return _status_field(f.read(), name)


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:][:1].decode()


def _wait_until(pred, timeout: float = 10.0) -> bool:
    """Poll `pred` until it holds (a wait, never a speed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _gone(pid: int) -> bool:
    return _state(pid) in (None, "Z", "X")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sb_base(base_readable):
    return lambda **kw: Sandbox(fs_readable=base_readable + kw.pop("extra_readable", []), **kw)


# -- Result -----------------------------------------------------------------------

def test_result_exit_zero(sb_base):
    r = sb_base().run(["sh", "-c", "echo out; echo err >&2"])
    assert (r.success, r.exit_code, r.reason, r.signal, r.error) == (True, 0, ExitReason.EXITED, -1, None)
    assert (r.stdout, r.stderr) == (b"out\n", b"err\n")


def test_result_exit_three(sb_base):
    r = sb_base().run(["sh", "-c", "echo partial; exit 3"])
    assert (r.success, r.exit_code, r.reason, r.signal, r.error) == (False, 3, ExitReason.EXITED, -1, None)
    assert r.stdout == b"partial\n"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_result_killed_by_signal(sb_base, sig):
    r = sb_base().run(["sh", "-c", f"kill -{int(sig)} $$"])
    assert (r.success, r.exit_code, r.reason, r.signal) == (False, -int(sig), ExitReason.SIGNALED, int(sig))


def test_exec_failure_missing_program(sb_base):
    r = sb_base().run(["/nonexistent/sl-prog"])
    assert (r.exit_code, r.reason) == (127, ExitReason.EXITED)
    # The failure is reported in Result.error (step and program), never
    # written into the command's own stderr.
    assert r.error == "cannot execute '/nonexistent/sl-prog': No such file or directory"
    assert r.stderr == b""


def test_exec_failure_unreadable_program(base_readable):
    """A program outside fs_readable cannot be executed (and is reported);
    with it listed, it runs."""
    true = os.path.realpath(shutil.which("true"))
    ok = Sandbox(fs_readable=base_readable).run([true])
    assert (ok.exit_code, ok.reason) == (0, ExitReason.EXITED)
    denied = Sandbox(fs_readable=[]).run([true])
    assert denied.exit_code == 127
    assert denied.error == f"cannot execute {true!r}: Permission denied"
    assert denied.stderr == b""


TIMEOUT_CODE = """
import time
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.setsid()
    gc = os.fork()
    if gc == 0:
        os.close(1); os.close(2)
        os.execv(ARGS["sleep"], ["sleep", "3011"])
    os.write(w, str(gc).encode())
    os._exit(0)
os.waitpid(child, 0)
OUT["grandchild"] = int(os.read(r, 32))
print("RESULT " + json.dumps(OUT), flush=True)
time.sleep(300)
"""


def test_timeout_kills_setsid_grandchild(py, sb_base):
    r = sb_base().run(py.argv(TIMEOUT_CODE, {"sleep": SLEEP}), timeout=1)
    assert r.reason == ExitReason.TIMEOUT and not r.success
    out = py.parse(r.stdout)
    assert out is not None, r.stderr
    gc = out["grandchild"]
    try:
        assert _wait_until(lambda: _gone(gc)), f"setsid grandchild {gc} outlived the sandbox"
    finally:
        if not _gone(gc):
            try:
                with open(f"/proc/{gc}/cmdline", "rb") as f:
                    if b"3011" in f.read():
                        os.kill(gc, signal.SIGKILL)
            except OSError:
                pass


def test_timeout_not_reached(sb_base):
    r = sb_base().run(["true"], timeout=60)
    assert r.reason == ExitReason.EXITED and r.success


# -- environment ---------------------------------------------------------------------

def _env_of(result) -> dict[str, str]:
    assert result.success, result.stderr
    out = {}
    for item in result.stdout.split(b"\0"):
        if item:
            k, _, v = item.decode().partition("=")
            out[k] = v
    return out


def test_env_adds_to_inherited(sb_base, monkeypatch):
    monkeypatch.setenv("SL_CALLER_VAR", "from-caller")
    env = _env_of(sb_base(env={"SL_EXTRA": "x y=z"}).run([ENV, "-0"]))
    assert env["SL_CALLER_VAR"] == "from-caller"
    assert env["SL_EXTRA"] == "x y=z"


def test_clean_env(sb_base, monkeypatch):
    monkeypatch.setenv("SL_CALLER_VAR", "from-caller")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = _env_of(sb_base(clean_env=True, env={"SL_EXTRA": "1"}).run([ENV, "-0"]))
    assert "SL_CALLER_VAR" not in env
    assert set(env) <= {"PATH", "HOME", "USER", "TERM", "LANG", "SL_EXTRA"}, env
    assert env["SL_EXTRA"] == "1" and env["LANG"] == "C.UTF-8"
    assert env["PATH"] == os.environ["PATH"]


# -- limits and process attributes -------------------------------------------------------

OPEN_MANY = """
import resource
OUT["limit"] = list(resource.getrlimit(resource.RLIMIT_NOFILE))
fds, OUT["err"] = [], None
try:
    for _ in range(ARGS["n"]):
        fds.append(os.open(ARGS["path"], os.O_RDONLY))
except OSError as e:
    OUT["err"] = ename(e.errno)
OUT["opened"] = len(fds)
"""


def test_max_open_files(py, sb_base, world_dir):
    path = os.path.join(world_dir, "f")
    open(path, "w").close()
    os.chmod(path, 0o644)
    sb = sb_base(extra_readable=[world_dir], max_open_files=40)
    many = py.sandboxed(sb, OPEN_MANY, {"path": path, "n": 64})
    assert many["limit"] == [40, 40]
    assert many["err"] == "EMFILE" and 30 < many["opened"] < 40
    few = py.sandboxed(sb_base(extra_readable=[world_dir], max_open_files=40), OPEN_MANY,
                       {"path": path, "n": 20})
    assert few["err"] is None and few["opened"] == 20
    unlimited = py.sandboxed(sb_base(extra_readable=[world_dir]), OPEN_MANY, {"path": path, "n": 64})
    assert unlimited["err"] is None and unlimited["opened"] == 64


@pytest.mark.parametrize("limit", [4, 8])
def test_small_max_open_files_still_starts(sb_base, limit):
    r = sb_base(max_open_files=limit).run(["sh", "-c", "echo ok"])
    assert (r.error, r.exit_code, r.stdout) == (None, 0, b"ok\n")


PROC_SELF = """
with open("/proc/self/status") as f:
    OUT["status"] = f.read()
with open("/proc/self/limits") as f:
    OUT["core"] = [l for l in f if l.startswith("Max core file size")][0].split()[4:6]
with open("/proc/self/personality") as f:
    OUT["personality"] = f.read().strip()
import ctypes
OUT["dumpable"] = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)
OUT["pgrp"], OUT["pid"], OUT["sid"] = os.getpgrp(), os.getpid(), os.getsid(0)
OUT["affinity"] = sorted(os.sched_getaffinity(0))
"""


@pytest.fixture
def proc_probe(py, sb_base):
    return lambda **kw: py.sandboxed(sb_base(extra_readable=["/proc"], **kw), PROC_SELF)


def test_no_coredump(proc_probe):
    assert proc_probe(no_coredump=True)["core"] == ["0", "0"]
    if resource.getrlimit(resource.RLIMIT_CORE)[1] != 0:
        assert proc_probe()["core"][1] != "0"


def test_no_coredump_leaves_dumpable_to_the_program(proc_probe):
    # no_coredump is RLIMIT_CORE 0 (hard). execve resets PR_SET_DUMPABLE, so
    # sandlock does not set it, and does not stop the program setting it.
    assert proc_probe()["dumpable"] == 1
    assert proc_probe(no_coredump=True)["dumpable"] == 1


def test_no_huge_pages(proc_probe):
    assert _status_field(proc_probe(no_huge_pages=True)["status"], "THP_enabled") == "0"
    if _own_status("THP_enabled") == "1":
        assert _status_field(proc_probe()["status"], "THP_enabled") == "1"


def test_no_randomize_memory(proc_probe):
    assert int(proc_probe(no_randomize_memory=True)["personality"], 16) & 0x0040000
    assert not int(proc_probe()["personality"], 16) & 0x0040000


def test_cpu_cores(proc_probe):
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        pytest.skip("needs at least 2 usable CPUs")
    assert proc_probe(cpu_cores=[mine[-1]])["affinity"] == [mine[-1]]
    assert proc_probe(cpu_cores=mine[:2])["affinity"] == mine[:2]
    assert proc_probe()["affinity"] == mine


def test_protections_in_proc_status(proc_probe):
    st = proc_probe()["status"]
    assert _status_field(st, "NoNewPrivs") == "1"
    assert _status_field(st, "Seccomp") == "2"


@pytest.mark.skipif(not IS_ROOT, reason="capabilities are only held when run as root")
def test_root_capabilities_dropped(py, sb_base, world_dir):
    assert int(_own_status("CapEff"), 16) != 0
    st = py.sandboxed(sb_base(extra_readable=["/proc"]), 'OUT["s"] = open("/proc/self/status").read()')["s"]
    for name in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(_status_field(st, name), 16) == 0, name
    # Behaviour: chown to another user needs CAP_CHOWN (Landlock does not gate it).
    path = os.path.join(world_dir, "owned")
    open(path, "w").close()
    code = 'OUT["chown"] = attempt(os.chown, ARGS["p"], 12345, 12345)'
    assert py.unconfined(code, {"p": path}) == {"chown": "OK"}
    os.chown(path, 0, 0)
    sb = Sandbox(fs_readable=sb_base().fs_readable, fs_writable=[world_dir])
    assert py.sandboxed(sb, code, {"p": path}) == {"chown": "EPERM"}
    assert os.stat(path).st_uid == 0


def test_own_process_group(proc_probe):
    out = proc_probe()
    assert out["pgrp"] == out["pid"]
    assert out["pgrp"] != os.getpgrp()


def test_no_inherited_fds_and_clean_signal_state(sb_base):
    """Only stdio reaches the program; ignored signals and the signal mask
    are reset (Python itself ignores SIGPIPE, the caller's state must not leak)."""
    import fcntl
    fd = os.open("/dev/null", os.O_RDONLY)
    # The lowest free fd from 57 up: dup2 onto 57 replaced whatever this
    # process had there (once, sandlock's own launch connection: CI saw
    # EBADF when the test then closed it).
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 57)
    os.set_inheritable(high, True)
    os.close(fd)
    try:
        r = sb_base(extra_readable=["/proc"]).run(
            ["sh", "-c", "ls /proc/self/fd; grep -E '^Sig(Ign|Blk)' /proc/self/status"])
    finally:
        os.close(high)
    assert r.success, r.stderr
    lines = r.stdout.decode().split()
    fds = {int(x) for x in lines if x.isdigit()}
    assert high not in fds and {0, 1, 2} <= fds and len(fds) <= 4  # + ls's own directory fd
    status = r.stdout.decode()
    assert int(_status_field(status, "SigIgn"), 16) == 0
    assert int(_status_field(status, "SigBlk"), 16) == 0
    assert int(_own_status("SigIgn"), 16) & (1 << (signal.SIGPIPE - 1))  # the control differs


# -- syscalls -------------------------------------------------------------------------------

def test_extra_deny_syscalls(py, sb_base):
    code = 'OUT["cwd"] = attempt(os.getcwd)'
    assert py.sandboxed(sb_base(), code) == {"cwd": os.getcwd()}
    assert py.sandboxed(sb_base(extra_deny_syscalls=["getcwd"]), code) == {"cwd": "EPERM"}


SHMGET = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
shm = libc.shmget(0, 4096, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
if shm == -1:
    OUT["shmget"] = ename(ctypes.get_errno())
else:
    OUT["shmget"] = "OK"
    libc.shmctl(shm, 0, None)  # IPC_RMID
"""


def test_sysv_ipc_group(py, sb_base):
    assert py.sandboxed(sb_base(), SHMGET) == {"shmget": "EPERM"}
    assert py.sandboxed(sb_base(extra_allow_syscalls=["sysv_ipc"]), SHMGET) == {"shmget": "OK"}


# -- network ---------------------------------------------------------------------------------

BIND = """
import socket
for name, port in ARGS["ports"].items():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    OUT[name] = attempt(s.bind, ("127.0.0.1", port))
    s.close()
"""


def test_net_allow_bind(py, sb_base):
    allowed, other = _free_port(), _free_port()
    while other == allowed:
        other = _free_port()
    args = {"ports": {"allowed": allowed, "other": other}}
    assert py.unconfined(BIND, args) == {"allowed": "OK", "other": "OK"}
    assert py.sandboxed(sb_base(net_allow_bind=[allowed]), BIND, args) == {"allowed": "OK", "other": "EACCES"}
    assert py.sandboxed(sb_base(), BIND, args) == {"allowed": "EACCES", "other": "EACCES"}


CONNECT = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
OUT["connect"] = attempt(s.connect, ("127.0.0.1", ARGS["port"]))
"""


def test_tcp_connect_denied_by_default(py, sb_base):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        args = {"port": listener.getsockname()[1]}
        assert py.unconfined(CONNECT, args) == {"connect": "OK"}
        assert py.sandboxed(sb_base(), CONNECT, args) == {"connect": "EACCES"}


# -- popen and control ------------------------------------------------------------------------

def test_popen_pid_wait_kill(sb_base):
    sb = sb_base()
    p = sb.popen([SLEEP, "3012"], stdout=subprocess.DEVNULL)
    pid = p.pid
    try:
        assert pid > 0 and sb.pid == pid and sb.is_running
        assert _wait_until(lambda: _cmdline(pid) == b"%s\x003012\x00" % SLEEP.encode()), \
            _cmdline(pid)  # pid is known before exec, like subprocess
        assert p.poll() is None
        with pytest.raises(SandboxError):
            sb.run(["true"])  # one command at a time per Sandbox
    finally:
        p.kill()
    r = p.wait(timeout=30)
    assert r is p.result and r.reason == ExitReason.KILLED and not r.success
    assert p.returncode == 128 + 9
    assert p.pid is None  # reaped: no stale pid to signal
    assert not sb.is_running and sb.pid is None
    assert _wait_until(lambda: _gone(pid))
    assert sb.run(["true"]).success  # usable again


def test_popen_wait_timeout_kills(sb_base):
    sb = sb_base()
    p = sb.popen([SLEEP, "3015"], stdout=subprocess.DEVNULL)
    pid = p.pid
    r = p.wait(timeout=0.2)
    assert r.reason == ExitReason.TIMEOUT and not r.success and r.exit_code == -1
    assert p.wait() is r  # the same Result again
    assert _wait_until(lambda: _gone(pid))
    assert not sb.is_running


def test_popen_pipes(sb_base):
    sb = sb_base()
    p = sb.popen(["sh", "-c", "cat; echo done >&2; exit 5"],
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with p:
        p.stdin.write(b"hello through the sandbox")
        p.stdin.close()
        assert p.stdout.read() == b"hello through the sandbox"
        assert p.stderr.read() == b"done\n"
        r = p.wait(timeout=30)
        assert r.exit_code == 5 and r.reason == ExitReason.EXITED and p.returncode == 5
    assert p.result.exit_code == 5 and p.result.reason == ExitReason.EXITED


def test_pause_resume(sb_base):
    sb = sb_base()
    p = sb.popen([SLEEP, "3013"], stdout=subprocess.DEVNULL)
    try:
        assert _wait_until(lambda: _state(p.pid) == "S")
        sb.pause()
        assert _wait_until(lambda: _state(p.pid) == "T"), _state(p.pid)
        sb.resume()
        assert _wait_until(lambda: _state(p.pid) in ("S", "R")), _state(p.pid)
    finally:
        sb.kill()
        p.wait(timeout=30)
    assert p.result.reason == ExitReason.KILLED


def test_kill_from_another_thread_during_run(sb_base):
    sb = sb_base()
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", sb.run([SLEEP, "3014"])))
    t.start()
    try:
        assert _wait_until(lambda: sb.pid is not None and _cmdline(sb.pid).endswith(b"3014\x00"))
        pid = sb.pid
        sb.kill()
    finally:
        t.join(60)
    r = box["r"]
    assert r.reason == ExitReason.KILLED and not r.success
    assert _wait_until(lambda: _gone(pid))


def test_run_interactive_returns_status(sb_base):
    assert sb_base().run_interactive(["sh", "-c", "exit 4"]) == 4
    assert sb_base().run_interactive(["sh", "-c", "kill -TERM $$"]) == 128 + 15


def test_fifty_sandboxes_at_once(base_readable):
    n = 50
    barrier = threading.Barrier(n)

    def one(i: int):
        sb = Sandbox(fs_readable=base_readable)
        barrier.wait(timeout=60)
        if i % 2:
            return i, sb.run(["true"], timeout=120)
        return i, sb.run([sys.executable, "-I", "-S", "-c", f"print({i} * 3)"], timeout=120)

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, range(n)))
    for i, r in results:
        assert r.success and r.reason == ExitReason.EXITED, (i, r, r.stderr)
        if not i % 2:
            assert r.stdout == f"{i * 3}\n".encode()


# -- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("max_memory", "abc"), ("max_processes", 0), ("cpu_cores", []), ("name", "x" * 65),
    ("fs_readable", "/usr"), ("env", {"A=B": "1"}), ("max_open_files", 0),
    ("extra_deny_syscalls", ["no_such_syscall"]), ("extra_allow_syscalls", ["nope"]),
    ("net_allow_bind", [70000]), ("clean_env", 1),
])
def test_policy_error_names_the_field(field, value):
    with pytest.raises(PolicyError) as info:
        Sandbox(**{field: value})
    assert isinstance(info.value, ValueError)
    assert field in str(info.value)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), "1"])
def test_bad_timeout(sb_base, timeout):
    with pytest.raises(PolicyError, match="timeout"):
        sb_base().run(["true"], timeout=timeout)


def test_field_changed_after_construction_is_revalidated(sb_base):
    sb = sb_base()
    sb.max_open_files = -5
    with pytest.raises(PolicyError, match="max_open_files"):
        sb.run(["true"])


PENDING_CANDIDATES = {"workdir": "/tmp", "http_allow": ["example.com"], "chroot": "/",
                      "net_allow": ["example.com:443"], "random_seed": 1}
PENDING_NOW = sorted(f for f in PENDING_CANDIDATES if f in model._PENDING) or ["<none>"]


@pytest.mark.parametrize("field", PENDING_NOW)
def test_pending_feature_not_implemented(field, sb_base):
    if field == "<none>":
        pytest.skip("every candidate field has been implemented")
    sb = sb_base(**{field: PENDING_CANDIDATES[field]})
    with pytest.raises(NotImplementedError, match=field):
        sb.run(["true"])
    with pytest.raises(NotImplementedError):
        sb.popen(["true"])
    assert not sb.is_running


# -- module functions -------------------------------------------------------------------------

CONFINE = r"""
import json, os, sys
import sandlock
args = json.loads(sys.argv[1])
def rd(p):
    try:
        with open(p) as f:
            return "OK:" + f.read()
    except OSError as e:
        return "E%d" % e.errno
out = {"before": [rd(args["a"]), rd(args["b"])]}
sandlock.confine(sandlock.Sandbox(fs_readable=args["readable"]))
out["after"] = [rd(args["a"]), rd(args["b"])]
print(json.dumps(out))
"""


def test_confine_in_subprocess(world_dir, base_readable):
    import json
    a, b = os.path.join(world_dir, "a"), os.path.join(world_dir, "b")
    for d, text in ((a, "A"), (b, "B")):
        os.mkdir(d)
        os.chmod(d, 0o755)
        with open(os.path.join(d, "f"), "w") as f:
            f.write(text)
    args = {"a": os.path.join(a, "f"), "b": os.path.join(b, "f"), "readable": base_readable + [a]}
    p = subprocess.run([sys.executable, "-c", CONFINE, json.dumps(args)], capture_output=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out == {"before": ["OK:A", "OK:B"], "after": ["OK:A", f"E{13}"]}


def test_landlock_abi_version():
    assert sandlock.landlock_abi_version() >= 6
