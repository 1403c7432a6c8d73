"""sandlock.ray on a local two-node Ray cluster: per-task overhead.

    python -m benchmarks.ray_tasks            # 200 tasks per sample
    python -m benchmarks.ray_tasks --quick    # 50

Needs the ray extra (`pip install '.[ray]'`); starts its own cluster
(tests/_ray_cluster.py: two nodes on loopback, 1 CPU each) and tears it
down. Rows, each variant a Ray task with num_cpus=1, interleaved:

  ray_true_seq   /bin/true, one task at a time (submit, get): median
                 round trip per task
  ray_true_all   /bin/true, N tasks submitted at once: wall time / N,
                 median over blocks
  ray_py_fn      a Python function f(x) = x + 1, one task at a time

Columns: `subprocess` is a plain Ray task running subprocess.run(cmd,
capture_output=True) (for ray_py_fn: a fresh `python -I -c` calling the
function, the nearest unsandboxed equivalent, and `in-process`, a plain
task calling it); `sandlock` is sandlock.ray.run(cmd) /
@sandlock.ray.sandboxed. Speed is printed, never asserted. Workers are
warmed first (every worker's launch server started), as in a long job.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

TRUE = ["/bin/true"]


def _plain_true(cmd):
    r = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL)
    return r.returncode


def _add_one(x):
    return x + 1


def _plain_python(x):
    r = subprocess.run([sys.executable, "-I", "-c", "import sys; print(int(sys.argv[1]) + 1)", str(x)],
                       capture_output=True, stdin=subprocess.DEVNULL)
    return int(r.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ray_tasks")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    try:
        import ray

        import sandlock.ray as sr
    except ImportError as e:
        print(f"ray_tasks: skipped, the ray extra is not installed ({e})")
        return 0
    from _ray_cluster import LocalCluster, connect

    n = 50 if args.quick else 200
    blocks = 2 if args.quick else 3
    cluster = LocalCluster(head_cpus=1, node_cpus=1)
    try:
        cluster.start()
        connect(cluster)
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        plain_true = ray.remote(num_cpus=1)(_plain_true)
        plain_py = ray.remote(num_cpus=1)(_plain_python)
        in_process = ray.remote(num_cpus=1)(_add_one)
        boxed_py = sr.sandboxed(_add_one, num_cpus=1)

        def boxed_true():
            return sr.run(TRUE, num_cpus=1)

        # Warm every worker (and its launch server) on both nodes.
        ray.get([plain_true.remote(TRUE) for _ in range(20)] + [boxed_true() for _ in range(20)]
                + [boxed_py.remote(1) for _ in range(10)] + [plain_py.remote(1) for _ in range(10)])

        rows = []

        def seq(variants):
            times: dict[str, list[float]] = {k: [] for k in variants}
            for i in range(n):
                order = list(variants.items())
                order = order[i % len(order):] + order[:i % len(order)]
                for name, submit in order:
                    t0 = time.perf_counter()
                    ray.get(submit())
                    times[name].append(time.perf_counter() - t0)
            return {k: statistics.median(v) for k, v in times.items()}

        def at_once(variants):
            times: dict[str, list[float]] = {k: [] for k in variants}
            for b in range(blocks):
                order = list(variants.items())
                if b % 2:
                    order.reverse()
                for name, submit in order:
                    t0 = time.perf_counter()
                    ray.get([submit() for _ in range(n)])
                    times[name].append((time.perf_counter() - t0) / n)
            return {k: statistics.median(v) for k, v in times.items()}

        true_variants = {"subprocess": lambda: plain_true.remote(TRUE), "sandlock": boxed_true}
        rows.append(("ray_true_seq", n, seq(true_variants)))
        rows.append(("ray_true_all", n, at_once(true_variants)))
        rows.append(("ray_py_fn", n, seq({"in-process": lambda: in_process.remote(1),
                                          "subprocess": lambda: plain_py.remote(1),
                                          "sandlock": lambda: boxed_py.remote(1)})))
    finally:
        try:
            ray.shutdown()
        finally:
            cluster.stop()

    print(f"sandlock.ray, 2-node local cluster (1 CPU each), load average {os.getloadavg()[0]:.2f}")
    print(f"{'workload':14} | {'n':>4} | {'in-process':>10} | {'subprocess':>10} | {'sandlock':>9} | "
          f"{'+ per task':>10} | ratio")
    print("-" * 15 + "+------+------------+------------+-----------+------------+------")
    for name, count, med in rows:
        base, box = med["subprocess"], med["sandlock"]
        inproc = f"{med['in-process'] * 1e3:.2f} ms" if "in-process" in med else "-"
        print(f"{name:14} | {count:4} | {inproc:>10} | {base * 1e3:7.2f} ms | {box * 1e3:6.2f} ms | "
              f"{(box - base) * 1e3:+7.2f} ms | {box / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
