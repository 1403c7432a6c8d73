"""Named profiles: a sandbox policy in a TOML file.

A profile named NAME is `$XDG_CONFIG_HOME/sandlock/profiles/NAME.toml`
(`~/.config/sandlock/profiles/` when the variable is unset), or else one
of the built-in profiles shipped with sandlock (a user profile of the same
name wins). The sections and keys are the reference's; every one of them is
listed once, in SCHEMA below, and that one table drives the parser, the
mapping onto Sandbox fields, how `sandlock run` flags combine with a
profile, and the generated documentation (docs/profiles.md, from
`profile_docs()`).

Every unknown section or key is an error naming the key and the file; so
is a value of the wrong TOML type. Values are then checked by Sandbox
itself (PolicyError), and its message is reworded to name the key and the
file.
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .exceptions import PolicyError, SandlockError
from .fsview import home_dirs

if TYPE_CHECKING:
    from .sandbox import Sandbox

__all__ = ["Key", "SCHEMA", "SECTIONS", "Profile", "ProfileInfo", "profiles_dir", "list_profiles",
           "find_profile", "read_profile", "read_profile_file", "parse_profile", "load_profile",
           "load_profile_file", "delete_profile", "check_profile_name", "merge_fields",
           "profile_docs"]

BUILTIN_DIR = Path(__file__).resolve().parent / "profiles_builtin"
MAX_NAME_BYTES = 64


# -- the schema ---------------------------------------------------------------------------

# TOML value kinds: what the parser accepts (the value's TOML type) and how
# the docs name it. Value checks beyond the type are Sandbox's.
_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "str": ("string", lambda v: isinstance(v, str)),
    "path": ("path (string)", lambda v: isinstance(v, str)),
    "paths": ("array of paths", lambda v: _list_of(v, (str,))),
    "strs": ("array of strings", lambda v: _list_of(v, (str,))),
    "bool": ("boolean", lambda v: isinstance(v, bool)),
    "int": ("integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "ints": ("array of integers", lambda v: _list_of(v, (int,))),
    "ports": ("array of integers or strings", lambda v: _list_of(v, (int, str))),
    "env": ("table of strings", lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values())),
    "size": ("string such as \"512M\" (or an integer: bytes)",
             lambda v: isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))),
    "time": ("RFC 3339 string, TOML date-time (without an offset: UTC) or seconds since the epoch",
             lambda v: isinstance(v, (str, _dt.datetime, int, float)) and not isinstance(v, bool)),
}


def _list_of(value, types: tuple) -> bool:
    return isinstance(value, list) and all(
        isinstance(x, types) and not isinstance(x, bool) for x in value)


@dataclass(frozen=True)
class Key:
    """One profile key: where it lives, its TOML kind, the Sandbox field it
    sets (None: not a Sandbox field), how a `sandlock run` flag for the
    same field combines with it ("add" to the list, "update" the table,
    or "set": the flag replaces it), and its documentation."""
    section: str
    name: str
    kind: str
    field: str | None
    merge: str
    doc: str
    grant: bool = False  # a relative path here must not resolve to / or a home directory

    @property
    def qualified(self) -> str:
        return f"[{self.section}].{self.name}"


def _k(section, name, kind, fld, doc, merge=None, grant=False) -> Key:
    if merge is None:
        merge = "add" if kind in ("paths", "strs", "ports", "ints") else \
            "update" if kind == "env" else "set"
    return Key(section, name, kind, fld, merge, doc, grant)


SECTIONS: dict[str, str] = {
    "config": "HTTPS interception material and the copy-on-write workdir.",
    "determinism": "Reproducible runs.",
    "program": "The command and its process.",
    "filesystem": "What the command may read and write.",
    "network": "Outbound connections and the ports it may bind.",
    "http": "HTTP method and path rules.",
    "syscalls": "Changes to the default syscall blocklist.",
    "limits": "Resource limits.",
}

SCHEMA: tuple[Key, ...] = (
    _k("config", "http_ca", "path", "http_ca", "CA certificate (PEM) for HTTPS interception"),
    _k("config", "http_key", "path", "http_key", "private key of `http_ca`"),
    _k("config", "http_inject_ca", "paths", "http_inject_ca",
       "CA bundles into which the interception CA is injected"),
    _k("config", "http_ca_out", "path", "http_ca_out", "where to write the generated interception CA"),
    _k("config", "fs_storage", "path", "fs_storage", "where the copy-on-write layer keeps its files"),
    _k("config", "workdir", "path", "workdir", "a directory the command writes through a copy-on-write layer"),
    _k("determinism", "random_seed", "int", "random_seed", "seed of the command's random sources"),
    _k("determinism", "time_start", "time", "time_start",
       "the time the command's clock starts at, e.g. \"2024-01-01T00:00:00Z\""),
    _k("determinism", "deterministic_dirs", "bool", "deterministic_dirs", "directory listings in sorted order"),
    _k("determinism", "no_randomize_memory", "bool", "no_randomize_memory", "address-space randomization off"),
    _k("program", "exec", "str", None,
       "the command run when `sandlock run` is given none (a path, or a name looked up in PATH)"),
    _k("program", "args", "strs", None, "its arguments (with `exec` only)", merge="set"),
    _k("program", "env", "env", "env", "environment variables to set"),
    _k("program", "cwd", "path", "cwd", "working directory of the command"),
    _k("program", "uid", "int", "uid", "user id inside the sandbox (with `gid`: both or neither)"),
    _k("program", "gid", "int", "gid", "group id inside the sandbox (with `uid`)"),
    _k("program", "clean_env", "bool", "clean_env", "start from a minimal environment"),
    _k("program", "no_coredump", "bool", "no_coredump", "no core dumps"),
    _k("program", "no_huge_pages", "bool", "no_huge_pages", "transparent huge pages off"),
    _k("filesystem", "read", "paths", "fs_readable", "readable paths (files or trees)", grant=True),
    _k("filesystem", "write", "paths", "fs_writable", "readable and writable paths", grant=True),
    _k("filesystem", "deny", "paths", "fs_denied", "denied paths, even inside a readable tree"),
    _k("filesystem", "chroot", "path", "chroot", "a directory shown to the command as /"),
    _k("filesystem", "mount", "strs", "fs_mount",
       "`\"VIRTUAL:HOST\"` or `\"VIRTUAL:HOST:ro\"`: HOST shown at VIRTUAL", merge="update"),
    _k("filesystem", "on_exit", "str", "on_exit",
       "the workdir's changes after a successful run: \"commit\", \"abort\" or \"keep\""),
    _k("filesystem", "on_error", "str", "on_error", "the same after a failed run"),
    _k("network", "allow", "strs", "net_allow",
       "allowed destinations: `[tcp://|udp://|icmp://]HOST[:PORTS]`"),
    _k("network", "deny", "strs", "net_deny", "everything except these IPs/CIDRs[:PORTS]"),
    _k("network", "allow_bind", "ports", "net_allow_bind",
       "TCP ports the command may bind: `8080`, `\"9000-9005\"`, `\"*\"`"),
    _k("network", "deny_bind", "ports", "net_deny_bind", "TCP ports it may not bind (all others allowed)"),
    _k("network", "port_remap", "bool", "port_remap", "a private port space"),
    _k("http", "ports", "ints", "http_ports", "ports whose HTTP traffic the rules apply to"),
    _k("http", "allow", "strs", "http_allow", "allowed requests, e.g. `\"GET example.com/api/*\"`"),
    _k("http", "deny", "strs", "http_deny", "denied requests"),
    _k("syscalls", "extra_allow", "strs", "extra_allow_syscalls",
       "syscall groups the default blocklist denies that are allowed, e.g. `\"sysv_ipc\"`"),
    _k("syscalls", "extra_deny", "strs", "extra_deny_syscalls", "syscalls or groups also denied"),
    _k("limits", "memory", "size", "max_memory", "memory the kernel charges to the command"),
    _k("limits", "processes", "int", "max_processes", "peak concurrent processes"),
    _k("limits", "open_files", "int", "max_open_files", "open files per process"),
    _k("limits", "cpu", "int", "max_cpu", "CPU time, percent of one core"),
    _k("limits", "disk", "size", "max_disk", "disk the copy-on-write layer may use"),
    _k("limits", "gpu_devices", "ints", "gpu_devices", "GPUs the command may use", merge="set"),
    _k("limits", "cpu_cores", "ints", "cpu_cores", "CPUs to run on", merge="set"),
    _k("limits", "num_cpus", "int", "num_cpus", "CPUs the command sees"),
)

_BY_SECTION: dict[str, dict[str, Key]] = {s: {} for s in SECTIONS}
for _key in SCHEMA:
    _BY_SECTION[_key.section][_key.name] = _key
# Sandbox field -> its key, to name the key in Sandbox's messages.
_BY_FIELD: dict[str, Key] = {k.field: k for k in SCHEMA if k.field}
_BY_FIELD["fs_mount_ro"] = _BY_FIELD["fs_mount"]


# -- names and places ------------------------------------------------------------------------

def check_profile_name(name) -> str:
    """`name` if it is a profile name: 1 to 64 bytes of UTF-8, no '/', no
    NUL or other control character, not '.' or '..', not starting with '-'.
    A name is never a path: PolicyError otherwise."""
    if not isinstance(name, str):
        raise PolicyError(f"profile name: expected a str, got {type(name).__name__}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeError:
        raise PolicyError(f"profile name {name!r}: not valid UTF-8 text") from None
    why = None
    if not 1 <= size <= MAX_NAME_BYTES:
        why = f"must be 1 to {MAX_NAME_BYTES} bytes, not {size}"
    elif "/" in name:
        why = "must not contain '/' (a profile name is not a path; use --profile-file for a file)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "must not contain NUL or control characters"
    elif name in (".", ".."):
        why = "must not be '.' or '..'"
    elif name.startswith("-"):
        why = "must not start with '-'"
    if why:
        raise PolicyError(f"profile name {name!r}: {why}")
    return name


def profiles_dir() -> Path:
    """Where user profiles live: $XDG_CONFIG_HOME/sandlock/profiles, or
    ~/.config/sandlock/profiles."""
    base = os.environ.get("XDG_CONFIG_HOME")
    if not base or not os.path.isabs(base):  # the XDG spec: a relative value is ignored
        base = os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "sandlock" / "profiles"


@dataclass(frozen=True)
class ProfileInfo:
    """Where a profile is: `source` is "user" or "builtin"; `shadowed` is
    True for a built-in hidden by a user profile of the same name."""
    name: str
    source: str
    path: str
    shadowed: bool = False


def _names_in(directory: Path) -> list[str]:
    try:
        entries = list(directory.glob("*.toml"))
    except OSError:
        return []
    out = []
    for p in entries:
        try:
            check_profile_name(p.stem)
        except PolicyError:
            continue
        if _is_file(p):
            out.append(p.stem)
    return sorted(out)


def _is_file(path: Path) -> bool:
    """Path.is_file, False where the directory cannot be searched."""
    try:
        return path.is_file()
    except OSError:
        return False


def list_profiles(details: bool = False) -> list:
    """The names of the profiles one can load (user and built-in), sorted.
    With details=True, a ProfileInfo for each file instead, built-ins
    hidden by a user profile included (shadowed=True)."""
    user = _names_in(profiles_dir())
    builtin = _names_in(BUILTIN_DIR)
    if not details:
        return sorted(set(user) | set(builtin))
    infos = [ProfileInfo(n, "user", str(profiles_dir() / f"{n}.toml")) for n in user]
    infos += [ProfileInfo(n, "builtin", str(BUILTIN_DIR / f"{n}.toml"), n in user) for n in builtin]
    return sorted(infos, key=lambda i: (i.name, i.source != "user"))


def find_profile(name: str) -> ProfileInfo:
    """Where the profile `name` is: the user's, else the built-in one."""
    check_profile_name(name)
    user = profiles_dir() / f"{name}.toml"
    if _is_file(user):
        return ProfileInfo(name, "user", str(user))
    builtin = BUILTIN_DIR / f"{name}.toml"
    if _is_file(builtin):
        return ProfileInfo(name, "builtin", str(builtin))
    raise PolicyError(f"profile {name!r} not found (looked for {user} and the built-in profiles: "
                      f"{', '.join(_names_in(BUILTIN_DIR)) or 'none'})")


