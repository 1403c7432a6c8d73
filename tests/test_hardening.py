"""Regression tests of issue 15 (hardening): behaviour a sandboxed program
or the caller relies on.

Every check runs real sandboxed processes and shows both directions; the
attack-style tests of the same issue live in
tests/escape/test_hardening_escape.py.
"""
from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from sandlock import PolicyError, Sandbox

pytestmark = pytest.mark.core


def _alive(pid: int) -> bool:
    """Is `pid` a live (not zombie) process?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Poll until `pid` is gone or a zombie (a wait, not a speed check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return not _alive(pid)


def _kill_if(pid: int | None, needle: bytes) -> None:
    """Cleanup: SIGKILL `pid` if it still runs `needle` (never a recycled pid)."""
    if pid is None or not _alive(pid):
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if needle not in f.read():
                return
        os.kill(pid, 9)
    except OSError:
        pass


def _free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unique(prefix: str = "60") -> str:
    """A sleep duration no other test or run uses: finds our processes by
    their exact command line."""
    return f"{prefix}.{os.getpid() % 1000:03d}{time.monotonic_ns() % 1000000:06d}"


# -- item 1: network calls from threads -------------------------------------------------

# Every network check the supervisor answers on the caller's behalf, run
# from the main thread, from several other threads, and from threads of a
# forked child process. A notification names the calling *thread*: the
# supervisor must find the process (thread group) behind it.
THREADS = r'''
import socket, threading
A = ARGS
def tcp(port):
    s = socket.socket()
    s.settimeout(20)
    try:
        return attempt(s.connect, ("127.0.0.1", port))
    finally:
        s.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        r = attempt(s.sendto, b"t", ("127.0.0.1", port))
        return "OK" if isinstance(r, int) else r
    finally:
        s.close()
def bind(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # threads bind the same port at once
    try:
        return attempt(s.bind, ("127.0.0.1", port))
    finally:
        s.close()
def checks():
    return {"tcp": tcp(A["tcp"]), "tcp_other": tcp(A["tcp_other"]),
            "udp": udp(A["udp"]), "udp_other": udp(A["udp_other"]),
            "bind_denied": bind(A["deny_bind"]), "bind_other": bind(0)}
def in_threads(n):
    res = [None] * n
    def run(i):
        res[i] = checks()
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts: t.start()
    for t in ts: t.join()
    return res
OUT["main"] = checks()
OUT["threads"] = in_threads(A["n"])
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    os.write(w, json.dumps(in_threads(A["n"])).encode())
    os._exit(0)
os.close(w)
data = b""
while True:
    chunk = os.read(r, 65536)
    if not chunk:
        break
    data += chunk
os.waitpid(pid, 0)
OUT["child_threads"] = json.loads(data)
'''


def test_network_calls_from_threads(py, base_readable):
    n = 4
    listeners = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        listeners.append(s)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp_other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_other.bind(("127.0.0.1", 0))
    try:
        tcp_port, tcp_other = (s.getsockname()[1] for s in listeners)
        args = dict(tcp=tcp_port, tcp_other=tcp_other, udp=udp.getsockname()[1],
                    udp_other=udp_other.getsockname()[1], deny_bind=_free_port(), n=n)
        everything = {"tcp": "OK", "tcp_other": "OK", "udp": "OK", "udp_other": "OK",
                      "bind_denied": "OK", "bind_other": "OK"}
        # Control: unconfined, every call works (the refusals below are the sandbox's).
        c = py.unconfined(THREADS, args)
        assert c["main"] == everything and c["threads"] == [everything] * n, c
        assert c["child_threads"] == [everything] * n, c

        sb = Sandbox(fs_readable=base_readable,
                     net_allow=[f"127.0.0.1:{tcp_port}", f"udp://127.0.0.1:{args['udp']}"],
                     net_deny_bind=[args["deny_bind"]])
        want = {"tcp": "OK", "tcp_other": "EACCES", "udp": "OK", "udp_other": "EACCES",
                "bind_denied": "EACCES", "bind_other": "OK"}
        out = py.sandboxed(sb, THREADS, args)
        assert out["main"] == want, out
        assert out["threads"] == [want] * n, out
        assert out["child_threads"] == [want] * n, out
        # The allowed datagrams really arrived: control + sandbox, main
        # thread and 2n threads each.
        udp.settimeout(5)
        got = 0
        try:
            while got < 2 * (1 + 2 * n):
                udp.recv(16)
                got += 1
        except TimeoutError:
            pass
        assert got == 2 * (1 + 2 * n)
    finally:
        for s in (*listeners, udp, udp_other):
            s.close()


# -- item 7: directories between a grant and a denied path -------------------------------

LIST_TREE = r'''
d = ARGS["d"]
OUT["d"] = ls(d)
OUT["sub"] = ls(d + "/sub")
OUT["secret"] = ls(d + "/sub/secret")
OUT["secret_file"] = rd(d + "/sub/secret/key")
OUT["pub"] = rd(d + "/sub/pub.txt")
OUT["top"] = rd(d + "/top.txt")
'''


def test_directories_above_a_denied_path_stay_listable(py, base_readable, world_dir):
    d = os.path.join(world_dir, "d")
    os.makedirs(os.path.join(d, "sub", "secret"))
    for path, text in (("sub/secret/key", "SECRET-KEY"), ("sub/pub.txt", "pub"), ("top.txt", "top")):
        with open(os.path.join(d, path), "w") as f:
            f.write(text)
    for root, dirs, files in os.walk(world_dir):
        for x in dirs:
            os.chmod(os.path.join(root, x), 0o755)
        for x in files:
            os.chmod(os.path.join(root, x), 0o644)
    args = {"d": d}
    c = py.unconfined(LIST_TREE, args)
    assert c["d"] == "OK:sub,top.txt" and c["sub"] == "OK:pub.txt,secret"
    assert c["secret"] == "OK:key" and c["secret_file"] == "OK:SECRET-KEY"

    sb = Sandbox(fs_readable=base_readable + [d], fs_denied=[os.path.join(d, "sub", "secret")])
    out = py.sandboxed(sb, LIST_TREE, args)
    # The directories on the way to the denied path list as they do
    # unconfined (the denied entry's name included: it is not hidden, only
    # closed)...
    assert out["d"] == c["d"] and out["sub"] == c["sub"], out
    assert out["pub"] == "OK:pub" and out["top"] == "OK:top", out
    # ...while the denied directory stays closed.
    assert out["secret"] == "EACCES" and out["secret_file"] == "EACCES", out


def test_cli_default_policy_lists_etc_but_not_etc_ssh():
    paths = [p for p in ("/etc", "/etc/ssl", "/etc/ssh") if os.path.isdir(p)]
    if "/etc/ssh" not in paths or "/etc/ssl" not in paths:
        pytest.skip("needs /etc/ssl and /etc/ssh directories")
    code = textwrap.dedent('''
        import errno, json, os, sys
        out = {}
        for p in sys.argv[1:]:
            try:
                out[p] = sorted(os.listdir(p))
            except OSError as e:
                out[p] = errno.errorcode[e.errno]
        print(json.dumps(out))
    ''')
    argv = [sys.executable, "-I", "-S", "-c", code, *paths]
    ctl = json.loads(subprocess.run(argv, capture_output=True, check=True, timeout=60).stdout)
    assert all(isinstance(v, list) for v in ctl.values()), ctl
    p = subprocess.run([sys.executable, "-m", "sandlock", "run", "--", *argv], capture_output=True,
                       timeout=60, stdin=subprocess.DEVNULL, cwd="/tmp")
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    out = json.loads(p.stdout.decode().strip().splitlines()[-1])
    assert out["/etc"] == ctl["/etc"]          # `ls /etc` works (DEFAULT_DENIED lives in it)
    assert out["/etc/ssl"] == ctl["/etc/ssl"]  # so does /etc/ssl (it holds the denied private/)
    assert out["/etc/ssh"] == "EACCES"        # the denied directory does not


# -- item 8: a dropped Process, an exiting caller ----------------------------------------

def test_dropped_process_frees_its_sandbox(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    arg = _unique()
    p = sb.popen(["sleep", arg])
    pid = p.pid
    try:
        assert _alive(pid)
        del p
        gc.collect()
        # The sandbox's process goes with its Process object...
        assert _wait_gone(pid, 10), "the dropped Process's command still runs"
        # ...and the Sandbox can run again.
        r = sb.run(["true"], timeout=60)
        assert r.success and r.exit_code == 0, r
    finally:
        _kill_if(pid, arg.encode())


def test_interpreter_exit_ends_an_unwaited_popen(base_readable):
    arg = _unique()
    code = textwrap.dedent(f'''
        from sandlock import Sandbox
        p = Sandbox(fs_readable={base_readable!r}).popen(["sleep", {arg!r}])
        print(p.pid, flush=True)
    ''')
    pid = None
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout.split()[0])
        assert _wait_gone(pid, 10), "the sleep outlived the interpreter that started it"
    finally:
        _kill_if(pid, arg.encode())


# -- item 9: a bad stdio fd is the caller's error --------------------------------------

def _closed_fd() -> int:
    for fd in range(99, 1000):
        try:
            os.fstat(fd)
        except OSError:
            return fd
    pytest.skip("no closed fd below 1000")


@pytest.mark.parametrize("stream", ["stdin", "stdout", "stderr"])
def test_popen_rejects_a_closed_stdio_fd(base_readable, stream):
    sb = Sandbox(fs_readable=base_readable)
    bad = _closed_fd()
    with pytest.raises((ValueError, PolicyError)) as info:
        sb.popen(["true"], **{stream: bad})
    msg = str(info.value)
    assert stream in msg, msg
    assert "supervisor" not in msg, msg
    # The Sandbox is not left half-started, and a valid fd works.
    with open(os.devnull, "r+b") as devnull:
        p = sb.popen(["true"], **{stream: devnull.fileno()})
        assert p.wait(timeout=60).exit_code == 0


# -- item 11: repeated bind entries ---------------------------------------------------

@pytest.mark.parametrize("spec", [["*", "*"], [8080, 8080], ["*", 8080], ["8080", 8080]])
def test_repeated_allow_bind_entries_are_accepted(base_readable, spec):
    sb = Sandbox(fs_readable=base_readable, net_allow_bind=spec)  # no PolicyError
    r = sb.run(["true"], timeout=60)
    assert r.success, r


BIND_ANY = r'''
import socket
s = socket.socket()
OUT["bind"] = attempt(s.bind, ("127.0.0.1", ARGS["port"]))
s.close()
'''


def test_star_twice_allows_every_bind(py, base_readable):
    port = _free_port()
    sb = Sandbox(fs_readable=base_readable, net_allow_bind=["*", "*"])
    assert py.sandboxed(sb, BIND_ANY, {"port": port}) == {"bind": "OK"}
    # Without the grant the same bind is refused (Landlock's bind rule).
    assert py.sandboxed(Sandbox(fs_readable=base_readable), BIND_ANY, {"port": port}) == {"bind": "EACCES"}
