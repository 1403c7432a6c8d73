"""From a notification to an answer: built-in handlers first, then the user's.

Fail closed everywhere: a built-in handler that raises denies with EPERM; a
user handler that raises or returns a non-action gets its ExceptionPolicy
(EPERM, EIO or kill, never CONTINUE); an fd injection that fails denies.
"""
from __future__ import annotations

import errno
import os
import signal

from ..denials import Recorder, Refused
from ..handler import ActionKind, ExceptionPolicy, HandlerCtx, NotifAction
from .network import Deferred
from .policygate import Held
from .processes import ObservationError

_DENY_EPERM = NotifAction(ActionKind.ERRNO, errno_value=errno.EPERM)
_CONTINUE = NotifAction(ActionKind.CONTINUE)


class Dispatcher:
    def __init__(self, listener, builtin: dict[int, list], user: dict[int, list]):
        self.deferred: dict[int, tuple] = {}  # fd -> (ctx, Deferred): answers waiting on I/O
        """builtin: nr → [fn(ctx) -> None, errno or NotifAction];
        user: nr → [(fn, policy)]."""
        self.listener = listener
        self.builtin = builtin
        self.user = user
        self.denials = Recorder()  # the built-in handlers' described refusals (denials.py)
        self.holding_for: int | None = None   # answers wait while the sandbox is stopped
        self.waiting: list[tuple] = []

    def handle_one(self) -> bool:
        """Answer one notification. False once the listener has hung up (no
        task uses the filter any more): nothing more can arrive."""
        n = self.listener.recv()
        if n is None:
            return not self.listener.hung_up()
        d = n.data
        ctx = HandlerCtx(n.id, n.pid, n.flags, d.nr, d.arch, d.instruction_pointer,
                         tuple(d.args), self.listener.id_valid)
        self.apply(ctx, self._decide_safely(ctx, 0))
        return True

    def _decide_safely(self, ctx: HandlerCtx, start: int):
        try:
            return self.decide(ctx, start)
        except ObservationError:
            # The sandbox cannot be seen (its process tree, its memory):
            # deny this call, then end the sandbox (the loop does).
            self.apply(ctx, _DENY_EPERM)
            raise
        except Exception:  # noqa: BLE001 - a broken handler never lets a call through
            return _DENY_EPERM
        except BaseException:
            # Not a handler's failure: the supervisor is stopping (its parent
            # died, SIGTERM). Deny this call and let the stop go on: swallowed,
            # it would leave the sandbox running with nobody to end it.
            self.apply(ctx, _DENY_EPERM)
            raise

    def decide(self, ctx: HandlerCtx, start: int = 0) -> NotifAction | Deferred | Held:
        chain = self.builtin.get(ctx.syscall_nr, ())
        for i in range(start, len(chain)):
            verdict = chain[i](ctx)  # None: no objection; an errno; a NotifAction; a Deferred; Held
            if isinstance(verdict, (NotifAction, Deferred)):
                return verdict
            if isinstance(verdict, Held):
                verdict.resume_at = i + 1  # where the chain goes on once allowed
                return verdict
            if verdict:
                if type(verdict) is not int and isinstance(verdict, Refused):
                    self.denials.note(verdict, ctx.syscall_nr)  # only refusals pay for this
                return NotifAction(ActionKind.ERRNO, errno_value=int(verdict))
        for fn, policy in self.user.get(ctx.syscall_nr, ()):
            action = _call_user(fn, policy, ctx)
            if action.kind != ActionKind.CONTINUE:
                return action
        return _CONTINUE

    def release(self, held: Held, err: int) -> None:
        """policy_fn's verdict on a held syscall (or its timeout): denied
        with `err`, or the rest of the chain decides (and may act)."""
        ctx = held.ctx
        if err:
            self.apply(ctx, NotifAction(ActionKind.ERRNO, errno_value=err))
        else:
            self.apply(ctx, self._decide_safely(ctx, held.resume_at))
        if held.after is not None:
            held.after(not err)

    def hold_answers(self, tid: int) -> None:
        """While the sandbox is stopped for `tid`'s exec, answers to other
        tasks wait (a task that met the stop parked in our notification
        would otherwise run its syscall, which may write memory)."""
        self.holding_for = tid

    def release_answers(self) -> None:
        self.holding_for = None
        waiting, self.waiting = self.waiting, []
        for ctx, action in waiting:
            self.apply(ctx, action)

    def abandon(self) -> None:
        """The run is over: release what answers still waiting hold."""
        for _ctx, waiting in self.deferred.values():
            waiting.cleanup()
        self.deferred.clear()

    def resume(self, fd: int) -> None:
        """The fd a deferred answer waited on is ready: answer now."""
        ctx, waiting = self.deferred.pop(fd)
        again = False
        try:
            verdict = waiting.resume()
            if verdict is waiting:  # not yet: wait on its fd again (a sleep, clock.py)
                again = True
                self.deferred[fd] = (ctx, waiting)
                return
            if not isinstance(verdict, NotifAction):
                if isinstance(verdict, Refused):
                    self.denials.note(verdict, ctx.syscall_nr)
                verdict = NotifAction(ActionKind.ERRNO, errno_value=int(verdict)) if verdict else _DENY_EPERM
        except Exception:  # noqa: BLE001
            verdict = _DENY_EPERM
        except BaseException:  # stopping: as in handle_one
            self.apply(ctx, _DENY_EPERM)
            raise
        finally:
            if not again:
                waiting.cleanup()
        self.apply(ctx, verdict)

    def apply(self, ctx: HandlerCtx, action) -> None:
        lst = self.listener
        if isinstance(action, Deferred):
            self.deferred[action.fd] = (ctx, action)
            return
        if isinstance(action, Held):
            return  # the gate holds it; release() answers
        if self.holding_for is not None and ctx.pid != self.holding_for:
            self.waiting.append((ctx, action))
            return
        kind = action.kind
        if kind == ActionKind.CONTINUE:
            lst.respond(ctx.id, cont=True)
        elif kind == ActionKind.ERRNO:
            lst.respond(ctx.id, error=action.errno_value)
        elif kind == ActionKind.RETURN_VALUE:
            lst.respond(ctx.id, val=action.return_value)
        elif kind == ActionKind.INJECT_FD:
            try:
                ret = lst.inject_fd(ctx.id, action.srcfd, action.newfd_flags)
            finally:
                os.close(action.srcfd)
            if ret < 0 and ret != -errno.ENOENT:
                lst.respond(ctx.id, error=errno.EPERM)
        elif kind == ActionKind.KILL:
            try:
                os.kill(ctx.pid, action.sig or signal.SIGKILL)
            except OSError:
                pass
            lst.respond(ctx.id, error=errno.EPERM)
        else:
            lst.respond(ctx.id, error=errno.EPERM)


def _call_user(fn, policy: ExceptionPolicy, ctx: HandlerCtx) -> NotifAction:
    try:
        action = fn(ctx)
        if not isinstance(action, NotifAction) or action.kind not in ActionKind.__members__.values():
            raise TypeError(f"handler returned {action!r}, not a NotifAction")
        return action
    except Exception:  # noqa: BLE001
        if policy == ExceptionPolicy.KILL:
            return NotifAction.kill()
        return NotifAction(ActionKind.ERRNO,
                           errno_value=errno.EIO if policy == ExceptionPolicy.DENY_EIO else errno.EPERM)
