"""The OpenAI-compatible gateway: its sans-IO HTTP core and OpenAI shapes with literal values, then the
real thing on 127.0.0.1: mimirlite nodes (echo backend, or the openai backend on the test OpenAI server)
reached over libp2p by a MimirClient behind a Gateway, asked by the real ``openai`` SDK (sync in a
thread, and async), ``curl``, raw HTTP/1.1 bytes, and the ``gateway`` command run as a subprocess.

mDNS is off everywhere; every server and process a test starts is stopped by it; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import h11
import openai
import pytest

from mimirlite import Host
from mimirlite.errors import LocalError
from mimirlite.gateway import Gateway, HttpError, api
from mimirlite.gateway.http import CorsPolicy, Pending, Request, ServerConnection, cors_origin
from mimirlite.mimir import EchoBackend, MimirClient, MimirNode, OpenAIBackend
from tests.helpers.openai_server import OpenAIServer

REPO = Path(__file__).resolve().parents[2]
LLAMA = "llama3.2:latest"
WAIT = 10.0
"""Bound of every wait for an answer or a condition."""


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


# ====================================================================== OpenAI shapes


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"\xff\xfe", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": 3, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": ["hi"]}', "messages[0]"),
        (b'{"model": "m", "messages": [{"content": "x"}]}', "messages[0].role"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
    ],
)
def test_bad_chat_bodies_are_400(body: bytes, param: str | None) -> None:
    with pytest.raises(api.ApiError) as err:
        api.parse_chat_body(body)
    assert err.value.status == 400
    assert err.value.to_json()["error"]["param"] == param
    assert err.value.to_json()["error"]["type"] == "invalid_request_error"


def test_chat_body_parameters() -> None:
    msgs = [{"role": "user", "content": "x"}]
    call = api.parse_chat_body(
        json.dumps({"model": "m", "messages": msgs, "stream": True, "temperature": 0.5}).encode()
    )
    assert (call.model, call.messages, call.stream, call.params) == ("m", msgs, True, {"temperature": 0.5})
    call = api.parse_chat_body(json.dumps({"model": "m", "messages": msgs, "stream": None}).encode())
    assert not call.stream
    assert call.params == {"stream_options": {"include_usage": True}}  # so the answer can carry usage


def test_error_shape_and_remote_mapping() -> None:
    err = api.ApiError(404, "no such model", param="model", code="model_not_found")
    assert json.loads(err.body()) == {
        "error": {
            "message": "no such model",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert api.remote_error("backend_error", "boom").status == 502
    assert api.remote_error("backend_error", "boom").message == "boom"
    assert api.remote_error("backend_unavailable", "x").status == 502
    assert api.remote_error("bad_request", "x").status == 400
    assert api.remote_error("rate_limited", "x").status == 429
    assert api.remote_error("overloaded", "x").status == 503


def test_models_page_lists_each_model_once() -> None:
    page = api.models_page(["a", "b", "a", "c", "b"], 17)
    assert page == {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 17, "owned_by": "mimir"} for m in ("a", "b", "c")],
    }


def test_completion_assembled_from_chunks() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
        return {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 5,
            "model": "m",
            "system_fingerprint": "fp",
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    b = api.CompletionBuilder()
    b.add(chunk({"role": "assistant", "content": ""}))
    b.add(chunk({"content": "Hel"}))
    b.add(chunk({"content": "lo"}))
    b.add(
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a"'},
                    }
                ]
            }
        )
    )
    b.add(chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}))
    b.add(chunk({"role": "assistant", "content": "other"}, "length", index=1))
    b.add(chunk({}, "tool_calls"))
    b.add(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 5,
            "model": "m",
            "choices": [],
            "usage": {"total_tokens": 3},
        }
    )
    assert b.result() == {
        "id": "c1",
        "object": "chat.completion",
        "created": 5,
        "model": "m",
        "system_fingerprint": "fp",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello",
                    "tool_calls": [
                        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": "other"},
                "logprobs": None,
                "finish_reason": "length",
            },
        ],
        "usage": {"total_tokens": 3},
    }
    assert "usage" not in _one_chunk_completion()


def _one_chunk_completion() -> dict[str, Any]:
    b = api.CompletionBuilder()
    b.add(
        {
            "id": "x",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}],
        }
    )
    return b.result()


def test_sse_event() -> None:
    assert api.sse_event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert api.SSE_DONE == b"data: [DONE]\n\n"


# ====================================================================== helpers on real parts


@contextlib.asynccontextmanager
async def mimir_node(backend: Any) -> AsyncIterator[tuple[Host, str]]:
    """A mimirlite node on 127.0.0.1 and its address (with /p2p/)."""
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, backend):
        yield host, host.listen_addrs[0]


@contextlib.asynccontextmanager
async def gateway_for(*addrs: str, **kwargs: Any) -> AsyncIterator[Gateway]:
    """A MimirClient (mDNS off) knowing ``addrs``, behind a Gateway on 127.0.0.1 on a free port. On the way
    out, the gateway must have ended every connection and request."""
    async with MimirClient(addrs, mdns=False) as client:
        assert len(client.nodes) == len(addrs)
        gateway = Gateway(client, port=0, **kwargs)
        async with gateway:
            yield gateway
        assert gateway.open_connections == 0
        assert gateway.active_requests == 0


@contextlib.asynccontextmanager
async def echo_gateway(**kwargs: Any) -> AsyncIterator[Gateway]:
    async with mimir_node(EchoBackend()) as (_, addr), gateway_for(addr, **kwargs) as gw:
        yield gw


@contextlib.asynccontextmanager
async def llama_gateway(srv: OpenAIServer, **kwargs: Any) -> AsyncIterator[Gateway]:
    async with (
        mimir_node(OpenAIBackend(srv.base_url, timeout=5.0)) as (_, addr),
        gateway_for(addr, **kwargs) as gw,
    ):
        yield gw


@contextlib.asynccontextmanager
async def sdk(gw: Gateway, api_key: str = "unused") -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=gw.base_url, api_key=api_key, max_retries=0, timeout=WAIT
    ) as client:
        yield client


async def bounded(coro: Any, timeout: float = WAIT) -> Any:
    return await asyncio.wait_for(coro, timeout)


async def eventually(check: Callable[[], Any], timeout: float = WAIT) -> None:
    """Wait until ``await check()`` is truthy (polled every 50 ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def curl(*args: str, timeout: float = WAIT) -> bytes:
    """``curl -sN ARGS``'s stdout (the process is reaped, killed if it overruns)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sN", "--max-time", str(int(timeout)), *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout + 5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out


def sse_data(raw: bytes) -> list[str]:
    """The ``data`` of each Server-Sent Event, after checking the framing is OpenAI's exactly."""
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events), raw
    return [e[len(b"data: ") :].decode() for e in events]


