"""HTTP ACL (http_allow / http_deny / http_ports) against local echo servers.

Three echo servers on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (distinct "hosts",
each its own port, all of them http_ports); clients inside the sandbox are
urllib and http.client. The servers record what reached them, so a refused
request is proved refused *before* the server, and an allowed one is seen
with the path the rules matched. No DNS: hosts are IP literals, or
`localhost` (pinned in the sandbox's synthetic /etc/hosts).
"""
from __future__ import annotations

import http.server
import json
import socket
import socketserver
import subprocess
import sys
import textwrap
import threading

import pytest

from sandlock import PolicyError, Sandbox

ACL_BLOCKED = "Blocked by sandlock HTTP ACL policy"
MISMATCH = "Host header does not match"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _echo(self):
        body = b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        elif self.headers.get("Content-Length"):
            body = self.rfile.read(int(self.headers["Content-Length"]))
        seen = {"method": self.command, "path": self.path, "host": self.headers.get("Host"),
                "local": self.connection.getsockname()[0], "client": self.client_address[1],
                "body": body.decode("latin-1")}
        self.server.seen.append(seen)
        out = json.dumps(seen).encode()
        if self.path.endswith("/chunked-reply"):  # a chunked response, with a trailer
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = len(out) // 2
            self.wfile.write(b"%x\r\n%s\r\n%x;x=1\r\n%s\r\n0\r\nX-T: 1\r\n\r\n"
                             % (half, out[:half], len(out) - half, out[half:]))
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)
        if self.path.endswith("/drop"):
            self.close_connection = True  # closes without saying so (an idle keep-alive timeout)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _echo

    def log_message(self, *_args):
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def servers():
    """ip → (port, list of requests seen)."""
    out, running = {}, []
    for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        srv = _Server((ip, 0), _Handler)
        srv.seen = []
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        running.append(srv)
        out[ip] = (srv.server_address[1], srv.seen)
    yield out
    for srv in running:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def box(base_readable, servers):
    """Factory: a Sandbox running sys.executable, every echo port intercepted."""
    ports = [p for p, _s in servers.values()]

    def make(**kw) -> Sandbox:
        kw.setdefault("http_ports", ports)
        return Sandbox(fs_readable=list(base_readable), **kw)
    return make


CLIENT = r'''
import http.client, json, socket, sys, urllib.request, urllib.error
ARGS = json.loads(sys.argv[1])
def request(ip, port, method, target, headers=None, body=None, conn=None):
    """(status, body text) of one request, or the error's name."""
    c = conn or http.client.HTTPConnection(ip, port, timeout=10)
    try:
        headers = dict(headers or {})
        c.putrequest(method, target, skip_host="Host" in headers, skip_accept_encoding=True)
        for k, v in headers.items():
            c.putheader(k, v)
        if body is not None and "Transfer-Encoding" not in headers:
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body.encode() if body is not None else None)
        r = c.getresponse()
        return [r.status, r.read().decode("latin-1")]
    except (OSError, http.client.HTTPException) as e:
        return [type(e).__name__, str(e)]
    finally:
        if conn is None:
            c.close()
'''


def run_client(sb: Sandbox, code: str, args: dict, timeout: float = 30):
    r = sb.run([sys.executable, "-I", "-S", "-c", CLIENT + textwrap.dedent(code), json.dumps(args)],
               timeout=timeout)
    assert r.success, (r.error, r.stdout, r.stderr)
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


MANY = r'''
out = [request(ARGS["ip"], ARGS["port"], m, t, h) for m, t, h in ARGS["cases"]]
print(json.dumps(out))
'''


