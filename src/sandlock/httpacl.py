"""HTTP access control: rules, request parsing and normalisation (pure logic).

A rule is `METHOD HOST[/PATH]`:

- METHOD is `*` or a token (matched upper-cased);
- HOST is `*`, `*.example.com` (any name strictly below example.com), a
  name, an IPv4 address or `[IPv6]`; no port (a rule names a host, the
  ports are `http_ports`);
- PATH defaults to `/*`; a trailing `*` is a prefix match (`/v1/*` matches
  `/v1/` and `/v1/x`, not `/v1`); anything else is an exact match. The
  query string is never part of the match.

Evaluation: a request matching any deny rule is refused; else, with no
allow rule it is allowed; else it needs an allow rule.

Normalisation, before any matching (`normalise_path`): the path must be
printable ASCII; a percent-encoded unreserved character is decoded, other
escapes keep their meaning (upper-cased hex); an escape that would change
the path's structure (`%2F`, `%5C`, `%00`) or a malformed one is refused,
as are backslashes and fragments; `.` and `..` segments are resolved (never
above the root) and empty segments dropped (a trailing slash is kept). The
path forwarded upstream is exactly the normalised one the rules saw.

Servers disagree on path parameters (`/admin;x=1` is `/admin` to some):
a request is checked twice, with its `;parameters` and without them (the
latter before `..` is resolved, as those servers do: `/x/..;/admin` is
`/admin`), and must pass both. Servers also disagree on case: deny rules
match the path case-insensitively, allow rules exactly. So ambiguity can
only make a request more denied, never more allowed.

Hosts are canonical (`canonical_host`): lower case, no trailing dot, IPv4
in dotted-quad form (`127.1`, `0x7f.0.0.1` and `2130706433` are
127.0.0.1 to the resolver, so they are here too), IPv6 compressed in
brackets; non-ASCII names, escapes and userinfo are refused.
"""
from __future__ import annotations

import functools
import ipaddress
import re
import socket
from dataclasses import dataclass, field

from .exceptions import PolicyError

DEFAULT_PORTS = (80,)

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\Z")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
_STRUCTURAL = frozenset("/\\\0")   # escapes refused: they would change the path's segments
_PATH_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {"\\", "#", "?"}
_NUMERIC = re.compile(r"[0-9a-fx.]+")
_NOT_NUMERIC = re.compile(r"[g-wyz]")


class RequestError(ValueError):
    """A request the proxy refuses to interpret (answered 400/403)."""


# -- hosts -------------------------------------------------------------------------


def canonical_host(text: str) -> str:
    """The canonical form of a host (no port); RequestError if it is none."""
    if not text or len(text) > 255:
        raise RequestError("empty or overlong host")
    if text.startswith("["):
        if not text.endswith("]"):
            raise RequestError(f"malformed IPv6 literal {text!r}")
        try:
            addr6 = ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise RequestError(f"malformed IPv6 literal {text!r}") from None
        if addr6.ipv4_mapped is not None:
            return str(addr6.ipv4_mapped)
        return f"[{addr6.compressed}]"
    if not text.isascii():
        raise RequestError(f"non-ASCII host {text!r}")
    host = text.lower()
    if host.endswith("."):
        host = host[:-1]
    if not _NAME.match(host):
        raise RequestError(f"malformed host {text!r}")
    if _NUMERIC.fullmatch(host) and not _NOT_NUMERIC.search(host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))  # numeric forms the resolver accepts
        except OSError:
            pass
    return host


@functools.lru_cache(maxsize=512)  # (a keep-alive connection names the same host each time)
def split_authority(text: str) -> tuple[str, int | None]:
    """(canonical host, port or None) of `host[:port]`; userinfo refused."""
    if "@" in text:
        raise RequestError("userinfo in the authority is refused")
    if "%" in text:
        raise RequestError("escapes in the host are refused")
    port: int | None = None
    host = text
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise RequestError(f"malformed authority {text!r}")
        host, rest = text[:end + 1], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise RequestError(f"malformed authority {text!r}")
            port = _port(rest[1:], text)
    elif ":" in text:
        host, _, digits = text.rpartition(":")
        port = _port(digits, text)
    return canonical_host(host), port


def _port(digits: str, text: str) -> int:
    if not digits.isdigit() or not digits.isascii() or len(digits) > 5 or not 0 < int(digits) < 65536:
        raise RequestError(f"malformed port in {text!r}")
    return int(digits)


