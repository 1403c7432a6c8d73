"""Red-team attack: fs_denied inside a copy-on-write workdir.

Every change in the workdir is made by the supervisor, with its own rights,
and it did not look at fs_denied: a hard link of the denied file (or a
rename of its directory) made through the branch gave it a name nothing
denies, and the sandbox read it. The branch's handlers now refuse every
open and change that names a denied path (supervisor/cow.py).
"""
from __future__ import annotations

import os

from escape_lib import confined, unconfined

from sandlock import PolicyError, Sandbox

ATTACK = r'''
w = ARGS["w"]
emit(direct=rd(w + "/sub/secret"),
     link=os_e(os.link, w + "/sub/secret", w + "/alias"),
     alias=rd(w + "/alias"),
     rename=os_e(os.rename, w + "/sub", w + "/moved"),
     moved=rd(w + "/moved/secret"),
     append=os_e(lambda: open(w + "/moved/secret", "a").write("x")))
'''


def _workdir(top: str) -> str:
    w = os.path.join(top, "w")
    os.makedirs(os.path.join(w, "sub"))
    with open(os.path.join(w, "sub", "secret"), "w") as f:
        f.write("SECRET")
    for d in (w, os.path.join(w, "sub")):
        os.chmod(d, 0o777)
    os.chmod(os.path.join(w, "sub", "secret"), 0o666)
    return w


def test_denied_path_in_a_cow_workdir(wdir, base):
    control = _workdir(os.path.join(wdir, "c"))
    v = unconfined(ATTACK, dict(w=control))
    assert v["alias"] == "READ:SECRET" and v["moved"] == "READ:SECRET", v

    w = _workdir(os.path.join(wdir, "s"))
    sb = Sandbox(fs_readable=base, workdir=w, fs_denied=[os.path.join(w, "sub", "secret")],
                 on_exit="commit")
    try:
        v, r = confined(sb, ATTACK, dict(w=w))
    except PolicyError as e:
        assert "fs_denied" in str(e) and "workdir" in str(e)
    else:   # enforced in the branch: nothing of the secret is reached
        assert v["direct"] == "EACCES", v
        assert "SECRET" not in v["alias"] and "SECRET" not in v["moved"], v
    with open(os.path.join(w, "sub", "secret")) as f:
        assert f.read() == "SECRET"
    assert sorted(os.listdir(w)) == ["sub"]


def test_denied_path_holding_the_workdir(wdir):
    # The other way round: a workdir inside a denied directory.
    w = _workdir(wdir)
    try:
        Sandbox(fs_readable=["/usr"], workdir=os.path.join(w, "sub"), fs_denied=[w]) \
            .run(["/bin/true"], timeout=30)
    except PolicyError as e:
        assert "fs_denied" in str(e)
    else:
        raise AssertionError("a workdir inside a denied directory was accepted")


MANY = r'''
w = ARGS["w"]
def write(path, mode="w"):
    with open(path, mode) as f:
        f.write("x")
def ls(path):
    return sorted(os.listdir(path))
os.symlink("sub/secret", w + "/ln")        # made in the branch, pointing at the denied file
emit(read=rd(w + "/sub/secret"), via_link=rd(w + "/ln"),
     list_denied_dir=os_e(ls, w + "/d"), read_in_dir=rd(w + "/d/f"),
     create_in_dir=os_e(write, w + "/d/new"), mkdir_in_dir=os_e(os.mkdir, w + "/d/x"),
     append=os_e(write, w + "/sub/secret", "a"), truncate=os_e(os.truncate, w + "/sub/secret", 0),
     unlink=os_e(os.unlink, w + "/sub/secret"), rename_into=os_e(os.rename, w + "/ok.txt", w + "/d/ok"),
     rename_dir=os_e(os.rename, w + "/d", w + "/d2"), rename_parent=os_e(os.rename, w + "/sub", w + "/s2"),
     link_into=os_e(os.link, w + "/ok.txt", w + "/d/ok"),
     stat=os_e(os.stat, w + "/sub/secret"), chmod=os_e(os.chmod, w + "/sub/secret", 0o600),
     utime=os_e(os.utime, w + "/d/f", (1, 1)),
     other=os_e(write, w + "/other.txt"), ok=rd(w + "/ok.txt"), list_sub=os_e(ls, w + "/sub"))
'''


def test_denied_paths_inside_a_cow_workdir_are_enforced_by_the_branch(wdir, base):
    """A denied file and a denied directory inside the workdir: nothing of
    them is read, listed, changed, linked or moved through the branch;
    the rest of the workdir works and commits."""
    w = _workdir(wdir)
    os.makedirs(os.path.join(w, "d"))
    for name, text in (("d/f", "IN-DENIED-DIR"), ("ok.txt", "fine")):
        with open(os.path.join(w, name), "w") as f:
            f.write(text)
    sb = Sandbox(fs_readable=base, workdir=w, on_exit="commit",
                 fs_denied=[os.path.join(w, "sub", "secret"), os.path.join(w, "d")])
    v, r = confined(sb, MANY, dict(w=w))
    for key in ("read", "via_link", "list_denied_dir", "read_in_dir", "create_in_dir", "mkdir_in_dir",
                "append", "truncate", "unlink", "rename_into", "rename_dir", "rename_parent", "link_into",
                "chmod", "utime"):
        assert v[key] in ("EACCES", "EPERM"), (key, v)
    # what Landlock alone allows stays allowed: stat, the rest of the tree
    assert v["stat"] == "OK" and v["other"] == "OK" and v["ok"] == "READ:fine", v
    assert v["list_sub"] == "OK", v
    with open(os.path.join(w, "sub", "secret")) as f:
        assert f.read() == "SECRET"
    assert sorted(os.listdir(os.path.join(w, "d"))) == ["f"]
    assert sorted(os.listdir(w)) == ["d", "ln", "ok.txt", "other.txt", "sub"]   # committed
