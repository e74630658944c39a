"""The backend's HTTP/1.1 client (mimirlite/mimir/http.py) and the OpenAI backend over it, on 127.0.0.1:
against tests/helpers/openai_server.py (kept connections, what is sent) and against raw asyncio servers
that answer as a test needs (a kept connection closed by the server, no answer, a body cut short, a large
body, an error event mid-stream, a stream breaking the SSE bounds)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mimirlite import __version__
from mimirlite.mimir import BackendError, OpenAIBackend, http, packets
from mimirlite.mimir.http import (
    USER_AGENT,
    HttpBrokenError,
    HttpClient,
    HttpConnectError,
    HttpTimeoutError,
    HttpxClient,
    Response,
    http_client,
    proxied,
)
from mimirlite.mimir.sse import MAX_LINE
from tests.helpers.mimir import HELLO
from tests.helpers.openai_server import OpenAIServer
from tests.helpers.waiting import until

LLAMA = "llama3.2:latest"
HTML = "<html>bad gateway</html>"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(
    handler: Handler, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, list[asyncio.StreamWriter]]]:
    """A TCP server on 127.0.0.1 (with ``tls``: TLS) running ``handler`` for each connection: its base
    URL and the connections it took (their writers)."""
    taken: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", taken
    finally:
        server.close()
        for writer in taken:
            writer.transport.abort()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """A request's head and its Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def answer(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        content_type,
        len(body),
        body,
    )


async def read_body(response: Response) -> bytes:
    parts = []
    while data := await response.receive():
        parts.append(data)
    return b"".join(parts)


# ---------------------------------------------------------------- the client


async def test_connections_are_kept_and_reused_across_requests_and_chats() -> None:
    async with OpenAIServer(models=[LLAMA]) as srv:
        backend = OpenAIBackend(srv.base_url, timeout=5.0)
        try:
            for _ in range(3):
                assert await backend.list_models() == [LLAMA]
                chunks = [c async for c in backend.stream_chat(LLAMA, HELLO, {})]
                assert chunks == srv.sent_chunks[-1]
            assert srv.connections_total == 1  # the end of each answer read, after its [DONE] too
            assert srv.streams_completed == 3
        finally:
            await backend.aclose()
        await srv.wait_until(lambda: srv.open_connections == 0, 5)


async def test_what_is_sent() -> None:
    async with OpenAIServer(models=[LLAMA]) as srv:
        backend = OpenAIBackend(srv.base_url, api_key="sk-test", timeout=5.0)
        try:
            [_ async for _ in backend.stream_chat(LLAMA, HELLO, {"temperature": 0.5})]
        finally:
            await backend.aclose()
        [request] = [r for r in srv.requests if r.path == "/v1/chat/completions"]
        port = srv.base_url.split(":")[2].split("/")[0]
        assert request.headers["host"] == f"127.0.0.1:{port}"
        assert request.headers["authorization"] == "Bearer sk-test"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["accept-encoding"] == "identity"
        assert request.headers["user-agent"] == USER_AGENT == f"mimirlite/{__version__}"
        assert int(request.headers["content-length"]) == len(request.body)
        assert request.json == {"temperature": 0.5, "model": LLAMA, "messages": HELLO, "stream": True}


async def test_a_kept_connection_the_server_closed_is_not_used_again() -> None:
    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"{}"))  # keep-alive by default in HTTP/1.1, yet the server closes
        await writer.drain()

    async with raw_server(once_then_close) as (url, taken):
        client = HttpClient(5.0)
        try:
            for n in (1, 2):
                response = await client.request("GET", url + "/x", [], b"")
                assert response.status == 200 and await read_body(response) == b"{}"
                await response.aclose()
                assert len(taken) == n
                await until(lambda: taken[-1].transport.is_closing(), what="the server closing")
                # its EOF reaches the kept connection: the next request takes a new one
                await until(lambda: not next(iter(client._idle.values()))[0].reusable, what="EOF seen")
        finally:
            await client.aclose()


async def test_an_idle_connection_is_kept_for_a_while_only(monkeypatch: pytest.MonkeyPatch) -> None:
    async def answer_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(b"{}"))
            await writer.drain()

    async with raw_server(answer_all) as (url, taken):
        client = HttpClient(5.0)
        try:
            for _ in range(2):
                assert await read_body(await client.request("GET", url + "/x", [], b"")) == b"{}"
            assert len(taken) == 1
            monkeypatch.setattr(http, "KEEPALIVE_EXPIRY", -1.0)  # every kept connection has expired
            assert await read_body(await client.request("GET", url + "/x", [], b"")) == b"{}"
            assert len(taken) == 2
        finally:
            await client.aclose()


