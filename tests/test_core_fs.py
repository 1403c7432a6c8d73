"""Filesystem confinement, with real sandboxed processes.

Each test runs the same probe unconfined (the control: everything works)
and in a sandbox, so a pass shows the sandbox at work.
"""
from __future__ import annotations

import os

import pytest

from sandlock import Sandbox


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)


def _mkdir(*parts: str) -> str:
    path = os.path.join(*parts)
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def dirs(world_dir):
    """allowed/ (file.txt), other/ (file.txt), w/, data/ (secret, pub.txt,
    hidden/f, open/f)."""
    d = {name: _mkdir(world_dir, name) for name in ("allowed", "other", "w", "data")}
    _write(os.path.join(d["allowed"], "file.txt"), "allowed-content")
    _write(os.path.join(d["other"], "file.txt"), "other-content")
    _write(os.path.join(d["data"], "secret"), "SECRET")
    _write(os.path.join(d["data"], "pub.txt"), "PUBLIC")
    _write(os.path.join(_mkdir(d["data"], "hidden"), "f"), "HIDDEN")
    _write(os.path.join(_mkdir(d["data"], "open"), "f"), "OPEN")
    d["root"] = world_dir
    return d


READ_TWO = """
OUT["allowed"] = rd(ARGS["a"])
OUT["other"] = rd(ARGS["b"])
"""


def test_readable_path_readable_unlisted_denied(py, dirs, base_readable):
    args = {"a": os.path.join(dirs["allowed"], "file.txt"), "b": os.path.join(dirs["other"], "file.txt")}
    assert py.unconfined(READ_TWO, args) == {"allowed": "OK:allowed-content", "other": "OK:other-content"}
    sb = Sandbox(fs_readable=base_readable + [dirs["allowed"]])
    assert py.sandboxed(sb, READ_TWO, args) == {"allowed": "OK:allowed-content", "other": "EACCES"}


WRITES = """
w, ro = ARGS["w"], ARGS["ro"]
OUT["w_create"] = wr(os.path.join(w, "new.txt"), "written")
OUT["w_readback"] = rd(os.path.join(w, "new.txt"))
OUT["w_mkdir"] = attempt(os.mkdir, os.path.join(w, "sub"))
OUT["ro_read"] = rd(os.path.join(ro, "file.txt"))
OUT["ro_create"] = wr(os.path.join(ro, "new.txt"))
OUT["ro_append"] = wr(os.path.join(ro, "file.txt"), "more", "a")
OUT["ro_mkdir"] = attempt(os.mkdir, os.path.join(ro, "sub"))
OUT["ro_unlink"] = attempt(os.unlink, os.path.join(ro, "file.txt"))
"""


def test_writable_vs_readable_only(py, dirs, base_readable, world_dir):
    sb = Sandbox(fs_readable=base_readable + [dirs["allowed"]], fs_writable=[dirs["w"]])
    out = py.sandboxed(sb, WRITES, {"w": dirs["w"], "ro": dirs["allowed"]})
    assert out == {"w_create": "OK", "w_readback": "OK:written", "w_mkdir": "OK",
                   "ro_read": "OK:allowed-content", "ro_create": "EACCES", "ro_append": "EACCES",
                   "ro_mkdir": "EACCES", "ro_unlink": "EACCES"}
    with open(os.path.join(dirs["allowed"], "file.txt")) as f:
        assert f.read() == "allowed-content"
    # Control: the same operations succeed unconfined (fresh directories).
    w2, ro2 = _mkdir(world_dir, "w2"), _mkdir(world_dir, "ro2")
    _write(os.path.join(ro2, "file.txt"), "x")
    ctl = py.unconfined(WRITES, {"w": w2, "ro": ro2})
    assert set(ctl.values()) <= {"OK", "OK:written", "OK:x"}, ctl


def test_writable_file_rule(py, dirs, base_readable):
    """A writable *file* grant: the file is writable, its directory is not."""
    target = os.path.join(dirs["other"], "file.txt")
    code = """
OUT["append"] = wr(ARGS["f"], "+", "a")
OUT["read"] = rd(ARGS["f"])
OUT["sibling"] = wr(os.path.join(os.path.dirname(ARGS["f"]), "sibling"))
"""
    sb = Sandbox(fs_readable=base_readable, fs_writable=[target])
    assert py.sandboxed(sb, code, {"f": target}) == {
        "append": "OK", "read": "OK:other-content+", "sibling": "EACCES"}


DENIED = """
d = ARGS["data"]
OUT["secret"] = rd(os.path.join(d, "secret"))
OUT["pub"] = rd(os.path.join(d, "pub.txt"))
OUT["hidden_file"] = rd(os.path.join(d, "hidden", "f"))
OUT["hidden_list"] = ls(os.path.join(d, "hidden"))
OUT["open_file"] = rd(os.path.join(d, "open", "f"))
OUT["open_list"] = ls(os.path.join(d, "open"))
"""


