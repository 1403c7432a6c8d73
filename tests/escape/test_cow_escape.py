"""Escapes from the copy-on-write workdir (REFERENCE-NOTES §A.3, traps A1,
A2, A6, A7, A11, A14): each attack runs unconfined in a copy of the layout
(the control: it changes the real files) and then in a sandbox whose
workdir is W, once with on_exit/on_error ABORT and once as a dry run. The
workdir, the directories around it and /etc must be left exactly as they
were after both.

Layout (root/):
    w/            the workdir: f.txt, sub/g.txt, link_out -> ../out/o.txt,
                  link_outdir -> ../out, link_etc -> /etc
    out/          outside, readable only: o.txt
    ow/           outside, writable: x.txt
    store/        the branch storage base (fs_storage)
"""
from __future__ import annotations

import os
import stat

import pytest

from escape_lib import IS_ROOT, _rmtree, _world_dir, parse_verdict, py_cmd, readable_base, unconfined
from sandlock import Sandbox
from sandlock._kernel.syscalls import table

ORIG = "original-f-3e1"
OUTSIDE = "outside-o-77c"


def _make(root: str) -> dict:
    w, out, ow, store = (os.path.join(root, n) for n in ("w", "out", "ow", "store"))
    for d in (w, out, ow, os.path.join(w, "sub")):
        os.mkdir(d)
        os.chmod(d, 0o777 if d == ow else 0o755)
    for path, text in ((os.path.join(w, "f.txt"), ORIG), (os.path.join(w, "sub", "g.txt"), "g"),
                       (os.path.join(out, "o.txt"), OUTSIDE), (os.path.join(ow, "x.txt"), "x")):
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o666 if path.startswith(ow) else 0o644)
    os.symlink("../out/o.txt", os.path.join(w, "link_out"))
    os.symlink("../out", os.path.join(w, "link_outdir"))
    os.symlink("/etc", os.path.join(w, "link_etc"))
    os.mkdir(store, 0o700)
    return dict(root=root, w=w, out=out, ow=ow, store=store, orig=ORIG, outside=OUTSIDE)


def state(a: dict) -> dict:
    """Everything an escape could change: entries under root (type, mode,
    size, mtime, content, link target, inode), minus the branch storage."""
    res = {}
    for d, dirs, files in os.walk(a["root"]):
        if d.startswith(a["store"]):
            continue
        for n in [""] + dirs + files:
            p = os.path.join(d, n) if n else d
            if p.startswith(a["store"]):
                continue
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    val: object = f.read()
            elif stat.S_ISLNK(st.st_mode):
                val = os.readlink(p)
            else:
                val = None
            res[p] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, st.st_ino, st.st_nlink, val,
                      sorted(os.listxattr(p, follow_symlinks=False)) if not stat.S_ISLNK(st.st_mode) else [])
    return res


@pytest.fixture
def lay():
    """(control layout, sandboxed layout)."""
    d = _world_dir("sl-cow-esc-")
    roots = [os.path.join(d, n) for n in ("ctl", "box")]
    for r in roots:
        os.mkdir(r)
        os.chmod(r, 0o755)
    yield tuple(_make(r) for r in roots)
    _rmtree(d)


def sandbox(a: dict, **kw) -> Sandbox:
    return Sandbox(fs_readable=readable_base() + ["/proc", a["out"], "/dev/zero"],
                   fs_writable=[a["ow"], "/dev/null"], workdir=a["w"], cwd=a["w"],
                   fs_storage=a["store"], on_exit="abort", on_error="abort", **kw)


def attack(lay, code: str, *, control: bool = True, **extra) -> tuple[dict, dict, dict]:
    """(control verdict, sandboxed verdict, dry-run verdict), checking the
    sandboxed layout is untouched after each run and /etc after all."""
    ctl, box = lay
    c = unconfined(code, dict(ctl, **extra), cwd=ctl["w"]) if control else {}
    etc_before = sorted(os.listdir("/etc"))
    before = state(box)
    verdicts = []
    for dry in (False, True):
        sb = sandbox(box)
        cmd = py_cmd(code, dict(box, **extra))
        r = sb.dry_run(cmd, timeout=30) if dry else sb.run(cmd, timeout=30)
        v = parse_verdict(r.stdout)
        assert v is not None, (dry, r.exit_code, r.reason, r.error, r.stdout[-2000:], r.stderr[-2000:])
        assert state(box) == before, f"{'dry run' if dry else 'abort'} left the tree changed: {v}"
        assert not os.listdir(box["store"]), "the branch was not removed"
        verdicts.append(v)
    assert sorted(os.listdir("/etc")) == etc_before
    return c, verdicts[0], verdicts[1]