async def test_a_kept_connection_closed_as_the_request_goes_is_retried_once_on_a_new_one() -> None:
    async def close_without_answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"first"))
        await writer.drain()
        await read_request(reader)  # the second request on this connection: closed unanswered
        writer.transport.abort()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(taken) == 1:
            await close_without_answer_once(reader, writer)
        else:
            await read_request(reader)
            writer.write(answer(b"second"))
            await writer.drain()

    async with raw_server(serve) as (url, taken):
        client = HttpClient(5.0)
        try:
            first = await client.request("GET", url + "/x", [], b"")
            assert await read_body(first) == b"first"
            second = await client.request("GET", url + "/x", [], b"")
            assert await read_body(second) == b"second"
            assert len(taken) == 2
        finally:
            await client.aclose()


async def test_no_answer_times_out_and_the_connection_is_closed() -> None:
    closed = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client closes
        closed.set()

    async with raw_server(never_answer) as (url, _):
        client = HttpClient(0.3)
        try:
            with pytest.raises(HttpTimeoutError, match=r"timed out after 0\.3 s waiting for the answer"):
                await client.request("POST", url + "/x", [], b"{}")
            await asyncio.wait_for(closed.wait(), 5)
        finally:
            await client.aclose()


async def test_a_stalled_body_times_out() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()
        await reader.read()

    async with raw_server(stall) as (url, _):
        client = HttpClient(0.3)
        try:
            response = await client.request("GET", url + "/x", [], b"")
            assert await response.receive() == b"abc"
            with pytest.raises(HttpTimeoutError):
                await response.receive()
            await response.aclose()
        finally:
            await client.aclose()


async def test_a_body_cut_short_is_broken() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()

    async with raw_server(cut) as (url, _):
        client = HttpClient(5.0)
        try:
            response = await client.request("GET", url + "/x", [], b"")
            assert await response.receive() == b"abc"
            with pytest.raises(HttpBrokenError, match="bad HTTP answer"):
                await response.receive()
            await response.aclose()
        finally:
            await client.aclose()


async def test_small_chunks_already_here_come_in_one_read_and_the_connection_is_kept() -> None:
    """An SSE answer sends each event as one HTTP chunk: what came already is taken in one receive(), the
    end of the body is still seen (the connection kept for the next request), and a bad chunk after good
    ones is broken at the next receive()."""
    events = [b"data: %d\n\n" % i for i in range(50)]
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        await read_request(reader)
        writer.write(head + body + b"0\r\n\r\n")  # the whole answer at once
        await read_request(reader)
        writer.write(head + body + b"zz\r\n")  # then a broken chunk
        await writer.drain()

    async with raw_server(sse) as (url, taken):
        client = HttpClient(5.0)
        try:
            response = await client.request("GET", url + "/x", [], b"")
            got = [await response.receive()]
            while got[-1]:
                got.append(await response.receive())
            assert b"".join(got) == b"".join(events)
            assert len(got) < len(events)  # the chunks that had come were joined
            second = await client.request("GET", url + "/x", [], b"")
            assert len(taken) == 1  # the connection was kept: the end of the first body was seen
            assert await second.receive() == b"".join(events)
            with pytest.raises(HttpBrokenError, match="bad HTTP answer"):
                await second.receive()
            await second.aclose()
        finally:
            await client.aclose()


async def test_not_http_is_broken() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async with raw_server(garbage) as (url, _):
        client = HttpClient(5.0)
        try:
            with pytest.raises(HttpBrokenError):
                await client.request("GET", url + "/x", [], b"")
        finally:
            await client.aclose()


async def test_a_large_body_comes_whole_through_the_read_pauses() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: the connection's reading pauses and resumes

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(body, b"application/octet-stream"))
        await writer.drain()

    async with raw_server(large) as (url, _):
        client = HttpClient(5.0)
        try:
            response = await client.request("GET", url + "/x", [], b"")
            await asyncio.sleep(0)  # let a few reads buffer before the body is taken
            assert await read_body(response) == body
        finally:
            await client.aclose()


