"""Property tests: policy parsers either return a well-formed value or raise PolicyError."""

from __future__ import annotations

import os
import pathlib
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from sandlock.exceptions import PolicyError
from sandlock.policy.ports import MAX_PORT, PortSet, parse_port_specs
from sandlock.policy.sizes import MAX_SIZE, format_size, parse_size
from sandlock.policy.values import check_cpu_list, check_env, check_name, check_path_list

FAST = settings(max_examples=300, deadline=None)

# --- junk ---------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-5, max_value=70000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.text(alphabet="0123456789.,-* kKmMgGtTiIbBxX\t\n\0+_e"),
    st.binary(),
    st.builds(pathlib.PurePosixPath, st.text()),
    st.sampled_from(["nan", "inf", "-inf", "*", "", "1e9", "512M", "80-90", "1.5G", "\ud800"]),
)
hashables = st.one_of(scalars, st.tuples(scalars, scalars))
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.tuples(inner, inner),
        st.frozensets(hashables, max_size=4),
        st.dictionaries(hashables, inner, max_size=4),
    ),
    max_leaves=12,
)


def parses_or_policy_error(func, value, *args):
    """("ok", func(value, *args)), or ("error", None) on PolicyError; anything else fails."""
    try:
        return ("ok", func(value, *args))
    except PolicyError as exc:
        assert str(exc).startswith("field: ")
        return ("error", None)


# --- sizes --------------------------------------------------------------------


def _check_size(result):
    kind, n = result
    if kind == "ok":
        assert type(n) is int and 1 <= n <= MAX_SIZE
        text = format_size(n)
        assert parse_size(text, "field") == n
        assert parse_size(n, "field") == n


@FAST
@given(junk)
def test_parse_size_total_on_junk(value):
    _check_size(parses_or_policy_error(parse_size, value, "field"))


@FAST
@given(st.text(alphabet="0123456789.kKmMgGtTiIbB \t-", max_size=12))
def test_parse_size_total_on_size_like_text(value):
    _check_size(parses_or_policy_error(parse_size, value, "field"))


@FAST
@given(st.integers(min_value=1, max_value=MAX_SIZE))
def test_format_size_round_trips(n):
    assert parse_size(format_size(n), "field") == n


@FAST
@given(st.integers(min_value=1, max_value=2**23 - 1), st.sampled_from("KMGT"))
def test_format_size_round_trips_multiples(k, unit):
    n = k * 1024 ** ("KMGT".index(unit) + 1)
    if n <= MAX_SIZE:
        assert parse_size(format_size(n), "field") == n
        assert format_size(n)[-1] in "KMGT"


@FAST
@given(
    whole=st.integers(min_value=0, max_value=10**7),
    frac=st.one_of(st.none(), st.text(alphabet="0123456789", min_size=1, max_size=6)),
    unit=st.sampled_from(["", "B", "K", "M", "G", "T"]),
    tail=st.sampled_from(["", "B", "iB"]),
    lower=st.booleans(),
    pad=st.tuples(st.sampled_from(["", " ", "\t"]), st.sampled_from(["", " "]),
                  st.sampled_from(["", " ", "\n"])),
)
def test_parse_size_structured(whole, frac, unit, tail, lower, pad):
    if unit in ("", "B"):
        tail = ""
    suffix = unit + tail
    if lower:
        suffix = suffix.lower()
    number = str(whole) + ("" if frac is None else "." + frac)
    text = pad[0] + number + (pad[1] if suffix else "") + suffix + pad[2]
    scale = 1024 ** ("_KMGT".index(unit) if unit not in ("", "B") else 0)
    exact = Fraction(whole) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
    expected = int(exact * scale)  # floor: exact >= 0
    if (frac is not None and scale == 1) or not 1 <= expected <= MAX_SIZE:
        try:
            parse_size(text, "field")
        except PolicyError:
            return
        raise AssertionError(f"{text!r} should have been rejected")
    assert parse_size(text, "field") == expected


# --- ports --------------------------------------------------------------------

port_items = st.one_of(
    st.integers(min_value=-3, max_value=MAX_PORT + 3),
    st.text(alphabet="0123456789-,* ", max_size=14),
    scalars,
)


def _check_portset(result):
    kind, ps = result
    if kind == "ok":
        assert isinstance(ps, PortSet)
        if ps.any:
            assert ps.ranges == () and ps.to_spec() == ["*"]
        previous_hi = -2
        for lo, hi in ps.ranges:
            assert 0 <= lo <= hi <= MAX_PORT and lo > previous_hi + 1
            previous_hi = hi
        assert parse_port_specs(ps.to_spec(), "field") == ps


@FAST
@given(junk)
def test_parse_port_specs_total_on_junk(value):
    _check_portset(parses_or_policy_error(parse_port_specs, value, "field"))


