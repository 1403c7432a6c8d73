"""The types of `policy_fn(event, ctx)`: SyscallEvent and PolicyContext.

The callback runs in the caller's process, on the thread
"sandlock-policy-fn", one event at a time, in order (policyfn.py).
"""
from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass, field

from .exceptions import PolicyError


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


def _ips(ips, what: str, hostnames: bool) -> list[str]:
    """IP strings (and hostnames, where the method takes them), checked."""
    if isinstance(ips, (str, bytes)) or not hasattr(ips, "__iter__"):
        raise PolicyError(f"{what}: expected a list of IP addresses, got {ips!r}")
    out = []
    for ip in ips:
        if not isinstance(ip, str):
            raise PolicyError(f"{what}: expected an IP address string, got {ip!r}")
        try:
            out.append(str(ipaddress.ip_address(ip)))
        except ValueError:
            if not hostnames or not ip or len(ip) > 253 or any(c in ip for c in " /:@"):
                raise PolicyError(f"{what}: {ip!r} is not an IP address") from None
            out.append(ip.lower().rstrip("."))
    return out


@dataclass
class PolicyContext:
    """What policy_fn may change about the running sandbox. Every change only
    narrows the policy, except grant_network, which cannot exceed the
    sandbox's initial allowlist (its ceiling). The changes are applied by
    the supervisor before the syscall that was being judged is answered."""
    _changes: list = field(default_factory=list, repr=False)
    _limits: dict = field(default_factory=dict, repr=False)

    def restrict_network(self, ips: list[str]) -> None:
        """From now on only these destinations (IPs, or hostnames the policy
        names: their pinned addresses), within the static policy."""
        self._changes.append(("restrict_network", _ips(ips, "restrict_network", True)))

    def grant_network(self, ips: list[str]) -> None:
        """Give back destinations a restrict_network took, never beyond the
        sandbox's initial allowlist. A hostname stands for the addresses the
        policy pinned for it."""
        self._changes.append(("grant_network", _ips(ips, "grant_network", True)))

    def restrict_max_memory(self, bytes: int) -> None:
        self._lower("max_memory", "restrict_max_memory", bytes)

    def restrict_max_processes(self, n: int) -> None:
        self._lower("max_processes", "restrict_max_processes", n)

    def restrict_pid_network(self, pid: int, ips: list[str]) -> None:
        """Process `pid` (a thread group: event.pid) may reach only these."""
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise PolicyError(f"restrict_pid_network: expected a pid, got {pid!r}")
        self._changes.append(("restrict_pid_network", (pid, _ips(ips, "restrict_pid_network", True))))

    def deny_path(self, path: str) -> None:
        """Opens and execs of this path (or below it, or of the same file by
        another name) fail with EACCES from now on. Applies to the opens and
        execs policy_fn holds (see policy_fn_events)."""
        self._changes.append(("deny_path", _abs(path, "deny_path")))

    def allow_path(self, path: str) -> None:
        """Undo a deny_path (never beyond the static policy)."""
        self._changes.append(("allow_path", _abs(path, "allow_path")))

    def _lower(self, limit: str, what: str, value) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise PolicyError(f"{what}: expected a positive int, got {value!r}")
        if self._limits.get(limit) is None:
            raise PolicyError(f"{what}: the sandbox has no {limit} limit to lower "
                              f"(set {limit} on the Sandbox)")
        self._changes.append((what, value))

    def _take(self) -> list:
        out, self._changes = self._changes, []
        return out


def _abs(path, what: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise PolicyError(f"{what}: expected an absolute path, got {path!r}")
    return path


def verdict_errno(value) -> tuple[int, bool] | None:
    """(errno, audit) of a policy_fn return value, errno 0 allowing; None
    when the value is not in the verdict table (the call is then denied).
    Only exact types are compared: a value's own __eq__ never runs."""
    if value is None or value is False:
        return 0, False
    if value is True:
        return errno.EPERM, False
    if type(value) is str:
        return (0, True) if value == "audit" else None
    if type(value) is not int:
        return None
    if value in (0, -2):
        return 0, value == -2
    if value == -1:
        return errno.EPERM, False
    return (value, False) if 0 < value < 4096 else None
