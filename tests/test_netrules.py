"""net_allow / net_deny rule grammar, matching and hostname pinning."""

from __future__ import annotations

import socket
from ipaddress import IPv4Network, IPv6Network, ip_address

import pytest

from sandlock.exceptions import PolicyError
from sandlock.policy.netrules import NetRule, ResolvedRules, parse_rule, parse_rules, resolve
from sandlock.policy.ports import PortSet

F = "net_allow"
ANY = PortSet(any=True)
TCP_UDP = frozenset({"tcp", "udp"})


def ports(*items) -> PortSet:
    return PortSet(ranges=tuple((i, i) if isinstance(i, int) else i for i in items))


def rule(text: str, field: str = F) -> NetRule:
    r = parse_rule(text, field)
    assert parse_rule(r.to_spec(), field) == r, r.to_spec()
    assert r.spec == text
    return r


def error(text, field: str = F) -> str:
    with pytest.raises(PolicyError) as info:
        parse_rule(text, field)
    message = str(info.value)
    assert message.startswith(f"{field}: ")
    if isinstance(text, str) and len(repr(text)) < 150:  # longer values are shortened
        assert repr(text) in message
    return message


# --- good forms ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, protocols, host, network, portset, canonical",
    [
        # hostnames
        ("example.com", TCP_UDP, "example.com", None, ANY, "example.com"),
        ("example.com:443", TCP_UDP, "example.com", None, ports(443), "example.com:443"),
        ("Example.COM.:443", TCP_UDP, "example.com", None, ports(443), "example.com:443"),
        ("localhost", TCP_UDP, "localhost", None, ANY, "localhost"),
        ("a-b.c-d.example:80,443", TCP_UDP, "a-b.c-d.example", None, ports(80, 443), "a-b.c-d.example:80,443"),
        ("1password.com", TCP_UDP, "1password.com", None, ANY, "1password.com"),
        ("xn--bcher-kva.example", TCP_UDP, "xn--bcher-kva.example", None, ANY, "xn--bcher-kva.example"),
        # IPv4 and CIDR
        ("1.2.3.4", TCP_UDP, None, IPv4Network("1.2.3.4/32"), ANY, "1.2.3.4"),
        ("1.2.3.4/32", TCP_UDP, None, IPv4Network("1.2.3.4/32"), ANY, "1.2.3.4"),
        ("10.0.0.0/8:22", TCP_UDP, None, IPv4Network("10.0.0.0/8"), ports(22), "10.0.0.0/8:22"),
        ("0.0.0.0/0", TCP_UDP, None, IPv4Network("0.0.0.0/0"), ANY, "0.0.0.0/0"),
        ("192.168.1.0/24:8000-8010", TCP_UDP, None, IPv4Network("192.168.1.0/24"), ports((8000, 8010)),
         "192.168.1.0/24:8000-8010"),
        # IPv6 in brackets
        ("[::1]", TCP_UDP, None, IPv6Network("::1/128"), ANY, "[::1]"),
        ("[::1]:8080", TCP_UDP, None, IPv6Network("::1/128"), ports(8080), "[::1]:8080"),
        ("[2606:4700::/32]", TCP_UDP, None, IPv6Network("2606:4700::/32"), ANY, "[2606:4700::/32]"),
        ("[2606:4700::/32]:443", TCP_UDP, None, IPv6Network("2606:4700::/32"), ports(443), "[2606:4700::/32]:443"),
        ("[2001:DB8:0:0::1]", TCP_UDP, None, IPv6Network("2001:db8::1/128"), ANY, "[2001:db8::1]"),
        ("[::/0]", TCP_UDP, None, IPv6Network("::/0"), ANY, "[::/0]"),
        # IPv4-mapped IPv6 becomes IPv4
        ("[::ffff:1.2.3.4]:80", TCP_UDP, None, IPv4Network("1.2.3.4/32"), ports(80), "1.2.3.4:80"),
        ("[::ffff:0102:0304]", TCP_UDP, None, IPv4Network("1.2.3.4/32"), ANY, "1.2.3.4"),
        ("[::ffff:0:0/96]", TCP_UDP, None, IPv4Network("0.0.0.0/0"), ANY, "0.0.0.0/0"),
        ("[::ffff:10.0.0.0/104]", TCP_UDP, None, IPv4Network("10.0.0.0/8"), ANY, "10.0.0.0/8"),
        # any address
        ("*", TCP_UDP, None, None, ANY, "*"),
        ("*:53", TCP_UDP, None, None, ports(53), "*:53"),
        (":53", TCP_UDP, None, None, ports(53), "*:53"),
        ("*:*", TCP_UDP, None, None, ANY, "*"),
        (":*", TCP_UDP, None, None, ANY, "*"),
        # schemes
        ("tcp://example.com:443", {"tcp"}, "example.com", None, ports(443), "tcp://example.com:443"),
        ("TCP://example.com:443", {"tcp"}, "example.com", None, ports(443), "tcp://example.com:443"),
        ("udp://:53", {"udp"}, None, None, ports(53), "udp://*:53"),
        ("udp://[::1]:53", {"udp"}, None, IPv6Network("::1/128"), ports(53), "udp://[::1]:53"),
        ("tcp://", {"tcp"}, None, None, ANY, "tcp://*"),
        ("tcp://*", {"tcp"}, None, None, ANY, "tcp://*"),
        ("icmp://1.1.1.1", {"icmp"}, None, IPv4Network("1.1.1.1/32"), ANY, "icmp://1.1.1.1"),
        ("Icmp://*", {"icmp"}, None, None, ANY, "icmp://*"),
        ("icmp://", {"icmp"}, None, None, ANY, "icmp://*"),
        ("icmp://[2001:db8::/64]", {"icmp"}, None, IPv6Network("2001:db8::/64"), ANY, "icmp://[2001:db8::/64]"),
        ("icmp://example.com", {"icmp"}, "example.com", None, ANY, "icmp://example.com"),
        # ports
        ("x:80,443,8000-8010", TCP_UDP, "x", None, ports(80, 443, (8000, 8010)), "x:80,443,8000-8010"),
        ("x:443,80,80", TCP_UDP, "x", None, ports(80, 443), "x:80,443"),
        ("x:80-81,82", TCP_UDP, "x", None, ports((80, 82)), "x:80-82"),
        ("x:1-65535", TCP_UDP, "x", None, ports((1, 65535)), "x:1-65535"),  # not '*': port 0 differs
        ("x:65535", TCP_UDP, "x", None, ports(65535), "x:65535"),
        ("x:0080", TCP_UDP, "x", None, ports(80), "x:80"),
        ("x:7-7", TCP_UDP, "x", None, ports(7), "x:7"),
        # surrounding whitespace
        ("  example.com:443\n", TCP_UDP, "example.com", None, ports(443), "example.com:443"),
    ],
)
def test_good_forms(text, protocols, host, network, portset, canonical):
    r = rule(text)
    assert r.protocols == frozenset(protocols)
    assert r.host == host
    assert r.network == network
    assert r.ports == portset
    assert r.to_spec() == canonical
    assert r.is_port_only == (host is None and network is None)


