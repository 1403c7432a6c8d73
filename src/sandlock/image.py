"""Container images as a sandbox's root: `Sandbox(image=pull_image(ref))`.

`pull_image(ref)` takes a local OCI image: an image layout directory
(`oci-layout`, `index.json`, `blobs/`) or an OCI archive (a tar of one, as
`podman save --format oci-archive` or `skopeo copy ... oci-archive:`
write), optionally prefixed `oci:` / `oci-archive:` and suffixed `:TAG`
(the `org.opencontainers.image.ref.name` annotation). Remote registries
are not supported: nothing is fetched over the network.

The layers are unpacked into a cache keyed by the manifest's digest
(`cache_dir`, default `$XDG_CACHE_HOME/sandlock/images`), once; every blob
is checked against its digest first. The image is hostile input (X6):
each entry is created inside the root through the chroot resolver (a
symlink in a layer is followed inside the root, never out of it); device
nodes and FIFOs are skipped; set-user-ID and set-group-ID bits are
dropped; whiteouts (`.wh.NAME`, `.wh..wh..opq`) remove what lower layers
added. Ownership is not kept (the files belong to whoever unpacked them).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import IO, Any, Callable

from .exceptions import PolicyError

MAX_JSON = 4 << 20
ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
          "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class ImageConfig:
    """How an image expects to be run (from its OCI config)."""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()        # "KEY=VALUE" entries
    working_dir: str | None = None

    def default_cmd(self) -> list[str]:
        """The entrypoint then the cmd; /bin/sh when the image names neither."""
        return [*self.entrypoint, *self.cmd] or ["/bin/sh"]


@dataclass(frozen=True)
class Image:
    """An unpacked image: its root filesystem and its run configuration."""
    rootfs: str
    config: ImageConfig = field(default_factory=ImageConfig)


class ImageError(PolicyError):
    """The image cannot be used: not found, malformed, unsupported."""


def pull_image(reference: str, cache_dir: str | os.PathLike | None = None) -> Image:
    """Unpack a local OCI image layout or archive (see the module's text)
    into the cache and return it; a remote reference is refused."""
    path, tag = _local_source(str(reference))
    with _Blobs.open(path) as blobs:
        manifest_digest = _pick_manifest(blobs, tag)
        manifest = _json(blobs.read(manifest_digest), "manifest")
        config = _json(blobs.read(_digest_of(manifest.get("config"), "config")), "config")
        cache = _cache_dir(cache_dir)
        key = manifest_digest.split(":", 1)[1]
        done = os.path.join(cache, key)
        if not os.path.isdir(os.path.join(done, "rootfs")):
            _unpack(blobs, manifest, cache, done)
    return Image(rootfs=os.path.join(done, "rootfs"), config=_run_config(config))


# -- where the image is -----------------------------------------------------------

def _local_source(ref: str) -> tuple[str, str | None]:
    for prefix in ("oci-archive:", "oci:"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
            break
    tag = None
    if not os.path.exists(ref) and ":" in ref:
        head, _, tail = ref.rpartition(":")
        if os.path.exists(head):
            ref, tag = head, tail
    if not os.path.exists(ref):
        raise ImageError(
            f"image: {ref!r} is not a local OCI image layout or archive; remote registries are not "
            "supported (nothing is fetched over the network): save the image first, e.g. "
            "`podman save --format oci-archive -o img.tar REF` or "
            "`skopeo copy docker://REF oci-archive:img.tar`, and pass that path")
    return os.path.abspath(ref), tag


class _Blobs:
    """The blobs of a layout directory or of an archive, checked against
    their digests when read."""

    def __init__(self, read_raw: Callable[[str], IO[bytes] | None], close: Callable[[], None]):
        self._read_raw = read_raw
        self.close = close

    @classmethod
    def open(cls, path: str) -> _Blobs:
        if os.path.isdir(path):
            def raw_dir(name: str) -> IO[bytes] | None:
                full = os.path.join(path, name)
                if os.path.islink(full) or not os.path.isfile(full):
                    return None
                return open(full, "rb")
            return cls(raw_dir, lambda: None)
        try:
            tar = tarfile.open(path, "r:*")
        except (OSError, tarfile.TarError) as e:
            raise ImageError(f"image: {path!r} is neither an OCI layout directory nor a tar archive: {e}") \
                from None
        members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}

        def raw_tar(name: str) -> IO[bytes] | None:
            m = members.get(name)
            return None if m is None else tar.extractfile(m)
        return cls(raw_tar, tar.close)

    def __enter__(self) -> _Blobs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def raw(self, name: str) -> IO[bytes]:
        f = self._read_raw(name)
        if f is None:
            raise ImageError(f"image: {name} is missing from the image")
        return f

    def verified(self, digest: str) -> IO[bytes]:
        """A temporary file with the blob's bytes, after checking its digest."""
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
            raise ImageError(f"image: unsupported or malformed digest {digest!r}")
        src = self.raw(f"blobs/sha256/{hexd}")
        out = tempfile.TemporaryFile()
        h = hashlib.sha256()
        with src:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != hexd:
            out.close()
            raise ImageError(f"image: blob {digest} does not match its digest")
        out.seek(0)
        return out

    def read(self, digest: str) -> bytes:
        with self.verified(digest) as f:
            data = f.read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise ImageError(f"image: {digest} is too large for a JSON document")
        return data


def _json(data: bytes, what: str) -> dict:
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise ImageError(f"image: the {what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ImageError(f"image: the {what} is not a JSON object")
    return doc


def _digest_of(desc, what: str) -> str:
    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
        raise ImageError(f"image: the {what} descriptor has no digest")
    return desc["digest"]


def _pick_manifest(blobs: _Blobs, tag: str | None) -> str:
    """The digest of the image manifest to run: by tag, else the only one,
    else the one for this machine (through nested indexes)."""
    with blobs.raw("index.json") as f:
        index = _json(f.read(MAX_JSON), "index.json")
    for _ in range(4):
        manifests = index.get("manifests")
        if not isinstance(manifests, list) or not manifests:
            raise ImageError("image: the index lists no manifests")
        if tag is not None:
            named = [m for m in manifests if isinstance(m, dict) and
                     (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag]
            if not named:
                raise ImageError(f"image: no manifest is tagged {tag!r}")
            manifests, tag = named, None
        arch = ARCHES.get(platform.machine(), platform.machine())
        if len(manifests) > 1:
            mine = [m for m in manifests if isinstance(m, dict) and
                    (m.get("platform") or {}).get("architecture") == arch and
                    (m.get("platform") or {}).get("os", "linux") == "linux"]
            if len(mine) != 1:
                raise ImageError(f"image: {len(manifests)} manifests and none (or several) for "
                                 f"linux/{arch}: name one with :TAG")
            manifests = mine
        desc = manifests[0]
        digest = _digest_of(desc, "manifest")
        if "index" in str(desc.get("mediaType", "")) or "manifest.list" in str(desc.get("mediaType", "")):
            index = _json(blobs.read(digest), "index")
            continue
        return digest
    raise ImageError("image: indexes nested too deep")


def _run_config(config: dict) -> ImageConfig:
    c = config.get("config") or {}
    if not isinstance(c, dict):
        c = {}

    def strs(v) -> tuple[str, ...]:
        return tuple(x for x in v if isinstance(x, str)) if isinstance(v, list) else ()
    wd = c.get("WorkingDir")
    return ImageConfig(entrypoint=strs(c.get("Entrypoint")), cmd=strs(c.get("Cmd")),
                       env=strs(c.get("Env")), working_dir=wd if isinstance(wd, str) and wd else None)


def _cache_dir(cache_dir) -> str:
    if cache_dir is not None:
        d = os.fspath(cache_dir)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "sandlock", "images")
    os.makedirs(d, mode=0o700, exist_ok=True)
    real = os.path.realpath(d)
    # An unpacked image found in the cache is run as is: a cache another
    # user can write to could hold their rootfs under a digest we pull (X6).
    st = os.stat(real)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ImageError(f"image: the cache directory {real!r} is owned by uid {st.st_uid} or "
                         "writable by others: an image unpacked there could be replaced; use a "
                         "directory of your own (chmod go-w)")
    return real


# -- unpacking ----------------------------------------------------------------------

def _unpack(blobs: _Blobs, manifest: dict, cache: str, done: str) -> None:
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise ImageError("image: the manifest lists no layers")
    work = tempfile.mkdtemp(dir=cache, prefix=".unpack-")
    try:
        root = os.path.join(work, "rootfs")
        os.mkdir(root, 0o755)
        for desc in layers:
            media = str((desc or {}).get("mediaType", "")) if isinstance(desc, dict) else ""
            if "zstd" in media:
                raise ImageError("image: zstd-compressed layers are not supported (no zstd in the "
                                 "standard library); save the image with gzip layers")
            with blobs.verified(_digest_of(desc, "layer")) as raw:
                head = raw.read(2)
                raw.seek(0)
                stream: Any = gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw
                _apply_layer(root, stream)
        try:
            os.rename(work, done)
        except OSError:
            if not os.path.isdir(os.path.join(done, "rootfs")):   # not another run's, finished first
                raise
    finally:
        if os.path.isdir(work):
            shutil.rmtree(work, ignore_errors=True)


def _apply_layer(root: str, stream: IO[bytes]) -> None:
    from . import chroot
    vr = chroot.VirtualRoot(chroot.RootSpec(root))
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for m in tar:
                _apply_member(vr, tar, m)
    except (tarfile.TarError, EOFError, zlib.error, RecursionError) as e:
        raise ImageError(f"image: a layer cannot be unpacked: {e}") from None
    finally:
        vr.close()


def _apply_member(vr, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
    names = [p for p in m.name.split("/") if p not in ("", ".")]
    if not names or ".." in names:
        return   # the root itself, or a name that would leave it: ignored
    parent_path = os.fsencode("/" + "/".join(names[:-1]))
    name = os.fsencode(names[-1])
    try:
        parts, st = vr.walk([], parent_path, True)
    except OSError:
        return   # its directory is not there (or is not one): skipped
    if st is None or not stat.S_ISDIR(st.st_mode):
        return
    pfd = vr.open(parts, os.O_PATH | os.O_DIRECTORY)
    try:
        if name.startswith(b".wh."):
            if name == b".wh..wh..opq":
                for entry in os.listdir(pfd):
                    _remove(pfd, os.fsencode(entry))
            elif name[4:] not in (b".", b".."):   # `.wh..` would remove the directory itself or its parent
                _remove(pfd, name[4:])
            return
        old = _lstat_at(pfd, name)
        if m.isdir():
            if old is not None and not stat.S_ISDIR(old.st_mode):
                _remove(pfd, name)
                old = None
            if old is None:
                os.mkdir(name, 0o700, dir_fd=pfd)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=pfd)
            try:
                os.fchmod(fd, (m.mode & 0o1777) | 0o700)
            finally:
                os.close(fd)
            return
        if old is not None:
            _remove(pfd, name)
        if m.issym():
            os.symlink(m.linkname, name, dir_fd=pfd)   # verbatim: followed inside the root only
        elif m.islnk():
            target = os.fsencode("/" + m.linkname.lstrip("/"))
            try:
                tparts, tst = vr.walk([], target, False)
            except OSError:
                return
            if tst is None or stat.S_ISDIR(tst.st_mode):
                return
            tfd = vr.open(tparts[:-1], os.O_PATH | os.O_DIRECTORY)
            try:
                os.link(tparts[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(tfd)
        elif m.isreg():
            src = tar.extractfile(m)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=pfd)
            try:
                if src is not None:
                    shutil.copyfileobj(src, io.FileIO(fd, "w", closefd=False), 1 << 20)
                # no set-user-ID / set-group-ID in a cache on the host
                os.fchmod(fd, m.mode & 0o1777)
            finally:
                os.close(fd)
        # devices, FIFOs: never made (A7)
    finally:
        os.close(pfd)


def _lstat_at(pfd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(pfd: int, name: bytes) -> None:
    """Remove `name` in directory `pfd` (a tree: depth-first, never
    following a symlink)."""
    st = _lstat_at(pfd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=pfd)
        return
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=pfd)
    try:
        os.fchmod(fd, 0o700)
        for entry in os.listdir(fd):
            _remove(fd, os.fsencode(entry))
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=pfd)
