"""Length-prefixed JSON framing."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mimirlite.errors import DecodeError, MessageTooLargeError
from mimirlite.wire.lp import LPDecoder, decode_json, encode_json, encode_message

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def test_literal_packet() -> None:
    assert encode_json({"event": "query", "data": None}) == b'\x1d{"event":"query","data":null}'
    assert encode_message(b"x" * 300)[:2] == b"\xac\x02"


@given(st.lists(json_values, max_size=10), st.integers(1, 7))
def test_round_trip_split_anywhere(values: list[object], step: int) -> None:
    wire = b"".join(encode_json(v) for v in values)
    decoder = LPDecoder()
    out = []
    for i in range(0, len(wire), step):
        decoder.feed(wire[i : i + step])
        while (body := decoder.next_message()) is not None:
            out.append(decode_json(body))
    assert out == values
    assert decoder.buffered == 0


def test_cap_is_enforced_before_the_body_arrives() -> None:
    decoder = LPDecoder(max_message=1024)
    decoder.feed(encode_message(b"x" * 1025)[:3])
    with pytest.raises(MessageTooLargeError):
        decoder.next_message()


def test_default_cap_is_4_mib() -> None:
    decoder = LPDecoder()
    decoder.feed(encode_message(b"x" * (4 * 1024 * 1024))[:4])
    assert decoder.next_message() is None
    decoder = LPDecoder()
    decoder.feed(b"\x81\x80\x80\x02")  # 4 MiB + 1
    with pytest.raises(MessageTooLargeError):
        decoder.next_message()


def test_varint_longer_than_nine_bytes() -> None:
    decoder = LPDecoder()
    decoder.feed(b"\xff" * 10 + b"\x01")
    with pytest.raises(DecodeError):
        decoder.next_message()


def test_not_json() -> None:
    with pytest.raises(DecodeError):
        decode_json(b"\xff{")
    assert decode_json(json.dumps([1]).encode()) == [1]


@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_our_errors(data: bytes) -> None:
    decoder = LPDecoder(max_message=256)
    decoder.feed(data)
    try:
        while (body := decoder.next_message()) is not None:
            with contextlib.suppress(DecodeError):
                decode_json(body)
    except (DecodeError, MessageTooLargeError):
        pass
