"""The test OpenAI server (tests/helpers/openai_server.py) against the real openai SDK and raw HTTP."""

from __future__ import annotations

import asyncio
import gc
import json
import warnings
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.helpers.openai_server import DEFAULT_MODEL, OpenAIServer, tokenize

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": "the quick brown fox"},
]


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What an SDK stream may raise when the server drops the connection mid-body."""
    errors: list[type[BaseException]] = [openai.APIError]
    for name in ("httpx", "httpx2"):
        try:
            mod = __import__(name)
        except ImportError:
            continue
        errors.append(mod.TransportError)
    return tuple(errors)


@pytest.fixture
async def srv() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer(models=[DEFAULT_MODEL, "other:7b"]) as server:
        yield server


@pytest.fixture
async def client(srv: OpenAIServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=10) as c:
        yield c


async def _collect(client: openai.AsyncOpenAI, **kwargs: Any) -> list[Any]:
    kwargs.setdefault("model", DEFAULT_MODEL)
    kwargs.setdefault("messages", PROMPT)
    stream = await client.chat.completions.create(stream=True, **kwargs)
    return [chunk async for chunk in stream]


def test_tokenize_joins_back() -> None:
    for text in ("", "a", "the quick  brown fox ", "  lead", "line\nbreak\n"):
        assert "".join(tokenize(text)) == text
    assert tokenize("hello big world") == ["hello", " big", " world"]


async def test_models_list(srv: OpenAIServer, client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    assert [m.id for m in page.data] == [DEFAULT_MODEL, "other:7b"]
    assert all(m.object == "model" and m.owned_by == srv.owned_by for m in page.data)
    assert page.data[0].created == srv.created
    model = await client.models.retrieve("other:7b")
    assert model.id == "other:7b"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")
    assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
    assert srv.requests[0].method == "GET" and srv.requests[0].path == "/v1/models"
    assert srv.models_requests == 1  # the list only, not retrieving one model


async def test_stream_chunks(srv: OpenAIServer, client: openai.AsyncOpenAI) -> None:
    chunks = await _collect(client)
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert all(c.object == "chat.completion.chunk" and c.model == DEFAULT_MODEL for c in chunks)
    assert len({c.id for c in chunks}) == 1
    first, *middle, last = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert [c.choices[0].delta.content for c in middle] == ["the", " quick", " brown", " fox"]
    assert all(c.choices[0].finish_reason is None for c in [first, *middle])
    assert last.choices[0].finish_reason == "stop"
    assert last.choices[0].delta.content is None and last.choices[0].delta.role is None
    # what the server wrote is what the SDK parsed
    assert [c.model_dump(exclude_unset=True) for c in chunks] == srv.sent_chunks[0]
    assert srv.streams_started == srv.streams_completed == 1 and srv.open_streams == 0
    assert not srv.stream_cancelled.is_set()


async def test_configurable_reply_and_usage(srv: OpenAIServer, client: openai.AsyncOpenAI) -> None:
    srv.reply = ["Hel", "lo", "!"]
    chunks = await _collect(client, stream_options={"include_usage": True})
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    srv.reply = lambda body: f"{len(body['messages'])} messages"
    chunks = await _collect(client)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "2 messages"


async def test_non_stream(srv: OpenAIServer, client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "the quick brown fox"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    assert srv.streams_started == 0


async def test_unknown_model_404(srv: OpenAIServer, client: openai.AsyncOpenAI) -> None:
    for stream in (True, False):
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="gpt-nope", messages=PROMPT, stream=stream)
        assert info.value.status_code == 404
        assert info.value.code == "model_not_found"
        assert isinstance(info.value.body, dict) and info.value.body["type"] == "invalid_request_error"
        assert "gpt-nope" in info.value.message


async def test_fail_status(srv: OpenAIServer, client: openai.AsyncOpenAI) -> None:
    srv.fail_status, srv.fail_count = 500, 2
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as info:
            await _collect(client)
        assert info.value.status_code == 500
        assert isinstance(info.value.body, dict) and info.value.body["type"] == "server_error"
    assert srv.fail_status is None and srv.fail_count is None
    assert len(await _collect(client)) == 6  # healthy again
    srv.fail_status, srv.fail_message = 429, "slow down"
    for _ in range(3):
        with pytest.raises(openai.RateLimitError) as rate:
            await client.models.list()
        assert "slow down" in rate.value.message
    srv.fail_status = 503
    with pytest.raises(openai.APIStatusError) as status:
        await _collect(client)
    assert status.value.status_code == 503
    srv.fail_status = None
    assert len(await _collect(client)) == 6


async def test_api_key_checked(srv: OpenAIServer, client: openai.AsyncOpenAI) -> None:
    srv.api_key = "secret"
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()
    async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="secret", max_retries=0) as good:
        assert len((await good.models.list()).data) == 2


async def test_die_after_chunks(srv: OpenAIServer, client: openai.AsyncOpenAI) -> None:
    srv.die_after_chunks = 3
    got = []
    stream = await client.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT, stream=True)
    with pytest.raises(_transport_errors()):
        async for chunk in stream:
            got.append(chunk)
    assert [c.choices[0].delta.content for c in got] == ["", "the", " quick"]
    assert srv.streams_killed == 1 and len(srv.sent_chunks[0]) == 3
    srv.die_after_chunks = None
    assert len(await _collect(client)) == 6


async def test_hang_and_sdk_timeout(srv: OpenAIServer) -> None:
    srv.hang = True
    async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=0.5) as c:
        with pytest.raises(openai.APITimeoutError):
            await _collect(c)
    assert len(srv.chat_requests) == 1  # it was received
    await srv.wait_until(lambda: srv.hanging == 0, timeout=5)
    srv.hang = False
    async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=5) as c:
        assert len(await _collect(c)) == 6


async def test_parameters_recorded(srv: OpenAIServer, client: openai.AsyncOpenAI) -> None:
    chunks = await _collect(client, temperature=0.25, max_tokens=2, seed=42, top_p=0.5, stop=["\n"])
    body = srv.chat_requests[-1]
    assert body["temperature"] == 0.25 and body["max_tokens"] == 2 and body["seed"] == 42
    assert body["top_p"] == 0.5 and body["stop"] == ["\n"] and body["stream"] is True
    assert body["messages"] == PROMPT and body["model"] == DEFAULT_MODEL
    assert srv.requests[-1].authorization == "Bearer x"
    assert srv.requests[-1].headers["content-type"] == "application/json"
    # max_tokens cuts the answer, like a real backend
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == ["the", " quick"]
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_client_leaving_mid_stream_is_seen(srv: OpenAIServer, client: openai.AsyncOpenAI) -> None:
    srv.delay = 0.05
    srv.reply = "one two three four five six seven eight nine ten " * 4
    stream = await client.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT, stream=True)
    n = 0
    async for _chunk in stream:
        n += 1
        if n == 3:
            break
    await stream.close()
    await asyncio.wait_for(srv.stream_cancelled.wait(), 5)
    assert srv.streams_cancelled == 1 and srv.open_streams == 0
    assert 3 <= len(srv.sent_chunks[0]) < 40


async def test_keep_alive_reuses_connection(srv: OpenAIServer, client: openai.AsyncOpenAI) -> None:
    await client.models.list()
    await _collect(client)
    await client.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT)
    await _collect(client)
    assert srv.connections_total == 1
    assert len(srv.requests) == 4


async def _raw(srv: OpenAIServer, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


def _dechunk(body: bytes) -> tuple[list[bytes], bool]:
    """HTTP chunks of a chunked body, and whether the terminating chunk was there."""
    out = []
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out, True
        out.append(body[:size])
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]
    return out, False


async def test_raw_sse_format(srv: OpenAIServer) -> None:
    body = json.dumps({"model": DEFAULT_MODEL, "messages": PROMPT, "stream": True}).encode()
    raw = await _raw(
        srv,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
    )
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["transfer-encoding"] == "chunked"
    events, complete = _dechunk(rest)
    assert complete
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    assert events[-1] == b"data: [DONE]\n\n"
    first = json.loads(events[0][6:])
    assert list(first) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    last = json.loads(events[-2][6:])
    assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]


async def test_raw_chunked_request_and_errors(srv: OpenAIServer) -> None:
    body = json.dumps({"model": DEFAULT_MODEL, "messages": PROMPT}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    raw = await _raw(
        srv,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked,
    )
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    answer = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert answer["choices"][0]["message"]["content"] == "the quick brown fox"
    raw = await _raw(srv, b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["error"]["type"] == "invalid_request_error"
    raw = await _raw(srv, b"garbage\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ")
    await srv.wait_until(lambda: srv.open_connections == 0, 5)


async def test_clean_shutdown_with_busy_connections() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        srv = OpenAIServer()
        await srv.start()
        async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=10) as c:
            srv.delay = 5
            streaming = asyncio.create_task(_collect(c))
            await srv.wait_until(lambda: srv.open_streams == 1, timeout=5)
            srv.hang = True
            hanging = asyncio.ensure_future(c.models.list())
            await srv.wait_until(lambda: srv.hanging == 1, timeout=5)
            await asyncio.wait_for(srv.close(), 5)
            assert srv.open_connections == 0 and srv.hanging == 0
            for task in (streaming, hanging):
                with pytest.raises(_transport_errors()):
                    await asyncio.wait_for(task, 5)
            await srv.close()  # idempotent
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", srv.port)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w) for w in caught]
