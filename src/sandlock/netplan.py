"""Network policy → what Landlock, the filter and the supervisor enforce.

- TCP connects: Landlock allows the ports some rule names (or every port
  when a rule allows them all); the supervisor checks the address of every
  connect and performs it on the child's behalf, never granting more than
  those ports.
- UDP and ICMP (ping) sockets exist only when a rule allows that protocol;
  raw sockets never.
- Binds: Landlock for net_allow_bind (TCP); the supervisor, on the child's
  behalf, for net_deny_bind and port_remap.
- Hostnames are resolved once, here, and pinned in a synthetic /etc/hosts.
- HTTP rules (http_allow / http_deny, httpacl.py): TCP connects to the
  HTTP ports go to the supervisor's proxy (supervisor/httpproxy.py); the
  hosts the allow rules name are added to net_allow on those ports (every
  host when a rule, or the absence of allow rules, lets any through), and
  UDP to those ports is refused (QUIC would bypass the proxy).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .httpacl import HttpAcl
from .policy.netrules import ResolvedRules
from .policy.ports import PortSet

# Above this many distinct TCP ports, Landlock is not asked to handle
# connects (one rule per port) and the supervisor alone decides.
MAX_LANDLOCK_PORTS = 4096


MAX_BUNDLE = 16 << 20   # bytes of a trust bundle read (http_inject_ca)


@dataclass
class NetPlan:
    allow: ResolvedRules | None = None  # net_allow, hostnames resolved and pinned
    deny: tuple = ()                # NetRules of net_deny (default-allow mode)
    udp: bool = False               # may UDP sockets be created
    icmp: bool = False              # may ping sockets be created
    connect_ports: list[int] | None = field(default_factory=list)  # None: Landlock leaves connects open
    allow_bind: PortSet = PortSet()
    deny_bind: PortSet = PortSet()
    port_remap: bool = False
    hosts_file: bytes | None = None
    # TCP connects are Landlock's alone (rules name ports, not addresses):
    # the supervisor lets them through without reading the address.
    tcp_by_landlock: bool = True
    http: HttpAcl | None = None     # the HTTP ACL: its ports are proxied

    def permits(self, protocol: str, address, port: int) -> bool:
        """May the sandbox reach address:port over protocol?"""
        if self.deny:
            return not any(r.matches(protocol, address, port) for r in self.deny)
        if self.allow is None:
            return False
        return self.allow.allows(protocol, address, port)

    def http_port(self, protocol: str, port: int) -> bool:
        """Is this a connect or send the HTTP ACL takes (tcp) or refuses (udp)?"""
        return self.http is not None and protocol in ("tcp", "udp") and port in self.http.ports

    def static_paths(self) -> tuple[str, ...]:
        """Files the supervisor serves with fixed content (the sandbox never
        opens the real ones): the pinned /etc/hosts, the trust bundles with
        the HTTPS interception CA appended (http_inject_ca)."""
        out = ("/etc/hosts",) if self.hosts_file is not None else ()
        return out + (self.http.bundles if self.http is not None else ())

    def static_files(self) -> dict[bytes, bytes]:
        """The static_paths with their content (the supervisor's side: a
        bundle is read now, the CA appended; a missing one is the CA alone)."""
        out: dict[bytes, bytes] = {}
        if self.hosts_file is not None:
            out[b"/etc/hosts"] = self.hosts_file
        if self.http is not None and self.http.ca is not None:
            for path in self.http.bundles:
                try:
                    with open(path, "rb") as f:
                        content = f.read(MAX_BUNDLE)
                except OSError:
                    content = b""
                if content and not content.endswith(b"\n"):
                    content += b"\n"
                out[os.fsencode(path)] = content + self.http.ca[0]
        return out

    def tcp_port_open(self, port: int) -> bool:
        """Would the child's own Landlock ruleset let it connect to `port`?"""
        return self.connect_ports is None or port in self.connect_ports


def _connect_held(policy) -> bool:
    """policy_fn judges connects: the supervisor must make them itself, to
    the address it showed the callback (the kernel would read it again)."""
    return policy.policy_fn is not None and "connect" in policy.policy_fn.held


def plan_network(policy) -> NetPlan:
    from .policy import netrules
    allow_bind = policy.net_allow_bind
    if allow_bind.is_empty and not policy.net_deny_bind.is_empty:
        allow_bind = PortSet(any=True)  # a deny-list alone: every other port may be bound
    plan = NetPlan(allow_bind=allow_bind, deny_bind=policy.net_deny_bind,
                   port_remap=policy.port_remap,
                   tcp_by_landlock=not policy.port_remap and policy.http is None
                   and not _connect_held(policy), http=policy.http)
    if policy.net_deny:
        plan.tcp_by_landlock = False
        plan.deny = tuple(policy.net_deny)
        plan.udp = plan.icmp = True
        plan.connect_ports = None
        return plan
    rules = tuple(policy.net_allow)
    if policy.http is not None:
        rules += netrules.parse_rules(list(policy.http.net_allow_specs()), "http_allow")
    if not rules:
        return plan  # no network: every connect denied, no UDP/ICMP
    plan.allow = netrules.resolve(rules, "net_allow")
    plan.udp = any("udp" in r.protocols for r in rules)
    plan.icmp = any("icmp" in r.protocols for r in rules)
    tcp = [r for r in rules if "tcp" in r.protocols]
    if any(r.ports.any for r in tcp):
        plan.connect_ports = None
    else:
        ports = sorted({p for r in tcp for lo, hi in r.ports.ranges for p in range(lo, hi + 1)})
        plan.connect_ports = ports if len(ports) <= MAX_LANDLOCK_PORTS else None
    if plan.connect_ports is None or not all(r.is_port_only for r in tcp):
        plan.tcp_by_landlock = False
    if plan.allow.hosts:
        plan.hosts_file = plan.allow.hosts_file()
    return plan
