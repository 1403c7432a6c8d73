"""`sandlock learn`'s observer: what a command touches, recorded, never decided.

Every path syscall and every connect, addressed send and bind of the
learning run is routed here first (routing feature "learn", ahead of the
copy-on-write handlers) and recorded as (kind, target):

    read / write / exec   a path opened (or executed) that way
    list                  a directory whose entries were read (getdents)
    create / remove       an entry made or removed (its parent must be writable)
    connect / send        "tcp://ip:port" / "udp://ip:port" / "icmp://ip" (a UDP connect is
                          "udp-connect": glibc's address-selection probes
                          connect without sending, see learn.py)
    bind                  a TCP port

Each handler returns None (no objection): the learning run is observed,
not confined by this module, and the rest of the chain (the
copy-on-write layer, the network rules) answers as usual. Reading the
path from the child's memory and resolving it here is racy (the child
could change it before the kernel reads it, T2); that is acceptable for
observation only: a learned profile is advisory, and the run under it is
the one that enforces. Stat-like probes (stat, access, readlink, getxattr)
are not recorded: Landlock does not gate them, so they need no grant.

The records are bounded (MAX_RECORDS distinct ones, MAX_BYTES of targets);
past that they are counted (`more`), and a call that could not be
observed is counted too (`missed`): learn.py then says the profile may be
incomplete.
"""
from __future__ import annotations

import os
import socket
import struct

from .._kernel import memory
from . import processes
from .answers import c_int, caller_proc_path, u32
from .network import SOCK_STREAM, _read_addr, _take_socket, parse_inet

MAX_RECORDS = 20000
# The records ride in one Finished frame (protocol.MAX_PAYLOAD, 1 MiB) with
# the denials: at most this many bytes, counting each record's encoding.
MAX_BYTES = 768 << 10
RECORD_OVERHEAD = 16   # marshal's tuple and string headers, rounded up
MAX_PATH = 4096
AT_FDCWD = -100
O_WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

# name → what each path argument means: (kind, dirfd argument index or None
# (relative to the cwd), path argument index); ("fd", index) for calls on
# an open file. "open" kinds are decided from the flags.
_PATHS: dict[str, tuple[tuple, ...]] = {
    "open": (("open", None, 0),), "creat": (("write", None, 0),), "openat": (("open", 0, 1),),
    "execve": (("exec", None, 0),), "execveat": (("exec", 0, 1),),
    "getdents64": (("list", "fd", 0),), "getdents": (("list", "fd", 0),),
    "mkdir": (("create", None, 0),), "mkdirat": (("create", 0, 1),),
    "mknod": (("create", None, 0),), "mknodat": (("create", 0, 1),),
    "unlink": (("remove", None, 0),), "rmdir": (("remove", None, 0),),
    "unlinkat": (("remove", 0, 1),),
    "rename": (("remove", None, 0), ("create", None, 1)),
    "renameat": (("remove", 0, 1), ("create", 2, 3)),
    "renameat2": (("remove", 0, 1), ("create", 2, 3)),
    "symlink": (("create", None, 1),), "symlinkat": (("create", 1, 2),),
    "link": (("read", None, 0), ("create", None, 1)),
    "linkat": (("read", 0, 1), ("create", 2, 3)),
    "truncate": (("write", None, 0),),
    # attributes (the supervisor lets them through only on writable paths)
    "chmod": (("write", None, 0),), "fchmodat": (("write", 0, 1),),
    "fchmodat2": (("write", 0, 1),), "chown": (("write", None, 0),),
    "lchown": (("write", None, 0),), "fchownat": (("write", 0, 1),),
    "utime": (("write", None, 0),), "utimes": (("write", None, 0),),
    "futimesat": (("write", 0, 1),), "utimensat": (("write", 0, 1),),
    "setxattr": (("write", None, 0),), "lsetxattr": (("write", None, 0),),
    "setxattrat": (("write", 0, 1),), "removexattr": (("write", None, 0),),
    "lremovexattr": (("write", None, 0),), "removexattrat": (("write", 0, 1),),
    "fchmod": (("write", "fd", 0),), "fchown": (("write", "fd", 0),),
    "fsetxattr": (("write", "fd", 0),), "fremovexattr": (("write", "fd", 0),),
    # probes: Landlock does not gate them (handled so that the feature's
    # routing table stays one list with the copy-on-write one)
    "stat": (), "lstat": (), "newfstatat": (), "statx": (), "access": (), "faccessat": (),
    "faccessat2": (), "readlink": (), "readlinkat": (), "getxattr": (), "lgetxattr": (),
    "listxattr": (), "llistxattr": (), "chdir": (), "fchdir": (), "getcwd": (),
}
NETWORK = ("connect", "sendto", "sendmsg", "sendmmsg", "bind")
SYSCALLS = tuple(_PATHS) + NETWORK


