"""Syscalls that name another process: the supervisor side.

Placeholder interface (issue 15, items 12 and 18): `handlers(root, nrs)`
returns nr → handler for every syscall pidscope.NOTIFIED routes here.
"""
from __future__ import annotations


def handlers(root: int, nrs: dict[str, int]) -> dict:
    return {}
