"""The fixed layout of sandlock's seccomp program.

    load arch; JEQ AUDIT_ARCH else KILL          (foreign arch, e.g. int 0x80)
    load nr;   JGE X32_SYSCALL_BIT -> KILL        (x86_64 only)
    argument filters, one block per syscall:     (clone flags, ioctl cmd, ...)
        load nr; JEQ nr else skip; <body with its own returns>; skip:
    load nr
    one JEQ per notified syscall -> USER_NOTIF
    one JEQ per denied syscall   -> ERRNO(errno)
    RET ALLOW; RET USER_NOTIF; RET ERRNO(...) for each errno used; RET KILL_PROCESS

A syscall on both the notify and the deny list is refused: the first JEQ
would win and silently skip the deny. When the JEQs would need a jump over
255 instructions, they are split into chunks each followed by its own copy of
the returns (a long unconditional jump skips those).
"""
from __future__ import annotations

import errno as _errno
from dataclasses import dataclass, field

from ..exceptions import SeccompError
from . import bpf

CHUNK = 200


@dataclass(frozen=True)
class ArgBlock:
    """A block run only for syscall `nr`. Its body may return (deny) or fall
    through to the label given as `skip` (continue with the dispatch)."""
    nr: int
    body: tuple = field(default_factory=tuple)


def build(audit_arch: int, x32_bit: int, arg_blocks: list[ArgBlock],
          notify: list[int], deny: dict[int, int]) -> list:
    """Return the program as assembler items (instructions and labels).

    `deny` maps syscall number → errno returned.
    """
    overlap = sorted(set(notify) & set(deny))
    if overlap:
        raise SeccompError(f"syscalls both notified and denied: {overlap}")
    for nr in list(notify) + list(deny):
        if nr < 0 or (x32_bit and nr & x32_bit):
            raise SeccompError(f"invalid syscall number in filter: {nr:#x}")

    items: list = [bpf.ld_abs(bpf.OFF_ARCH), bpf.jeq(audit_arch, jf="kill_early"),
                   bpf.ld_abs(bpf.OFF_NR)]
    if x32_bit:
        items.append(bpf.jge(x32_bit, jt="kill_early", jf="args"))
    else:
        items.append(bpf.ja("args"))
    items += [bpf.Label("kill_early"), bpf.ret(bpf.RET_KILL_PROCESS), bpf.Label("args")]

    for i, block in enumerate(arg_blocks):
        skip = f"argskip{i}"
        items += [bpf.ld_abs(bpf.OFF_NR), bpf.jeq(block.nr, jf=skip)]
        items += [_relabel(x, i, skip) for x in block.body]
        items.append(bpf.Label(skip))

    decisions = [(nr, bpf.RET_USER_NOTIF) for nr in sorted(set(notify))]
    decisions += [(nr, bpf.RET_ERRNO | (deny[nr] & bpf.RET_DATA)) for nr in sorted(deny)]
    actions = [bpf.RET_ALLOW, bpf.RET_USER_NOTIF, bpf.RET_ERRNO | _errno.EPERM]
    actions += sorted({a for _, a in decisions} - set(actions))

    items.append(bpf.ld_abs(bpf.OFF_NR))
    chunks = [decisions[i:i + CHUNK] for i in range(0, len(decisions), CHUNK)] or [[]]
    for c, chunk in enumerate(chunks):
        last = c == len(chunks) - 1
        for nr, action in chunk:
            items.append(bpf.jeq(nr, jt=f"r{c}_{action:x}"))
        if last:
            items.append(bpf.ret(bpf.RET_ALLOW))
        else:
            items.append(bpf.ja(f"chunk{c + 1}"))
        for action in actions:
            if action == bpf.RET_ALLOW and last:
                continue
            items += [bpf.Label(f"r{c}_{action:x}"), bpf.ret(action)]
        if last:
            items.append(bpf.ret(bpf.RET_KILL_PROCESS))
        else:
            items.append(bpf.Label(f"chunk{c + 1}"))
    return items


def _relabel(item, i: int, skip: str):
    """Give a block's local labels a unique prefix; 'skip' means fall through."""
    def name(label):
        if label is None:
            return None
        return skip if label == "skip" else f"b{i}_{label}"
    if isinstance(item, bpf.Label):
        return bpf.Label(name(item.name))
    return bpf.Insn(item.code, item.k, name(item.jt), name(item.jf))
