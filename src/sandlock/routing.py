"""Which syscalls reach the supervisor, and for which feature.

The one table that both sides read: the plan turns the features a policy
turns on into the filter's routed syscalls (`routes`, `dispatch_notify`);
the supervisor builds one handler per routed syscall of each feature and
refuses to start if one is missing (supervisor/spare.py). A test checks,
for every feature, on the x86_64 and aarch64 tables, that each syscall the
feature routes has its handler.

`pid_scope` is routed by the filter's argument blocks (only calls naming
another process reach the supervisor, see pidscope.py); every other
feature is routed by the dispatch's list of notified syscalls.
"""
from __future__ import annotations

from . import pidscope
from .policy.policyfn import HOLDABLE, NAMES

FEATURES: dict[str, tuple[str, ...]] = {
    # policy_fn: held for the caller's verdict (asked before any other
    # handler acts), or only reported; narrowed to the caller's choice
    "policy_fn": tuple(HOLDABLE),
    "policy_watch": tuple(NAMES),
    # connects and addressed sends on the child's behalf; binds (abstract
    # unix names are kept by the supervisor, deny-bind and port_remap)
    "network": ("connect", "sendto", "sendmsg", "sendmmsg", "bind"),
    "port_names": ("getsockname",),             # port_remap: the virtual port
    "listen": ("listen",),                      # an unbound listen() takes a port
    "self_restriction": ("landlock_restrict_self",),
    # the copy-on-write workdir: every path syscall that can name it
    "cow": ("open", "openat", "creat", "stat", "lstat", "newfstatat", "statx", "access",
            "faccessat", "faccessat2", "readlink", "readlinkat", "getdents64", "getdents",
            "mkdir", "mkdirat", "unlink", "unlinkat", "rmdir", "rename", "renameat",
            "renameat2", "symlink", "symlinkat", "link", "linkat", "mknod", "mknodat",
            "truncate", "chdir", "fchdir", "getcwd", "execve", "execveat",
            "getxattr", "lgetxattr", "listxattr", "llistxattr"),
    # a copy-on-write workdir inside a chroot: the chroot's handlers serve
    # its paths (supervisor/chroot_cow.py), the branch its merged listings
    "cow_listings": ("getdents64", "getdents"),
    # chroot / fs_mount: every path syscall, resolved in the virtual tree
    "chroot": ("open", "openat", "creat", "stat", "lstat", "newfstatat", "statx", "access",
               "faccessat", "faccessat2", "readlink", "readlinkat", "mkdir", "mkdirat", "unlink",
               "unlinkat", "rmdir", "rename", "renameat", "renameat2", "symlink", "symlinkat",
               "link", "linkat", "mknod", "mknodat", "truncate", "chdir", "fchdir", "getcwd",
               "execve", "execveat", "getxattr", "lgetxattr", "listxattr", "llistxattr"),
    # mode, owner, times, xattrs: Landlock has no right for them
    "attributes": ("chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "lchown", "fchown",
                   "fchownat", "utime", "utimes", "futimesat", "utimensat", "setxattr",
                   "lsetxattr", "fsetxattr", "setxattrat", "removexattr", "lremovexattr",
                   "fremovexattr", "removexattrat"),
    "processes": ("fork", "vfork", "clone"),    # max_processes
    "memory": ("mmap", "brk", "mremap", "mprotect"),  # max_memory
    "opens": ("open", "openat"),                # /proc, pinned files, passthrough dirs
    "listings": ("getdents64", "getdents"),     # the private /proc listing
    "cpus": ("sched_getaffinity",),             # num_cpus
    "pid_scope": pidscope.GATED,                # syscalls naming another process
    # Deterministic runs (determinism.py has the filter's argument blocks):
    # brk(NULL), a new glibc program's first call, and arch_prctl(ARCH_SET_FS),
    # a Go program's: hide the vDSO's clock and random functions before
    # the program looks them up
    "vdso": ("brk", "arch_prctl"),
    "clock": ("gettimeofday", "time"),          # time_start: the wall clock
    # time_start, argument-routed: realtime clock reads, absolute realtime sleeps and timers
    "clock_args": ("clock_gettime", "clock_nanosleep", "timerfd_settime"),
    "random": ("getrandom", "open", "openat"),  # random_seed: getrandom, /dev/urandom
    "sorted_dirs": ("getdents64", "getdents"),  # deterministic_dirs
}

