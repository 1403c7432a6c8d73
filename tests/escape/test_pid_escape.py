"""Reaching processes outside the sandbox through syscalls that take a pid
(issue 15, items 12 and 18): prlimit64, setpriority, sched_*, ioprio_*,
process-group and user forms, lookups that map the process tree
(pidfd_open + PIDFD_GET_INFO, getsid, ...), CPU clocks of other processes,
and the paths Landlock's scoping covers (signals, SIGIO, ptrace-mode access).

Every attack runs first unconfined against a `sleep` of the same uid (the
control: it must succeed and really change the target), then confined
against three outside targets: a fresh `sleep`, the sandbox's own supervisor
(the parent of the sandboxed process) and the caller (this test process).
Those must fail with the expected errno and stay unchanged, while the same
call on a process of the sandbox (a child the attacker forked) still works.

Protocol of a state-changing attack: the probe reads its targets as one JSON
line on stdin, attacks, prints its verdict, then holds on until stdin
closes, so the test can look at the supervisor while it still runs.
"""
from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import time

import pytest

from escape_lib import describe, parse_verdict, py_cmd, readable_base
from sandlock import Sandbox
from sandlock._kernel.syscalls import table

pytestmark = pytest.mark.core

NAMES = ("prlimit64", "setpriority", "getpriority", "ioprio_set", "ioprio_get",
         "sched_setscheduler", "sched_setparam", "sched_setattr", "sched_setaffinity",
         "sched_getscheduler", "sched_getparam", "sched_getattr", "sched_getaffinity",
         "sched_rr_get_interval", "getpgid", "getsid", "clock_gettime", "pidfd_open",
         "kill", "tkill", "tgkill", "rt_sigqueueinfo", "pidfd_send_signal", "pidfd_getfd",
         "kcmp", "move_pages", "migrate_pages", "get_robust_list")
NR = {n: table().syscalls[n] for n in NAMES}
IOPRIO_BE_7 = (2 << 13) | 7
PIDFD_GET_INFO = 0xC040FF0B  # _IOWR(0xFF, 11, struct pidfd_info) with its 64-byte VER0 size


# -- the attacks, run by the probe ---------------------------------------------------

