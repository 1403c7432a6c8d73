"""ps / inspect / kill: running sandboxes seen and stopped from outside,
through their supervisors' control sockets (sandlock.control), with the
Python API and the installed command."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time

import pytest
from _shared import rmtree

import sandlock
from sandlock import ExitReason, PolicyError, Sandbox, SandboxError, control, protocol
from sandlock.launch import launch_message
from sandlock.plan import compile_plan
from sandlock.policy.model import Policy

SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")


@pytest.fixture
def xdg(monkeypatch):
    """A private XDG_RUNTIME_DIR for the test (this process and the
    commands it starts)."""
    d = tempfile.mkdtemp(prefix="sl-xdg-")
    monkeypatch.setenv("XDG_RUNTIME_DIR", d)
    yield d
    rmtree(d)


@pytest.fixture
def running(base_readable):
    """start(name, cmd=None, **fields) -> Process; every one is killed at the end."""
    procs = []

    def start(name, cmd=None, **kw):
        kw.setdefault("fs_readable", base_readable)
        stdout = kw.pop("stdout", subprocess.DEVNULL)
        p = Sandbox(name=name, **kw).popen(cmd or [SLEEP, "300"], stdin=subprocess.DEVNULL,
                                           stdout=stdout)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.result is None:
            p.kill()
            p.wait()


def _cli(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "sandlock", *args], capture_output=True, text=True,
                       timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True


def _wait_until(cond, seconds=10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


# -- the runtime directory ---------------------------------------------------------------

def test_runtime_dir_is_private_and_the_socket_0600(xdg, running):
    p = running("web")
    d = os.path.join(xdg, "sandlock")
    st = os.lstat(d)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == os.geteuid()
    (entry,) = os.listdir(d)
    assert entry.startswith("web.") and entry.endswith(".sock")
    est = os.lstat(os.path.join(d, entry))
    assert stat.S_ISSOCK(est.st_mode) and stat.S_IMODE(est.st_mode) == 0o600
    p.kill()
    p.wait()
    assert os.listdir(d) == []  # removed when the run ends


def test_runtime_dir_falls_back_when_xdg_is_not_private(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/tmp")  # world-writable: not used
    assert control.runtime_dir() == f"/tmp/sandlock-{os.geteuid()}"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/dir")
    assert control.runtime_dir() == f"/tmp/sandlock-{os.geteuid()}"
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(link))  # a symlink: not used
    assert control.runtime_dir() == f"/tmp/sandlock-{os.geteuid()}"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert control.runtime_dir() == f"/tmp/sandlock-{os.geteuid()}"


@pytest.mark.parametrize("plant", ["world_writable", "group_readable", "symlink", "file"])
def test_untrusted_runtime_dir_is_refused(xdg, base_readable, plant):
    d = os.path.join(xdg, "sandlock")
    if plant == "symlink":
        other = tempfile.mkdtemp(dir=xdg)
        os.symlink(other, d)
    elif plant == "file":
        open(d, "w").close()
    else:
        os.mkdir(d)
        os.chmod(d, 0o777 if plant == "world_writable" else 0o750)
    with pytest.raises(control.ControlError, match="refusing it"):
        Sandbox(fs_readable=base_readable).run(["true"])
    with pytest.raises(control.ControlError, match="refusing it"):
        sandlock.ps()
    r = _cli("ps", check=False)
    assert r.returncode == 125 and r.stderr.count("\n") == 1 and "refusing it" in r.stderr
    assert os.path.islink(d) or os.path.isfile(d) or \
        stat.S_IMODE(os.lstat(d).st_mode) in (0o777, 0o750)  # never "repaired"


def test_foreign_owned_runtime_dir_is_refused(xdg, monkeypatch, base_readable):
    if os.geteuid() == 0:
        d = os.path.join(xdg, "sandlock")
        os.mkdir(d, 0o700)
        os.chown(d, 65534, 65534)
        with pytest.raises(control.ControlError, match="owned by uid 65534"):
            Sandbox(fs_readable=base_readable).run(["true"])
    else:
        # A directory of root's stands for one another user planted.
        with pytest.raises(control.ControlError, match="owned by uid 0"):
            control.open_dir("/", create=False)


def test_planted_fallback_dir_is_refused(monkeypatch, base_readable):
    planted = tempfile.mkdtemp(prefix="sl-planted-")
    try:
        os.chmod(planted, 0o777)
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        monkeypatch.setattr(control, "fallback_dir", lambda: planted)
        with pytest.raises(control.ControlError, match="0777"):
            Sandbox(fs_readable=base_readable).run(["true"])
        assert os.listdir(planted) == []
    finally:
        rmtree(planted)


# -- the Python API -----------------------------------------------------------------------

def test_ps_inspect_kill(xdg, running, base_readable):
    assert sandlock.ps() == []
    a = running("alpha", max_processes=10)
    b = running("beta")
    rows = sandlock.ps()
    assert [r["name"] for r in rows] == ["alpha", "beta"]
    assert [r["pid"] for r in rows] == [a.pid, b.pid]
    assert rows[0]["command"] == [SLEEP, "300"] and rows[0]["processes"] == 1
    assert rows[0]["limits"] == {"processes": 10} and rows[0]["uptime"] >= 0

    info = sandlock.inspect("alpha")
    assert info["policy"]["filesystem"]["read"] == base_readable
    assert info["policy"]["limits"] == {"processes": 10}
    assert [p["pid"] for p in info["processes"]] == [a.pid]
    assert info["processes"][0]["command"] == [SLEEP, "300"]
    assert info["memory"]["rss"] > 0 and info["cpu_seconds"] >= 0
    assert os.path.realpath("/usr") in info["resolved"]["read"]
    assert os.path.join(xdg, "sandlock") in info["resolved"]["deny"]
    json.dumps(info)  # plain JSON values

    assert sandlock.kill("alpha") == 1
    assert a.wait(10).reason == ExitReason.KILLED
    assert [r["name"] for r in sandlock.ps()] == ["beta"]
    with pytest.raises(SandboxError, match="no running sandbox named 'alpha'"):
        sandlock.inspect("alpha")

    assert sandlock.kill("beta", signal.SIGTERM) == 1
    res = b.wait(10)
    assert (res.reason, res.signal) == (ExitReason.SIGNALED, signal.SIGTERM)
    assert sandlock.ps() == []


def test_default_name(xdg, running):
    p = running(None)
    (row,) = sandlock.ps()
    assert row["name"].startswith(f"sandbox-{os.getpid()}-") and row["pid"] == p.pid


def test_port_remap_shows_ports(xdg, running, base_readable):
    code = ("import socket, sys, time\n"
            "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
            "print('up', flush=True); time.sleep(300)\n")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        p = running("ported", [sys.executable, "-I", "-S", "-c", code, str(port)],
                    net_allow_bind=[port], port_remap=True, stdout=subprocess.PIPE)
        assert p.stdout.readline() == b"up\n"
        (row,) = sandlock.ps()
        (virtual, real), = row["ports"].items()
        assert int(virtual) == port and real != port
        assert sandlock.inspect("ported")["ports"] == row["ports"]
    finally:
        taken.close()


GRANDCHILD = """
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.argv[1], ["sleep", "3013"])
    os._exit(0)
