"""Deterministic runs: random_seed, time_start, deterministic_dirs.

Real sandboxed processes on the real kernel; timing bounds are loose
(a sleep must still sleep, never a speed assertion).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap

import pytest

from sandlock import PolicyError, Sandbox

Y2000 = 946684800  # 2000-01-01T00:00:00Z
DETERMINISTIC = dict(random_seed=42, time_start="2000-01-01T00:00:00Z", deterministic_dirs=True)


def _run(code: str, base_readable, cwd=None, extra=(), **kw) -> bytes:
    sb = Sandbox(fs_readable=[*base_readable, *extra], cwd=cwd, **kw)
    r = sb.run([sys.executable, "-I", "-S", "-c", textwrap.dedent(code)], timeout=60)
    assert r.exit_code == 0, (r, r.stdout[-2000:], r.stderr[-3000:])
    return r.stdout


def _json(code: str, base_readable, **kw) -> dict:
    out = _run(PRELUDE + textwrap.dedent(code) + "\nprint(json.dumps(OUT))\n", base_readable, **kw)
    return json.loads(out.decode().splitlines()[-1])


PRELUDE = """
import ctypes, ctypes.util, errno, json, os, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
OUT = {}
"""

# -- the whole run, twice ------------------------------------------------------------

SAME_RUN = "import os,random,time; print(os.urandom(16).hex(), random.random(), int(time.time()), os.listdir('.'))"


@pytest.fixture
def listed_dir(world_dir):
    for name in ("zeta", "alpha", "Mid", "beta.txt", "_under", "0digit"):
        with open(os.path.join(world_dir, name), "w") as f:
            f.write("x")
    os.mkdir(os.path.join(world_dir, "dir"))
    return world_dir


def test_same_settings_same_output(base_readable, listed_dir):
    kw = dict(cwd=listed_dir, extra=[listed_dir], **DETERMINISTIC)
    first = _run(SAME_RUN, base_readable, **kw)
    second = _run(SAME_RUN, base_readable, **kw)
    assert first == second
    fields = first.decode().split(" ", 3)
    assert int(fields[2]) in (Y2000, Y2000 + 1, Y2000 + 2)
    assert fields[3].strip() == repr(sorted(os.listdir(listed_dir), key=os.fsencode))
    other = _run(SAME_RUN, base_readable, **{**kw, "random_seed": 43})
    assert other.split()[:2] != first.split()[:2]
    assert other.split(b" ", 3)[3] == first.split(b" ", 3)[3]


def test_unseeded_runs_differ(base_readable):
    code = "import os; print(os.urandom(16).hex())"
    assert _run(code, base_readable) != _run(code, base_readable)


def test_processes_get_their_own_streams(base_readable):
    code = """
    import os
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, os.urandom(8).hex().encode()); os._exit(0)
    os.waitpid(pid, 0)
    print(os.urandom(8).hex(), os.read(r, 64).decode())
    """
    a = _run(code, base_readable, random_seed=5)
    b = _run(code, base_readable, random_seed=5)
    assert a == b
    mine, childs = a.split()
    assert mine != childs


# -- time_start ----------------------------------------------------------------------

def test_raw_syscalls_shifted_monotonic_not(base_readable):
    out = _json("""
    ts = (ctypes.c_int64 * 2)()
    NR = {"clock_gettime": 228, "gettimeofday": 96, "time": 201} if os.uname().machine == "x86_64" \\
        else {"clock_gettime": 113, "gettimeofday": 169}
    for clock in (0, 5, 11):
        assert libc.syscall(NR["clock_gettime"], clock, ts) == 0
        OUT["clock%d" % clock] = ts[0]
    assert libc.syscall(NR["gettimeofday"], ts, None) == 0
    OUT["gettimeofday"] = ts[0]
    if "time" in NR:
        OUT["time"] = libc.syscall(NR["time"], None)
    assert libc.syscall(NR["clock_gettime"], 1, ts) == 0
    OUT["monotonic_raw_call"] = ts[0] + ts[1] / 1e9
    OUT["monotonic"] = time.monotonic()
    OUT["time.time"] = time.time()
    OUT["bad_buffer"] = libc.syscall(NR["clock_gettime"], 0, ctypes.c_void_p(8)) == -1 and ctypes.get_errno()
    """, base_readable, time_start=Y2000)
    for key in ("clock0", "clock5", "gettimeofday", "time", "time.time"):
        if key in out:
            assert Y2000 <= out[key] < Y2000 + 30, (key, out)
    assert Y2000 <= out["clock11"] < Y2000 + 60  # TAI: the shifted wall clock plus the kernel's TAI offset
    assert abs(out["monotonic_raw_call"] - out["monotonic"]) < 5
    assert out["bad_buffer"] == 14  # EFAULT


def test_monotonic_untouched(base_readable):
    import time
    before = time.monotonic()
    out = _json("OUT['m'] = time.monotonic()", base_readable, time_start="1990-06-01T00:00:00+02:00")
    assert before - 1 <= out["m"] <= time.monotonic() + 1


def test_date_shows_the_year(base_readable):
    r = Sandbox(fs_readable=base_readable, time_start="2000-06-15T12:00:00Z").run(["date", "+%Y"])
    assert r.stdout.strip() == b"2000", r
    r = Sandbox(fs_readable=base_readable, time_start=dt.datetime(1999, 12, 31, 23, 0)).run(["date", "-u", "+%F"])
    assert r.stdout.strip() == b"1999-12-31", r


def test_before_1970_and_fractions(base_readable):
    out = _json("OUT['t'] = time.time()", base_readable, time_start=-86400.25)
    assert -86400.25 <= out["t"] < -86400.25 + 30
    out = _json("OUT['t'] = time.time()", base_readable, time_start="2020-01-01T00:00:00.75+01:00")
    assert 1577833200.75 <= out["t"] < 1577833200.75 + 30


def test_sleeps_still_sleep(base_readable):
    out = _json("""
    class TS(ctypes.Structure):
        _fields_ = [("sec", ctypes.c_int64), ("nsec", ctypes.c_int64)]
    def abs_sleep(clock):
        now = TS(); libc.clock_gettime(clock, ctypes.byref(now))
        t = now.sec * 10**9 + now.nsec + 200_000_000
        until = TS(t // 10**9, t % 10**9)
        start = time.monotonic()
        rc = libc.clock_nanosleep(clock, 1, ctypes.byref(until), None)
        return rc, time.monotonic() - start
    start = time.monotonic(); time.sleep(0.2); OUT["sleep"] = time.monotonic() - start
    import threading
    lock = threading.Lock(); lock.acquire()
    start = time.monotonic(); lock.acquire(timeout=0.2); OUT["lock"] = time.monotonic() - start
    OUT["abs_realtime"] = abs_sleep(0)
    OUT["abs_monotonic"] = abs_sleep(1)
    OUT["abs_tai"] = abs_sleep(11)
    # A deadline already past (in the shifted clock) returns at once.
    past = TS(Y2000 - 10, 0) if False else TS(100, 0)
    start = time.monotonic(); libc.clock_nanosleep(0, 1, ctypes.byref(past), None)
    OUT["past"] = time.monotonic() - start
    """, base_readable, time_start=Y2000)
    assert 0.15 <= out["sleep"] < 5 and 0.15 <= out["lock"] < 5
    for key in ("abs_realtime", "abs_monotonic", "abs_tai"):
        rc, took = out[key]
        assert rc == 0 and 0.15 <= took < 5, (key, out)
    assert out["past"] < 1


def test_timerfd_absolute_realtime(base_readable):
    out = _json("""
    class TS(ctypes.Structure):
        _fields_ = [("sec", ctypes.c_int64), ("nsec", ctypes.c_int64)]
    class ITS(ctypes.Structure):
        _fields_ = [("interval", TS), ("value", TS)]
    def wait_abs(clock):
        fd = libc.timerfd_create(clock, 0)
        now = TS(); libc.clock_gettime(clock, ctypes.byref(now))
        t = now.sec * 10**9 + now.nsec + 200_000_000
        spec = ITS(TS(0, 0), TS(t // 10**9, t % 10**9))
        old = ITS()
        start = time.monotonic()
        assert libc.timerfd_settime(fd, 1, ctypes.byref(spec), ctypes.byref(old)) == 0, ctypes.get_errno()
        os.read(fd, 8)
        took = time.monotonic() - start
        os.close(fd)
        return took
    OUT["realtime"] = wait_abs(0)
    OUT["monotonic"] = wait_abs(1)
    """, base_readable, time_start=Y2000)
    assert 0.15 <= out["realtime"] < 5, out
    assert 0.15 <= out["monotonic"] < 5, out


# -- the vDSO ------------------------------------------------------------------------

VDSO_NAMES = """
libc.getauxval.restype = ctypes.c_ulong
base = libc.getauxval(33)
with open("/proc/self/maps") as f:
    start, end = next(l.split()[0].split("-") for l in f if "[vdso]" in l)
image = ctypes.string_at(base, int(end, 16) - int(start, 16))
names = set()
import struct as S
phoff, = S.unpack_from("<Q", image, 0x20)
phentsize, phnum = S.unpack_from("<HH", image, 0x36)
for i in range(phnum):
    t, _f, off, _v, _p, size, _m = S.unpack_from("<IIQQQQQ", image, phoff + i * phentsize)
    if t == 2:
        tags = {}
        for o in range(off, off + size, 16):
            tag, val = S.unpack_from("<qQ", image, o)
            tags.setdefault(tag, val)
        strtab, symtab = tags[5], tags[6]
        for k in range((strtab - symtab) // 24):
            st_name, = S.unpack_from("<I", image, symtab + 24 * k)
            names.add(image[strtab + st_name:image.index(b"\\0", strtab + st_name)].decode())
OUT["names"] = sorted(names)
"""


def test_vdso_functions_hidden(base_readable):
    out = _json(VDSO_NAMES, base_readable, extra=["/proc"], random_seed=1, time_start=Y2000)
    for name in ("__vdso_getrandom", "__vdso_clock_gettime", "__vdso_gettimeofday", "__vdso_time",
                 "clock_gettime", "gettimeofday", "time", "getrandom"):
        assert name not in out["names"], out
    assert "__vdso_getcpu" in out["names"]  # the others stay
    # Only what the run controls is hidden.
    out = _json(VDSO_NAMES, base_readable, extra=["/proc"], random_seed=1)
    assert "__vdso_clock_gettime" in out["names"] and "__vdso_getrandom" not in out["names"]
    out = _json(VDSO_NAMES, base_readable, extra=["/proc"])
    assert "__vdso_clock_gettime" in out["names"]


def test_vdso_hidden_after_exec_and_in_static_programs(base_readable, world_dir):
    src = os.path.join(world_dir, "t.c")
    with open(src, "w") as f:
        f.write('#include <stdio.h>\n#include <time.h>\n#include <sys/time.h>\n'
                'int main(void){struct timespec ts; struct timeval tv;'
                'clock_gettime(CLOCK_REALTIME,&ts); gettimeofday(&tv,0);'
                'printf("%ld %ld %ld\\n",(long)time(0),(long)ts.tv_sec,(long)tv.tv_sec);return 0;}')
    binary = os.path.join(world_dir, "t")
    try:
        subprocess.run(["gcc", "-O2", "-static", "-o", binary, src], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no static C toolchain")
    os.chmod(binary, 0o755)
    r = Sandbox(fs_readable=[*base_readable, world_dir], time_start=Y2000).run(
        ["sh", "-c", f"{binary}; exec {binary}"])
    lines = r.stdout.split(b"\n")[:2]
    for line in lines:
        assert all(Y2000 <= int(v) < Y2000 + 30 for v in line.split()), r


# -- random_seed ---------------------------------------------------------------------

def test_urandom_is_a_seeded_character_device(base_readable):
    code = """
    import stat
    with open("/dev/urandom", "rb") as f:
        st = os.fstat(f.fileno())
        OUT["chr"] = stat.S_ISCHR(st.st_mode)
        data = f.read(2 << 20)
        OUT["len"] = len(data)
        OUT["head"] = data[:16].hex()
        OUT["distinct"] = len(set(data[:4096]))
    fd = os.open("/dev/random", os.O_RDONLY)
    OUT["random"] = os.read(fd, 16).hex()
    os.close(fd)
    OUT["getrandom"] = os.getrandom(16).hex()
    OUT["nonblock"] = os.getrandom(8, os.GRND_NONBLOCK).hex()
    """
    a = _json(code, base_readable, random_seed=2**64 - 1)
    b = _json(code, base_readable, random_seed=2**64 - 1)
    assert a == b
    assert a["chr"] and a["len"] == 2 << 20 and a["distinct"] > 200
    assert len({a["head"], a["random"], a["getrandom"]}) == 3  # one stream per source


def test_getrandom_errors(base_readable):
    out = _json("""
    NR = 318 if os.uname().machine == "x86_64" else 278
    buf = ctypes.create_string_buffer(64)
    def call(ptr, n, flags):
        r = libc.syscall(NR, ptr, ctypes.c_size_t(n), ctypes.c_uint(flags))
        return r if r >= 0 else -ctypes.get_errno()
    OUT["ok"] = call(buf, 64, 0)
    OUT["bad_flags"] = call(buf, 8, 0x100)
    OUT["random_and_insecure"] = call(buf, 8, 6)
    OUT["bad_buffer"] = call(ctypes.c_void_p(8), 8, 0)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    ro = libc.mmap(None, 4096, 1, 0x22, -1, 0)  # PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS
    OUT["read_only"] = call(ctypes.c_void_p(ro), 8, 0)
    OUT["zero"] = call(buf, 0, 0)
    OUT["big"] = call(ctypes.create_string_buffer(4 << 20), 4 << 20, 0)
    """, base_readable, random_seed=9)
    assert out["ok"] == 64 and out["zero"] == 0
    assert out["bad_flags"] == out["random_and_insecure"] == -22  # EINVAL
    assert out["bad_buffer"] == out["read_only"] == -14  # EFAULT
    assert 0 < out["big"] <= 4 << 20


# -- deterministic_dirs ---------------------------------------------------------------

def test_listing_details(base_readable, world_dir):
    names = [b"\xff-not-utf8", b"c", b"a", b"B", b"fifo", b"link", b"sub"] + [b"n%03d" % i for i in range(60)]
    for name in names:
        path = os.path.join(os.fsencode(world_dir), name)
        if name == b"fifo":
            os.mkfifo(path)
        elif name == b"link":
            os.symlink(b"c", path)
        elif name == b"sub":
            os.mkdir(path)
        else:
            open(path, "wb").close()
    out = _json("""
    NR = 217 if os.uname().machine == "x86_64" else 61
    def raw_listing(size):
        fd = os.open(ARG, os.O_RDONLY | os.O_DIRECTORY)
        buf = ctypes.create_string_buffer(size)
        got = []
        while True:
            n = libc.syscall(NR, fd, buf, size)
            if n < 0:
                got.append(-ctypes.get_errno()); break
            if n == 0:
                break
            off = 0
            while off < n:
                ino, doff, reclen, dtype = struct.unpack_from("<QqHB", buf.raw, off)
                name = buf.raw[off + 19:off + reclen].split(b"\\0")[0]
                got.append([name.hex(), doff, dtype])
                off += reclen
        os.close(fd)
        return got
    OUT["small"] = raw_listing(40)
    OUT["big"] = raw_listing(1 << 16)
    OUT["tiny"] = raw_listing(8)
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir.restype = ctypes.c_void_p
    libc.readdir.argtypes = libc.telldir.argtypes = libc.rewinddir.argtypes = [ctypes.c_void_p]
    libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
    libc.telldir.restype = ctypes.c_long
    d = libc.opendir(ARG.encode())
    def read_all():
        out = []
        while True:
            e = libc.readdir(d)
            if not e:
                return out
            out.append(ctypes.string_at(e + 19).hex())
    first3 = [ctypes.string_at(libc.readdir(d) + 19).hex() for _ in range(3)]
    mark = libc.telldir(d)
    rest = read_all()
    libc.seekdir(d, mark)
    OUT["seek"] = read_all() == rest
    libc.rewinddir(d)
    OUT["rewind"] = read_all() == first3 + rest
    OUT["listdir"] = [n.hex() for n in os.listdir(ARG.encode())]
    """.replace("ARG", repr(world_dir)), base_readable, extra=[world_dir], deterministic_dirs=True)
    expected = sorted([b".", b".."] + names)
    assert [bytes.fromhex(e[0]) for e in out["small"]] == expected
    assert out["small"] == out["big"]
    assert [e[1] for e in out["big"]] == list(range(1, len(expected) + 1))
    types = {bytes.fromhex(n): t for n, _o, t in out["big"]}
    assert (types[b"fifo"], types[b"link"], types[b"sub"], types[b"c"]) == (1, 10, 4, 8)
    assert out["tiny"] == [-22]  # EINVAL: not even one entry fits
    assert out["seek"] and out["rewind"]
    assert [bytes.fromhex(n) for n in out["listdir"]] == sorted(names)


def test_proc_root_still_private(base_readable):
    out = _json("OUT['pids'] = sorted(int(n) for n in os.listdir('/proc') if n.isdigit())",
                base_readable, extra=["/proc"], deterministic_dirs=True)
    assert 0 < len(out["pids"]) <= 3, out  # the sandbox's own processes only


# -- policy values -------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("random_seed", -1), ("random_seed", 2**64), ("random_seed", True), ("random_seed", "1"),
    ("random_seed", 1.0), ("time_start", "yesterday"), ("time_start", True), ("time_start", ""),
    ("time_start", float("nan")), ("time_start", 10**12), ("time_start", [2000]),
    ("deterministic_dirs", 1), ("deterministic_dirs", "yes"),
])
def test_bad_values(field, value):
    with pytest.raises(PolicyError, match=field):
        Sandbox(**{field: value}).run(["true"])


@pytest.mark.parametrize("field,value", [
    ("random_seed", 0), ("time_start", "2000-01-01T00:00:00Z"), ("deterministic_dirs", True),
])
def test_no_supervisor_refused(field, value):
    with pytest.raises(PolicyError, match=f"no_supervisor: {field}"):
        Sandbox(no_supervisor=True, **{field: value}).run(["true"])


def test_no_randomize_memory_composes(base_readable):
    code = "OUT['p'] = libc.personality(0xFFFFFFFF); OUT['r'] = os.urandom(4).hex()"
    out = _json(code, base_readable, no_randomize_memory=True, **DETERMINISTIC)
    assert out["p"] & 0x0040000
    assert out == _json(code, base_readable, no_randomize_memory=True, **DETERMINISTIC)


# -- the command line ----------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sandlock", "run", *args], capture_output=True,
                          timeout=60, cwd="/tmp",
                          env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(
                              os.path.abspath(sys.modules["sandlock"].__file__)))})


def test_cli_flags(world_dir):
    for name in ("b", "a", "c"):
        open(os.path.join(world_dir, name), "w").close()
    args = ("--random-seed", "7", "--time-start", "2001-02-03T04:05:06Z", "--deterministic-dirs",
            "-r", world_dir, "--", "sh", "-c",
            f"date -u +%Y; od -An -tx1 -N8 /dev/urandom; ls -f {world_dir}")
    a, b = _cli(*args), _cli(*args)
    assert a.returncode == 0, a
    assert a.stdout == b.stdout
    lines = a.stdout.decode().split("\n")
    assert lines[0] == "2001" and lines[2:6] == [".", "..", "a", "b"]
    epoch = _cli("--time-start", "981173106.5", "--", "date", "-u", "+%F")
    assert epoch.stdout.strip() == b"2001-02-03", epoch


@pytest.mark.parametrize("args,words", [
    (("--random-seed", "-1"), b"--random-seed"),
    (("--random-seed", "x"), b"--random-seed"),
    (("--time-start", "tomorrow"), b"--time-start"),
    (("--deterministic-dirs", "--no-supervisor"), b"need the supervisor"),
])
def test_cli_refusals(args, words):
    r = _cli(*args, "--", "true")
    assert r.returncode != 0 and words in r.stderr, r


def test_profile_keys(world_dir):
    for name in ("b", "a"):
        open(os.path.join(world_dir, name), "w").close()
    profile = os.path.join(world_dir, "det.toml")
    with open(profile, "w") as f:
        f.write('[determinism]\nrandom_seed = 3\ntime_start = 1999-05-04T03:02:01\n'
                'deterministic_dirs = true\n')
    cmd = ("--profile-file", profile, "-r", world_dir, "--", "sh", "-c",
           f"date -u +%FT%T; od -An -tx1 -N4 /dev/urandom; ls -f {world_dir}")
    a, b = _cli(*cmd), _cli(*cmd)
    assert a.returncode == 0 and a.stdout == b.stdout, a
    lines = a.stdout.decode().split("\n")
    assert lines[0].startswith("1999-05-04T03:02:0") and lines[2:6] == [".", "..", "a", "b"]


def test_absolute_sleep_interrupted_by_a_caught_signal(base_readable):
    out = _json("""
    import signal
    class TS(ctypes.Structure):
        _fields_ = [("sec", ctypes.c_int64), ("nsec", ctypes.c_int64)]
    hits = [0]
    signal.signal(signal.SIGALRM, lambda *a: hits.__setitem__(0, hits[0] + 1))
    now = TS(); libc.clock_gettime(0, ctypes.byref(now))
    until = TS(now.sec + (now.nsec + 500_000_000) // 10**9, (now.nsec + 500_000_000) % 10**9)
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    start = time.monotonic()
    OUT["first"] = libc.clock_nanosleep(0, 1, ctypes.byref(until), None)
    OUT["at"] = time.monotonic() - start
    OUT["again"] = libc.clock_nanosleep(0, 1, ctypes.byref(until), None)
    OUT["took"] = time.monotonic() - start
    OUT["hits"] = hits[0]
    """, base_readable, time_start=Y2000)
    assert out["first"] == 4 and out["hits"] == 1  # EINTR, as the kernel answers
    assert out["at"] < 0.45 and out["again"] == 0 and 0.4 <= out["took"] < 5, out


def test_inspect_summary_reads_back_as_a_profile():
    from sandlock import control, profiles
    from sandlock.policy.model import normalize
    sb = Sandbox(random_seed=2**64 - 1, time_start="1969-07-20T20:17:40.25Z", deterministic_dirs=True)
    policy = normalize(sb)
    summary = control.policy_summary(policy, "/")
    assert summary["determinism"] == {"random_seed": 2**64 - 1, "time_start": "1969-07-20T20:17:40.250000Z",
                                      "deterministic_dirs": True}
    back = profiles.parse_profile(profiles.dump_toml({"determinism": summary["determinism"]})).fields()
    again = normalize(Sandbox(**back))
    assert (again.random_seed, again.time_start, again.deterministic_dirs) == \
        (policy.random_seed, policy.time_start, True)


def _go_program():
    """A Go program on this machine that prints a timestamp (Go's log
    package): Go parses the vDSO itself, without brk(NULL)."""
    import shutil
    path = shutil.which("gcloud-crc32c")
    if path is None:
        pytest.skip("no Go program that logs the time here")
    return path


def test_go_program_clock_shifted(base_readable):
    if os.uname().machine != "x86_64":
        pytest.skip("arch_prctl(ARCH_SET_FS) is the x86_64 trigger")
    go = _go_program()
    r = Sandbox(fs_readable=[*base_readable, os.path.dirname(go)], time_start=Y2000).run(
        [go, "/nonexistent"])
    assert r.stderr.startswith(b"2000/01/01 00:00:0"), r


def test_large_directory_small_buffer(base_readable, world_dir):
    import random
    names = [("%064x" % random.getrandbits(256)).encode() for _ in range(10000)]
    for name in names:
        open(os.path.join(os.fsencode(world_dir), name), "wb").close()
    out = _json("""
    NR = 217 if os.uname().machine == "x86_64" else 61
    fd = os.open(ARG, os.O_RDONLY | os.O_DIRECTORY)
    buf = ctypes.create_string_buffer(4096)
    names, calls = [], 0
    while True:
        n = libc.syscall(NR, fd, buf, 4096)
        assert n >= 0, ctypes.get_errno()
        if n == 0:
            break
        calls += 1
        off = 0
        while off < n:
            reclen, = struct.unpack_from("<H", buf.raw, off + 16)
            names.append(buf.raw[off + 19:off + reclen].split(b"\\0")[0].decode())
            off += reclen
    OUT["names"], OUT["calls"] = names, calls
    """.replace("ARG", repr(world_dir)), base_readable, extra=[world_dir], deterministic_dirs=True)
    assert out["names"] == [".", ".."] + sorted(n.decode() for n in names)
    assert out["calls"] > 100


def test_launch_message_carries_the_settings():
    from sandlock import protocol
    from sandlock.launch import launch_message
    from sandlock.plan import compile_plan
    from sandlock.policy.model import normalize
    policy = normalize(Sandbox(fs_readable=["/usr"], random_seed=2**64 - 1, time_start=-0.5,
                               deterministic_dirs=True))
    msg = launch_message(compile_plan(policy, ["/bin/true"]), None, 0o022, True)
    back = protocol.decode_as(protocol.encode(msg), protocol.Channel.LAUNCH, protocol.Launch)
    assert back.supervisor.determinism == (2**64 - 1, -500_000_000, True)
    assert {"vdso", "clock", "clock_args", "random", "sorted_dirs"} <= back.supervisor.routes.keys()
    msg.supervisor.determinism = (-1, None, True)
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_as(protocol.encode(msg), protocol.Channel.LAUNCH, protocol.Launch)
    plain = launch_message(compile_plan(normalize(Sandbox(fs_readable=["/usr"])), ["/bin/true"]),
                           None, 0o022, True)
    assert plain.supervisor.determinism is None
    assert not {"vdso", "clock", "clock_args", "random", "sorted_dirs"} & plain.supervisor.routes.keys()


def test_urandom_seeded_beside_a_denied_path(base_readable, world_dir):
    # A denied path inside a readable tree routes only directory opens,
    # unless random_seed needs to see the others.
    os.mkdir(os.path.join(world_dir, "secret"))
    code = "print(open('/dev/urandom', 'rb').read(8).hex())"
    runs = [_run(code, base_readable, extra=[world_dir], fs_denied=[os.path.join(world_dir, "secret")],
                 random_seed=11) for _ in range(2)]
    assert runs[0] == runs[1]


def test_many_processes_and_threads_reproducible(base_readable):
    code = """
    import os, threading
    out = []
    for i in range(20):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, os.urandom(4).hex().encode()); os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        out.append(os.read(r, 64).decode()); os.close(r)
    got = []
    t = threading.Thread(target=lambda: got.append(os.urandom(4).hex())); t.start(); t.join()
    print(" ".join(out + got + [os.urandom(4).hex()]))
    """
    a = _run(code, base_readable, random_seed=77, max_processes=8)
    assert a == _run(code, base_readable, random_seed=77, max_processes=8)
    assert len(set(a.split())) == 22


def test_composes_with_policy_fn(base_readable, listed_dir):
    seen = []

    def allow_all(event, ctx):
        seen.append(event.syscall)
        return None

    kw = dict(cwd=listed_dir, extra=[listed_dir], **DETERMINISTIC)
    with_fn = _run(SAME_RUN, base_readable, policy_fn=allow_all, **kw)
    assert with_fn == _run(SAME_RUN, base_readable, **kw)
    assert seen  # the callback was asked, and the answers were still the seeded ones
