"""Byte sizes such as ``"512M"`` or ``"1.5G"`` (binary units)."""

from __future__ import annotations

import re

from .values import bad_value

__all__ = ["MAX_SIZE", "parse_size", "parse_optional_size", "format_size"]

MAX_SIZE = 2**63 - 1
_MAX_TEXT = 64  # longer strings cannot be sensible sizes
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_SIZE_RE = re.compile(
    r"([0-9]+)(?:\.([0-9]+))?\s*(?:([kmgt])(?:i?b)?|b)?",
    re.IGNORECASE | re.ASCII,
)


def parse_size(value, field: str) -> int:
    """A positive byte count from an int or a string like ``"512M"``.

    Strings are digits with an optional decimal fraction and an optional
    unit K, M, G or T (powers of 1024, case-insensitive; ``KB`` and ``KiB``
    mean the same as ``K``), or ``B`` for bytes; surrounding whitespace is
    ignored. A fraction needs a K/M/G/T unit and the result is rounded
    down to a whole byte. The result must be 1 .. 2**63-1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise bad_value(field, value, "expected a size in bytes (int) or a string like '512M'")
    if isinstance(value, int):
        size = int(value)
    else:
        text = value.strip()
        if len(text) > _MAX_TEXT:
            raise bad_value(field, value, "size string is too long")
        match = _SIZE_RE.fullmatch(text)
        if match is None:
            raise bad_value(
                field, value, "expected a size like '4096', '512M' or '1.5G' (units K, M, G, T)"
            )
        whole, frac, unit = match.group(1), match.group(2), (match.group(3) or "").lower()
        scale = 1024 ** _UNITS[unit]
        if frac is not None and scale == 1:
            raise bad_value(field, value, "a fractional size needs a unit K, M, G or T")
        size = int(whole) * scale
        if frac is not None:
            size += int(frac) * scale // 10 ** len(frac)
    if size < 1:
        raise bad_value(field, value, "size must be at least 1 byte")
    if size > MAX_SIZE:
        raise bad_value(field, value, "size must be at most 2**63-1 bytes")
    return size


def parse_optional_size(value, field: str) -> int | None:
    """None, or a size as accepted by :func:`parse_size`."""
    if value is None:
        return None
    return parse_size(value, field)


def format_size(n: int) -> str:
    """The shortest exact spelling of ``n`` bytes: ``"512M"``, else digits.

    ``parse_size(format_size(n), f) == n`` for every valid size ``n``.
    """
    if isinstance(n, str):
        raise bad_value("size", n, "expected an int byte count")
    n = parse_size(n, "size")
    for unit, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        scale = 1024**power
        if n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)
