"""Denial explanations: `Result.denials` and the CLI's summary after a
failed run. Real sandboxed runs, both directions: what the policy allows
leaves no record; a refused chmod, connect and /proc entry each leave the
right one, with the field (and flag) that would allow it."""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest

from sandlock import Sandbox
from sandlock.denials import MAX_RECORDS, Denial, Recorder, Refused, from_records


def _console_script() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "sandlock")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "sandlock"]  # the uid 65534 run: no console script


def sandlock(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*_console_script(), *args], capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL, cwd="/tmp")


@pytest.fixture
def listener():
    """A TCP port listening on 127.0.0.1."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture
def data(world_dir):
    """(directory, file in it) the tests grant read-only or writable."""
    path = os.path.join(world_dir, "data.csv")
    with open(path, "w") as f:
        f.write("a,b\n")
    os.chmod(path, 0o644)
    return os.path.realpath(world_dir), os.path.realpath(path)


def run(code: str, base_readable, *, readable=(), **kw):
    sb = Sandbox(fs_readable=[*base_readable, "/proc", *readable], **kw)
    res = sb.run([sys.executable, "-I", "-S", "-c", code], timeout=30)
    assert res.reason is not None, res.error
    return res


CHMOD = "import os, sys\ntry:\n    os.chmod(sys.argv[1], 0o600)\nexcept OSError as e:\n    raise SystemExit(e.errno)\n"


def test_allowed_actions_leave_no_record(base_readable, data, listener):
    directory, path = data
    code = f"""
import os, socket
os.chmod({path!r}, 0o640)
os.utime({path!r})
s = socket.create_connection(("127.0.0.1", {listener}))
s.close()
open("/proc/self/status").read()
os.listdir("/proc")
"""
    res = run(code, base_readable, fs_writable=[directory], net_allow=[f"127.0.0.1:{listener}"])
    assert res.success, res.stderr
    assert (res.denials, res.denials_omitted) == ([], 0)


def test_refused_chmod_of_a_read_only_file(base_readable, data):
    directory, path = data
    res = run(CHMOD.replace("sys.argv[1]", repr(path)), base_readable, readable=[directory])
    assert res.exit_code == errno.EACCES
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert res.denials == [Denial("file", path, "chmod", errno.EACCES, f"fs_writable: {path}",
                                  f"-w {path}", "", 1)]
    assert str(res.denials[0]) == f"denied chmod {path} (allow with -w {path})"


def test_refused_connect_outside_net_allow(base_readable, listener):
    code = f"""
import socket
for _ in range(2):
    try:
        socket.create_connection(("127.0.0.2", {listener}), timeout=5)
    except OSError as e:
        err = e.errno
raise SystemExit(err)
"""
    res = run(code, base_readable, net_allow=[f"127.0.0.1:{listener}"])
    assert res.exit_code == errno.EACCES
    target = f"127.0.0.2:{listener}"
    assert res.denials == [Denial("network", target, "connect", errno.EACCES, f"net_allow: {target}",
                                  f"--net-allow {target}", "", 2)]


def test_refused_proc_entry(base_readable):
    code = """
try:
    open("/proc/1/status").read()
except OSError as e:
    raise SystemExit(e.errno)
"""
    res = run(code, base_readable)
    assert res.exit_code == errno.ENOENT
    [d] = res.denials
    assert (d.kind, d.target, d.operation, d.errno) == ("process", "/proc/1", "open", errno.ENOENT)
    assert (d.hint, d.flag, d.reason) == ("", "", "not a process of the sandbox")
    assert str(d) == "denied open /proc/1 (not a process of the sandbox)"


def test_records_are_bounded(base_readable, listener):
    n = MAX_RECORDS + 20
    code = f"""
import socket
for port in range(20000, 20000 + {n}):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.2", port))
    except OSError:
        pass
    s.close()
