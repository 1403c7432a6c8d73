"""A two-node Ray cluster on this machine, on loopback, for tests and
benchmarks: a head (`ray start --head`) and a second node (`ray start
--address`), small resources, a private temp dir under /tmp.

Teardown kills exactly this cluster's processes, by pid: the process
groups of its two `ray start` daemons (GCS, raylets, their agents) and
every descendant of them (workers, which Ray puts in process groups of
their own, and what they started). Not `ray stop --force`: that kills
every Ray process of the machine by name, another user's cluster too.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

OBJECT_STORE = 100 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "ray")
    if os.path.exists(script):
        return [sys.executable, script]
    return [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "RAY_USAGE_STATS_ENABLED": "0",          # no phoning home
        "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
        "RAY_DEDUP_LOGS": "0",
        # Ray advertises this machine's outward address unless told loopback.
        "RAY_NODE_IP_ADDRESS": "127.0.0.1",
    })
    return env


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(name))
    return kids


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


class LocalCluster:
    def __init__(self, head_cpus: int = 1, node_cpus: int = 1):
        self.head_cpus = head_cpus
        self.node_cpus = node_cpus
        self.temp_dir = ""
        self.port = 0
        self.address = ""

    def start(self) -> "LocalCluster":
        self.temp_dir = tempfile.mkdtemp(dir="/tmp", prefix="sl-ray-")
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        common = ["--node-ip-address=127.0.0.1", f"--object-store-memory={OBJECT_STORE}",
                  "--disable-usage-stats", "--dashboard-agent-listen-port=0", "--log-style=record"]
        try:
            self._ray("start", "--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
                      "--include-dashboard=false", f"--temp-dir={self.temp_dir}", *common)
            self._ray("start", f"--address={self.address}", f"--num-cpus={self.node_cpus}", *common)
        except BaseException:
            self.stop()
            raise
        return self

    def _ray(self, *args: str) -> None:
        proc = subprocess.run([*_ray_cli(), *args], env=_env(), capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args[:2])} failed ({proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")

    def pids(self) -> set[int]:
        """Every live process of this cluster: those naming its temp dir,
        their process groups, and all their descendants."""
        roots = set()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if self.temp_dir.encode() in f.read():
                        roots.add(int(name))
            except OSError:
                continue
        groups = {g for g in map(_pgid, roots) if g is not None and g != os.getpgid(0)}
        kids = _children()
        for pids in kids.values():
            for pid in pids:
                if _pgid(pid) in groups:
                    roots.add(pid)
        out, todo = set(), list(roots)
        while todo:
            pid = todo.pop()
            if pid in out or pid == os.getpid():
                continue
            out.add(pid)
            todo.extend(kids.get(pid, []))
        return out

    def stop(self) -> None:
        if not self.temp_dir:
            return
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                time.sleep(0.1)
                pids = {p for p in pids if os.path.exists(f"/proc/{p}") and not _zombie(p)}
            if not pids:
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.temp_dir = ""


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def connect(cluster: LocalCluster) -> None:
    import ray
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", logging_level="ERROR",
             log_to_driver=False, configure_logging=False)
