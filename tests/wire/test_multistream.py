"""multistream-select sans-IO, with literal bytes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mimirlite.errors import MultistreamError, ProtocolNotSupportedError
from mimirlite.wire.multistream import MultistreamDialer, MultistreamListener, encode_line

HEADER = b"\x13/multistream/1.0.0\n"


def test_encode_line_literal() -> None:
    assert encode_line("/multistream/1.0.0") == HEADER
    assert encode_line("na") == b"\x03na\n"


def test_dialer_accepts_echo_and_keeps_pipelined_bytes() -> None:
    d = MultistreamDialer(["/noise"])
    assert d.data_to_send() == HEADER + b"\x07/noise\n"
    d.receive_data(HEADER + b"\x07/noise\n" + b"handshake bytes")
    assert d.selected == "/noise"
    assert d.leftover == b"handshake bytes"
    d.receive_data(b" and more")
    assert d.leftover == b"handshake bytes and more"


def test_dialer_moves_on_after_na_and_handles_split_reads() -> None:
    d = MultistreamDialer(["/a", "/b"])
    d.data_to_send()
    answer = HEADER + b"\x03na\n"
    for i in range(len(answer)):
        d.receive_data(answer[i : i + 1])
    assert d.data_to_send() == b"\x03/b\n"
    d.receive_data(b"\x03/b\n")
    assert d.selected == "/b"


def test_dialer_raises_when_all_refused() -> None:
    d = MultistreamDialer(["/a"])
    with pytest.raises(ProtocolNotSupportedError):
        d.receive_data(HEADER + b"\x03na\n")


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 100,
        b"\x13/multistream/2.0.0\n",
        b"\x00",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        HEADER + b"\x04/bad",  # no newline where one is due
        b"\x80\x08" + b"x" * 1100,
    ],
)
def test_garbage_is_a_multistream_error(garbage: bytes) -> None:
    with pytest.raises(MultistreamError):
        MultistreamListener(lambda p: True).receive_data(garbage)


def test_listener_answers_na_then_selects() -> None:
    listener = MultistreamListener(lambda p: p == "/yes")
    listener.receive_data(HEADER + b"\x04/no\n")
    assert listener.data_to_send() == HEADER + b"\x03na\n"
    listener.receive_data(b"\x05/yes\n\x01\x02")
    assert listener.selected == "/yes"
    assert listener.data_to_send() == b"\x05/yes\n"
    assert listener.leftover == b"\x01\x02"


def test_listener_bounds_refused_proposals() -> None:
    listener = MultistreamListener(lambda p: False, max_attempts=3)
    listener.receive_data(HEADER)
    with pytest.raises(MultistreamError):
        listener.receive_data(b"\x03/x\n" * 4)


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_multistream_errors(data: bytes) -> None:
    for machine in (MultistreamListener(lambda p: True), MultistreamDialer(["/x"])):
        with contextlib.suppress(MultistreamError, ProtocolNotSupportedError):
            machine.receive_data(data)
