"""Named profiles: TOML files in $XDG_CONFIG_HOME/sandlock/profiles/
(~/.config/sandlock/profiles/ when the variable is unset).

`list_profiles()` lists them. Loading one (`load_profile`) is not
implemented yet in this version of sandlock and raises NotImplementedError.
"""
from __future__ import annotations

import os
from pathlib import Path


def profiles_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "sandlock" / "profiles"


def list_profiles() -> list[str]:
    """The sorted names of the profiles found (file names without .toml)."""
    directory = profiles_dir()
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.toml") if p.is_file())


def load_profile(name: str):
    """A Sandbox from the named profile. Not implemented yet."""
    from .exceptions import PolicyError
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise PolicyError(f"profile name: expected a simple name (got {name!r})")
    raise NotImplementedError("load_profile: profiles are not implemented yet in this version "
                              "of sandlock")
