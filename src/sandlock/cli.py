"""The command line: `sandlock run`, `sandlock check`.

Flags map 1:1 onto Sandbox fields. With no filesystem flag (and no profile),
`run` applies DEFAULT_POLICY below so ordinary programs start.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile

from .exceptions import SandlockError

# The default policy of `sandlock run` when no filesystem flag is given:
# system directories read-only, the Python running sandlock readable, a
# private writable temporary directory (TMPDIR), a few harmless devices,
# no network, and the host's credential files denied.
DEFAULT_READABLE = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
DEFAULT_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
DEFAULT_DENIED = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-",
                  "/etc/sudoers", "/etc/sudoers.d", "/etc/ssh", "/etc/ssl/private")

EXIT_SANDBOX_ERROR = 125
EXIT_TIMEOUT = 124  # as timeout(1)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sandlock", description="Run a command in a lightweight Linux sandbox.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a command in a sandbox",
                       usage="sandlock run [flags] -- CMD [ARGS...]")
    a = r.add_argument
    a("-r", "--fs-read", action="append", default=[], metavar="PATH", help="readable path (repeatable)")
    a("-w", "--fs-write", action="append", default=[], metavar="PATH", help="writable path (repeatable)")
    a("--fs-deny", action="append", default=[], metavar="PATH", help="denied path, even inside a readable tree")
    a("--workdir", metavar="DIR")
    a("--dry-run", action="store_true")
    a("--chroot", metavar="DIR")
    a("--fs-mount", action="append", default=[], metavar="V:H[:ro]")
    a("--cwd", metavar="DIR", help="working directory of the command")
    a("--net-allow", action="append", default=[], metavar="RULE")
    a("--net-deny", action="append", default=[], metavar="RULE")
    a("--net-allow-bind", action="append", default=[], metavar="PORTS",
      help="TCP ports to allow bind on: 8080, 9000-9005, *")
    a("--net-deny-bind", action="append", default=[], metavar="PORTS")
    a("--port-remap", action="store_true")
    a("--http-allow", action="append", default=[], metavar="RULE")
    a("--http-deny", action="append", default=[], metavar="RULE")
    a("-m", "--max-memory", metavar="SIZE")
    a("-P", "--max-processes", type=_int("--max-processes"), metavar="N")
    a("--max-open-files", type=_int("--max-open-files"), metavar="N")
    a("-c", "--max-cpu", type=_int("--max-cpu"), metavar="PERCENT")
    a("--cpu-cores", metavar="LIST", help="comma-separated CPU numbers")
    a("--num-cpus", type=_int("--num-cpus"), metavar="N")
    a("--random-seed", type=_int("--random-seed"), metavar="N")
    a("--time-start", metavar="TIME")
    a("--clean-env", action="store_true", help="start from a minimal environment")
    a("--env", action="append", default=[], metavar="K=V")
    a("--no-supervisor", action="store_true")
    a("-t", "--timeout", type=float, metavar="SECONDS")
    a("-p", "--profile", metavar="NAME")
    a("--name", metavar="NAME")
    a("-i", "--interactive", action="store_true", help="share the terminal (stdin) with the command")
    a("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    sub.add_parser("check", help="show which kernel protections are available")
    return p


def _int(flag):
    def conv(text):
        try:
            return int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number, not {text!r}") from None
    return conv


def _fail(msg: str) -> int:
    print(f"sandlock: {msg}", file=sys.stderr)
    return EXIT_SANDBOX_ERROR


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return check()
        return run(args)
    except NotImplementedError as e:
        return _fail(str(e))
    except SandlockError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return 130


def _sandbox_kwargs(args, tmpdir: str | None) -> dict:
    if args.profile:
        raise NotImplementedError("--profile: profiles are not implemented yet in this version of sandlock")
    env = {}
    for item in args.env:
        if "=" not in item:
            raise _policy_error(f"--env: expected K=V, got {item!r}")
        k, v = item.split("=", 1)
        env[k] = v
    fs_read, fs_write, fs_deny = list(args.fs_read), list(args.fs_write), list(args.fs_deny)
    if not (fs_read or fs_write or fs_deny):
        fs_read = [p for p in DEFAULT_READABLE if os.path.exists(p)]
        fs_read += _python_roots() + _command_root(args.cmd, env) + _cwd_grant(args.cwd)
        fs_write = [p for p in DEFAULT_DEVICES if os.path.exists(p)]
        fs_deny = list(DEFAULT_DENIED)
        if tmpdir:
            fs_write.append(tmpdir)
            env.setdefault("TMPDIR", tmpdir)
    mounts = {}
    for spec in args.fs_mount:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "ro"):
            raise _policy_error(f"--fs-mount: expected V:H[:ro], got {spec!r}")
        mounts[parts[0]] = parts[1]
    kw = dict(
        fs_readable=fs_read, fs_writable=fs_write, fs_denied=fs_deny,
        workdir=args.workdir, chroot=args.chroot, fs_mount=mounts, cwd=args.cwd,
        net_allow=args.net_allow, net_deny=args.net_deny,
        net_allow_bind=args.net_allow_bind, net_deny_bind=args.net_deny_bind,
        port_remap=args.port_remap, http_allow=args.http_allow, http_deny=args.http_deny,
        max_memory=args.max_memory, max_open_files=args.max_open_files, max_cpu=args.max_cpu,
        cpu_cores=_cpu_list(args.cpu_cores), num_cpus=args.num_cpus,
        random_seed=args.random_seed, time_start=args.time_start,
        clean_env=args.clean_env, env=env, no_supervisor=args.no_supervisor, name=args.name,
    )
    if args.max_processes is not None:
        kw["max_processes"] = args.max_processes
    return kw


def _policy_error(msg):
    from .exceptions import PolicyError
    return PolicyError(msg)


def _cpu_list(text):
    if text is None:
        return None
    try:
        return [int(x, 10) for x in text.split(",") if x.strip()]
    except ValueError:
        raise _policy_error(f"--cpu-cores: expected comma-separated CPU numbers, got {text!r}") from None


def _python_roots() -> list[str]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return sorted(r for r in roots if r and os.path.isdir(r))


def _command_root(cmd, env) -> list[str]:
    """What the command needs to start when it lives outside the system
    directories: its install tree when it is a recognised one (a
    virtualenv, with pyvenv.cfg; a prefix with bin/python*), else the file
    alone; the same for a script's #! interpreter. Never a home directory
    or anything above one: a script in ~/work must not expose ~/.ssh."""
    if not cmd or cmd[0] == "--" and len(cmd) < 2:
        return []
    prog = cmd[1] if cmd[0] == "--" else cmd[0]
    found = shutil.which(prog, path=env.get("PATH", os.environ.get("PATH")))
    if not found:
        return []
    targets = {os.path.abspath(found), os.path.realpath(found)}
    interpreter = _shebang(found)
    if interpreter:
        targets |= {interpreter, os.path.realpath(interpreter)}
    out = set()
    for path in targets:
        if _covered_by_system(path):
            continue
        out.add(_install_tree(path) or path)
    return sorted(out)


def _cwd_grant(cwd: str | None) -> list[str]:
    """The command's working directory, readable, unless it is / or a home
    directory (or holds one): `sandlock run -- make` in a project works,
    `sandlock run` from ~ does not expose ~."""
    try:
        d = os.path.realpath(cwd or os.getcwd())
    except OSError:
        return []
    if d == "/" or any(h == d or h.startswith(d.rstrip("/") + "/") for h in _homes()):
        return []
    return [d]


_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/opt")


def _covered_by_system(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in _SYSTEM)


def _homes() -> set[str]:
    homes = {os.path.realpath(os.path.expanduser("~"))}
    try:
        import pwd
        homes.add(os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir))
    except (KeyError, ImportError):
        pass
    return {h for h in homes if h and h != "/"}


def _install_tree(path: str) -> str | None:
    """The virtualenv or Python prefix `path` lies in (at most three levels
    up), unless that tree is a home directory, holds one, or is /."""
    homes = _homes()
    d = os.path.dirname(path)
    for _level in range(3):
        if d in ("/", "/usr", "/usr/local") or any(h == d or h.startswith(d.rstrip("/") + "/")
                                                   for h in homes):
            return None
        if os.path.isfile(os.path.join(d, "pyvenv.cfg")) or \
                any(n.startswith("python") for n in _listdir(os.path.join(d, "bin"))):
            return d
        d = os.path.dirname(d)
    return None


def _listdir(d: str) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []


def _shebang(path: str) -> str | None:
    """The interpreter named on a script's #! line, if absolute."""
    try:
        with open(path, "rb") as f:
            line = f.readline(256)
    except OSError:
        return None
    if not line.startswith(b"#!"):
        return None
    parts = line[2:].split()
    if not parts or not parts[0].startswith(b"/"):
        return None
    return os.fsdecode(parts[0])


