"""Red-team attacks on local OCI image unpacking (hostile layers).

A whiteout names the entry it removes: `.wh..` named the directory itself
and `a/.wh...` its parent, so a layer could delete what lower layers put
in the parent directory (at the top, the whole rootfs) and the unpack then
failed with a bare OSError ("Directory not empty: '..'") instead of an
image error. Hard links to host paths (absolute, `..`, through a planted
symlink) and files through a symlink must land nowhere on the host.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

from sandlock import pull_image


def _blob(layout: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest


def _layer(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, data, link in entries:
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname, ti.mode = kind, link, 0o755 if kind == tarfile.DIRTYPE else 0o644
            ti.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return gzip.compress(buf.getvalue())


def _layout(top: str, layers: list[bytes]) -> str:
    layout = os.path.join(top, "layout")
    os.makedirs(layout)
    descs = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _blob(layout, d),
              "size": len(d)} for d in layers]
    config = json.dumps({"config": {}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": _blob(layout, config)},
                           "layers": descs}).encode()
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": _blob(layout, manifest)}]}, f)
    return layout


def test_hostile_whiteouts_and_links(wdir):
    host = os.path.join(wdir, "host")
    os.makedirs(host)
    with open(os.path.join(host, "secret"), "w") as f:
        f.write("SECRET")
    reg, d, lnk, sym = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE
    base = _layer([("a", d, b"", ""), ("a/keep", reg, b"k", ""), ("top", reg, b"t", "")])
    evil = _layer([
        ("a/.wh...", reg, b"", ""),   # whiteout of `..`: the root itself
        (".wh..", reg, b"", ""),      # whiteout of `.`
        ("hl_abs", lnk, b"", os.path.join(host, "secret")),
        ("hl_up", lnk, b"", "../../../../../../.." + os.path.join(host, "secret")),
        ("lnk", sym, b"", host),
        ("hl_through", lnk, b"", "lnk/secret"),
        ("lnk/planted", reg, b"escaped", ""),
        ("../../planted2", reg, b"escaped", ""),
    ])
    # control: extracting the same layer with a naive extractor does reach the host
    naive = os.path.join(wdir, "naive")
    os.makedirs(naive)
    os.symlink(host, os.path.join(naive, "lnk"))
    with open(os.path.join(naive, "lnk", "planted"), "w") as f:   # what `lnk/planted` would do
        f.write("escaped")
    assert os.path.exists(os.path.join(host, "planted"))
    os.unlink(os.path.join(host, "planted"))

    img = pull_image(_layout(wdir, [base, evil]), cache_dir=os.path.join(wdir, "cache"))
    root = img.rootfs
    with open(os.path.join(root, "a", "keep")) as f:   # lower layers' files survive
        assert f.read() == "k"
    with open(os.path.join(root, "top")) as f:
        assert f.read() == "t"
    for name in ("hl_abs", "hl_up", "hl_through"):
        assert not os.path.lexists(os.path.join(root, name)), name
    assert sorted(os.listdir(host)) == ["secret"]
    assert sorted(os.listdir(wdir)) == ["cache", "host", "layout", "naive"]
    cache = os.listdir(os.path.join(wdir, "cache"))
    assert len(cache) == 1 and not cache[0].startswith(".unpack-")


def test_a_cache_others_can_write_is_refused(wdir):
    # Another local user who can write the cache plants a rootfs under the
    # digest the victim will pull; pull_image used to run it as is.
    import pytest
    from sandlock.image import ImageError
    layout = _layout(os.path.join(wdir, "img"), [_layer([("bin", tarfile.DIRTYPE, b"", ""),
                                                        ("bin/tool", tarfile.REGTYPE, b"good", "")])])
    shared = os.path.join(wdir, "shared-cache")
    os.makedirs(shared)
    os.chmod(shared, 0o777)
    good = pull_image(layout, cache_dir=os.path.join(wdir, "own-cache"))
    digest = os.path.basename(os.path.dirname(good.rootfs))
    planted = os.path.join(shared, digest, "rootfs", "bin")
    os.makedirs(planted)
    with open(os.path.join(planted, "tool"), "w") as f:
        f.write("evil")
    # control: the planted entry is what a cache lookup by digest finds
    with open(os.path.join(shared, digest, "rootfs", "bin", "tool")) as f:
        assert f.read() == "evil"
    with pytest.raises(ImageError, match="writable by others"):
        pull_image(layout, cache_dir=shared)
    with open(os.path.join(good.rootfs, "bin", "tool")) as f:
        assert f.read() == "good"
