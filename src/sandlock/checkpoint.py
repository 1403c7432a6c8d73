"""Checkpoints of a running sandbox, and restart from one.

What a checkpoint holds (captured while every process of the sandbox is
stopped with SIGSTOP, then resumed):

- the command (argv), its working directory and its environment, as the
  sandbox launched them;
- the policy (the Sandbox fields that are plain data; callables such as
  `policy_fn` are named in `policy_skipped`, not saved);
- facts about the process tree read from /proc: pid, parent, state,
  command line, cwd and open descriptors of each process;
- `app_state`: the bytes `save_fn()` returned, if a `save_fn` was given;
- with a `workdir`: the copy-on-write branch's upper tree and its logs
  (deletions and the identities the commit's conflict check uses).

What it does not hold: process memory, registers, threads, open
descriptors' kernel state (offsets, sockets, pipes), signal handlers,
timers. Capturing those needs ptrace and restoring them needs compiled
code (the reference ships a C stub, x86_64 only); this pure-Python
version does neither. `not_captured` says so on every checkpoint.

So a restore (`Sandbox.restore_interactive(cp)`) is a *restart from saved
state*: the command runs again from its start, in the restoring sandbox's
policy, with the saved cwd and environment, on a new copy-on-write branch
whose upper is the saved one (its writes and deletions are visible
again), and with `app_state` readable from the descriptor named in
`$SANDLOCK_APP_STATE_FD`. The program must pick up its own work from
there. `Sandbox.restore_skipped` lists the descriptors the original main
process had beyond stdio, none of which a restart recreates.

Store: one directory per checkpoint under `store` (default
`$XDG_DATA_HOME/sandlock/checkpoints`, else
`~/.local/share/sandlock/checkpoints`, created 0700 and checked to be
ours and closed to others). A checkpoint is written into a temporary
directory, fsynced, then renamed into place; `manifest.json` (versioned)
lists its parts, and a checkpoint with a missing or altered part, or an
unknown version, is refused on load. The environment often holds
secrets: every entry is private (0700 / 0600).
"""
from __future__ import annotations

import builtins
import dataclasses
import enum
import hashlib
import json
import os
import secrets
import stat
import tempfile
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from .exceptions import BranchError, PolicyError, SandboxError

if TYPE_CHECKING:
    from .sandbox import Sandbox

FORMAT = "sandlock-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
POLICY = "policy.json"
APP_STATE = "app_state.bin"
BRANCH = "branch"
UPPER = "upper"
DELETED_LOG = "deleted.log"
BASE_LOG = "base.log"
APP_STATE_ENV = "SANDLOCK_APP_STATE_FD"
MAX_NAME = 64
STOP_TIMEOUT = 5.0

NOT_CAPTURED = (
    "process memory, registers and threads",
    "open descriptors' kernel state (file offsets, pipes, sockets)",
    "signal handlers, timers and other in-kernel process state",
)


class SkippedFd(NamedTuple):
    """A file descriptor a restore could not recreate."""
    fd: int
    path: str


