"""chroot and fs_mount: real commands in a static busybox root and in a
dynamic one (the system python with its libraries, run through the
root's own ld.so), as root and as uid 65534."""
from __future__ import annotations

import os

import pytest
from _rootfs import BUSYBOX, NO_BUSYBOX, busybox_root, python_root, python_scratch, scratch
from _shared import rmtree

from sandlock import PolicyError, Sandbox

needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason=NO_BUSYBOX)


@pytest.fixture(scope="module")
def bb():
    if BUSYBOX is None:
        pytest.skip(NO_BUSYBOX)
    with scratch("sl-chroot-") as top:
        yield busybox_root(top)


@pytest.fixture(scope="module")
def pyroot():
    with python_scratch("sl-chroot-py-") as top:
        yield python_root(top)


def sh(root, script, **kw):
    kw.setdefault("fs_readable", ["/"])
    r = Sandbox(chroot=root, **kw).run(["/bin/sh", "-c", script], timeout=30)
    return r, r.stdout.decode(), r.stderr.decode()


def test_ls_cat_pwd_cd(bb):
    r, out, err = sh(bb, "ls /; cat /etc/os-release; cd /etc && pwd && cat os-release; "
                         "cd ../bin && pwd; readlink /proc/self/cwd")
    assert r.exit_code == 0, err
    lines = out.splitlines()
    assert {"bin", "etc", "tmp", "data"} <= set(lines)
    assert lines.count('NAME="sandlock-chroot"') == 2
    assert "/etc" in lines and "/bin" in lines
    assert lines[-1] == "/bin"   # the cwd reads back virtual
    assert bb not in out


def test_cwd_option_is_virtual(bb):
    r, out, err = sh(bb, "pwd; cat os-release", cwd="/etc")
    assert r.exit_code == 0, err
    assert out.splitlines()[:2] == ["/etc", 'NAME="sandlock-chroot"']


def test_writes_where_granted_refused_elsewhere(bb):
    r, out, err = sh(bb, "echo hi > /tmp/x && cat /tmp/x; mkdir /tmp/d && mv /tmp/x /tmp/d/y && "
                         "ln -s y /tmp/d/l && cat /tmp/d/l && rm /tmp/d/l && ls /tmp/d; "
                         "echo no > /etc/y; echo $?; mkdir /etc/z; echo $?",
                     fs_writable=["/tmp"])
    assert r.exit_code == 0, err
    assert out.split() == ["hi", "hi", "y", "1", "1"]
    assert "Permission denied" in err
    assert os.path.exists(os.path.join(bb, "tmp", "d", "y"))
    assert not os.path.exists(os.path.join(bb, "etc", "y"))
    assert any(d.target == "/etc/y" for d in r.denials)
    rmtree(os.path.join(bb, "tmp", "d"))


def test_nothing_readable_beyond_grants(bb):
    # B14: no fs_readable means nothing of the root beyond what is granted
    r, out, err = sh(bb, "cat /etc/os-release; echo rc=$?", fs_readable=["/bin"])
    assert "rc=1" in out and "sandlock-chroot" not in out


def test_mount_and_mount_ro(bb, world_dir):
    rw = os.path.join(world_dir, "rw")
    ro = os.path.join(world_dir, "ro")
    os.makedirs(rw)
    os.makedirs(ro)
    with open(os.path.join(ro, "f"), "w") as f:
        f.write("ro-data\n")
    os.chmod(rw, 0o777)
    r, out, err = sh(bb, "cat /data/ro/f; echo x > /data/rw/new && cat /data/rw/new; "
                         "echo y > /data/ro/g; echo rc=$?; ls /data/ro",
                     fs_writable=["/"], fs_mount={"/data/rw": rw}, fs_mount_ro={"/data/ro": ro})
    assert r.exit_code == 0, err
    assert out.split() == ["ro-data", "x", "rc=1", "f"]
    assert open(os.path.join(rw, "new")).read() == "x\n"
    assert not os.path.exists(os.path.join(ro, "g"))


def test_denied_beats_a_mount(bb, world_dir):
    with open(os.path.join(world_dir, "secret"), "w") as f:
        f.write("s\n")
    with open(os.path.join(world_dir, "open"), "w") as f:
        f.write("o\n")
    r, out, err = sh(bb, "cat /m/open; cat /m/secret; echo rc=$?", fs_mount={"/m": world_dir},
                     fs_denied=["/m/secret"])
    assert out.split() == ["o", "rc=1"]