class RawHttp:
    """A client connection for exact bytes; responses are parsed by h11 (client side)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, gw: Gateway) -> RawHttp:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await bounded(self.writer.wait_closed())

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> tuple[int, dict[str, str], bytes]:
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        given = {k.lower() for k, _ in headers}
        hdrs = [*headers, ("content-length", str(len(body)))]
        if "host" not in given:
            hdrs.append(("host", "127.0.0.1"))
        if method == "POST" and "content-type" not in given:  # JSON, as the gateway wants
            hdrs.append(("content-type", "application/json"))
        self.writer.write(self.h11.send(h11.Request(method=method, target=target, headers=hdrs)) or b"")
        self.writer.write(self.h11.send(h11.Data(data=body)) or b"")
        self.writer.write(self.h11.send(h11.EndOfMessage()) or b"")
        return await bounded(self.response())

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        status, headers, body = 0, {}, bytearray()
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, headers, bytes(body)
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def read_to_eof(self) -> bytes:
        return await bounded(self.reader.read())


# ====================================================================== the openai SDK

live = pytest.mark.usefixtures("no_leaks")


@live
async def test_async_sdk_streams_exactly_what_the_backend_sent(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        stream = await client.chat.completions.create(
            model=LLAMA, messages=user("hello big wide world"), stream=True, temperature=0.3
        )
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hello big wide world"
    assert [c.model_dump(exclude_unset=True) for c in chunks] == openai_server.sent_chunks[0]
    assert chunks[-1].choices[0].finish_reason == "stop"
    (sent,) = openai_server.chat_requests
    assert sent["model"] == LLAMA and sent["messages"] == user("hello big wide world")
    assert sent["temperature"] == 0.3 and sent["stream"] is True


@live
async def test_async_sdk_without_stream_gets_one_completion_with_usage(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        answer = await client.chat.completions.create(
            model=LLAMA, messages=user("one two three"), max_tokens=2
        )
    assert answer.object == "chat.completion"
    assert answer.model == LLAMA and answer.id.startswith("chatcmpl-")
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "one two"
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (
        3,
        2,
        5,
    )
    assert openai_server.chat_requests[0]["max_tokens"] == 2


@live
async def test_async_sdk_stream_with_usage_chunk(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        stream = await client.chat.completions.create(
            model=LLAMA, messages=user("a b"), stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 4


@live
async def test_sync_sdk_in_a_thread_streaming_and_not() -> None:
    async with echo_gateway() as gw:

        def use_sdk() -> tuple[str, list[str | None], list[str]]:
            with openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=WAIT) as client:
                whole = client.chat.completions.create(model="echo", messages=user("sync hello there"))
                stream = client.chat.completions.create(
                    model="echo", messages=user("and streamed"), stream=True
                )
                deltas = [c.choices[0].delta.content for c in stream]
                models = [m.id for m in client.models.list()]
            return whole.choices[0].message.content or "", deltas, models

        whole, deltas, models = await bounded(asyncio.to_thread(use_sdk))
    assert whole == "sync hello there"
    assert deltas == ["", "and", " streamed", None]
    assert models == ["echo"]


# ====================================================================== curl and raw HTTP


@live
async def test_curl_sees_openai_sse_framing(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw:
        body = json.dumps({"model": LLAMA, "messages": user("over curl"), "stream": True})
        raw = await curl(
            f"{gw.base_url}/chat/completions", "-H", "Content-Type: application/json", "-d", body
        )
        data = sse_data(raw)
        assert data[-1] == "[DONE]"
        assert [json.loads(d) for d in data[:-1]] == openai_server.sent_chunks[0]
        # with the headers: a streamed body
        head = await curl(
            "-i", f"{gw.base_url}/chat/completions", "-H", "Content-Type: application/json", "-d", body
        )
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-type: text/event-stream; charset=utf-8\r\n" in head.lower()
    assert b"transfer-encoding: chunked\r\n" in head.lower()


@live
async def test_curl_without_stream_and_models() -> None:
    async with echo_gateway() as gw:
        body = json.dumps({"model": "echo", "messages": user("plain answer")})
        answer = json.loads(
            await curl(f"{gw.base_url}/chat/completions", "-H", "Content-Type: application/json", "-d", body)
        )
        models = json.loads(await curl(f"{gw.base_url}/models"))
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "plain answer"}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["echo"]


@live
async def test_keep_alive_and_pipelining_on_one_connection() -> None:
    async with echo_gateway() as gw:
        conn = await RawHttp.open(gw)
        try:
            for text in ("first one", "second one", "third one"):
                body = json.dumps({"model": "echo", "messages": user(text)}).encode()
                status, _, out = await conn.request("POST", "/v1/chat/completions", body)
                assert status == 200 and json.loads(out)["choices"][0]["message"]["content"] == text
                assert gw.open_connections == 1
            # two requests written at once: answered in order on the same connection
            conn.h11.start_next_cycle()
            second = h11.Connection(h11.CLIENT)
            get = h11.Request(method="GET", target="/v1/models", headers=[("host", "127.0.0.1")])
            conn.writer.write(conn.h11.send(get) + conn.h11.send(h11.EndOfMessage()))
            conn.writer.write(second.send(get) + second.send(h11.EndOfMessage()))
            assert (await bounded(conn.response()))[0] == 200
            conn.h11.start_next_cycle()
            conn.h11.send(get)
            conn.h11.send(h11.EndOfMessage())
            status, _, out = await bounded(conn.response())
            assert status == 200 and json.loads(out)["data"][0]["id"] == "echo"
            assert gw.open_connections == 1
        finally:
            await conn.close()


# ====================================================================== /v1/models follows the network


@live
async def test_models_follow_nodes_joining_and_leaving() -> None:
    async with (
        mimir_node(EchoBackend()) as (_, echo_addr),
        gateway_for(echo_addr) as gw,
        sdk(gw) as client,
    ):

        async def ids() -> list[str]:
            return [m.id async for m in client.models.list()]

        assert await ids() == ["echo"]
        async with (
            mimir_node(EchoBackend("tiny:1b")) as (_, tiny_addr),
            mimir_node(EchoBackend()) as (_, echo2),
        ):
            await gw.client.add_peer(tiny_addr)
            await gw.client.add_peer(echo2)  # a second node serving echo: still listed once
            assert sorted(await ids()) == ["echo", "tiny:1b"]
            assert (await client.models.retrieve("tiny:1b")).id == "tiny:1b"
            answer = await client.chat.completions.create(model="tiny:1b", messages=user("routed here"))
            assert answer.model == "tiny:1b" and answer.choices[0].message.content == "routed here"
        # both nodes stopped: the client drops them when their connections close

        async def tiny_gone() -> bool:
            return await ids() == ["echo"]

        await eventually(tiny_gone)
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("tiny:1b")
        with pytest.raises(openai.NotFoundError) as err:
            await client.chat.completions.create(model="tiny:1b", messages=user("x"))
        assert err.value.code == "model_not_found"


# ====================================================================== errors


@live
async def test_unknown_model_is_404() -> None:
    async with echo_gateway() as gw, sdk(gw) as client:
        with pytest.raises(openai.NotFoundError) as err:
            await client.chat.completions.create(model="gpt-9", messages=user("x"))
        assert err.value.status_code == 404
        assert err.value.body == {
            "message": "The model `gpt-9` does not exist or no reachable node serves it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-9", messages=user("x"), stream=True)


@live
async def test_malformed_requests_are_400_and_the_connection_stays() -> None:
    async with echo_gateway() as gw:
        conn = await RawHttp.open(gw)
        try:
            for body, param in [
                (b"{oops", None),
                (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
                (b'{"model": "echo"}', "messages"),
            ]:
                status, headers, out = await conn.request("POST", "/v1/chat/completions", body)
                assert status == 400 and headers["content-type"] == "application/json"
                error = json.loads(out)["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert error["type"] == "invalid_request_error" and error["param"] == param
            status, _, out = await conn.request("GET", "/v1/nothing")
            assert status == 404 and json.loads(out)["error"]["code"] == "unknown_url"
            status, _, out = await conn.request("GET", "/v1/chat/completions")
            assert status == 405
            status, _, _ = await conn.request("POST", "/v1/models")
            assert status == 405
            assert gw.open_connections == 1  # every error answered on the same connection
        finally:
            await conn.close()


@live
async def test_no_node_reachable_is_503() -> None:
    async with mimir_node(EchoBackend()) as (host, addr), gateway_for(addr) as gw, sdk(gw) as client:
        await host.stop()  # the only node goes away

        async def forgotten() -> bool:
            return not gw.client.nodes

        await eventually(forgotten)
        with pytest.raises(openai.InternalServerError) as err:
            await client.chat.completions.create(model="echo", messages=user("x"))
        assert err.value.status_code == 503
        assert err.value.code == "no_node"
        assert [m async for m in client.models.list()] == []


@live
async def test_a_node_error_is_502_with_its_message(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        for stream in (False, True):
            openai_server.fail_status, openai_server.fail_count = 500, 1
            openai_server.fail_message = "the GPU caught fire"
            with pytest.raises(openai.InternalServerError) as err:
                await client.chat.completions.create(model=LLAMA, messages=user("x"), stream=stream)
            assert err.value.status_code == 502
            assert "the GPU caught fire" in err.value.message
            assert err.value.code == "backend_error"
        # and the next request is served
        answer = await client.chat.completions.create(model=LLAMA, messages=user("fine again"))
        assert answer.choices[0].message.content == "fine again"


@live
async def test_a_stream_cut_mid_answer_ends_with_an_error_event(openai_server: OpenAIServer) -> None:
    openai_server.die_after_chunks = 3  # role chunk and two tokens, then the backend connection drops
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        body = json.dumps({"model": LLAMA, "messages": user("one two three four"), "stream": True})
        data = sse_data(
            await curl(f"{gw.base_url}/chat/completions", "-H", "Content-Type: application/json", "-d", body)
        )
        assert [json.loads(d) for d in data[:3]] == openai_server.sent_chunks[0]
        assert len(data) == 4 and "[DONE]" not in data
        error = json.loads(data[3])["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "backend_error"

        stream = await client.chat.completions.create(
            model=LLAMA, messages=user("one two three four"), stream=True
        )
        got: list[str] = []
        with pytest.raises(openai.APIError) as err:
            async for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
        assert "".join(got) == "one two"
        assert "broke off" in err.value.message
        # without streaming: 502
        with pytest.raises(openai.InternalServerError) as err2:
            await client.chat.completions.create(model=LLAMA, messages=user("one two three four"))
        assert err2.value.status_code == 502


@live
async def test_a_node_killed_mid_answer_ends_the_stream_with_an_error_event(
    openai_server: OpenAIServer,
) -> None:
    openai_server.delay = 0.1
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        node = MimirNode(host, OpenAIBackend(openai_server.base_url, timeout=5.0))
        await node.start()
        try:
            async with gateway_for(host.listen_addrs[0]) as gw:
                conn = await RawHttp.open(gw)
                try:
                    body = json.dumps({"model": LLAMA, "messages": user("a b c d e f g h"), "stream": True})
                    conn.writer.write(
                        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(body), body.encode())
                    )
                    got = b""
                    while got.count(b"data: ") < 2:
                        got += await bounded(conn.reader.read(65536))
                    await host.stop()  # the node's connection drops mid-answer
                    got += await conn.read_to_eof()  # the gateway ends the stream, then closes
                finally:
                    await conn.close()
        finally:
            await node.stop()
    assert b"data: [DONE]" not in got
    assert got.endswith(b"\r\n0\r\n\r\n")  # the chunked body is ended properly
    events = [line for line in got.split(b"\r\n") if line.startswith(b"data: ")]
    last = json.loads(events[-1][len(b"data: ") :])
    assert last["error"]["code"] == "truncated_answer"


@live
async def test_a_body_over_the_limit_is_413() -> None:
    async with echo_gateway(max_body=1000) as gw:
        # refused on its Content-Length, before the body is read
        conn = await RawHttp.open(gw)
        try:
            conn.writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1001\r\n\r\n"
            )
            out = await conn.read_to_eof()
        finally:
            await conn.close()
        assert out.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
        head, _, body = out.partition(b"\r\n\r\n")
        assert b"connection: close" in head
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
        # a chunked body that grows over the limit, still being sent when refused
        conn = await RawHttp.open(gw)
        try:
            conn.writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            conn.writer.write(b"400\r\n" + b"x" * 0x400 + b"\r\n" + b"400\r\n" + b"x" * 0x400)
            out = await conn.read_to_eof()
        finally:
            await conn.close()
        assert out.startswith(b"HTTP/1.1 413 ")
        # the SDK's request, too large
        async with sdk(gw) as client:
            with pytest.raises(openai.APIStatusError) as err:
                await client.chat.completions.create(model="echo", messages=user("x" * 2000))
            assert err.value.status_code == 413
            answer = await client.chat.completions.create(model="echo", messages=user("small"))
            assert answer.choices[0].message.content == "small"


@live
async def test_api_key() -> None:
    async with echo_gateway(api_key="s3cret") as gw:
        for key in ("wrong", "s3cre"):
            async with sdk(gw, api_key=key) as client:
                with pytest.raises(openai.AuthenticationError) as err:
                    await client.chat.completions.create(model="echo", messages=user("x"))
                assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
                with pytest.raises(openai.AuthenticationError):
                    await client.models.list()
        for auth in ([], [("authorization", "Basic s3cret")]):  # none at all; not Bearer
            conn = await RawHttp.open(gw)  # a 401 closes its connection
            try:
                assert (await conn.request("GET", "/v1/models", headers=auth))[0] == 401
            finally:
                await conn.close()
        async with sdk(gw, api_key="s3cret") as client:
            answer = await client.chat.completions.create(model="echo", messages=user("let me in"))
            assert answer.choices[0].message.content == "let me in"


@live
async def test_slow_and_idle_clients_time_out() -> None:
    async with echo_gateway(request_timeout=0.3, idle_timeout=0.3) as gw:
        # a request that never completes: 408, then closed
        conn = await RawHttp.open(gw)
        try:
            conn.writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            out = await conn.read_to_eof()
            assert out.startswith(b"HTTP/1.1 408 ") and b'"error"' in out
        finally:
            await conn.close()
        # a head sent byte by byte, too slowly
        conn = await RawHttp.open(gw)
        try:
            for byte in b"GET /v1/mod":
                conn.writer.write(bytes([byte]))
                await asyncio.sleep(0.05)
            out = await conn.read_to_eof()
            assert out.startswith(b"HTTP/1.1 408 ")
        finally:
            await conn.close()
        # a connection that sends nothing, or nothing more after an answer: closed quietly
        conn = await RawHttp.open(gw)
        try:
            assert await conn.read_to_eof() == b""
        finally:
            await conn.close()
        conn = await RawHttp.open(gw)
        try:
            assert (await conn.request("GET", "/v1/models"))[0] == 200
            assert await conn.read_to_eof() == b""
        finally:
            await conn.close()

        async def all_closed() -> bool:
            return gw.open_connections == 0

        await eventually(all_closed)


@live
async def test_connections_over_the_limit_get_503() -> None:
    async with echo_gateway(max_connections=1) as gw:
        first = await RawHttp.open(gw)
        try:
            assert (await first.request("GET", "/v1/models"))[0] == 200
            # the first is busy (half its next request sent), so not closed to make room (as an idle one is)
            first.h11.start_next_cycle()
            head = first.h11.send(
                h11.Request(method="GET", target="/v1/models", headers=[("host", "127.0.0.1")])
            )
            assert head and first.h11.send(h11.EndOfMessage()) == b""
            read = gw.metrics.bytes_in
            first.writer.write(head[:10])
            await eventually(lambda: asyncio.sleep(0, gw.metrics.bytes_in > read))
            second = await RawHttp.open(gw)
            try:
                out = await second.read_to_eof()
            finally:
                await second.close()
            assert out.startswith(b"HTTP/1.1 503 ") and b"Too many connections" in out
            first.writer.write(head[10:])
            assert (await bounded(first.response()))[0] == 200  # the first is still served
        finally:
            await first.close()


# ====================================================================== a client that leaves


@live
@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_disconnects_cancels_its_upstream_request(
    openai_server: OpenAIServer, stream: bool
) -> None:
    openai_server.delay = 0.2
    async with llama_gateway(openai_server) as gw:
        conn = await RawHttp.open(gw)
        body = json.dumps({"model": LLAMA, "messages": user("a b c d e f g h i j k l"), "stream": stream})
        conn.writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode())
        )
        if stream:
            got = b""
            while b"data: " not in got:
                got += await bounded(conn.reader.read(65536))
        else:
            await openai_server.wait_until(lambda: sum(map(len, openai_server.sent_chunks)) >= 2)
        await conn.close()
        # the gateway resets the mimir stream; the node cancels its backend request
        await bounded(openai_server.stream_cancelled.wait())
        assert openai_server.streams_cancelled == 1 and openai_server.streams_completed == 0

        async def idle() -> bool:
            return gw.active_requests == 0 and gw.open_connections == 0

        await eventually(idle)


@live
async def test_stopping_the_gateway_cancels_answers_in_progress(openai_server: OpenAIServer) -> None:
    openai_server.first_chunk_delay = 30
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        pending = asyncio.ensure_future(client.chat.completions.create(model=LLAMA, messages=user("x")))
        await openai_server.wait_until(lambda: openai_server.streams_started == 1)
        await bounded(gw.stop())
        with pytest.raises(openai.APIConnectionError):
            await bounded(pending)
        await bounded(openai_server.stream_cancelled.wait())


# ====================================================================== many at once


class GatedEcho(EchoBackend):
    """The echo backend, holding every answer until ``gate`` opens; counts the requests held."""

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__()
        self.gate = gate
        self.waiting = 0

    async def stream_chat(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        self.waiting += 1
        await self.gate.wait()
        async for chunk in super().stream_chat(model, messages, params):
            yield chunk


@live
async def test_250_requests_at_once_all_answered() -> None:
    total = 250
    gate = asyncio.Event()
    backends = [GatedEcho(gate), GatedEcho(gate)]
    async with (
        mimir_node(backends[0]) as (_, a),
        mimir_node(backends[1]) as (_, b),
        gateway_for(a, b) as gw,
        sdk(gw) as client,
    ):

        async def ask(i: int) -> tuple[int, str]:
            text = f"request number {i}"
            if i % 2:
                stream = await client.chat.completions.create(model="echo", messages=user(text), stream=True)
                return i, "".join([c.choices[0].delta.content or "" async for c in stream])
            answer = await client.chat.completions.create(model="echo", messages=user(text))
            return i, answer.choices[0].message.content or ""

        tasks = [asyncio.ensure_future(ask(i)) for i in range(total)]
        try:

            async def all_waiting() -> bool:
                return sum(be.waiting for be in backends) == total

            await eventually(all_waiting, timeout=60)  # every request is in flight at the same time
            assert gw.active_requests == total
            assert min(be.waiting for be in backends) > 0  # spread over both nodes
            gate.set()
            results = await bounded(asyncio.gather(*tasks), 60)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks, timeout=WAIT)
    assert sorted(results) == [(i, f"request number {i}") for i in range(total)]


# ====================================================================== the command


def cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "MIMIRLITE_API_KEY")
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return {**env, **extra}


async def start_cli(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    """``python -m mimirlite gateway --no-mdns --port 0 *args`` with piped output."""
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "mimirlite", "gateway", "--no-mdns", "--port", "0", *args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=env,
    )


@contextlib.asynccontextmanager
async def cli_gateway(*args: str, env: dict[str, str]) -> AsyncIterator[str]:
    """The gateway command running with ``args``; yields its base URL, stops it at the end."""
    proc = await start_cli(*args, env=env)
    try:
        assert proc.stdout is not None
        line = (await bounded(proc.stdout.readline(), 30)).decode()
        found = re.fullmatch(r"OpenAI-compatible API at (http://127\.0\.0\.1:\d+/v1)\n", line)
        assert found, line
        yield found.group(1)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await bounded(proc.wait(), 5)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
        assert proc.stderr is not None
        await proc.stderr.read()


@live
async def test_gateway_command_answers_the_sdk() -> None:
    env = cli_env(MIMIRLITE_API_KEY="cli-key")
    async with mimir_node(EchoBackend()) as (_, addr), cli_gateway("--peer", addr, env=env) as base_url:

        def use_sdk() -> tuple[str, int]:
            with openai.OpenAI(base_url=base_url, api_key="cli-key", max_retries=0, timeout=WAIT) as client:
                answer = client.chat.completions.create(model="echo", messages=user("from the command"))
            with openai.OpenAI(base_url=base_url, api_key="other", max_retries=0, timeout=WAIT) as client:
                try:
                    client.models.list()
                except openai.AuthenticationError as exc:
                    refused = exc.status_code
            return answer.choices[0].message.content or "", refused

        assert await bounded(asyncio.to_thread(use_sdk)) == ("from the command", 401)


@live
async def test_gateway_command_reports_a_port_in_use() -> None:
    async with echo_gateway() as gw:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mimirlite",
            "gateway",
            "--no-mdns",
            "--port",
            str(gw.port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
            env=env,
        )
        try:
            out, err = await bounded(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 1
    assert err.decode().startswith("mimirlite: ") and out == b""


# ====================================================================== CORS (--cors-origin)

APP = "http://app.example:3000"
"""The origin of a browser page allowed to call the gateway in these tests."""


def cors_of(headers: dict[str, str]) -> dict[str, str]:
    """The CORS headers (and Vary) of a response, as h11 parsed them."""
    return {k: v for k, v in headers.items() if k.startswith("access-control-") or k == "vary"}


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


@live
async def test_cors_preflight_for_allowed_and_other_origins() -> None:
    async with echo_gateway(api_key="s3cret", cors_origins=[APP]) as gw:
        with pytest.raises(LocalError, match="not a CORS origin"):
            Gateway(gw.client, cors_origins=[APP, "app.example"])
        conn = await RawHttp.open(gw)
        try:
            # what a browser sends before a POST with a key and JSON: no key on the preflight itself
            asked = [("origin", APP), ("access-control-request-method", "POST")]
            asked.append(("access-control-request-headers", "authorization, content-type"))
            status, headers, body = await conn.request("OPTIONS", "/v1/chat/completions", headers=asked)
            assert (status, body) == (204, b"")
            assert cors_of(headers) == {
                "access-control-allow-origin": APP,
                "vary": "origin",
                "access-control-allow-methods": "GET, POST, OPTIONS",
                "access-control-allow-headers": "authorization, content-type",
                "access-control-max-age": "600",
            }
            status, headers, _ = await conn.request("OPTIONS", "/v1/models", headers=[("origin", APP)])
            assert status == 204
            assert headers["access-control-allow-headers"] == "Authorization, Content-Type"
            # another origin: answered, but without a CORS header the browser stops there
            other = [("origin", "http://evil.example"), ("access-control-request-method", "POST")]
            status, headers, _ = await conn.request("OPTIONS", "/v1/chat/completions", headers=other)
            assert status == 204 and cors_of(headers) == {}
            # the request after a preflight still needs the key, and its answer names the origin
            status, headers, _ = await conn.request(
                "GET", "/v1/models", headers=[("origin", APP), ("authorization", "Bearer s3cret")]
            )
            assert status == 200 and cors_of(headers) == {
                "access-control-allow-origin": APP,
                "vary": "origin",
            }
            status, headers, _ = await conn.request(
                "GET",
                "/v1/models",
                headers=[("origin", "http://evil.example"), ("authorization", "Bearer s3cret")],
            )
            assert status == 200 and cors_of(headers) == {}
            assert gw.open_connections == 1  # all on one kept-alive connection
        finally:
            await conn.close()


@live
async def test_cors_headers_on_a_streamed_answer_and_on_errors() -> None:
    async with echo_gateway(api_key="s3cret", cors_origins=["http://a.example", APP]) as gw:
        conn = await RawHttp.open(gw)
        try:
            key = ("authorization", "Bearer s3cret")
            body = json.dumps({"model": "echo", "messages": user("streamed to a page"), "stream": True})
            status, headers, out = await conn.request(
                "POST", "/v1/chat/completions", body.encode(), [("origin", APP), key]
            )
            assert status == 200 and headers["content-type"].startswith("text/event-stream")
            assert cors_of(headers) == {"access-control-allow-origin": APP, "vary": "origin"}
            data = sse_data(out)
            assert data[-1] == "[DONE]"
            text = "".join(json.loads(d)["choices"][0]["delta"].get("content") or "" for d in data[:-1])
            assert text == "streamed to a page"
            # 404 and 405 too
            status, headers, _ = await conn.request("GET", "/v1/nothing", headers=[("origin", APP), key])
            assert status == 404 and headers["access-control-allow-origin"] == APP
            status, headers, _ = await conn.request("DELETE", "/v1/models", headers=[("origin", APP), key])
            assert status == 405 and headers["access-control-allow-origin"] == APP
            # 401 without the key (which closes the connection): the page can read why
            status, headers, out = await conn.request("GET", "/v1/models", headers=[("origin", APP)])
            assert status == 401 and json.loads(out)["error"]["code"] == "invalid_api_key"
            assert cors_of(headers) == {"access-control-allow-origin": APP, "vary": "origin"}
        finally:
            await conn.close()
    # '*': any page, no Vary
    async with echo_gateway(cors_origins=["*"]) as gw:
        conn = await RawHttp.open(gw)
        try:
            status, headers, _ = await conn.request(
                "GET", "/v1/models", headers=[("origin", "http://any.example")]
            )
            assert status == 200 and cors_of(headers) == {"access-control-allow-origin": "*"}
            status, headers, _ = await conn.request(
                "OPTIONS", "/v1/chat/completions", headers=[("origin", "http://x.example")]
            )
            assert status == 204 and headers["access-control-allow-origin"] == "*"
            assert headers["access-control-allow-methods"] == "GET, POST, OPTIONS"
        finally:
            await conn.close()


@live
@pytest.mark.parametrize("api_key", [None, "s3cret"])
async def test_no_cors_unless_configured(api_key: str | None) -> None:
    async with echo_gateway(api_key=api_key) as gw:
        assert gw.cors is None
        conn = await RawHttp.open(gw)
        try:
            preflight = [("origin", APP), ("access-control-request-method", "POST")]
            status, headers, out = await conn.request("OPTIONS", "/v1/chat/completions", headers=preflight)
            # as before CORS existed: the key is checked first, then the method
            assert status == (405 if api_key is None else 401), out
            assert cors_of(headers) == {}
        finally:
            await conn.close()
        conn = await RawHttp.open(gw)  # a 401 closed the first
        try:
            auth = [] if api_key is None else [("authorization", f"Bearer {api_key}")]
            status, headers, _ = await conn.request("GET", "/v1/models", headers=[("origin", APP), *auth])
            assert status == 200 and cors_of(headers) == {}
        finally:
            await conn.close()


@live
async def test_gateway_command_cors_origin() -> None:
    env = cli_env()
    # not an origin: refused by the argument parser, one usage error
    bad = await start_cli("--cors-origin", "app.example", env=env)
    _, err = await bounded(bad.communicate(), 30)
    assert bad.returncode == 2 and "--cors-origin" in err.decode() and "not a CORS origin" in err.decode()
    origins = ("--cors-origin", APP, "--cors-origin", "https://b.example")
    async with (
        mimir_node(EchoBackend()) as (_, addr),
        cli_gateway("--peer", addr, "--api-key", "k", *origins, env=env) as base_url,
    ):
        port = int(base_url.rsplit(":", 1)[1].split("/")[0])
        conn = RawHttp(*await asyncio.open_connection("127.0.0.1", port))
        try:
            preflight = [("origin", "https://b.example"), ("access-control-request-method", "POST")]
            status, headers, _ = await conn.request("OPTIONS", "/v1/chat/completions", headers=preflight)
            assert status == 204 and headers["access-control-allow-origin"] == "https://b.example"
            status, headers, _ = await conn.request("GET", "/v1/models", headers=[("origin", APP)])
            assert status == 401 and headers["access-control-allow-origin"] == APP
        finally:
            await conn.close()
