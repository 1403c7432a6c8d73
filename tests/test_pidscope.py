"""Pid scoping with real sandboxed processes: syscalls that name a process
reach the caller itself and the sandbox's own processes (children, orphans
re-parented to the supervisor, threads), and nothing outside.

The attacks with their unconfined controls are in
tests/escape/test_pid_escape.py; here the allowed direction and the
documented edges: process groups, users, no_supervisor, num_cpus, a
denied or handled syscall. (As root the sandboxed process has no
capabilities; the kernel's commoncap then already refuses nice/scheduler
changes on processes holding more, which is why CI's uid 65534 re-run
matters.)
"""
from __future__ import annotations

import errno
import os
import subprocess

import pytest

from sandlock import Sandbox
from sandlock._kernel.syscalls import table
from sandlock.handler import NotifAction

pytestmark = pytest.mark.core

NR = {n: table().syscalls[n] for n in ("ioprio_get", "ioprio_set", "clock_gettime")}
IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP, IOPRIO_WHO_USER = 1, 2, 3
IOPRIO_BE_6 = (2 << 13) | 6

RAW = r'''
import ctypes, resource, threading, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def raw(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(ARGS["nr"][name]), *[ctypes.c_long(a) for a in args])
    return ename(ctypes.get_errno()) if r == -1 else r
def cpu_clock_ns(pid):
    ts = (ctypes.c_long * 2)()
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(ARGS["nr"]["clock_gettime"]), ctypes.c_long((~pid << 3) | 2), ts)
    return ename(ctypes.get_errno()) if r == -1 else "OK"
def setlimit(pid, res, new):
    resource.prlimit(pid, res, new)  # (it returns the old limits)
def sorted_aff(pid):
    return sorted(os.sched_getaffinity(pid))
'''


def args(**kw):
    return dict(nr=NR, **kw)


def sandbox(base_readable, **kw):
    return Sandbox(fs_readable=base_readable, **kw)


# -- the caller itself ------------------------------------------------------------

SELF = RAW + r'''
me = os.getpid()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
for who, tag in ((0, "0"), (me, "me")):
    OUT["prlimit_get@" + tag] = attempt(resource.prlimit, who, resource.RLIMIT_NOFILE) == (soft, hard)
    soft -= 1
    OUT["prlimit_set@" + tag] = attempt(setlimit, who, resource.RLIMIT_NOFILE, (soft, hard))
    OUT["nofile@" + tag] = resource.getrlimit(resource.RLIMIT_NOFILE)[0] == soft
    nice = min(os.getpriority(os.PRIO_PROCESS, 0) + 1, 19)
    OUT["setpriority@" + tag] = attempt(os.setpriority, os.PRIO_PROCESS, who, nice)
    OUT["getpriority@" + tag] = attempt(os.getpriority, os.PRIO_PROCESS, who) == nice
    OUT["setaffinity@" + tag] = attempt(os.sched_setaffinity, who, os.sched_getaffinity(0))
    OUT["getaffinity@" + tag] = attempt(sorted_aff, who) == sorted_aff(0)
    OUT["setscheduler@" + tag] = attempt(os.sched_setscheduler, who, os.SCHED_BATCH, os.sched_param(0))
    OUT["getscheduler@" + tag] = attempt(os.sched_getscheduler, who) == os.SCHED_BATCH
    OUT["setparam@" + tag] = attempt(os.sched_setparam, who, os.sched_param(0))
    OUT["getparam@" + tag] = attempt(lambda: os.sched_getparam(who).sched_priority) == 0
    OUT["rr_interval@" + tag] = attempt(lambda: os.sched_rr_get_interval(who) >= 0)
    OUT["getpgid@" + tag] = attempt(os.getpgid, who) == os.getpgrp()
    OUT["getsid@" + tag] = attempt(os.getsid, who) == os.getsid(0)
    OUT["ioprio_set@" + tag] = attempt(lambda: raw("ioprio_set", 1, who, ARGS["ioprio"]) == 0)
    OUT["ioprio_get@" + tag] = raw("ioprio_get", 1, who) == ARGS["ioprio"]
    OUT["cpu_clock@" + tag] = cpu_clock_ns(who)
OUT["pidfd_open@me"] = attempt(lambda: os.close(os.pidfd_open(me)))
# a thread of the caller, by its thread id
tids, done = [], threading.Event()
t = threading.Thread(target=lambda: (tids.append(threading.get_native_id()), done.wait()))
t.start()
while not tids:
    time.sleep(0.01)
OUT["setpriority@thread"] = attempt(os.setpriority, os.PRIO_PROCESS, tids[0], 19)
OUT["getpriority@thread"] = attempt(os.getpriority, os.PRIO_PROCESS, tids[0]) == 19
OUT["setaffinity@thread"] = attempt(os.sched_setaffinity, tids[0], os.sched_getaffinity(0))
done.set()
t.join()
'''


