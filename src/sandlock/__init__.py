"""sandlock: a lightweight process sandbox for Linux (Landlock + seccomp).

The public names are those of the reference SDK (0.9.0); docs/compat.md
lists where ours deliberately behaves differently.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# Names are imported on first use (PEP 562): `import sandlock` and the
# command line load only what they touch. Measured on the 2-core VM:
# importing every module up front cost the CLI ~60-100 ms before anything
# ran (python -X importtime; benchmarks rows "cli_true" and "first_run").
_LAZY: dict[str, str] = {
    "Checkpoint": ".checkpoint", "SkippedFd": ".checkpoint",
    "landlock_abi_version": ".confinement",
    "inspect": ".control", "kill": ".control", "ps": ".control",
    "PolicyContext": ".events", "SyscallEvent": ".events",
    "BranchConflictError": ".exceptions", "BranchError": ".exceptions", "ChildError": ".exceptions",
    "ConfinementError": ".exceptions", "ForkError": ".exceptions",
    "LandlockUnavailableError": ".exceptions", "MemoryProtectError": ".exceptions",
    "NotifError": ".exceptions", "PolicyError": ".exceptions", "SandboxError": ".exceptions",
    "SandlockError": ".exceptions", "SeccompError": ".exceptions",
    "ExceptionPolicy": ".handler", "Handler": ".handler", "HandlerCtx": ".handler",
    "NotifAction": ".handler",
    "Image": ".image", "ImageConfig": ".image", "pull_image": ".image",
    "inputs": ".inputs",
    "Gather": ".pipeline", "GatherPipeline": ".pipeline", "NamedStage": ".pipeline",
    "Pipeline": ".pipeline", "Stage": ".pipeline",
    "list_profiles": ".profiles", "load_profile": ".profiles",
    "Protection": ".protections",
    "BranchAction": ".sandbox", "Change": ".sandbox", "Entry": ".sandbox", "ExitReason": ".sandbox",
    "Process": ".sandbox", "Result": ".sandbox", "Sandbox": ".sandbox", "StdioMode": ".sandbox",
    "parse_ports": ".sandbox", "renames": ".sandbox",
}

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .checkpoint import Checkpoint, SkippedFd  # noqa: F401
    from .confinement import landlock_abi_version  # noqa: F401
    from .control import inspect, kill, ps  # noqa: F401
    from .events import PolicyContext, SyscallEvent  # noqa: F401
    from .exceptions import (BranchConflictError, BranchError, ChildError,  # noqa: F401
                             ConfinementError, ForkError, LandlockUnavailableError,
                             MemoryProtectError, NotifError, PolicyError, SandboxError,
                             SandlockError, SeccompError)
    from .handler import ExceptionPolicy, Handler, HandlerCtx, NotifAction  # noqa: F401
    from .image import Image, ImageConfig, pull_image  # noqa: F401
    from .inputs import inputs  # noqa: F401
    from .pipeline import Gather, GatherPipeline, NamedStage, Pipeline, Stage  # noqa: F401
    from .profiles import list_profiles, load_profile  # noqa: F401
    from .protections import Protection  # noqa: F401
    from .sandbox import (BranchAction, Change, Entry, ExitReason, Process, Result,  # noqa: F401
                          Sandbox, StdioMode, parse_ports, renames)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sandlock' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def confine(policy: Sandbox) -> None:  # noqa: F811
    """Confine the calling process with the Landlock part of `policy` (a
    Sandbox): its filesystem and network rules and IPC scoping.
    Irreversible; no seccomp filter and no supervisor are installed."""
    from .confinement import confine as _confine
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
    # running sandboxes
    "ps", "inspect", "kill",
    # exceptions
    "SandlockError", "PolicyError", "SandboxError", "ForkError", "ConfinementError",
    "LandlockUnavailableError", "SeccompError", "ChildError", "MemoryProtectError", "NotifError",
    "BranchError", "BranchConflictError",
]
