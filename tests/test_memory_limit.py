"""max_memory counts the memory the kernel charges, never address space.

Real sandboxed programs in both directions: what reserves a lot but uses
little runs; what really uses more than the limit is killed, with a note in
Result.error naming max_memory and the process. The attack side (memory
hidden from the accounting) lives in tests/escape/test_memory_escape.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from sandlock import Sandbox

pytestmark = pytest.mark.core

MIB = 1 << 20

PRELUDE = r'''
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MIB = 1 << 20
MAP_NORESERVE, MAP_POPULATE = 0x4000, 0x8000
FAILED = ctypes.c_void_p(-1).value
def anon(n, flags=0, prot=3):
    a = libc.mmap(None, n, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flags, -1, 0)
    if a in (None, FAILED):
        raise OSError(ctypes.get_errno(), "mmap")
    return a
def touch(n):
    """n MiB really written, page by page."""
    b = bytearray(n * MIB)
    for i in range(0, len(b), 4096):
        b[i] = 1
    return b
print("PID", os.getpid(), flush=True)
'''


def run(base, code, limit, *, extra=(), timeout=60):
    sb = Sandbox(fs_readable=list(base) + ["/proc"], max_memory=limit)
    return sb.run([sys.executable, "-I", "-S", "-c", PRELUDE + code, *extra], timeout=timeout)


def unconfined(code, *extra):
    return subprocess.run([sys.executable, "-I", "-S", "-c", PRELUDE + code, *extra],
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


def show(r) -> str:
    return f"reason={r.reason!r} signal={r.signal} error={r.error!r}\nstdout={r.stdout[-500:]!r}\n" \
           f"stderr={r.stderr[-1500:]!r}"


def assert_killed_for_memory(r):
    """Killed by SIGKILL, and the note names max_memory and the process."""
    assert r.signal == 9, show(r)
    pid = r.stdout.split(b"PID ", 1)[1].split()[0].decode()
    assert "max_memory" in (r.error or "") and pid in r.error, show(r)


# Bug 6: a reservation is not use. 1 GiB of address space, one page written.
NORESERVE = r'''
a = anon(1024 * MIB, MAP_NORESERVE)
ctypes.memset(a, 1, 4096)
b = anon(1024 * MIB)            # without MAP_NORESERVE: still only a reservation
ctypes.memset(b + 512 * MIB, 1, 4096)
print("ok", flush=True)
'''


def test_reserved_address_space_is_not_charged(base_readable):
    r = run(base_readable, NORESERVE, "128M")
    assert r.stdout.endswith(b"ok\n") and r.exit_code == 0 and r.error is None, show(r)


WRITE = r'''
keep = touch(int(sys.argv[1]))
print("survived", flush=True)
'''


def test_memory_really_written_past_the_limit_is_killed(base_readable):
    assert unconfined(WRITE, "200").stdout.endswith(b"survived\n")
    r = run(base_readable, WRITE, "64M", extra=["200"])
    assert b"survived" not in r.stdout
    assert_killed_for_memory(r)
    # The same program under the limit runs.
    r = run(base_readable, WRITE, "64M", extra=["16"])
    assert r.stdout.endswith(b"survived\n") and r.error is None, show(r)


# The kernel fills a MAP_POPULATE mapping before mmap returns: that request
# is charged up front, so the process making it dies before any of it is
# resident (its peak RSS stays under the limit; sampling alone would only
# stop it past the limit).
POPULATE = r'''
pid = os.fork()
if pid == 0:
    a = anon(int(sys.argv[1]) * MIB, MAP_POPULATE)
    print("survived", flush=True)
    os._exit(0)
_, status, usage = os.wait4(pid, 0)
print("child", os.WTERMSIG(status) if os.WIFSIGNALED(status) else "exited", usage.ru_maxrss // 1024,
      flush=True)
'''


def test_a_populated_mapping_is_charged_before_it_is_filled(base_readable):
    assert b"survived" in unconfined(POPULATE, "200").stdout
    r = run(base_readable, POPULATE, "64M", extra=["200"])
    assert b"survived" not in r.stdout, show(r)
    words = r.stdout.split(b"child ", 1)[1].split()
    assert words[0] == b"9" and int(words[1]) < 64, show(r)
    assert "max_memory" in (r.error or ""), show(r)
    r = run(base_readable, POPULATE, "64M", extra=["16"])
    assert b"survived" in r.stdout and b"child exited" in r.stdout and r.error is None, show(r)


# Memory given back is credited: cycles of allocate/free, each well under
# the limit, add up to far more than it and never trip it.
CYCLES = r'''
for i in range(8):
    b = touch(40)                 # the heap (a large malloc is an mmap)
    del b
    a = anon(40 * MIB)            # a mapping written, then unmapped
    ctypes.memset(a, 1, 40 * MIB)
    libc.munmap(a, 40 * MIB)
    pid = os.fork()               # a process that exits
    if pid == 0:
        touch(40)
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
print("done", flush=True)
'''


def test_freed_memory_is_credited(base_readable):
    r = run(base_readable, CYCLES, "64M")
    assert r.stdout.endswith(b"done\n") and r.exit_code == 0 and r.error is None, show(r)


# Pages shared after fork() are charged once, as the kernel charges them:
# four children reading their parent's 30 MiB do not count 150 MiB.
FORK_SHARE = r'''
import time
b = touch(30)
kids = []
for i in range(4):
    p = os.fork()
    if p == 0:
        total = sum(b[j] for j in range(0, len(b), 4096))
        time.sleep(1)
        os._exit(0 if total == len(b) // 4096 else 1)
    kids.append(p)
print("children", [os.waitpid(p, 0)[1] for p in kids], flush=True)
'''


def test_pages_shared_after_fork_count_once(base_readable):
    r = run(base_readable, FORK_SHARE, "64M")
    assert r.stdout.endswith(b"children [0, 0, 0, 0]\n") and r.error is None, show(r)


# An ordinary Python workload (a few tens of MiB of objects, a subprocess)
# under a modest limit.
PYTHON_WORK = r'''
import json, subprocess
data = [{"i": i, "s": str(i) * 3} for i in range(100000)]
text = json.dumps(data)
assert json.loads(text)[-1]["i"] == 99999
out = subprocess.run([sys.executable, "-I", "-S", "-c", "print(6 * 7)"], capture_output=True)
print("ok", len(text), out.stdout.decode().strip(), flush=True)
'''


def test_an_ordinary_python_program_runs(base_readable):
    r = run(base_readable, PYTHON_WORK, "96M")
    assert r.stdout.startswith(b"PID") and r.stdout.endswith(b" 42\n") and r.error is None, show(r)


# A memfd both held open and mapped is counted once.
MEMFD_MAPPED = r'''
fd = os.memfd_create("buf")
os.ftruncate(fd, 40 * MIB)
m = mmap.mmap(fd, 40 * MIB)
for i in range(0, 40 * MIB, 4096):
    m[i] = 1
other = touch(8)
print("ok", flush=True)
'''


def test_a_memfd_held_and_mapped_counts_once(base_readable):
    r = run(base_readable, MEMFD_MAPPED, "64M")
    assert r.stdout.endswith(b"ok\n") and r.error is None, show(r)


# A vfork child shares its parent's mm (until it execs): the same pages, not
# twice as many. posix_spawn and Python's subprocess do this on every spawn;
# here the child lingers so that measurements see it.
VFORK_C = r'''
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    size_t n = (size_t)atoi(argv[1]) << 20;
    char *p = malloc(n);
    memset(p, 1, n);
    pid_t c = vfork();
    if (c == 0) {
        usleep(1500000);
        _exit(0);
    }
    int st;
    waitpid(c, &st, 0);
    printf("ok %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return 0;
}
'''


@pytest.fixture(scope="module")
def vfork_binary():
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler")
    d = tempfile.mkdtemp(dir="/tmp", prefix="sl-mem-")
    os.chmod(d, 0o755)
    src, out = os.path.join(d, "vfork.c"), os.path.join(d, "vfork")
    with open(src, "w") as f:
        f.write(VFORK_C)
    p = subprocess.run([compiler, "-O0", "-o", out, src], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot compile: {p.stderr[:300]!r}")
    os.chmod(out, 0o755)
    yield out
    shutil.rmtree(d, ignore_errors=True)


def test_a_vfork_child_is_not_counted_twice(base_readable, vfork_binary):
    d = os.path.dirname(vfork_binary)
    sb = Sandbox(fs_readable=list(base_readable) + ["/proc", d], max_memory="96M")
    r = sb.run([vfork_binary, "60"], timeout=60)
    assert r.stdout == b"ok 0\n" and r.error is None, show(r)
    # The other direction: 100 MiB really written is over.
    r = sb.run([vfork_binary, "100"], timeout=60)
    assert r.signal == 9 and "max_memory" in (r.error or ""), show(r)


NODE = r'''
const cp = require("child_process");
const a = [];
for (let i = 0; i < 200000; i++) a.push({i, s: String(i)});
const out = cp.execFileSync("node", ["-e", "console.log(6 * 7)"]).toString().trim();
console.log("ok", a.length, out);
'''


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_runs_under_100M(base_readable):
    # Node reserves gigabytes of address space (its heap cage) and uses tens
    # of MiB: the reference runs it under 100M.
    node = shutil.which("node")
    sb = Sandbox(fs_readable=list(base_readable) + ["/proc"], max_memory="100M")
    r = sb.run([node, "-e", NODE], timeout=60)
    assert r.stdout == b"ok 200000 42\n" and r.exit_code == 0 and r.error is None, show(r)
    # The other direction: node really using ~370 MiB is killed.
    big = "const a = []; for (let i = 0; i < 5e6; i++) a.push({i}); console.log(a.length);"
    assert subprocess.run([node, "-e", big], capture_output=True, timeout=60).stdout == b"5000000\n"
    r = sb.run([node, "-e", big], timeout=60)
    assert r.signal == 9 and b"5000000" not in r.stdout and "max_memory" in (r.error or ""), show(r)
