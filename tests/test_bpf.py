"""The seccomp program, run through a classic-BPF interpreter.

`plan.filter_items` → `bpf.assemble` → `bpf.encode` gives the exact bytes
the child installs. The interpreter below executes those bytes on a
synthetic `struct seccomp_data` and the tests check the verdict for every
syscall number of the x86_64 and aarch64 tables, the arch / x32 checks and
each argument filter. Pure: nothing is forked.
"""
from __future__ import annotations

import errno
import struct

import pytest

from sandlock import plan as plan_mod
from sandlock._kernel import bpf, filter_layout
from sandlock._kernel.syscalls import table, table_for
from sandlock.exceptions import SeccompError
from sandlock.policy.model import Policy, normalize
from sandlock.policy.syscall_groups import SYSV_IPC, default_denied

# -- the interpreter -----------------------------------------------------------

SECCOMP_DATA = struct.Struct("<iIQ6Q")  # nr, arch, instruction_pointer, args[6]
assert SECCOMP_DATA.size == 64

LD_W_ABS = 0x20
JMP_JA = 0x05
JMP_JEQ_K, JMP_JGT_K, JMP_JGE_K, JMP_JSET_K = 0x15, 0x25, 0x35, 0x45
ALU_AND_K = 0x54
RET_K = 0x06

RET_ALLOW = 0x7FFF0000
RET_NOTIF = 0x7FC00000
RET_KILL_PROCESS = 0x80000000
EPERM = 0x00050000 | errno.EPERM
ENOSYS = 0x00050000 | errno.ENOSYS


class BadProgram(AssertionError):
    pass


def decode(encoded: bytes) -> list[tuple[int, int, int, int]]:
    """struct sock_filter[] → (code, jt, jf, k)."""
    if len(encoded) % 8:
        raise BadProgram(f"program length {len(encoded)} is not a multiple of 8")
    return list(struct.iter_unpack("=HBBI", encoded))


def execute(prog, data: bytes) -> int:
    """Run a cBPF program on `data`; return the RET value. Anything outside
    the small instruction set sandlock uses, an out-of-bounds load or a jump
    off the end raises BadProgram."""
    if not 0 < len(prog) <= 4096:
        raise BadProgram(f"program has {len(prog)} instructions")
    a = 0
    pc = 0
    for _ in range(len(prog) + 1):  # forward-only: a longer run is impossible
        if not 0 <= pc < len(prog):
            raise BadProgram(f"pc {pc} outside the program (length {len(prog)})")
        code, jt, jf, k = prog[pc]
        if code == LD_W_ABS:
            if k % 4 or k + 4 > len(data):
                raise BadProgram(f"pc {pc}: load at offset {k} outside seccomp_data")
            a = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == JMP_JA:
            pc += 1 + k
        elif code in (JMP_JEQ_K, JMP_JGT_K, JMP_JGE_K, JMP_JSET_K):
            cond = {JMP_JEQ_K: a == k, JMP_JGT_K: a > k,
                    JMP_JGE_K: a >= k, JMP_JSET_K: (a & k) != 0}[code]
            pc += 1 + (jt if cond else jf)
        elif code == ALU_AND_K:
            a &= k
            pc += 1
        elif code == RET_K:
            return k
        else:
            raise BadProgram(f"pc {pc}: unknown opcode {code:#x}")
        if code not in (JMP_JEQ_K, JMP_JGT_K, JMP_JGE_K, JMP_JSET_K) and (jt or jf):
            raise BadProgram(f"pc {pc}: jt/jf set on a non-conditional instruction")
    raise BadProgram("program did not return")


def seccomp_data(tbl, nr: int, *args: int, arch: int | None = None, ip: int = 0x401000) -> bytes:
    full = [a & 0xFFFFFFFFFFFFFFFF for a in args] + [0] * (6 - len(args))
    return SECCOMP_DATA.pack(nr, tbl.audit_arch if arch is None else arch, ip, *full)


