"""sandlock: a lightweight process sandbox for Linux (Landlock + seccomp).

The public names are those of the reference SDK (0.9.0); docs/compat.md
lists where ours deliberately behaves differently.
"""
from ._version import __version__
from .checkpoint import Checkpoint, SkippedFd
from .confine import confine as _confine
from .confine import landlock_abi_version
from .events import PolicyContext, SyscallEvent
from .exceptions import (BranchConflictError, BranchError, ChildError, ConfinementError, ForkError,
                         LandlockUnavailableError, MemoryProtectError, NotifError, PolicyError,
                         SandboxError, SandlockError, SeccompError)
from .handler import ExceptionPolicy, Handler, HandlerCtx, NotifAction
from .image import Image, ImageConfig, pull_image
from .inputs import inputs
from .pipeline import Gather, GatherPipeline, NamedStage, Pipeline, Stage
from .profiles import list_profiles, load_profile
from .protections import Protection
from .sandbox import (BranchAction, Change, Entry, ExitReason, Process, Result, Sandbox, StdioMode,
                      parse_ports, renames)


def confine(policy: Sandbox) -> None:
    """Confine the calling process with the Landlock part of `policy` (a
    Sandbox): its filesystem and network rules and IPC scoping.
    Irreversible; no seccomp filter and no supervisor are installed."""
    _confine(policy)


def min_landlock_abi() -> int:
    """The Landlock ABI at which sandlock enforces every protection; on an
    older kernel a sandbox refuses to start unless the protections the
    kernel lacks are named in `allow_degraded`."""
    from .protections import FULL_ABI
    return FULL_ABI


__all__ = [
    "__version__",
    # core
    "Sandbox", "Result", "ExitReason", "Process", "StdioMode", "BranchAction", "Protection",
    "Change", "Entry", "renames", "parse_ports",
    "Image", "ImageConfig", "pull_image",
    # composition, snapshots, dynamic policy
    "Stage", "Pipeline", "NamedStage", "Gather", "GatherPipeline", "inputs",
    "Checkpoint", "SkippedFd", "SyscallEvent", "PolicyContext",
    # handlers
    "Handler", "NotifAction", "HandlerCtx", "ExceptionPolicy",
    # platform
    "landlock_abi_version", "min_landlock_abi", "confine",
    # profiles
    "load_profile", "list_profiles",
    # exceptions
    "SandlockError", "PolicyError", "SandboxError", "ForkError", "ConfinementError",
    "LandlockUnavailableError", "SeccompError", "ChildError", "MemoryProtectError", "NotifError",
    "BranchError", "BranchConflictError",
]
