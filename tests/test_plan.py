"""compile_plan and fs_rules: policy → plan, without forking anything."""
from __future__ import annotations

import os
import resource

import pytest

from sandlock import PolicyError, Sandbox
from sandlock._kernel import landlock
from sandlock.exceptions import LandlockUnavailableError
from sandlock.plan import compile_plan, fs_rules
from sandlock.policy import model
from sandlock.policy.model import normalize

R = landlock.FS_READ
RW = landlock.FS_READ | landlock.FS_WRITE


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _mk(root, spec):
    """Create files ("x") and dirs ("x/") under root."""
    for rel in spec:
        path = os.path.join(root, rel)
        if rel.endswith("/"):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(rel)


@pytest.fixture
def tree(world_dir):
    root = os.path.realpath(world_dir)
    _mk(root, ["a/secret", "a/pub", "a/sub/deep", "b/x", "c.txt",
               "x/y/z/secret", "x/y/z/near", "x/y/other", "x/top"])
    os.symlink(os.path.join(root, "a/secret"), os.path.join(root, "link_to_secret"))
    os.symlink("/etc", os.path.join(root, "a/out"))
    return root


def covered(rules, path):
    return [(p, a) for p, a in rules if _under(path, p)]


def all_entries(root):
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            yield os.path.join(dirpath, n)


def check_split(rules, root, denied, access):
    """The invariants of a grant of `root` split around `denied` (a path or
    a list of paths)."""
    denied = [denied] if isinstance(denied, str) else denied
    for path, acc in rules:
        assert acc == access
        assert not os.path.islink(path), f"symlink granted: {path}"
        for d in denied:
            assert not _under(d, path), f"{path} covers the denied {d}"
    for entry in all_entries(root):
        if any(_under(entry, d) or _under(d, entry) for d in denied) or os.path.islink(entry):
            continue
        assert covered(rules, entry), f"sibling {entry} lost its grant"


def test_no_denied_path_gives_one_rule(tree):
    assert fs_rules([tree], [], []) == [(tree, R)]
    assert fs_rules([], [tree], []) == [(tree, RW)]


def test_split_around_a_denied_file(tree):
    secret = os.path.join(tree, "a/secret")
    rules = fs_rules([tree], [], [secret])
    check_split(rules, tree, secret, R)
    paths = {p for p, _ in rules}
    assert tree not in paths and os.path.join(tree, "a") not in paths
    assert {os.path.join(tree, n) for n in ("a/pub", "a/sub", "b", "c.txt", "x")} <= paths
    # Symlinks are never granted, neither to the secret nor out of the tree.
    assert os.path.join(tree, "link_to_secret") not in paths
    assert os.path.join(tree, "a/out") not in paths
    assert not covered(rules, "/etc")


def test_split_around_a_deep_denied_file(tree):
    secret = os.path.join(tree, "x/y/z/secret")
    rules = fs_rules([], [tree], [secret])
    check_split(rules, tree, secret, RW)
    paths = {p for p, _ in rules}
    for sibling in ("x/y/z/near", "x/y/other", "x/top", "a", "b"):
        assert os.path.join(tree, sibling) in paths


def test_split_around_a_denied_directory(tree):
    denied = os.path.join(tree, "x/y")
    rules = fs_rules([tree], [], [denied])
    check_split(rules, tree, denied, R)
    assert not covered(rules, os.path.join(tree, "x/y/other"))
    assert covered(rules, os.path.join(tree, "x/top"))


def test_denied_given_as_symlink_resolves(tree):
    rules = fs_rules([tree], [], [os.path.join(tree, "link_to_secret")])
    check_split(rules, tree, os.path.join(tree, "a/secret"), R)


def test_several_denied_paths(tree):
    d1, d2 = os.path.join(tree, "a/secret"), os.path.join(tree, "x/y/z/secret")
    rules = fs_rules([tree], [], [d1, d2])
    check_split(rules, tree, [d1, d2], R)


def test_denied_at_or_above_the_grant_removes_it(tree):
    a = os.path.join(tree, "a")
    assert fs_rules([a], [], [a]) == []
    assert fs_rules([os.path.join(tree, "a/sub")], [os.path.join(tree, "a/pub")], [a]) == []
    assert fs_rules([a], [], [tree]) == []
    # Unrelated grants are kept.
    assert fs_rules([a, os.path.join(tree, "b")], [], [a]) == [(os.path.join(tree, "b"), R)]


def test_nonexistent_paths(tree):
    missing = os.path.join(tree, "nope")
    assert fs_rules([missing], [missing + "2"], []) == []
    # A denied path that does not exist yet is still never covered.
    rules = fs_rules([tree], [], [missing])
    assert not covered(rules, missing)
    assert covered(rules, os.path.join(tree, "a/pub"))


