"""A small classic-BPF assembler for seccomp filters.

A program is a list of instructions whose jump targets are labels; `assemble`
resolves them to the relative offsets cBPF wants, checking that each
conditional offset fits in 8 bits and the program in 4096 instructions.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..exceptions import SeccompError

# Instruction classes and modes (linux/bpf_common.h).
LD, JMP, RET, ALU = 0x00, 0x05, 0x06, 0x04
W, ABS, K = 0x00, 0x20, 0x00
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
AND = 0x50

# seccomp return actions (linux/seccomp.h).
RET_KILL_PROCESS = 0x80000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_ALLOW = 0x7FFF0000
RET_DATA = 0x0000FFFF

# Offsets into struct seccomp_data.
OFF_NR = 0
OFF_ARCH = 4
OFF_ARGS = 16

MAX_INSNS = 4096
MAX_COND_JUMP = 255


def arg_low(i: int) -> int:
    """Offset of the low 32 bits of argument i (little-endian machines)."""
    return OFF_ARGS + 8 * i


def arg_high(i: int) -> int:
    """Offset of the high 32 bits of argument i (little-endian machines)."""
    return OFF_ARGS + 8 * i + 4


@dataclass(frozen=True)
class Insn:
    code: int
    k: int = 0
    jt: str | None = None   # label, or None for "next instruction"
    jf: str | None = None
    label: str | None = None  # label naming this instruction (set via Label)


@dataclass(frozen=True)
class Label:
    name: str


def ld_abs(off: int) -> Insn:
    return Insn(LD | W | ABS, off)


def jeq(k: int, jt: str | None = None, jf: str | None = None) -> Insn:
    return Insn(JMP | JEQ | K, k, jt, jf)


def jge(k: int, jt: str | None = None, jf: str | None = None) -> Insn:
    return Insn(JMP | JGE | K, k, jt, jf)


def jset(k: int, jt: str | None = None, jf: str | None = None) -> Insn:
    return Insn(JMP | JSET | K, k, jt, jf)


def ja(target: str) -> Insn:
    return Insn(JMP | JA, 0, target)


def and_k(k: int) -> Insn:
    return Insn(ALU | AND | K, k)


def ret(k: int) -> Insn:
    return Insn(RET | K, k)


def assemble(items: list) -> list[tuple[int, int, int, int]]:
    """Resolve labels; return (code, jt, jf, k) tuples."""
    labels: dict[str, int] = {}
    insns: list[Insn] = []
    for item in items:
        if isinstance(item, Label):
            if item.name in labels:
                raise SeccompError(f"BPF label defined twice: {item.name}")
            labels[item.name] = len(insns)
        else:
            insns.append(item)
    if len(insns) > MAX_INSNS:
        raise SeccompError(f"BPF program has {len(insns)} instructions, the kernel allows {MAX_INSNS}")

    def offset(pc: int, target: str | None, limit: int) -> int:
        if target is None:
            return 0
        if target not in labels:
            raise SeccompError(f"BPF jump to undefined label {target}")
        off = labels[target] - pc - 1
        if off < 0:
            raise SeccompError(f"BPF backward jump to {target} at {pc}")
        if off > limit:
            raise SeccompError(f"BPF jump from {pc} to {target} is {off} instructions, over {limit}")
        return off

    out = []
    for pc, insn in enumerate(insns):
        if insn.code == JMP | JA:
            out.append((insn.code, 0, 0, offset(pc, insn.jt, 0xFFFFFFFF)))
        elif insn.code & 0x07 == JMP:
            out.append((insn.code, offset(pc, insn.jt, MAX_COND_JUMP),
                        offset(pc, insn.jf, MAX_COND_JUMP), insn.k))
        else:
            out.append((insn.code, 0, 0, insn.k))
    return out


def encode(program: list[tuple[int, int, int, int]]) -> bytes:
    """struct sock_filter[]: u16 code, u8 jt, u8 jf, u32 k."""
    return b"".join(struct.pack("=HBBI", c, jt, jf, k & 0xFFFFFFFF) for c, jt, jf, k in program)
