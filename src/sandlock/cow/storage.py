"""Where copy-on-write branches are stored, and how a branch dir is made.

Default base: `$XDG_RUNTIME_DIR/sandlock-cow` when that directory is ours,
else `$TMPDIR/sandlock-cow-<uid>` (or /tmp). A base or branch directory we
did not create ourselves is only used if it is a real directory (not a
symlink), owned by our uid and closed to group and others: a world-writable
or foreign directory would let another user read or swap a run's files.
"""
from __future__ import annotations

import os
import secrets
import stat

from ..exceptions import BranchError

UPPER = "upper"
DELETED_LOG = "deleted.log"
BASE_LOG = "base.log"
WORKDIR_FILE = "workdir"      # the canonical workdir path, raw bytes
MARKER = "PRESERVED"


def check_private_dir(path: str) -> None:
    """Raise BranchError unless `path` is a real directory owned by our
    effective uid with no group/other permission bits."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise BranchError(f"branch storage {path!r}: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise BranchError(f"branch storage {path!r} is not a directory (or is a symlink)")
    if st.st_uid != os.geteuid():
        raise BranchError(f"branch storage {path!r} is owned by uid {st.st_uid}, not by us")
    if st.st_mode & 0o077:
        raise BranchError(f"branch storage {path!r} is open to other users (mode {stat.S_IMODE(st.st_mode):o})")


def make_private_dir(path: str) -> None:
    """mkdir 0700 (not recursive); an existing entry must pass check_private_dir."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise BranchError(f"cannot create branch storage {path!r}: {e.strerror}") from e
    else:
        os.chmod(path, 0o700)   # a restrictive umask may have removed owner bits
    check_private_dir(path)


def _xdg_runtime_dir() -> str | None:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if not xdg or not os.path.isabs(xdg):
        return None
    try:
        st = os.lstat(xdg)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        return None
    return xdg


def default_base() -> str:
    """The default storage base path (not created)."""
    xdg = _xdg_runtime_dir()
    if xdg is not None:
        return os.path.join(xdg, "sandlock-cow")
    tmp = os.environ.get("TMPDIR") or "/tmp"
    if not os.path.isabs(tmp):
        tmp = "/tmp"
    return os.path.join(tmp, f"sandlock-cow-{os.geteuid()}")


def resolve_base(storage: str | os.PathLike | None) -> str:
    """The base to create branches in, created if needed. The default base
    is checked to be private; an explicit one is used as given (it may be
    shared: each branch dir inside it is private)."""
    if storage is None:
        base = default_base()
        make_private_dir(base)
        return os.path.realpath(base)
    base = os.fsdecode(storage)
    if not os.path.isdir(base):
        try:
            os.mkdir(base, 0o700)
        except OSError as e:
            raise BranchError(f"cannot create branch storage {base!r}: {e.strerror}") from e
    return os.path.realpath(base)


def new_branch_dir(base: str) -> str:
    """Create `<base>/<random hex>/` with `upper/` and empty logs."""
    path = os.path.join(base, secrets.token_hex(16))
    try:
        os.mkdir(path, 0o700)
    except OSError as e:
        raise BranchError(f"cannot create branch {path!r}: {e.strerror}") from e
    os.chmod(path, 0o700)
    check_private_dir(path)
    os.mkdir(os.path.join(path, UPPER), 0o700)
    for name in (DELETED_LOG, BASE_LOG):
        os.close(os.open(os.path.join(path, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    return path
