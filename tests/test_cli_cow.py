"""The copy-on-write workdir through the installed `sandlock` command:
--workdir, --dry-run, --on-exit/--on-error, --max-disk, and their errors."""
from __future__ import annotations

import os

import pytest
from test_cli import sandlock
from test_cli_defaults import one_line


@pytest.fixture
def wd(world_dir):
    d = os.path.join(world_dir, "wd")
    os.mkdir(d)
    os.chmod(d, 0o755)
    with open(os.path.join(d, "a"), "w") as f:
        f.write("hello\n")
    os.chmod(os.path.join(d, "a"), 0o644)
    return d


def listing(d: str) -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name)) as f:
            out[name] = f.read()
    return out


SCRIPT = "echo more >> a; echo new > b; pwd"


def test_dry_run_prints_the_changes_and_changes_nothing(wd):
    p = sandlock("run", "--workdir", wd, "--dry-run", "--", "sh", "-c", SCRIPT + "; rm a")
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().strip() == wd      # the command starts in the workdir
    assert p.stderr.decode().splitlines() == [
        "sandlock: dry-run: filesystem changes:", "D  a", "A  b"]
    assert listing(wd) == {"a": "hello\n"}
    p = sandlock("run", "--workdir", wd, "--dry-run", "--", "cat", "a")
    assert p.stderr.decode().splitlines() == ["sandlock: dry-run: no filesystem changes"]


def test_commit_on_exit_and_abort_on_error(wd):
    assert sandlock("run", "--workdir", wd, "--", "sh", "-c", SCRIPT).returncode == 0
    assert listing(wd) == {"a": "hello\nmore\n", "b": "new\n"}
    p = sandlock("run", "--workdir", wd, "--", "sh", "-c", "echo bad > c; exit 3")
    assert p.returncode == 3
    assert "c" not in os.listdir(wd)
    # the other way round, by flag
    p = sandlock("run", "--workdir", wd, "--on-exit", "abort", "--on-error", "commit", "--",
                 "sh", "-c", "echo kept > c; exit 4")
    assert p.returncode == 4 and listing(wd)["c"] == "kept\n"
    assert sandlock("run", "--workdir", wd, "--on-exit", "abort", "--", "rm", "c").returncode == 0
    assert "c" in os.listdir(wd)


def test_timeout_aborts(wd):
    p = sandlock("run", "--workdir", wd, "-t", "1", "--", "sh", "-c", "echo t > t; sleep 30")
    assert p.returncode == 124
    assert "t" not in os.listdir(wd)


def test_max_disk_stops_a_write_loop(wd):
    p = sandlock("run", "--workdir", wd, "--max-disk", "1M", "-r", "/dev/zero", "--",
                 "sh", "-c", "head -c 100000000 /dev/zero > big")
    assert p.returncode != 0
    assert "max_disk" in p.stderr.decode()
    assert "big" not in os.listdir(wd)


def test_errors_are_one_line(wd):
    assert "--dry-run requires --workdir" in one_line(sandlock("run", "--dry-run", "--", "true"))
    assert "overlaps the copy-on-write workdir" in one_line(
        sandlock("run", "--workdir", wd, "-w", wd, "--", "true"))
    assert "needs a workdir" in one_line(sandlock("run", "--on-exit", "keep", "--", "true"))
    assert "--max-disk" in one_line(sandlock("run", "--workdir", wd, "--max-disk", "lots", "--", "true"))
    assert "not an existing directory" in one_line(
        sandlock("run", "--workdir", os.path.join(wd, "nope"), "--", "true"))
