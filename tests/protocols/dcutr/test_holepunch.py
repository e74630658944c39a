"""The DCUtR exchange on a fake clock: both roles wired back to back, the round trip measured, the dial
times, retries, timeouts, and peers breaking the exchange (SYNC without CONNECT, CONNECT twice, ...)."""

from __future__ import annotations

import logging

import pytest

from mimirlite.errors import LocalError
from mimirlite.identity import PeerId
from mimirlite.protocols.dcutr import DcutrLimits, HolePunch, HolePunchType, encode_message
from mimirlite.protocols.dcutr.holepunch import (
    AttemptFailed,
    DialNow,
    HolePunchConfig,
    HolePunchFailed,
    HolePunchInitiator,
    HolePunchResponder,
    HolePunchState,
    HolePunchSucceeded,
    dialable_addrs,
)
from mimirlite.wire.lp import encode_message as lp_frame
from mimirlite.wire.multiaddr import Multiaddr

from .test_messages import JS_DCUTR

JS1 = PeerId.from_string("12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp")
B_ADDRS = (Multiaddr.parse("/ip4/93.184.216.34/tcp/4001"), Multiaddr.parse("/ip6/2606:4700::1111/tcp/4001"))
A_ADDRS = (Multiaddr.parse("/ip4/81.2.69.160/tcp/4002"),)


def frame(kind: HolePunchType, *addrs: Multiaddr) -> bytes:
    return lp_frame(encode_message(HolePunch(kind, addrs)))


CONNECT_A = frame(HolePunchType.CONNECT, *A_ADDRS)
CONNECT_B = frame(HolePunchType.CONNECT, *B_ADDRS)
SYNC = frame(HolePunchType.SYNC)


def test_initiator_and_responder_back_to_back() -> None:
    b = HolePunchInitiator(B_ADDRS)
    b.start_attempt(now=10.0)
    a = HolePunchResponder(A_ADDRS, now=10.1)
    connect = b.data_to_send()
    # B's CONNECT is what @libp2p/dcutr writes for these addresses, length-prefixed
    assert connect == lp_frame(bytes.fromhex(JS_DCUTR["CONNECT"][0]))
    assert a.receive_data(connect, now=10.1) == []
    assert a.state is HolePunchState.AWAIT_SYNC
    answer = a.data_to_send()
    assert answer == CONNECT_A
    # the answer arrives 0.4 s after B's CONNECT left: B syncs and dials 0.2 s later
    assert b.receive_data(answer, now=10.4) == [DialNow(A_ADDRS, pytest.approx(10.6), 1)]
    assert b.rtt == pytest.approx(0.4)
    assert b.data_to_send() == SYNC == lp_frame(bytes.fromhex(JS_DCUTR["SYNC"][0]))
    # A dials as SYNC arrives (about when B's half round trip ends)
    assert a.receive_data(SYNC, now=10.6) == [DialNow(B_ADDRS, 10.6, 1)]
    assert a.peer_addrs == B_ADDRS and b.peer_addrs == A_ADDRS
    assert b.dial_result(True, now=10.7) == [HolePunchSucceeded(1)]
    assert a.dial_result(True, now=10.7) == [HolePunchSucceeded(1)]
    assert a.state is b.state is HolePunchState.SUCCEEDED
    assert a.get_timer() is None and b.get_timer() is None
    assert a.data_to_send() == b.data_to_send() == b""


def test_bytes_arriving_one_at_a_time_and_two_messages_in_one_chunk() -> None:
    a = HolePunchResponder(A_ADDRS, now=0.0)
    for byte in CONNECT_B[:-1]:
        assert a.receive_data(bytes([byte]), now=0.1) == []
    assert a.state is HolePunchState.AWAIT_CONNECT
    # the CONNECT's last byte and SYNC together: the answer is queued and the dial is due
    assert a.receive_data(CONNECT_B[-1:] + SYNC, now=0.2) == [DialNow(B_ADDRS, 0.2, 1)]
    assert a.data_to_send() == CONNECT_A


