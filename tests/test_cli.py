"""The `sandlock` command line, run as the installed console script.

The console script is the one installed beside the interpreter running the
tests (the venv's `bin/sandlock`). The uid 65534 run uses the system Python,
which has none: there `python -m sandlock` stands in for it (the same
`sandlock.cli:main`, run the same way).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest


def _console_script() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "sandlock")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "sandlock"]


SANDLOCK = _console_script()


def sandlock(*args: str, timeout: float = 60, env=None, cwd: str = "/tmp",
             stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    return subprocess.run([*SANDLOCK, *args], capture_output=True,
                          timeout=timeout, stdin=stdin, env=env, cwd=cwd)


def py(code: str) -> list[str]:
    """argv of a Python snippet that prints one JSON line."""
    prelude = ("import json, os, sys\n"
               "def attempt(fn, *a):\n"
               "    try:\n"
               "        r = fn(*a)\n"
               "    except OSError as e:\n"
               "        import errno\n"
               "        return errno.errorcode.get(e.errno, str(e.errno))\n"
               "    return 'OK' if r is None else r\n"
               "def rd(p):\n"
               "    def f():\n"
               "        with open(p) as fh:\n"
               "            return 'OK:' + fh.read()\n"
               "    return attempt(f)\n"
               "def wr(p):\n"
               "    def f():\n"
               "        with open(p, 'w') as fh:\n"
               "            fh.write('x')\n"
               "    return attempt(f)\n")
    return [sys.executable, "-I", "-S", "-c", prelude + textwrap.dedent(code)]


def out_json(p: subprocess.CompletedProcess):
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


def base_flags(base_readable) -> list[str]:
    """Start from nothing but what runs sys.executable and /bin tools."""
    return ["--no-default-policy"] + [x for path in base_readable for x in ("-r", path)]


# -- default policy -------------------------------------------------------------------

def test_default_policy_runs_python():
    p = sandlock("run", "--", sys.executable, "-c", "print(1)")
    assert (p.returncode, p.stdout) == (0, b"1\n"), p.stderr


@pytest.mark.parametrize("script,status", [
    ("exit 0", 0), ("exit 7", 7), ("kill -9 $$", 137), ("kill -TERM $$", 143)])
def test_exit_status_is_the_commands(script, status):
    assert sandlock("run", "--", "sh", "-c", script).returncode == status


def test_timeout_flag():
    p = sandlock("run", "-t", "0.5", "--", "sleep", "60")
    assert p.returncode == 124  # as timeout(1)
    assert p.stderr == b"sandlock: timed out after 0.5 s\n"


def test_default_policy_denies_credentials():
    code = """
import os
print(json.dumps({"passwd": rd("/etc/passwd")[:3], "shadow": rd("/etc/shadow")[:3],
                  "ssh": attempt(lambda: os.listdir("/etc/ssh") and None)
                         if os.path.isdir("/etc/ssh") else "EACCES"}))
"""
    out = out_json(sandlock("run", "--", *py(code)))
    assert out == {"passwd": "OK:", "shadow": "EAC", "ssh": "EACCES"}


def test_default_policy_write_only_in_tmpdir(world_dir):
    code = """
