"""Fuzz mimirlite/identity.py: PublicKey.from_protobuf, KeyPair.from_private_protobuf,
PeerId.from_bytes and PeerId.from_string.

Input: one mode byte (``mode % 4``: public key, private key, binary peer ID, text peer ID), then the
bytes (text: UTF-8, else Latin-1).
Invariants: a key decodes only from its canonical encoding and re-encodes to it; verify never
raises; a peer ID survives its base58, CID and binary forms; an inlined key belongs to its peer ID.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.identity import KeyPair, PeerId, PublicKey


def _check_peer_id(pid: PeerId) -> None:
    text = pid.to_base58()
    fuzzlib.check(PeerId.from_string(text) == pid, "base58 form does not parse back", text)
    cid = pid.to_cid_string()
    fuzzlib.check(PeerId.from_string(cid) == pid, "CID form does not parse back", cid)
    fuzzlib.check(PeerId.from_bytes(pid.to_bytes()) == pid, "binary form does not parse back", text)
    key = pid.public_key()
    if key is not None:
        fuzzlib.check(pid.matches_public_key(key), "inlined key is not the peer ID's", text)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, buf = data[0] % 4, data[1:]
    if mode == 0:
        key = PublicKey.from_protobuf(buf)
        fuzzlib.check(key.to_protobuf() == buf, "public key is not canonically encoded", buf)
        pid = PeerId.from_public_key(key)
        fuzzlib.check(pid.matches_public_key(key), "peer ID of a key does not match it", buf)
        _check_peer_id(pid)
        ok = key.verify(b"mimirlite fuzz", buf[-64:])
        fuzzlib.check(ok in (True, False), "verify returned a non-bool", ok)
    elif mode == 1:
        pair = KeyPair.from_private_protobuf(buf)
        again = KeyPair.from_private_protobuf(pair.to_private_protobuf())
        fuzzlib.check(again.peer_id == pair.peer_id, "private key does not round-trip", buf)
        message = b"mimirlite fuzz"
        fuzzlib.check(pair.public_key.verify(message, pair.sign(message)), "own signature does not verify")
    elif mode == 2:
        _check_peer_id(PeerId.from_bytes(buf))
    else:
        _check_peer_id(PeerId.from_string(fuzzlib.text_of(buf)))


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
