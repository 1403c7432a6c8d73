"""The types of `policy_fn(event, ctx)`: SyscallEvent and PolicyContext.

`policy_fn` (dynamic policy) has not landed yet: a Sandbox with a
`policy_fn` refuses to run (NotImplementedError). The event type is
complete so callbacks can be written and unit-tested now; the context's
methods raise NotImplementedError until the feature lands.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SyscallEvent:
    """A syscall the supervisor holds (or observes) for policy_fn.

    There is deliberately no path: a path read from the caller's memory can
    change after the check (use fs_readable / fs_writable / fs_denied).
    `argv` is given for execve/execveat only."""
    syscall: str
    category: str                 # "file", "network", "process" or "memory"
    pid: int
    parent_pid: int = 0
    host: str | None = None       # destination IP, for network calls
    port: int = 0
    argv: tuple[str, ...] | None = None
    denied: bool = False          # the static policy already denies it

    def argv_contains(self, s: str) -> bool:
        """True when some argv element contains `s` (execve events only)."""
        return self.argv is not None and any(s in a for a in self.argv)


_WHAT = "policy_fn is not implemented yet in this version of sandlock"


class PolicyContext:
    """What policy_fn may change about the running sandbox. Every change only
    narrows the policy, except grant_network, which cannot exceed the
    sandbox's initial allowlist."""

    def restrict_network(self, ips: list[str]) -> None:
        raise NotImplementedError(_WHAT)

    def grant_network(self, ips: list[str]) -> None:
        raise NotImplementedError(_WHAT)

    def restrict_max_memory(self, bytes: int) -> None:
        raise NotImplementedError(_WHAT)

    def restrict_max_processes(self, n: int) -> None:
        raise NotImplementedError(_WHAT)

    def restrict_pid_network(self, pid: int, ips: list[str]) -> None:
        raise NotImplementedError(_WHAT)

    def deny_path(self, path: str) -> None:
        raise NotImplementedError(_WHAT)

    def allow_path(self, path: str) -> None:
        raise NotImplementedError(_WHAT)