def test_grant_given_as_symlink_grants_the_target(tree):
    link = os.path.join(tree, "link_to_a")
    os.symlink(os.path.join(tree, "a"), link)
    rules = fs_rules([link], [], [])
    assert rules == [(os.path.join(tree, "a"), R)]


def test_same_tree_readable_and_writable(tree):
    secret = os.path.join(tree, "a/secret")
    rules = fs_rules([tree], [tree], [secret])
    assert not any(_under(secret, p) for p, _ in rules)
    pub = os.path.join(tree, "a/pub")
    assert {a for _, a in covered(rules, pub)} == {R, RW}


# -- compile_plan ---------------------------------------------------------------

def plan_of(argv=("true",), **kw):
    return compile_plan(normalize(Sandbox(**kw)), list(argv), abi=7)


# Values for fields whose feature may still be pending; only those listed in
# model._PENDING when the tests run are checked.
PENDING_CANDIDATES = {"workdir": "/tmp", "http_allow": ["example.com"], "chroot": "/",
                      "net_allow": ["example.com:443"], "random_seed": 1, "num_cpus": 1}
PENDING_NOW = sorted(f for f in PENDING_CANDIDATES if f in model._PENDING) or ["<none>"]


@pytest.mark.parametrize("field", PENDING_NOW)
def test_pending_fields_refused(field):
    if field == "<none>":
        pytest.skip("every candidate field has been implemented")
    sb = Sandbox(**{field: PENDING_CANDIDATES[field]})
    with pytest.raises(NotImplementedError, match=field):
        compile_plan(normalize(sb), ["true"], abi=7)


@pytest.mark.parametrize("cmd", ["true", b"true", [], (), None, [1], ["a\0b"], [b"x\0"], [None]])
def test_bad_cmd(cmd):
    with pytest.raises(PolicyError, match="cmd"):
        compile_plan(normalize(Sandbox()), cmd, abi=7)


def test_old_landlock_abi_refused():
    with pytest.raises(LandlockUnavailableError):
        compile_plan(normalize(Sandbox()), ["true"], abi=5)


def test_plan_carries_the_policy(world_dir):
    p = plan_of(["prog", "arg"], max_open_files=33, no_coredump=True, no_huge_pages=True,
                no_randomize_memory=True, cpu_cores=[0], cwd=world_dir, name="n1",
                env={"SL_X": "1"}, net_allow_bind=[8080, "9000-9001"])
    assert p.argv == [b"prog", b"arg"]
    assert (resource.RLIMIT_NOFILE, 33, 33) in p.rlimits
    assert (resource.RLIMIT_CORE, 0, 0) in p.rlimits
    assert p.thp_disable and p.personality == 0x0040000 and (4, 0, 0) in p.rlimits
    assert p.cpu_affinity == (0,) and p.cwd == os.fsencode(world_dir) and p.name == "n1"
    assert p.envp[b"SL_X"] == b"1"
    assert sorted(p.bind_ports) == [8080, 9000, 9001]
    assert p.handled_net & landlock.NET_BIND_TCP
    d = plan_of()
    assert d.rlimits == [] and not d.thp_disable and d.personality is None
    assert d.cpu_affinity is None and d.cwd == os.fsencode(os.getcwd())
    assert d.bind_ports == []


def test_plan_bind_any_port_unhandles_bind():
    p = plan_of(net_allow_bind=["*"])
    assert not p.handled_net & landlock.NET_BIND_TCP
    assert p.handled_net & landlock.NET_CONNECT_TCP


def test_plan_environment(monkeypatch):
    monkeypatch.setenv("SL_PLAN_VAR", "v")
    monkeypatch.setenv("PATH", "/p1:/p2")
    inherited = plan_of().envp
    assert inherited[b"SL_PLAN_VAR"] == b"v"
    clean = plan_of(clean_env=True, env={"K": "V"}).envp
    assert b"SL_PLAN_VAR" not in clean
    assert set(clean) <= {b"PATH", b"HOME", b"USER", b"TERM", b"LANG", b"K"}
    assert clean[b"K"] == b"V" and clean[b"PATH"] == b"/p1:/p2"


def test_plan_exec_candidates(monkeypatch):
    monkeypatch.setenv("PATH", "/p1:/p2")
    assert plan_of(["prog"]).exec_candidates == [b"/p1/prog", b"/p2/prog"]
    assert plan_of(["./prog"]).exec_candidates == [b"./prog"]
    assert plan_of(["prog"], env={"PATH": "/q"}).exec_candidates == [b"/q/prog"]