def delete_profile(name: str) -> str:
    """Delete the user profile `name` and return its path. Built-in profiles
    cannot be deleted."""
    check_profile_name(name)
    path = profiles_dir() / f"{name}.toml"
    if not (_is_file(path) or path.is_symlink()):
        if _is_file(BUILTIN_DIR / f"{name}.toml"):
            raise PolicyError(f"profile {name!r} is a built-in profile: it cannot be deleted "
                              f"(a user profile of that name in {profiles_dir()} would replace it)")
        raise PolicyError(f"profile {name!r} not found in {profiles_dir()}")
    os.unlink(path)
    return str(path)


# -- parsing -------------------------------------------------------------------------------

def _toml():
    if sys.version_info >= (3, 11):
        import tomllib
        return tomllib
    try:
        import tomli
    except ImportError:
        raise SandlockError("profiles need Python 3.11 or later, or the tomli package "
                            "(pip install 'sandlock[toml]')") from None
    return tomli


@dataclass(frozen=True)
class Profile:
    """A parsed profile: `data` is its sections and keys as written (type
    checked), `source` "user", "builtin" or "file"."""
    name: str | None
    path: str
    source: str
    data: dict = field(repr=False)

    @property
    def command(self) -> list[str] | None:
        """[program].exec and args: the default command, or None."""
        program = self.data.get("program", {})
        if "exec" not in program:
            return None
        return [program["exec"], *program.get("args", [])]

    def fields(self) -> dict[str, Any]:
        """The Sandbox keyword arguments this profile sets."""
        return _fields(self.data, self.path)

    def sandbox(self, **overrides) -> "Sandbox":
        """A Sandbox of this profile, `overrides` combined as merge_fields does."""
        from .sandbox import Sandbox
        return Sandbox(**merge_fields(self.fields(), overrides))

    def to_toml(self) -> str:
        """The profile as TOML (keys in schema order; comments are not kept)."""
        return dump_toml(self.data)


