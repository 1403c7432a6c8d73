"""sandlock.ray on a real two-node Ray cluster on this machine (loopback).

Skipped, with the reason shown, when the `ray` extra is not installed
(CI's uid 65534 re-run does not install it). One cluster for the module:
started by the fixture, torn down by pid even when a test fails.
"""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import threading
import time
import uuid

import pytest

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed (pip install 'sandlock[ray]')")

import sandlock.ray as sr  # noqa: E402
from _ray_cluster import LocalCluster, connect  # noqa: E402
from sandlock import PolicyError  # noqa: E402
from sandlock.sandbox import ExitReason  # noqa: E402

# Ray pickles this module's functions and actor classes by reference
# unless told otherwise; the workers cannot import a test module.
ray.cloudpickle.register_pickle_by_value(__import__(__name__))


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(head_cpus=1, node_cpus=1)
    try:
        c.start()
        connect(c)
        yield c
    finally:
        try:
            ray.shutdown()
        finally:
            c.stop()


def _pgrep(pattern: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return out.stdout.split()


def _wait_for(cond, timeout: float) -> float | None:
    """Seconds until cond() held, or None after timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def _get(refs, timeout: float = 120):
    """ray.get with a deadline: a stuck task fails its test, never hangs the suite."""
    return ray.get(refs, timeout=timeout)


def _cause(exc: BaseException) -> BaseException:
    """The task's own exception inside Ray's RayTaskError."""
    return getattr(exc, "cause", None) or exc


# -- the caller's side: policies are validated before submission ---------------

def test_policy_is_validated_before_submission():
    with pytest.raises(PolicyError, match="max_memory"):
        sr.run(["/bin/true"], policy={"max_memory": "lots"})
    with pytest.raises(PolicyError, match="unknown Sandbox field"):
        sr.sandboxed(policy={"not_a_field": 1})
    with pytest.raises(PolicyError, match="profile"):
        sr.run(["/bin/true"], policy="no-such-profile-" + uuid.uuid4().hex)
    with pytest.raises(PolicyError, match="cmd"):
        sr.run("/bin/true")
    with pytest.raises(PolicyError, match="policy_fn"):
        sr.policy({"policy_fn": lambda *a: None})


def test_default_policy_is_the_cli_default():
    from sandlock import cli
    fields = sr.default_policy(task_dir="/tmp/sl-task")
    for p in cli.DEFAULT_READABLE:
        assert (p in fields["fs_readable"]) == os.path.exists(p)
    assert set(cli.DEFAULT_DENIED) <= set(fields["fs_denied"])
    assert "/tmp/sl-task" in fields["fs_writable"]
    assert fields["env"]["TMPDIR"] == "/tmp/sl-task"
    assert not fields.get("net_allow")


# -- on the cluster ---------------------------------------------------------------

def test_200_tasks_succeed_on_both_nodes(cluster):
    refs = [sr.run(["/bin/sh", "-c", 'echo "$RAY_RAYLET_PID"'], scheduling_strategy="SPREAD")
            for _ in range(200)]
    results = _get(refs, timeout=240)
    assert all(r.success and r.exit_code == 0 for r in results), \
        [(r.exit_code, r.error, r.stderr) for r in results if not r.success][:3]
    raylets = {r.stdout.strip() for r in results}
    assert len(raylets) == 2, raylets  # one raylet per node: both nodes ran tasks


def test_function_arguments_return_value_and_exceptions(cluster):
    @sr.sandboxed(policy=None)
    def add(x, y=1):
        return {"sum": x + y, "cwd": os.getcwd(), "tmp": os.environ["TMPDIR"]}

    out = _get(add.remote(2, y=3))
    assert out["sum"] == 5 and out["cwd"] == out["tmp"]
    assert _get(add.options(num_cpus=0.5).remote(x=1, y=1))["sum"] == 2
    assert add(4)["sum"] == 5  # a plain call: in a sandbox here
    # An ObjectRef argument is resolved by Ray, as for any task.
    assert _get(add.remote(ray.put(10)))["sum"] == 11

    @sr.sandboxed
    def fails(path):
        open(path)

    with pytest.raises(FileNotFoundError) as info:
        _get(fails.remote("/usr/no-such-file"))
    assert "sandlock.ray.RemoteTraceback" in str(info.value)  # the sandbox's traceback, as the cause


def test_function_runs_in_the_sandbox_not_the_worker(cluster):
    @sr.sandboxed
    def where():
        with open("/proc/self/status") as f:
            seccomp = [line for line in f if line.startswith("Seccomp:")]
        return os.getppid() != 1 and seccomp[0].split()[1]

    assert _get(where.remote()) == "2"  # filter mode: under seccomp


def test_writing_outside_the_task_directory_is_denied(cluster, world_dir):
    outside = os.path.join(world_dir, "outside.txt")

    @sr.sandboxed
    def write(path):
        with open("inside.txt", "w") as f:      # the task directory: allowed
            f.write("ok")
        with open(path, "w") as f:
            f.write("escaped")

    with pytest.raises(PermissionError):
        _get(write.remote(outside))
    assert not os.path.exists(outside)
    r = _get(sr.run(["/bin/sh", "-c", f'echo a > "$TMPDIR/a" && cat "$TMPDIR/a" && echo b > {outside}']))
    assert r.stdout == b"a\n" and r.exit_code != 0 and b"Permission denied" in r.stderr
    assert not os.path.exists(outside)


def test_policy_from_a_profile_and_a_sandbox(cluster, base_readable):
    r = _get(sr.run(["/bin/sh", "-c", "echo $TMPDIR; echo x > /tmp/sl-ray-profile-x"], policy="python"))
    assert r.stdout.startswith(b"/tmp/sandlock-ray-") and r.exit_code != 0  # built-in profile: /tmp not writable
    from sandlock import Sandbox
    r = _get(sr.run(["/bin/sh", "-c", 'echo ok > "$TMPDIR/f" && cat "$TMPDIR/f"'],
                    policy=Sandbox(fs_readable=base_readable)))
    assert r.success and r.stdout == b"ok\n", r


def test_memory_limit_kills(cluster):
    @sr.sandboxed(policy={"max_memory": "64M"})
    def hog():
        return len(bytearray(300 << 20))

    with pytest.raises(sr.SandboxedTaskError) as info:
        _get(hog.remote())
    assert "max_memory" in str(info.value)
    r = _get(sr.run(["/bin/true"], policy={"max_memory": "64M"}))
    assert r.success  # the limit alone does not kill


def test_timeout_fires(cluster):
    start = time.monotonic()
    r = _get(sr.run(["/bin/sleep", "30"], timeout=1))
    assert r.reason == ExitReason.TIMEOUT and not r.success
    assert time.monotonic() - start < 20

    @sr.sandboxed(timeout=1)
    def slow():
        time.sleep(30)

    with pytest.raises(sr.SandboxedTaskError, match="timed out"):
        _get(slow.remote())


def _sleepers(marker: str) -> list[str]:
    # The command and a background child of it (a second process of the
    # sandbox, in its process group).
    return ["/bin/sh", "-c", f"/bin/sleep {marker} & /bin/sleep {marker}; wait"]


def _unique_seconds() -> str:
    return f"{3000 + uuid.uuid4().int % 5000}.{uuid.uuid4().int % 1000:03d}"


@pytest.mark.parametrize("force", [False, True])
def test_cancel_leaves_no_process(cluster, force):
    marker = _unique_seconds()
    ref = sr.run(_sleepers(marker))
    assert _wait_for(lambda: len(_pgrep(f"^/bin/sleep {marker}")) == 2, 60) is not None
    ray.cancel(ref, force=force)
    gone = _wait_for(lambda: not _pgrep(f"^/bin/sleep {marker}"), 10)
    assert gone is not None, _pgrep(f"^/bin/sleep {marker}")
    if not force:
        assert gone < 1.0, gone
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
        _get(ref, timeout=30)


def test_ray_kill_actor_leaves_no_process(cluster):
    marker = _unique_seconds()

    @ray.remote(num_cpus=0)
    class Runner:
        def go(self, cmd):
            return sr.execute(cmd)

    actor = Runner.remote()
    ref = actor.go.remote(_sleepers(marker))
    assert _wait_for(lambda: len(_pgrep(f"^/bin/sleep {marker}")) == 2, 60) is not None
    ray.kill(actor)
    assert _wait_for(lambda: not _pgrep(f"^/bin/sleep {marker}"), 10) is not None, _pgrep(f"^/bin/sleep {marker}")
    with pytest.raises(ray.exceptions.RayActorError):
        _get(ref, timeout=30)


def test_threaded_actor_launches_at_once(cluster):
    @ray.remote(num_cpus=0, max_concurrency=4)
    class Pool:
        def go(self, i):
            r = sr.execute(["/bin/sh", "-c", 'echo "$0" "$(pwd)"', str(i)])
            return r.success, r.stdout.decode().split()

    pool = Pool.remote()
    outs = _get([pool.go.remote(i) for i in range(40)], timeout=120)
    assert all(ok for ok, _ in outs)
    assert [int(words[0]) for _, words in outs] == list(range(40))
    assert len({words[1] for _, words in outs}) == 40  # each its own task directory
    ray.kill(pool)


def test_control_plane_is_out_of_reach(cluster):
    raylet_sockets = []
    for root, _dirs, files in os.walk(cluster.temp_dir):
        raylet_sockets += [os.path.join(root, f) for f in files if f.startswith(("raylet", "plasma_store"))]
    assert raylet_sockets

    def reach(port, paths):
        out = {}
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
            out["gcs"] = "connected"
        except OSError as e:
            out["gcs"] = e.errno
        finally:
            s.close()
        for p in paths:
            u = socket.socket(socket.AF_UNIX)
            try:
                u.connect(p)
                out[p] = "connected"
            except OSError as e:
                out[p] = e.errno
            finally:
                u.close()
        return out

    # Unsandboxed, a task reaches the GCS and the sockets that listen ...
    plain = _get(ray.remote(reach).remote(cluster.port, raylet_sockets))
    assert plain["gcs"] == "connected", plain
    raylet_sockets = [p for p in raylet_sockets if plain[p] == "connected"]
    assert raylet_sockets, plain
    # ... sandboxed, nothing: Landlock refuses the TCP connect (EACCES),
    # the unix sockets are outside every grant.
    boxed = _get(sr.sandboxed(reach).remote(cluster.port, raylet_sockets))
    assert boxed["gcs"] == errno.EACCES, boxed
    assert all(v in (errno.EACCES, errno.EPERM) for k, v in boxed.items() if k != "gcs"), boxed

    @sr.sandboxed
    def connect_gcs(port):
        socket.create_connection(("127.0.0.1", port), timeout=5)

    with pytest.raises(PermissionError):
        _get(connect_gcs.remote(cluster.port))


@pytest.fixture
def echo_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(conn.recv(64))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


def test_threaded_connect_under_net_allow(cluster, echo_server):
    def ping_from_a_thread(port):
        box = {}

        def worker():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(b"ping")
                    box["reply"] = s.recv(64)
            except OSError as e:
                box["reply"] = e.errno

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        return box["reply"]

    allowed = sr.sandboxed(ping_from_a_thread, policy={"net_allow": [f"127.0.0.1:{echo_server}"]})
    assert _get(allowed.remote(echo_server)) == b"ping"
    denied = sr.sandboxed(ping_from_a_thread)
    assert _get(denied.remote(echo_server)) == errno.EACCES


def test_results_from_the_sandbox_are_unpickled_with_an_allow_list(cluster):
    def make():
        import argparse
        return argparse.Namespace(a=1)

    with pytest.raises(sr.SandboxedFunctionError, match="argparse.Namespace is not an allowed type"):
        _get(sr.sandboxed(make).remote())
    assert _get(sr.sandboxed(make, allow_types=["argparse.Namespace"]).remote()).a == 1

    @sr.sandboxed
    def evil():
        class Boom:
            def __reduce__(self):
                return (os.system, ("touch /tmp/sl-ray-pwned",))
        return Boom()

    with pytest.raises(sr.SandboxedFunctionError, match="posix.system|os.system"):
        _get(evil.remote())
    assert not os.path.exists("/tmp/sl-ray-pwned")
