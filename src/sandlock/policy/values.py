"""Generic validators for policy fields.

Every function here is pure (apart from reading the current directory to
make paths absolute) and raises only :class:`PolicyError` for bad input,
with a message that names the field and quotes the offending value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..exceptions import PolicyError, field_error

__all__ = [
    "bad_value",
    "items_of",
    "check_bool",
    "check_int",
    "check_optional_int",
    "check_path",
    "check_path_list",
    "check_optional_path",
    "check_env",
    "check_name",
    "check_str_list",
    "check_cpu_list",
    "MAX_CPU",
]

MAX_CPU = 1023
_MAX_SHOWN = 200
_STRINGY = (str, bytes, bytearray, memoryview)


class _Shown:
    """Stands in for a value in an error message; its repr is precomputed."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _safe_repr(value) -> str:
    """repr(value), bounded in length and never raising."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 512:
        return f"<int of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a hostile or broken __repr__ must not mask the real error
        text = f"<{type(value).__name__} object>"
    if not isinstance(text, str):
        text = f"<{type(value).__name__} object>"
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 20] + "..." + text[-17:]
    return text


def bad_value(field: str, value, why: str) -> PolicyError:
    """Like field_error, but safe for any value (huge ints, long strings)."""
    return field_error(field, _Shown(_safe_repr(value)), why)


def items_of(value, field: str, what: str) -> list:
    """The items of a list-like policy value.

    A bare string (or bytes) and a mapping are rejected, as is anything
    that is not iterable; ``what`` names the expected items ("paths").
    """
    if isinstance(value, _STRINGY):
        raise bad_value(field, value, f"expected a list of {what}, not a string")
    if isinstance(value, Mapping):
        raise bad_value(field, value, f"expected a list of {what}, not a mapping")
    if isinstance(value, os.PathLike):
        raise bad_value(field, value, f"expected a list of {what}, not a single path")
    try:
        iterator = iter(value)
    except TypeError:
        raise bad_value(field, value, f"expected a list of {what}") from None
    return list(iterator)


def check_bool(value, field: str) -> bool:
    """A real bool (ints such as 0 and 1 are rejected)."""
    if not isinstance(value, bool):
        raise bad_value(field, value, "expected True or False")
    return value


def check_int(value, field: str, lo: int, hi: int | None = None) -> int:
    """An int (not a bool) in the inclusive range lo..hi (hi None: unbounded)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_value(field, value, "expected an integer")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        if hi is None:
            raise bad_value(field, value, f"must be at least {lo}")
        raise bad_value(field, value, f"must be between {lo} and {hi}")
    return value


def check_optional_int(value, field: str, lo: int, hi: int | None = None) -> int | None:
    """None, or an int as accepted by :func:`check_int`."""
    if value is None:
        return None
    return check_int(value, field, lo, hi)


def _check_text(text: str, field: str, value, what: str) -> None:
    """Reject NUL bytes and strings the filesystem encoding cannot encode."""
    if "\0" in text:
        raise bad_value(field, value, f"{what} must not contain a NUL byte")
    try:
        os.fsencode(text)
    except UnicodeError:
        raise bad_value(field, value, f"{what} is not encodable to bytes") from None


def check_path(value, field: str) -> str:
    """One path (str or os.PathLike, not bytes), made absolute and normalized.

    Relative paths are resolved against the current directory at the time
    of validation. Symlinks are not resolved.
    """
    if isinstance(value, os.PathLike) and not isinstance(value, _STRINGY):
        try:
            path = os.fspath(value)
        except TypeError:
            raise bad_value(field, value, "expected a path") from None
    else:
        path = value
    if isinstance(path, (bytes, bytearray)):
        raise bad_value(field, value, "expected a str path, not bytes")
    if not isinstance(path, str):
        raise bad_value(field, value, "expected a path (str or os.PathLike)")
    if not path:
        raise bad_value(field, value, "path must not be empty")
    _check_text(path, field, value, "path")
    try:
        path = os.path.abspath(path)
    except OSError as exc:  # the current directory no longer exists
        raise bad_value(field, value, f"cannot make path absolute: {exc.strerror}") from None
    if path.startswith("//"):  # POSIX keeps a leading "//"; Linux treats it as "/"
        path = "/" + path.lstrip("/")
    return path


def check_path_list(value, field: str) -> tuple[str, ...]:
    """A list of paths, each made absolute; duplicates dropped, order kept."""
    seen: dict[str, None] = {}
    for item in items_of(value, field, "paths"):
        seen.setdefault(check_path(item, field), None)
    return tuple(seen)


def check_optional_path(value, field: str) -> str | None:
    """None, or one path as accepted by :func:`check_path`."""
    if value is None:
        return None
    return check_path(value, field)


def check_env(value, field: str) -> dict[str, str]:
    """A mapping of environment variable names to values (all str).

    Names must be non-empty and contain neither ``=`` nor NUL; values must
    not contain NUL. Returns a new dict.
    """
    if not isinstance(value, Mapping):
        raise bad_value(field, value, "expected a mapping of names to values")
    result: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str):
            raise bad_value(field, key, "variable name must be a str")
        if not key:
            raise bad_value(field, key, "variable name must not be empty")
        if "=" in key:
            raise bad_value(field, key, "variable name must not contain '='")
        _check_text(key, field, key, "variable name")
        if not isinstance(val, str):
            raise bad_value(field, val, f"value of {key!r} must be a str")
        _check_text(val, field, val, f"value of {key!r}")
        result[key] = val
    return result


def check_name(value, field: str) -> str | None:
    """None, or a str whose UTF-8 encoding is 1 to 64 bytes without NUL."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_value(field, value, "expected a str or None")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeError:
        raise bad_value(field, value, "name is not valid UTF-8 text") from None
    if "\0" in value:
        raise bad_value(field, value, "name must not contain a NUL byte")
    if not 1 <= size <= 64:
        raise bad_value(field, value, f"name must be 1 to 64 bytes in UTF-8, not {size}")
    return value


def check_str_list(value, field: str) -> tuple[str, ...]:
    """A list of str (a bare string is rejected); order and duplicates kept."""
    items = items_of(value, field, "strings")
    for item in items:
        if not isinstance(item, str):
            raise bad_value(field, item, "expected every item to be a str")
    return tuple(items)


def check_cpu_list(value, field: str) -> tuple[int, ...] | None:
    """None, or a non-empty list of CPU numbers 0..1023; sorted, deduplicated.

    Whether the CPUs exist on this machine is checked elsewhere.
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        raise bad_value(field, value, "expected a list of CPU numbers, not a single int")
    items = items_of(value, field, "CPU numbers")
    if not items:
        raise bad_value(field, value, "must name at least one CPU")
    cpus = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise bad_value(field, item, "CPU numbers must be integers")
        if not 0 <= item <= MAX_CPU:
            raise bad_value(field, item, f"CPU numbers must be between 0 and {MAX_CPU}")
        cpus.add(int(item))
    return tuple(sorted(cpus))
