"""Network calls from threads other than the main one (issue 15 item 1).

A seccomp notification names the calling thread; the supervisor takes the
socket from that thread's fd table (pidfd_open(tid, PIDFD_THREAD), then
pidfd_getfd). Each check runs from several threads of the sandboxed
process and from a thread of a forked child, and unconfined as the control.
Only loopback addresses are used.
"""
from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from sandlock import Sandbox

pytestmark = pytest.mark.core

N_THREADS = 4


class _Tcp:
    """A loopback listener answering b"pong:" + what it read to EOF."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn):
        with conn:
            conn.settimeout(30)
            data = b""
            try:
                while chunk := conn.recv(4096):
                    data += chunk
                conn.sendall(b"pong:" + data)
            except OSError:
                pass


class _Udp:
    """A loopback UDP socket answering each datagram with b"echo:" + it."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(65536)
                self.sock.sendto(b"echo:" + data, peer)
            except OSError:
                return


@pytest.fixture
def servers():
    made = []

    def make(kind):
        s = _Tcp() if kind == "tcp" else _Udp()
        made.append(s)
        return s

    yield make
    for s in made:
        s.sock.close()


def _free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def box(base_readable, **kw) -> Sandbox:
    return Sandbox(fs_readable=list(base_readable), **kw)


# Runs `work(tag)` (defined by each test's code) in the main thread, in
# N threads, and in a thread of a forked child; OUT[where] = its result.
THREADED = r'''
import socket, threading
def err(e):
    return ename(e.errno) if e.errno else type(e).__name__

def in_threads(prefix, n):
    res = {}
    def run(i):
        res[f"{prefix}{i}"] = work(f"{prefix}{i}")
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return res

def main():
    OUT["main"] = work("main")
    OUT.update(in_threads("thread", ARGS["n"]))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        res = in_threads("child_thread", 1)
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    OUT.update(json.loads(data))
'''
TAIL = "\nmain()\n"


def _expect(value) -> dict:
    keys = ["main"] + [f"thread{i}" for i in range(N_THREADS)] + ["child_thread0"]
    return {k: value(k) if callable(value) else value for k in keys}


CONNECT = r'''
def work(tag):
    out = []
    for port in (ARGS["allowed"], ARGS["denied"]):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                s.sendall(tag.encode())
                s.shutdown(socket.SHUT_WR)
                out.append(s.recv(100).decode())
        except OSError as e:
            out.append(err(e))
    return out
'''


def test_connect_from_threads(py, base_readable, servers):
    allowed, denied = servers("tcp"), servers("tcp")
    args = {"n": N_THREADS, "allowed": allowed.port, "denied": denied.port}
    code = THREADED + CONNECT + TAIL
    assert py.unconfined(code, args) == _expect(lambda k: [f"pong:{k}", f"pong:{k}"])
    sb = box(base_readable, net_allow=[f"127.0.0.1:{allowed.port}"])
    assert py.sandboxed(sb, code, args) == _expect(lambda k: [f"pong:{k}", "EACCES"])


def test_port_only_connect_from_threads(py, base_readable, servers):
    """Port-only rules: the connect is left to the kernel (Landlock)."""
    allowed, denied = servers("tcp"), servers("tcp")
    args = {"n": N_THREADS, "allowed": allowed.port, "denied": denied.port}
    code = THREADED + CONNECT + TAIL
    sb = box(base_readable, net_allow=[f":{allowed.port}"])
    assert py.sandboxed(sb, code, args) == _expect(lambda k: [f"pong:{k}", "EACCES"])


SENDTO = r'''
def work(tag):
    out = []
    for port in (ARGS["allowed"], ARGS["denied"]):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(20)
        try:
            s.sendto(tag.encode(), ("127.0.0.1", port))
            out.append(s.recv(100).decode())
        except OSError as e:
            out.append(err(e))
        finally:
            s.close()
    return out
'''


def test_udp_sendto_from_threads(py, base_readable, servers):
    allowed, denied = servers("udp"), servers("udp")
    args = {"n": N_THREADS, "allowed": allowed.port, "denied": denied.port}
    code = THREADED + SENDTO + TAIL
    assert py.unconfined(code, args) == _expect(lambda k: [f"echo:{k}", f"echo:{k}"])
    sb = box(base_readable, net_allow=[f"udp://127.0.0.1:{allowed.port}"])
    assert py.sandboxed(sb, code, args) == _expect(lambda k: [f"echo:{k}", "EACCES"])


