"""Policies of MCP tool calls: a deny-by-default base plus validated capabilities.

Nothing here imports the MCP SDK.

A tool's *capabilities* are Sandbox fields it declares it needs. They are
added to the base policy (never replace it), and each is checked:

- only the keys of CAPABILITY_KEYS are capabilities; anything else, and in
  particular `no_supervisor`, is refused (a capability can never turn a
  protection off);
- list fields must be lists of strings (`net_allow: "*"` is an error, not
  one rule per character);
- a path capability is resolved (symlinks included) and must lie in the
  workspace or in a directory the server was configured to allow
  (`allowed_paths`); `/`, a home directory and any directory holding one
  are refused even when configured. A relative path is relative to the
  workspace (`"."` is the workspace itself);
- network capabilities are refused unless the server allows network
  (`allow_network=True`, `sandlock-mcp --allow-network`).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Sequence

from ..exceptions import PolicyError
from ..sandbox import Sandbox

__all__ = ["CapabilityError", "CAPABILITY_KEYS", "policy_for_tool", "validate_capabilities",
           "SYSTEM_READABLE", "FILE_TOOL_READABLE"]


class CapabilityError(PolicyError):
    """A capability that is not allowed or not well-formed (a ValueError)."""


# Read-only for the shell and python tools: what sh, coreutils and Python need.
SYSTEM_READABLE = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# Read-only for the file tools, which run only the interpreter: no /etc (a
# symlink in the workspace pointing at /etc/passwd must not be followed),
# only the dynamic loader's cache.
FILE_TOOL_READABLE = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
# Stay unreadable inside /etc (as in `sandlock run`'s default policy).
DENIED = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-",
          "/etc/sudoers", "/etc/sudoers.d", "/etc/ssh", "/etc/ssl/private")
TOOL_PATH = "/usr/local/bin:/usr/bin:/bin"
BASE_MAX_MEMORY = "1G"
BASE_MAX_PROCESSES = 64

# key -> kind
CAPABILITY_KEYS: dict[str, str] = {
    "fs_readable": "paths", "fs_writable": "paths", "fs_denied": "denied",
    "net_allow": "net", "net_allow_bind": "net",
    "max_memory": "limit", "max_processes": "limit", "max_cpu": "limit",
    "max_open_files": "limit", "num_cpus": "limit",
    "env": "env",
}

_REFUSED = {
    "no_supervisor": "a capability can never switch off the supervisor",
    "clean_env": "the environment of a tool is always cleared",
    "disable": "a capability can never turn a Landlock protection off",
    "allow_degraded": "a capability can never weaken a Landlock protection",
    "extra_allow_syscalls": "a capability cannot allow denied syscalls",
    "chroot": "a capability cannot change the filesystem view",
    "fs_mount": "a capability cannot change the filesystem view",
    "fs_mount_ro": "a capability cannot change the filesystem view",
    "image": "a capability cannot change the filesystem view",
    "cwd": "a tool always runs in the workspace",
}


def _homes() -> set[str]:
    homes = {os.path.realpath(os.path.expanduser("~"))}
    try:
        import pwd
        homes.add(os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir))
        for entry in pwd.getpwall():
            if entry.pw_dir and entry.pw_dir.startswith("/home/"):
                homes.add(os.path.realpath(entry.pw_dir))
    except (KeyError, ImportError, OSError):
        pass
    homes.add("/root")
    return {h for h in homes if h and h != "/"}


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_grantable(path: str, what: str) -> str:
    """`path` resolved; CapabilityError if it is /, a home directory or a
    directory holding one."""
    real = os.path.realpath(path)
    if real == "/":
        raise CapabilityError(f"{what}: {path!r} is / (the whole filesystem is never granted)")
    for home in _homes():
        if _under(home, real):
            raise CapabilityError(f"{what}: {path!r} is a home directory or holds one ({home}); "
                                  "never granted")
    return real


def _string_list(value: Any, key: str) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise CapabilityError(f"capability {key}: expected a list of strings, got {value!r}")
    for item in value:
        if not isinstance(item, str) or not item or "\0" in item:
            raise CapabilityError(f"capability {key}: expected a list of non-empty strings, got {item!r}")
    return list(value)


def _capability_paths(value: Any, key: str, workspace: str, allowed: Sequence[str]) -> list[str]:
    out = []
    for item in _string_list(value, key):
        path = item if os.path.isabs(item) else os.path.join(workspace, item)
        real = check_grantable(path, f"capability {key}")
        if not any(_under(real, root) for root in (workspace, *allowed)):
            raise CapabilityError(f"capability {key}: {item!r} ({real}) is outside the workspace and "
                                  "the paths this server allows")
        out.append(real)
    return out


def validate_capabilities(capabilities: Mapping[str, Any] | None, *, workspace: str,
                          allowed_paths: Sequence[str] = (), allow_network: bool = False) -> dict[str, Any]:
    """The capabilities, checked and with paths resolved; CapabilityError
    names the first bad key."""
    if capabilities is None:
        return {}
    if not isinstance(capabilities, Mapping):
        raise CapabilityError(f"capabilities: expected a mapping, got {capabilities!r}")
    workspace = os.path.realpath(workspace)
    allowed = [os.path.realpath(p) for p in allowed_paths]
    out: dict[str, Any] = {}
    for key, value in capabilities.items():
        if not isinstance(key, str):
            raise CapabilityError(f"capabilities: keys must be strings, got {key!r}")
        if key in _REFUSED:
            raise CapabilityError(f"capability {key}: refused ({_REFUSED[key]})")
        kind = CAPABILITY_KEYS.get(key)
        if kind is None:
            if key in Sandbox.__dataclass_fields__:
                raise CapabilityError(f"capability {key}: not a capability a tool can declare "
                                      f"(allowed: {', '.join(sorted(CAPABILITY_KEYS))})")
            raise CapabilityError(f"capability {key}: unknown key")
        if kind == "paths":
            out[key] = _capability_paths(value, key, workspace, allowed)
        elif kind == "denied":
            out[key] = [os.path.abspath(p) for p in _string_list(value, key)]
        elif kind == "net":
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise CapabilityError(f"capability {key}: expected a list, got {value!r}")
            if not allow_network:
                raise CapabilityError(f"capability {key}: this server does not allow network "
                                      "(allow_network=True, sandlock-mcp --allow-network)")
            out[key] = list(value)  # each rule is checked by Sandbox itself
        elif kind == "env":
            if not isinstance(value, Mapping) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise CapabilityError(f"capability env: expected a mapping of strings, got {value!r}")
            out[key] = dict(value)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise CapabilityError(f"capability {key}: expected a number, got {value!r}")
            out[key] = value
    return out


def python_roots() -> list[str]:
    """The running interpreter's prefixes (it must be readable, G4)."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return sorted(r for r in roots if r and r != "/" and os.path.isdir(r))


