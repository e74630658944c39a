"""The chunked transfer coding decoder (mimirlite/mimir/chunked.py): bodies cut at every byte offset,
hostile sizes, lines and trailers; and the backend's HTTP client reading hostile chunked answers on
127.0.0.1 (mimirlite/mimir/http.py)."""

from __future__ import annotations

import asyncio

import pytest

from mimirlite.errors import LocalError
from mimirlite.mimir.chunked import MAX_LINE, MAX_TRAILERS, ChunkedDecoder, ChunkedError
from mimirlite.mimir.http import HttpBrokenError, HttpClient
from tests.mimir.test_http import raw_server, read_request


def decode(pieces: list[bytes], **bounds: int) -> tuple[bytes, str | None, bytes]:
    """(body data, the error's message or None, the bytes after the body) of ``pieces`` fed one by one
    until the body ends, then EOF when it did not."""
    decoder = ChunkedDecoder(**bounds)
    out = []
    try:
        for i, piece in enumerate(pieces):
            if piece:
                out.append(decoder.receive_data(piece))
            if decoder.done:
                return b"".join(out), None, decoder.unused + b"".join(pieces[i + 1 :])
        decoder.receive_data(b"")
    except ChunkedError as exc:
        return b"".join(out) + exc.data, str(exc), decoder.unused
    return b"".join(out), None, decoder.unused


def every_cut(body: bytes, **bounds: int) -> tuple[bytes, str | None, bytes]:
    """The result of ``body`` in one piece, checked equal (error aside: its message may differ) when it
    is cut in two at every offset, and fed byte by byte."""
    whole = decode([body], **bounds)
    cuts = [[body[:i], body[i:]] for i in range(1, len(body))]
    cuts.append([body[i : i + 1] for i in range(len(body))])
    for pieces in cuts:
        got = decode(pieces, **bounds)
        assert got[0] == whole[0] and got[2] == whole[2], (pieces, got, whole)
        assert (got[1] is None) == (whole[1] is None), (pieces, got, whole)
    return whole


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


EVENTS = [b'data: {"n": %d}\n\n' % i for i in range(5)]


def test_a_body_decodes_alike_however_it_is_cut() -> None:
    body = b"".join(chunk(e) for e in EVENTS) + b"0\r\n\r\n"
    assert every_cut(body) == (b"".join(EVENTS), None, b"")


def test_a_body_cut_in_three_decodes_alike_at_every_pair_of_offsets() -> None:
    body = chunk(b"hello") + chunk(b"big wide") + b"0;x=1\r\nx-sum: 1\r\n\r\nrest"
    expected = (b"hellobig wide", None, b"rest")
    for i in range(1, len(body)):
        for j in range(i + 1, len(body)):
            assert decode([body[:i], body[i:j], body[j:]]) == expected, (i, j)


def test_partial_chunks_come_out_as_they_come() -> None:
    decoder = ChunkedDecoder()
    assert decoder.receive_data(b"a\r\n01234") == b"01234"
    assert decoder.receive_data(b"56789\r") == b"56789"
    assert decoder.receive_data(b"\n5\r\nabcde\r\n0\r\n") == b"abcde"
    assert not decoder.done
    assert decoder.receive_data(b"\r\nHTTP/1.1") == b""
    assert decoder.done and decoder.unused == b"HTTP/1.1"
    assert decoder.receive_data(b"") == b""
    with pytest.raises(LocalError):
        decoder.receive_data(b"more")


def test_sizes_extensions_and_trailers_that_are_allowed() -> None:
    body = (
        b"00005\r\nhello\r\n"  # leading zeros
        b'A ; name=value;flag ;q="a \\"quoted\\" one"\r\n0123456789\r\n'  # hex in capitals, extensions
        b"1\t\r\n!\r\n"  # white space after the size
        b"0;last\r\nExpires: never\r\nx-checksum:\tabc \r\n\r\n"
    )
    assert every_cut(body) == (b"hello0123456789!", None, b"")


@pytest.mark.parametrize(
    "line",
    [
        b"+5",  # a sign: int() would take it
        b"-5",
        b"0x5",  # a prefix: int(x, 16) would take it
        b" 5",  # white space before the size
        b"5_0",  # int() takes underscores
        b"",  # no size
        b"g",
        b"1" * 17,  # more than 16 hex digits
        b"5;",  # an extension without a name
        b"5;a=",  # without a value
        b'5;a="open',  # a quoted string never closed
        b"5;a b",  # two tokens
        b"5;a=\x01",  # a control character
        b"5\r",  # a bare CR (then CRLF)
    ],
)
def test_bad_chunk_size_lines_are_refused(line: bytes) -> None:
    body = chunk(b"ok") + line + b"\r\nhello\r\n0\r\n\r\n"
    data, error, _ = every_cut(body)
    assert data == b"ok" and error is not None