def test_initiator_timing_follows_the_measured_round_trip() -> None:
    for rtt in (0.0, 0.05, 3.0):
        b = HolePunchInitiator(B_ADDRS)
        b.start_attempt(now=100.0)
        b.data_to_send()
        [dial] = b.receive_data(CONNECT_A, now=100.0 + rtt)
        assert isinstance(dial, DialNow)
        assert dial.at == pytest.approx(100.0 + rtt + rtt / 2)
        # the dial gets its own timeout from the time it is due
        assert b.get_timer() == pytest.approx(dial.at + 5.0)


def test_initiator_retries_on_a_new_stream_up_to_three_attempts_then_fails() -> None:
    b = HolePunchInitiator(B_ADDRS)
    events = []
    now = 0.0
    for attempt in (1, 2, 3):
        b.start_attempt(now)
        assert b.attempt == attempt
        assert b.data_to_send() == CONNECT_B
        [dial] = b.receive_data(CONNECT_A, now + 0.2)
        assert isinstance(dial, DialNow) and dial.attempt == attempt
        assert b.data_to_send() == SYNC
        events = b.dial_result(False, now + 0.5)
        now += 1.0
        if attempt < 3:
            assert events == [AttemptFailed(attempt, "the direct dial failed")]
            assert b.state is HolePunchState.IDLE and b.get_timer() is None
    assert events == [HolePunchFailed(3, "the direct dial failed")]
    assert b.state is HolePunchState.FAILED
    with pytest.raises(LocalError):
        b.start_attempt(now)


def test_a_retry_succeeding_ends_the_hole_punch() -> None:
    b = HolePunchInitiator(B_ADDRS)
    b.start_attempt(0.0)
    assert b.handle_timer(5.0) == [AttemptFailed(1, "timed out waiting for the peer (connect_sent)")]
    assert b.data_to_send() == b""  # what the dead stream had queued is dropped
    b.start_attempt(6.0)
    assert b.data_to_send() == CONNECT_B
    assert b.receive_data(CONNECT_A, 6.1) == [DialNow(A_ADDRS, pytest.approx(6.15), 2)]
    assert b.dial_result(True, 6.3) == [HolePunchSucceeded(2)]


def test_initiator_timeouts_waiting_for_connect_and_for_the_dial() -> None:
    config = HolePunchConfig(timeout=2.0, max_attempts=1)
    b = HolePunchInitiator(B_ADDRS, config)
    b.start_attempt(10.0)
    assert b.get_timer() == 12.0
    assert b.handle_timer(11.999) == []
    assert b.handle_timer(12.0) == [HolePunchFailed(1, "timed out waiting for the peer (connect_sent)")]
    assert b.get_timer() is None
    b = HolePunchInitiator(B_ADDRS, config)
    b.start_attempt(10.0)
    b.receive_data(CONNECT_A, 11.0)  # dial at 11.5, the dial's deadline 13.5
    assert b.get_timer() == 13.5
    assert b.handle_timer(13.4) == []
    assert b.handle_timer(13.5) == [HolePunchFailed(1, "timed out waiting for the direct dial")]
    with pytest.raises(LocalError):
        b.dial_result(True, 14.0)  # too late: that attempt is over


def test_responder_timeouts() -> None:
    a = HolePunchResponder(A_ADDRS, now=0.0, config=HolePunchConfig(timeout=1.0))
    assert a.get_timer() == 1.0
    assert a.handle_timer(1.0) == [HolePunchFailed(1, "timed out waiting for the peer (await_connect)")]
    a = HolePunchResponder(A_ADDRS, now=0.0, config=HolePunchConfig(timeout=1.0))
    a.receive_data(CONNECT_B, 0.5)
    assert a.handle_timer(1.0) == [HolePunchFailed(1, "timed out waiting for the peer (await_sync)")]
    a = HolePunchResponder(A_ADDRS, now=0.0, config=HolePunchConfig(timeout=1.0))
    a.receive_data(CONNECT_B + SYNC, 0.5)
    assert a.get_timer() == 1.5
    assert a.handle_timer(1.5) == [HolePunchFailed(1, "timed out waiting for the direct dial")]
    # a responder does not retry, whatever the config says: the initiator does, on a new stream
    a = HolePunchResponder(A_ADDRS, now=0.0, config=HolePunchConfig(max_attempts=3))
    a.receive_data(CONNECT_B + SYNC, 0.5)
    assert a.dial_result(False, 0.6) == [HolePunchFailed(1, "the direct dial failed")]


# ---------------------------------------------------------------- peers breaking the exchange


