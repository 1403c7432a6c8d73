"""Issue 15 (hardening): attacks on what the supervisor does on the
sandbox's behalf, and processes that outlive the sandlock processes meant to
hold them.

Every attack also runs unconfined (or with the protection off) where that
shows something: a pass then proves the sandbox, not a broken attack.
Processes are found by an argument no other run uses (``sleep 60.<n>``)
and are killed in a ``finally`` whatever happens.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from escape_lib import (MARKER, cmdline, confined, describe, is_dead, parse_verdict, py_cmd,
                        unconfined, wait_dead)

from sandlock import PolicyError, Sandbox

# -- helpers -------------------------------------------------------------------------------

def _unique(prefix: str = "60") -> str:
    """A `sleep` argument no other process uses."""
    return f"{prefix}.{os.getpid() % 1000:03d}{time.monotonic_ns() % 1000000:06d}"


def _find(*argv: str) -> list[int]:
    """Pids whose command line is exactly `argv` (zombies excluded)."""
    want = b"".join(a.encode() + b"\0" for a in argv)
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and cmdline(int(name)) == want and not is_dead(int(name)):
            out.append(int(name))
    return out


def _wait_for(*argv: str, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _find(*argv)
        if pids:
            return pids[0]
        time.sleep(0.02)
    pytest.fail(f"{' '.join(argv)} did not start within {timeout}s")


def _kill_matching(*argvs: tuple[str, ...]) -> None:
    """Cleanup: SIGKILL every process running one of `argvs`."""
    for argv in argvs:
        for pid in _find(*argv):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rindex(b")") + 2:].split()[1])


def _env(**extra: str) -> dict:
    """The environment of a child Python that imports this sandlock."""
    env = dict(os.environ)
    path = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules["sandlock"].__file__)))
    env["PYTHONPATH"] = path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def _caller(code: str, args: dict, **kw) -> subprocess.Popen:
    """A separate caller process running `code` with the sandlock API (its
    launch server and supervisors are its own, not this test process's)."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), json.dumps(args)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env(), start_new_session=True, **kw)


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.kill()
    proc.wait()


def _sandlock_cli(*args: str, cwd: str = "/tmp", env=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandlock", *args], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=cwd, env=env or _env())


def _mkfile(path: str, text: str, mode: int = 0o644) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _mkdirs(*paths: str) -> None:
    for p in paths:
        os.makedirs(p, exist_ok=True)
        os.chmod(p, 0o755)


# -- item 2: a denied /proc is denied, whoever serves it -----------------------------------

PROC = r'''
def short(v):
    return "READ" if v.startswith("READ:") else v
emit(status=short(rd("/proc/self/status")), own=short(rd("/proc/%d/status" % os.getpid())),
     environ=short(rd("/proc/self/environ")), cpuinfo=short(rd("/proc/cpuinfo")),
     ls_proc=os_e(os.listdir, "/proc"), ls_self=os_e(os.listdir, "/proc/self"))
'''
PROC_ALL_OPEN = dict(status="READ", own="READ", environ="READ", cpuinfo="READ", ls_proc="OK", ls_self="OK")
PROC_ALL_DENIED = dict(status="EACCES", own="EACCES", environ="EACCES", cpuinfo="EACCES",
                       ls_proc="EACCES", ls_self="EACCES")


def test_denied_proc_is_not_served_by_the_supervisor():
    assert unconfined(PROC) == PROC_ALL_OPEN
    # Landlock alone (no supervisor) already refuses every one...
    v, _ = confined(Sandbox(fs_readable=["/"], fs_denied=["/proc"], no_supervisor=True), PROC)
    assert v == PROC_ALL_DENIED
    # ...and the supervisor must not open them on the sandbox's behalf.
    v, _ = confined(Sandbox(fs_readable=["/"], fs_denied=["/proc"]), PROC)
    assert v == PROC_ALL_DENIED


def test_denied_proc_file_stays_denied():
    v, _ = confined(Sandbox(fs_readable=["/"], fs_denied=["/proc/cpuinfo"]), PROC)
    assert v["cpuinfo"] == "EACCES"
    # The rest of /proc is still the sandbox's own (served by the supervisor).
    assert v["status"] == v["own"] == "READ" and v["ls_proc"] == v["ls_self"] == "OK", v


def test_denied_proc_self_entry_is_not_silently_ignored():
    # /proc/self means a different process for the caller (when the policy is
    # made) and for the sandbox: a denial naming it must either be refused
    # as a policy, or hold for the sandbox's own /proc/self.
    try:
        sb = Sandbox(fs_readable=["/"], fs_denied=["/proc/self/environ"])
        v, r = confined(sb, PROC)
    except PolicyError as e:
        assert "fs_denied" in str(e)
        return
    assert v["environ"] == "EACCES", (v, describe(r))
    assert v["status"] == "READ", v


# -- item 3: a named unix socket inside a denied subdirectory of a writable tree -------------

UNIX_CONNECT = r'''
import socket
def conn(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    try:
        return os_e(s.connect, path)
    finally:
        s.close()
w = ARGS["w"]
res = dict(secret=conn(w + "/secret/sock"), ok=conn(w + "/ok/sock"), via_link=conn(w + "/link/sock"))
os.chdir(w)
res["relative"] = conn("secret/sock")
emit(**res)
'''


def test_unix_socket_in_a_denied_subdirectory(base, wdir):
    w = os.path.join(wdir, "w")
    _mkdirs(w, os.path.join(w, "secret"), os.path.join(w, "ok"))
    os.symlink(os.path.join(w, "secret"), os.path.join(w, "link"))
    servers = []
    try:
        for d in ("secret", "ok"):
            s = socket.socket(socket.AF_UNIX)
            s.bind(os.path.join(w, d, "sock"))
            os.chmod(os.path.join(w, d, "sock"), 0o777)
            s.listen(16)
            servers.append(s)
        args = dict(w=w)
        assert unconfined(UNIX_CONNECT, args) == dict(secret="OK", ok="OK", via_link="OK", relative="OK")
        sb = Sandbox(fs_readable=base, fs_writable=[w], fs_denied=[os.path.join(w, "secret")])
        v, _ = confined(sb, UNIX_CONNECT, args)
        assert v == dict(secret="EACCES", ok="OK", via_link="EACCES", relative="EACCES"), v
    finally:
        for s in servers:
            s.close()


# -- item 4: killing the caller ends the sandbox ----------------------------------------------

def test_killing_the_cli_ends_its_sandbox():
    a = _unique("60")
    cli = subprocess.Popen([sys.executable, "-m", "sandlock", "run", "--", "sleep", a],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=_env(), cwd="/tmp", start_new_session=True)
    try:
        pid = _wait_for("sleep", a)
        cli.kill()
        cli.wait()
        assert wait_dead([pid], 10) == [], "the sandbox outlived the sandlock command"
    finally:
        _end(cli)
        _kill_matching(("sleep", a))


def test_killing_the_cli_ends_a_setsid_grandchild():
    a, b = _unique("60"), _unique("61")
    script = f'setsid sh -c "sleep {b} &" ; sleep {a}'
    cli = subprocess.Popen([sys.executable, "-m", "sandlock", "run", "--", "sh", "-c", script],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=_env(), cwd="/tmp", start_new_session=True)
    try:
        pids = [_wait_for("sleep", a), _wait_for("sleep", b)]
        cli.kill()
        cli.wait()
        assert wait_dead(pids, 10) == [], "sandboxed processes outlived the sandlock command"
    finally:
        _end(cli)
        _kill_matching(("sleep", a), ("sleep", b))


POPEN_AND_WAIT = '''
import json, sys, time
from sandlock import Sandbox
A = json.loads(sys.argv[1])
sb = Sandbox(fs_readable=A["base"], fs_writable=["/dev/null"])
p = sb.popen(A["cmd"])
print(p.pid, flush=True)
time.sleep(120)
'''


def _setsid_cmd(a: str, b: str) -> list[str]:
    return ["sh", "-c", f'setsid sh -c "sleep {b} &" ; sleep {a}']


def test_killing_the_api_caller_ends_its_sandbox(base):
    a, b = _unique("60"), _unique("61")
    caller = _caller(POPEN_AND_WAIT, dict(base=base, cmd=_setsid_cmd(a, b)))
    try:
        pids = [_wait_for("sleep", a), _wait_for("sleep", b)]
        caller.kill()
        caller.wait()
        assert wait_dead(pids, 10) == [], "sandboxed processes outlived the caller"
    finally:
        _end(caller)
        _kill_matching(("sleep", a), ("sleep", b))


# -- item 14: killing the sandlock processes between the caller and the sandbox --------------

def _sandbox_of_caller(base, a, b):
    caller = _caller(POPEN_AND_WAIT, dict(base=base, cmd=_setsid_cmd(a, b)))
    ready, _w, _x = select.select([caller.stdout], [], [], 60)
    line = caller.stdout.readline() if ready else b""
    if not line.strip():
        _end(caller)
        pytest.fail(f"the caller did not start its sandbox: {caller.stderr.read()[-2000:]!r}")
    main = int(line)
    return caller, main, [main, _wait_for("sleep", a), _wait_for("sleep", b)]


def test_supervisor_killed_from_outside_takes_a_setsid_grandchild_along(base):
    a, b = _unique("60"), _unique("61")
    caller, main, pids = _sandbox_of_caller(base, a, b)
    try:
        supervisor = _ppid(main)
        assert supervisor != caller.pid
        os.kill(supervisor, signal.SIGKILL)
        assert wait_dead(pids, 10) == [], "sandboxed processes outlived their supervisor"
    finally:
        _end(caller)
        _kill_matching(("sleep", a), ("sleep", b))


def _chain(main: int, caller: int) -> list[int]:
    """The processes between the caller and the sandbox's main process
    (supervisor first, then the launch server), nearest first."""
    chain = []
    p = _ppid(main)
    while p != caller:
        assert p > 1, "the sandbox is not below its caller"
        chain.append(p)
        p = _ppid(p)
    assert chain
    return chain


def test_killing_the_launch_server_ends_supervisor_and_sandbox(base):
    a, b = _unique("60"), _unique("61")
    caller, main, pids = _sandbox_of_caller(base, a, b)
    chain_cmds = {}
    try:
        chain = _chain(main, caller.pid)
        chain_cmds = {p: cmdline(p) for p in chain}
        # The top of the chain (the launch server) goes: everything below it
        # goes too, the setsid'd grandchild included.
        os.kill(chain[-1], signal.SIGKILL)
        left = wait_dead(pids + chain, 10)
        assert left == [], ("outlived the launch server", dict(sandbox=pids, chain=chain, left=left))
    finally:
        _end(caller)
        _kill_matching(("sleep", a), ("sleep", b))
        for p, cmd in chain_cmds.items():
            if not is_dead(p) and cmdline(p) == cmd:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass


def test_killing_every_sandlock_process_above_the_sandbox_ends_it(base):
    a, b = _unique("60"), _unique("61")
    caller, main, pids = _sandbox_of_caller(base, a, b)
    try:
        # Every process between the caller and the sandbox (the supervisor,
        # the launch server), SIGKILLed back to back from the top down, so
        # that none of them can act on the other's death.
        chain = _chain(main, caller.pid)
        for p in reversed(chain):
            os.kill(p, signal.SIGKILL)
        # The sandbox's main process dies with its supervisor (parent-death
        # signal), whatever else happens.
        assert wait_dead([main], 10) == [], "the sandbox's main process outlived its supervisor"
        left = wait_dead(pids, 10)
        if left:
            # Its orphans (a child of the shell, the setsid'd grandchild)
            # were re-parented past two dead subreapers: nothing outside a
            # pid namespace or a cgroup can reach them then.
            pytest.xfail(f"orphans {left} outlived an instantaneous SIGKILL of {chain}")
    finally:
        _end(caller)
        _kill_matching(("sleep", a), ("sleep", b))


# -- item 13: a stopped supervisor cannot hold the caller --------------------------------------

RUN_WITH_TIMEOUT = '''
import json, sys
from sandlock import Sandbox
A = json.loads(sys.argv[1])
try:
    r = Sandbox(fs_readable=A["base"]).run(["sleep", A["arg"]], timeout=2)
    out = dict(reason=r.reason.name if r.reason is not None else None, error=r.error)
except Exception as e:
    out = dict(reason=None, error="raised " + repr(e))
print(json.dumps(out), flush=True)
'''


def test_stopped_supervisor_cannot_hold_the_callers_timeout(base):
    a = _unique("60")
    caller = _caller(RUN_WITH_TIMEOUT, dict(base=base, arg=a))
    supervisor = None
    try:
        pid = _wait_for("sleep", a)
        supervisor = _ppid(pid)
        assert supervisor != caller.pid
        os.kill(supervisor, signal.SIGSTOP)
        try:
            out, err = caller.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("run(timeout=2) still had not returned after 60 s with its supervisor stopped")
        result = json.loads(out.decode().strip().splitlines()[-1])
        assert result["reason"] == "TIMEOUT" or result["error"], result
        assert wait_dead([pid], 10) == [], "the sandboxed process outlived the caller's deadline"
    finally:
        if supervisor is not None and not is_dead(supervisor):
            try:
                os.kill(supervisor, signal.SIGCONT)
            except OSError:
                pass
        _end(caller)
        _kill_matching(("sleep", a))


FORK_ON_GO = r"""
import os, sys, time
sys.stdin.buffer.read(1)    # the supervisor has been blinded by now
made = 0
for _ in range(12):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(float(sys.argv[1]))
        os._exit(0)
    made += 1
    print(made, flush=True)
time.sleep(float(sys.argv[1]))
"""


def test_a_supervisor_that_cannot_read_the_tree_ends_the_sandbox(base):
    """The supervisor's open-file limit is lowered from outside (the way a
    sandbox once did it with prlimit64, now refused: item 12), so its /proc
    reads fail. max_processes must not then count an empty tree: the
    sandbox ends, its processes die, and wait() returns."""
    import resource
    a = _unique("30")
    p = Sandbox(fs_readable=base, max_processes=4).popen(
        [sys.executable, "-I", "-S", "-c", FORK_ON_GO, a], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        supervisor = _ppid(p.pid)
        held = {int(fd) for fd in os.listdir(f"/proc/{supervisor}/fd")}
        lowest_free = min(set(range(len(held) + 1)) - held)
        resource.prlimit(supervisor, resource.RLIMIT_NOFILE, (lowest_free, lowest_free))
        p.stdin.write(b"g")
        p.stdin.flush()
        r = p.wait(timeout=60)
        made = [int(x) for x in p.stdout.read().split()]
        assert not r.success, describe(r)
        assert r.reason is None or r.reason.name != "TIMEOUT", describe(r)  # ended, not timed out
        assert max(made, default=0) < 4, (made, describe(r))  # never more than max_processes
        assert _find(sys.executable, "-I", "-S", "-c", FORK_ON_GO, a) == [], "a process outlived it"
    finally:
        _kill_matching((sys.executable, "-I", "-S", "-c", FORK_ON_GO, a))


# -- item 5: the CLI default policy and the home directory ------------------------------------

@pytest.fixture
def fake_home(wdir):
    home = os.path.join(wdir, "home")
    _mkdirs(home, os.path.join(home, "work"), os.path.join(home, ".ssh"))
    _mkfile(os.path.join(home, ".ssh", "id_x"), MARKER)
    _mkfile(os.path.join(home, "work", "peek.sh"),
            '#!/bin/sh\necho ran\ncat "$HOME/.ssh/id_x"\nls "$HOME"\n', 0o755)
    return home


def test_cli_script_in_home_cannot_read_home(fake_home):
    script = os.path.join(fake_home, "work", "peek.sh")
    env = _env(HOME=fake_home)
    ctl = subprocess.run([script], capture_output=True, env=env, cwd=os.path.dirname(script), timeout=60)
    assert MARKER.encode() in ctl.stdout  # the script does read the secret unconfined
    p = _sandlock_cli("run", "--", script, cwd=os.path.dirname(script), env=env)
    assert p.stdout.startswith(b"ran\n"), (p.returncode, p.stdout, p.stderr)  # the script runs...
    assert MARKER.encode() not in p.stdout, p.stdout  # ...but the home directory is not readable
    assert b".ssh" not in p.stdout, p.stdout


def test_cli_run_from_home_cannot_read_home(fake_home):
    env = _env(HOME=fake_home)
    p = _sandlock_cli("run", "--", "sh", "-c", 'echo ran; cat "$HOME/.ssh/id_x"; cat .ssh/id_x; ls "$HOME"',
                      cwd=fake_home, env=env)
    assert p.stdout.startswith(b"ran\n"), (p.returncode, p.stdout, p.stderr)
    assert MARKER.encode() not in p.stdout and b".ssh" not in p.stdout, p.stdout
    script = os.path.join(fake_home, "work", "peek.sh")
    p = _sandlock_cli("run", "--", script, cwd=fake_home, env=env)
    assert p.stdout.startswith(b"ran\n"), (p.returncode, p.stdout, p.stderr)
    assert MARKER.encode() not in p.stdout and b".ssh" not in p.stdout, p.stdout


def test_cli_script_in_a_project_dir_runs_and_reads_its_cwd(fake_home, wdir):
    proj = os.path.join(wdir, "proj")
    _mkdirs(proj)
    _mkfile(os.path.join(proj, "data.txt"), "project-data\n")
    _mkfile(os.path.join(proj, "run.sh"), '#!/bin/sh\ncat data.txt\ncat "$HOME/.ssh/id_x"\n', 0o755)
    p = _sandlock_cli("run", "--", os.path.join(proj, "run.sh"), cwd=proj, env=_env(HOME=fake_home))
    assert p.stdout.startswith(b"project-data\n"), (p.returncode, p.stdout, p.stderr)
    assert MARKER.encode() not in p.stdout, p.stdout


# -- item 17: what one run does to its supervisor never reaches a later run -------------------

SUPERVISOR_ATTACK = r'''
import resource
t = ARGS.get("target") or os.getppid()
emit(target=t,
     nofile=os_e(resource.prlimit, t, resource.RLIMIT_NOFILE, (100, 100)),
     nice=os_e(os.setpriority, os.PRIO_PROCESS, t, 15),
     affinity=os_e(os.sched_setaffinity, t, [min(os.sched_getaffinity(0))]))
'''
STATE = r'''
import resource
emit(ppid=os.getppid(), nofile=list(resource.getrlimit(resource.RLIMIT_NOFILE)),
     nice=os.getpriority(os.PRIO_PROCESS, 0), affinity=sorted(os.sched_getaffinity(0)))
'''
# The scenario runs in a caller process of its own: whatever the attack
# does to a supervisor stays out of this test process's supervisors.
REUSE = '''
import json, os, sys
from sandlock import Sandbox
A = json.loads(sys.argv[1])
sb = Sandbox(fs_readable=A["base"])

# Reused supervisors come from the launch server; the first runs of a process
# may be served by one-run supervisors while it starts: wait until it serves.
import time
from sandlock import launch
server, give_up = launch.current_server(), time.monotonic() + 30
while not server.has_spare() and time.monotonic() < give_up:
    time.sleep(0.01)

def verdict(argv):
    r = sb.run(argv, timeout=60)
    for line in reversed(r.stdout.decode(errors="replace").splitlines()):
        if line.startswith("VERDICT "):
            return json.loads(line[8:])
    return dict(failed=repr(r), stderr=r.stderr.decode(errors="replace")[-1000:])

def supervisor(pid):
    """A supervisor's state read from outside, or None once it is gone."""
    try:
        with open("/proc/%d/limits" % pid) as f:
            nofile = [l for l in f if l.startswith("Max open files")][0].split()[3:5]
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
        nice = int(stat[stat.rindex(b")") + 2:].split()[16])
        return dict(nofile=[int(x) for x in nofile], nice=nice, affinity=sorted(os.sched_getaffinity(pid)))
    except (OSError, IndexError, ValueError):
        return None

out = dict(before=[verdict(A["state"]) for _ in range(2)])
out["supervisors_before"] = [supervisor(v.get("ppid", 0)) for v in out["before"]]
out["attack"] = verdict(A["attack"])
out["attacked_after"] = supervisor(out["attack"].get("target", 0))
out["after"] = []
for _ in range(6):
    v = verdict(A["state"])
    v["supervisor"] = supervisor(v.get("ppid", 0))
    out["after"].append(v)
print(json.dumps(out), flush=True)
'''


def test_a_run_cannot_change_the_supervisor_of_later_runs(base):
    # Control: against a process of its own uid, the attack works.
    victim = subprocess.Popen(["sleep", "30"])
    try:
        v = unconfined(SUPERVISOR_ATTACK, dict(target=victim.pid))
        assert v["nofile"] == "OK", v
        with open(f"/proc/{victim.pid}/limits") as f:
            assert [ln for ln in f if ln.startswith("Max open files")][0].split()[3:5] == ["100", "100"]
    finally:
        victim.kill()
        victim.wait()

    caller = _caller(REUSE, dict(base=base, state=py_cmd(STATE), attack=py_cmd(SUPERVISOR_ATTACK)))
    try:
        out, err = caller.communicate(timeout=300)
    finally:
        _end(caller)
    assert caller.returncode == 0, err[-3000:]
    res = json.loads(out.decode().strip().splitlines()[-1])
    before = res["before"]
    assert all("failed" not in v for v in before), before
    normal = {k: before[0][k] for k in ("nofile", "nice", "affinity")}
    assert {k: before[1][k] for k in normal} == normal, before
    sup_normal = res["supervisors_before"][0]
    assert sup_normal is not None and sup_normal["nofile"] == normal["nofile"], res["supervisors_before"]

    assert "failed" not in res["attack"], res["attack"]
    # Whatever the attack managed (it should be refused), the supervisor it
    # ran under is, if still alive, in its normal state...
    if res["attacked_after"] is not None:
        assert res["attacked_after"] == sup_normal, (res["attack"], res["attacked_after"])
    # ...and every later run, and its supervisor, is as before the attack.
    for v in res["after"]:
        assert "failed" not in v, v
        assert {k: v[k] for k in normal} == normal, (res["attack"], v)
        if v["supervisor"] is not None:
            assert v["supervisor"] == sup_normal, (res["attack"], v)


# -- item 19: one connect cannot hold the supervisor ---------------------------------------

# N processes each hold K socket pairs (2K unix socket fds), then all but
# the main one spin, competing with the supervisor for the CPU, while the
# main process connects to an abstract name nobody holds. The answer must
# not cost the supervisor a look at every socket of the sandbox.
SOCKET_HOARD = r'''
import socket
N, K = ARGS["n"], ARGS["k"]
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
for i in range(N - 1):
    if os.fork() == 0:
        os.close(ready_r)
        os.close(go_w)
        keep = [socket.socketpair() for _ in range(K)]
        os.write(ready_w, b"x")
        os.read(go_r, 1)         # returns (EOF) once the main process lets go
        while True:
            pass
os.close(ready_w)
os.close(go_r)
got = 0
while got < N - 1:
    got += len(os.read(ready_r, 64))
keep = [socket.socketpair() for _ in range(K)]
os.close(go_w)
s = socket.socket(socket.AF_UNIX)
emit(connect=os_e(s.connect, b"\0" + ARGS["name"].encode()))
'''


def test_one_abstract_connect_cannot_hold_the_supervisor(base):
    n, k = 40, 250   # 20000 unix sockets; the default max_processes is 64
    args = dict(n=n, k=k, name=f"sl-test-nobody-{os.getpid()}-{time.monotonic_ns()}")
    sb = Sandbox(fs_readable=base)
    t0 = time.monotonic()
    r = sb.run(py_cmd(SOCKET_HOARD, args), timeout=8)
    elapsed = time.monotonic() - t0
    # Liveness, not speed: an 8 s timeout must not become minutes.
    assert elapsed < 40, f"run(timeout=8) returned after {elapsed:.0f} s"
    v = parse_verdict(r.stdout)
    # The connect was answered, and the program ended on its own before the
    # timeout: the supervisor was not held by one call.
    assert v is not None and v["connect"] in ("ECONNREFUSED", "EPERM"), describe(r)
    assert r.reason is not None and r.reason.name == "EXITED", describe(r)


ABSTRACT = r'''
import socket
inner = b"\0" + ARGS["inner"].encode()
srv = socket.socket(socket.AF_UNIX)
srv.bind(inner)
srv.listen(4)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    c = socket.socket(socket.AF_UNIX)
    os.write(w, os_e(c.connect, inner).encode())
    os._exit(0)
os.close(w)
other_process = os.read(r, 64).decode()
os.waitpid(pid, 0)
c = socket.socket(socket.AF_UNIX)
emit(other_process=other_process, outer=os_e(c.connect, b"\0" + ARGS["outer"].encode()))
'''


def test_abstract_sockets_inside_the_sandbox_only(base):
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    args = dict(inner=f"sl-test-in-{tag}", outer=f"sl-test-out-{tag}")
    outer = socket.socket(socket.AF_UNIX)
    outer.bind(b"\0" + args["outer"].encode())
    outer.listen(16)
    try:
        assert unconfined(ABSTRACT, args) == dict(other_process="OK", outer="OK")
        args["inner"] += "-2"  # the control's socket is closed, but keep names unique
        v, _ = confined(Sandbox(fs_readable=base), ABSTRACT, args)
        assert v == dict(other_process="OK", outer="EPERM"), v
    finally:
        outer.close()


# -- item 20: a program's own Landlock ruleset binds the supervisor too -------------------------

NESTED_TCP = r'''
import socket, struct
NR_CREATE, NR_ADD, NR_RESTRICT = 444, 445, 446
CONNECT_TCP, RULE_NET_PORT, PR_SET_NO_NEW_PRIVS = 1 << 1, 2, 38
attr = ctypes.create_string_buffer(struct.pack("=QQ", 0, CONNECT_TCP), 16)
ruleset, e = sc(NR_CREATE, attr, 16, 0)
if ruleset < 0:
    emit(setup="create:" + ename(e))
    sys.exit()
rule = ctypes.create_string_buffer(struct.pack("=QQ", CONNECT_TCP, ARGS["p1"]), 16)
r, e = sc(NR_ADD, ruleset, RULE_NET_PORT, rule, 0)
if r < 0:
    emit(setup="add_rule:" + ename(e))
    sys.exit()
libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
r, e = sc(NR_RESTRICT, ruleset, 0)
if r < 0:
    emit(setup="restrict:" + ename(e))
    sys.exit()
def conn(port):
    s = socket.socket()
    s.settimeout(10)
    try:
        return os_e(s.connect, ("127.0.0.1", port))
    finally:
        s.close()
emit(setup="OK", p1=conn(ARGS["p1"]), p2=conn(ARGS["p2"]))
'''


def _listeners(n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        out.append(s)
    return out


def test_nested_landlock_binds_on_behalf_connects(base):
    servers = _listeners(2)
    try:
        p1, p2 = (s.getsockname()[1] for s in servers)
        args = dict(p1=p1, p2=p2)
        # Control: the program's own ruleset refuses P2 (kernel Landlock).
        assert unconfined(NESTED_TCP, args) == dict(setup="OK", p1="OK", p2="EACCES")
        # Addresses in the rules: the supervisor connects on the program's behalf.
        sb = Sandbox(fs_readable=base, net_allow=[f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"])
        v, _ = confined(sb, NESTED_TCP, args)
        assert v["setup"] == "OK", v
        assert v["p2"] in ("EACCES", "EPERM"), v
        assert v["p1"] in ("OK", "EACCES", "EPERM"), v  # the supervisor may stop acting for it
    finally:
        for s in servers:
            s.close()


NESTED_FS = r'''
import struct
NR_CREATE, NR_RESTRICT = 444, 446
READ_FILE, READ_DIR, PR_SET_NO_NEW_PRIVS = 1 << 2, 1 << 3, 38
attr = ctypes.create_string_buffer(struct.pack("=Q", READ_FILE | READ_DIR), 8)
ruleset, e = sc(NR_CREATE, attr, 8, 0)
before = rd("/proc/self/status")[:5]
libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
r, e = sc(NR_RESTRICT, ruleset, 0) if ruleset >= 0 else (-1, e)
emit(setup=ename(e), before=before, status=rd("/proc/self/status")[:5], ls=os_e(os.listdir, "/proc"))
'''


def test_nested_landlock_binds_proc_opens_on_behalf(base):
    # The program forbids itself every read; the supervisor's /proc service
    # must not read for it after that.
    assert unconfined(NESTED_FS) == dict(setup="OK", before="READ:", status="EACCE", ls="EACCES")
    v, _ = confined(Sandbox(fs_readable=base + ["/proc"]), NESTED_FS)
    assert v["setup"] == "OK" and v["before"] == "READ:", v
    assert v["status"] in ("EACCE", "EPERM") and v["ls"] in ("EACCES", "EPERM"), v


# The copy-on-write workdir is served on the program's behalf too: a file
# only the branch has is opened by the supervisor, and every change is
# made by it. The program forbids itself every read and write; from then on
# none of that is done for it.
NESTED_COW = r'''
import struct
NR_CREATE, NR_RESTRICT = 444, 446
RIGHTS = sum(1 << b for b in (1, 2, 3, 4, 5, 7, 8))  # write, read, dir, rmdir, rm, mkdir, mkreg
W = ARGS["w"]
with open(W + "/branch.txt", "w") as f:
    f.write("in the branch")
before = rd(W + "/branch.txt")
attr = ctypes.create_string_buffer(struct.pack("=Q", RIGHTS), 8)
ruleset, e = sc(NR_CREATE, attr, 8, 0)
libc.prctl(38, 1, 0, 0, 0)
r, e = sc(NR_RESTRICT, ruleset, 0) if ruleset >= 0 else (-1, e)
def create(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
emit(setup=ename(e), before=before, branch=rd(W + "/branch.txt"), lower=rd(W + "/lower.txt"),
     create=os_e(create, W + "/new.txt"), mkdir=os_e(os.mkdir, W + "/d"),
     unlink=os_e(os.unlink, W + "/lower.txt"), rename=os_e(os.rename, W + "/branch.txt", W + "/b2"),
     link=os_e(os.link, W + "/branch.txt", W + "/b3"))
'''


def test_nested_landlock_binds_copy_on_write_on_behalf(base, wdir):
    w = os.path.join(wdir, "w")
    _mkdirs(w)
    _mkfile(os.path.join(w, "lower.txt"), "lower")
    v = unconfined(NESTED_COW, dict(w=w))  # control: the program's own ruleset alone
    assert v["setup"] == "OK" and v["before"] == "READ:in the branch", v
    assert {k: v[k] for k in ("branch", "lower", "create", "mkdir", "unlink", "rename", "link")} == dict(
        branch="EACCES", lower="EACCES", create="EACCES", mkdir="EACCES", unlink="EACCES",
        rename="EACCES", link="EACCES"), v
    os.unlink(os.path.join(w, "branch.txt"))
    v, r = confined(Sandbox(fs_readable=base, workdir=w, on_exit="commit"), NESTED_COW, dict(w=w))
    assert v["setup"] == "OK" and v["before"] == "READ:in the branch", (v, describe(r))
    for key in ("branch", "lower", "create", "mkdir", "unlink", "rename", "link"):
        assert v[key] in ("EACCES", "EPERM"), (key, v)
    # Nothing was done for it after the restriction: only its first write lands.
    assert sorted(os.listdir(w)) == ["branch.txt", "lower.txt"]


# Inside a chroot every open and change is made by the supervisor.
NESTED_CHROOT = r'''
import ctypes, errno, json, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def name(e):
    return errno.errorcode.get(e, str(e))
def act(fn, *a):
    try:
        fn(*a)
        return "OK"
    except OSError as e:
        return name(e.errno)
def read(path):
    try:
        with open(path) as f:
            return "READ:" + f.read()
    except OSError as e:
        return name(e.errno)
def write(path):
    with open(path, "w") as f:
        f.write("x")
out = {"before_write": act(write, "/tmp/a"), "before_read": read("/tmp/a")}
rights = sum(1 << b for b in (1, 2, 3, 4, 5, 7, 8))
attr = ctypes.create_string_buffer(struct.pack("=Q", rights), 8)
ruleset = libc.syscall(444, attr, 8, 0)
libc.prctl(38, 1, 0, 0, 0)
r = libc.syscall(446, ruleset, 0) if ruleset >= 0 else -1
out["setup"] = "OK" if r == 0 else name(ctypes.get_errno())
out.update(read=read("/tmp/a"), etc=read("/etc/os-release"), create=act(write, "/tmp/b"),
           mkdir=act(os.mkdir, "/tmp/d"), unlink=act(os.unlink, "/tmp/a"))
print(json.dumps(out))
'''


@pytest.mark.parametrize("cow", [False, True], ids=["chroot", "chroot+workdir"])
def test_nested_landlock_binds_chroot_on_behalf(cow):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from _rootfs import python_root, python_scratch
    with python_scratch("sl-nested-chroot-") as top:
        root, mounts = python_root(top)
        # With the root as a copy-on-write workdir, the branch's opens and
        # changes are the supervisor's too.
        extra = dict(workdir=root, on_exit="commit") if cow else dict(fs_writable=["/tmp"])
        sb = Sandbox(chroot=root, fs_readable=["/"], fs_mount_ro=mounts, env={"PATH": "/usr/bin"},
                     **extra)
        r = sb.run(["python3", "-I", "-S", "-c", NESTED_CHROOT], timeout=90)
        assert r.exit_code == 0, describe(r)
        v = json.loads(r.stdout.decode().strip().splitlines()[-1])
        assert v["before_write"] == "OK" and v["before_read"] == "READ:x" and v["setup"] == "OK", v
        for key in ("read", "etc", "create", "mkdir", "unlink"):
            assert v[key] in ("EACCES", "EPERM"), (key, v)
        assert sorted(os.listdir(os.path.join(root, "tmp"))) == ["a"]
