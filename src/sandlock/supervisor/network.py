"""Network calls decided and performed on the child's behalf.

The child's socket is taken with pidfd_getfd (same open file, same socket);
the address is read once from child memory (length capped) into our own
copy; the call is made here with that copy and its result returned. The
child's memory is never read twice, so a thread rewriting the sockaddr
while the call is trapped changes nothing. CONTINUE is answered only where
the kernel cannot act on what we read: sockets of other families (the
socket's family, not the sockaddr's, decides how the kernel parses it) and
addressed sends on stream sockets (the kernel ignores the address; TCP Fast
Open, the exception, is refused by the filter).

An on-behalf call runs with the supervisor's rights, so it is checked
against everything the child's own confinement would have enforced: the
TCP ports its Landlock ruleset allows, privileged ports, named unix
sockets only under writable paths, abstract unix sockets only when the
sandbox bound them (Landlock's scoping, re-done here).

Abstract unix names. Landlock refuses the child a connect or send to an
abstract socket bound outside the sandbox; an on-behalf call must refuse
it too, in time that the sandboxed code cannot inflate. (It used to look
at every fd of every process of the sandbox: with 20k sockets over 40
processes one connect took ~0.5 s here, ~12 s in the report, and the
supervisor answered nothing meanwhile; now ~0.3 ms.) So every bind is
routed here, and an abstract bind (autobind, addrlen == sizeof(sa_family_t),
included) is done on the child's behalf: the sockaddr is read once, our
pidfd_getfd copy of the socket is bound, and the name it got
(getsockname) is kept with that copy in `AbstractNames`. Holding the copy
keeps the name bound to the sandbox's socket for the run (no one outside
can take it over after the sandbox closed its own fds), so a connect or
send to an abstract name is allowed iff the name is kept: one dict lookup.
An on-behalf connect or send that autobinds an unbound socket (SO_PASSCRED)
keeps that name too. Consequences, all failing closed:
- at most `MAX_ABSTRACT_NAMES` names (and no more than half the
  supervisor's RLIMIT_NOFILE). When full, a bind looks at the `SWEEP`
  oldest names and lets go of those whose binding thread or process no
  longer holds the socket at the fd it bound (the others go to the back of
  the queue: later binds look at the next ones); if none could go, the bind
  fails with ENOBUFS. SWEEP bounds the cost of one bind (~30 us a name here);
- a name stays bound to its socket until the run ends, also after the
  sandbox closed it (a connect to a closed listener's name then waits in
  its backlog instead of failing with ECONNREFUSED). A new bind of a kept
  name that fails with EADDRINUSE lets our copy go and is tried once more
  when the process and fd that bound it no longer hold the socket;
- names the kernel gives without a notification (an autobind by send()
  or sendto() without an address, which the filter lets through) are not
  kept: the sandbox cannot connect or send to them;
- named (path) unix binds are left to the kernel, where Landlock's
  MAKE_SOCK right decides.

A program that restricts itself further (landlock_restrict_self: see
selfrestrict.py) has rules the supervisor cannot read back. From then on,
for the whole sandbox, every call this module would perform with the
supervisor's rights is refused with EACCES: inet connects and addressed
sends checked here, every unix connect and addressed unix send, inet binds
done here (net_deny_bind, port_remap). What is left to the kernel keeps
working, checked against every Landlock domain of the caller: port-only
TCP connects (`tcp_by_landlock`), inet binds without net_deny_bind or
port_remap, unix binds (abstract names bound then are not kept). Sends
without an address go to the peer the socket is connected to; no Landlock
right governs them, so they are still done here.
"""
from __future__ import annotations

from typing import Any

import errno
import fcntl
import ipaddress
import itertools
import os
import resource
import select
import socket
import stat
import struct

from .._kernel import memory, pidfd
from ..denials import Refused
from ..handler import NotifAction
from . import processes
from .selfrestrict import SelfRestriction

MAX_SOCKADDR = 128
MAX_DGRAM = 1 << 18     # largest datagram copied on the child's behalf
MAX_IOV = 1024          # UIO_MAXIOV
MAX_MMSG = 1024
SUN_LEN = 110           # sizeof(struct sockaddr_un): longer unix addresses are EINVAL
MAX_ABSTRACT_NAMES = 4096   # abstract names kept per run (see the module docstring)
SWEEP = 16              # kept names looked at when the table is full, per bind
SOCK_STREAM = socket.SOCK_STREAM
_PROTO = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp",
          socket.IPPROTO_ICMP: "icmp", socket.IPPROTO_ICMPV6: "icmp"}


