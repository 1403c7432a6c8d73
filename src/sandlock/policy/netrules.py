"""Network rules for ``net_allow`` / ``net_deny``.

Grammar of one rule: ``[scheme://]target[:ports]``

- scheme: none (TCP and UDP), ``tcp://``, ``udp://`` or ``icmp://`` (which
  takes no port part at all); case-insensitive.
- target: a hostname, an IPv4 address or CIDR, an IPv6 address or CIDR in
  brackets (``[::1]``, ``[2606:4700::/32]``), or ``*`` / empty for any
  address. IPv4-mapped IPv6 targets become their IPv4 equivalent.
- ports: after the last ``:`` outside brackets: ``80``, ``80,443``,
  ``8000-8010``, or ``*`` (every port, also the meaning when omitted).

Parsing is strict: anything ambiguous (host bits set in a CIDR, a numeric
address in a non dotted-quad form, port 0, empty list items, spaces) is an
error rather than a guess. Every error is a :class:`PolicyError` that names
the field and quotes the rule.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field as dc_field

from .ports import MAX_PORT, PortSet
from .values import bad_value, items_of

__all__ = ["NetRule", "ResolvedRules", "parse_rule", "parse_rules", "resolve", "PROTOCOLS"]

PROTOCOLS = frozenset({"tcp", "udp", "icmp"})

_SCHEMES = {
    "tcp": frozenset({"tcp"}),
    "udp": frozenset({"udp"}),
    "icmp": frozenset({"icmp"}),
}
_DEFAULT_PROTOCOLS = frozenset({"tcp", "udp"})

_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII | re.IGNORECASE)
_DIGITS_RE = re.compile(r"[0-9]+", re.ASCII)
_PORT_ITEM_RE = re.compile(r"([0-9]+)(?:-([0-9]+))?", re.ASCII)
_PORTISH_RE = re.compile(r"[0-9][0-9,-]*", re.ASCII)
_IPV4_CHARS_RE = re.compile(r"[0-9.]+", re.ASCII)
_IPV6_CHARS_RE = re.compile(r"[0-9a-f:.]+", re.ASCII | re.IGNORECASE)
_MAX_HOSTNAME = 253

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_ANY_PORT = PortSet(any=True)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOSTS_HEADER = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
_HEADER_PAIRS = frozenset({("127.0.0.1", "localhost"), ("::1", "localhost"), ("::1", "ip6-localhost")})


# --- the rule ----------------------------------------------------------------


def _plain_address(address) -> Address:
    """An address without IPv6 scope id, IPv4-mapped IPv6 turned into IPv4."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(int(address))
        return address
    if isinstance(address, ipaddress.IPv4Address):
        return address
    raise TypeError(f"expected an IP address, not {type(address).__name__}")


def _network_spec(network: Network) -> str:
    if network.version == 4:
        if network.prefixlen == 32:
            return str(network.network_address)
        return str(network)
    if network.prefixlen == 128:
        return f"[{network.network_address}]"
    return f"[{network}]"


@dataclass(frozen=True)
class NetRule:
    """One parsed network rule.

    ``host`` and ``network`` are never both set; both None means any
    address. ``ports`` is ``PortSet(any=True)`` for "every port" and for
    ICMP rules. ``spec`` (the text as written) is not part of equality.
    """

    protocols: frozenset
    host: str | None
    network: Network | None
    ports: PortSet
    spec: str = dc_field(default="", compare=False)

    @property
    def is_port_only(self) -> bool:
        """True when the rule matches any address (only protocol and port count)."""
        return self.host is None and self.network is None

    def to_spec(self) -> str:
        """Canonical text that :func:`parse_rule` maps back to an equal rule."""
        if self.protocols == _DEFAULT_PROTOCOLS:
            scheme = ""
        elif len(self.protocols) == 1:
            scheme = f"{next(iter(self.protocols))}://"
        else:  # not produced by parse_rule
            raise ValueError(f"no rule text for protocols {sorted(self.protocols)}")
        if self.host is not None:
            target = self.host
        elif self.network is not None:
            target = _network_spec(self.network)
        else:
            target = "*"
        if self.ports.any or "icmp" in self.protocols:
            return scheme + target
        return f"{scheme}{target}:{','.join(self.ports.to_spec())}"

    def matches(self, protocol: str, address, port: int, *, resolved=()) -> bool:
        """Does a connection (protocol, address, port) fall under this rule?

        ``address`` is an IPv4/IPv6 address (or its text); IPv4-mapped IPv6
        addresses are matched as IPv4, so an IPv4 rule never matches a real
        IPv6 address and an IPv6 rule never matches an IPv4 one. A hostname
        rule matches the addresses in ``resolved`` (what the host resolved
        to) and nothing when that is empty. ICMP ignores the port.
        """
        if protocol not in self.protocols:
            return False
        if protocol != "icmp" and port not in self.ports:
            return False
        if self.is_port_only:
            return True
        address = _plain_address(address)
        if self.network is not None:
            return address.version == self.network.version and address in self.network
        return any(address == _plain_address(a) for a in resolved)


