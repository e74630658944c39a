"""Fuzz mimirlite/wire/varint.py: decode_uvarint at any offset, on bytes, bytearray and memoryview.

Input: one byte choosing the start offset (modulo the length), then the bytes to decode.
Invariants: a decoded varint re-encodes to exactly the bytes it was read from (minimal encoding,
at most 9 bytes); the three buffer types agree.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.errors import DecodeError
    from mimirlite.wire.varint import MAX_VARINT_BYTES, decode_uvarint, encode_uvarint


def _decode(buf: bytes | bytearray | memoryview, pos: int) -> tuple[str, object]:
    try:
        return "ok", decode_uvarint(buf, pos)
    except DecodeError as exc:
        return "error", str(exc)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    buf = data[1:]
    pos = data[0] % (len(buf) + 1)
    outcome = _decode(buf, pos)
    fuzzlib.check(_decode(bytearray(buf), pos) == outcome, "bytearray disagrees with bytes", buf, pos)
    fuzzlib.check(_decode(memoryview(buf), pos) == outcome, "memoryview disagrees with bytes", buf, pos)
    if outcome[0] == "error":
        return
    got = outcome[1]
    if got is None:
        # more bytes needed: fewer than 9 bytes left, all with the continuation bit
        rest = buf[pos:]
        fuzzlib.check(len(rest) < MAX_VARINT_BYTES, "None with 9 bytes available", buf, pos)
        fuzzlib.check(all(b & 0x80 for b in rest), "None although a last byte is there", buf, pos)
        return
    assert isinstance(got, tuple)
    value, end = got
    fuzzlib.check(pos < end <= min(len(buf), pos + MAX_VARINT_BYTES), "bad end offset", buf, pos, got)
    fuzzlib.check(0 <= value < 1 << 63, "value out of range", buf, pos, got)
    fuzzlib.check(encode_uvarint(value) == buf[pos:end], "does not re-encode to its bytes", buf, pos, got)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
