"""Credentials injected by the HTTP proxy (http_credentials / http_auth,
CLI --credential / --http-auth) and the request log (Result.http_log,
--http-log).

Upstreams: an HTTPS echo server for `localhost` on 127.0.0.1 (a per-module
test CA the proxy trusts through the SANDLOCK_HTTPS_UPSTREAM_CA hook) and
a plain HTTP one on 127.0.0.2. Both record the credentials that reached
them and answer without echoing them, so a secret found inside the
sandbox could only have leaked through sandlock. Inside, the client proves
the secret absent from its environment, arguments and memory without
knowing it: it gets the first 8 characters and the SHA-256 of the whole,
and hashes what follows each occurrence of the prefix.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import json
import os
import secrets
import socket
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

SECRET = secrets.token_hex(24)      # a fresh one per session, never given to the sandbox
ENV_VAR = "SL_TEST_HTTP_TOKEN"
CLEARTEXT_REFUSED = "would carry a credential over plain HTTP"


def _cert(subject: str, issuer=None, issuer_key=None, ca=False):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer.subject if issuer is not None else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=1)))
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256()), key


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _echo(self):
        self.server.seen.append({"path": self.path,
                                 "authorization": self.headers.get_all("Authorization") or [],
                                 "x-api-key": self.headers.get_all("X-Api-Key") or []})
        out = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _echo

    def log_message(self, *_args):
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve(ip: str, tls: ssl.SSLContext | None):
    srv = _Server((ip, 0), _Handler)
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    srv.seen = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory):
    """{"https": (port, seen), "http": (port, seen), "ca": upstream CA path}."""
    d = tmp_path_factory.mktemp("cred-upstream")
    ca, ca_key = _cert("sandlock test upstream CA", ca=True)
    leaf, leaf_key = _cert("localhost", ca, ca_key)
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (d / "leaf.key").write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(d / "leaf.pem"), str(d / "leaf.key"))
    https, plain = _serve("127.0.0.1", ctx), _serve("127.0.0.2", None)
    yield {"https": (https.server_address[1], https.seen),
           "http": (plain.server_address[1], plain.seen), "ca": str(d / "ca.pem")}
    for srv in (https, plain):
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def box(base_readable, upstreams, world_dir, monkeypatch):
    """Factory: a Sandbox running sys.executable with both upstream ports
    intercepted, the interception CA in world_dir/bundle.pem, and the
    secret in the caller's environment (ENV_VAR)."""
    monkeypatch.setenv("SANDLOCK_HTTPS_UPSTREAM_CA", upstreams["ca"])
    monkeypatch.setenv(ENV_VAR, SECRET + "\n")  # one trailing newline is dropped
    bundle = os.path.join(world_dir, "bundle.pem")
    with open(bundle, "w") as f:
        f.write("")
    os.chmod(bundle, 0o644)

    def make(**kw) -> Sandbox:
        kw.setdefault("http_ports", [upstreams["https"][0], upstreams["http"][0]])
        kw.setdefault("http_inject_ca", [bundle])
        kw.setdefault("http_credentials", {"TOK": f"env:{ENV_VAR}"})
        return Sandbox(fs_readable=list(base_readable) + [world_dir], **kw)
    return make


CLIENT = r'''
import hashlib, http.client, json, os, ssl, sys
ARGS = json.loads(sys.argv[1])
def request(path, headers=None, plain=False):
    if plain:
        c = http.client.HTTPConnection("127.0.0.2", ARGS["http"], timeout=10)
    else:
        ctx = ssl.create_default_context(cafile=ARGS["bundle"])
        c = http.client.HTTPSConnection("localhost", ARGS["https"], timeout=10, context=ctx)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return [r.status, r.read().decode("latin-1")]
    except (OSError, http.client.HTTPException) as e:
        return [type(e).__name__, str(e)]
    finally:
        c.close()
'''


