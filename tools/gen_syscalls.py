#!/usr/bin/env python3
"""Generate sandlock's syscall-number tables from Linux uapi headers.

Writes ``src/sandlock/_kernel/_syscalls_x86_64.py`` and
``src/sandlock/_kernel/_syscalls_aarch64.py``.

Inputs:

* x86_64: ``asm/unistd_64.h`` -- plain ``#define __NR_name nr`` lines.
* aarch64: ``asm-generic/unistd.h`` -- arm64 uses the generic table. The file
  is run through a tiny C preprocessor (``#if``/``#ifdef``/``#define``...)
  with the macros arm64 defines, so ``__ARCH_WANT_*`` guards, 32-bit-only
  blocks and the ``__NR3264_*`` indirections resolve as they do for a 64-bit
  arm64 build.

The installed headers may predate the newest syscalls, so ``SUPPLEMENT``
below adds the ones wired up later. A supplement entry that disagrees with a
header entry (same name with another number, or same number with another
name) is a hard error.

Usage::

    python3 tools/gen_syscalls.py                 # regenerate in place
    python3 tools/gen_syscalls.py --check         # exit 1 if out of date
    python3 tools/gen_syscalls.py --outdir /tmp/x --x86-64-header ... \\
        --aarch64-header ...

Stdlib only; runs on Python 3.10+.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTDIR = REPO / "src" / "sandlock" / "_kernel"
DEFAULT_X86_64_HEADER = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
DEFAULT_GENERIC_HEADER = "/usr/include/asm-generic/unistd.h"

X32_SYSCALL_BIT = 0x40000000

# From linux/audit.h: AUDIT_ARCH_* = EM_* | __AUDIT_ARCH_64BIT (0x80000000)
# | __AUDIT_ARCH_LE (0x40000000).
AUDIT_ARCH_X86_64 = 0xC000003E  # EM_X86_64 = 62
AUDIT_ARCH_I386 = 0x40000003  # EM_386 = 3
AUDIT_ARCH_AARCH64 = 0xC00000B7  # EM_AARCH64 = 183
AUDIT_ARCH_ARM = 0x40000028  # EM_ARM = 40

# What arch/arm64/include/uapi/asm/unistd.h (<= 6.10) and
# arch/arm64/kernel/Makefile.syscalls (>= 6.11: "renameat newstat rlimit
# memfd_secret", plus clone3 in "common") select for the 64-bit ABI.
# __ARCH_WANT_TIME32_SYSCALLS is left out on purpose: in the generic header
# it only ever appears as "defined(__ARCH_WANT_TIME32_SYSCALLS) ||
# __BITS_PER_LONG != 32", which is already true on a 64-bit ABI.
AARCH64_PREDEFINED = {
    "__BITS_PER_LONG": "64",  # normally from <asm/bitsperlong.h>
    "__ARCH_WANT_RENAMEAT": "1",
    "__ARCH_WANT_NEW_STAT": "1",
    "__ARCH_WANT_SET_GET_RLIMIT": "1",
    "__ARCH_WANT_SYS_CLONE3": "1",
    "__ARCH_WANT_MEMFD_SECRET": "1",
}

# __NR_* macros in the generic header that are markers, not syscalls.
GENERIC_MARKERS = frozenset({"__NR_syscalls", "__NR_arch_specific_syscall"})

# On a 64-bit ABI each __NR3264_x must come out under exactly this name.
EXPECTED_3264 = {
    "__NR3264_fcntl": "fcntl",
    "__NR3264_lseek": "lseek",
    "__NR3264_fstatat": "newfstatat",
    "__NR3264_fstat": "fstat",
    "__NR3264_statfs": "statfs",
    "__NR3264_fstatfs": "fstatfs",
    "__NR3264_truncate": "truncate",
    "__NR3264_ftruncate": "ftruncate",
    "__NR3264_sendfile": "sendfile",
    "__NR3264_mmap": "mmap",
    "__NR3264_fadvise64": "fadvise64",
}

# Names that only exist on 32-bit (or compat) generic ABIs. Seeing one in the
# aarch64 table means the preprocessing went wrong.
GENERIC_32BIT_ONLY = frozenset({
    "fcntl64", "llseek", "fstatat64", "fstat64", "statfs64", "fstatfs64",
    "truncate64", "ftruncate64", "sendfile64", "mmap2", "fadvise64_64",
    "stat64", "lstat64",
})

BOTH = ("x86_64", "aarch64")
X86_64 = ("x86_64",)

# Syscalls wired up after the installed (Linux 6.1) headers. Columns: name,
# number, arches, first release. The comment names the kernel file(s) each
# number was checked against, and the release that added it:
#   syscall_64.tbl  arch/x86/entry/syscalls/syscall_64.tbl (x86_64)
#   unistd.h        include/uapi/asm-generic/unistd.h (aarch64; same numbers
#                   as scripts/syscall.tbl, which arm64 builds from since 6.11)
SUPPLEMENT: tuple[tuple[str, int, tuple[str, ...], str], ...] = (
    ("uretprobe", 335, X86_64, "6.11"),  # syscall_64.tbl only; v6.11
    ("uprobe", 336, X86_64, "6.18"),  # syscall_64.tbl only; v6.18
    ("cachestat", 451, BOTH, "6.5"),  # syscall_64.tbl, unistd.h; v6.5
    ("fchmodat2", 452, BOTH, "6.6"),  # syscall_64.tbl, unistd.h; v6.6
    # map_shadow_stack is "common" in the generic table as well: number
    # reserved for every arch in 6.6, implemented for arm64 GCS in 6.13.
    ("map_shadow_stack", 453, BOTH, "6.6"),  # syscall_64.tbl, unistd.h; v6.6
    ("futex_wake", 454, BOTH, "6.7"),  # syscall_64.tbl, unistd.h; v6.7
    ("futex_wait", 455, BOTH, "6.7"),  # syscall_64.tbl, unistd.h; v6.7
    ("futex_requeue", 456, BOTH, "6.7"),  # syscall_64.tbl, unistd.h; v6.7
    ("statmount", 457, BOTH, "6.8"),  # syscall_64.tbl, unistd.h; v6.8
    ("listmount", 458, BOTH, "6.8"),  # syscall_64.tbl, unistd.h; v6.8
    ("lsm_get_self_attr", 459, BOTH, "6.8"),  # syscall_64.tbl, unistd.h; v6.8
    ("lsm_set_self_attr", 460, BOTH, "6.8"),  # syscall_64.tbl, unistd.h; v6.8
    ("lsm_list_modules", 461, BOTH, "6.8"),  # syscall_64.tbl, unistd.h; v6.8
    ("mseal", 462, BOTH, "6.10"),  # syscall_64.tbl, unistd.h; v6.10
    ("setxattrat", 463, BOTH, "6.13"),  # syscall_64.tbl, unistd.h; v6.13
    ("getxattrat", 464, BOTH, "6.13"),  # syscall_64.tbl, unistd.h; v6.13
    ("listxattrat", 465, BOTH, "6.13"),  # syscall_64.tbl, unistd.h; v6.13
    ("removexattrat", 466, BOTH, "6.13"),  # syscall_64.tbl, unistd.h; v6.13
    ("open_tree_attr", 467, BOTH, "6.15"),  # syscall_64.tbl, unistd.h; v6.15
    ("file_getattr", 468, BOTH, "6.17"),  # syscall_64.tbl, unistd.h; v6.17
    ("file_setattr", 469, BOTH, "6.17"),  # syscall_64.tbl, unistd.h; v6.17
    ("listns", 470, BOTH, "6.19"),  # syscall_64.tbl, unistd.h; v6.19
)

SOURCE_FILE = {
    "x86_64": "arch/x86/entry/syscalls/syscall_64.tbl",
    "aarch64": "include/uapi/asm-generic/unistd.h",
}


class GenError(Exception):
    """Bad input; reported on stderr with exit status 1."""


# --------------------------------------------------------------------------
# A minimal C preprocessor: enough for the uapi unistd headers.

_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<num>0[xX][0-9a-fA-F]+|\d+)[uUlL]*"
    r"|(?P<ident>[A-Za-z_]\w*)"
    r"|(?P<op>\|\||&&|==|!=|<=|>=|<<|>>|[-+*/%()<>!~&|^])"
    r")"
)

_BINARY = {
    "||": 1, "&&": 2, "|": 3, "^": 4, "&": 5, "==": 6, "!=": 6,
    "<": 7, ">": 7, "<=": 7, ">=": 7, "<<": 8, ">>": 8,
    "+": 9, "-": 9, "*": 10, "/": 10, "%": 10,
}


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise GenError(f"cannot parse expression {text!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


class _Expr:
    """Evaluates one #if / macro-body expression over a macro table."""

    def __init__(self, text, macros, strict, seen=frozenset()):
        self.toks = _tokenize(text)
        self.i = 0
        self.macros = macros
        self.strict = strict  # undefined identifiers are errors, not 0
        self.seen = seen  # guards against self-referential macros
        self.text = text

    def value(self) -> int:
        v = self._binary(1)
        if self.i != len(self.toks):
            raise GenError(f"trailing tokens in {self.text!r}")
        return v

    def _next(self):
        if self.i >= len(self.toks):
            raise GenError(f"unexpected end of {self.text!r}")
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def _peek_op(self):
        if self.i < len(self.toks) and self.toks[self.i][0] == "op":
            return self.toks[self.i][1]
        return None

    def _binary(self, min_prec: int) -> int:
        left = self._unary()
        while (op := self._peek_op()) in _BINARY and _BINARY[op] >= min_prec:
            self.i += 1
            right = self._binary(_BINARY[op] + 1)
            left = _apply(op, left, right, self.text)
        return left

    def _unary(self) -> int:
        op = self._peek_op()
        if op in ("!", "~", "-", "+"):
            self.i += 1
            v = self._unary()
            return {"!": int(not v), "~": ~v, "-": -v, "+": v}[op]
        return self._primary()

    def _primary(self) -> int:
        kind, val = self._next()
        if kind == "num":
            return int(val, 0)
        if kind == "op" and val == "(":
            v = self._binary(1)
            if self._next() != ("op", ")"):
                raise GenError(f"missing ')' in {self.text!r}")
            return v
        if kind == "ident" and val == "defined":
            paren = self._peek_op() == "("
            if paren:
                self.i += 1
            kind, name = self._next()
            if kind != "ident":
                raise GenError(f"bad defined() in {self.text!r}")
            if paren and self._next() != ("op", ")"):
                raise GenError(f"missing ')' in {self.text!r}")
            return int(name in self.macros)
        if kind == "ident":
            macro = self.macros.get(val)
            if macro is None or macro[0] is not None or val in self.seen:
                if self.strict:
                    raise GenError(f"{val} is not a defined object-like macro")
                return 0
            return _Expr(macro[1], self.macros, self.strict,
                         self.seen | {val}).value()
        raise GenError(f"unexpected {val!r} in {self.text!r}")


