"""The copy-on-write supervisor's shortcuts give what the kernel gives.

Each shortcut leaves a call to the kernel, or answers from a cache, where
the merged view was computed before: a path through a directory the
branch copied up (a file was made in it) that the workdir has as well;
fstat of an open fd; the walk's cache right after the branch changed
what it knew. The program runs unconfined in a scratch copy (the control)
and sandboxed over the workdir: the results, the changes and the tree
after COMMIT / ABORT must be the same (test_cow.twin).
"""
from __future__ import annotations

import os
import shutil

import pytest
from test_cow import tmpd, twin, wd  # noqa: F401  (tmpd, wd: fixtures)

SHORTCUTS = r'''
# `sub` gets a copy in the branch; the workdir has it too
R["made_in_sub"] = wr("sub/made.txt", "m\n")
R["lower_below"] = [rd("sub/c.txt"), os.stat("sub/c.txt").st_size, rd("sub/deep/d.txt"),
                    ok(os.stat, "sub/deep/nope"), rd("sub/deep/../c.txt")]
R["run_lower_program"] = sh("./sub/run.sh")
os.chmod("sub", 0o700)   # the branch's copy differs from the workdir's now
R["modes"] = [oct(stat.S_IMODE(os.stat(p).st_mode)) for p in ("sub", "sub/.", "sub/deep/..", "./sub")]
# a directory only the branch has, and `..` out of it
os.mkdir("only")
R["dotdot"] = [rd("only/../a.txt"), ok(os.stat, "only/../sub/c.txt"), rd("only/../sub/deep/../c.txt")]
# removed and made again: nothing of the old one shows through
R["remade"] = sh("rm -r full && mkdir full")
R["old_child"] = [ok(os.stat, "full/x"), rd("full/x"), sorted(os.listdir("full"))]
# a file the branch changed, below a copied-up directory
R["write_lower"] = wr("sub/c.txt", "new c\n")
R["read_changed"] = [rd("sub/c.txt"), rd("sub/deep/../c.txt"), os.stat("sub/c.txt").st_size]
# fstat: of an fd the kernel opened, and of fds the branch gave
fd1 = os.open("a.txt", os.O_RDONLY)
fd2 = os.open("sub/made.txt", os.O_RDONLY)
R["fstat"] = [os.fstat(fd1).st_size, os.fstat(fd2).st_size,
              os.fstat(fd1).st_ino == os.stat("a.txt").st_ino,
              os.fstat(fd2).st_ino == os.stat("sub/made.txt").st_ino]
fd3 = os.open("b.txt", os.O_RDWR)
os.write(fd3, b"longer than it was\n")
R["fstat_written"] = [os.fstat(fd3).st_size, os.stat("b.txt").st_size]
for fd in (fd1, fd2, fd3):
    os.close(fd)
# what the walk remembers follows each change at once
R["cache"] = [[ok(os.stat, "sub/deep/n%d" % i), wr("sub/deep/n%d" % i, "n"),
               ok(os.stat, "sub/deep/n%d" % i)] for i in range(3)]
os.rename("sub/deep", "sub/moved")
R["moved"] = [ok(os.stat, "sub/deep/n0"), ok(os.stat, "sub/moved/n0"), rd("sub/moved/d.txt"),
              ok(os.stat, "sub/deep"), sorted(os.listdir("sub"))]
os.rename("sub/moved", "sub/deep")
R["moved_back"] = [sorted(os.listdir("sub/deep")), ok(os.stat, "sub/moved")]
os.unlink("sub/deep/d.txt")
R["unlinked"] = [ok(os.stat, "sub/deep/d.txt"), rd("sub/deep/d.txt"), sorted(os.listdir("sub/deep"))]
# a listing read again through the same fd shows what changed in between
dfd = os.open("sub", os.O_RDONLY | os.O_DIRECTORY)
first = sorted(os.listdir(dfd))
wr("sub/later.txt", "l")
os.unlink("sub/c.txt")
R["relisted"] = [first, sorted(os.listdir(dfd)),
                 sorted([e.name, e.is_dir(follow_symlinks=False), e.inode() == os.lstat(e.path).st_ino]
                        for e in os.scandir("sub"))]
os.close(dfd)
'''


@pytest.mark.parametrize("action", ["commit", "abort"])
def test_shortcuts_match_the_kernel(wd, action):  # noqa: F811
    for root in wd:   # a program in a directory the branch will copy up
        shutil.copy2(os.path.join(root, "exe.sh"), os.path.join(root, "sub", "run.sh"))
    got, _r = twin(wd, SHORTCUTS, action)
    assert got["run_lower_program"][:2] == [0, "hi\n"]
    assert got["modes"] == ["0o700"] * 4
    assert got["old_child"] == ["ENOENT", "ENOENT", []]
    assert got["fstat_written"] == [19, 19]
