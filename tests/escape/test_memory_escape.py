"""Attacks on max_memory: getting more memory resident than the limit
without the supervisor charging it.

max_memory counts what the kernel charges (resident anonymous and shmem
pages, as cgroup memory.max does), so every attack here really makes pages
resident. Each runs unconfined first (the control: the memory is really
there), then under the limit, where the process holding it must be killed
and the run's error must say max_memory.
"""
from __future__ import annotations

import os

import pytest
from escape_lib import confined, describe, parse_verdict, py_cmd, unconfined

from sandlock import Sandbox

pytestmark = pytest.mark.core

MIB = 1 << 20

# Shared by the attacks: raw mmap/munmap/mremap/madvise through ctypes, and
# fill(addr, n), which writes every page of a range.
MM = r'''
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                        ctypes.c_void_p]
PROT_RW, MAP_SHARED, MAP_PRIVATE, MAP_ANON, MAP_NORESERVE = 3, 0x01, 0x02, 0x20, 0x4000
MIB = 1 << 20
FAILED = ctypes.c_void_p(-1).value

def mmap(n, flags, fd=-1):
    a = libc.mmap(None, n, PROT_RW, flags, fd, 0)
    if a in (None, FAILED):
        raise OSError(ctypes.get_errno(), "mmap")
    return a

def fill(addr, n):
    ctypes.memset(addr, 0x5a, n)

def resident():
    """This process's RssAnon + RssShmem, in MiB."""
    total = 0
    for line in open("/proc/self/status"):
        if line.startswith(("RssAnon:", "RssShmem:")):
            total += int(line.split()[1])
    return total // 1024

def shmem_mib():
    for line in open("/proc/meminfo"):
        if line.startswith("Shmem:"):
            return int(line.split()[1]) // 1024

print("PID", os.getpid(), flush=True)
'''


def _attack(base, limit, code, args=None, *, control=None, writable=()):
    """Run `code` unconfined (its verdict must satisfy `control`), then
    under max_memory=limit, where it must be killed before its verdict.
    Returns the sandboxed Result."""
    if control is not None:
        v = unconfined(MM + code, args, timeout=60)
        assert control(v), v
    sb = Sandbox(fs_readable=list(base) + ["/proc"] + list(writable), fs_writable=list(writable),
                 max_memory=limit)
    r = sb.run(py_cmd(MM + code, args), timeout=60)
    assert parse_verdict(r.stdout) is None, describe(r)
    assert r.signal == 9, describe(r)
    pid = r.stdout.split(b"PID ", 1)[1].split()[0].decode()
    assert "max_memory" in (r.error or "") and pid in r.error, describe(r)
    return r


# Bug 15: mremap(MREMAP_DONTUNMAP) moves the pages and leaves the old range
# mapped (empty): refilling it again and again gave 200 MiB resident under
# a 64M limit, as the old accounting charged the move nothing.
DONTUNMAP = r'''
MREMAP_MAYMOVE, MREMAP_DONTUNMAP = 1, 4
n = 40 * MIB
old = mmap(n, MAP_PRIVATE | MAP_ANON)
moved = []
for i in range(5):
    fill(old, n)
    new = libc.mremap(old, n, n, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, None)
    if new in (None, FAILED):
        raise OSError(ctypes.get_errno(), "mremap")
    moved.append(new)
fill(old, n)
emit(resident_mib=resident())
'''


def test_mremap_dontunmap_refill(base):
    _attack(base, "64M", DONTUNMAP, control=lambda v: v["resident_mib"] >= 200)