def _apply(op: str, a: int, b: int, text: str) -> int:
    if op in ("/", "%") and b == 0:
        raise GenError(f"division by zero in {text!r}")
    return {
        "||": lambda: int(bool(a) or bool(b)),
        "&&": lambda: int(bool(a) and bool(b)),
        "|": lambda: a | b, "^": lambda: a ^ b, "&": lambda: a & b,
        "==": lambda: int(a == b), "!=": lambda: int(a != b),
        "<": lambda: int(a < b), ">": lambda: int(a > b),
        "<=": lambda: int(a <= b), ">=": lambda: int(a >= b),
        "<<": lambda: a << b, ">>": lambda: a >> b,
        "+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
        "/": lambda: int(a / b), "%": lambda: a - b * int(a / b),
    }[op]()


def evaluate(text: str, macros: dict, strict: bool = False) -> int:
    return _Expr(text, macros, strict).value()


def _strip_comments(text: str) -> str:
    # Keep the newlines inside block comments so line numbers stay right.
    text = re.sub(r"/\*.*?\*/", lambda m: " " + "\n" * m.group().count("\n"),
                  text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def preprocess(text: str, predefined: dict[str, str], where: str) -> dict:
    """Run the directives of ``text``; return {name: (params|None, body)}."""
    # Splice backslash-continued lines; keep the first line's number.
    lines: list[tuple[int, str]] = []
    pending = None
    for lineno, line in enumerate(_strip_comments(text).split("\n"), 1):
        if pending is not None:
            line = pending[1] + " " + line
            lineno = pending[0]
        if line.rstrip().endswith("\\"):
            pending = (lineno, line.rstrip()[:-1])
            continue
        pending = None
        lines.append((lineno, line))
    macros: dict[str, tuple[str | None, str]] = {
        k: (None, v) for k, v in predefined.items()}
    stack: list[list[bool]] = []  # [parent_active, branch_taken]
    active = True
    for lineno, line in lines:
        m = re.match(r"\s*#\s*(\w+)\s*(.*)$", line)
        if not m:
            continue
        directive, rest = m.group(1), m.group(2).strip()
        try:
            if directive in ("if", "ifdef", "ifndef"):
                cond = False
                if active:
                    if directive == "if":
                        cond = bool(evaluate(rest, macros))
                    else:
                        defined = rest.split()[0] in macros
                        cond = defined == (directive == "ifdef")
                stack.append([active, cond])
                active = active and cond
            elif directive == "elif":
                parent, taken = stack[-1]
                cond = parent and not taken and bool(evaluate(rest, macros))
                stack[-1][1] = taken or cond
                active = cond
            elif directive == "else":
                parent, taken = stack[-1]
                active = parent and not taken
                stack[-1][1] = True
            elif directive == "endif":
                active = stack.pop()[0]
            elif not active:
                continue
            elif directive == "define":
                dm = re.match(r"([A-Za-z_]\w*)(\(([^)]*)\))?\s*(.*)$", rest)
                if not dm:
                    raise GenError(f"bad #define {rest!r}")
                macros[dm.group(1)] = (dm.group(3) if dm.group(2) else None,
                                       dm.group(4).strip())
            elif directive == "undef":
                macros.pop(rest.split()[0], None)
            elif directive == "include":
                # <asm/bitsperlong.h> only supplies __BITS_PER_LONG, which is
                # predefined; anything else would be silently missed.
                if rest != "<asm/bitsperlong.h>":
                    raise GenError(f"unexpected #include {rest}")
            elif directive == "error":
                raise GenError(f"#error {rest}")
            else:
                raise GenError(f"unsupported directive #{directive}")
        except (GenError, IndexError) as exc:
            msg = (str(exc) if isinstance(exc, GenError)
                   else f"malformed or unbalanced #{directive}")
            raise GenError(f"{where}:{lineno}: {msg}") from None
    if stack:
        raise GenError(f"{where}: unterminated #if")
    return macros


def syscalls_from_macros(macros: dict, markers=frozenset()) -> dict[str, int]:
    table = {}
    for name, (params, body) in macros.items():
        if (not name.startswith("__NR_") or params is not None
                or name in markers):
            continue
        table[name[len("__NR_"):]] = evaluate(body, macros, strict=True)
    return table


# --------------------------------------------------------------------------
# Per-architecture tables.

def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise GenError(f"cannot read header {path}: {exc.strerror}") from None


def _check_unique(arch: str, table: dict[str, int]) -> None:
    by_nr: dict[int, str] = {}
    for name, nr in table.items():
        if not 0 <= nr < X32_SYSCALL_BIT:
            raise GenError(f"{arch}: {name} has out-of-range number {nr:#x}")
        if nr in by_nr:
            raise GenError(f"{arch}: {by_nr[nr]} and {name} share number {nr}")
        by_nr[nr] = name


def x86_64_from_header(path: str) -> dict[str, int]:
    table = syscalls_from_macros(preprocess(_read(path), {}, path))
    if not table:
        raise GenError(f"{path}: no __NR_ definitions found")
    _check_unique("x86_64", table)
    return table


def aarch64_from_header(path: str) -> dict[str, int]:
    macros = preprocess(_read(path), AARCH64_PREDEFINED, path)
    table = syscalls_from_macros(macros, GENERIC_MARKERS)
    if not table:
        raise GenError(f"{path}: no __NR_ definitions found")
    for macro, want in EXPECTED_3264.items():
        if macro not in macros:
            raise GenError(f"{path}: {macro} is missing")
        nr = evaluate(macro, macros, strict=True)
        if table.get(want) != nr:
            raise GenError(f"{path}: {macro} ({nr}) did not resolve to {want}")
    others = sorted(m for m in macros
                    if m.startswith("__NR3264_") and m not in EXPECTED_3264)
    if others:
        raise GenError(f"{path}: unexpected 32/64 indirections {others}")
    bad = sorted(n for n in table
                 if n in GENERIC_32BIT_ONLY or n.endswith("_time64"))
    if bad:
        raise GenError(f"{path}: 32-bit-only syscalls leaked in: {bad}")
    _check_unique("aarch64", table)
    return table


def merge_supplement(arch: str, header: dict[str, int]) -> dict[str, int]:
    """Header table plus SUPPLEMENT; raises GenError on any disagreement."""
    table = dict(header)
    by_nr = {nr: name for name, nr in header.items()}
    conflicts = []
    for name, nr, arches, since in SUPPLEMENT:
        if arch not in arches:
            continue
        if name in header and header[name] != nr:
            conflicts.append(f"{name}: supplement says {nr} (Linux {since}), "
                             f"header says {header[name]}")
        elif nr in by_nr and by_nr[nr] != name:
            conflicts.append(f"{name}: supplement number {nr} (Linux {since}) "
                             f"is {by_nr[nr]} in the header")
        else:
            table[name] = nr
    if conflicts:
        raise GenError(f"{arch}: supplement conflicts with the header:\n  "
                       + "\n  ".join(conflicts))
    _check_unique(arch, table)
    return table


# --------------------------------------------------------------------------
# Output.

_ARCH_META = {
    "x86_64": {
        "header": "<asm/unistd_64.h>",
        "consts": [
            ("AUDIT_ARCH", AUDIT_ARCH_X86_64, "AUDIT_ARCH_X86_64"),
            ("AUDIT_ARCH_I386", AUDIT_ARCH_I386, "i386 via int 0x80: reject"),
            ("X32_SYSCALL_BIT", X32_SYSCALL_BIT, "set in x32 nrs: reject"),
        ],
    },
    "aarch64": {
        "header": "<asm-generic/unistd.h> (arm64 64-bit)",
        "consts": [
            ("AUDIT_ARCH", AUDIT_ARCH_AARCH64, "AUDIT_ARCH_AARCH64"),
            ("AUDIT_ARCH_ARM", AUDIT_ARCH_ARM, "32-bit compat tasks: reject"),
            ("X32_SYSCALL_BIT", 0, "no x32-style ABI on aarch64"),
        ],
    },
}


DEFAULT_VERSION_HEADER = "/usr/include/linux/version.h"


def header_version(path: str = DEFAULT_VERSION_HEADER) -> str:
    """The kernel version of the installed uapi headers ("6.1"), read from
    linux/version.h; major.minor only (a stable update adds no syscall)."""
    fields = {}
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "#define":
                    fields[parts[1]] = parts[2]
    except OSError:
        return "unknown"
    major, minor = fields.get("LINUX_VERSION_MAJOR"), fields.get("LINUX_VERSION_PATCHLEVEL")
    if major is None or minor is None:
        code = int(fields.get("LINUX_VERSION_CODE", "0"))
        major, minor = str(code >> 16), str((code >> 8) & 0xFF)
    return f"{major}.{minor}"


def render(arch: str, table: dict[str, int], version: str = "unknown") -> str:
    meta = _ARCH_META[arch]
    since = {name: ver for name, _nr, arches, ver in SUPPLEMENT
             if arch in arches}
    out = [
        "# Generated by tools/gen_syscalls.py, do not edit.",
        f"# Source: {meta['header']} from the installed kernel headers",
        f"# (Linux {version}, per linux/version.h),",
        "# plus the supplement of newer syscalls in tools/gen_syscalls.py.",
        f'"""System call numbers for {arch} (generated)."""',
        "",
    ]
    for name, value, note in meta["consts"]:
        literal = f"0x{value:08X}" if value else "0"
        out.append(f"{name}: int = {literal}  # {note}")
    out += ["", "SYSCALLS: dict[str, int] = {"]
    for name, nr in sorted(table.items(), key=lambda kv: kv[1]):
        line = f'    "{name}": {nr},'
        if name in since:
            line += f"  # Linux {since[name]}, {SOURCE_FILE[arch]}"
        out.append(line)
    out += ["}", ""]
    return "\n".join(out)


def build(x86_64_header: str, aarch64_header: str,
          version_header: str = DEFAULT_VERSION_HEADER) -> dict[str, str]:
    """Return {file name: contents} for both tables."""
    tables = {
        "x86_64": merge_supplement(
            "x86_64", x86_64_from_header(x86_64_header)),
        "aarch64": merge_supplement(
            "aarch64", aarch64_from_header(aarch64_header)),
    }
    version = header_version(version_header)
    return {f"_syscalls_{arch}.py": render(arch, table, version)
            for arch, table in tables.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--x86-64-header", default=DEFAULT_X86_64_HEADER,
                    help="x86_64 asm/unistd_64.h (default: %(default)s)")
    ap.add_argument("--aarch64-header", default=DEFAULT_GENERIC_HEADER,
                    help="asm-generic/unistd.h used for aarch64 "
                         "(default: %(default)s)")
    ap.add_argument("--version-header", default=DEFAULT_VERSION_HEADER,
                    help="linux/version.h of the same headers (default: %(default)s)")
    ap.add_argument("--outdir", default=str(DEFAULT_OUTDIR),
                    help="directory to write the table modules to "
                         "(default: %(default)s)")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if the files in --outdir "
                         "differ from what would be generated")
    args = ap.parse_args(argv)
    try:
        files = build(args.x86_64_header, args.aarch64_header, args.version_header)
    except GenError as exc:
        print(f"gen_syscalls: error: {exc}", file=sys.stderr)
        return 1
    outdir = Path(args.outdir)
    if not args.check:
        outdir.mkdir(parents=True, exist_ok=True)
    stale = []
    for fname, text in files.items():
        path = outdir / fname
        if args.check:
            try:
                current = path.read_text(encoding="utf-8")
            except OSError:
                current = None
            if current != text:
                stale.append(str(path))
        else:
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
    if stale:
        print("gen_syscalls: out of date: " + ", ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
