"""The gateway's sans-IO HTTP core (mimirlite/gateway/http.py) with literal bytes: whole, pipelined and
chunked requests, keep-alive and close, body limits, bad HTTP, and the CORS policy's headers."""

from __future__ import annotations

import pytest

from mimirlite.errors import LocalError
from mimirlite.gateway import HttpError
from mimirlite.gateway.http import CorsPolicy, Pending, Request, ServerConnection, cors_origin
from tests.helpers.gateway import APP

# ====================================================================== sans-IO HTTP core


def feed(conn: ServerConnection, data: bytes) -> Request | Pending:
    conn.receive_data(data)
    return conn.next_request()


def test_core_a_whole_request_then_keep_alive() -> None:
    conn = ServerConnection()
    assert conn.idle
    raw = b'POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\nX-K: v\r\n\r\n{"a":1'
    assert feed(conn, raw) is Pending.NEED_DATA
    assert not conn.idle
    req = feed(conn, b"}")
    assert isinstance(req, Request)
    assert (req.method, req.target, req.path, req.body) == (
        "POST",
        "/v1/chat/completions?x=1",
        "/v1/chat/completions",
        b'{"a":1}',
    )
    assert req.header("x-k") == "v" and req.header("host") == "a" and req.header("nope") is None
    conn.respond(200, [("content-type", "application/json")], b"{}")
    out = conn.data_to_send()
    assert (
        out.startswith(b"HTTP/1.1 200 OK\r\n")
        and b"content-length: 2\r\n" in out
        and out.endswith(b"\r\n\r\n{}")
    )
    assert conn.data_to_send() == b""
    assert conn.start_next_cycle()
    assert conn.idle
    assert feed(conn, b"") is Pending.CLOSED


def test_core_pipelined_requests_come_one_at_a_time() -> None:
    conn = ServerConnection()
    req = feed(
        conn, b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\nGET /v1/models/m HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert isinstance(req, Request) and req.path == "/v1/models"
    assert conn.next_request() is Pending.NEED_DATA  # the second waits for the first answer
    conn.respond(200, [], b"a")
    assert conn.start_next_cycle()
    req = conn.next_request()
    assert isinstance(req, Request) and req.path == "/v1/models/m"


def test_core_chunked_body_and_chunked_response() -> None:
    conn = ServerConnection()
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    req = feed(conn, raw)
    assert isinstance(req, Request) and req.body == b"abcde"
    conn.start_response(200, [("content-type", "text/event-stream")])
    conn.send_data(b"data: 1\n\n")
    conn.end_response()
    out = conn.data_to_send()
    assert b"Transfer-Encoding: chunked\r\n" in out
    assert out.endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n0\r\n\r\n")
    assert conn.start_next_cycle()


def test_core_sends_100_continue_when_asked() -> None:
    conn = ServerConnection()
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    assert feed(conn, head) is Pending.NEED_DATA
    assert conn.data_to_send() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert isinstance(feed(conn, b"{}"), Request)


def test_core_body_limit_by_content_length_and_by_chunks() -> None:
    conn = ServerConnection(max_body=10)
    with pytest.raises(HttpError) as err:
        feed(conn, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
    assert err.value.status == 413
    assert conn.can_respond
    conn.respond(413, [], b"too large", close=True)
    assert b"connection: close" in conn.data_to_send()
    assert not conn.start_next_cycle()

    conn = ServerConnection(max_body=10)
    with pytest.raises(HttpError) as err:
        feed(
            conn,
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nabcdef\r\n",
        )
    assert err.value.status == 413


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000, 431),
    ],
)
def test_core_refuses_bad_http(raw: bytes, status: int) -> None:
    conn = ServerConnection()
    with pytest.raises(HttpError) as err:
        feed(conn, raw)
    assert err.value.status == status
    assert conn.can_respond  # an error answer can still be sent


