"""Credentials the HTTP proxy injects into requests: they never enter the sandbox.

Two things are declared (CLI `--credential` / `--http-auth`, Python
`Sandbox.http_credentials` / `Sandbox.http_auth`):

- a credential source, `NAME=env:VAR`, `NAME=file:PATH` or `NAME=fd:N`:
  where the caller's side reads the secret, once per run, when the run's
  plan is made (plan.py). At most MAX_SECRET bytes; one trailing newline
  (LF or CRLF) is dropped. `fd:1`/`fd:2` are refused, `fd:0` too when it
  is seekable (the sandbox would get it as stdin and could seek back).
  Every `env:` variable named by a declared credential is removed from the
  sandbox's environment (before the `env` overrides apply);
- an auth rule, `METHOD HOST[/PATH] AUTHSPEC CRED [replace|add-only]
  [cleartext]`: requests matching `METHOD HOST[/PATH]` (the http_allow
  grammar; its host may not be `*`) get credential CRED as AUTHSPEC says:
  `bearer` (Authorization: Bearer), `basic:USER` (Authorization: Basic
  USER:secret), `header:NAME` (alias `apikey:NAME`) or `query:PARAM`.
  `replace` (the default) drops what the child sent there first (every
  occurrence); `add-only` leaves a request that already has it alone.

The secret is injected only into requests that went through TLS
interception (the upstream's certificate verified for the host), unless
the rule says `cleartext`: otherwise a matching plain-HTTP request is
refused, as the secret would cross the network in clear.

A secret is held in a `Secret`, whose repr never shows it; messages name
the credential, never its value.
"""
from __future__ import annotations

import base64
import os
import re
import stat
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from .exceptions import PolicyError

MAX_SECRET = 64 * 1024
AUTH_KINDS = ("bearer", "basic", "header", "query")
MODES = ("replace", "add-only")
CLEARTEXT = "cleartext"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_PARAM = re.compile(r"[A-Za-z0-9._~-]+\Z")
# Headers a rule may not set: framing, routing and hop-by-hop ones.
_RESERVED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
    "upgrade", "proxy-authorization", "proxy-connection", "expect"})


class Secret:
    """A credential's value. Its repr and str never show it, and it cannot
    be pickled (a copy would escape the supervisor side)."""
    __slots__ = ("_value",)

    def __init__(self, value: bytes):
        self._value = bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True)
class CredentialSource:
    name: str
    kind: str       # env, file or fd
    where: str      # the variable, the path, or the fd number (text)

    @property
    def spec(self) -> str:
        return f"{self.name}={self.kind}:{self.where}"


def parse_source(text, field_name: str = "http_credentials") -> CredentialSource:
    """One `NAME=env:VAR|file:PATH|fd:N`."""
    def bad(why: str) -> PolicyError:
        return PolicyError(f"{field_name}: invalid credential {text!r}: {why} "
                           "(expected NAME=env:VAR, NAME=file:PATH or NAME=fd:N)")
    if not isinstance(text, str):
        raise bad("not a string")
    name, sep, source = text.partition("=")
    if not sep:
        raise bad("no '='")
    if not _NAME.match(name):
        raise bad(f"malformed name {name!r} (letters, digits, '_')")
    kind, sep, where = source.partition(":")
    if not sep or kind not in ("env", "file", "fd"):
        if kind == "literal":
            raise bad("literal values are refused (they would show in the command line and "
                      "the process list): use env:, file: or fd:")
        raise bad(f"unknown source {kind!r}")
    if not where:
        raise bad("empty " + {"env": "variable name", "file": "path", "fd": "fd number"}[kind])
    if kind == "env" and ("=" in where or "\0" in where):
        raise bad(f"malformed variable name {where!r}")
    if kind == "file" and "\0" in where:
        raise bad("NUL in the path")
    if kind == "fd":
        if not where.isascii() or not where.isdigit() or len(where) > 9:
            raise bad(f"malformed fd number {where!r}")
        if int(where) in (1, 2):
            raise bad("fd:1 and fd:2 are refused (stdout and stderr are output)")
        where = str(int(where))
    return CredentialSource(name, kind, where)