def test_allow_deny_matrix_with_bypass_attempts(box, servers):
    port, seen = servers["127.0.0.2"]
    host = {"Host": f"127.0.0.2:{port}"}
    cases = [
        ("GET", "/v1/items", "ok", "/v1/items"),
        ("GET", "/v1/", "ok", "/v1/"),
        ("GET", "/v1/a?x=1&y=/admin", "ok", "/v1/a?x=1&y=/admin"),
        ("GET", "/v1/a?", "ok", "/v1/a?"),
        ("GET", "//v1//a", "ok", "/v1/a"),
        ("GET", "/v1/%7Eme", "ok", "/v1/~me"),
        ("GET", f"http://127.0.0.2:{port}/v1/abs", "ok", "/v1/abs"),   # absolute-form
        ("POST", "/v1/items", "acl", None),                              # method not allowed
        ("GET", "/v2/x", "acl", None),
        ("GET", "/v1", "acl", None),                                     # /v1/* is not /v1
        ("GET", "/v1/admin", "acl", None),                               # deny beats allow
        ("GET", "/v1/ADMIN", "acl", None),                               # deny ignores case
        ("GET", "/v1/%61dmin", "acl", None),
        ("GET", "//v1//admin", "acl", None),
        ("GET", "/v1/x/../admin", "acl", None),
        ("GET", "/v1/%2e%2e/v1/admin", "acl", None),
        ("GET", "/v1/x/%2E%2E/admin/y", "acl", None),
        ("GET", "/v1/admin;jsessionid=1", "acl", None),
        ("GET", "/v1/x/..;/admin", "acl", None),
        ("GET", "/v1/../../etc/passwd", "acl", None),
        ("GET", "/v1/x/..%2Fadmin", "bad", None),                        # escaped slash: refused
        ("GET", "/v1/x%5c..%5cadmin", "bad", None),
        ("GET", "/v1/x#frag", "host", None),
        ("GET", f"http://127.0.0.3:{servers['127.0.0.3'][0]}/v1/x", "host", None),  # target vs Host
        ("GET", "http://user@127.0.0.2/v1/x", "host", None),             # userinfo
    ]
    before = len(seen)
    out = run_client(box(http_allow=["GET 127.0.0.2/v1/*"], http_deny=["* 127.0.0.2/v1/admin*"]),
                     MANY, {"ip": "127.0.0.2", "port": port,
                            "cases": [(m, t, host) for m, t, _w, _p in cases]})
    forwarded = []
    for (_method, target, want, path), (status, body) in zip(cases, out, strict=True):
        if want == "ok":
            assert status == 200, (target, status, body)
            got = json.loads(body)
            assert (got["path"], got["local"]) == (path, "127.0.0.2"), target
            forwarded.append(path)
        elif want == "acl":
            assert (status, body.strip()) == (403, ACL_BLOCKED), (target, status, body)
        elif want == "bad":
            assert status == 400, (target, status, body)
        else:
            assert status == 403 and "request host" in body, (target, status, body)
    assert [s["path"] for s in seen[before:]] == forwarded  # nothing else reached the server


def test_host_spoofing_first_and_later_keepalive_request(box, servers):
    p2, seen2 = servers["127.0.0.2"]
    p3, seen3 = servers["127.0.0.3"]
    code = r'''
    ip3, p3, p2 = "127.0.0.3", ARGS["p3"], ARGS["p2"]
    out = {}
    # first request on a connection to .3 claims the allowed host .2
    out["first"] = request(ip3, p3, "GET", "/secret", {"Host": f"127.0.0.2:{p2}"})
    out["first_noport"] = request(ip3, p3, "GET", "/secret", {"Host": "127.0.0.2"})
    out["name"] = request(ip3, p3, "GET", "/secret", {"Host": "localhost"})
    out["port"] = request(ip3, p3, "GET", "/public/x", {"Host": f"127.0.0.3:{p3 + 1}"})
    # keep-alive: a genuine request, then a spoofed one on the same connection
    c = http.client.HTTPConnection(ip3, p3, timeout=10)
    out["ka1"] = request(ip3, p3, "GET", "/public/a", conn=c)
    out["ka2"] = request(ip3, p3, "GET", "/public/b", conn=c)
    out["ka3"] = request(ip3, p3, "GET", "/secret", {"Host": f"127.0.0.2:{p2}"}, conn=c)
    print(json.dumps(out))
    '''
    n2, n3 = len(seen2), len(seen3)
    out = run_client(box(http_allow=["GET 127.0.0.2/*", "GET 127.0.0.3/public/*", "GET localhost/*"]),
                     code, {"p2": p2, "p3": p3})
    for k in ("first", "first_noport", "name", "port", "ka3"):
        assert out[k][0] == 403 and MISMATCH in out[k][1], (k, out[k])
    assert out["ka1"][0] == out["ka2"][0] == 200
    a, b = json.loads(out["ka1"][1]), json.loads(out["ka2"][1])
    assert a["client"] == b["client"]  # one upstream connection: keep-alive works through the proxy
    assert [s["path"] for s in seen3[n3:]] == ["/public/a", "/public/b"]
    assert len(seen2) == n2  # nothing went to .2 either


