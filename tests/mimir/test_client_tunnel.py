"""The client's side of the latest generation's tunnel: the sans-IO decoding (literal bytes split at every
offset) and MimirClient against Python stand-ins of latest nodes on real sockets (its pitfalls included:
a de-chunked body under a chunked header, a close with no final chunk, a peer without identify)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import pytest

from mimirlite import Host, Stream
from mimirlite.errors import MessageTooLargeError
from mimirlite.mimir import DEFAULT_MODEL, EchoBackend, MimirClient, MimirNode, TruncatedAnswerError
from mimirlite.mimir.client import LATEST, HttpRemoteError, NoNodeError
from mimirlite.mimir.models import sanitize_model, sanitized_of, tunnel_protocol
from mimirlite.mimir.tunnel_client import (
    ResponseReader,
    SseDecoder,
    TunnelAnswerError,
    TunnelTruncatedError,
    encode_request,
    error_message,
)
from tests.helpers import until
from tests.helpers.mimir import latest_node

pytestmark = pytest.mark.usefixtures("no_leaks")

# ---------------------------------------------------------------- pure decoding


def test_sanitizing_rule() -> None:
    assert sanitize_model("llama3.2:latest") == "llama3.2-latest"
    assert tunnel_protocol("other/model:7b") == "/mimir/other-model-7b/1.0.0"
    assert tunnel_protocol("a_b-c.d") == "/mimir/a_b-c.d/1.0.0"
    assert sanitized_of("/mimir/llama3.2-latest/1.0.0") == "llama3.2-latest"
    assert sanitized_of("/mimirllm/1.0.0") is None
    assert sanitized_of("/mimir/a:b/1.0.0") is None and sanitized_of("/mimir//1.0.0") is None


def test_request_as_the_original_writes_it() -> None:
    body = b'{"model":"m"}'
    assert encode_request("POST", "/v1/chat/completions", body) == (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: mimir\r\nContent-Type: application/json\r\n"
        b"Content-Length: 13\r\nConnection: close\r\n\r\n" + body
    )
    assert encode_request("GET", "/api/tags") == (
        b"GET /api/tags HTTP/1.1\r\nHost: mimir\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )


def read_split(raw: bytes, cut: int) -> tuple[ResponseReader, bytes]:
    reader = ResponseReader()
    body = reader.feed(raw[:cut]) + reader.feed(raw[cut:])
    reader.eof()
    return reader, body


SSE = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
CHUNKED_LIE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + SSE
)


@pytest.mark.parametrize("cut", range(len(CHUNKED_LIE) + 1))
def test_body_under_a_chunked_header_is_everything_to_the_end(cut: int) -> None:
    reader, body = read_split(CHUNKED_LIE, cut)
    assert reader.head is not None and (reader.head.status, reader.head.reason) == (200, "OK")
    assert reader.head.header("Transfer-Encoding") == "chunked"
    assert body == SSE


LENGTH = b"HTTP/1.1 404 Not Found\nContent-Length: 5\n\nhello"


@pytest.mark.parametrize("cut", range(len(LENGTH) + 1))
def test_content_length_body_bare_lf(cut: int) -> None:
    reader, body = read_split(LENGTH + b"trailing junk", cut)
    assert reader.head is not None and reader.head.status == 404 and body == b"hello"


def test_short_content_length_and_missing_head_are_truncated() -> None:
    reader = ResponseReader()
    assert reader.feed(LENGTH[:-1]) == b"hell"
    with pytest.raises(TunnelTruncatedError, match="1 bytes short"):
        reader.eof()
    reader = ResponseReader()
    assert reader.feed(b"HTTP/1.1 200 OK\r\nx: y\r\n") == b""
    with pytest.raises(TunnelTruncatedError):
        reader.eof()


def test_interim_answer_is_skipped_and_bad_heads_refused() -> None:
    reader = ResponseReader()
    assert reader.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nbody") == b"body"
    assert reader.head is not None and reader.head.status == 200
    with pytest.raises(TunnelAnswerError):
        ResponseReader().feed(b"NOT HTTP AT ALL\r\n\r\n")
    with pytest.raises(MessageTooLargeError):
        ResponseReader(max_head=1024).feed(b"HTTP/1.1 200 OK\r\n" + b"x: y\r\n" * 200)
    reader = ResponseReader(max_head=1024)
    for _ in range(170):
        reader.feed(b"x: y\r\n")
    with pytest.raises(MessageTooLargeError):
        reader.feed(b"x: y\r\n")


EVENTS = b': comment\r\nevent: x\r\ndata: {"a":\r\ndata:1}\r\n\r\nid: 3\n\ndata: [DONE]\n\ndata: last'


@pytest.mark.parametrize("cut", range(len(EVENTS) + 1))
def test_sse_events_split_anywhere(cut: int) -> None:
    sse = SseDecoder()
    events = sse.feed(EVENTS[:cut]) + sse.feed(EVENTS[cut:]) + sse.eof()
    assert events == ['{"a":\n1}', "[DONE]"]  # a last line without its newline is not an event


def test_sse_last_event_without_empty_line_is_given_at_the_end() -> None:
    sse = SseDecoder()
    assert sse.feed(b"data: x\n") == [] and sse.eof() == ["x"]


def test_sse_bounds() -> None:
    with pytest.raises(MessageTooLargeError, match="line"):
        SseDecoder(max_line=16).feed(b"data: " + b"x" * 20)
    with pytest.raises(MessageTooLargeError, match="line"):
        SseDecoder(max_line=16).feed(b"data: " + b"x" * 20 + b"\n")
    sse = SseDecoder(max_line=16, max_event=20)
    with pytest.raises(MessageTooLargeError, match="event"):
        sse.feed(b"data: 0123456789\n" * 3)
    with pytest.raises(TunnelAnswerError):
        SseDecoder().feed(b"data: \xff\n\n")


def test_error_messages() -> None:
    openai_body = b'{"error":{"message":"boom","type":"server_error","param":null,"code":null}}'
    assert error_message(500, openai_body) == ("server_error", "boom")
    assert error_message(404, b'{"error":"model \'x\' not found"}') == ("http_404", "model 'x' not found")
    assert error_message(502, b"Bad Gateway") == ("http_502", "Bad Gateway")
    assert error_message(503, b"") == ("http_503", "HTTP 503")


# ---------------------------------------------------------------- against stand-in latest nodes


def chunk(content: str | None, finish: str | None = None) -> bytes:
    obj = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": DEFAULT_MODEL,
        "choices": [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def send(stream: Stream, *parts: bytes, reset: bool = False) -> None:
    for part in parts:
        await stream.write(part)
    await (stream.reset() if reset else stream.close())


async def collect(client: MimirClient) -> list[str]:
    async def run() -> list[str]:
        got = []
        async for c in client.chat([{"role": "user", "content": "hi"}]):
            got.append(c.choices[0].delta.content or "")
        return got

    return await asyncio.wait_for(run(), 20)


async def test_chat_through_a_chunked_header_over_a_plain_body() -> None:
    async def answer(stream: Stream, request: bytes) -> None:
        # one byte per write: the decoder meets every split
        body = (
            HEAD
            + chunk("", None)
            + chunk("hello")
            + chunk(" you")
            + chunk(None, "stop")
            + b"data: [DONE]\n\n"
        )
        await send(stream, *(body[i : i + 1] for i in range(len(body))))

    async with latest_node(answer) as (node, seen), MimirClient(peers=[node.listen_addrs[0]]) as client:
        assert list(client.nodes.values()) == [[DEFAULT_MODEL]]
        assert client.generation(node.peer_id) == LATEST
        assert await collect(client) == ["", "hello", " you", ""]
        head, _, body = seen[-1].partition(b"\r\n\r\n")
        assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert b"\r\nConnection: close" in head and b"\r\nHost: " in head
        assert json.loads(body) == {
            "messages": [{"role": "user", "content": "hi"}],
            "model": DEFAULT_MODEL,
            "stream": True,
        }


@pytest.mark.parametrize("reset", [False, True])
async def test_close_with_no_final_chunk_is_truncated(reset: bool) -> None:
    async def answer(stream: Stream, request: bytes) -> None:
        await send(stream, HEAD, chunk(""), chunk("hel"), reset=reset)

    async with latest_node(answer) as (node, _), MimirClient(peers=[node.listen_addrs[0]]) as client:
        with pytest.raises(TruncatedAnswerError):
            await collect(client)
        assert client._inflight == {}


async def test_http_error_is_a_remote_error_without_failover_for_400() -> None:
    async def answer(stream: Stream, request: bytes) -> None:
        body = b'{"error":{"message":"bad model field","type":"invalid_request_error"}}'
        await send(stream, b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body), body)

    async with latest_node(answer) as (node, _), MimirClient(peers=[node.listen_addrs[0]]) as client:
        with pytest.raises(HttpRemoteError) as info:
            await collect(client)
        assert (info.value.status, info.value.type, info.value.message) == (
            400,
            "invalid_request_error",
            "bad model field",
        )


async def test_oversized_head_ends_the_exchange() -> None:
    async def answer(stream: Stream, request: bytes) -> None:
        with contextlib.suppress(Exception):
            await send(stream, b"HTTP/1.1 200 OK\r\n", b"x: " + b"y" * (128 * 1024))

    async with latest_node(answer) as (node, _), MimirClient(peers=[node.listen_addrs[0]]) as client:
        with pytest.raises(MessageTooLargeError):
            await collect(client)


async def test_peer_without_identify_is_probed() -> None:
    async def answer(stream: Stream, request: bytes) -> None:
        await send(stream, HEAD, chunk("ok", "stop"), b"data: [DONE]\n\n")

    node_cm = latest_node(answer, identify=False)
    async with node_cm as (node, seen), MimirClient(peers=[node.listen_addrs[0]]) as client:
        assert client.nodes == {node.peer_id: [DEFAULT_MODEL]}
        assert seen == [b""]  # the probe sent nothing
        assert await collect(client) == ["ok"]
        status, headers, body = await client.request(DEFAULT_MODEL, "POST", "/api/chat", {"x": 1})
        assert status == 200 and ("transfer-encoding", "chunked") in headers
        assert b"".join([b async for b in body]).endswith(b"data: [DONE]\n\n")
        with pytest.raises(NoNodeError):
            await client.request("absent", "GET", "/api/tags")


@pytest.mark.parametrize("read_first", [False, True])
async def test_request_body_left_early_resets_the_stream(read_first: bool) -> None:
    resets: list[str] = []

    async def answer(stream: Stream, request: bytes) -> None:
        await stream.write(HEAD + chunk("one"))
        await stream.wait_reset()  # the answer never ends by itself
        resets.append(stream.protocol)

    async with latest_node(answer) as (node, _), MimirClient(peers=[node.listen_addrs[0]]) as client:
        status, _, body = await client.request(DEFAULT_MODEL, "POST", "/v1/chat/completions", b"{}")
        assert status == 200
        async with body:
            if read_first:
                assert (await body.__anext__()).startswith(b"data: ")
        await until(lambda: resets == [tunnel_protocol(DEFAULT_MODEL)])


async def test_a_whole_completion_instead_of_a_stream_is_one_chunk() -> None:
    completion = {
        "id": "c2",
        "object": "chat.completion",
        "created": 1,
        "model": DEFAULT_MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "all at once"}, "finish_reason": "stop"}
        ],
    }

    async def answer(stream: Stream, request: bytes) -> None:
        body = json.dumps(completion).encode()
        await send(stream, b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n\r\n", body)

    async with latest_node(answer) as (node, _), MimirClient(peers=[node.listen_addrs[0]]) as client:
        chunks = [c async for c in client.chat([{"role": "user", "content": "hi"}])]
        assert len(chunks) == 1 and chunks[0].object == "chat.completion.chunk"
        assert chunks[0].choices[0].delta.content == "all at once"
        assert chunks[0].choices[0].finish_reason == "stop"


async def test_request_through_a_mimirlite_nodes_tunnel() -> None:
    """mimirlite client -> mimirlite node on the latest generation's tunnel: Ollama's native API answered
    by the node's echo backend, and a path that manages models refused there (403)."""
    async with contextlib.AsyncExitStack() as stack:
        host = await stack.enter_async_context(Host(listen=["/ip4/127.0.0.1/tcp/0"]))
        await stack.enter_async_context(MimirNode(host, EchoBackend(DEFAULT_MODEL)))
        client = await stack.enter_async_context(MimirClient(peers=[host.listen_addrs[0]]))
        chat = {"messages": [{"role": "user", "content": "hi there"}], "stream": False}
        answer = await client.request(DEFAULT_MODEL, "POST", "/api/chat", chat)
        assert answer.status == 200
        reply = json.loads(await answer.body.read())
        assert reply["message"]["content"] == "hi there" and reply["done"] is True
        refused = await client.request(DEFAULT_MODEL, "DELETE", "/api/delete", {"model": DEFAULT_MODEL})
        assert refused.status == 403
        assert "not allowed" in json.loads(await refused.body.read())["error"]["message"]


async def test_prefer_tunnel_chats_over_the_tunnel_with_a_node_serving_both(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "mimirlite.mimir.node")
    async with contextlib.AsyncExitStack() as stack:
        host = await stack.enter_async_context(Host(listen=["/ip4/127.0.0.1/tcp/0"]))
        await stack.enter_async_context(MimirNode(host, EchoBackend(DEFAULT_MODEL)))
        for prefer in (False, True):
            caplog.clear()
            client = await stack.enter_async_context(
                MimirClient(peers=[host.listen_addrs[0]], prefer_tunnel=prefer)
            )
            hello = [{"role": "user", "content": "hello big world"}]
            words = [c.choices[0].delta.content async for c in client.chat(hello, model=DEFAULT_MODEL)]
            assert "".join(w or "" for w in words) == "hello big world"
            tunneled = [r for r in caplog.records if "tunnel POST /v1/chat/completions" in r.getMessage()]
            assert len(tunneled) == (1 if prefer else 0)
