"""The sandboxed child, from fork to exec.

Runs in a freshly forked process. Everything it calls is bound before the
fork (module globals, pre-encoded bytes, pre-built ctypes structures): once
Landlock is applied an import could be denied, so nothing here imports.

Order: process group → parent-death signal → stdio (and extra fds) → chdir →
THP / personality / affinity → drop capabilities → NO_NEW_PRIVS →
Landlock → seccomp (+ listener hand-off) → close other fds above stdio →
rlimits (after the listener fd exists: RLIMIT_NOFILE could forbid it) →
reset signal dispositions and mask → exec.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import resource
import signal

from . import protocol
from ._kernel import landlock, syscalls
from ._kernel.libc import (PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL,
                           PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG,
                           PR_SET_THP_DISABLE, libc, raw_syscall)

NR_CLOSE_RANGE = syscalls.table().number("close_range")
_signal = libc.signal
_signal.restype = ctypes.c_void_p
_signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
_personality = libc.personality
_prctl = libc.prctl
_capset = libc.capset


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


CAP_SETPCAP = 1 << 8
CLONE_NEWUSER = 0x10000000
PR_SET_SECUREBITS = 28
# NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE, each with its lock, and
# KEEP_CAPS_LOCKED (include/uapi/linux/securebits.h).
SECUREBITS_LOCKED_NOROOT = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80
_CAP_HEADER = CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
_CAP_DATA = (CapData * 2)()


_CAP_CACHE: list = []


def _cap_state() -> tuple[int, int]:
    """(permitted, effective) capability sets of this process, read once
    (and updated by lower_effective_capabilities)."""
    if _CAP_CACHE:
        return _CAP_CACHE[0]
    prm = eff = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapPrm:"):
                prm = int(line.split()[1], 16)
            elif line.startswith("CapEff:"):
                eff = int(line.split()[1], 16)
    _CAP_CACHE.append((prm, eff))
    return prm, eff


def _cap_data(effective: int, permitted: int):
    data = (CapData * 2)()
    for i in (0, 1):
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
    return data


def lower_effective_capabilities() -> None:
    """Keep capabilities only as permitted, none effective: what this
    process does itself runs without them (the supervisor, acting on a
    child's behalf), while a child it forks may still raise them to lock
    its securebits before dropping everything."""
    prm, eff = _cap_state()
    if eff == 0:
        return
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if _capset(ctypes.byref(_CAP_HEADER), _cap_data(0, prm)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    _CAP_CACHE[:] = [(prm, 0)]


def ignored_signals() -> list[int]:
    """Signals this process ignores. An ignored disposition survives exec
    (caught ones are reset by the kernel), so the child resets exactly these."""
    out = []
    for sig in signal.valid_signals():
        try:
            if signal.getsignal(sig) == signal.SIG_IGN:
                out.append(int(sig))
        except (OSError, ValueError):
            pass
    return out


class ChildSpec:
    """The child's steps (protocol.ChildSteps) and everything they use,
    prepared before confinement starts."""

    def __init__(self, steps: protocol.ChildSteps, ruleset_fd: int, program, stdio: tuple[int, int, int],
                 err_fd: int, hand_fds: tuple[int, int] | None, extra: tuple[int, ...] = ()):
        self.plan = steps
        self.ruleset_fd = ruleset_fd
        self.program = program
        self.stdio = stdio
        self.err_fd = err_fd
        self.hand_fds = hand_fds
        # The fds to give the command at steps.extra_fds, one for one.
        self.extra = extra
        self.keep_fds = tuple(sorted(steps.extra_fds))
        self.new_pgrp = steps.new_pgrp
        self.listener_ack = protocol.encode(protocol.ListenerAck(True))
        prm, eff = _cap_state()
        # Raise what we may (a supervisor keeps none effective), lock the
        # securebits, then drop everything.
        self.raise_caps = _cap_data(prm, prm) if prm and eff != prm else None
        self.lock_securebits = bool(prm & CAP_SETPCAP)
        self.clear_caps = prm != 0
        self.reset_signals = ignored_signals()


Step = protocol.Step


def report_failure(err_fd: int, step: protocol.Step, err: int, filename: str = "") -> None:
    """Tell the supervisor which step failed, with which errno (one
    protocol.ChildFailed message; nothing goes to the command's stderr)."""
    try:
        os.write(err_fd, protocol.encode(protocol.ChildFailed(step, err, filename)))
    except OSError:
        pass


def _fail(spec: ChildSpec, step: protocol.Step, err: int, filename: str = "") -> None:
    """Report a confinement failure to the supervisor and die: never exec."""
    try:
        report_failure(spec.err_fd, step, err, filename)
    finally:
        os._exit(126)


def _enter_user_namespace(spec: ChildSpec, uid: int, gid: int) -> None:
    """uid/gid: the one namespace sandlock uses. Our own ids are mapped to
    (uid, gid) inside, nothing else is (files this process creates are still
    ours on the host). The namespace gives this process every capability in
    it: they are dropped below with the securebits locked, as for root."""
    outer_uid, outer_gid = os.geteuid(), os.getegid()
    if spec.raise_caps is not None:
        # Mapping root's own id (uid 0 outside) needs CAP_SETFCAP effective
        # at unshare (the kernel's verify_root_map); a supervisor keeps no
        # capability effective, so raise what we may first (they are all
        # gone once we are in the new namespace).
        _check(spec, Step.CAPABILITIES, _capset(ctypes.byref(_CAP_HEADER), spec.raise_caps))
    if libc.unshare(CLONE_NEWUSER) == -1:
        _fail(spec, Step.USER_NAMESPACE, ctypes.get_errno(), "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {outer_uid} 1"),
                       ("gid_map", f"{gid} {outer_gid} 1")):
        try:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        except OSError as e:
            _fail(spec, Step.USER_NAMESPACE, e.errno or 1, name)
    spec.raise_caps = None
    spec.lock_securebits = spec.clear_caps = True


def _check(spec, step, ret):
    if ret == -1:
        _fail(spec, step, ctypes.get_errno())


def run(spec: ChildSpec, parent: int) -> None:
    """Confine this process and exec the command. Never returns."""
    try:
        _confine_and_exec(spec, parent)
    except BaseException as e:  # noqa: BLE001 - the child must never return
        try:
            report_failure(spec.err_fd, Step.LAUNCH, getattr(e, "errno", 0) or 0, repr(e))
        finally:
            os._exit(126)


def _lift_fds(spec: ChildSpec) -> None:
    """Move every fd this process still uses above the extra fds' target
    numbers, so placing those overwrites nothing needed (the old numbers
    are overwritten or closed before exec)."""
    top = spec.keep_fds[-1] + 1

    def lift(fd: int) -> int:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top)
    try:
        spec.err_fd = lift(spec.err_fd)
        spec.ruleset_fd = lift(spec.ruleset_fd)
        if spec.hand_fds is not None:
            spec.hand_fds = (lift(spec.hand_fds[0]), lift(spec.hand_fds[1]))
        spec.extra = tuple(lift(fd) for fd in spec.extra)
    except OSError as e:
        _fail(spec, Step.STDIO, e.errno or 0)