os.wait()
"""


def test_kill_ends_the_whole_tree(xdg, running):
    code = GRANDCHILD + "print('ready', flush=True)\ntime.sleep(300)\n"
    p = running("tree", [sys.executable, "-I", "-S", "-c", code, SLEEP], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    pids = [q["pid"] for q in sandlock.inspect("tree")["processes"]]
    assert len(pids) == 2 and p.pid in pids  # the grandchild was re-parented to the supervisor
    try:
        assert sandlock.kill("tree") == 2
        assert all(_gone(pid) for pid in pids)  # kill() returns once the tree is gone
        assert p.wait(10).reason == ExitReason.KILLED
    finally:
        for pid in pids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_name_in_use_is_refused(xdg, running, base_readable):
    running("dup")
    with pytest.raises(SandboxError, match="already running"):
        Sandbox(fs_readable=base_readable, name="dup").run(["true"])
    # A name is free again as soon as its run has ended.
    for _ in range(3):
        assert Sandbox(fs_readable=base_readable, name="again").run(["true"]).success


@pytest.mark.parametrize("name", ["a/b", "..", ".", "../../etc/x", "a\nb"])
def test_bad_names_are_refused(xdg, base_readable, name):
    with pytest.raises(PolicyError, match="name"):
        Sandbox(fs_readable=base_readable, name=name).run(["true"])
    with pytest.raises(PolicyError, match="name"):
        sandlock.inspect(name)
    with pytest.raises(PolicyError, match="name"):
        sandlock.kill(name)
    assert not os.path.exists(os.path.join(xdg, "sandlock")) or \
        os.listdir(os.path.join(xdg, "sandlock")) == []


def test_unknown_sandbox(xdg):
    with pytest.raises(SandboxError, match="no running sandbox named 'nope'"):
        sandlock.inspect("nope")
    with pytest.raises(SandboxError, match="no running sandbox named 'nope'"):
        sandlock.kill("nope")


# -- the wire ---------------------------------------------------------------------------------

def _raw(xdg: str, name: str, payload: bytes) -> dict | None:
    d = os.path.join(xdg, "sandlock")
    (entry,) = [e for e in os.listdir(d) if e.startswith(name + ".")]
    dfd = os.open(d, os.O_PATH)
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(f"/proc/self/fd/{dfd}/{entry}")
        s.sendall(payload)
        head = s.recv(4)
        if len(head) < 4:
            return None
        (n,) = struct.unpack(">I", head)
        body = b""
        while len(body) < n:
            body += s.recv(n - len(body))
        return json.loads(body)
    finally:
        os.close(dfd)


def _frame(obj) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


def test_wire_refuses_bad_requests(xdg, running):
    p = running("wire")
    assert _raw(xdg, "wire", _frame({"v": 2, "verb": "ps"}))["ok"] is False
    assert "unknown" in _raw(xdg, "wire", _frame({"v": 1, "verb": "rm"}))["error"]
    assert _raw(xdg, "wire", _frame({"v": 1, "verb": "kill", "args": {"signal": 999}}))["ok"] is False
    assert _raw(xdg, "wire", struct.pack(">I", 50 << 20)) is None  # too big: hung up
    assert _raw(xdg, "wire", b"\0\0\0\2[]") is None  # not an object
    ok = _raw(xdg, "wire", _frame({"v": 1, "verb": "ps", "args": {}}))
    assert ok["ok"] and ok["v"] == 1 and ok["data"]["pid"] == p.pid
    assert p.poll() is None  # none of that hurt the sandbox


def test_launch_message_carries_the_control_fields():
    plan = compile_plan(Policy(fs_readable=("/usr",), max_memory=1 << 20), ["/bin/true", "x"])
    msg = launch_message(plan, None, 0o022, True, ("/run/x/sandlock", "nm"))
    back = protocol.decode(protocol.encode(msg), protocol.Channel.LAUNCH)
    s = back.supervisor
    assert (s.name, s.control_dir, s.command) == ("nm", "/run/x/sandlock", ["/bin/true", "x"])
    assert s.policy == plan.summary and s.policy["limits"]["memory"] == 1 << 20
    plain = launch_message(plan, None, 0o022, True)
    assert plain.supervisor.control_dir is None


# -- not reachable from inside a sandbox ---------------------------------------------------

def test_plan_never_grants_the_runtime_dirs(xdg):
    rt = os.path.join(xdg, "sandlock")
    os.mkdir(rt, 0o700)
    for granted in ((xdg,), ("/tmp",), ("/",)):
        plan = compile_plan(Policy(fs_writable=granted), ["/bin/true"])
        for d in control.private_dirs():
            assert plan.fs.access(os.path.join(d, "x.sock")) == 0
            assert not any(path == d or path.startswith(d + "/") or d.startswith(path.rstrip("/") + "/")
                           for path, _access in plan.fs.rules), (granted, d)


REACH = """
import socket, struct
path = sys.stdin.readline().strip()
OUT["ls"] = ls(ARGS["dir"])
OUT["create"] = wr(ARGS["dir"] + "/planted")
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
OUT["connect"] = attempt(s.connect, path)
if OUT["connect"] == "OK":
    data = json.dumps({"v": 1, "verb": "kill", "args": {"signal": 9}}).encode()
    s.sendall(struct.pack(">I", len(data)) + data)
    n = struct.unpack(">I", s.recv(4))[0]
    OUT["reply"] = json.loads(s.recv(n))