def check_name(name) -> str:
    """A checkpoint name: 1-64 characters, one path component (no '/', no
    NUL), not starting with '.' (so never '.' or '..')."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or "/" in name \
            or "\0" in name or name.startswith("."):
        raise PolicyError(f"checkpoint name: expected 1-{MAX_NAME} characters, no '/', no NUL, "
                          f"not starting with '.' (got {name!r})")
    return name


# -- the store --------------------------------------------------------------

def default_store() -> Path:
    """`$XDG_DATA_HOME/sandlock/checkpoints` (an absolute XDG_DATA_HOME),
    else `~/.local/share/sandlock/checkpoints`. Not created."""
    data = os.environ.get("XDG_DATA_HOME")
    if not data or not os.path.isabs(data):
        data = os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "sandlock" / "checkpoints"


def _private(path: str, create: bool) -> None:
    from .cow.storage import check_private_dir, make_private_dir
    try:
        (make_private_dir if create else check_private_dir)(path)
    except BranchError as e:
        raise SandboxError(f"checkpoint store: {e}".replace("branch storage", "directory")) from None


def _store(store: Path | str | os.PathLike | None, create: bool) -> str:
    """The store directory. The default one (and its `sandlock` parent) is
    made 0700 and must be ours and private; an explicit one is created 0700
    if missing and used as given (each checkpoint in it is private)."""
    if store is None:
        base = default_store()
        if create:
            os.makedirs(base.parent.parent, mode=0o700, exist_ok=True)
            _private(str(base.parent), True)
            _private(str(base), True)
        elif os.path.lexists(base):
            _private(str(base), False)
        return str(base)
    path = os.fsdecode(os.fspath(store))
    if create and not os.path.isdir(path):
        try:
            os.mkdir(path, 0o700)
        except OSError as e:
            raise SandboxError(f"checkpoint store {path!r}: cannot create it: {e.strerror}") from None
    return path


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rmtree(path: str) -> None:
    """Remove a tree we wrote (directories may have lost owner bits)."""
    import shutil

    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
        except OSError:
            pass
        func(p)
    shutil.rmtree(path, onerror=fix)


# -- copying a branch tree ---------------------------------------------------

def _copy_tree(src_root: str, dst_root: str) -> int:
    """Copy the tree under src_root into the existing, empty dst_root:
    directories (with owner rwx kept: the copy-on-write layer gives them
    that), regular files (mode, mtime, fsynced), symlinks, hard links kept
    as links. Anything else (a FIFO, a socket, a device) raises
    SandboxError: a checkpoint is never written with a hole. Returns the
    number of entries copied."""
    from .cow.layer import SpecialFileError, open_regular, readlink_in, walk_in
    root = os.open(src_root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    seen: dict[tuple[int, int], str] = {}
    dirs: list[tuple[str, int]] = []
    count = 0
    try:
        for rel, st in walk_in(root, b""):
            count += 1
            dst = os.path.join(dst_root, os.fsdecode(rel))
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(dst, 0o700)
                dirs.append((dst, mode | 0o700))
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(readlink_in(root, rel), dst)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    os.link(seen[key], dst, follow_symlinks=False)
                    continue
                try:
                    src = open_regular(root, rel, os.O_RDONLY | os.O_CLOEXEC, expect=st)
                except SpecialFileError as e:
                    raise SandboxError(f"checkpoint: {e}") from None
                except OSError as e:
                    raise SandboxError(f"checkpoint: cannot read {os.fsdecode(rel)!r} of the "
                                       f"copy-on-write branch: {e.strerror}") from None
                try:
                    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, 0o600)
                    try:
                        while chunk := os.read(src, 1 << 20):
                            view = memoryview(chunk)
                            while view:
                                view = view[os.write(out, view):]
                        os.fsync(out)
                        os.fchmod(out, mode)
                        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
                    finally:
                        os.close(out)
                finally:
                    os.close(src)
                seen[key] = dst
            else:
                raise SandboxError(f"checkpoint: {os.fsdecode(rel)!r} in the copy-on-write branch "
                                   f"is a special file (mode {st.st_mode:o}); it cannot be saved")
    finally:
        os.close(root)
    for d, mode in reversed(dirs):
        _fsync_dir(d)
        os.chmod(d, mode)
    _fsync_dir(dst_root)
    return count


def _complete_lines(data: bytes) -> bytes:
    """A log's complete records (a torn last line is an append that never
    finished: the copy-on-write layer ignores it too)."""
    cut = data.rfind(b"\n")
    return b"" if cut < 0 else data[:cut + 1]


def _copy_branch(branch_dir: str, dst: str) -> dict:
    """The branch's upper and logs into dst (a new private directory)."""
    os.mkdir(os.path.join(dst, UPPER), 0o700)
    entries = _copy_tree(os.path.join(branch_dir, UPPER), os.path.join(dst, UPPER))
    logs = {}
    for log in (DELETED_LOG, BASE_LOG):
        try:
            data = _complete_lines(_read_file(os.path.join(branch_dir, log)))
        except OSError as e:
            raise SandboxError(f"checkpoint: cannot read the branch's {log}: {e.strerror}") from None
        _write_file(os.path.join(dst, log), data)
        logs[log] = _sha(data)
    _fsync_dir(dst)
    return {"entries": entries, "logs": logs}