t = os.environ["TMPDIR"]
print(json.dumps({"tmpdir": t, "in_tmp": wr(os.path.join(t, "f")), "outside": wr(sys.argv[1])}))
"""
    target = os.path.join(world_dir, "outside")
    out = out_json(sandlock("run", "--", *py(code), target))
    assert out["in_tmp"] == "OK" and out["outside"] == "EACCES"
    assert out["tmpdir"] != "/tmp" and not os.path.exists(out["tmpdir"])  # private, removed after
    assert not os.path.exists(target)
    # Control: the same snippet writes the target unconfined.
    env = dict(os.environ, TMPDIR=world_dir)
    ctl = subprocess.run(py(code) + [target], capture_output=True, env=env, timeout=60)
    assert json.loads(ctl.stdout)["outside"] == "OK"


# -- errors and other commands --------------------------------------------------------

def test_policy_error_one_line():
    p = sandlock("run", "--max-open-files", "0", "--", "true")
    assert p.returncode == 125
    lines = p.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sandlock: --max-open-files: "), lines


def test_check():
    p = sandlock("check")
    assert p.returncode == 0, p.stdout + p.stderr
    assert b"Landlock ABI" in p.stdout


# -- flags map onto behaviour -----------------------------------------------------------

@pytest.fixture
def two_dirs(world_dir):
    dirs = []
    for name in ("a", "b"):
        d = os.path.join(world_dir, name)
        os.mkdir(d)
        os.chmod(d, 0o755)
        with open(os.path.join(d, "f"), "w") as f:
            f.write(name)
        os.chmod(os.path.join(d, "f"), 0o644)
        dirs.append(d)
    return dirs


READ_ARGS = 'print(json.dumps([rd(p) for p in sys.argv[1:]]))'


def test_flag_fs_read(base_readable, two_dirs):
    a, b = two_dirs
    p = sandlock("run", *base_flags(base_readable), "-r", a, "--", *py(READ_ARGS),
                 os.path.join(a, "f"), os.path.join(b, "f"))
    assert out_json(p) == ["OK:a", "EACCES"]


def test_flag_fs_write(base_readable, two_dirs):
    a, b = two_dirs
    code = 'print(json.dumps([wr(p) for p in sys.argv[1:]]))'
    p = sandlock("run", *base_flags(base_readable), "-r", b, "-w", a, "--", *py(code),
                 os.path.join(a, "new"), os.path.join(b, "new"))
    assert out_json(p) == ["OK", "EACCES"]


def test_flag_fs_deny(base_readable, two_dirs):
    a, _ = two_dirs
    with open(os.path.join(a, "secret"), "w") as f:
        f.write("S")
    p = sandlock("run", *base_flags(base_readable), "-r", a, "--fs-deny", os.path.join(a, "secret"),
                 "--", *py(READ_ARGS), os.path.join(a, "f"), os.path.join(a, "secret"))
    assert out_json(p) == ["OK:a", "EACCES"]


ENV_CODE = 'print(json.dumps(dict(os.environ)))'


def test_flag_env():
    env = out_json(sandlock("run", "--env", "SL_FLAG=v=1", "--", *py(ENV_CODE)))
    assert env["SL_FLAG"] == "v=1"


def test_flag_clean_env():
    caller = dict(os.environ, SL_CALLER_ONLY="1")
    assert "SL_CALLER_ONLY" in out_json(sandlock("run", "--", *py(ENV_CODE), env=caller))
    env = out_json(sandlock("run", "--clean-env", "--", *py(ENV_CODE), env=caller))
    assert "SL_CALLER_ONLY" not in env


def test_flag_max_open_files():
    code = 'import resource; print(json.dumps(resource.getrlimit(resource.RLIMIT_NOFILE)))'
    assert out_json(sandlock("run", "--max-open-files", "48", "--", *py(code))) == [48, 48]


def test_flag_cpu_cores():
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        pytest.skip("needs at least 2 usable CPUs")
    code = 'print(json.dumps(sorted(os.sched_getaffinity(0))))'
    assert out_json(sandlock("run", "--cpu-cores", str(mine[-1]), "--", *py(code))) == [mine[-1]]


def test_flag_net_allow_bind():
    ports = []
    while len(ports) < 2:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in ports:
            ports.append(port)
    code = """
import socket
res = []
for port in sys.argv[1:]:
    s = socket.socket()
    res.append(attempt(s.bind, ("127.0.0.1", int(port))))
    s.close()
print(json.dumps(res))
"""
    p = sandlock("run", "--net-allow-bind", str(ports[0]), "--", *py(code), *map(str, ports))
    assert out_json(p) == ["OK", "EACCES"]


def test_memory_limit_keeps_the_commands_status_and_says_why():
    p = sandlock("run", "-m", "64M", "--", *py("x = bytearray(300 << 20)"))
    assert p.returncode == 128 + 9
    assert b"max_memory" in p.stderr
    assert sandlock("run", "-m", "64M", "--", *py("x = bytearray(8 << 20)")).returncode == 0


def test_sandbox_failure_is_one_line_and_125():
    p = sandlock("run", "--cwd", "/nonexistent-sandlock-dir", "--", "true")
    assert p.returncode == 125
    assert p.stderr.strip().count(b"\n") == 0 and p.stderr.startswith(b"sandlock: ")