def compile_program(tbl, policy: Policy | None = None, notify: tuple[str, ...] = ()):
    items = plan_mod.filter_items(policy or Policy(), tbl, tuple(notify))
    return decode(bpf.encode(bpf.assemble(items)))


def verdict(prog, tbl, name_or_nr, *args, **kw) -> int:
    nr = tbl.syscalls[name_or_nr] if isinstance(name_or_nr, str) else name_or_nr
    return execute(prog, seccomp_data(tbl, nr, *args, **kw))


def show(v: int) -> str:
    names = {RET_ALLOW: "ALLOW", RET_NOTIF: "USER_NOTIF", RET_KILL_PROCESS: "KILL_PROCESS"}
    if v in names:
        return names[v]
    if v & 0xFFFF0000 == 0x00050000:
        return f"ERRNO({errno.errorcode.get(v & 0xFFFF, v & 0xFFFF)})"
    return hex(v)


# -- expected verdicts -----------------------------------------------------------

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_VSOCK = 1, 2, 10, 16, 17, 40
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_SEQPACKET = 1, 2, 3, 5
SOCK_NONBLOCK, SOCK_CLOEXEC = 0o4000, 0o2000000
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_ICMP = 6, 17, 132, 1

# Neutral arguments for the syscalls that have an argument filter.
# sendto reaches the supervisor only with a destination address (args[4]).
NEUTRAL_ARGS = {"socket": (AF_UNIX, SOCK_STREAM, 0), "socketpair": (AF_UNIX, SOCK_STREAM, 0, 0),
                "sendto": (3, 0x1000, 1, 0, 0x7000_0000_0000, 16)}


def expected(name: str, policy: Policy, notify) -> int:
    denied = (set(default_denied(policy.extra_allow_syscalls)) - {"personality"}) \
        | set(policy.extra_deny_syscalls)
    # A denial always wins over a notification.
    if name in ("clone3", "openat2"):  # arguments in memory: callers fall back
        return ENOSYS
    if name in denied:
        return EPERM
    if name in notify:
        return RET_NOTIF
    return RET_ALLOW


def sweep(prog, tbl, policy: Policy, notify) -> list[str]:
    """Every number of the table and the gaps up to max+64; mismatches."""
    bad = []
    for name, nr in sorted(tbl.syscalls.items(), key=lambda x: x[1]):
        got = verdict(prog, tbl, nr, *NEUTRAL_ARGS.get(name, ()))
        want = expected(name, policy, notify)
        if got != want:
            bad.append(f"{name} ({nr}): got {show(got)}, want {show(want)}")
    for nr in range(0, max(tbl.syscalls.values()) + 64):
        if nr not in tbl.names:
            got = verdict(prog, tbl, nr)
            if got != RET_ALLOW:  # the kernel answers ENOSYS itself
                bad.append(f"unassigned {nr}: got {show(got)}")
    return bad


ARCHES = ("x86_64", "aarch64")
NOTIFY = ("openat", "connect", "execve", "bind", "sendto", "socket")


@pytest.fixture(params=ARCHES)
def tbl(request):
    return table_for(request.param)


# -- every syscall number --------------------------------------------------------

def test_default_policy_verdict_for_every_syscall(tbl):
    prog = compile_program(tbl)
    assert sweep(prog, tbl, Policy(), ()) == []


def test_notified_syscalls_reach_the_supervisor(tbl):
    prog = compile_program(tbl, notify=NOTIFY)
    assert sweep(prog, tbl, Policy(), NOTIFY) == []
    assert verdict(prog, tbl, "openat") == RET_NOTIF
    assert verdict(prog, tbl, "openat", arch=tbl.foreign_audit_arch) == RET_KILL_PROCESS


