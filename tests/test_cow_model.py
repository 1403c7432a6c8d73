"""Model test of the copy-on-write branch: random file operations are applied
through a Layer on (workdir, branch) and directly by the kernel on a scratch
copy. Both must agree on every result (success or errno); then changes()
equals a directory diff, and commit makes the workdir equal to the scratch
copy while abort leaves it as it was."""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandlock.cow.branch import Branch
from test_cow_layer import snapshot

NAMES = ["a", "b", "c", "d", "e"]
PATHS = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join).filter(lambda p: p.count("/") < 2 or p < "b")
FILE_MODES = st.sampled_from([0o644, 0o600, 0o640, 0o755])
DIR_MODES = st.sampled_from([0o755, 0o700, 0o750])
DATA = st.binary(max_size=40)

OPS = st.one_of(
    st.tuples(st.just("write"), PATHS, DATA, FILE_MODES),
    st.tuples(st.just("append"), PATHS, DATA),
    st.tuples(st.just("truncate"), PATHS),
    st.tuples(st.just("rm_r"), PATHS),
    st.tuples(st.just("unlink"), PATHS),
    st.tuples(st.just("mkdir"), PATHS, DIR_MODES),
    st.tuples(st.just("rmdir"), PATHS),
    st.tuples(st.just("mv"), PATHS, PATHS),
    st.tuples(st.just("symlink"), st.sampled_from(["a", "../x", "/etc", "b/c"]), PATHS),
    st.tuples(st.just("link"), PATHS, PATHS),
    # owner rwx kept: a directory without it would stop an unprivileged run
    st.tuples(st.just("chmod"), PATHS, st.sampled_from([0o755, 0o700, 0o750, 0o775])),
)


def initial_tree(root: str) -> None:
    os.makedirs(os.path.join(root, "a", "b"))
    os.mkdir(os.path.join(root, "c"))
    os.mkdir(os.path.join(root, "d"))
    for rel, data in [("a/a", b"aa"), ("a/b/c", b"abc"), ("b", b"b\n"), ("c/c", b"")]:
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    os.symlink("a", os.path.join(root, "c/a"))


def _islink(root: str, rel: str) -> bool:
    return os.path.islink(os.path.join(root, rel))


def follows_symlink(root: str, op: tuple) -> bool:
    """Ops whose kernel semantics would follow a symlink (the Layer expects
    the caller to have resolved those): skipped in the model."""
    paths = [p for p in op[1:] if isinstance(p, str) and p[:1] not in ("/", ".")]
    if op[0] == "symlink":
        paths = [op[2]]
    for p in paths:
        parts = p.split("/")
        if any(_islink(root, "/".join(parts[:i])) for i in range(1, len(parts))):
            return True
    final_follows = {"write": [1], "append": [1], "truncate": [1], "chmod": [1]}
    return any(_islink(root, op[i]) for i in final_follows.get(op[0], []))


def kernel(root: str, op: tuple) -> None:
    j = lambda p: os.path.join(root, p)
    kind = op[0]
    if kind in ("write", "append", "truncate"):
        flags = {"write": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "append": os.O_WRONLY | os.O_APPEND,
                 "truncate": os.O_WRONLY | os.O_TRUNC}[kind]
        fd = os.open(j(op[1]), flags, op[3] if kind == "write" else 0o644)
        try:
            if kind != "truncate":
                os.write(fd, op[2])
        finally:
            os.close(fd)
    elif kind == "rm_r":
        if os.path.isdir(j(op[1])) and not os.path.islink(j(op[1])):
            shutil.rmtree(j(op[1]))
        else:
            os.unlink(j(op[1]))
    elif kind == "unlink":
        os.unlink(j(op[1]))
    elif kind == "mkdir":
        os.mkdir(j(op[1]), op[2])
    elif kind == "rmdir":
        os.rmdir(j(op[1]))
    elif kind == "mv":
        os.rename(j(op[1]), j(op[2]))
    elif kind == "symlink":
        os.symlink(op[1], j(op[2]))
    elif kind == "link":
        os.link(j(op[1]), j(op[2]), follow_symlinks=False)
    elif kind == "chmod":
        os.chmod(j(op[1]), op[2])


def layered(lay, op: tuple) -> None:
    b = lambda p: p.encode()
    kind = op[0]
    if kind in ("write", "append", "truncate"):
        flags = {"write": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "append": os.O_WRONLY | os.O_APPEND,
                 "truncate": os.O_WRONLY | os.O_TRUNC}[kind]
        fd = lay.open(b(op[1]), flags, op[3] if kind == "write" else 0o644)
        try:
            if kind != "truncate":
                os.write(fd, op[2])
        finally:
            os.close(fd)
    elif kind == "rm_r":
        lay.lstat(b(op[1]))
        lay.whiteout(b(op[1]))
    elif kind == "unlink":
        lay.unlink(b(op[1]))
    elif kind == "mkdir":
        lay.mkdir(b(op[1]), op[2])
    elif kind == "rmdir":
        lay.rmdir(b(op[1]))
    elif kind == "mv":
        lay.rename(b(op[1]), b(op[2]))
    elif kind == "symlink":
        lay.symlink(b(op[1]), b(op[2]))
    elif kind == "link":
        lay.link(b(op[1]), b(op[2]))
    elif kind == "chmod":
        if _islink_layer(lay, b(op[1])):
            raise OSError(errno.EOPNOTSUPP, "skip")
        lay.chmod(b(op[1]), op[2])


def _islink_layer(lay, rel: bytes) -> bool:
    try:
        return stat.S_ISLNK(lay.lstat(rel).st_mode)
    except OSError:
        return False


def expected_changes(before: dict, after: dict) -> list[tuple[str, str]]:
    out = []
    for p in after:
        if p not in before:
            out.append(("A", p))
        elif before[p] != after[p]:
            out.append(("M", p))
    for p in before:
        parent = os.path.dirname(p)
        if p not in after and (not parent or parent in after):
            out.append(("D", p))
    return sorted(out, key=lambda kp: kp[1])


@settings(max_examples=int(os.environ.get("SL_COW_MODEL_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, max_size=12), do_commit=st.booleans())
def test_layer_matches_the_kernel(ops, do_commit):
    old_umask = os.umask(0)
    tmp = tempfile.mkdtemp(prefix="sl-cow-model-")
    try:
        work, scratch, store = (os.path.join(tmp, n) for n in ("w", "scratch", "s"))
        initial_tree(work)
        initial_tree(scratch)
        os.mkdir(store, 0o700)
        original = snapshot(work)
        br = Branch.create(work, store)
        with br.layer() as lay:
            for op in ops:
                if follows_symlink(scratch, op):
                    continue
                if op[0] == "chmod" and _islink(scratch, op[1]):
                    continue
                try:
                    kernel(scratch, op)
                    want = None
                except OSError as e:
                    want = e.errno
                try:
                    layered(lay, op)
                    got = None
                except OSError as e:
                    got = e.errno
                assert got == want, (op, got, want)
        final = snapshot(scratch)
        assert snapshot(work) == original
        assert [(c.kind, c.path) for c in br.changes()] == expected_changes(original, final)
        if do_commit:
            br.commit()
            assert snapshot(work) == final
        else:
            br.abort()
            assert snapshot(work) == original
        assert not os.listdir(store)
    finally:
        os.umask(old_umask)
        for d, dirs, _ in os.walk(tmp):
            for n in dirs:
                if not os.path.islink(os.path.join(d, n)):
                    os.chmod(os.path.join(d, n), 0o755)
        shutil.rmtree(tmp)