ATTACKS = r'''
import resource, signal, struct, time
NR = ARGS["nr"]
RLIM = ctypes.c_uint64 * 2
INF = 0xFFFF_FFFF_FFFF_FFFF

def lowered(cur):
    soft, hard = cur
    new = (1 << 40) if soft == INF or soft == -1 else max(soft - 1, 1)
    return RLIM(new, hard & INF)

def prlimit(pid, res, info, key):
    return sc_e(NR["prlimit64"], pid, res, ctypes.byref(lowered(info[key])), None)

class SchedAttr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("policy", ctypes.c_uint32), ("flags", ctypes.c_uint64),
                ("nice", ctypes.c_int32), ("priority", ctypes.c_uint32), ("runtime", ctypes.c_uint64),
                ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64),
                ("util_min", ctypes.c_uint32), ("util_max", ctypes.c_uint32)]

def attack(name, pid, info):
    nice_up = min(info["nice"] + 1, 19)
    zero = ctypes.byref(ctypes.c_int(0))
    buf = ctypes.create_string_buffer(256)
    if name == "prlimit_nofile":
        return prlimit(pid, resource.RLIMIT_NOFILE, info, "nofile")
    if name == "prlimit_cpu":
        return prlimit(pid, resource.RLIMIT_CPU, info, "cpu")
    if name == "prlimit_fsize":
        return prlimit(pid, resource.RLIMIT_FSIZE, info, "fsize")
    if name == "prlimit_high_word":  # the kernel truncates pid_t: this is `pid`
        return prlimit(pid | (1 << 32) if pid else 0, resource.RLIMIT_NOFILE, info, "nofile")
    if name == "setpriority":
        return sc_e(NR["setpriority"], 0, pid, nice_up)
    if name == "setpriority_pgrp":
        return sc_e(NR["setpriority"], 1, info["pgrp"], nice_up)
    if name == "sched_idle":
        # SCHED_IDLE (5) on the sleep and the member; SCHED_BATCH (3) on the
        # supervisor and the caller, so that a broken build fails this test
        # instead of starving the test run.
        return sc_e(NR["sched_setscheduler"], pid, info.get("policy", 5), zero)
    if name == "sched_setparam":
        return sc_e(NR["sched_setparam"], pid, zero)
    if name == "sched_setattr":
        attr = SchedAttr(size=ctypes.sizeof(SchedAttr), policy=0, nice=min(info["nice"] + 2, 19))
        return sc_e(NR["sched_setattr"], pid, ctypes.byref(attr), 0)
    if name == "sched_setaffinity":
        mask = (ctypes.c_uint64 * 16)()
        cpu = min(info["aff"])
        mask[cpu // 64] = 1 << (cpu % 64)
        return sc_e(NR["sched_setaffinity"], pid, ctypes.sizeof(mask), mask)
    if name == "ioprio_set":
        return sc_e(NR["ioprio_set"], 1, pid, ARGS["ioprio"])
    # lookups
    if name == "prlimit_get":
        return sc_e(NR["prlimit64"], pid, resource.RLIMIT_NOFILE, None, buf)
    if name == "getpriority":
        return sc_e(NR["getpriority"], 0, pid)
    if name == "getpriority_pgrp":
        return sc_e(NR["getpriority"], 1, info["pgrp"])
    if name == "getpriority_user":
        return sc_e(NR["getpriority"], 2, info["uid"])
    if name == "ioprio_get":
        return sc_e(NR["ioprio_get"], 1, pid)
    if name in ("getpgid", "getsid", "sched_getscheduler"):
        return sc_e(NR[name], pid)
    if name in ("sched_getparam", "sched_rr_get_interval"):
        return sc_e(NR[name], pid, buf)
    if name == "sched_getattr":
        return sc_e(NR["sched_getattr"], pid, buf, 56, 0)
    if name == "sched_getaffinity":
        return sc_e(NR["sched_getaffinity"], pid, 128, buf)
    if name == "cpu_clock":
        clock = (~pid << 3) | 2 if pid else 2
        return sc_e(NR["clock_gettime"], clock, buf)
    if name == "pidfd_info":
        fd, e = sc(NR["pidfd_open"], pid or os.getpid(), 0)
        if fd < 0:
            return ename(e)
        info_buf = ctypes.create_string_buffer(64)
        ctypes.memmove(info_buf, ctypes.byref(ctypes.c_uint64(1)), 8)  # PIDFD_INFO_PID
        r = libc.ioctl(fd, ctypes.c_ulong(ARGS["pidfd_get_info"]), info_buf)
        os.close(fd)
        if r != 0:
            return "ioctl " + ename(ctypes.get_errno())
        pid_, tgid, ppid = struct.unpack_from("III", info_buf.raw, 16)
        return "OK ppid=%d" % ppid
    raise ValueError(name)
'''

PROBE = ATTACKS + r'''
name = ARGS["attack"]
targets = json.loads(sys.stdin.readline())
res = {}
for key, info in targets.items():
    res[key] = attack(name, info["pid"], info)
if ARGS.get("member"):
    # A process of the sandbox, in a session of its own (so its group is
    # provably inside too): the same call on it must work.
    rd_, wr_ = os.pipe()
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.setsid()
        os.write(ready_w, b"x")
        os.read(rd_, 1)
        os._exit(0)
    os.read(ready_r, 1)
    info = {"pid": child, "pgrp": child, "uid": os.getuid(),
            "nice": os.getpriority(os.PRIO_PROCESS, child),
            "nofile": resource.prlimit(child, resource.RLIMIT_NOFILE),
            "cpu": resource.prlimit(child, resource.RLIMIT_CPU),
            "fsize": resource.prlimit(child, resource.RLIMIT_FSIZE),
            "aff": sorted(os.sched_getaffinity(child))}
    res["member"] = attack(name, child, info)
    os.write(wr_, b"x")
    os.waitpid(child, 0)
emit(**res)
sys.stdin.read()
'''


# -- targets and their state ----------------------------------------------------------

def _ioprio_get(pid: int) -> int:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(ctypes.c_long(NR["ioprio_get"]), ctypes.c_long(1), ctypes.c_long(pid))


def _stat_ids(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[1]), int(fields[2])  # ppid, pgrp


def snapshot(pid: int) -> dict:
    """What the attacks could change, read from outside."""
    return dict(nice=os.getpriority(os.PRIO_PROCESS, pid),
                nofile=list(resource.prlimit(pid, resource.RLIMIT_NOFILE)),
                cpu=list(resource.prlimit(pid, resource.RLIMIT_CPU)),
                fsize=list(resource.prlimit(pid, resource.RLIMIT_FSIZE)),
                policy=os.sched_getscheduler(pid), aff=sorted(os.sched_getaffinity(pid)),
                ioprio=_ioprio_get(pid))


