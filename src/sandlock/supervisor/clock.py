"""time_start: the sandbox's wall clock starts at time_start and runs at
the real rate.

offset = time_start - (real time when the run starts). Only the wall
clocks are shifted: CLOCK_REALTIME, _COARSE, _ALARM and CLOCK_TAI (the
wall clock plus leap seconds, kept consistent with it); monotonic,
boot-time and CPU clocks are untouched and never reach the supervisor.

Answers are written with process_vm_writev (a buffer the task could not
write itself gives EFAULT, as from the kernel). Absolute sleeps and timers
on a wall clock carry a shifted deadline: clock_nanosleep(TIMER_ABSTIME)
is slept in the supervisor on a timerfd at the real deadline (the answer
waits, the child's buffer is never rewritten); timerfd_settime
(TFD_TIMER_ABSTIME) is done on the child's own timer (pidfd_getfd) with
the real deadline. Not covered: timer_settime(TIMER_ABSTIME) of a POSIX
timer (process-local, out of the supervisor's reach: it runs unshifted).
"""
from __future__ import annotations

import ctypes
import errno
import os
import selectors
import struct
import time

from .. import determinism as det
from .._kernel import memory
from .._kernel.libc import libc
from ..handler import ActionKind, HandlerCtx, NotifAction
from .answers import Answer, child_fd
from .network import Deferred

NS = 10**9
TIMESPEC = struct.Struct("<qq")
ITIMERSPEC = struct.Struct("<qqqq")  # it_interval, it_value
TFD_CLOEXEC, TFD_NONBLOCK = 0o2000000, 0o4000
SLICE_NS = 50_000_000  # how often a sleeping task is checked for a caught signal


class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_int64), ("nsec", ctypes.c_int64)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("interval", _Timespec), ("value", _Timespec)]


class _Timeval(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_int64), ("usec", ctypes.c_int64)]


_timerfd_create = libc.timerfd_create
_timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_timerfd_settime = libc.timerfd_settime
_timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec),
                             ctypes.POINTER(_Itimerspec)]