@FAST
@given(st.lists(port_items, max_size=6))
def test_parse_port_specs_total_on_port_like_lists(value):
    _check_portset(parses_or_policy_error(parse_port_specs, value, "field"))


port = st.integers(min_value=0, max_value=MAX_PORT)
small_range = st.tuples(port, st.integers(min_value=0, max_value=300)).map(
    lambda p: (p[0], min(p[0] + p[1], MAX_PORT))
)


@st.composite
def rendered_ranges(draw):
    """Random ranges plus a spec list spelling them in varied ways."""
    ranges = draw(st.lists(st.one_of(small_range, st.tuples(port, port).map(sorted).map(tuple)),
                           max_size=8))
    texts = []
    for lo, hi in ranges:
        if lo == hi and draw(st.booleans()):
            texts.append(lo)
            continue
        sp = draw(st.sampled_from(["", " ", "  "]))
        texts.append(f"{sp}{lo}{sp}" if lo == hi and draw(st.booleans())
                     else f"{sp}{lo}{sp}-{sp}{hi}{sp}")
    # group some neighbouring string entries into comma-separated items
    spec, i = [], 0
    while i < len(texts):
        n = draw(st.integers(min_value=1, max_value=3))
        chunk = texts[i:i + n]
        if all(isinstance(t, str) for t in chunk):
            spec.append(",".join(chunk))
        else:
            spec.extend(chunk)
        i += n
    return ranges, spec


@FAST
@given(rendered_ranges(), st.lists(port, max_size=20))
def test_parse_port_specs_structured(case, probes):
    ranges, spec = case
    ps = parse_port_specs(spec, "field")

    def expected(p):
        return any(lo <= p <= hi for lo, hi in ranges)

    edges = {p for lo, hi in ranges for p in (lo - 1, lo, hi, hi + 1) if 0 <= p <= MAX_PORT}
    for p in edges | set(probes) | {0, MAX_PORT}:
        assert (p in ps) == expected(p), p
    assert ps.is_empty == (not ranges)
    assert parse_port_specs(ps.to_spec(), "field") == ps
    assert parse_port_specs(list(reversed(spec)), "field") == ps


@FAST
@given(st.lists(port_items, max_size=4))
def test_star_absorbs_other_entries(extra):
    try:
        ps = parse_port_specs(["*", *extra], "field")
    except PolicyError:
        return  # a malformed extra entry
    assert ps.any


# --- paths, env, names, cpus ------------------------------------------------------


@FAST
@given(junk)
def test_check_path_list_total(value):
    kind, paths = parses_or_policy_error(check_path_list, value, "field")
    if kind == "ok":
        assert isinstance(paths, tuple) and len(set(paths)) == len(paths)
        for p in paths:
            assert isinstance(p, str) and p.startswith("/") and "\0" not in p
            assert os.path.normpath(p) == p and not p.startswith("//")
        assert check_path_list(paths, "field") == paths


@FAST
@given(st.lists(st.text(alphabet="ab/.é ", min_size=1, max_size=10), max_size=6))
def test_check_path_list_valid(items):
    paths = check_path_list(items, "field")
    assert set(paths) == {check_path_list([i], "field")[0] for i in items}
    assert check_path_list(paths, "field") == paths


@FAST
@given(st.one_of(junk, st.dictionaries(st.text(), st.text(), max_size=5)))
def test_check_env_total(value):
    kind, env = parses_or_policy_error(check_env, value, "field")
    if kind == "ok":
        assert type(env) is dict and env == dict(value)
        for k, v in env.items():
            assert isinstance(k, str) and isinstance(v, str) and k
            assert "=" not in k and "\0" not in k and "\0" not in v


@FAST
@given(st.one_of(junk, st.text(max_size=70)))
def test_check_name_total(value):
    kind, name = parses_or_policy_error(check_name, value, "field")
    if kind == "ok":
        assert name is None or (isinstance(name, str) and 1 <= len(name.encode()) <= 64
                                and "\0" not in name)
        assert name == value
    else:
        assert not (isinstance(value, str) and 1 <= len(value.encode("utf-8", "surrogatepass")) <= 64
                    and "\0" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value))


@FAST
@given(st.one_of(junk, st.lists(st.integers(min_value=-2, max_value=1030), max_size=8)))
def test_check_cpu_list_total(value):
    kind, cpus = parses_or_policy_error(check_cpu_list, value, "field")
    if kind == "ok":
        assert cpus is None or (cpus and list(cpus) == sorted(set(cpus))
                                and all(type(c) is int and 0 <= c <= 1023 for c in cpus))


@FAST
@given(st.lists(st.integers(min_value=0, max_value=1023), min_size=1, max_size=20))
def test_check_cpu_list_valid(cpus):
    assert check_cpu_list(cpus, "field") == tuple(sorted(set(cpus)))