async def test_unreachable_and_bad_urls() -> None:
    async def nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return None

    async with raw_server(nothing) as (url, _):
        pass  # closed: nothing listens on its port now
    client = HttpClient(5.0)
    try:
        with pytest.raises(HttpConnectError, match=r"cannot connect to 127\.0\.0\.1:"):
            await client.request("GET", url + "/x", [], b"")
        for bad in ("ftp://127.0.0.1/x", "http:///x", "http://127.0.0.1:99999/x"):
            with pytest.raises(HttpConnectError, match="bad URL"):
                await client.request("GET", bad, [], b"")
    finally:
        await client.aclose()
    with pytest.raises(HttpConnectError, match="closed"):
        await client.request("GET", url + "/x", [], b"")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate file, key file), PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(san, False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


async def test_https_verifies_the_certificate(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_file, key_file)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"over TLS"))
        await writer.drain()

    async with raw_server(serve, tls) as (url, _):
        trusting = HttpClient(5.0, env={"SSL_CERT_FILE": str(cert_file)})
        try:
            assert await read_body(await trusting.request("GET", url + "/x", [], b"")) == b"over TLS"
        finally:
            await trusting.aclose()
        default = HttpClient(5.0, env={})  # certifi's bundle (or the system's): not that certificate
        try:
            with pytest.raises(HttpConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await default.request("GET", url + "/x", [], b"")
        finally:
            await default.aclose()


async def test_a_proxy_in_the_environment_takes_httpx() -> None:
    assert not proxied({}) and not proxied({"NO_PROXY": "*"})
    for name in ("HTTP_PROXY", "https_proxy", "ALL_PROXY"):
        assert proxied({name: "http://127.0.0.1:3128"})
    assert isinstance(http_client(1.0, {}), HttpClient)
    via_httpx = http_client(1.0, {"HTTPS_PROXY": "http://127.0.0.1:3128"})
    assert isinstance(via_httpx, HttpxClient)
    await via_httpx.aclose()


async def test_the_httpx_client_answers_alike() -> None:
    async with OpenAIServer(models=[LLAMA]) as srv:
        client = HttpxClient(5.0)
        try:
            response = await client.request("GET", srv.base_url + "/models", [], b"")
            assert response.status == 200 and response.reason == "OK"
            assert ("content-type", "application/json") in response.headers
            assert b'"llama3.2:latest"' in await read_body(response)
            await response.aclose()
        finally:
            await client.aclose()
        with pytest.raises(HttpConnectError):
            await HttpxClient(5.0).request("GET", "ftp://127.0.0.1/x", [], b"")


# ---------------------------------------------------------------- the backend over it


@pytest.mark.parametrize(
    ("stream", "kind", "words"),
    [
        (b'data: {"error": {"message": "overloaded"}}\n\n', packets.BACKEND_ERROR, "overloaded"),
        (b'event: error\ndata: {"message": "gone"}\n\n', packets.BACKEND_ERROR, "failed mid-answer"),
        (b"data: [1, 2]\n\n", packets.BACKEND_ERROR, "not a JSON object"),
        (b"data: {not json\n\n", packets.BACKEND_ERROR, "broke off"),
        (b"data: " + b"x" * (MAX_LINE + 1), packets.BACKEND_ERROR, "line longer than"),
    ],
    ids=["error-object", "error-event", "not-an-object", "not-json", "line-too-long"],
)
async def test_a_stream_that_goes_wrong_is_a_backend_error(stream: bytes, kind: str, words: str) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b'data: {"choices": []}\n\n' + stream, b"text/event-stream"))
        await writer.drain()

    async with raw_server(serve) as (url, _):
        backend = OpenAIBackend(url + "/v1", timeout=5.0)
        try:
            chat = backend.stream_chat(LLAMA, HELLO, {})
            assert await chat.__anext__() == {"choices": []}
            with pytest.raises(BackendError) as err:
                await chat.__anext__()
            assert err.value.type == kind and words in str(err.value), err.value
        finally:
            await backend.aclose()


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (404, b'{"error": {"message": "no model x"}}', packets.MODEL_NOT_FOUND, "no model x"),
        (500, b'{"error": "ollama says no"}', packets.BACKEND_ERROR, "ollama says no"),
        (502, b"<html>bad gateway</html>", packets.BACKEND_ERROR, f"Error code: 502 - {HTML}"),
    ],
)
async def test_status_errors_name_the_status_and_the_servers_message(
    status: int, body: bytes, kind: str, message: str
) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 %d Nope\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body))
            await writer.drain()

    async with raw_server(serve) as (url, _):
        backend = OpenAIBackend(url + "/v1", timeout=5.0)
        try:
            for call in (backend.list_models(), backend.stream_chat(LLAMA, HELLO, {}).__anext__()):
                with pytest.raises(BackendError) as err:
                    await call
                assert err.value.type == kind
                assert str(err.value) == f"backend answered HTTP {status}: {message}"
        finally:
            await backend.aclose()


async def test_a_model_list_that_is_not_one() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b'{"data": [{"name": "no id"}]}'))
        await writer.drain()

    async with raw_server(serve) as (url, _):
        backend = OpenAIBackend(url + "/v1", timeout=5.0)
        try:
            with pytest.raises(BackendError, match="sent no list of models") as err:
                await backend.list_models()
            assert err.value.type == packets.BACKEND_ERROR
        finally:
            await backend.aclose()
