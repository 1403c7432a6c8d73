"""Root filesystems for the chroot tests (a plain module, shared by
tests/test_chroot.py and tests/escape/test_chroot_escape.py)."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile

from _shared import rmtree

BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), None)
SYSTEM_PYTHON = next((p for p in ("/usr/bin/python3.11", "/usr/bin/python3") if os.path.exists(p)), None)
NO_BUSYBOX = "busybox is not installed (apt-get install busybox-static)"


@contextlib.contextmanager
def scratch(prefix: str):
    """A fresh 0755 directory under /tmp (uid 65534 reaches it), removed after."""
    top = tempfile.mkdtemp(dir="/tmp", prefix=prefix)
    os.chmod(top, 0o755)
    try:
        yield top
    finally:
        rmtree(top)


@contextlib.contextmanager
def python_scratch(prefix: str):
    """scratch(), or a skip when there is no system python to copy."""
    if SYSTEM_PYTHON is None:
        import pytest
        pytest.skip("no system python3 to copy into a root")
    with scratch(prefix) as top:
        yield top


def busybox_root(top: str) -> str:
    """`top`/root: a static busybox with its applets as relative symlinks,
    /etc/os-release, a world-writable /tmp, an empty /data."""
    assert BUSYBOX is not None
    root = os.path.join(top, "root")
    for d in ("bin", "etc", "tmp", "data", "proc", "dev"):
        os.makedirs(os.path.join(root, d))
    shutil.copy(BUSYBOX, os.path.join(root, "bin", "busybox"))
    names = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        if name != "busybox":   # `--install -s` would write host paths into the links
            os.symlink("busybox", os.path.join(root, "bin", name))
    with open(os.path.join(root, "etc", "os-release"), "w") as f:
        f.write('NAME="sandlock-chroot"\nID=sandlock\n')
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    _world(top)
    return root


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    return [w for line in out.splitlines() for w in line.split() if w.startswith("/")]


def _copy_with_libraries(binary: str, root: str, as_path: str | None = None) -> None:
    dest = root + (as_path or binary)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copy(binary, dest)
    for lib in _libraries(binary):
        target = root + lib
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy(os.path.realpath(lib), target)


def python_root(top: str) -> tuple[str, dict[str, str]]:
    """`top`/root with the system python and its libraries (a dynamic
    program: it runs through the root's ld.so) and the mounts it needs:
    (root, fs_mount_ro) with the standard library mounted read-only."""
    assert SYSTEM_PYTHON is not None
    real = os.path.realpath(SYSTEM_PYTHON)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    stdlib = f"/usr/lib/{os.path.basename(real)}"
    if not os.path.isdir(stdlib):
        stdlib = f"/usr/lib/{version}"
    root = os.path.join(top, "root")
    for d in ("tmp", "etc", "data", "proc", "dev", "usr/bin", stdlib.lstrip("/")):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    _copy_with_libraries(real, root, "/usr/bin/python3")
    for ext in glob.glob(os.path.join(stdlib, "lib-dynload", "*.so")):
        for lib in _libraries(ext):
            target = root + lib
            if not os.path.exists(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy(os.path.realpath(lib), target)
    with open(os.path.join(root, "etc", "os-release"), "w") as f:
        f.write('NAME="sandlock-python"\n')
    _world(top)
    return root, {stdlib: stdlib}


def _world(top: str) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            os.chmod(p, os.stat(p).st_mode | 0o755)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o444)
