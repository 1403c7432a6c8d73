"""httpacl: rule grammar, normalisation, authorities, heads (pure logic)."""
import pytest

from sandlock import Sandbox, httpacl
from sandlock.exceptions import PolicyError
from sandlock.httpacl import RequestError


def acl(allow=(), deny=(), ports=(80,)):
    return httpacl.HttpAcl(httpacl.parse_rules(list(allow), "http_allow"),
                           httpacl.parse_rules(list(deny), "http_deny"), ports)


def permits(a, method, target, host="api.example.com"):
    t = httpacl.parse_target(target)
    return a.permits(method, host, httpacl.path_variants(t.path))


@pytest.mark.parametrize("text,method,host,path", [
    ("GET api.example.com/v1/*", "GET", "api.example.com", "/v1/*"),
    ("get API.Example.com.", "GET", "api.example.com", "/*"),
    ("* *", "*", "*", "/*"),
    ("POST *.example.com/a/./b/../c", "POST", "*.example.com", "/a/c"),
    ("GET [::1]/x", "GET", "[::1]", "/x"),
    ("GET 127.1/x*", "GET", "127.0.0.1", "/x*"),
    ("GET 10.0.0.1/%7euser", "GET", "10.0.0.1", "/~user"),
])
def test_rule_parse(text, method, host, path):
    r = httpacl.parse_rule(text, "http_allow")
    assert (r.method, r.host, r.path) == (method, host, path)


@pytest.mark.parametrize("text", [
    "GET", "GETapi.example.com", "GET /x", "GET a.com/x extra", "G(T a.com", "GET a.com:80/x",
    "GET a.com/x?q=1", "GET a.com/a*b", "GET user@a.com/x", "GET a.com/%2F", "GET a.com/%zz",
    "GET *.[::1]/x", "GET ex ample.com", 5,
])
def test_rule_parse_refuses(text):
    with pytest.raises(PolicyError, match="http_allow"):
        httpacl.parse_rule(text, "http_allow")


def test_sandbox_fields_parsed_once_and_checked():
    from sandlock.policy.model import normalize
    p = normalize(Sandbox(http_allow=["GET a.com/v1/*"], http_deny=["* a.com/v1/admin"]))
    assert p.http.ports == (80,) and p.http.allow[0].path == "/v1/*" and not p.pending
    assert normalize(Sandbox(http_deny=["* evil.com"], http_ports=[8080, 8080])).http.ports == (8080,)
    assert normalize(Sandbox()).http is None
    with pytest.raises(PolicyError, match="http_ports"):
        normalize(Sandbox(http_ports=[80]))
    with pytest.raises(PolicyError, match="http_ports"):
        normalize(Sandbox(http_allow=["* *"], http_ports=[0]))
    with pytest.raises(PolicyError, match="no_supervisor"):
        normalize(Sandbox(http_allow=["* *"], no_supervisor=True))
    with pytest.raises(PolicyError, match="give both"):
        normalize(Sandbox(http_allow=["* *"], http_ca="/x"))


@pytest.mark.parametrize("raw,want", [
    ("/", ("/",)), ("/a/b", ("/a/b",)), ("//admin", ("/admin",)), ("/a//b///c", ("/a/b/c",)),
    ("/a/../admin", ("/admin",)), ("/../../admin", ("/admin",)), ("/%2e%2e/admin", ("/admin",)),
    ("/%2E%2e/%2e/admin", ("/admin",)), ("/a/%2e%2E", ("/",)), ("/v1/", ("/v1/",)),
    ("/v1/.", ("/v1/",)), ("/%41dmin", ("/Admin",)), ("/a%3fb", ("/a%3Fb",)),
    ("/admin;x=1", ("/admin;x=1", "/admin")), ("/x/..;/admin", ("/x/..;/admin", "/admin")),
    ("/a;b/c", ("/a;b/c", "/a/c")),
])
def test_path_variants(raw, want):
    assert httpacl.path_variants(raw) == want


@pytest.mark.parametrize("raw", ["/a%2Fb", "/a%2fb", "/a%5cb", "/a\\b", "/a%00", "/a%", "/a%4", "/a%zz",
                                 "/a b", "/\x7f", "/é", "a/b"])
def test_path_refused(raw):
    with pytest.raises(RequestError):
        httpacl.path_variants(raw)


@pytest.mark.parametrize("target,ok", [
    ("/v1/items", True), ("/v1/", True), ("/v1", False), ("/v1/a/../../admin", False),
    ("//v1/x", True), ("/v1/%2e%2e/admin", False), ("/v1/admin", False), ("/v1/ADMIN", False),
    ("/v1/Admin/x", False), ("/v1/%61dmin", False), ("/v1/admin;jsessionid=1", False),
    ("/v1/x/..;/admin", False), ("/v1/x?/admin", True), ("/v1/x?", True), ("/admin?/v1/x", False),
    ("/v2/x", False), ("/v1/%2e/x", True),
])
def test_allow_deny_matrix(target, ok):
    a = acl(["GET api.example.com/v1/*"], ["* api.example.com/v1/admin", "* api.example.com/v1/admin/*"])
    assert permits(a, "GET", target) is ok


