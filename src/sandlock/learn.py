"""`sandlock learn`: a profile from what a command did in one observed run.

The learning run (`observe`) is NOT a confinement: the command may read
every file the user can (`/`), reach the whole network and bind any port;
run it only on code you would run unsandboxed anyway. What it writes goes
nowhere: the current directory is a copy-on-write workdir that is always
aborted, TMPDIR is a private directory removed afterwards, the harmless
devices are writable, and every other write is refused (and recorded).
The supervisor records each path the command opens, executes, lists,
creates or removes, each TCP connect and UDP send, each TCP bind
(supervisor/learning.py).

`synthesize` turns those records into the smallest profile under which
`sandlock run --profile-file FILE -- CMD` succeeds. A profile adds to
`sandlock run`'s default policy, so what that policy always grants (the
system directories, the running Python, /proc, the harmless devices, a
private TMPDIR) is left out. Files are granted as files. Directories are
granted only where Landlock needs them: a directory that was listed, or
the nearest existing parent of an entry that was created or removed
(Landlock grants a directory with its whole tree). Many files read in one
directory collapse to the directory, but never `/`, a top-level
directory, a sensitive tree (SENSITIVE), a home directory or anything
holding one, a directory named like a credentials store or holding one
(SECRET_NAMES), nor one holding a path the default policy denies: each
collapse is reported with what it newly grants. A directory grant the
run needed but that is one of those is not written: the note says which
flag would add it. Paths the default policy denies (/etc/shadow, ...)
are never written either, nor the writes the learning run refused
(outside the current directory and TMPDIR): the command succeeded
without them, and the note names them.

Not learned: stat-like probes (Landlock does not gate them); what the
kernel opens itself (a script's interpreter, an ELF loader: the default
policy or the command's install tree covers them); host names (the
profile names the addresses connected to); UDP connects to port 0 or to
an address the command also connected to over TCP (glibc's
address-selection probes: they connect without sending and tolerate a
refusal; other UDP connects are kept, since sends on a connected socket
are not observed).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass, field

from . import cli as _cli
from . import protocol
from .exceptions import PolicyError
from .policy.model import BranchAction

# Never a directory grant by collapsing (exactly these; their subtrees are
# judged one by one: /usr/share/foo is fine, /etc/ssl is not).
SENSITIVE = ("/", "/etc", "/home", "/root", "/proc", "/sys", "/dev", "/var", "/run", "/boot",
             "/tmp", "/var/tmp", "/var/lib", "/var/log", "/var/run", "/run/secrets",
             "/dev/shm", "/etc/ssl", "/etc/pki", "/mnt", "/media", "/srv", "/opt", "/usr")
# Trees where nothing is ever collapsed (their files are per-boot or per-process).
NO_COLLAPSE_UNDER = ("/proc", "/sys", "/dev", "/run")
# Credential stores: never a directory grant that is one, lies in one, or holds one.
SECRET_NAMES = (".ssh", ".aws", ".gnupg", ".kube", ".docker", ".password-store", ".azure",
                ".gcloud", ".config", "keyrings", ".netrc", ".pgpass", ".git-credentials",
                "secrets", ".vault-token")
COLLAPSE_AT = 8       # files read in one directory before it is granted whole
SHOWN_NEW = 5         # names shown of what a collapse newly grants


@dataclass
class Observation:
    """What one learning run saw (supervisor/learning.py's records)."""
    records: list[tuple[str, str]]
    more: int = 0            # records past the supervisor's bound
    missed: int = 0          # calls that could not be observed
    workdir: str = ""        # the run's copy-on-write workdir (its cwd); "": not known
    tmpdir: str = ""         # the run's private TMPDIR (gone now)
    writable: tuple[str, ...] = ()  # the files the run could write outside both (devices)


@dataclass
class Learned:
    """A synthesized profile: `data` (sections of keys, as profiles.dump_toml
    takes) and `notes` (collapses, paths left out and why)."""
    data: dict
    notes: list[str] = field(default_factory=list)

    def to_toml(self) -> str:
        head = ["# Learned by `sandlock learn` from one run. It adds to `sandlock run`'s",
                "# default policy (system directories, Python, /proc, TMPDIR are not listed).",
                "# Review it before use."]
        head += [f"# note: {n}" for n in self.notes]
        from . import profiles
        return "\n".join(head) + "\n\n" + profiles.dump_toml(self.data)


# -- the learning run ----------------------------------------------------------------------

def observe(cmd: list[str], timeout: float | None = None, stdio=(None, 1, 2)):
    """Run `cmd` once, observed (see the module docstring: not a
    confinement). Returns (Result, Observation). Nothing it writes stays."""
    from .plan import compile_plan
    from .sandbox import Sandbox, _check_timeout, _collect, _result
    _check_timeout(timeout)
    cwd = os.path.realpath(os.getcwd())
    if cwd == "/":
        raise PolicyError("learn: run it from the command's working directory, not / "
                          "(the current directory is where its writes are caught)")
    parent = _temp_parent(cwd)
    storage = _storage(cwd, parent)
    tmpdir = tempfile.mkdtemp(prefix="sandlock-learn-", dir=parent)
    null = None
    try:
        devices = [p for p in (*_cli.DEFAULT_DEVICES, "/dev/tty") if os.path.exists(p)]
        sb = Sandbox(fs_readable=["/"], fs_writable=[*devices, tmpdir], workdir=cwd,
                     fs_storage=storage, on_exit=BranchAction.ABORT, on_error=BranchAction.ABORT,
                     net_allow=["*"], net_allow_bind=["*"], env={"TMPDIR": tmpdir},
                     max_processes=1024)
        policy = dataclasses.replace(sb._policy(), learn=True)
        plan = compile_plan(policy, cmd)
        stdin = stdio[0]
        if stdin is None:
            stdin = null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        from . import launch
        launch.use_local_server()
        run = sb._start(plan, (stdin, stdio[1], stdio[2]), timeout, new_pgrp=False)
        try:
            _collect(run, None, None, timeout)
        except BaseException:
            run.send(protocol.Cmd.KILL)
            raise
        finally:
            sb._finish(run)
        finished = run.result
        result = sb._settle(run, _result(finished, b"", b""))
    finally:
        if null is not None:
            os.close(null)
        shutil.rmtree(tmpdir, ignore_errors=True)
    seen = Observation([], workdir=cwd, tmpdir=tmpdir, writable=tuple(devices))
    if finished is not None:
        seen = Observation(list(finished.learned), finished.learned_more, finished.learned_missed,
                           cwd, tmpdir, tuple(devices))
    return result, seen


def _overlap(a: str, b: str) -> bool:
    return _under(a, b) or _under(b, a)


def _temp_parent(cwd: str) -> str:
    """Where the learning run's TMPDIR goes: a temporary directory that
    neither lies in nor holds the current directory (the workdir, written
    only through its copy-on-write layer)."""
    for d in (tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"):
        real = os.path.realpath(d)
        if os.path.isdir(real) and os.access(real, os.W_OK | os.X_OK) and not _overlap(real, cwd):
            return real
    raise PolicyError(f"learn: no temporary directory outside {cwd} (set TMPDIR to one)")


def _storage(cwd: str, parent: str) -> str | None:
    """The copy-on-write storage: the default one, unless it overlaps the
    current directory (learning in /tmp): then a private one beside TMPDIR."""
    from .cow import storage
    from .exceptions import BranchError
    if not _overlap(os.path.realpath(storage.default_base()), cwd):
        return None
    base = os.path.join(parent, f"sandlock-cow-{os.geteuid()}")
    try:
        storage.make_private_dir(base)  # ours, 0700: never one another user made
    except BranchError as e:
        raise PolicyError(f"learn: {e}") from None
    return base


# -- what is sensitive ---------------------------------------------------------------------

def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def _homes() -> set[str]:
    from .fsview import home_dirs
    homes = set(home_dirs())
    try:
        import pwd
        homes |= {os.path.realpath(e.pw_dir) for e in pwd.getpwall() if e.pw_dir.startswith("/")}
    except (ImportError, OSError):
        pass
    return {h for h in homes if h != "/"}


def unsafe_directory(d: str, homes: set[str] | None = None) -> str | None:
    """Why directory `d` must never be granted whole (by a collapse, or as
    the parent of what a command created), or None."""
    homes = _homes() if homes is None else homes
    if d == "/" or d.count("/") == 1:
        return "/" if d == "/" else "a top-level directory"
    if d in SENSITIVE:
        return "a sensitive tree"
    if any(_under(d, t) for t in NO_COLLAPSE_UNDER):
        return f"inside {next(t for t in NO_COLLAPSE_UNDER if _under(d, t))}"
    if any(d == h or _under(h, d) for h in homes) or os.path.dirname(d) == "/home":
        return "a home directory" if d in homes or os.path.dirname(d) == "/home" \
            else "a directory holding a home directory"
    parts = d.split("/")
    if any(p in SECRET_NAMES for p in parts):
        return "a credentials store, or inside one"
    for name in SECRET_NAMES:
        if os.path.lexists(os.path.join(d, name)):
            return f"a directory holding {name}"
    for denied in _cli.DEFAULT_DENIED:
        if _under(denied, d) or _under(d, denied):
            return f"holds {denied}, which the default policy denies" if _under(denied, d) \
                else f"inside {denied}, which the default policy denies"
    return None


def _default_covered(path: str, tmpdir: str, write: bool = False) -> bool:
    """Granted by `sandlock run`'s default policy whatever the run (for
    writing, with `write`): not written in the profile."""
    if path in _cli.DEFAULT_DEVICES or (bool(tmpdir) and _under(path, tmpdir)):
        return True
    if write:
        return False
    if any(_under(path, d) for d in _cli.DEFAULT_READABLE) or _under(path, "/proc"):
        return not any(_under(path, d) for d in _cli.DEFAULT_DENIED)
    return any(_under(path, r) for r in _cli._python_roots() if r != "/")


# -- synthesis -----------------------------------------------------------------------------

def synthesize(seen: Observation, cmd: list[str] | None = None,
               collapse_at: int = COLLAPSE_AT) -> Learned:
    """The smallest profile for what `seen` records (see the module docstring)."""
    notes: list[str] = []
    homes = _homes()
    reads: set[str] = set()
    writes: set[str] = set()
    dirs_read: set[str] = set()     # directory grants needed (listed)
    dirs_write: set[str] = set()    # directory grants needed (entries made or removed)
    refused: set[str] = set()       # writes the learning run could not make

    def keep(path: str, follow: bool) -> str | None:
        """`path` canonical, or None when it is not for the profile. An
        entry made or removed is itself the target, not what a symlink
        there points to: only its parent is canonicalised then (F2)."""
        if not path.startswith("/") or _under(path, "/proc") or _under(path, "/dev/pts") \
                or (seen.tmpdir and _under(path, seen.tmpdir)):
            return None
        real = os.path.realpath(path) if follow else \
            os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        try:
            real.encode("utf-8")
        except UnicodeEncodeError:
            notes.append(f"not granted: {real!r} (not UTF-8: a profile cannot name it)")
            return None
        denied = next((d for d in _cli.DEFAULT_DENIED if _under(real, d)), None)
        if denied is not None:
            notes.append(f"not granted: {real} (the default policy denies {denied}; -r {denied} "
                         "lifts that denial, if it is really needed)")
            return None
        return real

    def parent_dir(path: str) -> str:
        d = os.path.dirname(path)
        while d != "/" and not os.path.isdir(d):
            d = os.path.dirname(d)
        return d

    for kind, target in seen.records:
        if kind in ("connect", "send", "udp-connect", "bind"):
            continue
        path = keep(target, follow=kind not in ("create", "remove"))
        if path is None:
            continue
        exists = os.path.lexists(path)
        if kind in ("write", "create", "remove") and seen.workdir \
                and not _under(path, seen.workdir) and path not in seen.writable:
            refused.add(path)  # outside the workdir: refused while learning, not granted
            continue
        if kind in ("read", "exec", "list"):
            if not exists:
                continue  # made by the run (its writes say where), or a failed lookup
            if os.path.isdir(path):
                dirs_read.add(path)
            else:
                reads.add(path)
        elif kind == "write":
            if exists and not os.path.isdir(path):
                writes.add(path)
            else:
                dirs_write.add(parent_dir(path) if not exists else path)
        elif kind in ("create", "remove"):
            dirs_write.add(parent_dir(path))
    # a script's #! interpreter: the kernel opens it, unobserved
    for kind, target in seen.records:
        if kind == "exec" and os.path.isfile(target):
            interp = _cli._shebang(target)
            if interp and os.path.exists(interp):
                reads.add(os.path.realpath(interp))

    read_grants: set[str] = set()
    write_grants: set[str] = set()
    for d in sorted(dirs_write):
        why = unsafe_directory(d, homes)
        if why and not _default_covered(d, seen.tmpdir, write=True):
            notes.append(f"not granted: write on {d} ({why}); the command created or removed "
                         f"entries in it: add -w {d} yourself if you mean it")
        elif not _default_covered(d, seen.tmpdir, write=True):
            write_grants.add(d)
            notes.append(f"write on {d}: the command created or removed entries in it "
                         "(a directory grant covers everything it holds)")
    for d in sorted(dirs_read):
        if _default_covered(d, seen.tmpdir) or any(_under(d, w) for w in write_grants):
            continue
        why = unsafe_directory(d, homes)
        if why:
            notes.append(f"not granted: read on {d} ({why}); the command listed or opened it: "
                         f"add -r {d} yourself if you mean it")
        else:
            read_grants.add(d)
    for f in writes:
        if not _default_covered(f, seen.tmpdir, write=True):
            write_grants.add(f)
    files = {f for f in reads if not _default_covered(f, seen.tmpdir)}
    # collapse: many files read in one safe directory → the directory
    by_dir: dict[str, set[str]] = {}
    for f in files:
        by_dir.setdefault(os.path.dirname(f), set()).add(f)
    for d, members in sorted(by_dir.items()):
        if len(members) < collapse_at or any(_under(d, g) for g in read_grants | write_grants):
            continue
        why = unsafe_directory(d, homes)
        if why:
            notes.append(f"not collapsed: {len(members)} files in {d} ({why}): listed one by one")
            continue
        files -= members
        read_grants.add(d)
        notes.append(f"collapsed {len(members)} files read in {d} into the directory: "
                     f"{_newly_granted(d, members)}")
    read_grants |= files
    # nothing inside something already granted
    write_list = _outermost(write_grants)
    read_list = [r for r in _outermost(read_grants) if not any(_under(r, w) for w in write_list)]
    never = [p for p in read_list + write_list if p == "/"]
    if never:  # unreachable by construction; checked because it must never happen
        raise AssertionError("learn: a profile granting / was synthesized")
    for path in sorted(refused)[:SHOWN_NEW]:
        notes.append(f"not granted: the write to {path} was refused while learning (only the "
                     f"current directory and TMPDIR take writes then): add -w yourself if needed")
    if len(refused) > SHOWN_NEW:
        notes.append(f"... and {len(refused) - SHOWN_NEW} more writes refused while learning")

    network = _network(seen.records, notes)
    data: dict[str, dict] = {}
    if cmd:
        data["program"] = {"exec": cmd[0], "args": list(cmd[1:])} if len(cmd) > 1 \
            else {"exec": cmd[0]}
        if seen.workdir:
            data["program"]["cwd"] = seen.workdir  # its relative paths mean this directory
    fs: dict[str, list] = {}
    if read_list:
        fs["read"] = read_list
    if write_list:
        fs["write"] = write_list
    if fs:
        data["filesystem"] = fs
    if network:
        data["network"] = network
    if seen.more:
        notes.append(f"{seen.more} more records past the observer's bound: the profile may be "
                     "incomplete")
    if seen.missed:
        notes.append(f"{seen.missed} calls could not be observed: the profile may be incomplete")
    return Learned(data, list(dict.fromkeys(_one_line(n) for n in notes)))


def _one_line(text: str) -> str:
    """A note as one printable line: the paths in it are the command's (it
    may name a file `x\n[network]\nallow = ["*"]`), and a note is written
    as a `#` comment of the profile: a line break would end the comment and
    add keys to the profile. Control characters and lone surrogates are
    written escaped."""
    return "".join(c if c == "\t" or (c >= " " and c != "\x7f" and not "\ud800" <= c <= "\udfff")
                   else repr(c)[1:-1] for c in text)


def _newly_granted(d: str, members: set[str]) -> str:
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return "its other entries could not be listed"
    seen_names = {os.path.basename(m) for m in members}
    new = [n + ("/" if os.path.isdir(os.path.join(d, n)) else "") for n in names
           if n not in seen_names]
    if not new:
        return "grants nothing more (every entry was read)"
    shown = ", ".join(new[:SHOWN_NEW]) + (f", … ({len(new) - SHOWN_NEW} more)"
                                           if len(new) > SHOWN_NEW else "")
    return f"newly grants {len(new)} entries not seen: {shown} (directories with all they hold)"


def _outermost(paths: set[str]) -> list[str]:
    out: list[str] = []
    for p in sorted(paths, key=lambda x: (x.count("/"), x)):
        if not any(_under(p, q) for q in out):
            out.append(p)
    return sorted(out)


def _network(records, notes: list[str]) -> dict:
    allow: list[str] = []
    binds: list[int] = []
    tcp = {t[len("tcp://"):] for k, t in records if k == "connect"}
    for kind, target in records:
        if kind in ("connect", "send") and target not in allow:
            allow.append(target)
        elif kind == "udp-connect" and target not in allow:
            # glibc's getaddrinfo sorts addresses by connecting a UDP socket to
            # each, sending nothing (F3): to port 0 when no service was asked
            # for, else just before the TCP connect to the same address. It
            # tolerates a refusal. Other UDP connects are kept: sends on a
            # connected socket (send, write) are not observed.
            hostport = target[len("udp://"):]
            if hostport.endswith(":0") or hostport in tcp:
                notes.append(f"not granted: {target} (a UDP connect like glibc's "
                             "address-selection probe, which tolerates a refusal)")
            else:
                allow.append(target)
        elif kind == "bind" and int(target) not in binds:
            binds.append(int(target))
    out: dict = {}
    if allow:
        out["allow"] = sorted(allow)
    if binds:
        out["allow_bind"] = sorted(binds)
    return out


# -- merging and writing -------------------------------------------------------------------

_UNION = {("filesystem", "read"), ("filesystem", "write"), ("network", "allow"),
          ("network", "allow_bind")}


def merge(old: dict, new: dict) -> dict:
    """The union of two profiles' data: list keys that grant are united,
    every other key of `old` is kept ([program] included), `new` adds
    what `old` lacks."""
    out = {s: dict(t) for s, t in old.items()}
    for section, table in new.items():
        mine = out.setdefault(section, {})
        for key, value in table.items():
            if (section, key) in _UNION and key in mine:
                mine[key] = list(mine[key]) + [v for v in value if v not in mine[key]]
            elif key not in mine:
                mine[key] = value
    fs = out.get("filesystem", {})
    if "read" in fs and "write" in fs:  # a writable path is readable already
        fs["read"] = [r for r in fs["read"] if not any(_under(r, w) for w in fs["write"])]
        if not fs["read"]:
            del fs["read"]
    return out


def write_profile(path: str, text: str) -> None:
    """Write `text` to `path`, replacing it at once (a temporary file in the
    same directory, renamed over it): a reader never sees half a profile."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".sandlock-learn-", suffix=".toml", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -- the command line ----------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser(
        "learn", help="run a command observed and write the profile it needs", allow_abbrev=False,
        usage="sandlock learn [-o FILE] [--merge FILE] [--timeout S] [-i] -- CMD [ARGS...]",
        description="Runs CMD once, observed: it may read every file you can and reach the "
                    "network (this is not a confinement: only run what you would run anyway); "
                    "its writes go to a throwaway copy-on-write layer over the current directory "
                    "and a private TMPDIR, so nothing changes on disk. Then writes the smallest "
                    "profile under which `sandlock run --profile-file FILE -- CMD` succeeds. "
                    "A command that fails writes nothing; a timed-out one writes what was seen.")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="where to write the profile (default: the --merge file, else stdout)")
    p.add_argument("--merge", metavar="FILE", help="unite with this existing profile")
    p.add_argument("-t", "--timeout", type=_cli._seconds, metavar="SECONDS",
                   help="stop the command after this long and write a partial profile")
    p.add_argument("-i", "--interactive", action="store_true",
                   help="share the terminal's stdin (without it stdin is /dev/null)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def command(args) -> int:
    """sandlock learn: exit status the command's (124 after --timeout)."""
    import signal
    import sys

    from .sandbox import ExitReason, exit_status
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        return _cli._fail("learn: no command given (usage: sandlock learn [-o FILE] -- CMD [ARGS...])")
    from . import profiles   # here, not at import: `sandlock run` builds this parser too (~30 ms)
    old = profiles.read_profile_file(args.merge).data if args.merge else None
    out = args.output or args.merge
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    stdin = 0 if args.interactive else None
    result, seen = observe(cmd, args.timeout, (stdin, 1, 2))
    if result.reason is None:
        return _cli._fail(f"learn: {result.error or 'the sandbox failed'}: no profile written")
    timed_out = result.reason == ExitReason.TIMEOUT
    status = _cli.EXIT_TIMEOUT if timed_out else exit_status(result)
    if status != 0 and not timed_out:
        why = f"the command failed ({result.error})" if result.error else \
            f"the command exited with status {status}"
        print(f"sandlock: learn: {why}: no profile written", file=sys.stderr)
        return status
    learned = synthesize(seen, cmd)
    if timed_out:
        learned.notes.insert(0, f"partial: the command was stopped after {args.timeout:g} s")
    if old is not None:
        learned.data = merge(old, learned.data)
    text = learned.to_toml()
    profiles.parse_profile(text, out or "<learned profile>")  # it must load (never write one that does not)
    for note in learned.notes:
        print(f"sandlock: learn: {note}", file=sys.stderr)
    if out:
        write_profile(out, text)
        what = "a partial profile" if timed_out else "the profile"
        print(f"sandlock: learn: wrote {what} to {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if timed_out:
        print(f"sandlock: learn: timed out after {args.timeout:g} s", file=sys.stderr)
    return status