def _existing(paths: Sequence[str]) -> list[str]:
    return [p for p in paths if os.path.exists(p)]


def policy_for_tool(*, workspace: str, capabilities: Mapping[str, Any] | None = None,
                    extra_readable: Sequence[str] = (), allowed_paths: Sequence[str] = (),
                    allow_network: bool = False, system: bool = True,
                    tmpdir: str | None = None) -> Sandbox:
    """The Sandbox of one tool call: deny by default, plus `capabilities`.

    Base: the workspace readable (and the working directory); with `system`
    the system directories read-only (SYSTEM_READABLE, credentials in /etc
    denied), else only what the interpreter needs (FILE_TOOL_READABLE); the
    running interpreter's prefixes read-only; a few devices; `tmpdir`, when
    given, writable and exported as TMPDIR and HOME; no network; the
    environment cleared; memory and process limits. `extra_readable` (the
    server's own configuration, e.g. the directory of a tool's module) is
    read-only too, and like every path never `/` or a home directory.
    """
    if not isinstance(workspace, str) or not os.path.isabs(workspace):
        raise CapabilityError(f"workspace: expected an absolute path, got {workspace!r}")
    ws = check_grantable(workspace, "workspace")
    caps = validate_capabilities(capabilities, workspace=ws, allowed_paths=allowed_paths,
                                 allow_network=allow_network)
    readable = _existing(SYSTEM_READABLE if system else FILE_TOOL_READABLE) + python_roots()
    readable += [check_grantable(p, "extra_readable") for p in extra_readable]
    readable.append(ws)
    writable = _existing(DEVICES)
    env = {"PATH": TOOL_PATH, "LANG": "C.UTF-8", "HOME": tmpdir or ws}
    if tmpdir:
        writable.append(tmpdir)
        env["TMPDIR"] = tmpdir
    env.update(caps.pop("env", {}))
    fields: dict[str, Any] = dict(
        fs_readable=list(dict.fromkeys(readable + caps.pop("fs_readable", []))),
        fs_writable=list(dict.fromkeys(writable + caps.pop("fs_writable", []))),
        fs_denied=(_existing(DENIED) if system else []) + caps.pop("fs_denied", []),
        net_allow=caps.pop("net_allow", []),
        net_allow_bind=caps.pop("net_allow_bind", []),
        max_memory=caps.pop("max_memory", BASE_MAX_MEMORY),
        max_processes=caps.pop("max_processes", BASE_MAX_PROCESSES),
        clean_env=True, env=env, cwd=ws, no_coredump=True,
    )
    fields.update(caps)  # the remaining limits
    try:
        return Sandbox(**fields)
    except PolicyError as e:
        raise CapabilityError(f"capabilities: {e}") from None
