"""Red-team attacks on the newest chroot code (fs_denied, fs_mount, :ro).

fs_denied is a denial by name. Inside a chroot every rename is done by the
supervisor, with its own rights, so the kernel's Landlock refer check (which
refuses moving a directory whose contents would gain access under the new
name) does not run: renaming an ancestor of a denied path moved the secret
to a name nothing denies, in the root and inside a writable mount. The
control run shows the same rename reaches the secret without the sandbox.
"""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _rootfs import python_root, python_scratch  # noqa: E402

from sandlock import Sandbox  # noqa: E402

ATTACK = r'''
import errno, json, os, sys
def name(e):
    return errno.errorcode.get(e, str(e))
def act(fn, *a):
    try:
        fn(*a)
        return "OK"
    except OSError as e:
        return name(e.errno)
def read(p):
    try:
        with open(p) as f:
            return "READ:" + f.read()
    except OSError as e:
        return name(e.errno)
A = json.loads(sys.argv[1])
out = {}
for key, d in (("root", A["data"]), ("mount", A["rw"])):
    out[key + "_direct"] = read(d + "/sub/secret")
    out[key + "_rename"] = act(os.rename, d + "/sub", d + "/moved")
    out[key + "_moved"] = read(d + "/moved/secret")
    out[key + "_rename_top"] = act(os.rename, d, d + "2") if key == "root" else "n/a"
    out[key + "_moved_top"] = read(d + "2/sub/secret")
    # the rest of the writable tree still renames
    out[key + "_rename_other"] = act(os.rename, d + "/other", d + "/other2")
print(json.dumps(out))
'''


def _tree(top: str) -> dict:
    root, mounts = python_root(top)
    rw = os.path.join(top, "rw")
    for base in (os.path.join(root, "data"), rw):
        os.makedirs(os.path.join(base, "sub"), exist_ok=True)
        os.makedirs(os.path.join(base, "other"), exist_ok=True)
        with open(os.path.join(base, "sub", "secret"), "w") as f:
            f.write("SECRET")
        for d in (base, os.path.join(base, "sub"), os.path.join(base, "other")):
            os.chmod(d, 0o777)
    return dict(root=root, mounts=mounts, rw=rw)


def test_rename_of_a_denied_paths_ancestor():
    with python_scratch("sl-rt-chroot-") as top:
        t = _tree(top)
        # control: without the sandbox the rename does carry the secret along
        control = os.path.join(top, "control")
        os.makedirs(os.path.join(control, "sub"))
        with open(os.path.join(control, "sub", "secret"), "w") as f:
            f.write("SECRET")
        os.rename(os.path.join(control, "sub"), os.path.join(control, "moved"))
        with open(os.path.join(control, "moved", "secret")) as f:
            assert f.read() == "SECRET"

        sb = Sandbox(chroot=t["root"], fs_readable=["/"], fs_writable=["/data"],
                     fs_denied=["/data/sub/secret", "/rw/sub/secret"],
                     fs_mount={"/rw": t["rw"]}, fs_mount_ro=t["mounts"], env={"PATH": "/usr/bin"})
        r = sb.run(["python3", "-I", "-S", "-c", ATTACK, json.dumps({"data": "/data", "rw": "/rw"})],
                   timeout=60)
        assert r.exit_code == 0, r.stderr.decode()[-2000:]
        out = json.loads(r.stdout.decode().splitlines()[-1])
        for key in ("root", "mount"):
            assert out[key + "_direct"] == "EACCES", out
            assert out[key + "_rename"] == "EACCES", out
            assert out[key + "_moved"] == "ENOENT", out
            assert out[key + "_moved_top"] == "ENOENT", out
            assert out[key + "_rename_other"] == "OK", out
        assert out["root_rename_top"] == "EACCES", out
        # nothing moved on the host
        assert os.path.exists(os.path.join(t["root"], "data", "sub", "secret"))
        assert os.path.exists(os.path.join(t["rw"], "sub", "secret"))


if __name__ == "__main__":   # pragma: no cover
    pytest.main([__file__, "-q"])


MAP_FILES = r'''
import errno, json, os
out = []
for e in sorted(os.listdir("/proc/self/map_files"))[:60]:
    for p in ("/proc/self/map_files/" + e, "/proc/thread-self/map_files/" + e):
        try:
            out.append(os.readlink(p))
        except OSError as x:
            out.append(errno.errorcode.get(x.errno, str(x.errno)))
try:
    open("/proc/self/map_files/" + sorted(os.listdir("/proc/self/map_files"))[0] + "/x")
    out.append("OPENED")
except OSError as x:
    out.append(errno.errorcode.get(x.errno, str(x.errno)))
print(json.dumps(out))
'''


def test_map_files_links_name_no_host_path():
    # /proc/self/map_files/<range> names each mapped file like /proc/self/fd/N:
    # the kernel's text is the host path of the chroot's file (B6).
    import subprocess
    with python_scratch("sl-rt-chroot-") as top:
        t = _tree(top)
        control = subprocess.run([os.path.join(t["root"], "usr/bin/python3"), "-I", "-S", "-c", MAP_FILES],
                                 capture_output=True, timeout=60)
        if os.geteuid() == 0:   # (map_files needs CAP_SYS_ADMIN: as another user, EPERM for both)
            assert control.returncode == 0 and top.encode() in control.stdout, control
        sb = Sandbox(chroot=t["root"], fs_readable=["/"], fs_mount_ro=t["mounts"],
                     env={"PATH": "/usr/bin"})
        r = sb.run(["python3", "-I", "-S", "-c", MAP_FILES], timeout=60)
        assert r.exit_code == 0, r.stderr.decode()[-2000:]
        out = json.loads(r.stdout.decode().splitlines()[-1])
        assert not any(top in x for x in out), out
        assert out[-1] == "ENOTDIR"
        if os.geteuid() == 0:
            assert "/usr/bin/python3" in out, out


THREAD_LINKS = r'''
import errno, json, os, threading, time
out = {}
ready, done, tids = threading.Event(), threading.Event(), []
def body():
    tids.append(threading.get_native_id())
    ready.set()
    done.wait()
t = threading.Thread(target=body)
t.start()
ready.wait()
f = open("/etc/os-release")
for k in ("cwd", "exe", "root", "fd/%d" % f.fileno()):
    try:
        out[k] = os.readlink("/proc/%d/%s" % (tids[0], k))
    except OSError as e:
        out[k] = errno.errorcode[e.errno]
try:
    out["maps"] = open("/proc/%d/maps" % tids[0]).read()
except OSError as e:
    out["maps"] = errno.errorcode[e.errno]
done.set()
t.join()
print(json.dumps(out))
'''


def test_thread_ids_links_name_no_host_path():
    # /proc/<tid> of a thread (not listed in /proc, but reachable) named the
    # host paths: only /proc/<pid> and /proc/<pid>/task/<tid> were virtual.
    with python_scratch("sl-rt-chroot-") as top:
        t = _tree(top)
        sb = Sandbox(chroot=t["root"], fs_readable=["/"], fs_mount_ro=t["mounts"],
                     env={"PATH": "/usr/bin"})
        r = sb.run(["python3", "-I", "-S", "-c", THREAD_LINKS], timeout=60)
        assert r.exit_code == 0, r.stderr.decode()[-2000:]
        out = json.loads(r.stdout.decode().splitlines()[-1])
        assert not any(top in v for v in out.values()), out
        assert out["cwd"] == "/" and out["root"] == "/" and out["fd/3"] == "/etc/os-release", out