def parse_profile(text: str, path: str = "<string>", name: str | None = None,
                  source: str = "file") -> Profile:
    """A Profile from TOML text. PolicyError names the key and `path`."""
    toml = _toml()
    try:
        raw = toml.loads(text)
    except toml.TOMLDecodeError as e:
        raise PolicyError(f"{path}: not valid TOML: {e}") from None
    data: dict[str, dict[str, Any]] = {}
    for section, table in raw.items():
        if section not in SECTIONS:
            if not isinstance(table, dict):
                raise PolicyError(f"{path}: {section!r}: unknown top-level key (keys belong in a "
                                  f"section: {_known_sections()})")
            raise PolicyError(f"{path}: [{section}]: unknown section (known: {_known_sections()})")
        if not isinstance(table, dict):
            raise PolicyError(f"{path}: {section!r}: expected a section [{section}], got a "
                              f"{_toml_type(table)}")
        keys = _BY_SECTION[section]
        out: dict[str, Any] = {}
        for name_, value in table.items():
            key = keys.get(name_)
            if key is None:
                raise PolicyError(f"{path}: [{section}].{name_}: unknown key (known in [{section}]: "
                                  f"{', '.join(keys)})")
            what, ok = _KINDS[key.kind]
            if not ok(value):
                raise PolicyError(f"{path}: {key.qualified}: expected {_article(what)}, got "
                                  f"{_toml_type(value)} {_shown(value)}")
            out[name_] = value
        data[section] = out
    program = data.get("program", {})
    if ("uid" in program) != ("gid" in program):
        raise PolicyError(f"{path}: [program].uid and [program].gid must both be set, or neither")
    if "args" in program and "exec" not in program:
        raise PolicyError(f"{path}: [program].args needs [program].exec")
    profile = Profile(name, path, source, data)
    try:
        profile.sandbox()  # every value checked by Sandbox itself, now
    except PolicyError as e:
        raise _wrap_policy_error(e, path) from None
    return profile


