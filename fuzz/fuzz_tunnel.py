"""Fuzz the latest generation's tunnel, both sides: mimirlite/mimir/tunnel.py (a node reading one HTTP/1.1
request with RequestReader, then admit) and mimirlite/mimir/tunnel_client.py (a client reading the answer
with ResponseReader and SseDecoder).

Input: a mode byte (``mode % 2``: 0 the node's side, 1 the client's), then records, one ``feed`` each; the
end of the input is the end of the stream. Invariants: the outcome (request or answer, or the error's
class) does not depend on how the stream is cut (here: fed in one piece); a request the node admits has an
allowlisted method and path and names the stream's model; the answer body never exceeds what was sent.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.errors import MimirliteError
    from mimirlite.mimir.tunnel import ALLOWED_ROUTES, RequestReader, admit
    from mimirlite.mimir.tunnel_client import ResponseReader, SseDecoder

MODEL = "llama3.2:latest"


def _node(pieces: list[bytes]) -> tuple[object, ...]:
    reader = RequestReader()
    try:
        got = None
        for piece in [*(p for p in pieces if p), b""]:  # a read gives b"" only at the end of the stream
            got = reader.feed(piece)
            if got is not None:
                break
        if got is None:
            return ("probe or partial",)
        request = admit(got, MODEL)
    except MimirliteError as exc:
        return ("error", type(exc).__name__)
    fuzzlib.check((request.method, request.path) in ALLOWED_ROUTES, "a route outside the allowlist", request)
    return ("request", request.method, request.target, request.body)


def _client(pieces: list[bytes]) -> tuple[object, ...]:
    reader, sse = ResponseReader(), SseDecoder()
    body, events = b"", []
    try:
        for piece in pieces:
            data = reader.feed(piece)
            body += data
            events += sse.feed(data)
        reader.eof()
        events += sse.eof()
    except MimirliteError as exc:  # what came before it depends on the cut: the error does not
        return ("error", type(exc).__name__)
    fuzzlib.check(len(body) <= sum(map(len, pieces)), "more body than was sent", pieces)
    head = reader.head
    return ("answer", None if head is None else head.status, body, events)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    side = _node if data[0] % 2 == 0 else _client
    pieces = list(fuzzlib.records(data[1:]))
    outcome = side(pieces)
    whole = side([b"".join(pieces)] if pieces else [])
    fuzzlib.check(outcome == whole, "outcome depends on how the stream is cut", pieces, outcome, whole)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
