"""Property tests for net_allow / net_deny rules.

Any input either parses to a rule whose canonical text parses back to an
equal rule, or raises PolicyError (never anything else); structurally
generated valid rules parse to the fields they were built from.
"""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from sandlock.exceptions import PolicyError
from sandlock.policy.netrules import NetRule, ResolvedRules, parse_rule, parse_rules, resolve
from sandlock.policy.ports import MAX_PORT, PortSet

FAST = settings(max_examples=300, deadline=None)
F = "net_allow"
ANY = PortSet(any=True)

# --- junk ---------------------------------------------------------------------

GRAMMAR_BITS = [
    "tcp://", "udp://", "icmp://", "TCP://", "http://", "://", ":", "::", "[", "]", "/", "*", ",", "-",
    ".", "0", "1", "80", "443", "65535", "65536", "0x7f", "%", "ffff", "::ffff:", "1.2.3.4", "10.0.0.0/8",
    "[::1]", "example", ".com", "a-b", "-", " ", "\t", "\0", "é", "\ud800", "255", "256", "/32", "/129",
]

rule_texts = st.one_of(
    st.text(),
    st.text(alphabet="0123456789abcdefABCDEFxX.:/[]*,-% \t\0tcpudpim"),
    st.lists(st.sampled_from(GRAMMAR_BITS), max_size=8).map("".join),
    st.lists(st.one_of(st.sampled_from(GRAMMAR_BITS), st.text(max_size=3)), max_size=6).map("".join),
)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.binary(), rule_texts,
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.frozensets(st.one_of(st.none(), st.integers(), st.text()), max_size=4),
        st.dictionaries(st.text(max_size=5), inner, max_size=3),
    ),
    max_leaves=10,
)


def check_rule(r: NetRule) -> None:
    """Invariants of any parsed rule."""
    assert isinstance(r, NetRule)
    assert r.protocols in ({"tcp", "udp"}, {"tcp"}, {"udp"}, {"icmp"})
    assert r.host is None or r.network is None
    if r.host is not None:
        assert r.host == r.host.lower() and not r.host.endswith(".") and 0 < len(r.host) <= 253
    if r.network is not None and r.network.version == 6:
        assert not r.network.subnet_of(ipaddress.IPv6Network("::ffff:0:0/96"))
    if "icmp" in r.protocols:
        assert r.ports == ANY
    assert not r.ports.is_empty
    assert 0 not in r.ports or r.ports.any
    spec = r.to_spec()
    assert spec == spec.strip() and " " not in spec
    again = parse_rule(spec, "other_field")
    assert again == r
    assert again.to_spec() == spec


def parse_or_error(text, field: str = F):
    try:
        r = parse_rule(text, field)
    except PolicyError as exc:
        assert str(exc).startswith(f"{field}: ")
        event("rule: error")
        return None
    event("rule: parsed")
    check_rule(r)
    return r


@FAST
@given(rule_texts)
def test_text_parses_or_policy_error(text):
    parse_or_error(text)


@FAST
@given(junk)
def test_junk_rule_parses_or_policy_error(value):
    parse_or_error(value)


@FAST
@given(junk, st.booleans())
def test_junk_rule_list_parses_or_policy_error(value, allow_hostnames):
    try:
        rules = parse_rules(value, "net_deny", allow_hostnames=allow_hostnames)
    except PolicyError as exc:
        assert str(exc).startswith("net_deny: ")
        return
    assert isinstance(rules, tuple)
    assert len(set(rules)) == len(rules)
    for r in rules:
        check_rule(r)
        if not allow_hostnames:
            assert r.host is None


@FAST
@given(st.lists(rule_texts, max_size=6))
def test_rule_lists_dedupe_in_order(texts):
    try:
        rules = parse_rules(texts, F)
    except PolicyError:
        return
    expected = []
    for t in texts:
        r = parse_rule(t, F)
        if r not in expected:
            expected.append(r)
    assert list(rules) == expected


# --- structurally generated valid rules ------------------------------------------

SCHEMES = [
    ("", {"tcp", "udp"}), ("tcp://", {"tcp"}), ("TCP://", {"tcp"}), ("udp://", {"udp"}),
    ("Udp://", {"udp"}), ("icmp://", {"icmp"}), ("ICMP://", {"icmp"}),
]

