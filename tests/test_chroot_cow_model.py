"""The copy-on-write model test (tests/test_cow_sandbox_model.py) inside a
chroot: the same random file operations, run by the same program with
the chroot's own python (a dynamic root, tests/_rootfs.py) in a workdir
that is a directory of the root, give the kernel's results on a scratch
copy; after COMMIT the workdir equals the copy, after ABORT and a dry run
it is as before, and `changes` is the directory diff."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _rootfs import python_root, python_scratch
from _shared import rmtree
from sandlock import Sandbox
from test_cow import strict_snapshot
from test_cow_layer import snapshot
from test_cow_model import expected_changes, initial_tree
from test_cow_sandbox_model import OPS, PROGRAM, _fix_modes, _verdict


@pytest.fixture(scope="module")
def pyroot():
    with python_scratch("sl-chroot-cow-model-") as top:
        root, mounts = python_root(top)
        yield top, root, mounts


def _program(ops, python: str) -> list[str]:
    wire = [[{"hex": o.hex()} if isinstance(o, bytes) else o for o in op] for op in ops]
    return [python, "-I", "-S", "-c", PROGRAM, json.dumps(wire)]


@settings(max_examples=int(os.environ.get("SL_CHROOT_COW_EXAMPLES", "12")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, max_size=12), do_commit=st.booleans())
def test_chroot_program_matches_the_kernel(pyroot, ops, do_commit):
    top, root, mounts = pyroot
    work, scratch = os.path.join(root, "w"), os.path.join(top, "scratch")
    try:
        for d in (work, scratch):
            os.mkdir(d)
            initial_tree(d)
            _fix_modes(d)
            os.chmod(d, 0o755)
        original = snapshot(work)
        strict = strict_snapshot(work)
        p = subprocess.run(_program(ops, sys.executable), cwd=scratch, capture_output=True, timeout=60)
        want = _verdict(p.stdout)
        assert want is not None, p.stderr
        final = snapshot(scratch)

        sb = Sandbox(chroot=root, workdir=work, cwd="/w", fs_readable=["/"], fs_mount_ro=mounts,
                     env={"PATH": "/usr/bin"}, on_exit="commit" if do_commit else "abort")
        r = sb.dry_run(_program(ops, "python3"), timeout=60)
        assert _verdict(r.stdout) == want, (r.stderr[-2000:], r.error)
        assert strict_snapshot(work) == strict
        assert [(c.kind, c.path) for c in r.changes] == expected_changes(original, final)

        r = sb.run(_program(ops, "python3"), timeout=60)
        assert _verdict(r.stdout) == want, (r.stderr[-2000:], r.error)
        assert r.exit_code == 0 and r.error is None, (r.error, r.stderr[-2000:])
        assert [(c.kind, c.path) for c in r.changes] == expected_changes(original, final)
        if do_commit:
            assert snapshot(work) == final
        else:
            assert strict_snapshot(work) == strict
    finally:
        for d in (work, scratch):
            if os.path.lexists(d):
                _fix_modes(d)
                rmtree(d)
