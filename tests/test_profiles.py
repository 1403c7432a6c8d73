"""Profiles: the TOML parser (sandlock.profiles), the API (load_profile,
list_profiles) and the command line (`run -p/--profile-file`, `profile
list|show|delete`), with real sandboxed runs.

Every test points XDG_CONFIG_HOME at a fresh directory: the suite also runs
as uid 65534, whose HOME may not be writable.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sandlock
from sandlock import PolicyError, Sandbox, profiles
from sandlock.profiles import SCHEMA, SECTIONS

from test_cli import SANDLOCK  # the installed console script (or python -m sandlock)

ROOT = Path(__file__).resolve().parent.parent


# -- fixtures and helpers -------------------------------------------------------------------

@pytest.fixture
def config(tmp_path, monkeypatch) -> Path:
    """A fresh XDG_CONFIG_HOME; returns its profiles directory (created)."""
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    d = home / "sandlock" / "profiles"
    d.mkdir(parents=True)
    return d


@pytest.fixture
def data(world_dir):
    """Two directories a sandbox may or may not be granted, each with a file."""
    out = {}
    for name in ("a", "b"):
        d = os.path.join(world_dir, name)
        os.mkdir(d)
        os.chmod(d, 0o755)
        with open(os.path.join(d, "f"), "w") as f:
            f.write(name)
        os.chmod(os.path.join(d, "f"), 0o644)
        out[name] = d
    return out


def write(config: Path, name: str, text: str) -> Path:
    path = config / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return path


def toml_list(items) -> str:
    return json.dumps(list(items))


def cli(*args, config: Path | None = None, cwd: str = "/", timeout: float = 60,
        env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ if env is None else env)
    if config is not None:
        e["XDG_CONFIG_HOME"] = str(config.parent.parent)
    return subprocess.run([*SANDLOCK, *args], capture_output=True, timeout=timeout, env=e, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def one_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 125, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def reader(*paths) -> list[str]:
    """argv of a Python snippet printing, as JSON, what reading each path gives."""
    code = ("import json, sys, errno\n"
            "def rd(p):\n"
            "    try:\n"
            "        return 'OK:' + open(p).read()\n"
            "    except OSError as e:\n"
            "        return errno.errorcode[e.errno]\n"
            "print(json.dumps([rd(p) for p in sys.argv[1:]]))\n")
    return [sys.executable, "-I", "-S", "-c", code, *paths]


def out_json(p: subprocess.CompletedProcess):
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


# -- the schema ------------------------------------------------------------------------------

def test_schema_keys_are_the_references():
    expected = {
        "config": {"http_ca", "http_key", "http_inject_ca", "http_ca_out", "fs_storage", "workdir"},
        "determinism": {"random_seed", "time_start", "deterministic_dirs", "no_randomize_memory"},
        "program": {"exec", "args", "env", "cwd", "uid", "gid", "clean_env", "no_coredump",
                    "no_huge_pages"},
        "filesystem": {"read", "write", "deny", "chroot", "mount", "on_exit", "on_error"},
        "network": {"allow", "deny", "allow_bind", "deny_bind", "port_remap"},
        "http": {"ports", "allow", "deny"},
        "syscalls": {"extra_allow", "extra_deny"},
        "limits": {"memory", "processes", "open_files", "cpu", "disk", "gpu_devices", "cpu_cores",
                   "num_cpus"},
    }
    assert list(SECTIONS) == list(expected)
    got: dict[str, set] = {s: set() for s in SECTIONS}
    for key in SCHEMA:
        assert key.name not in got[key.section], key
        got[key.section].add(key.name)
    assert got == expected


def test_schema_fields_are_sandbox_fields():
    fields = {f.name for f in dataclasses.fields(Sandbox)}
    for key in SCHEMA:
        assert key.field is None or key.field in fields, key
    # Every policy field a file can express has a key (the rest are runtime
    # objects, ours only, or set through another key).
    covered = {k.field for k in SCHEMA} | {"fs_mount_ro"}
    not_in_profiles = {"image", "notif_policy", "name", "policy_fn", "init_fn", "work_fn",
                       "allow_degraded", "disable", "no_supervisor",
                       # settings of policy_fn, a Python function: no profile can give one
                       "policy_fn_events", "policy_fn_observe", "policy_fn_timeout",
                       "http_credentials", "http_auth"}  # credentials: never in a file
    assert fields - covered == not_in_profiles


def test_docs_are_generated_from_the_schema():
    committed = (ROOT / "docs" / "profiles.md").read_text()
    assert committed == profiles.profile_docs(), \
        "docs/profiles.md is stale: python -m sandlock.profiles > docs/profiles.md"
    for key in SCHEMA:
        assert f"| `{key.name}` |" in committed


# -- parsing ------------------------------------------------------------------------------

FULL = """
[config]
http_ca = "/tmp/ca.pem"
http_key = "/tmp/ca.key"
http_inject_ca = ["/etc/ssl/certs/ca-certificates.crt"]
http_ca_out = "/tmp/ca-out.pem"
fs_storage = "/tmp/storage"
workdir = "/usr/share"

