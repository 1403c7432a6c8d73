"""Hide the vDSO's clock and random functions from a new program.

No code is patched into the child. A freshly exec'd glibc program's first
call is brk(NULL) (the dynamic loader's, or a static program's start),
made before it looks up the vDSO's functions by name; a Go program's is
arch_prctl(ARCH_SET_FS) (x86_64), made before its runtime parses the vDSO.
On those calls (the filter routes only these forms, determinism.py), if the
process's vDSO still holds the original names, the names of the
functions the run controls are spoiled in its dynamic string table (data,
through /proc/<pid>/mem: the vDSO is mapped read-only, the write makes the
process's own copy of the page). The lookups then fail and libc falls back
to the real syscalls, which the supervisor answers (clock.py, random.py).

Not covered: a program that calls the vDSO at an address it computed
without a symbol lookup, or looks it up before any brk(NULL); fork()ed
children share their parent's already hidden copy.
"""
from __future__ import annotations

from .._kernel import memory
from .._kernel import vdso as _vdso

TIME_FUNCTIONS = {b"clock_gettime", b"clock_gettime64", b"gettimeofday", b"time"}
RANDOM_FUNCTIONS = {b"getrandom"}


class VdsoHider:
    def __init__(self, time: bool, random: bool):
        functions = (TIME_FUNCTIONS if time else set()) | (RANDOM_FUNCTIONS if random else set())
        own = _vdso.own_image()
        self.table = None
        if own is not None:
            strtab, original, spoiled = _vdso.spoiled_strings(own[1], functions)
            self.table = (strtab, original, spoiled)

    def on_new_image(self, ctx):
        """brk(NULL) or arch_prctl(ARCH_SET_FS) (the filter sends no other
        form). Never answers the call itself: None (the call goes on), or
        an error when the functions could not be hidden (the program must
        not run with the real clock or random source)."""
        if self.table is None:
            return None
        strtab, original, spoiled = self.table
        with open(f"/proc/{ctx.pid}/auxv", "rb") as f:
            base = _vdso.vdso_base(f.read())
        if not base:
            return None  # no vDSO (vdso=0): libc makes the syscalls anyway
        current = memory.read(ctx.pid, base + strtab, len(original))
        if current != original:
            return None  # already hidden (or not the image we know): leave it
        if memory.write(ctx.pid, base + strtab, spoiled, lambda: ctx_valid(ctx)) != len(spoiled):
            raise OSError("short write of the vDSO's names")
        return None


def ctx_valid(ctx) -> bool:
    valid = ctx._valid
    return bool(valid is not None and valid(ctx.id))