def test_hostname_pinned_and_bodies_and_keepalive(box, servers):
    p1, seen1 = servers["127.0.0.1"]
    code = r'''
    p = ARGS["p1"]
    out = {}
    out["urllib"] = urllib.request.urlopen(f"http://localhost:{p}/api/x", timeout=10).read().decode()
    req = urllib.request.Request(f"http://localhost:{p}/api/post", data=b"hello=1", method="POST")
    out["post"] = urllib.request.urlopen(req, timeout=10).read().decode()
    c = http.client.HTTPConnection("localhost", p, timeout=10)
    out["chunked"] = request("localhost", p, "PUT", "/api/chunk", {"Transfer-Encoding": "chunked"},
                             "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n", conn=c)
    out["head"] = request("localhost", p, "HEAD", "/api/h", conn=c)
    out["again"] = request("localhost", p, "GET", "/api/again", conn=c)
    out["chunked_reply"] = request("localhost", p, "GET", "/api/chunked-reply", conn=c)
    out["after_chunked"] = request("localhost", p, "GET", "/api/after-chunked", conn=c)
    out["drop"] = request("localhost", p, "GET", "/api/drop", conn=c)
    out["after"] = request("localhost", p, "GET", "/api/after", conn=c)   # upstream gone: resent once
    try:
        urllib.request.urlopen(f"http://localhost:{p}/other", timeout=10)
    except urllib.error.HTTPError as e:
        out["denied"] = [e.code, e.read().decode()]
    print(json.dumps(out))
    '''
    out = run_client(box(http_allow=["* localhost/api/*"]), code, {"p1": p1})
    assert json.loads(out["urllib"])["path"] == "/api/x"
    assert json.loads(out["post"])["body"] == "hello=1"
    assert out["chunked"][0] == 200 and json.loads(out["chunked"][1])["body"] == "hello world"
    assert out["head"] == [200, ""]
    assert json.loads(out["again"][1])["client"] == json.loads(out["chunked"][1])["client"]
    # a chunked response is relayed whole, and the connection goes on after it
    assert json.loads(out["chunked_reply"][1])["path"] == "/api/chunked-reply"
    assert json.loads(out["after_chunked"][1])["client"] == json.loads(out["again"][1])["client"]
    assert out["drop"][0] == 200 and out["after"][0] == 200
    assert json.loads(out["after"][1])["client"] != json.loads(out["drop"][1])["client"]
    assert out["denied"][0] == 403 and ACL_BLOCKED in out["denied"][1]
    assert "/other" not in [s["path"] for s in seen1]


def test_unsupported_protocols_are_refused(box, servers):
    p2, seen2 = servers["127.0.0.2"]
    code = r'''
    p = ARGS["p2"]
    def raw(data):
        s = socket.create_connection(("127.0.0.2", p), timeout=10)
        s.sendall(data)
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
        return got.decode("latin-1")
    out = {
        "connect": request("127.0.0.2", p, "CONNECT", f"127.0.0.2:{p}"),
        "websocket": request("127.0.0.2", p, "GET", "/ws", {"Upgrade": "websocket", "Connection": "Upgrade"}),
        "h2c": request("127.0.0.2", p, "GET", "/x", {"Upgrade": "h2c", "Connection": "Upgrade, HTTP2-Settings"}),
        "h2": raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        "tls": raw(b"\x16\x03\x01\x00\x05hello"),
        "smuggle": raw(b"POST /x HTTP/1.1\r\nHost: 127.0.0.2\r\nContent-Length: 4\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        "http10": raw(b"GET /x HTTP/1.0\r\nHost: 127.0.0.2\r\n\r\n"),
        "nohost": raw(b"GET /x HTTP/1.1\r\n\r\n"),
    }
    print(json.dumps(out))
    '''
    n = len(seen2)
    out = run_client(box(http_allow=["* 127.0.0.2/*"]), code, {"p2": p2})
    assert out["connect"][0] == 403 and "CONNECT" in out["connect"][1]
    assert out["websocket"][0] == 403 and "upgrade" in out["websocket"][1]
    assert out["h2c"][0] == 403
    closed = ("", "<ConnectionResetError>")               # closed unanswered, never passed through
    assert out["h2"] in closed and out["tls"] in closed
    assert out["smuggle"].startswith("HTTP/1.1 400")
    assert out["http10"].startswith("HTTP/1.1 200") and '"path": "/x"' in out["http10"]
    assert out["nohost"].startswith("HTTP/1.1 403")
    assert [s["path"] for s in seen2[n:]] == ["/x"]       # only the HTTP/1.0 request arrived