label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")
last_label = st.from_regex(r"\A[a-z]([a-z0-9-]{0,20}[a-z0-9])?\Z")  # never numeric


def random_case(draw, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if f else c for c, f in zip(text, flips, strict=True))


@st.composite
def targets(draw):
    """(text, host, network) for a valid target."""
    kind = draw(st.sampled_from(["any", "v4", "v4net", "v6", "v6net", "mapped", "host"]))
    if kind == "any":
        return draw(st.sampled_from(["", "*"])), None, None
    if kind == "v4":
        a = draw(st.ip_addresses(v=4))
        return str(a), None, ipaddress.IPv4Network(a)
    if kind == "v4net":
        prefix = draw(st.integers(0, 32))
        n = ipaddress.IPv4Network((draw(st.integers(0, 2**32 - 1)), prefix), strict=False)
        return str(n), None, n
    if kind in ("v6", "v6net"):
        a = draw(st.ip_addresses(v=6))
        prefix = 128 if kind == "v6" else draw(st.integers(0, 128))
        n = ipaddress.IPv6Network((a, prefix), strict=False)
        addr = n.network_address
        shown = random_case(draw, draw(st.sampled_from([addr.compressed, addr.exploded])))
        text = f"[{shown}]" if kind == "v6" and draw(st.booleans()) else f"[{shown}/{prefix}]"
        if addr.ipv4_mapped is not None and prefix >= 96:
            expected = ipaddress.IPv4Network((addr.ipv4_mapped, prefix - 96))
        else:
            expected = n
        return text, None, expected
    if kind == "mapped":
        prefix = draw(st.integers(0, 32))
        v4 = ipaddress.IPv4Network((draw(st.integers(0, 2**32 - 1)), prefix), strict=False)
        form = draw(st.sampled_from(["dotted", "hex"]))
        if form == "dotted":
            inner = f"::ffff:{v4.network_address}"
        else:
            inner = str(ipaddress.IPv6Address(int(v4.network_address) | 0xFFFF00000000))
        suffix = "" if prefix == 32 and draw(st.booleans()) else f"/{prefix + 96}"
        return f"[{inner}{suffix}]", None, v4
    labels = draw(st.lists(label, max_size=4)) + [draw(last_label)]
    host = ".".join(labels)
    assume(len(host) <= 253)
    text = random_case(draw, host) + draw(st.sampled_from(["", "."]))
    return text, host, None


@st.composite
def port_parts(draw):
    """(text or None, PortSet)."""
    choice = draw(st.sampled_from(["omit", "star", "list"]))
    if choice == "omit":
        return None, ANY
    if choice == "star":
        return "*", ANY
    items = draw(st.lists(
        st.one_of(
            st.integers(1, MAX_PORT).map(lambda p: (p, p)),
            st.tuples(st.integers(1, MAX_PORT), st.integers(1, MAX_PORT)).map(lambda t: tuple(sorted(t))),
        ),
        min_size=1, max_size=5,
    ))
    texts = []
    for lo, hi in items:
        if lo == hi and draw(st.booleans()):
            texts.append(str(lo))
        else:
            texts.append(f"{lo}-{hi}")
    return ",".join(texts), PortSet(ranges=tuple(items))


@FAST
@given(st.sampled_from(SCHEMES), targets(), port_parts(), st.sampled_from(["", " ", "\n", "\t "]))
def test_generated_rules_parse_to_their_fields(scheme, target, portpart, pad):
    scheme_text, protocols = scheme
    target_text, host, network = target
    ports_text, portset = portpart
    icmp = protocols == {"icmp"}
    text = scheme_text + target_text
    if ports_text is not None and not icmp:
        text += ":" + ports_text
    if text == "":  # an empty rule is an error, tested elsewhere
        text = "*"
    r = parse_rule(pad + text + pad, F)
    assert r.protocols == frozenset(protocols)
    assert r.host == host
    assert r.network == network
    assert r.ports == (ANY if icmp else portset)
    assert r.is_port_only == (host is None and network is None)
    assert r.spec == pad + text + pad
    check_rule(r)
    if icmp and ports_text is not None:
        try:
            parse_rule(text + ":" + ports_text, F)
        except PolicyError as exc:
            assert "icmp:// rules take no port" in str(exc)
        else:
            raise AssertionError("icmp rule with a port was accepted")


