"""Supervisors, and the children they fork before they are needed.

A fork is the slow part of a launch (about a millisecond here, and the
pages a forked Python process then touches are copied one by one). So a
supervisor S forks its child C ahead of time; C waits on a socket that S
hands the caller. A launch is then one message from the caller straight
to C:

    caller --Launch + fds--> C --Launch + (ctl, result fds)--> S
                             C: confine, exec                  S: supervise

C passes S its share (the control and result pipes) and goes on to confine
itself and exec at once. After the run S pre-forks the next child and
serves the caller again, so a run costs one fork, made while nobody waits.

Lifetimes. S is a child subreaper: every orphan of its sandbox becomes its
child, so "kill every process of the sandbox" is exact. C dies with S
(PDEATHSIG SIGKILL). S dies with whoever forked it: its parent-death signal
is SIGHUP, which S catches to kill its whole sandbox before exiting (as it
does for SIGTERM). If S itself is SIGKILLed, its orphans go to the next
subreaper up, its forker, which kills them. A supervisor whose own state a
run changed (limits, priority, scheduling, CPUs) is not reused.
"""
from __future__ import annotations

import os
import resource
import signal
import socket

from .. import child as _child
from .. import control, protocol
from .._kernel import fork, pidfd, seccomp
from .._kernel import syscalls as _syscalls
from .._kernel.libc import PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG, prctl
from . import (attributes, chroot, clock, cow, learning, limits, loop, network, pidscope, processes, procfs,
               random_source, selfrestrict, sorted_dirs, vdso)
from ..chroot import RootSpec
from .dispatch import Dispatcher
from ..policy.policyfn import DEFAULT_TIMEOUT
from .policygate import PolicyGate

# fds of a request, in order.
N_FDS = 6
RULESET, STDIN, STDOUT, STDERR, CTL, RES = range(N_FDS)
MAX_REQUEST = 1 << 20


class ParentGone(BaseException):
    """Whoever forked this supervisor died, or asked it to stop."""


def _parent_gone(*_args):
    _ignore_stop_signals()  # once: a second signal must not interrupt the killing that follows
    raise ParentGone()


def parent_death_handler(parent: int, stop):
    """The parent-death signal comes when the *thread* that started us
    exits, not only when its process does (a caller's worker thread that
    ran the first sandbox, then ended): the process is gone only if we
    were re-parented. A spurious signal is ignored; the kernel sends
    another when the next parent thread, or the process, ends."""
    def handler(*args):
        if parent and os.getppid() == parent:
            return
        stop(*args)
    return handler


def fork_pair(close_in_pair: list[int], rounds: int | None = None) -> tuple[int, socket.socket]:
    """Fork a supervisor (which pre-forks its first child). Returns the
    supervisor's pid and the connection on which it offers each child's
    request socket."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    parent = os.getpid()
    try:
        pid = fork.fork()
    except OSError:
        mine.close()
        theirs.close()
        raise
    if pid == 0:
        code = 0
        try:
            mine.close()
            signal.set_wakeup_fd(-1)
            for fd in close_in_pair:
                os.close(fd)
            run_supervisor(theirs, rounds=rounds, parent=parent)
        except BaseException:  # noqa: BLE001 - a spare never returns into the server
            code = 1
        finally:
            os._exit(code)
    theirs.close()
    return pid, mine


def run_kept_supervisor(caller: socket.socket, user_handlers, policy_fd: int | None = None) -> None:
    """For a supervisor forked from a caller that is no subreaper: this
    process (the keeper) is one, forks the supervisor and waits; whatever a
    supervisor killed from outside leaves behind becomes ours and is killed."""
    me = _guard_tree(os.getppid())
    if me is None:
        return
    try:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run_supervisor(caller, user_handlers, rounds=1, parent=me, policy_fd=policy_fd)
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        caller.close()
        while True:
            try:
                done, _status = os.waitpid(pid, 0)
            except ChildProcessError:
                break
            if done == pid:
                break
    except ParentGone:
        pass
    finally:
        _end_tree(me)


def _guard_tree(parent: int) -> int | None:
    """Make this process a subreaper that dies with `parent` (SIGHUP, caught:
    see _parent_gone) and stops on SIGTERM. Returns its pid, or None if
    the parent is already gone."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, parent_death_handler(parent, _parent_gone))
    signal.signal(signal.SIGTERM, _parent_gone)
    prctl(PR_SET_PDEATHSIG, signal.SIGHUP)
    if parent and os.getppid() != parent:
        return None  # it died before the death signal was armed
    return os.getpid()