def test_symlink_out_of_the_workdir(lay):
    """A1: symlinks (existing and made in the run) to a file or directory
    outside, and to /etc, are never written through."""
    code = r'''
res = {}
res["via_link_out"] = os_e(lambda: open("link_out", "w").write("pwned"))
res["via_link_outdir"] = os_e(lambda: open("link_outdir/new.txt", "w").write("pwned"))
res["etc"] = os_e(lambda: open("link_etc/sl-cow-pwn-%d" % os.getpid(), "w").write("x")) if ARGS.get("etc") else "skip"
os_e(os.symlink, os.path.join(ARGS["out"], "o.txt"), "mine")
os_e(os.symlink, ARGS["out"], "mined")
res["via_new_link"] = os_e(lambda: open("mine", "a").write("pwned"))
res["via_new_dirlink"] = os_e(lambda: open("mined/n2.txt", "w").write("pwned"))
res["trunc_link"] = os_e(os.truncate, "link_out", 0)
res["chmod_link"] = os_e(os.chmod, "link_out", 0o777)
res["utime_link"] = os_e(os.utime, "link_out", (1, 1))
res["mkdir_via"] = os_e(os.mkdir, "link_outdir/dd")
res["unlink_via"] = os_e(os.unlink, "link_outdir/o.txt")
res["rename_via"] = os_e(os.rename, "f.txt", "link_outdir/f.txt")
res["read_out"] = rd("link_out")
emit(**res)
'''
    c, v, d = attack(lay, code)
    assert c["via_link_out"] == "OK" and c["via_new_dirlink"] == "OK"
    for verdict in (v, d):
        for k in ("via_link_out", "via_link_outdir", "via_new_link", "via_new_dirlink", "trunc_link",
                  "chmod_link", "utime_link", "mkdir_via", "unlink_via", "rename_via"):
            assert verdict[k] != "OK", (k, verdict)
        assert verdict["read_out"] == "READ:" + OUTSIDE
    # and /etc, in the sandbox only (the control would write it as root)
    _, v, d = attack(lay, code, control=False, etc=True)
    assert v["etc"] != "OK" and d["etc"] != "OK"


def test_dotdot_paths(lay):
    code = r'''
res = {}
res["up_write"] = os_e(lambda: open("../out/o.txt", "w").write("pwned"))
res["deep_up_write"] = os_e(lambda: open("sub/../../out/new.txt", "w").write("pwned"))
res["up_ow"] = rd("sub/../../ow/x.txt")
res["up_mkdir"] = os_e(os.mkdir, "../out/dd")
res["rename_up"] = os_e(os.rename, "f.txt", "../out/f.txt")
res["rename_in"] = os_e(os.rename, "../ow/x.txt", "sub/x.txt")
res["inside"] = os_e(lambda: open("sub/../f.txt", "w").write("branch"))
res["abs_dotdot"] = os_e(lambda: open(ARGS["w"] + "/sub/../f.txt", "a").write("branch"))
res["read_back"] = rd("f.txt")
res["dir_dotdot"] = os_e(lambda: os.close(os.open("sub/..", os.O_WRONLY)))
emit(**res)
'''
    c, v, d = attack(lay, code)
    assert c["up_write"] == "OK"
    for verdict in (v, d):
        for k in ("up_write", "deep_up_write", "up_mkdir", "rename_up", "rename_in"):
            assert verdict[k] != "OK", (k, verdict)
        assert verdict["up_ow"] == "READ:x"   # outside, granted: the real file
        assert verdict["inside"] == verdict["abs_dotdot"] == "OK"
        assert verdict["read_back"] == "READ:branchbranch"
        assert verdict["dir_dotdot"] == "EISDIR"


