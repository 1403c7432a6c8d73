"""Copy-on-write branches after the run: changes, diff, commit (locking,
conflicts, durability, crash recovery), abort, keep, storage checks."""
from __future__ import annotations

import fcntl
import os
import signal
import stat
import time

import pytest

from sandlock.cow import branch as branch_mod
from sandlock.cow import storage
from sandlock.cow.branch import Branch, list_preserved, recover
from sandlock.exceptions import BranchConflictError, BranchError
from test_cow_layer import snapshot


@pytest.fixture
def wd(tmp_path):
    w = tmp_path / "w"
    (w / "a" / "b").mkdir(parents=True)
    (w / "a" / "b" / "f").write_bytes(b"deep\n")
    (w / "a" / "g").write_bytes(b"g\n")
    (w / "top").write_text("one\ntwo\nthree\n")
    (w / "bin").write_bytes(b"\x00\xff\x00")
    (tmp_path / "outside").write_bytes(b"outside\n")
    os.symlink("/etc", w / "etc")
    os.symlink("../outside", w / "esc")
    (tmp_path / "s").mkdir(mode=0o700)
    return w


@pytest.fixture
def br(wd, tmp_path):
    return Branch.create(wd, tmp_path / "s")


def write(lay, rel: bytes, data: bytes, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode=0o644):
    fd = lay.open(rel, flags, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def some_run(br):
    with br.layer() as lay:
        write(lay, b"top", b"one\n2\nthree\n")
        lay.mkdir(b"new", 0o750)
        write(lay, b"new/x", b"x\n")
        lay.symlink(b"/etc/passwd", b"new/l")
        lay.whiteout(b"a")
        lay.copy_up(b"bin")                 # copied, unchanged: not a change


# --- creation and storage

def test_create_canonicalises_and_refuses_bad_workdirs(wd, tmp_path):
    os.symlink(wd, tmp_path / "wl")
    b = Branch.create(tmp_path / "wl", tmp_path / "s")
    assert b.workdir == str(wd)
    assert os.path.isdir(b.upper_dir)
    assert Branch.attach(b.branch_dir).workdir == str(wd)
    with pytest.raises(BranchError):
        Branch.create(tmp_path / "missing", tmp_path / "s")
    with pytest.raises(BranchError):
        Branch.create(wd / "top", tmp_path / "s")
    with pytest.raises(BranchError, match="contain"):
        Branch.create(wd, wd / "store")
    with pytest.raises(BranchError, match="contain"):
        Branch.create(tmp_path, tmp_path / "s")


def test_branch_dir_is_private(br):
    st = os.lstat(br.branch_dir)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    assert sorted(os.listdir(br.branch_dir)) == ["base.log", "deleted.log", "upper", "workdir"]


def test_default_base_uses_private_xdg_runtime_dir(tmp_path, monkeypatch):
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert storage.default_base() == str(xdg / "sandlock-cow")
    assert storage.resolve_base(None) == str(xdg / "sandlock-cow")
    assert stat.S_IMODE(os.lstat(xdg / "sandlock-cow").st_mode) == 0o700


def test_default_base_falls_back_to_tmpdir(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert storage.default_base() == str(tmp_path / f"sandlock-cow-{os.geteuid()}")


@pytest.mark.parametrize("kind", ["world", "symlink", "file"])
def test_unsafe_existing_base_is_refused(tmp_path, monkeypatch, kind):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    base = tmp_path / f"sandlock-cow-{os.geteuid()}"
    if kind == "world":
        base.mkdir()
        os.chmod(base, 0o777)
    elif kind == "symlink":
        (tmp_path / "real").mkdir(mode=0o700)
        os.symlink(tmp_path / "real", base)
    else:
        base.write_text("")
    with pytest.raises(BranchError):
        storage.resolve_base(None)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a directory owned by another uid")
def test_foreign_base_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    base = tmp_path / f"sandlock-cow-{os.geteuid()}"
    base.mkdir(mode=0o700)
    os.chown(base, 65534, 65534)
    with pytest.raises(BranchError, match="owned"):
        storage.resolve_base(None)


# --- changes and diff

def test_changes_sorted_with_kinds(br):
    some_run(br)
    ch = br.changes()
    assert [(c.kind, c.path) for c in ch] == [
        ("D", "a"), ("A", "new"), ("A", "new/l"), ("A", "new/x"), ("M", "top")]
    byp = {c.path: c for c in ch}
    assert byp["a"].before.kind == "dir"
    assert byp["new/l"].after.target == "/etc/passwd"
    assert byp["new"].after.mode == 0o750
    assert byp["top"].before.size == 14 and byp["top"].after.digest != byp["top"].before.digest


def test_chmod_only_is_a_content_unchanged_modification(br):
    with br.layer() as lay:
        lay.chmod(b"top", 0o600)
    (c,) = br.changes()
    assert c.kind == "M" and c.content_unchanged and c.after.mode == 0o600


def test_recreated_dir_lists_hidden_children_as_deleted(br):
    with br.layer() as lay:
        lay.whiteout(b"a")
        lay.mkdir(b"a", 0o755)
        write(lay, b"a/g", b"new g\n")
    assert [(c.kind, c.path) for c in br.changes()] == [("D", "a/b"), ("M", "a/g")]


def test_diff_is_unified(br):
    some_run(br)
    d = br.diff()
    assert "--- a/top\n+++ b/top\n" in d
    assert "-two\n+2\n" in d
    assert "--- /dev/null\n+++ b/new/x\n" in d
    assert br.diff(paths=["new"]).count("+++") == 1
    with br.layer() as lay:
        write(lay, b"bin", b"\x00\x01")
    assert "Binary files a/bin and b/bin differ" in br.diff()


# --- commit

def test_commit_publishes_and_removes_storage(br, wd, tmp_path):
    some_run(br)
    br.commit()
    assert not os.path.exists(br.branch_dir)
    assert (wd / "top").read_text() == "one\n2\nthree\n"
    assert not (wd / "a").exists()
    assert (wd / "new" / "x").read_bytes() == b"x\n"
    assert os.readlink(wd / "new" / "l") == "/etc/passwd"
    assert stat.S_IMODE(os.lstat(wd / "new").st_mode) == 0o750
    assert (tmp_path / "outside").read_bytes() == b"outside\n"
    assert not [n for n in os.listdir(wd) if n.startswith(".sandlock")]


def test_abort_leaves_workdir(br, wd):
    before = snapshot(str(wd))
    some_run(br)
    br.abort()
    assert not os.path.exists(br.branch_dir)
    assert snapshot(str(wd)) == before


def test_commit_never_follows_workdir_symlinks(br, wd, tmp_path):
    with br.layer() as lay:
        lay.mkdir(b"x")
        write(lay, b"x/outside", b"pwned\n")
        lay.whiteout(b"esc")                 # deleting the link removes the link only
    os.symlink("..", wd / "x")               # the workdir changed meanwhile: x is now a link out
    before_out = (tmp_path / "outside").read_bytes()
    with pytest.raises(BranchConflictError):
        br.commit()
    assert (tmp_path / "outside").read_bytes() == before_out
    assert br.marker()["reason"] == "commit-conflict"
    os.unlink(wd / "x")
    br.commit()
    assert (wd / "x" / "outside").read_bytes() == b"pwned\n"
    assert not os.path.lexists(wd / "esc")
    assert (tmp_path / "outside").read_bytes() == before_out
    assert os.path.islink(wd / "etc")


def test_commit_with_conflict_is_refused(br, wd):
    some_run(br)
    (wd / "top").write_text("someone else\n")
    with pytest.raises(BranchConflictError, match="top"):
        br.commit()
    assert (wd / "top").read_text() == "someone else\n"
    assert (wd / "a" / "g").exists(), "nothing was applied"
    assert br.marker()["reason"] == "commit-conflict"
    br.commit(paths=["new"])                     # the rest still commits
    assert (wd / "new" / "x").exists()


def test_added_path_created_meanwhile_conflicts(br, wd):
    with br.layer() as lay:
        write(lay, b"fresh", b"mine")
    (wd / "fresh").write_text("theirs")
    with pytest.raises(BranchConflictError):
        br.commit()
    assert (wd / "fresh").read_text() == "theirs"


def test_deleted_dir_changed_meanwhile_conflicts(br, wd):
    with br.layer() as lay:
        lay.whiteout(b"a")
    time.sleep(0.01)
    (wd / "a" / "late").write_text("keep me")
    with pytest.raises(BranchConflictError):
        br.commit()
    assert (wd / "a" / "late").read_text() == "keep me"


def test_partial_commit_keeps_the_rest(br, wd):
    some_run(br)
    with br.layer() as lay:
        lay.whiteout(b"a")
        lay.mkdir(b"a", 0o755)
        write(lay, b"a/kept", b"k")
    br.commit(paths=["a/kept"])
    assert (wd / "a" / "kept").read_bytes() == b"k"
    assert (wd / "a" / "g").exists() and (wd / "top").read_text() == "one\ntwo\nthree\n"
    assert br.marker()["reason"] == "kept"
    assert [(c.kind, c.path) for c in br.changes()] == [
        ("D", "a/b"), ("D", "a/g"), ("A", "new"), ("A", "new/l"), ("A", "new/x"), ("M", "top")]
    with br.layer() as lay:                       # the merged view is unchanged
        assert lay.listdir(b"a") == [b"kept"]
    with pytest.raises(BranchError, match="nothing to commit"):
        br.commit(paths=["nope"])
    br.commit(paths=["new/x"])                    # its new parent comes along
    assert stat.S_IMODE(os.lstat(wd / "new").st_mode) == 0o750
    br.commit()
    assert sorted(os.listdir(wd / "a")) == ["kept"]
    assert not os.path.exists(br.branch_dir)


def test_lock_contention_defers(br, wd):
    some_run(br)
    fd = os.open(wd, os.O_RDONLY | os.O_DIRECTORY)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(w, b"1")
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(fd)
    try:
        assert os.read(r, 1) == b"1"
        t = time.monotonic()
        with pytest.raises(BranchError, match="deferred"):
            br.commit(lock_timeout=0.3)
        assert 0.25 < time.monotonic() - t < 5
        assert br.marker()["reason"] == "commit-deferred"
        assert (wd / "top").read_text() == "one\ntwo\nthree\n"
        assert [p.reason for p in list_preserved(os.path.dirname(br.branch_dir))] == ["commit-deferred"]
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
    br.commit()
    assert (wd / "top").read_text() == "one\n2\nthree\n"


def test_two_commits_do_not_interleave(wd, tmp_path):
    b1 = Branch.create(wd, tmp_path / "s")
    b2 = Branch.create(wd, tmp_path / "s")
    with b1.layer() as lay:
        for i in range(4):
            write(lay, f"one{i}".encode(), b"1")
    with b2.layer() as lay:
        write(lay, b"two", b"2")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            def slow(path):
                os.write(w, b"s")
                time.sleep(0.1)
            branch_mod.between_entries = slow
            b1.commit()
            code = 0
        finally:
            os._exit(code)
    try:
        assert os.read(r, 1) == b"s"             # the first commit holds the lock
        b2.commit(lock_timeout=10)
        assert all((wd / f"one{i}").exists() for i in range(4)), "waited for the whole first commit"
        assert (wd / "two").read_bytes() == b"2"
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
    assert os.waitstatus_to_exitcode(status) == 0


def test_crash_in_the_middle_of_commit_is_recovered(br, wd):
    with br.layer() as lay:
        for i in range(5):
            write(lay, f"f{i}".encode(), b"%d" % i * 100000)
        lay.whiteout(b"a")
        write(lay, b"top", b"changed")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            def stop(path):
                if path == "f2":
                    os.write(w, b"x")
                    time.sleep(60)
            branch_mod.between_entries = stop
            br.commit()
        finally:
            os._exit(1)
    assert os.read(r, 1) == b"x"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    assert (wd / "f0").exists() and not (wd / "f4").exists(), "stopped half way"
    (rec,) = list_preserved(os.path.dirname(br.branch_dir))
    assert rec.reason == "merge-interrupted" and rec.workdir == str(wd) and rec.pid == pid
    recover(br.branch_dir)
    assert not os.path.exists(br.branch_dir)
    assert [(wd / f"f{i}").read_bytes() for i in range(5)] == [b"%d" % i * 100000 for i in range(5)]
    assert (wd / "top").read_bytes() == b"changed" and not (wd / "a").exists()


def test_recover_without_interrupted_commit_refuses(br):
    with pytest.raises(BranchError):
        br.recover()
    br.keep("kept")
    with pytest.raises(BranchError):
        br.recover()
    assert [p.reason for p in list_preserved(os.path.dirname(br.branch_dir))] == ["kept"]


def test_commit_preserves_modes_and_read_only_dirs(br, wd):
    with br.layer() as lay:
        lay.mkdir(b"ro", 0o755)
        write(lay, b"ro/f", b"x", mode=0o640)
        write(lay, b"exe", b"#!/bin/sh\n", mode=0o755)
        lay.chmod(b"ro", 0o555)
    br.commit()
    assert stat.S_IMODE(os.lstat(wd / "ro").st_mode) == 0o555
    assert stat.S_IMODE(os.lstat(wd / "ro" / "f").st_mode) == 0o640
    assert stat.S_IMODE(os.lstat(wd / "exe").st_mode) == 0o755
    os.chmod(wd / "ro", 0o755)


# --- how a commit publishes files

def test_commit_links_a_single_named_file_and_copies_shared_ones(wd, br):
    with br.layer() as lay:
        write(lay, b"top", b"new top\n")             # copied up, then changed
        write(lay, b"fresh", b"fresh\n")
        lay.link(b"fresh", b"twin")                  # one file, two names in the branch
        st_top = lay.lstat(b"top")
    br.commit()
    assert (wd / "top").read_bytes() == b"new top\n"
    assert os.stat(wd / "top").st_ino == st_top.st_ino   # the branch's file itself, no copy
    # each name of a file the run hard-linked is its own file, as before
    a, b = os.stat(wd / "fresh"), os.stat(wd / "twin")
    assert (a.st_ino != b.st_ino, a.st_nlink, b.st_nlink) == (True, 1, 1)
    assert (wd / "twin").read_bytes() == b"fresh\n"
    assert os.stat(wd / "top").st_nlink == 1            # the branch's name is gone
    assert not [n for n in os.listdir(wd) if n.startswith(".sandlock-tmp-")]


def test_commit_across_filesystems_copies(wd, tmp_path):
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(wd).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the workdir")
    store = f"/dev/shm/sl-cow-test-{os.getpid()}"
    os.mkdir(store, 0o700)
    try:
        br = Branch.create(wd, store)
        with br.layer() as lay:
            write(lay, b"top", b"across\n")
            mode = stat.S_IMODE(lay.lstat(b"top").st_mode)
        br.commit()
        assert (wd / "top").read_bytes() == b"across\n"
        assert stat.S_IMODE(os.stat(wd / "top").st_mode) == mode
    finally:
        import shutil
        shutil.rmtree(store, ignore_errors=True)
