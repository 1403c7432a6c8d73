"""Unit tests for the pure policy validators in sandlock.policy."""

from __future__ import annotations

import os
import pathlib

import pytest

from sandlock.exceptions import PolicyError
from sandlock.policy import ports, sizes, syscall_groups, values
from sandlock.policy.ports import PortSet, parse_port_specs
from sandlock.policy.sizes import format_size, parse_optional_size, parse_size
from sandlock.policy.values import (
    check_bool,
    check_cpu_list,
    check_env,
    check_int,
    check_name,
    check_optional_int,
    check_optional_path,
    check_path_list,
    check_str_list,
)


_SAME = object()


def rejects(func, value, *args, field="the_field", shown=_SAME):
    """Assert func(value, field, *args) raises PolicyError naming field and value."""
    with pytest.raises(PolicyError) as info:
        func(value, field, *args)
    message = str(info.value)
    assert message.startswith(f"{field}: ")
    assert repr(value if shown is _SAME else shown) in message
    return message


# --- check_bool --------------------------------------------------------------


def test_check_bool_accepts_bools():
    assert check_bool(True, "f") is True
    assert check_bool(False, "f") is False


@pytest.mark.parametrize("bad", [0, 1, None, "true", "", 1.0, []])
def test_check_bool_rejects_non_bools(bad):
    rejects(check_bool, bad)


# --- check_int / check_optional_int ------------------------------------------


def test_check_int_range():
    assert check_int(5, "f", 0) == 5
    assert check_int(0, "f", 0, 10) == 0
    assert check_int(10, "f", 0, 10) == 10
    assert type(check_int(10, "f", 0)) is int
    assert check_int(10**30, "f", 0) == 10**30


@pytest.mark.parametrize("bad", [True, False, 1.0, "5", None, [5]])
def test_check_int_rejects_non_ints(bad):
    rejects(check_int, bad, 0, 10)


def test_check_int_out_of_range():
    assert "between 0 and 10" in rejects(check_int, 11, 0, 10)
    assert "between 0 and 10" in rejects(check_int, -1, 0, 10)
    assert "at least 1" in rejects(check_int, 0, 1)


def test_check_int_huge_value_message_is_bounded():
    with pytest.raises(PolicyError) as info:
        check_int(-(10**5000), "f", 0)
    assert "f: " in str(info.value) and len(str(info.value)) < 300


def test_check_optional_int():
    assert check_optional_int(None, "f", 0) is None
    assert check_optional_int(3, "f", 0, 3) == 3
    rejects(check_optional_int, 4, 0, 3)
    rejects(check_optional_int, True, 0, 3)


# --- paths --------------------------------------------------------------------


def test_check_path_list_makes_absolute_and_dedupes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = check_path_list(["a", "/x/../y/", pathlib.Path("a"), "./a/", "//z//w"], "f")
    assert result == (str(tmp_path / "a"), "/y", "/z/w")
    assert check_path_list((), "f") == ()
    assert check_path_list(iter(["/a", "/a"]), "f") == ("/a",)
    assert check_path_list({"/only"}, "f") == ("/only",)


@pytest.mark.parametrize("bad", ["/tmp", b"/tmp", bytearray(b"/tmp")])
def test_check_path_list_rejects_bare_string(bad):
    assert "expected a list of paths, not a string" in rejects(check_path_list, bad)


@pytest.mark.parametrize("bad", [None, 5, pathlib.Path("/tmp"), {"/a": 1}])
def test_check_path_list_rejects_non_lists(bad):
    rejects(check_path_list, bad)


@pytest.mark.parametrize("item", ["", "a\0b", b"/tmp", 5, None, "\ud800"])
def test_check_path_list_rejects_bad_items(item):
    rejects(check_path_list, ["/ok", item], shown=item)


def test_check_optional_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_optional_path(None, "f") is None
    assert check_optional_path("x/../y", "f") == str(tmp_path / "y")
    assert check_optional_path(pathlib.Path("/a/b/"), "f") == "/a/b"
    for bad in ["", "\0", b"/a", 3, ["/a"]]:
        rejects(check_optional_path, bad)


# --- check_env ----------------------------------------------------------------


def test_check_env_accepts_str_mapping():
    env = {"A": "1", "B_2": "", "lower": "x=y"}
    result = check_env(env, "f")
    assert result == env and result is not env
    assert check_env({}, "f") == {}


@pytest.mark.parametrize("bad", [None, [("A", "1")], "A=1", 5])
def test_check_env_rejects_non_mappings(bad):
    rejects(check_env, bad)


@pytest.mark.parametrize("key", ["", "A=B", "A\0", b"A", 1])
def test_check_env_rejects_bad_keys(key):
    rejects(check_env, {key: "v"}, shown=key)


@pytest.mark.parametrize("val", ["a\0b", b"v", 1, None])
def test_check_env_rejects_bad_values(val):
    message = rejects(check_env, {"KEY": val}, shown=val)
    assert "'KEY'" in message


