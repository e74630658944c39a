"""Fuzz mimirlite/wire/lp.py: LPDecoder fed in pieces, every body through decode_json.

Input: one mode byte (the message cap: ``CAPS[mode % 8]``; bit 7: a 70,000-byte message comes first,
so that what follows is read past the decoder's 64 KiB compaction point), then records, one ``feed``
each.
Invariants: the bodies returned, re-framed, are exactly the bytes consumed; cutting the stream
elsewhere (here: feeding it in one piece) gives the same bodies and the same error.
"""

from __future__ import annotations

import contextlib

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.errors import DecodeError, MessageTooLargeError
    from mimirlite.wire.lp import MAX_MESSAGE, LPDecoder, decode_json, encode_message

CAPS = [MAX_MESSAGE, 0, 1, 16, 255, 1024, MAX_MESSAGE, 70000]
_BIG = encode_message(bytes(70000))


def _decode(pieces: list[bytes], cap: int) -> tuple[list[bytes], str | None, int]:
    """Bodies, the error class name (or None) and the bytes still buffered."""
    decoder = LPDecoder(cap)
    bodies: list[bytes] = []
    try:
        for piece in pieces:
            decoder.feed(piece)
            while (body := decoder.next_message()) is not None:
                fuzzlib.check(len(body) <= cap, "body above the cap", len(body), cap)
                bodies.append(body)
    except (DecodeError, MessageTooLargeError) as exc:
        return bodies, type(exc).__name__, decoder.buffered
    return bodies, None, decoder.buffered


def test_one_input(data: bytes) -> None:
    if not data:
        return
    cap = CAPS[data[0] % len(CAPS)]
    pieces = list(fuzzlib.records(data[1:]))
    if data[0] & 0x80:
        pieces = [_BIG + b"".join(pieces[:1]), *pieces[1:]]
    stream = b"".join(pieces)
    bodies, error, buffered = _decode(pieces, cap)
    whole = _decode([stream], cap)
    fuzzlib.check(whole[:2] == (bodies, error), "result depends on how the stream is cut", pieces, cap)
    framed = b"".join(encode_message(b) for b in bodies)
    fuzzlib.check(stream.startswith(framed), "bodies are not what was framed", pieces, cap)
    if error is None:
        fuzzlib.check(buffered == len(stream) - len(framed), "buffered count is off", pieces, cap, buffered)
    for body in bodies:
        with contextlib.suppress(DecodeError):
            decode_json(body)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
