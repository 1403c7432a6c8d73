"""chroot escapes: an attack program in a dynamic root (the system python
with its libraries, see tests/_rootfs.py) tries to reach a host file
outside the root through `..`, absolute and relative symlinks, a symlink
swapped during the calls, /proc/self/root, /proc/self/cwd and
/proc/self/fd/N of a directory, a dirfd outside the tree, a hardlink out of
an :ro mount, and looks for host paths in readlink and getcwd. Each is
refused with the kernel's errno for a path that does not exist in the root
(or EACCES), and the host files stay untouched. The control run shows the
same links do reach the secret without the sandbox."""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _rootfs import python_root, python_scratch  # noqa: E402

from sandlock import Sandbox  # noqa: E402

SECRET = "HOST-SECRET"

ATTACK = r'''
import ctypes, errno, json, os, sys, threading
A = json.loads(sys.argv[1])
H = A["hostdir"]
out = {}
def name(e):
    return errno.errorcode.get(e, str(e))
def read(path, **kw):
    try:
        with open(path, **kw) as f:
            return "READ:" + f.read()
    except OSError as e:
        return name(e.errno)
def act(fn, *a, **kw):
    try:
        fn(*a, **kw)
        return "OK"
    except OSError as e:
        return name(e.errno)

out["dotdot"] = read("/../../../../../.." + H + "/secret")
os.chdir("/tmp")
out["dotdot_rel"] = read("../../../../../../.." + H + "/secret")
out["dotdot_create"] = act(lambda: open("/../../../.." + H + "/new", "w"))
out["abs_link"] = read("/data/abs")
out["rel_link"] = read("/data/rel")
out["dir_link"] = read("/data/dirlink/secret")
out["proc_root"] = read("/proc/self/root" + H + "/secret")
out["proc_root_link"] = os.readlink("/proc/self/root")
out["proc_cwd"] = read("/proc/self/cwd/../../../.." + H + "/secret")
fd = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)
out["proc_fd_dir"] = read("/proc/self/fd/%d/../../../.." % fd + H + "/secret")
out["openat_dotdot"] = act(lambda: os.open("../../../.." + H + "/secret", os.O_RDONLY, dir_fd=fd))
null = os.open("/dev/null", os.O_RDONLY)
out["openat_outside"] = act(lambda: os.open("secret", os.O_RDONLY, dir_fd=null))
out["made_link"] = act(os.symlink, H + "/secret", "/tmp/mylink")
out["through_made_link"] = read("/tmp/mylink")
out["made_link_write"] = act(lambda: open("/tmp/mylink", "w").write("pwned"))
out["hardlink_ro"] = act(os.link, "/ro/f", "/tmp/alias")
out["hardlink_ro_to_rw"] = act(os.link, "/ro/f", "/rw/alias")
out["write_ro"] = act(lambda: open("/ro/f", "a"))
out["unlink_ro"] = act(os.unlink, "/ro/f")
out["rename_ro"] = act(os.rename, "/ro/f", "/ro/g")
out["chmod_ro"] = act(os.chmod, "/ro/f", 0o777)
out["write_rw"] = act(lambda: open("/rw/ok", "w").write("ok"))
out["rename_out"] = act(os.rename, "/tmp", "/../../../.." + H + "/moved")
out["mkdir_out"] = act(os.mkdir, "/../../../.." + H + "/newdir")
out["symlink_in_host"] = act(os.symlink, "x", "/../../../.." + H + "/ln")
out["mknod_dev"] = act(os.mknod, "/tmp/mem", 0o600 | 0o020000, os.makedev(1, 1))
out["mknod_fifo"] = act(os.mkfifo, "/tmp/fifo")
out["chmod_host_via_proc_root"] = act(os.chmod, "/proc/self/root" + H + "/secret", 0o777)
out["link_ro_out"] = act(os.link, "/etc/os-release", "/../../../.." + H + "/hl")
open("/tmp/lsrc", "w").close()
out["link_out"] = act(os.link, "/tmp/lsrc", "/../../../.." + H + "/hl")
out["xattr_out"] = act(os.getxattr, "/../../../.." + H + "/secret", "user.x")
libc = ctypes.CDLL(None, use_errno=True)
how = (ctypes.c_uint64 * 3)(0, 0, 0)
r = libc.syscall(437, -100, (H + "/secret").encode(), ctypes.byref(how), 24)
out["openat2"] = "OK" if r >= 0 else name(ctypes.get_errno())
f = open("/etc/os-release")
leaks = {"cwd": os.getcwd(), "proc_cwd": os.readlink("/proc/self/cwd"),
         "exe": os.readlink("/proc/self/exe"),
         "fd_file": os.readlink("/proc/self/fd/%d" % f.fileno()),
         "fd_dir": os.readlink("/proc/self/fd/%d" % fd),
         "fd_null": os.readlink("/proc/self/fd/%d" % null)}
out["leaks"] = leaks
out["maps"] = open("/proc/self/maps").read()
# A symlink swapped with a directory while the reads go on (a race).
stop = []
def flip():
    while not stop:
        try:
            os.rename("/data/race", "/data/race_dir")
            os.symlink(H, "/data/race")
            os.unlink("/data/race")
            os.rename("/data/race_dir", "/data/race")
        except OSError:
            pass
t = threading.Thread(target=flip)
t.start()
seen = set()
for _ in range(1500):
    seen.add(read("/data/race/secret")[:11])
stop.append(1)
t.join()
out["race"] = sorted(seen)
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def tree():
    with python_scratch("sl-chroot-esc-") as top:
        yield _tree(top)


def _tree(top: str) -> dict:
    root, mounts = python_root(top)
    host = os.path.join(top, "host")
    ro = os.path.join(top, "ro")
    rw = os.path.join(top, "rw")
    for d in (host, ro, rw):
        os.makedirs(d)
        os.chmod(d, 0o777)
    with open(os.path.join(host, "secret"), "w") as f:
        f.write(SECRET)
    with open(os.path.join(ro, "f"), "w") as f:
        f.write("read-only")
    os.chmod(os.path.join(ro, "f"), 0o666)
    data = os.path.join(root, "data")
    os.symlink(os.path.join(host, "secret"), os.path.join(data, "abs"))
    os.symlink("../../../../../../.." + os.path.join(host, "secret"), os.path.join(data, "rel"))
    os.symlink(host, os.path.join(data, "dirlink"))
    os.makedirs(os.path.join(data, "race"))
    with open(os.path.join(data, "race", "secret"), "w") as f:
        f.write("INSIDE")
    os.chmod(data, 0o777)
    os.chmod(os.path.join(data, "race"), 0o777)
    return dict(top=top, root=root, mounts=mounts, host=host, ro=ro, rw=rw)


def _run(t):
    mounts_ro = dict(t["mounts"], **{"/ro": t["ro"]})
    sb = Sandbox(chroot=t["root"], fs_readable=["/"], fs_writable=["/tmp", "/data", "/dev/null"],
                 fs_mount={"/rw": t["rw"]}, fs_mount_ro=mounts_ro, env={"PATH": "/usr/bin"})
    r = sb.run(["python3", "-I", "-S", "-c", ATTACK, json.dumps({"hostdir": t["host"]})], timeout=90)
    assert r.exit_code == 0, r.stderr.decode()[-2000:]
    return json.loads(r.stdout.decode().splitlines()[-1])


def test_control_links_reach_the_secret(tree):
    # Without the sandbox, the planted links do lead to the host's secret.
    data = os.path.join(tree["root"], "data")
    for name in ("abs", "rel", "dirlink/secret"):
        with open(os.path.join(data, name)) as f:
            assert f.read() == SECRET


def test_chroot_escapes_refused(tree):
    out = _run(tree)
    for key in ("dotdot", "dotdot_rel", "abs_link", "rel_link", "dir_link", "proc_root",
                "proc_cwd", "proc_fd_dir", "openat_dotdot", "through_made_link"):
        assert out[key] == "ENOENT", (key, out[key])
    assert out["dotdot_create"] == "ENOENT"
    assert out["made_link"] == "OK"   # a link may name anything: it is read in the tree
    # changes that would land outside: the host dir does not exist in the tree
    for key in ("rename_out", "mkdir_out", "symlink_in_host", "link_out", "chmod_host_via_proc_root",
                "xattr_out"):
        assert out[key] == "ENOENT", (key, out[key])
    assert out["link_ro_out"] == "EACCES"   # write on both names first (B8)
    assert out["mknod_dev"] == "EPERM" and out["mknod_fifo"] == "EPERM"
    assert out["made_link_write"] == "ENOENT"
    assert out["openat_outside"] == "EACCES"
    assert out["proc_root_link"] == "/"
    assert out["openat2"] == "ENOSYS"
    # :ro beats the writable /tmp; a hardlink needs write on both names (B8)
    for key in ("hardlink_ro", "hardlink_ro_to_rw", "write_ro", "unlink_ro", "rename_ro", "chmod_ro"):
        assert out[key] in ("EACCES", "EPERM"), (key, out[key])
    assert out["write_rw"] == "OK"
    assert out["race"] == ["ENOENT", "READ:INSIDE"] or set(out["race"]) <= {"ENOENT", "READ:INSIDE", "ENOTDIR"}
    assert all(SECRET not in x for x in out["race"])
    # no host path is named
    leaks = out["leaks"]
    assert leaks["cwd"] == "/tmp" and leaks["proc_cwd"] == "/tmp" and leaks["fd_dir"] == "/tmp"
    assert leaks["fd_file"] == "/etc/os-release"
    assert leaks["fd_null"] == "/dev/null"
    assert not leaks["exe"].startswith(tree["top"])
    # /proc/self/maps names the mapped files virtually: the root's own
    # loader and libc (the host's would be refused by Landlock anyway)
    assert tree["top"] not in out["maps"]
    assert any(line.endswith("libc.so.6") and not line.split()[-1].startswith(tree["top"])
               for line in out["maps"].splitlines())
    for v in leaks.values():
        assert tree["top"] not in v
    # the host is untouched
    assert sorted(os.listdir(tree["host"])) == ["secret"]
    assert open(os.path.join(tree["host"], "secret")).read() == SECRET
    assert sorted(os.listdir(tree["ro"])) == ["f"]
    assert open(os.path.join(tree["ro"], "f")).read() == "read-only"
    assert oct(os.stat(os.path.join(tree["ro"], "f")).st_mode & 0o777) == oct(0o666)
    assert open(os.path.join(tree["rw"], "ok")).read() == "ok"