# --- check_name ---------------------------------------------------------------


def test_check_name():
    assert check_name(None, "f") is None
    assert check_name("a", "f") == "a"
    assert check_name("x" * 64, "f") == "x" * 64
    assert check_name("é" * 32, "f") == "é" * 32  # 64 bytes in UTF-8


@pytest.mark.parametrize("bad", ["", "x" * 65, "é" * 33, "a\0", b"name", 5, "\ud800"])
def test_check_name_rejects(bad):
    rejects(check_name, bad)


# --- check_str_list -----------------------------------------------------------


def test_check_str_list():
    assert check_str_list(["a", "b", "a"], "f") == ("a", "b", "a")
    assert check_str_list((), "f") == ()
    assert "not a string" in rejects(check_str_list, "abc")
    rejects(check_str_list, None)
    rejects(check_str_list, ["a", 1], shown=1)


# --- check_cpu_list -----------------------------------------------------------


def test_check_cpu_list():
    assert check_cpu_list(None, "f") is None
    assert check_cpu_list([3, 1, 3, 0], "f") == (0, 1, 3)
    assert check_cpu_list(range(4), "f") == (0, 1, 2, 3)
    assert check_cpu_list([1023], "f") == (1023,)


@pytest.mark.parametrize("bad", [[], 3, "0-3", {0: 1}, 1.0])
def test_check_cpu_list_rejects(bad):
    rejects(check_cpu_list, bad)


@pytest.mark.parametrize("item", [-1, 1024, True, "1", 1.0, None])
def test_check_cpu_list_rejects_items(item):
    rejects(check_cpu_list, [0, item], shown=item)


# --- sizes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (1, 1),
        (4096, 4096),
        ("4096", 4096),
        ("512M", 512 * 2**20),
        ("512m", 512 * 2**20),
        ("1G", 2**30),
        ("1.5G", 3 * 2**29),
        ("100KiB", 100 * 1024),
        ("100kb", 100 * 1024),
        ("100K", 100 * 1024),
        ("2T", 2 * 2**40),
        ("2tib", 2 * 2**40),
        ("10B", 10),
        ("10b", 10),
        ("  64M\n", 64 * 2**20),
        ("1 GiB", 2**30),
        ("0.5K", 512),
        ("1.0001K", 1024),  # rounded down to whole bytes
        ("007", 7),
        (2**63 - 1, 2**63 - 1),
        ("8388607T", 8388607 * 2**40),
    ],
)
def test_parse_size_good(text, expected):
    assert parse_size(text, "memory_limit") == expected


@pytest.mark.parametrize(
    "bad",
    [
        0, -1, 2**63, True, False, 1.0, 1.5, None, b"1G", [1],
        "", "  ", "0", "0K", "-1", "-1G", "+1G", "nan", "inf", "1e9", "1X", "1KK",
        "1iB", "1 000", "1. 5G", "1.G", ".5G", "1.5", "1.5B", "0.0001K",
        "8388608T", "9223372036854775808", "1G B", "１G", "1 0G", "0x10",
        "1_000", "1" * 5000,
    ],
)
def test_parse_size_bad(bad):
    with pytest.raises(PolicyError) as info:
        parse_size(bad, "memory_limit")
    assert str(info.value).startswith("memory_limit: ")
    if not (isinstance(bad, str) and len(bad) > 100):
        assert repr(bad) in str(info.value)


def test_parse_optional_size():
    assert parse_optional_size(None, "f") is None
    assert parse_optional_size("1K", "f") == 1024
    rejects(parse_optional_size, "0")


@pytest.mark.parametrize(
    "n, text",
    [(1, "1"), (1000, "1000"), (1024, "1K"), (1536, "1536"), (3 * 2**29, "1536M"),
     (2**30, "1G"), (5 * 2**40, "5T"), (2**63 - 1, str(2**63 - 1)), (2**62, "4194304T")],
)
def test_format_size(n, text):
    assert format_size(n) == text
    assert parse_size(text, "f") == n


@pytest.mark.parametrize("bad", [0, -5, 2**63, True, "1G", None])
def test_format_size_rejects(bad):
    with pytest.raises(PolicyError):
        format_size(bad)


# --- ports --------------------------------------------------------------------


def test_parse_port_specs_basic():
    ps = parse_port_specs([80, "443", " 9000-9005 ", "8080,8081, 8000 - 8002"], "net_allow_bind")
    assert ps == PortSet(False, ((80, 80), (443, 443), (8000, 8002), (8080, 8081), (9000, 9005)))
    assert 9003 in ps and 80 in ps and 81 not in ps and 8003 not in ps
    assert "80" not in ps and True not in ps and -1 not in ps
    assert not ps.is_empty
    assert ps.to_spec() == ["80", "443", "8000-8002", "8080-8081", "9000-9005"]
    assert parse_port_specs(ps.to_spec(), "f") == ps