def read_profile_file(path, name: str | None = None, source: str = "file") -> Profile:
    """The Profile in the TOML file `path`."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read((1 << 20) + 1)
    except OSError as e:
        raise PolicyError(f"profile file {path}: {e.strerror or e}") from None
    if len(raw) > 1 << 20:
        raise PolicyError(f"{path}: larger than 1 MiB; not a profile")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not UTF-8 text") from None
    return parse_profile(text, path, name, source)


def read_profile(name: str) -> Profile:
    """The Profile named `name` (the user's, else the built-in one)."""
    info = find_profile(name)
    return read_profile_file(info.path, name, info.source)


def load_profile(name: str) -> "Sandbox":
    """A Sandbox from the named profile ([program].exec/args are not part
    of a Sandbox: read_profile(name).command has them)."""
    return read_profile(name).sandbox()


def load_profile_file(path) -> "Sandbox":
    """A Sandbox from the profile in the TOML file `path`."""
    return read_profile_file(path).sandbox()


def _fields(data: dict, path: str) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for section, table in data.items():
        for name, value in table.items():
            key = _BY_SECTION[section][name]
            if key.field is None:
                continue
            if key.kind == "path":
                value = _resolve(value, key, path)
            elif key.kind == "paths":
                value = [_resolve(v, key, path) for v in value]
            elif key.kind in ("strs", "ints", "ports"):
                value = list(value)
            elif key.kind == "env":
                value = dict(value)
            if key.field == "fs_mount":
                kw["fs_mount"], kw["fs_mount_ro"] = _mounts(value, key, path)
            else:
                kw[key.field] = value
    return kw


def _resolve(value: str, key: Key, path: str) -> str:
    """A profile path made absolute: `~` and `~/...` are the home directory,
    a relative path is relative to the current directory. A relative path
    granted in [filesystem] read/write never resolves to /, a home directory
    or a directory holding one (`write = ["."]` run from ~ is refused)."""
    if not value:
        return value  # Sandbox says why an empty path is wrong
    if value == "~" or value.startswith("~/"):
        return os.path.expanduser("~") + value[1:]
    if os.path.isabs(value) or "\0" in value:
        return value
    try:
        resolved = os.path.abspath(value)
    except OSError:
        return value  # Sandbox says why
    if key.grant:
        real = os.path.realpath(resolved)
        homes = home_dirs()
        what = "/" if real == "/" else "a home directory" if real in homes else \
            "a directory holding a home directory" if any(h.startswith(real + "/") for h in homes) \
            else None
        if what:
            what = "" if real == "/" else f", {what}"
            raise PolicyError(f"{path}: {key.qualified}: {value!r} is {real}{what}: a relative path "
                              f"in a profile never grants that (run from a project directory, or "
                              f"write the path out)")
    return resolved


def _mounts(specs: list, key: Key, path: str) -> tuple[dict, dict]:
    rw: dict[str, str] = {}
    ro: dict[str, str] = {}
    from .chroot import parse_mount_spec
    for spec in specs:
        parsed = parse_mount_spec(spec)
        if parsed is None:
            raise PolicyError(f"{path}: {key.qualified}: expected \"VIRTUAL:HOST\" or "
                              f"\"VIRTUAL:HOST:ro\", got {spec!r}")
        virtual, host, read_only = parsed
        (ro if read_only else rw)[virtual] = _resolve(host, key, path)
    return rw, ro


def _known_sections() -> str:
    return ", ".join(f"[{s}]" for s in SECTIONS)


def _article(what: str) -> str:
    return ("an " if what[0] in "aeiou" else "a ") + what


def _toml_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return "date-time"
    return type(value).__name__


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "..." + text[-10:]


def _wrap_policy_error(e: PolicyError, path: str) -> PolicyError:
    if str(e).startswith(f"{path}: "):
        return e  # ours, already naming the file and the key
    field_, sep, rest = str(e).partition(":")
    key = _BY_FIELD.get(field_) if sep else None
    if key is None:
        return PolicyError(f"{path}: {e}")
    return PolicyError(f"{path}: {key.qualified}{sep}{rest}")


def merge_fields(profile: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Sandbox fields: a profile's, with `overrides` (e.g. from command-line
    flags) combined as the schema says: lists added to, tables updated,
    other values replaced. An override of None, False or an empty list or
    table leaves the profile's value."""
    merged = dict(profile)
    for name, value in overrides.items():
        key = _BY_FIELD.get(name)
        merge = key.merge if key is not None else "set"
        if name not in merged:
            merged[name] = value
        elif merge == "add":
            merged[name] = _unique(list(merged[name]) + list(value or ()))
        elif merge == "update":
            merged[name] = {**merged[name], **(value or {})}
        elif value is not None and value is not False and value != [] and value != {}:
            merged[name] = value
    return merged


def _unique(items: list) -> list:
    out: list = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


# -- writing TOML ----------------------------------------------------------------------------

def dump_toml(data: dict) -> str:
    """Profile data (sections of keys) as TOML, in schema order."""
    lines: list[str] = []
    for section in SECTIONS:
        table = data.get(section)
        if not table:
            continue
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        for name in _BY_SECTION[section]:
            if name in table:
                lines.append(f"{name} = {_toml_value(table[name])}")
    return "\n".join(lines) + "\n" if lines else ""


def _toml_value(value) -> str:
    import json
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_key(key: str) -> str:
    import json
    import re
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


# -- documentation -------------------------------------------------------------------------

def _builtin_summary(path: Path) -> str:
    """The leading comment of a built-in profile, as one paragraph."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(x for x in lines if x)


def profile_docs() -> str:
    """docs/profiles.md: generated from SCHEMA and the built-in profiles."""
    from .policy.model import _PENDING
    out = [
        "# Profiles",
        "",
        "<!-- Generated by sandlock.profiles.profile_docs() from the schema the parser uses:",
        "     python -m sandlock.profiles > docs/profiles.md -->",
        "",
        "A profile is a sandbox policy in a TOML file. `sandlock run -p NAME` (or",
        "`--profile NAME`) uses `$XDG_CONFIG_HOME/sandlock/profiles/NAME.toml`",
        "(`~/.config/sandlock/profiles/NAME.toml` when the variable is unset), else the",
        "built-in profile NAME; `--profile-file PATH` uses any file. In Python:",
        "`sandlock.load_profile(NAME)` returns a `Sandbox`, `sandlock.list_profiles()`",
        "the names (`list_profiles(details=True)`: where each one is).",
        "",
        "- Names are 1 to 64 bytes, without `/`, NUL or control characters, not `.`",
        "  or `..`, not starting with `-`: a name is never a path.",
        "- Every unknown section or key is an error naming the key and the file, and",
        "  so is a value of the wrong type; values are checked as the `Sandbox` fields",
        "  they set are.",
        "- Relative paths are relative to the directory sandlock runs in; `~` is the",
        "  home directory. A relative path in `[filesystem]` `read` or `write` never",
        "  resolves to `/`, a home directory or a directory holding one.",
        "- With `sandlock run`, the command line's default policy still applies",
        "  (`--no-default-policy` starts from the profile alone); flags that take a list",
        "  (`-r`, `-w`, `--net-allow`, `-e`, ...) add to the profile's, the others",
        "  replace its value. `[program]` `exec` and `args` are the command run when",
        "  none is given.",
        "- `sandlock profile list` lists user and built-in profiles (a user profile",
        "  hides a built-in one of the same name), `sandlock profile show NAME` prints",
        "  one, `sandlock profile delete NAME` deletes a user profile.",
        "",
        "Keys marked *not yet* set `Sandbox` fields whose feature this version of",
        "sandlock does not have: a profile with one loads, and running it fails with",
        "\"not implemented yet\".",
        "",
    ]
    for section, about in SECTIONS.items():
        out += [f"## `[{section}]`", "", about, "",
                "| key | type | `Sandbox` field | `run` flags | meaning |", "|---|---|---|---|---|"]
        for key in _BY_SECTION[section].values():
            fld = f"`{key.field}`" if key.field else "(the command)"
            if key.field == "fs_mount":
                fld = "`fs_mount` / `fs_mount_ro`"
            pending = key.field in _PENDING or key.field in ("on_exit", "on_error")
            doc = key.doc + (" (*not yet*)" if pending else "")
            merge = "" if key.field is None else "turn on" if key.kind == "bool" else \
                "replace" if key.merge == "set" else "add to"
            out.append(f"| `{key.name}` | {_KINDS[key.kind][0]} | {fld} | {merge} | {doc} |")
        out.append("")
    out += ["## Built-in profiles", ""]
    for name in _names_in(BUILTIN_DIR):
        out.append(f"- `{name}`: {_builtin_summary(BUILTIN_DIR / (name + '.toml'))}")
    out += ["", "An example:", "", "```toml"]
    out += (BUILTIN_DIR / "build.toml").read_text(encoding="utf-8").rstrip("\n").splitlines()
    out += ["```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(profile_docs())
