"""The HTTP ACL proxy of one run, on the supervisor's side.

How a connection gets here. A TCP connect of the sandbox to an HTTP port
(http_ports) is decided as any other (network.py: the destination must be
allowed), then performed on the child's behalf to this proxy instead:
the child's socket (our pidfd_getfd copy of it) is bound to a fresh
loopback port if it was not bound (SO_REUSEADDR / SO_REUSEPORT cleared
first, so no other socket can share that port), the proxy *registers*
that local address with the original destination, and the socket is
connected to the proxy's listener. The proxy accepts only connections
whose peer address was registered just before (each registration serves
one connection and expires); anything else is closed unread. So another
local process, or another sandbox, that connects to the listener gets
nothing: it cannot use the proxy to reach anything, and never gets
another sandbox's rights (fail closed).

Per request, on every request of a keep-alive connection: one authority
is taken from the request-target and the Host header (they must agree,
userinfo refused); the rules (httpacl.py) decide on the normalised path;
the claimed host must be, or resolve to, the address the child actually
connected to (and a claimed port must be the one it connected to); the
request is forwarded to that original destination with the normalised
path, and the response relayed. A denied request gets a 403 and the
connection is closed. CONNECT, upgrades (WebSocket, h2c) and HTTP/2 are
refused, never passed through uninspected.

TLS (a first byte 0x16) is refused unless the run has an interception CA
(http_ca/http_key or http_inject_ca; httpca.py). Then the proxy terminates
it with Python's ssl: the ClientHello must name a server (SNI; none:
refused), a hostname the rules' hosts allow or that resolves to the
address the child connected to; a leaf certificate for it is minted
(cached for the run) and only HTTP/1.1 is offered by ALPN. Every request
on it must claim that very host (Host == SNI) besides the checks above,
and is forwarded over TLS to the original destination, whose certificate
is verified for that name against the system trust store (plus the
HttpAcl's `upstream_ca`, a test hook).

Threads: an acceptor thread, and one thread per open connection (a thread
whose connection ended waits a while to serve the next one: starting a
thread costs a new connection ~150 µs). They
never touch the seccomp listener or any supervisor state but their own;
`close()` (the end of the run) shuts every socket down and joins them
before the supervisor forks its next child.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import queue
import selectors
import socket
import ssl
import struct
import threading
import time
from typing import Any

from .. import httpacl
from ..handler import NotifAction
from ..httpacl import RequestError

REGISTRATION_TTL = 30.0     # seconds a registered peer may take to arrive
WORKER_IDLE = 30.0          # seconds an idle connection thread waits for another
CLIENT_IDLE = 120.0         # seconds a keep-alive client may stay silent
UPSTREAM_TIMEOUT = 300.0
RESOLVE_TTL = 30.0
CHUNK = 1 << 16

MSG_ACL = "Blocked by sandlock HTTP ACL policy"
MSG_MISMATCH = "Blocked by sandlock: Host header does not match connection destination"
MSG_HOST = "Blocked by sandlock: missing, malformed, or mismatched request host"
MSG_UNSUPPORTED = "Blocked by sandlock: {} is not supported through the HTTP ACL"
MSG_SNI = "Blocked by sandlock: Host header does not match the TLS server name"
HANDSHAKE_TIMEOUT = 10.0
MSG_CLEARTEXT = ("Blocked by sandlock: this request would carry a credential over plain HTTP "
                 "(the auth rule does not say 'cleartext')")
MSG_CREDENTIAL = "Blocked by sandlock: credential could not be applied"
MAX_LOG = 1000              # requests logged per run (the rest are counted)
MAX_LOG_FIELD = 256         # characters kept of a logged method, host or path
MAX_LOG_BYTES = 256 * 1024  # and at most this much in all (it rides in protocol.Finished)


def _ip(text: str):
    addr = ipaddress.ip_address(text.split("%", 1)[0])
    return getattr(addr, "ipv4_mapped", None) or addr


class _Closed(Exception):
    """The peer went away (or the proxy is closing)."""


class _NoResponse(_Closed):
    """The upstream closed before answering (an idle keep-alive connection
    it had dropped): a bodiless request is sent once more, on a new one."""


class _Reader:
    """Buffered reads from a socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(CHUNK)
        except OSError:
            data = b""
        if not data:
            return False
        self.buf += data
        return True

    def head(self, limit: int = httpacl.MAX_HEAD) -> bytes | None:
        """Bytes up to CRLF CRLF (excluded); None at a clean EOF before any byte."""
        start = 0
        while True:
            end = self.buf.find(b"\r\n\r\n", max(0, start - 3))
            if end >= 0:
                data = bytes(self.buf[:end])
                del self.buf[:end + 4]
                return data
            if len(self.buf) > limit:
                raise RequestError("head too large")
            start = len(self.buf)
            if not self._fill():
                if self.buf:
                    raise _Closed()
                return None

    def line(self, limit: int = 4096) -> bytes:
        """One line, CRLF included."""
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                data = bytes(self.buf[:end + 1])
                del self.buf[:end + 1]
                return data
            if len(self.buf) > limit:
                raise RequestError("line too long")
            if not self._fill():
                raise _Closed()

    def copy(self, n: int, out: socket.socket) -> None:
        """Copy exactly n bytes to `out`."""
        while n:
            if not self.buf and not self._fill():
                raise _Closed()
            take = bytes(self.buf[:n])
            del self.buf[:len(take)]
            out.sendall(take)
            n -= len(take)

    def copy_to_eof(self, out: socket.socket) -> None:
        while True:
            if self.buf:
                out.sendall(bytes(self.buf))
                self.buf.clear()
            if not self._fill():
                return

    def copy_chunked(self, out: socket.socket) -> None:
        """Copy a chunked body, trailers and final CRLF included. Strict (RFC
        9112 7.1): a chunk size is hex digits only and every line ends with
        CRLF. What Python's int() also takes (`0x2d`, `2_d`, `+2d`, spaces)
        or a bare LF could be read otherwise by the server, which would
        then take the rest of the body for a request the rules never saw."""
        while True:
            line = self.line()
            size_text = line[:-2].split(b";", 1)[0].rstrip(b" \t")
            if not line.endswith(b"\r\n") or b"\r" in line[:-2] or not _hex(size_text):
                raise RequestError("malformed chunk size")
            size = int(size_text, 16)
            out.sendall(line)
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = self.line()
                    if not trailer.endswith(b"\r\n") or b"\r" in trailer[:-2]:
                        raise RequestError("malformed chunk trailer")
                    out.sendall(trailer)
                    if trailer == b"\r\n":
                        return
            self.copy(size, out)
            crlf = self.line(2)
            if crlf != b"\r\n":
                raise RequestError("malformed chunk")
            out.sendall(crlf)


