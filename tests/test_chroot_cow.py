"""A copy-on-write workdir inside a chroot: busybox commands in a fresh
root see the branch's merged view under the workdir; ABORT and dry runs
leave the root byte for byte as it was, COMMIT lands the changes, and
`changes` names them relative to the workdir. As root and as uid 65534."""
from __future__ import annotations

import os

import pytest
from _rootfs import BUSYBOX, NO_BUSYBOX, busybox_root, scratch

from sandlock import PolicyError, Sandbox

pytestmark = pytest.mark.skipif(BUSYBOX is None, reason=NO_BUSYBOX)


@pytest.fixture
def bb():
    with scratch("sl-chroot-cow-") as top:
        root = busybox_root(top)
        os.makedirs(os.path.join(root, "etc", "sub"))
        for rel, data in (("etc/keep", "keep\n"), ("etc/sub/a", "a\n"), ("data/d1", "d1\n")):
            with open(os.path.join(root, rel), "w") as f:
                f.write(data)
        os.chmod(os.path.join(root, "data"), 0o777)
        yield root


def snapshot(root: str) -> dict:
    """Every entry under `root`: mode, size, mtime, content or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            data = None
            if os.path.islink(p):
                data = os.readlink(p)
            elif os.path.isfile(p) and st.st_size < 65536:
                with open(p, "rb") as f:
                    data = f.read()
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return out


def sh(root, script, **kw):
    kw.setdefault("fs_readable", ["/"])
    kw.setdefault("workdir", root)
    r = Sandbox(chroot=root, **kw).run(["/bin/sh", "-c", script], timeout=30)
    return r, r.stdout.decode(), r.stderr.decode()


def kinds(changes) -> dict:
    return {c.path: c.kind for c in changes}


def test_abort_sees_writes_inside_leaves_the_root_untouched(bb):
    before = snapshot(bb)
    r, out, err = sh(bb, "echo hi > /tmp/x; cat /tmp/x; echo more >> /etc/keep; cat /etc/keep; "
                         "rm /etc/os-release; ls /etc; chmod 600 /etc/sub/a; stat -c %a /etc/sub/a; "
                         "touch -d 2001-01-01 /etc/sub/a; ls /etc/os-release; echo rc=$?",
                     on_exit="abort")
    assert r.exit_code == 0, err
    assert out.split() == ["hi", "keep", "more", "keep", "sub", "600", "rc=1"]
    assert kinds(r.changes) == {"tmp/x": "A", "etc/keep": "M", "etc/os-release": "D",
                                "etc/sub/a": "M"}
    assert snapshot(bb) == before


def test_commit_lands_the_changes(bb):
    r, out, err = sh(bb, "echo hi > /tmp/x; mv /etc/keep /etc/moved; rm -r /etc/sub; "
                         "mkdir -p /new/deep && echo n > /new/deep/f; ln -s ../etc/moved /new/l; "
                         "cat /new/l")
    assert r.exit_code == 0, err
    assert out == "keep\n"
    assert sorted(c.path for c in r.changes) == ["etc/keep", "etc/moved", "etc/sub", "new", "new/deep",
                                                 "new/deep/f", "new/l", "tmp/x"]
    assert open(os.path.join(bb, "tmp", "x")).read() == "hi\n"
    assert open(os.path.join(bb, "etc", "moved")).read() == "keep\n"
    assert not os.path.exists(os.path.join(bb, "etc", "keep"))
    assert not os.path.exists(os.path.join(bb, "etc", "sub"))
    assert open(os.path.join(bb, "new", "deep", "f")).read() == "n\n"
    assert os.readlink(os.path.join(bb, "new", "l")) == "../etc/moved"


def test_failure_aborts_by_default(bb):
    before = snapshot(bb)
    r, out, err = sh(bb, "echo x > /etc/new; exit 4")
    assert r.exit_code == 4 and kinds(r.changes) == {"etc/new": "A"}
    assert snapshot(bb) == before


def test_dry_run(bb):
    before = snapshot(bb)
    r = Sandbox(chroot=bb, workdir=bb, fs_readable=["/"]).dry_run(
        ["/bin/sh", "-c", "echo x > /etc/new; rm /etc/keep; mv /data/d1 /data/d2"], timeout=30)
    assert r.exit_code == 0, r.stderr
    assert kinds(r.changes) == {"etc/new": "A", "etc/keep": "D", "data/d1": "D", "data/d2": "A"}
    assert snapshot(bb) == before


def test_workdir_inside_the_root_rest_as_before(bb):
    """workdir = <root>/data: /data is copy-on-write, /tmp (granted) is
    written directly, /etc (not granted) is refused, as without a workdir."""
    data = os.path.join(bb, "data")
    r, out, err = sh(bb, "echo a > /data/a; cat /data/a; echo b > /tmp/b; echo c > /etc/c; "
                         "echo rc=$?; ls /data; cd /data && pwd",
                     workdir=data, fs_writable=["/tmp"], on_exit="abort")
    assert r.exit_code == 0, err
    assert out.split() == ["a", "rc=1", "a", "d1", "/data"]
    assert kinds(r.changes) == {"a": "A"}          # relative to the workdir
    assert not os.path.exists(os.path.join(data, "a"))
    assert open(os.path.join(bb, "tmp", "b")).read() == "b\n"
    assert not os.path.exists(os.path.join(bb, "etc", "c"))
    os.unlink(os.path.join(bb, "tmp", "b"))


def test_cwd_in_a_branch_directory_and_relative_paths(bb):
    before = snapshot(bb)
    r, out, err = sh(bb, "mkdir /nd && cd /nd && pwd && echo x > f && ls && cat ./f && "
                         "readlink /proc/self/cwd && mkdir s && cd s && echo y > ../g && "
                         "cat /nd/g && cd .. && rm -r /nd && ls /nd; echo rc=$?; ls / | grep -c nd",
                     on_exit="abort")
    assert out.split() == ["/nd", "f", "x", "/nd", "y", "rc=1", "0"], err
    assert snapshot(bb) == before


def test_listing_is_merged_and_find_walks_it(bb):
    r, out, err = sh(bb, "echo n > /etc/sub/b; rm /etc/sub/a; mkdir /etc/sub/c; "
                         "ls /etc/sub; find /etc/sub | sort", on_exit="abort")
    assert r.exit_code == 0, err
    assert out.split() == ["b", "c", "/etc/sub", "/etc/sub/b", "/etc/sub/c"]


def test_mounts_beside_the_branch(bb, world_dir):
    os.chmod(world_dir, 0o777)
    before = snapshot(bb)
    r, out, err = sh(bb, "echo m > /data/m/out; echo r > /etc/r; cat /data/m/out /etc/r; "
                         "ln /etc/keep /data/m/k; echo rc=$?; ln /data/m/out /etc/o; echo rc=$?; "
                         "mv /etc/r /data/m/r; echo rc=$?; ls /etc/r",
                     fs_mount={"/data/m": world_dir}, on_exit="abort")
    # no second name joins a branch file and a host one; mv copies across
    assert out.split() == ["m", "r", "rc=1", "rc=1", "rc=0"], err
    assert err.count("cross-device") == 2
    assert sorted(os.listdir(world_dir)) == ["out", "r"]   # the mount is the host's, as before
    assert snapshot(bb) == before


def test_denied_inside_the_workdir(bb):
    r, out, err = sh(bb, "cat /etc/keep; echo rc=$?; echo x > /etc/keep; echo rc=$?; "
                         "echo y > /etc/other; echo rc=$?",
                     fs_denied=["/etc/keep"], on_exit="abort")
    assert out.split() == ["rc=1", "rc=1", "rc=0"], err
    assert kinds(r.changes) == {"etc/other": "A"}


def test_readable_grants_bound_the_branch(bb):
    """Inside the workdir, what fs_readable grants may be changed (in the
    branch); the rest is neither read nor written."""
    r, out, err = sh(bb, "echo x > /tmp/x && cat /tmp/x; cat /etc/keep; echo rc=$?; "
                         "echo y > /etc/y; echo rc=$?; rm /etc/keep; echo rc=$?",
                     fs_readable=["/bin", "/tmp"], on_exit="abort")
    assert out.split() == ["x", "rc=1", "rc=1", "rc=1"], err
    assert kinds(r.changes) == {"tmp/x": "A"}


def test_defer_then_commit_part(bb):
    sb = Sandbox(chroot=bb, workdir=bb, fs_readable=["/"], on_exit="defer")
    r = sb.run(["/bin/sh", "-c", "echo x > /tmp/x; echo y > /etc/y"], timeout=30)
    assert r.exit_code == 0, r.stderr
    assert not os.path.exists(os.path.join(bb, "tmp", "x"))
    sb.commit(["tmp"])
    assert open(os.path.join(bb, "tmp", "x")).read() == "x\n"
    assert not os.path.exists(os.path.join(bb, "etc", "y"))
    sb.abort()
    assert not os.path.exists(os.path.join(bb, "etc", "y"))


def test_max_disk(bb):
    before = snapshot(bb)
    r, out, err = sh(bb, "head -c 3000000 /dev/zero > /tmp/big; echo rc=$?; sleep 2; echo alive",
                     max_disk="1M", on_exit="abort")
    assert "alive" not in out and r.error and "max_disk" in r.error, (out, err)
    assert snapshot(bb) == before


def test_policy_errors(bb, world_dir):
    def refused(match, **kw):
        kw.setdefault("fs_readable", ["/"])
        with pytest.raises(PolicyError, match=match):
            Sandbox(chroot=bb, **kw).run(["/bin/true"])
    refused("workdir.*outside the chroot", workdir=world_dir)
    refused("workdir.*read-only mount", fs_mount_ro={"/m": world_dir}, workdir=world_dir)
    sub = os.path.join(world_dir, "sub")
    os.makedirs(sub)
    refused("workdir.*inside the fs_mount", fs_mount={"/m": world_dir}, workdir=sub)
    # <root>/data/x is hidden under the mount at /data
    os.makedirs(os.path.join(bb, "data", "x"), exist_ok=True)
    refused("workdir.*hidden", fs_mount={"/data": world_dir}, workdir=os.path.join(bb, "data", "x"))
    refused("fs_writable.*overlaps the copy-on-write workdir", workdir=bb, fs_writable=["/tmp"])
    refused("fs_writable.*overlaps", workdir=os.path.join(bb, "data"), fs_writable=["/"])


def test_cli_chroot_workdir_dry_run(bb):
    import subprocess
    import sys
    before = snapshot(bb)
    out = subprocess.run([sys.executable, "-m", "sandlock", "run", "--chroot", bb, "-r", "/",
                          "--workdir", bb, "--dry-run", "--", "/bin/sh", "-c", "echo x > /etc/x"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "A  etc/x" in out.stderr, out.stderr
    assert snapshot(bb) == before
