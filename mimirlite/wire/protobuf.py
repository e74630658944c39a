"""The few protobuf (proto2/proto3 wire format) operations libp2p messages need.

Only varint (type 0) and length-delimited (type 2) fields are produced; fixed32/fixed64 are
skipped when read, so messages with unknown extension fields still decode.
"""

from __future__ import annotations

from collections.abc import Iterator

from mimirlite.errors import DecodeError
from mimirlite.wire.varint import decode_uvarint, encode_uvarint

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
FIXED32 = 5


def encode_varint_field(field: int, value: int) -> bytes:
    """One varint field."""
    return encode_uvarint(field << 3 | VARINT) + encode_uvarint(value)


def encode_bytes_field(field: int, value: bytes) -> bytes:
    """One length-delimited field."""
    return encode_uvarint(field << 3 | LENGTH_DELIMITED) + encode_uvarint(len(value)) + value


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    got = decode_uvarint(buf, pos)
    if got is None:
        raise DecodeError("protobuf: truncated varint")
    return got


def iter_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field_number, wire_type, value)``; fixed-width fields are yielded as bytes."""
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise DecodeError("protobuf: field number 0")
        value: int | bytes
        if wire_type == VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire_type == LENGTH_DELIMITED:
            length, pos = _read_varint(buf, pos)
            if pos + length > n:
                raise DecodeError("protobuf: truncated length-delimited field")
            value = bytes(buf[pos : pos + length])
            pos += length
        elif wire_type in (FIXED64, FIXED32):
            size = 8 if wire_type == FIXED64 else 4
            if pos + size > n:
                raise DecodeError("protobuf: truncated fixed-width field")
            value = bytes(buf[pos : pos + size])
            pos += size
        else:
            raise DecodeError(f"protobuf: unsupported wire type {wire_type}")
        yield field, wire_type, value


def decode_message(buf: bytes, schema: dict[int, int]) -> dict[int, list[int | bytes]]:
    """Decode fields listed in ``schema`` (field -> expected wire type); skip the rest.

    Values are gathered in lists so repeated fields keep every occurrence.
    """
    out: dict[int, list[int | bytes]] = {}
    for field, wire_type, value in iter_fields(buf):
        expected = schema.get(field)
        if expected is None:
            continue
        if expected != wire_type:
            raise DecodeError(f"protobuf: field {field} has wire type {wire_type}, expected {expected}")
        out.setdefault(field, []).append(value)
    return out