@pytest.mark.parametrize("no_supervisor", [False, True], ids=["supervised", "no_supervisor"])
def test_the_caller_reaches_itself(py, base_readable, no_supervisor):
    """pid 0, the caller's own pid and its threads' ids. Without a supervisor
    only the forms a filter can see (pid 0) work."""
    out = py.sandboxed(sandbox(base_readable, no_supervisor=no_supervisor), SELF,
                       args(ioprio=IOPRIO_BE_6))
    self_forms = {k: v for k, v in out.items() if k.endswith("@0")}
    assert all(v in (True, "OK") for v in self_forms.values()), self_forms
    others = {k: v for k, v in out.items() if not k.endswith("@0")}
    if not no_supervisor:
        assert all(v in (True, "OK") for v in others.values()), others
    else:
        assert out["prlimit_set@me"] == "EPERM" and out["getsid@me"] is False  # ESRCH
        assert out["pidfd_open@me"] == "ESRCH" and out["setpriority@thread"] == "EPERM"
        assert out["cpu_clock@me"] == "EINVAL"


# -- other processes of the sandbox ---------------------------------------------------

MEMBERS = RAW + r'''
def run_child(session):
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        if session:
            os.setsid()
        os.write(ready_w, b"x")
        os.read(r, 1)
        os._exit(0)
    os.read(ready_r, 1)
    return pid, w

def orphan():
    """A grandchild whose parent exited: re-parented to the supervisor."""
    r, w = os.pipe()
    pr, pw = os.pipe()
    mid = os.fork()
    if mid == 0:
        g = os.fork()
        if g == 0:
            os.read(r, 1)
            os._exit(0)
        os.write(pw, str(g).encode())
        os._exit(0)
    os.waitpid(mid, 0)
    return int(os.read(pr, 32)), w

def calls(pid):
    out = {}
    lim = attempt(resource.prlimit, pid, resource.RLIMIT_NOFILE)
    out["prlimit"] = lim if isinstance(lim, str) else \
        attempt(setlimit, pid, resource.RLIMIT_NOFILE, (lim[0] - 1, lim[1]))
    out["setpriority"] = attempt(os.setpriority, os.PRIO_PROCESS, pid, 19)
    out["getpriority"] = attempt(os.getpriority, os.PRIO_PROCESS, pid) == 19
    out["setaffinity"] = attempt(os.sched_setaffinity, pid, os.sched_getaffinity(0))
    out["setscheduler"] = attempt(os.sched_setscheduler, pid, os.SCHED_IDLE, os.sched_param(0))
    out["getscheduler"] = attempt(os.sched_getscheduler, pid) == os.SCHED_IDLE
    out["getsid"] = attempt(os.getsid, pid)
    out["getpgid"] = attempt(os.getpgid, pid)
    out["ioprio"] = raw("ioprio_set", 1, pid, ARGS["ioprio"]) == 0 and raw("ioprio_get", 1, pid) == ARGS["ioprio"]
    out["cpu_clock"] = cpu_clock_ns(pid)
    out["pidfd_open"] = attempt(lambda: os.close(os.pidfd_open(pid)))
    return out

kids = [run_child(False), run_child(True), orphan()]
for (pid, w), tag in zip(kids, ("child", "session", "orphan")):
    for k, v in calls(pid).items():
        OUT[tag + ":" + k] = v if not isinstance(v, int) or isinstance(v, bool) else "OK"
    os.write(w, b"x")
for pid, _w in kids[:2]:
    os.waitpid(pid, 0)
'''