def test_expected_sets_are_not_trivial(tbl):
    """Guard the sweep itself: it must see all four verdict kinds."""
    prog = compile_program(tbl, notify=NOTIFY)
    seen = {verdict(prog, tbl, nr, *NEUTRAL_ARGS.get(name, ()))
            for name, nr in tbl.syscalls.items()}
    assert {RET_ALLOW, RET_NOTIF, EPERM, ENOSYS} <= seen
    for name in ("mount", "ptrace", "bpf", "unshare", "setns", "keyctl", "io_uring_setup",
                 "open_by_handle_at", "kexec_load", "init_module", "shmget", "msgget"):
        assert verdict(prog, tbl, name) == EPERM, name
    for name in ("read", "write", "getpid", "mmap", "exit_group", "close"):
        assert verdict(prog, tbl, name) == RET_ALLOW, name


def test_installed_program_is_what_the_plan_carries():
    """The bytes compile_plan puts in the Plan (what the child installs)
    give the same verdicts as the sweep expects, on the running arch."""
    from sandlock.sandbox import Sandbox
    tb = table()
    p = plan_mod.compile_plan(normalize(Sandbox()), ["true"], abi=7)
    prog = decode(p.program)
    assert sweep(prog, tb, Policy(), p.notify) == []


# -- arch and x32 ------------------------------------------------------------------

@pytest.mark.parametrize("arch", [0x40000003, 0x40000028, 0xC000003E, 0xC00000B7, 0, 0xFFFFFFFF])
def test_foreign_audit_arch_is_killed(tbl, arch):
    prog = compile_program(tbl)
    if arch == tbl.audit_arch:
        assert verdict(prog, tbl, "getpid", arch=arch) == RET_ALLOW
        return
    for name in ("getpid", "read", "mount", "clone3", "socket"):
        assert verdict(prog, tbl, name, arch=arch) == RET_KILL_PROCESS, (name, hex(arch))


def test_foreign_arch_checked_before_arguments(tbl):
    prog = compile_program(tbl)
    # i386 / arm numbers mean other syscalls: nothing may be decided by nr.
    for nr in range(0, 460):
        assert verdict(prog, tbl, nr, arch=tbl.foreign_audit_arch) == RET_KILL_PROCESS


def test_x32_syscalls_are_killed():
    tb = table_for("x86_64")
    prog = compile_program(tb)
    assert tb.x32_bit == 0x40000000
    for name, nr in tb.syscalls.items():
        assert verdict(prog, tb, nr | tb.x32_bit) == RET_KILL_PROCESS, name
        assert verdict(prog, tb, nr, *NEUTRAL_ARGS.get(name, ())) != RET_KILL_PROCESS, name
    for nr in (0x40000000 + 512, 0x40000000 + 547, 0x7FFFFFFF):
        assert verdict(prog, tb, nr) == RET_KILL_PROCESS


# -- argument filters ---------------------------------------------------------------

CLONE_NEW = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
SIGCHLD = 17
THREAD_FLAGS = 0x3D0F00  # VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
VFORK_FLAGS = 0x4100 | SIGCHLD  # CLONE_VM | CLONE_VFORK


@pytest.mark.parametrize("flag", sorted(CLONE_NEW))
def test_clone_namespace_flags_denied(tbl, flag):
    prog = compile_program(tbl)
    bit = CLONE_NEW[flag]
    assert verdict(prog, tbl, "clone", bit | SIGCHLD) == EPERM
    assert verdict(prog, tbl, "clone", bit | THREAD_FLAGS) == EPERM
    # Only the low 32 bits reach the kernel's clone_flags; junk above must
    # not hide the flag.
    assert verdict(prog, tbl, "clone", (0xDEAD << 32) | bit) == EPERM


def test_clone_plain_and_thread_flags_allowed(tbl):
    prog = compile_program(tbl)
    for flags in (0, SIGCHLD, THREAD_FLAGS, VFORK_FLAGS, 0x00800000 | SIGCHLD):  # + CLONE_UNTRACED
        assert verdict(prog, tbl, "clone", flags, 0x7FFF0000, 0, 0) == RET_ALLOW, hex(flags)
    assert verdict(prog, tbl, "clone3", 0, 88) == ENOSYS


TIOCSTI, TIOCLINUX = 0x5412, 0x541C


