"""Red-team attack on the HTTP ACL proxy: request smuggling in a chunked body.

The proxy read a chunk size with Python's int(size, 16), which also takes
`0x2d`, `2_d`, `+2d` and surrounding spaces, accepted bare-LF lines, and
forwarded the line as sent. A server that reads the RFC's chunk size (hex
digits: `0x2d` is 0) ends the body there and takes the rest, which the
proxy counted as body, for a second request the rules never judged
(`GET /admin` behind an allowed `POST /allowed`). The control parses the
same bytes the way such a server does.
"""
from __future__ import annotations

import json
import re
import socket
import sys
import threading

from sandlock import Sandbox

SMUGGLED = b"\r\nGET /admin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _payload(size_line: bytes) -> bytes:
    return (b"POST /allowed HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + size_line + SMUGGLED + b"\r\n0\r\n\r\n")


CASES = {
    "0x": b"0x%x\r\n" % len(SMUGGLED),
    "underscore": b"0_%x\r\n" % len(SMUGGLED),
    "plus": b"+%x\r\n" % len(SMUGGLED),
    "space": b" %x\r\n" % len(SMUGGLED),
    "bare_lf": b"%x\n" % len(SMUGGLED),
}


def _requests(raw: bytes) -> list[str]:
    """Request lines as a server reading the RFC's chunk-size (leading hex
    digits) sees them in `raw`."""
    out = []
    while raw:
        head, sep, raw = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        out.append(lines[0].decode("latin-1").rsplit(" ", 1)[0])
        if b"transfer-encoding: chunked" not in head.lower():
            continue
        while True:
            line, _, raw = raw.partition(b"\n")
            m = re.match(rb"[0-9a-fA-F]*", line.strip(b"\r"))
            size = int(m.group(0) or b"0", 16)
            if size == 0:
                while True:   # trailers up to an empty line
                    t, _, raw = raw.partition(b"\r\n")
                    if not t:
                        break
                break
            raw = raw[size + 2:]
    return out


def test_control_a_strict_server_sees_the_smuggled_request():
    assert _requests(_payload(CASES["0x"]))[:2] == ["POST /allowed", "GET /admin"]


CLIENT = r'''
import json, socket, sys
A = json.loads(sys.argv[1])
out = {}
for name, data in A["cases"].items():
    s = socket.create_connection(("127.0.0.1", A["port"]), timeout=10)
    s.sendall(data.encode("latin-1"))
    got = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except OSError as e:
        got += b"<" + type(e).__name__.encode() + b">"
    s.close()
    out[name] = got.decode("latin-1")[:40]
print(json.dumps(out))
'''


def test_chunk_sizes_python_accepts_are_refused(base_readable):
    seen: list[bytes] = []
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.settimeout(1.0)
            raw = b""
            try:
                while b"0\r\n\r\n" not in raw[-7:] or raw.count(b"\r\n\r\n") < 2:
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    raw += chunk
            except OSError:
                pass
            seen.append(raw)
            try:
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except OSError:
                pass
            c.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        sb = Sandbox(fs_readable=list(base_readable), http_ports=[port],
                     http_allow=["POST 127.0.0.1/allowed"])
        cases = {k: _payload(v).decode("latin-1") for k, v in CASES.items()}
        r = sb.run([sys.executable, "-I", "-S", "-c", CLIENT, json.dumps({"port": port, "cases": cases})],
                   timeout=60)
        assert r.success, (r.error, r.stderr)
        out = json.loads(r.stdout.decode().splitlines()[-1])
        for name, reply in out.items():
            assert reply.startswith("HTTP/1.1 400"), (name, reply)
        for raw in seen:
            assert "GET /admin" not in _requests(raw), raw
            assert b"/admin" not in raw, raw
    finally:
        srv.close()
