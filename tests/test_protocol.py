"""The protocol module: every message round-trips, and a decoder refuses
what its channel does not carry (wrong kind, version, truncation)."""
from __future__ import annotations

import struct

import pytest

from sandlock import protocol
from sandlock.launch import launch_message
from sandlock.plan import compile_plan
from sandlock.policy.model import Policy
from sandlock.policy.netrules import parse_rules

C = protocol.Channel


def roundtrip(msg, channel):
    return protocol.decode(protocol.encode(msg), channel)


@pytest.mark.parametrize("msg,channel", [
    (protocol.SpareRequest(), C.SERVER),
    (protocol.SpareReady(), C.SERVER),
    (protocol.SpareFailed("fork: no memory"), C.SERVER),
    (protocol.ChildOffer(1234), C.OFFER),
    (protocol.ListenerFd(7), C.HANDOFF),
    (protocol.ListenerAck(True), C.HANDOFF),
    (protocol.ChildFailed(protocol.Step.EXEC, 2, "/bin/nope"), C.CHILD_ERROR),
    (protocol.Command(protocol.Cmd.PAUSE), C.CONTROL),
    (protocol.Started(10, 11), C.RESULT),
    (protocol.PortMapped(8080, 40001), C.RESULT),
    (protocol.Finished(protocol.Reason.SIGNALED, 9, "", ["max_memory: killed 5"],
                       protocol.ChildFailed(protocol.Step.LANDLOCK, 1, "")), C.RESULT),
    (protocol.Finished(), C.RESULT),
    (protocol.Finished(protocol.Reason.EXITED, 256, denials=[
        ("file", "/data/x", "chmod", 13, "fs_writable", "/data/x", "", 2),
        ("process", "/proc/1", "openat", 2, "", "", "not a process of the sandbox", 1)],
        denials_more=5), C.RESULT),
])
def test_roundtrip(msg, channel):
    assert roundtrip(msg, channel) == msg


def test_finished_refuses_malformed_denials():
    good = protocol.Finished(protocol.Reason.EXITED, 0, denials=[("file", "/x", "chmod", 13, "", "", "", 1)])
    payload = list(good._fields())
    for bad in ([("file", "/x")], [("file", "/x", "chmod", "13", "", "", "", 1)], [None]):
        payload[5] = bad
        with pytest.raises((ValueError, TypeError)):
            protocol.Finished._build(tuple(payload))
    import marshal
    payload[5] = [("file", "/x", "chmod", 13, "", "", "", "1")]
    data = marshal.dumps(tuple(payload))
    frame = protocol._HEADER.pack(protocol.VERSION, protocol.Kind.FINISHED, len(data)) + data
    with pytest.raises(protocol.ProtocolError, match="denials"):
        protocol.decode(frame, C.RESULT)


def test_launch_roundtrip_keeps_the_plan():
    policy = Policy(fs_readable=("/usr", "/etc"), fs_denied=("/etc/ssh",),
                    net_allow=parse_rules(["127.0.0.1:80", "udp://10.0.0.0/8:53", "[::1]:*"], "net_allow"),
                    max_memory=1 << 30, num_cpus=2)
    plan = compile_plan(policy, ["/bin/true", "a\udcff"])
    msg = launch_message(plan, 2.5, 0o027, True)
    back = roundtrip(msg, C.LAUNCH)
    assert back.child == msg.child
    assert back.supervisor.fs == msg.supervisor.fs and back.supervisor.fs.rules == ()
    assert back.supervisor.net.allow.rules == msg.supervisor.net.allow.rules
    assert back.supervisor.net.connect_ports == msg.supervisor.net.connect_ports
    assert back.supervisor.timeout == 2.5 and back.supervisor.routes == plan.routes
    import ipaddress
    assert back.supervisor.net.permits("tcp", ipaddress.ip_address("127.0.0.1"), 80)
    assert not back.supervisor.net.permits("tcp", ipaddress.ip_address("127.0.0.1"), 81)


