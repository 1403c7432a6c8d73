"""Local OCI images: a layout directory and an archive built here from the
busybox root (two layers: the second deletes, plants an escaping symlink,
a device node and a set-user-ID file), unpacked into a cache and run as
a chroot."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest
from _rootfs import BUSYBOX, NO_BUSYBOX, busybox_root, scratch

from sandlock import PolicyError, Sandbox, pull_image
from sandlock.image import ImageError

pytestmark = pytest.mark.skipif(BUSYBOX is None, reason=NO_BUSYBOX)


def _blob(layout: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest


def _layer(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buf.getvalue())


def _info(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, link=""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.linkname = kind, mode, link
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    return ti, (data if kind == tarfile.REGTYPE else None)


def make_layout(top: str, hostdir: str) -> str:
    root = busybox_root(os.path.join(top, "src"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(root, arcname=".")
    base = gzip.compress(buf.getvalue())
    second = _layer([
        _info("etc/.wh.os-release"),
        _info("etc/os-release", data=b'NAME="from-the-image"\n'),
        _info("etc/gone", data=b"x"),
        _info("etc/.wh.gone"),
        _info("evil", tarfile.SYMTYPE, link=hostdir),
        _info("evil/pwned", data=b"escaped"),
        _info("../../outside", data=b"escaped"),
        _info("dev/mem", tarfile.CHRTYPE),
        _info("bin/suid", data=b"#!/bin/sh\n", mode=0o4755),
    ])
    layout = os.path.join(top, "layout")
    os.makedirs(layout)
    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _blob(layout, d),
               "size": len(d)} for d in (base, second)]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/bin", "FROM_IMAGE=1"], "Cmd": ["/bin/sh"],
                                    "WorkingDir": "/etc"}}).encode()
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": _blob(layout, config), "size": len(config)},
                           "layers": layers}).encode()
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _blob(layout, manifest),
         "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion": "1.0.0"}')
    return layout


@pytest.fixture(scope="module")
def image_src():
    with scratch("sl-image-") as top:
        hostdir = os.path.join(top, "host")
        os.makedirs(hostdir)
        layout = make_layout(top, hostdir)
        archive = os.path.join(top, "image.tar")
        with tarfile.open(archive, "w") as tar:
            tar.add(layout, arcname=".")
        cache = os.path.join(top, "cache")
        yield dict(top=top, layout=layout, archive=archive, cache=cache, hostdir=hostdir)


def test_layout_unpacked_and_run(image_src):
    img = pull_image(image_src["layout"], cache_dir=image_src["cache"])
    assert img.config.default_cmd() == ["/bin/sh"] and img.config.working_dir == "/etc"
    root = img.rootfs
    assert open(os.path.join(root, "etc", "os-release")).read() == 'NAME="from-the-image"\n'
    assert not os.path.exists(os.path.join(root, "etc", "gone"))          # whiteout
    assert not os.path.exists(os.path.join(root, "dev", "mem"))           # no device nodes
    assert os.stat(os.path.join(root, "bin", "suid")).st_mode & 0o6000 == 0
    assert os.listdir(image_src["hostdir"]) == []                         # nothing escaped
    assert not os.path.exists(os.path.join(image_src["top"], "outside"))
    before = _snapshot(root)
    r = Sandbox(image=img).run(["/bin/sh", "-c", "pwd; cat os-release; echo $FROM_IMAGE; "
                                "echo x > /etc/new; echo rc=$?; cat /etc/new"], timeout=30)
    # writes go to a copy-on-write branch of the rootfs, discarded at the end
    assert r.stdout.decode().split() == ["/etc", 'NAME="from-the-image"', "1", "rc=0", "x"], r.stderr
    assert [c.path for c in r.changes] == ["etc/new"]
    assert not os.path.exists(os.path.join(root, "etc", "new"))
    assert _snapshot(root) == before
    again = pull_image(image_src["layout"], cache_dir=image_src["cache"])
    assert again.rootfs == root   # cached by digest


def test_archive_with_tag_and_writable_mount(image_src, world_dir):
    img = pull_image("oci-archive:" + image_src["archive"] + ":v1", cache_dir=image_src["cache"])
    os.chmod(world_dir, 0o777)
    r = Sandbox(image=img, fs_mount={"/data": world_dir}).run(
        ["/bin/sh", "-c", "echo out > /data/result"], timeout=30)
    assert r.exit_code == 0, r.stderr
    assert open(os.path.join(world_dir, "result")).read() == "out\n"
    with pytest.raises(ImageError, match="tagged"):
        pull_image(image_src["archive"] + ":nope", cache_dir=image_src["cache"])


def _snapshot(root: str) -> dict:
    """Every entry of a tree: type, mode, size, content or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if os.path.islink(p):
                data = os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    data = f.read()
            else:
                data = None
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return out