def test_processes_of_the_sandbox_are_reachable(py, base_readable):
    """A child, a child in a session of its own and an orphan (re-parented to
    the supervisor): each can be reniced, limited, rescheduled and looked up."""
    out = py.sandboxed(sandbox(base_readable), MEMBERS, args(ioprio=IOPRIO_BE_6))
    assert all(v in (True, "OK") for v in out.values()), out
    assert len(out) == 3 * 11


def test_without_a_supervisor_only_the_caller_itself(py, base_readable):
    out = py.sandboxed(sandbox(base_readable, no_supervisor=True), MEMBERS, args(ioprio=IOPRIO_BE_6))
    for tag in ("child", "session", "orphan"):
        assert out[tag + ":setpriority"] == "EPERM"
        assert out[tag + ":getsid"] == "ESRCH"
        assert out[tag + ":pidfd_open"] == "ESRCH"


# -- outside ------------------------------------------------------------------------------

OUTSIDE = RAW + r'''
# (Harmless changes only, should the refusal ever break: core size 0,
# SCHED_BATCH, a nice of 19.)
for tag, pid in (("supervisor", os.getppid()), ("caller", ARGS["caller"]), ("init", 1),
                 ("sleep", ARGS["sleep"])):
    OUT[tag] = {
        "prlimit_get": attempt(resource.prlimit, pid, resource.RLIMIT_CORE),
        "prlimit_set": attempt(setlimit, pid, resource.RLIMIT_CORE, (0, 0)),
        "setpriority": attempt(os.setpriority, os.PRIO_PROCESS, pid, 19),
        "getpriority": attempt(os.getpriority, os.PRIO_PROCESS, pid),
        "setscheduler": attempt(os.sched_setscheduler, pid, os.SCHED_BATCH, os.sched_param(0)),
        "getscheduler": attempt(os.sched_getscheduler, pid),
        "getaffinity": attempt(os.sched_getaffinity, pid),
        "getsid": attempt(os.getsid, pid),
        "pidfd_open": attempt(os.pidfd_open, pid),
        "ioprio_set": raw("ioprio_set", 1, pid, ARGS["ioprio"]),
        "ioprio_get": raw("ioprio_get", 1, pid),
        "cpu_clock": cpu_clock_ns(pid),
    }
'''
OUTSIDE_WANT = {"prlimit_get": "ESRCH", "prlimit_set": "EPERM", "setpriority": "EPERM",
                "getpriority": "ESRCH", "setscheduler": "EPERM", "getscheduler": "ESRCH",
                "getaffinity": "ESRCH", "getsid": "ESRCH", "pidfd_open": "ESRCH",
                "ioprio_set": "EPERM", "ioprio_get": "ESRCH", "cpu_clock": "EINVAL"}