# -- paths ---------------------------------------------------------------------------


def _decode(path: str) -> str:
    """Decode escaped unreserved characters; refuse structural or malformed ones."""
    if "%" not in path and _PATH_CHARS.issuperset(path):
        return path
    out = []
    i = 0
    while i < len(path):
        c = path[i]
        if c not in _PATH_CHARS:
            raise RequestError(f"character {c!r} refused in a path")
        if c == "%":
            pair = path[i + 1:i + 3]
            if len(pair) != 2 or not set(pair) <= _HEX:
                raise RequestError("malformed percent-escape in the path")
            ch = chr(int(pair, 16))
            if ch in _STRUCTURAL:
                raise RequestError(f"escaped {ch!r} in the path is refused")
            out.append(ch if ch in _UNRESERVED else "%" + pair.upper())
            i += 3
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _resolve(segments: list[str], trailing: bool) -> str:
    stack: list[str] = []
    for seg in segments:
        if seg in ("", "."):
            continue
        if seg == "..":
            if stack:
                stack.pop()
            continue
        stack.append(seg)
    path = "/" + "/".join(stack)
    if trailing and stack:
        path += "/"
    return path


def _trailing(path: str) -> bool:
    last = path.rsplit("/", 1)[-1]
    return last in ("", ".", "..")


def normalise_path(raw: str) -> str:
    """The normalised path (no query); RequestError when it is refused."""
    if not raw.startswith("/"):
        raise RequestError("a path must start with '/'")
    decoded = _decode(raw)
    return _resolve(decoded.split("/"), _trailing(decoded))


@functools.lru_cache(maxsize=1024)
def path_variants(raw: str) -> tuple[str, ...]:
    """The normalised path, and the same without `;parameters` when it has
    some (see the module docstring); the first is the one forwarded."""
    full = normalise_path(raw)
    decoded = _decode(raw)
    if ";" not in decoded:
        return (full,)
    stripped = [seg.split(";", 1)[0] for seg in decoded.split("/")]
    bare = _resolve(stripped, _trailing("/".join(stripped)))
    return (full, bare) if bare != full else (full,)


# -- request targets ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A parsed request-target: authority (absolute-form) or None, raw path, query."""
    authority: str | None
    path: str
    query: str | None


def parse_target(target: str) -> Target:
    if "#" in target or not target.isascii() or any(c <= " " or c == "\x7f" for c in target):
        raise RequestError("malformed request-target")
    authority = None
    rest = target
    if not target.startswith("/"):
        scheme, sep, after = target.partition("://")
        if not sep or scheme.lower() != "http":
            raise RequestError("only origin-form and http:// absolute-form targets are accepted")
        end = len(after)
        for ch in "/?":
            pos = after.find(ch)
            if pos >= 0:
                end = min(end, pos)
        authority, rest = after[:end], after[end:]
        if not authority:
            raise RequestError("empty authority")
        if not rest.startswith("/"):
            rest = "/" + rest
    path, sep, query = rest.partition("?")
    return Target(authority, path, query if sep else None)


def request_authority(target: Target, host_headers: list[str]) -> tuple[str, int | None]:
    """The one authority of a request: from the absolute-form target and
    the Host header, which must agree; exactly one Host header."""
    if len(host_headers) > 1:
        raise RequestError("more than one Host header")
    claimed = [split_authority(a) for a in (target.authority, *host_headers) if a is not None]
    if not claimed:
        raise RequestError("no host")
    if len(set(claimed)) != 1:
        raise RequestError("the request-target and the Host header name different hosts")
    return claimed[0]


# -- rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRule:
    method: str     # "*" or upper-case token
    host: str       # "*", "*.suffix" or a canonical host
    path: str       # normalised; a trailing "*" is a prefix match
    spec: str = ""

    def host_matches(self, host: str) -> bool:
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host

    def path_matches(self, path: str, fold: bool) -> bool:
        rule = self.path
        if fold:
            rule, path = rule.lower(), path.lower()
        if rule in ("/*", "*"):
            return True
        if rule.endswith("*"):
            return path.startswith(rule[:-1])
        return path == rule

    def matches(self, method: str, host: str, path: str, fold: bool = False) -> bool:
        return (self.method in ("*", method) and self.host_matches(host)
                and self.path_matches(path, fold))

    @property
    def concrete_host(self) -> str | None:
        """The host to pin (and let the sandbox reach), None for wildcards."""
        return None if self.host.startswith("*") else self.host


