"""Policy + kernel capabilities → what to install.

`compile_plan` is pure apart from reading directory listings (to split a
grant around a denied path): it opens nothing, forks nothing. The Plan it
returns is plain data that launch.py turns into a process.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import resource
import socket
from dataclasses import dataclass, field
from typing import Any

from ._kernel import bpf, filter_layout, landlock
from ._kernel import syscalls as _syscalls
from .exceptions import PolicyError
from . import control, determinism, fsview, pidscope, protections, routing
from .netplan import NetPlan, plan_network
from .policy import syscall_groups
from .policy.model import Policy

# Argument values: from socket and resource where Python has them (the
# same on every Linux arch sandlock supports); else from the uapi headers
# named (Python 3.10 lacks os.CLONE_NEW*; IPV6_2292RTHDR, SOL_IPV6 and the
# tty ioctls are not in Python at all).
CLONE_NS_FLAGS = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000
                  | 0x10000000 | 0x20000000 | 0x40000000)  # NEWNS NEWCGROUP NEWUTS NEWIPC NEWUSER NEWPID NEWNET
CLONE_THREAD = 0x00010000
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK
SOCK_STREAM, SOCK_DGRAM, SOCK_TYPE_MASK = socket.SOCK_STREAM, socket.SOCK_DGRAM, 0xF
IPPROTO_ICMP, IPPROTO_TCP = socket.IPPROTO_ICMP, socket.IPPROTO_TCP
IPPROTO_UDP, IPPROTO_ICMPV6 = socket.IPPROTO_UDP, socket.IPPROTO_ICMPV6
MSG_FASTOPEN = socket.MSG_FASTOPEN
SOL_IP, IP_OPTIONS, IPV6_RTHDR = socket.SOL_IP, socket.IP_OPTIONS, socket.IPV6_RTHDR
SOL_IPV6, IPV6_2292RTHDR = 41, 24  # include/linux/socket.h, include/uapi/linux/in6.h
NETLINK_ROUTE = socket.NETLINK_ROUTE
PER_QUERY, PER_LINUX, ADDR_NO_RANDOMIZE = 0xFFFFFFFF, 0, 0x0040000
PR_SET_MM, PR_SET_PTRACER = 35, 0x59616D61
SECCOMP_FLAG_NEW_LISTENER = 1 << 3

RLIMIT_CORE, RLIMIT_NOFILE = resource.RLIMIT_CORE, resource.RLIMIT_NOFILE

# Landlock ABI below which sandlock refuses to start: TCP port rules (v4) and
# signal / abstract-socket scoping (v6) are default protections.
MIN_ABI = 6


@dataclass
class Plan:
    """Everything the launcher and supervisor need, decided up front."""
    argv: list[bytes]
    exec_candidates: list[bytes]
    envp: dict[bytes, bytes]
    cwd: bytes
    fs: fsview.FsView
    handled_fs: int
    handled_net: int
    scoped: int
    bind_ports: list[int]
    connect_ports: list[int]
    net: NetPlan
    program: bytes
    notify: tuple[str, ...]                  # what the dispatch's list routes (with user handlers')
    routes: dict[str, tuple[str, ...]]       # feature → syscalls routed for it (routing.py)
    rlimits: list[tuple[int, int, int]]
    thp_disable: bool
    personality: int | None
    cpu_affinity: tuple[int, ...] | None
    max_processes: int | None
    max_memory: int | None
    max_cpu: int | None
    num_cpus: int | None
    proc: bool
    abi: int
    name: str | None = None
    notes: list[str] = field(default_factory=list)
    # The copy-on-write workdir: (workdir, storage base, max_disk), the
    # branch actions; the run creates its branch in the base.
    cow: tuple[str, str, int | None] | None = None
    on_exit: str = "commit"
    on_error: str = "abort"
    ids: tuple[int, int] | None = None       # uid/gid the command sees (a user namespace)
    summary: dict = field(default_factory=dict)  # the policy as a profile (control.py: inspect)
    # Deterministic runs: (random_seed, time_start ns, deterministic_dirs), or None
    determinism: tuple[int | None, int | None, bool] | None = None
    policy_fn: Any = None                    # policy.policyfn.PolicyFnPlan, or None
    # chroot: (chroot.RootSpec, the virtual cwd); the command is executed
    # from an fd (exec_candidates are virtual paths)
    chroot: tuple[Any, bytes] | None = None


def compile_plan(policy: Policy, argv, *, abi: int | None = None,
                 extra_notify: tuple[str, ...] = ()) -> Plan:
    if policy.pending:
        raise NotImplementedError(
            f"{', '.join(policy.pending)}: not implemented yet in this version of sandlock")
    if abi is None:
        abi = landlock.abi_version()
    # Protections the kernel lacks refuse the run unless named in
    # allow_degraded; `off` also holds those the caller disables.
    off = protections.settle(abi, policy.allow_degraded, policy.disable)
    argv = _check_argv(argv)
    env = _environment(policy)
    if policy.http is not None and policy.http.intercept and policy.http.ca is None:
        policy = dataclasses.replace(policy, http=_http_ca(policy.http))
        if policy.http_ca_out is not None:
            _write_ca(policy.http_ca_out, policy.http.ca[0])
    table = _syscalls.table()
    # The runtime directories of control sockets (ps / inspect / kill) are
    # never reachable from a sandbox, whatever it is granted around them.
    # With a chroot, fs_writable is virtual: checked against the workdir below.
    # So is fs_denied: inside a chroot the tree's handlers check the view
    # for the branch's changes too (supervisor/chroot.py), so no refusal.
    cow, cow_hidden = _copy_on_write(policy, *((policy.fs_writable, policy.fs_denied)
                                               if policy.chroot is None else ((), ())))
    readable = policy.fs_readable + ((policy.workdir,) if policy.workdir else ())
    writable, denied = policy.fs_writable, policy.fs_denied
    chroot_cwd, cwd, spec = None, policy.cwd or policy.workdir or os.getcwd(), None
    exec_candidates = _exec_candidates(argv[0], env.get("PATH"))
    if policy.chroot is not None:
        # The virtual policy as host paths: what Landlock grants and the
        # supervisor checks (one view for both).
        from . import chroot
        spec = chroot.root_spec(policy.chroot[0], dict(policy.chroot[1]), dict(policy.chroot[2]))
        readable, writable, denied = (tuple(x) for x in chroot.host_policy(
            spec, policy.fs_readable, policy.fs_writable, policy.fs_denied))
        if policy.chroot[3]:
            # The unpacked image is a shared cache: never written (mount a
            # host directory with fs_mount for the command's output).
            for path in writable:
                if fsview.under(os.path.realpath(path), spec.root):
                    raise PolicyError(f"fs_writable: {path!r} is inside the image, which is "
                                      "shared by every run and never written (its writes go "
                                      "to the run's copy-on-write branch); use fs_mount for "
                                      "a directory whose writes land on the host")
        if policy.workdir is not None:
            # A copy-on-write workdir in the tree (a host path: see
            # chroot.workdir_in_tree), never writable for Landlock: written
            # through the branch only, where the virtual grants let the
            # command read (an image's implicit workdir widens nothing).
            chroot.workdir_in_tree(spec, policy.workdir)
            writable = tuple(w for w in writable if w != policy.workdir)   # a mount: read-only
            _copy_on_write(policy, writable, ())
            if policy.workdir in {host for _v, host, _ro in spec.mounts}:
                readable += (policy.workdir,)   # its grant was the mount's writable one
        virtual_cwd, cwd = chroot.host_dir(spec, policy.cwd or "/")
        chroot_cwd = os.fsencode(virtual_cwd)
        exec_candidates, bargv = chroot.exec_plan(spec, argv, env.get("PATH"))
        argv = [os.fsdecode(a) for a in bargv]
    granted = fsview.policy_view(readable, writable, denied + control.private_dirs())
    if policy.http is not None and policy.http.credentials:
        policy = dataclasses.replace(policy, http=_http_secrets(policy.http, granted))
    proc = granted.may_list("/proc")
    net = plan_network(policy)
    view = fsview.resolve(granted, _hidden_paths(policy, proc, net) + cow_hidden)
    routes = routing.narrow(routing.routes(routing.features(policy, proc, net, view), table), policy)
    notify = tuple(dict.fromkeys(routing.dispatch_notify(routes) + extra_notify))
    # Opens are routed only for the passthrough directories: the filter
    # sends just the O_DIRECTORY ones (the rest never pay a round trip).
    dir_opens_only = bool(view.passthrough) and not proc and not net.static_paths() \
        and not {"open", "openat"} & set(extra_notify + routes.get("policy_fn", ())) \
        and cow is None and not policy.learn \
        and policy.random_seed is None  # random_seed's opens of /dev/urandom are not O_DIRECTORY
    return Plan(
        argv=[os.fsencode(a) for a in argv],
        exec_candidates=exec_candidates,
        envp={os.fsencode(k): os.fsencode(v) for k, v in env.items()},
        cwd=os.fsencode(cwd),
        fs=view,
        handled_fs=landlock.FS_BY_ABI[min(abi, landlock.MAX_KNOWN_ABI)] & ~protections.fs_bits(off),
        handled_net=_handled_net(net, abi) & ~protections.net_bits(off),
        scoped=landlock.SCOPE_BY_ABI[min(abi, landlock.MAX_KNOWN_ABI)] & ~protections.scope_bits(off),
        bind_ports=[] if protections.Protection.NET_TCP in off else _bind_ports(net),
        connect_ports=list(net.connect_ports or ()),
        net=net,
        program=_program(policy, table, notify, net, dir_opens_only),
        notify=notify,
        routes=routes,
        policy_fn=policy.policy_fn,
        chroot=None if spec is None or chroot_cwd is None else (spec, chroot_cwd),
        rlimits=_rlimits(policy),
        thp_disable=policy.no_huge_pages,
        personality=ADDR_NO_RANDOMIZE if policy.no_randomize_memory else None,
        cpu_affinity=policy.cpu_cores,
        max_processes=policy.max_processes,
        max_memory=policy.max_memory,
        max_cpu=policy.max_cpu,
        num_cpus=policy.num_cpus,
        proc=proc,
        abi=abi,
        name=policy.name,
        cow=cow,
        on_exit=policy.on_exit.value,
        on_error=policy.on_error.value,
        ids=policy.ids,
        summary=control.policy_summary(policy, policy.cwd or os.getcwd()),
        determinism=(policy.random_seed, policy.time_start, policy.deterministic_dirs)
        if policy.random_seed is not None or policy.time_start is not None
        or policy.deterministic_dirs else None,
    )


def _copy_on_write(policy: Policy, writable, denied) -> tuple[tuple[str, str, int | None] | None,
                                                              tuple[str, ...]]:
    """(workdir, storage base, max_disk) and the paths to hide, or (None, ()).
    The workdir is granted read-only: writes reach the branch only through
    the supervisor (a writable grant over it would let them bypass the
    branch, its abort and dry runs). The storage base is hidden: the
    sandbox never reads a branch directly, its own or another run's."""
    if policy.workdir is None:
        return None, ()
    wd = policy.workdir
    for path in writable:   # host paths
        real = os.path.realpath(path)
        if fsview.under(wd, real) or fsview.under(real, wd):
            raise PolicyError(f"fs_writable: {path!r} overlaps the copy-on-write workdir {wd!r}: "
                              "writes there would bypass the branch (the workdir is written "
                              "through the branch only)")
    for path in denied:   # host paths
        # A denied path inside the workdir is enforced by the branch's
        # handlers (supervisor/cow.py); a workdir inside a denied one is
        # nothing the command could use.
        if fsview.under(wd, os.path.realpath(path)):
            raise PolicyError(f"fs_denied: {path!r} holds the copy-on-write workdir {wd!r}")
    from .cow import storage
    from .exceptions import BranchError
    try:
        base = storage.resolve_base(policy.fs_storage)
    except BranchError as e:
        raise PolicyError(f"fs_storage: {e}") from None
    if fsview.under(base, wd) or fsview.under(wd, base):
        raise PolicyError(f"fs_storage: the branch storage {base!r} and the workdir {wd!r} "
                          "must not contain each other")
    return (wd, base, policy.max_disk), (base,)


