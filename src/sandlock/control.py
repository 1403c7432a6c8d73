"""Running sandboxes, seen and stopped from outside: `ps`, `inspect`, `kill`.

Each running sandbox has a control socket, served by its supervisor (never
by anything inside the sandbox), in a private runtime directory:

- `$XDG_RUNTIME_DIR/sandlock` when XDG_RUNTIME_DIR is an absolute path to a
  real directory (not a symlink) owned by this user that no one else may
  write to;
- else `/tmp/sandlock-<uid>`.

The directory is made with one non-recursive mkdir (mode 0700), then
opened with O_NOFOLLOW and checked on the open fd: a directory, owned by
this user, no group or other access. Anything else (a symlink, another
user's directory, a directory others may enter) is refused with an error
naming it, never trusted or repaired: another local user can pre-create a
name in /tmp. Every later path goes through that checked fd
(/proc/self/fd/N/...), so the directory cannot be swapped underneath us.

Entries are `<name>.<16 random hex digits>.sock`, AF_UNIX stream sockets of
mode 0600. The random part keeps the path unguessable from inside a
sandbox (which can never list the directory: see below).

Not reachable from inside a sandbox:

- the plan adds both candidate directories to the sandbox's denied paths
  (`private_dirs`): Landlock never grants them, whatever the policy grants
  around them, and the supervisor refuses a connect to a named socket that
  is not under a writable path;
- abstract sockets are not used;
- the supervisor refuses a request whose peer (SO_PEERCRED) is a process of
  its own sandbox, or of another user.

The wire format: a request or a reply is a 4-byte big-endian length then
that many bytes of UTF-8 JSON, an object. Request
`{"v": 1, "verb": "ps" | "inspect" | "kill", "args": {...}}`; reply
`{"v": 1, "ok": true, "data": ...}` or `{"v": 1, "ok": false, "error": "..."}`.
Requests are capped at MAX_REQUEST bytes, replies at MAX_REPLY. The
supervisor serves one client at a time, each within CLIENT_SECONDS.

`kill` asks the supervisor to signal its own tree (it knows every process
of the sandbox: it is their subreaper): no pid is ever read from a file.
"""
from __future__ import annotations

import errno
import itertools
import os
import signal
import socket
import stat
import struct
import time
from typing import Any

from .exceptions import PolicyError, SandboxError

__all__ = ["ps", "inspect", "kill", "runtime_dir", "check_name", "ControlError", "policy_toml"]

VERSION = 1
MAX_REQUEST = 64 << 10
MAX_REPLY = 4 << 20
CLIENT_SECONDS = 0.25      # the supervisor's patience with one client
REPLY_SECONDS = 5.0        # a client's patience with a supervisor
KILL_SECONDS = 15.0        # ... and with a SIGKILL'd tree to be gone
SUFFIX = ".sock"
_LEN = struct.Struct(">I")
_RAND_HEX = 16
MAX_NAME_BYTES = 64


class ControlError(SandboxError):
    """The runtime directory cannot be trusted, or a control request failed."""


# -- names ------------------------------------------------------------------------------