def run_client(sb: Sandbox, body: str, upstreams, world_dir, extra=None, timeout=60):
    args = {"https": upstreams["https"][0], "http": upstreams["http"][0],
            "bundle": os.path.join(world_dir, "bundle.pem"), **(extra or {})}
    res = sb.run([sys.executable, "-I", "-S", "-c", CLIENT + textwrap.dedent(body),
                  json.dumps(args)], timeout=timeout)
    assert res.success and res.stdout.strip(), (res.stdout, res.stderr)
    return json.loads(res.stdout.decode().strip().splitlines()[-1]), res


SCAN = r'''
PRE, DIGEST, N = ARGS["prefix"].encode(), ARGS["digest"], ARGS["n"]
def leaks(data):
    i = data.find(PRE)
    while i >= 0:
        if hashlib.sha256(data[i:i + N]).hexdigest() == DIGEST:
            return True
        i = data.find(PRE, i + 1)
    return False
def memory():
    found, scanned = False, 0
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    with open("/proc/self/mem", "rb", buffering=0) as mem:
        for line in maps:
            addr, perms = line.split()[:2]
            if perms[0] != "r" or "[vvar" in line or "[vsyscall]" in line:
                continue
            lo, hi = (int(x, 16) for x in addr.split("-"))
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except (OSError, OverflowError, ValueError):
                continue
            scanned += len(data)
            found = found or leaks(data)
    return found, scanned
def readable(path):
    try:
        with open(path, "rb") as f:
            return leaks(f.read())
    except OSError as e:
        return e.errno
'''


def _scan_args():
    return {"prefix": SECRET[:8], "digest": hashlib.sha256(SECRET.encode()).hexdigest(),
            "n": len(SECRET)}


def test_credential_reaches_the_server_never_the_sandbox(box, upstreams, world_dir, tmp_path,
                                                         monkeypatch):
    port, seen = upstreams["https"]
    secret_file = tmp_path / "token"        # outside every grant of the sandbox
    secret_file.write_text(SECRET + "\n")
    for source in (f"env:{ENV_VAR}", f"file:{secret_file}"):
        sb = box(http_allow=["GET localhost/*"], http_credentials={"TOK": source},
                 http_auth=["GET localhost/api/* bearer TOK"])
        sb.fs_readable = list(sb.fs_readable) + ["/proc"]
        if source.startswith("file:"):
            monkeypatch.delenv(ENV_VAR)  # (not declared then: it would be inherited)
        before = len(seen)
        out, _res = run_client(sb, SCAN + textwrap.dedent(r'''
        got = [request("/api/x"), request("/other")]
        mem, scanned = memory()
        print(json.dumps({"got": got, "env_var": ARGS["var"] in os.environ,
                          "environ": readable("/proc/self/environ"),
                          "cmdline": readable("/proc/self/cmdline"),
                          "file": readable(ARGS["file"]), "memory": mem, "scanned": scanned,
                          "supervisor": [readable(f"/proc/{os.getppid()}/{n}")
                                         for n in ("environ", "mem", "cmdline")]}))
        '''), upstreams, world_dir, {**_scan_args(), "var": ENV_VAR, "file": str(secret_file)})
        assert out["got"] == [[200, "ok"], [200, "ok"]], out
        assert seen[before]["authorization"] == [f"Bearer {SECRET}"]
        assert seen[before + 1]["authorization"] == []   # no rule matched: no credential
        assert (out["env_var"], out["environ"], out["cmdline"]) == (False, False, False), out
        assert out["file"] == 13                           # EACCES: the file is not granted
        assert out["memory"] is False and out["scanned"] > 1 << 20, out
        # the supervisor (our parent) holds it, and is out of the sandbox's reach
        assert out["supervisor"][0] in (1, 2, 13) and out["supervisor"][1] in (1, 2, 13), out
        assert out["supervisor"][2] in (False, 1, 2, 13), out


CASES = r'''
out = []
for path, headers in ARGS["cases"]:
    out.append(request(path, headers))
print(json.dumps(out))
'''


