"""Named inputs of a gather consumer: `from sandlock import inputs`.

A gather (`a.as_("x") + b.as_("y") | consumer`) connects each producer's
stdout to a file descriptor of the consumer and describes the mapping in
the consumer's environment, `_SANDLOCK_GATHER="x:3,y:0"`. Inside the
consumer:

- `inputs["x"]` reads that descriptor to its end (once; the data is kept)
  and returns it as text (UTF-8);
- `inputs.bytes("x")` returns the same data as bytes;
- `inputs.open("x")` returns the descriptor as a binary
  file, to stream a large input instead of holding it (the name can then
  not be read with the two above);
- `"x" in inputs` and `inputs.keys()` list what is there.

This module needs nothing but the environment variable and the fds: a
consumer's sandbox must be able to import it (grant the directory holding
the `sandlock` package), or the consumer can parse `_SANDLOCK_GATHER`
itself.
"""
from __future__ import annotations

import os
import sys
import types
from typing import BinaryIO, KeysView

ENV_VAR = "_SANDLOCK_GATHER"


class _Inputs:
    def __init__(self) -> None:
        self._fds: dict[str, int] | None = None
        self._values: dict[str, bytes] = {}
        self._streamed: set[str] = set()

    def _map(self) -> dict[str, int]:
        if self._fds is None:
            fds: dict[str, int] = {}
            for item in filter(None, os.environ.get(ENV_VAR, "").split(",")):
                name, sep, fd = item.rpartition(":")
                if sep and name and fd.isdigit():
                    fds[name] = int(fd)
            self._fds = fds
        return self._fds

    def _fd(self, name: str) -> int:
        fds = self._map()
        if name not in fds:
            raise KeyError(f"No gather input named {name!r}. Available: {list(fds)}")
        if name in self._streamed:
            raise ValueError(f"gather input {name!r} was opened as a stream (inputs.open)")
        return fds[name]

    def bytes(self, name: str) -> bytes:
        """The whole input `name`, as bytes (read once, then kept)."""
        if name in self._values:
            return self._values[name]
        fd = self._fd(name)
        with os.fdopen(fd, "rb", closefd=True) as f:
            data = f.read()
        self._values[name] = data
        return data

    def __getitem__(self, name: str) -> str:
        return self.bytes(name).decode("utf-8")

    def open(self, name: str) -> BinaryIO:
        """The input `name` as a binary file, to read as a stream."""
        if name in self._values:
            raise ValueError(f"gather input {name!r} was read already")
        fd = self._fd(name)
        self._streamed.add(name)
        return os.fdopen(fd, "rb", closefd=True)

    def __contains__(self, name: object) -> bool:
        return name in self._map()

    def keys(self) -> KeysView[str]:
        return self._map().keys()

    def __repr__(self) -> str:
        shown = ", ".join(f"{n!r}: <{'read' if n in self._values else f'fd {fd}'}>"
                          for n, fd in self._map().items())
        return f"inputs({{{shown}}})"


inputs = _Inputs()


class _Module(types.ModuleType):
    """This module reads as the accessor too: once `sandlock.inputs` (the
    module) is imported, Python binds the module to that name on the
    package, so `from sandlock import inputs` may give the module."""

    def __getitem__(self, name: str) -> str:
        return inputs[name]

    def __contains__(self, name: object) -> bool:
        return name in inputs

    def keys(self) -> KeysView[str]:
        return inputs.keys()

    def bytes(self, name: str) -> bytes:
        return inputs.bytes(name)

    def open(self, name: str) -> BinaryIO:
        return inputs.open(name)


sys.modules[__name__].__class__ = _Module