def _settime(fd: int, flags: int, interval_ns: int, value_ns: int) -> tuple[int, int]:
    """timerfd_settime on our fd; returns the old (interval, value) in ns."""
    new = _Itimerspec(_Timespec(*divmod(interval_ns, NS)), _Timespec(*divmod(value_ns, NS)))
    old = _Itimerspec()
    if _timerfd_settime(fd, flags, ctypes.byref(new), ctypes.byref(old)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return (old.interval.sec * NS + old.interval.nsec, old.value.sec * NS + old.value.nsec)


def _returns(value: int) -> NotifAction:
    return NotifAction(ActionKind.RETURN_VALUE, return_value=value)


def _put(ctx, addr: int, data: bytes):
    """None when written, else EFAULT (or ESRCH: the task is gone)."""
    try:
        if memory.write_vm(ctx.pid, addr, data) == len(data):
            return None
    except OSError as e:
        return errno.ESRCH if e.errno == errno.ESRCH else errno.EFAULT
    return errno.EFAULT


class _Sleep(Deferred):
    events = selectors.EVENT_READ  # a timerfd is readable when it fires


class Clock:
    def __init__(self, time_start_ns: int):
        self.offset = time_start_ns - time.time_ns()
        self.sleeping: dict[int, HandlerCtx] = {}  # timerfd → its notification

    def now(self, clock: int) -> int:
        return time.clock_gettime_ns(clock) + self.offset

    def on_clock_gettime(self, ctx):
        clock = ctypes.c_int32(ctx.args[0] & 0xFFFFFFFF).value
        if clock not in det.WALL_CLOCKS:
            return None  # not a wall clock: the kernel answers
        try:
            t = self.now(clock)
        except OSError as e:
            return e.errno or errno.EINVAL
        return _put(ctx, ctx.args[1], TIMESPEC.pack(*divmod(t, NS))) or _returns(0)

    def on_gettimeofday(self, ctx):
        tv, tz = ctx.args[0], ctx.args[1]
        if tv:
            sec, ns = divmod(self.now(det.CLOCK_REALTIME), NS)
            err = _put(ctx, tv, TIMESPEC.pack(sec, ns // 1000))
            if err:
                return err
        if tz:
            zone = (ctypes.c_int32 * 2)()
            libc.gettimeofday(ctypes.byref(_Timeval()), ctypes.byref(zone))
            err = _put(ctx, tz, struct.pack("<ii", zone[0], zone[1]))
            if err:
                return err
        return _returns(0)

    def on_time(self, ctx):
        sec = self.now(det.CLOCK_REALTIME) // NS
        if ctx.args[0]:
            err = _put(ctx, ctx.args[0], struct.pack("<q", sec))
            if err:
                return err
        return _returns(sec)

    def on_clock_nanosleep(self, ctx):
        clock = ctypes.c_int32(ctx.args[0] & 0xFFFFFFFF).value
        if not ctx.args[1] & det.TIMER_ABSTIME or clock not in det.SLEEP_CLOCKS:
            return None
        try:
            raw = memory.read(ctx.pid, ctx.args[2], TIMESPEC.size)
        except OSError:
            return errno.EFAULT
        if len(raw) != TIMESPEC.size:
            return errno.EFAULT
        sec, nsec = TIMESPEC.unpack(raw)
        if not 0 <= nsec < NS:
            return errno.EINVAL
        # The real deadline on CLOCK_REALTIME (TAI differs by its leap seconds).
        gap = time.clock_gettime_ns(clock) - time.clock_gettime_ns(det.CLOCK_REALTIME) \
            if clock == det.CLOCK_TAI else 0
        deadline = sec * NS + nsec - self.offset - gap
        if deadline <= time.time_ns():
            return _returns(0)
        self._forget_interrupted()
        fd = _timerfd_create(det.CLOCK_REALTIME, TFD_CLOEXEC | TFD_NONBLOCK)
        if fd < 0:
            return errno.ENOMEM
        self.sleeping[fd] = ctx
        sleep = _Sleep(fd, lambda: None, lambda: self._end_sleep(fd))
        sleep.resume = lambda: self._wake(ctx, fd, deadline, sleep)
        try:
            _settime(fd, det.TIMER_ABSTIME, 0, min(deadline, time.time_ns() + SLICE_NS))
        except OSError:
            self._end_sleep(fd)
            raise
        return sleep

    def _wake(self, ctx, fd: int, deadline: int, sleep):
        """The sleep's timer fired: done at the deadline; EINTR when a signal
        the task catches is pending (the wait is killable only, so the
        kernel would not interrupt it: checked every SLICE_NS); else wait
        again (`sleep` itself)."""
        try:
            os.read(fd, 8)
        except BlockingIOError:
            pass
        now = time.time_ns()
        if now >= deadline or not _valid(ctx):
            return _returns(0)
        if _signal_pending(ctx.pid):
            return errno.EINTR
        _settime(fd, det.TIMER_ABSTIME, 0, min(deadline, now + SLICE_NS))
        return sleep

    def _end_sleep(self, fd: int) -> None:
        self.sleeping.pop(fd, None)
        os.close(fd)

    def _forget_interrupted(self) -> None:
        """A sleeper interrupted by a signal has left its notification (the
        restarted call sends a new one): fire its timer now so that its fd
        is released, instead of at a deadline maybe hours away."""
        for fd, ctx in list(self.sleeping.items()):
            if not _valid(ctx):
                try:
                    _settime(fd, 0, 0, 1)
                except OSError:
                    pass

    def on_timerfd_settime(self, ctx):
        if not ctx.args[1] & det.TFD_TIMER_ABSTIME:
            return None
        try:
            fd = child_fd(ctx, ctx.args[0])
        except Answer as a:
            return a.errno
        try:
            clock = _timer_clock(fd)
            if clock is None:
                return errno.EINVAL  # not a timerfd
            if clock not in det.SLEEP_CLOCKS:
                return None  # a monotonic timer: its deadline was never shifted
            try:
                raw = memory.read(ctx.pid, ctx.args[2], ITIMERSPEC.size)
            except OSError:
                return errno.EFAULT
            if len(raw) != ITIMERSPEC.size:
                return errno.EFAULT
            isec, insec, vsec, vnsec = ITIMERSPEC.unpack(raw)
            if not (0 <= insec < NS and 0 <= vnsec < NS and isec >= 0):
                return errno.EINVAL
            value = vsec * NS + vnsec
            if value:  # zero disarms, whatever the flags; a past deadline fires at once
                value = max(1, value - self.offset)
            try:
                old = _settime(fd, ctx.args[1] & 0xFFFFFFFF, isec * NS + insec, value)
            except OSError as e:
                return e.errno or errno.EINVAL
            if ctx.args[3]:
                err = _put(ctx, ctx.args[3], ITIMERSPEC.pack(*divmod(old[0], NS), *divmod(old[1], NS)))
                if err:
                    return err
            return _returns(0)
        finally:
            os.close(fd)


def _valid(ctx: HandlerCtx) -> bool:
    valid = ctx._valid
    return valid is None or bool(valid(ctx.id))


def _signal_pending(tid: int) -> bool:
    """Whether task `tid` has a pending, unblocked signal it catches."""
    fields: dict[bytes, int] = {}
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                key, _, value = line.partition(b":")
                if key in (b"SigPnd", b"ShdPnd", b"SigBlk", b"SigCgt"):
                    fields[key] = int(value, 16)
    except (OSError, ValueError):
        return False
    pending = fields.get(b"SigPnd", 0) | fields.get(b"ShdPnd", 0)
    return bool(pending & ~fields.get(b"SigBlk", 0) & fields.get(b"SigCgt", 0))


def _timer_clock(fd: int) -> int | None:
    """The clock of timerfd `fd` (ours: a copy of the child's), from fdinfo."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"clockid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None
