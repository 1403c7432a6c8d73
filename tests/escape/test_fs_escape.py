"""Filesystem escapes: reaching a file in fs_denied, or writing outside
fs_writable, by other names and other syscalls.

Policy (see escape_lib.Layout): the readable base, /proc, D readable (mode
"ro") or writable (mode "rw"), W writable, RO readable, and D/secret in
fs_denied. D/secret holds MARKER; the control reads it unconfined.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from escape_lib import MARKER, PUBLIC, confined, unconfined
from sandlock._kernel.syscalls import table

SECRET = "READ:" + MARKER
PUB = "READ:" + PUBLIC
MODES = ["ro", "rw"]

# Denials through /proc: Landlock says EACCES (or EPERM for the ptrace-style
# check of another process's entries); a supervisor that serves /proc itself
# may instead refuse to follow a magic link (ELOOP) or hide a process that
# is not the sandbox's (ENOENT). Any of them, never the secret.
PROC_DENIED = ("EACCES", "EPERM", "ELOOP", "ENOENT")


# 1. symlinks -------------------------------------------------------------------

SYMLINK = '''
t = ARGS["target"]
res = {}
abs_link, rel_link = os.path.join(t, "evil_abs"), os.path.join(t, "evil_rel")
res["mk_abs"] = os_e(os.symlink, ARGS["secret"], abs_link)
res["mk_rel"] = os_e(os.symlink, os.path.relpath(ARGS["secret"], t), rel_link)
res["via_abs"] = rd(abs_link)
res["via_rel"] = rd(rel_link)
res["via_pre"] = rd(ARGS["link_pre"])
res["direct"] = rd(ARGS["secret"])
# the allowed direction: a symlink to a readable file works
pub_link = os.path.join(t, "pub_link")
os.symlink(ARGS["pub"], pub_link)
res["via_pub_link"] = rd(pub_link)
emit(**res)
'''


@pytest.mark.parametrize("mode", MODES)
def test_symlink_to_denied_file(make_layout, base, mode):
    ctl = make_layout(mode)
    c = unconfined(SYMLINK, ctl.args())
    assert c == dict(mk_abs="OK", mk_rel="OK", via_abs=SECRET, via_rel=SECRET, via_pre=SECRET,
                     direct=SECRET, via_pub_link=PUB)

    lay = make_layout(mode)
    v, _ = confined(lay.sandbox(base), SYMLINK, lay.args())
    assert v == dict(mk_abs="OK", mk_rel="OK", via_abs="EACCES", via_rel="EACCES",
                     via_pre="EACCES", direct="EACCES", via_pub_link=PUB)


# 2. hard links -------------------------------------------------------------------

HARDLINK = '''
t = ARGS["target"]
res = {}
hl = os.path.join(t, "hl")
res["link"] = os_e(os.link, ARGS["secret"], hl)
res["read_link"] = rd(hl)
# linkat(AT_EMPTY_PATH) of an O_PATH fd (opening O_PATH is not an access)
fd = os.open(ARGS["secret"], os.O_PATH)
hl2 = os.path.join(t, "hl2")
AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000
ctypes.set_errno(0)
res["link_opath"] = ename(ctypes.get_errno()) if libc.linkat(fd, b"", AT_FDCWD, hl2.encode(), AT_EMPTY_PATH) else "OK"
res["read_link_opath"] = rd(hl2)
res["direct"] = rd(ARGS["secret"])
emit(**res)
'''


@pytest.mark.parametrize("mode", MODES)
def test_hardlink_to_denied_file(make_layout, base, mode):
    ctl = make_layout(mode)
    c = unconfined(HARDLINK, ctl.args())
    assert c == dict(link="OK", read_link=SECRET, link_opath="OK", read_link_opath=SECRET,
                     direct=SECRET)

    lay = make_layout(mode)
    v, _ = confined(lay.sandbox(base), HARDLINK, lay.args())
    assert v["link"] in ("EXDEV", "EACCES"), v
    assert v["link_opath"] in ("EXDEV", "EACCES"), v
    assert v["read_link"] == v["read_link_opath"] == "ENOENT", v
    assert v["direct"] == "EACCES", v
    assert not os.path.lexists(os.path.join(lay.target, "hl"))
    assert not os.path.lexists(os.path.join(lay.target, "hl2"))


# 3. renames --------------------------------------------------------------------

RENAME = '''
op, t, w = ARGS["op"], ARGS["target"], ARGS["w"]
res = {}
if op == "file":
    dst = os.path.join(t, "moved")
    res["op"] = os_e(os.rename, ARGS["secret"], dst)
    res["read"] = rd(dst)
elif op == "dir":
    dst = os.path.join(w, "dmoved")
    res["op"] = os_e(os.rename, ARGS["d"], dst)
    res["read"] = rd(os.path.join(dst, "secret"))
elif op == "exchange":
    decoy = os.path.join(t, "decoy")
    with open(decoy, "w") as f:
        f.write("decoy")
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    res["op"] = sc_e(ARGS["nr_renameat2"], AT_FDCWD, ARGS["secret"].encode(), AT_FDCWD,
                     decoy.encode(), RENAME_EXCHANGE)
    res["read"] = rd(decoy)
emit(**res)
'''


@pytest.mark.parametrize("op", ["file", "dir", "exchange"])
@pytest.mark.parametrize("mode", MODES)
def test_rename_denied_file_or_its_dir(make_layout, base, mode, op):
    extra = dict(op=op, nr_renameat2=table().number("renameat2"))
    ctl = make_layout(mode)
    c = unconfined(RENAME, ctl.args(**extra))
    assert c == dict(op="OK", read=SECRET)

    lay = make_layout(mode)
    v, _ = confined(lay.sandbox(base), RENAME, lay.args(**extra))
    assert v["op"] in ("EACCES", "EXDEV"), v
    assert not v["read"].startswith("READ:" + MARKER), v
    with open(lay.secret) as f:  # nothing moved
        assert f.read() == MARKER


# 4. dot-dot and relative opens ------------------------------------------------------

DOTDOT = '''
res = {}
res["dotdot"] = rd(os.path.join(ARGS["sub"], "..", "secret"))
res["dotdot_pub"] = rd(os.path.join(ARGS["sub"], "..", "pub.txt"))
res["double"] = rd(os.path.join(ARGS["sub"], "..", "sub", "..", "secret"))
os.chdir(ARGS["sub"])
res["cwd_rel"] = rd("../secret")
dfd = os.open(ARGS["d"], os.O_PATH | os.O_DIRECTORY)
res["openat_opath_dir"] = rd(f"/proc/self/fd/{dfd}/secret")
try:
    fd = os.open("secret", os.O_RDONLY, dir_fd=dfd)
    res["openat_rel"] = "READ:" + os.read(fd, 100).decode()
except OSError as e:
    res["openat_rel"] = ename(e.errno)
emit(**res)
'''


def test_dotdot_and_relative_paths(make_layout, base):
    ctl = make_layout()
    c = unconfined(DOTDOT, ctl.args())
    assert c == dict(dotdot=SECRET, dotdot_pub=PUB, double=SECRET, cwd_rel=SECRET,
                     openat_opath_dir=SECRET, openat_rel=SECRET)

    lay = make_layout()
    v, _ = confined(lay.sandbox(base), DOTDOT, lay.args())
    assert v["openat_opath_dir"] in PROC_DENIED, v
    del v["openat_opath_dir"]
    assert v == dict(dotdot="EACCES", dotdot_pub=PUB, double="EACCES", cwd_rel="EACCES",
                     openat_rel="EACCES")


# 5. /proc/self/root ------------------------------------------------------------------

PROC_ROOT = '''
emit(secret=rd("/proc/self/root" + ARGS["secret"]),
     pub=rd("/proc/self/root" + ARGS["pub"]),
     thread=rd(f"/proc/thread-self/root" + ARGS["secret"]),
     pid=rd(f"/proc/{os.getpid()}/root" + ARGS["secret"]))
'''


def test_proc_self_root(make_layout, base):
    ctl = make_layout()
    c = unconfined(PROC_ROOT, ctl.args())
    assert c == dict(secret=SECRET, pub=PUB, thread=SECRET, pid=SECRET)

    lay = make_layout()
    v, _ = confined(lay.sandbox(base), PROC_ROOT, lay.args())
    for k in ("secret", "thread", "pid"):
        assert v[k] in PROC_DENIED, v
    # the readable file through the same magic link: readable, or refused
    # as a magic link, never a wrong errno
    assert v["pub"] in (PUB, "ELOOP"), v


# 6. /proc/<pid>/fd of an outside process, O_PATH reopen -------------------------------

PROC_FD = '''
h = ARGS["helper"]
res = {}
res["helper_fd"] = rd(f"/proc/{h}/fd/0")
res["helper_root"] = rd(f"/proc/{h}/root" + ARGS["secret"])
fd = os.open(ARGS["secret"], os.O_PATH)           # O_PATH is not an access
res["opath_reopen"] = rd(f"/proc/self/fd/{fd}")
pfd = os.open(ARGS["pub"], os.O_PATH)
res["opath_reopen_pub"] = rd(f"/proc/self/fd/{pfd}")
emit(**res)
'''


def test_proc_pid_fd_of_outside_process(make_layout, base):
    lay = make_layout()
    with open(lay.secret, "rb") as f:
        helper = subprocess.Popen(["sleep", "60"], stdin=f)
    try:
        args = lay.args(helper=helper.pid)
        c = unconfined(PROC_FD, args)
        assert c == dict(helper_fd=SECRET, helper_root=SECRET, opath_reopen=SECRET,
                         opath_reopen_pub=PUB)

        v, _ = confined(lay.sandbox(base), PROC_FD, args)
        assert v["helper_fd"] in PROC_DENIED, v
        assert v["helper_root"] in PROC_DENIED, v
        assert v["opath_reopen"] in PROC_DENIED, v
        assert v["opath_reopen_pub"] in (PUB, "ELOOP"), v
    finally:
        helper.kill()
        helper.wait()


# /proc paths that leave /proc, and an fd of /proc used as a base ----------------------------

PROC_WALK = '''
h, secret = ARGS["helper"], ARGS["secret"]
res = {}
res["self_dotdot"] = rd("/proc/self/../.." + secret)
res["self_task_dotdot"] = rd("/proc/self/task/../../.." + secret)
res["self_fd_dotdot"] = rd("/proc/self/fd/../../.." + secret)
res["double_slash"] = rd("//proc/self/root" + secret)
try:
    pfd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
except OSError as e:
    res["proc_fd"] = ename(e.errno)
else:
    res["proc_fd"] = "OK"
    def rel(path):
        try:
            fd = os.open(path, os.O_RDONLY, dir_fd=pfd)
        except OSError as e:
            return ename(e.errno)
        return "READ:" + os.read(fd, 100).decode(errors="replace")
    res["at_proc_dotdot"] = rel(".." + secret)
    res["at_proc_helper_fd"] = rel(f"{h}/fd/0")
    res["at_proc_self_root"] = rel("self/root" + secret)
    res["at_proc_1_root"] = rel("1/root" + secret)
try:
    os.chdir("/proc/self")
    res["cwd_proc_self"] = rd("../.." + secret)
    res["cwd_proc_self_root"] = rd("root" + secret)
except OSError as e:
    res["cwd_proc_self"] = res["cwd_proc_self_root"] = "chdir:" + ename(e.errno)
emit(**res)
'''


def test_proc_paths_and_proc_dirfd(make_layout, base):
    """Paths under /proc that walk back out of it, and a directory fd of
    /proc (perhaps opened by a supervisor on the sandbox's behalf, with its
    rights) used as the base of relative opens: never the secret."""
    lay = make_layout()
    with open(lay.secret, "rb") as f:
        helper = subprocess.Popen(["sleep", "60"], stdin=f)
    try:
        args = lay.args(helper=helper.pid)
        c = unconfined(PROC_WALK, args)
        assert c == dict(self_dotdot=SECRET, self_task_dotdot=SECRET, self_fd_dotdot=SECRET,
                         double_slash=SECRET, proc_fd="OK", at_proc_dotdot=SECRET,
                         at_proc_helper_fd=SECRET, at_proc_self_root=SECRET,
                         at_proc_1_root=c["at_proc_1_root"], cwd_proc_self=SECRET,
                         cwd_proc_self_root=SECRET)

        v, _ = confined(lay.sandbox(base), PROC_WALK, args)
        leaked = {k: x for k, x in v.items() if MARKER in x}
        assert leaked == {}, v
        for k, x in v.items():
            if k != "proc_fd":
                assert x in PROC_DENIED or x.startswith("chdir:"), (k, v)
    finally:
        helper.kill()
        helper.wait()


# 7. openat2 ------------------------------------------------------------------------------

RESOLVE = {"none": 0, "no_xdev": 0x01, "no_magiclinks": 0x02, "no_symlinks": 0x04,
           "beneath": 0x08, "in_root": 0x10}

OPENAT2 = '''
class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

def openat2(dirfd, path, resolve):
    how = OpenHow(os.O_RDONLY | os.O_CLOEXEC, 0, resolve)
    fd, err = sc(ARGS["nr"], dirfd, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
    if err:
        return ename(err)
    data = os.read(fd, 100).decode()
    os.close(fd)
    return "READ:" + data

AT_FDCWD = -100
dfd = os.open(ARGS["d"], os.O_PATH | os.O_DIRECTORY)
res = {}
for name, flag in ARGS["resolve"].items():
    if flag in (0x08, 0x10):   # BENEATH / IN_ROOT: relative to the directory
        res[name] = openat2(dfd, "secret", flag)
        res[name + "_pub"] = openat2(dfd, "pub.txt", flag)
    else:
        res[name] = openat2(AT_FDCWD, ARGS["secret"], flag)
        res[name + "_pub"] = openat2(AT_FDCWD, ARGS["pub"], flag)
emit(**res)
'''


def test_openat2(make_layout, base):
    try:
        nr = table().number("openat2")
    except KeyError:
        pytest.skip("no openat2 on this architecture")
    ctl = make_layout()
    c = unconfined(OPENAT2, ctl.args(nr=nr, resolve=RESOLVE))
    assert c == {k: v for name in RESOLVE for k, v in ((name, SECRET), (name + "_pub", PUB))}

    # Refused outright under the sandbox (its mode is out of BPF's reach, see
    # plan._set_id_blocks): ENOSYS, which makes callers fall back to openat.
    lay = make_layout()
    v, _ = confined(lay.sandbox(base), OPENAT2, lay.args(nr=nr, resolve=RESOLVE))
    assert v == {k: "ENOSYS" for name in RESOLVE for k in (name, name + "_pub")}


# 8. file handles ------------------------------------------------------------------------

HANDLES = '''
class FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]

AT_FDCWD = -100
res = {}
fh, mnt = FileHandle(128), ctypes.c_int()
res["name_to_handle"] = sc_e(ARGS["nr_n2h"], AT_FDCWD, ARGS["pub"].encode(), ctypes.byref(fh),
                             ctypes.byref(mnt), 0)
# The secret's handle, obtained outside and passed in (handles are guessable).
h = FileHandle(ARGS["hbytes"], ARGS["htype"])
raw = bytes.fromhex(ARGS["handle"])
ctypes.memmove(h.f_handle, raw, len(raw))
mount_fd = os.open(ARGS["pub"], os.O_RDONLY)  # any fd on the same mount
fd, err = sc(ARGS["nr_obh"], mount_fd, ctypes.byref(h), os.O_RDONLY)
res["open_by_handle"] = "READ:" + os.read(fd, 100).decode() if not err else ename(err)
# Probe: a bad mount fd fails with EBADF before any privilege check.
res["open_by_handle_badfd"] = sc_e(ARGS["nr_obh"], -1, ctypes.byref(h), os.O_RDONLY)
emit(**res)
'''


def _secret_handle(path: str, nr_n2h: int) -> dict:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    class FileHandle(ctypes.Structure):
        _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                    ("f_handle", ctypes.c_ubyte * 128)]

    fh, mnt = FileHandle(128), ctypes.c_int()
    r = libc.syscall(ctypes.c_long(nr_n2h), ctypes.c_long(-100), path.encode(),
                     ctypes.byref(fh), ctypes.byref(mnt), ctypes.c_long(0))
    if r != 0:
        pytest.skip(f"name_to_handle_at unsupported here: {os.strerror(ctypes.get_errno())}")
    return dict(hbytes=fh.handle_bytes, htype=fh.handle_type,
                handle=bytes(fh.f_handle[:fh.handle_bytes]).hex())


def test_file_handle_syscalls(make_layout, base):
    t = table()
    nrs = dict(nr_n2h=t.number("name_to_handle_at"), nr_obh=t.number("open_by_handle_at"))
    lay = make_layout()
    args = lay.args(**nrs, **_secret_handle(lay.secret, nrs["nr_n2h"]))

    c = unconfined(HANDLES, args)
    assert c["name_to_handle"] == "OK", c
    assert c["open_by_handle_badfd"] == "EBADF", c
    # open_by_handle_at needs CAP_DAC_READ_SEARCH unconfined
    assert c["open_by_handle"] == (SECRET if os.geteuid() == 0 else "EPERM"), c

    v, _ = confined(lay.sandbox(base), HANDLES, args)
    assert v == dict(name_to_handle="EPERM", open_by_handle="EPERM",
                     open_by_handle_badfd="EPERM")


# 9. writing outside fs_writable ------------------------------------------------------------

WRITES = '''
res = {}
def create(path):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:
        return ename(e.errno)
    os.write(fd, b"x")
    os.close(fd)
    return "OK"
res["create_ro"] = create(os.path.join(ARGS["ro"], "new.txt"))
res["mkdir_ro"] = os_e(os.mkdir, os.path.join(ARGS["ro"], "newdir"))
res["write_ro_file"] = os_e(os.open, os.path.join(ARGS["ro"], "file.txt"), os.O_WRONLY)
res["truncate_ro_file"] = os_e(os.truncate, os.path.join(ARGS["ro"], "file.txt"), 0)
res["unlink_ro_file"] = os_e(os.unlink, os.path.join(ARGS["ro"], "file.txt"))
res["create_d"] = create(os.path.join(ARGS["d"], "new.txt"))
res["write_pub"] = os_e(os.open, ARGS["pub"], os.O_WRONLY | os.O_APPEND)
res["create_tmp"] = create(ARGS["tmpfile"])
res["create_w"] = create(os.path.join(ARGS["w"], "new.txt"))
res["mkdir_w"] = os_e(os.mkdir, os.path.join(ARGS["w"], "newdir"))
emit(**res)
'''


def test_write_outside_writable(make_layout, base, wdir):
    ctl = make_layout()
    tmp_ctl = os.path.join("/tmp", f"sl-escape-w-{os.getpid()}-c")
    tmp_sb = os.path.join("/tmp", f"sl-escape-w-{os.getpid()}-s")
    try:
        c = unconfined(WRITES, ctl.args(tmpfile=tmp_ctl))
        assert set(c.values()) == {"OK"}, c

        lay = make_layout()
        v, _ = confined(lay.sandbox(base), WRITES, lay.args(tmpfile=tmp_sb))
        assert v == dict(create_ro="EACCES", mkdir_ro="EACCES", write_ro_file="EACCES",
                         truncate_ro_file="EACCES", unlink_ro_file="EACCES", create_d="EACCES",
                         write_pub="EACCES", create_tmp="EACCES", create_w="OK", mkdir_w="OK")
        assert not os.path.exists(tmp_sb)
        with open(os.path.join(lay.ro, "file.txt")) as f:
            assert f.read() == PUBLIC
    finally:
        for p in (tmp_ctl, tmp_sb):
            if os.path.exists(p):
                os.unlink(p)
