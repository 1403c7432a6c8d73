"""What the running kernel offers, for `sandlock check`."""
from __future__ import annotations

import ctypes
import errno

from ._kernel import landlock
from ._kernel.libc import raw_syscall
from .plan import MIN_ABI

_ABI_FEATURES = (
    (1, "Landlock filesystem rules"),
    (2, "Landlock file reparenting (REFER)"),
    (3, "Landlock truncate"),
    (4, "Landlock TCP bind/connect rules"),
    (5, "Landlock device ioctl"),
    (6, "Landlock signal and abstract-socket scoping"),
    (7, "Landlock audit logging"),
)
SECCOMP_RET_USER_NOTIF = 0x7FC00000


def _syscall_exists(name: str, *args) -> bool:
    from ._kernel import syscalls
    table = syscalls.table()
    if name not in table.syscalls:
        return False
    _ret, err = raw_syscall(table.syscalls[name], *args)
    return err != errno.ENOSYS


def probe() -> tuple[list[tuple[str, bool, str]], bool]:
    """(rows of (protection, available, detail), whether sandlock can run)."""
    from ._kernel import syscalls
    abi = landlock.abi_version()
    rows = [("Landlock ABI", abi >= MIN_ABI, f"version {abi} (sandlock needs >= {MIN_ABI})")]
    for version, name in _ABI_FEATURES:
        rows.append((name, abi >= version, f"ABI {version}"))
    try:
        table = syscalls.table()
        arch_ok, arch = True, f"{table.arch} (AUDIT_ARCH {table.audit_arch:#x})"
    except Exception as e:  # noqa: BLE001
        arch_ok, arch = False, str(e)
    rows.append(("syscall table", arch_ok, arch))
    action = ctypes.c_uint32(SECCOMP_RET_USER_NOTIF)
    notif = arch_ok and _syscall_exists("seccomp", 2, 0, ctypes.byref(action))
    if notif:
        _r, err = raw_syscall(table.syscalls["seccomp"], 2, 0, ctypes.byref(action))
        notif = err == 0
    rows.append(("seccomp filter + user notification", notif, "SECCOMP_RET_USER_NOTIF"))
    pidfd = arch_ok and _syscall_exists("pidfd_getfd", -1, -1, 0)
    rows.append(("pidfd_getfd", pidfd, "take a sandboxed process's fd on its behalf"))
    closer = arch_ok and _syscall_exists("close_range", 0xFFFFFFF0, 0xFFFFFFF0, 0)
    rows.append(("close_range", closer, "close inherited fds in the child"))
    ok = abi >= MIN_ABI and arch_ok and notif and pidfd and closer
    return rows, ok