def failed(events: list[object]) -> tuple[str, bool]:
    [event] = events
    assert isinstance(event, AttemptFailed | HolePunchFailed)
    return event.reason, event.protocol_error


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (SYNC, "SYNC where the peer's CONNECT was due"),
        (frame(HolePunchType.CONNECT), "no dialable address in the peer's CONNECT (0 sent)"),
        (
            frame(HolePunchType.CONNECT, Multiaddr.parse("/ip4/10.0.0.1/tcp/1")),
            "no dialable address in the peer's CONNECT (1 sent)",
        ),
        (lp_frame(bytes.fromhex("0865")), "unknown message type 101"),
        (lp_frame(b"\x12\x00"), "message without a type"),
        (b"\x81\x20", "exceeds the 4096 byte cap"),  # a length of 4097, refused before its body
        (b"\xff" * 10, "varint"),
    ],
)
def test_initiator_fails_the_attempt_on_a_broken_answer(data: bytes, why: str) -> None:
    b = HolePunchInitiator(B_ADDRS)
    b.start_attempt(0.0)
    reason, protocol_error = failed(b.receive_data(data, 0.1))
    assert why in reason and protocol_error
    assert b.state is HolePunchState.IDLE
    assert b.receive_data(CONNECT_A, 0.2) == []  # that stream is dead: ignored until the next attempt


def test_initiator_fails_on_connect_twice_and_on_anything_after_it() -> None:
    b = HolePunchInitiator(B_ADDRS, HolePunchConfig(max_attempts=1))
    b.start_attempt(0.0)
    # two CONNECTs in one chunk: the exchange is broken, no dial for it
    assert b.receive_data(CONNECT_A + CONNECT_A, 0.1) == [
        HolePunchFailed(1, "dcutr: CONNECT after the exchange ended", True)
    ]
    b = HolePunchInitiator(B_ADDRS)
    b.start_attempt(0.0)
    b.receive_data(CONNECT_A, 0.1)
    assert failed(b.receive_data(SYNC, 0.2)) == ("dcutr: SYNC after the exchange ended", True)


def test_responder_fails_on_sync_without_connect_connect_twice_and_sync_twice() -> None:
    a = HolePunchResponder(A_ADDRS, now=0.0)
    assert failed(a.receive_data(SYNC, 0.1)) == ("dcutr: SYNC before CONNECT", True)
    assert a.state is HolePunchState.FAILED and a.data_to_send() == b""
    a = HolePunchResponder(A_ADDRS, now=0.0)
    assert failed(a.receive_data(CONNECT_B + CONNECT_B, 0.1)) == ("dcutr: CONNECT where SYNC was due", True)
    assert a.data_to_send() == b""  # the answer queued before the violation is not sent
    a = HolePunchResponder(A_ADDRS, now=0.0)
    assert a.receive_data(CONNECT_B + SYNC + SYNC, 0.1) == [
        HolePunchFailed(1, "dcutr: SYNC after SYNC", True)
    ]
    a = HolePunchResponder(A_ADDRS, now=0.0)
    assert a.receive_data(CONNECT_B + SYNC, 0.1) == [DialNow(B_ADDRS, 0.1, 1)]
    # a SYNC after the dial began: the attempt fails (the shell drops the dial)
    assert failed(a.receive_data(SYNC, 0.2)) == ("dcutr: SYNC after SYNC", True)
    a = HolePunchResponder(A_ADDRS, now=0.0)
    relay_only = frame(
        HolePunchType.CONNECT, Multiaddr.parse(f"/ip4/192.0.2.1/tcp/4001/p2p/{JS1}/p2p-circuit")
    )
    assert failed(a.receive_data(relay_only, 0.1))[1]


def test_the_peer_s_addresses_are_filtered_and_capped() -> None:
    # @libp2p/dcutr's CONNECT with a relay, a private and a loopback address: only the public one is dialed
    a = HolePunchResponder(A_ADDRS, now=0.0)
    body = bytes.fromhex(JS_DCUTR["CONNECT with relay and private addresses"][0])
    a.receive_data(lp_frame(body) + SYNC, 0.1)
    assert a.peer_addrs == (Multiaddr.parse("/ip4/93.184.216.34/tcp/4001"),)
    # capped at limits.max_addrs
    many = [Multiaddr.parse(f"/ip4/93.184.216.{i}/tcp/4001") for i in range(10)]
    b = HolePunchInitiator(B_ADDRS, HolePunchConfig(limits=DcutrLimits(max_addrs=3)))
    b.start_attempt(0.0)
    [dial] = b.receive_data(frame(HolePunchType.CONNECT, *many), 0.1)
    assert isinstance(dial, DialNow) and dial.addrs == tuple(many[:3])
    assert b.dropped == 7  # the codec kept 3 of 10


