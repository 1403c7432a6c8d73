"""Named Landlock protections: which kernel ABI each needs, and how a policy
degrades (`allow_degraded`) or turns off (`disable`) one of them.

The rule: every protection is enforced. On a kernel that lacks one, the
sandbox refuses to start, unless the caller names that protection in
`allow_degraded` (then it runs without it) or in `disable` (then it is off
on every kernel). Nothing degrades unless the caller names it.
"""
from __future__ import annotations

import enum

from ._kernel import landlock


class Protection(enum.IntEnum):
    """A Landlock protection that can be degraded or disabled by name.

    The values are those of the reference SDK, so code passing integers
    keeps its meaning."""
    FS_REFER = 0                    # renames and links across directories (ABI 2)
    FS_TRUNCATE = 1                 # truncate(2) and O_TRUNC (ABI 3)
    NET_TCP = 2                     # TCP bind / connect port rules (ABI 4)
    FS_IOCTL_DEV = 3                # ioctl on device files (ABI 5)
    SIGNAL_SCOPE = 4                # no signals to processes outside the sandbox (ABI 6)
    ABSTRACT_UNIX_SOCKET_SCOPE = 5  # no connects to abstract sockets outside (ABI 6)


# The Landlock ABI that first offers each protection.
MIN_ABI: dict[Protection, int] = {
    Protection.FS_REFER: 2,
    Protection.FS_TRUNCATE: 3,
    Protection.NET_TCP: 4,
    Protection.FS_IOCTL_DEV: 5,
    Protection.SIGNAL_SCOPE: 6,
    Protection.ABSTRACT_UNIX_SOCKET_SCOPE: 6,
}

# The ABI at which no protection needs degrading.
FULL_ABI = max(MIN_ABI.values())

_FS_BITS = {Protection.FS_REFER: landlock.FS_REFER, Protection.FS_TRUNCATE: landlock.FS_TRUNCATE,
            Protection.FS_IOCTL_DEV: landlock.FS_IOCTL_DEV}
_NET_BITS = {Protection.NET_TCP: landlock.NET_BIND_TCP | landlock.NET_CONNECT_TCP}
_SCOPE_BITS = {Protection.SIGNAL_SCOPE: landlock.SCOPE_SIGNAL,
               Protection.ABSTRACT_UNIX_SOCKET_SCOPE: landlock.SCOPE_ABSTRACT_UNIX_SOCKET}


def coerce(value, field: str) -> Protection:
    """A Protection from a member, its integer value or its name; PolicyError otherwise."""
    from .policy.values import bad_value
    if isinstance(value, Protection):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return Protection(value)
        except ValueError:
            pass
    elif isinstance(value, str) and value in Protection.__members__:
        return Protection[value]
    valid = ", ".join(f"{p.name}={int(p)}" for p in Protection)
    raise bad_value(field, value, f"expected a sandlock.Protection ({valid})")


def coerce_all(values, field: str) -> frozenset[Protection]:
    from .policy.values import items_of
    return frozenset(coerce(v, field) for v in items_of(values, field, "protections"))


def missing(abi: int) -> list[Protection]:
    """The protections a kernel with this Landlock ABI cannot enforce."""
    return [p for p in Protection if MIN_ABI[p] > abi]


def settle(abi: int, allow_degraded, disable) -> frozenset[Protection]:
    """The protections that will be off for this run, or LandlockUnavailableError
    when the kernel lacks one the caller did not name."""
    from .exceptions import LandlockUnavailableError
    if abi < 1:
        raise LandlockUnavailableError(
            "Landlock is not available on this kernel (enable it with lsm=...,landlock); "
            "sandlock does not run without it")
    lacking = missing(abi)
    refused = [p for p in lacking if p not in allow_degraded and p not in disable]
    if refused:
        names = ", ".join(p.name for p in refused)
        need = max(MIN_ABI[p] for p in refused)
        raise LandlockUnavailableError(
            f"Landlock ABI {abi} found: this kernel cannot enforce {names} (needs ABI >= {need}, "
            f"Linux 6.12+ for all of them); name them in allow_degraded=[Protection.X, ...] "
            "to run without them")
    return frozenset(lacking) | frozenset(disable)


def fs_bits(off) -> int:
    """Landlock filesystem rights to leave unhandled for the protections in `off`."""
    return _bits(_FS_BITS, off)


def net_bits(off) -> int:
    return _bits(_NET_BITS, off)


def scope_bits(off) -> int:
    return _bits(_SCOPE_BITS, off)


def _bits(table, off) -> int:
    out = 0
    for p in off:
        out |= table.get(p, 0)
    return out
