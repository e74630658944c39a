"""Property tests for the protobuf wire helpers (mimirlite/wire/protobuf.py)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

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

uint63 = st.integers(min_value=0, max_value=2**63 - 1)


fields = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 2**29 - 1), st.just(VARINT), uint63),
        st.tuples(st.integers(1, 2**29 - 1), st.just(LENGTH_DELIMITED), st.binary(max_size=40)),
    ),
    max_size=8,
)


@given(fields)
def test_protobuf_round_trip(items: list[tuple[int, int, int | bytes]]) -> None:
    buf = b"".join(
        encode_varint_field(f, v) if isinstance(v, int) else encode_bytes_field(f, v) for f, _, v in items
    )
    assert list(iter_fields(buf)) == items


def test_fixed_width_fields_are_yielded_as_bytes() -> None:
    buf = bytes([1 << 3 | FIXED64]) + bytes(8) + bytes([2 << 3 | FIXED32]) + b"\x01\x02\x03\x04"
    assert list(iter_fields(buf)) == [(1, FIXED64, bytes(8)), (2, FIXED32, b"\x01\x02\x03\x04")]


@pytest.mark.parametrize(
    "buf",
    [
        b"\x08",  # truncated varint value
        b"\x12\x05abc",  # truncated length-delimited
        b"\x09\x00",  # truncated fixed64
        b"\x03",  # wire type 3 (groups) unsupported
        b"\x00\x00",  # field number 0
        b"\x80",  # truncated key
    ],
)
def test_protobuf_rejects(buf: bytes) -> None:
    with pytest.raises(DecodeError):
        list(iter_fields(buf))


@given(st.binary(max_size=100))
def test_iter_fields_arbitrary_bytes_raise_only_decode_error(buf: bytes) -> None:
    with contextlib.suppress(DecodeError):
        for field, wire_type, value in iter_fields(buf):
            assert field >= 1
            assert wire_type in (VARINT, FIXED64, LENGTH_DELIMITED, FIXED32)
            assert isinstance(value, int) == (wire_type == VARINT)


@given(st.binary(max_size=100))
def test_decode_message_arbitrary_bytes_raise_only_decode_error(buf: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_message(buf, {1: VARINT, 2: LENGTH_DELIMITED})
