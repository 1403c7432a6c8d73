"""Network escapes: racing the sockaddr, IPv4-mapped and unspecified
addresses, sockets the rules never allow, TCP Fast Open, named and abstract
unix sockets outside the sandbox, malformed lengths, and net_deny bypasses.

Every attack runs unconfined first (the control, which must reach its
target) and then in a sandbox. Listeners run in the test process and count
what reaches them; the count is settled with a sentinel sent by the test
after the run (queues are FIFO, so once the sentinel arrived everything the
attack sent has). Only loopback addresses are ever targeted.
"""
from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from escape_lib import IS_ROOT, confined, unconfined
from sandlock import Sandbox


# -- counting listeners ------------------------------------------------------------------------

class Counter:
    """A stream listener (accepts and closes) or a datagram receiver, on an
    inet address or a unix path / abstract name, counting what arrives from
    anyone but the test's own sentinels."""

    def __init__(self, family: int, address, kind: int = socket.SOCK_STREAM, *, dual: bool = False):
        self.family, self.kind = family, kind
        self.sock = socket.socket(family, kind)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
        self.sock.bind(address)
        self.address = self.sock.getsockname()
        if family == socket.AF_UNIX:
            self.address = address
        self.port = self.address[1] if family != socket.AF_UNIX else None
        self.events: list = []       # (peer or payload, local address) per arrival
        self._lock = threading.Lock()
        self._sentinels = 0
        if kind == socket.SOCK_STREAM:
            self.sock.listen(1024)
            threading.Thread(target=self._accept_loop, daemon=True).start()
        else:
            threading.Thread(target=self._recv_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            try:
                local = conn.getsockname()
            except OSError:
                local = None
            with self._lock:
                self.events.append((peer, local))
            conn.close()

    def _recv_loop(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            with self._lock:
                self.events.append((data, None))

    def _wait_for(self, what) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with self._lock:
                if what in self.events:
                    return
            time.sleep(0.005)
        pytest.fail(f"sentinel {what!r} never reached the counting listener")

    def settle(self) -> list:
        """Arrivals so far other than sentinels (after a sentinel of our own
        came through, so nothing sent earlier is still in flight)."""
        target = self.address
        if self.family == socket.AF_INET6 and target[0] == "::":
            target = ("::1",) + tuple(target[1:])
        if self.family == socket.AF_INET and target[0] == "0.0.0.0":
            target = ("127.0.0.1", target[1])
        self._sentinels += 1
        if self.kind == socket.SOCK_STREAM:
            with socket.socket(self.family, socket.SOCK_STREAM) as c:
                if self.family == socket.AF_UNIX:
                    c.bind("")          # autobind: an abstract name the listener sees
                c.connect(target)
                # (peer, local) as the listener records it: the 4-tuple is unique, the
                # client's port alone is not (it may be reused towards another address)
                mark = (c.getsockname(), c.getpeername())
                self._wait_for(mark)
        else:
            mark = (b"sentinel-%d-%d" % (id(self), self._sentinels), None)
            with socket.socket(self.family, socket.SOCK_DGRAM) as c:
                c.sendto(mark[0], target)
            self._wait_for(mark)
        with self._lock:
            events, self.events = self.events, []
        return [e for e in events if e != mark]

    def count(self) -> int:
        return len(self.settle())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listen():
    made: list[Counter] = []

    def make(family=socket.AF_INET, address=("127.0.0.1", 0), kind=socket.SOCK_STREAM, **kw):
        c = Counter(family, address, kind, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def tcp(listen, host="127.0.0.1", **kw):
    return listen(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, 0), **kw)


def udp(listen, host="127.0.0.1"):
    return listen(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, 0), socket.SOCK_DGRAM)


def box(base, **kw) -> Sandbox:
    return Sandbox(fs_readable=list(base) + list(kw.pop("fs_readable", [])), **kw)


class NotExercised(AssertionError):
    """The attack could not run its allowed half (a functional bug elsewhere);
    the security assertions before it still held."""


# -- shared attack code (after escape_lib's PRELUDE) -------------------------------------------

NET = r'''
import socket, struct, threading
libc.connect.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_long]
libc.sendto.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                        ctypes.c_void_p, ctypes.c_long]
libc.sendmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

def sin(h, p, family=socket.AF_INET):
    return struct.pack("=H", family) + struct.pack("!H", p) + socket.inet_aton(h) + bytes(8)

def sin6(h, p):
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", p, 0)
            + socket.inet_pton(socket.AF_INET6, h) + struct.pack("=I", 0))

def sun(path):
    return struct.pack("=H", socket.AF_UNIX) + path

def rc(r):
    """"OK" (or the value) / the errno name of a libc call's result."""
    if r < 0:
        return ename(ctypes.get_errno())
    return "OK" if r == 0 else r

def c_connect(s, raw, length=None):
    buf = ctypes.create_string_buffer(raw, len(raw))
    ctypes.set_errno(0)
    return rc(libc.connect(s.fileno(), buf, len(raw) if length is None else length))

def c_sendto(s, data, raw, flags=0):
    buf = ctypes.create_string_buffer(raw, len(raw))
    ctypes.set_errno(0)
    return rc(libc.sendto(s.fileno(), data, len(data), flags, buf, len(raw)))

class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]

class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]

def unmapped():
    """An address with nothing mapped: a page mapped then unmapped."""
    p = libc.mmap(None, 4096, 3, 0x22, -1, 0)     # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
    libc.munmap(p, 4096)
    return p

def os_or(fn, *a):
    try:
        r = fn(*a)
    except OSError as e:
        return ename(e.errno) if e.errno else type(e).__name__
    return "OK" if r is None else r

def tally(results):
    out = {}
    for r in results:
        out[str(r)] = out.get(str(r), 0) + 1
    return out
'''


def control_and_box(code: str, args: dict, sb: Sandbox, timeout: float = 60):
    c = unconfined(NET + code, args, timeout=timeout)
    v, r = confined(sb, NET + code, args, timeout=timeout)
    assert r.exit_code == 0 and r.signal == -1, r
    return c, v


# 1. TOCTOU: another thread rewrites the sockaddr while connect/sendto is trapped ---------------

RACE = r"""
# The sockaddr lives in shared memory that a forked process (its own
# interpreter, so truly parallel) rewrites without pause between the allowed
# and the forbidden port while this process loops on the call.
import mmap
a, f, n, how = ARGS["allowed"], ARGS["forbidden"], ARGS["n"], ARGS["how"]
kind = socket.SOCK_STREAM if how == "connect" else socket.SOCK_DGRAM
shared = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
shared[0:16] = sin("127.0.0.1", a)
buf = ctypes.addressof(ctypes.c_char.from_buffer(shared))
pa, pf = struct.pack("!H", a), struct.pack("!H", f)
flipper = os.fork()
if flipper == 0:
    flips = 0
    while shared[100] == 0:
        shared[2:4] = pf
        shared[2:4] = pa
        flips += 1
        shared[200:208] = flips.to_bytes(8, "little")
    os._exit(0)
results = []
interleaved = set()   # flip counts seen between calls: the rewriter really ran in between
try:
    data = ctypes.create_string_buffer(b"race")
    iov = iovec(ctypes.addressof(data), 4)
    msg = msghdr(buf, 16, ctypes.addressof(iov), 1, None, 0, 0)
    for i in range(50 * n):
        if i >= n and len(interleaved) >= 50:
            break
        interleaved.add(bytes(shared[200:208]))
        try:
            s = socket.socket(socket.AF_INET, kind)
        except OSError as e:
            results.append("socket:" + ename(e.errno))
            break
        ctypes.set_errno(0)
        if how in ("connect", "udp_connect"):
            r = libc.connect(s.fileno(), buf, 16)
            if r == 0:
                # which port the kernel connected to: (the control counts both)
                results.append("OK:" + ("allowed" if s.getpeername()[1] == a else "forbidden"))
                if how == "udp_connect":
                    libc.send(s.fileno(), b"race", 4, 0)
                s.close()
                if min(results.count("OK:allowed"), ARGS["enough"]) + \
                        min(len(results) - results.count("OK:allowed"), ARGS["enough"]) \
                        == 2 * ARGS["enough"]:
                    break     # both outcomes seen often enough
                continue
        elif how == "sendto":
            r = libc.sendto(s.fileno(), b"race", 4, 0, buf, 16)
        else:
            r = libc.sendmsg(s.fileno(), ctypes.addressof(msg), 0)
        results.append("OK" if r >= 0 else ename(ctypes.get_errno()))
        s.close()
finally:
    shared[100] = 1
    os.waitpid(flipper, 0)
emit(results=tally(results))
"""


def _race(base, listen, how):
    kind = socket.SOCK_STREAM if how == "connect" else socket.SOCK_DGRAM
    allowed = listen(socket.AF_INET, ("127.0.0.1", 0), kind)
    forbidden = listen(socket.AF_INET, ("127.0.0.1", 0), kind)
    connects = how in ("connect", "udp_connect")
    args = {"allowed": allowed.port, "forbidden": forbidden.port, "how": how,
            "n": 2000 if connects else 500, "enough": 20}
    scheme = "" if kind == socket.SOCK_STREAM else "udp://"
    sb = box(base, net_allow=[f"{scheme}127.0.0.1:{allowed.port}"])

    c = unconfined(NET + RACE, args)
    if connects:
        assert c["results"].get("OK:forbidden", 0) > 0 and c["results"].get("OK:allowed", 0) > 0, c
        assert set(c["results"]) == {"OK:allowed", "OK:forbidden"}, c
    else:
        assert set(c["results"]) == {"OK"}, c
    assert forbidden.count() > 0, "control: the race never reached the forbidden port"
    allowed.count()

    v, r = confined(sb, NET + RACE, args)
    assert r.exit_code == 0, r
    assert forbidden.count() == 0, f"sandbox reached the forbidden port: {v}"
    assert "OK:forbidden" not in v["results"], v
    reached = allowed.count()
    ok = v["results"].get("OK:allowed" if connects else "OK", 0)
    refused = v["results"].get("EACCES", 0)
    if not (set(v["results"]) <= {"OK", "OK:allowed", "EACCES"} and ok > 0 and reached > 0):
        raise NotExercised(f"{how} to the allowed port did not work: {v}")
    assert not connects or refused > 0, f"the race never showed the forbidden port: {v}"


@pytest.mark.parametrize("how", ["connect", "udp_connect"])
def test_toctou_sockaddr_rewrite(base, listen, how):
    _race(base, listen, how)


def test_toctou_sockaddr_rewrite_sendto(base, listen):
    _race(base, listen, "sendto")


def test_toctou_sockaddr_rewrite_sendmsg(base, listen):
    _race(base, listen, "sendmsg")


# 2. IPv4-mapped IPv6 ----------------------------------------------------------------------------

MAPPED = r'''
p = ARGS["p"]
res = {}
for key, host in ARGS["v6"].items():
    s = socket.socket(socket.AF_INET6)
    res[key] = os_or(s.connect, (host, p))
    s.close()
    s = socket.socket(socket.AF_INET6)
    res[key + "_raw"] = c_connect(s, sin6(host, p))
    s.close()
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) if ARGS["udp"] else None
    if s is not None:
        res[key + "_udp"] = os_or(s.connect, (host, ARGS["u"]))
        s.close()
emit(**res)
'''


@pytest.mark.parametrize("rule,allowed", [
    ("127.0.0.1:{p}", {"v4_allowed"}),
    ("[::ffff:127.0.0.1]:{p}", {"v4_allowed"}),
    ("[::1]:{p}", set()),
    ("[::/0]:{p}", set()),
])
def test_ipv4_mapped_ipv6_matches_as_ipv4(base, listen, rule, allowed):
    srv = tcp(listen, "0.0.0.0")
    u = listen(socket.AF_INET, ("0.0.0.0", 0), socket.SOCK_DGRAM)
    args = {"p": srv.port, "u": u.port, "udp": True,
            "v6": {"v4_allowed": "::ffff:127.0.0.1", "v4_other": "::ffff:127.0.0.2",
                   "v4_unspecified": "::ffff:0.0.0.0"}}
    rules = [rule.format(p=srv.port), f"udp://127.0.0.1:{u.port}"]
    c, v = control_and_box(MAPPED, args, box(base, net_allow=rules))
    assert set(c.values()) == {"OK"}, c
    srv.settle()
    expect = {}
    for key in args["v6"]:
        # The unspecified address is where Linux sends it (loopback, as the
        # sockets are unbound): it is judged as that address.
        like_allowed = key in ("v4_allowed", "v4_unspecified")
        ok = key in allowed or (key == "v4_unspecified" and "v4_allowed" in allowed)
        expect.update({key: "OK" if ok else "EACCES", key + "_raw": "OK" if ok else "EACCES",
                       key + "_udp": "OK" if like_allowed else "EACCES"})
    assert v == expect
    reached = {local[0] for _peer, local in srv.settle()}
    assert reached <= {"127.0.0.1"}, reached


# 3. sockets the rules never allow -------------------------------------------------------------

SOCKETS = r'''
res = {}
for key, (family, kind, proto) in ARGS["sockets"].items():
    try:
        socket.socket(family, kind, proto).close()
        res[key] = "OK"
    except OSError as e:
        res[key] = ename(e.errno)
emit(**res)
'''

AF_PACKET, SOCK_PACKET, IPPROTO_MPTCP, IPPROTO_UDPLITE = 17, 10, 262, 136


def test_udp_needs_a_rule(base):
    args = {"sockets": {"udp4": [2, 2, 0], "udp4_explicit": [2, 2, 17], "udp6": [10, 2, 0],
                        "udp_nonblock_cloexec": [2, 2 | 0o4000 | 0o2000000, 0]}}
    c = unconfined(NET + SOCKETS, args)
    assert set(c.values()) == {"OK"}, c
    v, _ = confined(box(base, net_allow=["tcp://127.0.0.1"]), NET + SOCKETS, args)
    assert set(v.values()) == {"EPERM"}, v
    v, _ = confined(box(base, net_allow=["udp://127.0.0.1"]), NET + SOCKETS, args)
    assert set(v.values()) == {"OK"}, v


@pytest.mark.skipif(not IS_ROOT, reason="raw and packet sockets need CAP_NET_RAW: no control")
def test_raw_and_packet_sockets_refused_even_with_udp_any(base):
    args = {"sockets": {
        "raw_udp": [2, 3, 17], "raw_icmp": [2, 3, 1], "raw_raw": [2, 3, 255], "raw_tcp": [2, 3, 6],
        "raw6_udp": [10, 3, 17], "raw6_icmp": [10, 3, 58],
        "packet_raw": [AF_PACKET, 3, 0], "packet_dgram": [AF_PACKET, 2, 0],
        "inet_sock_packet": [17, SOCK_PACKET, 0x300]}}
    c = unconfined(NET + SOCKETS, args)
    assert set(c.values()) == {"OK"}, c
    for rules in (["udp://*"], ["*"], ["udp://*", "icmp://*"]):
        v, _ = confined(box(base, net_allow=rules), NET + SOCKETS, args)
        assert set(v.values()) == {"EPERM"}, (rules, v)


def test_other_inet_protocols_refused(base):
    """MPTCP (which Landlock's TCP port rules may not see) and UDP-Lite."""
    args = {"sockets": {"mptcp": [2, 1, IPPROTO_MPTCP], "mptcp6": [10, 1, IPPROTO_MPTCP],
                        "udplite": [2, 2, IPPROTO_UDPLITE]}}
    c = unconfined(NET + SOCKETS, args)
    usable = {k for k, val in c.items() if val == "OK"}
    if not usable:
        pytest.skip(f"neither MPTCP nor UDP-Lite available here: {c}")
    v, _ = confined(box(base, net_allow=["*"]), NET + SOCKETS, args)
    assert {k: v[k] for k in usable} == {k: "EPERM" for k in usable}


def test_ping_socket_needs_an_icmp_rule(base):
    args = {"sockets": {"ping4": [2, 2, 1], "ping6": [10, 2, 58]}}
    c = unconfined(NET + SOCKETS, args)
    v, _ = confined(box(base, net_allow=["udp://*", "tcp://*"]), NET + SOCKETS, args)
    # unconfined: OK or EACCES (net.ipv4.ping_group_range); the sandbox's own answer is EPERM
    assert set(c.values()) <= {"OK", "EACCES"}, c
    assert v == {"ping4": "EPERM", "ping6": "EPERM"}


# 4. TCP Fast Open --------------------------------------------------------------------------------

TFO = r'''
MSG_FASTOPEN, TCP_FASTOPEN_CONNECT = 0x20000000, 30
f, a = ARGS["forbidden"], ARGS["allowed"]
res = {}
s = socket.socket()
res["sendto_fastopen"] = c_sendto(s, b"tfo", sin("127.0.0.1", f), MSG_FASTOPEN)
s.close()
s = socket.socket()
res["sendto_fastopen_allowed"] = c_sendto(s, b"tfo", sin("127.0.0.1", a), MSG_FASTOPEN)
s.close()
s = socket.socket()
res["sendmsg_fastopen"] = os_or(s.sendmsg, [b"tfo"], [], MSG_FASTOPEN, ("127.0.0.1", f))
s.close()
s = socket.socket()
data = ctypes.create_string_buffer(b"tfo")
iov = iovec(ctypes.addressof(data), 3)
name = ctypes.create_string_buffer(sin("127.0.0.1", f), 16)
vec = (mmsghdr * 1)()
vec[0].hdr = msghdr(ctypes.addressof(name), 16, ctypes.addressof(iov), 1, None, 0, 0)
ctypes.set_errno(0)
res["sendmmsg_fastopen"] = rc(libc.sendmmsg(s.fileno(), ctypes.addressof(vec), 1, MSG_FASTOPEN))
s.close()
s = socket.socket()
s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
res["fastopen_connect"] = os_or(s.connect, ("127.0.0.1", f))
res["fastopen_connect_send"] = os_or(s.send, b"tfo")
s.close()
s = socket.socket()
s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
res["fastopen_connect_allowed"] = os_or(s.connect, ("127.0.0.1", a))
res["fastopen_connect_allowed_send"] = os_or(s.send, b"tfo")
s.close()
emit(**res)
'''


def test_tcp_fast_open(base, listen):
    try:
        with open("/proc/sys/net/ipv4/tcp_fastopen") as fh:
            client = int(fh.read()) & 1
    except OSError:
        client = 0
    if not client:
        pytest.skip("TCP Fast Open client side disabled (net.ipv4.tcp_fastopen)")
    forbidden, allowed = tcp(listen), tcp(listen)
    args = {"forbidden": forbidden.port, "allowed": allowed.port}
    c = unconfined(NET + TFO, args)
    assert c == {"sendto_fastopen": 3, "sendto_fastopen_allowed": 3, "sendmsg_fastopen": 3,
                 "sendmmsg_fastopen": 1, "fastopen_connect": "OK", "fastopen_connect_send": 3,
                 "fastopen_connect_allowed": "OK", "fastopen_connect_allowed_send": 3}
    assert forbidden.count() == 4 and allowed.count() == 2
    v, _ = confined(box(base, net_allow=[f"127.0.0.1:{allowed.port}"]), NET + TFO, args)
    assert v["sendto_fastopen"] == v["sendto_fastopen_allowed"] == "EPERM", v
    assert v["sendmsg_fastopen"] == v["sendmmsg_fastopen"] == "EPERM", v
    assert v["fastopen_connect"] == "EACCES", v
    assert v["fastopen_connect_send"] != 3, v
    assert forbidden.count() == 0
    # Fast Open to an allowed port through TCP_FASTOPEN_CONNECT still works
    assert (v["fastopen_connect_allowed"], v["fastopen_connect_allowed_send"]) == ("OK", 3), v
    assert allowed.count() == 1


# 5. named unix sockets outside the writable paths ---------------------------------------------

NAMED = r'''
res = {}
w, ro, hidden = ARGS["w"], ARGS["ro"], ARGS["hidden"]
def stream(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        return os_or(s.connect, path)
    finally:
        s.close()
def dgram(path, connect=False):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        if connect:
            r = os_or(s.connect, path)
            r = r if r != "OK" else os_or(s.send, b"d")
        else:
            r = os_or(s.sendto, b"d", path)
        return "OK" if r == 1 else r
    finally:
        s.close()
reach = stream if ARGS["part"] == "stream" else dgram
leaf = "/s" if ARGS["part"] == "stream" else "/d"
res["own"] = reach(w + leaf)
res["ro"] = reach(ro + leaf)
res["hidden"] = reach(hidden + leaf)
res["symlink"] = os_or(os.symlink, hidden + leaf, w + "/link")
res["via_symlink"] = reach(w + "/link")
res["dir_symlink"] = os_or(os.symlink, hidden, w + "/dirlink")
res["via_dir_symlink"] = reach(w + "/dirlink" + leaf)
res["hardlink"] = os_or(os.link, hidden + leaf, w + "/hard")
res["via_hardlink"] = reach(w + "/hard")
res["via_proc_root"] = reach("/proc/%d/root%s%s" % (ARGS["pid"], hidden, leaf))
res["dotdot"] = reach(w + "/../hidden" + leaf)
if ARGS["part"] == "dgram":
    res["connect_hidden"] = dgram(hidden + leaf, connect=True)
os.chdir(ro)
res["relative"] = reach(leaf[1:])
emit(**res)
'''


def _named_unix(base, listen, wdir, part):
    kind = socket.SOCK_STREAM if part == "stream" else socket.SOCK_DGRAM
    leaf = "s" if part == "stream" else "d"
    dirs, servers = {}, {}
    for name in ("w", "ro", "hidden"):
        dirs[name] = os.path.join(wdir, name)
        os.mkdir(dirs[name])
        os.chmod(dirs[name], 0o777)
        servers[name] = listen(socket.AF_UNIX, os.path.join(dirs[name], leaf), kind)
        os.chmod(os.path.join(dirs[name], leaf), 0o777)
    args = dict(dirs, pid=os.getpid(), part=part)

    c = unconfined(NET + NAMED, args)
    assert set(c.values()) == {"OK"}, c
    assert {name: servers[name].count() > 0 for name in servers} == {n: True for n in servers}
    for link in ("link", "dirlink", "hard"):
        os.unlink(os.path.join(dirs["w"], link))

    sb = box(base, fs_readable=[dirs["ro"]], fs_writable=[dirs["w"]])
    v, _ = confined(sb, NET + NAMED, args)
    assert servers["ro"].count() == 0 and servers["hidden"].count() == 0, v
    own = (v.pop("own"), servers["w"].count())
    assert v.pop("symlink") == v.pop("dir_symlink") == "OK", v   # making links is fine...
    if v.pop("hardlink") != "OK":                                 # (Landlock refused the link)
        assert v.pop("via_hardlink") in ("ENOENT", "EACCES", "EPERM"), v
    assert "OK" not in v.values(), v                              # ...reaching through them is not
    if own != ("OK", 1) or set(v.values()) != {"EACCES"}:
        raise NotExercised(f"own socket: {own}; refusals: {v}")


def test_named_unix_stream_socket_outside_writable_paths(base, listen, wdir):
    _named_unix(base, listen, wdir, "stream")


def test_named_unix_datagram_socket_outside_writable_paths(base, listen, wdir):
    _named_unix(base, listen, wdir, "dgram")


# 6. abstract unix sockets ------------------------------------------------------------------------

ABSTRACT = r'''
res = {}
name = ARGS["name"].encode("latin-1")
dname = ARGS["dname"].encode("latin-1")
s = socket.socket(socket.AF_UNIX)
res["connect"] = os_or(s.connect, name)
s.close()
s = socket.socket(socket.AF_UNIX)
res["connect_raw"] = c_connect(s, sun(name))
s.close()
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
res["sendto"] = os_or(s.sendto, b"x", dname)
res["sendto"] = "OK" if res["sendto"] == 1 else res["sendto"]
res["dgram_connect"] = os_or(s.connect, dname)
s.close()
# the sandbox's own abstract sockets stay reachable
own = ARGS["own"].encode("latin-1")
srv = socket.socket(socket.AF_UNIX)
srv.bind(own)
srv.listen(1)
s = socket.socket(socket.AF_UNIX)
res["own"] = os_or(s.connect, own)
s.close()
srv.close()
emit(**res)
'''


def _abstract(tag: str) -> str:
    return f"\0sl-net-{tag}-{os.getpid()}-{time.monotonic_ns()}"


def test_abstract_unix_socket_bound_outside(base, listen):
    name, dname = _abstract("s"), _abstract("d")
    srv = listen(socket.AF_UNIX, name.encode("latin-1"))
    dsrv = listen(socket.AF_UNIX, dname.encode("latin-1"), socket.SOCK_DGRAM)
    args = {"name": name, "dname": dname, "own": _abstract("own")}
    c = unconfined(NET + ABSTRACT, args)
    assert set(c.values()) == {"OK"}, c
    assert srv.count() == 2 and dsrv.count() == 1
    args["own"] = _abstract("own")
    v, _ = confined(box(base), NET + ABSTRACT, args)
    assert v == {"connect": "EPERM", "connect_raw": "EPERM", "sendto": "EPERM",
                 "dgram_connect": "EPERM", "own": "OK"}
    assert srv.count() == 0 and dsrv.count() == 0


ALIAS = r'''
# /proc/net/unix shows a NUL inside an abstract name as '@': bind our own socket
# under the '@' spelling of the outside name, then connect to the real one.
target = ARGS["name"].encode("latin-1")
alias = b"\0" + target[1:].replace(b"\0", b"@")
mine = socket.socket(socket.AF_UNIX)
res = {"bind_alias": os_or(mine.bind, alias)}
mine.listen(1)
s = socket.socket(socket.AF_UNIX)
res["connect"] = os_or(s.connect, target)
s.close()
emit(**res)
'''


def test_abstract_name_alias_through_proc_net_unix(base, listen):
    name = _abstract("alias") + "\0tail"
    srv = listen(socket.AF_UNIX, name.encode("latin-1"))
    c = unconfined(NET + ALIAS, {"name": name})
    assert c == {"bind_alias": "OK", "connect": "OK"}
    assert srv.count() == 1
    v, _ = confined(box(base), NET + ALIAS, {"name": name})
    reached = srv.count()
    assert v == {"bind_alias": "OK", "connect": "EPERM"} and reached == 0, (v, reached)


# 7. malformed sockaddr lengths and pointers ------------------------------------------------------

MALFORMED = r'''
a = ARGS["allowed"]
good = sin("127.0.0.1", a)
buf = ctypes.create_string_buffer(good + bytes(512), len(good) + 512)
res = {}
def conn(ptr, length):
    s = socket.socket()
    ctypes.set_errno(0)
    r = rc(libc.connect(s.fileno(), ptr, length))
    s.close()
    return r
for key, length in ARGS["lengths"].items():
    res["len_" + key] = conn(ctypes.addressof(buf), length)
res["null"] = conn(None, 16)
res["unmapped"] = conn(unmapped(), 16)
res["kernel_half"] = conn(0xffff800000000000, 16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for key, length in ARGS["lengths"].items():
    ctypes.set_errno(0)
    res["sendto_len_" + key] = rc(libc.sendto(u.fileno(), b"x", 1, 0, ctypes.addressof(buf), length))
ctypes.set_errno(0)
res["sendto_unmapped"] = rc(libc.sendto(u.fileno(), b"x", 1, 0, unmapped(), 16))
ctypes.set_errno(0)
res["sendto_unmapped_data"] = rc(libc.sendto(u.fileno(), unmapped(), 16, 0, ctypes.addressof(buf), 16))
u.close()
# the supervisor is still there and still deciding
res["after"] = conn(ctypes.addressof(buf), 16)
emit(**res)
'''

LENGTHS = {"0": 0, "1": 1, "int_max": 0x7FFFFFFF, "minus_one": -1, "minus_big": -(1 << 40)}


def test_malformed_sockaddr_lengths(base, listen):
    srv = tcp(listen)
    args = {"allowed": srv.port, "lengths": LENGTHS}
    sb = box(base, net_allow=[f"127.0.0.1:{srv.port}"])
    c, v = control_and_box(MALFORMED, args, sb)
    assert c["after"] == "OK", c
    for key, val in c.items():
        if key != "after":
            assert val in ("EINVAL", "EFAULT"), (key, c)
    assert v == c
    assert srv.count() == 2


PARTIAL = r'''
a = ARGS["allowed"]
good = sin("127.0.0.1", a)
page = libc.mmap(None, 8192, 3, 0x22, -1, 0)
libc.munmap(page + 4096, 4096)
ctypes.memmove(page + 4096 - 8, good, 8)          # family, port, address; then unmapped
buf = ctypes.create_string_buffer(good + bytes(512), len(good) + 512)
res = {}
def conn(ptr, length):
    s = socket.socket()
    ctypes.set_errno(0)
    r = rc(libc.connect(s.fileno(), ptr, length))
    s.close()
    return r
res["partial"] = conn(page + 4096 - 8, 16)
res["len_2"] = conn(ctypes.addressof(buf), 2)
res["len_8"] = conn(ctypes.addressof(buf), 8)
res["len_129"] = conn(ctypes.addressof(buf), 129)
res["len_4096"] = conn(ctypes.addressof(buf), 4096)
emit(**res)
'''


def test_oversized_and_partly_unmapped_sockaddr(base, listen):
    srv = tcp(listen)
    args = {"allowed": srv.port}
    c, v = control_and_box(PARTIAL, args, box(base, net_allow=[f"127.0.0.1:{srv.port}"]))
    assert c == {"partial": "EFAULT", "len_2": "EINVAL", "len_8": "EINVAL", "len_129": "EINVAL",
                 "len_4096": "EINVAL"}
    assert v == c


# 8. sendmsg / sendmmsg with hostile headers -------------------------------------------------------

HOSTILE_MSG = r'''
p, f = ARGS["allowed"], ARGS["forbidden"]
name = ctypes.create_string_buffer(sin("127.0.0.1", p), 16)
fname = ctypes.create_string_buffer(sin("127.0.0.1", f), 16)
data = ctypes.create_string_buffer(b"payload")
iov = iovec(ctypes.addressof(data), 7)
res = {}
def send(**kw):
    m = msghdr(ctypes.addressof(name), 16, ctypes.addressof(iov), 1, None, 0, 0)
    for k, val in kw.items():
        setattr(m, k, val)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctypes.set_errno(0)
    r = rc(libc.sendmsg(s.fileno(), ctypes.addressof(m), 0))
    s.close()
    return r
res["iovlen_huge"] = send(iovlen=1 << 20)
res["iovlen_2e60"] = send(iovlen=1 << 60)
res["iov_unmapped"] = send(iov=unmapped())
big = iovec(ctypes.addressof(data), 1 << 40)
res["iov_len_huge"] = send(iov=ctypes.addressof(big))
res["name_unmapped"] = send(name=unmapped())
res["namelen_huge"] = send(namelen=0xFFFFFFFF)
res["forbidden_name_huge_iov"] = send(name=ctypes.addressof(fname), iovlen=1 << 20)
res["control_unmapped"] = send(control=unmapped(), controllen=64)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ctypes.set_errno(0)
res["msghdr_unmapped"] = rc(libc.sendmsg(s.fileno(), unmapped(), 0))
ctypes.set_errno(0)
res["mmsg_unmapped"] = rc(libc.sendmmsg(s.fileno(), unmapped(), 1024, 0))
vec = (mmsghdr * 2)()
vec[0].hdr = msghdr(ctypes.addressof(fname), 16, ctypes.addressof(iov), 1 << 20, None, 0, 0)
vec[1].hdr = msghdr(ctypes.addressof(fname), 16, ctypes.addressof(iov), 1, None, 0, 0)
ctypes.set_errno(0)
res["mmsg_bad_first"] = rc(libc.sendmmsg(s.fileno(), ctypes.addressof(vec), 2, 0))
s.close()
s = socket.socket()
res["after"] = os_or(s.connect, ("127.0.0.1", ARGS["tcp"]))
s.close()
emit(**res)
'''


def test_hostile_msghdr(base, listen):
    allowed, forbidden, srv = udp(listen), udp(listen), tcp(listen)
    args = {"allowed": allowed.port, "forbidden": forbidden.port, "tcp": srv.port}
    sb = box(base, net_allow=[f"udp://127.0.0.1:{allowed.port}", f"tcp://127.0.0.1:{srv.port}"])
    c, v = control_and_box(HOSTILE_MSG, args, sb)
    assert c.pop("after") == "OK", c
    assert set(c.values()) <= {"EMSGSIZE", "EFAULT", "EINVAL"}, c
    # the supervisor survived every header and still decides
    assert v.pop("after") == "OK", v
    assert all(isinstance(val, str) and val.startswith("E") for val in v.values()), v
    assert forbidden.count() == 0 and allowed.count() == 0
    assert srv.count() == 2
    if v != c:
        raise NotExercised(f"errnos differ from the kernel's: control {c}, sandbox {v}")


SCM_LEAK = r'''
import struct, sys
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
creds = struct.pack("3i", os.getpid(), os.getuid(), os.getgid())
res = {}
def sent(r):
    return "OK" if r == 1 else r
res["rights"] = sent(os_or(a.sendmsg, [b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", 0))]))
for i in range(200):
    r = sent(os_or(a.sendmsg, [b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("2i", 0, 1)),
                                       (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)]))
    res[r] = res.get(r, 0) + 1
    try:
        while True:
            b.recvmsg(10, 1024, socket.MSG_DONTWAIT)
    except OSError:
        pass
res["supervisor"] = os.getppid()
print("VERDICT " + json.dumps(res), flush=True)
sys.stdin.read()
'''


def test_supervisor_does_not_leak_fds_from_refused_ancillary_data(base):
    import subprocess
    from escape_lib import parse_verdict, py_cmd
    c = unconfined(NET + SCM_LEAK.replace("sys.stdin.read()", ""), {})
    assert c["rights"] == "OK" and c.get("OK") == 200, c
    sb = box(base)
    p = sb.popen(py_cmd(NET + SCM_LEAK), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        v = parse_verdict(p.stdout.readline())
        sup = v["supervisor"]
        try:
            fds = len(os.listdir(f"/proc/{sup}/fd"))
        except OSError as e:
            pytest.skip(f"cannot count the supervisor's fds: {e}")
    finally:
        p.stdin.close()
        p.wait(timeout=30)
    assert v["rights"] == "OK", v                     # SCM_RIGHTS alone is passed on
    assert v.get("EPERM") == 200, v                   # credentials cannot be vouched for
    assert fds < 100, f"the supervisor holds {fds} fds"


# 9. net_deny bypasses ------------------------------------------------------------------------------

DENY = r'''
res = {}
for key, (family, host, port, bind_to) in ARGS["targets"].items():
    s = socket.socket(getattr(socket, family), socket.SOCK_STREAM)
    if bind_to:
        os_or(s.bind, (bind_to, 0))
    res[key] = os_or(s.connect, (host, port))
    s.close()
emit(**res)
'''


def test_net_deny_plain_and_mapped_forms(base, listen):
    srv = tcp(listen, "0.0.0.0")
    p = srv.port
    args = {"targets": {"plain": ["AF_INET", "127.0.0.2", p, None],
                        "mapped": ["AF_INET6", "::ffff:127.0.0.2", p, None],
                        "allowed": ["AF_INET", "127.0.0.1", p, None]}}
    for deny in (["127.0.0.2"], ["127.0.0.2/32"], ["127.0.0.2/31"], ["[::ffff:127.0.0.2]"],
                 [f"127.0.0.2:{p}"], [f"tcp://127.0.0.2:{p}"]):
        c, v = control_and_box(DENY, args, box(base, net_deny=deny))
        assert c == {"plain": "OK", "mapped": "OK", "allowed": "OK"}
        assert v == {"plain": "EACCES", "mapped": "EACCES", "allowed": "OK"}, deny
        reached = [local[0] for _peer, local in srv.settle()]
        assert reached.count("127.0.0.2") == 2 and reached.count("127.0.0.1") == 2, reached


@pytest.mark.parametrize("vector", ["v4_any", "mapped_any", "v6_any", "bound_then_any", "udp_any"])
def test_net_deny_unspecified_address_bypass(base, listen, vector):
    if vector == "udp_any":
        target = listen(socket.AF_INET, ("127.0.0.1", 0), socket.SOCK_DGRAM)
        code = r'''
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r = os_or(s.connect, ("0.0.0.0", ARGS["p"]))
emit(r=r if r != "OK" else os_or(s.send, b"u"))
'''
        deny, args = ["127.0.0.1"], {"p": target.port}
    else:
        host, fam, bind_to, deny = {
            "v4_any": ("0.0.0.0", "AF_INET", None, ["127.0.0.1"]),
            "mapped_any": ("::ffff:0.0.0.0", "AF_INET6", None, ["127.0.0.0/8"]),
            "v6_any": ("::", "AF_INET6", None, ["[::1]"]),
            "bound_then_any": ("0.0.0.0", "AF_INET", "127.0.0.2", ["127.0.0.2"]),
        }[vector]
        where = {"v6_any": "::1", "bound_then_any": "0.0.0.0"}.get(vector, "127.0.0.1")
        target = tcp(listen, where)
        code = DENY.replace("emit(**res)", "emit(r=res['t'])")
        args = {"targets": {"t": [fam, host, target.port, bind_to]}}
    c = unconfined(NET + code, args)
    assert c["r"] in ("OK", 1), c
    assert target.count() == 1
    # bound_then_any needs its bind to succeed, or the connect goes to
    # loopback (127.0.0.1), which this deny-list allows.
    binds = ["*"] if vector == "bound_then_any" else []
    v, _ = confined(box(base, net_deny=deny, net_allow_bind=binds), NET + code, args)
    reached = target.count()
    assert reached == 0, (v, reached)


# 10. port 0, AF_UNSPEC, wrong families: the supervisor keeps going ----------------------------------

ODD = r'''
a = ARGS["allowed"]
res = {}
s = socket.socket()
res["port0"] = c_connect(s, sin("127.0.0.1", 0))
s.close()
s = socket.socket()
res["unspec_fresh"] = c_connect(s, struct.pack("=H", 0) + bytes(14))
s.close()
s = socket.socket()
res["connected"] = os_or(s.connect, ("127.0.0.1", a))
r = c_connect(s, struct.pack("=H", 0) + bytes(14))
res["unspec_connected_tcp"] = "clean" if r == "OK" or r.startswith("E") else r
s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r = c_connect(u, struct.pack("=H", 0) + bytes(14))
res["unspec_udp"] = "clean" if r == "OK" or r.startswith("E") else r
# AF_UNSPEC in sendto is read by the kernel as AF_INET: it must not carry a datagram
res["sendto_unspec_forbidden"] = c_sendto(u, b"x", sin("127.0.0.1", ARGS["forbidden_udp"], 0))
res["sendto_port0"] = c_sendto(u, b"x", sin("127.0.0.1", 0))
u.close()
s = socket.socket()
res["inet6_addr_on_inet"] = c_connect(s, sin6("::1", a))
s.close()
s = socket.socket()
res["unix_addr_on_inet"] = c_connect(s, sun(b"/nonexistent"))
s.close()
s = socket.socket(socket.AF_UNIX)
res["inet_addr_on_unix"] = c_connect(s, sin("127.0.0.1", a))
s.close()
s = socket.socket()
res["after"] = os_or(s.connect, ("127.0.0.1", a))
s.close()
emit(**res)
'''


def test_port_zero_and_af_unspec(base, listen):
    srv = tcp(listen)
    fu = udp(listen)
    args = {"allowed": srv.port, "forbidden_udp": fu.port}
    sb = box(base, net_allow=[f"127.0.0.1:{srv.port}", "udp://127.0.0.1:1"])
    c, v = control_and_box(ODD, args, sb)
    assert c["sendto_unspec_forbidden"] == 1 and fu.count() == 1, c   # the kernel sends it
    assert c["connected"] == c["after"] == "OK"
    assert v["port0"] == "EACCES" and v["sendto_unspec_forbidden"] != 1, v
    assert v["connected"] == v["after"] == "OK", v
    assert v["unspec_connected_tcp"] == v["unspec_udp"] == "clean", v
    for key in ("unspec_fresh", "sendto_port0", "inet6_addr_on_inet", "unix_addr_on_inet",
                "inet_addr_on_unix"):
        assert isinstance(v[key], str) and v[key].startswith("E"), (key, v)
    assert fu.count() == 0
    assert srv.count() == 4          # connected + after, unconfined and sandboxed


# the pinned /etc/hosts cannot be read around ----------------------------------------------------

HOSTS = r'''
res = {}
def rd_all(path, **kw):
    try:
        fd = os.open(path, os.O_RDONLY, **kw)
    except OSError as e:
        return ename(e.errno)
    try:
        return "READ:" + os.read(fd, 1 << 16).decode(errors="replace")
    finally:
        os.close(fd)
for key, path in ARGS["paths"].items():
    res[key] = rd_all(path)
try:
    etc = os.open("/etc", os.O_RDONLY | os.O_DIRECTORY)
except OSError:
    etc = os.open("/etc", os.O_PATH | os.O_DIRECTORY)
res["openat_etc"] = rd_all("hosts", dir_fd=etc)
res["openat_dotdot"] = rd_all("../etc/hosts", dir_fd=etc)
os.chdir("/etc")
res["relative"] = rd_all("hosts")
res["proc_fd"] = rd_all("/proc/self/fd/%d/hosts" % etc)
res["symlink"] = os_or(os.symlink, "/etc/hosts", ARGS["w"] + "/h")
res["via_symlink"] = rd_all(ARGS["w"] + "/h")
res["hardlink"] = os_or(os.link, "/etc/hosts", ARGS["w"] + "/hl")
res["via_hardlink"] = rd_all(ARGS["w"] + "/hl")
emit(**res)
'''


def test_real_etc_hosts_stays_hidden(base, listen, wdir):
    with open("/etc/hosts") as fh:
        real = fh.read()
    names = {n for line in real.splitlines() for n in line.split("#")[0].split()[1:]}
    secret = sorted(names - {"localhost", "ip6-localhost", "ip6-loopback"})
    if not secret:
        pytest.skip("/etc/hosts holds nothing beyond localhost: nothing to tell apart")
    w = os.path.join(wdir, "w")
    os.mkdir(w)
    os.chmod(w, 0o777)
    paths = {"plain": "/etc/hosts", "double_slash": "//etc//hosts", "dot": "/etc/./hosts",
             "dotdot": "/usr/../etc/hosts", "proc_self_root": "/proc/self/root/etc/hosts",
             "proc_thread_self_root": "/proc/thread-self/root/etc/hosts"}
    args = {"paths": paths, "w": w}
    srv = tcp(listen)
    c = unconfined(NET + HOSTS, args)
    for f in os.listdir(w):
        os.unlink(os.path.join(w, f))
    assert c["plain"] == "READ:" + real
    sb = box(base, fs_readable=["/proc"], fs_writable=[w], net_allow=[f"localhost:{srv.port}"])
    v, _ = confined(sb, NET + HOSTS, args)
    leaked = {k: val for k, val in v.items() if any(s in val for s in secret)}
    assert not leaked, leaked
    assert "localhost" in v["plain"], v


# 11. listen() on an unbound socket binds an ephemeral port without bind() -------------------------

LISTEN = r'''
res = {}
s = socket.socket()
res["bind_port0"] = os_or(s.bind, ("127.0.0.1", 0))
s.close()
s = socket.socket()
res["listen_unbound"] = os_or(s.listen, 4)
port = s.getsockname()[1]
res["listening_port"] = port != 0
if port:
    c = socket.socket()
    res["reached"] = os_or(c.connect, ("127.0.0.1", port))
    c.close()
emit(**res)
'''


def test_listen_without_bind_permission(base):
    c = unconfined(NET + LISTEN, {})
    assert c == {"bind_port0": "OK", "listen_unbound": "OK", "listening_port": True, "reached": "OK"}
    v, _ = confined(box(base, net_allow=["127.0.0.1"]), NET + LISTEN, {})
    assert v["bind_port0"] == "EACCES", v
    assert v["listen_unbound"] != "OK" and not v["listening_port"], v


# 12. on-behalf calls must not carry the supervisor's capabilities (sandlock run as root) ----------

UNIX_DAC = r'''
res = {}
for key, path in ARGS["paths"].items():
    s = socket.socket(socket.AF_UNIX)
    res[key] = os_or(s.connect, path)
    s.close()
emit(**res)
'''


@pytest.mark.skipif(not IS_ROOT, reason="only a root supervisor holds capabilities the sandbox lacks")
def test_unix_socket_permissions_hold_against_a_root_supervisor(base, listen, wdir):
    import shutil
    import subprocess
    from escape_lib import parse_verdict, py_cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv not available for the capability-less control")
    w = os.path.join(wdir, "w")
    private = os.path.join(w, "private")
    os.mkdir(w)
    os.chmod(w, 0o777)
    os.mkdir(private)
    paths = {"in_private_dir": os.path.join(private, "s"), "mode_0600": os.path.join(w, "s")}
    servers = {}
    for key, path in paths.items():
        servers[key] = listen(socket.AF_UNIX, path)
        os.chown(path, 65534, 65534)
        os.chmod(path, 0o600)
    os.chown(private, 65534, 65534)
    os.chmod(private, 0o700)
    args = {"paths": paths}
    # root with its capabilities reaches both; root without them (what the sandbox is) does not
    assert unconfined(NET + UNIX_DAC, args) == {"in_private_dir": "OK", "mode_0600": "OK"}
    p = subprocess.run([setpriv, "--bounding-set=-all", "--inh-caps=-all", *py_cmd(NET + UNIX_DAC, args)],
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert parse_verdict(p.stdout) == {"in_private_dir": "EACCES", "mode_0600": "EACCES"}, p
    for s in servers.values():
        s.count()
    v, _ = confined(box(base, fs_writable=[w]), NET + UNIX_DAC, args)
    reached = {k: s.count() for k, s in servers.items()}
    assert v == {"in_private_dir": "EACCES", "mode_0600": "EACCES"} and set(reached.values()) == {0}, \
        (v, reached)


SOURCE_ROUTE = r'''
IP_RETOPTS = 7
p = ARGS["p"]
lsrr = bytes([131, 7, 4]) + socket.inet_aton("127.0.0.2") + bytes([0])   # loose source route via .2
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def sent(r):
    return "OK" if r == len(ARGS["marker"]) + 6 else r
res = {"plain": sent(os_or(s.sendmsg, [ARGS["marker"].encode() + b"-plain"], [], 0, ("127.0.0.1", p))),
       "routed": sent(os_or(s.sendmsg, [ARGS["marker"].encode() + b"-route"],
                                 [(socket.IPPROTO_IP, IP_RETOPTS, lsrr)], 0, ("127.0.0.1", p)))}
emit(**res)
'''


@pytest.mark.skipif(not IS_ROOT, reason="needs a root supervisor (CAP_NET_RAW) and a packet socket")
def test_source_route_ancillary_data_through_a_root_supervisor(base, listen):
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    sniffer.bind(("lo", 0x0800))
    sniffer.settimeout(0.05)
    seen: list = []
    stop = threading.Event()

    def sniff():
        while not stop.is_set():
            try:
                pkt = sniffer.recv(65535)
            except OSError:
                continue
            if b"sl-srr-" in pkt and len(pkt) >= 20:
                seen.append((socket.inet_ntoa(pkt[16:20]), pkt[pkt.index(b"sl-srr-"):]))

    t = threading.Thread(target=sniff, daemon=True)
    t.start()
    target = udp(listen)
    try:
        marker = f"sl-srr-{os.getpid()}-c"
        c = unconfined(NET + SOURCE_ROUTE, {"p": target.port, "marker": marker})
        assert c == {"plain": "OK", "routed": "OK"}, c
        assert target.count() == 1
        assert _wait_seen(seen, marker + "-route"), seen    # to 127.0.0.2 first
        marker = f"sl-srr-{os.getpid()}-s"
        v, _ = confined(box(base, net_allow=[f"udp://127.0.0.1:{target.port}"]), NET + SOURCE_ROUTE,
                        {"p": target.port, "marker": marker})
        assert v["plain"] == "OK" and target.count() == 1, v
        target.count()
        leaked = [dst for dst, payload in seen if payload.startswith(marker.encode()) and dst != "127.0.0.1"]
        assert v["routed"] != "OK" and not leaked, (v, leaked)
    finally:
        stop.set()
        t.join()
        sniffer.close()


def _wait_seen(seen, marker: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(dst == "127.0.0.2" and payload.startswith(marker.encode()) for dst, payload in seen):
            return True
        time.sleep(0.01)
    return False
