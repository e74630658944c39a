"""The tunnel's sans-IO core: protocol IDs, one request read from bytes, the allowlist, answers."""

from __future__ import annotations

import json

import pytest

from mimirlite.mimir.models import tunnel_protocol
from mimirlite.mimir.tunnel import (
    RequestReader,
    TunnelError,
    TunnelRequest,
    admit,
    answer_head,
    error_answer,
    passed_headers,
)

MODEL = "llama3.2:latest"
CHAT = b'{"model":"llama3.2:latest","messages":[{"role":"user","content":"hi"}],"stream":true}'
REQUEST = (
    b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: mimir\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nContent-Length: " + str(len(CHAT)).encode() + b"\r\n\r\n" + CHAT
)


def read(*parts: bytes, eof: bool = True) -> TunnelRequest | None:
    reader = RequestReader(max_head=1024, max_body=4096)
    got = None
    for part in parts:
        if part:  # b"" would be the end of the stream
            got = reader.feed(part)
            assert got is None
    if eof:
        got = reader.feed(b"")
    return got


def test_protocol_id() -> None:
    assert tunnel_protocol("llama3.2:latest") == "/mimir/llama3.2-latest/1.0.0"
    assert tunnel_protocol("a/b c_d-E.1") == "/mimir/a-b-c_d-E.1/1.0.0"
    assert tunnel_protocol("é") == "/mimir/-/1.0.0"


def test_reads_one_request_split_at_every_offset() -> None:
    for cut in range(len(REQUEST) + 1):
        got = read(REQUEST[:cut], REQUEST[cut:])
        assert got is not None
        assert (got.method, got.target, got.path, got.body) == (
            "POST",
            "/v1/chat/completions?x=1",
            "/v1/chat/completions",
            CHAT,
        )
        assert got.header("host") == "mimir"


def test_request_waits_for_the_end_of_the_stream() -> None:
    assert read(REQUEST, eof=False) is None


def test_chunked_body() -> None:
    req = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    for cut in range(len(req) + 1):
        got = read(req[:cut], req[cut:])
        assert got is not None and got.body == b"abc"


def test_empty_stream_is_a_probe() -> None:
    reader = RequestReader()
    assert reader.feed(b"") is None
    assert reader.received == 0 and reader.ended


def refused(*parts: bytes) -> TunnelError:
    reader = RequestReader(max_head=1024, max_body=4096)
    with pytest.raises(TunnelError) as info:
        for part in (*(p for p in parts if p), b""):
            reader.feed(part)
    return info.value


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"hello\r\n\r\n", 400, "bad_http"),
        (b"\r\n\r\nHost: x\r\n\r\n", 400, "bad_http"),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", 400, "bad_http"),
        (b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcdef", 400, "trailing_data"),
        (
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "smuggling",
        ),
        (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431, "head_too_large"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"A: b\r\n" * 300 + b"\r\n", 431, "head_too_large"),
        (b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413, "body_too_large"),
        (b"POST /api/chat HTTP/1.1\r\nHost: x\r\n", 400, "bad_http"),
        (b"GET /v1/models HTTP/1.1\r\n\r\n", 400, "bad_http"),  # HTTP/1.1 needs Host
    ],
)
def test_bad_requests(data: bytes, status: int, reason: str) -> None:
    exc = refused(data)
    assert (exc.status, exc.reason) == (status, reason)
    for cut in (1, len(data) // 2):  # and split
        exc = refused(data[:cut], data[cut:])
        assert exc.status == status


def test_chunked_body_too_large() -> None:
    exc = refused(
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"1400\r\n" + b"a" * 5120
    )
    assert (exc.status, exc.reason) == (413, "body_too_large")


def test_bytes_after_the_request_in_a_later_read() -> None:
    exc = refused(REQUEST, b"more")
    assert (exc.status, exc.reason) == (400, "trailing_data")


# ---- admit ----


def req(method: str, target: str, body: bytes = b"") -> TunnelRequest:
    return TunnelRequest(method, target, body)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("GET", "/v1/chat/completions"),
        ("PUT", "/v1/chat/completions"),
        ("POST", "/v1/chat/completions/"),
        ("POST", "http://evil/v1/chat/completions"),
        ("GET", "/"),
        ("POST", "/api/blobs/sha256:00"),
    ],
)
def test_forbidden(method: str, target: str) -> None:
    with pytest.raises(TunnelError) as info:
        admit(req(method, target, b"{}"), MODEL)
    assert (info.value.status, info.value.reason) == (403, "forbidden")