class Learner:
    def __init__(self, nrs: dict[str, int], branch=None):
        self.nrs = nrs
        self.branch = branch  # the copy-on-write layer: its storage paths name workdir paths
        self.records: dict[tuple[str, str], None] = {}
        self.size = 0
        self.more = 0
        self.missed = 0

    def handlers(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for name in SYSCALLS:
            if name not in self.nrs:
                continue
            if name in NETWORK:
                out[name] = self._observing(getattr(self, f"on_{name}"))
            else:
                out[name] = self._observing(self._path_handler(name, _PATHS[name]))
        return out

    def close(self) -> None:
        """Nothing to release (it sits in the run's cleanup list so that the
        run's end can find it and export its records)."""

    def export(self) -> tuple[list[tuple[str, str]], int, int]:
        """(records, how many were past the bound, calls not observed)."""
        return list(self.records), self.more, self.missed

    def _observing(self, fn):
        def run(ctx):
            try:
                fn(ctx)
            except Exception:  # noqa: BLE001 - observation never decides a call
                self.missed += 1
            return None
        run.__name__ = getattr(fn, "__name__", "learn")
        return run

    def _note(self, kind: str, target: str) -> None:
        key = (kind, target)
        if key in self.records:
            return
        size = len(target.encode("utf-8", "surrogateescape")) + len(kind) + RECORD_OVERHEAD
        if len(self.records) >= MAX_RECORDS or self.size + size > MAX_BYTES:
            self.more += 1
            return
        self.records[key] = None
        self.size += size

    # -- paths ---------------------------------------------------------------

    def _path_handler(self, name: str, spec: tuple):
        def on_path(ctx):
            for kind, dirfd_arg, path_arg in spec:
                if dirfd_arg == "fd":
                    path = self._fd_path(ctx.pid, c_int(ctx.args[path_arg]))
                else:
                    dirfd = AT_FDCWD if dirfd_arg is None else c_int(ctx.args[dirfd_arg])
                    path = self._resolve(ctx, dirfd, ctx.args[path_arg], name)
                if path is None:
                    continue
                if kind == "open":
                    flags = u32(ctx.args[1 if name == "open" else 2])
                    if flags & os.O_PATH:
                        continue  # no access right is needed for an O_PATH fd
                    kind = "write" if flags & O_WRITES else "read"
                self._note(kind, path)
        on_path.__name__ = f"learn_{name}"
        return on_path

    def _resolve(self, ctx, dirfd: int, ptr: int, name: str) -> str | None:
        if not ptr:
            return self._fd_path(ctx.pid, dirfd) if name == "utimensat" else None
        raw = memory.read_cstr(ctx.pid, ptr, MAX_PATH)
        if not raw:
            return self._fd_path(ctx.pid, dirfd) if dirfd != AT_FDCWD else None  # AT_EMPTY_PATH
        if raw.startswith(b"/"):
            path = raw
        else:
            base = self._base(ctx, dirfd)
            if base is None:
                return None
            path = base + b"/" + raw
        if b"proc" in path:
            path = caller_proc_path(path, processes.tgid(ctx.pid), ctx.pid)
        return os.fsdecode(os.path.normpath(path))

    def _base(self, ctx, dirfd: int) -> bytes | None:
        if self.branch is not None:
            base, _mapped = self.branch._base(ctx, dirfd)  # the virtual cwd, storage mapped back
            return base
        link = f"/proc/{ctx.pid}/cwd" if dirfd == AT_FDCWD else f"/proc/{ctx.pid}/fd/{dirfd}"
        try:
            return os.readlink(os.fsencode(link))
        except OSError:
            return None

    def _fd_path(self, pid: int, fd: int) -> str | None:
        if fd < 0:
            return None
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}".encode())
        except OSError:
            return None
        if self.branch is not None:
            target, _mapped = self.branch._unstore(target)
        if not target or not target.startswith(b"/") or target.endswith(b" (deleted)"):
            return None  # a pipe, a socket, an anonymous file
        return os.fsdecode(target)

    # -- network -------------------------------------------------------------

    def _peer(self, ctx, fd_arg: int, raw: bytes | None, what: str) -> None:
        if raw is None:
            return
        sock = _take_socket(ctx, fd_arg)
        if isinstance(sock, int):
            return
        try:
            parsed = parse_inet(raw)
            if sock.family not in (socket.AF_INET, socket.AF_INET6) or parsed is None:
                return
            _family, address, port, _py = parsed
            host = f"[{address}]" if address.version == 6 else str(address)
            if sock.type == SOCK_STREAM:
                if what == "connect":
                    self._note("connect", f"tcp://{host}:{port}")
            elif sock.proto == socket.IPPROTO_UDP:
                self._note("udp-connect" if what == "connect" else "send", f"udp://{host}:{port}")
            elif sock.proto in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6):
                self._note("send", f"icmp://{host}")  # ping sockets: no port
        finally:
            sock.close()

    def _addr(self, ctx, ptr: int, length: int) -> bytes | None:
        if not ptr:
            return None
        raw = _read_addr(ctx, ptr, length)
        return None if isinstance(raw, int) else raw

    def on_connect(self, ctx):
        self._peer(ctx, ctx.args[0], self._addr(ctx, ctx.args[1], ctx.args[2]), "connect")

    def on_sendto(self, ctx):
        self._peer(ctx, ctx.args[0], self._addr(ctx, ctx.args[4], ctx.args[5]), "send")

    def _msg_name(self, ctx, ptr: int) -> bytes | None:
        hdr = memory.read(ctx.pid, ptr, 16)
        if len(hdr) != 16:
            return None
        name, namelen = struct.unpack("=QI4x", hdr)
        return self._addr(ctx, name, namelen)

    def on_sendmsg(self, ctx):
        self._peer(ctx, ctx.args[0], self._msg_name(ctx, ctx.args[1]), "send")

    def on_sendmmsg(self, ctx):
        if ctx.args[2]:
            self._peer(ctx, ctx.args[0], self._msg_name(ctx, ctx.args[1]), "send")

    def on_bind(self, ctx):
        raw = self._addr(ctx, ctx.args[1], ctx.args[2])
        if raw is None:
            return
        parsed = parse_inet(raw)
        if parsed is None or not parsed[2]:
            return  # not an IP address, or port 0 (any free port: needs no grant)
        sock = _take_socket(ctx, ctx.args[0])
        if isinstance(sock, int):
            return
        try:
            if sock.type == SOCK_STREAM:
                self._note("bind", str(parsed[2]))
        finally:
            sock.close()

