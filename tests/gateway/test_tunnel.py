"""The gateway's paths forwarded through a node's ``/mimir/<model>/1.0.0`` tunnel (``POST /v1/embeddings``,
``/v1/completions``, ``/api/embed``, ``/api/embeddings``): the allowlists with literal values, the mapping of
a latest node's HTTP error status, then the real thing on 127.0.0.1 (mimirlite nodes with the echo backend or
the openai backend on the test OpenAI server, behind a MimirClient and a Gateway), asked with the ``openai``
SDK, raw HTTP/1.1, ``curl`` and the ``ollama`` Python client.

mDNS is off everywhere; every server a test starts is stopped by it; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import h11
import openai
import pytest

from mimirlite.gateway import Gateway, api
from mimirlite.gateway.api import ApiError
from mimirlite.gateway.gateway import _upstream_error
from mimirlite.mimir import EchoBackend, MimirNode, RemoteError
from mimirlite.mimir.client import HttpRemoteError
from mimirlite.mimir.models import tunnel_protocol
from tests.helpers.gateway import LLAMA, RawHttp, bounded, curl, gateway_for, live, llama_gateway, sdk
from tests.helpers.openai_server import OpenAIServer, embedding

ollama = pytest.importorskip("ollama")


# ====================================================================== pure: allowlists, error mapping


def test_embeddings_body_allowlist_and_bounds() -> None:
    call = api.parse_tunnel_body(
        "/v1/embeddings",
        b'{"model":"m","input":["a","b"],"encoding_format":"float","dimensions":4,"user":"u","x":null}',
    )
    assert call.model == "m"
    assert call.body == {
        "model": "m",
        "input": ["a", "b"],
        "encoding_format": "float",
        "dimensions": 4,
        "user": "u",
    }
    assert api.parse_tunnel_body("/v1/embeddings", b'{"model":"m","input":[[1,2],[3]]}').body["input"] == [
        [1, 2],
        [3],
    ]
    bad: list[tuple[bytes, str]] = [
        (b'{"input":"a"}', "model"),
        (b'{"model":7,"input":"a"}', "model"),
        (b'{"model":"m"}', "input"),
        (b'{"model":"m","input":[]}', "input"),
        (b'{"model":"m","input":[1,"a"]}', "input"),
        (b'{"model":"m","input":[-1]}', "input"),
        (b'{"model":"m","input":"a","dimensions":0}', "dimensions"),
        (b'{"model":"m","input":"a","encoding_format":"hex"}', "encoding_format"),
        (b'{"model":"m","input":"a","extra_headers":{"x":"y"}}', "extra_headers"),
        (b'{"model":"m","input":"a","keep_alive":0}', "keep_alive"),
        (json.dumps({"model": "m", "input": ["a"] * (api.MAX_INPUTS + 1)}).encode(), "input"),
    ]
    for body, param in bad:
        with pytest.raises(ApiError) as info:
            api.parse_tunnel_body("/v1/embeddings", body)
        assert (info.value.status, info.value.param) == (400, param), body


def test_completions_body_allowlist_and_bounds() -> None:
    body = b'{"model":"m","prompt":"hi","stream":true,"max_tokens":3,"temperature":0.5,'
    body += b'"echo":false,"logprobs":2}'
    call = api.parse_tunnel_body("/v1/completions", body)
    assert call.body == {
        "model": "m",
        "prompt": "hi",
        "stream": True,
        "max_tokens": 3,
        "temperature": 0.5,
        "echo": False,
        "logprobs": 2,
    }
    for body, param in [
        (b'{"model":"m","prompt":"a","stream":"yes"}', "stream"),
        (b'{"model":"m","prompt":"a","temperature":3}', "temperature"),
        (b'{"model":"m","prompt":"a","logprobs":6}', "logprobs"),
        (b'{"model":"m","prompt":{"a":1}}', "prompt"),
        (b'{"model":"m","prompt":"a","messages":[]}', "messages"),
        (b'{"model":"m","prompt":"a","tools":[]}', "tools"),
    ]:
        with pytest.raises(ApiError) as info:
            api.parse_tunnel_body("/v1/completions", body)
        assert (info.value.status, info.value.param) == (400, param), body


def test_ollama_embed_bodies_drop_keep_alive_and_check_options() -> None:
    body = (
        b'{"model":"m","input":"a","truncate":true,"keep_alive":0,"options":{"num_ctx":512,"temperature":0}}'
    )
    assert api.parse_tunnel_body("/api/embed", body).body == {
        "model": "m",
        "input": "a",
        "truncate": True,
        "options": {"num_ctx": 512, "temperature": 0},
    }
    old = api.parse_tunnel_body("/api/embeddings", b'{"model":"m","prompt":"a","keep_alive":"5m"}')
    assert old.body == {"model": "m", "prompt": "a"}
    for path, body, param in [
        ("/api/embed", b'{"model":"m","input":[[1]]}', "input"),
        ("/api/embed", b'{"model":"m","input":"a","options":{"rm":1}}', "options.rm"),
        ("/api/embed", b'{"model":"m","input":"a","options":{"num_ctx":[1]}}', "options.num_ctx"),
        ("/api/embed", b'{"model":"m","input":"a","insecure":true}', "insecure"),
        ("/api/embeddings", b'{"model":"m","prompt":1}', "prompt"),
    ]:
        with pytest.raises(ApiError) as info:
            api.parse_tunnel_body(path, body)
        assert (info.value.status, info.value.param) == (400, param), body


def test_upstream_error_keeps_a_latest_nodes_http_status() -> None:
    client_side = [(s, api.INVALID_REQUEST) for s in (400, 404, 413)]
    for status, kind in [
        *client_side,
        (429, api.RATE_LIMIT),
        (500, api.SERVER_ERROR),
        (503, api.SERVER_ERROR),
    ]:
        err = _upstream_error(HttpRemoteError(status, "http_x", "said no"))
        assert (err.status, err.type, err.message, err.code) == (status, kind, "said no", "http_x")
    assert _upstream_error(HttpRemoteError(302, "http_302", "moved")).status == 502
    assert _upstream_error(RemoteError("rate_limited", "slow down")).status == 429
    assert _upstream_error(RemoteError("backend_error", "boom")).status == 502


# ====================================================================== real parts


@contextlib.asynccontextmanager
async def first_generation_gateway() -> AsyncIterator[Gateway]:
    """A gateway whose only node serves ``echo`` on the first generation only (its tunnel removed, as a
    first-generation MimirLLM node has none)."""
    from mimirlite import Host

    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, EchoBackend()):
        host.remove_handler(tunnel_protocol("echo"))
        async with gateway_for(host.listen_addrs[0]) as gw:
            yield gw


@live
async def test_sdk_embeddings_through_the_tunnel(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        answer = await bounded(client.embeddings.create(model=LLAMA, input=["one", "two words"]))
        assert [d.embedding for d in answer.data] == [embedding("one"), embedding("two words")]
        assert answer.model == LLAMA and answer.usage.prompt_tokens == 3
        answer = await bounded(client.embeddings.create(model=LLAMA, input="x", dimensions=3))
        assert answer.data[0].embedding == embedding("x", 3)
    seen = [r for r in openai_server.requests if r.path == "/v1/embeddings"]
    assert [(r.json["model"], r.json["input"], r.json.get("dimensions")) for r in seen] == [
        (LLAMA, ["one", "two words"], None),
        (LLAMA, "x", 3),
    ]


@live
async def test_sdk_completions_streamed_and_not(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        whole = await bounded(client.completions.create(model=LLAMA, prompt="once upon a time"))
        assert whole.choices[0].text == "once upon a time" and whole.usage is not None
        stream = await bounded(
            client.completions.create(model=LLAMA, prompt="a b c", stream=True, max_tokens=2)
        )
        pieces = [c async for c in stream]
        assert [c.choices[0].text for c in pieces] == ["a", " b", ""]
        assert pieces[-1].choices[0].finish_reason == "length"


@live
async def test_curl_gets_the_nodes_content_type_and_sse_as_it_comes(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw:
        body = json.dumps({"model": LLAMA, "input": "hello"})
        out = await curl(
            "-i", "-H", "content-type: application/json", "-d", body, f"{gw.base_url}/embeddings"
        )
        head, _, payload = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"content-type: application/json" in head.lower()
        assert json.loads(payload)["data"][0]["embedding"] == embedding("hello")
        body = json.dumps({"model": LLAMA, "prompt": "x y", "stream": True})
        out = await curl("-H", "content-type: application/json", "-d", body, f"{gw.base_url}/completions")
        events = [e for e in out.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]" and len(events) == 4, out


@live
async def test_ollama_embed_and_embeddings(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw, ollama.AsyncClient(host=gw.url, timeout=10) as client:
        answer = await bounded(client.embed(model=LLAMA, input=["a", "b"]))
        assert [list(v) for v in answer.embeddings] == [embedding("a"), embedding("b")]
        # a name without its tag resolves as Ollama resolves it
        answer = await bounded(client.embed(model="llama3.2", input="c", keep_alive=0))
        assert [list(v) for v in answer.embeddings] == [embedding("c")]
        old = await bounded(client.embeddings(model=LLAMA, prompt="d"))
        assert list(old.embedding) == embedding("d")
    embeds = [r.json for r in openai_server.requests if r.path == "/api/embed"]
    assert embeds[1] == {"model": LLAMA, "input": "c"}  # keep_alive not forwarded


@live
async def test_a_backend_error_status_passes_through(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        openai_server.fail_status, openai_server.fail_count, openai_server.fail_message = 429, 1, "slow down"
        with pytest.raises(openai.RateLimitError) as info:
            await bounded(client.embeddings.create(model=LLAMA, input="x"))
        assert info.value.status_code == 429 and "slow down" in str(info.value)
        openai_server.fail_status, openai_server.fail_count = 500, 1
        with pytest.raises(openai.InternalServerError) as err:
            await bounded(client.completions.create(model=LLAMA, prompt="x"))
        assert err.value.status_code == 500
        # the backend's answer as it is, a 200 included
        conn = await RawHttp.open(gw)
        try:
            status, headers, out = await conn.request(
                "POST", "/api/embeddings", b'{"model":"llama3.2:latest"}'
            )
            assert (status, headers["content-type"]) == (200, "application/json")
            assert json.loads(out) == {"embedding": embedding("")}
        finally:
            await conn.close()


@live
async def test_echo_backend_answers_embeddings_404_and_the_gateway_passes_it() -> None:
    from mimirlite import Host

    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, EchoBackend()):  # noqa: SIM117
        async with gateway_for(host.listen_addrs[0]) as gw:
            conn = await RawHttp.open(gw)
            try:
                status, _, out = await conn.request("POST", "/v1/embeddings", b'{"model":"echo","input":"a"}')
                assert status == 404 and "echo backend" in json.loads(out)["error"]
                status, _, out = await conn.request("POST", "/api/embed", b'{"model":"echo","input":"a"}')
                assert status == 404 and "echo backend" in json.loads(out)["error"]
            finally:
                await conn.close()


@live
async def test_unknown_model_404_and_first_generation_only_501() -> None:
    async with first_generation_gateway() as gw:
        conn = await RawHttp.open(gw)
        try:
            status, _, out = await conn.request("POST", "/v1/embeddings", b'{"model":"nope","input":"a"}')
            assert (status, json.loads(out)["error"]["code"]) == (404, "model_not_found")
            status, _, out = await conn.request("POST", "/api/embed", b'{"model":"nope","input":"a"}')
            assert (status, json.loads(out)) == (404, {"error": "model 'nope' not found"})
            for path, body in [
                ("/v1/embeddings", b'{"model":"echo","input":"a"}'),
                ("/v1/completions", b'{"model":"echo","prompt":"a"}'),
            ]:
                status, _, out = await conn.request("POST", path, body)
                err = json.loads(out)["error"]
                assert (status, err["code"]) == (501, "needs_latest_generation")
                assert "latest MimirLLM generation" in err["message"]
            for path in ("/api/embed", "/api/embeddings"):
                body = b'{"model":"echo","input":"a"}' if path == "/api/embed" else b'{"model":"echo"}'
                status, _, out = await conn.request("POST", path, body)
                assert status == 501 and "latest MimirLLM generation" in json.loads(out)["error"]
            # chat still works on the first generation
            status, _, out = await conn.request(
                "POST",
                "/v1/chat/completions",
                b'{"model":"echo","messages":[{"role":"user","content":"hi"}]}',
            )
            assert status == 200
            status, _, _ = await conn.request("POST", "/api/pull", b'{"model":"echo"}')
            assert status == 403
        finally:
            await conn.close()


@live
async def test_a_node_answer_cut_mid_body_is_a_truncated_response(openai_server: OpenAIServer) -> None:
    openai_server.die_after_chunks = 2
    async with llama_gateway(openai_server) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            conn = h11.Connection(h11.CLIENT)
            body = json.dumps({"model": LLAMA, "prompt": "a b c d e f", "stream": True}).encode()
            headers = [
                ("host", "127.0.0.1"),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
            ]
            writer.write(
                conn.send(h11.Request(method="POST", target="/v1/completions", headers=headers)) or b""
            )
            writer.write((conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b""))
            events: list[Any] = []
            with pytest.raises(h11.RemoteProtocolError):  # the connection ends inside the chunked body
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await bounded(reader.read(65536)))
                        continue
                    events.append(event)
                    assert not isinstance(event, h11.EndOfMessage), events
        finally:
            writer.close()
    assert isinstance(events[0], h11.Response) and events[0].status_code == 200
    assert b"".join(e.data for e in events if isinstance(e, h11.Data)).startswith(b"data: ")


async def _first_event(gw: Gateway, body: dict[str, Any]) -> tuple[asyncio.StreamWriter, bytes]:
    """POST a streamed completion on a raw connection; return it once the first SSE event came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    raw = json.dumps(body).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {len(raw)}\r\n\r\n"
    ).encode()
    writer.write(head + raw)
    got = b""
    while b"data: " not in got.partition(b"\r\n\r\n")[2] or not got.endswith(b"\n\n\r\n"):
        data = await bounded(reader.read(65536))
        assert data, got
        got += data
    return writer, got