def test_ioctl_terminal_injection_denied(tbl):
    prog = compile_program(tbl)
    for cmd in (TIOCSTI, TIOCLINUX, (1 << 32) | TIOCSTI, (0xFFFFFFFF << 32) | TIOCLINUX):
        assert verdict(prog, tbl, "ioctl", 0, cmd, 0) == EPERM, hex(cmd)
    for cmd in (0x5401, 0x5413, 0x541B, 0x5421, 0x540F, 0x80045430, 0):  # TCGETS, TIOCGWINSZ, FIONREAD, FIONBIO ...
        assert verdict(prog, tbl, "ioctl", 0, cmd, 0) == RET_ALLOW, hex(cmd)


@pytest.mark.parametrize("args,allowed", [
    ((AF_INET, SOCK_STREAM, 0), True),
    ((AF_INET, SOCK_STREAM, IPPROTO_TCP), True),
    ((AF_INET6, SOCK_STREAM, 0), True),
    ((AF_INET6, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_TCP), True),
    ((AF_UNIX, SOCK_STREAM, 0), True),
    ((AF_UNIX, SOCK_DGRAM, 0), True),
    ((AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), True),
    ((AF_NETLINK, SOCK_RAW, 0), True),  # NETLINK_ROUTE
    ((AF_INET, SOCK_RAW, IPPROTO_ICMP), False),
    ((AF_INET, SOCK_RAW, IPPROTO_TCP), False),
    ((AF_INET6, SOCK_RAW, 58), False),
    ((AF_PACKET, SOCK_RAW, 0x0300), False),
    ((AF_PACKET, SOCK_DGRAM, 0), False),
    ((AF_INET, SOCK_DGRAM, 0), False),
    ((AF_INET, SOCK_DGRAM, IPPROTO_UDP), False),
    ((AF_INET6, SOCK_DGRAM, 0), False),
    ((AF_INET, SOCK_STREAM, IPPROTO_SCTP), False),
    ((AF_INET, SOCK_SEQPACKET, IPPROTO_SCTP), False),
    ((AF_INET6, SOCK_STREAM, IPPROTO_SCTP), False),
    ((AF_NETLINK, SOCK_RAW, 9), False),  # NETLINK_AUDIT
    ((AF_VSOCK, SOCK_STREAM, 0), False),
    ((0, 0, 0), False),
])
def test_socket_filter(tbl, args, allowed):
    prog = compile_program(tbl)
    assert verdict(prog, tbl, "socket", *args) == (RET_ALLOW if allowed else EPERM)


def test_socket_filter_runs_before_notification(tbl):
    """A notified socket() still has raw sockets refused in BPF."""
    prog = compile_program(tbl, notify=("socket",))
    assert verdict(prog, tbl, "socket", AF_INET, SOCK_RAW, IPPROTO_ICMP) == EPERM
    assert verdict(prog, tbl, "socket", AF_INET, SOCK_STREAM, 0) == RET_NOTIF


def test_socketpair_only_unix(tbl):
    prog = compile_program(tbl)
    assert verdict(prog, tbl, "socketpair", AF_UNIX, SOCK_STREAM, 0, 0) == RET_ALLOW
    assert verdict(prog, tbl, "socketpair", AF_INET, SOCK_STREAM, 0, 0) == EPERM


PER_QUERY, ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC = 0xFFFFFFFF, 0x0040000, 0x0400000


def test_personality(tbl):
    prog = compile_program(tbl)
    assert verdict(prog, tbl, "personality", PER_QUERY) == RET_ALLOW
    assert verdict(prog, tbl, "personality", 0) == RET_ALLOW
    assert verdict(prog, tbl, "personality", READ_IMPLIES_EXEC) == EPERM
    assert verdict(prog, tbl, "personality", ADDR_NO_RANDOMIZE) == EPERM
    assert verdict(prog, tbl, "personality", 0x0008) == EPERM  # PER_BSD
    relaxed = compile_program(tbl, Policy(no_randomize_memory=True))
    assert verdict(relaxed, tbl, "personality", ADDR_NO_RANDOMIZE) == RET_ALLOW
    assert verdict(relaxed, tbl, "personality", ADDR_NO_RANDOMIZE | READ_IMPLIES_EXEC) == EPERM
    assert verdict(relaxed, tbl, "personality", PER_QUERY) == RET_ALLOW


