"""Network policy against live loopback listeners started by the test.

Every sandboxed check is paired with the same check unconfined (the
control), so a refusal proves the sandbox and not a dead listener. Only
loopback addresses (127.0.0.0/8, ::1) are ever used as targets.
"""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from sandlock import PolicyError, Sandbox

IS_ROOT = os.geteuid() == 0


# -- listeners run by the test -------------------------------------------------------------

def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _wait(pred, timeout: float = 10.0) -> bool:
    """Poll `pred` until it holds (a wait, never a speed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


class StreamServer:
    """A listening stream socket; a thread accepts, reads each connection to
    EOF and answers b"pong:" + what it read (mode "echo") or the hex SHA-256
    of it (mode "sha256"). Counts accepted connections."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, dual: bool = False,
                 mode: str = "echo", family: int | None = None):
        family = family or _family(host)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
        self.sock.bind(host if family == socket.AF_UNIX else (host, port))
        self.sock.listen(512)
        self.host = host
        self.port = None if family == socket.AF_UNIX else self.sock.getsockname()[1]
        self.mode = mode
        self.accepted = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _peer = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(60)
            digest, data = hashlib.sha256(), bytearray()
            while True:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                if self.mode == "sha256":
                    digest.update(chunk)
                else:
                    data += chunk
            conn.sendall(digest.hexdigest().encode() if self.mode == "sha256" else b"pong:" + data)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


