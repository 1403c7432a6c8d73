"""sandlock: a lightweight process sandbox for Linux (Landlock + seccomp)."""
from .exceptions import (ConfinementError, LandlockUnavailableError, NotifError, PolicyError,
                         SandboxError, SandlockError, SeccompError)
from .policy.model import BranchAction
from .sandbox import Change, ExitReason, Process, Result, Sandbox
from .confine import confine, landlock_abi_version

from ._version import __version__

__all__ = [
    "__version__", "Sandbox", "Result", "ExitReason", "Process", "Change", "BranchAction",
    "confine", "landlock_abi_version",
    "SandlockError", "PolicyError", "SandboxError", "ConfinementError",
    "LandlockUnavailableError", "SeccompError", "NotifError",
]
