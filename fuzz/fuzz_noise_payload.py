"""Fuzz the Noise handshake payload check (``NoiseHandshake._verify`` in mimirlite/wire/noise.py).

Input: one mode byte (bit 0: expect the peer IDENTITY_B, as a dialer does), the remote's 32-byte
X25519 static key, then the ``NoiseHandshakePayload`` protobuf (identity key, signature, extensions).
Invariants: an accepted payload names a peer whose key signed ``prefix + static key``, and the
expected peer when one is set.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.identity import PeerId
    from mimirlite.wire.noise import STATIC_KEY_PREFIX, NoiseHandshake
    from mimirlite.wire.protobuf import LENGTH_DELIMITED, decode_message

OPEN = NoiseHandshake(fuzzlib.IDENTITY_A, initiator=False)
EXPECTING = NoiseHandshake(fuzzlib.IDENTITY_A, initiator=True, expected_peer=fuzzlib.IDENTITY_B.peer_id)


def test_one_input(data: bytes) -> None:
    if len(data) < 33:
        return
    hs = EXPECTING if data[0] & 1 else OPEN
    static, payload = data[1:33], data[33:]
    hs.remote_peer = hs.remote_public_key = None
    hs._verify(payload, static)
    key, peer = hs.remote_public_key, hs.remote_peer
    fuzzlib.check(key is not None and peer is not None, "accepted payload without an identity", payload)
    assert key is not None
    fuzzlib.check(peer == PeerId.from_public_key(key), "peer ID is not the key's", payload)
    signature = decode_message(payload, {2: LENGTH_DELIMITED})[2][-1]
    assert isinstance(signature, bytes)
    fuzzlib.check(key.verify(STATIC_KEY_PREFIX + static, signature), "accepted a bad signature", payload)
    if hs is EXPECTING:
        fuzzlib.check(peer == fuzzlib.IDENTITY_B.peer_id, "accepted an unexpected peer", payload)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
