"""Syscall-number table for the running machine.

The tables themselves are generated (``tools/gen_syscalls.py``) into
``_syscalls_<arch>.py``. Importing this module never fails: an unsupported
machine only raises :class:`SeccompError` when a table is asked for.
"""

from __future__ import annotations

import importlib
import os

from ..exceptions import SeccompError

# os.uname().machine spellings -> table name.
_MACHINES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
}

# The foreign (32-bit) audit arch each native arch must reject.
_FOREIGN = {"x86_64": "AUDIT_ARCH_I386", "aarch64": "AUDIT_ARCH_ARM"}

_cache: dict[str, SyscallTable] = {}


class SyscallTable:
    """One architecture's syscall numbers. Treat as read-only."""

    __slots__ = ("arch", "audit_arch", "x32_bit", "foreign_audit_arch",
                 "syscalls", "names")

    def __init__(self, arch: str, audit_arch: int, x32_bit: int,
                 foreign_audit_arch: int, syscalls: dict[str, int]):
        self.arch = arch
        self.audit_arch = audit_arch
        self.x32_bit = x32_bit
        self.foreign_audit_arch = foreign_audit_arch
        self.syscalls = syscalls
        self.names = {nr: name for name, nr in syscalls.items()}

    def number(self, name: str) -> int:
        """The syscall number of ``name``; KeyError if this arch lacks it."""
        try:
            return self.syscalls[name]
        except KeyError:
            raise KeyError(f"no syscall {name!r} on {self.arch}") from None

    def __repr__(self) -> str:
        return f"<SyscallTable {self.arch}: {len(self.syscalls)} syscalls>"


def table_for(arch: str) -> SyscallTable:
    """The table for ``arch`` (``x86_64``/``amd64``/``aarch64``/``arm64``)."""
    name = _MACHINES.get(arch)
    if name is None:
        raise SeccompError(f"unsupported architecture: {arch}")
    tbl = _cache.get(name)
    if tbl is None:
        mod = importlib.import_module(f"._syscalls_{name}", __package__)
        tbl = SyscallTable(name, mod.AUDIT_ARCH, mod.X32_SYSCALL_BIT,
                           getattr(mod, _FOREIGN[name]), dict(mod.SYSCALLS))
        _cache[name] = tbl
    return tbl


def table() -> SyscallTable:
    """The table for the machine this process runs on."""
    return table_for(os.uname().machine)