def test_hostname_limits():
    label = "a" * 63
    assert rule(f"{label}.example").host == f"{label}.example"
    name = ".".join(["a" * 49] * 5) + ".abc"  # 253 characters
    assert len(name) == 253
    assert rule(name).host == name
    assert rule(name + ".").host == name  # the trailing dot does not count
    assert "longer than 253" in error(name + "x")
    assert "label" in error(f"{label}a.example")


def test_spec_is_not_part_of_equality():
    a, b = parse_rule("example.com:443", F), parse_rule("EXAMPLE.com.:0443", F)
    assert a == b and hash(a) == hash(b)
    assert a.spec != b.spec


# --- bad forms ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty network rule"),
        ("   ", "empty network rule"),
        # schemes
        ("http://example.com", "unknown scheme 'http'"),
        ("://example.com", "unknown scheme ''"),
        ("tcp://udp://x", "more than one scheme"),
        ("icmp://1.1.1.1:80", "icmp:// rules take no port"),
        ("icmp://1.1.1.1:*", "icmp:// rules take no port"),
        ("icmp://:*", "icmp:// rules take no port"),
        ("icmp://[::1]:", "icmp:// rules take no port"),
        # IPv6 without brackets and bracket mistakes
        ("::1", "put IPv6 addresses in brackets"),
        ("2001:db8::1", "put IPv6 addresses in brackets"),
        ("2001:db8::/32", "put IPv6 addresses in brackets"),
        ("::", "put IPv6 addresses in brackets"),
        ("x:80:90", "put IPv6 addresses in brackets"),
        ("[::1", "missing ']'"),
        ("[::1]80", "expected ':ports'"),
        ("[2606:4700::]/32", "inside the brackets"),
        ("[]", "empty brackets"),
        ("[]:80", "empty brackets"),
        ("[1.2.3.4]", "brackets are only for IPv6"),
        ("[10.0.0.0/8]", "brackets are only for IPv6"),
        ("[example.com]", "not a valid IPv6 address"),
        ("[::1::2]", "not a valid IPv6 address"),
        ("[12345::]", "not a valid IPv6 address"),
        ("[fe80::1%eth0]", "zone ids"),
        ("[::1/129]", "prefix length"),
        ("[2001:db8::1/32]", "host bits set"),
        ("x[::1]", "put IPv6 addresses in brackets"),
        ("x]", "misplaced bracket"),
        # IPv4 and CIDR
        ("256.1.1.1", "not a valid IPv4 address"),
        ("1.2.3", "not a valid IPv4 address"),
        ("1.2.3.4.5", "not a valid IPv4 address"),
        ("01.2.3.4", "not a valid IPv4 address"),
        ("1.2.3.4/33", "prefix length"),
        ("1.2.3.4/", "prefix length"),
        ("1.2.3.4/-1", "prefix length"),
        ("1.2.3.4/255.0.0.0", "prefix length"),
        ("10.0.0.1/8", "host bits set: did you mean '10.0.0.0/8'"),
        ("192.168.1.1/24:80", "did you mean '192.168.1.0/24'"),
        ("example.com/8", "a CIDR needs an IP address"),
        ("/8", "a CIDR needs an IP address"),
        ("10.0.0.0/8/8", "prefix length"),
        # numbers a resolver would read as addresses
        ("example.123", "neither a valid IPv4 address"),
        ("0x7f000001", "reads as a numeric IPv4 address"),
        ("0x7f.1", "neither a valid IPv4 address"),
        # looks like a port
        ("80", "write ':80'"),
        ("8000-8010", "write ':8000-8010'"),
        ("80,443", "write ':80,443'"),
        # hostnames
        ("-example.com", "invalid hostname label '-example'"),
        ("example-.com", "invalid hostname label 'example-'"),
        ("exa_mple.com", "invalid hostname label"),
        ("example..com", "invalid hostname label ''"),
        (".example.com", "invalid hostname label ''"),
        (".", "empty hostname"),
        ("example.com..", "invalid hostname label ''"),
        ("bücher.example", "must be ASCII"),
        ("*.example.com", "wildcards are not supported"),
        ("exa*mple", "wildcards are not supported"),
        # ports
        ("x:", "empty port list"),
        (":", "empty port list"),
        ("x:0", "port 0"),
        ("x:0-10", "port 0"),
        ("x:000", "port 0"),
        ("x:65536", "out of range"),
        ("x:99999999999999999999", "out of range"),
        ("x:90-80", "starts after its end"),
        ("x:80,,443", "empty entry"),
        ("x:80,", "empty entry"),
        ("x:,80", "empty entry"),
        ("x:*,80", "cannot be combined"),
        ("x:80,*", "cannot be combined"),
        ("x:**", "bad port"),
        ("x:http", "bad port"),
        ("x:-80", "bad port"),
        ("x:80-", "bad port"),
        ("x:1-2-3", "bad port"),
        ("x:+80", "bad port"),
        ("x:٨٠", "bad port"),  # non-ASCII digits
        # whitespace and control characters
        ("example.com :443", "spaces are not allowed"),
        ("tcp:// example.com", "spaces are not allowed"),
        ("x:80, 443", "spaces are not allowed"),
        ("exa\tmple.com", "spaces are not allowed"),
        ("example.com\0", "control characters"),
        ("example\x7f.com", "control characters"),
    ],
)
def test_bad_forms(text, fragment):
    message = error(text)
    assert fragment in message


