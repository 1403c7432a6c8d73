"""`sandlock learn`: learn a command's profile in one observed run, then run
the command under it (real processes, through the installed command).

Both directions: the learned profile lets the command succeed, and what the
command never touched (a secret beside its data, an ~/.ssh key) stays
unreadable under it. The learning run changes nothing on disk; a failing
command writes no profile; --timeout writes a partial one; --merge unites;
no collapse ever yields / or a sensitive directory.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import textwrap

import pytest
from test_cli import sandlock

from sandlock import denials, learn, profiles, protocol
from sandlock.supervisor import learning

SCRIPT = textwrap.dedent("""\
    import os, sys
    data = sys.argv[1]
    with open(os.path.join(data, "input.csv")) as f:
        text = f.read()
    names = sorted(os.listdir(data))
    with open("out.txt", "w") as f:
        f.write(text + ",".join(names))
    print("ok")
""")

PROBE = textwrap.dedent("""\
    import errno, json, sys
    out = {}
    for p in sys.argv[1:]:
        try:
            open(p).read()
            out[p] = "OK"
        except OSError as e:
            out[p] = errno.errorcode[e.errno]
    print(json.dumps(out))
""")


def _write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


@pytest.fixture
def world(world_dir):
    """proj/ (the cwd, with the script), srv/data/ (its input), srv/private/key
    (a secret beside the data), home/.ssh/id_rsa (HOME's key)."""
    w = world_dir
    _write(f"{w}/proj/script.py", SCRIPT)
    _write(f"{w}/srv/data/input.csv", "a,b\n")
    _write(f"{w}/srv/private/key", "hunter2\n")
    _write(f"{w}/home/.ssh/id_rsa", "PRIVATE KEY\n")
    for d in ("proj", "srv", "srv/data", "srv/private", "home", "home/.ssh"):
        os.chmod(f"{w}/{d}", 0o755)
    os.makedirs(f"{w}/out", mode=0o755)
    os.chmod(f"{w}/out", 0o755)
    return w


def _env(w: str) -> dict:
    env = dict(os.environ)
    env["HOME"] = f"{w}/home"
    return env


def _snapshot(root: str, skip: str) -> dict:
    out = {}
    for d, dirs, files in os.walk(root):
        if d.startswith(skip):
            continue
        for name in dirs + files:
            p = os.path.join(d, name)
            if p.startswith(skip):
                continue
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_learn_then_run_under_the_profile(world):
    w = world
    prof = f"{w}/out/script.toml"
    before = _snapshot(w, f"{w}/out")
    p = sandlock("learn", "-o", prof, "--", sys.executable, "script.py", f"{w}/srv/data",
                 cwd=f"{w}/proj", env=_env(w))
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().strip() == "ok"          # the command ran, its output shown
    assert _snapshot(w, f"{w}/out") == before         # learning changed nothing on disk
    assert not os.path.exists(f"{w}/proj/out.txt")
    assert f"wrote the profile to {prof}" in p.stderr.decode()

    learned = profiles.read_profile_file(prof)        # it loads with our one parser
    again = profiles.parse_profile(learned.to_toml())
    assert again.data == learned.data                 # and round-trips
    fs = learned.data["filesystem"]
    grants = fs.get("read", []) + fs.get("write", [])
    assert "/" not in grants
    assert f"{w}/srv/data" in fs["read"]              # listed: the directory
    assert f"{w}/proj" in fs["write"]                 # out.txt was created there
    assert not any(g in (f"{w}/srv", f"{w}/srv/private", f"{w}/home", w) for g in grants)
    assert learned.command == [sys.executable, "script.py", f"{w}/srv/data"]

    # the same command succeeds under the profile ([program] is the default command)
    r = sandlock("run", "--profile-file", prof, cwd=f"{w}/proj", env=_env(w))
    assert r.returncode == 0, r.stderr
    with open(f"{w}/proj/out.txt") as f:
        assert f.read() == "a,b\ninput.csv"
    # ... and what it never touched stays unreadable under it
    secret, key = f"{w}/srv/private/key", f"{w}/home/.ssh/id_rsa"
    r = sandlock("run", "--profile-file", prof, "--", sys.executable, "-c", PROBE,
                 f"{w}/srv/data/input.csv", secret, key, cwd=f"{w}/proj", env=_env(w))
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen[f"{w}/srv/data/input.csv"] == "OK"
    assert seen[secret] in ("EACCES", "EPERM")
    assert seen[key] in ("EACCES", "EPERM")


def test_a_failing_command_writes_nothing(world):
    w = world
    prof = f"{w}/out/fail.toml"
    p = sandlock("learn", "-o", prof, "--", sys.executable, "-c",
                 "open('made.txt', 'w').write('x'); raise SystemExit(3)", cwd=f"{w}/proj")
    assert p.returncode == 3
    assert "exited with status 3: no profile written" in p.stderr.decode()
    assert not os.path.exists(prof)
    assert os.listdir(f"{w}/out") == []
    assert not os.path.exists(f"{w}/proj/made.txt")


def test_writes_outside_the_cwd_are_refused_and_not_granted(world):
    w = world
    code = (f"import os\ntry:\n    open({w + '/srv/outside.txt'!r}, 'w')\n"
            f"except PermissionError:\n    print('refused')\nos.mkdir('made')")
    p = sandlock("learn", "--", sys.executable, "-c", code, cwd=f"{w}/proj")
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert out.startswith("refused\n")                # the profile follows on stdout
    learned = profiles.parse_profile(out.split("\n", 1)[1])
    assert learned.data["filesystem"]["write"] == [f"{w}/proj"]
    assert f"the write to {w}/srv/outside.txt was refused while learning" in p.stderr.decode()
    assert not os.path.exists(f"{w}/srv/outside.txt") and not os.path.exists(f"{w}/proj/made")


def test_learning_in_tmp_itself(world):
    """The current directory is the copy-on-write workdir: the run's TMPDIR
    and the layer's storage go elsewhere, and /tmp is never granted."""
    w = world
    name = os.path.basename(w) + ".made"
    p = sandlock("learn", "-o", f"{w}/out/tmp.toml", "--", sys.executable, "-c",
                 f"open({name!r}, 'w').write('x'); import os; print(os.environ['TMPDIR'])",
                 cwd="/tmp")
    assert p.returncode == 0, p.stderr
    assert not p.stdout.decode().startswith("/tmp/")
    assert not os.path.exists(f"/tmp/{name}")
    assert "not granted: write on /tmp (a top-level directory)" in p.stderr.decode()
    fs = profiles.read_profile_file(f"{w}/out/tmp.toml").data.get("filesystem", {})
    assert "write" not in fs and "/tmp" not in fs.get("read", [])


def test_usage_errors_write_nothing(world):
    w = world
    p = sandlock("learn", cwd=f"{w}/proj")
    assert p.returncode == 125 and b"no command given" in p.stderr
    p = sandlock("learn", "--merge", f"{w}/out/none.toml", "--", "true", cwd=f"{w}/proj")
    assert p.returncode == 125 and p.stderr.count(b"\n") == 1
    p = sandlock("learn", "-o", f"{w}/out/root.toml", "--", "true", cwd="/")
    assert p.returncode == 125 and b"not /" in p.stderr
    assert os.listdir(f"{w}/out") == []


def test_timeout_writes_a_partial_profile(world):
    w = world
    prof = f"{w}/out/partial.toml"
    code = f"open({w + '/srv/data/input.csv'!r}).read(); import time; time.sleep(60)"
    p = sandlock("learn", "--timeout", "3", "-o", prof, "--", sys.executable, "-c", code,
                 cwd=f"{w}/proj")
    assert p.returncode == 124, p.stderr
    err = p.stderr.decode()
    assert "wrote a partial profile" in err and "timed out after 3 s" in err
    learned = profiles.read_profile_file(prof)
    assert f"{w}/srv/data/input.csv" in learned.data["filesystem"]["read"]
    with open(prof) as f:
        assert "# note: partial" in f.read()


def test_merge_unites_with_an_existing_profile(world):
    w = world
    old = f"{w}/out/old.toml"
    _write(old, f'[filesystem]\nread = ["{w}/srv/private"]\n\n[limits]\nmemory = "256M"\n')
    code = f"open({w + '/srv/data/input.csv'!r}).read()"
    p = sandlock("learn", "--merge", old, "--", sys.executable, "-c", code, cwd=f"{w}/proj")
    assert p.returncode == 0, p.stderr
    merged = profiles.read_profile_file(old)          # --merge alone updates that file
    assert merged.data["filesystem"]["read"][:1] == [f"{w}/srv/private"]
    assert f"{w}/srv/data/input.csv" in merged.data["filesystem"]["read"]
    assert merged.data["limits"] == {"memory": "256M"}


def test_network_and_bind_are_learned(world):
    w = world
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = textwrap.dedent(f"""\
        import socket
        srv = socket.socket(); srv.bind(("127.0.0.1", {port})); srv.listen()
        c = socket.create_connection(("127.0.0.1", {port}))
        a, _ = srv.accept(); c.sendall(b"hi"); assert a.recv(2) == b"hi"
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"x", ("127.0.0.1", {port}))       # a datagram: learned
        c2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c2.connect(("127.0.0.1", {port + 1})); c2.send(b"x")  # connected UDP: learned
        for target in (("127.0.0.1", 0), ("127.0.0.1", {port})):  # like glibc's probes
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.connect(target)               # connect, no send: dropped
            except OSError:
                pass                                # (and, like glibc, a refusal is fine)
    """)
    prof = f"{w}/out/net.toml"
    p = sandlock("learn", "-o", prof, "--", sys.executable, "-c", code, cwd=f"{w}/proj")
    assert p.returncode == 0, p.stderr
    net = profiles.read_profile_file(prof).data["network"]
    assert net == {"allow": [f"tcp://127.0.0.1:{port}", f"udp://127.0.0.1:{port}",
                             f"udp://127.0.0.1:{port + 1}"], "allow_bind": [port]}
    assert "not granted: udp://127.0.0.1:0 (a UDP connect like glibc" in p.stderr.decode()
    r = sandlock("run", "--profile-file", prof, cwd=f"{w}/proj")
    assert r.returncode == 0, r.stderr
    # without the learned network grants the same command is refused
    r = sandlock("run", "--", sys.executable, "-c", code, cwd=f"{w}/proj")
    assert r.returncode != 0


# -- synthesis (no run: records as the observer gives them) ------------------------------

def _files(d: str, n: int, prefix: str = "f") -> list[str]:
    os.makedirs(d, exist_ok=True)
    out = []
    for i in range(n):
        out.append(f"{d}/{prefix}{i}")
        _write(out[-1], "x")
    return out


def test_collapse_is_reported_and_never_sensitive(world, monkeypatch):
    w = world
    monkeypatch.setenv("HOME", f"{w}/home")
    data = _files(f"{w}/srv/many", 10)
    _write(f"{w}/srv/many/unseen.txt", "x")
    in_home = _files(f"{w}/home", 10)
    in_ssh = _files(f"{w}/home/.ssh", 10, "k")
    records = [("read", p) for p in data + in_home + in_ssh]
    records += [("list", "/"), ("create", "/newfile"), ("create", f"{w}/home/new"),
                ("list", f"{w}/home")]
    got = learn.synthesize(learn.Observation(records))
    fs = got.data["filesystem"]
    assert fs.get("write") is None
    assert f"{w}/srv/many" in fs["read"]                  # a safe collapse
    assert not any(r.startswith(f"{w}/srv/many/") for r in fs["read"])
    assert f"{w}/home" not in fs["read"] and f"{w}/home/.ssh" not in fs["read"]
    assert set(in_home) <= set(fs["read"])                # one by one instead
    assert "/" not in fs["read"]
    notes = "\n".join(got.notes)
    assert f"collapsed 10 files read in {w}/srv/many" in notes
    assert "unseen.txt" in notes                          # what the collapse newly grants
    assert f"not collapsed: 10 files in {w}/home (a home directory)" in notes
    assert "not granted: read on / (/)" in notes
    assert "not granted: write on / (/)" in notes
    assert f"not granted: write on {w}/home (a home directory)" in notes


@pytest.mark.parametrize("path", ["/", "/etc", "/home", "/root", "/proc", "/sys", "/dev", "/var",
                                  "/tmp", "/usr", "/etc/ssl", "/var/lib", "/proc/1", "/dev/shm",
                                  "/etc/ssh"])
def test_sensitive_directories_are_never_granted_whole(path):
    assert learn.unsafe_directory(path) is not None


def test_credential_stores_and_homes(world, monkeypatch):
    w = world
    monkeypatch.setenv("HOME", f"{w}/home")
    assert learn.unsafe_directory(f"{w}/home") == "a home directory"
    assert learn.unsafe_directory(w) == "a directory holding a home directory"
    assert "credentials" in learn.unsafe_directory(f"{w}/home/.ssh")
    assert learn.unsafe_directory(f"{w}/srv/data") is None
    os.makedirs(f"{w}/srv/data/.aws")
    assert learn.unsafe_directory(f"{w}/srv/data") == "a directory holding .aws"


def test_udp_probes_are_dropped_and_merge_is_a_union():
    got = learn.synthesize(learn.Observation([
        ("udp-connect", "udp://10.0.0.3:443"), ("udp-connect", "udp://10.0.0.2:53"),
        ("udp-connect", "udp://10.0.0.4:0"), ("connect", "tcp://10.0.0.3:443"),
        ("bind", "8080")]))
    assert got.data["network"] == {"allow": ["tcp://10.0.0.3:443", "udp://10.0.0.2:53"],
                                   "allow_bind": [8080]}
    assert any("udp://10.0.0.3:443" in n for n in got.notes)
    assert any("udp://10.0.0.4:0" in n for n in got.notes)
    merged = learn.merge({"network": {"allow": ["a.example:443"]}, "limits": {"processes": 4}},
                         got.data)
    assert merged["network"]["allow"] == ["a.example:443", "tcp://10.0.0.3:443",
                                          "udp://10.0.0.2:53"]
    assert merged["limits"] == {"processes": 4}


def test_records_travel_in_finished():
    msg = protocol.Finished(protocol.Reason.EXITED, 0, learned=[("read", "/x"), ("bind", "80")],
                            learned_more=2, learned_missed=1)
    back = protocol.decode(protocol.encode(msg), protocol.Channel.RESULT)
    assert back.learned == [("read", "/x"), ("bind", "80")]
    assert (back.learned_more, back.learned_missed) == (2, 1)
    bad = protocol.Finished(protocol.Reason.EXITED, 0, learned=[("read", 3)])
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(protocol.encode(bad), protocol.Channel.RESULT)


def test_the_most_records_still_fit_one_frame():
    observer = learning.Learner({})
    i = 0
    while not observer.more:
        observer._note("read", "/" + "\u00e9" * 2000 + str(i))  # 2 bytes a character in UTF-8
        i += 1
    records, more, _missed = observer.export()
    assert more == 1 and records
    long = "x" * denials.MAX_TARGET
    worst = [("file", long, "open", 13, "fs_readable", long, long, 1)] * denials.MAX_RECORDS
    frame = protocol.encode(protocol.Finished(protocol.Reason.EXITED, 0, error="e" * 4096,
                                              denials=worst, learned=records))
    assert len(frame) <= protocol.HEADER_SIZE + protocol.MAX_PAYLOAD
    small = learning.Learner({})
    for n in range(learning.MAX_RECORDS + 5):
        small._note("read", f"/{n}")
    assert len(small.export()[0]) == learning.MAX_RECORDS and small.more == 5
    frame = protocol.encode(protocol.Finished(protocol.Reason.EXITED, 0, denials=worst,
                                              learned=small.export()[0]))
    assert len(frame) <= protocol.HEADER_SIZE + protocol.MAX_PAYLOAD


def test_a_write_in_a_default_readable_tree_is_still_granted(world):
    """/opt-like trees are readable by default, never writable: a directory
    the command created entries in is granted even there."""
    w = world
    seen = learn.Observation([("create", f"{w}/proj/new.txt")], workdir=f"{w}/proj")
    assert learn.synthesize(seen).data["filesystem"]["write"] == [f"{w}/proj"]
    assert learn._default_covered("/opt/x", "") and not learn._default_covered("/opt/x", "", write=True)


def test_default_denied_paths_and_symlinks(world):
    w = world
    got = learn.synthesize(learn.Observation([("read", "/etc/shadow"),
                                              ("read", "/etc/ssh/ssh_config")]))
    assert "filesystem" not in got.data
    notes = "\n".join(got.notes)
    assert "the default policy denies /etc/shadow" in notes
    assert "the default policy denies /etc/ssh;" in notes
    # removing a symlink changes the directory it is in, not its target's
    os.symlink(f"{w}/srv/data", f"{w}/proj/link")
    seen = learn.Observation([("remove", f"{w}/proj/link"), ("read", f"{w}/proj/link/input.csv")],
                             workdir=f"{w}/proj")
    fs = learn.synthesize(seen).data["filesystem"]
    assert fs == {"read": [f"{w}/srv/data/input.csv"], "write": [f"{w}/proj"]}
