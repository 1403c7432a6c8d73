"""policy_fn rows: what a callback costs per held syscall, and what it must not cost.

  policy_fn_open_2000       in-program time per open() when every open is
                            held for a trivial allow-all policy_fn (sandlock),
                            and with no policy_fn (extra)
  policy_fn_open_observe    the same opens only observed (policy_fn_observe):
                            reported, never held
  policy_fn_connect_300     300 loopback connects, each held for policy_fn
                            (sandlock) and with no policy_fn (extra)
  policy_fn_unheld_while_held  opens nobody asked about, while another thread's
                            connect waits 0.3 s on a slow callback: must cost
                            what they cost without policy_fn
  policy_fn_busy_caller     held opens while a thread of the caller spins in
                            Python (the callback thread competes for the GIL):
                            what a busy caller costs a held syscall

The issue's reference figures (measured on this kind of machine, not
re-measured here: the reference probe cannot carry a Python callback) are
printed as notes.
"""
from __future__ import annotations

import sys
import threading
import time

from ..core import EXTRA, SANDLOCK, UNSANDBOXED, Row, Settings, in_program, measure, readable, run_plain, \
    run_sandlock
from .net import Listener

OPENS = 2000
CONNECTS = 300

OPEN_PROGRAM = f"""
import time
t0 = time.perf_counter()
for _ in range({OPENS}):
    open("/etc/hostname", "rb").close()
t1 = time.perf_counter()
print("cpu", time.process_time())
print(t1 - t0)
"""

CONNECT_PROGRAM = """
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
t0 = time.perf_counter()
for _ in range(n):
    s = socket.socket()
    s.connect(("127.0.0.1", port))
    s.close()
t1 = time.perf_counter()
print("cpu", time.process_time())
print(t1 - t0)
"""

# Opens in the main thread while a second thread's connect is held.
UNHELD_PROGRAM = OPEN_PROGRAM.replace("import time\n", """import socket, sys, threading, time
def held():
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        pass
threading.Thread(target=held).start()
time.sleep(0.02)
""", 1)


def _allow(event, ctx):
    return None


def _slow(event, ctx):
    if event.syscall == "connect":
        time.sleep(0.3)
    return None


def _with_extra(row: Row, what: str) -> Row:
    """The extra column (a sandlock variant) as a note: per call and vs bare."""
    extra, bare = row.cells.get(EXTRA), row.cells.get(UNSANDBOXED)
    if extra is not None and extra.median is not None:
        ratio = f", {extra.median / bare.median:.2f}x bare" if bare is not None and bare.median else ""
        row.notes.append(f"{what}: {extra.median / row.per * 1e6:.1f} us per call{ratio}")
    return row


def _open_row(s: Settings, name: str, metric: str, extra_policy: dict, notes: list[str],
              extra: dict | None = None) -> Row:
    reps = s.reps(7, 2)
    cmd = [sys.executable, "-c", OPEN_PROGRAM]
    base = {"fs_readable": readable()}
    variants = {
        UNSANDBOXED: lambda: in_program(run_plain(cmd)),
        SANDLOCK: lambda: in_program(run_sandlock(cmd, {**base, **extra_policy}, workload=name)),
    }
    if extra is not None:
        variants[EXTRA] = lambda: in_program(run_sandlock(cmd, {**base, **extra}, workload=name))
    cells = measure(variants, reps)
    return _with_extra(Row(name=name, metric=metric, unit="us", per=OPENS, reps=reps, cells=cells,
                           notes=notes), "extra")


def policy_fn_open_2000(s: Settings) -> Row:
    return _open_row(s, "policy_fn_open_2000",
                     f"in-program time per open() ({OPENS}), each held for an allow-all policy_fn "
                     "(extra: no policy_fn)",
                     {"policy_fn": _allow, "policy_fn_events": ["openat"]},
                     ["issue 10: the reference takes 76-79x bare here; target <= 0.5x the reference"],
                     extra={})


def policy_fn_open_observe(s: Settings) -> Row:
    return _open_row(s, "policy_fn_open_observe",
                     f"in-program time per open() ({OPENS}), observed only (policy_fn_observe)",
                     {"policy_fn": _allow, "policy_fn_events": ["openat"], "policy_fn_observe": ["openat"]},
                     ["issue 10: target <= 5x bare in observe-only mode"])


def _listener_row(s: Settings, name: str, program: str, fn, per: int, metric: str,
                  notes: list[str], reps: int) -> Row:
    """A program talking to a loopback listener: bare, with `fn` judging its
    connects (sandlock) and without policy_fn (extra)."""
    with Listener("close") as lis:
        cmd = [sys.executable, "-c", program, str(lis.port), str(CONNECTS)]
        policy = {"fs_readable": readable(), "net_allow": [f"127.0.0.1:{lis.port}"]}
        cells = measure({
            UNSANDBOXED: lambda: in_program(run_plain(cmd)),
            SANDLOCK: lambda: in_program(run_sandlock(
                cmd, {**policy, "policy_fn": fn, "policy_fn_events": ["connect"]}, workload=name)),
            EXTRA: lambda: in_program(run_sandlock(cmd, policy, workload=name)),
        }, reps)
    return _with_extra(Row(name=name, metric=metric, unit="us", per=per, reps=reps, cells=cells,
                           notes=notes), "no policy_fn")


def policy_fn_connect_300(s: Settings) -> Row:
    return _listener_row(s, "policy_fn_connect_300", CONNECT_PROGRAM, _allow, CONNECTS,
                         f"in-program time per connect ({CONNECTS} loopback), each held for "
                         "policy_fn (extra: no policy_fn)",
                         ["issue 10: the reference takes 9-11x bare here"], s.reps(7, 2))


def policy_fn_unheld_while_held(s: Settings) -> Row:
    return _listener_row(s, "policy_fn_unheld_while_held", UNHELD_PROGRAM, _slow, OPENS,
                         f"in-program time per open() ({OPENS}, not asked about) while another "
                         "thread's connect waits 0.3 s on policy_fn (extra: no policy_fn)",
                         [], s.reps(5, 1))


def policy_fn_busy_caller(s: Settings) -> Row:
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            sum(range(1000))

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        row = _open_row(s, "policy_fn_busy_caller",
                        f"in-program time per open() ({OPENS}) held for policy_fn while a caller "
                        "thread spins in Python (extra: the same opens not asked about)",
                        {"policy_fn": _allow, "policy_fn_events": ["openat"]}, [],
                        extra={"policy_fn": _allow, "policy_fn_events": ["connect"]})
    finally:
        stop.set()
        spinner.join()
    row.caller_cpu = False
    return row