# `sandlock learn`: every path, connect, send and bind, observed (never
# decided) ahead of the other features (supervisor/learning.py).
FEATURES["learn"] = tuple(dict.fromkeys(FEATURES["cow"] + FEATURES["attributes"]
                                        + FEATURES["network"]))

# Features whose calls reach the supervisor through argument blocks, not
# through the dispatch's list (apart from pidscope.NOTIFIED).
BLOCK_ROUTED = frozenset({"pid_scope", "vdso", "clock_args"})


def features(policy, proc: bool, net, view) -> tuple[str, ...]:
    """The supervisor features a policy turns on (none without a supervisor)."""
    if policy.no_supervisor:
        return ()
    on = ["network", "self_restriction", "pid_scope", "attributes"]
    if policy.workdir is not None:
        # first: its answers for the workdir come before /proc's; inside a
        # chroot, the tree's handlers resolve its paths and ask the branch
        on.insert(0, "cow" if policy.chroot is None else "cow_listings")
    if policy.chroot is not None:
        on.insert(0, "chroot")  # first: the tree's answers come before /proc's
    if policy.learn:
        on.insert(0, "learn")  # before anything answers: it only records
    if not net.deny_bind.is_empty or net.port_remap:
        on.append("port_names")
    if not net.allow_bind.any:
        on.append("listen")
    if proc or net.static_paths() or view.passthrough:
        on.append("opens")
    if proc:
        on.append("listings")
    if policy.max_processes is not None:
        on.append("processes")
    if policy.max_memory is not None:
        on.append("memory")
    if policy.num_cpus is not None:
        on.append("cpus")
    if policy.random_seed is not None or policy.time_start is not None:
        # before max_memory's brk handler, which answers the call
        on.insert(on.index("memory") if "memory" in on else len(on), "vdso")
    if policy.time_start is not None:
        on += ["clock", "clock_args"]
    if policy.random_seed is not None:
        # before /proc's opens, which would answer /dev/urandom itself
        on.insert(on.index("opens") if "opens" in on else len(on), "random")
    if policy.deterministic_dirs:
        # after the workdir's merged listings, before /proc's (which
        # answers every listing): sorted_dirs filters /proc's root itself
        on.insert(on.index("listings") if "listings" in on else len(on), "sorted_dirs")
    if policy.policy_fn is not None:
        # first: the verdict comes before anything is done on the child's behalf
        on[:0] = ["policy_fn", "policy_watch"]
    return tuple(on)


def narrow(routed: dict[str, tuple[str, ...]], policy) -> dict[str, tuple[str, ...]]:
    """The features whose syscalls the caller chooses, cut to that choice."""
    if policy.policy_fn is None:
        return routed
    chosen = {"policy_fn": set(policy.policy_fn.held), "policy_watch": set(policy.policy_fn.observed)}
    return {f: tuple(n for n in names if f not in chosen or n in chosen[f])
            for f, names in routed.items()}


def routes(features_on, table) -> dict[str, tuple[str, ...]]:
    """feature → the syscalls it routes that exist on `table`'s arch."""
    return {f: tuple(n for n in FEATURES[f] if n in table.syscalls) for f in features_on}


def dispatch_notify(routed: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The syscalls the dispatch's list sends to the supervisor."""
    names: list[str] = []
    for feature, syscalls in routed.items():
        if feature in BLOCK_ROUTED:
            names += [n for n in syscalls if n in pidscope.NOTIFIED]
        else:
            names += syscalls
    return tuple(dict.fromkeys(names))