def _confine_and_exec(spec: ChildSpec, parent: int) -> None:
    plan = spec.plan
    if spec.new_pgrp:
        os.setpgid(0, 0)
    _check(spec, Step.PARENT_DEATH_SIGNAL, _prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0))
    if os.getppid() != parent:
        os._exit(126)
    if spec.extra:
        _lift_fds(spec)
    if spec.stdio != (0, 1, 2):
        # Copy first, so a source that is also a target is not overwritten.
        copies = [os.dup(fd) for fd in spec.stdio]
        for target, fd in enumerate(copies):
            os.dup2(fd, target)
    for fd, target in zip(spec.extra, plan.extra_fds, strict=True):
        os.dup2(fd, target)  # inheritable: it survives the exec
    try:
        os.chdir(plan.cwd)
    except OSError as e:
        _fail(spec, Step.CHDIR, e.errno or 0, os.fsdecode(plan.cwd))
    if plan.thp_disable:
        _check(spec, Step.THP_DISABLE, _prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0))
    if plan.personality is not None:
        _check(spec, Step.PERSONALITY, _personality(plan.personality))
    if plan.cpu_affinity is not None:
        try:
            os.sched_setaffinity(0, plan.cpu_affinity)
        except OSError as e:
            _fail(spec, Step.CPU_AFFINITY, e.errno or 0)
    if plan.ids is not None:
        _enter_user_namespace(spec, *plan.ids)
    # Root keeps every capability without namespaces: drop them all, so a
    # sandbox started by root is no stronger than one started by a user.
    # Locked NOROOT securebits stop exec from granting root its capabilities
    # back (NO_NEW_PRIVS below does too: belt and braces).
    if spec.raise_caps is not None:
        _check(spec, Step.CAPABILITIES, _capset(ctypes.byref(_CAP_HEADER), spec.raise_caps))
    if spec.lock_securebits:
        _check(spec, Step.CAPABILITIES, _prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_NOROOT, 0, 0, 0))
    if spec.clear_caps:
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        _check(spec, Step.CAPABILITIES, _capset(ctypes.byref(_CAP_HEADER), _CAP_DATA))
    _check(spec, Step.NO_NEW_PRIVS, _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    err = landlock.restrict_self(spec.ruleset_fd)
    if err:
        _fail(spec, Step.LANDLOCK, err)
    listener, err = spec.program.install(spec.hand_fds is not None)
    if err:
        _fail(spec, Step.SECCOMP, err)
    if spec.hand_fds is not None:
        # The supervisor copies the listener with pidfd_getfd, then acks;
        # only then may this end close it (before exec: the sandboxed
        # program must never hold its own listener).
        hand_w, ack_r = spec.hand_fds
        os.write(hand_w, protocol.encode(protocol.ListenerFd(listener)))
        if os.read(ack_r, 64) != spec.listener_ack:
            _fail(spec, Step.LISTENER_HANDOFF, 71)  # EPROTO: no supervisor, no exec
        os.close(listener)
    err_fd = spec.err_fd
    low = 3
    for keep in (*spec.keep_fds, err_fd):  # err_fd is above them (_lift_fds)
        if keep > low:
            raw_syscall(NR_CLOSE_RANGE, low, keep - 1, 0)
        low = keep + 1
    raw_syscall(NR_CLOSE_RANGE, low, 0xFFFFFFFF, 0)
    # Limits last: a small RLIMIT_NOFILE must not stop the listener fd being
    # created, and the fds above stdio are closed by now.
    for res, soft, hard in plan.rlimits:
        try:
            resource.setrlimit(res, (soft, hard))
        except (OSError, ValueError) as ex:
            _fail(spec, Step.RLIMIT, getattr(ex, "errno", None) or 22, str(res))
    for sig in spec.reset_signals:
        _signal(sig, 0)  # SIG_DFL
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    first_error = 2  # ENOENT
    for path in plan.exec_candidates:
        try:
            if plan.exec_by_fd:
                # chroot: a path in the virtual tree, opened through the
                # supervisor; the kernel runs the fd (never a host lookup)
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.execve(fd, plan.argv, plan.envp)
                finally:
                    os.close(fd)
            os.execve(path, plan.argv, plan.envp)
        except OSError as ex:
            err = ex.errno or 2
            if err not in (2, 20):  # keep EACCES over ENOENT, like execvp
                first_error = err
    try:
        report_failure(err_fd, Step.EXEC, first_error, os.fsdecode(plan.argv[0]))
    finally:
        os._exit(127)
