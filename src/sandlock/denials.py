"""What the sandbox refused, and what would allow it (`Result.denials`).

Only the supervisor's own refusals are recorded: a built-in handler
describes one by returning a `Refused` (an errno, as `int`, carrying
the kind, the target, the operation and the Sandbox field that would
allow it) instead of a bare errno; the dispatcher notes it in a
`Recorder`, bounded (MAX_RECORDS distinct records, a count of the rest);
the records reach the caller in protocol.Finished and become `Denial`s.

Bare errnos (a bad argument, the kernel's own answer passed through) are
not recorded, and nothing is looked at on the allowed path. What the
kernel refuses without asking the supervisor is not seen: Landlock's
file and port refusals (the exec failure is explained by the CLI from
the policy), and the seccomp deny filter's EPERM.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

MAX_RECORDS = 64
MAX_TARGET = 256  # characters of a target or value kept: 64 records stay within a pipe's 64 KiB

# Sandbox field -> the `sandlock run` flag that adds a value to it.
FLAGS = {"fs_readable": "-r", "fs_writable": "-w", "net_allow": "--net-allow",
         "net_allow_bind": "--net-allow-bind", "max_processes": "-P"}


class Refused(int):
    """An errno verdict that says what was refused. `field`/`value`: the
    Sandbox field and the value that would allow it ("" when none would;
    `reason` then says why). `operation` "" is filled in with the
    syscall's name."""

    kind: str
    target: str
    operation: str
    field: str
    value: str
    reason: str

    def __new__(cls, err: int, kind: str, target: str, operation: str = "",
                field: str = "", value: str = "", reason: str = ""):
        self = super().__new__(cls, err)
        self.kind, self.target, self.operation = kind, target, operation
        self.field, self.value, self.reason = field, value, reason
        return self


@dataclass(frozen=True)
class Denial:
    """One kind of refusal of a run: `count` times the same (kind, target,
    operation, errno). `hint`: the Sandbox field and value that would
    allow it ("fs_writable: /data/x.csv"), `flag` the `sandlock run` flag
    ("-w /data/x.csv"); both "" when no field would, and `reason` says why."""
    kind: str         # "file", "network", "process"
    target: str       # a path, address:port, a pid, a syscall
    operation: str    # "chmod", "connect", "open", "write", "fork", ...
    errno: int
    hint: str = ""
    flag: str = ""
    reason: str = ""
    count: int = 1

    def __str__(self) -> str:
        how = f"allow with {self.flag}" if self.flag else (
            f"allow with {self.hint}" if self.hint else self.reason or os.strerror(self.errno))
        return f"denied {self.operation} {self.target} ({how})"


class Recorder:
    """The supervisor's bounded record of a run's refusals."""

    def __init__(self, limit: int = MAX_RECORDS):
        self.limit = limit
        self.records: dict[tuple, list] = {}  # (kind, target, operation, errno) -> [record, count]
        self.more = 0                          # refusals past `limit` distinct ones
        self._names: dict[int, str] | None = None

    def note(self, refused: Refused, nr: int) -> None:
        try:
            operation = refused.operation or self._syscall_name(nr)
            key = (refused.kind, _cut(refused.target), operation, int(refused))
            entry = self.records.get(key)
            if entry is not None:
                entry[1] += 1
            elif len(self.records) < self.limit:
                self.records[key] = [(refused.field, _cut(refused.value), _cut(refused.reason)), 1]
            else:
                self.more += 1
        except Exception:  # noqa: BLE001 - a record is never worth failing the call
            pass

    def _syscall_name(self, nr: int) -> str:
        if self._names is None:
            from ._kernel import syscalls as _syscalls
            self._names = {v: k for k, v in _syscalls.table().syscalls.items()}
        return self._names.get(nr, f"syscall {nr}")

    def export(self) -> tuple[list[tuple], int]:
        """(records as plain tuples for protocol.Finished, the rest's count)."""
        return [(*key, *extra, count) for key, (extra, count) in self.records.items()], self.more


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TARGET else text[:MAX_TARGET] + "..."


def from_records(records, more: int = 0) -> list[Denial]:
    """Finished's plain records → Denials (field/value turned into the hint
    and the flag)."""
    out = []
    for kind, target, operation, err, field, value, reason, count in records:
        if field == "max_processes":  # value: the limit reached
            hint, flag = f"max_processes above {value}", f"-P N (N > {value})"
        else:
            hint = f"{field}: {value}" if field else ""
            flag = f"{FLAGS[field]} {shlex.quote(value)}" if field in FLAGS else ""
        out.append(Denial(kind, target, operation, err, hint, flag, reason, count))
    return out
