"""Attacks on the supervisor's decisions: TOCTOU rewrites, fork storms,
memory laundering, reaching the supervisor itself.

Each attack also runs unconfined (or with the protection off) to show it
works there, so a pass proves the sandbox.
"""
from __future__ import annotations

import os
import subprocess

from escape_lib import confined, unconfined

from sandlock import Sandbox

# Thread B flips a path buffer between a harmless path and a foreign
# process's /proc entry while thread A keeps opening whatever it holds.
TOCTOU_PROC = r'''
import threading, ctypes
target = ARGS["target"].encode()
harmless = b"/proc/self/status".ljust(len(target), b"\0")
buf = ctypes.create_string_buffer(max(len(target), len(harmless)) + 1)
stop = False
def flip():
    while not stop:
        ctypes.memmove(buf, target, len(target) + 1)
        ctypes.memmove(buf, harmless, len(harmless))
t = threading.Thread(target=flip); t.start()
hits = 0
for i in range(3000):
    fd = libc.open(buf, 0)
    if fd >= 0:
        data = os.read(fd, 4096)
        os.close(fd)
        if ARGS["marker"].encode() in data:
            hits += 1
stop = True; t.join()
emit(hits=hits, direct=rd(ARGS["target"])[:4])
'''


def test_toctou_path_rewrite_cannot_reach_foreign_proc(base):
    outside = subprocess.Popen(["sleep", "30"])
    try:
        target = f"/proc/{outside.pid}/cmdline"
        args = {"target": target, "marker": "sleep"}
        # Unconfined the target reads directly (the race itself may or may
        # not land there: it has no reason to).
        assert unconfined(TOCTOU_PROC, args)["direct"] == "READ"
        v, r = confined(Sandbox(fs_readable=base + ["/proc"]), TOCTOU_PROC, args, timeout=60)
        assert v["hits"] == 0 and v["direct"] != "READ", r
    finally:
        outside.kill()
        outside.wait()


FORK_STORM = r'''
import time
kids = []
for i in range(ARGS["n"]):
    try:
        p = os.fork()
    except OSError:
        break
    if p == 0:
        time.sleep(3); os._exit(0)
    kids.append(p)
emit(forked=len(kids))
for p in kids:
    os.kill(p, 9)
'''


def test_fork_storm_is_held_at_the_limit(base):
    args = {"n": 120}
    assert unconfined(FORK_STORM, args)["forked"] == 120
    v, _ = confined(Sandbox(fs_readable=base, max_processes=16), FORK_STORM, args)
    assert v["forked"] == 15  # the main process is the 16th


LAUNDER = r'''
import mmap
f = open(ARGS["file"], "r+b")
for i in range(30):
    m = mmap.mmap(f.fileno(), 0)
    m[0:1] = b"x"
    m.close()
keep = []
for i in range(48):
    keep.append(bytearray(8 << 20))
emit(allocated_mib=8 * len(keep))
'''


def test_memory_laundering_through_file_mappings(base, wdir):
    path = os.path.join(wdir, "big")
    with open(path, "wb") as f:
        f.truncate(96 << 20)
    os.chmod(path, 0o666)
    args = {"file": path}
    assert unconfined(LAUNDER, args)["allocated_mib"] == 384
    sb = Sandbox(fs_readable=base + [wdir], fs_writable=[wdir], max_memory="128M")
    r = sb.run(__import__("escape_lib").py_cmd(LAUNDER, args), timeout=60)
    assert b"VERDICT" not in r.stdout
    assert r.signal == 9 and "max_memory" in (r.error or "")


REACH_PARENT = r'''
import signal
ppid = os.getppid()
r1 = os_e(os.kill, ppid, 0)
pidfd_open, pidfd_getfd = 434, 438
fd, e = sc(pidfd_open, ppid, 0)
r2 = ename(e) if fd < 0 else sc_e(pidfd_getfd, fd, 0, 0)
r3 = rd("/proc/%d/cmdline" % ppid) if os.path.exists("/proc/self") else "ENOENT"
emit(kill=r1, getfd=r2, proc=r3 if not r3.startswith("READ:") else "READ")
'''


def test_cannot_touch_the_supervisor(base):
    v = unconfined(REACH_PARENT)
    assert v["kill"] == "OK" and v["getfd"] == "OK"
    v, _ = confined(Sandbox(fs_readable=base + ["/proc"]), REACH_PARENT)
    assert v["kill"] == "EPERM"
    # pidfd_open of a process outside the sandbox: ESRCH (it does not exist
    # for the sandbox); were it to succeed, pidfd_getfd would be refused.
    assert v["getfd"] in ("ESRCH", "EPERM", "EACCES")
    assert v["proc"] == "ENOENT"
