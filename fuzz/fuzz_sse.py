"""Fuzz mimirlite/mimir/sse.py: SSEDecoder fed in pieces, then the end of the stream.

Input: one mode byte (the bounds: ``max_line`` = ``LINES[mode % 4]``, ``max_event`` =
``EVENTS[(mode >> 2) % 4]``), then records, one ``receive_data`` each.
Invariants: only SSEError (a bound broken); every event's data within ``max_event`` and its type and ID
without a line end; cutting the stream elsewhere (here: feeding it in one piece, and byte by byte) gives
the same events and the same error (when a bound breaks: the same error, the events up to it alike).
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.mimir.sse import MAX_EVENT, MAX_LINE, Event, SSEDecoder, SSEError

LINES = [MAX_LINE, 0, 8, 64]
EVENTS = [MAX_EVENT, 0, 8, 100]


def _decode(pieces: list[bytes], max_line: int, max_event: int) -> tuple[list[Event], str | None]:
    decoder = SSEDecoder(max_line=max_line, max_event=max_event)
    events: list[Event] = []
    try:
        for piece in pieces:
            if piece:
                events += decoder.receive_data(piece)
        events += decoder.receive_data(b"")
    except SSEError as exc:
        return events, type(exc).__name__
    return events, None


def _same(a: tuple[list[Event], str | None], b: tuple[list[Event], str | None]) -> bool:
    """Equal; or, both failing alike, the events of one a prefix of the other's (a piece that breaks a
    bound returns none of the events it completed before the break)."""
    (ea, xa), (eb, xb) = a, b
    if xa is None or xb is None:
        return a == b
    shorter, longer = (ea, eb) if len(ea) <= len(eb) else (eb, ea)
    return xa == xb and longer[: len(shorter)] == shorter


def test_one_input(data: bytes) -> None:
    if not data:
        return
    max_line, max_event = LINES[data[0] % 4], EVENTS[(data[0] >> 2) % 4]
    pieces = list(fuzzlib.records(data[1:]))
    result = _decode(pieces, max_line, max_event)
    for event in result[0]:
        # a byte gives at most one character (an invalid one: U+FFFD)
        fuzzlib.check(len(event.data) <= max_event, "event above the bound", event, max_event)
        fuzzlib.check(not any(c in event.event + event.id for c in "\r\n"), "a line end in a field", event)
    stream = b"".join(pieces)
    fuzzlib.check(_same(_decode([stream], max_line, max_event), result), "depends on the cut", pieces)
    if len(stream) <= 512:
        single = [stream[i : i + 1] for i in range(len(stream))]
        fuzzlib.check(_same(_decode(single, max_line, max_event), result), "byte by byte differs", pieces)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
