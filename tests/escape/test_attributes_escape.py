"""Attribute escapes: changing the mode, owner, times or extended
attributes of a file the policy grants read-only (Landlock has no right
for these), and planting a set-user-ID program.

Each attack runs unconfined (the control: it works) and in a sandbox that
grants RO read-only and W writable: the same calls on W work, on RO they
fail and RO is left untouched.
"""
from __future__ import annotations

import os
import stat

import pytest

from escape_lib import IS_ROOT, confined, unconfined
from sandlock import Sandbox
from sandlock._kernel.syscalls import table

ATTRS = r'''
import stat, struct
ro, w = ARGS["ro"], ARGS["w"]
nr = ARGS["nr"]
AT_FDCWD, AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW = -100, 0x1000, 0x100
res = {}
for side, d in (("ro", ro), ("w", w)):
    f = os.path.join(d, "f")
    res[side + "_chmod"] = os_e(os.chmod, f, 0o777)
    res[side + "_chmod_rel"] = os_e(os.chmod, "f", 0o777, dir_fd=os.open(d, os.O_PATH))
    res[side + "_utime"] = os_e(os.utime, f, (1000000, 1000000))
    res[side + "_utime_now"] = os_e(os.utime, f)
    res[side + "_xattr"] = os_e(os.setxattr, f, b"user.sl", b"1")
    # fd-based: a read-only fd is enough for the kernel
    fd = os.open(f, os.O_RDONLY)
    res[side + "_fchmod"] = os_e(os.fchmod, fd, 0o770)
    res[side + "_futimens"] = os_e(os.utime, fd, (2000000, 2000000))
    res[side + "_fsetxattr"] = os_e(os.setxattr, fd, b"user.sl2", b"2")
    # the same fd re-named through /proc/self/fd (a magic link)
    res[side + "_chmod_procfd"] = os_e(os.chmod, "/proc/self/fd/%d" % fd, 0o707)
    res[side + "_chmod_procfd2"] = os_e(os.chmod, "/proc/./self//fd/%d" % fd, 0o707)
    # an O_PATH fd and AT_EMPTY_PATH
    pfd = os.open(f, os.O_PATH)
    res[side + "_fchmodat2_empty"] = sc_e(nr["fchmodat2"], pfd, b"", 0o706, AT_EMPTY_PATH)
    res[side + "_fchownat_empty"] = sc_e(nr["fchownat"], pfd, b"", -1, -1, AT_EMPTY_PATH)
    res[side + "_utimensat_empty"] = sc_e(nr["utimensat"], pfd, b"", None, AT_EMPTY_PATH)
    # the directory itself, by a symlink in the writable dir
    link = os.path.join(w, "to_" + side)
    if not os.path.lexists(link):
        os.symlink(f, link)
    res[side + "_chmod_via_link"] = os_e(os.chmod, link, 0o701)
    os.close(fd); os.close(pfd)
res["w_setuid"] = os_e(os.chmod, os.path.join(w, "f"), 0o4755)
res["w_setgid_file"] = os_e(os.chmod, os.path.join(w, "f"), 0o2755)
sub = os.path.join(w, "sub"); os.mkdir(sub)
res["w_setgid_dir"] = os_e(os.chmod, sub, 0o2775)
res["w_grant_root"] = os_e(os.chmod, w, 0o700)
def mk(path, mode):
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, mode))
res["w_create_setuid"] = os_e(mk, os.path.join(w, "suid"), 0o4755)
res["w_create_plain"] = os_e(mk, os.path.join(w, "plain"), 0o755)
res["w_mknod_setuid"] = os_e(os.mknod, os.path.join(w, "suid2"), 0o104755)
emit(**res)
'''

SIDES = ["chmod", "chmod_rel", "utime", "utime_now", "xattr", "fchmod", "futimens", "fsetxattr",
         "chmod_procfd", "chmod_procfd2", "fchmodat2_empty", "fchownat_empty", "utimensat_empty",
         "chmod_via_link"]


def _layout(tmp_root: str) -> dict:
    ro, w = os.path.join(tmp_root, "ro"), os.path.join(tmp_root, "w")
    for d in (ro, w):
        os.mkdir(d)
        os.chmod(d, 0o777)
        with open(os.path.join(d, "f"), "w") as f:
            f.write("data")
        os.chmod(os.path.join(d, "f"), 0o666)
    return {"ro": ro, "w": w}


