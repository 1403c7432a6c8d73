"""Checkpoints: capture of a running sandbox (policy, command, cwd,
environment, process facts, app_state, the copy-on-write branch while
paused), the store (save / load / list / delete, names, atomic writes,
refusal of incomplete or altered entries) and restore as a restart."""
from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time

import pytest

import sandlock
from sandlock import Checkpoint, Sandbox, SkippedFd
from sandlock.exceptions import PolicyError, SandboxError

SLEEP = shutil.which("sleep") or "/bin/sleep"


@pytest.fixture
def store(tmp_path):
    d = tmp_path / "store"
    return d


@pytest.fixture(autouse=True)
def _private_data_home(tmp_path, monkeypatch):
    """The default store goes under XDG_DATA_HOME: never the real one."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_until(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def _offline(**kw) -> Checkpoint:
    """A checkpoint made without a sandbox (for the store's own tests)."""
    args = dict(command=["true"], cwd="/", environ={"A": "1"}, policy={}, policy_skipped=[],
                processes=[], app_state=None, workdir=None, branch_dir=None, branch_info=None,
                created=0.0)
    args.update(kw)
    return Checkpoint(**args)


@pytest.fixture
def sleeping(base_readable):
    sb = Sandbox(fs_readable=base_readable, env={"CP_TEST": "yes"})
    sb.spawn([SLEEP, "60"])
    yield sb
    sb.kill()
    sb.wait()


# -- names --------------------------------------------------------------------------------

BAD_NAMES = ["../x", "..", ".", ".hidden", "a/b", "/abs", "", "x" * 65, "a\0b", 5, None]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_names_are_refused(name, store):
    cp = _offline()
    for call in (lambda: cp.save(name, store=store), lambda: Checkpoint.load(name, store=store),
                 lambda: Checkpoint.delete(name, store=store)):
        with pytest.raises(PolicyError):
            call()
    assert not store.exists() or os.listdir(store) == []


def test_good_names(store):
    cp = _offline()
    for name in ("a", "x" * 64, "run-1.final", "with space", "ü"):
        assert cp.save(name, store=store) == store / name
    assert Checkpoint.list(store=store) == sorted(["a", "x" * 64, "run-1.final", "with space", "ü"])


# -- capture and the store ----------------------------------------------------------------

def test_checkpoint_of_a_running_sandbox_round_trip(sleeping, store):
    pid = sleeping.pid
    seen = []

    def save_fn():
        seen.append(_state(pid))          # called while the sandbox is stopped
        return b"binary \x00\xff state"

    cp = sleeping.checkpoint(save_fn=save_fn)
    # Stopped: "T", or "t" when something outside is tracing it at that
    # moment (seen once in CI on a machine shared with profilers).
    assert len(seen) == 1 and seen[0] in ("T", "t"), seen
    assert _wait_until(lambda: _state(pid) not in ("T", "t"))   # resumed afterwards
    assert sleeping.is_running
    assert cp.name == "" and cp.app_state == b"binary \x00\xff state"
    assert cp.command == [SLEEP, "60"] and cp.cwd == os.getcwd()
    assert cp.environ["CP_TEST"] == "yes"
    assert cp.processes[0]["pid"] == pid and cp.processes[0]["cmdline"] == [SLEEP, "60"]
    assert cp.policy["env"] == {"CP_TEST": "yes"} and cp.workdir is None and cp.complete
    assert any("memory" in what for what in cp.not_captured)

    path = cp.save("alpha", store=store)
    assert path == store / "alpha" and path.is_dir()
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    for f in os.listdir(path):
        if os.path.isfile(path / f):
            assert stat.S_IMODE(os.stat(path / f).st_mode) == 0o600, f
    assert cp.name == "alpha"
    cp.save("beta", store=store)
    with pytest.raises(FileExistsError):
        cp.save("beta", store=store)
    assert Checkpoint.list(store=store) == ["alpha", "beta"]

    got = []
    loaded = Checkpoint.load("alpha", store=store, restore_fn=got.append)
    assert got == [b"binary \x00\xff state"]
    assert loaded.name == "alpha" and loaded.app_state == cp.app_state
    assert (loaded.command, loaded.cwd, loaded.environ) == (cp.command, cp.cwd, cp.environ)
    assert loaded.policy == cp.policy and loaded.processes == cp.processes

    Checkpoint.delete("alpha", store=store)
    assert Checkpoint.list(store=store) == ["beta"]
    with pytest.raises(FileNotFoundError):
        Checkpoint.load("alpha", store=store)
    with pytest.raises(FileNotFoundError):
        Checkpoint.delete("alpha", store=store)
    Checkpoint.delete("beta", store=store)
    assert Checkpoint.list(store=store) == [] and os.listdir(store) == []


def test_without_save_fn_there_is_no_app_state(sleeping, store):
    cp = sleeping.checkpoint()
    assert cp.app_state is None
    path = cp.save("plain", store=store)
    assert not (path / "app_state.bin").exists()
    calls = []
    assert Checkpoint.load("plain", store=store, restore_fn=calls.append).app_state is None
    assert calls == []


def test_a_paused_sandbox_stays_paused(sleeping):
    sleeping.pause()
    pid = sleeping.pid
    assert _wait_until(lambda: _state(pid) == "T")
    sleeping.checkpoint()
    time.sleep(0.1)
    assert _state(pid) == "T"
    sleeping.resume()


def test_save_fn_must_return_bytes_and_its_error_resumes(sleeping):
    pid = sleeping.pid
    with pytest.raises(TypeError):
        sleeping.checkpoint(save_fn=lambda: "text")
    with pytest.raises(ZeroDivisionError):
        sleeping.checkpoint(save_fn=lambda: 1 // 0)
    assert _wait_until(lambda: _state(pid) != "T") and sleeping.is_running


def test_checkpoint_needs_a_running_sandbox(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    with pytest.raises(SandboxError, match="not running"):
        sb.checkpoint()
    assert sb.run(["true"], timeout=60).success
    with pytest.raises(SandboxError, match="not running"):
        sb.checkpoint()


def test_default_store_is_private(sleeping, tmp_path):
    cp = sleeping.checkpoint()
    path = cp.save("here")
    base = tmp_path / "xdg-data" / "sandlock" / "checkpoints"
    assert path == base / "here" and Checkpoint.list() == ["here"]
    for d in (base, base.parent):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    os.chmod(base, 0o755)
    with pytest.raises(SandboxError, match="open to other users"):
        Checkpoint.list()
    with pytest.raises(SandboxError):
        cp.save("other")
    os.chmod(base, 0o700)
    Checkpoint.delete("here")


# -- incomplete and altered entries --------------------------------------------------------

def _branch_dir(tmp_path) -> str:
    b = tmp_path / "branch-src"
    (b / "upper" / "sub").mkdir(parents=True)
    (b / "upper" / "sub" / "f").write_bytes(b"upper bytes")
    (b / "deleted.log").write_bytes(b"6f6c64\n")
    (b / "base.log").write_bytes(b"")
    return str(b)


def test_incomplete_or_altered_entries_are_refused(store, tmp_path):
    cp = _offline(app_state=b"state", workdir="/nonexistent-workdir",
                  branch_dir=_branch_dir(tmp_path))
    cases = {
        "no-manifest": lambda p: os.unlink(p / "manifest.json"),
        "no-app-state": lambda p: os.unlink(p / "app_state.bin"),
        "policy-altered": lambda p: (p / "policy.json").write_bytes(b'{"fields": {}, "skipped": ["x"]}'),
        "upper-file-gone": lambda p: os.unlink(p / "branch" / "upper" / "sub" / "f"),
        "log-gone": lambda p: os.unlink(p / "branch" / "deleted.log"),
        "log-altered": lambda p: (p / "branch" / "deleted.log").write_bytes(b""),
        "future-version": lambda p: _edit_manifest(p, version=99),
        "not-a-manifest": lambda p: (p / "manifest.json").write_bytes(b"[1, 2"),
        "branch-dropped": lambda p: _edit_manifest(p, branch=None),
        "no-command": lambda p: _edit_manifest(p, command=[]),
    }
    for name, damage in cases.items():
        path = cp.save(name, store=store)
        assert Checkpoint.load(name, store=store).app_state == b"state"
        damage(path)
        with pytest.raises(SandboxError, match="unusable"):
            Checkpoint.load(name, store=store)
    assert "no-manifest" not in Checkpoint.list(store=store)
    os.mkdir(store / ".tmp-left-over", 0o700)
    assert ".tmp-left-over" not in Checkpoint.list(store=store)


def _edit_manifest(path, **changes):
    m = json.loads((path / "manifest.json").read_bytes())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


def test_an_entry_open_to_others_is_refused(store):
    path = _offline().save("open", store=store)
    os.chmod(path, 0o755)
    with pytest.raises(SandboxError, match="open to other users"):
        Checkpoint.load("open", store=store)


# -- with a workdir: the branch, and restore as a restart ----------------------------------

SCRIPT = r"""
import json, os, sys, time
fd = os.environ.get("SANDLOCK_APP_STATE_FD")
if fd is None:
    with open("new.txt", "w") as f:
        f.write("written before the checkpoint")
    os.unlink("old.txt")
    print("ready", flush=True)
    while True:
        print("tick", flush=True)
        time.sleep(0.05)
state = os.read(int(fd), 1 << 20).decode()
with open("report.json", "w") as f:
    json.dump({"state": state, "new": open("new.txt").read(), "old": os.path.exists("old.txt"),
               "cwd": os.getcwd(), "env": os.environ.get("CP_TEST")}, f)
"""


def test_workdir_branch_is_captured_while_paused_and_restored(base_readable, world_dir, store):
    work = os.path.join(world_dir, "w")
    os.mkdir(work)
    os.chmod(work, 0o755)
    with open(os.path.join(work, "old.txt"), "w") as f:
        f.write("old")
    cmd = [sys.executable, "-I", "-S", "-c", SCRIPT]
    sb = Sandbox(fs_readable=base_readable, workdir=work, cwd=work, env={"CP_TEST": "kept"})
    proc = sb.popen(cmd, stdout=sandlock.StdioMode.PIPED)
    try:
        assert proc.stdout.readline() == b"ready\n"
        cp = sb.checkpoint(save_fn=lambda: _state(proc.pid).encode())
        assert cp.app_state == b"T"                        # stopped while copied
        assert proc.stdout.readline() == b"tick\n"         # and running again after
        line = b""
        deadline = time.monotonic() + 10
        while line != b"tick\n" and time.monotonic() < deadline:
            line = proc.stdout.readline()
        assert line == b"tick\n" and sb.is_running
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    # The killed run's branch was aborted: the workdir is as it was.
    assert sorted(os.listdir(work)) == ["old.txt"]
    assert cp.workdir == os.path.realpath(work) and cp.complete
    assert cp.cwd == work and cp.environ["CP_TEST"] == "kept"

    cp.save("wd", store=store)
    assert (store / "wd" / "branch" / "upper" / "new.txt").read_text() == "written before the checkpoint"
    loaded = Checkpoint.load("wd", store=store)

    # Restoring needs the checkpoint's workdir.
    with pytest.raises(SandboxError, match="workdir"):
        Sandbox(fs_readable=base_readable).restore_interactive(loaded)
    with pytest.raises(TypeError):
        Sandbox(fs_readable=base_readable, workdir=work).restore_interactive("wd")

    again = Sandbox(fs_readable=base_readable, workdir=work)   # no env, no cwd of its own
    assert again.restore_skipped == []
    again.restore_interactive(loaded)
    with pytest.raises(SandboxError, match="already"):
        again.restore_interactive(loaded)
    r = again.wait()
    assert r.success, (r.exit_code, r.error)
    assert all(isinstance(s, SkippedFd) and s.fd > 2 for s in again.restore_skipped)
    # The restart saw the saved branch (new.txt there, old.txt gone), the
    # saved cwd and environment, and app_state on its fd; it exited 0, so
    # on_exit=commit published the branch.
    report = json.loads(open(os.path.join(work, "report.json")).read())
    assert report == {"state": "T", "new": "written before the checkpoint", "old": False,
                      "cwd": work, "env": "kept"}
    assert sorted(os.listdir(work)) == ["new.txt", "report.json"]


def test_restore_without_workdir_restarts_the_command(base_readable, world_dir, store):
    out = os.path.join(world_dir, "out")
    code = ("import os, time\nfd = os.environ.get('SANDLOCK_APP_STATE_FD')\n"
            f"if fd: open({out!r}, 'wb').write(os.read(int(fd), 100) + os.environ['CP_TEST'].encode())\n"
            "time.sleep(60)\n")
    sb = Sandbox(fs_readable=base_readable, fs_writable=[world_dir], env={"CP_TEST": "-env"})
    sb.spawn([sys.executable, "-I", "-S", "-c", code])
    try:
        cp = sb.checkpoint(save_fn=lambda: b"state")
    finally:
        sb.kill()
        sb.wait()
    cp.save("nowd", store=store)
    again = Sandbox(fs_readable=base_readable, fs_writable=[world_dir], env={"CP_TEST": "-new"})
    again.restore_interactive(Checkpoint.load("nowd", store=store))
    try:
        assert _wait_until(lambda: os.path.exists(out) and open(out, "rb").read().endswith(b"new"))
        assert open(out, "rb").read() == b"state-new"   # the restoring sandbox's env on top
    finally:
        again.kill()
        again.wait()
    with pytest.raises(SandboxError, match="no copy-on-write branch"):
        Sandbox(fs_readable=base_readable, workdir=world_dir).restore_interactive(cp)


def test_a_branch_with_a_special_file_is_not_saved_with_a_hole(store, tmp_path):
    bdir = _branch_dir(tmp_path)
    os.mkfifo(os.path.join(bdir, "upper", "sub", "fifo"))
    cp = _offline(workdir="/nonexistent-workdir", branch_dir=bdir)
    with pytest.raises(SandboxError, match="special file"):
        cp.save("holey", store=store)
    assert os.listdir(store) == []          # neither the entry nor its temporary directory
    assert cp.name == ""