# Bug 16: pages written by fork()ed children were never charged: four
# children writing 40 MiB each held 160 MiB under 64M. They hold their
# memory together here; the parent (small) reports how many got there.
FORK_WRITE = r'''
import time
r, w = os.pipe()
kids = []
for i in range(4):
    p = os.fork()
    if p == 0:
        os.close(r)
        buf = bytearray(40 * MIB)
        for j in range(0, len(buf), 4096):
            buf[j] = 1
        os.write(w, b"x")
        time.sleep(3)  # hold it while the others fill theirs
        os._exit(0)
    kids.append(p)
os.close(w)
held = 0
while os.read(r, 1):
    held += 1
statuses = [os.waitpid(p, 0)[1] for p in kids]
emit(held=held, survived=sum(os.WIFEXITED(s) for s in statuses),
     killed=sum(os.WIFSIGNALED(s) and os.WTERMSIG(s) == 9 for s in statuses))
'''


def test_fork_children_writing_memory(base):
    assert unconfined(MM + FORK_WRITE, timeout=60) == {"held": 4, "survived": 4, "killed": 0}
    sb = Sandbox(fs_readable=list(base) + ["/proc"], max_memory="64M")
    r = sb.run(py_cmd(MM + FORK_WRITE), timeout=60)
    v = parse_verdict(r.stdout)
    assert v is not None, describe(r)  # the parent is not the one killed
    assert v["survived"] <= 1 and v["killed"] >= 3, (v, describe(r))
    assert "max_memory" in (r.error or ""), describe(r)


# Pages shared after fork() are charged once (that is what the kernel
# does)... until the children write them: each copy is then memory of its
# own. A parent fills 40 MiB (under 64M), three children rewrite all of it.
COW_BREAK = r'''
import time
buf = bytearray(40 * MIB)
for j in range(0, len(buf), 4096):
    buf[j] = 1
kids = []
for i in range(3):
    p = os.fork()
    if p == 0:
        time.sleep(0.5)  # first all share the parent's pages
        for j in range(0, len(buf), 4096):
            buf[j] = 2
        time.sleep(3)
        os._exit(0)
    kids.append(p)
statuses = [os.waitpid(p, 0)[1] for p in kids]
emit(survived=sum(os.WIFEXITED(s) for s in statuses))
'''


def test_copy_on_write_after_fork(base):
    assert unconfined(MM + COW_BREAK, timeout=60) == {"survived": 3}
    sb = Sandbox(fs_readable=list(base) + ["/proc"], max_memory="64M")
    r = sb.run(py_cmd(MM + COW_BREAK), timeout=60)
    v = parse_verdict(r.stdout)
    assert v is not None, describe(r)
    assert v["survived"] <= 1, (v, describe(r))
    assert "max_memory" in (r.error or ""), describe(r)


# Shared anonymous memory is shmem: resident in RssShmem, not RssAnon.
SHARED_ANON = r'''
a = mmap(200 * MIB, MAP_SHARED | MAP_ANON)
fill(a, 200 * MIB)
emit(resident_mib=resident())
'''


def test_shared_anonymous_fill(base):
    _attack(base, "64M", SHARED_ANON, control=lambda v: v["resident_mib"] >= 200)


# A memfd filled with write() and never mapped: its pages are charged by
# a cgroup but show in no process's RSS.
MEMFD_WRITE = r'''
fd = os.memfd_create("fill")
chunk = b"\x5a" * MIB
for i in range(200):
    os.write(fd, chunk)
emit(size_mib=os.fstat(fd).st_blocks * 512 // MIB, resident_mib=resident())
'''


def test_memfd_filled_with_write(base):
    # The control shows the memory is there and invisible in RSS.
    _attack(base, "64M", MEMFD_WRITE, control=lambda v: v["size_mib"] >= 200 and v["resident_mib"] < 64)


# The same memfd passed to a child, which keeps it while the writer closes
# its copy: whoever holds it, it is counted.
MEMFD_HANDOFF = r'''
import time
fd = os.memfd_create("fill")
if os.fork() == 0:
    time.sleep(5)
    os._exit(0)
os.ftruncate(fd, 0)
chunk = b"\x5a" * MIB
for i in range(200):
    os.write(fd, chunk)
emit(size_mib=os.fstat(fd).st_blocks * 512 // MIB)
'''


def test_memfd_held_by_another_process(base):
    _attack(base, "64M", MEMFD_HANDOFF, control=lambda v: v["size_mib"] >= 200)