def test_replace_and_add_only_for_each_authspec(box, upstreams, world_dir):
    port, seen = upstreams["https"]
    rules = []
    for kind in ("bearer", "basic:bob", "header:X-Api-Key", "query:key"):
        tag = kind.split(":")[0]
        rules += [f"GET localhost/{tag}/r {kind} TOK replace",
                  f"GET localhost/{tag}/a {kind} TOK add-only"]
    sb = box(http_allow=["GET localhost/*"], http_auth=rules)
    mine = {"Authorization": "Bearer child"}
    key = {"X-Api-Key": "child"}
    cases = [("/bearer/r", mine), ("/bearer/a", mine), ("/bearer/a", {}),
             ("/basic/r", mine), ("/basic/a", mine), ("/basic/a", {}),
             ("/header/r", key), ("/header/a", key), ("/header/a", {}),
             ("/query/r?key=child&key&k%65y=x&other=1", {}), ("/query/a?key=child", {}),
             ("/query/a?other=2", {})]
    before = len(seen)
    out, _res = run_client(sb, CASES, upstreams, world_dir, {"cases": cases})
    assert all(r == [200, "ok"] for r in out), out
    got = seen[before:]
    basic = "Basic " + base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert [g["authorization"] for g in got[:6]] == [
        [f"Bearer {SECRET}"], ["Bearer child"], [f"Bearer {SECRET}"],
        [basic], ["Bearer child"], [basic]]
    assert [g["x-api-key"] for g in got[6:9]] == [[SECRET], ["child"], [SECRET]]
    assert [g["path"] for g in got[9:]] == [f"/query/r?other=1&key={SECRET}", "/query/a?key=child",
                                            f"/query/a?other=2&key={SECRET}"]


def test_plain_http_needs_cleartext(box, upstreams, world_dir):
    port, seen = upstreams["http"]
    host = "127.0.0.2"
    sb = box(http_allow=[f"GET {host}/*"],
             http_auth=[f"GET {host}/safe/* bearer TOK", f"GET {host}/clear/* bearer TOK cleartext"])
    before = len(seen)
    out, res = run_client(sb, r'''
    print(json.dumps([request(p, plain=True) for p in ("/safe/x", "/clear/x", "/none")]))
    ''', upstreams, world_dir)
    assert out[0][0] == 403 and CLEARTEXT_REFUSED in out[0][1]
    assert out[1] == [200, "ok"] and out[2] == [200, "ok"]
    assert [(g["path"], g["authorization"]) for g in seen[before:]] == [
        ("/clear/x", [f"Bearer {SECRET}"]), ("/none", [])]
    assert [(e["path"], e["verdict"], e["reason"], e["scheme"]) for e in res.http_log] == [
        ("/safe/x", "deny", "cleartext", "http"), ("/clear/x", "allow", "", "http"),
        ("/none", "allow", "", "http")]


def test_request_log(box, upstreams, world_dir):
    sb = box(http_allow=["GET localhost/api/*"], http_auth=["GET localhost/api/* bearer TOK"])
    out, res = run_client(sb, r'''
    print(json.dumps([request("/api/a?q=QUERYVALUE"), request("/admin"),
                      request("/api/../admin"), request("/api/b", {"Authorization": "Basic x"})]))
    ''', upstreams, world_dir)
    assert [r[0] for r in out] == [200, 403, 403, 200]
    assert res.http_log == [
        {"method": "GET", "host": "localhost", "path": "/api/a", "scheme": "https",
         "verdict": "allow", "status": 200, "reason": "", "credential": "TOK"},
        {"method": "GET", "host": "localhost", "path": "/admin", "scheme": "https",
         "verdict": "deny", "status": 403, "reason": "acl", "credential": ""},
        {"method": "GET", "host": "localhost", "path": "/admin", "scheme": "https",
         "verdict": "deny", "status": 403, "reason": "acl", "credential": ""},
        {"method": "GET", "host": "localhost", "path": "/api/b", "scheme": "https",
         "verdict": "allow", "status": 200, "reason": "", "credential": "TOK"}]
    text = json.dumps(res.http_log) + repr(res)
    assert SECRET not in text and "QUERYVALUE" not in text and "Basic x" not in text
    assert res.http_log_omitted == 0