def test_denied_file_and_dir_inside_readable_tree(py, dirs, base_readable):
    args = {"data": dirs["data"]}
    ctl = py.unconfined(DENIED, args)
    assert ctl == {"secret": "OK:SECRET", "pub": "OK:PUBLIC", "hidden_file": "OK:HIDDEN",
                   "hidden_list": "OK:f", "open_file": "OK:OPEN", "open_list": "OK:f"}
    sb = Sandbox(fs_readable=base_readable + [dirs["data"]],
                 fs_denied=[os.path.join(dirs["data"], "secret"), os.path.join(dirs["data"], "hidden")])
    assert py.sandboxed(sb, DENIED, args) == {
        "secret": "EACCES", "pub": "OK:PUBLIC", "hidden_file": "EACCES", "hidden_list": "EACCES",
        "open_file": "OK:OPEN", "open_list": "OK:f"}


def test_denied_file_inside_writable_tree(py, dirs, base_readable):
    code = """
d = ARGS["data"]
OUT["secret_read"] = rd(os.path.join(d, "secret"))
OUT["secret_write"] = wr(os.path.join(d, "secret"), "overwritten")
OUT["sub_create"] = wr(os.path.join(d, "open", "new"), "n")
"""
    sb = Sandbox(fs_readable=base_readable, fs_writable=[dirs["data"]],
                 fs_denied=[os.path.join(dirs["data"], "secret")])
    assert py.sandboxed(sb, code, {"data": dirs["data"]}) == {
        "secret_read": "EACCES", "secret_write": "EACCES", "sub_create": "OK"}
    with open(os.path.join(dirs["data"], "secret")) as f:
        assert f.read() == "SECRET"


CWD = """
OUT["cwd"] = os.getcwd()
OUT["rel"] = rd("file.txt")
"""


def test_cwd_field(py, dirs, base_readable, monkeypatch):
    monkeypatch.chdir(dirs["other"])
    readable = base_readable + [dirs["allowed"], dirs["other"]]
    default = py.sandboxed(Sandbox(fs_readable=readable), CWD)
    assert default == {"cwd": dirs["other"], "rel": "OK:other-content"}
    moved = py.sandboxed(Sandbox(fs_readable=readable, cwd=dirs["allowed"]), CWD)
    assert moved == {"cwd": dirs["allowed"], "rel": "OK:allowed-content"}


def test_relative_policy_paths_resolve_against_callers_cwd(py, dirs, base_readable, monkeypatch):
    monkeypatch.chdir(dirs["root"])
    sb = Sandbox(fs_readable=base_readable + ["allowed", "data"], fs_writable=["w"],
                 fs_denied=["data/secret"])
    code = """
OUT["allowed"] = rd(ARGS["allowed"])
OUT["other"] = rd(ARGS["other"])
OUT["w"] = wr(ARGS["w"])
OUT["secret"] = rd(ARGS["secret"])
OUT["pub"] = rd(ARGS["pub"])
"""
    args = {"allowed": os.path.join(dirs["allowed"], "file.txt"),
            "other": os.path.join(dirs["other"], "file.txt"),
            "w": os.path.join(dirs["w"], "new"),
            "secret": os.path.join(dirs["data"], "secret"),
            "pub": os.path.join(dirs["data"], "pub.txt")}
    assert py.sandboxed(sb, code, args) == {
        "allowed": "OK:allowed-content", "other": "EACCES", "w": "OK",
        "secret": "EACCES", "pub": "OK:PUBLIC"}


def test_path_search_skips_unlisted_directory(dirs, base_readable):
    """execvp semantics: a PATH entry the sandbox may not read (EACCES) is
    skipped and the search goes on."""
    fake = os.path.join(dirs["other"], "sh")
    with open(fake, "w") as f:
        f.write("#!/bin/sh\necho FAKE\n")
    os.chmod(fake, 0o755)
    path = f"{dirs['other']}:/usr/bin:/bin"
    import subprocess
    # Control: unconfined, the search finds the first "sh" on PATH.
    ctl = subprocess.run(["sh", "-c", "echo REAL"], env={"PATH": path}, capture_output=True)
    assert ctl.stdout == b"FAKE\n"
    r = Sandbox(fs_readable=base_readable, env={"PATH": path}).run(["sh", "-c", "echo REAL"])
    assert (r.exit_code, r.stdout) == (0, b"REAL\n"), r.stderr
    r = Sandbox(fs_readable=base_readable + [dirs["other"]], env={"PATH": path}).run(["sh", "-c", "echo REAL"])
    assert r.stdout == b"FAKE\n"
