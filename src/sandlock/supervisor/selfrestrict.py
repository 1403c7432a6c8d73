"""Has the sandboxed program added a Landlock ruleset of its own?

A call the supervisor performs on the child's behalf runs with the
supervisor's rights, checked against sandlock's own policy only. Once a
program inside the sandbox calls landlock_restrict_self, it may forbid
itself more than that policy does, and the supervisor cannot read that
ruleset back to check against it. So from then on the supervisor stops
performing such calls: each handler that would do one asks `active` first
and refuses with `ERRNO` instead. Calls left to the kernel (CONTINUE) keep
working: the kernel checks every Landlock domain of the calling thread.

The flag is sandbox-wide and never cleared: Landlock domains are per
thread and inherited by children, and a process re-parented to the
supervisor (an orphan) no longer shows whose child it was, so tracking
which tasks restricted themselves could be evaded. It is set when the
call is notified, before the kernel applies it (or refuses it): a failed
landlock_restrict_self sets it too, which only ever refuses more.
"""
from __future__ import annotations

import errno


class SelfRestriction:
    """One per run. `on_restrict_self` is the handler for
    landlock_restrict_self; `active` tells every other handler whether to
    refuse what it would do with the supervisor's own rights."""

    ERRNO = errno.EACCES  # what a refused on-behalf call returns

    def __init__(self) -> None:
        self._active = False

    @property
    def active(self) -> bool:
        return self._active

    def on_restrict_self(self, ctx):
        self._active = True
        return None  # CONTINUE: the kernel applies the ruleset to the caller
