"""One filesystem truth: what the resolved view (fsview.FsView) says about a
path is what a sandboxed process really gets, for random policies.

Each example builds the policy from random grants and denials over a small
tree, runs one real sandbox that tries to read every file, list every
directory and open every file for writing, and compares each answer with
the view's `may_read` / `may_list` / `may_write`. The supervisor's checks
(named unix sockets, /proc, passthrough directories) ask the same view, so
this keeps them equal to what Landlock enforces.

Known difference, not tested here: creating a new entry directly inside a
passthrough directory (one a denied path splits) fails, although the view
grants the tree.
"""
from __future__ import annotations

import json
import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandlock import Sandbox
from sandlock.fsview import policy_view

pytestmark = pytest.mark.core

# The tree, relative to the test's directory: directories end with "/".
TREE = ("a/", "a/f1", "a/b/", "a/b/f2", "a/b/c/", "a/b/c/f3", "a/g/", "a/g/f5", "d/", "d/f4", "e")
NODES = tuple(n.rstrip("/") for n in TREE)

PROBE = r"""
import json, os, sys
out = {}
for p in json.loads(sys.argv[1]):
    r = {}
    if os.path.isdir(p) or p.endswith("/"):
        try:
            os.listdir(p); r["list"] = True
        except OSError:
            r["list"] = False
    else:
        try:
            open(p, "rb").close(); r["read"] = True
        except OSError:
            r["read"] = False
        try:
            open(p, "ab").close(); r["write"] = True
        except OSError:
            r["write"] = False
    out[p] = r
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    import tempfile

    from _shared import rmtree
    root = tempfile.mkdtemp(dir="/tmp", prefix="sl-fsview-")
    os.chmod(root, 0o755)
    for node in TREE:
        path = os.path.join(root, node)
        if node.endswith("/"):
            os.makedirs(path, exist_ok=True)
            os.chmod(path, 0o777)
        else:
            with open(path, "w") as f:
                f.write("x")
            os.chmod(path, 0o666)
    yield root
    rmtree(root)


policies = st.fixed_dictionaries({
    "read": st.lists(st.sampled_from(NODES), max_size=3, unique=True),
    "write": st.lists(st.sampled_from(NODES), max_size=2, unique=True),
    "deny": st.lists(st.sampled_from(NODES), max_size=2, unique=True),
})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policies)
def test_view_matches_the_kernel(tree, base_readable, policy):
    full = {k: [os.path.join(tree, n) for n in v] for k, v in policy.items()}
    view = policy_view(full["read"], full["write"], full["deny"])
    paths = [os.path.join(tree, n) for n in NODES]
    sb = Sandbox(fs_readable=base_readable + full["read"], fs_writable=full["write"],
                 fs_denied=full["deny"])
    r = sb.run([sys.executable, "-I", "-S", "-c", PROBE, json.dumps(paths)], timeout=60)
    assert r.exit_code == 0, (r.error, r.stderr[-500:])
    seen = json.loads(r.stdout)
    for p in paths:
        if os.path.isdir(p):
            expect = {"list": view.may_list(p)}
        else:
            expect = {"read": view.may_read(p), "write": view.may_write(p)}
        assert seen[p] == expect, (p, policy)