def test_methods_hosts_and_wildcards():
    a = acl(["GET *.example.com/*", "POST api.other.com/upload"])
    assert permits(a, "GET", "/x", "a.example.com") and permits(a, "get", "/x", "b.c.example.com")
    assert not permits(a, "GET", "/x", "example.com") and not permits(a, "GET", "/x", "badexample.com")
    assert not permits(a, "POST", "/x", "a.example.com")
    assert permits(a, "POST", "/upload", "api.other.com") and not permits(a, "POST", "/upload/", "api.other.com")
    assert permits(acl(deny=["DELETE *"]), "GET", "/x") and not permits(acl(deny=["DELETE *"]), "delete", "/x")
    assert permits(acl(), "PATCH", "/anything")
    assert not permits(acl(["* *"], ["* *.evil.com"]), "GET", "/", "x.evil.com")


@pytest.mark.parametrize("text,want", [
    ("Example.COM", ("example.com", None)), ("example.com.", ("example.com", None)),
    ("example.com:8080", ("example.com", 8080)), ("127.1", ("127.0.0.1", None)),
    ("2130706433:80", ("127.0.0.1", 80)), ("0x7f.0.0.1", ("127.0.0.1", None)),
    ("[::1]:80", ("[::1]", 80)), ("[0:0::1]", ("[::1]", None)), ("[::ffff:127.0.0.1]", ("127.0.0.1", None)),
])
def test_authority(text, want):
    assert httpacl.split_authority(text) == want


@pytest.mark.parametrize("text", ["", "a@b.com", "a.com:x", "a.com:0", "a.com:99999", "[::1", "[::1]x",
                                  "a%2eb.com", "exämple.com", "a b", "a.com:", "[zz]"])
def test_authority_refused(text):
    with pytest.raises(RequestError):
        httpacl.split_authority(text)


def test_request_authority_forms():
    t = httpacl.parse_target("http://API.example.com:80/v1?x=1")
    assert (t.authority, t.path, t.query) == ("API.example.com:80", "/v1", "x=1")
    assert httpacl.request_authority(t, ["api.example.com:80"]) == ("api.example.com", 80)
    assert httpacl.request_authority(t, []) == ("api.example.com", 80)
    with pytest.raises(RequestError):
        httpacl.request_authority(t, ["evil.com"])       # absolute-form vs Host: one authority
    with pytest.raises(RequestError):
        httpacl.request_authority(httpacl.parse_target("/x"), [])
    with pytest.raises(RequestError):
        httpacl.request_authority(httpacl.parse_target("/x"), ["a.com", "b.com"])
    assert httpacl.parse_target("http://a.com").path == "/"
    assert httpacl.parse_target("http://a.com?q").query == "q"
    for bad in ("https://a.com/", "ftp://a.com/", "a.com:443", "*", "/x#frag", "http:///x",
                "http://user:pw@a.com/"):
        with pytest.raises(RequestError):
            t = httpacl.parse_target(bad)
            httpacl.request_authority(t, [])


def test_heads_and_framing():
    h = httpacl.parse_head(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: Keep-Alive, X")
    assert h.first == ("POST", "/x", "HTTP/1.1") and h.tokens("connection") == {"keep-alive", "x"}
    assert httpacl.body_framing(h) == ("length", 3)
    chunked = httpacl.parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked")
    assert httpacl.body_framing(chunked) == ("chunked", 0)
    for bad in (b"GET  / HTTP/1.1", b"GET / HTTP/2.0", b"PRI * HTTP/2.0", b"GET / HTTP/1.1\r\n folded",
                b"GET / HTTP/1.1\r\nBad Name: x", b"GET / HTTP/1.1\r\nX: a\nY: b", b"G\x00T / HTTP/1.1"):
        with pytest.raises(RequestError):
            httpacl.parse_head(bad)
    for headers in (b"Content-Length: 3\r\nTransfer-Encoding: chunked", b"Content-Length: 3\r\nContent-Length: 4",
                    b"Transfer-Encoding: gzip, chunked", b"Content-Length: -1", b"Content-Length: 1e3"):
        with pytest.raises(RequestError):
            httpacl.body_framing(httpacl.parse_head(b"POST / HTTP/1.1\r\n" + headers))


def test_net_allow_specs():
    assert acl(["GET a.com/x", "POST b.com"], ports=(80, 8080)).net_allow_specs() == (
        "tcp://a.com:80", "tcp://a.com:8080", "tcp://b.com:80", "tcp://b.com:8080")
    assert acl(["GET *.a.com/x"]).net_allow_specs() == ("tcp://*:80",)
    assert acl(deny=["* evil.com"]).net_allow_specs() == ("tcp://*:80",)
    a = acl(["GET a.com/x"], ["* b.com"], (80,))
    assert httpacl.HttpAcl.build(a.fields()) == a