def test_dynamic_program_uses_the_roots_loader(pyroot):
    root, mounts = pyroot
    code = ("import os, sys; print(os.getcwd()); print(sorted(os.listdir('/'))); "
            "print(os.readlink('/proc/self/cwd')); print(open('/etc/os-release').read().strip()); "
            "os.chdir('/etc'); print(os.getcwd(), open('os-release').read().strip()); "
            "open('/tmp/w', 'w').write('ok'); print(open('/tmp/w').read())")
    r = Sandbox(chroot=root, fs_readable=["/"], fs_writable=["/tmp"], fs_mount_ro=mounts,
                env={"PATH": "/usr/bin"}).run(["python3", "-c", code], timeout=60)
    assert r.exit_code == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "/"
    assert "usr" in lines[1] and "lib64" in lines[1] or "lib" in lines[1]
    assert lines[2] == "/"
    assert lines[3] == 'NAME="sandlock-python"'
    assert lines[4] == '/etc NAME="sandlock-python"'
    assert lines[5] == "ok"
    # Landlock grants only the root and the mounts: had the kernel loaded
    # the host's ld.so, the exec would have been refused.


def test_policy_errors(bb, world_dir):
    def refused(match, **kw):
        with pytest.raises(PolicyError, match=match):
            Sandbox(**kw).run(["/bin/true"])
    refused("chroot", chroot=os.path.join(world_dir, "missing"))
    refused("no_supervisor", chroot=bb, no_supervisor=True)
    refused("need a chroot", fs_mount={"/m": world_dir})
    refused("overlap", chroot=bb, fs_mount_ro={"/m": os.path.join(bb, "data")})
    refused("not an existing directory", chroot=bb, fs_mount={"/m": os.path.join(world_dir, "nope")})
    refused("parent", chroot=bb, fs_mount={"/no/such/m": world_dir})
    refused("workdir.*outside the chroot", chroot=bb, workdir=world_dir)


def test_cli_chroot_and_mount(bb, world_dir):
    import subprocess
    import sys
    with open(os.path.join(world_dir, "f"), "w") as f:
        f.write("from-host\n")
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "sandlock", "run", "--chroot", bb, "-r", "/",
                          "--fs-mount", f"/m:{world_dir}:ro", "--", "/bin/sh", "-c",
                          "cat /m/f; echo z > /m/g; echo rc=$?; pwd"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.split() == ["from-host", "rc=1", "/"], out.stderr
    assert not os.path.exists(os.path.join(world_dir, "g"))


def test_proc_links_read_back_virtual(bb):
    r, out, err = sh(bb, "cd /etc; sleep 5 & p=$!; cd /tmp; "
                         "for l in /proc/$p/cwd /proc/$p/exe /proc/$p/root /proc/self/cwd /proc/self/root; "
                         "do echo \"$(readlink $l)\"; done; cat /proc/$p/cwd/os-release; echo rc=$?; kill $p")
    assert out.split() == ["/etc", "/bin/busybox", "/", "/tmp", "/", "rc=1"], err
    assert bb not in out


def test_exec_of_a_path_is_refused_applets_work(bb):
    # busybox runs its applets through /proc/self/exe: pipelines work
    r, out, err = sh(bb, "ls /etc | wc -l; /bin/cat /etc/os-release; echo rc=$?")
    assert out.split()[0] == "1"
    assert "rc=126" in out and "Permission denied" in err
    assert any(d.operation == "exec" and d.target == "/bin/busybox" for d in r.denials)


def test_script_runs_with_the_roots_interpreter(bb):
    script = os.path.join(bb, "bin", "hello-script")
    with open(script, "w") as f:
        f.write('#!/bin/sh -e\necho "script $0 $1"\n')
    os.chmod(script, 0o755)
    r = Sandbox(chroot=bb, fs_readable=["/"]).run(["hello-script", "arg"], timeout=30)
    assert r.stdout == b"script /bin/hello-script arg\n", r.stderr


def test_denied_before_it_exists(bb):
    r, out, err = sh(bb, "echo s > /tmp/secret; echo rc=$?; echo ok > /tmp/other && cat /tmp/other; rm /tmp/other",
                     fs_writable=["/tmp"], fs_denied=["/tmp/secret"])
    assert out.split() == ["rc=1", "ok"], err
    assert not os.path.exists(os.path.join(bb, "tmp", "secret"))


def test_restore_into_a_chroot_is_refused(bb):
    from sandlock import SandboxError
    from sandlock.checkpoint import Checkpoint
    cp = Checkpoint(command=["/bin/true"], cwd="/", environ={}, policy={}, policy_skipped=[],
                    processes=[], app_state=None, workdir=None, branch_dir=None, branch_info=None,
                    created=0.0)
    with pytest.raises(SandboxError, match="chroot"):
        Sandbox(chroot=bb, fs_readable=["/"]).restore_interactive(cp)