# -- /proc ---------------------------------------------------------------------

def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of pid, None once it is gone."""
    from .supervisor.processes import stat_fields
    try:
        fields = stat_fields(pid)
    except OSError:
        return None
    return fields[0].decode(), int(fields[1])


def _tree(run) -> list[int]:
    """The processes the supervisor pauses: every descendant of it (else
    the main pid and its descendants)."""
    from .supervisor.processes import ObservationError, descendants
    roots = [run.supervisor_pid] if run.supervisor_pid > 0 else []
    for root in roots:
        try:
            return descendants(root)
        except ObservationError:
            pass
    pid = run.child_pid
    try:
        return [pid, *descendants(pid)]
    except ObservationError:
        return [pid]


def _stopped(pids: list[int]) -> bool:
    for pid in pids:
        st = _proc_state(pid)
        if st is not None and st[0] not in "TtZX":
            return False
    return True


def _process_facts(pid: int) -> dict | None:
    st = _proc_state(pid)
    if st is None:
        return None
    facts: dict[str, Any] = {"pid": pid, "ppid": st[1], "state": st[0]}
    try:
        facts["cmdline"] = [os.fsdecode(a) for a in _read_file(f"/proc/{pid}/cmdline").split(b"\0")[:-1]]
    except OSError:
        facts["cmdline"] = None
    try:
        facts["cwd"] = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        facts["cwd"] = None
    try:
        fds = {}
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                fds[name] = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                fds[name] = "?"
        facts["fds"] = dict(sorted(fds.items(), key=lambda kv: int(kv[0])))
    except OSError:
        facts["fds"] = None
    return facts


# -- the policy as data ----------------------------------------------------------

def _plain(value: Any) -> tuple[bool, Any]:
    """(ok, JSON-able form) of a policy value."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True, value
    if isinstance(value, enum.Enum):
        return True, value.value
    if isinstance(value, dict) or hasattr(value, "items"):
        out = {}
        for k, v in value.items():
            ok, pv = _plain(v)
            if not ok or not isinstance(k, str):
                return False, None
            out[k] = pv
        return True, out
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    return False, None


def _policy_data(sb: "Sandbox") -> tuple[dict, list[str]]:
    policy, skipped = {}, []
    for f in dataclasses.fields(sb):
        value = getattr(sb, f.name)
        ok, plain = _plain(value)
        if ok:
            policy[f.name] = plain
        elif value is not None:
            skipped.append(f.name)
    return policy, skipped


def _s(b: bytes) -> str:
    return os.fsdecode(b)


# -- the checkpoint ------------------------------------------------------------------