def _end_tree(me: int) -> None:
    """Kill every process below this one, with no stop signal in the way."""
    _ignore_stop_signals()
    try:
        processes.kill_all(me, {})
    except processes.ObservationError:
        pass  # exiting: the next subreaper up sweeps what is left


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _own_state() -> tuple:
    """What a sandbox could change about its supervisor: resource limits,
    priority, scheduling policy, CPUs. Compared after each run."""
    limits_now = tuple(resource.getrlimit(getattr(resource, name))
                       for name in sorted(dir(resource)) if name.startswith("RLIMIT_"))
    return (limits_now, os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0),
            os.sched_getparam(0).sched_priority, frozenset(os.sched_getaffinity(0)))


def run_supervisor(caller: socket.socket, user_handlers=None, rounds: int | None = None,
                   parent: int = 0, policy_fd: int | None = None) -> None:
    """Body of a supervisor process, serving one sandbox at a time.

    Each round: pre-fork a child, send the caller that child's request
    socket (ChildOffer on `caller`), wait for the request, take the
    seccomp listener, supervise to the end, report. Then the next round, so
    a supervisor forks only the child for each run. Ends after `rounds`
    rounds, when the caller goes away, when its parent dies (killing the
    sandbox first), or when a run left it changed.

    user_handlers (nr → [(fn, policy)]) only exist when the supervisor was
    forked from the caller by run_with_handlers; policy_fd (the socket to
    the caller's policy_fn) only when forked from a caller with policy_fn.
    """
    me = _guard_tree(parent)
    if me is None:
        return
    try:
        _serve(caller, me, user_handlers, rounds, policy_fd)
    except ParentGone:
        pass
    finally:
        _end_tree(me)


def _serve(caller: socket.socket, me: int, user_handlers, rounds: int | None,
           policy_fd: int | None = None) -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    offer = protocol.encode(protocol.ChildOffer(me))
    state = None
    served = 0
    while rounds is None or served < rounds:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        child = _prefork_child(me, theirs, (wake_r, wake_w, caller.fileno(), mine.fileno()))
        theirs.close()
        if served == 0:
            # What the supervisor does on the child's behalf must not carry
            # more rights than the child has: a root supervisor keeps none
            # of root's capabilities effective (it needs none: the sandbox
            # is its own uid's children).
            _child.lower_effective_capabilities()
            _rehearse_supervisor(me)
            state = _own_state()
        try:
            socket.send_fds(caller, [offer], [mine.fileno()])
        except OSError:
            return  # the caller is gone
        finally:
            mine.close()
        ran = _supervise(child, me, wake_r, user_handlers, policy_fd)
        if ran is None:
            processes.kill_all(me, {})
            if _hung_up(caller):
                return
        elif not ran or _own_state() != state:
            return  # not in a known state: not reused
        served += 1
        loop.drain(wake_r)