def test_launch_roundtrip_keeps_the_http_acl():
    from sandlock import httpacl
    acl = httpacl.HttpAcl(httpacl.parse_rules(["GET 127.0.0.1/v1/*", "* *.example.com"], "http_allow"),
                          httpacl.parse_rules(["POST *"], "http_deny"), (8080, 80))
    plan = compile_plan(Policy(fs_readable=("/usr",), http=acl), ["/bin/true"])
    back = roundtrip(launch_message(plan, None, 0o022, True), C.LAUNCH)
    assert back.supervisor.net.http == acl and not back.supervisor.net.tcp_by_landlock
    assert compile_plan(Policy(fs_readable=("/usr",)), ["/bin/true"]).net.http is None


def test_launch_roundtrip_keeps_the_https_interception():
    from sandlock import httpacl
    rules = httpacl.parse_rules(["GET 127.0.0.1/*"], "http_allow")
    acl = httpacl.HttpAcl(rules, (), (80, 443), True, None, (b"CERT", b"KEY"),
                          ("/etc/ssl/certs/ca-certificates.crt",), b"UP", "/site")
    plan = compile_plan(Policy(fs_readable=("/usr",), http=acl), ["/bin/true"])
    back = roundtrip(launch_message(plan, None, 0o022, True), C.LAUNCH)
    assert back.supervisor.net.http == acl
    assert back.supervisor.net.static_paths() == ("/etc/ssl/certs/ca-certificates.crt",)


def test_launch_roundtrip_keeps_extra_fds_and_refuses_bad_ones():
    plan = compile_plan(Policy(fs_readable=("/usr",)), ["/bin/true"])
    assert launch_message(plan, None, 0o022, True).child.extra_fds == ()
    msg = launch_message(plan, None, 0o022, True, n_extra=3)
    assert msg.child.extra_fds == (3, 4, 5)
    assert roundtrip(msg, C.LAUNCH).child == msg.child
    for bad in ((2,), (3, 3), tuple(range(3, 4 + protocol.MAX_EXTRA_FDS))):
        msg.child.extra_fds = bad
        with pytest.raises(protocol.ProtocolError, match="extra_fds"):
            roundtrip(msg, C.LAUNCH)


@pytest.mark.parametrize("msg,wrong", [
    (protocol.Command(protocol.Cmd.KILL), C.RESULT),
    (protocol.Started(1, 2), C.CONTROL),
    (protocol.SpareRequest(), C.LAUNCH),
    (protocol.ChildFailed(), C.HANDOFF),
])
def test_a_channel_refuses_other_kinds(msg, wrong):
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(protocol.encode(msg), wrong)


def test_refuses_other_versions_and_torn_frames():
    frame = protocol.encode(protocol.Started(1, 2))
    with pytest.raises(protocol.ProtocolError, match="version"):
        protocol.decode(bytes([protocol.VERSION + 1]) + frame[1:], C.RESULT)
    for cut in (0, 3, len(frame) - 1):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode(frame[:cut], C.RESULT)
    bad = struct.pack("=BBI", protocol.VERSION, protocol.Kind.STARTED, 3) + b"\xff\xff\xff"
    with pytest.raises(protocol.ProtocolError, match="malformed"):
        protocol.decode(bad, C.RESULT)


def test_stream_reader_reassembles_frames():
    frames = b"".join(protocol.encode(m) for m in (
        protocol.Started(5, 6), protocol.PortMapped(1, 2), protocol.Finished(protocol.Reason.EXITED, 0)))
    reader = protocol.Reader(C.RESULT)
    got = []
    for i in range(len(frames)):
        got += reader.feed(frames[i:i + 1])
    assert [type(m).__name__ for m in got] == ["Started", "PortMapped", "Finished"]
    assert not reader.partial


def test_reader_refuses_a_huge_frame():
    reader = protocol.Reader(C.RESULT)
    with pytest.raises(protocol.ProtocolError):
        reader.feed(struct.pack("=BBI", protocol.VERSION, protocol.Kind.FINISHED, protocol.MAX_PAYLOAD + 1))
