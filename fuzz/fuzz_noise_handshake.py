"""Fuzz NoiseHandshake.receive_data (mimirlite/wire/noise.py).

Input: a mode byte, then records.

* mode bit 0 clear (raw): the records are fed, one ``receive_data`` each, to a responder (bit 1: to
  an initiator) as the handshake messages of a remote peer.
* mode bit 0 set (payload): a real initiator runs the handshake with a responder, but sends the first
  record as its signed identity payload; the other records are plaintexts it pipelines right after
  its last handshake message (as libp2p peers do with their muxer proposal). Bit 1: the responder
  expects the peer IDENTITY_B; bit 2: the last message arrives in two pieces.

Every handshake uses the fixed static key (``fuzzlib.use_fixed_noise_static``), so payloads signed
in a captured run verify here.
Invariants: a failed handshake stays failed; a completed one names the peer of the payload's key and
hands over the pipelined plaintexts unchanged, and its transports talk to each other.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.errors import DecodeError, HandshakeError
    from mimirlite.identity import PeerId, PublicKey
    from mimirlite.wire.noise import NoiseHandshake
    from mimirlite.wire.protobuf import LENGTH_DELIMITED, decode_message

fuzzlib.use_fixed_noise_static()


def _raw(mode: int, data: bytes) -> None:
    hs = NoiseHandshake(fuzzlib.IDENTITY_A, initiator=bool(mode & 2))
    hs.data_to_send()
    for piece in fuzzlib.records(data):
        try:
            hs.receive_data(piece)
        except HandshakeError:
            try:
                hs.receive_data(b"")
            except HandshakeError:
                return
            raise fuzzlib.InvariantError("a failed handshake accepted more data") from None
        hs.data_to_send()
    if hs.complete:  # not reachable without the responder's ephemeral key, but checked if it happens
        hs.transport().receive_data(b"")


def _payload(mode: int, data: bytes) -> None:
    parts = list(fuzzlib.records(data))
    if not parts:
        return
    payload, pipelined = parts[0], parts[1:]
    expected = fuzzlib.IDENTITY_B.peer_id if mode & 2 else None
    initiator = NoiseHandshake(fuzzlib.IDENTITY_B, initiator=True)
    initiator._payload = payload  # what the remote claims about itself
    responder = NoiseHandshake(fuzzlib.IDENTITY_A, initiator=False, expected_peer=expected)
    responder.receive_data(initiator.data_to_send())
    initiator.receive_data(responder.data_to_send())
    fuzzlib.check(initiator.complete, "initiator did not complete against a real responder")
    fuzzlib.check(initiator.remote_peer == fuzzlib.IDENTITY_A.peer_id, "initiator learned the wrong peer")
    last = initiator.data_to_send()
    sender = initiator.transport()
    last += b"".join(sender.encrypt(p) for p in pipelined)
    cut = len(last) // 2 if mode & 4 else len(last)
    try:
        responder.receive_data(last[:cut])
        responder.receive_data(last[cut:])
    except HandshakeError:
        fuzzlib.check(not responder.complete, "failed handshake reports complete")
        return
    if not responder.complete:
        return
    # accepted: the payload must hold the key that signed our static key, of the expected peer
    key_bytes = decode_message(payload, {1: LENGTH_DELIMITED})[1][-1]
    assert isinstance(key_bytes, bytes)
    peer = PeerId.from_public_key(PublicKey.from_protobuf(key_bytes))
    fuzzlib.check(responder.remote_peer == peer, "responder learned another peer", payload)
    fuzzlib.check(expected is None or peer == expected, "responder accepted an unexpected peer")
    receiver = responder.transport()
    try:
        got = receiver.receive_data(b"")
    except DecodeError:
        raise fuzzlib.InvariantError("pipelined data failed authentication") from None
    fuzzlib.check(b"".join(got) == b"".join(pipelined), "pipelined plaintexts changed", pipelined)
    fuzzlib.check(sender.receive_data(receiver.encrypt(b"pong")) == [b"pong"], "transports disagree")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        _payload(data[0], data[1:])
    else:
        _raw(data[0], data[1:])


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
