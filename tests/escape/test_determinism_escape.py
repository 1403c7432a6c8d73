"""Attacks through the deterministic-run handlers: the supervisor answers
clock, random and listing calls itself, so it must never write where the
program could not, never list what the program could not open, and never
act on a descriptor the program does not hold.

Each attack runs unconfined (the control) and confined.
"""
from __future__ import annotations

import os

import pytest
from escape_lib import X86_64, confined, unconfined

from sandlock import Sandbox

pytestmark = [pytest.mark.core,
              pytest.mark.skipif(not X86_64, reason="raw syscall numbers of x86_64")]

DETERMINISTIC = dict(random_seed=1, time_start=946684800, deterministic_dirs=True)

# A read-only page; the calls that return data into it must fail with
# EFAULT and leave it untouched (a /proc/<pid>/mem write would force it).
READ_ONLY_ANSWERS = r'''
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
page = libc.mmap(None, 4096, 1, 0x22, -1, 0)   # PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS
out = {
    "clock_gettime": sc_e(228, 0, page),
    "gettimeofday": sc_e(96, page, 0),
    "time": sc_e(201, page),
    "getrandom": sc_e(318, page, 16, 0),
    "getdents64": sc_e(217, os.open("/", os.O_RDONLY | os.O_DIRECTORY), page, 4096),
}
out["untouched"] = ctypes.string_at(page, 4096) == bytes(4096)
emit(**out)
'''


def test_answers_never_forced_into_read_only_memory(base):
    control = unconfined(READ_ONLY_ANSWERS)
    v, r = confined(Sandbox(fs_readable=[*base, "/"], **DETERMINISTIC), READ_ONLY_ANSWERS)
    for verdict in (control, v):
        assert verdict == {"clock_gettime": "EFAULT", "gettimeofday": "EFAULT", "time": "EFAULT",
                           "getrandom": "EFAULT", "getdents64": "EFAULT", "untouched": True}, (verdict, r)


LISTINGS = r'''
secret, fd_of_other = ARGS["secret"], 999
out = {"open_secret": os_e(os.open, secret, os.O_RDONLY | os.O_DIRECTORY)}
buf = ctypes.create_string_buffer(4096)
out["foreign_fd"] = sc_e(217, fd_of_other, buf, 4096)
out["not_a_dir"] = sc_e(217, os.open(ARGS["file"], os.O_RDONLY), buf, 4096)
emit(**out)
'''


def test_listing_needs_the_programs_own_directory(base, wdir):
    secret = os.path.join(wdir, "secret")
    os.mkdir(secret)
    open(os.path.join(secret, "inside"), "w").close()
    plain = os.path.join(wdir, "file")
    open(plain, "w").close()
    args = {"secret": secret, "file": plain}
    control = unconfined(LISTINGS, args)
    assert control == {"open_secret": "OK", "foreign_fd": "EBADF", "not_a_dir": "ENOTDIR"}
    sb = Sandbox(fs_readable=[*base, wdir], fs_denied=[secret], **DETERMINISTIC)
    v, r = confined(sb, LISTINGS, args)
    assert v == {"open_secret": "EACCES", "foreign_fd": "EBADF", "not_a_dir": "ENOTDIR"}, r


VDSO_ADDRESS = r'''
# PR_SET_MM would let a program point AT_SYSINFO_EHDR (which the supervisor
# reads at brk(NULL)) at memory of its choosing: refused.
out = {"set_mm_auxv": sc_e(157, 35, 12, 0, 0, 0)}   # prctl(PR_SET_MM, PR_SET_MM_AUXV)
emit(**out)
'''


def test_auxv_cannot_be_redirected(base):
    v, r = confined(Sandbox(fs_readable=base, **DETERMINISTIC), VDSO_ADDRESS)
    assert v == {"set_mm_auxv": "EPERM"}, r