def test_core_closes_after_http_1_0_and_connection_close() -> None:
    for raw in (b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"):
        conn = ServerConnection()
        assert isinstance(feed(conn, raw), Request)
        conn.respond(200, [], b"x")
        assert conn.data_to_send()
        assert not conn.start_next_cycle()


def test_core_close_after_response_mid_body() -> None:
    conn = ServerConnection()
    assert isinstance(feed(conn, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Request)
    conn.start_response(200, [])
    assert not conn.can_respond
    conn.close_after_response()
    conn.end_response()
    assert not conn.start_next_cycle()


def test_core_eof_inside_a_request_is_an_error() -> None:
    conn = ServerConnection()
    assert feed(conn, b"GET / HTTP/1.1\r\nHo") is Pending.NEED_DATA
    with pytest.raises(HttpError):
        feed(conn, b"")


# ====================================================================== CORS (--cors-origin)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("*", "*"),
        ("http://localhost:3000/", "http://localhost:3000"),
        (" HTTPS://App.Example.com ", "https://app.example.com"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("chrome-extension://abcdefgh", "chrome-extension://abcdefgh"),
    ],
)
def test_cors_origins_are_kept_normalized(given: str, kept: str) -> None:
    assert cors_origin(given) == kept


@pytest.mark.parametrize(
    "bad",
    ["", "null", "localhost:3000", "http://a/path", "http://a?q", "http://u@a", "http://a:x", "http://*.a"],
)
def test_cors_origin_refuses_what_is_not_an_origin(bad: str) -> None:
    with pytest.raises(LocalError):
        cors_origin(bad)
    with pytest.raises(LocalError):
        CorsPolicy.of([APP, bad])


def test_core_cors_headers_follow_each_request_origin() -> None:
    conn = ServerConnection(cors=CorsPolicy.of([APP, "https://other.example"]))
    for origin, expected in [
        (APP, [b"access-control-allow-origin: " + APP.encode(), b"vary: origin"]),
        ("http://evil.example", []),
        (None, []),
    ]:
        head = b"GET /v1/models HTTP/1.1\r\nHost: a\r\n"
        head += b"" if origin is None else b"Origin: " + origin.encode() + b"\r\n"
        assert isinstance(feed(conn, head + b"\r\n"), Request)
        conn.respond(200, [("content-type", "application/json")], b"{}")
        lines = conn.data_to_send().partition(b"\r\n\r\n")[0].split(b"\r\n")
        assert [h for h in lines if h.startswith((b"access-control-", b"vary"))] == expected, origin
        assert conn.start_next_cycle()
    # an error answered before the body was read (413 on its content-length) carries them too
    conn = ServerConnection(max_body=10, cors=CorsPolicy.of([APP]))
    with pytest.raises(HttpError):
        feed(
            conn, b"POST / HTTP/1.1\r\nHost: a\r\nOrigin: " + APP.encode() + b"\r\nContent-Length: 11\r\n\r\n"
        )
    conn.respond(413, [], b"too large", close=True)
    assert b"access-control-allow-origin: " + APP.encode() + b"\r\n" in conn.data_to_send()
    # '*': every response, whatever the origin, also an error before any request head
    conn = ServerConnection(cors=CorsPolicy.of(["*", APP]))
    with pytest.raises(HttpError):
        feed(conn, b"GARBAGE\r\n\r\n")
    conn.respond(400, [], b"bad")
    out = conn.data_to_send()
    assert b"access-control-allow-origin: *\r\n" in out and b"vary" not in out


def test_core_preflight_headers_and_204_without_body() -> None:
    policy = CorsPolicy.of([APP], max_age=60)

    def preflight(*headers: tuple[str, str]) -> Request:
        return Request("OPTIONS", "/v1/chat/completions", (("host", "a"), *headers), b"")

    asked = preflight(("origin", APP), ("access-control-request-headers", "authorization,x-custom"))
    assert policy.preflight_headers(asked) == [
        ("access-control-allow-methods", "GET, POST, OPTIONS"),
        ("access-control-allow-headers", "authorization,x-custom"),
        ("access-control-max-age", "60"),
    ]
    assert dict(policy.preflight_headers(preflight(("origin", APP))))["access-control-allow-headers"] == (
        "Authorization, Content-Type"
    )
    assert policy.preflight_headers(preflight(("origin", "http://evil.example"))) == []
    assert policy.preflight_headers(preflight()) == []
    conn = ServerConnection(cors=policy)
    assert isinstance(
        feed(conn, b"OPTIONS / HTTP/1.1\r\nHost: a\r\nOrigin: " + APP.encode() + b"\r\n\r\n"), Request
    )
    conn.respond(204, [], b"")
    out = conn.data_to_send()
    assert out.startswith(b"HTTP/1.1 204 No Content\r\n") and out.endswith(b"\r\n\r\n")
    assert b"content-length" not in out.lower() and b"transfer-encoding" not in out.lower()
    assert conn.start_next_cycle()