def target_info(pid: int) -> dict:
    """What the probe needs to know of an outside target (it cannot ask)."""
    s = snapshot(pid)
    with open(f"/proc/{pid}/status") as f:
        uid = int(next(ln for ln in f if ln.startswith("Uid:")).split()[1])
    return dict(pid=pid, pgrp=_stat_ids(pid)[1], uid=uid, nice=s["nice"], nofile=s["nofile"],
                cpu=s["cpu"], fsize=s["fsize"], aff=s["aff"])


def spawn_sleep() -> subprocess.Popen:
    """A same-uid process outside any sandbox, in a session of its own."""
    return subprocess.Popen(["sleep", "300"], start_new_session=True, stdin=subprocess.DEVNULL)


def read_verdict(stream, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    buf = b""
    fd = stream.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        v = parse_verdict(buf)
        if v is not None and buf.endswith(b"\n"):
            return v
    pytest.fail(f"no verdict within {timeout}s: {buf[-2000:]!r}")


def probe_args(attack: str, member: bool) -> dict:
    return dict(attack=attack, member=member, nr=NR, ioprio=IOPRIO_BE_7,
                pidfd_get_info=PIDFD_GET_INFO)


def run_unconfined(attack: str) -> tuple[dict, dict, dict]:
    """The control: the probe as a plain process against a fresh sleep.
    Returns (verdict, state before, state after)."""
    victim = spawn_sleep()
    try:
        p = subprocess.Popen(py_cmd(PROBE, probe_args(attack, False)), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, start_new_session=True)
        try:
            before = snapshot(victim.pid)
            p.stdin.write(json.dumps({"sleep": target_info(victim.pid)}).encode() + b"\n")
            p.stdin.flush()
            v = read_verdict(p.stdout)
            after = snapshot(victim.pid)
        finally:
            p.stdin.close()
            p.wait(timeout=30)
            p.stdout.close()
        return v, before, after
    finally:
        victim.kill()
        victim.wait()


def run_confined(attack: str, **sandbox_kw) -> tuple[dict, dict, dict, dict]:
    """The attack in a sandbox against a fresh sleep, its supervisor and the
    caller, plus a child of its own. Returns (verdict, pids, before, after)."""
    victim = spawn_sleep()
    try:
        sb = Sandbox(fs_readable=readable_base(), **sandbox_kw)
        p = sb.popen(py_cmd(PROBE, probe_args(attack, True)), stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE)
        try:
            supervisor = _stat_ids(p.pid)[0]
            pids = {"sleep": victim.pid, "supervisor": supervisor, "caller": os.getpid()}
            assert supervisor not in (os.getpid(), 1), pids
            before = {k: snapshot(pid) for k, pid in pids.items()}
            infos = {k: target_info(pid) for k, pid in pids.items()}
            for k in ("supervisor", "caller"):
                infos[k]["policy"] = os.SCHED_BATCH
            p.stdin.write(json.dumps(infos).encode() + b"\n")
            p.stdin.flush()
            v = read_verdict(p.stdout)
            after = {k: snapshot(pid) for k, pid in pids.items()}
        finally:
            p.stdin.close()
            p.wait(timeout=30)
            p.stdout.close()
        return v, pids, before, after
    finally:
        victim.kill()
        victim.wait()


# -- changing another process -----------------------------------------------------

# attack → the snapshot field the control shows changed (None: nothing to see)
CHANGES = {
    "prlimit_nofile": "nofile",     # RLIMIT_NOFILE lowered: cripples the target
    "prlimit_cpu": "cpu",           # RLIMIT_CPU lowered: SIGXCPU/SIGKILL at the limit
    "prlimit_fsize": "fsize",       # RLIMIT_FSIZE lowered: SIGXFSZ on its next write
    "prlimit_high_word": "nofile",  # pid | 1 << 32 is pid to the kernel
    "setpriority": "nice",
    "setpriority_pgrp": "nice",     # the sleep's own group (a session of its own)
    "sched_idle": "policy",         # SCHED_IDLE: starved by any other work
    "sched_setparam": None,
    "sched_setattr": "nice",
    "sched_setaffinity": "aff",
    "ioprio_set": "ioprio",
}


@pytest.mark.parametrize("attack", sorted(CHANGES))
def test_cannot_change_an_outside_process(attack):
    v, before, after = run_unconfined(attack)
    assert v == {"sleep": "OK"}, v
    field = CHANGES[attack]
    if field == "aff" and len(before["aff"]) < 2:
        pass  # one CPU: restricting to it changes nothing visible
    elif field == "nice" and before["nice"] >= 18:
        pass  # run under nice 18 or 19: no higher value to move to
    elif field is not None:
        assert after[field] != before[field], (before, after)

    v, pids, before, after = run_confined(attack)
    assert v == {"sleep": "EPERM", "supervisor": "EPERM", "caller": "EPERM", "member": "OK"}, (v, pids)
    assert after == before


# -- mapping the process tree --------------------------------------------------------

LOOKUPS = {
    "prlimit_get": "ESRCH", "getpriority": "ESRCH", "ioprio_get": "ESRCH",
    "getpgid": "ESRCH", "getsid": "ESRCH", "sched_getscheduler": "ESRCH",
    "sched_getparam": "ESRCH", "sched_getattr": "ESRCH", "sched_getaffinity": "ESRCH",
    "sched_rr_get_interval": "ESRCH", "getpriority_pgrp": "ESRCH",
    "cpu_clock": "EINVAL",          # a CPU clock id naming no process
    "pidfd_info": "ESRCH",          # pidfd_open refused: no PIDFD_GET_INFO
    "getpriority_user": "EPERM",    # every process of a user: never only the sandbox
}


@pytest.mark.parametrize("attack", sorted(LOOKUPS))
def test_cannot_look_up_an_outside_process(attack):
    v, _before, _after = run_unconfined(attack)
    want_ok = "OK ppid=%d" % os.getpid() if attack == "pidfd_info" else "OK"
    assert v == {"sleep": want_ok}, v

    v, pids, before, after = run_confined(attack)
    refusal = LOOKUPS[attack]
    member = "EPERM" if attack == "getpriority_user" else (
        v.get("member", "") if attack == "pidfd_info" else "OK")
    assert v == {"sleep": refusal, "supervisor": refusal, "caller": refusal, "member": member}, (v, pids)
    if attack == "pidfd_info":
        assert v["member"].startswith("OK ppid="), v
    assert after == before


def test_pid_zero_and_own_pid_stay_usable():
    """The self forms, including the caller's own pid and a thread id,
    next to the refused outside one, in one run."""
    code = ATTACKS + r'''
import threading
res = {}
me = os.getpid()
info = {"nice": os.getpriority(os.PRIO_PROCESS, 0), "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "pgrp": os.getpgrp(), "aff": sorted(os.sched_getaffinity(0))}
for name in ("prlimit_nofile", "prlimit_get", "setpriority", "getpriority", "sched_getscheduler",
             "sched_setaffinity", "ioprio_get", "ioprio_set", "getsid", "cpu_clock", "pidfd_info"):
    res[name + "@0"] = attack(name, 0, info)
    res[name + "@me"] = attack(name, me, info)
tids = []
ev = threading.Event()
th = threading.Thread(target=lambda: (tids.append(threading.get_native_id()), ev.wait()))
th.start()
while not tids: time.sleep(0.01)
res["setpriority@thread"] = sc_e(NR["setpriority"], 0, tids[0], 19)
res["getpriority@thread"] = sc(NR["getpriority"], 0, tids[0])[0]
ev.set(); th.join()
res["outside"] = attack("setpriority", ARGS["outside"], info)
emit(**res)
'''
    victim = spawn_sleep()
    try:
        args = probe_args("", False)
        args["outside"] = victim.pid
        from escape_lib import confined
        v, _r = confined(Sandbox(fs_readable=readable_base()), code, args)
    finally:
        victim.kill()
        victim.wait()
    assert v.pop("outside") == "EPERM"
    assert v.pop("getpriority@thread") == 20 - 19  # the kernel's 20 - nice
    assert v.pop("pidfd_info@0").startswith("OK ppid=")
    assert v.pop("pidfd_info@me").startswith("OK ppid=")
    assert set(v.values()) == {"OK"}, v


# -- what Landlock's scoping covers -----------------------------------------------------

SCOPED = r'''
import signal, struct
NR = ARGS["nr"]
def calls(pid):
    out = {}
    out["kill0"] = sc_e(NR["kill"], pid, 0)
    out["kill_cont"] = sc_e(NR["kill"], pid, signal.SIGCONT)
    out["tkill"] = sc_e(NR["tkill"], pid, signal.SIGCONT)
    out["tgkill"] = sc_e(NR["tgkill"], pid, pid, signal.SIGCONT)
    info = ctypes.create_string_buffer(128)
    struct.pack_into("iii", info, 0, signal.SIGCONT, 0, -1)  # si_code SI_QUEUE
    out["rt_sigqueueinfo"] = sc_e(NR["rt_sigqueueinfo"], pid, signal.SIGCONT, info)
    out["kcmp"] = sc_e(NR["kcmp"], pid, pid, 0, 0, 0)        # KCMP_FILE, fd 0 of each
    out["move_pages"] = sc_e(NR["move_pages"], pid, 0, None, None, None, 0)
    nodes = ctypes.c_ulong(1)
    out["migrate_pages"] = sc_e(NR["migrate_pages"], pid, 65, ctypes.byref(nodes), ctypes.byref(nodes))
    head, size = ctypes.c_void_p(), ctypes.c_size_t()
    out["get_robust_list"] = sc_e(NR["get_robust_list"], pid, ctypes.byref(head), ctypes.byref(size))
    return out
res = {}
for key, pid in ARGS["targets"].items():
    for call, verdict in calls(pid if pid else os.getppid()).items():
        res[key + ":" + call] = verdict
# fd 0 is a pidfd of the sleep, handed in by the test (pidfd_open itself is refused)
res["sleep:pidfd_send_signal"] = sc_e(NR["pidfd_send_signal"], 0, signal.SIGCONT, 0, 0)
res["sleep:pidfd_getfd"] = sc_e(NR["pidfd_getfd"], 0, 0, 0)
if ARGS["member"]:
    rd_, wr_ = os.pipe()
    child = os.fork()
    if child == 0:
        os.read(rd_, 1)
        os._exit(0)
    for call, verdict in calls(child).items():
        res["member:" + call] = verdict
    os.write(wr_, b"x")
    os.waitpid(child, 0)
emit(**res)
'''


def test_signals_and_ptrace_access_are_scoped_by_landlock():
    """kill/tkill/tgkill/rt_sigqueueinfo, pidfd_send_signal and pidfd_getfd on
    an inherited pidfd, kcmp, move_pages, migrate_pages, get_robust_list:
    Landlock (signal scoping, ptrace restrictions) refuses them for outside
    processes; pidscope leaves them alone."""
    def run(confine: bool):
        victim = spawn_sleep()
        pidfd = os.pidfd_open(victim.pid)
        targets = {"sleep": victim.pid}
        if confine:
            targets.update(supervisor=0, caller=os.getpid())  # 0: the probe's parent
        args = dict(nr=NR, targets=targets, member=confine)
        try:
            if confine:
                p = Sandbox(fs_readable=readable_base()).popen(py_cmd(SCOPED, args), stdin=pidfd,
                                                                stdout=subprocess.PIPE)
                try:
                    v = read_verdict(p.stdout)
                finally:
                    p.wait(timeout=30)
                    p.stdout.close()
            else:
                r = subprocess.run(py_cmd(SCOPED, args), stdin=pidfd, capture_output=True, timeout=30)
                v = parse_verdict(r.stdout)
                assert v is not None, describe(r)
            assert victim.poll() is None  # SIGCONT only
            return v
        finally:
            os.close(pidfd)
            victim.kill()
            victim.wait()

    control = run(False)
    assert set(control.values()) == {"OK"}, control
    v = run(True)
    outside = {k: x for k, x in v.items() if not k.startswith("member:")}
    member = {k: x for k, x in v.items() if k.startswith("member:")}
    assert len(outside) == 3 * 9 + 2 and set(outside.values()) == {"EPERM"}, v
    assert len(member) == 9 and set(member.values()) == {"OK"}, v


SIGIO = r'''
import fcntl, time
r, w = os.pipe()
res = {"setown": os_e(fcntl.fcntl, r, fcntl.F_SETOWN, ARGS["pid"]),
       "async": os_e(fcntl.fcntl, r, fcntl.F_SETFL, os.O_ASYNC)}
os.write(w, b"x")  # SIGIO (default action: terminate) to the owner
time.sleep(0.3)
emit(**res)
'''


def test_sigio_to_an_outside_process_is_scoped():
    victim = spawn_sleep()
    try:
        from escape_lib import unconfined
        assert unconfined(SIGIO, {"pid": victim.pid}) == {"setown": "OK", "async": "OK"}
        assert victim.wait(timeout=5) == -signal.SIGIO
    finally:
        victim.kill()
        victim.wait()
    victim = spawn_sleep()
    try:
        from escape_lib import confined
        v, _ = confined(Sandbox(fs_readable=readable_base()), SIGIO, {"pid": victim.pid})
        assert v == {"setown": "OK", "async": "OK"}  # Landlock checks at delivery
        time.sleep(0.2)
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
