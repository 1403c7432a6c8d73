"""The fork template: runs INSIDE a sandbox, for Sandbox.fork(n).

    python -I -S -c BOOT SPEC_JSON

It imports `init_fn` and `work_fn` by module and qualified name, runs
`init_fn()` once, then forks the clones with `os.fork()` (Python's own
fork, with its after-fork hooks, from this single-threaded process; never
a raw fork of a threaded interpreter). Each clone has `CLONE_ID=<i>` in
its environment, its stdout on a pipe of its own, and runs `work_fn(i)`.
Because the template is the sandboxed command, every clone is a process of
that sandbox: the same Landlock ruleset and seccomp filter (inherited
through fork), the same supervisor deciding its routed syscalls (network
rules, max_memory, max_processes), and it dies with the sandbox.

What the template writes on its own stdout is a stream of frames for the
caller (clone_frames below); anything init_fn or the template prints goes
to stderr instead. Those frames come from inside the sandbox, so the
caller parses them as hostile input: fixed-size binary headers, bounded
lengths, never unmarshalled or unpickled (which is why they are not
protocol.py messages: that module's peers are sandlock's own processes).
"""
from __future__ import annotations

import _signal
import os
import signal
import struct
import sys

# Frame: u32 clone index · u8 kind · u32 payload length · payload
FRAME = struct.Struct("=IBI")
PID, DATA, EXIT = 1, 2, 3   # payload: u32 pid; bytes; i32 wait status
MAX_FRAME = 1 << 16
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")

# The -c program that runs the template: the package's parent directory
# first on sys.path (argv[1]), then main(argv[2]).
BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
        "from sandlock._fork_template import main; main(sys.argv[2])")


def resolve(spec: list) -> object:
    """[module, qualname, main file or None] → the function. A function of
    the caller's __main__ is loaded from its file under another name (as
    multiprocessing does), so the script's guarded code does not run."""
    import importlib
    module, qualname, main_file = spec
    if module == "__main__":
        import runpy
        namespace = runpy.run_path(main_file, run_name="__sandlock_fork_main__")
        obj: object = namespace[qualname.split(".")[0]]
        rest = qualname.split(".")[1:]
    else:
        obj = importlib.import_module(module)
        rest = qualname.split(".")
    for part in rest:
        obj = getattr(obj, part)
    return obj


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _threads() -> int:
    # threading only if init_fn loaded it: imported here, its after-fork
    # hook would run Python code in every clone (pages copied per clone).
    threading = sys.modules.get("threading")
    count = threading.active_count() if threading is not None else 1
    try:
        count = max(count, len(os.listdir("/proc/self/task")))
    except OSError:
        pass
    return count


def _clone(i: int, w: int, chan: int, open_fds: list[int], work_fn) -> None:
    """In the clone: stdout is its pipe; run work_fn(i); never return."""
    code = 0
    try:
        # _signal, not signal.signal: the latter's enum conversions touched
        # ~40 more pages per clone, each then copied. With the epoll below,
        # perf stat on fork(1000): 310 -> 230 page faults a clone, task-clock
        # ~2.2 -> ~1.8 ms a clone (a bare os.fork loop: ~112 and ~0.85 ms).
        _signal.set_wakeup_fd(-1)
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        os.dup2(w, 1)
        for fd in (w, chan, *open_fds):
            os.close(fd)
        os.environ["CLONE_ID"] = str(i)
        try:
            work_fn(i)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - reported on the clone's stderr
            import traceback
            traceback.print_exc()
            code = 1
        finally:
            try:
                sys.stdout.flush()
            except Exception:  # noqa: BLE001 - e.g. a reader that went away
                code = code or 1
            try:
                sys.stderr.flush()
            except Exception:  # noqa: BLE001
                pass
    finally:
        os._exit(code & 0xFF)


def main(spec_json: str) -> None:
    import json
    import resource
    import select
    spec = json.loads(spec_json)
    n, concurrency = int(spec["n"]), int(spec["concurrency"])
    # The caller's import path first (to find init_fn and work_fn as it
    # does), then this interpreter's own.
    sys.path[:] = list(dict.fromkeys([*spec["path"], *sys.path]))
    sys.stdout.flush()
    chan = os.dup(1)               # the frames; fd 1 becomes stderr for init_fn's prints
    os.set_inheritable(chan, False)
    os.dup2(2, 1)
    try:
        init_fn = resolve(spec["init"])
        work_fn = resolve(spec["work"])
    except Exception as e:  # noqa: BLE001
        print(f"sandlock fork: cannot import init_fn/work_fn: {type(e).__name__}: {e}",
              file=sys.stderr)
        sys.exit(3)
    init_fn()  # type: ignore[operator]
    threads = _threads()
    if threads != 1:
        print(f"sandlock fork: init_fn left {threads - 1} other thread(s) running; forking a "
              "threaded process is unsafe (a lock another thread holds stays held in every "
              "clone)", file=sys.stderr)
        sys.exit(4)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    if soft != resource.RLIM_INFINITY:
        concurrency = max(1, min(concurrency, soft - 16))
    # select.epoll, not selectors: closing a selector in a clone freed its
    # keys, Python objects whose pages were then copied (~35 page faults a
    # clone), and the loop made such objects for every clone.
    ep = select.epoll()
    # SIGCHLD wakes the loop (through the wakeup fd) to reap a clone.
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)
    ep.register(wake_r, select.EPOLLIN)
    pids: dict[int, int] = {}       # pid → clone
    reading: dict[int, int] = {}    # read fd → clone
    open_pipe: set[int] = set()     # clones whose pipe has not reached EOF
    statuses: dict[int, int] = {}   # clone → wait status, reaped but pipe still open
    next_clone = 0
    running = 0
    while next_clone < n or running:
        while next_clone < n and running < concurrency:
            i = next_clone
            r, w = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as e:
                os.close(r)
                os.close(w)
                if running:
                    break  # max_processes: wait for a clone to end
                print(f"sandlock fork: cannot fork clone {i}: {e}", file=sys.stderr)
                sys.exit(5)
            if pid == 0:
                ep.close()
                _clone(i, w, chan, [r, *reading, wake_r, wake_w], work_fn)
            os.close(w)
            os.set_blocking(r, False)
            ep.register(r, select.EPOLLIN)
            pids[pid] = i
            reading[r] = i
            open_pipe.add(i)
            running += 1
            next_clone += 1
            _write_all(chan, FRAME.pack(i, PID, 4) + _U32.pack(pid))
        for fd, _ev in ep.poll(-1 if running else 0):
            if fd == wake_r:
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                continue
            i = reading[fd]
            try:
                data = os.read(fd, MAX_FRAME)
            except BlockingIOError:
                continue
            if data:
                _write_all(chan, FRAME.pack(i, DATA, len(data)) + data)
                continue
            ep.unregister(fd)
            os.close(fd)
            del reading[fd]
            open_pipe.discard(i)
            if i in statuses:
                _write_all(chan, FRAME.pack(i, EXIT, 4) + _I32.pack(statuses.pop(i)))
                running -= 1
        while pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            i = pids.pop(pid, -1)
            if i < 0:
                continue  # an orphan of a clone, re-parented here
            if i in open_pipe:
                statuses[i] = status  # its output is not all read yet
            else:
                _write_all(chan, FRAME.pack(i, EXIT, 4) + _I32.pack(status))
                running -= 1
    os.close(chan)