def _check_argv(argv) -> list[str]:
    if isinstance(argv, (str, bytes)) or not argv:
        raise PolicyError(f"cmd: expected a non-empty list of arguments (got {argv!r})")
    out = []
    for a in argv:
        if isinstance(a, os.PathLike):
            a = os.fspath(a)
        if not isinstance(a, (str, bytes)) or "\0" in (a if isinstance(a, str) else a.decode("latin-1")):
            raise PolicyError(f"cmd: arguments must be strings without NUL (got {a!r})")
        out.append(os.fsdecode(a))
    return out


MINIMAL_ENV = ("PATH", "HOME", "USER", "TERM", "LANG")


def _environment(policy: Policy) -> dict[str, str]:
    if policy.clean_env:
        env = {k: os.environ[k] for k in MINIMAL_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    else:
        env = dict(os.environ)
    if policy.http is not None:
        # Every env: credential's variable, used or not, before `env` applies.
        from .httpauth import env_names
        for name in env_names(policy.http.credentials):
            env.pop(name, None)
    env.update(policy.env)
    return env


def _exec_candidates(prog: str, path: str | None) -> list[bytes]:
    """The paths execvp would try, in order."""
    if "/" in prog:
        return [os.fsencode(prog)]
    dirs = (path if path is not None else os.defpath).split(os.pathsep)
    return [os.fsencode(os.path.join(d or ".", prog)) for d in dirs]


def _handled_net(net: NetPlan, abi: int) -> int:
    """Landlock's handled network rights (bind rules come from net.allow_bind)."""
    handled = landlock.NET_BY_ABI[min(abi, landlock.MAX_KNOWN_ABI)]
    if net.allow_bind.any:
        handled &= ~landlock.NET_BIND_TCP
    if net.connect_ports is None:
        handled &= ~landlock.NET_CONNECT_TCP  # every port: the supervisor alone decides
    return handled


def _bind_ports(net: NetPlan) -> list[int]:
    if net.allow_bind.any:
        return []
    return [p for lo, hi in net.allow_bind.ranges for p in range(lo, hi + 1)]


def _rlimits(policy: Policy) -> list[tuple[int, int, int]]:
    out = []
    if policy.max_open_files is not None:
        out.append((RLIMIT_NOFILE, policy.max_open_files, policy.max_open_files))
    if policy.no_coredump:
        out.append((RLIMIT_CORE, 0, 0))
    return out


# /proc entries no sandbox may read, whatever its policy grants.
PROC_DENIED = ("kcore", "kallsyms", "keys", "key-users", "modules", "kmsg", "sysrq-trigger",
               "timer_list", "vmallocinfo", "slabinfo", "iomem", "ioports", "kpagecount",
               "kpageflags", "kpagecgroup", "mtrr", "sched_debug", "config.gz")
SYS_CPU_FILES = ("/sys/devices/system/cpu/online", "/sys/devices/system/cpu/possible",
                 "/sys/devices/system/cpu/present")


def _hidden_paths(policy: Policy, proc: bool, net: NetPlan) -> tuple[str, ...]:
    """Paths the plan denies on top of fs_denied: sensitive /proc entries,
    and the files the supervisor serves virtualized (so CONTINUE can never
    reach the real ones)."""
    hidden: list[str] = []
    if proc:
        hidden += ["/proc/" + n for n in PROC_DENIED]
        if policy.num_cpus is not None:
            hidden += ["/proc/cpuinfo", "/proc/stat"]
        if policy.max_memory is not None:
            hidden += ["/proc/meminfo"]
    if policy.num_cpus is not None:
        hidden += list(SYS_CPU_FILES)
    hidden += list(net.static_paths())  # served by the supervisor
    return tuple(hidden)


# Test hook: a PEM file of extra CAs the HTTPS proxy trusts for upstream
# servers, besides the system trust store (the tests run local HTTPS
# servers with a CA of their own). Read when the plan is made.
UPSTREAM_CA_ENV = "SANDLOCK_HTTPS_UPSTREAM_CA"


def _http_ca(http):
    """The HttpAcl with its CA for this run: the caller's (http_ca/http_key)
    or an ephemeral one, name-constrained to the allowed hosts."""
    from . import httpca
    from .exceptions import PolicyError
    if http.ca_files is not None:
        ca = httpca.load_ca(*http.ca_files)
    else:
        ca = httpca.ephemeral_ca(httpca.constraint_names([r.host for r in http.allow]))
    upstream = None
    hook = os.environ.get(UPSTREAM_CA_ENV)
    if hook:
        try:
            with open(hook, "rb") as f:
                upstream = f.read()
        except OSError as e:
            raise PolicyError(f"{UPSTREAM_CA_ENV}: cannot read {hook!r}: {e.strerror}") from None
    return dataclasses.replace(http, ca=ca, upstream_ca=upstream)


def _http_secrets(http, granted):
    """The HttpAcl with the credentials' secrets, read here on the caller's
    side: they travel to the supervisor in the launch request, never into
    the command's environment, arguments or files. A file: secret the
    sandbox could read itself is refused."""
    from . import httpauth
    from .exceptions import PolicyError
    for src in http.credentials:
        if src.kind == "file":
            real = os.path.realpath(src.where)
            if granted.may_read(real):
                raise PolicyError(f"http_credentials: credential {src.name!r} (file:{src.where}): "
                                  "the sandbox may read this file itself (a read grant covers "
                                  "it); keep the secret outside the granted paths")
    return dataclasses.replace(http, secrets=httpauth.read_secrets(http.credentials))


def _write_ca(path: str, cert_pem: bytes) -> None:
    """http_ca_out: the HTTPS CA's certificate (never its key)."""
    from .exceptions import PolicyError
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(cert_pem)
    except OSError as e:
        raise PolicyError(f"http_ca_out: cannot write {path!r}: {e.strerror}") from None


# -- filesystem ------------------------------------------------------------

def fs_rules(readable, writable, denied) -> list[tuple[str, int]]:
    """The Landlock path rules for these grants and denials (see fsview)."""
    return list(fsview.resolve(fsview.policy_view(readable, writable, denied)).rules)


# -- seccomp ---------------------------------------------------------------

def _deny_errno(names, table) -> dict[int, int]:
    return {table.syscalls[n]: errno.EPERM for n in names if n in table.syscalls}


_PROGRAMS: dict[tuple, bytes] = {}


def _program(policy: Policy, table, notify: tuple[str, ...], net: NetPlan,
             dir_opens_only: bool = False) -> bytes:
    """The encoded filter, cached: it depends only on these few inputs."""
    key = (table.arch, policy.no_supervisor, policy.extra_allow_syscalls, policy.extra_deny_syscalls,
           policy.no_randomize_memory, notify, net.udp, net.icmp, dir_opens_only,
           policy.random_seed is not None, policy.time_start is not None)
    program = _PROGRAMS.get(key)
    if program is None:
        program = bpf.encode(bpf.assemble(filter_items(policy, table, notify, net, dir_opens_only)))
        if len(_PROGRAMS) < 64:
            _PROGRAMS[key] = program
    return program


def denied_numbers(policy: Policy, table) -> dict[int, int]:
    """Syscall number → errno for every syscall the filter refuses outright."""
    denied = [n for n in syscall_groups.default_denied(policy.extra_allow_syscalls)
              if n != "personality"]
    denied += list(policy.extra_deny_syscalls)
    deny = _deny_errno(denied, table)
    # clone3 passes its flags in memory, out of BPF's reach: ENOSYS makes
    # libc fall back to clone, whose flags the filter can see. The same for
    # openat2 and its mode (set-ID bits, see _set_id_blocks): callers fall
    # back to openat (libc and Python never use openat2 for open()).
    for name in ("clone3", "openat2"):
        if name in table.syscalls:
            deny[table.syscalls[name]] = errno.ENOSYS
    return deny


def filter_items(policy: Policy, table, notify: tuple[str, ...], net: NetPlan | None = None,
                 dir_opens_only: bool = False) -> list:
    """The assembler items of the sandbox's seccomp program."""
    deny = denied_numbers(policy, table)
    # A denial always wins over a notification.
    notify_nrs = [table.syscalls[n] for n in notify
                  if n in table.syscalls and table.syscalls[n] not in deny]
    # Argument blocks run before the dispatch: a block for a denied syscall
    # could answer ALLOW or USER_NOTIF first and skip the denial (T10).
    blocks = [b for b in arg_blocks(policy, table, net or NetPlan(), dir_opens_only) if b.nr not in deny]
    return filter_layout.build(table.audit_arch, table.x32_bit, blocks, notify_nrs, deny)


def _eperm():
    return bpf.ret(bpf.RET_ERRNO | errno.EPERM)


# O_DIRECTORY differs between architectures (asm-generic/fcntl.h vs
# arch/arm64/include/uapi/asm/fcntl.h).
O_DIRECTORY_BY_ARCH = {"x86_64": 0o200000, "aarch64": 0o40000}
# O_CREAT and __O_TMPFILE, the same on x86_64 and aarch64 (asm-generic/fcntl.h).
O_CREATES = 0o100 | 0o20000000
SET_ID_BITS = 0o6000  # S_ISUID | S_ISGID


def _set_id_blocks(nr, supervised: bool) -> list[filter_layout.ArgBlock]:
    """No file is created set-user-ID or set-group-ID (chmod is checked by
    the supervisor, attributes.py): a sandbox must not leave behind a
    program that runs with its user's rights (root's, when run as root)
    for whoever starts it. Landlock has no say on modes."""
    ld = bpf.ld_abs
    blocks = []
    for name, flags_arg, mode_arg in (("open", 1, 2), ("openat", 2, 3)):
        if name in nr:
            blocks.append(filter_layout.ArgBlock(nr[name], (
                ld(bpf.arg_low(flags_arg)), bpf.jset(O_CREATES, jf="skip"),
                ld(bpf.arg_low(mode_arg)), bpf.jset(SET_ID_BITS, jf="skip"), _eperm())))
    modes = [("creat", 1), ("mknod", 1), ("mknodat", 2)]
    if not supervised:  # else the supervisor decides chmod (and allows setgid directories)
        modes += [("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2)]
    for name, mode_arg in modes:
        if name in nr:
            blocks.append(filter_layout.ArgBlock(nr[name], (
                ld(bpf.arg_low(mode_arg)), bpf.jset(SET_ID_BITS, jf="skip"), _eperm())))
    return blocks


def arg_blocks(policy: Policy, table, net: NetPlan,
               dir_opens_only: bool = False) -> list[filter_layout.ArgBlock]:
    nr = table.syscalls
    ld = bpf.ld_abs
    blocks = [
        # Namespace flags on clone (CLONE_NEWTIME is clone3/unshare only);
        # a new thread is not a process: it skips the supervisor.
        filter_layout.ArgBlock(nr["clone"], (
            ld(bpf.arg_low(0)), bpf.jset(CLONE_NS_FLAGS, jt="deny"),
            bpf.jset(CLONE_THREAD, jf="skip"), bpf.ret(bpf.RET_ALLOW),
            bpf.Label("deny"), _eperm())),
        # Pushing input into a terminal (TIOCSTI) or console (TIOCLINUX);
        # the kernel reads cmd as unsigned int, so the low word is the cmd.
        filter_layout.ArgBlock(nr["ioctl"], (
            ld(bpf.arg_low(1)), bpf.jeq(TIOCSTI, jt="deny"), bpf.jeq(TIOCLINUX, jt="deny", jf="skip"),
            bpf.Label("deny"), _eperm())),
        # Sockets: unix, TCP over IPv4/IPv6, netlink route; UDP and ping
        # sockets only when a rule allows them. No raw, packet, SCTP, vsock
        # or other families (Landlock only sees TCP).
        filter_layout.ArgBlock(nr["socket"], (
            ld(bpf.arg_low(0)), bpf.jeq(AF_UNIX, jt="skip"),
            bpf.jeq(AF_INET, jt="inet4"), bpf.jeq(AF_INET6, jt="inet6"),
            bpf.jeq(AF_NETLINK, jt="netlink", jf="deny"),
            bpf.Label("inet4"), ld(bpf.arg_low(2)), bpf.jeq(IPPROTO_ICMP, jt="icmp", jf="inet"),
            bpf.Label("inet6"), ld(bpf.arg_low(2)), bpf.jeq(IPPROTO_ICMPV6, jt="icmp", jf="inet"),
            bpf.Label("inet"), ld(bpf.arg_low(1)), bpf.and_k(SOCK_TYPE_MASK),
            bpf.jeq(SOCK_STREAM, jt="stream", jf="udp" if net.udp else "deny"),
            bpf.Label("stream"), ld(bpf.arg_low(2)), bpf.jeq(0, jt="skip"),
            bpf.jeq(IPPROTO_TCP, jt="skip", jf="deny"),
            bpf.Label("udp"), bpf.jeq(SOCK_DGRAM, jf="deny"), ld(bpf.arg_low(2)),
            bpf.jeq(0, jt="skip"), bpf.jeq(IPPROTO_UDP, jt="skip", jf="deny"),
            bpf.Label("icmp"), ld(bpf.arg_low(1)), bpf.and_k(SOCK_TYPE_MASK),
            bpf.jeq(SOCK_DGRAM, jt="skip" if net.icmp else "deny", jf="deny"),
            bpf.Label("netlink"), ld(bpf.arg_low(2)), bpf.jeq(NETLINK_ROUTE, jt="skip"),
            bpf.Label("deny"), _eperm())),
        # TCP Fast Open connects inside sendto/sendmsg, past the connect
        # checks: refused. A sendto without a destination (send() on a
        # connected socket) never reaches the supervisor.
        filter_layout.ArgBlock(nr["sendto"], (
            ld(bpf.arg_low(3)), bpf.jset(MSG_FASTOPEN, jt="deny"),
            ld(bpf.arg_low(4)), bpf.jeq(0, jf="skip"),
            ld(bpf.arg_high(4)), bpf.jeq(0, jf="skip"), bpf.ret(bpf.RET_ALLOW),
            bpf.Label("deny"), _eperm())),
        # Source routes would send a packet past the address checks: IPv4
        # options and IPv6 routing headers are refused.
        filter_layout.ArgBlock(nr["setsockopt"], (
            ld(bpf.arg_low(1)), bpf.jeq(SOL_IP, jt="ip"), bpf.jeq(SOL_IPV6, jt="ip6", jf="skip"),
            bpf.Label("ip"), ld(bpf.arg_low(2)), bpf.jeq(IP_OPTIONS, jt="deny", jf="skip"),
            bpf.Label("ip6"), ld(bpf.arg_low(2)), bpf.jeq(IPV6_RTHDR, jt="deny"),
            bpf.jeq(IPV6_2292RTHDR, jt="deny", jf="skip"),
            bpf.Label("deny"), _eperm())),
        filter_layout.ArgBlock(nr["sendmsg"], (
            ld(bpf.arg_low(2)), bpf.jset(MSG_FASTOPEN, jf="skip"), _eperm())),
        filter_layout.ArgBlock(nr["sendmmsg"], (
            ld(bpf.arg_low(3)), bpf.jset(MSG_FASTOPEN, jf="skip"), _eperm())),
        filter_layout.ArgBlock(nr["socketpair"], (
            ld(bpf.arg_low(0)), bpf.jeq(AF_UNIX, jt="skip"), _eperm())),
        # Personality: only queries, PER_LINUX, and ADDR_NO_RANDOMIZE when asked.
        filter_layout.ArgBlock(nr["personality"], tuple(
            [ld(bpf.arg_low(0)), bpf.jeq(PER_QUERY, jt="skip"), bpf.jeq(PER_LINUX, jt="skip")]
            + ([bpf.jeq(ADDR_NO_RANDOMIZE, jt="skip")] if policy.no_randomize_memory else [])
            + [_eperm()])),
        # A second seccomp listener inside the sandbox would receive the
        # notifications meant for the supervisor: refuse NEW_LISTENER.
        filter_layout.ArgBlock(nr["seccomp"], (
            ld(bpf.arg_low(1)), bpf.jset(SECCOMP_FLAG_NEW_LISTENER, jf="skip"), _eperm())),
        filter_layout.ArgBlock(nr["prctl"], (
            ld(bpf.arg_low(0)), bpf.jeq(PR_SET_MM, jt="deny"),
            bpf.jeq(PR_SET_PTRACER, jt="deny", jf="skip"),
            bpf.Label("deny"), _eperm())),
    ]
    blocks += _set_id_blocks(nr, not policy.no_supervisor)  # before the opens' own blocks: a denial first
    if dir_opens_only:
        o_directory = O_DIRECTORY_BY_ARCH[table.arch]
        for name, flags_arg in (("open", 1), ("openat", 2)):
            if name in nr:
                blocks.append(filter_layout.ArgBlock(nr[name], (
                    ld(bpf.arg_low(flags_arg)), bpf.jset(o_directory, jt="skip"),
                    bpf.ret(bpf.RET_ALLOW))))
    blocks += pidscope.arg_blocks(table, supervised=not policy.no_supervisor)
    if not policy.no_supervisor:
        blocks += determinism.arg_blocks(policy, table)  # after pid_scope's: another process's clocks first
    return blocks
