"""Process escapes: outliving the sandbox through setsid / double fork,
past a timeout, past the main process's exit, or past the supervisor's death.

Each sandboxed shell records the pids of the processes it starts in a file
of its writable directory; the test then watches those pids from outside.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from escape_lib import describe, is_dead, kill_if, read_pids, wait_dead
from sandlock import ExitReason, Sandbox

# Started by the sandboxed shell: one grandchild in a new session, one
# orphaned by a double fork (its parent subshell exits at once), both
# ignoring SIGTERM/SIGHUP. Each appends its own pid to $PIDS; the shell
# writes its own to $MAIN.
SPAWN = r'''
: > "$PIDS"
echo $$ > "$MAIN"
setsid sh -c 'trap "" TERM HUP; echo $$ >> "$PIDS"; exec sleep 300' >>"$LOG" 2>&1 &
( sh -c 'trap "" TERM HUP; echo $$ >> "$PIDS"; exec sleep 300' >>"$LOG" 2>&1 & )
while [ "$(wc -l < "$PIDS")" -lt 2 ]; do sleep 0.01; done
'''


def _env(w: str) -> dict:
    return {"PIDS": os.path.join(w, "pids"), "LOG": os.path.join(w, "log"),
            "MAIN": os.path.join(w, "main")}


def _all_pids(w: str) -> list[int]:
    """[main shell, grandchild, grandchild] (fails the test if missing)"""
    return read_pids(os.path.join(w, "main"), 1, timeout=1) + read_pids(os.path.join(w, "pids"), 2, timeout=1)


def _pids_so_far(w: str) -> list[int]:
    """Whatever pids were recorded (for cleanup and diagnostics)."""
    out = []
    for name in ("main", "pids"):
        try:
            with open(os.path.join(w, name)) as f:
                out += [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            pass
    return out


def _shell_sandbox(base, w):
    # dash opens /dev/null as the stdin of every background job
    return Sandbox(fs_readable=base + ["/dev/null"], fs_writable=[w], env=_env(w))


def _describe_pids(pids):
    out = []
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                out.append(f.read().strip())
        except OSError:
            out.append(f"{p}: gone")
    return out


def test_control_grandchildren_outlive_their_parent(wdir):
    """The control: unconfined, the setsid / double-forked processes survive
    their parent's exit (which is what the sandbox must prevent)."""
    subprocess.run(["sh", "-c", SPAWN], env=dict(os.environ, **_env(wdir)), timeout=10,
                   check=True, stdin=subprocess.DEVNULL)
    pids = _all_pids(wdir)
    try:
        assert is_dead(pids[0])            # the shell itself
        time.sleep(0.2)
        assert not any(is_dead(p) for p in pids[1:]), _describe_pids(pids)  # both still alive
    finally:
        for p in pids[1:]:
            kill_if(p, b"sleep")


def test_timeout_kills_setsid_and_double_forked(base, wdir):
    sb = _shell_sandbox(base, wdir)
    t0 = time.monotonic()
    r = sb.run(["sh", "-c", SPAWN + "exec sleep 300"], timeout=1)
    elapsed = time.monotonic() - t0
    pids = _pids_so_far(wdir)
    try:
        assert r.reason == ExitReason.TIMEOUT, describe(r)
        assert elapsed < 10
        assert len(pids) == 3, (pids, describe(r))
        alive = wait_dead(pids, 2.0)
        assert alive == [], _describe_pids(alive)
    finally:
        for p in pids:
            kill_if(p, b"sleep")


def test_main_exit_kills_setsid_and_double_forked(base, wdir):
    sb = _shell_sandbox(base, wdir)
    r = sb.run(["sh", "-c", SPAWN + "exit 0"], timeout=20)
    pids = _pids_so_far(wdir)
    try:
        assert r.reason == ExitReason.EXITED and r.exit_code == 0, describe(r)
        assert len(pids) == 3, (pids, describe(r))
        alive = wait_dead(pids, 2.0)
        assert alive == [], _describe_pids(alive)
    finally:
        for p in pids:
            kill_if(p, b"sleep")


# 24. surviving the supervisor's death --------------------------------------------------------

def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def _kill_supervisor_and_watch(base, wdir, watch_grandchild: bool):
    """Start a sandbox whose main process double-forks a grandchild, SIGKILL
    the supervisor; return (main pid, grandchild pid, the watched pids still
    alive after ~2 s)."""
    sb = _shell_sandbox(base, wdir)
    script = (r'''( sh -c 'trap "" TERM HUP; echo $$ >> "$PIDS"; exec sleep 300' >>"$LOG" 2>&1 & )
while [ ! -s "$PIDS" ]; do sleep 0.01; done
exec sleep 300''')
    proc = sb.popen(["sh", "-c", script], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    main = sb.pid
    grandchild = read_pids(os.path.join(wdir, "pids"), 1)[0]
    pids = [main, grandchild]
    try:
        sup = _ppid(main)
        assert sup not in (os.getpid(), 0, 1), f"unexpected supervisor pid {sup}"
        os.kill(sup, signal.SIGKILL)
        alive = wait_dead(pids if watch_grandchild else [main], 2.0)
        return main, grandchild, alive
    finally:
        try:
            proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - best effort: the supervisor is gone
            pass
        for p in pids:
            kill_if(p, b"sleep")


def test_supervisor_death_kills_main_process(base, wdir):
    main, _grandchild, alive = _kill_supervisor_and_watch(base, wdir, False)
    assert main not in alive


def test_supervisor_death_kills_grandchildren(base, wdir):
    # (Failed before 9333ca6: the orphan went to init. The launch server,
    # a subreaper above the supervisors, now kills what a dead one leaves.)
    _main, grandchild, alive = _kill_supervisor_and_watch(base, wdir, True)
    assert grandchild not in alive, _describe_pids(alive)


# The caller's death ends the sandbox too -------------------------------------------------------

CALLER = r'''
import json, subprocess, sys, time
from sandlock import Sandbox
a = json.loads(sys.argv[1])
sb = Sandbox(fs_readable=a["base"], fs_writable=[a["w"]], env=a["env"])
p = sb.popen(["sh", "-c", a["script"]], stdin=subprocess.DEVNULL,
             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(sb.pid, flush=True)
time.sleep(300)
'''


def test_caller_death_kills_everything(base, wdir):
    """A caller SIGKILLed mid-run (it cannot clean up) leaves no sandbox
    process behind: not the main process, not its orphan, not the supervisor."""
    import json
    import sandlock
    script = SPAWN + "exec sleep 300"
    args = dict(base=base + ["/dev/null"], w=wdir, env=_env(wdir), script=script)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(sandlock.__file__)))
    caller = subprocess.Popen([sys.executable, "-c", CALLER, json.dumps(args)], env=env,
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    pids: list[int] = []
    try:
        main = int(caller.stdout.readline())
        pids = _all_pids(wdir)
        assert pids[0] == main
        sup = _ppid(main)
        assert sup != caller.pid and not is_dead(sup)
        os.kill(caller.pid, signal.SIGKILL)
        caller.wait()
        alive = wait_dead(pids + [sup], 2.0)
        assert alive == [], _describe_pids(alive)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
        caller.stdout.close()
        for p in pids:
            kill_if(p, b"sleep")
