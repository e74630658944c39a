"""Fuzz mimirlite/protocols/identify.py: decode_identify, then what a node does with the message
(info_from_message, merge_push) and the binary multiaddrs in it.

Input: the Identify protobuf body. The peer it is checked against is the one its public key names
(when that key decodes), else IDENTITY_A.
Invariants: every binary multiaddr that decodes re-encodes from its text to the same bytes; a
push without a public key keeps the key already known; the capped decoder (what a node runs) keeps
the first entries within the caps of what the full decoder reads, and counts the rest.
"""

from __future__ import annotations

import contextlib

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.errors import DecodeError, MimirliteError
    from mimirlite.identity import PeerId, PublicKey
    from mimirlite.protocols.identify import (
        IdentifyConfig,
        decode_identify,
        decode_identify_capped,
        info_from_message,
        merge_push,
    )
    from mimirlite.wire.multiaddr import multiaddr_from_bytes, multiaddr_to_bytes


def _check_addr(raw: bytes) -> None:
    try:
        text = multiaddr_from_bytes(raw)
    except DecodeError:
        return
    fuzzlib.check(multiaddr_to_bytes(text) == raw, "multiaddr does not round-trip", raw, text)


CAPS = IdentifyConfig(max_listen_addrs=3, max_protocols=2, max_addr_size=12)


def _check_caps(data: bytes, msg: object) -> None:
    """Run after the full decode succeeded: the capped one must agree on what it keeps."""
    capped, dropped = decode_identify_capped(data, CAPS)
    assert isinstance(msg, type(capped))
    fitting = [a for a in msg.listen_addrs if len(a) <= CAPS.max_addr_size]
    fuzzlib.check(capped.listen_addrs == tuple(fitting[: CAPS.max_listen_addrs]), "capped addrs", data)
    fuzzlib.check(capped.protocols == msg.protocols[: CAPS.max_protocols], "capped protocols", data)
    left_out = len(msg.listen_addrs) - len(capped.listen_addrs) + len(msg.protocols) - len(capped.protocols)
    counted = sum(n for kind, n in dropped.items() if kind != "oversized observed address")
    fuzzlib.check(left_out == counted, "entries left out but not counted", data, dropped)


def test_one_input(data: bytes) -> None:
    msg = decode_identify(data)
    _check_caps(data, msg)
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
