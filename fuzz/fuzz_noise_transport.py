"""Fuzz NoiseTransport.receive_data (mimirlite/wire/noise.py) with fixed keys.

Input: a mode byte, then

* mode bit 0 clear (raw): records, fed as received ciphertext (bit 1: the first one is handed to the
  constructor, as bytes that arrived with the handshake);
* mode bit 0 set (encrypted): a split byte, a corruption byte, then records, each a plaintext that a
  peer transport with the matching keys encrypts. The ciphertext is fed in pieces of ``split`` bytes
  (0: in one piece; 512 pieces at most), with one bit flipped when ``corruption`` is not 0.
  Bit 1: first piece to the constructor; bit 2: each plaintext repeated 80 times (frames of the
  maximum size); bit 3: nonces start just below the limit.

Invariants (encrypted mode): what comes out is what went in, or a prefix of it when a bit was
flipped; a transport that failed keeps failing; ``buffered`` is the size of the incomplete frame.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.errors import DecodeError, LocalError
    from mimirlite.wire.noise import NoiseTransport

_NEAR_LIMIT = 2**64 - 4
_MAX_PIECES = 512  # bounds the work per input: a long stream is cut in bigger pieces


def _receiver(early: bytes, near_limit: bool) -> NoiseTransport:
    t = NoiseTransport(fuzzlib.TRANSPORT_KEY_A, fuzzlib.TRANSPORT_KEY_B, early)
    if near_limit:
        t._receive_nonce = _NEAR_LIMIT
    return t


def _feed(t: NoiseTransport, pieces: list[bytes]) -> tuple[list[bytes], bool]:
    """Plaintexts received and whether the transport failed (then it must keep failing)."""
    out: list[bytes] = []
    try:
        for piece in pieces:
            got = t.receive_data(piece)
            fuzzlib.check(all(got), "an empty plaintext was returned")
            out.extend(got)
    except DecodeError:
        try:
            t.receive_data(b"")
        except DecodeError:
            return out, True
        raise fuzzlib.InvariantError("a failed transport accepted more data") from None
    return out, False


def _raw(mode: int, data: bytes) -> None:
    pieces = list(fuzzlib.records(data))
    early = pieces.pop(0) if mode & 2 and pieces else b""
    _feed(_receiver(early, False), [b"", *pieces])


def _encrypted(mode: int, data: bytes) -> None:
    if len(data) < 2:
        return
    split, corrupt = data[0], data[1]
    plaintexts = list(fuzzlib.records(data[2:]))
    if mode & 4:
        plaintexts = [p * 80 for p in plaintexts]
    sender = NoiseTransport(fuzzlib.TRANSPORT_KEY_B, fuzzlib.TRANSPORT_KEY_A)
    near_limit = bool(mode & 8)
    if near_limit:
        sender._send_nonce = _NEAR_LIMIT
    sent: list[bytes] = []
    wire = bytearray()
    for p in plaintexts:
        try:
            wire += sender.encrypt(p)
        except LocalError:  # send nonces exhausted
            break
        sent.append(p)
    if corrupt and wire:
        wire[(corrupt * 131) % len(wire)] ^= 1 << (corrupt % 8)
    stream = bytes(wire)
    step = max(split or len(stream), -(-len(stream) // _MAX_PIECES), 1)
    pieces = [stream[i : i + step] for i in range(0, len(stream), step)]
    early = pieces.pop(0) if mode & 2 and pieces else b""
    receiver = _receiver(early, near_limit)
    got, failed = _feed(receiver, [b"", *pieces])
    expected, received = b"".join(sent), b"".join(got)
    if not corrupt:
        fuzzlib.check(not failed and received == expected, "plaintexts changed", plaintexts[:4], split)
        fuzzlib.check(receiver.buffered == 0, "bytes left over", receiver.buffered)
    else:
        fuzzlib.check(expected.startswith(received), "a corrupted stream decrypted to other bytes", data)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        _encrypted(data[0], data[1:])
    else:
        _raw(data[0], data[1:])


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