@pytest.mark.parametrize("no_supervisor", [False, True], ids=["supervised", "no_supervisor"])
def test_processes_outside_are_refused(py, base_readable, no_supervisor):
    """The supervisor, the caller, pid 1 and an unrelated same-uid process:
    lookups ESRCH (as if they did not exist), changes EPERM, CPU clocks
    EINVAL."""
    sleep = subprocess.Popen(["sleep", "300"], start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        out = py.sandboxed(sandbox(base_readable, no_supervisor=no_supervisor), OUTSIDE,
                           args(ioprio=IOPRIO_BE_6, caller=os.getpid(), sleep=sleep.pid))
        assert os.getpriority(os.PRIO_PROCESS, sleep.pid) == os.getpriority(os.PRIO_PROCESS, 0)
        assert os.sched_getscheduler(sleep.pid) == os.SCHED_OTHER
    finally:
        sleep.kill()
        sleep.wait()
    for tag, got in out.items():
        assert got == OUTSIDE_WANT, (tag, got)


# -- groups and users ---------------------------------------------------------------------

GROUPS = RAW + r'''
OUT["prio_user_get"] = attempt(os.getpriority, os.PRIO_USER, 0)
OUT["prio_user_set"] = attempt(os.setpriority, os.PRIO_USER, 0, 19)
OUT["prio_user_set_uid"] = attempt(os.setpriority, os.PRIO_USER, os.getuid(), 19)
OUT["ioprio_user"] = raw("ioprio_set", 3, 0, ARGS["ioprio"])
# The sandbox's first process is in a group of its own, but in the caller's
# session: a same-session process outside could join the group.
OUT["own_group_set"] = attempt(os.setpriority, os.PRIO_PGRP, 0, 19)
OUT["own_group_get"] = attempt(os.getpriority, os.PRIO_PGRP, 0)
OUT["own_group_by_id"] = attempt(os.getpriority, os.PRIO_PGRP, os.getpgrp())
OUT["ioprio_own_group"] = raw("ioprio_set", 2, 0, ARGS["ioprio"])
OUT["outside_group"] = attempt(os.getpriority, os.PRIO_PGRP, ARGS["outside_pgrp"])
# A session made inside: every group in it is inside.
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.setsid()
    res = {"set": attempt(os.setpriority, os.PRIO_PGRP, 0, 19),
           "get": attempt(os.getpriority, os.PRIO_PGRP, 0),
           "by_id": attempt(os.getpriority, os.PRIO_PGRP, os.getpid()),
           "ioprio": raw("ioprio_set", 2, 0, ARGS["ioprio"]),
           "ioprio_get": raw("ioprio_get", 2, os.getpid())}
    os.write(w, repr(res).encode())
    os._exit(0)
os.close(w)
data = os.read(r, 4096)
os.waitpid(pid, 0)
OUT["session"] = eval(data)
'''


def test_process_groups_and_users(py, base_readable):
    """PRIO_USER / IOPRIO_WHO_USER name every process of a user: refused.
    A process group is allowed only in a session made inside the sandbox."""
    sleep = subprocess.Popen(["sleep", "300"], start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        out = py.sandboxed(sandbox(base_readable), GROUPS,
                           args(ioprio=IOPRIO_BE_6, outside_pgrp=sleep.pid))
        assert os.getpriority(os.PRIO_PROCESS, sleep.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        sleep.kill()
        sleep.wait()
    assert out.pop("session") == {"set": "OK", "get": 19, "by_id": 19, "ioprio": 0,
                                  "ioprio_get": IOPRIO_BE_6}
    assert out == {"prio_user_get": "EPERM", "prio_user_set": "EPERM", "prio_user_set_uid": "EPERM",
                   "ioprio_user": "EPERM", "own_group_set": "EPERM", "own_group_get": "ESRCH",
                   "own_group_by_id": "ESRCH", "ioprio_own_group": "EPERM", "outside_group": "ESRCH"}


# -- interplay with the rest of the policy ------------------------------------------------

def test_num_cpus_still_virtualizes_affinity(py, base_readable):
    """sched_getaffinity(0) continues to the dispatch, which sends it to
    procfs's virtual mask when num_cpus is set."""
    code = 'OUT["self"] = sorted(os.sched_getaffinity(0)); OUT["me"] = sorted(os.sched_getaffinity(os.getpid()))'
    assert py.sandboxed(sandbox(base_readable, num_cpus=1), code) == {"self": [0], "me": [0]}


def test_a_denied_syscall_stays_denied_for_the_caller_itself(py, base_readable):
    code = ('OUT["set"] = attempt(os.setpriority, os.PRIO_PROCESS, 0, 19)\n'
            'OUT["get"] = attempt(os.getpriority, os.PRIO_PROCESS, 0)')
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    out = py.sandboxed(sandbox(base_readable, extra_deny_syscalls=["setpriority"]), code)
    assert out == {"set": "EPERM", "get": nice}
    assert py.sandboxed(sandbox(base_readable), code) == {"set": "OK", "get": 19}


def test_a_user_handler_sees_the_self_form(base_readable):
    """run_with_handlers on setpriority sees setpriority(PRIO_PROCESS, 0):
    the filter's fast path does not skip the dispatch."""
    import sys
    seen = []

    def handler(ctx):
        seen.append(ctx.args[1])
        return NotifAction.errno(errno.EACCES)

    code = ("import os\ntry:\n os.setpriority(os.PRIO_PROCESS, 0, 5)\n print('OK')\n"
            "except OSError as e:\n print(e.errno)")
    r = sandbox(base_readable).run_with_handlers([sys.executable, "-I", "-S", "-c", code],
                                                 [("setpriority", handler)], timeout=30)
    assert r.stdout.strip() == str(errno.EACCES).encode(), (r.stdout, r.stderr, r.error)