def test_openat2_for_write(lay):
    try:
        nr = table().number("openat2")
    except KeyError:
        pytest.skip("no openat2 on this architecture")
    code = r'''
class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]
res = {}
for name, flags in (("wronly", os.O_WRONLY | os.O_TRUNC), ("creat", os.O_WRONLY | os.O_CREAT),
                    ("rdonly", os.O_RDONLY)):
    how = OpenHow(flags, 0o644 if flags & os.O_CREAT else 0, 0)
    fd, err = sc(ARGS["nr"], -100, (b"f.txt" if name != "creat" else b"new.txt"),
                 ctypes.byref(how), ctypes.sizeof(how))
    if not err and name == "wronly":
        os.write(fd, b"pwned")
    res[name] = ename(err)
emit(**res)
'''
    c, v, d = attack(lay, code, nr=nr)
    assert c == {"wronly": "OK", "creat": "OK", "rdonly": "OK"}
    assert v == d == {"wronly": "ENOSYS", "creat": "ENOSYS", "rdonly": "ENOSYS"}


def test_proc_self_fd_reopen(lay):
    """A lower file opened read-only, then re-opened for writing through
    /proc/self/fd/N: the write lands in the branch (or is refused), never
    in the workdir."""
    code = r'''
res = {}
fd = os.open("f.txt", os.O_RDONLY)
res["reopen_w"] = os_e(lambda: open("/proc/self/fd/%d" % fd, "w").write("pwned"))
res["reopen_thread"] = os_e(lambda: open("/proc/thread-self/fd/%d" % fd, "a").write("+t"))
res["reopen_pid"] = os_e(lambda: open("/proc/%d/fd/%d" % (os.getpid(), fd), "a").write("+p"))
res["trunc_proc"] = os_e(os.truncate, "/proc/self/fd/%d" % fd, 1)
dfd = os.open("sub", os.O_RDONLY | os.O_DIRECTORY)
res["via_dirfd_proc"] = os_e(lambda: open("/proc/self/fd/%d/g.txt" % dfd, "w").write("pwned"))
res["via_dirfd"] = os_e(lambda: os.close(os.open("g.txt", os.O_WRONLY | os.O_TRUNC, dir_fd=dfd)))
res["seen"] = rd("f.txt")
emit(**res)
'''
    c, v, d = attack(lay, code)
    assert c["reopen_w"] == "OK"
    # allowed, but in the branch: the tree is checked by attack()
    assert v == d


def test_attribute_calls_on_a_read_only_fd(lay):
    """A14: fchmod/fchown/futimens/fsetxattr on a read-only fd of a lower
    file, and chmod/chown/utimensat by AT_EMPTY_PATH on an O_PATH fd."""
    t = table()
    nr = {n: t.number(n) for n in ("fchmodat2", "fchownat", "utimensat")}
    code = r'''
res = {}
fd = os.open("f.txt", os.O_RDONLY)
res["fchmod"] = os_e(os.fchmod, fd, 0o777)
res["fchown"] = os_e(os.fchown, fd, os.getuid(), os.getgid())
res["fchown_other"] = os_e(os.fchown, fd, 12345, 12345)
res["futimens"] = os_e(os.utime, fd, (1, 1))
res["fsetxattr"] = os_e(os.setxattr, fd, b"user.sl", b"1")
dfd = os.open("sub", os.O_RDONLY | os.O_DIRECTORY)
res["fchmod_dir"] = os_e(os.fchmod, dfd, 0o700)
pfd = os.open("f.txt", os.O_PATH)
nr = ARGS["nr"]
res["fchmodat2_empty"] = sc_e(nr["fchmodat2"], pfd, b"", 0o707, 0x1000)
res["fchownat_empty"] = sc_e(nr["fchownat"], pfd, b"", os.getuid(), os.getgid(), 0x1000)
res["utimensat_empty"] = sc_e(nr["utimensat"], pfd, b"", None, 0x1000)
res["chmod_path"] = os_e(os.chmod, "f.txt", 0o600)
res["setxattr_path"] = os_e(os.setxattr, "f.txt", b"user.sl", b"2")
res["mode_seen"] = oct(os.stat("f.txt").st_mode & 0o7777)
emit(**res)
'''
    c, v, d = attack(lay, code, nr=nr)
    assert c["fchmod"] == "OK" and c["futimens"] == "OK"
    for verdict in (v, d):
        for k in ("fchmod", "fchown_other", "futimens", "fsetxattr", "fchmod_dir"):
            assert verdict[k] != "OK", (k, verdict)
        assert verdict["chmod_path"] == "OK"   # by path: in the branch
        assert verdict["mode_seen"] == "0o600"