raise SystemExit(1)
"""
    res = run(code, base_readable, net_allow=[f"127.0.0.1:{listener}"])
    assert res.exit_code == 1
    assert len(res.denials) == MAX_RECORDS and res.denials_omitted == n - MAX_RECORDS
    assert [d.target for d in res.denials] == [f"127.0.0.2:{p}" for p in range(20000, 20000 + MAX_RECORDS)]


def test_recorder_deduplicates_and_counts():
    rec = Recorder(limit=2)
    for target in ("/a", "/a", "/b", "/c", "/c"):
        rec.note(Refused(errno.EACCES, "file", target, "chmod", "fs_writable", target), 90)
    rec.note(errno.EACCES, 90)  # type: ignore[arg-type]  - a bare errno: nothing to say, not kept
    records, more = rec.export()
    assert more == 2
    assert [(d.target, d.count) for d in from_records(records, more)] == [("/a", 2), ("/b", 1)]


# -- the command line -----------------------------------------------------------------------

def _flags(base_readable, *extra: str) -> list[str]:
    return ["run", "--no-default-policy", *[x for p in base_readable for x in ("-r", p)], *extra]


def test_cli_summary_after_a_failed_run(base_readable, data):
    directory, path = data
    p = sandlock(*_flags(base_readable, "-r", directory), "--", sys.executable, "-I", "-S", "-c",
                 CHMOD, path)
    assert p.returncode == errno.EACCES, p.stderr
    assert p.stderr.decode().splitlines() == [f"sandlock: denied chmod {path} (allow with -w {path})"]


def test_cli_no_summary_after_success(base_readable, data):
    directory, path = data
    code = CHMOD.replace("raise SystemExit(e.errno)", "pass")
    p = sandlock(*_flags(base_readable, "-r", directory), "--", sys.executable, "-I", "-S", "-c",
                 code, path)
    assert (p.returncode, p.stderr) == (0, b"")


def test_cli_summary_is_short(base_readable, listener):
    code = """
import socket
for port in range(21000, 21010):
    s = socket.socket()
    try:
        s.connect(("127.0.0.2", port))
    except OSError:
        pass
    s.close()
raise SystemExit(3)
"""
    p = sandlock(*_flags(base_readable, "--net-allow", f"127.0.0.1:{listener}"), "--",
                 sys.executable, "-I", "-S", "-c", code)
    assert p.returncode == 3
    assert p.stderr.decode().splitlines() == [
        *(f"sandlock: denied connect 127.0.0.2:{port} (allow with --net-allow 127.0.0.2:{port})"
          for port in range(21000, 21003)),
        "sandlock: (7 more)"]


def test_refused_connect_without_any_network(base_readable, listener):
    """No TCP port allowed at all: the supervisor answers for Landlock and says so."""
    code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {listener}), timeout=5)
except OSError as e:
    raise SystemExit(e.errno)
"""
    res = run(code, base_readable)
    assert res.exit_code == errno.EACCES
    target = f"127.0.0.1:{listener}"
    assert [(d.kind, d.target, d.operation, d.flag) for d in res.denials] == [
        ("network", target, "connect", f"--net-allow {target}")]


def test_refused_fork_past_max_processes_and_proc_write(base_readable):
    code = """
import os, errno
try:
    open("/proc/self/comm", "w")
except OSError as e:
    assert e.errno == errno.EACCES, e
try:
    os.fork()
except OSError as e:
    raise SystemExit(e.errno)
"""
    res = run(code, base_readable, max_processes=1)
    assert res.exit_code == errno.EAGAIN
    assert [(d.kind, d.operation, d.hint, d.flag, d.reason) for d in res.denials] == [
        ("file", "write", "", "", "/proc is read-only in the sandbox"),
        ("process", "fork", "max_processes above 1", "-P N (N > 1)", "")]


def test_long_targets_are_cut_so_the_records_stay_small():
    from sandlock import protocol
    from sandlock.denials import MAX_TARGET
    rec = Recorder()
    for i in range(MAX_RECORDS + 5):
        path = f"/{i}/" + "x" * 4000
        rec.note(Refused(errno.EACCES, "file", path, "chmod", "fs_writable", path, path), 90)
    records, more = rec.export()
    assert more == 5 and all(len(r[i]) <= MAX_TARGET + 3 for r in records for i in (1, 5, 6))
    assert len(protocol.encode(protocol.Finished(denials=records, denials_more=more))) < 64 * 1024