def test_huge_digit_strings_are_policy_errors():
    # int() refuses over 4300 digits; that must not leak a bare ValueError
    assert "out of range" in error("x:" + "9" * 5000)
    assert "out of range" in error("x:" + "0" * 5000 + "99999")
    assert "prefix length" in error("10.0.0.0/" + "9" * 5000)
    # leading zeros are only zeros
    assert rule("x:" + "0" * 5000 + "80").ports == ports(80)
    assert rule("10.0.0.0/" + "0" * 5000 + "8").network == IPv4Network("10.0.0.0/8")


@pytest.mark.parametrize("value", [None, 80, b"example.com", ["example.com"], 1.5])
def test_non_str_rule(value):
    with pytest.raises(PolicyError, match=r"^net_allow: each network rule must be a str"):
        parse_rule(value, F)


def test_message_names_field_and_quotes_rule():
    with pytest.raises(PolicyError) as info:
        parse_rule("x:0", "net_deny")
    assert str(info.value).startswith("net_deny: ")
    assert "'x:0'" in str(info.value)


# --- parse_rules ----------------------------------------------------------------


def test_parse_rules_list_and_dedupe():
    rules = parse_rules(["b.example:443", "1.2.3.4", "B.EXAMPLE.:443", "1.2.3.4/32", "tcp://1.2.3.4"], F)
    assert [r.to_spec() for r in rules] == ["b.example:443", "1.2.3.4", "tcp://1.2.3.4"]
    assert rules[0].spec == "b.example:443"  # the first spelling is kept
    assert parse_rules((), F) == ()
    assert parse_rules(iter(["*:53"]), F) == (parse_rule(":53", F),)


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("example.com", "expected a list of network rules, not a string"),
        (b"example.com", "not a string"),
        ({"example.com": 1}, "not a mapping"),
        (5, "expected a list of network rules"),
        (None, "expected a list of network rules"),
        (["ok.example", 5], "each network rule must be a str"),
        (["ok.example", "x:0"], "port 0"),
    ],
)
def test_parse_rules_bad(value, fragment):
    with pytest.raises(PolicyError) as info:
        parse_rules(value, F)
    assert str(info.value).startswith("net_allow: ")
    assert fragment in str(info.value)