def test_special_files(lay):
    """A6/A7: no device, FIFO or socket in the workdir (as root `mknod c 1 3`
    would be /dev/null's twin: a device the sandbox could then open)."""
    code = r'''
import socket
res = {}
res["mknod_chr"] = os_e(os.mknod, "null2", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
res["mknod_blk"] = os_e(os.mknod, "blk", 0o666 | stat.S_IFBLK, os.makedev(7, 0))
res["mkfifo"] = os_e(os.mkfifo, "fifo")
res["mknod_fifo"] = os_e(os.mknod, "fifo2", 0o666 | stat.S_IFIFO)
s = socket.socket(socket.AF_UNIX)
res["bind_sock"] = os_e(s.bind, "sock")
res["mknod_reg"] = os_e(os.mknod, "regular", 0o644 | stat.S_IFREG)
res["listing"] = sorted(os.listdir("."))
emit(**res)
'''
    import stat as _st  # noqa: F401  (the snippet imports its own)
    code = "import stat\n" + code
    c, v, d = attack(lay, code)
    assert c["mkfifo"] == "OK"
    if IS_ROOT:
        assert c["mknod_chr"] == "OK"
    for verdict in (v, d):
        for k in ("mknod_chr", "mknod_blk", "mkfifo", "mknod_fifo"):
            assert verdict[k] == "EPERM", (k, verdict)
        assert verdict["bind_sock"] != "OK"
        assert verdict["mknod_reg"] == "OK"
        assert "null2" not in verdict["listing"] and "fifo" not in verdict["listing"]


def test_hardlinks_across_the_edge(lay):
    code = r'''
res = {}
res["out_of_w"] = os_e(os.link, "f.txt", os.path.join(ARGS["ow"], "hl"))
res["into_w"] = os_e(os.link, os.path.join(ARGS["ow"], "x.txt"), "hl_in")
res["ro_into_w"] = os_e(os.link, os.path.join(ARGS["out"], "o.txt"), "hl_ro")
res["via_symlink"] = sc_e(ARGS["nr"], -100, b"link_out", -100, b"hl_sym", 0x400)  # AT_SYMLINK_FOLLOW
res["inside"] = os_e(os.link, "f.txt", "sub/hl")
res["write_inside"] = os_e(lambda: open("sub/hl", "a").write("+"))
res["f_now"] = rd("f.txt")
emit(**res)
'''
    c, v, d = attack(lay, code, nr=table().number("linkat"))
    assert c["out_of_w"] == "OK" and c["into_w"] == "OK" and c["via_symlink"] == "OK"
    for verdict in (v, d):
        for k in ("out_of_w", "into_w", "ro_into_w", "via_symlink"):
            assert verdict[k] != "OK", (k, verdict)
        assert verdict["inside"] == "OK"
        assert verdict["f_now"] == "READ:" + ORIG + "+"


def test_truncate_by_path(lay):
    code = r'''
res = {}
res["truncate"] = os_e(os.truncate, "f.txt", 2)
res["truncate_abs"] = os_e(os.truncate, os.path.join(ARGS["w"], "sub", "g.txt"), 0)
res["truncate_out"] = os_e(os.truncate, os.path.join(ARGS["out"], "o.txt"), 0)
res["seen"] = rd("f.txt")
emit(**res)
'''
    c, v, d = attack(lay, code)
    assert c["truncate"] == "OK"
    for verdict in (v, d):
        assert verdict["truncate"] == "OK" and verdict["seen"] == "READ:" + ORIG[:2]
        assert verdict["truncate_out"] != "OK"