def _hex(text: bytes) -> bool:
    return 0 < len(text) <= 16 and all(c in b"0123456789abcdefABCDEF" for c in text)


def _kernel_timeout(sock: socket.socket, seconds: float) -> None:
    """A blocking socket whose reads and writes fail (EAGAIN, an OSError)
    after `seconds` idle: the kernel's timeout, as Python's settimeout()
    polls before every call (a system call a request saved)."""
    sock.settimeout(None)
    tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def _no_delay(sock: socket.socket) -> None:
    """Small writes go at once: a response's head and body are two writes
    at times, and Nagle's algorithm would hold the second for the client's
    delayed ACK (40 ms a request on a keep-alive connection)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def _reply(sock: socket.socket, status: str, body: str) -> None:
    data = body.encode() + b"\n"
    try:
        sock.sendall(f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    except OSError:
        pass


class Proxy:
    """The proxy of one run. `pinned`: hostname → addresses the plan pinned
    (the sandbox's /etc/hosts), trusted for Host verification; other names
    are resolved here (cached)."""

    def __init__(self, acl: httpacl.HttpAcl, pinned: dict | None = None):
        self.acl = acl
        self.pinned = {h: frozenset(_ip(str(a)) for a in addrs) for h, addrs in (pinned or {}).items()}
        self.log: list[dict] = []       # the request log (see _record), the first MAX_LOG
        self.log_more = 0               # requests past MAX_LOG, not logged
        self._log_bytes = 0
        self._lock = threading.Lock()
        self._expected: dict[tuple, tuple[tuple, float]] = {}
        self._listeners: dict[int, socket.socket] = {}
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._conns: set[socket.socket] = set()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # connections for idle workers
        self._idle = 0                  # workers waiting on the queue
        self._threads: set[threading.Thread] = set()
        self._resolved: dict[str, tuple[float, frozenset]] = {}
        self._literals: dict[str, frozenset] = {}   # IP literal hosts, parsed once
        self._minter: Any = None            # httpca.LeafMinter, made at the first TLS connection
        self._leaves: dict[str, ssl.SSLContext] = {}
        self._upstream_tls: ssl.SSLContext | None = None
        self._tls_server: ssl.SSLContext | None = None
        # TLS sessions of upstream servers, by (name, address): a new
        # connection resumes one (no second certificate check: the session
        # is the verified server's, and only it can resume it).
        self._sessions: dict[tuple, ssl.SSLSession] = {}
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept_loop, name="sandlock-http-accept",
                                          daemon=True)
        self._acceptor.start()

    # -- the supervisor's side (its main thread) ------------------------------------

    def _listener(self, family: int) -> socket.socket:
        with self._lock:
            lst = self._listeners.get(family)
            if lst is None:
                lst = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                lst.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
                lst.listen(128)
                lst.setblocking(False)
                self._listeners[family] = lst
                self._sel.register(lst, selectors.EVENT_READ, family)
            return lst

    def attach(self, sock: socket.socket, dest: tuple, connect):
        """Connect the child's socket (our copy) to the proxy, for a connect
        to `dest` (the Python address, already allowed); `connect(sock,
        address)` is network.py's non-blocking connect. Returns its verdict."""
        if self._closed:
            return errno.ECONNREFUSED
        try:
            family = sock.family
            mapped = False
            if family == socket.AF_INET6:
                mapped = not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            listen_family = socket.AF_INET if family == socket.AF_INET or mapped else socket.AF_INET6
            loop_ip = "127.0.0.1" if listen_family == socket.AF_INET else "::1"
            local = sock.getsockname()
            if local[1] == 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
                sock.bind((("::ffff:" + loop_ip) if mapped else loop_ip, 0))
                local = sock.getsockname()
            elif sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) \
                    or sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
                return errno.EACCES  # a shareable source port: another socket could pose as it
            ip = _ip(local[0])
            if ip.is_unspecified:
                ip = _ip(loop_ip)
            key = (ip, local[1])
            port = self._listener(listen_family).getsockname()[1]
        except OSError as e:
            return e.errno or errno.EACCES
        target = (("::ffff:" + loop_ip) if mapped else loop_ip, port)
        with self._lock:
            if key in self._expected:
                return errno.EADDRINUSE
            self._expected[key] = ((_ip(dest[0]), dest[1], dest), time.monotonic() + REGISTRATION_TTL)
        verdict = connect(sock, target)
        if isinstance(verdict, int) and verdict not in (0, errno.EINPROGRESS):
            self._forget(key)  # (EINPROGRESS: a non-blocking socket; it may still arrive)
            return verdict
        resume = getattr(verdict, "resume", None)
        if resume is not None:
            def resumed():
                out = resume()
                if not isinstance(out, NotifAction):
                    self._forget(key)
                return out
            verdict.resume = resumed
        return verdict

    def warm(self) -> None:
        """Prepare HTTPS interception in the background, while the sandbox
        starts: the certificate library, the leaf certificates of the allow
        rules' names, the upstream trust store (together 100-300 ms, else
        paid by the first HTTPS request). A failure here is left for that
        request to meet."""
        if self.acl.ca is None:
            return
        hosts = list(dict.fromkeys(r.host for r in self.acl.allow if r.concrete_host is not None
                                   and not r.host.startswith("[")))[:8]

        def prepare():
            try:
                for host in hosts:
                    try:
                        ipaddress.ip_address(host)
                        continue  # no certificate for an address
                    except ValueError:
                        pass
                    if self._closed:
                        return
                    self._leaf_context(host)
                if not self._closed:
                    self._upstream_context()
            except Exception:  # noqa: BLE001 -- the first request meets it again
                pass
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())
        thread = threading.Thread(target=prepare, daemon=True, name="sandlock-http-warm")
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _forget(self, key) -> None:
        with self._lock:
            self._expected.pop(key, None)

    def close(self) -> None:
        """Stop everything (the end of the run); the threads are joined.
        A second call does nothing."""
        if self._closed and self._wake_w < 0:
            return
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._acceptor.join(2.0)
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
            for _ in range(self._idle):
                self._queue.put(None)  # idle workers stop
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(2.0)
        for lst in self._listeners.values():
            lst.close()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_w = -1

    def export_log(self) -> tuple[list[tuple], int]:
        """The request log as plain records (protocol.Finished.http_log)."""
        with self._lock:
            return ([(e["method"], e["host"], e["path"], e["scheme"], e["verdict"],
                      e.get("status", 0), e.get("reason", ""), e.get("credential", ""))
                     for e in self.log], self.log_more)

    # -- the proxy's threads -------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                events = self._sel.select(1.0)
            except (OSError, ValueError):
                return
            for key, _ in events:
                if key.data is None:
                    return  # woken by close()
                self._accept(key.fileobj)

    def _accept(self, lst) -> None:
        try:
            conn, peer = lst.accept()
        except OSError:
            return
        try:
            key = (_ip(peer[0]), peer[1])
        except ValueError:
            conn.close()
            return
        now = time.monotonic()
        with self._lock:
            entry = self._expected.pop(key, None)
            for k in [k for k, (_d, exp) in self._expected.items() if exp < now]:
                del self._expected[k]
        if entry is None or entry[1] < now or self._closed:
            conn.close()  # not a connect the supervisor made for the sandbox: refused
            return
        conn.setblocking(True)
        _no_delay(conn)
        with self._lock:
            if self._closed:
                conn.close()
                return
            self._conns.add(conn)
            if self._idle:  # a worker waits: no thread to start (~150 µs, and a switch)
                self._idle -= 1
                self._queue.put((conn, entry[0]))
                return
            thread = threading.Thread(target=self._worker, args=(conn, entry[0]), daemon=True,
                                      name="sandlock-http-conn")
            self._threads.add(thread)
        thread.start()

    def _worker(self, conn: socket.socket, dest: tuple) -> None:
        """Serve connections: this one, then those handed over while idle."""
        item: tuple | None = (conn, dest)
        try:
            while item is not None:
                self._serve(*item)
                with self._lock:
                    if self._closed:
                        return
                    self._idle += 1
                item = self._next_connection()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _next_connection(self) -> tuple | None:
        """The next connection for an idle worker; None: stop (idle too long,
        or the proxy closes). The dispatcher counts a worker busy again when
        it queues an item for it, under the lock: so does this on a timeout."""
        while True:
            try:
                return self._queue.get(timeout=WORKER_IDLE)
            except queue.Empty:
                with self._lock:
                    if self._queue.qsize():
                        continue  # queued for us just now
                    self._idle -= 1
                    return None

    def _serve(self, conn: socket.socket, dest: tuple) -> None:
        upstream: list[socket.socket | None] = [None]
        sni: list[str | None] = [None]
        try:
            _kernel_timeout(conn, CLIENT_IDLE)
            first = conn.recv(1, socket.MSG_PEEK)
            if first == b"\x16":
                if self.acl.ca is None:
                    return  # TLS without an interception CA: refused, not passed
                plain = conn
                conn = self._tls_accept(plain, dest, sni)
                with self._lock:
                    self._conns.discard(plain)
                    self._conns.add(conn)
                if self._closed:
                    return
            reader = _Reader(conn)
            while not self._closed and first:
                if not self._one(conn, reader, dest, upstream, sni[0]):
                    break
        except (_Closed, OSError):
            pass
        except RequestError as e:
            _reply(conn, "400 Bad Request", f"Blocked by sandlock: {e}")
        finally:
            with self._lock:
                self._conns.discard(conn)
                if upstream[0] is not None:
                    self._conns.discard(upstream[0])
            for s in (conn, upstream[0]):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    def _refuse(self, conn, status: str, message: str, method: str, host: str, path: str,
                reason: str = "", tls: bool = False) -> bool:
        self._record(method, host, path, tls, "deny", int(status[:3]), reason)
        _reply(conn, status, message)
        return False

    def _record(self, method: str, host: str, path: str, tls: bool, verdict: str,
                status: int = 0, reason: str = "", credential: str = "") -> dict:
        """Log one request: never its query, headers or body (a credential
        may be there), only the normalised path (or the raw target of a
        refused one), bounded. The returned entry gets the upstream's
        status once it answers."""
        method, host = method[:MAX_LOG_FIELD], host[:MAX_LOG_FIELD]
        path = path.split("?", 1)[0][:MAX_LOG_FIELD]
        entry: dict = {"method": method, "host": host, "path": path,
                 "scheme": "https" if tls else "http", "verdict": verdict, "status": status,
                 "reason": reason, "credential": credential}
        size = len(method) + len(host) + len(path) + 64
        with self._lock:
            if len(self.log) < MAX_LOG and self._log_bytes + size <= MAX_LOG_BYTES:
                self.log.append(entry)
                self._log_bytes += size
            else:
                self.log_more += 1
        return entry

    # -- TLS interception -----------------------------------------------------------------

    def _tls_accept(self, conn: socket.socket, dest: tuple, sni: list) -> ssl.SSLSocket:
        """The TLS session with the child, with a leaf for its SNI; raises
        OSError (ssl.SSLError) when refused."""
        conn.settimeout(HANDSHAKE_TIMEOUT)
        tls = self._server_context().wrap_socket(conn, server_side=True,
                                                 do_handshake_on_connect=False)
        tls._sandlock = (dest, sni)  # type: ignore[attr-defined]  # for _choose_leaf
        tls.do_handshake()
        if sni[0] is None:
            tls.close()
            raise _Closed()
        _kernel_timeout(tls, CLIENT_IDLE)
        return tls

    def _server_context(self) -> ssl.SSLContext:
        """The context every child TLS connection starts with (made once);
        its SNI callback switches to the leaf's context."""
        with self._lock:
            if self._tls_server is None:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                ctx.set_alpn_protocols(["http/1.1"])
                ctx.sni_callback = self._choose_leaf
                self._tls_server = ctx
            return self._tls_server

    def _choose_leaf(self, sslobj, name, _ctx):
        try:
            dest, sni = sslobj._sandlock
        except (AttributeError, ValueError):
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        if name is None:
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE  # no SNI: refused
        try:
            host = httpacl.canonical_host(name)
            if not self._sni_allowed(host, dest):
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            sslobj.context = self._leaf_context(host)
        except (RequestError, OSError, ValueError, TypeError):
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        sni[0] = host
        return None

    def _sni_allowed(self, host: str, dest: tuple) -> bool:
        """A hostname an allow rule names (not by `*`), or one that stands
        for the address the child connected to."""
        try:
            ipaddress.ip_address(host.strip("[]"))
            return False  # certificates are minted for names only
        except ValueError:
            pass
        if any(r.host != "*" and r.host_matches(host) for r in self.acl.allow):
            return True
        return dest[0] in self._addresses(host)

    def _leaf_context(self, host: str) -> ssl.SSLContext:
        with self._lock:
            ctx = self._leaves.get(host)
        if ctx is not None:
            return ctx
        from .. import httpca
        assert self.acl.ca is not None
        with self._lock:
            if self._minter is None:
                self._minter = httpca.LeafMinter(*self.acl.ca, self.acl.crypto_path)
            minter = self._minter
        chain = minter.leaf(host)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        cert_fd = os.memfd_create("sandlock-leaf", os.MFD_CLOEXEC)
        key_fd = os.memfd_create("sandlock-leaf-key", os.MFD_CLOEXEC)
        try:
            os.write(cert_fd, chain)
            os.write(key_fd, minter.key_pem)
            ctx.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}")
        finally:
            os.close(cert_fd)
            os.close(key_fd)
        with self._lock:
            self._leaves.setdefault(host, ctx)
            if len(self._leaves) > 4096:
                self._leaves.clear()
        return ctx

    def _upstream_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._upstream_tls is None:
                ctx = ssl.create_default_context()
                if self.acl.upstream_ca:
                    ctx.load_verify_locations(cadata=self.acl.upstream_ca.decode("ascii"))
                ctx.set_alpn_protocols(["http/1.1"])
                self._upstream_tls = ctx
            return self._upstream_tls

    def _one(self, conn, reader: _Reader, dest: tuple, upstream: list,
             sni: str | None = None) -> bool:
        """Serve one request; False when the connection is to be closed."""
        raw = reader.head()  # (TLS after a plain request: a malformed request line, refused)
        if raw is None:
            return False
        if raw.startswith(b"PRI * HTTP/2.0"):
            self._record("PRI", "", "*", sni is not None, "deny", 0, "unsupported")
            return False  # HTTP/2 prior knowledge: refused (closed: it would not read a reply)
        head = httpacl.parse_head(raw)
        method, raw_target, version = head.first
        method = method.upper()
        tls = sni is not None
        if method == "CONNECT":
            return self._refuse(conn, "403 Forbidden", MSG_UNSUPPORTED.format("CONNECT"),
                                method, "", raw_target, "unsupported", tls)
        if head.get_all("upgrade") or "upgrade" in head.tokens("connection"):
            return self._refuse(conn, "403 Forbidden",
                                MSG_UNSUPPORTED.format("a protocol upgrade (WebSocket, h2c)"),
                                method, "", raw_target, "unsupported", tls)
        try:
            target = httpacl.parse_target(raw_target)
            host, port = httpacl.request_authority(target, head.get_all("host"))
        except RequestError:
            return self._refuse(conn, "403 Forbidden", MSG_HOST, method, "", raw_target,
                                "host", tls)
        try:
            paths = httpacl.path_variants(target.path)
        except RequestError as e:
            return self._refuse(conn, "400 Bad Request", f"Blocked by sandlock: {e}",
                                method, host, target.path, "malformed", tls)
        if not self.acl.permits(method, host, paths):
            return self._refuse(conn, "403 Forbidden", MSG_ACL, method, host, paths[0], "acl", tls)
        dest_ip, dest_port, dest_addr = dest
        if sni is not None and host != sni:
            return self._refuse(conn, "403 Forbidden", MSG_SNI, method, host, paths[0],
                                "host", tls)
        if (port is not None and port != dest_port) or dest_ip not in self._addresses(host):
            return self._refuse(conn, "403 Forbidden", MSG_MISMATCH, method, host, paths[0],
                                "host", tls)
        framing = httpacl.body_framing(head)
        headers, query, credential = head.headers, target.query, ""
        rule = self.acl.auth_for(method, host, paths) if self.acl.auth else None
        if rule is not None:
            if not tls and not rule.cleartext:
                return self._refuse(conn, "403 Forbidden", MSG_CLEARTEXT, method, host, paths[0],
                                    "cleartext", tls)
            secret = (self.acl.secrets or {}).get(rule.credential)
            if secret is None:  # (the protocol refuses this; never forward unauthenticated)
                return self._refuse(conn, "502 Bad Gateway", MSG_CREDENTIAL, method, host,
                                    paths[0], "credential", tls)
            from ..httpauth import apply
            applied = apply(rule, secret, headers, query)
            headers, query = applied.headers, applied.query
            credential = rule.credential if applied.injected else ""
        entry = self._record(method, host, paths[0], tls, "allow", credential=credential)
        close = version == "HTTP/1.0" and "keep-alive" not in head.tokens("connection") \
            or "close" in head.tokens("connection")
        return self._forward(conn, reader, head, method, host, port, paths[0], query,
                             framing, close, dest_addr, upstream, sni, headers, entry)

    def _addresses(self, host: str) -> frozenset:
        """Addresses `host` stands for: itself (a literal), the plan's pinned
        ones, else what the resolver says (cached). Empty: unknown."""
        literal = self._literals.get(host)
        if literal is not None:
            return literal
        try:
            literal = frozenset({_ip(host.strip("[]"))})
        except ValueError:
            pass
        else:
            if len(self._literals) < 1024:
                self._literals[host] = literal
            return literal
        if host in self.pinned:
            return self.pinned[host]
        now = time.monotonic()
        cached = self._resolved.get(host)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            found = frozenset(_ip(str(ai[4][0])) for ai in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError, ValueError):
            found = frozenset()
        self._resolved[host] = (now + RESOLVE_TTL, found)
        return found

    _HOP = frozenset({"host", "connection", "keep-alive", "proxy-connection", "te", "expect",
                      "upgrade", "proxy-authorization", "trailer"})

    def _forward(self, conn, reader, head, method, host, port, path, query, framing, close,
                 dest_addr, upstream, sni, headers, entry) -> bool:
        authority = host if port is None else f"{host}:{port}"
        lines = [f"{method} {path}{'' if query is None else '?' + query} HTTP/1.1",
                 f"Host: {authority}"]
        drop = self._HOP | head.tokens("connection")
        lines += [f"{k}: {v}" for k, v in headers if k.lower() not in drop]
        lines.append("Connection: close" if close else "Connection: keep-alive")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for attempt in (0, 1):
            up = upstream[0]
            reused = up is not None
            if up is None:
                try:
                    up = socket.create_connection(dest_addr[:2], timeout=10)
                    _no_delay(up)
                    if sni is not None:
                        session = self._sessions.get((sni, dest_addr))
                        try:
                            up = self._upstream_context().wrap_socket(up, server_hostname=sni,
                                                                      session=session)
                        except OSError:
                            up.close()
                            raise
                except OSError:
                    entry["status"] = 502
                    _reply(conn, "502 Bad Gateway", "upstream error")
                    return False
                _kernel_timeout(up, UPSTREAM_TIMEOUT)
                upstream[0] = up
                with self._lock:
                    self._conns.add(up)
            retry = False
            try:
                up.sendall(data)
                if framing[0] != "none" and "100-continue" in head.tokens("expect"):
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                if framing[0] == "length":
                    reader.copy(framing[1], up)
                elif framing[0] == "chunked":
                    reader.copy_chunked(up)
                reuse = self._relay_response(conn, up, method, entry)
                if sni is not None:
                    self._keep_session(sni, dest_addr, up)
            except _NoResponse:
                reuse = None
                retry = reused and framing[0] == "none" and attempt == 0
            except (OSError, _Closed):
                reuse = None  # the response is incomplete, or ended with the connection
            if not reuse:
                with self._lock:
                    self._conns.discard(up)
                up.close()
                upstream[0] = None
            if not retry:
                break
        return reuse is not None and not close

    def _keep_session(self, sni: str, dest_addr: tuple, up) -> None:
        session = getattr(up, "session", None)
        if session is not None and session.has_ticket:
            with self._lock:
                if len(self._sessions) > 1024:
                    self._sessions.clear()
                self._sessions[(sni, dest_addr)] = session

    def _relay_response(self, conn, up, method: str, entry: dict) -> bool:
        """Relay one response; True when the upstream connection may be reused."""
        rd = _Reader(up)
        first = True
        while True:
            raw = rd.head()
            if raw is None:
                raise _NoResponse() if first else _Closed()
            first = False
            head = httpacl.parse_head(raw, request=False)
            status = int(head.first[1])
            if status == 101:
                raise _Closed()  # we never ask for an upgrade
            entry["status"] = status
            if 100 <= status < 200:
                conn.sendall(raw + b"\r\n\r\n")
                continue
            break
        reuse = "close" not in head.tokens("connection") and head.first[0] == "HTTP/1.1"
        te = head.get_all("transfer-encoding")
        out = raw + b"\r\n\r\n"
        if method == "HEAD" or status in (204, 304):
            conn.sendall(out)
        elif te and te[-1].strip().lower() == "chunked":
            conn.sendall(out)
            rd.copy_chunked(conn)
        elif head.get_all("content-length"):
            framing = httpacl.body_framing(httpacl.Head(head.first, [
                (k, v) for k, v in head.headers if k.lower() == "content-length"]))
            n = framing[1] if framing[0] == "length" else 0
            if n and len(rd.buf) >= n:  # the whole body is here: one write with the head
                out += bytes(rd.buf[:n])
                del rd.buf[:n]
                n = 0
            conn.sendall(out)
            if n:
                rd.copy(n, conn)
        else:
            conn.sendall(out)
            rd.copy_to_eof(conn)
            raise _Closed()  # the body ended with the connection: so does the client's
        if rd.buf:
            return False  # the upstream sent more than one response: do not reuse
        return reuse