def test_deny_rejects_hostnames():
    good = parse_rules(["10.0.0.0/8", "[::1]:22", ":25", "icmp://*"], "net_deny", allow_hostnames=False)
    assert len(good) == 4
    with pytest.raises(PolicyError) as info:
        parse_rules(["10.0.0.0/8", "evil.example:443"], "net_deny", allow_hostnames=False)
    message = str(info.value)
    assert message.startswith("net_deny: ")
    assert "net_deny takes literal IPs or CIDRs, not hostnames" in message
    assert "'evil.example:443'" in message
    # the same list is fine where hostnames are allowed
    assert len(parse_rules(["evil.example:443"], "net_deny")) == 1


# --- matching -------------------------------------------------------------------

A = ip_address


def test_matches_ipv4_and_cidr():
    r = rule("10.0.0.0/8:22")
    assert r.matches("tcp", A("10.1.2.3"), 22)
    assert r.matches("udp", A("10.255.255.255"), 22)
    assert not r.matches("tcp", A("11.0.0.0"), 22)
    assert not r.matches("tcp", A("10.1.2.3"), 23)
    assert r.matches("tcp", "10.0.0.1", 22)  # text is accepted too
    exact = rule("1.2.3.4")
    assert exact.matches("tcp", A("1.2.3.4"), 1) and exact.matches("tcp", A("1.2.3.4"), 65535)
    assert not exact.matches("tcp", A("1.2.3.5"), 80)


def test_ipv4_mapped_ipv6_matches_ipv4_rule():
    r = rule("1.2.3.4:80")
    assert r.matches("tcp", A("::ffff:1.2.3.4"), 80)
    assert not r.matches("tcp", A("::ffff:1.2.3.5"), 80)
    cidr = rule("10.0.0.0/8")
    assert cidr.matches("udp", A("::ffff:10.9.8.7"), 53)
    # a mapped-form rule is an IPv4 rule: it matches plain IPv4 too
    mapped = rule("[::ffff:1.2.3.4]")
    assert mapped.matches("tcp", A("1.2.3.4"), 80)
    assert mapped.matches("tcp", A("::ffff:1.2.3.4"), 80)


def test_ipv4_and_ipv6_do_not_cross():
    v6 = rule("[::/0]")
    assert v6.matches("tcp", A("2001:db8::1"), 80)
    assert not v6.matches("tcp", A("1.2.3.4"), 80)
    assert not v6.matches("tcp", A("::ffff:1.2.3.4"), 80)  # mapped addresses are IPv4
    v4 = rule("0.0.0.0/0")
    assert v4.matches("tcp", A("8.8.8.8"), 80)
    assert not v4.matches("tcp", A("::1"), 80)
    assert not v4.matches("tcp", A("::102:304"), 80)  # IPv4-compatible is not mapped
    loop6 = rule("[::1]")
    assert loop6.matches("tcp", A("::1"), 80)
    assert not loop6.matches("tcp", A("127.0.0.1"), 80)


