"""confine(): apply a sandbox's Landlock policy to the calling process."""
from __future__ import annotations

from ._kernel import landlock
from ._kernel.libc import PR_SET_NO_NEW_PRIVS, prctl
from .exceptions import ConfinementError, LandlockUnavailableError
from .plan import MIN_ABI


def landlock_abi_version() -> int:
    """The kernel's Landlock ABI version (0 when Landlock is unavailable)."""
    return landlock.abi_version()


def confine(sandbox) -> None:
    """Confine the calling process with the sandbox's filesystem and network
    rules and IPC scoping. Irreversible; applies to this thread and to
    threads and children created afterwards (call it before starting threads).
    No seccomp filter and no supervisor are installed."""
    from .launch import build_ruleset
    from .plan import compile_plan
    from .policy.model import normalize
    import sys
    abi = landlock.abi_version()
    if abi < MIN_ABI:
        raise LandlockUnavailableError(f"Landlock ABI {abi} found, sandlock needs ABI >= {MIN_ABI}")
    plan = compile_plan(normalize(sandbox), [sys.executable], abi=abi)
    fd = build_ruleset(plan)
    try:
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        err = landlock.restrict_self(fd)
        if err:
            raise ConfinementError(f"landlock_restrict_self failed: errno {err}")
    finally:
        import os
        os.close(fd)