# --- parsing -----------------------------------------------------------------


def _parse_ports(text: str, field: str, rule: str) -> PortSet:
    if text == "*":
        return _ANY_PORT
    if not text:
        raise bad_value(field, rule, "empty port list after ':' (omit the ':' or write ':*' for every port)")
    ranges = []
    for item in text.split(","):
        if not item:
            raise bad_value(field, rule, "empty entry in the port list")
        if item == "*":
            raise bad_value(field, rule, "'*' (every port) cannot be combined with other ports")
        match = _PORT_ITEM_RE.fullmatch(item)
        if match is None:
            raise bad_value(field, rule, f"bad port {item!r}: expected a port like 80, a range like 8000-8010, or *")
        bounds = []
        for digits in match.groups():
            if digits is None:
                continue
            significant = digits.lstrip("0")
            if len(significant) > 5 or int(significant or "0") > MAX_PORT:
                raise bad_value(field, rule, f"port {digits} is out of range (1 to {MAX_PORT})")
            if not significant:
                raise bad_value(field, rule, "port 0 is not a valid destination port (1 to 65535)")
            bounds.append(int(significant))
        lo, hi = bounds[0], bounds[-1]
        if lo > hi:
            raise bad_value(field, rule, f"port range {item!r} starts after its end")
        ranges.append((lo, hi))
    return PortSet(ranges=tuple(ranges))


