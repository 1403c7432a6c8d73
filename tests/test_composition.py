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
    ok = (sb.cmd(["false"]) | sb.cmd(["true"])).run(timeout=60)
    assert ok.success and ok.exit_code == 0   # the last stage's status


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