# Control messages passed through on an on-behalf send: (level, type).
SAFE_CMSGS = {(socket.IPPROTO_IP, 1), (socket.IPPROTO_IP, 2), (socket.IPPROTO_IP, 8),  # TOS, TTL, PKTINFO
              (socket.IPPROTO_IPV6, 67), (socket.IPPROTO_IPV6, 52),  # TCLASS, HOPLIMIT
              (socket.IPPROTO_IPV6, 50),                             # IPV6_PKTINFO
              (socket.IPPROTO_UDP, 103)}                             # UDP_SEGMENT


class _Refused(Exception):
    def __init__(self, err: int):
        self.errno = err


class Deferred:
    """An answer that must wait for `fd` to become writable; `resume()`
    then gives the verdict (None / errno / NotifAction)."""

    def __init__(self, fd: int, resume, cleanup):
        self.fd = fd
        self.resume = resume
        self.cleanup = cleanup



def _take_socket(ctx, fd_arg: int):
    """The child's socket (our own fd on the same socket), or an errno."""
    try:
        fd = pidfd.getfd_of_task(ctx.pid, fd_arg & 0xFFFFFFFF, processes.tgid)
    except (OSError, ProcessLookupError) as e:
        return getattr(e, "errno", None) or errno.EBADF
    try:
        return socket.socket(fileno=fd)  # ENOTSOCK for anything but a socket
    except OSError as e:
        os.close(fd)
        return e.errno or errno.ENOTSOCK


# A sendmmsg message to another destination than the one policy_fn judged
ELSEWHERE = -1


def _read_addr(ctx, ptr: int, length: int, first: bool = True):
    """Our copy of the child's sockaddr (bytes), or an errno, as the kernel
    would answer: the length is a C int, at most sizeof(sockaddr_storage),
    and every byte of it must be readable.

    Once policy_fn judged the call's destination, that is the address:
    the bytes it was shown (a later message of a sendmmsg to anywhere else:
    ELSEWHERE, the send stops there)."""
    judged = getattr(ctx, "_judged", None)
    if judged and first:
        return judged
    raw = read_sockaddr(ctx, ptr, length)
    if judged and raw != judged:
        return ELSEWHERE
    return raw


def read_sockaddr(ctx, ptr: int, length: int):
    length &= 0xFFFFFFFF
    if length < 2 or length > MAX_SOCKADDR:
        return errno.EINVAL
    try:
        raw = memory.read(ctx.pid, ptr, length)
    except OSError:
        return errno.EFAULT
    if len(raw) != length:
        return errno.EFAULT
    if not ctx._valid(ctx.id):
        return errno.EPERM
    return raw


def parse_inet(raw: bytes):
    """(family, address, port, sockaddr tuple for Python) of an AF_INET or
    AF_INET6 sockaddr; IPv4-mapped IPv6 is reported as IPv4 for matching."""
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 16:  # the kernel wants a whole sockaddr_in
        port = struct.unpack_from("!H", raw, 2)[0]
        addr4 = ipaddress.IPv4Address(raw[4:8])
        return family, addr4, port, (str(addr4), port)
    if family == socket.AF_INET6 and len(raw) >= 24:
        port, flow = struct.unpack_from("!HI", raw, 2)
        addr6 = ipaddress.IPv6Address(raw[8:24])
        scope = struct.unpack_from("=I", raw, 24)[0] if len(raw) >= 28 else 0
        match = addr6.ipv4_mapped or addr6
        return family, match, port, (str(addr6), port, flow, scope)
    return None