def test_direct_connect_to_the_proxy_is_refused(box, servers):
    """D7: the proxy's loopback listener serves only connects the supervisor
    made for the sandbox; an unsandboxed local process gets nothing."""
    p2, seen2 = servers["127.0.0.2"]
    code = textwrap.dedent(r'''
    import json, socket, sys
    p = int(sys.argv[1])
    s = socket.create_connection(("127.0.0.2", p), timeout=10)
    print(json.dumps(s.getpeername()), flush=True)
    sys.stdin.readline()   # the test tries the proxy meanwhile
    s.sendall(f"GET /mine HTTP/1.1\r\nHost: 127.0.0.2:{p}\r\nConnection: close\r\n\r\n".encode())
    got = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    print(got.split(b"\r\n")[0].decode(), flush=True)
    ''')
    sb = box(http_allow=["* 127.0.0.2/*"])
    proc = sb.popen([sys.executable, "-I", "-S", "-c", code, str(p2)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        peer = json.loads(proc.stdout.readline())
        assert tuple(peer) != ("127.0.0.2", p2)  # the sandbox's socket went to the proxy
        n = len(seen2)
        results = []
        for _ in range(3):
            with socket.create_connection(tuple(peer), timeout=10) as s:
                s.sendall(f"GET /outsider HTTP/1.1\r\nHost: 127.0.0.2:{p2}\r\n\r\n".encode())
                try:
                    results.append(s.recv(4096))
                except ConnectionResetError:
                    results.append(b"")
        assert results == [b"", b"", b""]
        assert len(seen2) == n
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == b"HTTP/1.1 200 OK"
    finally:
        proc.kill()
        proc.wait(10)
    assert [s["path"] for s in seen2[-1:]] == ["/mine"]


UDP = r'''
out = {}
for port in (ARGS["http"], ARGS["other"]):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"q", ("127.0.0.2", port))
        out[str(port)] = "OK"
    except OSError as e:
        out[str(port)] = e.errno
    try:
        s.connect(("127.0.0.2", port))
        out["c" + str(port)] = "OK"
    except OSError as e:
        out["c" + str(port)] = e.errno
    s.close()
print(json.dumps(out))
'''


def test_udp_to_an_intercepted_port_is_refused(box, servers):
    """D8: QUIC to an HTTP port would bypass the proxy."""
    import errno
    p2 = servers["127.0.0.2"][0]
    other = p2 + 1 if p2 < 65535 else p2 - 1
    out = run_client(box(http_allow=["* 127.0.0.2/*"],
                         net_allow=[f"udp://127.0.0.2:{p2}", f"udp://127.0.0.2:{other}"]),
                     UDP, {"http": p2, "other": other})
    assert out[str(p2)] == errno.EACCES and out["c" + str(p2)] == errno.EACCES
    assert out[str(other)] == "OK" and out["c" + str(other)] == "OK"  # the control


def test_not_intercepted_without_rules_and_on_other_ports(box, servers, base_readable):
    p2, seen2 = servers["127.0.0.2"]
    p3 = servers["127.0.0.3"][0]
    code = r'''
    print(json.dumps([request("127.0.0.2", ARGS["p2"], "DELETE", "/admin"),
                      request("127.0.0.3", ARGS["p3"], "GET", "/x")]))
    '''
    # port p2 not intercepted (http_ports only p3): reached directly by net_allow
    out = run_client(box(http_allow=["GET 127.0.0.3/*"], http_ports=[p3],
                         net_allow=[f"127.0.0.2:{p2}"]), code, {"p2": p2, "p3": p3})
    assert out[0][0] == 200 and json.loads(out[0][1])["path"] == "/admin"
    assert out[1][0] == 200
    # the default port is 80 only; the plan opens 80 for the rules' hosts
    from sandlock.plan import compile_plan
    sb = Sandbox(fs_readable=list(base_readable), http_allow=["GET 127.0.0.3/*"])
    plan = compile_plan(sb._policy(), ["/bin/true"])
    assert plan.net.http.ports == (80,) and 80 in plan.net.connect_ports
    assert plan.net.allow.allows("tcp", __import__("ipaddress").ip_address("127.0.0.3"), 80)
    assert not plan.net.allow.allows("tcp", __import__("ipaddress").ip_address("127.0.0.2"), 80)


def test_malformed_rule_refused():
    with pytest.raises(PolicyError, match="http_allow"):
        Sandbox(http_allow=["GET"])


def test_cli_flags(servers, base_readable):
    p2 = servers["127.0.0.2"][0]
    code = textwrap.dedent(r'''
    import sys, urllib.request, urllib.error
    for path in ("/ok", "/no"):
        try:
            print(urllib.request.urlopen(f"http://127.0.0.2:{sys.argv[1]}{path}", timeout=10).status)
        except urllib.error.HTTPError as e:
            print(e.code)
    ''')
    argv = [sys.executable, "-m", "sandlock", "run"]
    for p in base_readable:
        argv += ["-r", p]
    argv += ["--http-allow", "GET 127.0.0.2/ok", "--http-deny", "* 127.0.0.2/no",
             "--http-port", str(p2), "--", sys.executable, "-I", "-S", "-c", code, str(p2)]
    r = subprocess.run(argv, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"200", b"403"]
    bad = subprocess.run([sys.executable, "-m", "sandlock", "run", "--http-allow", "GET", "--", "true"],
                         capture_output=True, timeout=60)
    assert bad.returncode == 125 and b"http_allow" in bad.stderr or b"--http-allow" in bad.stderr