def test_ipv6_cidr_and_scope():
    r = rule("[2606:4700::/32]:443")
    assert r.matches("tcp", A("2606:4700:1::1"), 443)
    assert not r.matches("tcp", A("2606:4701::1"), 443)
    assert rule("[fe80::/10]").matches("tcp", A("fe80::1%2"), 80)  # scope ids do not matter


def test_ports_and_protocols():
    r = rule("tcp://*:80,443,8000-8010")
    for port in (80, 443, 8000, 8005, 8010):
        assert r.matches("tcp", A("9.9.9.9"), port)
    for port in (0, 79, 81, 7999, 8011, 65535, -1, 70000, "80", None):
        assert not r.matches("tcp", A("9.9.9.9"), port)
    assert not r.matches("udp", A("9.9.9.9"), 80)
    assert not r.matches("icmp", A("9.9.9.9"), 0)
    assert rule("udp://:53").matches("udp", A("::1"), 53)
    assert not rule("udp://:53").matches("tcp", A("::1"), 53)
    both = rule(":53")
    assert both.matches("tcp", A("1.1.1.1"), 53) and both.matches("udp", A("1.1.1.1"), 53)
    assert not both.matches("icmp", A("1.1.1.1"), 53)


def test_icmp_ignores_ports():
    r = rule("icmp://8.8.8.8")
    assert r.matches("icmp", A("8.8.8.8"), 0)
    assert r.matches("icmp", A("8.8.8.8"), 12345)
    assert not r.matches("icmp", A("8.8.4.4"), 0)
    assert not r.matches("tcp", A("8.8.8.8"), 80)
    assert rule("icmp://*").matches("icmp", A("::1"), 0)


def test_is_port_only():
    assert rule("*").is_port_only and rule(":53").is_port_only and rule("icmp://").is_port_only
    assert not rule("1.2.3.4").is_port_only
    assert not rule("example.com").is_port_only
    assert not rule("[::/0]").is_port_only


def test_hostname_rule_matches_only_resolved():
    r = rule("example.com:443")
    assert not r.matches("tcp", A("93.184.216.34"), 443)  # nothing pinned: fail closed
    pinned = [A("93.184.216.34"), A("2606:2800:220:1::1")]
    assert r.matches("tcp", A("93.184.216.34"), 443, resolved=pinned)
    assert r.matches("tcp", A("::ffff:93.184.216.34"), 443, resolved=pinned)
    assert r.matches("tcp", A("2606:2800:220:1::1"), 443, resolved=pinned)
    assert not r.matches("tcp", A("93.184.216.35"), 443, resolved=pinned)
    assert not r.matches("tcp", A("93.184.216.34"), 80, resolved=pinned)


def test_matches_rejects_non_addresses():
    r = rule("1.2.3.4")
    with pytest.raises(TypeError):
        r.matches("tcp", 16909060, 80)
    with pytest.raises(ValueError):
        r.matches("tcp", "not-an-ip", 80)


# --- resolve ----------------------------------------------------------------------


def gai(*addresses):
    """getaddrinfo-shaped results for the given address strings."""
    out = []
    for a in addresses:
        if ":" in a:
            out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, 0, 0, 0)))
        else:
            out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)))
    return out


class FakeResolver:
    def __init__(self, table):
        self.table = table
        self.calls = []

    def __call__(self, host, port):
        self.calls.append((host, port))
        result = self.table[host]
        if isinstance(result, BaseException):
            raise result
        return result


def test_resolve_pins_and_dedupes():
    fake = FakeResolver({
        "api.example": gai("10.0.0.2", "10.0.0.1", "2001:db8::1", "10.0.0.1", "10.0.0.2"),
        "b.example": gai("192.0.2.7"),
    })
    rules = parse_rules(["api.example:443", "tcp://API.example:80", "b.example", "1.2.3.4:22", "udp://:53"], F)
    resolved = resolve(rules, F, resolver=fake)
    assert sorted(fake.calls) == [("api.example", None), ("b.example", None)]  # once per host
    assert resolved.rules == rules
    assert resolved.hosts == {"api.example": ("10.0.0.1", "10.0.0.2", "2001:db8::1"), "b.example": ("192.0.2.7",)}
    allows = resolved.allows
    assert allows("tcp", A("10.0.0.1"), 443) and allows("udp", A("10.0.0.2"), 443)
    assert allows("tcp", A("2001:db8::1"), 80)
    assert allows("tcp", A("::ffff:10.0.0.1"), 443)
    assert not allows("udp", A("10.0.0.1"), 80)  # port 80 only over tcp
    assert allows("tcp", A("192.0.2.7"), 1) and allows("udp", A("192.0.2.7"), 65535)
    assert not allows("tcp", A("10.0.0.3"), 443)
    assert allows("tcp", A("1.2.3.4"), 22) and not allows("tcp", A("1.2.3.4"), 23)
    assert allows("udp", A("8.8.8.8"), 53) and not allows("tcp", A("8.8.8.8"), 53)
    assert not allows("icmp", A("10.0.0.1"), 0)
    assert allows("tcp", "10.0.0.1", 443)


