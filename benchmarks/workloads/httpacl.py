"""The HTTP ACL proxy: http_keepalive_1000, http_newconn_200, https_first_leaf,
https_cached_leaf.

A minimal HTTP/1.1 server (threads of the benchmark process, a fixed
2-byte answer, keep-alive) on 127.0.0.1, so the rows show the proxy's
cost rather than a slow server's. The client is Python's http.client,
timing itself (interpreter start-up excluded); unsandboxed it talks to
the server directly, under sandlock through the HTTP ACL proxy
(http_allow=["GET 127.0.0.1/*"], the server's port in http_ports).

The HTTPS rows: one request on a new TLS connection, unsandboxed to a
TLS server with a certificate from a benchmark CA, under sandlock
intercepted (http_inject_ca; the proxy trusts the benchmark CA through
the SANDLOCK_HTTPS_UPSTREAM_CA hook). `first_leaf` is a run's first
request (the proxy mints the leaf certificate for the name then),
`cached_leaf` the second one, on a new connection, of the same run.
"""
from __future__ import annotations

import datetime
import os
import socket
import ssl
import sys
import tempfile
import threading

from ..core import (SANDLOCK, UNSANDBOXED, Row, Settings, Unavailable, in_program, measure,
                    readable, run_plain, run_sandlock)

KEEPALIVE = 1000
NEWCONN = 200

KEEPALIVE_PROGRAM = """
import http.client, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
c.request("GET", "/warm"); c.getresponse().read()
t0 = time.perf_counter()
for i in range(n):
    c.request("GET", "/item")
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"ok"
print(time.perf_counter() - t0)
"""

NEWCONN_PROGRAM = """
import http.client, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
t0 = time.perf_counter()
for i in range(n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/item")
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"ok"
    c.close()
print(time.perf_counter() - t0)
"""

# Two requests, each on a new TLS connection; prints the time of the one asked for.
HTTPS_PROGRAM = """
import socket, ssl, sys, time
port, cafile, which = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=cafile)
req = f"GET /item HTTP/1.1\\r\\nHost: localhost:{port}\\r\\nConnection: close\\r\\n\\r\\n".encode()
times = []
for _ in range(2):
    t0 = time.perf_counter()
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30),
                        server_hostname="localhost")
    s.sendall(req)
    got = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    s.close()
    times.append(time.perf_counter() - t0)
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"ok"), got[:100]
print(times[which])
"""


class TinyHttp:
    """HTTP/1.1 on 127.0.0.1: every request gets 200 and 'ok'; keep-alive
    unless the request says close. TLS when given a context."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.tls = tls
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="tiny-http")
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(60)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            buf = b""
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                    continue
                head, buf = buf[:end].lower(), buf[end + 4:]
                conn.sendall(self.ANSWER)
                if b"connection: close" in head:
                    return
        except OSError:
            pass
        finally:
            conn.close()

    def __enter__(self) -> "TinyHttp":
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _policy(port: int, **extra) -> dict:
    return {"fs_readable": readable(*extra.pop("readable", ())), "http_allow": ["GET 127.0.0.1/*"],
            "http_ports": [port], **extra}


def _row(name: str, program: str, count: int, s: Settings, reps: int) -> Row:
    with TinyHttp() as srv:
        cmd = [sys.executable, "-c", program, str(srv.port), str(count)]
        policy = _policy(srv.port)
        cells = measure({
            UNSANDBOXED: lambda: in_program(run_plain(cmd)),
            SANDLOCK: lambda: in_program(run_sandlock(cmd, policy, workload=name)),
        }, reps)
    return Row(name=name, metric=f"in-program time per GET ({count} GETs, http.client)",
               unit="us", per=count, reps=reps, cells=cells)


def http_keepalive_1000(s: Settings) -> Row:
    """1,000 GETs on one keep-alive connection through the HTTP ACL proxy, µs each."""
    return _row("http_keepalive_1000", KEEPALIVE_PROGRAM, KEEPALIVE, s, s.reps(7, 2))


def http_newconn_200(s: Settings) -> Row:
    """200 GETs, each on a new connection, through the HTTP ACL proxy, µs each."""
    return _row("http_newconn_200", NEWCONN_PROGRAM, NEWCONN, s, s.reps(7, 2))


def _tls_material(d: str) -> tuple[ssl.SSLContext, str]:
    """A benchmark CA (its PEM path) and a server context for `localhost`."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise Unavailable("needs cryptography (pip install sandlock[http])") from None
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(cn, issuer=None, issuer_key=None):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        b = (x509.CertificateBuilder().subject_name(name)
             .issuer_name(issuer.subject if issuer is not None else name)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(days=1)))
        if issuer is None:
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        else:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        return b.sign(issuer_key or key, hashes.SHA256()), key
    ca, ca_key = cert("sandlock benchmark CA")
    leaf, leaf_key = cert("localhost", ca, ca_key)
    pem = serialization.Encoding.PEM
    paths = {n: os.path.join(d, n) for n in ("ca.pem", "leaf.pem", "leaf.key", "bundle.pem")}
    with open(paths["ca.pem"], "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(paths["leaf.pem"], "wb") as f:
        f.write(leaf.public_bytes(pem))
    with open(paths["leaf.key"], "wb") as f:
        f.write(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    open(paths["bundle.pem"], "w").close()
    os.chmod(d, 0o755)
    os.chmod(paths["bundle.pem"], 0o644)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(paths["leaf.pem"], paths["leaf.key"])
    return ctx, paths["ca.pem"]


def _https_row(name: str, which: int, s: Settings) -> Row:
    d = tempfile.mkdtemp(prefix="sandlock-bench-https-", dir="/tmp")
    saved = os.environ.get("SANDLOCK_HTTPS_UPSTREAM_CA")
    try:
        ctx, ca = _tls_material(d)
        os.environ["SANDLOCK_HTTPS_UPSTREAM_CA"] = ca
        bundle = os.path.join(d, "bundle.pem")
        with TinyHttp(ctx) as srv:
            bare = [sys.executable, "-c", HTTPS_PROGRAM, str(srv.port), ca, str(which)]
            boxed = [sys.executable, "-c", HTTPS_PROGRAM, str(srv.port), bundle, str(which)]
            policy = {"fs_readable": readable(d), "http_allow": ["GET localhost/*"],
                      "http_ports": [srv.port], "http_inject_ca": [bundle]}
            reps = s.reps(15, 3)
            cells = measure({
                UNSANDBOXED: lambda: in_program(run_plain(bare)),
                SANDLOCK: lambda: in_program(run_sandlock(boxed, policy, workload=name)),
            }, reps)
    finally:
        if saved is None:
            os.environ.pop("SANDLOCK_HTTPS_UPSTREAM_CA", None)
        else:
            os.environ["SANDLOCK_HTTPS_UPSTREAM_CA"] = saved
        import shutil
        shutil.rmtree(d, ignore_errors=True)
    what = "first request of a run (leaf minted)" if which == 0 else \
        "second request, new connection (leaf cached)"
    return Row(name=name, metric=f"one HTTPS GET, in-program: {what}", unit="ms", reps=reps,
               cells=cells)


def https_first_leaf(s: Settings) -> Row:
    """One HTTPS GET through interception, a run's first (leaf minted), ms."""
    return _https_row("https_first_leaf", 0, s)


def https_cached_leaf(s: Settings) -> Row:
    """One HTTPS GET through interception, leaf already cached, ms."""
    return _https_row("https_cached_leaf", 1, s)
