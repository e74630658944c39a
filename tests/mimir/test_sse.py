"""The sans-IO event-stream decoder (mimirlite/mimir/sse.py): the standard's parsing rules on literal
streams, the same events however the bytes are cut (a property), its bounds and its end."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimirlite.errors import LocalError, MessageTooLargeError
from mimirlite.mimir.sse import MAX_EVENT, MAX_LINE, Event, SSEDecoder, SSEError

OPENAI_LIKE = (
    b'data: {"id":"c1","choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    b'data: {"id":"c1","choices":[{"delta":{"content":"hi"}}]}\n\n'
    b"data: [DONE]\n\n"
)


def decode(*parts: bytes, end: bool = True) -> list[Event]:
    decoder = SSEDecoder()
    events = [e for part in parts for e in decoder.receive_data(part)]
    if end:
        assert decoder.receive_data(b"") == []
    return events


def test_an_openai_stream() -> None:
    assert [e.data for e in decode(OPENAI_LIKE)] == [
        '{"id":"c1","choices":[{"delta":{"role":"assistant","content":""}}]}',
        '{"id":"c1","choices":[{"delta":{"content":"hi"}}]}',
        "[DONE]",
    ]
    assert {e.event for e in decode(OPENAI_LIKE)} == {"message"}


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: a\r\n\r\n", [Event("a")]),  # CRLF
        (b"data: a\r\rdata: b\r\r", [Event("a"), Event("b")]),  # CR alone
        (b"data: a\ndata: b\n\n", [Event("a\nb")]),  # data lines joined with LF
        (b"data:a\n\n", [Event("a")]),  # no space after the colon
        (b"data:  a\n\n", [Event(" a")]),  # only one space is taken off
        (b"data\n\n", [Event("")]),  # a field with no colon: the whole line is its name
        (b"data\ndata\n\n", [Event("\n")]),
        (b": a comment\ndata: a\n\n", [Event("a")]),
        (b"event: delta\ndata: a\n\ndata: b\n\n", [Event("a", "delta"), Event("b")]),  # type reset
        (b"id: 7\ndata: a\n\ndata: b\n\n", [Event("a", id="7"), Event("b", id="7")]),  # last ID kept
        (b"id: 7\ndata: a\n\nid: x\0y\ndata: b\n\n", [Event("a", id="7"), Event("b", id="7")]),  # NUL
        (b"event: x\n\ndata: a\n\n", [Event("a")]),  # no data: nothing dispatched, type reset
        (b"\n\n\n", []),
        (b"foo: bar\ndata: a\n\n", [Event("a")]),  # unknown fields ignored
        (b"\xef\xbb\xbfdata: a\n\n", [Event("a")]),  # a leading BOM
        (b"data: \xff\n\n", [Event("\ufffd")]),  # invalid UTF-8: replaced
        (b"data: a\n\ndata: unfinished\n", [Event("a")]),  # cut before its empty line: dropped at the end
    ],
)
def test_parsing_rules(stream: bytes, expected: list[Event]) -> None:
    assert decode(stream) == expected


def test_a_bom_only_at_the_start_and_split_across_reads() -> None:
    assert decode(b"\xef", b"\xbb", b"\xbfdata: a\n\n") == [Event("a")]
    assert decode(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == [Event("a")]  # later: part of a field name


def test_crlf_split_between_reads_is_one_line_end() -> None:
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [Event("a\nb")]


def test_retry_is_kept() -> None:
    decoder = SSEDecoder()
    assert decoder.receive_data(b"retry: 1500\nretry: soon\n\n") == []
    assert decoder.retry == 1500


def test_events_come_out_as_their_empty_line_arrives() -> None:
    decoder = SSEDecoder()
    assert decoder.receive_data(b"data: a") == []
    assert decoder.receive_data(b"\n") == []
    assert decoder.receive_data(b"\ndata: b\n\ndata: c\n") == [Event("a"), Event("b")]
    assert decoder.receive_data(b"\n") == [Event("c")]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["data", "event", "id", "retry", "other", ""]),
            st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0"), max_size=12),
        ),
        max_size=12,
    ),
    st.sampled_from([b"\n", b"\r", b"\r\n"]),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_the_same_events_however_the_bytes_are_cut(
    fields: list[tuple[str, str]], eol: bytes, cuts: list[int]
) -> None:
    stream = b"".join(
        (f"{name}: {value}".encode() if name else b"") + eol for name, value in fields
    ) + eol
    whole = decode(stream)
    points = sorted({min(c, len(stream)) for c in cuts})
    parts = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert decode(*[p for p in parts if p]) == whole
    assert decode(*[stream[i : i + 1] for i in range(len(stream))]) == whole  # byte by byte


def test_bounds() -> None:
    assert SSEDecoder().max_line == MAX_LINE and SSEDecoder().max_event == MAX_EVENT
    with pytest.raises(SSEError, match="line longer than 8 bytes"):
        SSEDecoder(max_line=8).receive_data(b"data: 123")  # unfinished, already too long
    with pytest.raises(SSEError, match="line longer than 8 bytes"):
        SSEDecoder(max_line=8).receive_data(b"data: 123\n")
    assert SSEDecoder(max_line=8).receive_data(b"data: 12\n\n") == [Event("12")]
    decoder = SSEDecoder(max_event=10)
    assert decoder.receive_data(b"data: 1234\ndata: 1234\n\n") == [Event("1234\n1234")]
    with pytest.raises(SSEError, match="event larger than 10 bytes"):
        decoder.receive_data(b"data: 1234\ndata: 12345\n")
    assert issubclass(SSEError, MessageTooLargeError)


def test_data_after_the_end_is_refused() -> None:
    decoder = SSEDecoder()
    assert decoder.receive_data(b"") == []
    with pytest.raises(LocalError, match="after its end"):
        decoder.receive_data(b"data: a\n\n")