def test_direct_connect_with_credentials_gets_nothing(box, upstreams, world_dir):
    """D7: a local process outside the sandbox that reaches the proxy's
    listener is closed unread: no request forwarded, no credential."""
    port, seen = upstreams["http"]
    code = textwrap.dedent(r'''
    import json, socket, sys
    s = socket.create_connection(("127.0.0.2", int(sys.argv[1])), timeout=10)
    print(json.dumps(s.getpeername()), flush=True)
    sys.stdin.readline()
    ''')
    sb = box(http_allow=["GET 127.0.0.2/*"], http_auth=["GET 127.0.0.2/* bearer TOK cleartext"])
    proc = sb.popen([sys.executable, "-I", "-S", "-c", code, str(port)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        peer = tuple(json.loads(proc.stdout.readline()))
        n = len(seen)
        with socket.create_connection(peer, timeout=10) as s:
            s.sendall(f"GET /outsider HTTP/1.1\r\nHost: 127.0.0.2:{port}\r\n\r\n".encode())
            try:
                got = s.recv(4096)
            except ConnectionResetError:
                got = b""
        assert got == b"" and len(seen) == n
        proc.stdin.write(b"done\n")
        proc.stdin.flush()
    finally:
        proc.kill()
        proc.wait(10)


# -- no secret in a repr, a summary, an error; parsing ------------------------------------

def test_secret_never_shown(box, monkeypatch):
    from sandlock.httpauth import Secret
    from sandlock.plan import compile_plan
    sb = box(http_allow=["GET localhost/*"], http_auth=["GET localhost/* bearer TOK"])
    plan = compile_plan(sb._policy(), ["/bin/true"])
    assert plan.net.http.secrets["TOK"].reveal() == SECRET.encode()
    shown = repr(sb) + repr(plan) + json.dumps(plan.summary) + repr(plan.net.http.secrets)
    assert SECRET not in shown and "PRIVATE KEY" not in shown
    assert ENV_VAR.encode() not in plan.envp            # stripped, before env overrides
    assert plan.envp.get(b"KEEP") is None
    with pytest.raises(TypeError):
        __import__("pickle").dumps(Secret(b"x"))
    # a declared but unused env: credential is stripped too; env overrides win
    monkeypatch.setenv("SL_OTHER", "x")
    sb = box(http_allow=["GET localhost/*"],
             http_credentials={"TOK": f"env:{ENV_VAR}", "B": "env:SL_OTHER"},
             env={"SL_OTHER": "explicit"})
    plan = compile_plan(sb._policy(), ["/bin/true"])
    assert plan.envp[b"SL_OTHER"] == b"explicit" and ENV_VAR.encode() not in plan.envp


@pytest.mark.parametrize("rule,why", [
    ("GET localhost/x bearer", "too few words"),
    ("GET localhost/x bearer TOK replace cleartext extra", "too many words"),
    ("GET * bearer TOK", "may not be '*'"),
    ("GET localhost/x token TOK", "unknown AUTHSPEC"),
    ("GET localhost/x basic TOK", "needs an argument"),
    ("GET localhost/x basic:a:b TOK", "without ':'"),
    ("GET localhost/x header:Host TOK", "cannot carry"),
    ("GET localhost/x header:a b TOK", "'b' is not declared"),
    ("GET localhost/x query:a&b TOK", "malformed query"),
    ("GET localhost/x bearer NOPE", "not declared"),
    ("GET localhost/x bearer TOK replace add-only", "unexpected"),
    ("GET localhost/x bearer TOK maybe", "unexpected"),
])
def test_auth_rule_errors(rule, why):
    with pytest.raises(PolicyError, match="http_auth") as e:
        Sandbox(http_allow=["GET localhost/*"], http_credentials=["TOK=env:X"], http_auth=[rule])
    assert why in str(e.value)


@pytest.mark.parametrize("spec,why", [
    ("TOK", "no '='"), ("1X=env:A", "malformed name"), ("TOK=literal:abc", "literal values"),
    ("TOK=env:", "empty variable"), ("TOK=fd:1", "fd:1 and fd:2"), ("TOK=fd:x", "malformed fd"),
    ("TOK=ftp:x", "unknown source"),
])
def test_credential_source_errors(spec, why):
    with pytest.raises(PolicyError, match="http_credentials") as e:
        Sandbox(http_allow=["GET localhost/*"], http_credentials=[spec])
    assert why in str(e.value)
    with pytest.raises(PolicyError, match="need http_allow"):
        Sandbox(http_credentials=["TOK=env:X"])


def test_reading_errors_before_start(box, world_dir, tmp_path, monkeypatch):
    from sandlock.plan import compile_plan
    monkeypatch.delenv("SL_MISSING", raising=False)
    cases = [("env:SL_MISSING", "not set"), (f"file:{tmp_path}/nope", "cannot open"),
             (f"file:{world_dir}/bundle.pem", "may read this file itself")]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cases.append((f"file:{empty}", "empty"))
    for source, why in cases:
        sb = box(http_allow=["GET localhost/*"], http_credentials={"TOK": source})
        with pytest.raises(PolicyError, match="credential 'TOK'") as e:
            compile_plan(sb._policy(), ["/bin/true"])
        assert why in str(e.value)
    r, w = os.pipe()
    os.write(w, SECRET.encode())
    os.close(w)
    try:
        sb = box(http_allow=["GET localhost/*"], http_credentials={"TOK": f"fd:{r}"})
        assert compile_plan(sb._policy(), ["/bin/true"]).net.http.secrets["TOK"].reveal() \
            == SECRET.encode()
    finally:
        os.close(r)


def test_apply_query_and_headers_unit():
    from sandlock.httpauth import Secret, apply, parse_auth
    s = Secret(b"a b&c")
    rule = parse_auth("GET h/x query:key K", ["K"])
    assert apply(rule, s, [], "key&key=1&x=2").query == "x=2&key=a%20b%26c"
    assert apply(rule, s, [], None).query == "key=a%20b%26c"
    add = parse_auth("GET h/x query:key K add-only", ["K"])
    assert apply(add, s, [], "key").query == "key" and not apply(add, s, [], "key").injected
    hdr = parse_auth("GET h/x apikey:X-K K", ["K"])
    assert apply(hdr, s, [("x-k", "1"), ("X-K", "2"), ("A", "b")], None).headers == \
        [("A", "b"), ("X-K", "a b&c")]


# -- the CLI ------------------------------------------------------------------------------

def _cli(args, env=None, stdin=None):
    return subprocess.run([sys.executable, "-m", "sandlock", "run", *args], capture_output=True,
                          timeout=60, env=env, stdin=stdin)


def test_cli_errors_are_clear_and_before_start(tmp_path, base_readable):
    marker = tmp_path / "started"
    cmd = ["--", "/bin/sh", "-c", f"echo > {marker}"]
    base = ["-w", str(tmp_path), "--http-allow", "GET localhost/*"]
    env = {k: v for k, v in os.environ.items() if k != "SL_MISSING"}
    cases = [
        (["--credential", "TOK"], "--credential: invalid credential"),
        (["--credential", "TOK=env:X", "--http-auth", "GET localhost/x bearer"], "--http-auth:"),
        (["--credential", "TOK=env:SL_MISSING", "--http-auth", "GET localhost/x bearer TOK"],
         "not set"),
        (["--credential", "TOK=file:/nonexistent-dir/absent"], "cannot open the file"),
        (["--credential", f"TOK=file:{tmp_path}/x"], "the sandbox may read this file itself"),
        (["--http-log", "/nonexistent-dir/log"], "--http-log: cannot write"),
    ]
    for extra, why in cases:
        r = _cli(base + extra + cmd, env=env)
        assert r.returncode == 125, (extra, r.stderr)
        assert why.encode() in r.stderr and b"Traceback" not in r.stderr, r.stderr
        assert not marker.exists()


def test_cli_credentials_and_log(upstreams, base_readable, world_dir, tmp_path):
    port, seen = upstreams["https"]
    bundle = os.path.join(world_dir, "bundle.pem")
    open(bundle, "w").close()
    os.chmod(bundle, 0o644)
    log = tmp_path / "log.jsonl"
    code = textwrap.dedent(r'''
    import http.client, ssl, sys
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    for p in ("/api/x", "/admin"):
        c = http.client.HTTPSConnection("localhost", int(sys.argv[1]), context=ctx, timeout=10)
        c.request("GET", p)
        print(c.getresponse().status)
    ''')
    argv = []
    for p in base_readable + [world_dir]:
        argv += ["-r", p]
    argv += ["--http-allow", "GET localhost/api/*", "--http-port", str(port),
             "--http-inject-ca", bundle, "--credential", "TOK=fd:0",
             "--http-auth", "GET localhost/api/* header:X-Api-Key TOK", "--http-log", str(log),
             "--", sys.executable, "-I", "-S", "-c", code, str(port), bundle]
    env = dict(os.environ, SANDLOCK_HTTPS_UPSTREAM_CA=upstreams["ca"])
    before = len(seen)
    r = subprocess.run([sys.executable, "-m", "sandlock", "run", *argv], capture_output=True,
                       timeout=60, env=env, input=(SECRET + "\n").encode())
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"200", b"403"]
    assert seen[before]["x-api-key"] == [SECRET]
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["path"], e["verdict"], e["status"], e["credential"]) for e in entries] == [
        ("/api/x", "allow", 200, "TOK"), ("/admin", "deny", 403, "")]
    assert SECRET not in log.read_text()
    # a seekable stdin is refused for fd:0 (the sandbox could seek back)
    regular = tmp_path / "stdin"
    regular.write_text(SECRET)
    with open(regular, "rb") as f:
        r = subprocess.run([sys.executable, "-m", "sandlock", "run", *argv], capture_output=True,
                           timeout=60, env=env, stdin=f)
    assert r.returncode == 125 and b"seekable" in r.stderr


