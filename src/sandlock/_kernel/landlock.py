"""Landlock: ABI probe, access-right tables, ruleset construction.

Constants come from include/uapi/linux/landlock.h (Linux 6.15, ABI 7); the
installed 6.1 headers stop at ABI 2, so each newer constant names the ABI
that introduced it.
"""
from __future__ import annotations

import ctypes
import os

from .libc import raw_syscall

# Syscall numbers 444-446 are shared by every architecture (added after the
# 5.x unification of new syscall numbers).
NR_CREATE_RULESET = 444
NR_ADD_RULE = 445
NR_RESTRICT_SELF = 446

CREATE_RULESET_VERSION = 1 << 0

RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2  # ABI 4

# Filesystem access rights.
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13       # ABI 2
FS_TRUNCATE = 1 << 14    # ABI 3
FS_IOCTL_DEV = 1 << 15   # ABI 5

# Network access rights (ABI 4).
NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1

# IPC scopes (ABI 6).
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

_FS_V1 = (1 << 13) - 1
# Filesystem rights each ABI handles.
FS_BY_ABI = {
    1: _FS_V1,
    2: _FS_V1 | FS_REFER,
    3: _FS_V1 | FS_REFER | FS_TRUNCATE,
    4: _FS_V1 | FS_REFER | FS_TRUNCATE,
    5: _FS_V1 | FS_REFER | FS_TRUNCATE | FS_IOCTL_DEV,
}
for _v in (6, 7):
    FS_BY_ABI[_v] = FS_BY_ABI[5]
NET_BY_ABI = {v: (NET_BIND_TCP | NET_CONNECT_TCP if v >= 4 else 0) for v in range(1, 8)}
SCOPE_BY_ABI = {v: (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if v >= 6 else 0) for v in range(1, 8)}
MAX_KNOWN_ABI = 7

# Rights that make sense on a non-directory; the kernel rejects the others.
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV

FS_READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
FS_WRITE = (FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR | FS_MAKE_DIR
            | FS_MAKE_REG | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK | FS_MAKE_SYM
            | FS_REFER | FS_TRUNCATE | FS_IOCTL_DEV)


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


_abi_cache: list[int] = []


def abi_version() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    if not _abi_cache:
        ret, _err = raw_syscall(NR_CREATE_RULESET, None, 0, CREATE_RULESET_VERSION)
        _abi_cache.append(max(ret, 0))
    return _abi_cache[0]


def _fail(what: str, err: int) -> OSError:
    return OSError(err, f"{what}: {os.strerror(err)}")


def create_ruleset(fs: int, net: int, scoped: int) -> int:
    """A new ruleset fd handling the given rights. The size passed tells the
    kernel which fields exist, so older ABIs see only what they know."""
    attr = RulesetAttr(fs, net, scoped)
    size = 24 if scoped else (16 if net else 8)
    fd, err = raw_syscall(NR_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if fd < 0:
        raise _fail("landlock_create_ruleset", err)
    os.set_inheritable(fd, False)
    return fd


def add_path_rule(ruleset_fd: int, path_fd: int, access: int) -> None:
    attr = PathBeneathAttr(access, path_fd)
    ret, err = raw_syscall(NR_ADD_RULE, ruleset_fd, RULE_PATH_BENEATH, ctypes.byref(attr), 0)
    if ret < 0:
        raise _fail("landlock_add_rule(path)", err)


def add_net_rule(ruleset_fd: int, port: int, access: int) -> None:
    attr = NetPortAttr(access, port)
    ret, err = raw_syscall(NR_ADD_RULE, ruleset_fd, RULE_NET_PORT, ctypes.byref(attr), 0)
    if ret < 0:
        raise _fail("landlock_add_rule(net)", err)


def restrict_self(ruleset_fd: int) -> int:
    """Apply the ruleset to the calling thread. Returns errno (0 on success)
    instead of raising, so a forked child can use it without allocating."""
    ret, err = raw_syscall(NR_RESTRICT_SELF, ruleset_fd, 0)
    return err if ret < 0 else 0