def parse_rule(text, field: str) -> HttpRule:
    def bad(why: str) -> PolicyError:
        return PolicyError(f"{field}: invalid http rule {text!r}: {why} "
                           "(expected 'METHOD HOST[/PATH]', e.g. 'GET api.example.com/v1/*')")
    if not isinstance(text, str):
        raise bad("not a string")
    parts = text.split()
    if len(parts) != 2:
        raise bad("expected a method and a host, separated by whitespace")
    method, rest = parts
    if method != "*" and not _TOKEN.match(method):
        raise bad(f"malformed method {method!r}")
    slash = rest.find("/")
    host_text, path = (rest, "/*") if slash < 0 else (rest[:slash], rest[slash:])
    if not host_text:
        raise bad("empty host")
    if host_text == "*":
        host = "*"
    else:
        sub = host_text.startswith("*.")
        try:
            host_only, port = split_authority(host_text[2:] if sub else host_text)
        except RequestError as e:
            raise bad(str(e)) from None
        if port is not None:
            raise bad("a rule names no port (the ports are http_ports)")
        if sub and host_only.startswith("["):
            raise bad("a subdomain wildcard needs a name")
        host = "*." + host_only if sub else host_only
    if "?" in path or "#" in path:
        raise bad("a rule matches the path only, not a query or fragment")
    if "*" in path[:-1]:
        raise bad("'*' is only allowed at the end of the path")
    prefix = path.endswith("*")
    body = path[:-1] if prefix else path
    try:
        norm = normalise_path(body or "/")
    except RequestError as e:
        raise bad(str(e)) from None
    if prefix:
        norm += "*"
    return HttpRule("*" if method == "*" else method.upper(), host, norm, text)


def parse_rules(value, field: str) -> tuple[HttpRule, ...]:
    if isinstance(value, str):
        value = [value]
    return tuple(dict.fromkeys(parse_rule(r, field) for r in value))


@dataclass(frozen=True)
class HttpAcl:
    """The resolved HTTP policy of a run: one truth for plan and supervisor."""
    allow: tuple[HttpRule, ...] = ()
    deny: tuple[HttpRule, ...] = ()
    ports: tuple[int, ...] = DEFAULT_PORTS
    # HTTPS interception (httpca.py): asked for (http_ca or
    # http_inject_ca), with the caller's CA files (None: an ephemeral CA).
    # `ca`, the CA's (certificate PEM, key PEM), is filled when the run's
    # plan is made (plan.py); None there: TLS is refused.
    intercept: bool = False
    ca_files: tuple[str, str] | None = None
    ca: tuple[bytes, bytes] | None = field(default=None, repr=False)  # (its key: never shown)
    # Trust bundles (absolute, normalised paths) the sandbox sees with the
    # CA appended: the supervisor reads them when the run starts.
    bundles: tuple[str, ...] = ()
    # Extra PEM certificates trusted for upstream servers, besides the
    # system's (the SANDLOCK_HTTPS_UPSTREAM_CA test hook, see policy/model.py).
    upstream_ca: bytes | None = None
    # Where the caller imports cryptography from (the supervisor mints the
    # leaf certificates with it).
    crypto_path: str | None = None
    # Credentials injected by the proxy (httpauth.py): the auth rules, the
    # declared sources, and the secrets (name → httpauth.Secret), read when
    # the run's plan is made (plan.py); never shown in a repr.
    auth: tuple = ()
    credentials: tuple = ()
    secrets: dict | None = field(default=None, repr=False, compare=False)

    def permits(self, method: str, host: str, paths: tuple[str, ...]) -> bool:
        """Deny beats allow; every path variant must pass."""
        method = method.upper()
        for path in paths:
            if any(r.matches(method, host, path, fold=True) for r in self.deny):
                return False
            if self.allow and not any(r.matches(method, host, path) for r in self.allow):
                return False
        return True

    def net_allow_specs(self) -> tuple[str, ...]:
        """The net_allow rules these rules imply: each concrete allowed host
        on the HTTP ports, or every host when a rule (or the absence of allow
        rules) lets any host through. (The proxy decides every request.)"""
        if not self.allow or any(r.concrete_host is None for r in self.allow):
            return tuple(f"tcp://*:{p}" for p in self.ports)
        hosts = dict.fromkeys(r.host for r in self.allow)
        return tuple(f"tcp://{h}:{p}" for h in hosts for p in self.ports)

    def fields(self) -> tuple:
        """Plain values for the protocol (protocol.py)."""
        return (tuple((r.method, r.host, r.path, r.spec) for r in self.allow),
                tuple((r.method, r.host, r.path, r.spec) for r in self.deny), tuple(self.ports),
                self.intercept, self.ca_files, self.ca, self.bundles, self.upstream_ca,
                self.crypto_path, tuple(r.fields() for r in self.auth),
                {n: s.reveal() for n, s in (self.secrets or {}).items()})

    @classmethod
    def build(cls, values: tuple) -> HttpAcl:
        from .httpauth import AuthRule, Secret
        (allow, deny, ports, intercept, ca_files, ca, bundles, upstream_ca, crypto_path, auth,
         secrets) = values
        rules = tuple(AuthRule(*r) for r in auth)
        if any(r.credential not in secrets for r in rules):
            raise ValueError("an auth rule names a credential without a secret")
        return cls(tuple(HttpRule(*r) for r in allow), tuple(HttpRule(*r) for r in deny),
                   tuple(ports), bool(intercept), None if ca_files is None else tuple(ca_files),
                   None if ca is None else (bytes(ca[0]), bytes(ca[1])),
                   tuple(str(p) for p in bundles),
                   None if upstream_ca is None else bytes(upstream_ca), crypto_path, rules, (),
                   {str(n): Secret(v) for n, v in secrets.items()} or None)

    def auth_for(self, method: str, host: str, paths: tuple[str, ...]):
        """The first auth rule every path variant of the request matches, or None."""
        method = method.upper()
        for rule in self.auth:
            match = rule.rule()
            if all(match.matches(method, host, p) for p in paths):
                return rule
        return None