def _v4_mapped_to_v4(network: Network) -> Network:
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_IPV4_MAPPED):
        low32 = int(network.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((low32, network.prefixlen - 96))
    return network


def _split_prefix(text: str, field: str, rule: str, maximum: int) -> tuple[str, int | None]:
    """Split 'addr/len' into ('addr', len); ('addr', None) without '/'."""
    if "/" not in text:
        return text, None
    address, _, prefix = text.partition("/")
    if not _DIGITS_RE.fullmatch(prefix) or len(prefix.lstrip("0")) > 3 or int(prefix.lstrip("0") or "0") > maximum:
        raise bad_value(field, rule, f"bad prefix length {prefix!r}: expected 0 to {maximum}")
    return address, int(prefix.lstrip("0") or "0")


def _make_network(cls, address: str, prefix: int | None, field: str, rule: str) -> Network:
    width = 32 if cls is ipaddress.IPv4Network else 128
    try:
        return cls((address, width if prefix is None else prefix), strict=True)
    except ValueError:
        pass
    # strict=True failed: say whether the host bits or the address are at fault
    try:
        loose = cls((address, width if prefix is None else prefix), strict=False)
    except ValueError:
        kind = "IPv4" if width == 32 else "IPv6"
        raise bad_value(field, rule, f"{address!r} is not a valid {kind} address") from None
    raise bad_value(field, rule, f"the CIDR has host bits set: did you mean {_network_spec(loose)!r}?")


def _parse_ipv6(text: str, field: str, rule: str) -> Network:
    if not text:
        raise bad_value(field, rule, "empty brackets: put an IPv6 address inside, or use '*' for any address")
    if "%" in text:
        raise bad_value(field, rule, "IPv6 zone ids ('%...') are not supported in rules")
    address, prefix = _split_prefix(text, field, rule, 128)
    if not _IPV6_CHARS_RE.fullmatch(address) or ":" not in address:
        if _IPV4_CHARS_RE.fullmatch(address):
            raise bad_value(field, rule, "brackets are only for IPv6 addresses: write IPv4 addresses without them")
        raise bad_value(field, rule, f"{address!r} is not a valid IPv6 address")
    return _v4_mapped_to_v4(_make_network(ipaddress.IPv6Network, address, prefix, field, rule))


def _parse_ipv4(text: str, field: str, rule: str) -> Network:
    address, prefix = _split_prefix(text, field, rule, 32)
    if not _IPV4_CHARS_RE.fullmatch(address) or address.count(".") != 3:
        raise bad_value(field, rule, f"{address!r} is not a valid IPv4 address (expected a.b.c.d)")
    return _make_network(ipaddress.IPv4Network, address, prefix, field, rule)


def _parse_hostname(text: str, field: str, rule: str) -> str:
    if not text.isascii():
        raise bad_value(field, rule, "hostnames must be ASCII (write internationalized names in punycode, 'xn--...')")
    host = text[:-1] if text.endswith(".") else text
    if not host:
        raise bad_value(field, rule, "empty hostname")
    if len(host) > _MAX_HOSTNAME:
        raise bad_value(field, rule, f"hostname is longer than {_MAX_HOSTNAME} characters")
    labels = host.split(".")
    for label in labels:
        if not _LABEL_RE.fullmatch(label):
            raise bad_value(
                field, rule,
                f"invalid hostname label {label!r}: labels are 1 to 63 letters, digits and hyphens, "
                "not starting or ending with a hyphen")
    if _DIGITS_RE.fullmatch(labels[-1]):
        raise bad_value(field, rule, f"{text!r} is neither a valid IPv4 address (a.b.c.d) nor a hostname")
    try:
        socket.inet_aton(host)
    except OSError:
        pass
    else:  # e.g. '0x7f000001': the resolver would read it as a number
        raise bad_value(field, rule, f"{text!r} reads as a numeric IPv4 address: write it as a.b.c.d")
    return host.lower()


def _parse_target(text: str, field: str, rule: str) -> tuple[str | None, Network | None]:
    if text in ("", "*"):
        return None, None
    if ":" in text:
        raise bad_value(field, rule, "put IPv6 addresses in brackets, e.g. '[::1]' or '[::1]:443'")
    if "[" in text or "]" in text:
        raise bad_value(field, rule, "misplaced bracket: write IPv6 addresses as '[addr]' or '[addr]:ports'")
    if "*" in text:
        raise bad_value(field, rule, "wildcards are not supported in hosts: use '*' alone for any address")
    if _PORTISH_RE.fullmatch(text):
        raise bad_value(field, rule, f"{text!r} is not an address: for ports on any address write ':{text}'")
    if "/" in text or (_IPV4_CHARS_RE.fullmatch(text) and text.strip(".")):
        if not _IPV4_CHARS_RE.fullmatch(text.partition("/")[0]):
            raise bad_value(field, rule, "a CIDR needs an IP address before '/' (IPv6 CIDRs go in brackets)")
        return None, _parse_ipv4(text, field, rule)
    return _parse_hostname(text, field, rule), None


def parse_rule(text, field: str) -> NetRule:
    """Parse one ``[scheme://]target[:ports]`` rule (see the module docstring)."""
    if not isinstance(text, str):
        raise bad_value(field, text, "each network rule must be a str like 'example.com:443'")
    rule = text.strip()
    if not rule:
        raise bad_value(field, text, "empty network rule")
    if any(c.isspace() for c in rule):
        raise bad_value(field, text, "spaces are not allowed inside a network rule")
    if not rule.isprintable():
        raise bad_value(field, text, "control characters are not allowed in a network rule")

    protocols = _DEFAULT_PROTOCOLS
    rest = rule
    if "://" in rule:
        scheme, _, rest = rule.partition("://")
        scheme_protocols = _SCHEMES.get(scheme.lower())
        if scheme_protocols is None:
            raise bad_value(field, text, f"unknown scheme {scheme!r}: expected tcp://, udp:// or icmp://")
        if "://" in rest:
            raise bad_value(field, text, "more than one scheme in the rule")
        protocols = scheme_protocols

    ports_text = None
    host: str | None
    network: Network | None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise bad_value(field, text, "missing ']' after the IPv6 address")
        inside, after = rest[1:end], rest[end + 1:]
        if after.startswith("/"):
            raise bad_value(field, text, "put the prefix length inside the brackets, e.g. '[2001:db8::/32]'")
        if after and not after.startswith(":"):
            raise bad_value(field, text, "expected ':ports' or nothing after ']'")
        if after:
            ports_text = after[1:]
        host, network = None, _parse_ipv6(inside, field, text)
    else:
        target = rest
        if rest.count(":") == 1:
            target, _, ports_text = rest.partition(":")
        host, network = _parse_target(target, field, text)

    if protocols == _SCHEMES["icmp"]:
        if ports_text is not None:
            raise bad_value(field, text, "icmp:// rules take no port")
        ports = _ANY_PORT
    elif ports_text is None:
        ports = _ANY_PORT
    else:
        ports = _parse_ports(ports_text, field, text)
    return NetRule(protocols=protocols, host=host, network=network, ports=ports, spec=text)


def parse_rules(value, field: str, *, allow_hostnames: bool = True) -> tuple[NetRule, ...]:
    """Parse a list of rules; equal rules are kept once, in first-seen order.

    With ``allow_hostnames=False`` (net_deny) a hostname target is an error.
    """
    seen: dict[NetRule, None] = {}
    for item in items_of(value, field, "network rules"):
        rule = parse_rule(item, field)
        if rule.host is not None and not allow_hostnames:
            raise bad_value(field, item, f"{field} takes literal IPs or CIDRs, not hostnames")
        seen.setdefault(rule, None)
    return tuple(seen)


# --- resolution --------------------------------------------------------------


def _sort_key(address: Address):
    return (address.version, int(address))


@dataclass(frozen=True)
class ResolvedRules:
    """Rules with every hostname resolved once and pinned.

    ``hosts`` maps each hostname to its sorted unique addresses (IPv4 first,
    then IPv6, numerically), the content of the sandbox's /etc/hosts.
    """

    rules: tuple
    hosts: dict = dc_field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        pinned = {
            host: frozenset(_plain_address(a) for a in addresses)
            for host, addresses in self.hosts.items()
        }
        object.__setattr__(self, "_pinned", pinned)

    def allows(self, protocol: str, address, port: int) -> bool:
        """True when some rule matches; hostname rules match their pinned addresses."""
        address = _plain_address(address)
        for rule in self.rules:
            pinned: dict = self._pinned  # type: ignore[attr-defined]  # set in __post_init__
            resolved = pinned.get(rule.host, ()) if rule.host is not None else ()
            if rule.matches(protocol, address, port, resolved=resolved):
                return True
        return False

    def hosts_file(self) -> bytes:
        """A synthetic /etc/hosts: localhost lines, then 'IP hostname' per pinned address."""
        lines = [_HOSTS_HEADER]
        for host in sorted(self.hosts):
            for address in self.hosts[host]:
                if (address, host) not in _HEADER_PAIRS:
                    lines.append(f"{address} {host}\n")
        return "".join(lines).encode("ascii")


def _lookup(host: str, field: str, resolver, spec: str) -> tuple[str, ...]:
    try:
        results = resolver(host, None)
    except (OSError, UnicodeError, ValueError) as exc:  # socket.gaierror is an OSError
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise bad_value(field, spec, f"cannot resolve {host!r}: {reason}") from exc
    addresses = set()
    try:
        for entry in results or ():
            sockaddr = entry[4]
            text = sockaddr[0]
            if isinstance(text, str):
                try:
                    addresses.add(_plain_address(text))
                except ValueError:
                    continue
    except (TypeError, IndexError, KeyError) as exc:
        raise bad_value(field, spec, f"cannot resolve {host!r}: the resolver returned a malformed result") from exc
    if not addresses:
        raise bad_value(field, spec, f"cannot resolve {host!r}: no IPv4 or IPv6 address")
    return tuple(str(a) for a in sorted(addresses, key=_sort_key))


def resolve(rules, field: str, resolver=socket.getaddrinfo) -> ResolvedRules:
    """Resolve each distinct hostname in ``rules`` once with ``resolver(host, None)``.

    ``rules`` is what :func:`parse_rules` returns (a list of rule strings is
    parsed first). A host that does not resolve is a PolicyError.
    """
    if isinstance(rules, (tuple, list)) and all(isinstance(r, NetRule) for r in rules):
        rules = tuple(rules)
    else:
        rules = parse_rules(rules, field)
    hosts: dict[str, tuple[str, ...]] = {}
    for rule in rules:
        if rule.host is not None and rule.host not in hosts:
            hosts[rule.host] = _lookup(rule.host, field, resolver, rule.spec or rule.to_spec())
    return ResolvedRules(rules=rules, hosts=dict(sorted(hosts.items())))
