"""The determinism fields, validated: random_seed and time_start.

time_start becomes an integer count of nanoseconds since the epoch, kept
exactly (fractional seconds included; a float is taken as the float it is).
Accepted: an aware or naive datetime (naive means UTC), an int or float
number of seconds since the epoch, or an ISO 8601 / RFC 3339 string (a
trailing Z or an offset; none means UTC). Times before 1970 are accepted
(the clock then reads negative seconds); outside years 1..9999 is refused.
"""
from __future__ import annotations

import datetime as _dt
import math
from fractions import Fraction

from . import values

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
# datetime's range, which every accepted spelling shares.
MIN_NS = int((_dt.datetime(1, 1, 1, tzinfo=_dt.timezone.utc) - _EPOCH).total_seconds()) * 10**9
MAX_NS = int((_dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=_dt.timezone.utc)
              - _EPOCH).total_seconds()) * 10**9
_WHY = ("expected a datetime, seconds since the epoch (int or float), or an ISO 8601 "
        "time such as '2000-01-01T00:00:00Z', within years 1..9999")


def random_seed(value) -> int | None:
    """None, or the seed as an unsigned 64-bit int (bools refused)."""
    return values.check_optional_int(value, "random_seed", 0, 2**64 - 1)


def time_start_ns(value) -> int | None:
    """None, or time_start in nanoseconds since the epoch."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise values.bad_value("time_start", value, _WHY)
    if isinstance(value, str):
        value = _parse(value)
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        delta = value - _EPOCH
        ns = (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    elif isinstance(value, int):
        ns = value * 10**9
    elif isinstance(value, float) and math.isfinite(value):
        ns = round(Fraction(value) * 10**9)  # the float's exact value, to the nanosecond
    else:
        raise values.bad_value("time_start", value, _WHY)
    if not MIN_NS <= ns <= MAX_NS:
        raise values.bad_value("time_start", value, _WHY)
    return ns


def _parse(text: str) -> _dt.datetime:
    spelled = text.strip()
    if spelled[-1:] in ("Z", "z"):
        spelled = spelled[:-1] + "+00:00"
    try:
        return _dt.datetime.fromisoformat(spelled)
    except ValueError:
        raise values.bad_value("time_start", text, _WHY) from None