def test_our_own_addresses_are_filtered_and_none_is_a_local_error() -> None:
    mixed = [
        Multiaddr.parse("/ip4/127.0.0.1/tcp/4001"),
        Multiaddr.parse("/ip4/93.184.216.34/tcp/4001"),
        Multiaddr.parse("/ip4/93.184.216.34/tcp/4001"),  # once
        Multiaddr.parse("/ip4/93.184.216.34/udp/4001/quic-v1"),
    ]
    b = HolePunchInitiator(mixed)
    assert b.own_addrs == (Multiaddr.parse("/ip4/93.184.216.34/tcp/4001"),)
    with pytest.raises(LocalError):
        HolePunchInitiator([Multiaddr.parse("/ip4/192.168.1.2/tcp/4001")])
    with pytest.raises(LocalError):
        HolePunchResponder([], now=0.0)
    # a LAN or a test on loopback may allow private addresses
    lan = HolePunchResponder(mixed[:1], now=0.0, config=HolePunchConfig(allow_private=True))
    assert lan.own_addrs == tuple(mixed[:1])


@pytest.mark.parametrize(
    ("text", "kept", "kept_private"),
    [
        ("/ip4/93.184.216.34/tcp/4001", True, True),
        (f"/ip4/93.184.216.34/tcp/4001/p2p/{JS1}", True, True),
        ("/ip6/2001:4860::8888/tcp/4001", True, True),
        ("/ip6/2001:db8::9/tcp/4001", False, True),  # documentation ranges are not global
        ("/ip4/198.51.100.9/tcp/4001", False, True),
        ("/ip4/10.1.2.3/tcp/4001", False, True),
        ("/ip4/172.16.0.1/tcp/4001", False, True),
        ("/ip4/192.168.1.9/tcp/4001", False, True),
        ("/ip4/100.64.0.1/tcp/4001", False, True),  # carrier-grade NAT
        ("/ip4/169.254.1.1/tcp/4001", False, True),
        ("/ip4/127.0.0.1/tcp/4001", False, True),
        ("/ip6/::1/tcp/4001", False, True),
        ("/ip6/fe80::1/tcp/4001", False, True),
        ("/ip6/fd00::1/tcp/4001", False, True),
        ("/ip4/0.0.0.0/tcp/4001", False, False),
        ("/ip4/224.0.0.251/tcp/4001", False, False),
        (f"/ip4/93.184.216.34/tcp/4001/p2p/{JS1}/p2p-circuit", False, False),
        ("/ip4/93.184.216.34/udp/4001/quic-v1", False, False),
        ("/ip4/93.184.216.34/tcp/443/wss", False, False),
        ("/dns4/example.org/tcp/4001", False, False),
        ("/ip4/93.184.216.34", False, False),
    ],
)
def test_dialable_addrs(text: str, kept: bool, kept_private: bool) -> None:
    a = Multiaddr.parse(text)
    assert dialable_addrs([a]) == ((a,) if kept else ())
    assert dialable_addrs([a], allow_private=True) == ((a,) if kept_private else ())


def test_misuse_raises_local_error() -> None:
    b = HolePunchInitiator(B_ADDRS)
    with pytest.raises(LocalError):
        b.dial_result(True, 0.0)
    b.start_attempt(0.0)
    with pytest.raises(LocalError):
        b.start_attempt(0.0)
    a = HolePunchResponder(A_ADDRS, now=0.0)
    with pytest.raises(LocalError):
        a.dial_result(False, 0.0)


def test_state_changes_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="mimirlite.protocols.dcutr.holepunch"):
        b = HolePunchInitiator(B_ADDRS)
        b.start_attempt(0.0)
    assert "dcutr initiator attempt 1: idle -> connect_sent" in caplog.text