def test_launch_carries_the_secret_to_the_supervisor_part_only(box):
    import marshal

    from sandlock import httpacl, protocol
    from sandlock.launch import launch_message
    from sandlock.plan import compile_plan
    sb = box(http_allow=["GET localhost/*"], http_auth=["GET localhost/* query:k TOK add-only"])
    plan = compile_plan(sb._policy(), ["/bin/true"])
    msg = launch_message(plan, None, 0o022, True)
    child, _supervisor = msg._fields()
    assert SECRET.encode() not in marshal.dumps(child)   # what the command gets: no secret
    back = protocol.decode(protocol.encode(msg), protocol.Channel.LAUNCH).supervisor.net.http
    assert back.secrets["TOK"].reveal() == SECRET.encode() and back.auth == plan.net.http.auth
    assert SECRET not in repr(back)
    # a rule whose secret did not come: refused, never forwarded without it
    fields = list(plan.net.http.fields())
    fields[-1] = {}
    with pytest.raises(ValueError, match="without a secret"):
        httpacl.HttpAcl.build(tuple(fields))


def test_request_log_is_bounded():
    from sandlock import httpacl
    from sandlock.supervisor.httpproxy import MAX_LOG, Proxy
    proxy = Proxy(httpacl.HttpAcl(httpacl.parse_rules(["GET h/*"], "http_allow")))
    try:
        for i in range(MAX_LOG + 5):
            proxy._record("GET", "h", f"/{i}?token=x", False, "allow")
        log, more = proxy.export_log()
        assert len(log) == MAX_LOG and more == 5
        assert log[0] == ("GET", "h", "/0", "http", "allow", 0, "", "")
    finally:
        proxy.close()
        proxy.close()  # a second close does nothing


def test_finished_frame_fits_with_a_full_log():
    """Learn records, denials and the HTTP log share one Finished frame:
    the log gives way when the others fill it."""
    from sandlock import protocol
    from sandlock.supervisor.spare import _fitted
    out = protocol.Finished(learned=[("read", f"/{i}" + "x" * 3000) for i in range(250)],
                            http_log=[("GET", f"{i}" + "h" * 250, f"/{i}" + "p" * 250, "https",
                                       "allow", 200, "", "TOK") for i in range(1000)])
    data = _fitted(out)
    back = protocol.decode(data, protocol.Channel.RESULT)
    assert len(data) - protocol.HEADER_SIZE <= protocol.MAX_PAYLOAD
    assert len(back.http_log) + back.http_log_more == 1000 and back.http_log_more > 0
    assert len(back.learned) == 250