PR_SET_DUMPABLE, PR_SET_NAME, PR_SET_MM, PR_SET_PTRACER, PR_GET_DUMPABLE = 4, 15, 35, 0x59616D61, 3


def test_prctl(tbl):
    prog = compile_program(tbl)
    assert verdict(prog, tbl, "prctl", PR_SET_MM, 1, 0) == EPERM
    assert verdict(prog, tbl, "prctl", PR_SET_PTRACER, 1) == EPERM
    for op in (PR_SET_NAME, PR_GET_DUMPABLE, PR_SET_DUMPABLE, 38):  # 38 = PR_SET_NO_NEW_PRIVS
        assert verdict(prog, tbl, "prctl", op, 1) == RET_ALLOW, op
    # no_coredump is RLIMIT_CORE only: PR_SET_DUMPABLE stays the program's.
    nodump = compile_program(tbl, Policy(no_coredump=True))
    assert verdict(nodump, tbl, "prctl", PR_SET_DUMPABLE, 1) == RET_ALLOW
    assert verdict(nodump, tbl, "prctl", PR_SET_MM, 1) == EPERM
    assert verdict(nodump, tbl, "prctl", PR_SET_NAME, 0) == RET_ALLOW


SECCOMP_SET_MODE_FILTER, SECCOMP_GET_ACTION_AVAIL = 1, 2
SECCOMP_FLAG_TSYNC, SECCOMP_FLAG_LOG, SECCOMP_FLAG_NEW_LISTENER = 1, 2, 8


def test_seccomp_new_listener_denied(tbl):
    prog = compile_program(tbl)
    for flags in (SECCOMP_FLAG_NEW_LISTENER, SECCOMP_FLAG_NEW_LISTENER | SECCOMP_FLAG_TSYNC, 0xFF):
        assert verdict(prog, tbl, "seccomp", SECCOMP_SET_MODE_FILTER, flags, 0) == EPERM
    for flags in (0, SECCOMP_FLAG_TSYNC, SECCOMP_FLAG_LOG):
        assert verdict(prog, tbl, "seccomp", SECCOMP_SET_MODE_FILTER, flags, 0) == RET_ALLOW
    assert verdict(prog, tbl, "seccomp", SECCOMP_GET_ACTION_AVAIL, 0, 0) == RET_ALLOW


# -- policy knobs ---------------------------------------------------------------------

def test_extra_deny_syscalls(tbl):
    policy = Policy(extra_deny_syscalls=("getcwd", "uname", "memfd_create"))
    prog = compile_program(tbl, policy)
    for name in policy.extra_deny_syscalls:
        assert verdict(prog, tbl, name) == EPERM
        assert verdict(compile_program(tbl), tbl, name) == RET_ALLOW
    assert sweep(prog, tbl, policy, ()) == []


def test_extra_allow_sysv_ipc(tbl):
    policy = Policy(extra_allow_syscalls=("sysv_ipc",))
    prog = compile_program(tbl, policy)
    default = compile_program(tbl)
    present = [n for n in SYSV_IPC if n in tbl.syscalls]
    assert present
    for name in present:
        assert verdict(prog, tbl, name) == RET_ALLOW, name
        assert verdict(default, tbl, name) == EPERM, name
    assert verdict(prog, tbl, "mount") == EPERM
    assert sweep(prog, tbl, policy, ()) == []


def test_notify_overlapping_deny_is_refused(tbl):
    """The layout refuses a number on both lists (the notify JEQ would come
    first and skip the deny)."""
    nr = tbl.syscalls["getpid"]
    with pytest.raises(SeccompError):
        filter_layout.build(tbl.audit_arch, tbl.x32_bit, [], [nr], {nr: errno.EPERM})
    with pytest.raises(SeccompError):
        filter_layout.build(tbl.audit_arch, tbl.x32_bit, [], [nr, 1, 2], {5: errno.EPERM, nr: errno.EACCES})
    # Disjoint lists are fine.
    filter_layout.build(tbl.audit_arch, tbl.x32_bit, [], [nr], {tbl.syscalls["getppid"]: errno.EPERM})