def check_name(name: Any) -> str:
    """`name` if it can name a running sandbox: 1 to 64 bytes of UTF-8, no
    '/', NUL or other control character, not '.' or '..'. PolicyError
    (naming the field `name`) otherwise."""
    if not isinstance(name, str):
        raise PolicyError(f"name: expected a str, got {type(name).__name__}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeError:
        raise PolicyError(f"name: {name!r} is not valid UTF-8 text") from None
    why = ""
    if not 1 <= size <= MAX_NAME_BYTES:
        why = f"must be 1 to {MAX_NAME_BYTES} bytes in UTF-8, not {size}"
    elif "/" in name:
        why = "must not contain '/'"
    elif name in (".", ".."):
        why = "must not be '.' or '..'"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "must not contain control characters"
    if why:
        raise PolicyError(f"name: {name!r} {why}")
    return name


_counter = itertools.count(1)


def default_name() -> str:
    """`sandbox-<pid of the caller>-<n>`, unique among this user's sandboxes."""
    return f"sandbox-{os.getpid()}-{next(_counter)}"


def _entry_name(filename: str) -> str | None:
    """The sandbox name of a directory entry, None if it is not one of ours."""
    if not filename.endswith(SUFFIX):
        return None
    stem, dot, rand = filename[:-len(SUFFIX)].rpartition(".")
    if not dot or not stem or len(rand) != _RAND_HEX or \
            any(c not in "0123456789abcdef" for c in rand):
        return None
    return stem


# -- the runtime directory -----------------------------------------------------------------

def _xdg_base() -> str | None:
    """XDG_RUNTIME_DIR if it is usable: absolute, a real directory owned by
    us, not writable by group or others."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.path.isabs(base):
        return None
    try:
        st = os.lstat(base)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return None
    return base


def fallback_dir() -> str:
    return f"/tmp/sandlock-{os.geteuid()}"


def runtime_dir() -> str:
    """The path of this user's runtime directory (it may not exist yet)."""
    base = _xdg_base()
    return os.path.join(base, "sandlock") if base is not None else fallback_dir()


def private_dirs() -> tuple[str, ...]:
    """Every place a control socket of this user may be: no sandbox may
    ever reach them (the plan denies them)."""
    out = [fallback_dir()]
    base = _xdg_base()
    if base is not None:
        out.insert(0, os.path.join(base, "sandlock"))
    return tuple(out)


def open_dir(path: str, create: bool) -> int | None:
    """An O_PATH fd of the checked runtime directory `path`; None if it does
    not exist and `create` is false. ControlError if it cannot be trusted."""
    made = False
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if not create:
            return None
        try:
            os.mkdir(path, 0o700)  # not recursive: the parent must exist
            made = True
        except FileExistsError:
            pass
        except OSError as e:
            raise ControlError(f"cannot create the runtime directory {path}: {e.strerror}") from None
        fd = _open_checked_again(path, flags)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ControlError(f"runtime directory {path} is not a directory (a symlink?): refusing "
                               "it; remove it, or set XDG_RUNTIME_DIR to a private directory") from None
        raise ControlError(f"cannot open the runtime directory {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if made and stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(f"/proc/self/fd/{fd}", 0o700)  # whatever the umask made of it
            st = os.fstat(fd)
        why = ""
        if not stat.S_ISDIR(st.st_mode):
            why = "is not a directory"
        elif st.st_uid != os.geteuid():
            why = f"is owned by uid {st.st_uid}, not by uid {os.geteuid()}"
        elif st.st_mode & 0o077:
            why = f"has mode {stat.S_IMODE(st.st_mode):04o} (others may use it; expected 0700)"
        if why:
            raise ControlError(f"runtime directory {path} {why}: refusing it; remove it, or set "
                               "XDG_RUNTIME_DIR to a private directory")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_checked_again(path: str, flags: int) -> int:
    try:
        return os.open(path, flags)
    except OSError as e:
        raise ControlError(f"runtime directory {path} cannot be opened as a directory "
                           f"({e.strerror}): refusing it") from None


def _entries(dfd: int) -> list[tuple[str, str]]:
    """(sandbox name, file name) of every entry of the directory."""
    out = []
    for filename in sorted(os.listdir(f"/proc/self/fd/{dfd}")):
        name = _entry_name(filename)
        if name is not None:
            out.append((name, filename))
    return out


def prepare(name: str | None) -> tuple[str, str]:
    """Caller side, before a launch: (runtime directory, the sandbox's name).
    Creates and checks the directory, generates a default name, refuses a
    name that a running sandbox already has (removing dead entries)."""
    if name is None:
        name = default_name()
        check = False
    else:
        check_name(name)
        check = True
    path = runtime_dir()
    dfd = open_dir(path, create=True)
    assert dfd is not None
    try:
        if check:
            for other, filename in _entries(dfd):
                if other == name and _alive(dfd, filename):
                    raise ControlError(f"a sandbox named {name!r} is already running")
    finally:
        os.close(dfd)
    return path, name


def _alive(dfd: int, filename: str) -> bool:
    """Does a supervisor answer on this entry? A dead one is removed."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(REPLY_SECONDS)
        sock.connect(f"/proc/self/fd/{dfd}/{filename}")
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        _unlink(dfd, filename)
        return False
    except OSError:
        return True  # there, but not answering: not ours to remove
    finally:
        sock.close()


def _unlink(dfd: int, filename: str) -> None:
    try:
        os.unlink(filename, dir_fd=dfd)
    except OSError:
        pass


# -- the wire -------------------------------------------------------------------------------

def _send(sock: socket.socket, obj: dict) -> None:
    import json
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode("utf-8", "surrogateescape")
    sock.sendall(_LEN.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 16))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def _recv(sock: socket.socket, cap: int) -> dict:
    import json
    (length,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if length > cap:
        raise ValueError(f"message of {length} bytes (at most {cap})")
    obj = json.loads(_recv_exact(sock, length).decode("utf-8", "surrogateescape"))
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


# -- the client ------------------------------------------------------------------------------

def _open_for_reading() -> int | None:
    return open_dir(runtime_dir(), create=False)


def _ask(dfd: int, filename: str, verb: str, args: dict | None = None,
         patience: float = REPLY_SECONDS) -> Any:
    """One request to one supervisor: its reply's data. ControlError if it
    refuses; OSError if it cannot be reached."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(REPLY_SECONDS)
        sock.connect(f"/proc/self/fd/{dfd}/{filename}")
        _send(sock, {"v": VERSION, "verb": verb, "args": args or {}})
        try:
            reply = _recv(sock, MAX_REPLY)
        except ValueError as e:
            raise ControlError(f"bad reply from the supervisor of {_entry_name(filename)!r}: {e}") \
                from None
        if not reply.get("ok"):
            raise ControlError(str(reply.get("error") or "request refused"))
        if verb == "kill" and reply.get("data", {}).get("ending"):
            # The supervisor holds this connection until its tree is gone.
            sock.settimeout(patience)
            try:
                while sock.recv(4096):
                    pass
            except OSError:
                pass
        return reply.get("data")
    finally:
        sock.close()


def ps() -> list[dict]:
    """The running sandboxes of this user: one dict each (`name`, `pid`,
    `supervisor_pid`, `uptime` seconds, `started` Unix time, `command`,
    `processes` count, `ports` virtual → real, `limits`), by name."""
    dfd = _open_for_reading()
    if dfd is None:
        return []
    out = []
    try:
        for name, filename in _entries(dfd):
            try:
                data = _ask(dfd, filename, "ps")
            except (ConnectionRefusedError, FileNotFoundError):
                _unlink(dfd, filename)  # its supervisor is gone
                continue
            except (OSError, ControlError):
                continue  # busy or refusing: not listed
            if isinstance(data, dict):
                data["name"] = name
                out.append(data)
    finally:
        os.close(dfd)
    return out


def _find(dfd: int | None, name: str) -> str:
    if dfd is not None:
        found = [f for n, f in _entries(dfd) if n == name]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ControlError(f"more than one sandbox is named {name!r}")
    raise ControlError(f"no running sandbox named {name!r}")


def _one(name: str, verb: str, args: dict | None = None, patience: float = REPLY_SECONDS) -> Any:
    check_name(name)
    dfd = _open_for_reading()
    try:
        filename = _find(dfd, name)
        assert dfd is not None
        try:
            return _ask(dfd, filename, verb, args, patience)
        except (ConnectionRefusedError, FileNotFoundError):
            _unlink(dfd, filename)
            raise ControlError(f"no running sandbox named {name!r}") from None
        except OSError as e:
            raise ControlError(f"the supervisor of sandbox {name!r} does not answer: "
                               f"{e.strerror or e}") from None
    finally:
        if dfd is not None:
            os.close(dfd)


def inspect(name: str) -> dict:
    """The running sandbox `name`: its effective policy (`policy`, shaped as
    a profile; `resolved`, the filesystem grants as the plan resolved
    them) and live state (`processes`, `memory`, `cpu_seconds`, `ports`,
    `uptime`, ...). ControlError if no sandbox has that name."""
    data = _one(name, "inspect")
    if not isinstance(data, dict):
        raise ControlError(f"bad reply from the supervisor of {name!r}")
    data["name"] = name
    return data


def kill(name: str, sig: int = signal.SIGKILL) -> int:
    """Send `sig` to every process of the running sandbox `name`, by asking
    its supervisor. With SIGKILL, returns once the whole tree is gone.
    Returns how many processes were signalled."""
    try:
        signum = int(signal.Signals(sig))
    except (ValueError, TypeError):
        raise PolicyError(f"sig: {sig!r} is not a signal") from None
    data = _one(name, "kill", {"signal": signum}, patience=KILL_SECONDS)
    return int(data.get("signalled", 0)) if isinstance(data, dict) else 0


# -- the server (in the supervisor) ----------------------------------------------------------

class Server:
    """A sandbox's control socket, polled by the supervisor's event loop:
    `fd` is readable when a client waits; `handle()` answers it."""

    def __init__(self, plan, child_pid: int, me: int):
        self.plan = plan
        self.child_pid = child_pid
        self.me = me
        self.ports: dict[int, int] = {}
        self.memory = None  # the supervisor's MemoryLimit, when there is one
        self.denials: Any = None  # the dispatcher's denials.Recorder, when there is one
        self.started = time.time()
        self._t0 = time.monotonic()
        self._waiters: list[socket.socket] = []
        self._filename = f"{plan.name}.{os.urandom(_RAND_HEX // 2).hex()}{SUFFIX}"
        self._dfd = open_dir(plan.control_dir, create=False)
        if self._dfd is None:
            raise ControlError(f"runtime directory {plan.control_dir} is gone")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            old = os.umask(0o177)  # the socket file is born 0600
            try:
                self.sock.bind(f"/proc/self/fd/{self._dfd}/{self._filename}")
            finally:
                os.umask(old)
            self.sock.listen(8)
            self.sock.setblocking(False)
        except OSError as e:
            self.close()
            raise ControlError(f"cannot create the control socket in {plan.control_dir}: "
                               f"{e.strerror}") from None

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Remove the entry; release the clients waiting for the end."""
        if self._dfd is not None:
            _unlink(self._dfd, self._filename)
            os.close(self._dfd)
            self._dfd = None
        self.sock.close()
        for conn in self._waiters:
            conn.close()
        self._waiters.clear()

    def handle(self) -> int | None:
        """Answer one client. Returns the signal the loop must deliver to
        the sandbox's tree (SIGKILL: end the run), or None."""
        try:
            conn, _addr = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return None
        keep = False
        try:
            conn.settimeout(CLIENT_SECONDS)
            try:
                request = _recv(conn, MAX_REQUEST)
            except (OSError, ValueError, UnicodeError):
                return None
            try:
                data, sig = self._answer(conn, request)
            except ControlError as e:
                _send(conn, {"v": VERSION, "ok": False, "error": str(e)})
                return None
            _send(conn, {"v": VERSION, "ok": True, "data": data})
            if sig == signal.SIGKILL:
                keep = True
                self._waiters.append(conn)  # closed when the tree is gone
            return sig
        except OSError:
            return None
        finally:
            if not keep:
                conn.close()

    def _answer(self, conn: socket.socket, request: dict) -> tuple[Any, int | None]:
        if request.get("v") != VERSION:
            raise ControlError(f"control protocol version {request.get('v')!r} is not supported "
                               f"(this supervisor speaks {VERSION})")
        self._check_peer(conn)
        verb = request.get("verb")
        if verb == "ps":
            return self.summary(), None
        if verb == "inspect":
            return self.details(), None
        if verb == "kill":
            args = request.get("args")
            number = args.get("signal") if isinstance(args, dict) else None
            try:
                sig = int(signal.Signals(number))  # type: ignore[arg-type]
            except (ValueError, TypeError):
                raise ControlError(f"kill: {number!r} is not a signal") from None
            count = len(self._tree())
            return {"signalled": count, "ending": sig == signal.SIGKILL}, sig
        raise ControlError(f"unknown request {verb!r}")

    def _check_peer(self, conn: socket.socket) -> None:
        """Refuse another user, and any process of this very sandbox."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        if uid not in (os.geteuid(), 0):
            raise ControlError("refused: the request comes from another user")
        p = pid
        for _depth in range(4096):
            if p == self.me:
                raise ControlError("refused: the request comes from inside the sandbox")
            if p <= 1:
                return
            parent = _ppid(p)
            if parent is None:
                raise ControlError("refused: the requesting process cannot be identified")
            p = parent
        raise ControlError("refused: the requesting process cannot be identified")

    def _tree(self) -> list[int]:
        from .supervisor import processes
        return processes.descendants(self.me)

    def summary(self) -> dict:
        pids = self._tree()
        return {
            "name": self.plan.name, "pid": self.child_pid, "supervisor_pid": self.me,
            "started": self.started, "uptime": round(time.monotonic() - self._t0, 3),
            "command": list(self.plan.command), "processes": len(pids),
            "ports": {str(v): r for v, r in sorted(self.ports.items())},
            "limits": dict(self.plan.policy.get("limits", {})),
            "supervised": bool(self.plan.routes),
        }

    def details(self) -> dict:
        out = self.summary()
        procs = [info for info in map(_proc_info, self._tree()) if info is not None]
        out["processes"] = procs
        out["memory"] = {"rss": sum(p["rss"] for p in procs),
                         "peak_rss": sum(p["peak_rss"] for p in procs)}
        out["cpu_seconds"] = round(sum(p["cpu_seconds"] for p in procs), 3)
        out["policy"] = self.plan.policy
        fs = self.plan.fs
        out["resolved"] = {
            "read": [p for p, access, _d in fs.grants if not access & _write_bits()],
            "write": [p for p, access, _d in fs.grants if access & _write_bits()],
            "deny": list(fs.denied),
        }
        if self.denials is not None:
            import dataclasses

            from .denials import from_records
            records, more = self.denials.export()
            out["denials"] = [dataclasses.asdict(d) for d in from_records(records, more)]
            out["denials_omitted"] = more
        return out


def _write_bits() -> int:
    from .fsview import WRITE
    return WRITE


def _ppid(pid: int) -> int | None:
    from .supervisor.processes import stat_fields
    try:
        return int(stat_fields(pid)[1])
    except (OSError, ValueError, IndexError):
        return None


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_info(pid: int) -> dict | None:
    """pid, ppid, state, command line, memory and CPU of one process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_data = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except OSError:
        return None
    end = stat_data.rindex(b")")
    comm = stat_data[stat_data.index(b"(") + 1:end].decode("utf-8", "replace")
    fields = stat_data[end + 2:].split()
    kib = {}
    for line in status.splitlines():
        key, _sep, value = line.partition(b":")
        if key in (b"VmRSS", b"VmHWM"):
            kib[key] = int(value.split()[0])
    args = [a.decode("utf-8", "replace") for a in cmdline.split(b"\0")[:-1]]
    return {
        "pid": pid, "ppid": int(fields[1]), "state": fields[0].decode(),
        "command": args or [f"[{comm}]"],
        "rss": kib.get(b"VmRSS", 0) * 1024, "peak_rss": kib.get(b"VmHWM", 0) * 1024,
        "cpu_seconds": sum(int(x) for x in fields[11:15]) / _TICK,
    }


def serve(plan, child_pid: int, me: int) -> Server | None:
    """The control server of a run (None when the plan has no runtime
    directory). ControlError if the socket cannot be made."""
    if not getattr(plan, "control_dir", None):
        return None
    return Server(plan, child_pid, me)


# -- the effective policy, shaped as a profile ------------------------------------------------

def _iso_time(ns: int | None) -> str | None:
    """time_start (ns since the epoch) as an RFC 3339 string, to the microsecond."""
    if ns is None:
        return None
    import datetime as dt
    return (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
            + dt.timedelta(microseconds=ns // 1000)).isoformat().replace("+00:00", "Z")


def policy_summary(policy, cwd: str) -> dict:
    """The policy's set values as profile sections and keys (see
    profiles.SCHEMA), plain JSON values: what `inspect` shows and
    `inspect --toml` prints."""
    def ports(ps) -> list:
        if ps.any:
            return ["*"]
        return [lo if lo == hi else f"{lo}-{hi}" for lo, hi in ps.ranges]

    sections: dict[str, dict[str, Any]] = {
        "program": {"env": dict(policy.env), "cwd": cwd, "clean_env": policy.clean_env,
                    "no_coredump": policy.no_coredump, "no_huge_pages": policy.no_huge_pages},
        "determinism": {"no_randomize_memory": policy.no_randomize_memory,
                        "random_seed": policy.random_seed,
                        "time_start": _iso_time(policy.time_start),
                        "deterministic_dirs": policy.deterministic_dirs},
        "filesystem": {"read": list(policy.fs_readable), "write": list(policy.fs_writable),
                       "deny": list(policy.fs_denied)},
        "network": {"allow": [r.spec or r.to_spec() for r in policy.net_allow],
                    "deny": [r.spec or r.to_spec() for r in policy.net_deny],
                    "allow_bind": ports(policy.net_allow_bind),
                    "deny_bind": ports(policy.net_deny_bind), "port_remap": policy.port_remap},
        "syscalls": {"extra_allow": list(policy.extra_allow_syscalls),
                     "extra_deny": list(policy.extra_deny_syscalls)},
        "limits": {"memory": policy.max_memory, "processes": policy.max_processes,
                   "open_files": policy.max_open_files, "cpu": policy.max_cpu,
                   "cpu_cores": None if policy.cpu_cores is None else list(policy.cpu_cores),
                   "num_cpus": policy.num_cpus},
    }
    out = {}
    for section, keys in sections.items():
        kept = {k: v for k, v in keys.items() if v not in (None, False, [], {})}
        if kept:
            out[section] = kept
    return out


def policy_toml(policy: dict) -> str:
    """A profile-shaped dict (policy_summary) as TOML text."""
    import json

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)} = {value(x)}"
                                   for k, x in v.items()) + "}"
        return json.dumps(str(v))

    lines: list[str] = []
    for section, keys in policy.items():
        if not isinstance(keys, dict):
            continue
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        for key, v in keys.items():
            lines.append(f"{key} = {value(v)}")
    return "\n".join(lines) + "\n"