def test_resolve_normalizes_results():
    fake = FakeResolver({"h.example": gai("::ffff:10.1.1.1", "fe80::1%eth0", "2001:db8::2") + [
        (socket.AF_UNIX, socket.SOCK_STREAM, 0, "", ("/weird",)),
        (socket.AF_INET, socket.SOCK_STREAM, 0, "", (None, 0)),
    ]})
    resolved = resolve(parse_rules(["h.example"], F), F, resolver=fake)
    assert resolved.hosts == {"h.example": ("10.1.1.1", "2001:db8::2", "fe80::1")}


def test_resolve_without_hostnames_calls_nothing():
    fake = FakeResolver({})
    resolved = resolve(parse_rules(["1.2.3.4", ":53"], F), F, resolver=fake)
    assert fake.calls == [] and resolved.hosts == {}
    assert resolve((), F, resolver=fake) == ResolvedRules(rules=(), hosts={})


def test_resolve_accepts_rule_strings():
    fake = FakeResolver({"x.example": gai("192.0.2.1")})
    resolved = resolve(["x.example:443"], F, resolver=fake)
    assert resolved.rules == (parse_rule("x.example:443", F),)
    with pytest.raises(PolicyError, match="not a string"):
        resolve("x.example", F, resolver=fake)


@pytest.mark.parametrize(
    "result",
    [
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        OSError("network down"),
        UnicodeError("label too long"),
        [],
        None,
        gai(),
        [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("not-an-ip", 0))],
        5,
        [("short",)],
    ],
)
def test_resolve_failure_is_policy_error(result):
    fake = FakeResolver({"ok.example": gai("192.0.2.1"), "gone.example": result})
    with pytest.raises(PolicyError) as info:
        resolve(parse_rules(["ok.example", "gone.example:443"], F), F, resolver=fake)
    message = str(info.value)
    assert message.startswith("net_allow: cannot resolve 'gone.example'")
    assert message.endswith("(got 'gone.example:443')")  # the rule as written


def test_resolve_gaierror_reason_in_message():
    fake = FakeResolver({"gone.example": socket.gaierror(socket.EAI_NONAME, "Name or service not known")})
    with pytest.raises(PolicyError, match="Name or service not known"):
        resolve(parse_rules(["gone.example"], F), F, resolver=fake)


def test_hosts_file():
    fake = FakeResolver({
        "zeta.example": gai("192.0.2.9"),
        "alpha.example": gai("2001:db8::5", "192.0.2.1"),
        "localhost": gai("127.0.0.1", "::1"),
    })
    resolved = resolve(parse_rules(["zeta.example", "alpha.example:443", "localhost:8080"], F), F, resolver=fake)
    assert resolved.hosts_file() == (
        b"127.0.0.1 localhost\n"
        b"::1 localhost ip6-localhost\n"
        b"192.0.2.1 alpha.example\n"
        b"2001:db8::5 alpha.example\n"
        b"192.0.2.9 zeta.example\n"
    )
    # deterministic whatever the rule order
    again = resolve(parse_rules(["localhost:8080", "alpha.example:443", "zeta.example"], F), F, resolver=fake)
    assert again.hosts_file() == resolved.hosts_file()
    assert ResolvedRules(rules=()).hosts_file() == b"127.0.0.1 localhost\n::1 localhost ip6-localhost\n"


def test_resolve_real_localhost():
    resolved = resolve(parse_rules(["localhost:8080"], F), F)
    assert "127.0.0.1" in resolved.hosts["localhost"]
    assert resolved.allows("tcp", A("127.0.0.1"), 8080)
    assert not resolved.allows("tcp", A("127.0.0.1"), 8081)


def test_resolved_rules_hashable_and_comparable():
    fake = FakeResolver({"x.example": gai("192.0.2.1")})
    a = resolve(parse_rules(["x.example"], F), F, resolver=fake)
    b = resolve(parse_rules(["X.example."], F), F, resolver=fake)
    assert a == b and hash(a) == hash(b)