def _nrs() -> dict:
    t = table()
    return {n: t.number(n) for n in ("fchmodat2", "fchownat", "utimensat")}


def _xattrs_supported(path: str) -> bool:
    try:
        os.setxattr(path, b"user.probe", b"1")
        os.removexattr(path, b"user.probe")
        return True
    except OSError:
        return False


def test_attribute_changes_follow_the_policy(wdir, base):
    os.mkdir(os.path.join(wdir, "ctl"))
    ctl = _layout(os.path.join(wdir, "ctl"))
    xattrs = _xattrs_supported(os.path.join(ctl["w"], "f"))
    c = unconfined(ATTRS, {**ctl, "nr": _nrs()})
    for side in ("ro", "w"):
        for name in SIDES:
            if "xattr" in name and not xattrs:
                continue
            assert c[f"{side}_{name}"] == "OK", (side, name, c)
    if IS_ROOT:
        assert c["w_setuid"] == c["w_create_setuid"] == "OK"

    os.mkdir(os.path.join(wdir, "sb"))
    lay = _layout(os.path.join(wdir, "sb"))
    ro_file = os.path.join(lay["ro"], "f")
    before = os.lstat(ro_file)
    sb = Sandbox(fs_readable=[*base, "/proc", lay["ro"]], fs_writable=[lay["w"]])
    v, r = confined(sb, ATTRS, {**lay, "nr": _nrs()})
    for name in SIDES:
        if "xattr" in name and not xattrs:
            continue
        assert v[f"w_{name}"] == "OK", (name, v)
        assert v[f"ro_{name}"] in ("EACCES", "EPERM"), (name, v)
    after = os.lstat(ro_file)
    assert (after.st_mode, after.st_mtime_ns, after.st_uid) == \
        (before.st_mode, before.st_mtime_ns, before.st_uid)
    if xattrs:
        assert os.listxattr(ro_file) == []
    # set-ID programs are never planted; a setgid directory is fine
    assert v["w_setuid"] == v["w_setgid_file"] == "EPERM"
    assert v["w_create_setuid"] == v["w_mknod_setuid"] == "EPERM"
    assert v["w_create_plain"] == "OK" and v["w_setgid_dir"] == "OK"
    for name in ("f", "suid", "suid2", "plain"):
        path = os.path.join(lay["w"], name)
        if os.path.exists(path):
            assert not os.lstat(path).st_mode & (stat.S_ISUID | stat.S_ISGID), name
    # the granted directory itself keeps its mode
    assert v["w_grant_root"] == "EACCES"
    assert stat.S_IMODE(os.lstat(lay["w"]).st_mode) == 0o777


@pytest.mark.skipif(not IS_ROOT, reason="chown to another user needs root outside the sandbox")
def test_chown_of_a_readonly_file_as_root(wdir, base):
    code = r'''
emit(ro=os_e(os.chown, ARGS["ro"] + "/f", 65534, 65534),
     w=os_e(os.chown, ARGS["w"] + "/f", 0, 0))
'''
    lay = _layout(wdir)
    assert unconfined(code, lay) == {"ro": "OK", "w": "OK"}
    lay2_root = os.path.join(wdir, "2")
    os.mkdir(lay2_root)
    lay = _layout(lay2_root)
    sb = Sandbox(fs_readable=[*base, lay["ro"]], fs_writable=[lay["w"]])
    v, _ = confined(sb, code, lay)
    # RO: refused by the policy; W: the sandbox holds no capability, so
    # giving the file away is the kernel's EPERM, and chown to itself works.
    assert v["ro"] == "EACCES"
    assert v["w"] == "OK"
    assert os.lstat(os.path.join(lay["ro"], "f")).st_uid == 0


def test_no_supervisor_still_refuses_set_id_modes(wdir, base):
    code = r'''
f = ARGS["w"] + "/f"
emit(setuid=os_e(os.chmod, f, 0o4755), plain=os_e(os.chmod, f, 0o700))
'''
    lay = _layout(wdir)
    sb = Sandbox(fs_readable=list(base), fs_writable=[lay["w"]], no_supervisor=True)
    v, _ = confined(sb, code, lay)
    assert v == {"setuid": "EPERM", "plain": "OK"}
