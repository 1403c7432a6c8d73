"""The sandbox's filesystem access, resolved once: the one truth that the
Landlock rules and every supervisor check read.

From the policy's grants (fs_readable, fs_writable) and denials (fs_denied),
plus the paths the plan hides (sensitive /proc entries, files the
supervisor serves virtualized), `resolve` computes:

- `grants`: the policy's grants, canonical (real paths that exist);
- `denied`: the policy's denials, canonical;
- `rules`: the Landlock path rules. Landlock only adds rights, and a right
  on a directory covers everything beneath it, so a grant whose tree holds
  a denied or hidden path is split: the directories on the way get no rule
  of their own, each of their other entries gets the grant. Symlinks are
  never granted (their target has its own rules). /proc/<pid> entries are
  never granted: the supervisor mediates them;
- `passthrough`: those directories on the way (granted by the policy but
  left without a rule by the split). The supervisor opens them read-only
  for the child, so they stay listable as they are unconfined, while every
  entry inside still goes through Landlock.

`access(path)` answers "what does the policy grant on this path" the way
the kernel would with the rules above plus the supervisor's mediation: the
union of the grants covering it, nothing under a denied path. Checks done
in the supervisor (named unix sockets, /proc, virtual files, listable
directories) ask this, never the raw policy lists.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ._kernel import landlock

READ = landlock.FS_READ
WRITE = landlock.FS_WRITE


def under(path: str, root: str) -> bool:
    """Is `path` `root` or inside it (both canonical)?"""
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class FsView:
    grants: tuple[tuple[str, int, bool], ...] = ()   # (real path, access, is a directory)
    denied: tuple[str, ...] = ()
    rules: tuple[tuple[str, int], ...] = ()
    passthrough: tuple[str, ...] = ()

    def access(self, path: str) -> int:
        """Landlock access bits the policy grants on canonical `path`."""
        if any(under(path, d) for d in self.denied):
            return 0
        bits = 0
        for root, access, is_dir in self.grants:
            if path == root or (is_dir and under(path, root)):
                bits |= access
        return bits

    def may_read(self, path: str) -> bool:
        return bool(self.access(path) & landlock.FS_READ_FILE)

    def may_list(self, path: str) -> bool:
        return bool(self.access(path) & landlock.FS_READ_DIR)

    def may_write(self, path: str) -> bool:
        return bool(self.access(path) & landlock.FS_WRITE_FILE)

    def may_set_attributes(self, path: str) -> bool:
        """May the sandbox change the mode, owner or extended attributes
        of canonical `path`? Where it may write, except a granted
        directory itself: as Landlock does not let the sandbox remove or
        rename a granted directory, it may not chmod /tmp to 000 either."""
        if any(under(path, d) for d in self.denied):
            return False
        for root, access, is_dir in self.grants:
            if access & landlock.FS_WRITE_FILE and (
                    (path == root and not is_dir) or (is_dir and path != root and under(path, root))):
                return True
        return False


def policy_view(readable, writable, denied) -> FsView:
    """The grants and denials alone (no rules yet): enough to answer
    `access`, which the plan needs before it knows what to hide."""
    grants: list[tuple[str, int, bool]] = []
    for path, access in [(p, READ) for p in readable] + [(p, READ | WRITE) for p in writable]:
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError:
            continue  # does not exist: no grant
        grants.append((real, access, stat.S_ISDIR(st.st_mode)))
    denied_real = tuple(dict.fromkeys(canonical(d) for d in denied))
    return FsView(grants=tuple(grants), denied=denied_real)


def canonical(path: str) -> str:
    """The real path, except under /proc/self and /proc/thread-self: those
    name a different process for the planner and for the sandbox, so they
    stay as written (the supervisor's /proc view checks them by name)."""
    norm = os.path.normpath(os.path.abspath(path))
    for magic in ("/proc/self", "/proc/thread-self"):
        if norm == magic or norm.startswith(magic + "/"):
            return norm
    return os.path.realpath(path)


def resolve(view: FsView, hidden=()) -> FsView:
    """`view` with its Landlock rules: the grants split around the denied
    paths and the `hidden` ones (the plan's virtualized or sensitive files;
    `access` does not count them: the supervisor decides those)."""
    cut = list(dict.fromkeys(view.denied + tuple(canonical(h) for h in hidden)))
    rules: list[tuple[str, int]] = []
    passthrough: list[str] = []
    for real, access, is_dir in view.grants:
        if any(under(real, d) for d in cut):
            continue
        inner = [d for d in cut if under(d, real)]
        if inner and is_dir:
            _split(real, access, inner, rules, passthrough)
        else:
            rules.append((real, access))
    return FsView(grants=view.grants, denied=view.denied, rules=tuple(rules),
                  passthrough=tuple(p for p in dict.fromkeys(passthrough) if p != "/proc"))


def _split(directory: str, access: int, inner: list[str], rules: list, passthrough: list) -> None:
    passthrough.append(directory)
    try:
        # scandir's entry types come with the listing (d_type): no lstat
        # per entry. Measured on the CLI's default policy, which splits
        # /etc around the credential files: 23 ms per plan with an lstat
        # per entry of /etc, the bulk of a plan's cost.
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    in_proc = directory == "/proc"
    base = directory.rstrip("/") + "/"
    skip = set(inner)
    for entry in entries:
        child = base + entry.name
        if child in skip or (in_proc and entry.name.isdigit()):
            continue  # /proc/<pid> is never granted: the supervisor mediates it
        try:
            if entry.is_symlink():
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        prefix = child + "/"
        below = [d for d in inner if d.startswith(prefix)]
        if not below:
            rules.append((child, access))
        elif is_dir:
            _split(child, access, below, rules, passthrough)


def home_dirs() -> set[str]:
    """The caller's home directories (HOME and the password entry's), never
    "/": what the CLI default policy and profiles never grant whole."""
    homes = {os.path.realpath(os.path.expanduser("~"))}
    try:
        import pwd
        homes.add(os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir))
    except (KeyError, ImportError):
        pass
    return {h for h in homes if h and h != "/"}
