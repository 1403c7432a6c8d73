"""The command line's defaults and messages (issue 8), through the installed
`sandlock` command: -r/-w/--fs-deny add to the default policy, the current
directory and /proc are readable by default, one `sandlock: ...` line and
exit 125 for every failure of sandlock itself, the hint naming the path and
the flag when the command cannot be executed, no argparse abbreviations,
the reference's flag spellings, --version, and no flag in --help whose
feature does not work."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
from test_cli import SANDLOCK, base_flags, out_json, sandlock
from test_cli import py as _py

import sandlock as sandlock_pkg
from sandlock import cli
from sandlock.policy import model


def py(code: str) -> list[str]:
    """test_cli.py's py(), with ls(path): "OK" or the errno name."""
    return _py('ls = lambda p: (lambda r: r if isinstance(r, str) else "OK")(attempt(os.listdir, p))\n' + code)


def one_line(p: subprocess.CompletedProcess, status: int = 125) -> str:
    """The single `sandlock: ...` line of a failure, checked."""
    err = p.stderr.decode()
    assert p.returncode == status, (p.returncode, p.stdout, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sandlock: "), lines
    assert "Traceback" not in err and p.stdout == b""
    return lines[0]


@pytest.fixture
def tree(world_dir):
    """world_dir/{r,w,proj}: r and proj with a file f, all 0755/0644."""
    for name in ("r", "w", "proj"):
        d = os.path.join(world_dir, name)
        os.mkdir(d)
        os.chmod(d, 0o755)
        if name != "w":
            with open(os.path.join(d, "f"), "w") as f:
                f.write(name)
            os.chmod(os.path.join(d, "f"), 0o644)
    return world_dir


# The default policy's grants and denials, then one "r:PATH" (read) or
# "w:PATH" (write) probe per argument.
PROBE = """
t = os.environ.get("TMPDIR", "")
out = {"tmp": wr(os.path.join(t, "x")) if os.path.basename(t).startswith("sandlock-") else "no TMPDIR",
       "null": wr("/dev/null"), "passwd": rd("/etc/passwd")[:3], "shadow": rd("/etc/shadow")[:3]}
for a in sys.argv[1:]:
    op, path = a.split(":", 1)
    out[a] = rd(path) if op == "r" else wr(path)
print(json.dumps(out))
"""
DEFAULTS_OK = {"tmp": "OK", "null": "OK", "passwd": "OK:", "shadow": "EAC"}


# -- -r/-w/--fs-deny add to the default policy ----------------------------------------------

def test_fs_read_adds_to_the_default_policy(tree):
    r, w = os.path.join(tree, "r"), os.path.join(tree, "w")
    p = sandlock("run", "-r", r, "--", *py(PROBE), f"r:{r}/f", f"w:{w}/new", f"w:{r}/new", cwd="/")
    out = out_json(p)
    assert out == {**DEFAULTS_OK, f"r:{r}/f": "OK:r", f"w:{w}/new": "EACCES", f"w:{r}/new": "EACCES"}


def test_fs_write_adds_to_the_default_policy(tree):
    w = os.path.join(tree, "w")
    out = out_json(sandlock("run", "-w", w, "--", *py(PROBE), f"w:{w}/new", cwd="/"))
    assert out == {**DEFAULTS_OK, f"w:{w}/new": "OK"}
    assert os.path.exists(os.path.join(w, "new"))


def test_fs_deny_adds_to_the_default_policy(tree):
    proj = os.path.join(tree, "proj")
    with open(os.path.join(proj, "secret"), "w") as f:
        f.write("S")
    out = out_json(sandlock("run", "--fs-deny", os.path.join(proj, "secret"), "--", *py(PROBE),
                            "r:f", "r:secret", cwd=proj))
    assert out == {**DEFAULTS_OK, "r:f": "OK:proj", "r:secret": "EACCES"}


def test_explicit_grant_of_a_default_denial_lifts_it_and_one_inside_is_refused():
    if not os.path.isdir("/etc/ssh"):
        pytest.skip("no /etc/ssh here")
    code = 'print(json.dumps(ls("/etc/ssh")))'
    assert out_json(sandlock("run", "--", *py(code))) == "EACCES"
    assert out_json(sandlock("run", "-r", "/etc/ssh", "--", *py(code))) == "OK"
    line = one_line(sandlock("run", "-r", "/etc/ssh/x", "--", "true"))
    assert "/etc/ssh/x" in line and "default policy denies" in line


def test_no_default_policy_starts_from_nothing(base_readable):
    out = out_json(sandlock("run", *base_flags(base_readable), "--", *py(PROBE), cwd="/"))
    assert out["tmp"] == "no TMPDIR" and out["null"] == "EACCES"
    exe = os.path.realpath(sys.executable)
    line = one_line(sandlock("run", "--no-default-policy", "--", exe, "-c", "1"), status=127)
    assert line.startswith(f"sandlock: cannot execute {exe!r}: Permission denied (not readable in the "
                           f"sandbox: add -r "), line


# -- the current directory and /proc -------------------------------------------------------

CWD = 'print(json.dumps({"read": rd("f"), "write": wr("new"), "cwd": os.getcwd()}))'


def test_cwd_is_readable_and_w_dot_makes_it_writable(tree):
    proj = os.path.join(tree, "proj")
    assert out_json(sandlock("run", "--", *py(CWD), cwd=proj)) == \
        {"read": "OK:proj", "write": "EACCES", "cwd": proj}
    assert out_json(sandlock("run", "-w", ".", "--", *py(CWD), cwd=proj)) == \
        {"read": "OK:proj", "write": "OK", "cwd": proj}
    # --cwd names the command's directory: that one is granted.
    assert out_json(sandlock("run", "--cwd", proj, "--", *py(CWD), cwd="/")) == \
        {"read": "OK:proj", "write": "EACCES", "cwd": proj}


def test_cwd_is_not_granted_when_it_is_root_or_home(tree):
    proj = os.path.join(tree, "proj")
    code = 'print(json.dumps([rd(sys.argv[1]), ls(".")]))'
    assert out_json(sandlock("run", "--", *py(code), os.path.join(proj, "f"), cwd="/")) == ["EACCES", "EACCES"]
    env = dict(os.environ, HOME=proj)
    assert out_json(sandlock("run", "--", *py(code), "f", cwd=proj, env=env)) == ["EACCES", "EACCES"]
    env = dict(os.environ, HOME=os.path.join(proj, "home"))  # a directory holding the home
    assert out_json(sandlock("run", "--", *py(code), "f", cwd=proj, env=env)) == ["EACCES", "EACCES"]


def test_proc_is_readable_and_shows_only_the_sandbox():
    code = """
pids = sorted(int(n) for n in os.listdir("/proc") if n.isdigit())
with open("/proc/self/status") as f:
    me = [int(x.split()[1]) for x in f if x.startswith("Pid:")][0]
with open("/proc/cpuinfo") as f:
    cpus = sum(1 for x in f if x.startswith("processor"))
print(json.dumps({"pids": pids, "me": me, "cpu_count": os.cpu_count(), "cpuinfo": cpus,
                  "init": rd("/proc/1/cmdline")[:2]}))
"""
    out = out_json(sandlock("run", "--", *py(code)))
    assert out["me"] in out["pids"] and len(out["pids"]) <= 2, out
    assert out["init"] != "OK" and out["cpu_count"] == out["cpuinfo"] >= 1, out
    out = out_json(sandlock("run", "--num-cpus", "1", "--", *py(code)))
    assert out["cpu_count"] == out["cpuinfo"] == 1, out


# -- failures of sandlock itself: one line, 125 ---------------------------------------------

BAD = [
    (["-m", "12Q"], "-m/--max-memory"),
    (["--cpu-cores", "x"], "--cpu-cores"),
    (["--net-allow", "bad rule"], "--net-allow"),
    (["--max-processes", "-1"], "-P/--max-processes"),
    (["-P", "x"], "-P/--max-processes"),
    (["-c", "500"], "-c/--cpu"),
    (["--num-cpus", "0"], "--num-cpus"),
    (["-t", "0"], "-t/--timeout"),
    (["-t", "abc"], "-t/--timeout"),
    (["-e", "NOEQUALS"], "-e/--env"),
    (["--name", ""], "--name"),
    (["--extra-deny-syscall", "nosuchcall"], "--extra-deny-syscall"),
    (["--extra-allow-syscall", "nosuchgroup"], "--extra-allow-syscall"),
    (["--no-supervisor", "-m", "64M"], "--no-supervisor"),
    (["--cwd", "/nonexistent-sandlock-dir"], "/nonexistent-sandlock-dir"),
    (["--bogus"], "--bogus"),
    (["--cpu-c", "1"], "--cpu-c"),    # no abbreviations
    (["--max-proc", "3"], "--max-proc"),
    (["--name"], "--name"),
]


@pytest.mark.parametrize("flags,names", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_input_is_one_line_and_125(flags, names):
    line = one_line(sandlock("run", *flags, "--", "true"))
    assert names in line, line


@pytest.mark.parametrize("argv", [[], ["run"], ["run", "--"], ["nosuchcommand"], ["--bogus"]])
def test_usage_errors_are_one_line_and_125(argv):
    one_line(sandlock(*argv))


def test_a_failing_sandbox_start_is_one_line_and_125():
    # CPU 1023 does not exist here: setting the affinity fails in the child.
    if 1023 in os.sched_getaffinity(0):
        pytest.skip("CPU 1023 exists")
    one_line(sandlock("run", "--cpu-cores", "1023", "--", "true"))


# -- commands that cannot be executed: exit 127, the path and the flag ------------------------

@pytest.fixture
def tool(world_dir):
    """world_dir/opt/bin/tool: a copy of true(1)."""
    bindir = os.path.join(world_dir, "opt", "bin")
    os.makedirs(bindir)
    for d in (os.path.dirname(bindir), bindir):
        os.chmod(d, 0o755)
    path = os.path.join(bindir, "tool")
    shutil.copy(shutil.which("true") or "/bin/true", path)
    os.chmod(path, 0o755)
    return path


def test_missing_program():
    # (A PATH with directories this user cannot search makes it EACCES, as for execvp.)
    env = dict(os.environ, PATH="/usr/local/bin:/usr/bin:/bin")
    line = one_line(sandlock("run", "--", "nosuch-sandlock-cmd", env=env), status=127)
    assert line == "sandlock: cannot execute 'nosuch-sandlock-cmd': No such file or directory"


def test_ungranted_program_names_the_path_and_the_flag(base_readable, tool):
    prefix = os.path.dirname(os.path.dirname(tool))
    line = one_line(sandlock("run", *base_flags(base_readable), "--", tool), status=127)
    assert line == (f"sandlock: cannot execute {tool!r}: Permission denied "
                    f"(not readable in the sandbox: add -r {prefix})")
    assert sandlock("run", *base_flags(base_readable), "-r", prefix, "--", tool).returncode == 0
    # Found on PATH: the message names where.
    env = dict(os.environ, PATH=os.path.dirname(tool) + os.pathsep + os.environ.get("PATH", ""))
    line = one_line(sandlock("run", *base_flags(base_readable), "--", "tool", env=env), status=127)
    assert line == (f"sandlock: cannot execute 'tool': Permission denied "
                    f"({tool} is not readable in the sandbox: add -r {prefix})")
    # The default policy grants a command's own file.
    assert sandlock("run", "--", tool, cwd="/").returncode == 0


def test_denied_program_names_the_denial(tool):
    line = one_line(sandlock("run", "--fs-deny", tool, "--", tool, cwd="/"), status=127)
    assert line == f"sandlock: cannot execute {tool!r}: Permission denied (it is denied by --fs-deny {tool})"


def test_ungranted_interpreter_and_loader_are_named(base_readable, tool, world_dir):
    script = os.path.join(world_dir, "script")
    with open(script, "w") as f:
        f.write(f"#!{tool}\n")
    os.chmod(script, 0o755)
    prefix = os.path.dirname(os.path.dirname(tool))
    line = one_line(sandlock("run", *base_flags(base_readable), "-r", script, "--", script), status=127)
    assert line.endswith(f"(its #! interpreter {tool} is not readable in the sandbox: add -r {prefix})")
    loader = cli._elf_interpreter(tool)
    if loader is None:
        pytest.skip("true(1) is not a dynamically linked ELF here")
    line = one_line(sandlock("run", "--no-default-policy", "-r", prefix, "--", tool), status=127)
    assert f"the program loader {os.path.realpath(loader)} is not readable in the sandbox: add -r " in line


def test_missing_interpreter_is_named(world_dir):
    script = os.path.join(world_dir, "script")
    with open(script, "w") as f:
        f.write("#!/nonexistent-sandlock/python\n")
    os.chmod(script, 0o755)
    line = one_line(sandlock("run", "--", script, cwd="/"), status=127)
    assert line == (f"sandlock: cannot execute {script!r}: No such file or directory "
                    f"(its #! interpreter /nonexistent-sandlock/python does not exist)")


# -- flags: spellings, --version, --help ----------------------------------------------------

def test_version():
    p = sandlock("--version")
    assert (p.returncode, p.stdout, p.stderr) == (0, f"sandlock {sandlock_pkg.__version__}\n".encode(), b"")


def test_console_script_is_the_cli_main():
    if len(SANDLOCK) != 1:
        pytest.skip("no console script beside this interpreter (uid 65534 run): python -m sandlock stands in")
    with open(SANDLOCK[0]) as f:
        text = f.read()
    assert "sandlock.cli" in text and "main" in text, text


def help_text() -> str:
    p = sandlock("run", "--help")
    assert p.returncode == 0 and p.stderr == b""
    return p.stdout.decode()


def test_help_shows_the_default_policy():
    text = help_text()
    assert "default policy" in text and "--no-default-policy" in text
    for path in (*cli.DEFAULT_DEVICES, *cli.DEFAULT_DENIED, "/proc", "TMPDIR", "/usr", "/etc"):
        assert path in text, path


def test_help_lists_no_pending_flag():
    text = help_text()
    for flag in cli.PENDING_FLAGS:
        assert flag not in text, flag


@pytest.mark.parametrize("flag", sorted(cli.PENDING_FLAGS))
def test_pending_flags_fail_with_one_line(flag):
    field, takes_value = cli.PENDING_FLAGS[flag]
    # Each stands for a feature this sandlock does not have: when one is
    # implemented, its flag must be wired and listed instead.
    assert field is None or field in model._PENDING or field in ("on_exit", "on_error"), field
    args = [flag, "x"] if takes_value else [flag]
    assert one_line(sandlock("run", *args, "--", "true")) == f"sandlock: {flag}: not implemented yet"


def test_cpu_is_the_cpu_limit_not_cpu_cores():
    code = """
import time
t0 = time.monotonic()
while time.monotonic() - t0 < 1.5:
    pass
print(json.dumps({"share": os.times().user / (time.monotonic() - t0),
                  "affinity": sorted(os.sched_getaffinity(0))}))
"""
    mine = sorted(os.sched_getaffinity(0))
    for flags in (["--cpu", "25"], ["-c", "25"], ["--max-cpu", "25"]):
        out = out_json(sandlock("run", *flags, "--", *py(code)))
        assert out["affinity"] == mine and out["share"] < 0.75, (flags, out)


def test_short_e_and_long_env():
    env = out_json(sandlock("run", "-e", "SL_A=1", "--env", "SL_B=x=y", "--", *py("print(json.dumps(dict(os.environ)))")))
    assert (env["SL_A"], env["SL_B"]) == ("1", "x=y")


PROCESS_FLAGS = """
import ctypes, resource
libc = ctypes.CDLL(None, use_errno=True)
with open("/proc/self/status") as f:
    thp = [x.split()[1] for x in f if x.startswith("THP_enabled:")]
print(json.dumps({"core": list(resource.getrlimit(resource.RLIMIT_CORE)),
                  "thp": thp[0] if thp else None,
                  "no_aslr": bool(libc.personality(0xffffffff) & 0x0040000)}))
"""


def test_no_coredump_no_huge_pages_no_randomize_memory():
    off = out_json(sandlock("run", "--", *py(PROCESS_FLAGS)))
    on = out_json(sandlock("run", "--no-coredump", "--no-huge-pages", "--no-randomize-memory", "--",
                           *py(PROCESS_FLAGS)))
    assert on["core"] == [0, 0] and on["no_aslr"] is True and off["no_aslr"] is False
    assert off["core"] != [0, 0] or resource_core_is_zero()
    if on["thp"] is not None:
        assert on["thp"] == "0"


def resource_core_is_zero() -> bool:
    import resource
    return resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)


def test_extra_deny_and_allow_syscall():
    code = 'print(json.dumps(attempt(os.getcwd)[:1]))'
    assert out_json(sandlock("run", "--", *py(code))) == "/"
    assert out_json(sandlock("run", "--extra-deny-syscall", "getcwd", "--", *py(code))) == "E"
    shm = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
r = libc.shmget(0, 4096, 0o600)
if r >= 0:
    libc.shmctl(r, 0, None)
print(json.dumps(r >= 0))
"""
    assert out_json(sandlock("run", "--", *py(shm))) is False
    assert out_json(sandlock("run", "--extra-allow-syscall", "sysv_ipc", "--", *py(shm))) is True


def test_max_processes():
    code = """
def f():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print(json.dumps(attempt(f)))
"""
    assert out_json(sandlock("run", "-P", "2", "--", *py(code))) == "OK"
    assert out_json(sandlock("run", "-P", "1", "--", *py(code))) == "EAGAIN"


def test_net_allow_and_port_remap():
    with socket.socket() as held, socket.socket() as other:
        held.bind(("127.0.0.1", 0))
        held.listen()
        other.bind(("127.0.0.1", 0))
        other.listen()
        port, port2 = held.getsockname()[1], other.getsockname()[1]
        code = """
import socket
def conn(port):
    s = socket.socket()
    try:
        return attempt(s.connect, ("127.0.0.1", int(port)))
    finally:
        s.close()
def bind(port):
    s = socket.socket()
    try:
        r = attempt(s.bind, ("127.0.0.1", int(port)))
        return r if r != "OK" else s.getsockname()[1]
    finally:
        s.close()
print(json.dumps([conn(sys.argv[1]), conn(sys.argv[2]), bind(sys.argv[1])]))
"""
        argv = [*py(code), str(port), str(port2)]
        out = out_json(sandlock("run", "--net-allow", f"127.0.0.1:{port}", "--", *argv))
        assert out[:2] == ["OK", "ECONNREFUSED"] or out[1] in ("EACCES", "EPERM"), out
        assert out[1] != "OK"
        out = out_json(sandlock("run", "--port-remap", "--net-allow-bind", str(port), "--", *argv))
        assert out[2] == port, out  # the held port, bound under remapping: the virtual one shows


def test_interactive_shares_stdin():
    code = 'print(json.dumps(sys.stdin.read()))'
    r, w = os.pipe()
    os.write(w, b"hello")
    os.close(w)
    try:
        assert out_json(sandlock("run", "-i", "--", *py(code), stdin=r)) == "hello"
    finally:
        os.close(r)
    assert out_json(sandlock("run", "--", *py(code))) == ""


def test_name_and_no_supervisor_run():
    assert sandlock("run", "--name", "sl-cli-test", "--", "true").returncode == 0
    p = sandlock("run", "--no-supervisor", "--", *py('print(json.dumps(ls("/proc")))'))
    assert out_json(p) == "EACCES"  # not virtualized without the supervisor: not granted
