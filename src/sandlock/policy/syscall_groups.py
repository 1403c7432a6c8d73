"""The default syscall blocklist and the optional groups a policy may allow.

Names that do not exist on the running architecture are skipped when the
filter is compiled; this module only deals in names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from .values import bad_value, items_of

__all__ = [
    "DEFAULT_DENY",
    "SYSV_IPC",
    "GROUPS",
    "default_denied",
    "check_allow_groups",
    "check_syscall_names",
]

DEFAULT_DENY: tuple[str, ...] = (
    # mounts and namespaces
    "mount", "umount", "umount2", "pivot_root", "chroot",
    "move_mount", "open_tree", "open_tree_attr", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "unshare", "setns",
    # kernel modules and replacing / stopping the kernel
    "init_module", "finit_module", "delete_module", "create_module",
    "get_kernel_syms", "query_module",
    "kexec_load", "kexec_file_load", "reboot",
    # reading or writing other processes
    "ptrace", "process_vm_readv", "process_vm_writev",
    # large kernel attack surface
    "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # kernel keyrings
    "add_key", "request_key", "keyctl",
    # file handles bypass path-based confinement
    "open_by_handle_at", "name_to_handle_at",
    # hardware I/O ports
    "iopl", "ioperm",
    # execution domain (e.g. READ_IMPLIES_EXEC weakens the sandbox)
    "personality",
    # quotas, accounting, swap
    "quotactl", "quotactl_fd", "acct", "swapon", "swapoff",
    # system clock
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "stime",
    # obsolete or otherwise dangerous
    "lookup_dcookie", "nfsservctl", "vhangup", "syslog", "uselib",
    "_sysctl", "afs_syscall", "fanotify_init", "lsm_set_self_attr",
)

SYSV_IPC: tuple[str, ...] = (
    "shmget", "shmat", "shmdt", "shmctl",
    "semget", "semop", "semtimedop", "semctl",
    "msgget", "msgsnd", "msgrcv", "msgctl",
)

GROUPS: dict[str, tuple[str, ...]] = {"sysv_ipc": SYSV_IPC}

_NAME_RE = re.compile(r"[a-z_][a-z0-9_]*", re.ASCII)
_MAX_NAME = 64


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def check_allow_groups(value, field: str) -> tuple[str, ...]:
    """A list of syscall group names, each a key of :data:`GROUPS`; deduplicated."""
    names = items_of(value, field, "syscall group names")
    for name in names:
        if not isinstance(name, str) or name not in GROUPS:
            known = ", ".join(sorted(GROUPS))
            raise bad_value(field, name, f"unknown syscall group (known groups: {known})")
    return _unique(names)


def default_denied(allow_groups: Iterable[str] = ()) -> tuple[str, ...]:
    """DEFAULT_DENY plus the syscalls of every group not in ``allow_groups``."""
    allowed = set(check_allow_groups(allow_groups, "allow_groups"))
    denied = list(DEFAULT_DENY)
    for group, names in GROUPS.items():
        if group not in allowed:
            denied.extend(names)
    return _unique(denied)


def check_syscall_names(value, field: str, known: Callable[[str], bool]) -> tuple[str, ...]:
    """A list of syscall names, each well-formed and accepted by ``known``.

    ``known`` is a predicate supplied by the caller (normally a lookup in
    the syscall table). Duplicates are dropped, order kept.
    """
    names = items_of(value, field, "syscall names")
    for name in names:
        if not isinstance(name, str):
            raise bad_value(field, name, "syscall names must be strings")
        if len(name) > _MAX_NAME or not _NAME_RE.fullmatch(name):
            raise bad_value(field, name, "not a valid syscall name (expected e.g. 'shmget')")
        if not known(name):
            raise bad_value(field, name, "unknown syscall")
    return _unique(names)
