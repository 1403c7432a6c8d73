"""Port sets for ``net_allow_bind`` / ``net_deny_bind``."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from .values import bad_value, items_of

__all__ = ["MAX_PORT", "PortSet", "parse_port_specs"]

MAX_PORT = 65535
_FULL = ((0, MAX_PORT),)
_RANGE_RE = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", re.ASCII)


def _merge(ranges) -> tuple[tuple[int, int], ...]:
    """Sort ranges and coalesce overlapping or adjacent ones."""
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)


@dataclass(frozen=True)
class PortSet:
    """A set of TCP/UDP ports: every port (``any``) or inclusive ranges.

    Instances are canonical: ranges are sorted and merged, and a set that
    covers every port is stored as ``any=True`` with no ranges, so equal
    sets compare equal.
    """

    any: bool = False
    ranges: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.any, bool):
            raise bad_value("PortSet.any", self.any, "expected True or False")
        checked = []
        for pair in items_of(self.ranges, "PortSet.ranges", "(lo, hi) pairs"):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise bad_value("PortSet.ranges", pair, "expected a (lo, hi) pair")
            lo, hi = pair
            for port in pair:
                if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= MAX_PORT:
                    raise bad_value("PortSet.ranges", pair, f"ports must be 0 to {MAX_PORT}")
            if lo > hi:
                raise bad_value("PortSet.ranges", pair, "range start is after its end")
            checked.append((int(lo), int(hi)))
        ranges = _merge(checked)
        any_port = self.any or ranges == _FULL
        object.__setattr__(self, "any", any_port)
        object.__setattr__(self, "ranges", () if any_port else ranges)

    def __contains__(self, port) -> bool:
        if isinstance(port, bool) or not isinstance(port, int):
            return False
        if not 0 <= port <= MAX_PORT:
            return False
        if self.any:
            return True
        i = bisect.bisect_right(self.ranges, (port, MAX_PORT)) - 1
        return i >= 0 and self.ranges[i][0] <= port <= self.ranges[i][1]

    @property
    def is_empty(self) -> bool:
        """True when the set holds no port at all."""
        return not self.any and not self.ranges

    def to_spec(self) -> list[str]:
        """A spec list that :func:`parse_port_specs` maps back to this set."""
        if self.any:
            return ["*"]
        return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges]


def _port(text: str, field: str, value) -> int:
    if len(text.lstrip("0")) > 5 or int(text) > MAX_PORT:
        raise bad_value(field, value, f"port must be 0 to {MAX_PORT}")
    return int(text)


def parse_port_specs(value, field: str) -> PortSet:
    """Parse a list of port specs into a :class:`PortSet`.

    Each item is an int port (0-65535) or a string: ``"8080"``,
    ``"9000-9005"``, comma-separated lists of those, or ``"*"`` for every
    port. Entries are a union: repeats are harmless, and ``"*"`` next to
    other entries is still every port. A bare string or int is rejected;
    an empty list gives an empty set.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        raise bad_value(field, value, "expected a list of ports, not a single int")
    ranges: list[tuple[int, int]] = []
    star = False
    items = items_of(value, field, "ports")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise bad_value(field, item, "each port must be an int or a string like '80' or '9000-9005'")
        if isinstance(item, int):
            if not 0 <= item <= MAX_PORT:
                raise bad_value(field, item, f"port must be 0 to {MAX_PORT}")
            ranges.append((int(item), int(item)))
            continue
        for part in item.split(","):
            if part.strip() == "*":
                star = True
                continue
            match = _RANGE_RE.fullmatch(part)
            if match is None:
                if not part.strip():
                    raise bad_value(field, item, "empty port entry")
                raise bad_value(field, item, "expected a port like '80', a range like '9000-9005', or '*'")
            lo = _port(match.group(1), field, item)
            hi = lo if match.group(2) is None else _port(match.group(2), field, item)
            if lo > hi:
                raise bad_value(field, item, "range start is after its end")
            ranges.append((lo, hi))
    return PortSet(any=star, ranges=tuple(ranges))