"""


@pytest.mark.parametrize("supervised", [True, False])
def test_a_sandbox_cannot_reach_its_control_socket(xdg, base_readable, py, supervised):
    rt = os.path.join(xdg, "sandlock")
    # Even with the whole XDG_RUNTIME_DIR writable and readable.
    sb = Sandbox(fs_readable=base_readable, fs_writable=[xdg], name="self",
                 no_supervisor=not supervised)
    with sb.popen(py.argv(REACH, {"dir": rt}), stdin=subprocess.PIPE, stdout=subprocess.PIPE) as p:
        (entry,) = os.listdir(rt)
        p.stdin.write(os.path.join(rt, entry).encode() + b"\n")
        p.stdin.flush()
        out = py.parse(p.stdout.read())
        res = p.wait(30)
    assert res.exit_code == 0, res
    assert out["ls"] == "EACCES" and out["create"] == "EACCES"
    if supervised:
        assert out["connect"] == "EACCES"  # the supervisor refuses: not under a writable path
    else:
        # No supervisor mediates connect (Landlock has no right for it):
        # the control server itself refuses a peer of its own sandbox.
        assert out["connect"] == "OK"
        assert out["reply"]["ok"] is False and "inside the sandbox" in out["reply"]["error"]
    assert os.listdir(rt) == []


# -- the command line --------------------------------------------------------------------

def test_cli_ps_inspect_kill(xdg, running, base_readable):
    assert _cli("ps").stdout == "No running sandboxes.\n"
    assert json.loads(_cli("ps", "--json").stdout) == []
    p = running("cli-one", max_processes=7)
    table = _cli("ps").stdout.splitlines()
    assert table[0].split() == ["NAME", "PID", "UPTIME", "PROCS", "PORTS", "COMMAND"]
    assert table[1].split()[:2] == ["cli-one", str(p.pid)] and table[1].endswith(f"{SLEEP} 300")
    (row,) = json.loads(_cli("ps", "--json").stdout)
    assert row["name"] == "cli-one" and row["pid"] == p.pid

    info = json.loads(_cli("inspect", "cli-one").stdout)
    assert info == {**info, "name": "cli-one", "pid": p.pid}
    assert info["policy"]["limits"] == {"processes": 7}
    assert json.loads(_cli("inspect", "cli-one", "--json").stdout)["pid"] == p.pid
    tomllib = pytest.importorskip("tomllib")
    text = _cli("inspect", "cli-one", "--toml").stdout
    assert tomllib.loads(text) == info["policy"]
    assert text.startswith("# sandbox 'cli-one'")

    r = _cli("kill", "cli-one", "-s", "TERM")
    assert r.stdout == "Sent SIGTERM to sandbox 'cli-one' (1 process)\n"
    assert p.wait(10).signal == signal.SIGTERM
    r = _cli("kill", "cli-one", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (125, "", "sandlock: no running sandbox named 'cli-one'\n")


def test_cli_kill_and_errors(xdg, running):
    p = running("cli-two")
    assert _cli("kill", "cli-two").stdout == "Killed sandbox 'cli-two' (1 process)\n"
    assert p.wait(10).reason == ExitReason.KILLED
    for args, msg in [(("kill", "x", "-s", "NOPE"), "'NOPE' is not a signal"),
                      (("inspect", "a/b"), "must not contain '/'"),
                      (("inspect", "x", "--json", "--toml"), "not allowed with")]:
        r = _cli(*args, check=False)
        assert r.returncode == 125 and r.stderr.startswith("sandlock: ") and msg in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1


def test_cli_run_names_its_sandbox(xdg):
    r = subprocess.Popen([sys.executable, "-m", "sandlock", "run", "--name", "from-cli", "--",
                          SLEEP, "300"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert _wait_until(lambda: [x["name"] for x in sandlock.ps()] == ["from-cli"])
        assert sandlock.kill("from-cli") == 1
        assert r.wait(10) == 128 + 9
    finally:
        if r.poll() is None:
            r.kill()
            r.wait()


def test_inspect_shows_the_denials_so_far(xdg, running, base_readable, world_dir):
    """A refusal the supervisor made (a chmod of a read-only file) is in
    inspect's answer while the sandbox still runs; none before it."""
    target = os.path.join(world_dir, "ro.txt")
    with open(target, "w") as f:
        f.write("x")
    script = ("import os, sys, time\n"
              "sys.stdin.read(1)\n"
              "try:\n    os.chmod(sys.argv[1], 0o777)\nexcept OSError:\n    pass\n"
              "print('done', flush=True)\n"
              "time.sleep(300)\n")
    p = Sandbox(name="denied", fs_readable=[*base_readable, world_dir]).popen(
        [sys.executable, "-c", script, target], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert sandlock.inspect("denied")["denials"] == []
        p.stdin.write(b"g")
        p.stdin.flush()
        assert p.stdout.readline() == b"done\n"
        info = sandlock.inspect("denied")
        (d,) = info["denials"]
        assert (d["operation"], d["target"], d["hint"]) == ("chmod", target, f"fs_writable: {target}")
        assert info["denials_omitted"] == 0
        json.dumps(info)
    finally:
        p.kill()
        p.wait()