def test_denial_wins_over_notification(tbl):
    """Routing a denied syscall to the supervisor must not un-deny it."""
    policy = Policy(extra_deny_syscalls=("getcwd",))
    notify = ("mount", "getcwd", "clone3", "ptrace", "openat")
    prog = compile_program(tbl, policy, notify)
    assert verdict(prog, tbl, "mount") == EPERM
    assert verdict(prog, tbl, "ptrace") == EPERM
    assert verdict(prog, tbl, "getcwd") == EPERM
    assert verdict(prog, tbl, "clone3") == ENOSYS
    assert verdict(prog, tbl, "openat") == RET_NOTIF
    assert sweep(prog, tbl, policy, notify) == []


def test_bad_numbers_refused():
    tb = table_for("x86_64")
    with pytest.raises(SeccompError):
        filter_layout.build(tb.audit_arch, tb.x32_bit, [], [0x40000001], {})
    with pytest.raises(SeccompError):
        filter_layout.build(tb.audit_arch, tb.x32_bit, [], [], {-1: errno.EPERM})


def test_chunked_dispatch_gives_correct_verdicts(tbl):
    """Notify every syscall: the JEQ list exceeds 255 entries and must be
    chunked; every verdict still right (denied ones stay denied)."""
    notify = tuple(sorted(tbl.syscalls))
    assert len(notify) + len(default_denied()) > 255
    prog = compile_program(tbl, notify=notify)
    assert sum(1 for c, *_ in prog if c == JMP_JEQ_K) > 255
    assert any(c == JMP_JA for c, *_ in prog[8:])  # a jump from one chunk to the next
    assert sweep(prog, tbl, Policy(), notify) == []
    assert verdict(prog, tbl, "read", arch=tbl.foreign_audit_arch) == RET_KILL_PROCESS


def test_many_small_chunks(tbl, monkeypatch):
    monkeypatch.setattr(filter_layout, "CHUNK", 3)
    policy = Policy(extra_deny_syscalls=("getcwd",), extra_allow_syscalls=("sysv_ipc",))
    notify = NOTIFY + ("getpid", "wait4")
    prog = compile_program(tbl, policy, notify)
    assert sweep(prog, tbl, policy, notify) == []


# -- the assembler ----------------------------------------------------------------------

def test_assembler_size_limit():
    assert len(bpf.assemble([bpf.ret(RET_ALLOW)] * 4096)) == 4096
    with pytest.raises(SeccompError):
        bpf.assemble([bpf.ret(RET_ALLOW)] * 4097)


def test_assembler_conditional_jump_range():
    def prog(gap):
        return ([bpf.ld_abs(0), bpf.jeq(7, jt="far")] + [bpf.ret(1)] * gap
                + [bpf.Label("far"), bpf.ret(2)])
    ok = bpf.assemble(prog(255))
    assert ok[1][1] == 255
    assert execute(ok, struct.pack("<I", 7) + bytes(60)) == 2
    assert execute(ok, struct.pack("<I", 8) + bytes(60)) == 1
    with pytest.raises(SeccompError):
        bpf.assemble(prog(256))
    with pytest.raises(SeccompError):  # the false branch is limited too
        bpf.assemble([bpf.ld_abs(0), bpf.jeq(7, jf="far")] + [bpf.ret(1)] * 256
                     + [bpf.Label("far"), bpf.ret(2)])


def test_assembler_long_unconditional_jump():
    out = bpf.assemble([bpf.ja("end")] + [bpf.ret(1)] * 1000 + [bpf.Label("end"), bpf.ret(2)])
    assert out[0] == (JMP_JA, 0, 0, 1000)
    assert execute(out, bytes(64)) == 2


