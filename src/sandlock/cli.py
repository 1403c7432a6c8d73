"""The command line: `sandlock run`, `sandlock learn`, `sandlock check`, `sandlock profile`,
`sandlock ps`, `sandlock inspect`, `sandlock kill`, `sandlock --version`.

`run` flags map onto Sandbox fields. `-r`/`-w`/`--fs-deny` add to the
default policy below (`--no-default-policy` starts from nothing instead).
A profile (`-p NAME`, `--profile-file PATH`; see sandlock.profiles) adds to
the default policy too; flags that take a list add to the profile's, the
others replace its value.

Exit status of `sandlock run`: the command's own (128+N when killed by
signal N); 127 when the command cannot be executed (not found, or not
readable in the sandbox: the message names the path and the flag that
would grant it); 124 after `-t/--timeout`; 125 for any failure of
sandlock itself, usage errors included, always as one `sandlock: ...` line.
"""
from __future__ import annotations

import argparse
import os
import sys

from ._version import __version__
from .exceptions import SandlockError

# The default policy of `sandlock run`: system directories read-only, the
# Python running sandlock readable, /proc (virtualized by the supervisor)
# readable, a private writable temporary directory (TMPDIR), a few harmless
# devices, no network, the host's credential files denied. Plus, computed
# per run: the command's install tree and the working directory (see
# _command_root and _cwd_grant).
DEFAULT_READABLE = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
DEFAULT_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
DEFAULT_DENIED = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-",
                  "/etc/sudoers", "/etc/sudoers.d", "/etc/ssh", "/etc/ssl/private")
PROC = "/proc"

EXIT_SANDBOX_ERROR = 125  # as timeout(1), env(1), nice(1) for their own failures
EXIT_TIMEOUT = 124        # as timeout(1)

# The reference's flags whose features this sandlock does not have yet:
# accepted so that using one fails with one clear line, hidden from --help.
# flag -> (Sandbox field or None, takes a value)
PENDING_FLAGS: dict[str, tuple[str | None, bool]] = {
    "--gpu": ("gpu_devices", True),
}

