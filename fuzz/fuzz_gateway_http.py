"""Fuzz the gateway's request parsing: mimirlite/gateway/http.py ``ServerConnection`` (with its door) and
the chat body parser of mimirlite/gateway/api.py.

Input: a mode byte, then records, one ``receive_data`` each (empty ones skipped; the end of input is
the client closing).
Mode bits 0-1 pick the door: none; the gateway's default on 127.0.0.1 with an API key; any host, JSON
only; a CORS policy for one origin with an API key. Bit 2: small limits (512-byte head, 256-byte body)
instead of the gateway's. Bit 3: the records are not HTTP but one request body, parsed as the gateway
parses a chat body.
Errors allowed: mimirlite's (``HttpError`` from the core) and ``ApiError`` (400) from the body parser.
Invariants: a request let through is within the limits, has one framing and passed the door (Host,
key, content type); an error status is a 4xx/5xx; cutting the input elsewhere gives the same requests
and error (but where h11's own bound on an unparsed head, which depends on the reads, answered 431);
a body the parser accepts re-encodes as strict UTF-8 JSON.

    python fuzz/fuzz_gateway_http.py --write-seeds fuzz/corpus/gateway_http   # the seed corpus
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import atheris

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # this checkout's mimirlite, not another

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.gateway import api
    from mimirlite.gateway.http import (
        LOOPBACK_HOSTS,
        MAX_REQUEST_BODY,
        MAX_REQUEST_HEAD,
        CorsPolicy,
        Door,
        HttpError,
        Pending,
        Request,
        ServerConnection,
        host_name,
        is_json_type,
    )

KEY = "k"
ORIGIN = "http://app.example"
DOORS: list[tuple[Door | None, CorsPolicy | None]] = [
    (None, None),
    (Door.of([*LOOPBACK_HOSTS, "127.0.0.1"], KEY), None),
    (Door.of(None), None),
    (Door.of([*LOOPBACK_HOSTS, "my.box"], KEY), CorsPolicy.of([ORIGIN])),
]
"""The door and CORS policy of each mode (bits 0-1)."""

Seen = tuple[str, str, tuple[tuple[str, str], ...], bytes]
Outcome = tuple[list[Seen], int | None, str | None]


def _check_request(req: Request, conn: ServerConnection) -> None:
    names = [k for k, _ in req.headers]
    fuzzlib.check(len(req.body) <= conn.max_body, "body over the limit let through", len(req.body))
    fuzzlib.check(
        not ("content-length" in names and "transfer-encoding" in names), "both framings let through"
    )
    door = conn.door
    if door is None:
        return
    host = req.header("host")
    if door.hosts is not None and host is not None:
        fuzzlib.check(host_name(host) in door.hosts, "a Host not served let through", host)
    preflight = conn.cors is not None and req.method == "OPTIONS"
    if door.api_key is not None and not preflight:
        fuzzlib.check(
            (req.header("authorization") or "").partition(" ")[2].strip() == door.api_key,
            "a request without the key let through",
        )
    if door.json_only and req.method == "POST":
        origin = req.header("origin")
        allowed = conn.cors is not None and origin is not None and conn.cors.response_headers(origin)
        fuzzlib.check(allowed or is_json_type(req.header("content-type")), "a POST not as JSON let through")


def _parse_body(body: bytes) -> None:
    try:
        call = api.parse_chat_body(body)
    except api.ApiError as exc:
        fuzzlib.check(exc.status == 400, "a body refused with another status", exc.status)
        return
    text = json.dumps(
        {"model": call.model, "messages": call.messages, **call.params}, allow_nan=False, ensure_ascii=False
    )
    text.encode("utf-8")  # no lone surrogate, no NaN: UnicodeEncodeError / ValueError would be a crash


def _serve(mode: int, pieces: list[bytes]) -> Outcome:
    """Feed ``pieces`` then the end; answer each request: (requests, error status, error reason)."""
    door, cors = DOORS[mode & 3]
    small = bool(mode & 4)
    conn = ServerConnection(
        cors=cors,
        door=door,
        max_head=512 if small else MAX_REQUEST_HEAD,
        max_body=256 if small else MAX_REQUEST_BODY,
    )
    seen: list[Seen] = []
    try:
        for piece in [*pieces, b""]:
            conn.receive_data(piece)
            while True:
                req = conn.next_request()
                if req is Pending.NEED_DATA:
                    break
                if req is Pending.CLOSED:
                    return seen, None, None
                _check_request(req, conn)
                seen.append((req.method, req.target, req.headers, req.body))
                _parse_body(req.body)
                conn.respond(200, [("content-type", "application/json")], b"{}")
                conn.data_to_send()
                if not conn.start_next_cycle():
                    return seen, None, None
    except HttpError as exc:
        fuzzlib.check(400 <= exc.status < 600, "an error status that is not an error", exc.status)
        fuzzlib.check(conn.can_respond, "an error the client cannot be told")
        conn.respond(exc.status, [], exc.message.encode(), close=True)
        fuzzlib.check(not conn.start_next_cycle(), "a connection kept after an error")
        return seen, exc.status, exc.reason
    return seen, None, None


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode = data[0]
    if mode & 8:
        _parse_body(data[1:])
        return
    pieces = [p for p in fuzzlib.records(data[1:]) if p]  # b"" is the end: only at the end of input
    outcome = _serve(mode, pieces)
    whole = _serve(mode, [b"".join(pieces)])
    if outcome[1] == 431 or whole[1] == 431:  # h11's bound on what it holds unparsed depends on the reads
        shorter, longer = sorted((outcome[0], whole[0]), key=len)
        fuzzlib.check(longer[: len(shorter)] == shorter, "requests depend on how the input is cut")
    else:
        fuzzlib.check(outcome == whole, "result depends on how the input is cut", pieces, outcome, whole)


# ---- seeds ----

SDK_HEADERS = (
    b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nauthorization: Bearer k\r\n"
    b"accept: application/json\r\nuser-agent: AsyncOpenAI/Python 3.63.0\r\n"
    b"x-stainless-lang: python\r\nx-stainless-package-version: 3.63.0\r\nx-stainless-os: Linux\r\n"
    b"x-stainless-arch: x64\r\nx-stainless-runtime: CPython\r\nx-stainless-runtime-version: 3.11.7\r\n"
    b"x-stainless-async: async:asyncio\r\nx-stainless-retry-count: 0\r\nx-stainless-read-timeout: 3\r\n"
)
SDK_BODY = (
    b'{"model":"echo","stream":true,"messages":[{"role":"user","content":"hi there"}],"temperature":0.5}'
)
SDK_CHAT = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    + SDK_HEADERS
    + b"content-type: application/json\r\nContent-Length: %d\r\n\r\n" % len(SDK_BODY)
    + SDK_BODY
)
"""What the openai SDK (Python, async) sent for a streamed chat, captured on a socket."""
SDK_MODELS = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n" + SDK_HEADERS + b"\r\n"
CURL_BODY = b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
CURL_CHAT = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: curl/7.88.1\r\n"
    b"Accept: */*\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(CURL_BODY) + CURL_BODY
)
"""What curl sent (``-H 'Content-Type: application/json' -d``), captured on a socket."""
CHUNKED = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: [::1]:8080\r\nAuthorization: Bearer k\r\n"
    b"Content-Type: application/json; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"10\r\n" + CURL_BODY[:16] + b"\r\n%x\r\n" % (len(CURL_BODY) - 16) + CURL_BODY[16:] + b"\r\n0\r\n\r\n"
)
CONTINUE = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer k\r\n"
    b"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(CURL_BODY)
)
PREFLIGHT = (
    b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: my.box\r\nOrigin: http://app.example\r\n"
    b"Access-Control-Request-Method: POST\r\n"
    b"Access-Control-Request-Headers: authorization, content-type\r\n\r\n"
)
PAGE_POST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: my.box\r\nOrigin: http://app.example\r\n"
    b"Authorization: Bearer k\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
    % len(CURL_BODY)
    + CURL_BODY
)
SMUGGLE = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k\r\n"
    b"Content-Type: application/json\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    + SDK_MODELS
)


def seeds() -> list[bytes]:
    records = fuzzlib.encode_records
    out = [
        b"\x01" + records([SDK_CHAT]),
        b"\x01" + records([SDK_CHAT[:200], SDK_CHAT[200:]]),
        b"\x01" + records([SDK_MODELS + SDK_MODELS]),  # pipelined
        b"\x05" + records([SDK_MODELS]),
        b"\x00" + records([CURL_CHAT]),
        b"\x01" + records([CHUNKED]),
        b"\x05" + records([CHUNKED]),
        b"\x01" + records([CONTINUE, CURL_BODY]),
        b"\x03" + records([PREFLIGHT, PAGE_POST]),
        b"\x02" + records([b"GET /v1/models HTTP/1.0\r\n\r\n"]),
        b"\x01" + records([SMUGGLE]),
        b"\x08" + SDK_BODY,
        b"\x08" + CURL_BODY,
        b'\x08{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"\\ud83d\\ude00"}]}]}',
    ]
    return out


def write_seeds(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for seed in seeds():
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write-seeds"]:
        write_seeds(Path(sys.argv[2]))
    else:
        fuzzlib.run(test_one_input)
