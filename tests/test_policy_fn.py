"""policy_fn: the caller's callback judges held syscalls (real processes).

Both directions each time: what the callback allows runs, what it denies
fails with the errno it chose, and a callback that fails denies.
"""
from __future__ import annotations

import socket
import sys
import threading
import time

import pytest

from sandlock import PolicyError, Sandbox

pytestmark = pytest.mark.core


def _listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    got: list[bytes] = []

    def serve():
        srv.settimeout(5)
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                data = conn.recv(100)
                if data:
                    got.append(data)
            except OSError:
                pass
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv, got


def _box(base_readable, fn, **kw):
    return Sandbox(fs_readable=base_readable, policy_fn=fn, **kw)


def test_exec_judged_by_argv(base_readable):
    seen = []

    def fn(ev, ctx):
        if ev.syscall == "execve":
            seen.append(ev.argv)
            if ev.argv[-1] == "forbidden":
                return 13  # EACCES
        return None

    r = _box(base_readable, fn).run(
        ["/bin/sh", "-c", "/bin/echo ok; /bin/echo forbidden; echo rc=$?"])
    assert r.success, r
    assert r.stdout == b"ok\nrc=126\n"
    assert b"Permission denied" in r.stderr
    assert ("/bin/echo", "ok") in seen and ("/bin/echo", "forbidden") in seen


def test_event_fields(base_readable):
    events = []

    def fn(ev, ctx):
        events.append(ev)

    r = _box(base_readable, fn).run([sys.executable, "-c", "import os; print(os.getpid(), os.getppid())"])
    assert r.success, r
    pid, _ppid = map(int, r.stdout.split())
    execs = [e for e in events if e.syscall == "execve"]
    assert execs and execs[0].category == "process" and execs[0].argv[0] == sys.executable
    assert execs[0].argv_contains("getppid")
    opens = [e for e in events if e.category == "file"]
    assert opens and all(e.pid == pid and e.argv is None for e in opens)


@pytest.mark.parametrize("bad", ["raise", "garbage"])
def test_failing_callback_denies(base_readable, bad):
    def fn(ev, ctx):
        if ev.syscall == "execve" and ev.argv[-1] == "x":
            if bad == "raise":
                raise RuntimeError("boom")
            return "yes please"
        return None

    r = _box(base_readable, fn).run(["/bin/sh", "-c", "/bin/echo x; echo rc=$?"])
    assert r.stdout == b"rc=126\n", r
    assert r.policy_errors and ("boom" in r.policy_errors[0] or "yes please" in r.policy_errors[0])


def test_slow_callback_denies(base_readable):
    srv, got = _listener()
    port = srv.getsockname()[1]

    def fn(ev, ctx):
        if ev.syscall == "connect":
            time.sleep(1.5)
        return None

    code = ("import socket,errno\ns=socket.socket()\n"
            f"try:\n s.connect(('127.0.0.1',{port})); print('connected')\n"
            "except OSError as e: print(errno.errorcode[e.errno])")
    t = time.monotonic()
    r = _box(base_readable, fn, net_allow=[f"127.0.0.1:{port}"], policy_fn_timeout=0.5).run(
        [sys.executable, "-c", code])
    assert r.stdout.strip() == b"EPERM", r
    assert time.monotonic() - t < 30
    srv.close()


def test_denied_connect_leaves_socket_unconnected(base_readable):
    srv, got = _listener()
    port = srv.getsockname()[1]

    def fn(ev, ctx):
        return True if ev.syscall == "connect" else None

    code = ("import socket,errno\ns=socket.socket()\n"
            f"try:\n s.connect(('127.0.0.1',{port}))\n"
            "except OSError as e: print(errno.errorcode[e.errno])\n"
            "try:\n s.send(b'leak'); print('sent')\n"
            "except OSError as e: print(errno.errorcode[e.errno])")
    r = _box(base_readable, fn, net_allow=[f"127.0.0.1:{port}"]).run([sys.executable, "-c", code])
    assert r.stdout.split() == [b"EPERM", b"EPIPE"] or r.stdout.split()[0] == b"EPERM", r
    assert b"sent" not in r.stdout
    time.sleep(0.3)
    assert got == []
    srv.close()


