"""The Noise handshake reports its steps as a HandshakeState and its end as HandshakeComplete."""

from __future__ import annotations

import logging

import pytest

from mimirlite.errors import HandshakeError
from mimirlite.identity import KeyPair
from mimirlite.wire.noise import NOISE_PROTOCOL, HandshakeComplete, HandshakeState, NoiseHandshake

ALICE = KeyPair.generate()
BOB = KeyPair.generate()


def test_noise_protocol_name() -> None:
    assert NOISE_PROTOCOL == "/noise"


def test_states_and_events_through_the_handshake(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mimirlite.wire.noise")
    initiator = NoiseHandshake(ALICE, initiator=True)
    responder = NoiseHandshake(BOB, initiator=False)
    assert initiator.state is HandshakeState.MESSAGE_2  # message 1 is queued
    assert responder.state is HandshakeState.MESSAGE_1

    assert responder.receive_data(initiator.data_to_send()) == []
    assert responder.state is HandshakeState.MESSAGE_3  # it answered with message 2

    assert initiator.receive_data(responder.data_to_send()) == [HandshakeComplete(BOB.peer_id)]
    assert initiator.state is HandshakeState.COMPLETE and initiator.complete

    assert responder.receive_data(initiator.data_to_send()) == [HandshakeComplete(ALICE.peer_id)]
    assert responder.state is HandshakeState.COMPLETE and responder.complete
    assert responder.remote_peer == ALICE.peer_id
    assert "noise handshake (responder): MESSAGE_3 -> COMPLETE" in caplog.messages


def test_one_byte_at_a_time_reports_complete_once() -> None:
    initiator = NoiseHandshake(ALICE, initiator=True)
    responder = NoiseHandshake(BOB, initiator=False)
    wire = initiator.data_to_send()
    events = []
    for i in range(len(wire)):
        events += responder.receive_data(wire[i : i + 1])
    wire = responder.data_to_send()
    for i in range(len(wire)):
        events += initiator.receive_data(wire[i : i + 1])
    wire = initiator.data_to_send()
    for i in range(len(wire)):
        events += responder.receive_data(wire[i : i + 1])
    assert events == [HandshakeComplete(BOB.peer_id), HandshakeComplete(ALICE.peer_id)]


def test_failure_is_a_state() -> None:
    responder = NoiseHandshake(BOB, initiator=False)
    with pytest.raises(HandshakeError, match="message 1 has 1 bytes"):
        responder.receive_data(b"\x00\x01x")
    assert responder.state is HandshakeState.FAILED and not responder.complete
    with pytest.raises(HandshakeError, match="already failed"):
        responder.receive_data(b"")
