"""AutoNAT v1's judgements on a fake clock: the reachability verdict (flips only on enough agreeing
servers, one vote per server and per network segment, votes expire) and the server's checks of a DIAL
request (third parties refused, rates)."""

from __future__ import annotations

import ipaddress

import pytest

from mimirlite.identity import PeerId
from mimirlite.protocols.autonat import (
    AutonatMessage,
    Dial,
    DialPolicy,
    DialPolicyConfig,
    DialRefusal,
    DialResponse,
    MessageType,
    PeerInfo,
    Reachability,
    ReachabilityTracker,
    ResponseStatus,
    TrackerConfig,
    decode_message,
    dial_outcome,
    encode_message,
)
from mimirlite.wire.multiaddr import Multiaddr

from .test_messages import JS_AUTONAT

SERVERS = [PeerId(b"\x12\x20" + bytes([i]) * 32) for i in range(1, 12)]
OURS = Multiaddr.parse("/ip4/81.2.69.142/tcp/4001")


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def server_ip(i: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Server i in its own network segment (first octet)."""
    return ip(f"{20 + i}.1.2.3")


# ---------------------------------------------------------------- the verdict


def test_public_only_after_four_agreeing_servers() -> None:
    t = ReachabilityTracker()
    assert t.reachability is Reachability.UNKNOWN
    for i in range(3):
        assert t.record(SERVERS[i], True, OURS, now=float(i), server_ip=server_ip(i)) is None
    assert t.reachability is Reachability.UNKNOWN
    assert t.record(SERVERS[3], True, OURS, now=3.0, server_ip=server_ip(3)) is Reachability.PUBLIC
    assert t.reachability is Reachability.PUBLIC
    assert t.confirmed_addrs(now=3.0) == [OURS]
    assert t.record(SERVERS[4], True, OURS, now=4.0, server_ip=server_ip(4)) is None  # no change


def test_private_only_after_four_agreeing_failures_outnumbering_successes() -> None:
    t = ReachabilityTracker()
    for i in range(4):
        t.record(SERVERS[i], True, OURS, now=0.0, server_ip=server_ip(i))
    assert t.reachability is Reachability.PUBLIC
    # four failures tie four successes: the verdict holds
    for i in range(4, 8):
        assert t.record(SERVERS[i], False, None, now=1.0, server_ip=server_ip(i)) is None
    assert t.reachability is Reachability.PUBLIC
    assert t.record(SERVERS[8], False, None, now=2.0, server_ip=server_ip(8)) is Reachability.PRIVATE
    assert t.confirmed_addrs(now=2.0) == [OURS]  # the successes still count, outnumbered


def test_one_server_repeating_itself_is_one_vote() -> None:
    t = ReachabilityTracker()
    for n in range(10):
        assert t.record(SERVERS[0], True, OURS, now=float(n)) is None
    assert t.reachability is Reachability.UNKNOWN
    # a server changing its mind replaces its vote
    for i in range(1, 4):
        t.record(SERVERS[i], True, OURS, now=10.0)
    assert t.reachability is Reachability.PUBLIC
    assert t.record(SERVERS[0], False, None, now=11.0) is None  # 3 ok, 1 failed: still public


def test_servers_in_one_network_segment_count_once() -> None:
    t = ReachabilityTracker()
    for i in range(6):  # six servers, all in 20.0.0.0/8
        t.record(SERVERS[i], True, OURS, now=0.0, server_ip=ip(f"20.0.0.{i + 1}"))
    assert t.reachability is Reachability.UNKNOWN
    t.record(SERVERS[6], True, OURS, now=0.0, server_ip=ip("2a00:1450::1"))
    t.record(SERVERS[7], True, OURS, now=0.0, server_ip=ip("2a00:1451::1"))  # same first group: once
    t.record(SERVERS[8], True, OURS, now=0.0, server_ip=ip("2a01::1"))
    assert t.reachability is Reachability.UNKNOWN  # 20/8, 2a00::/16, 2a01::/16: three segments
    assert t.record(SERVERS[9], True, OURS, now=0.0, server_ip=ip("21.0.0.1")) is Reachability.PUBLIC
    t2 = ReachabilityTracker()
    for i in range(3):
        t2.record(SERVERS[i], True, OURS, now=0.0, server_ip=ip(f"20.0.0.{i + 1}"))
    assert t2.record(SERVERS[3], True, OURS, now=0.0) is None  # no IP known: its own segment, 2 in all
    assert t2.record(SERVERS[4], True, OURS, now=0.0) is None
    assert t2.record(SERVERS[5], True, OURS, now=0.0) is Reachability.PUBLIC


def test_votes_expire_and_the_verdict_returns_to_unknown() -> None:
    t = ReachabilityTracker(TrackerConfig(result_ttl=100.0))
    assert t.get_timer() is None
    for i in range(4):
        t.record(SERVERS[i], True, OURS, now=float(i * 10), server_ip=server_ip(i))
    assert t.reachability is Reachability.PUBLIC
    assert t.get_timer() == 100.0
    # the first vote expires: three are left, too few to flip, the verdict holds
    assert t.handle_timer(99.9) is None
    assert t.handle_timer(100.0) is None
    assert t.get_timer() == 110.0
    assert t.confirmed_addrs(now=100.0) == [OURS]
    # a late failure does not outnumber the 3 successes left
    assert t.record(SERVERS[5], False, None, now=105.0, server_ip=server_ip(5)) is None
    assert t.handle_timer(130.0) is None  # 0 ok, 1 failed: not enough to flip
    assert t.reachability is Reachability.PUBLIC
    assert t.confirmed_addrs(now=130.0) == []
    assert t.handle_timer(205.0) is Reachability.UNKNOWN  # the last vote is gone
    assert t.get_timer() is None


def test_expired_votes_do_not_count_towards_a_flip() -> None:
    t = ReachabilityTracker(TrackerConfig(result_ttl=60.0))
    for i in range(3):
        t.record(SERVERS[i], True, OURS, now=0.0, server_ip=server_ip(i))
    # the fourth comes after the first three expired
    assert t.record(SERVERS[3], True, OURS, now=60.0, server_ip=server_ip(3)) is None
    assert t.reachability is Reachability.UNKNOWN


def test_the_required_count_is_configurable() -> None:
    t = ReachabilityTracker(TrackerConfig(required=2))
    t.record(SERVERS[0], False, None, now=0.0, server_ip=server_ip(0))
    assert t.record(SERVERS[1], False, None, now=0.0, server_ip=server_ip(1)) is Reachability.PRIVATE


def test_dial_outcome_reads_js_answers() -> None:
    outcomes = {
        name: dial_outcome(decode_message(bytes.fromhex(h))[0]) for name, (h, _) in JS_AUTONAT.items()
    }
    assert outcomes == {
        "DIAL one address": None,
        "DIAL three addresses": None,
        "DIAL_RESPONSE OK": True,
        "DIAL_RESPONSE E_DIAL_ERROR": False,
        "DIAL_RESPONSE E_DIAL_ERROR empty text": False,
        "DIAL_RESPONSE E_DIAL_REFUSED": None,
        "DIAL_RESPONSE E_BAD_REQUEST": None,
        "DIAL_RESPONSE E_INTERNAL_ERROR": None,
    }
    # a DIAL carrying a response is not an answer
    assert (
        dial_outcome(AutonatMessage(MessageType.DIAL, dial_response=DialResponse(ResponseStatus.OK))) is None
    )


# ---------------------------------------------------------------- the server's checks

REQUESTER = PeerId(b"\x12\x20" + bytes([0x77]) * 32)
OTHER = SERVERS[0]
OBSERVED = ip("81.2.69.142")


def dial(*texts: str, peer: PeerId | None = REQUESTER) -> AutonatMessage:
    return AutonatMessage(MessageType.DIAL, Dial(PeerInfo(peer, tuple(Multiaddr.parse(t) for t in texts))))


def refusal(got: object) -> tuple[ResponseStatus, str]:
    assert isinstance(got, DialRefusal)
    return got.status, got.text


def test_only_addresses_on_the_observed_ip_are_dialed_with_the_requester_s_id() -> None:
    policy = DialPolicy()
    got = policy.check_dial(
        dial(
            "/ip4/81.2.69.142/tcp/4001",
            "/ip4/81.2.69.143/tcp/4001",  # a neighbour: a third party
            "/ip4/93.184.216.34/tcp/80",  # someone else entirely
            f"/ip4/81.2.69.142/tcp/4002/p2p/{REQUESTER}",
            f"/ip4/81.2.69.142/tcp/4003/p2p/{OTHER}",  # another peer's ID on the right IP
            "/ip4/81.2.69.142/tcp/4001",  # twice: once
            "/ip4/81.2.69.142/udp/4001/quic-v1",  # not a transport mimirlite dials
            f"/ip4/81.2.69.142/tcp/4001/p2p/{OTHER}/p2p-circuit",  # a relay
            "/dns4/example.org/tcp/4001",
            "/ip6/2a00:1450::7/tcp/4001",
        ),
        REQUESTER,
        OBSERVED,
        now=0.0,
    )
    assert got == [
        Multiaddr.parse(f"/ip4/81.2.69.142/tcp/4001/p2p/{REQUESTER}"),
        Multiaddr.parse(f"/ip4/81.2.69.142/tcp/4002/p2p/{REQUESTER}"),
    ]


def test_a_js_dial_request_is_checked() -> None:
    msg, _ = decode_message(bytes.fromhex(JS_AUTONAT["DIAL three addresses"][0]))
    assert msg.dial is not None and msg.dial.peer is not None and msg.dial.peer.peer is not None
    js1 = msg.dial.peer.peer
    got = DialPolicy().check_dial(msg, js1, OBSERVED, now=0.0)
    assert got == [
        Multiaddr.parse(f"/ip4/81.2.69.142/tcp/4001/p2p/{js1}"),
        Multiaddr.parse(f"/ip4/81.2.69.142/tcp/4002/p2p/{js1}"),
    ]
    # from another IP, nothing of it is dialed
    assert refusal(DialPolicy().check_dial(msg, js1, ip("93.184.216.34"), now=0.0)) == (
        ResponseStatus.E_DIAL_REFUSED,
        "no dialable addresses",
    )


@pytest.mark.parametrize(
    ("request_msg", "observed", "expected"),
    [
        (
            dial("/ip4/81.2.69.142/tcp/4001"),
            None,
            (ResponseStatus.E_DIAL_REFUSED, "refusing a dial request over a relay"),
        ),
        (
            AutonatMessage(MessageType.DIAL),
            OBSERVED,
            (ResponseStatus.E_BAD_REQUEST, "no Dial message found in message"),
        ),
        (
            AutonatMessage(MessageType.DIAL_RESPONSE, Dial(PeerInfo(REQUESTER))),
            OBSERVED,
            (ResponseStatus.E_BAD_REQUEST, "no Dial message found in message"),
        ),
        (
            AutonatMessage(MessageType.DIAL, Dial()),
            OBSERVED,
            (ResponseStatus.E_BAD_REQUEST, "missing or bad peer id"),
        ),
        (
            dial("/ip4/81.2.69.142/tcp/4001", peer=None),
            OBSERVED,
            (ResponseStatus.E_BAD_REQUEST, "missing or bad peer id"),
        ),
        (
            dial("/ip4/81.2.69.142/tcp/4001", peer=OTHER),
            OBSERVED,
            (ResponseStatus.E_BAD_REQUEST, "peer id mismatch"),
        ),
        (dial(), OBSERVED, (ResponseStatus.E_DIAL_REFUSED, "no dialable addresses")),
    ],
)
def test_bad_requests_are_refused(
    request_msg: AutonatMessage,
    observed: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    expected: tuple[ResponseStatus, str],
) -> None:
    assert refusal(DialPolicy().check_dial(request_msg, REQUESTER, observed, now=0.0)) == expected


def test_a_refusal_s_response_is_a_dial_response() -> None:
    got = DialPolicy().check_dial(dial(), REQUESTER, OBSERVED, now=0.0)
    assert isinstance(got, DialRefusal)
    body = encode_message(got.response())
    assert body == bytes.fromhex(JS_AUTONAT["DIAL_RESPONSE E_DIAL_REFUSED"][0])  # what autonat.js answers


@pytest.mark.parametrize(
    "private",
    ["127.0.0.1", "10.0.0.5", "192.168.1.9", "169.254.3.4", "100.64.1.1", "::1", "fe80::1", "fd00::5"],
)
def test_a_public_server_dials_no_private_address_unless_allowed(private: str) -> None:
    text = f"/ip{ip(private).version}/{private}/tcp/4001"
    refused = DialPolicy().check_dial(dial(text), REQUESTER, ip(private), now=0.0)
    assert refusal(refused) == (ResponseStatus.E_DIAL_REFUSED, "no dialable addresses")
    lan = DialPolicy(DialPolicyConfig(allow_private=True))
    assert lan.check_dial(dial(text), REQUESTER, ip(private), now=0.0) == [
        Multiaddr.parse(text).with_peer_id(REQUESTER)
    ]


def test_the_count_dialed_is_capped() -> None:
    texts = [f"/ip4/81.2.69.142/tcp/{4000 + i}" for i in range(30)]
    got = DialPolicy().check_dial(dial(*texts), REQUESTER, OBSERVED, now=0.0)
    assert isinstance(got, list) and len(got) == 16  # go-libp2p's maxPeerAddresses
    got = DialPolicy(DialPolicyConfig(max_addrs=2)).check_dial(dial(*texts), REQUESTER, OBSERVED, now=0.0)
    assert got == [Multiaddr.parse(t).with_peer_id(REQUESTER) for t in texts[:2]]


def test_per_peer_rate() -> None:
    policy = DialPolicy()
    req = dial("/ip4/81.2.69.142/tcp/4001")
    for _ in range(3):
        assert isinstance(policy.check_dial(req, REQUESTER, OBSERVED, now=0.0), list)
    assert refusal(policy.check_dial(req, REQUESTER, OBSERVED, now=0.0)) == (
        ResponseStatus.E_DIAL_REFUSED,
        "too many dial requests from this peer",
    )
    # another peer is not held back by this one
    other_req = dial("/ip4/81.2.69.200/tcp/4001", peer=OTHER)
    assert isinstance(policy.check_dial(other_req, OTHER, ip("81.2.69.200"), now=0.0), list)
    # one request's worth comes back after 20 s (3 a minute)
    assert refusal(policy.check_dial(req, REQUESTER, OBSERVED, now=19.9))[0] is ResponseStatus.E_DIAL_REFUSED
    assert isinstance(policy.check_dial(req, REQUESTER, OBSERVED, now=40.0), list)


def test_global_rate() -> None:
    policy = DialPolicy(DialPolicyConfig(global_per_minute=5))
    peers = [PeerId(b"\x12\x20" + bytes([0x80 + i]) * 32) for i in range(7)]
    for n, peer in enumerate(peers):
        got = policy.check_dial(dial("/ip4/81.2.69.142/tcp/4001", peer=peer), peer, OBSERVED, now=1.0)
        if n < 5:
            assert isinstance(got, list)
        else:
            assert refusal(got) == (ResponseStatus.E_DIAL_REFUSED, "too many dial requests")
    # refills at 5 a minute: one more after 12 s
    assert isinstance(
        policy.check_dial(dial("/ip4/81.2.69.142/tcp/4001", peer=peers[6]), peers[6], OBSERVED, now=13.0),
        list,
    )
