"""Fuzz mimirlite/mimir/chunked.py: ChunkedDecoder fed in pieces, then the end of the connection.

Input: one mode byte (the bounds: ``max_line`` = ``LINES[mode % 4]``, ``max_trailers`` =
``TRAILERS[(mode >> 2) % 4]``), then records, one ``receive_data`` each, until the body ends (the rest
is what came after it).
Invariants: only ChunkedError; no more body data out than bytes in; what is kept between calls within
the bounds; cutting the stream elsewhere (here: feeding it in one piece, and byte by byte) gives the
same data, the same bytes after the body, and an error where the other gives one.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.mimir.chunked import MAX_LINE, MAX_TRAILERS, ChunkedDecoder, ChunkedError

LINES = [MAX_LINE, 1, 8, 64]
TRAILERS = [MAX_TRAILERS, 0, 16, 200]


def _decode(pieces: list[bytes], max_line: int, max_trailers: int) -> tuple[bytes, bool, bytes]:
    """(body data, whether it broke, the bytes after the body)."""
    decoder = ChunkedDecoder(max_line=max_line, max_trailers=max_trailers)
    out: list[bytes] = []
    bound = max(max_line + 2, max_trailers)
    try:
        for i, piece in enumerate(pieces):
            if not piece:
                continue
            out.append(decoder.receive_data(piece))
            fuzzlib.check(len(decoder._buf) <= bound, "kept beyond the bounds", len(decoder._buf))
            if decoder.done:
                return b"".join(out), False, decoder.unused + b"".join(pieces[i + 1 :])
        decoder.receive_data(b"")
    except ChunkedError as exc:
        return b"".join(out) + exc.data, True, b""
    return b"".join(out), False, b""


def test_one_input(data: bytes) -> None:
    if not data:
        return
    max_line, max_trailers = LINES[data[0] % 4], TRAILERS[(data[0] >> 2) % 4]
    pieces = list(fuzzlib.records(data[1:]))
    result = _decode(pieces, max_line, max_trailers)
    stream = b"".join(pieces)
    fuzzlib.check(len(result[0]) <= len(stream), "more data out than in", result)
    fuzzlib.check(_decode([stream], max_line, max_trailers) == result, "depends on the cut", pieces)
    if len(stream) <= 512:
        single = [stream[i : i + 1] for i in range(len(stream))]
        fuzzlib.check(_decode(single, max_line, max_trailers) == result, "byte by byte differs", pieces)
        n = (data[0] >> 4) % 7 + 2  # and in pieces of 2 to 8 bytes (a state change and a cut line in one)
        small = [stream[i : i + n] for i in range(0, len(stream), n)]
        fuzzlib.check(_decode(small, max_line, max_trailers) == result, f"in {n}-byte pieces differs", pieces)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