def run(args) -> int:
    from . import launch
    from .sandbox import Sandbox
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        return _fail("run: no command given (usage: sandlock run [flags] -- CMD [ARGS...])")
    if args.dry_run:
        raise NotImplementedError("--dry-run: not implemented yet in this version of sandlock")
    default_policy = not (args.fs_read or args.fs_write or args.fs_deny or args.profile)
    tmpdir = tempfile.mkdtemp(prefix="sandlock-") if default_policy else None
    try:
        sb = Sandbox(**_sandbox_kwargs(args, tmpdir))
        launch.use_local_server()
        # Like a shell running a foreground job: the terminal's Ctrl-C
        # reaches the command; this process waits for its status.
        for sig in (signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_IGN)
        stdin = 0 if args.interactive else os.open(os.devnull, os.O_RDONLY)
        try:
            result = sb._run_with_stdio(cmd, (stdin, 1, 2), args.timeout)
        finally:
            if stdin:
                os.close(stdin)
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    from .sandbox import ExitReason, exit_status
    if result.reason is None:
        return _fail(result.error or "the sandbox failed")
    if result.reason == ExitReason.TIMEOUT:
        print(f"sandlock: timed out after {args.timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    if result.error:
        print(f"sandlock: {result.error}", file=sys.stderr)  # e.g. a limit enforced
    return exit_status(result)


def check() -> int:
    """Print the kernel's support for each protection; exit 1 if sandlock
    cannot run here."""
    from .support import probe
    rows, ok = probe()
    width = max(len(name) for name, _, _ in rows)
    for name, available, detail in rows:
        print(f"{name:<{width}}  {'yes' if available else 'NO '}  {detail}")
    print("sandlock can run here" if ok else "sandlock cannot run here: see the NO rows above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