@FAST
@given(st.sampled_from(SCHEMES), targets(), port_parts(), st.sampled_from(["tcp", "udp", "icmp"]),
       st.ip_addresses(), st.booleans(), st.booleans(), st.integers(-1, MAX_PORT + 1))
def test_matches_agrees_with_fields(scheme, target, portpart, protocol, address, inside, mapped, port):
    scheme_text, protocols = scheme
    target_text, host, network = target
    ports_text, _ = portpart
    text = scheme_text + (target_text or "*")
    if ports_text is not None and protocols != {"icmp"}:
        text += ":" + ports_text
    r = parse_rule(text, F)
    if inside and r.network is not None:  # make hits likely too
        address = r.network.broadcast_address
    if mapped and address.version == 4:  # the same address seen through an IPv6 socket
        address = ipaddress.IPv6Address(int(address) | 0xFFFF00000000)
    plain = address.ipv4_mapped if address.version == 6 and address.ipv4_mapped else address
    wanted = protocol in r.protocols and (protocol == "icmp" or port in r.ports)
    if r.host is not None:
        assert not r.matches(protocol, address, port)  # nothing pinned: never
        assert r.matches(protocol, address, port, resolved=[plain]) == wanted
        pinned = ResolvedRules(rules=(r,), hosts={r.host: (str(plain),)})
        assert pinned.allows(protocol, address, port) == wanted
    elif r.network is not None:
        inside_net = plain.version == r.network.version and plain in r.network
        assert r.matches(protocol, address, port) == (wanted and inside_net)
    else:
        assert r.matches(protocol, address, port) == wanted
    assert ResolvedRules(rules=(r,)).allows(protocol, address, port) == (
        r.host is None and r.matches(protocol, address, port))


# --- resolve -------------------------------------------------------------------------

good_sockaddrs = st.one_of(
    st.ip_addresses(v=4).map(lambda a: (socket.AF_INET, socket.SOCK_STREAM, 6, "", (str(a), 0))),
    st.ip_addresses(v=6).map(lambda a: (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (str(a), 0, 0, 0))),
)
resolver_results = st.one_of(
    st.lists(good_sockaddrs, min_size=1, max_size=5),
    st.lists(st.one_of(good_sockaddrs, junk), max_size=5),
    st.sampled_from([socket.gaierror(socket.EAI_NONAME, "nope"), OSError("down"), UnicodeError("idna")]),
    junk,
)
rule_items = st.one_of(
    rule_texts,
    last_label,
    last_label.map(lambda h: h + ":443"),
    targets().map(lambda t: t[0] or "*"),
)


@FAST
@given(st.lists(rule_items, max_size=4),
       st.dictionaries(last_label, resolver_results, max_size=4), resolver_results)
def test_resolve_returns_pins_or_policy_error(texts, table, default):
    calls = []

    def fake(host, port):
        calls.append(host)
        result = table.get(host, default)
        if isinstance(result, BaseException):
            raise result
        return result

    try:
        resolved = resolve(texts, F, resolver=fake)
    except PolicyError as exc:
        assert str(exc).startswith(f"{F}: ")
        event("resolve: error")
        return
    event(f"resolve: ok, {'with' if resolved.hosts else 'no'} hosts")
    assert len(calls) == len(set(calls))
    assert set(resolved.hosts) == {r.host for r in resolved.rules if r.host is not None}
    for host, addresses in resolved.hosts.items():
        assert addresses, host
        parsed = [ipaddress.ip_address(a) for a in addresses]
        assert sorted(set(parsed), key=lambda a: (a.version, int(a))) == parsed
        for a in parsed:
            assert a.version == 4 or a.ipv4_mapped is None
    content = resolved.hosts_file().decode("ascii")
    assert content.startswith("127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
    for line in content.splitlines()[2:]:
        ip, name = line.split(" ")
        assert ip in resolved.hosts[name]