def test_branch_storage_is_hidden(lay):
    """A11: the sandbox never reads a branch: not the storage base, not its
    own upper (whose path an injected fd would show), not by a link."""
    code = r'''
res = {}
store = ARGS["store"]
res["listdir_store"] = os_e(os.listdir, store)
fd = os.open("new.txt", os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"in the branch")
where = os.readlink("/proc/self/fd/%d" % fd)
res["fd_names_store"] = where.startswith(store)
res["open_where"] = rd(where) if where.startswith("/") else "no-path"
res["open_where_w"] = os_e(lambda: open(where, "a").write("x")) if where.startswith("/") else "no-path"
res["list_where_dir"] = os_e(os.listdir, os.path.dirname(where)) if where.startswith("/") else "no-path"
os.symlink(store, "to_store")
res["via_link"] = os_e(os.listdir, "to_store")
res["via_proc_root"] = os_e(os.listdir, "/proc/self/root" + store)
res["dotdot"] = os_e(os.listdir, "../store")
res["stat_branch"] = os_e(os.stat, os.path.dirname(os.path.dirname(where))) if where.startswith("/") else "no-path"
os.mkdir("nd"); os.chdir("nd")
res["cwd"] = os.getcwd()
res["proc_cwd"] = os.readlink("/proc/self/cwd")
emit(**res)
'''
    c, v, d = attack(lay, code)
    assert c["listdir_store"] == "OK"
    box = lay[1]
    for verdict in (v, d):
        for k in ("listdir_store", "via_link", "via_proc_root", "dotdot"):
            assert verdict[k] != "OK", (k, verdict)
        # readlink of an injected fd names the workdir path, never the storage
        assert not verdict["fd_names_store"], verdict
        if verdict["fd_names_store"]:
            assert verdict["open_where"] != "READ:in the branch"
            assert verdict["open_where_w"] != "OK" and verdict["list_where_dir"] != "OK"
            assert verdict["stat_branch"] != "OK"
        assert verdict["cwd"] == os.path.join(box["w"], "nd")
        assert verdict["proc_cwd"] == verdict["cwd"]


def test_proc_self_cwd_follows_a_virtual_cwd(lay):
    """readlink of /proc/self/cwd gives the cwd the supervisor holds for a
    directory only the branch has (the kernel's is the previous one)."""
    code = r'''
os.mkdir("nd"); os.chdir("nd")
emit(proc_cwd=os.readlink("/proc/self/cwd"), cwd=os.getcwd())
'''
    _, v, _ = attack(lay, code)
    assert v["proc_cwd"] == v["cwd"]


def test_grandchild_writes(lay):
    """Writes by a grandchild (sh -> sh -> python), including through the
    tricks above, stay in the branch."""
    code = r'''
import subprocess
inner = ("import os\n"
         "open('f.txt', 'w').write('gc')\n"
         "open('gc_new.txt', 'w').write('gc')\n"
         "fd = os.open('sub/g.txt', os.O_RDONLY)\n"
         "try:\n"
         "    open('/proc/self/fd/%d' % fd, 'w').write('gc')\n"
         "except OSError:\n"
         "    pass\n"
         "try:\n"
         "    os.fchmod(fd, 0o777)\n"
         "except OSError:\n"
         "    pass\n"
         "try:\n"
         "    open('link_out', 'w').write('gc')\n"
         "except OSError:\n"
         "    pass\n"
         "os.truncate('sub/g.txt', 0)\n")
outer = 'sh -c \'exec "$0" -I -S -c "$1"\' "$0" "$1"; cat f.txt gc_new.txt'
p = subprocess.run(["/bin/sh", "-c", outer, sys.executable, inner], capture_output=True)
emit(rc=p.returncode, out=p.stdout.decode(), err=p.stderr.decode()[-300:])
'''
    c, v, d = attack(lay, code)
    assert c["out"] == "gcgc"
    assert v["out"] == "gcgc" and d["out"] == "gcgc", (v, d)
