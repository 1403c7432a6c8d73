"""Exception hierarchy. Every error sandlock raises is a SandlockError.

The tree has the same shape as the reference SDK's (0.9.0), so code written
for it catches the same classes. Two extra built-in bases make our stricter
behaviour catchable the way that code catches the reference's errors:

- PolicyError is raised at construction (a bad field value); the reference
  raises ValueError for some fields there and RuntimeError for the rest when
  the sandbox is built. PolicyError is both.
- SandboxError (and everything under it) is a RuntimeError: the reference
  raises RuntimeError for lifecycle misuse ("sandbox is not running",
  "already running") and failed launches.
"""


class SandlockError(Exception):
    """Base class of every sandlock error."""


class PolicyError(SandlockError, ValueError, RuntimeError):
    """A policy value is invalid. Raised before anything runs."""


class SandboxError(SandlockError, RuntimeError):
    """The sandbox itself failed (launch, supervisor, hand-off), or a
    lifecycle method was called in the wrong state."""


class ForkError(SandboxError):
    """Creating a process for the sandbox failed."""


class ConfinementError(SandboxError):
    """A confinement step (Landlock, seccomp, prctl) could not be applied."""


class LandlockUnavailableError(ConfinementError):
    """The kernel lacks Landlock, or an ABI feature the policy needs."""


class SeccompError(ConfinementError):
    """The seccomp filter could not be built or installed."""


class NotifError(SeccompError):
    """Seccomp user notification is unavailable or failed."""


class ChildError(SandboxError):
    """The sandboxed child failed before running the command."""


class BranchError(SandboxError):
    """A copy-on-write branch operation (commit, abort) failed."""


class BranchConflictError(BranchError):
    """A commit was refused: another branch of the same workdir committed first."""


class MemoryProtectError(SandlockError):
    """Changing memory protection (mprotect) failed."""


def field_error(field: str, value, why: str) -> PolicyError:
    """A PolicyError whose message names the field and quotes the value."""
    return PolicyError(f"{field}: {why} (got {value!r})")
