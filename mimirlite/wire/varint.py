"""Unsigned LEB128 varints as used by multiformats (at most 9 bytes, 63 bits)."""

from __future__ import annotations

from mimirlite.errors import DecodeError

MAX_VARINT_BYTES = 9


def encode_uvarint(value: int) -> bytes:
    """Encode a non-negative integer below 2**63."""
    if value < 0x80:
        if value < 0:
            raise ValueError("varint must be non-negative")
        return bytes((value,))
    if value >= 1 << 63:
        raise ValueError("varint too large")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uvarint(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int] | None:
    """Decode a varint at ``pos``; return ``(value, next_pos)`` or None if more bytes are needed.

    Raises DecodeError for a varint longer than 9 bytes or one not minimally encoded.
    """
    n = len(buf)
    if pos < n:
        b = buf[pos]
        if b < 0x80:
            return b, pos + 1
    value = 0
    shift = 0
    i = pos
    while i < n:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            if b == 0 and i - pos > 1:
                raise DecodeError("varint is not minimally encoded")
            return value, i
        shift += 7
        if i - pos >= MAX_VARINT_BYTES:
            raise DecodeError(f"varint longer than {MAX_VARINT_BYTES} bytes")
    return None