# -- HTTP/1.x message heads ---------------------------------------------------------------

MAX_HEAD = 64 * 1024
MAX_HEADERS = 200


@dataclass
class Head:
    """A parsed request or response head. For a request: method, target,
    version; for a response: version, status (`target` holds the reason)."""
    first: tuple[str, str, str]
    headers: list[tuple[str, str]]
    _index: dict | None = None  # lower-cased name → values, made at the first lookup

    def get_all(self, name: str) -> list[str]:
        if self._index is None:
            index: dict[str, list[str]] = {}
            for k, v in self.headers:
                index.setdefault(k.lower(), []).append(v)
            self._index = index
        return self._index.get(name.lower(), [])

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of every `name` header, lower-cased."""
        return {t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()}


def parse_head(data: bytes, request: bool = True) -> Head:
    """Parse a head (without its final CRLF CRLF). Strict for requests:
    single spaces in the request line, HTTP/1.0 or 1.1, token header names
    with no space before the colon, no folded lines, no bare CR or LF."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        raise RequestError("undecodable head") from None
    lines = text.split("\r\n")
    if request and any("\r" in line or "\n" in line for line in lines):
        raise RequestError("bare CR or LF in the head")
    first = lines[0]
    if request:
        parts = first.split(" ")
        if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1]:
            raise RequestError("malformed request line")
        if parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
            raise RequestError(f"unsupported protocol {parts[2][:20]!r}")
        line3 = (parts[0], parts[1], parts[2])
    else:
        parts = first.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() \
                or len(parts[1]) != 3:
            raise RequestError("malformed status line")
        line3 = (parts[0], parts[1], parts[2] if len(parts) > 2 else "")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            raise RequestError("folded header line")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise RequestError("malformed header line")
        headers.append((name, value.strip(" \t")))
        if len(headers) > MAX_HEADERS:
            raise RequestError("too many headers")
    return Head(line3, headers)


def body_framing(head: Head) -> tuple[str, int]:
    """("none", 0), ("length", n) or ("chunked", 0) for a request body;
    ambiguous framing (both, several different lengths, other codings) is
    refused: it is how requests are smuggled past a proxy."""
    te = head.get_all("transfer-encoding")
    cl = head.get_all("content-length")
    if te:
        if cl or len(te) != 1 or te[0].strip().lower() != "chunked":
            raise RequestError("unsupported or ambiguous Transfer-Encoding")
        return ("chunked", 0)
    if cl:
        values = {v.strip() for v in cl}
        if len(values) != 1:
            raise RequestError("conflicting Content-Length headers")
        value = values.pop()
        if not value.isdigit() or not value.isascii() or len(value) > 18:
            raise RequestError("malformed Content-Length")
        n = int(value)
        return ("length", n) if n else ("none", 0)
    return ("none", 0)
