"""Composition (issue 12): pipelines, gather with `sandlock.inputs`, and
fork/reduce. Every test runs as root and as an unprivileged user: what a
sandbox reads lives in world-readable directories under /tmp."""
from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

import sandlock
from sandlock import ExitReason, PolicyError, Sandbox

SRC = os.path.dirname(os.path.dirname(os.path.abspath(sandlock.__file__)))
PY = [sys.executable, "-I", "-S", "-c"]
MiB = 1 << 20


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# -- pipelines -------------------------------------------------------------------------

def test_three_stages_cat_tr_wc(base_readable, world_dir):
    path = os.path.join(world_dir, "words")
    with open(path, "w") as f:
        f.write("alpha beta\ngamma\n")
    reader = Sandbox(fs_readable=base_readable + [world_dir])
    blind = Sandbox(fs_readable=base_readable)
    pipe = reader.cmd(["cat", path]) | blind.cmd(["tr", "a-z", "A-Z"]) | blind.cmd(["wc", "-c"])
    r = pipe.run(timeout=60)
    assert r.success and r.stdout.strip() == b"17", (r, r.stderr)
    assert [x.exit_code for x in pipe.results] == [0, 0, 0]


def test_a_last_stage_with_more_than_a_pipe_of_output(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    r = (sb.cmd(["true"]) | sb.cmd(["sh", "-c", "yes | head -c 5M"])).run(timeout=60)
    assert r.success and len(r.stdout) == 5 * MiB, (r, r.stderr)
    assert r.stdout[:4] == b"y\ny\n"


def test_a_first_stage_writing_5_mib(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    code = "import sys; sys.stdout.buffer.write(b'z' * (5 << 20))"
    r = (sb.cmd(PY + [code]) | sb.cmd(["cat"]) | sb.cmd(["wc", "-c"])).run(timeout=60)
    assert r.success and r.stdout.strip() == str(5 * MiB).encode(), (r, r.stderr)


def test_stderr_and_exit_code_of_each_stage(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    pipe = (sb.cmd(["sh", "-c", "echo one >&2; echo data; exit 3"])
            | sb.cmd(["sh", "-c", "cat; echo two >&2; exit 5"])
            | sb.cmd(["sh", "-c", "cat; echo three >&2; exit 7"]))
    r = pipe.run(timeout=60)
    assert (r.exit_code, r.stdout, r.stderr, r.success) == (7, b"data\n", b"three\n", False)
    assert [x.stderr for x in pipe.results] == [b"one\n", b"two\n", b"three\n"]
    assert [x.exit_code for x in pipe.results] == [3, 5, 7]
    assert r.stages == pipe.results   # the same, on the Result itself
    ok = (sb.cmd(["false"]) | sb.cmd(["true"])).run(timeout=60)
    assert ok.success and ok.exit_code == 0   # the last stage's status


def test_a_stage_with_a_workdir_ends_as_its_own_run_would(base_readable, world_dir):
    """Its branch is committed (on_exit) or aborted (on_error), and its
    changes are in its Result: a stage is never left with a pending branch."""
    box = Sandbox(fs_readable=base_readable, workdir=world_dir)
    cat = Sandbox(fs_readable=base_readable)
    p = box.cmd(["/bin/sh", "-c", "echo hi > f; echo out"]) | cat.cmd(["/bin/cat"])
    r = p.run()
    assert r.success and r.stdout == b"out\n", r
    assert open(os.path.join(world_dir, "f")).read() == "hi\n"
    assert [(c.kind, c.path) for c in p.results[0].changes] == [("A", "f")]
    failing = box.cmd(["/bin/sh", "-c", "echo no > g; exit 3"]) | cat.cmd(["/bin/cat"])
    assert failing.run().success
    assert failing.results[0].exit_code == 3
    assert not os.path.exists(os.path.join(world_dir, "g"))  # on_error: abort


def test_timeout_kills_every_stage_even_a_setsid_one(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    # Each stage reports the pid of a grandchild that left its session.
    escape = "setsid sh -c 'echo $$ >&2; exec sleep 300'; echo not reached"
    pipe = sb.cmd(["sh", "-c", escape]) | sb.cmd(["sh", "-c", escape]) | sb.cmd(["sh", "-c", escape])
    t0 = time.monotonic()
    r = pipe.run(timeout=2)
    assert time.monotonic() - t0 < 20
    assert r.reason == ExitReason.TIMEOUT and not r.success and r.error == "Pipeline timed out"
    pids = [int(x.stderr.split()[0]) for x in pipe.results]
    assert len(pids) == 3 and all(x.reason == ExitReason.TIMEOUT for x in pipe.results)
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids), pids


def _sleepers(arg: str) -> list[int]:
    """Pids of our `sleep <arg>` processes."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:2] == [b"sleep", arg.encode()]:
                    out.append(int(pid))
        except OSError:
            pass
    return out


def test_a_stage_whose_supervisor_does_not_answer_is_ended_by_the_caller(base_readable,
                                                                         monkeypatch):
    # The caller keeps its own deadline for every stage still going: the
    # stage whose supervisor is stopped is killed through it (a timeout
    # past the grace), the other ends by its own supervisor's timeout.
    import signal
    import threading

    from sandlock import sandbox as sandbox_module
    monkeypatch.setattr(sandbox_module, "CALLER_GRACE", 0.5)
    sb = Sandbox(fs_readable=base_readable)
    pipe = sb.cmd(["sleep", "31.25"]) | sb.cmd(["sleep", "31.5"])
    stopped = []

    def stop_second_supervisor():
        deadline = time.monotonic() + 10
        while not stopped and time.monotonic() < deadline:
            for pid in _sleepers("31.5"):
                with open(f"/proc/{pid}/stat") as f:
                    supervisor = int(f.read().split(")")[-1].split()[1])
                os.kill(supervisor, signal.SIGSTOP)
                stopped.append(supervisor)
            time.sleep(0.02)

    stopper = threading.Thread(target=stop_second_supervisor)
    stopper.start()
    t0 = time.monotonic()
    r = pipe.run(timeout=1)
    stopper.join()
    assert stopped and time.monotonic() - t0 < 20
    assert r.reason == ExitReason.TIMEOUT
    first, second = pipe.results
    assert first.reason == ExitReason.TIMEOUT
    assert not second.success and second.error, second  # its supervisor was killed
    deadline = time.monotonic() + 5
    while (_alive(stopped[0]) or _sleepers("31.5")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(stopped[0]) and not _sleepers("31.5")


# -- gather ----------------------------------------------------------------------------

CONSUMER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from sandlock import inputs
    names = sorted(inputs.keys())
    sizes = {n: len(inputs.bytes(n)) for n in names}
    print(names, [sizes[n] for n in names], inputs['a'][:3], 'c' in inputs, 'zz' in inputs)
    import os
    print(os.environ['_SANDLOCK_GATHER'])
    try:
        inputs['missing']
    except KeyError as e:
        print('KeyError', e)
""")


def test_gather_three_producers_of_1_mib_and_a_python_consumer(base_readable):
    producer = Sandbox(fs_readable=base_readable)
    consumer = Sandbox(fs_readable=base_readable + [SRC])

    def make(ch: str):
        return producer.cmd(PY + [f"import sys; sys.stdout.write({ch!r} * (1 << 20))"])
    gp = (make("a").as_("a") + make("b").as_("b") + make("c").as_("c")
          | consumer.cmd(PY + [CONSUMER, SRC]))
    r = gp.run(timeout=60)
    lines = r.stdout.decode().splitlines()
    assert r.success, (r, r.stderr)
    assert lines[0] == f"['a', 'b', 'c'] [{MiB}, {MiB}, {MiB}] aaa True False"
    assert lines[1] == "a:3,b:4,c:0"
    assert lines[2].startswith("KeyError") and "missing" in lines[2] and "['a', 'b', 'c']" in lines[2]
    assert [x.exit_code for x in gp.results] == [0, 0, 0, 0]


def test_gather_consumer_gets_stdin_and_producer_failures_are_reported(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    gp = (sb.cmd(["sh", "-c", "echo first; echo oops >&2; exit 2"]).as_("x")
          + sb.cmd(["echo", "last"]).as_("y")
          | sb.cmd(["sh", "-c", "cat; cat <&3"]))
    assert gp.fd_map() == {"x": 3, "y": 0}
    r = gp.run(timeout=60)
    assert r.success and r.stdout == b"last\nfirst\n", (r, r.stderr)
    assert gp.results[0].exit_code == 2 and gp.results[0].stderr == b"oops\n"


def test_gather_timeout_and_names(base_readable):
    sb = Sandbox(fs_readable=base_readable)
    gp = sb.cmd(["sleep", "60"]).as_("a") + sb.cmd(["true"]).as_("b") | sb.cmd(["cat"])
    r = gp.run(timeout=1)
    assert r.reason == ExitReason.TIMEOUT and not r.success
    with pytest.raises(PolicyError, match="distinct"):
        sb.cmd(["true"]).as_("a") + sb.cmd(["true"]).as_("a") | sb.cmd(["cat"])


# -- fork / reduce ---------------------------------------------------------------------

FORK_MODULE = textwrap.dedent("""
    import os, socket, sys, threading, time
    DATA = None

    def init_big():
        global DATA
        DATA = b"s" * (100 << 20)          # touched: real pages, shared after the fork
        print("init ran once")             # goes to the template's stderr

    def work_share(i):
        with open("/proc/self/smaps_rollup") as f:
            fields = dict(line.split()[:2] for line in f if line.split()[0].endswith(":"))
        shared = int(fields["Shared_Dirty:"]) + int(fields["Shared_Clean:"])
        sys.stdout.write(f"{i} {os.environ['CLONE_ID']} {len(DATA)} {shared}\\n")
        sys.stdout.write(str(i % 10) * (1 << 20))

    def init_nothing():
        pass

    def work_net(i):
        port = int(os.environ["PORT"])
        out = []
        for host in ("127.0.0.2", "127.0.0.1"):
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect((host, port))
                out.append("ok")
            except OSError as e:
                out.append(type(e).__name__)
            finally:
                s.close()
        print(i, *out)

    def work_memory(i):
        if i == 1:
            hog = bytearray(300 << 20)
            for k in range(0, len(hog), 4096):
                hog[k] = 1
        print("survived", i)

    def work_sleep(i):
        with open(os.path.join(os.environ["PIDS"], str(i)), "w") as f:
            f.write(str(os.getpid()))
        time.sleep(300)

    def work_exit(i):
        if i == 2:
            raise ValueError("clone 2 fails")
        sys.exit(i)

    def init_thread():
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
""")


@pytest.fixture
def fork_mod(world_dir):
    """A module defining init_fn/work_fn, in a world-readable directory the
    sandbox is granted; imported here under a name unique to the test."""
    import importlib.util
    name = "sl_forkmod_" + os.path.basename(world_dir).replace("-", "_")
    path = os.path.join(world_dir, name + ".py")
    with open(path, "w") as f:
        f.write(FORK_MODULE)
    os.chmod(path, 0o644)
    sys.path.insert(0, world_dir)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(world_dir)
        sys.modules.pop(name, None)


def _fork_box(base_readable, world_dir, **kw):
    return Sandbox(fs_readable=base_readable + [SRC, world_dir, "/proc"], **kw)


def test_fork_50_clones_share_the_template_memory_and_print_1_mib_each(base_readable, world_dir,
                                                                       fork_mod):
    sb = _fork_box(base_readable, world_dir, init_fn=fork_mod.init_big, work_fn=fork_mod.work_share)
    fr = sb.fork(50, timeout=60)
    assert len(fr) == 50 and len(set(fr.pids)) == 50 and all(p > 0 for p in fr.pids)
    assert fr.result.success and fr.result.stderr.count(b"init ran once") == 1, fr.result
    for i, clone in enumerate(fr):
        assert clone.exit_code == 0 and clone.pid == fr.pids[i]
        head, _, body = clone.stdout.partition(b"\n")
        idx, clone_id, size, shared_kib = map(int, head.split())
        assert (idx, clone_id, size) == (i, i, 100 << 20)
        assert shared_kib >= 90 * 1024, (i, shared_kib)   # the 100 MB were not copied
        assert body == str(i % 10).encode() * (1 << 20)
    r = Sandbox(fs_readable=base_readable).reduce(["wc", "-c"], fr, timeout=60)
    assert r.success and int(r.stdout) == sum(c.size for c in fr) > 50 * MiB, (r, r.stderr)
    ordered = Sandbox(fs_readable=base_readable).reduce(["cat"], fr, timeout=60)
    assert ordered.stdout == b"".join(c.stdout for c in fr)   # clone order
    fr.close()


def test_a_clone_is_held_to_the_network_rules(base_readable, world_dir, fork_mod):
    import socket
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    port = server.getsockname()[1]
    try:
        sb = _fork_box(base_readable, world_dir, net_allow=[f"127.0.0.2:{port}"], env={"PORT": str(port)},
                       init_fn=fork_mod.init_nothing, work_fn=fork_mod.work_net)
        fr = sb.fork(2, timeout=60)
    finally:
        server.close()
    # Same port, another host: refused (Landlock alone would allow any host on an allowed port).
    assert [c.stdout for c in fr] == [b"0 ok PermissionError\n", b"1 ok PermissionError\n"], \
        (fr, fr.result.stderr)


def test_a_clone_over_max_memory_is_killed(base_readable, world_dir, fork_mod):
    sb = _fork_box(base_readable, world_dir, max_memory="128M",
                   init_fn=fork_mod.init_nothing, work_fn=fork_mod.work_memory)
    fr = sb.fork(3, timeout=60)
    assert fr[1].exit_code == -9 and fr[1].stdout == b"", (fr, fr.result)
    assert [fr[0].stdout, fr[2].stdout] == [b"survived 0\n", b"survived 2\n"]
    assert "max_memory" in (fr.result.error or ""), fr.result


def test_exit_codes_limits_and_refusals(base_readable, world_dir, fork_mod):
    sb = _fork_box(base_readable, world_dir, max_processes=3,
                   init_fn=fork_mod.init_nothing, work_fn=fork_mod.work_exit)
    fr = sb.fork(5, timeout=60)      # two at a time under max_processes=3
    assert fr.exit_codes == [0, 1, 1, 3, 4], (fr, fr.result.stderr)
    assert b"clone 2 fails" in fr.result.stderr
    with pytest.raises(sandlock.SandboxError, match="init_fn and work_fn"):
        Sandbox().fork(2)
    with pytest.raises(PolicyError, match="lambda"):
        _fork_box(base_readable, world_dir, init_fn=lambda: None, work_fn=fork_mod.work_exit).fork(1)
    with pytest.raises(PolicyError, match="max_processes"):
        _fork_box(base_readable, world_dir, max_processes=1, init_fn=fork_mod.init_nothing,
                  work_fn=fork_mod.work_exit).fork(1)
    threaded = _fork_box(base_readable, world_dir, init_fn=fork_mod.init_thread, work_fn=fork_mod.work_exit)
    with pytest.raises(sandlock.ForkError, match="thread"):
        threaded.fork(2, timeout=60)
    # a policy that lets the template import neither sandlock (when it is not
    # installed under the interpreter's prefix) nor the functions' module
    unreadable = Sandbox(fs_readable=base_readable, init_fn=fork_mod.init_nothing, work_fn=fork_mod.work_exit)
    with pytest.raises(sandlock.ForkError, match="(?s)template failed.*No module named"):
        unreadable.fork(1, timeout=60)


def test_killing_the_caller_leaves_no_clone(base_readable, world_dir, fork_mod):
    import signal
    import subprocess
    pids_dir = os.path.join(world_dir, "pids")
    os.mkdir(pids_dir)
    os.chmod(pids_dir, 0o777)
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{SRC!r}, {world_dir!r}]
        import {fork_mod.__name__} as m
        from sandlock import Sandbox
        sb = Sandbox(fs_readable={base_readable + [SRC, world_dir]!r}, fs_writable=[{pids_dir!r}],
                     env={{"PIDS": {pids_dir!r}}}, init_fn=m.init_nothing, work_fn=m.work_sleep)
        sb.fork(3)
    """)
    caller = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while len(os.listdir(pids_dir)) < 3 and time.monotonic() < deadline and caller.poll() is None:
            time.sleep(0.05)
        time.sleep(0.2)   # the files are written; their contents too
        pids = [int(open(os.path.join(pids_dir, f)).read()) for f in os.listdir(pids_dir)]
        assert len(pids) == 3 and all(_alive(p) for p in pids), pids
    finally:
        caller.send_signal(signal.SIGKILL)
        caller.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids), pids


def test_inputs_module_and_accessor_agree(monkeypatch):
    import importlib

    from sandlock import pipeline
    accessor = sandlock.inputs   # first: the package's lazy name keeps the accessor
    mod = importlib.import_module("sandlock.inputs")
    assert sandlock.inputs is accessor is mod.inputs
    assert pipeline.GATHER_ENV == mod.ENV_VAR
    r, w = os.pipe()
    os.write(w, b"v")
    os.close(w)
    monkeypatch.setattr(mod, "inputs", mod._Inputs())
    monkeypatch.setenv("_SANDLOCK_GATHER", f"k:{r}")
    # Whichever object `from sandlock import inputs` gives, it reads the inputs.
    assert "k" in mod and list(mod.keys()) == ["k"] and mod.bytes("k") == b"v" and mod["k"] == "v"