def test_assembler_label_errors():
    with pytest.raises(SeccompError):
        bpf.assemble([bpf.ld_abs(0), bpf.jeq(1, jt="nowhere"), bpf.ret(0)])
    with pytest.raises(SeccompError):
        bpf.assemble([bpf.ja("nowhere"), bpf.ret(0)])
    with pytest.raises(SeccompError):
        bpf.assemble([bpf.Label("a"), bpf.ret(0), bpf.Label("a"), bpf.ret(1)])
    with pytest.raises(SeccompError):  # backward jump
        bpf.assemble([bpf.Label("top"), bpf.ld_abs(0), bpf.jeq(1, jt="top"), bpf.ret(0)])


def test_encode_layout():
    out = bpf.encode([(0x15, 3, 7, 0xC000003E), (0x06, 0, 0, RET_ALLOW)])
    assert out == struct.pack("=HBBI", 0x15, 3, 7, 0xC000003E) + struct.pack("=HBBI", 6, 0, 0, RET_ALLOW)
    assert len(out) == 16


# -- the interpreter itself ---------------------------------------------------------------

def test_interpreter_rejects_bad_programs():
    data = bytes(64)
    with pytest.raises(BadProgram):
        execute([(LD_W_ABS, 0, 0, 64), (RET_K, 0, 0, 0)], data)   # out of bounds
    with pytest.raises(BadProgram):
        execute([(0x28, 0, 0, 0), (RET_K, 0, 0, 0)], data)        # LD H ABS: unsupported
    with pytest.raises(BadProgram):
        execute([(JMP_JA, 0, 0, 5), (RET_K, 0, 0, 0)], data)      # off the end
    with pytest.raises(BadProgram):
        execute([(LD_W_ABS, 0, 0, 0)], data)                      # no return
    assert execute([(LD_W_ABS, 0, 0, 4), (JMP_JSET_K, 1, 0, 2), (RET_K, 0, 0, 1), (RET_K, 0, 0, 2)],
                   SECCOMP_DATA.pack(0, 2, 0, *[0] * 6)) == 2


MSG_FASTOPEN = 0x20000000


def test_sendto_without_destination_skips_the_supervisor(tbl):
    prog = compile_program(tbl, notify=("sendto", "sendmsg"))
    assert verdict(prog, tbl, "sendto", 3, 0x1000, 10, 0, 0, 0) == RET_ALLOW
    assert verdict(prog, tbl, "sendto", 3, 0x1000, 10, 0, 0x1000, 16) == RET_NOTIF
    # A destination above 4 GiB (only the high word set) is still seen.
    assert verdict(prog, tbl, "sendto", 3, 0x1000, 10, 0, 1 << 40, 16) == RET_NOTIF
    # TCP Fast Open would connect past the checks: refused outright.
    assert verdict(prog, tbl, "sendto", 3, 0x1000, 10, MSG_FASTOPEN, 0, 0) == EPERM
    assert verdict(prog, tbl, "sendmsg", 3, 0x1000, MSG_FASTOPEN) == EPERM
    assert verdict(prog, tbl, "sendmsg", 3, 0x1000, 0) == RET_NOTIF


def test_extra_deny_wins_over_argument_blocks(tbl):
    # Argument blocks run before the dispatch; a denied syscall's block
    # (clone's thread fast path, sendto's NULL-address path, the pid-scope
    # blocks) must not answer first.
    policy = Policy(extra_deny_syscalls=("clone", "sendto", "setpriority", "sched_getaffinity"))
    prog = compile_program(tbl, policy)
    eperm = bpf.RET_ERRNO | errno.EPERM
    assert verdict(prog, tbl, "clone", 0x00010000 | 0x00000800 | 0x00000100) == eperm  # a thread
    assert verdict(prog, tbl, "sendto", 3, 0, 1, 0, 0, 0) == eperm                      # no address
    assert verdict(prog, tbl, "setpriority", 0, 4242, 5) == eperm                     # another pid
    assert verdict(prog, tbl, "sched_getaffinity", 0, 128, 0) == eperm                # self form