@live
async def test_the_answer_streams_as_it_arrives_and_a_client_leaving_cancels_it(
    openai_server: OpenAIServer,
) -> None:
    openai_server.delay = 1.0  # each event a second after the one before
    async with llama_gateway(openai_server) as gw:
        body = {"model": LLAMA, "prompt": "a b c d e f g h", "stream": True}
        writer, got = await _first_event(gw, body)
        try:
            assert got.startswith(b"HTTP/1.1 200") and b"content-type: text/event-stream" in got.lower()
            # the first event came through while the backend was still streaming (not buffered)
            assert openai_server.streams_completed == 0 and openai_server.streams_started == 1
        finally:
            writer.close()
        # the client went away: the tunnel stream is reset, the node cancels its backend request
        await bounded(openai_server.stream_cancelled.wait())
        assert openai_server.streams_completed == 0


@live
async def test_a_hostile_latest_node_gets_only_its_status_content_type_and_body_through() -> None:
    from mimirlite import Stream
    from mimirlite.mimir import DEFAULT_MODEL as MODEL
    from tests.helpers.mimir import latest_node

    async def answer(stream: Stream, request: bytes) -> None:
        if b'"input":"nobody"' in request:  # a status with no body, yet a body
            await stream.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello")
        elif b'"input":"cut"' in request:  # half its Content-Length, then the end
            await stream.write(
                b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n{"a"'
            )
        else:
            head = (
                b"HTTP/1.1 418 Teapot\r\ncontent-type: text/plain\r\nset-cookie: s=1\r\nx-secret: y\r\n\r\n"
            )
            await stream.write(head + b"short and stout")
        await stream.close()

    async with latest_node(answer) as (host, seen), gateway_for(host.listen_addrs[0]) as gw:
        conn = await RawHttp.open(gw)
        try:
            body = json.dumps({"model": MODEL, "input": "tea"}).encode()
            status, headers, out = await conn.request("POST", "/v1/embeddings", body)
            assert (status, out, headers["content-type"]) == (418, b"short and stout", "text/plain")
            assert "set-cookie" not in headers and "x-secret" not in headers
            body = json.dumps({"model": MODEL, "input": "nobody"}).encode()
            status, _, out = await conn.request("POST", "/v1/embeddings", body)
            assert status == 502 and "HTTP 204" in json.loads(out)["error"]["message"]
            body = json.dumps({"model": MODEL, "input": "cut"}).encode()
            with pytest.raises(h11.RemoteProtocolError):  # never a silently short answer
                await conn.request("POST", "/v1/embeddings", body)
        finally:
            await conn.close()
        assert [r.split(b" ", 2)[:2] for r in seen[-3:]] == [[b"POST", b"/v1/embeddings"]] * 3


# ====================================================================== chats from a latest node, as sent


def _event(text: str) -> bytes:
    return b"".join(b"data: " + line.encode() + b"\n" for line in text.split("\n")) + b"\n"


@live
async def test_chunks_of_a_latest_node_pass_as_sent_only_when_every_parser_reads_them_alike() -> None:
    from mimirlite import Stream
    from mimirlite.mimir import DEFAULT_MODEL as MODEL
    from tests.helpers.gateway import sse_data, user
    from tests.helpers.mimir import latest_node

    head = (
        '{"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": ' + json.dumps(MODEL) + ", "
    )
    clean = head + '"choices": [{"index": 0, "delta": {"content": "as sent"}}], "x_node": "kept"}'
    twice = (  # Python reads the last "choices", the one checked; a parser keeping the first would not
        head + '"choices": [{"index": 0, "delta": {"content": "unchecked", "role": 5}}], '
        '"choices": [{"index": 0, "delta": {"content": " checked"}}]}'
    )
    nan = head + '"choices": [{"index": 0, "delta": {"content": " nan"}}], "x_score": NaN}'
    lines = head + '\n"choices": [{"index": 0, "delta": {"content": " lines"}}]}'
    surrogate = head + '"choices": [{"index": 0, "delta": {"content": " \\ud800"}}]}'
    last = head + '"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}'

    async def answer(stream: Stream, request: bytes) -> None:
        await stream.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        for text in (clean, twice, nan, lines, surrogate, last, "[DONE]"):
            await stream.write(_event(text))
        await stream.close()

    async with latest_node(answer) as (host, _), gateway_for(host.listen_addrs[0]) as gw:
        body = json.dumps({"model": MODEL, "messages": user("hi"), "stream": True}).encode()
        raw = await bounded(
            curl(
                f"{gw.base_url}/chat/completions",
                "-H",
                "content-type: application/json",
                "--data-binary",
                body.decode(),
            )
        )
    *events, done = sse_data(raw)  # one line each, OpenAI's framing
    assert done == "[DONE]" and len(events) == 6
    assert events[0] == clean and events[5] == last  # as the node wrote them, spaces and all
    assert events[1].count('"choices"') == 1 and json.loads(events[1]) == json.loads(twice)
    assert '"x_score":null' in events[2] and "NaN" not in events[2]
    assert json.loads(events[3]) == json.loads(lines)
    assert "\\ud800" not in events[4] and json.loads(events[4])["choices"][0]["delta"]["content"] == " \ufffd"
    texts = [json.loads(e)["choices"][0]["delta"].get("content") for e in events]
    assert texts == ["as sent", " checked", " nan", " lines", " \ufffd", None]