def _fitted(outcome: protocol.Finished) -> bytes:
    """The encoded Finished, within one frame: the HTTP request log gives
    way (its latest entries counted as omitted) when the learn records and
    the denials leave it too little room."""
    data = protocol.encode(outcome)
    while len(data) - protocol.HEADER_SIZE > protocol.MAX_PAYLOAD and outcome.http_log:
        drop = max(1, len(outcome.http_log) // 4)
        outcome.http_log_more += drop
        del outcome.http_log[-drop:]
        data = protocol.encode(outcome)
    return data


def _prefork_child(me: int, request_sock: socket.socket, close_in_child) -> tuple:
    """Fork the child that will wait for a request on `request_sock`.
    Returns (pid, socket its share arrives on, error pipe, hand-off pipes)."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    hand_r, hand_w = os.pipe2(os.O_CLOEXEC)  # child → supervisor: ListenerFd
    ack_r, ack_w = os.pipe2(os.O_CLOEXEC)    # supervisor → child: ListenerAck
    to_s, from_c = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    pid = fork.fork()
    if pid == 0:
        for fd in (*close_in_child, err_r, to_s.fileno(), hand_r, ack_w):
            os.close(fd)
        _child_waits(request_sock, from_c, err_w, me, (hand_w, ack_r))
    from_c.close()
    for fd in (err_w, hand_w, ack_r):
        os.close(fd)
    return pid, to_s, err_r, hand_r, ack_w


def _supervise(child: tuple, me: int, wake_r: int, user_handlers,
               policy_fd: int | None = None) -> bool | None:
    """One run. None when no request came (the child is then ended); False
    when the supervisor could not end the sandbox cleanly (do not reuse)."""
    pid, to_s, err_r, hand_r, ack_w = child
    try:
        data, fds, _flags, _addr = socket.recv_fds(to_s, MAX_REQUEST, 2)
    except OSError:
        data, fds = b"", []
    to_s.close()
    if not data or len(fds) != 2:
        for fd in (*fds, err_r, hand_r, ack_w):
            os.close(fd)
        return None
    ctl_r, res_w = fds
    cleanup: list = []
    clean = True
    try:
        # The child is confining itself now. Prepare everything first, then
        # take its listener and answer at once: the woken child often shares
        # this CPU, so work done after the ack would delay its exec.
        request = protocol.decode_as(data, protocol.Channel.LAUNCH, protocol.Launch)
        plan = request.supervisor
        server = None

        def report(virtual: int, real: int) -> None:
            os.write(res_w, protocol.encode(protocol.PortMapped(virtual, real)))
            if server is not None:
                server.ports[virtual] = real

        try:
            builtin, memory = builtin_handlers(plan, me, report, cleanup, policy_fd=policy_fd) \
                if plan.routes else ({}, None)
        except MissingHandler as e:
            os.close(hand_r)
            os.close(ack_w)  # the child sees no supervisor: it never execs
            os.write(res_w, protocol.encode(protocol.Finished(error=f"sandbox not started: {e}")))
            processes.kill_all(me, {}, (pid,))
            return True
        throttle = limits.CpuThrottle(me, plan.max_cpu) if plan.max_cpu is not None else None
        listener = _take_listener(pid, hand_r, ack_w) if request.child.handoff else None
        if not request.child.handoff:
            os.close(hand_r)
            os.close(ack_w)
        if listener is not None:
            cleanup.append(listener.fd)
        dispatcher = Dispatcher(listener, builtin, user_handlers or {}) if listener is not None else None
        gate = next((c for c in cleanup if isinstance(c, PolicyGate)), None)
        if dispatcher is not None:
            cleanup.append(dispatcher)
            if gate is not None:
                gate.dispatcher = dispatcher
        try:
            # The control socket (ps / inspect / kill): made once the child
            # is on its way (a bind costs ~0.1 ms), before the caller hears
            # of the run (so `ps` right after popen() sees it).
            server = control.serve(plan, pid, me)
        except control.ControlError as e:
            processes.kill_all(me, {}, (pid,))
            os.write(res_w, protocol.encode(protocol.Finished(error=f"sandbox not started: {e}")))
            return True
        if server is not None:
            cleanup.append(server)
            if dispatcher is not None:
                server.denials = dispatcher.denials  # inspect shows the denials so far
        os.write(res_w, protocol.encode(protocol.Started(pid, me)))
        try:
            disk = next((c for c in cleanup if isinstance(c, cow.Cow) and c.max_disk is not None), None)
            outcome = loop.run(pid, me, wake_r, err_r, ctl_r, plan.timeout, dispatcher,
                               (throttle, memory if hasattr(memory, "tick") else None, disk, gate),
                               server, gate)
        except processes.ObservationError as e:
            clean = False
            outcome = protocol.Finished(error=f"the sandbox could not be ended cleanly: {e.strerror}")
        if gate is not None:
            gate.flush()  # observed events still batched reach the callback before the end
        if server is not None:
            server.close()  # gone before the caller hears the end: its name is free again
        if disk is not None and disk.killed:
            outcome.notes.append(disk.reason)
        if memory is not None and memory.killed:
            outcome.notes.append(getattr(memory, "reason", "") or
                                 f"max_memory: killed process {', '.join(map(str, memory.killed))} "
                                 f"(limit {plan.max_memory} bytes)")
        if dispatcher is not None:
            outcome.denials, outcome.denials_more = dispatcher.denials.export()
        learner = next((c for c in cleanup if isinstance(c, learning.Learner)), None)
        if learner is not None:
            outcome.learned, outcome.learned_more, outcome.learned_missed = learner.export()
        for item in cleanup:
            if hasattr(item, "export_log"):  # the HTTP proxy: ended first, its log complete
                item.close()
                outcome.http_log, outcome.http_log_more = item.export_log()
        os.write(res_w, _fitted(outcome))
    finally:
        # This supervisor serves more runs: leave nothing of this one open.
        for item in (ctl_r, res_w, err_r, *cleanup):
            try:
                if isinstance(item, Dispatcher):
                    item.abandon()
                elif isinstance(item, int):
                    os.close(item)
                else:
                    item.close()
            except OSError:
                pass
    return clean


def _hung_up(sock: socket.socket) -> bool:
    import select
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    for _fd, events in poller.poll(0):
        if events & (select.POLLHUP | select.POLLERR):
            return True
    return False


def _take_listener(pid: int, hand_r: int, ack_w: int):
    """Copy the child's listener fd (pidfd_getfd on the child's thread
    group), then let the child close its own. None if the child died first."""
    raw = os.read(hand_r, 64)
    os.close(hand_r)
    try:
        fd_number = protocol.decode_as(raw, protocol.Channel.HANDOFF, protocol.ListenerFd).fd
    except protocol.ProtocolError:
        os.close(ack_w)  # the child died (EOF) or spoke nonsense: it never execs
        return None
    try:
        fd = pidfd.getfd_of_task(pid, fd_number, processes.tgid)
    except OSError:
        os.write(ack_w, protocol.encode(protocol.ListenerAck(False)))  # no supervisor, no exec
        os.close(ack_w)
        return None
    os.write(ack_w, protocol.encode(protocol.ListenerAck(True)))
    os.close(ack_w)
    return seccomp.Listener(fd)


class MissingHandler(Exception):
    """A syscall is routed to the supervisor and nothing would answer it."""


def builtin_handlers(plan, me: int, report=None, cleanup: list | None = None,
                     nrs: dict[str, int] | None = None, policy_fd: int | None = None):
    """nr → [handler] for every syscall the plan routes (plan.routes:
    feature → syscalls, see routing.py), and the memory limit (for notes).
    `report(virtual, real)` tells the caller a port_remap mapping. Raises
    MissingHandler if a routed syscall would have no handler: the sandbox
    then never starts (`nrs`: another arch's table, for the tests)."""
    nrs = _syscalls.table().syscalls if nrs is None else nrs
    routes: dict[str, tuple[str, ...]] = plan.routes
    by_feature: dict[str, dict[str, object]] = {}
    memory = None
    restriction = selfrestrict.SelfRestriction()  # what on-behalf handlers consult
    if "pid_scope" in routes:
        # First: a call naming a process outside the sandbox is refused
        # before any other handler (e.g. num_cpus's virtual affinity) answers.
        scoped = pidscope.handlers(me, nrs)
        by_feature["pid_scope"] = {n: scoped[nrs[n]] for n in routes["pid_scope"] if nrs[n] in scoped}
    if "self_restriction" in routes:
        by_feature["self_restriction"] = {"landlock_restrict_self": restriction.on_restrict_self}
    branch = None
    if "cow" in routes or "cow_listings" in routes:
        workdir, branch_dir, max_disk = plan.cow
        branch = cow.Cow(me, workdir, branch_dir, max_disk, nrs, _syscalls.table().arch, restriction,
                         plan.fs.denied)
        if cleanup is not None:
            cleanup.append(branch)
        if "cow" in routes:
            by_feature["cow"] = branch.handlers()
        else:   # inside a chroot: its handlers serve the paths, the branch its listings
            listings = branch.handlers()
            by_feature["cow_listings"] = {n: listings[n] for n in routes["cow_listings"]}
    tree = None
    if "chroot" in routes:
        root, mounts, cwd = plan.chroot
        tree = chroot.Chroot(me, RootSpec(root, mounts), cwd, plan.fs, nrs, _syscalls.table().arch,
                             restriction)
        if cleanup is not None:
            cleanup.append(tree)
        if branch is not None:
            tree.attach_branch(branch)
        by_feature["chroot"] = tree.handlers()
    if "attributes" in routes:
        by_feature["attributes"] = attributes.handlers(plan.fs, nrs, branch, tree)
    if "learn" in routes:
        learner = learning.Learner(nrs, branch)
        if cleanup is not None:
            cleanup.append(learner)  # the run's records are read from it at the end
        by_feature["learn"] = learner.handlers()
    if "processes" in routes:
        fork_nrs = {nrs[n] for n in routes["processes"]}
        procs = limits.ProcessLimit(me, plan.max_processes, fork_nrs, nrs["clone"])
        by_feature["processes"] = {n: procs.on_fork for n in routes["processes"]}
    if plan.max_memory is not None:
        memory = limits.MemoryLimit(me, plan.max_memory, nrs)
        by_feature["memory"] = {n: memory.on_alloc for n in routes.get("memory", ())}
    static = plan.net.static_files()
    proc = None
    if {"opens", "listings", "cpus"} & routes.keys():
        proc = procfs.ProcFs(me, nrs, plan.num_cpus, memory, plan.fs, plan.proc,
                             static or None, restriction)
        if cleanup is not None:
            cleanup.append(proc.proc_fd)
        by_feature["opens"] = {n: proc.on_open for n in routes.get("opens", ())}
        by_feature["listings"] = {n: proc.on_getdents for n in routes.get("listings", ())}
        by_feature["cpus"] = {n: proc.on_getaffinity for n in routes.get("cpus", ())}
    if {"network", "port_names", "listen"} & routes.keys():
        net = network.Network(me, plan.net, plan.fs, nrs, report or (lambda virtual, real: None),
                              restriction, cleanup)  # its kept sockets join `cleanup`
        by_feature["network"] = {n: fn for n, fn in (
            ("connect", net.on_connect), ("sendto", net.on_sendto), ("sendmsg", net.on_sendmsg),
            ("sendmmsg", net.on_sendmmsg), ("bind", net.on_bind)) if n in routes.get("network", ())}
        by_feature["port_names"] = {n: net.on_getsockname for n in routes.get("port_names", ())}
        by_feature["listen"] = {n: net.on_listen for n in routes.get("listen", ())}
    by_feature.update(_determinism_handlers(plan, me, routes, nrs, cleanup, proc))
    if "policy_fn" in routes or "policy_watch" in routes:
        gate = PolicyGate(policy_fd, plan.policy_fn_timeout or DEFAULT_TIMEOUT, me, nrs, plan.net,
                          procs if "processes" in routes else None, memory)
        if cleanup is not None:
            cleanup.append(gate)
        gate.tree = tree   # deny_path's paths are virtual inside a chroot
        if "network" in by_feature:
            net.live = gate.live
        if branch is not None and tree is None:
            # The same list, changed in place. Inside a chroot its paths are
            # virtual and the tree's handlers check them (gate.tree).
            branch.dynamic_denied = gate.denied_paths
        by_feature["policy_fn"], by_feature["policy_watch"] = gate.handlers(
            routes.get("policy_fn", ()), routes.get("policy_watch", ()))
    table: dict[int, list] = {}
    for feature, names in routes.items():
        handlers = by_feature.get(feature, {})
        for name in names:
            fn = handlers.get(name)
            if fn is None:
                raise MissingHandler(f"{name} is routed to the supervisor for {feature} "
                                     "but has no handler")
            table.setdefault(nrs[name], []).append(fn)
    return table, memory


def _determinism_handlers(plan, me: int, routes, nrs, cleanup, proc) -> dict[str, dict[str, object]]:
    """Handlers of the deterministic-run features (random_seed, time_start,
    deterministic_dirs; see determinism.py)."""
    seed, start, _dirs = plan.determinism or (None, None, False)
    out: dict[str, dict[str, object]] = {}
    if "vdso" in routes:
        hider = vdso.VdsoHider(time=start is not None, random=seed is not None)
        out["vdso"] = {"brk": hider.on_new_image, "arch_prctl": hider.on_new_image}
    if start is not None and {"clock", "clock_args"} & routes.keys():
        wall = clock.Clock(start)
        out["clock"] = {"gettimeofday": wall.on_gettimeofday, "time": wall.on_time}
        out["clock_args"] = {"clock_gettime": wall.on_clock_gettime,
                             "clock_nanosleep": wall.on_clock_nanosleep,
                             "timerfd_settime": wall.on_timerfd_settime}
    if seed is not None and "random" in routes:
        rnd = random_source.SeededRandom(me, seed)
        rnd.openat_nr = nrs.get("openat", -1)
        if cleanup is not None:
            cleanup.append(rnd)
        out["random"] = {"getrandom": rnd.on_getrandom, "open": rnd.on_open, "openat": rnd.on_open}
    if "sorted_dirs" in routes:
        listing = sorted_dirs.SortedDirs(nrs, proc.listing_filter if proc is not None else None)
        out["sorted_dirs"] = {n: listing.on_getdents for n in routes["sorted_dirs"]}
    return out


_TEMPLATE: list[bytes] = []


def set_template(data: bytes) -> None:
    """A representative Launch message, decoded by each spare child while
    it waits: the pages that decoding touches are copied then, not during
    a launch."""
    _TEMPLATE[:] = [data]


def _rehearse(err_w: int) -> None:
    if not _TEMPLATE:
        return
    request = protocol.decode_as(_TEMPLATE[0], protocol.Channel.LAUNCH, protocol.Launch)
    program = seccomp.Program(request.child.program, _syscalls.table().number("seccomp"))
    _child.ChildSpec(request.child, -1, program, (0, 1, 2), err_w, None)


def _rehearse_supervisor(me: int) -> None:
    """What the supervisor will do on a request, done once on the template
    while nothing waits: the pages it touches are copied now, not then."""
    if not _TEMPLATE:
        return
    import selectors
    request = protocol.decode_as(_TEMPLATE[0], protocol.Channel.LAUNCH, protocol.Launch)
    builtin_handlers(request.supervisor, me, lambda virtual, real: None)
    selectors.DefaultSelector().close()


def _child_waits(request_sock: socket.socket, to_s: socket.socket, err_w: int, parent: int,
                 hand_fds: tuple[int, int] | None) -> None:
    """The pre-forked child: wait for the request, then confine and exec."""
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(0)
        for sig in (signal.SIGHUP, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)  # the supervisor's handlers are not ours
        _rehearse(err_w)
        data, fds, _flags, _addr = socket.recv_fds(request_sock, MAX_REQUEST,
                                                   N_FDS + protocol.MAX_EXTRA_FDS)
        if not data or len(fds) < N_FDS:
            os._exit(0)
        socket.send_fds(to_s, [data], [fds[CTL], fds[RES]])
        os.close(fds[CTL])
        os.close(fds[RES])
        request_sock.close()
        to_s.close()
        request = protocol.decode_as(data, protocol.Channel.LAUNCH, protocol.Launch)
        steps = request.child
        if len(fds) != N_FDS + len(steps.extra_fds):
            raise protocol.ProtocolError(f"{len(fds)} descriptors for {len(steps.extra_fds)} extra")
        os.umask(steps.umask)
        program = seccomp.Program(steps.program, _syscalls.table().number("seccomp"))
        if not steps.handoff and hand_fds is not None:
            os.close(hand_fds[0])
            os.close(hand_fds[1])
            hand_fds = None
        spec = _child.ChildSpec(steps, fds[RULESET], program, (fds[STDIN], fds[STDOUT], fds[STDERR]),
                                err_w, hand_fds, tuple(fds[N_FDS:]))
    except BaseException as e:  # noqa: BLE001
        try:
            _child.report_failure(err_w, protocol.Step.LAUNCH, getattr(e, "errno", 0) or 0, repr(e))
        finally:
            os._exit(126)
    _child.run(spec, parent)
