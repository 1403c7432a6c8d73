"""Fixtures of the escape suite; the helpers live in escape_lib.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import textwrap

import pytest

from escape_lib import MARKER, PUBLIC, Layout, _rmtree, _world_dir, readable_base


@pytest.fixture(scope="session")
def base() -> list[str]:
    return readable_base()


@pytest.fixture
def wdir():
    """A fresh world-accessible (0755) directory under /tmp."""
    d = _world_dir("sl-escape-")
    yield d
    _rmtree(d)


@pytest.fixture(scope="session")
def session_dir():
    d = _world_dir("sl-escape-s-")
    yield d
    _rmtree(d)


@pytest.fixture
def make_layout(wdir):
    """Factory: a fresh Layout (mode "ro" or "rw") per call, so the control
    and the sandboxed run never share state."""
    count = [0]

    def make(mode: str = "ro") -> Layout:
        count[0] += 1
        root = os.path.join(wdir, f"l{count[0]}")
        d, w, ro = (os.path.join(root, x) for x in ("d", "w", "ro"))
        sub = os.path.join(d, "sub")
        for x in (root, d, w, ro, sub):
            os.mkdir(x)
            os.chmod(x, 0o755)
        secret, pub = os.path.join(d, "secret"), os.path.join(d, "pub.txt")
        for path, text in ((secret, MARKER), (pub, PUBLIC), (os.path.join(ro, "file.txt"), PUBLIC)):
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o644)
        link_pre = os.path.join(d, "link_pre")
        os.symlink(secret, link_pre)
        return Layout(root, d, secret, pub, sub, link_pre, w, ro, mode)

    return make


@pytest.fixture(scope="session")
def cc(session_dir):
    """Compile a C program into the session dir; returns a function
    (name, source) -> path of the binary. Skips without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler (cc) available")

    def build(name: str, source: str) -> str:
        src = os.path.join(session_dir, name + ".c")
        out = os.path.join(session_dir, name)
        if not os.path.exists(out):
            with open(src, "w") as f:
                f.write(textwrap.dedent(source))
            p = subprocess.run([compiler, "-O0", "-o", out, src], capture_output=True)
            if p.returncode != 0:
                pytest.skip(f"cannot compile {name}: {p.stderr.decode(errors='replace')[:500]}")
            os.chmod(out, 0o755)
        return out

    return build
