"""Syscalls that name another process: the filter side (plan time).

Placeholder interface, filled in by the pid-scoping work (issue 15, items
12 and 18): `arg_blocks` returns seccomp argument blocks, `NOTIFIED` the
syscall names routed to the supervisor when it runs.
"""
from __future__ import annotations

NOTIFIED: tuple[str, ...] = ()


def arg_blocks(table, supervised: bool) -> list:
    """filter_layout.ArgBlock list for the pid-taking syscalls."""
    return []