# Sandbox field -> the flag that sets it, to word PolicyError messages.
FIELD_FLAGS = {
    "fs_readable": "-r/--fs-read", "fs_writable": "-w/--fs-write", "fs_denied": "--fs-deny",
    "cwd": "--cwd", "net_allow": "--net-allow", "net_deny": "--net-deny",
    "net_allow_bind": "--net-allow-bind", "net_deny_bind": "--net-deny-bind",
    "max_memory": "-m/--max-memory", "max_processes": "-P/--max-processes",
    "max_open_files": "--max-open-files", "max_cpu": "-c/--cpu", "cpu_cores": "--cpu-cores",
    "num_cpus": "--num-cpus", "random_seed": "--random-seed", "time_start": "--time-start",
    "deterministic_dirs": "--deterministic-dirs", "extra_deny_syscalls": "--extra-deny-syscall",
    "extra_allow_syscalls": "--extra-allow-syscall", "env": "-e/--env", "name": "--name",
    "timeout": "-t/--timeout", "no_supervisor": "--no-supervisor",
    "workdir": "--workdir", "fs_storage": "--fs-storage", "max_disk": "--max-disk",
    "on_exit": "--on-exit", "on_error": "--on-error", "uid": "--user", "gid": "--user",
    "http_allow": "--http-allow", "http_deny": "--http-deny", "http_ports": "--http-port",
    "http_ca": "--http-ca", "http_key": "--http-key", "http_inject_ca": "--http-inject-ca",
    "http_ca_out": "--http-ca-out", "http_credentials": "--credential", "http_auth": "--http-auth",
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors that exit 125."""

    def error(self, message: str):
        message = " ".join(message.split())
        sys.stderr.write(f"sandlock: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_SANDBOX_ERROR)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sandlock", allow_abbrev=False,
                description="Run a command in a lightweight Linux sandbox "
                            "(see 'sandlock run --help' for the default policy).")
    p.add_argument("--version", action="version", version=f"sandlock {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,learn,check,profile,ps,inspect,kill}")
    r = sub.add_parser("run", help="run a command in a sandbox", allow_abbrev=False,
                       usage="sandlock run [flags] [-p NAME | --profile-file PATH] -- CMD [ARGS...]",
                       description="Run CMD in a sandbox. Flags map onto the Sandbox fields;\n"
                                   "-r/-w/--fs-deny add to the default policy shown below.\n"
                                   "A profile adds to it too; flags that take a list add to the\n"
                                   "profile's, the others replace its value.",
                       epilog=_policy_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    a = r.add_argument
    prof = r.add_argument_group("profile (see 'sandlock profile list')")
    one = prof.add_mutually_exclusive_group()
    one.add_argument("-p", "--profile", metavar="NAME",
                     help="a named profile: $XDG_CONFIG_HOME/sandlock/profiles/NAME.toml or a built-in")
    one.add_argument("--profile-file", metavar="PATH", help="the profile in this TOML file")
    fs = r.add_argument_group("filesystem")
    fs.add_argument("-r", "--fs-read", action="append", default=[], metavar="PATH",
                    help="also readable (repeatable; relative to the current directory)")
    fs.add_argument("-w", "--fs-write", action="append", default=[], metavar="PATH",
                    help="also writable, e.g. -w . (repeatable)")
    fs.add_argument("--fs-deny", action="append", default=[], metavar="PATH",
                    help="denied, even inside a readable tree (repeatable)")
    fs.add_argument("--chroot", metavar="DIR",
                    help="DIR is the command's /: paths in -r/-w/--fs-deny/--cwd are then inside it")
    fs.add_argument("--image", metavar="REF",
                    help="run in a local OCI image (layout directory or archive; no registry): "
                         "its rootfs as --chroot, its command when none is given; its writes go "
                         "to a copy-on-write branch of the rootfs, always discarded")
    fs.add_argument("--fs-mount", action="append", default=[], metavar="VIRTUAL:HOST[:ro]",
                    help="show host directory HOST at VIRTUAL inside --chroot (repeatable; :ro read-only)")
    fs.add_argument("--no-default-policy", action="store_true",
                    help="start from nothing: only the paths given with -r/-w are reachable")
    cow = r.add_argument_group("copy-on-write workdir")
    cow.add_argument("--workdir", metavar="DIR",
                     help="writes under DIR go to a private branch, applied when the command ends "
                          "(the command starts in DIR unless --cwd)")
    cow.add_argument("--on-exit", choices=("commit", "abort", "keep"),
                     help="the branch after exit status 0 (default commit)")
    cow.add_argument("--on-error", choices=("commit", "abort", "keep"),
                     help="the branch after any other end, a timeout included (default abort)")
    cow.add_argument("--dry-run", action="store_true",
                     help="run, print what would change under --workdir (or --image's rootfs), "
                          "change nothing")
    cow.add_argument("--max-disk", metavar="SIZE", help="bytes the branch may hold, e.g. 100M")
    cow.add_argument("--fs-storage", metavar="DIR", help="where branches are kept")
    net = r.add_argument_group("network (default: none)")
    net.add_argument("--net-allow", action="append", default=[], metavar="RULE",
                     help="[tcp://|udp://|icmp://]HOST[:PORTS], HOST a name, IP, [IPv6], CIDR or *")
    net.add_argument("--net-deny", action="append", default=[], metavar="RULE",
                     help="allow the network except these IPs/CIDRs[:PORTS]")
    net.add_argument("--net-allow-bind", action="append", default=[], metavar="PORTS",
                     help="TCP ports the command may bind: 8080, 9000-9005, *")
    net.add_argument("--net-deny-bind", action="append", default=[], metavar="PORTS",
                     help="TCP ports it may not bind (all others allowed)")
    net.add_argument("--port-remap", action="store_true",
                     help="a private port space: a taken port is remapped to a free one")
    net.add_argument("--http-allow", action="append", default=[], metavar="RULE",
                     help="'METHOD HOST[/PATH]' (* wildcards, *.example.com): HTTP requests to "
                          "the --http-port ports must match one (repeatable)")
    net.add_argument("--http-deny", action="append", default=[], metavar="RULE",
                     help="'METHOD HOST[/PATH]': HTTP requests refused (beats --http-allow)")
    net.add_argument("--http-port", action="append", default=[], type=_int, metavar="PORT",
                     help="a TCP port whose HTTP requests the rules check (default 80, and 443 "
                          "with HTTPS interception; repeatable)")
    net.add_argument("--http-ca", metavar="PEM",
                     help="intercept HTTPS with this CA certificate (with --http-key)")
    net.add_argument("--http-key", metavar="PEM", help="the --http-ca certificate's private key")
    net.add_argument("--http-inject-ca", action="append", default=[], metavar="PATH",
                     help="a trust bundle the sandbox sees with the interception CA appended "
                          "(an ephemeral CA without --http-ca; repeatable)")
    net.add_argument("--http-ca-out", metavar="PATH",
                     help="write the interception CA's certificate (PEM, no key) there")
    net.add_argument("--credential", action="append", default=[], metavar="NAME=SOURCE",
                     help="a secret the HTTP proxy injects (never seen by the command): "
                          "NAME=env:VAR, NAME=file:PATH or NAME=fd:N (repeatable)")
    net.add_argument("--http-auth", action="append", default=[], metavar="RULE",
                     help="'METHOD HOST[/PATH] AUTHSPEC CRED [replace|add-only] [cleartext]': "
                          "inject credential CRED into matching requests; AUTHSPEC is bearer, "
                          "basic:USER, header:NAME or query:PARAM; HTTPS only unless "
                          "'cleartext' (repeatable)")
    net.add_argument("--http-log", metavar="FILE",
                     help="write the HTTP proxy's request log there, one JSON object a line")
    lim = r.add_argument_group("limits")
    lim.add_argument("-m", "--max-memory", metavar="SIZE", help="e.g. 512M, 1.5G")
    lim.add_argument("-P", "--max-processes", type=_int, metavar="N",
                     help="peak concurrent processes (default 64)")
    lim.add_argument("--max-open-files", type=_int, metavar="N")
    lim.add_argument("-c", "--cpu", "--max-cpu", dest="max_cpu", type=_int,
                     metavar="PERCENT", help="CPU time, percent of one core")
    lim.add_argument("--cpu-cores", metavar="LIST", help="CPUs to run on: 0,2,3")
    lim.add_argument("--num-cpus", type=_int, metavar="N",
                     help="CPUs the command sees (os.cpu_count, /proc/cpuinfo, affinity)")
    sc = r.add_argument_group("process")
    sc.add_argument("--extra-deny-syscall", action="append", default=[], metavar="NAME",
                    help="also deny this syscall or group (repeatable)")
    sc.add_argument("--extra-allow-syscall", action="append", default=[], metavar="GROUP",
                    help="allow a denied group, e.g. sysv_ipc (repeatable)")
    sc.add_argument("--no-coredump", action="store_true", help="no core dumps (RLIMIT_CORE 0)")
    sc.add_argument("--no-huge-pages", action="store_true", help="transparent huge pages off")
    sc.add_argument("--no-randomize-memory", action="store_true", help="ASLR off")
    dt = r.add_argument_group("deterministic runs")
    dt.add_argument("--random-seed", type=_int, metavar="N",
                    help="seed getrandom and /dev/urandom (0 .. 2**64-1)")
    dt.add_argument("--time-start", type=_time_start, metavar="TIME",
                    help="the wall clock starts here: ISO 8601 (2000-01-01T00:00:00Z) "
                         "or seconds since the epoch")
    dt.add_argument("--deterministic-dirs", action="store_true",
                    help="directory listings in byte order of the names")
    sc.add_argument("--clean-env", action="store_true", help="start from a minimal environment")
    sc.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                    help="set an environment variable (repeatable)")
    sc.add_argument("--cwd", metavar="DIR", help="working directory of the command")
    sc.add_argument("--user", metavar="UID:GID",
                    help="the ids the command sees (a user namespace maps yours onto them)")
    sc.add_argument("--no-supervisor", action="store_true",
                    help="Landlock and the deny filter only: no limits, no network rules, no /proc")
    sc.add_argument("-t", "--timeout", type=_seconds, metavar="SECONDS",
                    help="kill the command after SECONDS; exit 124")
    sc.add_argument("--name", metavar="NAME", help="name of the sandbox")
    sc.add_argument("-i", "--interactive", action="store_true",
                    help="share the terminal's stdin (without it, stdin is /dev/null)")
    for flag, (_field, takes_value) in PENDING_FLAGS.items():
        dest = "pending_" + flag[2:].replace("-", "_")
        if takes_value:
            a(flag, dest=dest, action="append", help=argparse.SUPPRESS)
        else:
            a(flag, dest=dest, action="store_true", help=argparse.SUPPRESS)
    a("cmd", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    from . import learn
    learn.add_parser(sub)
    sub.add_parser("check", help="show which kernel protections are available", allow_abbrev=False)
    pr = sub.add_parser("profile", help="list, show or delete profiles", allow_abbrev=False,
                        description="Profiles are TOML files in $XDG_CONFIG_HOME/sandlock/profiles "
                                    "(~/.config/sandlock/profiles), plus the built-in ones; a user "
                                    "profile hides a built-in one of the same name. Keys: "
                                    "docs/profiles.md.")
    psub = pr.add_subparsers(dest="action", required=True, metavar="{list,show,delete}")
    psub.add_parser("list", help="list the profiles and where each one is", allow_abbrev=False)
    show = psub.add_parser("show", help="print a profile's file", allow_abbrev=False)
    show.add_argument("name", metavar="NAME")
    delete = psub.add_parser("delete", help="delete a user profile", allow_abbrev=False)
    delete.add_argument("name", metavar="NAME")
    _control_parsers(sub)
    return p


def _policy_help() -> str:
    def rows(label: str, text: str) -> list[str]:
        import textwrap
        return textwrap.wrap(text, 86, initial_indent=f"  {label:<12}", subsequent_indent=" " * 14,
                             break_on_hyphens=False)
    return "\n".join([
        "default policy (-r/-w/--fs-deny and a profile add to it; --no-default-policy starts "
        "from nothing):",
        *rows("read-only:", " ".join(DEFAULT_READABLE) + " (those that exist);"),
        *rows("", "the Python running sandlock: " + " ".join(_python_roots()) + ";"),
        *rows("", "/proc, virtualized: the command sees only its own processes (not with "
                  "--no-supervisor);"),
        *rows("", "the command's install tree when it lives elsewhere (a virtualenv, a prefix with "
                  "bin/python*; else the file alone), the same for a #! interpreter;"),
        *rows("", "the current directory (or --cwd) unless it is / or a home directory or holds "
                  "one; never a home directory or anything above one"),
        *rows("read-write:", " ".join(DEFAULT_DEVICES) + "; a private temporary directory, "
                             "exported as TMPDIR, removed afterwards"),
        *rows("denied:", " ".join(DEFAULT_DENIED) + " (-r or -w of one of these exact paths "
                         "lifts its denial)"),
        *rows("network:", "none"),
        "",
        "exit status: the command's own (128+N if killed by signal N); 127 if it cannot be",
        "executed; 124 after --timeout; 125 if sandlock itself fails (one 'sandlock: ...' line).",
    ])


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


def _time_start(text: str):
    """Seconds since the epoch when the text is a number, else the text
    (an ISO 8601 time, checked with the policy)."""
    try:
        return int(text, 10)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if value == value and abs(value) != float("inf") else text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return value


def _fail(msg: str) -> int:
    msg = " ".join(str(msg).split()) or "failed"
    print(f"sandlock: {msg}", file=sys.stderr)
    return EXIT_SANDBOX_ERROR


def _flag_worded(msg: str) -> str:
    """A PolicyError message with its leading field name as the flag."""
    field, sep, rest = msg.partition(":")
    if sep and field in FIELD_FLAGS:
        return FIELD_FLAGS[field] + sep + rest
    return msg


class _Pending(Exception):
    pass


def main(argv=None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command == "check":
            return check()
        if args.command == "profile":
            return profile_command(args)
        if args.command in ("ps", "inspect", "kill"):
            return control_command(args)
        if args.command == "learn":
            from . import learn
            return learn.command(args)
        return run(args)
    except _Pending as e:
        return _fail(f"{e}: not implemented yet")
    except NotImplementedError as e:
        return _fail(str(e) or "not implemented yet")
    except SandlockError as e:
        return _fail(_flag_worded(str(e)))
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        return _fail(str(e))
    except Exception as e:  # noqa: BLE001 -- never a traceback
        return _fail(f"internal error: {type(e).__name__}: {e}")


# -- the sandbox's fields from the flags ---------------------------------------------------

def _sandbox_kwargs(args, tmpdir: str | None, profile=None, cmd=None) -> dict:
    """The Sandbox fields: the default policy (unless --no-default-policy),
    plus the profile's, plus the flags'."""
    env = {}
    for item in args.env:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise _policy_error(f"-e/--env: expected K=V, got {item!r}")
        env[k] = v
    fs_read = [_abs(p) for p in args.fs_read]
    fs_write = [_abs(p) for p in args.fs_write]
    fs_deny = [_abs(p) for p in args.fs_deny]
    kw = _flag_fields(args, fs_read, fs_write, fs_deny, env)
    granted = [("-r", p) for p in fs_read] + [("-w", p) for p in fs_write]
    if profile is not None:
        from .profiles import merge_fields
        fields = profile.fields()
        kw = merge_fields(fields, kw)
        what = f"profile {profile.name}" if profile.name else profile.path
        granted += [(f"{what} [filesystem].read", p) for p in fields.get("fs_readable", ())]
        granted += [(f"{what} [filesystem].write", p) for p in fields.get("fs_writable", ())]
    kw["env"] = dict(kw["env"])
    if not args.no_default_policy:
        add_default_policy(kw, cmd if cmd is not None else args.cmd, tmpdir, granted)
    for name in ("fs_readable", "fs_writable", "fs_denied"):
        kw[name] = _unique(kw[name])
    return kw


def add_default_policy(kw: dict, cmd, tmpdir: str | None, granted: list[tuple[str, str]]) -> None:
    """Put the default policy under the Sandbox fields `kw` (which has
    `env` as a dict of its own and the three fs_* lists): its grants and
    denials before `kw`'s, TMPDIR set to `tmpdir` unless `kw` sets it.
    `granted`: (where it came from, path) of the user's own grants, which
    lift a default denial of that exact path. Also sandlock.ray's default."""
    d_read, d_write, d_deny = _default_policy(cmd, kw, tmpdir)
    d_deny = _lift_denials(d_deny, granted)
    kw["fs_readable"] = d_read + list(kw.get("fs_readable") or ())
    kw["fs_writable"] = d_write + list(kw.get("fs_writable") or ())
    kw["fs_denied"] = d_deny + list(kw.get("fs_denied") or ())
    if tmpdir and kw.get("chroot") is None and kw.get("image") is None:
        kw["env"].setdefault("TMPDIR", tmpdir)  # (a chroot's /tmp is its own)


def _flag_fields(args, fs_read, fs_write, fs_deny, env) -> dict:
    kw = dict(
        fs_readable=fs_read, fs_writable=fs_write, fs_denied=fs_deny,
        cwd=args.cwd,
        net_allow=args.net_allow, net_deny=args.net_deny,
        net_allow_bind=args.net_allow_bind, net_deny_bind=args.net_deny_bind,
        port_remap=args.port_remap,
        http_allow=args.http_allow, http_deny=args.http_deny, http_ports=args.http_port,
        http_ca=args.http_ca, http_key=args.http_key, http_inject_ca=args.http_inject_ca,
        http_ca_out=args.http_ca_out, http_credentials=args.credential, http_auth=args.http_auth,
        extra_deny_syscalls=args.extra_deny_syscall, extra_allow_syscalls=args.extra_allow_syscall,
        max_memory=args.max_memory, max_open_files=args.max_open_files, max_cpu=args.max_cpu,
        cpu_cores=_cpu_list(args.cpu_cores), num_cpus=args.num_cpus,
        no_coredump=args.no_coredump, no_huge_pages=args.no_huge_pages,
        no_randomize_memory=args.no_randomize_memory,
        random_seed=args.random_seed, time_start=args.time_start,
        deterministic_dirs=args.deterministic_dirs,
        clean_env=args.clean_env, env=env, no_supervisor=args.no_supervisor, name=args.name,
        workdir=_abs(args.workdir) if args.workdir else None,
        fs_storage=_abs(args.fs_storage) if args.fs_storage else None, max_disk=args.max_disk,
    )
    if args.chroot is not None or args.fs_mount or args.image is not None:
        kw.update(_chroot_fields(args))
    for name in ("on_exit", "on_error"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.user is not None:
        uid, sep, gid = args.user.partition(":")
        if not (sep and uid.isdigit() and gid.isdigit()):
            raise _policy_error(f"--user: expected UID:GID (numbers), got {args.user!r}")
        kw["uid"], kw["gid"] = int(uid), int(gid)
    if args.max_processes is not None:
        kw["max_processes"] = args.max_processes
    return kw


def _chroot_fields(args) -> dict:
    """--chroot and --fs-mount; -r/-w/--fs-deny are then virtual paths,
    taken as given (not made absolute against the host's cwd)."""
    from .chroot import parse_mount_spec
    rw: dict[str, str] = {}
    ro: dict[str, str] = {}
    for spec in args.fs_mount:
        parsed = parse_mount_spec(spec)
        if parsed is None:
            raise _policy_error(f"--fs-mount: expected VIRTUAL:HOST or VIRTUAL:HOST:ro, got {spec!r}")
        virtual, host, read_only = parsed
        (ro if read_only else rw)[virtual] = _abs(host)
    out: dict = dict(chroot=_abs(args.chroot) if args.chroot else None, fs_mount=rw, fs_mount_ro=ro,
                     fs_readable=list(args.fs_read), fs_writable=list(args.fs_write),
                     fs_denied=list(args.fs_deny))
    if args.image is not None:
        from .image import pull_image
        out["image"] = pull_image(args.image)
    return out


def _default_policy(cmd, kw: dict, tmpdir: str | None) -> tuple[list[str], list[str], list[str]]:
    if kw.get("chroot") is not None or kw.get("image") is not None:
        # Inside the chroot: its system directories, /proc, the devices;
        # nothing of the host (no temporary directory there).
        return (list(DEFAULT_READABLE) + [PROC] + ([kw["cwd"]] if kw.get("cwd") else []),
                list(DEFAULT_DEVICES), list(DEFAULT_DENIED))
    read = [p for p in DEFAULT_READABLE if os.path.exists(p)]
    read += _python_roots() + _command_root(cmd, kw["env"]) + _cwd_grant(kw.get("cwd"))
    if not kw.get("no_supervisor") and os.path.isdir(PROC):
        read.append(PROC)
    write = [p for p in DEFAULT_DEVICES if os.path.exists(p)]
    if tmpdir:
        write.append(tmpdir)
    return read, write, list(DEFAULT_DENIED)


def _lift_denials(denied: list[str], granted: list[tuple[str, str]]) -> list[str]:
    """The default denials less those the user granted by their exact path;
    a grant strictly inside a default denial is an error (the denial would
    win, and lifting it would expose its siblings)."""
    out = []
    for d in denied:
        if any(g == d for _flag, g in granted):
            continue
        for flag, g in granted:
            if g.startswith(d + "/"):
                raise _policy_error(f"{flag} {g}: inside {d}, which the default policy denies "
                                    f"(grant {d} itself to lift that denial, or use --no-default-policy)")
        out.append(d)
    return out


def _abs(path: str) -> str:
    return os.path.abspath(path) if path else path


def _unique(paths: list[str]) -> list[str]:
    return list(dict.fromkeys(paths))


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


def _program(cmd) -> str | None:
    if not cmd or cmd[0] == "--" and len(cmd) < 2:
        return None
    return cmd[1] if cmd[0] == "--" else cmd[0]


def _which(prog: str, env: dict, cwd: str | None) -> str | None:
    """Where the command's program is, as the sandbox will look for it."""
    if "/" in prog:
        path = os.path.join(cwd or os.getcwd(), prog)
        return os.path.abspath(path) if os.path.exists(path) else None
    import shutil
    return shutil.which(prog, path=env.get("PATH", os.environ.get("PATH", os.defpath)))


def _command_root(cmd, env) -> list[str]:
    """What the command needs to start when it lives outside the system
    directories: its install tree when it is a recognised one (a
    virtualenv, with pyvenv.cfg; a prefix with bin/python*), else the file
    alone; the same for a script's #! interpreter. Never a home directory
    or anything above one: a script in ~/work must not expose ~/.ssh."""
    prog = _program(cmd)
    if prog is None:
        return []
    import shutil
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
    if not _grantable(d):
        return []
    return [d]


_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/opt")


def _covered_by_system(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in _SYSTEM)


def home_dirs() -> set[str]:
    from .fsview import home_dirs as homes  # imported when a run needs it
    return homes()


def _grantable(d: str, homes: set[str] | None = None) -> bool:
    """Neither / nor a home directory nor a directory holding one."""
    homes = home_dirs() if homes is None else homes
    return d != "/" and not any(h == d or h.startswith(d.rstrip("/") + "/") for h in homes)


def _install_tree(path: str) -> str | None:
    """The virtualenv or Python prefix `path` lies in (at most three levels
    up), unless that tree is a home directory, holds one, or is /."""
    homes = home_dirs()
    d = os.path.dirname(path)
    for _level in range(3):
        if d in ("/usr", "/usr/local") or not _grantable(d, homes):
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


def _elf_interpreter(path: str) -> str | None:
    """The program loader an ELF executable names (PT_INTERP), if any."""
    import struct
    try:
        with open(path, "rb") as f:
            hdr = f.read(64)
            if len(hdr) < 52 or hdr[:4] != b"\x7fELF" or hdr[4] not in (1, 2):
                return None
            e = "<" if hdr[5] == 1 else ">"
            if hdr[4] == 2:
                (phoff,) = struct.unpack_from(e + "Q", hdr, 32)
                phentsize, phnum = struct.unpack_from(e + "HH", hdr, 54)
                off_at, off_fmt, size_at = 8, "Q", 32
            else:
                (phoff,) = struct.unpack_from(e + "I", hdr, 28)
                phentsize, phnum = struct.unpack_from(e + "HH", hdr, 42)
                off_at, off_fmt, size_at = 4, "I", 16
            for i in range(min(phnum, 128)):
                f.seek(phoff + i * phentsize)
                ph = f.read(phentsize)
                if struct.unpack_from(e + "I", ph, 0)[0] == 3:  # PT_INTERP
                    (offset,) = struct.unpack_from(e + off_fmt, ph, off_at)
                    (size,) = struct.unpack_from(e + off_fmt, ph, size_at)
                    f.seek(offset)
                    name = f.read(min(size, 4096)).split(b"\0")[0]
                    return os.fsdecode(name) if name.startswith(b"/") else None
    except (OSError, struct.error):
        return None
    return None


# -- why a command could not be executed ---------------------------------------------------

_PREFIX_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "libexec")


def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def _suggest(path: str) -> str:
    """The directory to grant so that `path` and what comes with it (its
    libraries, its interpreter's modules) are readable: the install tree or
    prefix it lies in, else its directory; never / or a home directory or
    anything above one (then the file itself)."""
    homes = home_dirs()
    tree = _install_tree(path)
    if tree:
        return tree
    d = os.path.dirname(path)
    a = d
    while a != "/":
        if os.path.basename(a) in _PREFIX_DIRS:
            prefix = os.path.dirname(a)
            if _grantable(prefix, homes):
                return prefix
            if _grantable(a, homes):
                return a
            break
        a = os.path.dirname(a)
    return d if _grantable(d, homes) else path


def _exec_hint(prog: str, errno_: int, kw: dict, default_policy: bool) -> str:
    """Why `prog` could not be executed, when the sandbox is the reason:
    the path that is not readable in it and the flag that would grant it."""
    import errno
    found = _which(prog, kw.get("env") or {}, kw.get("cwd"))
    if found is None:
        return ""
    program = os.path.realpath(found)
    script_interp = _shebang(program)
    if errno_ == errno.ENOENT:
        if script_interp and not os.path.exists(script_interp):
            return f" (its #! interpreter {script_interp} does not exist)"
        return ""
    if errno_ != errno.EACCES:
        return ""
    needed = [(program, "" if program == found and "/" in prog else program)]
    if script_interp:
        real = os.path.realpath(script_interp)
        needed.append((real, f"its #! interpreter {real}"))
        loader_of = real
    else:
        loader_of = program
    loader = _elf_interpreter(loader_of)
    if loader:
        real = os.path.realpath(loader)
        needed.append((real, f"the program loader {real}"))
    granted = [os.path.realpath(p) for p in list(kw["fs_readable"]) + list(kw["fs_writable"])]
    for path, what in needed:
        for d in kw["fs_denied"]:
            if _under(path, os.path.realpath(d)):
                by = ("the default policy: -r " + d + " lifts that"
                      if default_policy and d in DEFAULT_DENIED else "--fs-deny " + d)
                return f" ({what or 'it'} is denied by {by})"
        if not any(_under(path, g) for g in granted):
            who = f"{what} is not" if what else "not"
            return f" ({who} readable in the sandbox: add -r {_suggest(path)})"
    return ""


# -- run -------------------------------------------------------------------------------

def run(args) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    for flag, (_field, _takes_value) in PENDING_FLAGS.items():
        if getattr(args, "pending_" + flag[2:].replace("-", "_")):
            raise _Pending(flag)
    profile = None
    if args.profile is not None or args.profile_file is not None:
        from . import profiles
        profile = profiles.read_profile(args.profile) if args.profile is not None else \
            profiles.read_profile_file(args.profile_file)
        if not cmd and profile.command:
            cmd = profile.command
    if not cmd and args.image is not None:
        from .image import pull_image
        cmd = pull_image(args.image).config.default_cmd()
    if not cmd:
        if profile is not None:
            return _fail(f"run: no command given, and {profile.path} has no [program].exec "
                         f"(usage: sandlock run [flags] -p NAME -- CMD [ARGS...])")
        return _fail("run: no command given (usage: sandlock run [flags] -- CMD [ARGS...])")
    if args.dry_run and not args.workdir and args.image is None:   # an image: a branch of its rootfs
        return _fail("--dry-run requires --workdir (without one the command would change the real files)")
    import shutil
    import signal

    from . import launch
    from .sandbox import ExitReason, Sandbox, exit_status
    tmpdir = None
    if not args.no_default_policy:
        import tempfile
        tmpdir = tempfile.mkdtemp(prefix="sandlock-")
    try:
        kw = _sandbox_kwargs(args, tmpdir, profile, cmd)
        sb = Sandbox(**kw)
        sb._dry = args.dry_run  # every branch is aborted (see Sandbox.dry_run)
        launch.use_local_server()
        # Like a shell running a foreground job: the terminal's Ctrl-C
        # reaches the command; this process waits for its status.
        for sig in (signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_IGN)
        http_log = _open_http_log(args.http_log, sb)
        stdin = 0 if args.interactive else os.open(os.devnull, os.O_RDONLY)
        result = None
        try:
            result = sb._run_with_stdio(cmd, (stdin, 1, 2), args.timeout)
        finally:
            if stdin:
                os.close(stdin)
            if http_log is not None:
                _write_http_log(http_log, result)
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    if result.reason is None:
        return _fail(result.error or "the sandbox failed")
    if args.dry_run:
        if result.changes:
            print("sandlock: dry-run: filesystem changes:", file=sys.stderr)
            for change in result.changes:
                print(str(change), file=sys.stderr)
        else:
            print("sandlock: dry-run: no filesystem changes", file=sys.stderr)
    if result.reason == ExitReason.TIMEOUT:
        print(f"sandlock: timed out after {args.timeout:g} s", file=sys.stderr)
        _print_denials(result)
        return EXIT_TIMEOUT
    if result.error:
        msg = result.error
        errno_ = _exec_errno(msg, cmd[0])
        if errno_ is not None:
            msg += _exec_hint(cmd[0], errno_, kw, not args.no_default_policy)
        print(f"sandlock: {msg}", file=sys.stderr)  # or e.g. a limit enforced
    status = exit_status(result)
    if status != 0:
        _print_denials(result)
    return status


def _open_http_log(path: str | None, sb):
    """--http-log: the file, opened (truncated) before the command starts."""
    if path is None:
        return None
    if not (sb.http_allow or sb.http_deny):
        raise _policy_error("--http-log: needs --http-allow or --http-deny (no HTTP proxy runs "
                            "without rules)")
    try:
        return open(path, "w", encoding="utf-8")  # noqa: SIM115 -- closed by _write_http_log
    except OSError as e:
        raise _policy_error(f"--http-log: cannot write {path!r}: {e.strerror}") from None


def _write_http_log(f, result) -> None:
    """One JSON object a line per request; a last line counts the omitted."""
    import json
    with f:
        if result is None:
            return
        for entry in result.http_log:
            f.write(json.dumps(entry, ensure_ascii=True) + "\n")
        if result.http_log_omitted:
            f.write(json.dumps({"omitted": result.http_log_omitted}) + "\n")


SHOWN_DENIALS = 3


def _print_denials(result) -> None:
    """After a failed run: what the supervisor refused, a few lines."""
    for denial in result.denials[:SHOWN_DENIALS]:
        print(f"sandlock: {denial}", file=sys.stderr)
    more = sum(d.count for d in result.denials[SHOWN_DENIALS:]) + result.denials_omitted
    if more:
        print(f"sandlock: ({more} more)", file=sys.stderr)


def _exec_errno(error: str, prog: str) -> int | None:
    """The errno of a "cannot execute" failure of `prog`, else None."""
    import errno
    for err in (errno.EACCES, errno.ENOENT):
        if error == f"cannot execute {prog!r}: {os.strerror(err)}":
            return err
    return None


def profile_command(args) -> int:
    """sandlock profile list | show NAME | delete NAME."""
    from . import profiles
    if args.action == "list":
        infos = profiles.list_profiles(details=True)
        if not infos:
            print(f"No profiles found in {profiles.profiles_dir()}")
            return 0
        rows = [(i.name, "builtin, hidden by the user profile" if i.shadowed else i.source, i.path)
                for i in infos]
        width = max(len(r[0]) for r in rows + [("NAME", "", "")])
        swidth = max(len(r[1]) for r in rows + [("", "SOURCE", "")])
        print(f"{'NAME':<{width}}  {'SOURCE':<{swidth}}  PATH")
        for name, source, path in rows:
            print(f"{name:<{width}}  {source:<{swidth}}  {path}")
        return 0
    info = profiles.find_profile(args.name) if args.action == "show" else None
    if info is not None:
        with open(info.path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        return 0
    path = profiles.delete_profile(args.name)
    print(f"Deleted profile {args.name!r} ({path})")
    return 0


# -- ps / inspect / kill ------------------------------------------------------------------

def _control_parsers(sub) -> None:
    ps = sub.add_parser("ps", help="list the running sandboxes", allow_abbrev=False)
    ps.add_argument("--json", action="store_true", help="one JSON array, one object per sandbox")
    ins = sub.add_parser("inspect", help="a running sandbox's effective policy and live state",
                         allow_abbrev=False)
    ins.add_argument("name", metavar="NAME")
    fmt = ins.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON (the default)")
    fmt.add_argument("--toml", action="store_true",
                     help="the policy as a profile, the live state as comments")
    k = sub.add_parser("kill", help="signal every process of a running sandbox (its supervisor "
                                    "does it)", allow_abbrev=False)
    k.add_argument("name", metavar="NAME")
    k.add_argument("-s", "--signal", default="KILL", metavar="SIGNAL",
                   help="a signal name or number (default KILL: the sandbox ends)")


def _signal(text: str) -> int:
    import signal
    name = text.upper()
    try:
        return int(signal.Signals(int(name, 10)) if name.isdigit() else
                   signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except (KeyError, ValueError):
        raise _policy_error(f"kill: -s/--signal: {text!r} is not a signal") from None


def _uptime(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def control_command(args) -> int:
    """sandlock ps [--json] | inspect NAME [--json|--toml] | kill NAME [-s SIGNAL]."""
    from .exceptions import PolicyError
    try:
        return _control(args)
    except PolicyError as e:
        return _fail(str(e))  # about NAME or SIGNAL, not about a `run` flag


def _control(args) -> int:
    import json

    from . import control
    if args.command == "ps":
        rows = control.ps()
        if args.json:
            print(json.dumps(rows, indent=2, ensure_ascii=False))
            return 0
        if not rows:
            print("No running sandboxes.")
            return 0
        table = [("NAME", "PID", "UPTIME", "PROCS", "PORTS", "COMMAND")]
        for r in rows:
            ports = ",".join(f"{v}->{p}" for v, p in (r.get("ports") or {}).items()) or "-"
            cmd = " ".join(r.get("command") or [])
            table.append((str(r.get("name")), str(r.get("pid")), _uptime(r.get("uptime") or 0),
                          str(r.get("processes")), ports, cmd if len(cmd) <= 60 else cmd[:59] + "…"))
        widths = [max(len(row[i]) for row in table) for i in range(5)]
        for row in table:
            print("  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5])
        return 0
    if args.command == "inspect":
        info = control.inspect(args.name)
        if not args.toml:
            print(json.dumps(info, indent=2, ensure_ascii=False))
            return 0
        procs = info.get("processes") or []
        print(f"# sandbox {info.get('name')!r}: pid {info.get('pid')}, supervisor "
              f"{info.get('supervisor_pid')}, up {_uptime(info.get('uptime') or 0)}")
        print(f"# command: {json.dumps(info.get('command'), ensure_ascii=False)}")
        print(f"# processes: {len(procs)}; memory rss {info.get('memory', {}).get('rss', 0)} bytes; "
              f"cpu {info.get('cpu_seconds', 0)} s; ports {json.dumps(info.get('ports') or {})}")
        sys.stdout.write(control.policy_toml(info.get("policy") or {}))
        return 0
    sig = _signal(args.signal)
    count = control.kill(args.name, sig)
    import signal
    what = "Killed" if sig == signal.SIGKILL else f"Sent {signal.Signals(sig).name} to"
    print(f"{what} sandbox {args.name!r} ({count} process{'es' if count != 1 else ''})")
    return 0


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
