"""Which syscalls `policy_fn` sees, and how: the one catalogue.

Held syscalls wait for the callback's verdict before anything happens (the
supervisor asks first, then acts on the child's behalf or lets the kernel
go on). Observed ones are reported and never delayed: the callback's
verdict for them is ignored.

An event is named as the reference names it: legacy spellings of the file
mutations carry their *at name (`mkdir` → "mkdirat"), `creat` is "open".
`openat2` and `clone3` never reach the supervisor (the filter answers
ENOSYS; libc falls back to the routed spellings).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..exceptions import PolicyError
from . import values

# syscall → (event name, category)
HOLDABLE: dict[str, tuple[str, str]] = {
    "execve": ("execve", "process"), "execveat": ("execveat", "process"),
    "open": ("open", "file"), "openat": ("openat", "file"), "creat": ("open", "file"),
    "connect": ("connect", "network"), "bind": ("bind", "network"),
    "sendto": ("sendto", "network"), "sendmsg": ("sendmsg", "network"),
    "sendmmsg": ("sendmmsg", "network"),
}
OBSERVABLE: dict[str, tuple[str, str]] = {
    "mkdir": ("mkdirat", "file"), "mkdirat": ("mkdirat", "file"),
    "mknod": ("mknodat", "file"), "mknodat": ("mknodat", "file"),
    "unlink": ("unlinkat", "file"), "rmdir": ("unlinkat", "file"), "unlinkat": ("unlinkat", "file"),
    "symlink": ("symlinkat", "file"), "symlinkat": ("symlinkat", "file"),
    "link": ("linkat", "file"), "linkat": ("linkat", "file"),
    "rename": ("renameat2", "file"), "renameat": ("renameat2", "file"),
    "renameat2": ("renameat2", "file"), "truncate": ("truncate", "file"),
    "fork": ("fork", "process"), "vfork": ("vfork", "process"), "clone": ("clone", "process"),
    "mmap": ("mmap", "memory"), "munmap": ("munmap", "memory"), "brk": ("brk", "memory"),
    "getrandom": ("getrandom", "memory"),
}
NAMES: dict[str, tuple[str, str]] = {**OBSERVABLE, **HOLDABLE}
CATEGORIES = ("file", "network", "process", "memory")
# Asked about when the caller does not choose: every held syscall, the file
# mutations and the forks. Memory events (an mmap per allocation) only when
# named: the reference sends them always, at a round trip each.
DEFAULT_EVENTS = ("file", "network", "process")
DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class PolicyFnPlan:
    held: tuple[str, ...]       # syscalls held for a verdict
    observed: tuple[str, ...]   # syscalls only reported
    timeout: float


def _selected(names, field: str) -> set[str]:
    """The syscalls a list of event names, syscall names or categories selects."""
    out: set[str] = set()
    for item in values.items_of(names, field, "event names or categories"):
        if not isinstance(item, str):
            raise values.bad_value(field, item, "expected an event name or a category")
        if item in CATEGORIES:
            out |= {n for n, (_e, c) in NAMES.items() if c == item}
            continue
        hits = {n for n, (e, _c) in NAMES.items() if n == item or e == item}
        if not hits:
            raise PolicyError(f"{field}: unknown event {item!r} (expected one of "
                              f"{', '.join(CATEGORIES)} or a syscall name such as 'connect')")
        out |= hits
    return out


def plan_policy_fn(fn, events, observe, timeout) -> PolicyFnPlan | None:
    """The resolved policy_fn settings (None without a policy_fn)."""
    if fn is None:
        if events is not None or observe or timeout is not None:
            raise PolicyError("policy_fn_events / policy_fn_observe / policy_fn_timeout "
                              "need a policy_fn")
        return None
    chosen = _selected(DEFAULT_EVENTS if events is None else events, "policy_fn_events")
    watched = _selected(observe, "policy_fn_observe") if observe else set()
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
        raise values.bad_value("policy_fn_timeout", timeout, "expected seconds, above 0 and at most 3600")
    held = tuple(sorted(n for n in chosen - watched if n in HOLDABLE))
    observed = tuple(sorted((chosen | watched) - set(held)))
    return PolicyFnPlan(held, observed, float(timeout))
