"""Fuzz mimirlite/wire/protobuf.py: iter_fields and decode_message.

Input: one mode byte (the schema: ``SCHEMAS[mode % len(SCHEMAS)]``), then the message.
Invariants: the fields, re-encoded, are exactly the input (varints are minimal, so the encoding is
unique); decode_message keeps, in order, the values of the schema's fields.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.errors import DecodeError
    from mimirlite.wire.protobuf import (
        FIXED32,
        FIXED64,
        LENGTH_DELIMITED,
        VARINT,
        decode_message,
        encode_bytes_field,
        encode_varint_field,
        iter_fields,
    )
    from mimirlite.wire.varint import encode_uvarint

SCHEMAS: list[dict[int, int]] = [
    {1: LENGTH_DELIMITED, 2: LENGTH_DELIMITED},  # the Noise handshake payload
    {1: VARINT, 2: LENGTH_DELIMITED},  # libp2p keys
    {f: LENGTH_DELIMITED for f in (1, 2, 3, 4, 5, 6, 8)},  # identify
    {1: VARINT, 2: FIXED64, 3: FIXED32, 4: LENGTH_DELIMITED},
    {},
]


def _encode(field: int, wire_type: int, value: int | bytes) -> bytes:
    if wire_type == VARINT:
        assert isinstance(value, int)
        return encode_varint_field(field, value)
    assert isinstance(value, bytes)
    if wire_type == LENGTH_DELIMITED:
        return encode_bytes_field(field, value)
    return encode_uvarint(field << 3 | wire_type) + value


def test_one_input(data: bytes) -> None:
    if not data:
        return
    schema = SCHEMAS[data[0] % len(SCHEMAS)]
    buf = data[1:]
    try:
        fields = list(iter_fields(buf))
    except DecodeError:
        fields = None
    try:
        decoded = decode_message(buf, schema)
    except DecodeError:
        decoded = None
    if fields is None:
        return
    for field, wire_type, value in fields:
        fuzzlib.check(field > 0 and wire_type in (VARINT, FIXED64, LENGTH_DELIMITED, FIXED32), "bad field")
        if wire_type in (FIXED64, FIXED32):
            fuzzlib.check(len(value) == (8 if wire_type == FIXED64 else 4), "bad fixed-width value")  # type: ignore[arg-type]
    encoded = b"".join(_encode(*f) for f in fields)
    fuzzlib.check(encoded == buf, "fields do not re-encode to the message", buf, fields)
    wrong_type = any(f in schema and schema[f] != w for f, w, _ in fields)
    fuzzlib.check((decoded is None) == wrong_type, "decode_message refused the wrong message", buf)
    if decoded is not None:
        expected: dict[int, list[int | bytes]] = {}
        for f, _, v in fields:
            if f in schema:
                expected.setdefault(f, []).append(v)
        fuzzlib.check(decoded == expected, "decode_message lost or invented values", buf, decoded)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
