"""Model test of the copy-on-write workdir through real sandboxed runs:
random sequences of file operations are executed by ONE Python program,
unconfined on a scratch copy of the tree (the kernel is the model) and in a
sandbox over the workdir. Every operation must give the same result
(success or errno) and the program must see the same tree at the end; after
COMMIT the workdir equals the scratch copy (contents, modes, symlink
targets), after ABORT and after a dry run it is exactly as before, and
`changes` equals a directory diff of the original against the scratch copy.

Unlike tests/test_cow_model.py (the Layer alone, whose callers resolve
symlinks), nothing is skipped here: the supervisor resolves symlinks in the
merged view like the kernel does. Symlink targets stay inside the tree
(the control must not be able to write outside it)."""
from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import test_cow_model
from _shared import rmtree
from sandlock import Sandbox
from test_cow import readable_base, strict_snapshot, world_dir
from test_cow_layer import snapshot
from test_cow_model import DATA, DIR_MODES, FILE_MODES, PATHS, expected_changes, initial_tree

OPS = st.one_of(
    st.tuples(st.just("write"), PATHS, DATA, FILE_MODES),
    st.tuples(st.just("append"), PATHS, DATA),
    st.tuples(st.just("truncate"), PATHS),
    st.tuples(st.just("rm_r"), PATHS),
    st.tuples(st.just("unlink"), PATHS),
    st.tuples(st.just("mkdir"), PATHS, DIR_MODES),
    st.tuples(st.just("rmdir"), PATHS),
    st.tuples(st.just("mv"), PATHS, PATHS),
    st.tuples(st.just("symlink"), st.sampled_from(["a", "b", "a/b", "c/c", "e"]), PATHS),
    st.tuples(st.just("link"), PATHS, PATHS),
    # owner rwx kept: a directory without it would stop an unprivileged run
    # (and a root one: the supervisor has no CAP_DAC_OVERRIDE to look into it)
    st.tuples(st.just("chmod"), PATHS, st.sampled_from([0o755, 0o700, 0o750, 0o775])),
)

# The program: test_cow_model.kernel() applied to "." (its source, not a
# copy), one result per op, then the tree as the program sees it.
PROGRAM = "import errno, json, os, shutil, stat, sys\n" + textwrap.dedent(inspect.getsource(test_cow_model.kernel)) + r'''
ops = json.loads(sys.argv[1])
results = []
for op in ops:
    op = tuple(bytes.fromhex(o["hex"]) if isinstance(o, dict) else o for o in op)
    try:
        kernel(".", op)
        results.append("OK")
    except OSError as e:
        results.append(errno.errorcode.get(e.errno, str(e.errno)))
seen = {}
for d, dirs, files in os.walk("."):
    for n in sorted(dirs + files):
        p = os.path.join(d, n)
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            v = os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            v = open(p, "rb").read().hex() if st.st_mode & 0o400 else None
        else:
            v = sorted(os.listdir(p)) if st.st_mode & 0o500 == 0o500 else None
        seen[p] = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size if v is not None and not stat.S_ISDIR(st.st_mode) else 0, v]
print("VERDICT " + json.dumps([results, seen], sort_keys=True))
'''


def _program(ops) -> list[str]:
    wire = [[{"hex": o.hex()} if isinstance(o, bytes) else o for o in op] for op in ops]
    return [sys.executable, "-I", "-S", "-c", PROGRAM, json.dumps(wire)]


def _verdict(out: bytes):
    for line in reversed(out.decode(errors="replace").splitlines()):
        if line.startswith("VERDICT "):
            return json.loads(line[len("VERDICT "):])
    return None


def _fix_modes(root: str) -> None:
    for d, dirs, _ in os.walk(root):
        for n in dirs:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                os.chmod(p, 0o755)


@settings(max_examples=int(os.environ.get("SL_COW_SANDBOX_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, max_size=12), do_commit=st.booleans())
def test_sandboxed_program_matches_the_kernel(ops, do_commit):
    tmp = world_dir("sl-cow-smodel-")
    try:
        work, scratch = os.path.join(tmp, "w"), os.path.join(tmp, "s")
        for d in (work, scratch):
            os.mkdir(d)
            initial_tree(d)
            _fix_modes(d)
            os.chmod(d, 0o755)
        original = snapshot(work)
        strict = strict_snapshot(work)
        p = subprocess.run(_program(ops), cwd=scratch, capture_output=True, timeout=60)
        want = _verdict(p.stdout)
        assert want is not None, p.stderr
        final = snapshot(scratch)

        sb = Sandbox(fs_readable=readable_base(), workdir=work, cwd=work,
                     on_exit="commit" if do_commit else "abort")
        r = sb.dry_run(_program(ops), timeout=60)
        assert _verdict(r.stdout) == want, (r.stderr[-2000:], r.error)
        assert strict_snapshot(work) == strict
        assert [(c.kind, c.path) for c in r.changes] == expected_changes(original, final)

        r = sb.run(_program(ops), timeout=60)
        assert _verdict(r.stdout) == want, (r.stderr[-2000:], r.error)
        assert r.exit_code == 0 and r.error is None, (r.error, r.stderr[-2000:])
        assert [(c.kind, c.path) for c in r.changes] == expected_changes(original, final)
        if do_commit:
            assert snapshot(work) == final
        else:
            assert strict_snapshot(work) == strict
    finally:
        _fix_modes(tmp)
        rmtree(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