def parse_sources(value, field_name: str = "http_credentials") -> tuple[CredentialSource, ...]:
    """A mapping NAME → "env:VAR"… or a sequence of "NAME=env:VAR"… strings."""
    if isinstance(value, str):
        value = [value]
    if hasattr(value, "items"):
        items = []
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise PolicyError(f"{field_name}: expected NAME → 'env:VAR' strings, "
                                  f"got {type(k).__name__} → {type(v).__name__}")
            items.append(f"{k}={v}")
        value = items
    try:
        value = list(value)
    except TypeError:
        raise PolicyError(f"{field_name}: expected a list of NAME=SOURCE strings or a mapping, "
                          f"got {type(value).__name__}") from None
    out: dict[str, CredentialSource] = {}
    for text in value:
        src = parse_source(text, field_name)
        if src.name in out:
            raise PolicyError(f"{field_name}: credential {src.name!r} is declared twice")
        out[src.name] = src
    return tuple(out.values())


@dataclass(frozen=True)
class AuthRule:
    method: str     # as in httpacl.HttpRule
    host: str
    path: str
    kind: str       # bearer, basic, header or query
    param: str      # basic: the user; header: the header name; query: the parameter
    credential: str
    replace: bool = True
    cleartext: bool = False
    spec: str = ""

    def rule(self):
        from .httpacl import HttpRule
        return HttpRule(self.method, self.host, self.path, self.spec)

    def fields(self) -> tuple:
        return (self.method, self.host, self.path, self.kind, self.param, self.credential,
                self.replace, self.cleartext, self.spec)


def parse_auth(text, names, field_name: str = "http_auth") -> AuthRule:
    """One `METHOD HOST[/PATH] AUTHSPEC CRED [replace|add-only] [cleartext]`;
    `names`: the declared credentials."""
    from . import httpacl

    def bad(why: str) -> PolicyError:
        return PolicyError(f"{field_name}: invalid auth rule {text!r}: {why} (expected "
                           "'METHOD HOST[/PATH] AUTHSPEC CRED [replace|add-only] [cleartext]', "
                           "AUTHSPEC one of bearer, basic:USER, header:NAME, query:PARAM)")
    if not isinstance(text, str):
        raise bad("not a string")
    parts = text.split()
    if len(parts) < 4:
        raise bad("too few words")
    if len(parts) > 6:
        raise bad("too many words")
    method, target, authspec, cred, *opts = parts
    try:
        rule = httpacl.parse_rule(f"{method} {target}", field_name)
    except PolicyError as e:
        raise bad(str(e).split(": ", 1)[-1]) from None
    if rule.host == "*":
        raise bad("the host may not be '*' (the credential would go to any host)")
    kind, sep, param = authspec.partition(":")
    kind = kind.lower()
    if kind == "apikey":
        kind = "header"
    if kind not in AUTH_KINDS:
        raise bad(f"unknown AUTHSPEC {authspec!r}")
    if kind == "bearer":
        if sep:
            raise bad("bearer takes no ':' argument")
    elif not param:
        raise bad(f"{kind} needs an argument ({kind}:{'USER' if kind == 'basic' else 'NAME'})")
    elif kind == "basic" and (":" in param or not param.isprintable() or not param.isascii()):
        raise bad("the basic user must be printable ASCII without ':'")
    elif kind == "header":
        if not _TOKEN.match(param):
            raise bad(f"malformed header name {param!r}")
        if param.lower() in _RESERVED_HEADERS:
            raise bad(f"header {param!r} cannot carry a credential")
    elif kind == "query" and not _PARAM.match(param):
        raise bad(f"malformed query parameter {param!r} (letters, digits, '-._~')")
    if cred not in names:
        raise bad(f"credential {cred!r} is not declared (declared: {', '.join(names) or 'none'})")
    mode = None
    cleartext = False
    for opt in opts:
        if opt in MODES and mode is None:
            mode = opt
        elif opt == CLEARTEXT and not cleartext:
            cleartext = True
        else:
            raise bad(f"unexpected {opt!r} (replace, add-only, cleartext)")
    return AuthRule(rule.method, rule.host, rule.path, kind, param, cred, mode != "add-only",
                    cleartext, text)


def parse_auth_rules(value, names, field_name: str = "http_auth") -> tuple[AuthRule, ...]:
    if isinstance(value, str):
        value = [value]
    return tuple(dict.fromkeys(parse_auth(r, names, field_name) for r in value))