BIND = r'''
def work(tag):
    out = []
    for kind, port in ((socket.SOCK_STREAM, 0), (socket.SOCK_STREAM, ARGS["denied"]),
                       (socket.SOCK_DGRAM, ARGS["denied"])):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind(("127.0.0.1", port))
            out.append("OK" if s.getsockname()[1] else "unbound")
        except OSError as e:
            out.append(err(e))
        finally:
            s.close()
    return out
'''


def test_bind_from_threads_with_deny_bind(py, base_readable):
    # one port free for both TCP and UDP; threads bind it one after the other
    for _ in range(50):
        port = _free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            break
        except OSError:
            continue
    args = {"n": 1, "denied": port}
    code = THREADED + BIND + TAIL
    expect_keys = ["main", "thread0", "child_thread0"]
    c = py.unconfined(code, args)
    assert c == {k: ["OK", "OK", "OK"] for k in expect_keys}
    sb = box(base_readable, net_deny_bind=[str(port)], net_allow=["udp://127.0.0.1:9"])
    v = py.sandboxed(sb, code, args)
    assert v == {k: ["OK", "EACCES", "EACCES"] for k in expect_keys}


ABSTRACT = r'''
def work(tag):
    """An abstract listener bound in this thread, reached from another;
    an autobound datagram socket answered from another thread."""
    name = ("\0" + ARGS["prefix"] + tag).encode()
    srv = socket.socket(socket.AF_UNIX)
    res = {"bind": attempt(srv.bind, name)}
    srv.listen(4)
    got = {}
    def client():
        c = socket.socket(socket.AF_UNIX)
        got["connect"] = attempt(c.connect, name)
        c.close()
    t = threading.Thread(target=client); t.start(); t.join()
    res.update(got)
    d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    res["autobind"] = attempt(d.bind, b"")
    def sender():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        got["sendto"] = attempt(lambda: s.sendto(b"x", d.getsockname()) and None)
        s.close()
    t = threading.Thread(target=sender); t.start(); t.join()
    res["sendto"] = got["sendto"]
    d.settimeout(20)
    res["recv"] = attempt(lambda: d.recv(10).decode())
    srv.close(); d.close()
    return res
'''


def test_abstract_sockets_across_threads(py, base_readable):
    args = {"n": N_THREADS, "prefix": f"sl-thr-{os.getpid()}-{time.monotonic_ns()}-"}
    code = THREADED + ABSTRACT + TAIL
    ok = {"bind": "OK", "connect": "OK", "autobind": "OK", "sendto": "OK", "recv": "x"}
    assert py.unconfined(code, args) == _expect(ok)
    args["prefix"] += "sb-"
    assert py.sandboxed(box(base_readable), code, args) == _expect(ok)


NAMED = r'''
def work(tag):
    """A named unix socket under the writable directory, from this thread."""
    path = os.path.join(ARGS["w"], tag)
    srv = socket.socket(socket.AF_UNIX)
    res = {"bind": attempt(srv.bind, path)}
    srv.listen(4)
    c = socket.socket(socket.AF_UNIX)
    res["connect"] = attempt(c.connect, path)
    c.close(); srv.close()
    os.unlink(path)
    return res
'''


def test_named_unix_sockets_from_threads(py, base_readable, world_dir):
    os.chmod(world_dir, 0o777)
    args = {"n": N_THREADS, "w": world_dir}
    code = THREADED + NAMED + TAIL
    assert py.unconfined(code, args) == _expect({"bind": "OK", "connect": "OK"})
    sb = box(base_readable, fs_writable=[world_dir])
    assert py.sandboxed(sb, code, args) == _expect({"bind": "OK", "connect": "OK"})


def test_main_thread_gone(py, base_readable, servers):
    """The group leader has exited (pthread_exit from main): a thread left
    behind still connects (its own pidfd, not the leader's)."""
    allowed = servers("tcp")
    code = r'''
import ctypes, socket, threading
def work():
    time.sleep(0.3)   # the main thread has exited by then
    try:
        with socket.create_connection(("127.0.0.1", ARGS["port"]), timeout=20) as s:
            s.sendall(b"late"); s.shutdown(socket.SHUT_WR)
            OUT["late"] = s.recv(100).decode()
    except OSError as e:
        OUT["late"] = ename(e.errno)
    print("RESULT " + json.dumps(OUT), flush=True)
    os._exit(0)
import time
threading.Thread(target=work).start()
ctypes.CDLL(None).pthread_exit(None)
'''
    args = {"port": allowed.port}
    assert py.unconfined(code, args) == {"late": "pong:late"}
    sb = box(base_readable, net_allow=[f"127.0.0.1:{allowed.port}"])
    assert py.sandboxed(sb, code, args) == {"late": "pong:late"}