@pytest.mark.parametrize(
    "body",
    [
        b"5\nhello\r\n0\r\n\r\n",  # a bare LF after the size
        b"5\r\nhello\n0\r\n\r\n",  # a bare LF after the data
        b"5\r\nhelloXY0\r\n\r\n",  # no CRLF after the data
        b"5\r\nhello\r\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\n\n",  # a bare LF ending the trailers
        b"5\r\nhello\r\n0\r\nno colon\r\n\r\n",
        b"5\r\nhello\r\n0\r\n: no name\r\n\r\n",
        b"5\r\nhello\r\n0\r\nx: a\rb\r\n\r\n",
        b"5\r\nhello\r\n0\r\n x: folded\r\n\r\n",
    ],
)
def test_lines_not_ended_by_crlf_and_bad_trailers_are_refused(body: bytes) -> None:
    data, error, _ = every_cut(body)
    assert error is not None and data == (b"" if body.startswith(b"5\n") else b"hello"), (data, error)


def test_a_huge_size_is_read_as_data_not_buffered() -> None:
    decoder = ChunkedDecoder()
    assert decoder.receive_data(b"ffffffffffffffff\r\n" + b"x" * 1000) == b"x" * 1000
    assert not decoder.done
    with pytest.raises(ChunkedError, match="closed inside"):
        decoder.receive_data(b"")


def test_lines_are_bounded_before_their_end_comes() -> None:
    long_ext = b"5;" + b"a" * MAX_LINE  # no line end yet: refused once it is longer than the bound
    with pytest.raises(ChunkedError, match="longer than"):
        ChunkedDecoder().receive_data(long_ext)
    decoder = ChunkedDecoder()
    assert decoder.receive_data(b"5;" + b"a" * (MAX_LINE - 2)) == b""  # at the bound: waits
    assert decoder.receive_data(b"\r\nhello\r\n") == b"hello"
    with pytest.raises(ChunkedError, match="longer than"):
        ChunkedDecoder().receive_data(b"5;" + b"a" * (MAX_LINE - 1) + b"\r\nhello\r\n")
    with pytest.raises(ChunkedError, match="bad chunk size line"):
        ChunkedDecoder().receive_data(b"x")  # cannot begin a size: no wait for its end
    assert ChunkedDecoder(max_line=8).receive_data(b"ffffffff\r\nx") == b"x"
    with pytest.raises(ChunkedError, match="longer than 8 bytes"):  # a plain size line is bounded too
        ChunkedDecoder(max_line=8).receive_data(b"fffffffff\r\nx")


def test_trailers_are_bounded() -> None:
    field = b"x-pad: " + b"p" * 1000 + b"\r\n"
    many = b"0\r\n" + field * (MAX_TRAILERS // len(field) + 1) + b"\r\n"
    _, error, _ = decode([many])
    assert error is not None and "trailers larger than" in error
    _, error, _ = decode([many[i : i + 700] for i in range(0, len(many), 700)])
    assert error is not None and "trailers larger than" in error
    one = b"0\r\n" + b"x-pad: " + b"p" * MAX_TRAILERS  # one line without its end
    assert "trailers larger than" in str(decode([one])[1])
    fits = b"0\r\n" + field * 10 + b"\r\n"
    assert decode([fits]) == (b"", None, b"")


def test_a_body_cut_short_and_a_broken_decoder_keep_failing() -> None:
    cut_short = {
        b"5\r\nhel": b"hel",
        b"5\r\nhello": b"hello",
        b"5\r\nhello\r": b"hello",
        b"5\r\nhello\r\n": b"hello",
        b"0\r\n": b"",
        b"0\r\nx: y\r\n": b"",
    }
    for body, expected in cut_short.items():
        assert every_cut(body) == (expected, "connection closed inside a chunked body", b"")
    decoder = ChunkedDecoder()
    with pytest.raises(ChunkedError) as err:
        decoder.receive_data(b"3\r\nabc\r\nzz\r\n3\r\ndef\r\n")
    assert err.value.data == b"abc"
    for again in (b"3\r\nabc\r\n", b""):
        with pytest.raises(ChunkedError, match="bad chunk size line"):
            decoder.receive_data(again)


# ---------------------------------------------------------------- through the HTTP client


async def answer_with(body: bytes) -> tuple[list[bytes], str | None, int]:
    """What HttpClient reads of a chunked answer with ``body`` (receive() until its end or an error),
    the error, and the connections the server took for that request and a second one."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + body)
            await writer.drain()

    async with raw_server(serve) as (url, taken):
        client = HttpClient(5.0)
        try:
            got: list[bytes] = []
            error = None
            response = await client.request("GET", url + "/x", [], b"")
            try:
                while data := await response.receive():
                    got.append(data)
            except HttpBrokenError as exc:
                error = str(exc)
            await response.aclose()
            second = await client.request("GET", url + "/x", [], b"")
            await second.aclose()
        finally:
            await client.aclose()
        return got, error, len(taken)


async def test_the_client_keeps_the_connection_after_trailers() -> None:
    got, error, connections = await answer_with(b"5\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n")
    assert got == [b"hello"] and error is None and connections == 1


@pytest.mark.parametrize(
    "body",
    [b"+5\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXY", b"5\nhello\r\n0\r\n\r\n", b"0x5\r\nhello\r\n0\r\n\r\n"],
)
async def test_the_client_refuses_hostile_chunking_and_drops_the_connection(body: bytes) -> None:
    got, error, connections = await answer_with(body)
    assert error is not None and error.startswith("bad HTTP answer")
    assert b"".join(got) in (b"", b"hello") and connections == 2


async def test_bytes_after_the_body_are_not_taken_as_the_next_answer() -> None:
    got, error, connections = await answer_with(b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")
    assert got == [b"hello"] and error is None and connections == 2
