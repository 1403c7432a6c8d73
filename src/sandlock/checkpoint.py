"""Checkpoint and restore of a running sandbox.

Not implemented yet in this version of sandlock: `Checkpoint` and
`SkippedFd` exist so code written for the reference SDK imports;
`Sandbox.checkpoint()` on a running sandbox and every Checkpoint
operation raise NotImplementedError.
"""
from __future__ import annotations

import builtins
from pathlib import Path
from typing import Callable, NamedTuple

_WHAT = "checkpoint/restore is not implemented yet in this version of sandlock"


class SkippedFd(NamedTuple):
    """A file descriptor a restore could not recreate."""
    fd: int
    path: str


def check_name(name) -> str:
    """A checkpoint name is one path component: no '/', no leading '.'."""
    from .exceptions import PolicyError
    if not isinstance(name, str) or not name or "/" in name or "\0" in name or name.startswith("."):
        raise PolicyError(f"checkpoint name: expected a simple name without '/' (got {name!r})")
    return name


class Checkpoint:
    """A frozen image of a sandbox (registers, memory, fds) plus app state."""

    def __init__(self, *_args, **_kwargs):
        raise NotImplementedError(_WHAT)

    @property
    def name(self) -> str:
        raise NotImplementedError(_WHAT)

    @property
    def app_state(self) -> bytes | None:
        raise NotImplementedError(_WHAT)

    def save(self, name: str, *, store: Path | str | None = None) -> Path:
        raise NotImplementedError(_WHAT)

    @classmethod
    def load(cls, name: str, *, store: Path | str | None = None,
             restore_fn: Callable[[bytes], None] | None = None) -> "Checkpoint":
        check_name(name)
        raise NotImplementedError(_WHAT)

    @classmethod
    def list(cls, *, store: Path | str | None = None) -> builtins.list[str]:
        raise NotImplementedError(_WHAT)

    @classmethod
    def delete(cls, name: str, *, store: Path | str | None = None) -> None:
        check_name(name)
        raise NotImplementedError(_WHAT)
