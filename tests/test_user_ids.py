"""uid/gid: the command sees the ids it was given (an unprivileged user
namespace maps the caller's own ids onto them, and nothing else), keeps no
capability, and what it creates still belongs to the caller on the host."""
from __future__ import annotations

import json
import os
import sys

import pytest

from sandlock import PolicyError, Sandbox


def _userns_available() -> bool:
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            return int(f.read()) > 0
    except (OSError, ValueError):
        return False


needs_userns = pytest.mark.skipif(not _userns_available(),
                                  reason="user namespaces are off (user.max_user_namespaces = 0)")

PROBE = r"""
import json, os
def caps():
    with open("/proc/self/status") as f:
        return {l.split(":")[0]: l.split()[1] for l in f if l.startswith(("CapEff", "CapPrm"))}
def attempt(fn, *a):
    try:
        fn(*a)
        return "OK"
    except OSError as e:
        return e.strerror
path = os.path.join(os.environ["SL_DIR"], "made")
open(path, "w").close()
with open("/proc/self/uid_map") as f:
    uid_map = f.read().split()
print(json.dumps({"ids": [os.getuid(), os.getgid(), os.geteuid(), os.getegid()],
                  "groups": os.getgroups(), "caps": caps(), "uid_map": uid_map,
                  "setuid": attempt(os.setuid, 4242), "owner": os.stat(path).st_uid,
                  "unshare": attempt(os.unshare, 0x10000000) if hasattr(os, "unshare") else "n/a"}))
"""


def run(base, d, **kw) -> dict:
    sb = Sandbox(fs_readable=[*base, "/proc"], fs_writable=[d], env={"SL_DIR": d}, **kw)
    r = sb.run([sys.executable, "-c", PROBE], timeout=60)
    assert r.success, (r.error, r.stderr)
    return json.loads(r.stdout)


@needs_userns
@pytest.mark.parametrize("ids", [(1000, 1000), (0, 0), (12345, 777)])
def test_the_command_sees_the_ids(base_readable, world_dir, ids):
    me = (os.geteuid(), os.getegid())
    os.chmod(world_dir, 0o777)
    out = run(base_readable, world_dir, uid=ids[0], gid=ids[1])
    assert out["ids"] == [ids[0], ids[1], ids[0], ids[1]]
    assert out["caps"] == {"CapEff": "0000000000000000", "CapPrm": "0000000000000000"}
    assert out["setuid"] != "OK" and out["unshare"] != "OK"
    made = os.stat(os.path.join(world_dir, "made"))
    assert (made.st_uid, made.st_gid) == me          # the caller's, on the host
    if ids != me:
        assert out["uid_map"] == [str(ids[0]), str(me[0]), "1"]  # only our own id is mapped
        assert out["owner"] == ids[0]


def test_our_own_ids_need_no_namespace(base_readable, world_dir):
    os.chmod(world_dir, 0o777)
    out = run(base_readable, world_dir, uid=os.geteuid(), gid=os.getegid())
    assert out["uid_map"] == ["0", "0", "4294967295"]
    assert out["ids"][0] == os.geteuid()


def test_both_or_neither_and_no_supervisor():
    with pytest.raises(PolicyError, match="both"):
        Sandbox(uid=1000)
    with pytest.raises(PolicyError, match="both"):
        Sandbox(gid=1000)
    with pytest.raises(PolicyError, match="uid/gid"):
        Sandbox(uid=1000, gid=1000, no_supervisor=True)
    with pytest.raises(PolicyError, match="uid"):
        Sandbox(uid=-1, gid=0)


@needs_userns
def test_cli_user_flag():
    from test_cli import sandlock
    from test_cli_defaults import one_line
    p = sandlock("run", "--user", "4321:765", "--", "id", "-u")
    assert p.returncode == 0 and p.stdout.decode().strip() == "4321", p.stderr
    assert "UID:GID" in one_line(sandlock("run", "--user", "4321", "--", "true"))


@needs_userns
def test_every_run_maps_the_ids_not_only_the_first(base_readable):
    """The first runs of a process fork their supervisor from it (all its
    capabilities effective); later ones come from the launch server, whose
    supervisors keep none effective. Mapping root's own id needs
    CAP_SETFCAP at unshare: those runs failed with EPERM on uid_map."""
    import time
    for _ in range(5):
        r = Sandbox(fs_readable=base_readable, uid=12345, gid=777).run(["id", "-u"], timeout=60)
        assert r.success and r.stdout.strip() == b"12345", r.error
        time.sleep(0.2)
