"""Syscall-level escapes: the default blocklist, argument filters (clone
flags, ioctl, personality, prctl, seccomp, socket), clone3, foreign-arch and
x32 entry points, ptrace.

Where the sandbox's dropped capabilities would make a call fail with EPERM
anyway, a "probe" variant passes arguments the kernel rejects with another
errno *before* any permission check: unconfined the probe fails with that
errno, in the sandbox only the seccomp filter can turn it into EPERM.
"""
from __future__ import annotations

import os
import select
import socket
import subprocess

import pytest

from escape_lib import IS_ROOT, X86_64, confined, describe, parse_verdict, py_cmd, unconfined
from sandlock import ExitReason, Sandbox
from sandlock._kernel.syscalls import table
from sandlock.policy.syscall_groups import default_denied

SIGSYS = 31


def _sysctl(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


# 10. the default blocklist --------------------------------------------------------------

CALL_ALL = '''
emit(**{name: sc_e(nr, *args) for name, (nr, args) in ARGS["calls"].items()})
'''

# Every argument -1 fails early and harmlessly in an unconfined kernel; the
# SysV *get calls would create an object with key -1 and IPC_CREAT set, so
# they look up a key that does not exist instead.
_IPC_GET = {"msgget": [0x5A17C0DE, 0], "semget": [0x5A17C0DE, 0, 0],
            "shmget": [0x5A17C0DE, 0, 0]}


def _blocklist_calls() -> dict:
    t = table()
    names = [n for n in default_denied() if n in t.syscalls and n != "personality"]
    return {n: (t.syscalls[n], _IPC_GET.get(n, [-1] * 6)) for n in names}


def test_default_blocklist_returns_eperm(base):
    calls = _blocklist_calls()
    assert len(calls) > 40
    # control in a new session without a tty (vhangup is then a no-op)
    c = unconfined(CALL_ALL, {"calls": calls})
    assert set(c) == set(calls)
    differing = sorted(n for n, e in c.items() if e != "EPERM")
    assert differing, f"every blocklisted call gave EPERM unconfined too: {c}"

    v, _ = confined(Sandbox(fs_readable=base), CALL_ALL, {"calls": calls})
    assert v == {n: "EPERM" for n in calls}, {n: e for n, e in v.items() if e != "EPERM"}


def test_sysv_ipc_group_can_be_allowed(base):
    """The allowed direction of the blocklist: extra_allow_syscalls lifts a group."""
    t = table()
    calls = {n: (t.syscalls[n], _IPC_GET[n]) for n in _IPC_GET if n in t.syscalls}
    if not calls:
        pytest.skip("no SysV IPC syscalls on this architecture")
    v, _ = confined(Sandbox(fs_readable=base), CALL_ALL, {"calls": calls})
    assert v == {n: "EPERM" for n in calls}
    v, _ = confined(Sandbox(fs_readable=base, extra_allow_syscalls=["sysv_ipc"]),
                    CALL_ALL, {"calls": calls})
    assert v == {n: "ENOENT" for n in calls}


# 11. namespaces ---------------------------------------------------------------------------

NS_FLAGS = {"newns": 0x00020000, "newcgroup": 0x02000000, "newuts": 0x04000000,
            "newipc": 0x08000000, "newuser": 0x10000000, "newpid": 0x20000000,
            "newnet": 0x40000000}

CLONE_NS = '''
SIGCHLD, CLONE_THREAD = 17, 0x10000
nr_clone, nr_unshare = ARGS["nr_clone"], ARGS["nr_unshare"]
res = {}
for name, flag in ARGS["flags"].items():
    # probe: CLONE_THREAD without CLONE_SIGHAND is EINVAL before any other check
    res[name + "_probe"] = sc_e(nr_clone, flag | CLONE_THREAD, 0, 0, 0, 0)
    r, e = sc(nr_clone, flag | SIGCHLD, 0, 0, 0, 0)
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
    res[name] = ename(e)
pid = os.fork()
if pid == 0:
    os._exit(7)
res["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
res["unshare0"] = sc_e(nr_unshare, 0)
res["unshare_newns"] = sc_e(nr_unshare, 0x00020000)
res["unshare_newuser"] = sc_e(nr_unshare, 0x10000000)
emit(**res)
'''


def test_clone_namespace_flags_and_unshare(base):
    t = table()
    args = dict(nr_clone=t.number("clone"), nr_unshare=t.number("unshare"), flags=NS_FLAGS)
    c = unconfined(CLONE_NS, args)
    for name in NS_FLAGS:
        assert c[name + "_probe"] == "EINVAL", c
        if IS_ROOT:
            assert c[name] == "OK", c
    assert c["fork"] == 7 and c["unshare0"] == "OK", c
    if IS_ROOT:
        assert c["unshare_newns"] == "OK" and c["unshare_newuser"] == "OK", c

    v, _ = confined(Sandbox(fs_readable=base), CLONE_NS, args)
    want = {k: "EPERM" for name in NS_FLAGS for k in (name, name + "_probe")}
    want.update(fork=7, unshare0="EPERM", unshare_newns="EPERM", unshare_newuser="EPERM")
    assert v == want


# 12. clone3 ---------------------------------------------------------------------------------

CLONE3 = '''
import threading
res = {}
res["clone3_null"] = sc_e(ARGS["nr_clone3"], 0, 0)
class CloneArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("flags", "pidfd", "child_tid", "parent_tid",
                "exit_signal", "stack", "stack_size", "tls")]
ca = CloneArgs(exit_signal=17)
r, e = sc(ARGS["nr_clone3"], ctypes.byref(ca), ctypes.sizeof(ca))
if r == 0:
    os._exit(0)
if r > 0:
    os.waitpid(r, 0)
res["clone3"] = ename(e)
pid = os.fork()
if pid == 0:
    os._exit(3)
res["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
box = []
th = threading.Thread(target=lambda: box.append(threading.get_native_id()))
th.start(); th.join()
res["thread"] = bool(box) and box[0] != threading.get_native_id()
sp = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 5"], {})
res["posix_spawn"] = os.waitstatus_to_exitcode(os.waitpid(sp, 0)[1])
emit(**res)
'''


def test_clone3_enosys_and_fallbacks_work(base):
    t = table()
    if "clone3" not in t.syscalls:
        pytest.skip("no clone3 on this architecture")
    args = dict(nr_clone3=t.number("clone3"))
    c = unconfined(CLONE3, args)
    assert c == dict(clone3_null="EINVAL", clone3="OK", fork=3, thread=True, posix_spawn=5)

    v, _ = confined(Sandbox(fs_readable=base), CLONE3, args)
    assert v == dict(clone3_null="ENOSYS", clone3="ENOSYS", fork=3, thread=True, posix_spawn=5)


# 13. foreign architecture and x32 -----------------------------------------------------------

INT80_C = r'''
#include <stdio.h>
#include <unistd.h>
int main(void) {
    long ret;
    printf("VERDICT_BEFORE\n");
    fflush(stdout);
    /* i386 getpid is 20 */
    __asm__ volatile ("int $0x80" : "=a"(ret) : "a"(20L)
                      : "memory", "rcx", "r11", "r8", "r9", "r10");
    printf("VERDICT {\"ret\": %ld, \"pid\": %ld}\n", ret, (long)getpid());
    return 0;
}
'''

X32 = '''
print("VERDICT_BEFORE", flush=True)
r, e = sc(39 | 0x40000000)       # x32 getpid
emit(ret=r, err=ename(e), pid=os.getpid())
'''


@pytest.mark.skipif(not X86_64, reason="int $0x80 is x86_64-only")
def test_i386_int80_is_killed(base, cc, session_dir):
    prog = cc("int80", INT80_C)
    p = subprocess.run([prog], capture_output=True, timeout=10)
    c = parse_verdict(p.stdout)
    if c is None or c["ret"] != c["pid"]:
        pytest.skip(f"int $0x80 does not work unconfined here (no IA32 emulation?): {describe(p)}")

    r = Sandbox(fs_readable=base + [session_dir]).run([prog], timeout=10)
    assert b"VERDICT_BEFORE" in r.stdout, describe(r)  # it did start
    assert r.reason == ExitReason.SIGNALED and r.signal == SIGSYS, describe(r)
    assert parse_verdict(r.stdout) is None


@pytest.mark.skipif(not X86_64, reason="x32 is x86_64-only")
def test_x32_syscall_is_killed(base):
    c = unconfined(X32)
    # x32 may be compiled out (ENOSYS) or work (returns the pid): either way it is not fatal
    assert c["err"] == "ENOSYS" or c["ret"] == c["pid"], c

    r = Sandbox(fs_readable=base).run(py_cmd(X32), timeout=10)
    assert b"VERDICT_BEFORE" in r.stdout, describe(r)
    assert r.reason == ExitReason.SIGNALED and r.signal == SIGSYS, describe(r)
    assert parse_verdict(r.stdout) is None


# 14. ptrace and process_vm_* between processes of the sandbox --------------------------------

PTRACE = '''
import time
buf = ctypes.create_string_buffer(b"parent-value", 32)
addr = ctypes.addressof(buf)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    ctypes.memmove(addr, b"child-value!", 12)
    os.write(w, b"k")
    time.sleep(30)
    os._exit(0)
os.read(r, 1)
res = {}
class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
out = ctypes.create_string_buffer(32)
local, remote = IoVec(ctypes.addressof(out), 12), IoVec(addr, 12)
n, e = sc(ARGS["nr_readv"], pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
res["vm_readv"] = ename(e) if e else "READ:" + out.raw[:n].decode()
src = ctypes.create_string_buffer(b"written-by-p", 32)
local = IoVec(ctypes.addressof(src), 12)
res["vm_writev"] = ename(sc(ARGS["nr_writev"], pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)[1])
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
res["attach"] = sc_e(ARGS["nr_ptrace"], PTRACE_ATTACH, pid, 0, 0)
if res["attach"] == "OK":
    os.waitpid(pid, 0)
    sc(ARGS["nr_ptrace"], PTRACE_DETACH, pid, 0, 0)
os.kill(pid, 9)
os.waitpid(pid, 0)
emit(**res)
'''


def test_ptrace_and_process_vm_of_sibling(base):
    t = table()
    args = dict(nr_ptrace=t.number("ptrace"), nr_readv=t.number("process_vm_readv"),
                nr_writev=t.number("process_vm_writev"))
    c = unconfined(PTRACE, args)
    assert c == dict(vm_readv="READ:child-value!", vm_writev="OK", attach="OK")

    v, _ = confined(Sandbox(fs_readable=base), PTRACE, args)
    assert v == dict(vm_readv="EPERM", vm_writev="EPERM", attach="EPERM")


PROC_MEM = '''
import time
buf = ctypes.create_string_buffer(b"parent-value", 32)
addr = ctypes.addressof(buf)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    ctypes.memmove(addr, b"child-value!", 12)
    os.write(w, b"k")
    time.sleep(30)
    os._exit(0)
os.read(r, 1)
res = {}
def mem(flags, op):
    try:
        fd = os.open(f"/proc/{pid}/mem", flags)
    except OSError as e:
        return ename(e.errno)
    try:
        return op(fd)
    except OSError as e:
        return ename(e.errno)
    finally:
        os.close(fd)
res["write"] = mem(os.O_RDWR, lambda fd: os.pwrite(fd, b"overwritten!", addr) and "OK")
res["read"] = mem(os.O_RDONLY, lambda fd: "READ:" + os.pread(fd, 12, addr).decode())
os.kill(pid, 9)
os.waitpid(pid, 0)
emit(**res)
'''


def test_proc_pid_mem_write_of_sibling(base):
    c = unconfined(PROC_MEM)
    assert c == dict(write="OK", read="READ:overwritten!")
    v, _ = confined(Sandbox(fs_readable=base + ["/proc"]), PROC_MEM)
    assert v["write"] in ("EACCES", "EPERM"), v


def test_proc_pid_mem_read_of_sibling(base):
    v, _ = confined(Sandbox(fs_readable=base + ["/proc"]), PROC_MEM)
    assert v["read"] in ("EACCES", "EPERM", "ENOENT"), v


# 15. TIOCSTI / TIOCLINUX ----------------------------------------------------------------------

TTY = '''
import fcntl, termios
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    # make the pty on fd 0 our controlling terminal, so the kernel itself
    # would allow TIOCSTI (legacy_tiocsti=1) without any capability
    os.setsid()
    res = {"ctty": os_e(fcntl.ioctl, 0, termios.TIOCSCTTY, 0)}
    c = ctypes.c_char(b"Z")
    ctypes.set_errno(0)
    res["tiocsti"] = "OK" if libc.ioctl(0, 0x5412, ctypes.byref(c)) == 0 else ename(ctypes.get_errno())
    sub = ctypes.c_char(b"\\x0c")   # TIOCL_GETFGCONSOLE: read-only sub-command
    ctypes.set_errno(0)
    res["tioclinux"] = "OK" if libc.ioctl(0, 0x541C, ctypes.byref(sub)) >= 0 else ename(ctypes.get_errno())
    os.write(w, json.dumps(res).encode())
    os._exit(0)
os.close(w)
data = os.read(r, 4096)
os.waitpid(pid, 0)
emit(**json.loads(data))
'''


def _drain_master(master: int) -> bytes:
    out = b""
    while select.select([master], [], [], 0.2)[0]:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def test_tiocsti_and_tioclinux(base):
    legacy = _sysctl("/proc/sys/dev/tty/legacy_tiocsti")
    if legacy == "0" and not IS_ROOT:
        pytest.skip("legacy_tiocsti=0: TIOCSTI needs CAP_SYS_ADMIN, the control cannot succeed unprivileged")
    master, slave = os.openpty()
    try:
        c = unconfined(TTY, stdin=slave)
        assert c["ctty"] == "OK" and c["tiocsti"] == "OK", c
        assert c["tioclinux"] != "EPERM", c
        assert b"Z" in _drain_master(master)  # echoed: it was injected

        sb = Sandbox(fs_readable=base)
        with sb.popen(py_cmd(TTY), stdin=slave, stdout=subprocess.PIPE) as p:
            out = p.stdout.read()
            p.wait(timeout=30)
        v = parse_verdict(out)
        assert v == dict(ctty="OK", tiocsti="EPERM", tioclinux="EPERM"), out
        assert b"Z" not in _drain_master(master)
    finally:
        os.close(master)
        os.close(slave)


# 16. large kernel attack surfaces ---------------------------------------------------------

SURFACES = '''
res = {}
n = ARGS["nr"]
params = ctypes.create_string_buffer(256)          # struct io_uring_params, zeroed
res["io_uring_setup"] = sc_e(n["io_uring_setup"], 1, params)
res["io_uring_setup_probe"] = sc_e(n["io_uring_setup"], 0, params)        # EINVAL: 0 entries
res["userfaultfd"] = sc_e(n["userfaultfd"], 1)                             # UFFD_USER_MODE_ONLY
res["userfaultfd_probe"] = sc_e(n["userfaultfd"], -1)                      # EINVAL: bad flags
attr = ctypes.create_string_buffer(128)            # union bpf_attr: an array map
import struct
struct.pack_into("IIII", attr, 0, 2, 4, 4, 1)      # BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry
res["bpf"] = sc_e(n["bpf"], 0, attr, 128)                                  # BPF_MAP_CREATE
res["bpf_probe"] = sc_e(n["bpf"], -1, 0, 0)                                # EINVAL: bad command
pattr = ctypes.create_string_buffer(128)           # perf_event_attr: task clock, user only
struct.pack_into("IIQ", pattr, 0, 1, 128, 1)       # PERF_TYPE_SOFTWARE, size, TASK_CLOCK
struct.pack_into("Q", pattr, 40, 1 | 32 | 64)      # disabled, exclude_kernel, exclude_hv
res["perf_event_open"] = sc_e(n["perf_event_open"], pattr, 0, -1, -1, 0)
res["perf_event_open_probe"] = sc_e(n["perf_event_open"], 0, 0, -1, -1, 0)  # EFAULT
emit(**res)
'''

SURFACE_NAMES = ("io_uring_setup", "userfaultfd", "bpf", "perf_event_open")


def test_io_uring_userfaultfd_bpf_perf(base):
    t = table()
    args = {"nr": {n: t.number(n) for n in SURFACE_NAMES}}
    c = unconfined(SURFACES, args)
    assert c["io_uring_setup_probe"] == "EINVAL", c
    assert c["userfaultfd_probe"] == "EINVAL", c
    assert c["bpf_probe"] == "EINVAL", c
    assert c["perf_event_open_probe"] == "EFAULT", c
    if IS_ROOT:
        if _sysctl("/proc/sys/kernel/io_uring_disabled") in (None, "0"):
            assert c["io_uring_setup"] == "OK", c
        assert c["userfaultfd"] == "OK" and c["bpf"] == "OK" and c["perf_event_open"] == "OK", c

    v, _ = confined(Sandbox(fs_readable=base), SURFACES, args)
    assert v == {k: "EPERM" for n in SURFACE_NAMES for k in (n, n + "_probe")}


# 17. personality ------------------------------------------------------------------------------

PERSONALITY = '''
nr = ARGS["nr"]
res = {}
r, e = sc(nr, 0xFFFFFFFF)
res["query"] = ename(e)
res["read_implies_exec"] = sc_e(nr, 0x0400000)
res["addr_no_randomize"] = sc_e(nr, 0x0040000)
res["after"] = sc(nr, 0xFFFFFFFF)[0] & 0x0440000
emit(**res)
'''


def test_personality(base):
    args = dict(nr=table().number("personality"))
    c = unconfined(PERSONALITY, args)
    assert c == dict(query="OK", read_implies_exec="OK", addr_no_randomize="OK", after=0x0040000)

    v, _ = confined(Sandbox(fs_readable=base), PERSONALITY, args)
    assert v == dict(query="OK", read_implies_exec="EPERM", addr_no_randomize="EPERM", after=0)


# 18. prctl and nested seccomp listeners ---------------------------------------------------

PRCTL = '''
res = {}
libc.prctl.restype = ctypes.c_int
def prctl(*a):
    ctypes.set_errno(0)
    r = libc.prctl(*[ctypes.c_ulong(x & (2**64 - 1)) for x in a])
    return "OK" if r >= 0 else ename(ctypes.get_errno())
# PR_SET_MM with arg5 != 0 is EINVAL before the capability check
res["set_mm_probe"] = prctl(35, 1, 0, 0, 1)
res["set_ptracer"] = prctl(0x59616D61, 0, 0, 0, 0)
res["set_ptracer_any"] = prctl(0x59616D61, -1, 0, 0, 0)
res["set_dumpable"] = prctl(4, 1, 0, 0, 0)
res["get_dumpable"] = libc.prctl(3, 0, 0, 0, 0)
res["nnp"] = prctl(38, 1, 0, 0, 0)         # PR_SET_NO_NEW_PRIVS (needed unconfined)

class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]
class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
allow = (SockFilter * 1)(SockFilter(0x06, 0, 0, 0x7FFF0000))    # RET ALLOW
prog = SockFprog(1, ctypes.addressof(allow))
SET_MODE_FILTER, NEW_LISTENER, TSYNC = 1, 1 << 3, 1 << 0
r, e = sc(ARGS["nr_seccomp"], SET_MODE_FILTER, NEW_LISTENER, ctypes.byref(prog))
res["seccomp_listener"] = ename(e)
res["seccomp_listener_tsync"] = sc_e(ARGS["nr_seccomp"], SET_MODE_FILTER, NEW_LISTENER | TSYNC,
                                     ctypes.byref(prog))
res["seccomp_plain"] = sc_e(ARGS["nr_seccomp"], SET_MODE_FILTER, 0, ctypes.byref(prog))
emit(**res)
'''


@pytest.mark.parametrize("no_coredump", [True, False])
def test_prctl_and_seccomp_listener(base, no_coredump):
    args = dict(nr_seccomp=table().number("seccomp"))
    c = unconfined(PRCTL, args)
    assert c["set_mm_probe"] == "EINVAL", c
    # without Yama PR_SET_PTRACER is an unknown option (EINVAL); with it, OK
    assert c["set_ptracer"] in ("EINVAL", "OK") and c["set_ptracer_any"] in ("EINVAL", "OK"), c
    assert c["set_dumpable"] == "OK" and c["get_dumpable"] == 1, c
    # TSYNC and NEW_LISTENER together are EBUSY-or-EINVAL unconfined; plain listener works
    assert c["seccomp_listener"] == "OK" and c["seccomp_plain"] == "OK", c
    assert c["seccomp_listener_tsync"] != "EPERM", c

    v, _ = confined(Sandbox(fs_readable=base, no_coredump=no_coredump), PRCTL, args)
    assert v["set_mm_probe"] == "EPERM", v
    assert v["set_ptracer"] == v["set_ptracer_any"] == "EPERM", v
    assert v["seccomp_listener"] == v["seccomp_listener_tsync"] == "EPERM", v
    assert v["seccomp_plain"] == "OK", v   # stacking a stricter filter is fine
    # PR_SET_DUMPABLE is not filtered: execve resets it anyway (see the
    # core-limit test for what no_coredump does guarantee).
    assert v["get_dumpable"] == 1, v


CORE_LIMIT = '''
import resource
before = list(resource.getrlimit(4))
try:  # Python reports the kernel's EPERM as ValueError here
    raised = os_e(resource.setrlimit, 4, (1 << 20, 1 << 20))
except ValueError:
    raised = "EPERM"
emit(core=before, raise_hard=raised)
'''


def test_no_coredump_core_limit_is_locked(base):
    # no_coredump is RLIMIT_CORE 0 with a hard limit of 0 that the program
    # cannot raise (no CAP_SYS_RESOURCE inside). PR_SET_DUMPABLE would not
    # survive execve, so sandlock does not pretend to set it.
    c = unconfined(CORE_LIMIT)
    assert c["core"] != [0, 0] or c["raise_hard"] == "OK", c
    v, _ = confined(Sandbox(fs_readable=base, no_coredump=True), CORE_LIMIT)
    assert v == dict(core=[0, 0], raise_hard="EPERM"), v


# 19. sockets ------------------------------------------------------------------------------------

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_ALG, AF_VSOCK = 1, 2, 10, 16, 17, 38, 40
STREAM, DGRAM, RAW, SEQPACKET = 1, 2, 3, 5
NONBLOCK_CLOEXEC = 0o4000 | 0o2000000

# name: (family, type, protocol, needs root for the control to succeed)
DENIED_SOCKETS = {
    "raw_icmp": (AF_INET, RAW, 1, True),
    "raw_icmp6": (AF_INET6, RAW, 58, True),
    "raw_probe": (AF_INET, RAW, 300, False),         # EINVAL unconfined: protocol >= IPPROTO_MAX
    "packet": (AF_PACKET, RAW, 0x0300, True),         # htons(ETH_P_ALL)
    "packet_probe": (AF_PACKET, 11, 0, False),       # EINVAL unconfined: type >= SOCK_MAX
    "udp": (AF_INET, DGRAM, 0, False),
    "udp6": (AF_INET6, DGRAM, 0, False),
    "udp_explicit": (AF_INET, DGRAM, 17, False),
    "ping": (AF_INET, DGRAM, 1, False),               # ICMP datagram ("ping") socket
    "sctp": (AF_INET, STREAM, 132, False),
    "sctp_seqpacket": (AF_INET, SEQPACKET, 132, False),
    "mptcp": (AF_INET, STREAM, 262, False),
    "alg": (AF_ALG, SEQPACKET, 0, False),
    "vsock": (AF_VSOCK, STREAM, 0, False),
    "netlink_uevent": (AF_NETLINK, DGRAM, 15, False),
}
ALLOWED_SOCKETS = {
    "tcp": (AF_INET, STREAM, 0),
    "tcp_explicit": (AF_INET, STREAM, 6),
    "tcp_flags": (AF_INET, STREAM | NONBLOCK_CLOEXEC, 0),
    "tcp6": (AF_INET6, STREAM, 0),
    "unix_stream": (AF_UNIX, STREAM, 0),
    "unix_dgram": (AF_UNIX, DGRAM, 0),
    "netlink_route": (AF_NETLINK, RAW, 0),
}

SOCKETS = '''
import socket
res = {}
for name, (fam, typ, proto) in ARGS["cases"].items():
    ctypes.set_errno(0)
    fd = libc.socket(fam, typ, proto)
    res[name] = "OK" if fd >= 0 else ename(ctypes.get_errno())
    if fd >= 0:
        os.close(fd)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(5)
res["connect_loopback"] = os_e(s.connect, ("127.0.0.1", ARGS["port"]))
emit(**res)
'''


def test_sockets(base):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        cases = {k: v[:3] for k, v in DENIED_SOCKETS.items()}
        cases.update(ALLOWED_SOCKETS)
        args = dict(cases=cases, port=listener.getsockname()[1])
        c = unconfined(SOCKETS, args)
        for name, (_f, _t, _p, needs_root) in DENIED_SOCKETS.items():
            if IS_ROOT or not needs_root:
                assert c[name] != "EPERM", (name, c)
        assert c["raw_probe"] == c["packet_probe"] == "EINVAL", c
        assert c["udp"] == c["udp6"] == "OK", c
        assert all(c[name] == "OK" for name in ALLOWED_SOCKETS), c
        assert c["connect_loopback"] == "OK", c

        v, _ = confined(Sandbox(fs_readable=base), SOCKETS, args)
        want = {name: "EPERM" for name in DENIED_SOCKETS}
        want.update({name: "OK" for name in ALLOWED_SOCKETS})
        want["connect_loopback"] = "EACCES"   # Landlock: no TCP connect rule
        assert v == want
    finally:
        listener.close()
