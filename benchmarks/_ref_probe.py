"""Standalone timing probe for the *reference* sandlock SDK (optional column).

Run by the harness as ``REF_PYTHON -I _ref_probe.py`` in the harness's
working directory and environment; imports only the standard library and
whatever ``sandlock`` the interpreter running it has installed.

It serves the harness one sample at a time, so the reference column is
interleaved with the others, round by round, with the same pause before
each sample (the pause is made by the harness, before it sends the
request).  Requests and answers are JSON lines on the probe's original
stdin / stdout; fds 0 and 1 are then pointed at /dev/null, so a command
the reference SDK runs (it inherits the caller's stdin) gets /dev/null as
stdin, as in the other columns.

First answer: {"version": ..., "file": ...} or {"error": ...}.
Request: {"variant": "ref" | "plain", "cmd": [...], "readable": [...],
          "count": N, "threads": T}
  ref    Sandbox(fs_readable=readable).run(cmd), construction included
  plain  subprocess.run(cmd, stdin=DEVNULL, capture_output=True)
  count/threads: 1/1 is one run; otherwise a block of `count` runs with no
  pause, spread over `threads` threads started together.
Answer: {"wall": s, "self_cpu": s, "child_cpu": s, "latency": s} or
{"error": ...}.  self_cpu is this process's CPU time over the sample (all
threads: the reference SDK supervises from a thread of the caller),
child_cpu that of the children it waited for.
"""
import json
import os
import resource
import subprocess
import sys
import threading
import time


def cpu_now():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time(), ru.ru_utime + ru.ru_stime


def one_run(sandlock, variant, cmd, readable):
    t0 = time.perf_counter()
    if variant == "ref":
        r = sandlock.Sandbox(fs_readable=readable).run(cmd, timeout=300)
        dt = time.perf_counter() - t0
        if not r.success:
            err = r.error or (r.stderr or b"").decode(errors="replace").strip()[-200:]
            raise RuntimeError(f"run failed (exit {r.exit_code}): {err}")
    else:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"exit {p.returncode}")
    return dt


def sample(sandlock, req):
    variant, cmd, readable = req["variant"], req["cmd"], req["readable"]
    count, threads = req.get("count", 1), req.get("threads", 1)
    lat = []
    errors = []
    if threads == 1:
        c0, ch0 = cpu_now()
        t0 = time.perf_counter()
        for _ in range(count):
            lat.append(one_run(sandlock, variant, cmd, readable))
        wall = time.perf_counter() - t0 if count > 1 else lat[0]
        c1, ch1 = cpu_now()
    else:
        start = threading.Barrier(threads + 1)

        def worker():
            try:
                start.wait()
                for _ in range(count // threads):
                    lat.append(one_run(sandlock, variant, cmd, readable))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
        for t in pool:
            t.start()
        c0, ch0 = cpu_now()
        start.wait()
        t0 = time.perf_counter()
        for t in pool:
            t.join()
        wall = time.perf_counter() - t0
        c1, ch1 = cpu_now()
        if errors:
            raise errors[0]
    return {"wall": wall, "self_cpu": c1 - c0, "child_cpu": ch1 - ch0,
            "latency": sum(lat) / len(lat)}


def main() -> int:
    inp = os.fdopen(os.dup(0), "r")
    out = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)

    def reply(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        import sandlock
    except Exception as e:  # noqa: BLE001
        reply({"error": f"cannot import sandlock: {e}"})
        return 0
    version = getattr(sandlock, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as _v
            version = _v("sandlock")
        except Exception:  # noqa: BLE001
            version = None
    reply({"version": version, "file": sandlock.__file__})
    for line in inp:
        try:
            reply(sample(sandlock, json.loads(line)))
        except Exception as e:  # noqa: BLE001
            reply({"error": f"{type(e).__name__}: {e}"[:300]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
