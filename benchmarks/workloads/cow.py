"""The copy-on-write workdir: compileall and a local git clone into a COW
workdir, committed or aborted, and a dry run.

Every sample gets fresh inputs, created before the timed span:
  cow_compileall_*  ~200 stdlib .py files copied into a fresh directory
                    (the same files as the `compileall` row), then
                    ``python -m compileall -q -f DIR``;
  cow_git_clone     ``git clone --no-hardlinks SRC DIR/clone`` into a fresh
  cow_dry_run       empty directory, SRC a local repository of 500 small
                    files in one commit, built once per benchmark run.

  unsandboxed  subprocess.run(cmd, cwd=DIR) on the fresh copy
  sandlock     Sandbox(fs_readable=..., workdir=DIR, on_exit=...).run(cmd)
               (or .dry_run(cmd)), construction and the branch's commit or
               abort included: the whole call, as a user waits for it.  The
               command starts in the workdir (sandlock's default), hence
               cwd=DIR in the unsandboxed column too.

After every sample (outside the timed span) the outcome is checked: after a
commit every .pyc / the whole clone is in DIR, after an abort or a dry run
DIR is as it was; a sandboxed run that fails or leaves the wrong tree is an
error cell, never worked around.

git runs with GIT_CONFIG_GLOBAL=/dev/null and GIT_CONFIG_NOSYSTEM=1 in every
column (the sandbox cannot read $HOME, and git treats an unreadable
~/.gitconfig as fatal) and /dev/null writable in the sandbox (git opens it
read-write).  --no-hardlinks: a plain local clone hardlinks the source's
objects, while in a COW workdir a link from outside gets EXDEV and git
copies them instead, so the two columns would do different work.

The bwrap column is n/a (bwrap has no copy-on-write workdir); so is the
reference SDK's: its probe (_ref_probe.py) runs fs_readable-only policies
and its COW needs the workdir in fs_writable as well.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time

from .. import ref
from ..core import (BWRAP, REF, RUN_TIMEOUT, SANDLOCK, UNSANDBOXED, Cell, Row, RunFailed, Sample,
                    Settings, _sandlock, _tail, bwrap_status, cpu_now,
                    first_sandlock_call, measure, readable, run_plain)
from .build import PACKAGES, QUICK_PACKAGES, sources

GIT_FILES = 500
QUICK_GIT_FILES = 100
GIT_ENV = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}

COMPILEALL_REFERENCE = "reference implementation 2.0-2.9x bare; target <= 1.3x (issue 9)"
GIT_REFERENCE = "reference implementation 3.5-5.4x bare; target <= 2x (issue 9)"


# --------------------------------------------------------------------------
# the sandboxed runner: Sandbox(**policy).run(cmd) or .dry_run(cmd)


def run_cow(cmd: list[str], policy: dict, *, dry: bool = False, workload: str = ""):
    """Time `Sandbox(**policy).run(cmd)` (or `.dry_run(cmd)`) end to end, as
    core.run_sandlock does; returns (Sample, Result)."""
    sandlock = _sandlock()
    c0, ch0 = cpu_now()
    t0 = time.perf_counter()
    sb = sandlock.Sandbox(**policy)
    r = (sb.dry_run if dry else sb.run)(list(cmd), timeout=RUN_TIMEOUT)
    dt = time.perf_counter() - t0
    c1, ch1 = cpu_now()
    if not first_sandlock_call:
        first_sandlock_call.update(seconds=dt, workload=workload)
    if not r.success:
        detail = r.error or f"exit {r.exit_code}: {_tail(r.stderr)}"
        raise RunFailed(f"sandbox run failed: {detail}")
    return Sample(dt, dt, self_cpu=c1 - c0, child_cpu=ch1 - ch0), r


def _na_columns(s: Settings) -> dict[str, Cell]:
    """The comparison columns this row cannot have, when they are enabled."""
    cells: dict[str, Cell] = {}
    if s.with_bwrap and bwrap_status()[0]:
        cells[BWRAP] = Cell.na("no copy-on-write")
    if s.with_ref and ref.ref_python is not None:
        cells[REF] = Cell.na("probe has no workdir policy")
    return cells


def _tree(root: str) -> list[str]:
    """Every path under `root`, relative, sorted (directories included)."""
    out = []
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        out += [os.path.normpath(os.path.join(rel, n)) for n in dirs + files]
    return sorted(out)


# --------------------------------------------------------------------------
# compileall into a COW workdir


def _compileall_row(s: Settings, name: str, action: str) -> Row:
    reps = s.reps(7, 1)
    packages = QUICK_PACKAGES if s.quick else PACKAGES
    root = tempfile.mkdtemp(prefix="sandlock-bench-cow-")
    counts: list[int] = []

    def one(sandboxed: bool) -> Sample:
        work, cmd = sources(root, packages, counts)
        n = counts[-1]
        try:
            if not sandboxed:
                return run_plain(cmd, cwd=work)
            before = _tree(work)
            policy = {"fs_readable": readable(), "workdir": work, "on_exit": action}
            sample, res = run_cow(cmd, policy, workload=name)
            pyc = sum(f.endswith(".pyc") for _, _, fs in os.walk(work) for f in fs)
            if action == "commit" and pyc != n:
                raise RunFailed(f"after commit: {pyc} .pyc files in the workdir, expected {n}")
            if action == "abort" and _tree(work) != before:
                raise RunFailed(f"after abort: the workdir changed ({pyc} .pyc files)")
            if not res.changes:
                raise RunFailed("the Result lists no changes")
            return sample
        finally:
            shutil.rmtree(work, ignore_errors=True)

    try:
        cells = measure({UNSANDBOXED: lambda: one(False), SANDLOCK: lambda: one(True)}, reps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cells.update(_na_columns(s))
    files = max(counts) if counts else 0
    row = Row(name=name, metric=f"wall time of compileall -f over {files} stdlib files in a COW "
                                f"workdir, {action.upper()} included",
              unit="s", reps=reps, cells=cells)
    row.notes.append(COMPILEALL_REFERENCE + "; the `compileall` row is the same command "
                     "sandboxed with the directory in fs_writable and no workdir")
    return row


def cow_compileall_commit(s: Settings) -> Row:
    """compileall over ~200 fresh stdlib files in a COW workdir, COMMIT."""
    return _compileall_row(s, "cow_compileall_commit", "commit")


def cow_compileall_abort(s: Settings) -> Row:
    """compileall over ~200 fresh stdlib files in a COW workdir, ABORT."""
    return _compileall_row(s, "cow_compileall_abort", "abort")


# --------------------------------------------------------------------------
# git clone into a COW workdir


_repos: dict[int, str] = {}


def _source_repo(git: str, files: int) -> str:
    """A local repository of `files` small files in one commit, built once
    per benchmark run (removed at exit)."""
    if files not in _repos:
        root = tempfile.mkdtemp(prefix="sandlock-bench-gitsrc-")
        atexit.register(shutil.rmtree, root, True)
        src = os.path.join(root, "src")
        for i in range(files):
            d = os.path.join(src, f"d{i % 25:02d}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"f{i:03d}.txt"), "w") as f:
                f.write(f"line {i}\n" * 20)
        env = dict(os.environ, **GIT_ENV, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost",
                   GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost")
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "files"]):
            p = subprocess.run([git, "-C", src, *args], env=env, capture_output=True, timeout=120)
            if p.returncode != 0:
                raise RunFailed(f"building the source repository: git {args[0]}: {_tail(p.stderr)}")
        _repos[files] = src
    return _repos[files]


def _git_row(s: Settings, name: str, dry: bool) -> Row:
    reps = s.reps(7, 1)
    files = QUICK_GIT_FILES if s.quick else GIT_FILES
    what = "dry_run of " if dry else ""
    metric = (f"wall time of {what}git clone of a local {files}-file repository into a COW workdir"
              + ("" if dry else ", COMMIT included"))
    git = shutil.which("git")
    if git is None:
        na = Cell.na("git not installed")
        return Row(name=name, metric=metric, unit="s", reps=reps,
                   cells={UNSANDBOXED: na, SANDLOCK: na})
    src = _source_repo(git, files)
    root = tempfile.mkdtemp(prefix="sandlock-bench-cow-")
    plain_env = dict(os.environ, **GIT_ENV)

    def one(sandboxed: bool) -> Sample:
        work = tempfile.mkdtemp(dir=root)
        try:
            target = os.path.join(work, "clone")
            cmd = [git, "clone", "-q", "--no-hardlinks", src, target]
            if not sandboxed:
                return run_plain(cmd, cwd=work, env=plain_env)
            policy = {"fs_readable": readable(src), "fs_writable": ["/dev/null"],
                      "workdir": work, "env": GIT_ENV}
            sample, res = run_cow(cmd, policy, dry=dry, workload=name)
            if dry:
                if os.listdir(work):
                    raise RunFailed(f"after the dry run the workdir is not empty: {os.listdir(work)}")
                if not any(c.path.endswith(".txt") for c in res.changes or ()):
                    raise RunFailed(f"the dry run lists no cloned file ({len(res.changes or ())} changes)")
            else:
                got = sum(f.endswith(".txt") for _, _, fs in os.walk(target) for f in fs)
                if got != files:
                    raise RunFailed(f"after commit: {got} of {files} files in the clone")
                p = subprocess.run([git, "-C", target, "status", "--porcelain"], env=plain_env,
                                   capture_output=True, timeout=60)
                if p.returncode != 0 or p.stdout.strip():
                    raise RunFailed(f"after commit: git status: {_tail(p.stderr or p.stdout)}")
            return sample
        finally:
            shutil.rmtree(work, ignore_errors=True)

    try:
        cells = measure({UNSANDBOXED: lambda: one(False), SANDLOCK: lambda: one(True)}, reps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cells.update(_na_columns(s))
    row = Row(name=name, metric=metric, unit="s", reps=reps, cells=cells)
    row.notes.append(GIT_REFERENCE if not dry else
                     "dry run: the clone goes to a branch that is always aborted; the Result "
                     "lists the changes")
    return row


def cow_git_clone(s: Settings) -> Row:
    """git clone of a local 500-file repository into a COW workdir, COMMIT."""
    return _git_row(s, "cow_git_clone", dry=False)


def cow_dry_run(s: Settings) -> Row:
    """The same git clone through Sandbox.dry_run (branch always aborted)."""
    return _git_row(s, "cow_dry_run", dry=True)