def test_allowed_get_keeps_query_and_has_no_body() -> None:
    out = admit(req("GET", "/v1/models?a=b"), MODEL)
    assert (out.method, out.target, out.body) == ("GET", "/v1/models?a=b", b"")
    with pytest.raises(TunnelError) as info:
        admit(req("GET", "/api/tags", b"x"), MODEL)
    assert info.value.status == 400


def test_model_filled_in_or_checked() -> None:
    out = admit(req("POST", "/api/chat", b'{"messages":[]}'), MODEL)
    assert json.loads(out.body) == {"messages": [], "model": MODEL}
    assert out.header("content-type") == "application/json"
    out = admit(req("POST", "/api/embed", b'{"model":"llama3.2:latest","input":"a"}'), MODEL)
    assert json.loads(out.body)["model"] == MODEL
    # a CID names the model too
    out = admit(
        req("POST", "/api/generate", b'{"model":"QmNizEt5WLyEDUHMqsm89RHHNR63DYUSdtS38AeG4XUV6C"}'), MODEL
    )
    assert json.loads(out.body)["model"] == MODEL
    for body in (b'{"model":"other"}', b'{"model":"llama3.2-latest"}', b'{"model":5}'):
        with pytest.raises(TunnelError) as info:
            admit(req("POST", "/api/chat", body), MODEL)
        assert (info.value.status, info.value.reason) == (400, "model")
    with pytest.raises(TunnelError):
        admit(req("POST", "/api/show", b'{"name":"other"}'), MODEL)


@pytest.mark.parametrize(
    "body", [b"{", b"[1]", b'"x"', b"\xff", b"NaN", b"[" * 100_000 + b"]" * 100_000, b"[" * 70 + b"]" * 70]
)
def test_bad_json(body: bytes) -> None:
    with pytest.raises(TunnelError) as info:
        admit(req("POST", "/api/chat", body), MODEL)
    assert (info.value.status, info.value.reason) == (400, "bad_json")


def test_chat_completions_checked_like_a_first_generation_chat() -> None:
    out = admit(req("POST", "/v1/chat/completions", CHAT), MODEL, max_tokens=7)
    assert json.loads(out.body) == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": 7,
    }
    for body in (
        b'{"messages":[{"role":"user","content":"hi"}],"extra_body":{}}',
        b'{"messages":[]}',
        b'{"messages":[{"role":"user","content":"hi"}],"stream":"yes"}',
        b'{"messages":[{"role":"user","content":"hi"}],"temperature":9}',
    ):
        with pytest.raises(TunnelError) as info:
            admit(req("POST", "/v1/chat/completions", body), MODEL)
        assert (info.value.status, info.value.reason) == (400, "bad_params")


def test_embeddings_and_completions_pass_their_allowlists_and_keep_alive_is_dropped() -> None:
    out = admit(req("POST", "/v1/embeddings", b'{"input":"hello","encoding_format":"float"}'), MODEL)
    assert json.loads(out.body) == {"model": MODEL, "input": "hello", "encoding_format": "float"}
    for path, body in (
        ("/v1/embeddings", b'{"input":"hello","extra_body":{}}'),
        ("/v1/completions", b'{"prompt":"hi","best_of":99}'),
        ("/api/embed", b'{"input":"hi","keep_alive":-1,"template":"x"}'),
    ):
        with pytest.raises(TunnelError) as info:
            admit(req("POST", path, body), MODEL)
        assert (info.value.status, info.value.reason) == (400, "bad_params"), path
    # Ollama's keep_alive would load or unload the operator's models: never forwarded
    chat = b'{"messages":[{"role":"user","content":"hi"}],"keep_alive":-1}'
    assert "keep_alive" not in json.loads(admit(req("POST", "/api/chat", chat), MODEL).body)


# ---- answers ----


def test_error_answer_bytes() -> None:
    data = error_answer(403, "no")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 403 Forbidden",
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
    ]
    assert json.loads(body)["error"]["message"] == "no"
    assert json.loads(error_answer(429, "s").partition(b"\r\n\r\n")[2])["error"]["type"] == "rate_limit_error"


def test_answer_head_and_passed_headers() -> None:
    assert answer_head(200, [("a", "b")]) == b"HTTP/1.1 200 OK\r\na: b\r\nconnection: close\r\n\r\n"
    given = [
        ("Content-Type", "text/event-stream"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "5"),
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("Date", "x"),
    ]
    assert passed_headers(given) == [("content-type", "text/event-stream"), ("date", "x")]
    assert passed_headers([("Content-Length", "5")]) == [("content-length", "5")]
    assert passed_headers([("Connection", "close, X-Hop"), ("X-Hop", "1"), ("X-End", "2")]) == [
        ("x-end", "2")
    ]