def test_image_writes_in_a_branch_cache_untouched(image_src):
    img = pull_image(image_src["layout"], cache_dir=image_src["cache"])
    before = _snapshot(img.rootfs)
    script = ("echo x > /tmp/x && cat /tmp/x && rm /etc/os-release && mv /bin/suid /suid2 && "
              "mkdir -p /var/lib/new && echo y > /var/lib/new/f && ls /tmp /var/lib/new && "
              "chmod 600 /tmp/x && ls -l /tmp/x")
    r = Sandbox(image=img).run(["/bin/sh", "-c", script], timeout=30)
    assert r.exit_code == 0, r.stderr
    out = r.stdout.decode()
    assert out.startswith("x\n") and "-rw-------" in out
    paths = {c.path for c in r.changes}
    assert {"tmp/x", "etc/os-release", "bin/suid", "suid2", "var/lib/new/f"} <= paths
    assert _snapshot(img.rootfs) == before
    # a failing command, a dry run: the same
    r = Sandbox(image=img).run(["/bin/sh", "-c", "echo z > /etc/z; exit 3"], timeout=30)
    assert r.exit_code == 3 and [c.path for c in r.changes] == ["etc/z"]
    d = Sandbox(image=img).dry_run(["/bin/sh", "-c", "echo z > /etc/z"], timeout=30)
    assert [c.path for c in d.changes] == ["etc/z"]
    assert _snapshot(img.rootfs) == before


def test_image_branch_actions(image_src, world_dir):
    img = pull_image(image_src["layout"], cache_dir=image_src["cache"])
    for action in ("commit", "keep", "defer"):
        with pytest.raises(PolicyError, match="on_exit.*only 'abort'"):
            Sandbox(image=img, workdir=img.rootfs, on_exit=action)
    for action in ("keep", "defer"):
        with pytest.raises(PolicyError, match="on_exit.*only 'abort'"):
            Sandbox(image=img, on_exit=action)
    with pytest.raises(PolicyError, match="on_error.*only 'abort'"):
        Sandbox(image=img, on_error="commit")
    # the default COMMIT reads as ABORT: nothing to commit into
    r = Sandbox(image=img, workdir=img.rootfs, on_exit="abort").run(
        ["/bin/sh", "-c", "echo a > /tmp/a"], timeout=30)
    assert r.exit_code == 0 and not os.path.exists(os.path.join(img.rootfs, "tmp", "a"))
    # a workdir on an fs_mount: that mount is copy-on-write, committed on success
    os.chmod(world_dir, 0o777)
    with open(os.path.join(world_dir, "old"), "w") as f:
        f.write("old\n")
    r = Sandbox(image=img, fs_mount={"/out": world_dir}, workdir=world_dir).run(
        ["/bin/sh", "-c", "echo r > /out/result; rm /out/old; ls /out; echo no > /etc/x; echo rc=$?"],
        timeout=30)
    assert r.stdout.decode().split() == ["result", "rc=1"], r.stderr
    assert sorted(c.path for c in r.changes) == ["old", "result"]
    assert os.listdir(world_dir) == ["result"]
    assert not os.path.exists(os.path.join(img.rootfs, "etc", "x"))
    with pytest.raises(PolicyError, match="workdir.*inside the fs_mount"):
        os.makedirs(os.path.join(world_dir, "sub"), exist_ok=True)
        Sandbox(image=img, fs_mount={"/out": world_dir},
                workdir=os.path.join(world_dir, "sub")).run(["/bin/true"])


def test_refusals(image_src):
    with pytest.raises(ImageError, match="remote registries are not supported"):
        pull_image("docker.io/library/alpine:3.19", cache_dir=image_src["cache"])
    img = pull_image(image_src["layout"], cache_dir=image_src["cache"])
    with pytest.raises(PolicyError, match="shared by every run"):
        Sandbox(image=img, fs_writable=["/tmp"]).run(["/bin/true"])
    with pytest.raises(PolicyError, match="give one"):
        Sandbox(image=img, chroot=img.rootfs)


def test_tampered_blob_refused(image_src, world_dir):
    import shutil
    bad = os.path.join(world_dir, "layout")
    shutil.copytree(image_src["layout"], bad)
    blobs = os.path.join(bad, "blobs", "sha256")
    biggest = max(os.listdir(blobs), key=lambda n: os.path.getsize(os.path.join(blobs, n)))
    with open(os.path.join(blobs, biggest), "r+b") as f:
        f.seek(100)
        f.write(b"tampered")
    with pytest.raises(ImageError, match="does not match its digest"):
        pull_image(bad, cache_dir=os.path.join(world_dir, "cache"))


def test_cli_image(image_src):
    import subprocess
    import sys
    env = dict(os.environ, XDG_CACHE_HOME=image_src["cache"])
    out = subprocess.run([sys.executable, "-m", "sandlock", "run", "--image", image_src["layout"], "--",
                          "/bin/sh", "-c", "pwd; cat os-release; echo x > /bin/x; echo rc=$?"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.split() == ["/etc", 'NAME="from-the-image"', "rc=0"], out.stderr
    out = subprocess.run([sys.executable, "-m", "sandlock", "run", "--dry-run", "--image",
                          image_src["layout"], "--", "/bin/sh", "-c", "echo x > /bin/x"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and "A  bin/x" in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "sandlock", "run", "--image", "alpine:3", "--", "true"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 125 and "remote registries are not supported" in out.stderr
