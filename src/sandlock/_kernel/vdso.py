"""The vDSO's dynamic symbol names: where they are, and a copy with some
of them spoiled so that no symbol lookup finds those functions.

Every process of an architecture maps the same vDSO image (at a different
address), so the supervisor finds the names in its own vDSO once, and
compares a child's bytes with them before changing anything.
"""
from __future__ import annotations

import ctypes
import struct

from .libc import libc

AT_SYSINFO_EHDR = 33
PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_HASH, DT_STRTAB, DT_SYMTAB, DT_STRSZ, DT_SYMENT = 0, 4, 5, 6, 10, 11
# Prefixes the kernel gives its vDSO functions (x86_64, arm64 and others),
# and the bare aliases x86_64 exports too.
_PREFIXES = (b"__vdso_", b"__kernel_", b"")
SPOILED = b"!"  # no C identifier starts with it


class VdsoError(Exception):
    pass


def own_image() -> tuple[int, bytes] | None:
    """(address, bytes) of this process's vDSO; None if it has none."""
    getauxval = libc.getauxval
    getauxval.restype = ctypes.c_ulong
    getauxval.argtypes = [ctypes.c_ulong]
    base = getauxval(AT_SYSINFO_EHDR)
    if not base:
        return None
    head = ctypes.string_at(base, 64)
    return base, ctypes.string_at(base, image_size(head, lambda off, n: ctypes.string_at(base + off, n)))


def image_size(head: bytes, read) -> int:
    """The extent of the image's loaded segments, from its program headers."""
    if head[:4] != b"\x7fELF" or head[4] != 2:
        raise VdsoError("not a 64-bit ELF image")
    phoff, = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    end = 0
    for i in range(min(phnum, 64)):
        p_type, _f, _off, vaddr, _pa, _fsz, memsz = struct.unpack_from(
            "<IIQQQQQ", read(phoff + i * phentsize, 56))
        if p_type == PT_LOAD:
            end = max(end, vaddr + memsz)
    if not 0 < end <= 1 << 20:
        raise VdsoError("no loadable segment of a sensible size")
    return end


def names_table(image: bytes) -> tuple[int, int, list[tuple[int, bytes]]]:
    """(string table offset, its size, [(name offset in the table, name)])
    of the image's dynamic symbols (the image is linked at address 0)."""
    phoff, = struct.unpack_from("<Q", image, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    dyn = None
    for i in range(phnum):
        p_type, _f, off, _va, _pa, filesz, _msz = struct.unpack_from("<IIQQQQQ", image, phoff + i * phentsize)
        if p_type == PT_DYNAMIC:
            dyn = (off, filesz)
    if dyn is None:
        raise VdsoError("no dynamic section")
    tags: dict[int, int] = {}
    for off in range(dyn[0], dyn[0] + dyn[1] - 15, 16):
        tag, val = struct.unpack_from("<qQ", image, off)
        if tag == DT_NULL:
            break
        tags.setdefault(tag, val)
    try:
        strtab, strsz, symtab = tags[DT_STRTAB], tags[DT_STRSZ], tags[DT_SYMTAB]
    except KeyError:
        raise VdsoError("no symbol or string table") from None
    syment = tags.get(DT_SYMENT, 24)
    if DT_HASH in tags:
        count = struct.unpack_from("<I", image, tags[DT_HASH] + 4)[0]
    elif strtab > symtab:
        count = (strtab - symtab) // syment
    else:
        raise VdsoError("cannot count the symbols")
    names = []
    for i in range(count):
        st_name, = struct.unpack_from("<I", image, symtab + i * syment)
        if st_name >= strsz:
            continue
        end = image.index(b"\0", strtab + st_name)
        names.append((st_name, image[strtab + st_name:end]))
    return strtab, strsz, names


def spoiled_strings(image: bytes, functions: set[bytes]) -> tuple[int, bytes, bytes]:
    """(string table offset, original table, table with the names of
    `functions` — any prefix — spoiled). The first byte of each such name
    is replaced, which also spoils a name sharing its tail."""
    strtab, strsz, names = names_table(image)
    table = bytearray(image[strtab:strtab + strsz])
    for off, name in names:
        for prefix in _PREFIXES:
            if name.startswith(prefix) and name[len(prefix):] in functions:
                table[off] = SPOILED[0]
    return strtab, bytes(image[strtab:strtab + strsz]), bytes(table)


def find_symbol(image: bytes, name: bytes) -> bool:
    """Whether a lookup of `name` in this image would succeed."""
    return any(n == name for _o, n in names_table(image)[2])


def vdso_base(auxv: bytes) -> int:
    """AT_SYSINFO_EHDR from a /proc/<pid>/auxv dump (0: no vDSO)."""
    for off in range(0, len(auxv) - 15, 16):
        kind, val = struct.unpack_from("<QQ", auxv, off)
        if kind == AT_SYSINFO_EHDR:
            return val
        if kind == 0:
            break
    return 0