class UdpServer:
    """A UDP socket answering each datagram with b"echo:" + payload, and
    counting them."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        family = _family(host)
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.received: list[bytes] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65536)
            except OSError:
                return
            self.received.append(data)
            try:
                self.sock.sendto(b"echo:" + data, peer)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def servers():
    """Factory for listeners that are closed after the test."""
    made = []

    def make(kind: str = "tcp", *a, **kw):
        s = (StreamServer if kind == "tcp" else UdpServer)(*a, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    with socket.socket(_family(host), kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tcp_and_udp_on_one_port(make):
    """A TCP and a UDP server on the same port number of 127.0.0.1."""
    for _ in range(50):
        t = make("tcp")
        try:
            return t, make("udp", "127.0.0.1", t.port)
        except OSError:
            t.close()
    pytest.fail("no port free for both TCP and UDP")


@pytest.fixture
def sb(base_readable):
    """Factory: a Sandbox that can run sys.executable, plus network fields."""
    def make(**kw) -> Sandbox:
        return Sandbox(fs_readable=list(base_readable) + list(kw.pop("fs_readable", [])), **kw)
    return make


# -- the code run inside (after tests/conftest.py's PyProbe prelude) ------------------------

NET = r'''
import ctypes, select, socket, struct
libc = ctypes.CDLL(None, use_errno=True)

def fam(h):
    return socket.AF_INET6 if ":" in h else socket.AF_INET

def err(e):
    return ename(e.errno) if e.errno else type(e).__name__

def tcp(h, p, family=None, data="ping"):
    """Blocking connect, send `data`, half-close, read the answer."""
    try:
        s = socket.socket(family or fam(h), socket.SOCK_STREAM)
    except OSError as e:
        return "socket:" + err(e)
    try:
        s.connect((h, p))
        s.sendall(data.encode())
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return "OK:" + got.decode()
    except OSError as e:
        return err(e)
    finally:
        s.close()

def udp(h, p, family=None, data="ping", how="sendto"):
    """Send one datagram (sendto, connect+send or sendmsg); read the echo."""
    try:
        s = socket.socket(family or fam(h), socket.SOCK_DGRAM)
    except OSError as e:
        return "socket:" + err(e)
    try:
        s.settimeout(20)
        b = data.encode()
        if how == "sendto":
            s.sendto(b, (h, p))
        elif how == "connect":
            s.connect((h, p))
            s.send(b)
        elif how == "sendmsg":
            s.sendmsg([b], [], 0, (h, p))
        return "OK:" + s.recv(65536).decode()
    except OSError as e:
        return err(e)
    finally:
        s.close()

def sockaddr(h, p):
    if ":" in h:
        return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", p, 0)
                + socket.inet_pton(socket.AF_INET6, h) + struct.pack("=I", 0))
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", p) + socket.inet_aton(h) + bytes(8)

class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]

class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]

libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]

def udp_sendmmsg(h, p, payloads):
    """sendmmsg of several datagrams to h:p: (count sent, msg_len of each,
    echoes read back) or the errno name."""
    s = socket.socket(fam(h), socket.SOCK_DGRAM)
    s.settimeout(20)
    keep = []
    vec = (mmsghdr * len(payloads))()
    for i, data in enumerate(payloads):
        name = ctypes.create_string_buffer(sockaddr(h, p))
        buf = ctypes.create_string_buffer(data.encode())
        iov = iovec(ctypes.addressof(buf), len(data))
        keep += [name, buf, iov]
        vec[i].hdr.name = ctypes.addressof(name)
        vec[i].hdr.namelen = len(name.raw)
        vec[i].hdr.iov = ctypes.addressof(iov)
        vec[i].hdr.iovlen = 1
    n = libc.sendmmsg(s.fileno(), ctypes.addressof(vec), len(payloads), 0)
    if n < 0:
        e = ctypes.get_errno()
        s.close()
        return ename(e)
    echoes = sorted(s.recv(65536).decode() for _ in range(n))
    s.close()
    return [n, [vec[i].len for i in range(len(payloads))], echoes]
'''


def probe(py, sb_or_none, code: str, args: dict) -> dict:
    """Run NET + code in the sandbox, or unconfined when sb_or_none is None."""
    if sb_or_none is None:
        return py.unconfined(NET + code, args)
    return py.sandboxed(sb_or_none, NET + code, args)


# -- defaults ---------------------------------------------------------------------------------

DEFAULTS = r'''
OUT["tcp4"] = tcp("127.0.0.1", ARGS["tcp4"])
OUT["tcp6"] = tcp("::1", ARGS["tcp6"])
OUT["udp"] = udp("127.0.0.1", ARGS["udp"])
OUT["udp6_socket"] = attempt(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close())
a, b = socket.socketpair()
a.sendall(b"over the pair")
OUT["socketpair"] = b.recv(100).decode()
'''


def test_default_no_network(py, sb, servers):
    t4, t6, u = servers("tcp"), servers("tcp", "::1"), servers("udp")
    args = {"tcp4": t4.port, "tcp6": t6.port, "udp": u.port}
    assert probe(py, None, DEFAULTS, args) == {
        "tcp4": "OK:pong:ping", "tcp6": "OK:pong:ping", "udp": "OK:echo:ping",
        "udp6_socket": "OK", "socketpair": "over the pair"}
    assert probe(py, sb(), DEFAULTS, args) == {
        "tcp4": "EACCES", "tcp6": "EACCES", "udp": "socket:EPERM",
        "udp6_socket": "EPERM", "socketpair": "over the pair"}


# -- one address, one port ---------------------------------------------------------------------

TARGETS = r'''
for key, (h, p, family) in ARGS["targets"].items():
    OUT[key] = tcp(h, p, getattr(socket, family) if family else None)
'''


def _targets(**kw) -> dict:
    return {"targets": {k: list(v) + [None] * (3 - len(v)) for k, v in kw.items()}}


def test_allow_one_ipv4_address_and_port(py, sb, servers):
    srv = servers("tcp", "0.0.0.0")     # 127.0.0.2 answers too, unconfined
    other = servers("tcp")
    args = _targets(allowed=("127.0.0.1", srv.port),
                    other_address=("127.0.0.2", srv.port),
                    other_port=("127.0.0.1", other.port),
                    mapped_allowed=("::ffff:127.0.0.1", srv.port, "AF_INET6"),
                    mapped_other=("::ffff:127.0.0.2", srv.port, "AF_INET6"),
                    unspecified=("0.0.0.0", srv.port))
    assert set(probe(py, None, TARGETS, args).values()) == {"OK:pong:ping"}
    assert probe(py, sb(net_allow=[f"127.0.0.1:{srv.port}"]), TARGETS, args) == {
        "allowed": "OK:pong:ping", "other_address": "EACCES", "other_port": "EACCES",
        # 0.0.0.0 goes to loopback (the socket is unbound): judged as 127.0.0.1.
        "mapped_allowed": "OK:pong:ping", "mapped_other": "EACCES", "unspecified": "OK:pong:ping"}


def test_allow_ipv6_address(py, sb, servers):
    srv = servers("tcp", "::", dual=True)   # answers on ::1 and on IPv4 loopback
    other = servers("tcp", "::1")
    args = _targets(v6=("::1", srv.port), v6_other_port=("::1", other.port),
                    v4=("127.0.0.1", srv.port), mapped=("::ffff:127.0.0.1", srv.port, "AF_INET6"))
    assert set(probe(py, None, TARGETS, args).values()) == {"OK:pong:ping"}
    assert probe(py, sb(net_allow=[f"[::1]:{srv.port}"]), TARGETS, args) == {
        "v6": "OK:pong:ping", "v6_other_port": "EACCES", "v4": "EACCES", "mapped": "EACCES"}
    # and an IPv4 rule does not open ::1
    assert probe(py, sb(net_allow=[f"127.0.0.1:{srv.port}"]), TARGETS, args) == {
        "v6": "EACCES", "v6_other_port": "EACCES", "v4": "OK:pong:ping", "mapped": "OK:pong:ping"}


# -- connect modes ------------------------------------------------------------------------------

CONNECT_MODES = r'''
import errno
def nonblocking(p):
    s = socket.socket()
    s.setblocking(False)
    first = s.connect_ex(("127.0.0.1", p))
    if first == errno.EINPROGRESS:
        select.select([], [s], [], 20)
        second = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    else:
        second = None
    res = [ename(first) if first else "OK", (ename(second) if second else "OK") if second is not None else None]
    if res[-1] == "OK" or (first == 0):
        s.setblocking(True)
        s.sendall(b"nb")
        s.shutdown(socket.SHUT_WR)
        res.append(s.recv(100).decode())
    s.close()
    return res
OUT["blocking"] = tcp("127.0.0.1", ARGS["open"], data="blk")
OUT["nonblocking"] = nonblocking(ARGS["open"])
OUT["closed_blocking"] = tcp("127.0.0.1", ARGS["closed"])
nb = nonblocking(ARGS["closed"])
# a refused non-blocking connect reports ECONNREFUSED now or through SO_ERROR
OUT["closed_nonblocking"] = nb[0] if nb[0] != "EINPROGRESS" else nb[1]
'''


def test_blocking_nonblocking_and_refused_connects(py, sb, servers):
    srv = servers("tcp")
    closed = free_port()
    args = {"open": srv.port, "closed": closed}
    expected = {"blocking": "OK:pong:blk", "nonblocking": ["EINPROGRESS", "OK", "pong:nb"],
                "closed_blocking": "ECONNREFUSED", "closed_nonblocking": "ECONNREFUSED"}
    assert probe(py, None, CONNECT_MODES, args) == expected
    box = sb(net_allow=[f"127.0.0.1:{srv.port},{closed}"])
    assert probe(py, box, CONNECT_MODES, args) == expected


# -- schemes and UDP ---------------------------------------------------------------------------

PROTOCOLS = r"""
p, q = ARGS["p"], ARGS["q"]
OUT["tcp"] = tcp("127.0.0.1", p)
OUT["udp"] = udp("127.0.0.1", p, how="connect")
OUT["udp_other_port"] = udp("127.0.0.1", q, how="connect")
"""


def test_schemes(py, sb, servers):
    t, u = tcp_and_udp_on_one_port(servers)
    other = servers("udp")
    args = {"p": t.port, "q": other.port}
    assert probe(py, None, PROTOCOLS, args) == {
        "tcp": "OK:pong:ping", "udp": "OK:echo:ping", "udp_other_port": "OK:echo:ping"}
    p = t.port
    assert probe(py, sb(net_allow=[f"tcp://127.0.0.1:{p}"]), PROTOCOLS, args) == {
        "tcp": "OK:pong:ping", "udp": "socket:EPERM", "udp_other_port": "socket:EPERM"}
    assert probe(py, sb(net_allow=[f"udp://127.0.0.1:{p}"]), PROTOCOLS, args) == {
        "tcp": "EACCES", "udp": "OK:echo:ping", "udp_other_port": "EACCES"}
    assert probe(py, sb(net_allow=[f"127.0.0.1:{p}"]), PROTOCOLS, args) == {
        "tcp": "OK:pong:ping", "udp": "OK:echo:ping", "udp_other_port": "EACCES"}
    # the scheme is case-insensitive; an IPv6 UDP rule
    u6 = servers("udp", "::1")
    code = 'OUT["v6"] = udp("::1", ARGS["p"], how="connect"); OUT["v4"] = udp("127.0.0.1", ARGS["p4"], how="connect")'
    assert probe(py, sb(net_allow=[f"UDP://[::1]:{u6.port}"]), code, {"p": u6.port, "p4": p}) == {
        "v6": "OK:echo:ping", "v4": "EACCES"}


SENDTO = r"""
p, q = ARGS["p"], ARGS["q"]
OUT["sendto"] = udp("127.0.0.1", p)
OUT["sendto_other_port"] = udp("127.0.0.1", q)
OUT["sendto_v6"] = udp("::1", ARGS["p6"])
OUT["sendto_mapped"] = udp("::ffff:127.0.0.1", p, socket.AF_INET6)
OUT["sendto_mapped_other"] = udp("::ffff:127.0.0.2", p, socket.AF_INET6)
"""

SENDTO_BUG = (
    "BUG: supervisor/network.py on_sendto passes its arguments to _send in the wrong "
    "order (flags where the sockaddr goes: `self._send(ctx, sock, [data], [], "
    "ctx.args[3], raw)`); _inet_target then unpacks an int, raises TypeError, and every "
    "addressed UDP sendto is denied EPERM")


def test_udp_sendto(py, sb, servers):
    srv, other = servers("udp", "0.0.0.0"), servers("udp")
    v6 = servers("udp", "::1")
    args = {"p": srv.port, "q": other.port, "p6": v6.port}
    assert set(probe(py, None, SENDTO, args).values()) == {"OK:echo:ping"}
    assert probe(py, sb(net_allow=[f"udp://127.0.0.1:{srv.port}", f"udp://[::1]:{v6.port}"]),
                 SENDTO, args) == {
        "sendto": "OK:echo:ping", "sendto_other_port": "EACCES", "sendto_v6": "OK:echo:ping",
        "sendto_mapped": "OK:echo:ping", "sendto_mapped_other": "EACCES"}


SENDMSG = r'''
p, q = ARGS["p"], ARGS["q"]
OUT["sendmsg"] = udp("127.0.0.1", p, data="m1", how="sendmsg")
OUT["sendmsg_other"] = udp("127.0.0.1", q, how="sendmsg")
OUT["sendmmsg"] = udp_sendmmsg("127.0.0.1", p, ["a", "bb", "ccc"])
OUT["sendmmsg_other"] = udp_sendmmsg("127.0.0.1", q, ["a"])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(20)
s.connect(("127.0.0.1", p))
def connected_sendmsg():
    s.sendmsg([b"con", b"nected"])
    return s.recv(100).decode()
OUT["connected_sendmsg"] = attempt(connected_sendmsg)
'''


def test_udp_sendmsg_and_sendmmsg(py, sb, servers):
    srv, other = servers("udp"), servers("udp")
    args = {"p": srv.port, "q": other.port}
    ok = {"sendmsg": "OK:echo:m1", "sendmsg_other": "OK:echo:ping",
          "sendmmsg": [3, [1, 2, 3], ["echo:a", "echo:bb", "echo:ccc"]],
          "sendmmsg_other": [1, [1], ["echo:a"]], "connected_sendmsg": "echo:connected"}
    assert probe(py, None, SENDMSG, args) == ok
    assert probe(py, sb(net_allow=[f"udp://127.0.0.1:{srv.port}"]), SENDMSG, args) == dict(
        ok, sendmsg_other="EACCES", sendmmsg_other="EACCES")


STREAM_SENDMSG = r'''
def over_tcp():
    s = socket.create_connection(("127.0.0.1", ARGS["p"]))
    s.sendmsg([b"via ", b"sendmsg"])
    s.shutdown(socket.SHUT_WR)
    return s.recv(100).decode()
OUT["tcp"] = attempt(over_tcp)
def fds_over_unix():
    a, b = socket.socketpair()
    r, w = os.pipe()
    socket.send_fds(a, [b"fd"], [w])
    msg, fds, _flags, _addr = socket.recv_fds(b, 10, 1)
    os.write(fds[0], b"through the passed fd")
    return os.read(r, 100).decode()
OUT["unix_fds"] = attempt(fds_over_unix)
def dgram_pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.sendmsg([b"dgram"])
    return b.recv(100).decode()
OUT["unix_dgram"] = attempt(dgram_pair)
'''


def test_sendmsg_on_connected_and_unix_sockets(py, sb, servers):
    srv = servers("tcp")
    args = {"p": srv.port}
    ok = {"tcp": "pong:via sendmsg", "unix_fds": "through the passed fd", "unix_dgram": "dgram"}
    assert probe(py, None, STREAM_SENDMSG, args) == ok
    assert probe(py, sb(net_allow=[f"127.0.0.1:{srv.port}"]), STREAM_SENDMSG, args) == ok


# -- hostnames ---------------------------------------------------------------------------------

HOSTS = r'''
OUT["hosts"] = rd("/etc/hosts")
OUT["resolved"] = attempt(lambda: sorted({ai[4][0] for ai in socket.getaddrinfo("localhost", ARGS["p"])}))
for key, (h, p, family) in ARGS["targets"].items():
    OUT[key] = tcp(h, p)
'''


def _hosts_map(text: str) -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].split()
        if len(line) >= 2:
            for name in line[1:]:
                names.setdefault(name, set()).add(line[0])
    return names


def test_hostname_rule_is_pinned(py, sb, servers):
    srv = servers("tcp", "::", dual=True)
    pinned = sorted({ai[4][0] for ai in socket.getaddrinfo("localhost", None)})
    targets = {"pinned_" + a.replace(":", "_").replace(".", "_"): (a, srv.port) for a in pinned}
    args = dict(_targets(other_address=("127.0.0.2", srv.port), **targets), p=srv.port)
    control = probe(py, None, HOSTS, args)
    with open("/etc/hosts") as f:
        real = f.read()
    assert control["hosts"] == "OK:" + real
    box = probe(py, sb(net_allow=[f"localhost:{srv.port}"]), HOSTS, args)
    assert box.pop("other_address") == "EACCES" and control.pop("other_address") == "OK:pong:ping"
    for key in list(control):
        if key.startswith("pinned_"):
            assert control.pop(key) == box.pop(key) == "OK:pong:ping", key
    # the sandbox sees a synthetic /etc/hosts: localhost's pinned addresses, and no
    # other name the real file holds
    assert box["hosts"].startswith("OK:")
    synthetic = _hosts_map(box["hosts"][3:])
    assert set(pinned) <= synthetic["localhost"]
    assert set(synthetic) <= {"localhost", "ip6-localhost"}, box["hosts"]
    # (the fixed header lines of the synthetic file may name ::1 too)
    assert set(box["resolved"]) <= set(synthetic["localhost"])


def test_unresolvable_hostname_is_a_policy_error(sb):
    with pytest.raises(PolicyError, match="no-such-host.invalid"):
        sb(net_allow=["no-such-host.invalid:80"]).run([sys.executable, "-c", "pass"])


# -- CIDRs, port lists, any address, net_deny ------------------------------------------------

def test_cidr_rule(py, sb, servers):
    srv = servers("tcp", "0.0.0.0")
    args = _targets(**{f"a{i}": (f"127.0.0.{i}", srv.port) for i in range(1, 6)})
    assert set(probe(py, None, TARGETS, args).values()) == {"OK:pong:ping"}
    # 127.0.0.0/30 is .0 to .3
    assert probe(py, sb(net_allow=[f"127.0.0.0/30:{srv.port}"]), TARGETS, args) == {
        "a1": "OK:pong:ping", "a2": "OK:pong:ping", "a3": "OK:pong:ping",
        "a4": "EACCES", "a5": "EACCES"}


def _consecutive_servers(make, n: int):
    for _ in range(100):
        first = make("tcp")
        group = [first]
        try:
            for i in range(1, n):
                group.append(make("tcp", "127.0.0.1", first.port + i))
            return group
        except OSError:
            for s in group:
                s.close()
    pytest.fail(f"no {n} consecutive free ports")


def test_port_lists_and_ranges(py, sb, servers):
    a, b, c, d = _consecutive_servers(servers, 4)
    args = _targets(a=("127.0.0.1", a.port), b=("127.0.0.1", b.port), c=("127.0.0.1", c.port),
                    d=("127.0.0.1", d.port))
    assert set(probe(py, None, TARGETS, args).values()) == {"OK:pong:ping"}
    ok, no = "OK:pong:ping", "EACCES"
    assert probe(py, sb(net_allow=[f"127.0.0.1:{a.port},{c.port}"]), TARGETS, args) == {
        "a": ok, "b": no, "c": ok, "d": no}
    assert probe(py, sb(net_allow=[f"127.0.0.1:{a.port}-{c.port}"]), TARGETS, args) == {
        "a": ok, "b": ok, "c": ok, "d": no}
    assert probe(py, sb(net_allow=[f"127.0.0.1:{b.port}", f"127.0.0.1:{d.port}"]),
                 TARGETS, args) == {"a": no, "b": ok, "c": no, "d": ok}
    assert probe(py, sb(net_allow=["127.0.0.1"]), TARGETS, args) == {
        "a": ok, "b": ok, "c": ok, "d": ok}


@pytest.mark.parametrize("rule", ["*:{p}", ":{p}"])
def test_any_address_rule(py, sb, servers, rule):
    srv = servers("tcp", "::", dual=True)
    other = servers("tcp")
    args = _targets(v4=("127.0.0.1", srv.port), v4b=("127.0.0.3", srv.port), v6=("::1", srv.port),
                    other_port=("127.0.0.1", other.port))
    assert set(probe(py, None, TARGETS, args).values()) == {"OK:pong:ping"}
    assert probe(py, sb(net_allow=[rule.format(p=srv.port)]), TARGETS, args) == {
        "v4": "OK:pong:ping", "v4b": "OK:pong:ping", "v6": "OK:pong:ping", "other_port": "EACCES"}


DENY = r'''
for key, (h, p, family) in ARGS["targets"].items():
    OUT[key] = tcp(h, p, getattr(socket, family) if family else None)
OUT["udp_allowed"] = udp("127.0.0.1", ARGS["udp"], how="connect")
OUT["udp_denied"] = udp("127.0.0.2", ARGS["udp2"], how="connect")
'''


def test_net_deny(py, sb, servers):
    srv = servers("tcp", "::", dual=True)
    u, u2 = servers("udp"), servers("udp", "127.0.0.2")   # (a connected UDP socket
    args = dict(_targets(v4=("127.0.0.1", srv.port), denied=("127.0.0.2", srv.port),  # needs
                         denied_mapped=("::ffff:127.0.0.2", srv.port, "AF_INET6"),    # replies
                         v6=("::1", srv.port)), udp=u.port, udp2=u2.port)      # from its peer)
    assert set(probe(py, None, DENY, args).values()) == {"OK:pong:ping", "OK:echo:ping"}
    assert probe(py, sb(net_deny=["127.0.0.2"]), DENY, args) == {
        "v4": "OK:pong:ping", "denied": "EACCES", "denied_mapped": "EACCES", "v6": "OK:pong:ping",
        "udp_allowed": "OK:echo:ping", "udp_denied": "EACCES"}


def test_net_allow_and_net_deny_are_exclusive(sb):
    with pytest.raises(PolicyError):
        sb(net_allow=["127.0.0.1:80"], net_deny=["127.0.0.2"]).run([sys.executable, "-c", "pass"])


# -- connected sockets are not trapped ---------------------------------------------------------

BULK = r'''
import hashlib
block = bytes(range(256)) * 4096          # 1 MiB
digest = hashlib.sha256()
s = socket.create_connection(("127.0.0.1", ARGS["p"]))
for i in range(64):
    chunk = bytes([i]) + block[1:]
    digest.update(chunk)
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR)
answer = b""
while True:
    c = s.recv(1000)
    if not c:
        break
    answer += c
OUT["sent"] = digest.hexdigest()
OUT["received"] = answer.decode()
'''


def test_bulk_transfer_intact(py, sb, servers):
    srv = servers("tcp", mode="sha256")
    out = probe(py, sb(net_allow=[f"127.0.0.1:{srv.port}"]), BULK, {"p": srv.port})
    assert out["sent"] == out["received"] and len(out["sent"]) == 64


# -- binds -------------------------------------------------------------------------------------

BIND = r'''
for key, (p, kind) in ARGS["ports"].items():
    s = socket.socket(socket.AF_INET, getattr(socket, kind))
    OUT[key] = attempt(s.bind, ("127.0.0.1", p))
    s.close()
'''


def _two_free_ports() -> tuple[int, int]:
    a = free_port()
    b = free_port()
    while b == a:
        b = free_port()
    return a, b


def test_net_allow_bind(py, sb):
    p, q = _two_free_ports()
    args = {"ports": {"p": [p, "SOCK_STREAM"], "q": [q, "SOCK_STREAM"]}}
    assert probe(py, None, BIND, args) == {"p": "OK", "q": "OK"}
    assert probe(py, sb(), BIND, args) == {"p": "EACCES", "q": "EACCES"}
    assert probe(py, sb(net_allow_bind=[str(p)]), BIND, args) == {"p": "OK", "q": "EACCES"}
    assert probe(py, sb(net_allow_bind=["*"]), BIND, args) == {"p": "OK", "q": "OK"}


def test_net_deny_bind_with_allow_all(py, sb):
    p, q = _two_free_ports()
    args = {"ports": {"p": [p, "SOCK_STREAM"], "q": [q, "SOCK_STREAM"]}}
    assert probe(py, sb(net_allow_bind=["*"], net_deny_bind=[str(p)]), BIND, args) == {
        "p": "EACCES", "q": "OK"}
    # a deny wins over an allow of the same port
    assert probe(py, sb(net_allow_bind=[str(p), str(q)], net_deny_bind=[str(p)]), BIND, args) == {
        "p": "EACCES", "q": "OK"}


def test_net_deny_bind_alone(py, sb):
    p, q = _two_free_ports()
    args = {"ports": {"p": [p, "SOCK_STREAM"], "q": [q, "SOCK_STREAM"]}}
    assert probe(py, sb(net_deny_bind=[str(p)]), BIND, args) == {"p": "EACCES", "q": "OK"}


def _free_privileged_port() -> int:
    for port in range(1023, 900, -1):
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
        except PermissionError:
            return port          # not root: the control below proves nothing, still a port
        except OSError:
            continue
        return port
    pytest.skip("no free port below 1024")


@pytest.mark.parametrize("fields", [
    {"net_allow_bind": ["*"]},
    {"net_allow_bind": ["{low}"]},
    {"net_allow_bind": ["*"], "net_deny_bind": ["{other}"]},
    {"net_allow_bind": ["{low}"], "port_remap": True},
], ids=["allow_all", "allow_port", "on_behalf_bind", "port_remap"])
def test_privileged_ports_refused(py, sb, fields):
    low = _free_privileged_port()
    other = free_port()
    fields = {k: ([x.format(low=low, other=other) for x in v] if isinstance(v, list) else v)
              for k, v in fields.items()}
    args = {"ports": {"low": [low, "SOCK_STREAM"]}}
    control = probe(py, None, BIND, args)
    assert control == {"low": "OK" if IS_ROOT else "EACCES"}
    assert probe(py, sb(**fields), BIND, args) == {"low": "EACCES"}


# -- port_remap --------------------------------------------------------------------------------

REMAP = r'''
import sys
p = ARGS["p"]
srv = socket.socket()
OUT["bind"] = attempt(srv.bind, ("127.0.0.1", p))
srv.listen(8)
OUT["getsockname"] = srv.getsockname()[1]
# a connection to the virtual port reaches this sandbox's own server
c = socket.socket()
OUT["self_connect"] = attempt(c.connect, ("127.0.0.1", p))
conn, _ = srv.accept()
c.sendall(b"to myself")
OUT["self_data"] = conn.recv(100).decode()
OUT["accepted_sockname"] = conn.getsockname()[1]
conn.close(); c.close()
print("RESULT " + json.dumps(OUT), flush=True)
# then one connection from the test, through the real port
conn, _ = srv.accept()
conn.sendall(ARGS["tag"].encode())
conn.close()
sys.stdin.read()
'''


def test_port_remap(py, sb, servers):
    occupied = servers("tcp")           # the host's own holder of port P
    p = occupied.port
    boxes = [sb(net_allow_bind=[str(p)], net_allow=[f"127.0.0.1:{p}"], port_remap=True)
             for _ in range(2)]
    procs, reals = [], []
    try:
        for i, box in enumerate(boxes):
            proc = box.popen(py.argv(NET + REMAP, {"p": p, "tag": f"sandbox-{i}"}),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            procs.append(proc)
            line = proc.stdout.readline()
            out = py.parse(line)
            assert out == {"bind": "OK", "getsockname": p, "self_connect": "OK",
                           "self_data": "to myself", "accepted_sockname": p}, line
            assert _wait(lambda box=box: p in box.ports()), box.ports()
            real = box.ports()[p]
            assert real != p
            reals.append(real)
            with socket.create_connection(("127.0.0.1", real)) as c:
                assert c.recv(100) == f"sandbox-{i}".encode()
        assert reals[0] != reals[1]
        assert occupied.accepted == 0   # no sandbox connection reached the host's port P
    finally:
        for proc in procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
            proc.wait(timeout=30)


def test_port_remap_free_port_keeps_its_number(py, sb):
    p = free_port()
    code = '''
s = socket.socket()
OUT["bind"] = attempt(s.bind, ("127.0.0.1", ARGS["p"]))
OUT["port"] = s.getsockname()[1]
'''
    assert probe(py, sb(net_allow_bind=[str(p)], port_remap=True), code, {"p": p}) == {
        "bind": "OK", "port": p}


# -- named unix sockets --------------------------------------------------------------------------

UNIX = r'''
def unix(path, relative_to=None):
    s = socket.socket(socket.AF_UNIX)
    try:
        if relative_to:
            os.chdir(relative_to)
        s.connect(path)
        s.sendall(b"hi")
        s.shutdown(socket.SHUT_WR)
        return "OK:" + s.recv(100).decode()
    except OSError as e:
        return err(e)
    finally:
        s.close()
for key, path in ARGS["paths"].items():
    OUT[key] = unix(path)
OUT["relative"] = unix("s", ARGS["w"])
'''


def test_named_unix_sockets(py, sb, servers, world_dir):
    dirs = {name: os.path.join(world_dir, name) for name in ("w", "ro", "hidden")}
    paths = {}
    for name, d in dirs.items():
        os.mkdir(d)
        os.chmod(d, 0o777)
        path = os.path.join(d, "s")
        servers("tcp", path, family=socket.AF_UNIX)
        os.chmod(path, 0o777)
        paths[name] = path
    args = {"paths": paths, "w": dirs["w"]}
    assert probe(py, None, UNIX, args) == {"w": "OK:pong:hi", "ro": "OK:pong:hi",
                                           "hidden": "OK:pong:hi", "relative": "OK:pong:hi"}
    box = sb(fs_writable=[dirs["w"]], fs_readable=[dirs["ro"]])
    assert probe(py, box, UNIX, args) == {"w": "OK:pong:hi", "ro": "EACCES",
                                          "hidden": "EACCES", "relative": "OK:pong:hi"}


ABSTRACT_INSIDE = r'''
for key, name in ARGS["names"].items():
    name = name.encode("latin-1")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(name)
    srv.listen(1)
    c = socket.socket(socket.AF_UNIX)
    OUT[key] = attempt(c.connect, name)
    c.close(); srv.close()
'''


def test_abstract_socket_of_the_sandbox_itself(py, sb):
    tag = f"sl-net-{os.getpid()}-{time.monotonic_ns()}"
    args = {"names": {"plain": f"\0{tag}"}}
    assert probe(py, None, ABSTRACT_INSIDE, args) == {"plain": "OK"}
    assert probe(py, sb(), ABSTRACT_INSIDE, args) == {"plain": "OK"}


def test_abstract_socket_of_the_sandbox_itself_odd_names(py, sb):
    tag = f"sl-net-{os.getpid()}-{time.monotonic_ns()}"
    args = {"names": {"space": f"\0{tag} with space", "high_byte": f"\0{tag}-\xe9"}}
    assert probe(py, None, ABSTRACT_INSIDE, args) == {"space": "OK", "high_byte": "OK"}
    assert probe(py, sb(), ABSTRACT_INSIDE, args) == {"space": "OK", "high_byte": "OK"}


# -- command line --------------------------------------------------------------------------------

def test_cli_net_allow(base_readable, servers):
    srv = servers("tcp")
    code = ("import socket, errno\n"
            "s = socket.socket()\n"
            "try:\n"
            f"    s.connect(('127.0.0.1', {srv.port})); s.sendall(b'cli'); s.shutdown(socket.SHUT_WR)\n"
            "    print('OK:' + s.recv(100).decode())\n"
            "except OSError as e:\n"
            "    print(errno.errorcode[e.errno])\n")
    flags = [x for path in base_readable for x in ("-r", path)]

    def run(*extra):
        p = subprocess.run([sys.executable, "-m", "sandlock", "run", *flags, *extra, "--",
                            sys.executable, "-I", "-S", "-c", code],
                           capture_output=True, timeout=60, stdin=subprocess.DEVNULL, cwd="/tmp")
        assert p.returncode == 0, (p.stdout, p.stderr)
        return p.stdout.decode().strip()

    assert run("--net-allow", f"127.0.0.1:{srv.port}") == "OK:pong:cli"
    assert run() == "EACCES"
    assert run("--net-allow", f"127.0.0.1:{srv.port + 1 if srv.port < 65535 else 1}") == "EACCES"