class Checkpoint:
    """A checkpoint of a running sandbox: its command, cwd, environment,
    policy, process facts, `app_state` and copy-on-write branch. Not a
    process image (see the module's documentation): `not_captured` lists
    what is missing, and a restore restarts the command.

    Made by `Sandbox.checkpoint()` or `Checkpoint.load()`."""

    def __init__(self, *, command: builtins.list[str], cwd: str, environ: dict[str, str],
                 policy: dict, policy_skipped: builtins.list[str],
                 processes: builtins.list[dict], app_state: bytes | None,
                 workdir: str | None, branch_dir: str | None, branch_info: dict | None,
                 created: float, name: str = "", owned_dir: str | None = None):
        self._name = name
        self.command = command
        self.cwd = cwd
        self.environ = environ
        self.policy = policy
        self.policy_skipped = policy_skipped
        self.processes = processes
        self._app_state = app_state
        self.workdir = workdir
        self._branch_dir = branch_dir
        self._branch_info = branch_info
        self.created = created
        self._cleanup = (weakref.finalize(self, _rmtree, owned_dir)
                         if owned_dir is not None else None)

    @property
    def name(self) -> str:
        """The name it was saved or loaded under ("" before save())."""
        return self._name

    @property
    def app_state(self) -> bytes | None:
        """What save_fn() returned, or None."""
        return self._app_state

    @property
    def not_captured(self) -> tuple[str, ...]:
        """What this checkpoint does not hold (a restore cannot bring back)."""
        return NOT_CAPTURED

    @property
    def complete(self) -> bool:
        """Whether the restart state is whole: the command, cwd and
        environment, and the branch when the sandbox had a workdir. Never
        means a process image (there is none: see not_captured)."""
        return bool(self.command) and (self.workdir is None or self._branch_dir is not None)

    @property
    def skipped_fds(self) -> builtins.list[SkippedFd]:
        """The main process's descriptors beyond stdio: a restart does not
        recreate any of them."""
        if not self.processes:
            return []
        main = self.processes[0]
        fds = main.get("fds") if isinstance(main, dict) else None
        if not isinstance(fds, dict):
            return []
        return [SkippedFd(int(fd), str(path)) for fd, path in fds.items()
                if isinstance(fd, str) and fd.isdigit() and int(fd) > 2]

    def __repr__(self) -> str:
        return (f"Checkpoint(name={self._name!r}, command={self.command!r}, "
                f"workdir={self.workdir!r}, app_state={'yes' if self._app_state is not None else 'no'})")

    # -- the store

    def save(self, name: str, *, store: Path | str | None = None) -> Path:
        """Write this checkpoint as `<store>/<name>` and return that path.
        Atomic: written in a temporary directory in the store, fsynced,
        then renamed. An existing checkpoint of that name is not replaced
        (FileExistsError): delete() it first."""
        check_name(name)
        base = _store(store, create=True)
        final = os.path.join(base, name)
        if os.path.lexists(final):
            raise FileExistsError(f"checkpoint {name!r} already exists in {base}")
        tmp = os.path.join(base, f".tmp-{secrets.token_hex(8)}")
        os.mkdir(tmp, 0o700)
        os.chmod(tmp, 0o700)
        try:
            parts: dict[str, Any] = {}
            policy = json.dumps({"fields": self.policy, "skipped": self.policy_skipped},
                                sort_keys=True).encode()
            _write_file(os.path.join(tmp, POLICY), policy)
            parts[POLICY] = _sha(policy)
            if self._app_state is not None:
                _write_file(os.path.join(tmp, APP_STATE), self._app_state)
                parts[APP_STATE] = _sha(self._app_state)
            branch = None
            if self._branch_dir is not None:
                bdir = os.path.join(tmp, BRANCH)
                os.mkdir(bdir, 0o700)
                branch = _copy_branch(self._branch_dir, bdir)
                if self._branch_info is not None and branch != self._branch_info:
                    raise SandboxError("checkpoint: the saved branch changed since it was captured")
            manifest = {
                "format": FORMAT, "version": VERSION, "name": name, "created": self.created,
                "command": self.command, "cwd": self.cwd, "environ": self.environ,
                "workdir": self.workdir, "branch": branch, "processes": self.processes,
                "parts": parts, "not_captured": list(NOT_CAPTURED),
            }
            _write_file(os.path.join(tmp, MANIFEST), json.dumps(manifest, sort_keys=True).encode())
            _fsync_dir(tmp)
            try:
                os.rename(tmp, final)   # fails if `final` appeared meanwhile (a non-empty dir)
            except OSError as e:
                raise FileExistsError(f"checkpoint {name!r}: cannot put it in place: {e.strerror}") from None
            _fsync_dir(base)
        except BaseException:
            _rmtree(tmp)
            raise
        self._name = name
        return Path(final)

    @classmethod
    def load(cls, name: str, *, store: Path | str | None = None,
             restore_fn: Callable[[bytes], None] | None = None) -> "Checkpoint":
        """Read checkpoint `name`. Every part the manifest lists must be
        there and unaltered, and the manifest's version known; otherwise
        SandboxError. FileNotFoundError if there is no such checkpoint.
        `restore_fn(app_state)` is called when both are present."""
        check_name(name)
        base = _store(store, create=False)
        path = os.path.join(base, name)
        if not os.path.lexists(path):
            raise FileNotFoundError(f"no checkpoint {name!r} in {base}")
        _private(path, False)

        def bad(why: str) -> SandboxError:
            return SandboxError(f"checkpoint {name!r} in {base} is unusable: {why}")
        try:
            manifest = json.loads(_read_file(os.path.join(path, MANIFEST)))
        except FileNotFoundError:
            raise bad(f"{MANIFEST} is missing (an incomplete write?)") from None
        except (OSError, ValueError) as e:
            raise bad(f"cannot read {MANIFEST}: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise bad(f"{MANIFEST} is not a sandlock checkpoint manifest")
        if manifest.get("version") != VERSION:
            raise bad(f"manifest version {manifest.get('version')!r} is not supported "
                      f"(this sandlock reads version {VERSION})")
        try:
            parts = manifest["parts"]
            data = {}
            for part, digest in parts.items():
                if part not in (POLICY, APP_STATE):
                    raise bad(f"unknown part {part!r}")
                try:
                    data[part] = _read_file(os.path.join(path, part))
                except OSError as e:
                    raise bad(f"part {part} is missing or unreadable ({e.strerror})") from None
                if _sha(data[part]) != digest:
                    raise bad(f"part {part} does not match the manifest")
            if POLICY not in data:
                raise bad(f"part {POLICY} is missing")
            policy = json.loads(data[POLICY])
            command, cwd, environ = manifest["command"], manifest["cwd"], manifest["environ"]
            if not (isinstance(command, builtins.list) and command
                    and all(isinstance(a, str) for a in command)):
                raise bad("no command")
            if not isinstance(cwd, str) or not isinstance(environ, dict) \
                    or not all(isinstance(k, str) and isinstance(v, str) for k, v in environ.items()):
                raise bad("bad cwd or environment")
            workdir, branch = manifest["workdir"], manifest["branch"]
            branch_dir = None
            if workdir is not None:
                if not isinstance(workdir, str) or not isinstance(branch, dict):
                    raise bad("a workdir without its branch")
                branch_dir = os.path.join(path, BRANCH)
                for log, digest in branch["logs"].items():
                    if log not in (DELETED_LOG, BASE_LOG):
                        raise bad(f"unknown branch log {log!r}")
                    try:
                        if _sha(_read_file(os.path.join(branch_dir, log))) != digest:
                            raise bad(f"branch log {log} does not match the manifest")
                    except OSError as e:
                        raise bad(f"branch log {log} is missing ({e.strerror})") from None
                if set(branch["logs"]) != {DELETED_LOG, BASE_LOG}:
                    raise bad("a branch log is missing from the manifest")
                from .cow.layer import walk_in
                try:
                    root = os.open(os.path.join(branch_dir, UPPER),
                                   os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError as e:
                    raise bad(f"the branch's upper is missing ({e.strerror})") from None
                try:
                    entries = sum(1 for _ in walk_in(root, b""))
                finally:
                    os.close(root)
                if entries != branch["entries"]:
                    raise bad(f"the branch's upper has {entries} entries, the manifest {branch['entries']}")
            elif branch is not None:
                raise bad("a branch without a workdir")
            cp = cls(command=command, cwd=cwd, environ=environ, policy=policy["fields"],
                     policy_skipped=policy["skipped"], processes=manifest["processes"],
                     app_state=data.get(APP_STATE), workdir=workdir, branch_dir=branch_dir,
                     branch_info=branch, created=manifest["created"], name=name)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise bad(f"malformed manifest ({e!r})") from None
        if restore_fn is not None and cp.app_state is not None:
            restore_fn(cp.app_state)
        return cp

    @classmethod
    def list(cls, *, store: Path | str | None = None) -> builtins.list[str]:
        """The names of the checkpoints in the store, sorted (entries being
        written or deleted, whose names start with '.', are not listed)."""
        base = _store(store, create=False)
        try:
            names = os.listdir(base)
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            try:
                check_name(n)
            except PolicyError:
                continue
            if os.path.isfile(os.path.join(base, n, MANIFEST)):
                out.append(n)
        return sorted(out)

    @classmethod
    def delete(cls, name: str, *, store: Path | str | None = None) -> None:
        """Remove checkpoint `name` (FileNotFoundError if there is none).
        It is first renamed away, so it disappears at once."""
        check_name(name)
        base = _store(store, create=False)
        path = os.path.join(base, name)
        if not os.path.lexists(path):
            raise FileNotFoundError(f"no checkpoint {name!r} in {base}")
        _private(path, False)
        gone = os.path.join(base, f".del-{secrets.token_hex(8)}")
        os.rename(path, gone)
        _rmtree(gone)

    # -- restart

    def _seed(self, branch) -> None:
        """Fill a new, empty branch with the saved upper and logs."""
        assert self._branch_dir is not None
        _copy_tree(os.path.join(self._branch_dir, UPPER), branch.upper_dir)
        for log in (DELETED_LOG, BASE_LOG):
            data = _read_file(os.path.join(self._branch_dir, log))
            with open(os.path.join(branch.branch_dir, log), "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())


# -- Sandbox.checkpoint / restore_interactive ----------------------------------------

def capture(sb: "Sandbox", save_fn: Callable[[], bytes] | None) -> Checkpoint:
    """The body of Sandbox.checkpoint()."""
    from .protocol import Cmd
    with sb._lock:
        run = sb._current
        if run is None or run.result is not None or run.child_pid is None:
            raise SandboxError("sandbox is not running (use start() or run() first)")
        plan = getattr(run, "plan", None)
        if plan is None:
            raise SandboxError("checkpoint(): this run did not record its launch plan")
        # The caller's pause, not the processes' state: just after resume()
        # they may still be stopped, and would then never be paused here.
        was_stopped = run.paused
        if not was_stopped:
            run.send(Cmd.PAUSE)
    owned = None
    try:
        start = time.monotonic()
        again = start + 0.1
        while True:
            pids = _tree(run)
            if _stopped(pids):
                break
            now = time.monotonic()
            if now >= start + STOP_TIMEOUT:
                raise SandboxError(f"checkpoint(): the sandbox's processes did not stop within "
                                   f"{STOP_TIMEOUT:g} s")
            if run.result is not None:
                raise SandboxError("checkpoint(): the sandbox ended meanwhile")
            if now >= again and not was_stopped:
                # A process forked while the supervisor sent SIGSTOP may have
                # missed it: ask again (stopping a stopped process is a no-op).
                run.send(Cmd.PAUSE)
                again = now + 0.1
            time.sleep(0.005)
        app_state = None
        if save_fn is not None:
            app_state = save_fn()
            if not isinstance(app_state, (bytes, bytearray, memoryview)):
                raise TypeError(f"checkpoint(): save_fn must return bytes (got {type(app_state).__name__})")
            app_state = bytes(app_state)
        main = _process_facts(run.child_pid)
        processes = [main] if main is not None else []
        for pid in pids:
            if pid != run.child_pid:
                facts = _process_facts(pid)
                if facts is not None:
                    processes.append(facts)
        branch = getattr(run, "branch", None)
        branch_dir = branch_info = workdir = None
        if plan.cow is not None:
            if branch is None:
                raise SandboxError("checkpoint(): the run's copy-on-write branch is gone")
            owned = tempfile.mkdtemp(prefix="sandlock-checkpoint-")
            try:
                branch_info = _copy_branch(branch.branch_dir, owned)
            except OSError as e:
                raise SandboxError(f"checkpoint(): cannot copy the copy-on-write branch: {e}") from None
            branch_dir, workdir = owned, branch.workdir
    except BaseException:
        if owned is not None:
            _rmtree(owned)
        raise
    finally:
        if not was_stopped:
            run.send(Cmd.RESUME)
    policy, skipped = _policy_data(sb)
    return Checkpoint(command=[_s(a) for a in plan.argv], cwd=_s(plan.cwd),
                      environ={_s(k): _s(v) for k, v in plan.envp.items()},
                      policy=policy, policy_skipped=skipped, processes=processes,
                      app_state=app_state, workdir=workdir, branch_dir=branch_dir,
                      branch_info=branch_info, created=time.time(), owned_dir=owned)


def restart(sb: "Sandbox", cp: Checkpoint) -> builtins.list[SkippedFd]:
    """The body of Sandbox.restore_interactive(): start cp's command again
    in sb's policy (caller's stdio, like start()); the SkippedFd list."""
    from .plan import _exec_candidates, compile_plan
    from .sandbox import Process
    if not isinstance(cp, Checkpoint):
        raise TypeError(f"restore_interactive(): expected a Checkpoint (got {type(cp).__name__})")
    with sb._lock:
        if sb._current is not None or sb._created is not None:
            raise SandboxError("this Sandbox is already running a command; restore into an idle one")
    if not cp.complete:
        raise SandboxError("restore_interactive(): the checkpoint's restart state is incomplete")
    policy = sb._policy()
    if policy.chroot is not None:
        # its cwd and command were recorded as the kernel saw them (host
        # paths), not in the virtual tree: refused rather than run wrong
        raise SandboxError("restore_interactive(): not supported with a chroot or an image yet")
    if cp.workdir is not None:
        if policy.workdir is None or os.path.realpath(policy.workdir) != cp.workdir:
            raise SandboxError(f"restore_interactive(): the checkpoint holds a copy-on-write branch of "
                               f"workdir {cp.workdir!r}; the restoring sandbox needs that workdir "
                               f"(it has {policy.workdir!r})")
    elif policy.workdir is not None:
        raise SandboxError("restore_interactive(): the checkpoint has no copy-on-write branch to "
                           "restore on this sandbox's workdir")
    plan = compile_plan(policy, cp.command)
    env = dict(cp.environ)
    env.update(policy.env)
    memfd = None
    extra: tuple[int, ...] = ()
    if cp.app_state is not None:
        memfd = os.memfd_create("sandlock-app-state", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        view = memoryview(cp.app_state)
        while view:
            view = view[os.write(memfd, view):]
        os.lseek(memfd, 0, os.SEEK_SET)
        import fcntl
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        env[APP_STATE_ENV] = "3"
        extra = (memfd,)
    else:
        env.pop(APP_STATE_ENV, None)
    enc = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    plan = dataclasses.replace(plan, envp=enc, cwd=os.fsencode(cp.cwd),
                               exec_candidates=_exec_candidates(cp.command[0], env.get("PATH")))
    seed = cp._seed if cp.workdir is not None else None
    try:
        run = sb._start(plan, (0, 1, 2), None, extra_fds=extra, branch_seed=seed)
    finally:
        if memfd is not None:
            os.close(memfd)
    try:
        run.read_pid()
    except BaseException:
        sb._finish(run)
        raise
    sb._spawned = Process(sb, run, None, None, None)
    return cp.skipped_fds
