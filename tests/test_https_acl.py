"""HTTPS interception (http_ca / http_key / http_inject_ca / http_ca_out).

A local HTTPS echo server on 127.0.0.1 with a certificate for `localhost`
from a per-session test "upstream" CA; the proxy trusts that CA through the
SANDLOCK_HTTPS_UPSTREAM_CA test hook. Clients inside the sandbox are
http.client / ssl, trusting the interception CA through a bundle served
by http_inject_ca (or http_ca_out's file, or the caller's own CA). No DNS:
`localhost` is pinned in the sandbox's /etc/hosts.
"""
from __future__ import annotations

import datetime
import http.server
import json
import os
import socketserver
import ssl
import subprocess
import sys
import textwrap
import threading

import pytest

from sandlock import PolicyError, Sandbox

pytest.importorskip("cryptography")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

ACL_BLOCKED = "Blocked by sandlock HTTP ACL policy"
SNI_MISMATCH = "does not match the TLS server name"


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _make_ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _make_leaf(ca_cert, ca_key, name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _echo(self):
        seen = {"method": self.command, "path": self.path, "host": self.headers.get("Host")}
        self.server.seen.append(seen)
        out = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _echo

    def log_message(self, *_args):
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """(port, requests seen, path of the upstream CA's PEM)."""
    d = tmp_path_factory.mktemp("https-upstream")
    ca, ca_key = _make_ca("sandlock test upstream CA")
    leaf, leaf_key = _make_leaf(ca, ca_key, "localhost")
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (d / "leaf.key").write_bytes(_pem_key(leaf_key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(d / "leaf.pem"), str(d / "leaf.key"))
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.seen = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1], srv.seen, str(d / "ca.pem")
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def box(base_readable, upstream, world_dir, monkeypatch):
    """Factory: a Sandbox running sys.executable, the echo port intercepted,
    the world_dir readable (its bundle.pem: the injected trust bundle)."""
    port, _seen, ca_path = upstream
    monkeypatch.setenv("SANDLOCK_HTTPS_UPSTREAM_CA", ca_path)
    bundle = os.path.join(world_dir, "bundle.pem")
    with open(bundle, "w") as f:
        f.write("# the sandbox's trust bundle\n")
    os.chmod(bundle, 0o644)

    def make(**kw) -> Sandbox:
        kw.setdefault("http_ports", [port])
        kw.setdefault("http_inject_ca", [bundle])
        return Sandbox(fs_readable=list(base_readable) + [world_dir], **kw)
    return make


CLIENT = r'''
import http.client, json, socket, ssl, sys
ARGS = json.loads(sys.argv[1])
def context(cafile):
    ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    return ctx
def request(port, target, headers=None, conn=None, cafile=None, method="GET"):
    c = conn or http.client.HTTPSConnection("localhost", port, timeout=10, context=context(cafile))
    try:
        headers = dict(headers or {})
        c.putrequest(method, target, skip_host="Host" in headers, skip_accept_encoding=True)
        for k, v in headers.items():
            c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        return [r.status, r.read().decode("latin-1")]
    except (OSError, http.client.HTTPException) as e:
        return [type(e).__name__, str(e)]
    finally:
        if conn is None:
            c.close()
'''


def run_client(sb: Sandbox, body: str, args: dict):
    code = CLIENT + textwrap.dedent(body)
    res = sb.run([sys.executable, "-I", "-S", "-c", code, json.dumps(args)], timeout=60)
    assert res.success, (res.stdout, res.stderr)
    return json.loads(res.stdout.decode().strip().splitlines()[-1])


def test_allow_and_deny_over_https(box, upstream, world_dir):
    port, seen, _ = upstream
    sb = box(http_allow=["GET localhost/ok/*"], http_deny=["GET localhost/ok/secret"])
    before = len(seen)
    out = run_client(sb, """
        B = ARGS["bundle"]
        print(json.dumps([request(ARGS["port"], p, cafile=B)
                          for p in ("/ok/a", "/admin", "/ok/secret", "/ok/../admin")]
                         + [request(ARGS["port"], "/ok/b", cafile=B, method="POST")]))
    """, {"port": port, "bundle": os.path.join(world_dir, "bundle.pem")})
    assert out[0][0] == 200 and json.loads(out[0][1])["path"] == "/ok/a", out
    for r in out[1:]:
        assert r[0] == 403 and ACL_BLOCKED in r[1]
    assert [s["path"] for s in seen[before:]] == ["/ok/a"]


def test_bundle_shows_the_ca_appended_inside_only(box, upstream, world_dir):
    port, _seen, _ = upstream
    sb = box(http_allow=["GET localhost/*"])
    bundle = os.path.join(world_dir, "bundle.pem")
    out = run_client(sb, """
        print(json.dumps(open(ARGS["bundle"]).read()))
    """, {"bundle": bundle})
    assert out.startswith("# the sandbox's trust bundle\n")
    assert "BEGIN CERTIFICATE" in out and "PRIVATE KEY" not in out
    with open(bundle) as f:
        assert f.read() == "# the sandbox's trust bundle\n"  # the real file is untouched


SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@pytest.mark.skipif(not os.path.isfile(SYSTEM_BUNDLE), reason="no system trust bundle")
def test_system_bundle_injected(box, upstream):
    """The system bundle (large: read by the supervisor, not sent with the
    plan) with the CA appended: an ssl context reading it through
    SSL_CERT_FILE trusts the interception, and so does a default context
    when OpenSSL's default CA file is a symlink to it (served the same)."""
    port, _seen, _ = upstream
    sb = box(http_allow=["GET localhost/*"], http_inject_ca=[SYSTEM_BUNDLE],
             env={"SSL_CERT_FILE": SYSTEM_BUNDLE})
    out = run_client(sb, """
        print(json.dumps(request(ARGS["port"], "/sys")))
    """, {"port": port})
    assert out[0] == 200
    default = ssl.get_default_verify_paths().openssl_cafile
    if default and default != SYSTEM_BUNDLE and os.path.realpath(default) == SYSTEM_BUNDLE:
        sb = box(http_allow=["GET localhost/*"], http_inject_ca=[SYSTEM_BUNDLE])
        out = run_client(sb, """
            d = ssl.get_default_verify_paths().openssl_cafile
            print(json.dumps([request(ARGS["port"], "/default"), open(d).read().count("BEGIN")]))
        """, {"port": port})
        with open(SYSTEM_BUNDLE) as f:
            assert out == [[200, out[0][1]], f.read().count("BEGIN") + 1]


def test_untrusted_without_the_ca(box, upstream):
    """The system trust store alone does not trust the interception CA."""
    port, seen, _ = upstream
    sb = box(http_allow=["GET localhost/*"])
    before = len(seen)
    out = run_client(sb, """
        print(json.dumps(request(ARGS["port"], "/x")))
    """, {"port": port})
    assert out[0] == "SSLCertVerificationError"
    assert len(seen) == before


def test_host_must_equal_sni(box, upstream, world_dir):
    port, seen, _ = upstream
    sb = box(http_allow=["GET *"])
    before = len(seen)
    out = run_client(sb, """
        B = ARGS["bundle"]; P = ARGS["port"]
        good = request(P, "/fine", cafile=B)
        bad = request(P, "/spoof", {"Host": f"127.0.0.1:{P}"}, cafile=B)
        c = http.client.HTTPSConnection("localhost", P, timeout=10, context=context(B))
        later = [request(P, "/first", conn=c), request(P, "/second", {"Host": "127.0.0.1"}, conn=c)]
        print(json.dumps([good, bad, later]))
    """, {"port": port, "bundle": os.path.join(world_dir, "bundle.pem")})
    good, bad, later = out
    assert good[0] == 200 and json.loads(good[1])["host"] == f"localhost:{port}"
    assert bad[0] == 403 and SNI_MISMATCH in bad[1]
    assert later[0][0] == 200 and later[1][0] == 403 and SNI_MISMATCH in later[1][1]
    assert [s["path"] for s in seen[before:]] == ["/fine", "/first"]


def test_tls_without_sni_or_with_a_foreign_one_is_refused(box, upstream, world_dir):
    port, seen, _ = upstream
    sb = box(http_allow=["GET *"])
    before = len(seen)
    out = run_client(sb, """
        def hello(name):
            ctx = ssl.create_default_context(cafile=ARGS["bundle"])
            ctx.check_hostname = False
            s = socket.create_connection(("127.0.0.1", ARGS["port"]), timeout=10)
            try:
                t = ctx.wrap_socket(s, server_hostname=name)
                t.sendall(b"GET /sni HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n")
                return t.recv(100).decode("latin-1")[:12]
            except OSError as e:
                return type(e).__name__
            finally:
                s.close()
        print(json.dumps([hello(None), hello("localhost"), hello("elsewhere.invalid")]))
    """, {"port": port, "bundle": os.path.join(world_dir, "bundle.pem")})
    assert out[0] in ("SSLError", "SSLEOFError", "ConnectionResetError", "SSLZeroReturnError")
    assert out[1] == "HTTP/1.1 200"
    assert out[2] in ("SSLError", "SSLEOFError", "ConnectionResetError")  # a name not of this destination
    assert [s["path"] for s in seen[before:]] == ["/sni"]


def test_http2_is_not_offered_nor_passed(box, upstream, world_dir):
    """ALPN offers HTTP/1.1 only: a client asking for h2 gets no h2, and
    the HTTP/2 preface sent anyway is refused, never forwarded."""
    port, seen, _ = upstream
    sb = box(http_allow=["GET localhost/*"])
    before = len(seen)
    out = run_client(sb, """
        ctx = ssl.create_default_context(cafile=ARGS["bundle"])
        ctx.set_alpn_protocols(["h2"])
        t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", ARGS["port"]), timeout=10),
                            server_hostname="localhost")
        alpn = t.selected_alpn_protocol()
        t.sendall(b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n" + bytes(9))
        try:
            got = t.recv(100).decode("latin-1")
        except OSError as e:
            got = type(e).__name__
        print(json.dumps([alpn, got]))
    """, {"port": port, "bundle": os.path.join(world_dir, "bundle.pem")})
    assert out[0] in (None, "http/1.1")
    assert out[1] in ("", "SSLEOFError", "ConnectionResetError", "SSLZeroReturnError"), out
    assert len(seen) == before


def test_tls_refused_without_interception(base_readable, upstream):
    """With only http_allow, TLS on an HTTP port is refused, not passed."""
    port, seen, _ = upstream
    sb = Sandbox(fs_readable=list(base_readable), http_allow=["GET localhost/*"], http_ports=[port])
    before = len(seen)
    out = run_client(sb, """
        print(json.dumps(request(ARGS["port"], "/x")))
    """, {"port": port})
    assert out[0] != 200
    assert len(seen) == before


def test_upstream_certificate_is_verified(box, upstream, world_dir, monkeypatch):
    port, seen, _ = upstream
    monkeypatch.delenv("SANDLOCK_HTTPS_UPSTREAM_CA")
    sb = box(http_allow=["GET localhost/*"])
    before = len(seen)
    out = run_client(sb, """
        print(json.dumps(request(ARGS["port"], "/x", cafile=ARGS["bundle"])))
    """, {"port": port, "bundle": os.path.join(world_dir, "bundle.pem")})
    assert out[0] == 502
    assert len(seen) == before


def test_ca_out_writes_the_certificate_only(box, upstream, world_dir):
    port, _seen, _ = upstream
    out_path = os.path.join(world_dir, "ca-out.pem")
    sb = box(http_allow=["GET localhost/*"], http_ca_out=out_path)
    out = run_client(sb, """
        print(json.dumps([request(ARGS["port"], "/x", cafile=ARGS["ca"]),
                          request(ARGS["port"], "/x")]))
    """, {"port": port, "ca": out_path})
    with open(out_path, "rb") as f:
        pem = f.read()
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----") and b"PRIVATE KEY" not in pem
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    assert [n.value for n in nc.permitted_subtrees] == ["localhost"]
    assert out[0][0] == 200 and out[1][0] == "SSLCertVerificationError"


def test_callers_own_ca(box, upstream, world_dir):
    port, _seen, _ = upstream
    ca, key = _make_ca("caller's own CA")
    ca_path, key_path = os.path.join(world_dir, "own.pem"), os.path.join(world_dir, "own.key")
    with open(ca_path, "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    os.chmod(ca_path, 0o644)
    with open(key_path, "wb") as f:
        f.write(_pem_key(key))
    sb = box(http_allow=["GET localhost/*"], http_inject_ca=[], http_ca=ca_path, http_key=key_path)
    out = run_client(sb, """
        import ssl
        c = http.client.HTTPSConnection("localhost", ARGS["port"], timeout=10,
                                        context=context(ARGS["ca"]))
        r = request(ARGS["port"], "/own", conn=c)
        issuer = dict(x[0] for x in c.sock.getpeercert()["issuer"])["commonName"]
        print(json.dumps([r, issuer, request(ARGS["port"], "/x")]))
    """, {"port": port, "ca": ca_path})
    assert out[0][0] == 200 and out[1] == "caller's own CA"
    assert out[2][0] == "SSLCertVerificationError"  # the system store does not trust it


def test_ca_options_are_checked(base_readable, world_dir):
    with pytest.raises(PolicyError, match="give both"):
        Sandbox(http_allow=["GET x"], http_ca=os.path.join(world_dir, "a.pem"))
    with pytest.raises(PolicyError, match="need http_allow or"):
        Sandbox(http_inject_ca=["/etc/ssl/certs/ca-certificates.crt"])
    with pytest.raises(PolicyError, match="http_ca_out: needs"):
        Sandbox(http_allow=["GET x"], http_ca_out=os.path.join(world_dir, "o.pem"))
    ca, key = _make_ca("not used")
    leaf, leaf_key = _make_leaf(ca, key, "leaf")
    cert_path, key_path = os.path.join(world_dir, "l.pem"), os.path.join(world_dir, "l.key")
    with open(cert_path, "wb") as f:
        f.write(leaf.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(_pem_key(leaf_key))
    sb = Sandbox(fs_readable=list(base_readable), http_allow=["GET x"], http_ca=cert_path,
                 http_key=key_path)  # the files are read when a run starts
    with pytest.raises(PolicyError, match="not a CA certificate"):
        sb.run(["/bin/true"])
    with pytest.raises(PolicyError, match="cannot read"):
        Sandbox(fs_readable=list(base_readable), http_allow=["GET x"], http_ca=cert_path,
                http_key=key_path + ".missing").run(["/bin/true"])


def test_missing_cryptography_is_a_clear_error(monkeypatch, base_readable, world_dir):
    for name in [m for m in sys.modules if m == "cryptography" or m.startswith("cryptography.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(PolicyError, match=r"pip install 'sandlock\[http\]'"):
        Sandbox(fs_readable=list(base_readable), http_allow=["GET localhost/*"],
                http_inject_ca=[os.path.join(world_dir, "b.pem")])._policy()
    # without interception the core needs no cryptography
    res = Sandbox(fs_readable=list(base_readable), http_allow=["GET localhost/*"]).run(["/bin/true"])
    assert res.success


def test_cli_flags(base_readable, upstream, world_dir, monkeypatch):
    port, seen, ca_path = upstream
    monkeypatch.setenv("SANDLOCK_HTTPS_UPSTREAM_CA", ca_path)
    out_path = os.path.join(world_dir, "cli-ca.pem")
    code = CLIENT + "\nprint(json.dumps(request(ARGS['port'], '/cli', cafile=ARGS['ca'])))\n"
    cmd = [sys.executable, "-m", "sandlock", "run"]
    for p in list(base_readable) + [world_dir]:
        cmd += ["-r", p]
    cmd += ["--http-allow", "GET localhost/cli", "--http-port", str(port),
            "--http-inject-ca", os.path.join(world_dir, "none.pem"), "--http-ca-out", out_path,
            "--", sys.executable, "-I", "-S", "-c", code,
            json.dumps({"port": port, "ca": out_path})]
    proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.decode().strip().splitlines()[-1])[0] == 200
