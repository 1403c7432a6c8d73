"""Named inputs of a gather consumer: `from sandlock import inputs`.

A gather (`a.as_("x") + b.as_("y") | consumer`) connects each producer's
stdout to a file descriptor of the consumer and describes the mapping in
the consumer's environment, `_SANDLOCK_GATHER="x:3,y:0"`. Inside the
consumer, `inputs["x"]` reads that descriptor to its end (once; the text is
kept) and `"x" in inputs` / `inputs.keys()` list what is there.
"""
from __future__ import annotations

import os

ENV_VAR = "_SANDLOCK_GATHER"


class _Inputs:
    def __init__(self) -> None:
        self._fds: dict[str, int] | None = None
        self._values: dict[str, str] = {}

    def _map(self) -> dict[str, int]:
        if self._fds is None:
            fds: dict[str, int] = {}
            for item in filter(None, os.environ.get(ENV_VAR, "").split(",")):
                name, sep, fd = item.rpartition(":")
                if sep and name and fd.isdigit():
                    fds[name] = int(fd)
            self._fds = fds
        return self._fds

    def __getitem__(self, name: str) -> str:
        if name in self._values:
            return self._values[name]
        fds = self._map()
        if name not in fds:
            raise KeyError(f"No gather input named {name!r}. Available: {list(fds)}")
        with os.fdopen(fds[name], "r", closefd=True) as f:
            text = f.read()
        self._values[name] = text
        return text

    def __contains__(self, name: object) -> bool:
        return name in self._map()

    def keys(self):
        return self._map().keys()

    def __repr__(self) -> str:
        shown = ", ".join(f"{n!r}: <{'read' if n in self._values else f'fd {fd}'}>"
                          for n, fd in self._map().items())
        return f"inputs({{{shown}}})"


inputs = _Inputs()
