"""Red-team attack: fs_denied inside a copy-on-write workdir.

Every change in the workdir is made by the supervisor, with its own rights,
and it did not look at fs_denied: a hard link of the denied file (or a
rename of its directory) made through the branch gave it a name nothing
denies, and the sandbox read it. A denied path that overlaps the workdir is
now refused when the plan is made; if a later version enforces it in the
branch instead, the attack below must still read nothing.
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
