"""policy_fn: what the callback judged is what happens.

Attacks on the gap between the verdict and the act: a second thread
rewrites argv or the destination address while the first execs or
connects; a sendmmsg hides a second destination behind an allowed first.
"""
from __future__ import annotations

import socket
import sys
import threading
import time

import pytest

from sandlock import Sandbox

pytestmark = pytest.mark.core


ARGV_RACE = r"""
import ctypes, os, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
n = int(sys.argv[1])
buf = ctypes.create_string_buffer(b"good\0", 8)
arg0 = ctypes.create_string_buffer(b"/bin/echo\0")
argv = (ctypes.c_char_p * 3)(ctypes.cast(arg0, ctypes.c_char_p), ctypes.cast(buf, ctypes.c_char_p), None)
stop = False
def flip():
    while not stop:
        ctypes.memmove(buf, b"evil\0", 5)
        ctypes.memmove(buf, b"good\0", 5)
for i in range(n):
    pid = os.fork()
    if pid == 0:
        t = threading.Thread(target=flip, daemon=True)
        t.start()
        libc.execv(arg0, argv)
        os._exit(3)
    os.waitpid(pid, 0)
print("done", flush=True)
"""


def test_argv_cannot_change_under_the_verdict(base):
    """A second thread flips argv between "good" and "evil" while the first
    execs: the callback denies "evil"; the command that runs must never
    print "evil"."""
    judged = []

    def fn(ev, ctx):
        if ev.syscall == "execve" and ev.argv[0] == "/bin/echo":
            judged.append(ev.argv[1])
            return True if ev.argv[1] != "good" else None
        return None

    r = Sandbox(fs_readable=base, policy_fn=fn, policy_fn_events=["execve"]).run(
        [sys.executable, "-c", ARGV_RACE, "1000"], timeout=600)
    assert r.success and r.stdout.endswith(b"done\n"), r
    lines = r.stdout.split(b"\n")
    assert b"evil" not in lines
    assert "evil" in judged and "good" in judged  # the race was on
    assert lines.count(b"good") == judged.count("good") or lines.count(b"good") <= judged.count("good")




ADDR_RACE = r"""
import ctypes, socket, struct, sys, threading
good, bad, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
sa = ctypes.create_string_buffer(struct.pack("=HH4s8x", socket.AF_INET, socket.htons(good),
                                             socket.inet_aton("127.0.0.1")), 16)
stop = False
def flip():
    g, b = struct.pack("!H", good), struct.pack("!H", bad)
    while not stop:
        ctypes.memmove(ctypes.addressof(sa) + 2, b, 2)
        ctypes.memmove(ctypes.addressof(sa) + 2, g, 2)
threading.Thread(target=flip, daemon=True).start()
ok = 0
for i in range(n):
    s = socket.socket()
    if libc.connect(s.fileno(), sa, 16) == 0:
        ok += 1
    s.close()
stop = True
print("connected", ok, flush=True)
"""


def _listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(512)
    hits = []

    def serve():
        srv.settimeout(0.2)
        while True:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            hits.append(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv, hits


def test_connect_address_cannot_change_under_the_verdict(base):
    good, good_hits = _listener()
    bad, bad_hits = _listener()
    gp, bp = good.getsockname()[1], bad.getsockname()[1]

    def fn(ev, ctx):
        return True if ev.syscall == "connect" and ev.port != gp else None

    r = Sandbox(fs_readable=base, net_allow=[f"127.0.0.1:{gp}", f"127.0.0.1:{bp}"],
                policy_fn=fn, policy_fn_events=["connect"]).run(
        [sys.executable, "-c", ADDR_RACE, str(gp), str(bp), "500"], timeout=300)
    assert r.success, r
    time.sleep(0.5)
    assert bad_hits == [], "a connect judged for one port reached another"
    assert good_hits, r.stdout
    good.close()
    bad.close()


SENDMMSG = r"""
import ctypes, socket, struct, sys
ports = [int(p) for p in sys.argv[1:3]]
libc = ctypes.CDLL(None, use_errno=True)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
bufs = [ctypes.create_string_buffer(b"hello") for _ in ports]
addrs = [ctypes.create_string_buffer(struct.pack("=HH4s8x", socket.AF_INET, socket.htons(p),
                                                 socket.inet_aton("127.0.0.1")), 16) for p in ports]
iovs = [struct.pack("=QQ", ctypes.addressof(b), 5) for b in bufs]
iovbufs = [ctypes.create_string_buffer(v, 16) for v in iovs]
vec = ctypes.create_string_buffer(64 * len(ports))
for i in range(len(ports)):
    hdr = struct.pack("=QI4xQQQQi4xI4x", ctypes.addressof(addrs[i]), 16, ctypes.addressof(iovbufs[i]),
                      1, 0, 0, 0, 0)
    ctypes.memmove(ctypes.addressof(vec) + 64 * i, hdr, 64)
n = libc.sendmmsg(s.fileno(), vec, len(ports), 0)
print("sent", n, ctypes.get_errno(), flush=True)
"""


def test_sendmmsg_second_destination_is_judged_too(base):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    pa, pb = a.getsockname()[1], b.getsockname()[1]
    judged = []

    def fn(ev, ctx):
        if ev.syscall == "sendmmsg":
            judged.append(ev.port)
            return True if ev.port == pb else None
        return None

    r = Sandbox(fs_readable=base, net_allow=[f"udp://127.0.0.1:{pa}", f"udp://127.0.0.1:{pb}"],
                policy_fn=fn, policy_fn_events=["sendmmsg"]).run(
        [sys.executable, "-c", SENDMMSG, str(pa), str(pb)], timeout=60)
    assert r.stdout.split()[:2] == [b"sent", b"1"], r
    a.settimeout(2)
    assert a.recv(100) == b"hello"
    b.settimeout(0.5)
    with pytest.raises(TimeoutError):
        b.recv(100)
    assert judged == [pa]
    a.close()
    b.close()
