"""Fuzz mimirlite/protocols/identify.py: decode_identify, then what a node does with the message
(info_from_message, merge_push) and the binary multiaddrs in it.

Input: the Identify protobuf body. The peer it is checked against is the one its public key names
(when that key decodes), else IDENTITY_A.
Invariants: every binary multiaddr that decodes re-encodes from its text to the same bytes; a
push without a public key keeps the key already known.
"""

from __future__ import annotations

import contextlib

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.errors import DecodeError, MimirliteError
    from mimirlite.identity import PeerId, PublicKey
    from mimirlite.protocols.identify import (
        decode_identify,
        info_from_message,
        merge_push,
        multiaddr_from_bytes,
        multiaddr_to_bytes,
    )


def _check_addr(raw: bytes) -> None:
    try:
        text = multiaddr_from_bytes(raw)
    except DecodeError:
        return
    fuzzlib.check(multiaddr_to_bytes(text) == raw, "multiaddr does not round-trip", raw, text)


def test_one_input(data: bytes) -> None:
    msg = decode_identify(data)
    peer = fuzzlib.IDENTITY_A.peer_id
    if msg.public_key is not None:
        with contextlib.suppress(MimirliteError):
            peer = PeerId.from_public_key(PublicKey.from_protobuf(msg.public_key))
    for raw in (*msg.listen_addrs, msg.observed_addr or b""):
        if raw:
            _check_addr(raw)
    pushed = merge_push(None, peer, msg)
    if msg.public_key is None:
        fuzzlib.check(pushed.public_key == peer.public_key(), "push invented a public key")
    info = info_from_message(peer, msg)
    fuzzlib.check(info.peer_id == peer and info.public_key is not None, "info without the peer's key")
    again = merge_push(info, peer, msg)
    fuzzlib.check(again.protocols == (msg.protocols or info.protocols), "push lost the protocols")


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
