"""Exception hierarchy. Every error sandlock raises is a SandlockError."""


class SandlockError(Exception):
    """Base class of every sandlock error."""


class PolicyError(SandlockError, ValueError):
    """A policy value is invalid. Raised before anything runs."""


class SandboxError(SandlockError):
    """The sandbox itself failed (launch, supervisor, hand-off)."""


class ConfinementError(SandboxError):
    """A confinement step (Landlock, seccomp, prctl) could not be applied."""


class LandlockUnavailableError(ConfinementError):
    """The kernel lacks Landlock, or an ABI feature the policy needs."""


class SeccompError(ConfinementError):
    """The seccomp filter could not be built or installed."""


class NotifError(SeccompError):
    """Seccomp user notification is unavailable or failed."""


def field_error(field: str, value, why: str) -> PolicyError:
    """A PolicyError whose message names the field and quotes the value."""
    return PolicyError(f"{field}: {why} (got {value!r})")