def _hostport(address, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _refused_address(net, proto: str, address, port: int) -> Refused:
    """A connect or send to address:port refused by the network rules."""
    target = _hostport(address, port)
    if net.deny:
        return Refused(errno.EACCES, "network", target, reason="matches net_deny")
    rule = target if proto == "tcp" else f"{proto}://{target}"
    return Refused(errno.EACCES, "network", target, "", "net_allow", rule)


def _unspecified_target(sock: socket.socket, address):
    """Where the kernel routes a connect or send to 0.0.0.0 / :: from `sock`."""
    try:
        local = ipaddress.ip_address(sock.getsockname()[0].split("%")[0])
    except (OSError, ValueError):
        local = None
    if local is not None:
        local = getattr(local, "ipv4_mapped", None) or local
        if not local.is_unspecified:
            return local
    return ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")


class _Kept:
    """Our copy of a socket the sandbox bound to an abstract name, and
    where the sandbox held it then (thread, process, fd number)."""
    __slots__ = ("fd", "ident", "tid", "tgid", "child_fd")

    def __init__(self, fd: int, tid: int, tgid: int, child_fd: int):
        st = os.fstat(fd)
        self.fd, self.ident = fd, (st.st_dev, st.st_ino)
        self.tid, self.tgid, self.child_fd = tid, tgid, child_fd

    def still_held(self) -> bool:
        """Does the thread or process that bound it still have this socket
        at that fd? (A hint only: a dup or a fork may hold it elsewhere.)"""
        for task in dict.fromkeys((self.tid, self.tgid)):
            try:
                fd = pidfd.getfd_of_task(task, self.child_fd, processes.tgid)
            except (OSError, ProcessLookupError):
                continue
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
            if (st.st_dev, st.st_ino) == self.ident:
                return True
        return False


class AbstractNames:
    """Abstract unix names the sandbox bound (exact bytes, leading NUL
    included) → our copy of the socket bound to each. Our copies' fds are
    also listed in `fds` (the run's cleanup list when the caller passes
    one), so whoever ends the run closes them; `close()` does it here."""

    def __init__(self, fds: list | None = None, limit: int | None = None):
        self.names: dict[bytes, _Kept] = {}
        self.fds = fds if fds is not None else []
        if limit is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            limit = MAX_ABSTRACT_NAMES if soft == resource.RLIM_INFINITY else soft // 2
        self.limit = max(0, min(MAX_ABSTRACT_NAMES, limit))

    def __contains__(self, name: bytes) -> bool:
        return name in self.names

    def __len__(self) -> int:
        return len(self.names)

    def bind(self, ctx, sock: socket.socket, name: bytes):
        """Bind `sock` (our copy of the child's socket) to abstract `name`
        (b"" for autobind) and keep the name; a verdict."""
        if name not in self.names and len(self.names) >= self.limit:
            self._sweep()
            if len(self.names) >= self.limit:
                return errno.ENOBUFS
        err = _bind_here(sock, name)
        if err == errno.EADDRINUSE and name in self.names and not self.names[name].still_held():
            self.forget(name)  # our copy alone may have held it: let go, try once more
            err = _bind_here(sock, name)
        if err:
            return err
        self.keep(ctx, sock)  # (bound either way: if it cannot be kept, it is unreachable)
        return NotifAction.returns(0)

    def keep(self, ctx, sock: socket.socket) -> bool:
        """Keep the abstract name `sock` is bound to (with a dup of `sock`)
        if there is room; False for other names, or when it cannot be kept."""
        try:
            name = sock.getsockname()
        except OSError:
            return False
        if not isinstance(name, bytes) or not name.startswith(b"\0") or name in self.names \
                or len(self.names) >= self.limit:
            return False
        try:
            fd = os.dup(sock.fileno())
        except OSError:
            return False
        try:
            kept = _Kept(fd, ctx.pid, _tgid_or(ctx.pid), ctx.args[0] & 0xFFFFFFFF)
        except OSError:
            os.close(fd)
            return False
        self.fds.append(fd)
        self.names[name] = kept
        return True

    def forget(self, name: bytes) -> None:
        kept = self.names.pop(name)
        self._drop_fd(kept.fd)

    def _sweep(self) -> None:
        """Let go of the oldest names whose binder no longer holds them;
        the others move to the end. At most SWEEP names per call."""
        for name in list(itertools.islice(self.names, SWEEP)):
            kept = self.names.pop(name)
            if kept.still_held():
                self.names[name] = kept
            else:
                self._drop_fd(kept.fd)

    def _drop_fd(self, fd: int) -> None:
        try:
            self.fds.remove(fd)
        except ValueError:
            return  # not listed: not ours to close
        os.close(fd)

    def close(self) -> None:
        """Let every name go (the end of the run)."""
        for kept in self.names.values():
            self._drop_fd(kept.fd)
        self.names.clear()


def _tgid_or(tid: int) -> int:
    try:
        return processes.tgid(tid)
    except (OSError, ProcessLookupError):
        return tid


def _bind_here(sock: socket.socket, name: bytes) -> int:
    """bind() our copy to a unix address; 0 or an errno."""
    try:
        sock.bind(name)
    except OSError as e:
        return e.errno or errno.EINVAL
    return 0


def _unix_unbound(sock: socket.socket) -> bool:
    try:
        return sock.getsockname() in ("", b"")
    except OSError:
        return False


def _writable_now(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(0))


class Network:
    """The network handlers of one run. `restriction` is the run's
    SelfRestriction (shared with the other handlers that act on the
    child's behalf); `kept` is the run's cleanup list of fds, where the
    sockets kept for abstract names are listed while held (or call
    `close()` at the end of the run instead)."""

    def __init__(self, root: int, net, fs, nrs: dict[str, int], report,
                 restriction: SelfRestriction | None = None, kept: list | None = None):
        self.root = root
        self.restriction = restriction if restriction is not None else SelfRestriction()
        self.abstract = AbstractNames(kept)
        self.net = net                      # netplan.NetPlan
        self.fs = fs                        # fsview.FsView: the one filesystem truth
        self.nrs = nrs
        self.report = report                # report(virtual, real): a port mapping, to the caller
        self.remap: dict[int, int] = {}     # virtual port -> real port
        self.cleanup = kept                 # the run's cleanup list (the HTTP proxy joins it)
        self.proxy = None                   # httpproxy.Proxy, made at the first HTTP connect
        self.live: Any = None               # policy_fn's narrowing (policygate.LiveNetwork)
        if kept is not None and net.http is not None and net.http.ca is not None:
            self._http_proxy().warm()       # HTTPS interception: made now, prepared meanwhile
        try:
            with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
                self.unprivileged_start = int(f.read())
        except (OSError, ValueError):
            self.unprivileged_start = 1024

    def close(self) -> None:
        """Release what the run kept (the sockets holding abstract names).
        Only when no `kept` list was given: whoever closes that list's fds
        must not have this close them again."""
        self.abstract.close()
        if self.proxy is not None and self.cleanup is None:
            self.proxy.close()

    def _http_proxy(self):
        """The run's HTTP ACL proxy (supervisor/httpproxy.py), made when
        first needed: a run that makes no HTTP connect starts no thread."""
        if self.proxy is None:
            from .httpproxy import Proxy
            allow = self.net.allow
            self.proxy = Proxy(self.net.http, getattr(allow, "hosts", None))
            if self.cleanup is not None:
                self.cleanup.append(self.proxy)
        return self.proxy

    # -- connect ---------------------------------------------------------------

    def on_connect(self, ctx):
        sock = _take_socket(ctx, ctx.args[0])
        if isinstance(sock, int):
            return sock
        keep = False
        try:
            if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
                return None  # the kernel parses the address as this socket's family
            if sock.family != socket.AF_UNIX and sock.proto == socket.IPPROTO_TCP \
                    and self.net.tcp_by_landlock:
                if self.net.connect_ports == []:  # no TCP port at all: said here, as Landlock would
                    return self._no_tcp(ctx, sock)
                return None  # port-only rules: the child's Landlock ruleset decides
            if self.restriction.active:
                return self.restriction.ERRNO  # its own ruleset may forbid it: we cannot tell
            raw = _read_addr(ctx, ctx.args[1], ctx.args[2])
            if isinstance(raw, int):
                return raw
            if sock.family == socket.AF_UNIX:
                target = self._unix_target(ctx, raw)
                if isinstance(target, int):
                    return target
                unbound = _unix_unbound(sock)
                verdict = self._connect(sock, target[0])
                if target[1] is not None:
                    os.close(target[1])
                if unbound:
                    self.abstract.keep(ctx, sock)  # SO_PASSCRED autobinds it
            else:
                target = self._inet_target(sock, raw, ctx.pid)
                if isinstance(target, int):
                    return target
                if _PROTO.get(sock.proto) == "tcp" and self.net.http_port("tcp", parse_inet(raw)[2]):
                    verdict = self._http_proxy().attach(sock, target, self._connect)
                else:
                    verdict = self._connect(sock, target)
            keep = isinstance(verdict, Deferred)
            return verdict
        finally:
            if not keep:
                sock.close()

    def _no_tcp(self, ctx, sock):
        """A TCP connect when no TCP port is allowed: Landlock's EACCES,
        described. None (the kernel answers) where Landlock would not
        refuse: AF_UNSPEC, a short or foreign address."""
        raw = _read_addr(ctx, ctx.args[1], ctx.args[2])
        parsed = None if isinstance(raw, int) else parse_inet(raw)
        if parsed is None or not (parsed[0] == sock.family
                                  or (sock.family == socket.AF_INET6 and parsed[0] == socket.AF_INET)):
            return None
        return _refused_address(self.net, "tcp", parsed[1], parsed[2])

    def _inet_target(self, sock, raw: bytes, tid: int):
        """The (possibly remapped) Python address to use, or an errno.
        (AF_UNSPEC, which would dissolve a UDP association, is refused.)"""
        family = struct.unpack_from("=H", raw)[0]
        parsed = parse_inet(raw)
        if parsed is None:
            return errno.EINVAL if family in (socket.AF_INET, socket.AF_INET6) else errno.EAFNOSUPPORT
        if parsed[0] != sock.family and not (sock.family == socket.AF_INET6 and parsed[0] == socket.AF_INET):
            return errno.EINVAL
        _fam, address, port, pyaddr = parsed
        if address.is_unspecified:
            # Linux sends this to the socket's own address, or to loopback:
            # decide on (and go to) that address, not on 0.0.0.0 / ::.
            address = _unspecified_target(sock, address)
            pyaddr = (str(address), port) + tuple(pyaddr[2:])
            if sock.family == socket.AF_INET6 and address.version == 4:
                pyaddr = (f"::ffff:{address}", port) + tuple(pyaddr[2:])
        proto = _PROTO.get(sock.proto, "")
        if proto not in ("tcp", "udp", "icmp"):
            return errno.EACCES
        if (proto == "tcp" and not self.net.tcp_port_open(port)) \
                or not self.net.permits(proto, address, port) \
                or (self.live is not None and not self.live.permits(_tgid_or(tid), address)):
            # (a TCP port outside the child's own Landlock ruleset: refused too)
            return _refused_address(self.net, proto, address, port)
        if proto == "udp" and self.net.http_port(proto, port):
            return Refused(errno.EACCES, "network", _hostport(address, port),
                           reason="UDP to an HTTP port would bypass the HTTP rules")  # QUIC / HTTP/3
        if self.net.port_remap and address.is_loopback and port in self.remap:
            pyaddr = (pyaddr[0], self.remap[port]) + tuple(pyaddr[2:])
        return pyaddr

    def _connect(self, sock: socket.socket, address):
        """connect() here without ever blocking the supervisor."""
        fd = sock.fileno()
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if flags & os.O_NONBLOCK:
            err = sock.connect_ex(address)
            return err or NotifAction.returns(0)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        err = sock.connect_ex(address)
        if err == errno.EINPROGRESS and _writable_now(fd):
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # done already (loopback)
        if err != errno.EINPROGRESS:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            return err or NotifAction.returns(0)

        def resume():
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            return err or NotifAction.returns(0)

        def cleanup():
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            except OSError:
                pass
            sock.close()

        return Deferred(fd, resume, cleanup)

    # -- unix sockets ------------------------------------------------------------

    def _unix_target(self, ctx, raw: bytes):
        """(address to connect or send to, fd to close after) or an errno.
        Named sockets: only under writable paths, reached through an O_PATH
        fd so a symlink swapped in later cannot redirect us. Abstract: only
        names the sandbox bound (kept in `self.abstract`)."""
        if struct.unpack_from("=H", raw)[0] != socket.AF_UNIX:
            return errno.EINVAL
        path = raw[2:]
        if not path:
            return errno.EINVAL
        if path[0] == 0:
            if path not in self.abstract:  # length-delimited, leading NUL: exact bytes
                # as Landlock's abstract-socket scoping answers
                return Refused(errno.EPERM, "network", "@" + os.fsdecode(path[1:]),
                               reason="an abstract socket not bound in the sandbox")
            return (path, None)
        path = path.split(b"\0", 1)[0]
        if not path.startswith(b"/"):
            path = b"/proc/%d/cwd/" % processes.tgid(ctx.pid) + path
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError as e:
            return e.errno or errno.ENOENT
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise OSError(errno.ECONNREFUSED, "not a socket")
            if not self.fs.may_write(real):
                os.close(fd)
                return Refused(errno.EACCES, "file", real, "", "fs_writable", real)
        except OSError as e:
            os.close(fd)
            return e.errno or errno.EACCES
        return (f"/proc/self/fd/{fd}", fd)

    # -- addressed sends ----------------------------------------------------------

    @staticmethod
    def _datagram_socket(ctx):
        """The child's socket when a send on it must be decided here; else
        the verdict: None (CONTINUE: other families, and stream sockets whose
        sends ignore any address) or an errno."""
        sock = _take_socket(ctx, ctx.args[0])
        if isinstance(sock, int):
            return sock
        if sock.family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX) \
                and sock.type != SOCK_STREAM:
            return sock
        sock.close()
        return None

    def on_sendto(self, ctx):
        """sendto with a destination (the filter lets NULL ones through)."""
        sock = self._datagram_socket(ctx)
        if not isinstance(sock, socket.socket):
            return sock
        try:
            raw = _read_addr(ctx, ctx.args[4], ctx.args[5])
            if isinstance(raw, int):
                return raw
            length = ctx.args[2]
            if length > MAX_DGRAM:
                return errno.EMSGSIZE
            try:
                data = memory.read(ctx.pid, ctx.args[1], length) if length else b""
            except OSError:
                return errno.EFAULT
            if len(data) != length or not ctx._valid(ctx.id):
                return errno.EFAULT
            return self._send(ctx, sock, [data], [], raw, ctx.args[3])
        finally:
            sock.close()

    def on_sendmsg(self, ctx):
        sock = self._datagram_socket(ctx)
        if not isinstance(sock, socket.socket):
            return sock
        try:
            msg = self._read_msghdr(ctx, ctx.args[1])
            if isinstance(msg, int):
                return msg
            return self._send(ctx, sock, *msg, ctx.args[2])
        finally:
            sock.close()

    def on_sendmmsg(self, ctx):
        sock = self._datagram_socket(ctx)
        if not isinstance(sock, socket.socket):
            return sock
        try:
            vec, vlen = ctx.args[1], min(ctx.args[2], MAX_MMSG)
            sent = 0
            for i in range(vlen):
                msg = self._read_msghdr(ctx, vec + 64 * i, first=i == 0)
                if msg == ELSEWHERE:
                    return NotifAction.returns(sent)  # the rest: judged in another call
                if isinstance(msg, int):
                    return msg if sent == 0 else NotifAction.returns(sent)
                verdict = self._send(ctx, sock, *msg, ctx.args[3])
                if not isinstance(verdict, NotifAction):
                    return verdict if sent == 0 else NotifAction.returns(sent)
                if not ctx.write(vec + 64 * i + 56, struct.pack("=I", verdict.return_value)):
                    return errno.EFAULT if sent == 0 else NotifAction.returns(sent)
                sent += 1
            return NotifAction.returns(sent)
        finally:
            sock.close()

    def _read_msghdr(self, ctx, ptr: int, first: bool = True):
        """(iov data, ancillary data, raw sockaddr or None) or an errno."""
        try:
            hdr = memory.read(ctx.pid, ptr, 56)
            if len(hdr) != 56:
                return errno.EFAULT
            name, namelen, iov, iovlen, control, controllen, _flags = struct.unpack("=QI4xQQQQi4x", hdr)
            if iovlen > MAX_IOV:
                return errno.EMSGSIZE
            raw = None
            if name and namelen:
                raw = _read_addr(ctx, name, namelen, first)
                if isinstance(raw, int):
                    return raw
            chunks, total = [], 0
            iovs = memory.read(ctx.pid, iov, 16 * iovlen) if iovlen else b""
            for i in range(iovlen):
                base, length = struct.unpack_from("=QQ", iovs, 16 * i)
                total += length
                if total > MAX_DGRAM:
                    return errno.EMSGSIZE
                chunks.append(memory.read(ctx.pid, base, length) if length else b"")
                if len(chunks[-1]) != length:
                    return errno.EFAULT
            anc = []
            if control and controllen:
                anc = self._ancillary(ctx, memory.read(ctx.pid, control, min(controllen, 1 << 16)))
                if isinstance(anc, int):
                    return anc
        except OSError:
            return errno.EFAULT
        if not ctx._valid(ctx.id):
            for *_x, owned in anc:
                for fd in owned:
                    os.close(fd)
            return errno.EPERM
        return chunks, anc, raw

    def _ancillary(self, ctx, raw: bytes):
        """Control messages for an on-behalf send: fds (SCM_RIGHTS) are taken
        from the child; of the rest only harmless per-packet settings pass
        (source routes and the like would steer the packet past the rules;
        credentials cannot be vouched for)."""
        out, taken, off = [], [], 0
        try:
            while off + 16 <= len(raw):
                length, level, kind = struct.unpack_from("=Qii", raw, off)
                if length < 16 or off + length > len(raw):
                    raise _Refused(errno.EINVAL)
                data = raw[off + 16:off + length]
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = []
                    for (child_fd,) in struct.iter_unpack("=i", data[:len(data) // 4 * 4]):
                        try:
                            fd = pidfd.getfd_of_task(ctx.pid, child_fd, processes.tgid)
                        except (OSError, ProcessLookupError):
                            raise _Refused(errno.EBADF) from None
                        fds.append(fd)
                        taken.append(fd)
                    out.append((level, kind, struct.pack(f"={len(fds)}i", *fds), fds))
                elif (level, kind) in SAFE_CMSGS:
                    out.append((level, kind, data, []))
                else:
                    raise _Refused(errno.EPERM)
                off += (length + 7) & ~7
        except _Refused as e:
            for fd in taken:
                os.close(fd)
            return e.errno
        return out

    def _send(self, ctx, sock, chunks, anc, raw, flags):
        """Check the destination, then send here; returns a verdict."""
        fds = [fd for *_x, owned in anc for fd in owned]
        try:
            address = None
            if raw is not None and self.restriction.active:
                return self.restriction.ERRNO  # its own ruleset may forbid it: we cannot tell
            if raw is not None:
                if sock.family == socket.AF_UNIX:
                    target = self._unix_target(ctx, raw)
                    if isinstance(target, int):
                        return target
                    address, extra = target
                    if extra is not None:
                        fds.append(extra)
                else:
                    address = self._inet_target(sock, raw, ctx.pid)
                    if isinstance(address, int):
                        return address
            elif sock.family != socket.AF_UNIX:
                # No address: the socket's connected peer, vetted at connect.
                try:
                    sock.getpeername()
                except OSError:
                    return errno.EDESTADDRREQ
            ancdata = [(lvl, kind, data) for lvl, kind, data, _o in anc]
            flags = (flags | socket.MSG_DONTWAIT) & 0xFFFFFFFF
            unbound = sock.family == socket.AF_UNIX and _unix_unbound(sock)
            try:
                n = sock.sendmsg(chunks, ancdata, flags, address) if address is not None \
                    else sock.sendmsg(chunks, ancdata, flags)
            except BlockingIOError:
                return errno.EAGAIN
            except OSError as e:
                return e.errno or errno.EIO
            finally:
                if unbound:
                    self.abstract.keep(ctx, sock)  # SO_PASSCRED autobinds it
            return NotifAction.returns(n)
        finally:
            for fd in fds:
                os.close(fd)

    # -- bind and names -------------------------------------------------------------

    def on_bind(self, ctx):
        sock = _take_socket(ctx, ctx.args[0])
        if isinstance(sock, int):
            return sock
        try:
            if sock.family == socket.AF_UNIX:
                return self._bind_unix(ctx, sock)
            if sock.family not in (socket.AF_INET, socket.AF_INET6) \
                    or (self.net.deny_bind.is_empty and not self.net.port_remap):
                return None  # the kernel decides (TCP ports: the child's Landlock ruleset)
            if self.restriction.active:
                return self.restriction.ERRNO  # its own ruleset may forbid it: we cannot tell
            raw = _read_addr(ctx, ctx.args[1], ctx.args[2])
            if isinstance(raw, int):
                return raw
            parsed = parse_inet(raw)
            if parsed is None:
                return errno.EAFNOSUPPORT
            _f, _address, port, pyaddr = parsed
            proto = _PROTO.get(sock.proto, "")
            if port in self.net.deny_bind:
                return Refused(errno.EACCES, "network", f"port {port}", reason="listed in net_deny_bind")
            if proto == "tcp" and not self.net.allow_bind.any and port not in self.net.allow_bind:
                # what the child's Landlock ruleset would say
                return Refused(errno.EACCES, "network", f"port {port}", "", "net_allow_bind", str(port))
            if 0 < port < self.unprivileged_start:
                return Refused(errno.EACCES, "network", f"port {port}",  # no CAP_NET_BIND_SERVICE
                               reason="a privileged port")
            try:
                sock.bind(pyaddr)
                return NotifAction.returns(0)
            except OSError as e:
                if e.errno != errno.EADDRINUSE or not self.net.port_remap or port == 0:
                    return e.errno or errno.EINVAL
            # port_remap: the sandbox's own port space; take a free real port.
            try:
                sock.bind((pyaddr[0], 0) + tuple(pyaddr[2:]))
            except OSError as e:
                return e.errno or errno.EADDRINUSE
            real = sock.getsockname()[1]
            self.remap[port] = real
            self.report(port, real)
            return NotifAction.returns(0)
        finally:
            sock.close()

    def _bind_unix(self, ctx, sock: socket.socket):
        """Abstract names (and autobind) are bound here and kept (see the
        module docstring); paths are left to the kernel, where Landlock's
        MAKE_SOCK right decides. A thread rewriting the address meanwhile
        gains nothing: a path turned abstract after we read it is bound by
        the kernel but not kept, so the sandbox cannot connect to it."""
        if self.restriction.active:
            return None  # no right of ours is needed: the kernel binds it (not kept)
        raw = _read_addr(ctx, ctx.args[1], ctx.args[2])
        if isinstance(raw, int):
            return raw
        if len(raw) > SUN_LEN or struct.unpack_from("=H", raw)[0] != socket.AF_UNIX:
            return errno.EINVAL
        name = raw[2:]
        if name and name[0] != 0:
            return None  # a path
        return self.abstract.bind(ctx, sock, name)

    def on_listen(self, ctx):
        """listen() on a TCP socket that was never bound takes an ephemeral
        port without any bind(), where Landlock's bind rules are checked:
        refuse it unless binding port 0 is allowed."""
        sock = _take_socket(ctx, ctx.args[0])
        if isinstance(sock, int):
            return sock
        try:
            if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.proto != socket.IPPROTO_TCP:
                return None
            if sock.getsockname()[1] == 0 and not (self.net.allow_bind.any or 0 in self.net.allow_bind):
                return Refused(errno.EACCES, "network", "port 0", "listen", "net_allow_bind", "0")
            return None  # bound: its port passed the bind checks; a bound socket stays bound
        finally:
            sock.close()

    def on_getsockname(self, ctx):
        """With port_remap, report the virtual port of a remapped socket."""
        if not self.remap:
            return None
        sock = _take_socket(ctx, ctx.args[0])
        if isinstance(sock, int):
            return sock
        try:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            virtual = {real: virt for virt, real in self.remap.items()}
            raw = socket_name(sock)
            port = struct.unpack_from("!H", raw, 2)[0]
            if port not in virtual:
                return None
            raw = raw[:2] + struct.pack("!H", virtual[port]) + raw[4:]
            lenbuf = ctx.read(ctx.args[2], 4)
            if lenbuf is None or len(lenbuf) != 4:
                return errno.EFAULT
            room = struct.unpack("=I", lenbuf)[0]
            if not (ctx.write(ctx.args[1], raw[:room])
                    and ctx.write(ctx.args[2], struct.pack("=I", len(raw)))):
                return errno.EFAULT
            return NotifAction.returns(0)
        finally:
            sock.close()


def socket_name(sock: socket.socket) -> bytes:
    """The raw sockaddr of a bound INET socket."""
    name = sock.getsockname()
    if sock.family == socket.AF_INET:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", name[1]) + \
            socket.inet_aton(name[0]) + b"\0" * 8
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", name[1], name[2]) + \
        socket.inet_pton(socket.AF_INET6, name[0]) + struct.pack("=I", name[3])
