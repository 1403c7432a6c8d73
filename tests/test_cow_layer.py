"""The copy-on-write merged view (sandlock.cow.layer.Layer), on a real
filesystem: the workdir ("lower") is never written, whatever the op."""
from __future__ import annotations

import errno
import os
import stat
import time

import pytest

from sandlock.cow.layer import Layer, SpecialFileError
from sandlock.cow.storage import new_branch_dir


def snapshot(root: str) -> dict:
    """Path -> (type, mode, content or link target) of a whole tree."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                val = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    val = f.read()
            else:
                val = None
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), val)
    return out


@pytest.fixture
def tree(tmp_path):
    w = tmp_path / "w"
    (w / "a" / "b").mkdir(parents=True)
    (w / "a" / "b" / "f").write_bytes(b"deep\n")
    (w / "a" / "g").write_bytes(b"g\n")
    (w / "top").write_bytes(b"top\n")
    (w / "d").mkdir()
    (tmp_path / "outside").write_bytes(b"outside\n")
    os.symlink("/etc", w / "etc")
    os.symlink("../outside", w / "esc")
    os.symlink("../..", w / "dotdot")
    s = tmp_path / "s"
    s.mkdir(mode=0o700)
    bdir = new_branch_dir(str(s))
    before = snapshot(str(w))
    lay = Layer(str(w), bdir)
    yield lay, str(w), bdir, before
    lay.close()
    assert snapshot(str(w)) == before, "the workdir (lower) must never be written"


def read(lay: Layer, rel: bytes) -> bytes:
    fd = lay.open(rel, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def write(lay: Layer, rel: bytes, data: bytes, flags: int = os.O_WRONLY | os.O_TRUNC | os.O_CREAT) -> None:
    fd = lay.open(rel, flags, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_lookup_and_listdir_of_untouched_tree(tree):
    lay, *_ = tree
    assert lay.lookup(b"a/b/f") == "lower"
    assert lay.lookup(b"nope") is None
    assert lay.listdir(b"") == [b"a", b"d", b"dotdot", b"esc", b"etc", b"top"]
    assert stat.S_ISLNK(lay.lstat(b"etc").st_mode)
    assert lay.readlink(b"esc") == b"../outside"
    with pytest.raises(NotADirectoryError):
        lay.listdir(b"top")
    with pytest.raises(FileNotFoundError):
        lay.listdir(b"nope")
    with pytest.raises(NotADirectoryError):
        lay.lookup(b"top/x")


@pytest.mark.parametrize("rel", [b"/a", b"a/../top", b"./a", b"a//b", b"a/", b"", "a", b"a\0b"])
def test_unnormalised_paths_are_refused(tree, rel):
    lay, *_ = tree
    with pytest.raises(ValueError):
        lay.copy_up(rel)


def test_write_copies_up_and_leaves_lower(tree):
    lay, w, _, _ = tree
    write(lay, b"a/b/f", b"more\n", os.O_WRONLY | os.O_APPEND)
    assert lay.lookup(b"a/b/f") == "upper"
    assert read(lay, b"a/b/f") == b"deep\nmore\n"
    assert lay.lookup(b"a/b") == "upper" and lay.lookup(b"a/g") == "lower"
    assert lay.listdir(b"a") == [b"b", b"g"]
    assert lay.refresh(b"a/b/f") == len(b"deep\nmore\n")


def test_truncating_open_does_not_copy_bytes(tree):
    lay, *_ = tree
    fd = lay.open(b"top", os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert read(lay, b"top") == b""
    assert lay.bytes_used() == 0


def test_read_only_open_stays_on_lower(tree):
    lay, *_ = tree
    assert read(lay, b"top") == b"top\n"
    assert lay.lookup(b"top") == "lower"


def test_o_excl_checks_both_layers(tree):
    lay, *_ = tree
    with pytest.raises(FileExistsError):
        lay.open(b"top", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    write(lay, b"new", b"x", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with pytest.raises(FileExistsError):
        lay.open(b"new", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    lay.unlink(b"top")
    write(lay, b"top", b"again", os.O_WRONLY | os.O_CREAT | os.O_EXCL)   # deleted: may be created
    assert read(lay, b"top") == b"again"


def test_open_errors_like_the_kernel(tree):
    lay, *_ = tree
    with pytest.raises(IsADirectoryError):
        lay.open(b"a", os.O_WRONLY)
    with pytest.raises(NotADirectoryError):
        lay.open(b"top", os.O_RDONLY | os.O_DIRECTORY)
    with pytest.raises(FileNotFoundError):
        lay.open(b"missing", os.O_RDONLY)
    with pytest.raises(FileNotFoundError):
        lay.open(b"nodir/x", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(NotADirectoryError):
        lay.open(b"top/x", os.O_WRONLY | os.O_CREAT)
    assert lay.lookup(b"a") == "lower", "a refused open has no side effect"


def test_created_file_gets_the_exact_mode(tree):
    lay, *_ = tree
    fd = lay.open(b"d/x", os.O_WRONLY | os.O_CREAT, 0o751)
    os.close(fd)
    assert stat.S_IMODE(lay.lstat(b"d/x").st_mode) == 0o751


@pytest.mark.parametrize("link", [b"etc", b"esc", b"dotdot"])
def test_symlinks_to_outside_are_never_followed(tree, tmp_path, link):
    lay, *_ = tree
    for rel in (link + b"/passwd", link + b"/x", link + b"/outside"):
        with pytest.raises(OSError) as e:
            lay.open(rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        assert e.value.errno == errno.ELOOP
    with pytest.raises(OSError) as e:
        lay.open(link, os.O_WRONLY | os.O_TRUNC)
    assert e.value.errno == errno.ELOOP
    lay.copy_up(link)                 # the link itself, verbatim
    assert lay.lookup(link) == "upper"
    assert lay.readlink(link) == os.readlink(os.path.join(tree[1], os.fsdecode(link))).encode()
    assert (tmp_path / "outside").read_bytes() == b"outside\n"


def test_whiteout_hides_the_subtree(tree):
    lay, *_ = tree
    lay.whiteout(b"a")
    assert lay.lookup(b"a") is None
    assert lay.lookup(b"a/b/f") is None, "children of a deleted dir stay hidden (A3)"
    with pytest.raises(FileNotFoundError):
        lay.open(b"a/b/f", os.O_RDONLY)          # never the pre-delete bytes (A2)
    with pytest.raises(FileNotFoundError):
        lay.open(b"a", os.O_RDONLY | os.O_DIRECTORY)
    assert b"a" not in lay.listdir(b"")


def test_recreated_dir_is_opaque(tree):
    lay, *_ = tree
    lay.whiteout(b"a")
    lay.mkdir(b"a", 0o700)
    assert lay.lookup(b"a") == "upper"
    assert lay.listdir(b"a") == []
    assert lay.lookup(b"a/g") is None
    write(lay, b"a/g", b"new g")
    assert read(lay, b"a/g") == b"new g"
    assert lay.listdir(b"a") == [b"g"]


def test_deleted_log_is_durable_and_reloaded(tree):
    lay, w, bdir, _ = tree
    lay.unlink(b"top")
    lay.rmdir(b"d")
    with Layer(w, bdir) as again:
        assert again.lookup(b"top") is None and again.lookup(b"d") is None
        assert again.lookup(b"a") == "lower"


def test_torn_log_line_is_ignored(tree):
    lay, w, bdir, _ = tree
    with open(os.path.join(bdir, "deleted.log"), "ab") as f:
        f.write(b"746f")          # 'to', no newline: an append cut by a crash
    with Layer(w, bdir) as again:
        assert again.lookup(b"top") == "lower"


def test_corrupt_log_fails_closed(tree):
    lay, w, bdir, _ = tree
    with open(os.path.join(bdir, "deleted.log"), "ab") as f:
        f.write(b"2f6574632f706173737764\n")       # '/etc/passwd': not relative
    with pytest.raises(Exception, match="corrupt"):
        Layer(w, bdir)


def test_rmdir_and_unlink_errors(tree):
    lay, *_ = tree
    for fn, rel, code in [(lay.rmdir, b"a", errno.ENOTEMPTY), (lay.rmdir, b"top", errno.ENOTDIR),
                          (lay.unlink, b"a", errno.EISDIR), (lay.unlink, b"zz", errno.ENOENT),
                          (lay.rmdir, b"zz", errno.ENOENT)]:
        with pytest.raises(OSError) as e:
            fn(rel)
        assert e.value.errno == code
    assert lay.lookup(b"a/b/f") == "lower"
    lay.unlink(b"a/b/f")
    lay.rmdir(b"a/b")
    lay.unlink(b"a/g")
    lay.rmdir(b"a")            # empty in the merged view only
    assert lay.lookup(b"a") is None


def test_rmdir_sees_upper_children(tree):
    lay, *_ = tree
    write(lay, b"d/new", b"x")
    with pytest.raises(OSError) as e:
        lay.rmdir(b"d")
    assert e.value.errno == errno.ENOTEMPTY


def test_rename_lower_tree_keeps_all_data(tree):
    lay, *_ = tree
    lay.rename(b"a", b"moved")
    assert lay.lookup(b"a") is None and lay.lookup(b"a/b/f") is None
    assert read(lay, b"moved/b/f") == b"deep\n"
    assert read(lay, b"moved/g") == b"g\n"
    assert lay.listdir(b"moved") == [b"b", b"g"]


def test_rename_destination_rules(tree):
    lay, *_ = tree
    write(lay, b"d/x", b"x")
    cases = [(b"a", b"d", errno.ENOTEMPTY), (b"a", b"top", errno.ENOTDIR), (b"top", b"d", errno.EISDIR),
             (b"a", b"a/b/z", errno.EINVAL), (b"nope", b"q", errno.ENOENT), (b"top", b"nope/q", errno.ENOENT)]
    for old, new, code in cases:
        with pytest.raises(OSError) as e:
            lay.rename(old, new)
        assert e.value.errno == code, (old, new)
    assert lay.lookup(b"a") == "lower"   # nothing was staged by a refused rename
    lay.rename(b"top", b"a/g")            # file over file
    assert read(lay, b"a/g") == b"top\n" and lay.lookup(b"top") is None
    lay.mkdir(b"empty")
    lay.rename(b"d", b"empty")            # dir over empty dir
    assert lay.listdir(b"empty") == [b"x"]


def test_rename_with_special_file_is_all_or_nothing(tree):
    lay, w, *_ = tree
    os.mkdir(os.path.join(w, "withfifo"))
    with open(os.path.join(w, "withfifo", "a"), "w") as f:
        f.write("a")
    os.mkfifo(os.path.join(w, "withfifo", "p"))
    used = lay.bytes_used()
    with pytest.raises(SpecialFileError):
        lay.rename(b"withfifo", b"elsewhere")
    assert lay.lookup(b"withfifo") == "lower" and lay.lookup(b"withfifo/a") == "lower"
    assert lay.bytes_used() == used
    os.unlink(os.path.join(w, "withfifo", "p"))
    os.unlink(os.path.join(w, "withfifo", "a"))
    os.rmdir(os.path.join(w, "withfifo"))


def test_fifo_is_never_opened(tree):
    lay, w, *_ = tree
    os.mkfifo(os.path.join(w, "fifo"))
    t = time.monotonic()
    with pytest.raises(SpecialFileError):
        lay.copy_up(b"fifo")
    with pytest.raises(SpecialFileError):
        lay.open(b"fifo", os.O_RDONLY)
    with pytest.raises(SpecialFileError):
        lay.open(b"fifo", os.O_WRONLY)
    assert time.monotonic() - t < 2
    assert lay.lookup(b"fifo") == "lower"
    os.unlink(os.path.join(w, "fifo"))


def test_symlink_link_chmod(tree):
    lay, *_ = tree
    lay.symlink(b"/etc/shadow", b"d/l")
    assert lay.readlink(b"d/l") == b"/etc/shadow"
    with pytest.raises(FileExistsError):
        lay.symlink(b"x", b"top")
    lay.link(b"top", b"d/hard")
    write(lay, b"top", b"shared", os.O_WRONLY | os.O_APPEND)
    assert read(lay, b"d/hard") == b"top\nshared"
    with pytest.raises(OSError) as e:
        lay.link(b"a", b"d/adir")
    assert e.value.errno == errno.EPERM
    lay.chmod(b"a/g", 0o600)
    assert stat.S_IMODE(lay.lstat(b"a/g").st_mode) == 0o600
    with pytest.raises(OSError) as e:
        lay.chmod(b"etc", 0o600)
    assert e.value.errno == errno.EOPNOTSUPP


def test_copy_up_under_read_only_dir(tree):
    lay, w, *_ = tree
    os.mkdir(os.path.join(w, "ro"))
    with open(os.path.join(w, "ro", "f"), "w") as f:
        f.write("ro")
    os.chmod(os.path.join(w, "ro"), 0o555)
    try:
        write(lay, b"ro/f", b"!", os.O_WRONLY | os.O_APPEND)
        assert read(lay, b"ro/f") == b"ro!"
        assert stat.S_IMODE(lay.lstat(b"ro").st_mode) == 0o555
        lay.whiteout(b"ro")
        assert lay.lookup(b"ro") is None
    finally:
        os.chmod(os.path.join(w, "ro"), 0o755)
        os.unlink(os.path.join(w, "ro", "f"))
        os.rmdir(os.path.join(w, "ro"))


def test_bytes_used_is_a_ledger(tree):
    lay, w, bdir, _ = tree
    write(lay, b"big", b"x" * 1000)
    assert lay.refresh(b"big") == 1000
    lay.copy_up(b"a/b/f")
    assert lay.bytes_used() == 1005
    lay.link(b"big", b"big2")
    assert lay.bytes_used() == 1005, "a hard link is not counted twice"
    lay.unlink(b"big")
    assert lay.bytes_used() == 1005
    lay.unlink(b"big2")
    assert lay.bytes_used() == 5
    with Layer(w, bdir) as again:
        assert again.bytes_used() == 5