[determinism]
random_seed = 42
time_start = "2024-01-01T00:00:00Z"
deterministic_dirs = true
no_randomize_memory = true

[program]
exec = "/bin/echo"
args = ["hello", "world"]
env = { A = "1", "B C" = "2" }
cwd = "/tmp"
uid = 1000
gid = 1000
clean_env = true
no_coredump = true
no_huge_pages = true

[filesystem]
read = ["/usr", "/lib"]
write = ["/tmp/out"]
deny = ["/etc/shadow"]
chroot = "/srv/root"
mount = ["/data:/srv/data", "/ro:/srv/ro:ro", "/rw:/srv/rw:rw"]
on_exit = "abort"
on_error = "keep"

[network]
allow = ["example.com:443", "udp://1.1.1.1:53"]
allow_bind = [8080, "9000-9005"]
deny_bind = [22]
port_remap = true

[http]
ports = [80, 8080]
allow = ["GET example.com/*"]
deny = ["* */admin"]

[syscalls]
extra_allow = ["sysv_ipc"]
extra_deny = ["ptrace"]

[limits]
memory = "512M"
processes = 10
open_files = 100
cpu = 50
disk = "1G"
gpu_devices = [0]
cpu_cores = [0]
num_cpus = 1
"""


def test_every_key_maps_onto_its_field():
    prof = profiles.parse_profile(FULL, "full.toml")
    kw = prof.fields()
    assert prof.command == ["/bin/echo", "hello", "world"]
    assert kw["env"] == {"A": "1", "B C": "2"}
    assert kw["fs_readable"] == ["/usr", "/lib"] and kw["fs_writable"] == ["/tmp/out"]
    assert kw["fs_mount"] == {"/data": "/srv/data", "/rw": "/srv/rw"}
    assert kw["fs_mount_ro"] == {"/ro": "/srv/ro"}
    assert kw["net_allow_bind"] == [8080, "9000-9005"]
    assert kw["max_memory"] == "512M" and kw["max_processes"] == 10 and kw["max_cpu"] == 50
    assert kw["max_disk"] == "1G" and kw["cpu_cores"] == [0] and kw["gpu_devices"] == [0]
    assert kw["extra_allow_syscalls"] == ["sysv_ipc"] and kw["extra_deny_syscalls"] == ["ptrace"]
    assert kw["http_ports"] == [80, 8080] and kw["workdir"] == "/usr/share"
    sb = prof.sandbox()
    assert sb.on_exit == sandlock.BranchAction.ABORT and sb.on_error == sandlock.BranchAction.KEEP
    assert sb.uid == 1000 and sb.random_seed == 42 and sb.port_remap is True
    for key in SCHEMA:  # the sample sets every key but [network].deny (not with allow)
        assert key.name in prof.data[key.section] or key.qualified == "[network].deny", key
    deny = profiles.parse_profile('[network]\ndeny = ["10.0.0.0/8"]\n').fields()
    assert deny == {"net_deny": ["10.0.0.0/8"]}


def test_round_trip():
    prof = profiles.parse_profile(FULL, "full.toml")
    again = profiles.parse_profile(prof.to_toml(), "again.toml")
    assert again.data == prof.data
    assert again.fields() == prof.fields()
    assert profiles.parse_profile(again.to_toml()).to_toml() == prof.to_toml()


@pytest.mark.parametrize("section", list(SECTIONS))
def test_unknown_key_in_each_section(section):
    with pytest.raises(PolicyError) as e:
        profiles.parse_profile(f"[{section}]\nbogus = 1\n", "/x/p.toml")
    assert str(e.value).startswith(f"/x/p.toml: [{section}].bogus: unknown key"), e.value


def test_unknown_section_and_top_level_key():
    with pytest.raises(PolicyError, match=r"^/x/p\.toml: \[netwrk\]: unknown section"):
        profiles.parse_profile("[netwrk]\nallow = []\n", "/x/p.toml")
    with pytest.raises(PolicyError, match=r"^/x/p\.toml: 'name': unknown top-level key"):
        profiles.parse_profile('name = "x"\n', "/x/p.toml")
    # The reference's docs list it, its parser rejects it: so does ours.
    with pytest.raises(PolicyError, match=r"\[program\]\.no_supervisor: unknown key"):
        profiles.parse_profile("[program]\nno_supervisor = true\n", "/x/p.toml")


@pytest.mark.parametrize("text,key", [
    ('[filesystem]\nread = "/usr"\n', "[filesystem].read"),
    ("[filesystem]\nread = [1]\n", "[filesystem].read"),
    ('[limits]\nprocesses = "3"\n', "[limits].processes"),
    ("[limits]\nprocesses = true\n", "[limits].processes"),
    ("[limits]\nmemory = 1.5\n", "[limits].memory"),
    ('[program]\nclean_env = "yes"\n', "[program].clean_env"),
    ("[program]\nenv = { A = 1 }\n", "[program].env"),
    ('[network]\nallow_bind = [true]\n', "[network].allow_bind"),
    ("[determinism]\ntime_start = 2024-01-01\n", "[determinism].time_start"),
    ("program = 3\n", "'program'"),
])
def test_type_errors_name_the_key_and_file(text, key):
    with pytest.raises(PolicyError) as e:
        profiles.parse_profile(text, "/x/p.toml")
    assert str(e.value).startswith(f"/x/p.toml: {key}"), e.value


@pytest.mark.parametrize("text,key", [
    ('[limits]\nmemory = "lots"\n', "[limits].memory"),
    ("[limits]\ncpu = 300\n", "[limits].cpu"),
    ('[network]\nallow = ["tcp://[::1"]\n', "[network].allow"),
    ('[network]\nallow_bind = ["99999"]\n', "[network].allow_bind"),
    ('[syscalls]\nextra_allow = ["no_such_group"]\n', "[syscalls].extra_allow"),
    ('[filesystem]\non_exit = "explode"\n', "[filesystem].on_exit"),
    ('[filesystem]\nmount = ["nocolon"]\n', "[filesystem].mount"),
    ('[determinism]\ntime_start = "yesterday"\n', "[determinism].time_start"),
    ('[program]\nenv = { "A=B" = "1" }\n', "[program].env"),
])
def test_value_errors_come_from_sandbox_and_name_the_key(text, key):
    with pytest.raises(PolicyError) as e:
        profiles.parse_profile(text, "/x/p.toml")
    assert str(e.value).startswith(f"/x/p.toml: {key}:"), e.value


def test_program_rules():
    with pytest.raises(PolicyError, match="uid and .*gid must both be set"):
        profiles.parse_profile("[program]\nuid = 1\n")
    with pytest.raises(PolicyError, match=r"\[program\]\.args needs \[program\]\.exec"):
        profiles.parse_profile('[program]\nargs = ["x"]\n')
    with pytest.raises(PolicyError, match="not valid TOML"):
        profiles.parse_profile("[program\n", "/x/p.toml")


def test_relative_paths_and_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    proj = home / "proj"
    proj.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    text = '[filesystem]\nwrite = ["."]\nread = ["~/data"]\n'
    monkeypatch.chdir(proj)
    kw = profiles.parse_profile(text).fields()
    assert kw["fs_writable"] == [str(proj)] and kw["fs_readable"] == [f"{home}/data"]
    for where in (home, tmp_path, Path("/")):  # a home directory, one holding it, /
        monkeypatch.chdir(where)
        with pytest.raises(PolicyError, match=r"\[filesystem\]\.write: '\.' is "):
            profiles.parse_profile(text)
    # Only grants are guarded: a relative deny or cwd may be anything.
    monkeypatch.chdir(home)
    assert profiles.parse_profile('[filesystem]\ndeny = ["."]\n').fields()["fs_denied"] == [str(home)]


def test_merge_fields():
    base = {"fs_readable": ["/a"], "env": {"A": "1", "B": "1"}, "max_memory": "1G", "cwd": "/p",
            "clean_env": True, "cpu_cores": [0, 1]}
    flags = {"fs_readable": ["/b", "/a"], "env": {"B": "2"}, "max_memory": "2G", "cwd": None,
             "clean_env": False, "cpu_cores": [3], "net_allow": []}
    assert profiles.merge_fields(base, flags) == {
        "fs_readable": ["/a", "/b"], "env": {"A": "1", "B": "2"}, "max_memory": "2G", "cwd": "/p",
        "clean_env": True, "cpu_cores": [3], "net_allow": []}


def test_tomli_needed_before_311(monkeypatch):
    monkeypatch.setattr(sys, "version_info", (3, 10, 12, "final", 0))
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(sandlock.SandlockError, match=r"Python 3\.11 .*pip install 'sandlock\[toml\]'"):
        profiles.parse_profile("")


# -- names, listing, built-ins ------------------------------------------------------------

BAD_NAMES = ["", ".", "..", "../x", "../../etc/passwd", "a/b", "/abs", "a\0b", "-rf", "x" * 65,
             "é" * 33, "a\nb"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(name, config):
    for fn in (profiles.load_profile, profiles.read_profile, profiles.find_profile,
               profiles.delete_profile):
        with pytest.raises(PolicyError, match="profile name"):
            fn(name)


def test_good_names(config):
    for name in ("x", "my.profile", "a b", "x" * 64, "é" * 32, ".hidden", "a..b"):
        assert profiles.check_profile_name(name) == name


def test_traversal_never_reaches_a_file_outside(config, tmp_path):
    victim = tmp_path / "xdg" / "sandlock" / "victim.toml"  # one level above the profiles
    victim.write_text("[limits]\nprocesses = 3\n")
    for fn in (profiles.load_profile, profiles.delete_profile):
        with pytest.raises(PolicyError):
            fn("../victim")
    assert victim.exists()
    assert "victim" not in profiles.list_profiles()


def test_list_user_and_builtin(config, monkeypatch, world_dir):
    monkeypatch.chdir(world_dir)
    assert {"python", "build", "agent-shell"} <= set(profiles.list_profiles())
    write(config, "mine", "[limits]\nprocesses = 5\n")
    write(config, "build", "[limits]\nprocesses = 7\n")
    (config / "-bad.toml").write_text("")  # not a loadable name: not listed
    (config / "notes.txt").write_text("")
    names = profiles.list_profiles()
    assert names == sorted(names) and names.count("build") == 1 and "mine" in names
    assert "-bad" not in names and "notes" not in names
    infos = {(i.name, i.source): i for i in profiles.list_profiles(details=True)}
    assert infos[("build", "user")].path == str(config / "build.toml")
    assert infos[("build", "builtin")].shadowed and not infos[("python", "builtin")].shadowed
    # The user's profile wins over the built-in one of the same name.
    assert profiles.load_profile("build").max_processes == 7
    assert profiles.read_profile("build").source == "user"
    profiles.delete_profile("build")
    assert profiles.load_profile("build").max_processes == 512
    with pytest.raises(PolicyError, match="built-in profile"):
        profiles.delete_profile("build")
    with pytest.raises(PolicyError, match="not found"):
        profiles.load_profile("nope")


def test_builtin_profiles_load(config, world_dir, monkeypatch):
    monkeypatch.chdir(world_dir)
    for name in ("python", "build", "agent-shell"):
        prof = profiles.read_profile(name)
        assert prof.source == "builtin" and isinstance(prof.sandbox(), Sandbox)
        assert "/usr" in prof.fields()["fs_readable"]
        assert not prof.fields().get("net_allow"), name  # no network
    assert profiles.read_profile("build").fields()["fs_writable"] == [os.path.realpath(world_dir)]
    assert profiles.read_profile("agent-shell").command == ["/bin/sh"]


def test_xdg_default_location(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert profiles.profiles_dir() == tmp_path / ".config" / "sandlock" / "profiles"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # ignored, as the spec says
    assert profiles.profiles_dir() == tmp_path / ".config" / "sandlock" / "profiles"


# -- real runs through the API ----------------------------------------------------------------

def test_api_profile_grant_and_its_absence(config, base_readable, data, py):
    write(config, "with-a", f"""
        [filesystem]
        read = {toml_list(base_readable + [data["a"]])}
    """)
    write(config, "without", f"""
        [filesystem]
        read = {toml_list(base_readable)}
    """)
    code = "OUT['a'] = rd(ARGS['a'] + '/f'); OUT['b'] = rd(ARGS['b'] + '/f')"
    assert py.sandboxed(sandlock.load_profile("with-a"), code, data) == {"a": "OK:a", "b": "EACCES"}
    assert py.sandboxed(sandlock.load_profile("without"), code, data) == {"a": "EACCES", "b": "EACCES"}
    # A file outside the profiles directory, the same way.
    sb = profiles.load_profile_file(config / "with-a.toml")
    assert py.sandboxed(sb, code, data) == {"a": "OK:a", "b": "EACCES"}


# -- the command line ----------------------------------------------------------------------

def test_cli_profile_grants_and_its_absence(config, data):
    write(config, "ra", f'[filesystem]\nread = {toml_list([data["a"]])}\n')
    paths = (data["a"] + "/f", data["b"] + "/f")
    assert out_json(cli("run", "-p", "ra", "--", *reader(*paths), config=config)) == ["OK:a", "EACCES"]
    assert out_json(cli("run", "--profile", "ra", "--", *reader(*paths), config=config)) == \
        ["OK:a", "EACCES"]
    assert out_json(cli("run", "--", *reader(*paths), config=config)) == ["EACCES", "EACCES"]
    assert out_json(cli("run", "--profile-file", str(config / "ra.toml"), "--", *reader(*paths))) == \
        ["OK:a", "EACCES"]


def test_cli_list_flags_add_scalar_flags_override(config, data, world_dir):
    write(config, "p", f"""
        [program]
        env = {{ FROM_PROFILE = "p", BOTH = "profile" }}
        cwd = {json.dumps(data["a"])}
        [filesystem]
        read = {toml_list([data["a"]])}
        [limits]
        open_files = 50
    """)
    code = ("import json, os, resource\n"
            "print(json.dumps([open(os.environ['A'] + '/f').read(), open(os.environ['B'] + '/f').read(),"
            " os.environ['FROM_PROFILE'], os.environ['BOTH'], os.getcwd(),"
            " resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))")
    env = ["-e", f"A={data['a']}", "-e", f"B={data['b']}", "-e", "BOTH=flag"]
    p = cli("run", "-p", "p", "-r", data["b"], *env, "--cwd", data["b"], "--max-open-files", "40",
            "--", sys.executable, "-I", "-S", "-c", code, config=config)
    assert out_json(p) == ["a", "b", "p", "flag", data["b"], 40]
    # Without the flags: the profile's own values.
    p = cli("run", "-p", "p", "-e", f"A={data['a']}", "--", sys.executable, "-I", "-S", "-c",
            "import json, os, resource; print(json.dumps([os.getcwd(), os.environ['BOTH'],"
            " resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))", config=config)
    assert out_json(p) == [data["a"], "profile", 50]


def test_cli_program_exec_is_the_default_command(config):
    write(config, "hello", f"""
        [program]
        exec = {json.dumps(sys.executable)}
        args = ["-c", "print('from the profile')"]
    """)
    p = cli("run", "-p", "hello", config=config)
    assert (p.returncode, p.stdout) == (0, b"from the profile\n"), p.stderr
    p = cli("run", "-p", "hello", "--", sys.executable, "-c", "print('given')", config=config)
    assert (p.returncode, p.stdout) == (0, b"given\n"), p.stderr
    write(config, "noexec", "[limits]\nprocesses = 5\n")
    assert "no [program].exec" in one_line(cli("run", "-p", "noexec", config=config))


def test_cli_builtin_build_writes_the_current_directory(config, world_dir):
    proj = os.path.join(world_dir, "proj")
    os.mkdir(proj)
    os.chmod(proj, 0o777)
    write_out = [sys.executable, "-I", "-S", "-c", "open('out', 'w').write('built')"]
    p = cli("run", "--", *write_out, config=config, cwd=proj)
    assert p.returncode != 0 and not os.path.exists(os.path.join(proj, "out"))
    p = cli("run", "-p", "build", "--", *write_out, config=config, cwd=proj)
    assert p.returncode == 0, p.stderr
    with open(os.path.join(proj, "out")) as f:
        assert f.read() == "built"
    # Never / (nor a home directory): refused, not granted.
    line = one_line(cli("run", "-p", "build", "--", "true", config=config, cwd="/"))
    assert "[filesystem].write: '.' is /" in line


def test_cli_builtin_agent_shell_has_no_network_and_a_clean_env(config, world_dir):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    code = (f"import json, os, socket\n"
            f"s = socket.socket()\n"
            f"try:\n"
            f"    s.connect(('127.0.0.1', {port})); r = 'connected'\n"
            f"except OSError as e:\n"
            f"    r = 'refused'\n"
            f"print(json.dumps([r, os.environ.get('SECRET'), os.environ.get('PATH')]))\n")
    env = dict(os.environ, SECRET="s3cret")
    try:
        p = cli("run", "-p", "agent-shell", "--", sys.executable, "-I", "-S", "-c", code,
                config=config, cwd=world_dir, env=env)
        assert out_json(p) == ["refused", None, "/usr/local/bin:/usr/bin:/bin"]
        # Its absence: the same command, no profile, connects (allowed by a flag).
        p = cli("run", "--net-allow", f"127.0.0.1:{port}", "--", sys.executable, "-I", "-S", "-c",
                code, config=config, cwd=world_dir, env=env)
        assert out_json(p)[:2] == ["connected", "s3cret"]
    finally:
        srv.close()


def test_cli_errors_are_one_line(config, world_dir):
    write(config, "typo", '[network]\nalow = ["example.com"]\n')
    line = one_line(cli("run", "-p", "typo", "--", "true", config=config))
    assert line.startswith(f"sandlock: {config / 'typo.toml'}: [network].alow: unknown key"), line
    write(config, "big", '[limits]\nmemory = "lots"\n')
    assert "[limits].memory:" in one_line(cli("run", "-p", "big", "--", "true", config=config))
    assert "not found" in one_line(cli("run", "-p", "nope", "--", "true", config=config))
    assert "not allowed with" in one_line(
        cli("run", "-p", "python", "--profile-file", "/x.toml", "--", "true", config=config))
    assert "/nonexistent.toml" in one_line(cli("run", "--profile-file", "/nonexistent.toml", "--", "true"))
    write(config, "noroot", '[filesystem]\nchroot = "/nonexistent-root"\n')
    assert "chroot" in one_line(cli("run", "-p", "noroot", "--", "true", config=config))
    write(config, "later", '[limits]\ngpu_devices = [0]\n')
    assert "not implemented yet" in one_line(cli("run", "-p", "later", "--", "true", config=config))


@pytest.mark.parametrize("name", ["../victim", "..", "a/b", "-x", "/etc/passwd"])
def test_cli_traversal_names_refused(config, name):
    victim = config.parent / "victim.toml"
    victim.write_text("[limits]\nprocesses = 3\n")
    for args in (("run", "-p", name, "--", "true"), ("run", f"--profile={name}", "--", "true"),
                 ("profile", "show", "--", name), ("profile", "delete", "--", name)):
        line = one_line(cli(*args, config=config))
        assert "profile name" in line or (name == "-x" and "expected one argument" in line), line
    assert victim.exists()


def test_cli_profile_list_show_delete(config, world_dir):
    p = cli("profile", "list", config=config)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    assert lines[0].split() == ["NAME", "SOURCE", "PATH"]
    assert any(line.split()[:2] == ["python", "builtin"] for line in lines)
    path = write(config, "python", "# mine\n[limits]\nprocesses = 9\n")
    lines = cli("profile", "list", config=config).stdout.decode().splitlines()
    assert any(line.split()[:3] == ["python", "user", str(path)] for line in lines)
    assert any(line.startswith("python ") and "hidden by the user profile" in line for line in lines)
    p = cli("profile", "show", "python", config=config)
    assert (p.returncode, p.stdout) == (0, b"# mine\n[limits]\nprocesses = 9\n")
    p = cli("profile", "delete", "python", config=config)
    assert p.returncode == 0 and not path.exists() and b"Deleted profile 'python'" in p.stdout
    p = cli("profile", "show", "python", config=config)
    assert p.returncode == 0 and b"A Python tool" in p.stdout  # the built-in again
    assert "built-in" in one_line(cli("profile", "delete", "python", config=config))
    assert "not found" in one_line(cli("profile", "delete", "nope", config=config))
    assert "not found" in one_line(cli("profile", "show", "nope", config=config))
    assert "required" in one_line(cli("profile", config=config))


def test_readme_example_parses(config, world_dir, monkeypatch):
    import re
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Profiles\n.*?```toml\n(.*?)```", text, re.S)
    assert block is not None
    monkeypatch.chdir(world_dir)
    prof = profiles.parse_profile(block.group(1), "README.md")
    assert prof.command == ["python3", "scrape.py"]
    assert prof.fields()["fs_writable"] == [os.path.join(world_dir, "out")]


def test_unsearchable_config_dir(tmp_path, monkeypatch, world_dir):
    """A config directory that cannot be searched (a root-owned HOME seen as
    uid 65534, say): built-ins still work, user profiles are just absent."""
    locked = tmp_path / "locked"
    (locked / "sandlock" / "profiles").mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(locked))
    monkeypatch.chdir(world_dir)
    os.chmod(locked, 0)
    try:
        assert "python" in profiles.list_profiles()
        assert profiles.read_profile("python").source == "builtin"
    finally:
        os.chmod(locked, 0o755)
