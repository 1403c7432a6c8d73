"""IPC escapes: signalling processes outside the sandbox, abstract unix
sockets bound outside it, and file descriptors leaking into it."""
from __future__ import annotations

import os
import resource
import socket
import subprocess

import pytest

from escape_lib import confined, parse_verdict, py_cmd, unconfined
from sandlock import Sandbox
from sandlock._kernel.syscalls import table


# 20. signals to outside processes ------------------------------------------------------

SIGNALS = '''
import signal
h = ARGS["helper"]
res = {}
res["parent_kill0"] = os_e(os.kill, os.getppid(), 0)      # the supervisor (or the test runner)
res["kill0"] = os_e(os.kill, h, 0)
ctypes.set_errno(0)
pidfd = sc(ARGS["nr_pidfd_open"], h, 0)[0]
res["pidfd_signal"] = sc_e(ARGS["nr_pidfd_send_signal"], pidfd, signal.SIGTERM, 0, 0) \\
    if pidfd >= 0 else "no pidfd"
res["kill_term"] = os_e(os.kill, h, signal.SIGTERM)
emit(**res)
'''


def test_signal_outside_process(base):
    t = table()
    nrs = dict(nr_pidfd_open=t.number("pidfd_open"),
               nr_pidfd_send_signal=t.number("pidfd_send_signal"))
    ctl_helper = subprocess.Popen(["sleep", "60"])
    sb_helper = subprocess.Popen(["sleep", "60"])
    try:
        c = unconfined(SIGNALS, dict(helper=ctl_helper.pid, **nrs))
        assert c == dict(parent_kill0="OK", kill0="OK", pidfd_signal="OK", kill_term="OK")
        assert ctl_helper.wait(timeout=5) == -15

        v, _ = confined(Sandbox(fs_readable=base), SIGNALS, dict(helper=sb_helper.pid, **nrs))
        # pidfd_open of a process outside the sandbox is refused (ESRCH) by
        # the pid scoping; a pidfd got otherwise would meet Landlock's
        # signal scoping (EPERM).
        assert v["pidfd_signal"] in ("no pidfd", "EPERM")
        assert dict(v, pidfd_signal="EPERM") == dict(parent_kill0="EPERM", kill0="EPERM",
                                                     pidfd_signal="EPERM", kill_term="EPERM")
        assert sb_helper.poll() is None  # still alive
    finally:
        for p in (ctl_helper, sb_helper):
            p.kill()
            p.wait()


# 21. abstract unix sockets bound outside ------------------------------------------------------

ABSTRACT = '''
import socket
res = {}
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
res["stream_connect"] = os_e(s.connect, "\\0" + ARGS["stream"])
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
res["dgram_sendto"] = os_e(d.sendto, b"hello", "\\0" + ARGS["dgram"])
# the allowed direction: abstract sockets of the sandbox's own
own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
own.bind("\\0" + ARGS["stream"] + "-own")
own.listen(1)
c2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
res["own_connect"] = os_e(c2.connect, "\\0" + ARGS["stream"] + "-own")
emit(**res)
'''


def test_abstract_unix_socket_outside(base):
    name = f"sl-escape-{os.getpid()}-{os.urandom(4).hex()}"
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.bind("\0" + name)
    stream.listen(8)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind("\0" + name + "-d")
    dgram.setblocking(False)
    try:
        args = dict(stream=name, dgram=name + "-d")
        c = unconfined(ABSTRACT, args)
        assert c == dict(stream_connect="OK", dgram_sendto="OK", own_connect="OK")
        assert dgram.recv(100) == b"hello"

        v, _ = confined(Sandbox(fs_readable=base), ABSTRACT, args)
        assert v == dict(stream_connect="EPERM", dgram_sendto="EPERM", own_connect="OK")
        with pytest.raises(BlockingIOError):
            dgram.recv(100)
    finally:
        stream.close()
        dgram.close()


# 22. file descriptors leaking into the sandbox -------------------------------------------------

FDS = '''
import stat
opened = []
for fd in list(range(3, 2048)) + ARGS["high"]:
    try:
        st = os.fstat(fd)
    except OSError:
        continue
    opened.append(fd)
emit(fds=opened)
'''


def _free_high_fd() -> int:
    """A free fd number well above the usual ones but below the soft
    RLIMIT_NOFILE (1024 by default for an unprivileged user): dup2 cannot
    create an fd at or above it."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = 1500 if soft == resource.RLIM_INFINITY else min(1500, soft - 1)
    for fd in range(top, 63, -1):
        try:
            os.fstat(fd)
        except OSError:
            return fd
    pytest.skip(f"no free fd between 64 and {top}")


def test_no_fd_leaks(base, wdir):
    path = os.path.join(wdir, "inherited.txt")
    with open(path, "w") as f:
        f.write("leak")
    fd = os.open(path, os.O_RDONLY)
    high = os.dup2(fd, _free_high_fd(), inheritable=True)
    r, w = os.pipe()
    for x in (fd, r, w):
        os.set_inheritable(x, True)
    mine = sorted({fd, high, r, w})
    try:
        args = dict(high=[high])
        c = unconfined(FDS, args, close_fds=False)
        assert set(mine) <= set(c["fds"]), (mine, c)

        sb = Sandbox(fs_readable=base)
        v, _ = confined(sb, FDS, args)
        assert v == dict(fds=[])
        with sb.popen(py_cmd(FDS, args), stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
            out = p.stdout.read()
            p.wait(timeout=30)
        assert parse_verdict(out) == dict(fds=[])
    finally:
        for x in mine:
            os.close(x)
