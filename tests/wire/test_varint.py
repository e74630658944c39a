"""Property tests for the varint wire helper (mimirlite/wire/varint.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mimirlite.errors import DecodeError
from mimirlite.wire.varint import MAX_VARINT_BYTES, decode_uvarint, encode_uvarint

uint63 = st.integers(min_value=0, max_value=2**63 - 1)


@given(uint63, st.binary(max_size=4), st.binary(max_size=4))
def test_uvarint_round_trip(value: int, prefix: bytes, suffix: bytes) -> None:
    encoded = encode_uvarint(value)
    assert 1 <= len(encoded) <= MAX_VARINT_BYTES
    assert decode_uvarint(encoded) == (value, len(encoded))
    assert decode_uvarint(prefix + encoded + suffix, len(prefix)) == (value, len(prefix) + len(encoded))
    assert decode_uvarint(bytearray(encoded)) == (value, len(encoded))
    assert decode_uvarint(memoryview(encoded)) == (value, len(encoded))


@given(uint63)
def test_truncated_uvarint_needs_more(value: int) -> None:
    encoded = encode_uvarint(value)
    for cut in range(len(encoded)):
        assert decode_uvarint(encoded[:cut]) is None


@given(st.binary(max_size=20), st.integers(min_value=0, max_value=21))
def test_uvarint_decode_arbitrary_bytes(buf: bytes, pos: int) -> None:
    try:
        got = decode_uvarint(buf, pos)
    except DecodeError:
        return
    if got is None:
        return
    value, end = got
    assert pos < end <= len(buf)
    assert end - pos <= MAX_VARINT_BYTES
    assert encode_uvarint(value) == buf[pos:end]


@given(st.binary(min_size=MAX_VARINT_BYTES, max_size=MAX_VARINT_BYTES), st.binary(max_size=4))
def test_uvarint_longer_than_nine_bytes_is_rejected(body: bytes, tail: bytes) -> None:
    continued = bytes(b | 0x80 for b in body)
    with pytest.raises(DecodeError):
        decode_uvarint(continued + tail)


def test_uvarint_edges() -> None:
    assert decode_uvarint(b"\xff" * 8 + b"\x7f") == (2**63 - 1, 9)
    with pytest.raises(DecodeError):
        decode_uvarint(b"\x80" * 9 + b"\x01")  # 2**63 needs ten bytes
    with pytest.raises(DecodeError):
        decode_uvarint(b"\x80\x00")  # not minimal
    assert decode_uvarint(b"") is None
    assert decode_uvarint(b"\x05", 1) is None
    with pytest.raises(ValueError):
        encode_uvarint(-1)
    with pytest.raises(ValueError):
        encode_uvarint(2**63)
