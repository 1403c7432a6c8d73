"""Helpers of the escape suite (fixtures are in conftest.py).

Every test here runs an attack program twice: once unconfined (a plain
subprocess, the control) and once inside a sandbox, and asserts on both, so
a pass proves the sandbox and not a broken attack.

Attack programs are Python snippets run with ``sys.executable -I -S -c``;
the PRELUDE below gives them a raw ``syscall()`` wrapper, errno naming and
``emit(**verdict)``, which prints one machine-readable line. Arguments reach
the snippet as one JSON document in ``argv[1]`` (available as ``ARGS``).

The suite must pass as root and as an unprivileged user (CI re-runs it as
uid 65534 from a world-readable copy of the repo), so every file a test
needs lives under a fresh world-accessible directory below /tmp, never under
pytest's private /tmp/pytest-of-<user>.

(A module of its own, not conftest.py: tests/ has a conftest.py too, and
``import conftest`` would be ambiguous.)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass

import pytest
from _shared import rmtree as _rmtree  # noqa: F401  (used by conftest.py)

from sandlock import Result, Sandbox

IS_ROOT = os.geteuid() == 0
MACHINE = os.uname().machine
X86_64 = MACHINE in ("x86_64", "amd64")

PRELUDE = r'''
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def _arg(a):
    return ctypes.c_long(a) if isinstance(a, int) else a

def sc(nr, *args):
    """Raw syscall: (return value, errno or 0)."""
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[_arg(a) for a in args])
    return r, (ctypes.get_errno() if r == -1 else 0)

def ename(e):
    return "OK" if e == 0 else errno.errorcode.get(e, str(e))

def sc_e(nr, *args):
    return ename(sc(nr, *args)[1])

def os_e(fn, *a, **kw):
    """Call fn; "OK" or the errno name of the OSError it raised."""
    try:
        fn(*a, **kw)
    except OSError as e:
        return ename(e.errno)
    return "OK"

def rd(path):
    """"READ:<content>" or the errno name."""
    try:
        with open(path, "rb") as f:
            return "READ:" + f.read().decode(errors="replace")
    except OSError as e:
        return ename(e.errno)

def emit(**kw):
    sys.stdout.write("VERDICT " + json.dumps(kw) + "\n")
    sys.stdout.flush()

ARGS = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
'''


def py_cmd(code: str, args: dict | None = None) -> list[str]:
    """argv running the attack snippet `code` (after the PRELUDE)."""
    return [sys.executable, "-I", "-S", "-c", PRELUDE + textwrap.dedent(code),
            json.dumps(args or {})]


def parse_verdict(out: bytes) -> dict | None:
    for line in reversed(out.decode(errors="replace").splitlines()):
        if line.startswith("VERDICT "):
            return json.loads(line[len("VERDICT "):])
    return None


def describe(r) -> str:
    if isinstance(r, Result):
        return (f"reason={r.reason!r} exit={r.exit_code} signal={r.signal} error={r.error!r}\n"
                f"stdout={r.stdout[-2000:]!r}\nstderr={r.stderr[-2000:]!r}")
    return f"rc={r.returncode}\nstdout={r.stdout[-2000:]!r}\nstderr={r.stderr[-2000:]!r}"


def unconfined(code: str, args: dict | None = None, *, timeout: float = 30, **kw) -> dict:
    """Run the snippet as a plain subprocess (own session, no tty, stdin
    /dev/null unless given) and return its verdict."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("start_new_session", True)
    p = subprocess.run(py_cmd(code, args), capture_output=True, timeout=timeout, **kw)
    v = parse_verdict(p.stdout)
    if v is None:
        pytest.fail(f"unconfined control gave no verdict\n{describe(p)}")
    return v


def confined(sb: Sandbox, code: str, args: dict | None = None, *,
             timeout: float = 30) -> tuple[dict, Result]:
    """Run the snippet in `sb` and return (verdict, Result)."""
    r = sb.run(py_cmd(code, args), timeout=timeout)
    v = parse_verdict(r.stdout)
    if v is None:
        pytest.fail(f"sandboxed attack gave no verdict\n{describe(r)}")
    return v, r


def readable_base() -> list[str]:
    """System paths plus the interpreter's prefixes: enough to run
    sys.executable with ctypes."""
    paths = ["/usr", "/lib", "/lib64", "/bin", "/etc", sys.prefix, sys.base_prefix,
             os.path.dirname(os.path.realpath(sys.executable))]
    out: list[str] = []
    for p in paths:
        if os.path.exists(p) and p not in out:
            out.append(p)
    return out



def _world_dir(prefix: str) -> str:
    d = tempfile.mkdtemp(dir="/tmp", prefix=prefix)
    os.chmod(d, 0o755)
    return d






# -- filesystem layout -----------------------------------------------------

MARKER = "TOP-SECRET-7f3a9c"
PUBLIC = "public-content-1b2c"


@dataclass
class Layout:
    """root/
         d/          the data dir D (readable, or writable in mode "rw")
           secret    fs_denied; contains MARKER
           pub.txt   readable; contains PUBLIC
           sub/      a subdirectory
           link_pre  symlink -> secret, created before the sandbox starts
         w/          writable
         ro/         readable only (with ro/file.txt)
    """
    root: str
    d: str
    secret: str
    pub: str
    sub: str
    link_pre: str
    w: str
    ro: str
    mode: str

    @property
    def target(self) -> str:
        """Where an attacker can create entries: W, or D/sub in rw mode."""
        return self.sub if self.mode == "rw" else self.w

    def sandbox(self, base: list[str], **kw) -> Sandbox:
        readable = list(base) + [self.ro, "/proc"]
        writable = [self.w]
        if self.mode == "rw":
            writable.append(self.d)
        else:
            readable.append(self.d)
        return Sandbox(fs_readable=readable, fs_writable=writable,
                       fs_denied=[self.secret], **kw)

    def args(self, **extra) -> dict:
        a = dict(root=self.root, d=self.d, secret=self.secret, pub=self.pub, sub=self.sub,
                 link_pre=self.link_pre, w=self.w, ro=self.ro, target=self.target,
                 marker=MARKER, public=PUBLIC)
        a.update(extra)
        return a



# -- processes ---------------------------------------------------------------

def is_dead(pid: int) -> bool:
    """True when `pid` is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat[stat.rindex(b")") + 2:][:1] in (b"Z", b"X")


def wait_dead(pids, timeout: float = 2.0) -> list[int]:
    """Poll until every pid is dead; return the ones still alive."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if not is_dead(p)]
        if alive:
            time.sleep(0.02)
    return [p for p in alive if not is_dead(p)]


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def kill_if(pid: int, needle: bytes) -> None:
    """Cleanup: SIGKILL `pid` if it is alive and its cmdline holds `needle`
    (guards against killing a recycled pid)."""
    if not is_dead(pid) and needle in cmdline(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def read_pids(path: str, n: int, timeout: float = 5.0) -> list[int]:
    """Wait until `path` holds `n` pid lines; return them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                lines = [ln for ln in f.read().split() if ln.strip()]
            if len(lines) >= n:
                return [int(x) for x in lines[:n]]
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    pytest.fail(f"{path}: expected {n} pids within {timeout}s")