# A file mapped private and written: every written page is a private
# anonymous copy, whatever the file.
PRIVATE_FILE_WRITE = r'''
fd = os.open(ARGS["file"], os.O_RDWR)
a = mmap(200 * MIB, MAP_PRIVATE, fd)
fill(a, 200 * MIB)
emit(resident_mib=resident())
'''


def test_private_file_mapping_written(base, wdir):
    path = os.path.join(wdir, "big")
    with open(path, "wb") as f:
        f.truncate(200 * MIB)
    os.chmod(path, 0o666)
    _attack(base, "64M", PRIVATE_FILE_WRITE, {"file": path},
            control=lambda v: v["resident_mib"] >= 200, writable=[wdir])


# The kernel fills memory for madvise(MADV_POPULATE_WRITE) without a page
# fault per page and without a syscall the supervisor traps: sampling must
# catch it.
POPULATE_WRITE = r'''
MADV_POPULATE_WRITE = 23
n = 1024 * MIB
a = mmap(n, MAP_PRIVATE | MAP_ANON | MAP_NORESERVE)
for off in range(0, 256 * MIB, 64 * MIB):
    if libc.madvise(a + off, 64 * MIB, MADV_POPULATE_WRITE) != 0:
        raise OSError(ctypes.get_errno(), "madvise")
emit(resident_mib=resident())
'''


def test_madvise_populate_write(base):
    _attack(base, "64M", POPULATE_WRITE, control=lambda v: v["resident_mib"] >= 256)


# A known gap (see the limits module docstring): a shared mapping filled
# piece by piece, each piece unmapped once written. The pages stay in the
# shmem object (the rest of the mapping keeps it alive) while RssShmem and
# Pss forget them, and without CAP_SYS_ADMIN (which the supervisor does not
# keep) /proc/<pid>/map_files cannot show the object's size. Strict xfail:
# whoever closes the gap sees this test pass and makes it a plain test.
SHARED_PARTLY_UNMAPPED = r'''
before = shmem_mib()
n, piece = 256 * MIB, 16 * MIB
a = mmap(n, MAP_SHARED | MAP_ANON)
for off in range(0, n - piece, piece):
    fill(a + off, piece)
    libc.munmap(a + off, piece)
emit(shmem_growth_mib=shmem_mib() - before, resident_mib=resident())
'''


@pytest.mark.xfail(strict=True, reason="pages of a shmem object no longer mapped are invisible "
                   "without cgroups or CAP_SYS_ADMIN")
def test_shared_mapping_partly_unmapped(base):
    _attack(base, "64M", SHARED_PARTLY_UNMAPPED,
            control=lambda v: v["shmem_growth_mib"] >= 150 and v["resident_mib"] < 64)


# A process that makes itself undumpable can no longer be inspected by the
# supervisor (its /proc/<pid>/fd and smaps need ptrace read access): its
# memfd would be invisible. Once the sandbox may be over the limit, a
# process that cannot be measured is killed.
UNDUMPABLE_MEMFD = r'''
PR_SET_DUMPABLE = 4
if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "prctl")
fd = os.memfd_create("fill")
chunk = b"\x5a" * MIB
for i in range(ARGS.get("mib", 200)):
    os.write(fd, chunk)
emit(size_mib=os.fstat(fd).st_blocks * 512 // MIB)
'''


def test_undumpable_process_hiding_a_memfd(base):
    _attack(base, "64M", UNDUMPABLE_MEMFD, control=lambda v: v["size_mib"] >= 200)
    # Undumpable and well under the limit, it runs (under a limit that other
    # shmem activity on the machine, e.g. tests run in parallel, does not
    # reach: that growth could be its own).
    v, r = confined(Sandbox(fs_readable=list(base) + ["/proc"], max_memory="1G"),
                    MM + UNDUMPABLE_MEMFD, {"mib": 16})
    assert v == {"size_mib": 16} and r.error is None, describe(r)