# -- reading the secrets (the caller's side, when a run's plan is made) ------------------

def read_secret(src: CredentialSource, environ=None) -> Secret:
    """The secret of one source; PolicyError naming the source (never the value)."""
    what = f"http_credentials: credential {src.name!r} ({src.kind}:{src.where})"
    if src.kind == "env":
        env = os.environ if environ is None else environ
        if src.where not in env:
            raise PolicyError(f"{what}: the environment variable is not set")
        data = os.fsencode(env[src.where])
    elif src.kind == "file":
        try:
            fd = os.open(src.where, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as e:
            raise PolicyError(f"{what}: cannot open the file: {e.strerror}") from None
        try:
            data = _read_fd(fd, what)
        finally:
            os.close(fd)
    else:
        fd = int(src.where)
        try:
            st = os.fstat(fd)
        except OSError as e:
            raise PolicyError(f"{what}: {e.strerror}") from None
        if fd == 0 and _seekable(fd, st):
            raise PolicyError(f"{what}: fd 0 is seekable (a file): the sandbox gets it as stdin "
                              "and could read the secret back; use a pipe or file:")
        data = _read_fd(fd, what)
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise PolicyError(f"{what}: the secret is empty")
    if any(b < 0x20 or b == 0x7F for b in data):
        raise PolicyError(f"{what}: the secret holds a control character (CR, LF, NUL...): "
                          "it cannot go into an HTTP header")
    return Secret(data)


def _seekable(fd: int, st) -> bool:
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISBLK(st.st_mode):
        return False
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return False
    return True


def _read_fd(fd: int, what: str) -> bytes:
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise PolicyError(f"{what}: is a directory")
        out = bytearray()
        while len(out) <= MAX_SECRET:
            try:
                chunk = os.read(fd, MAX_SECRET + 1 - len(out))
            except BlockingIOError:
                import select
                select.select([fd], [], [], 10.0)
                continue
            if not chunk:
                break
            out += chunk
    except OSError as e:
        raise PolicyError(f"{what}: cannot read: {e.strerror}") from None
    if len(out) > MAX_SECRET:
        raise PolicyError(f"{what}: longer than {MAX_SECRET} bytes")
    return bytes(out)


def read_secrets(sources, environ=None) -> dict[str, Secret]:
    return {src.name: read_secret(src, environ) for src in sources}


def env_names(sources) -> tuple[str, ...]:
    """The environment variables the sandbox must not inherit."""
    return tuple(s.where for s in sources if s.kind == "env")


# -- applying a rule to a request (the proxy) ---------------------------------------------

@dataclass
class Applied:
    """The headers and query a request is forwarded with."""
    headers: list[tuple[str, str]]
    query: str | None
    injected: bool = field(default=False)


def apply(rule: AuthRule, secret: Secret, headers: list[tuple[str, str]],
          query: str | None) -> Applied:
    """The request's headers and query with the credential applied."""
    value = secret.reveal().decode("latin-1")
    if rule.kind == "query":
        params = [] if not query else query.split("&")
        if not rule.replace and any(_param_name(p) == rule.param for p in params):
            return Applied(headers, query)
        kept = [p for p in params if _param_name(p) != rule.param]
        kept.append(f"{rule.param}={quote(secret.reveal(), safe='')}")
        return Applied(headers, "&".join(kept), True)
    name = "Authorization" if rule.kind in ("bearer", "basic") else rule.param
    present = any(k.lower() == name.lower() for k, _v in headers)
    if present and not rule.replace:
        return Applied(headers, query)
    if rule.kind == "bearer":
        value = "Bearer " + value
    elif rule.kind == "basic":
        value = "Basic " + base64.b64encode(rule.param.encode() + b":" + secret.reveal()).decode()
    kept_headers = [(k, v) for k, v in headers if k.lower() != name.lower()]
    kept_headers.append((name, value))
    return Applied(kept_headers, query, True)


def _param_name(param: str) -> str:
    """A query parameter's name, decoded (`k%65y=1`, `key`, `key=` are all `key`)."""
    return unquote(param.split("=", 1)[0].replace("+", " "))