def test_parse_port_specs_merges():
    ps = parse_port_specs(["10-20", "15-30", "31", "40-40", 5, "0-4"], "f")
    assert ps.ranges == ((0, 5), (10, 31), (40, 40))


def test_parse_port_specs_empty_and_star():
    empty = parse_port_specs([], "f")
    assert empty == PortSet() and empty.is_empty and 80 not in empty
    assert empty.to_spec() == []
    star = parse_port_specs(["*"], "f")
    assert star.any and star.ranges == () and not star.is_empty
    assert 0 in star and 65535 in star and 65536 not in star
    assert star.to_spec() == ["*"]
    assert parse_port_specs([" * "], "f") == star
    assert parse_port_specs(["0-65535"], "f") == star
    assert parse_port_specs(["0-100", "101-65535"], "f") == star


@pytest.mark.parametrize("bad", ["80", "*", 80, None, {80: 1}, b"80", 8.0])
def test_parse_port_specs_rejects_non_lists(bad):
    rejects(parse_port_specs, bad, field="net_allow_bind")


@pytest.mark.parametrize(
    "item",
    ["", " ", "80,", ",80", "80,,81", "65536", "-1", "10-5", "1-2-3", "a", "80-", "-80",
     "0x50", "8 0", "９０", "99999999999999999999", 65536, -1, True, None, 80.0, [80]],
)
def test_parse_port_specs_rejects_bad_items(item):
    rejects(parse_port_specs, [item], field="net_deny_bind", shown=item)


@pytest.mark.parametrize("spec", [["*", "*"], ["*", 80], [8080, 8080], ["80,*"], ["22", "*", "22"]])
def test_parse_port_specs_entries_are_a_union(spec):
    # Repeating an entry is harmless; '*' next to anything is every port.
    ps = parse_port_specs(spec, "f")
    assert ps.any == any("*" in str(x) for x in spec)
    assert 8080 in ps or ps.any or 80 in ps or 22 in ps


def test_portset_is_canonical():
    assert PortSet(False, ((5, 6), (1, 4))) == PortSet(False, ((1, 6),))
    assert PortSet(True, ((1, 2),)) == PortSet(True)
    assert PortSet(False, [[1, 2]]).ranges == ((1, 2),)
    for bad in [((2, 1),), ((0, 65536),), ((True, 2),), ((1,),), "12"]:
        with pytest.raises(PolicyError):
            PortSet(False, bad)
    with pytest.raises(PolicyError):
        PortSet(1)


# --- syscall groups -----------------------------------------------------------


def test_default_deny_contents():
    deny = syscall_groups.DEFAULT_DENY
    assert len(set(deny)) == len(deny)
    for name in ["mount", "unshare", "setns", "ptrace", "bpf", "io_uring_setup", "keyctl",
                 "open_by_handle_at", "personality", "kexec_load", "lsm_set_self_attr"]:
        assert name in deny
    assert not any(name.startswith("pkey_") for name in deny)
    assert not set(deny) & set(syscall_groups.SYSV_IPC)


def test_default_denied():
    denied = syscall_groups.default_denied(())
    assert denied == syscall_groups.DEFAULT_DENY + syscall_groups.SYSV_IPC
    assert syscall_groups.default_denied(["sysv_ipc"]) == syscall_groups.DEFAULT_DENY
    assert syscall_groups.default_denied(["sysv_ipc", "sysv_ipc"]) == syscall_groups.DEFAULT_DENY
    with pytest.raises(PolicyError):
        syscall_groups.default_denied(["nope"])


def test_check_allow_groups():
    check = syscall_groups.check_allow_groups
    assert check(["sysv_ipc", "sysv_ipc"], "f") == ("sysv_ipc",)
    assert check([], "f") == ()
    assert "sysv_ipc" in rejects(check, ["nope"], field="extra_allow_syscalls", shown="nope")
    rejects(check, "sysv_ipc")
    rejects(check, [1], shown=1)


def test_check_syscall_names():
    table = {"shmget", "read", "_sysctl"}
    check = syscall_groups.check_syscall_names
    assert check(["shmget", "read", "shmget", "_sysctl"], "f", table.__contains__) == (
        "shmget", "read", "_sysctl")
    assert check((), "f", table.__contains__) == ()
    assert "unknown" in rejects(check, ["nosuch"], table.__contains__, shown="nosuch")
    for bad in ["Read", "1read", "", "re ad", "read\n", "réad", 5, None]:
        rejects(check, [bad], table.__contains__, shown=bad)
    rejects(check, "read", table.__contains__)


def test_modules_export_what_they_define():
    for module in (values, sizes, ports, syscall_groups):
        for name in module.__all__:
            assert hasattr(module, name)
        assert module.__doc__


def test_relative_paths_use_cwd_at_validation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = check_path_list(["rel"], "f")
    monkeypatch.chdir("/")
    assert first == (os.path.join(str(tmp_path), "rel"),)
    assert check_path_list(["rel"], "f") == ("/rel",)