def test_allowed_connect_reaches_listener(base_readable):
    srv, got = _listener()
    port = srv.getsockname()[1]
    hosts = []

    def fn(ev, ctx):
        if ev.syscall == "connect":
            hosts.append((ev.host, ev.port, ev.category))
        return None

    code = f"import socket\ns=socket.create_connection(('127.0.0.1',{port}))\ns.send(b'hello')\ns.close()"
    r = _box(base_readable, fn, net_allow=[f"127.0.0.1:{port}"]).run([sys.executable, "-c", code])
    assert r.success, r
    time.sleep(0.3)
    assert got == [b"hello"]
    assert ("127.0.0.1", port, "network") in hosts
    srv.close()


def test_restrict_network_live(base_readable):
    srv1, _g1 = _listener()
    srv2, _g2 = _listener()
    p1, p2 = srv1.getsockname()[1], srv2.getsockname()[1]

    def fn(ev, ctx):
        if ev.syscall == "connect" and ev.port == p2:
            # applied before this connect is answered: it is refused too
            ctx.restrict_network(["127.0.0.2"])
        return None

    code = ("import socket,errno\n"
            f"for p in ({p1},{p2}):\n"
            " s=socket.socket()\n"
            " try:\n  s.connect(('127.0.0.1',p)); print('ok')\n"
            " except OSError as e: print(errno.errorcode[e.errno])\n")
    r = _box(base_readable, fn, net_allow=[f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"]).run(
        [sys.executable, "-c", code])
    assert r.stdout.split() == [b"ok", b"EACCES"], r
    srv1.close()
    srv2.close()


def test_audit_log(base_readable):
    def fn(ev, ctx):
        return "audit" if ev.syscall == "execve" else None

    r = _box(base_readable, fn).run(["/bin/sh", "-c", "/bin/true"])
    assert r.success, r
    argvs = [a["argv"] for a in r.audit]
    assert ("/bin/true",) in argvs and all(a["syscall"] == "execve" for a in r.audit)


def test_observe_only_is_not_held(base_readable):
    calls = []

    def fn(ev, ctx):
        calls.append(ev.syscall)
        return True  # ignored for observed events

    r = _box(base_readable, fn, policy_fn_events=["file"], policy_fn_observe=["file"]).run(
        [sys.executable, "-c", "open('/etc/hostname').read(); print('read')"])
    assert r.stdout == b"read\n", r
    assert "openat" in calls


def test_event_filter(base_readable):
    calls = []

    def fn(ev, ctx):
        calls.append(ev.syscall)

    r = _box(base_readable, fn, policy_fn_events=["execve"]).run(["/bin/sh", "-c", "/bin/true"])
    assert r.success
    assert set(calls) == {"execve"}


def test_deny_path(base_readable):
    def fn(ev, ctx):
        if ev.syscall == "execve" and ev.argv[0] == sys.executable:
            ctx.deny_path("/etc/hostname")
        return None

    code = ("import errno\n"
            "try:\n open('/etc/hostname'); print('opened')\n"
            "except OSError as e: print(errno.errorcode[e.errno])\n"
            "open('/etc/passwd'); print('passwd')")
    r = _box(base_readable, fn).run([sys.executable, "-c", code])
    assert r.stdout.split() == [b"EACCES", b"passwd"], r


def test_denied_exec_after_allowed_exec_in_fork_is_prompt(base_readable):
    def fn(ev, ctx):
        return True if ev.syscall == "execve" and ev.argv[-1] == "deny" else None

    code = ("import os\n"
            "for i in range(20):\n"
            " pid=os.fork()\n"
            " if pid==0:\n"
            "  try: os.execv('/bin/echo',['/bin/echo','deny'])\n"
            "  except OSError: os._exit(3)\n"
            " _,st=os.waitpid(pid,0)\n"
            " assert os.waitstatus_to_exitcode(st)==3\n"
            "print('done')")
    t = time.monotonic()
    r = _box(base_readable, fn).run([sys.executable, "-c", code], timeout=60)
    assert r.stdout == b"done\n", r
    assert time.monotonic() - t < 60


def test_policy_fn_needs_the_supervisor(base_readable):
    with pytest.raises(PolicyError, match="policy_fn"):
        Sandbox(fs_readable=base_readable, policy_fn=lambda e, c: None, no_supervisor=True)


@pytest.mark.parametrize("kw", [{"policy_fn_events": ["nosuch"]}, {"policy_fn_events": "file"},
                                {"policy_fn_timeout": 0}, {"policy_fn_timeout": True},
                                {"policy_fn": 3}])
def test_bad_settings(base_readable, kw):
    kw = {"policy_fn": lambda e, c: None, **kw}
    with pytest.raises(PolicyError):
        Sandbox(fs_readable=base_readable, **kw)


def test_settings_without_policy_fn_refused(base_readable):
    with pytest.raises(PolicyError, match="need a policy_fn"):
        Sandbox(fs_readable=base_readable, policy_fn_timeout=2)


def test_context_methods_check_values(base_readable):
    errors = []

    def fn(ev, ctx):
        for call in (lambda: ctx.restrict_network("1.2.3.4"), lambda: ctx.restrict_max_memory(-1),
                     lambda: ctx.restrict_max_memory(1 << 20), lambda: ctx.deny_path("rel"),
                     lambda: ctx.restrict_pid_network(True, [])):
            try:
                call()
            except PolicyError as e:
                errors.append(str(e))
        return None

    r = _box(base_readable, fn, policy_fn_events=["execve"]).run(["/bin/true"])
    assert r.success, r
    assert len(errors) == 5 and "no max_memory limit" in errors[2]


def test_default_timeout_denies_a_6s_callback(base_readable):
    """No policy_fn_timeout: the default (5 s) applies."""
    def fn(ev, ctx):
        if ev.syscall == "execve" and ev.argv[-1] == "slow":
            time.sleep(6)
        return None

    r = _box(base_readable, fn, policy_fn_events=["execve"]).run(
        ["/bin/sh", "-c", "/bin/echo slow; echo rc=$?"], timeout=60)
    assert r.stdout == b"rc=126\n", r
    assert r.policy_errors == []  # denied by the timeout, not by a failing callback


def test_task_memo_holds_a_bounded_number_of_fds():
    """The per-task memo (pidfds) must not eat the supervisor's fds: an
    ordinary user may have 1024 in all (it once held two per task seen,
    and a 1,000-exec run ended the sandbox with EMFILE)."""
    import os
    import subprocess

    from sandlock.supervisor.processes import TaskMemo

    memo = TaskMemo()
    before = len(os.listdir("/proc/self/fd"))
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(3 * TaskMemo.LIMIT)]
    try:
        for p in procs:
            assert memo.get(p.pid, lambda t: (t, (os.getpid(),))) == p.pid
        assert len(os.listdir("/proc/self/fd")) - before <= 2 * TaskMemo.LIMIT
    finally:
        memo.clear()
        for p in procs:
            p.kill()
            p.wait()
    assert len(os.listdir("/proc/self/fd")) <= before


def test_errno_1_is_a_verdict_not_an_error(base_readable):
    """1 is EPERM by the positive-errno rule: denied, and not reported as a
    bad answer (it once was)."""
    def fn(ev, ctx):
        return 1 if ev.syscall == "execve" and ev.argv[-1] == "x" else None

    r = _box(base_readable, fn, policy_fn_events=["execve"]).run(["/bin/sh", "-c", "/bin/echo x; echo rc=$?"])
    assert r.stdout == b"rc=126\n", r
    assert r.policy_errors == []
