"""mimirlite's mimir node and client against the JS MimirLLM client and node, real processes on 127.0.0.1.

1. The JS client (identify query by CID, then a message with no model and no request_id) chats with a
   mimirlite node: echo backend, OpenAI backend on tests/helpers/openai_server.py, requests split across
   frames, a failing backend (one completionStop error packet, and the node serves the next client).
2. A mimirlite client chats with JS nodes: models learned by identify, chunks as openai
   ChatCompletionChunk objects equal to what the backend streamed, a node killed mid-answer
   (TruncatedAnswerError), fail-over from a node that fails before its first chunk.
3. The JS client and a mimirlite client at once on one mimirlite node.

Every JS process a test starts is stopped by the test (``async with``), and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from jsmimir import (
    DEFAULT_MODEL,
    EXIT_IDENTIFY,
    EXIT_TRUNCATED,
    LLAMA_CID,
    JsClientResult,
    JsMimirClient,
    JsMimirNode,
    run_js_client,
)

from mimirlite import Host, PeerId, Stream
from mimirlite.mimir import (
    CHAT_PROTOCOL,
    MIMIR_IDENTIFY_PROTOCOL,
    EchoBackend,
    MimirClient,
    MimirNode,
    OpenAIBackend,
    TruncatedAnswerError,
)
from tests.helpers.openai_server import OpenAIServer

PROMPT = "the quick brown fox jumps"
PROMPT_TOKENS = ["", "the", " quick", " brown", " fox", " jumps", None]  # delta contents, role chunk first
SYSTEM = {"role": "system", "content": "You are a helpful assistant"}
USER = {"role": "user", "content": PROMPT}
TIMEOUT = 20.0  # bound of one JS client run or one chat


# ---------------------------------------------------------------- helpers


@pytest.fixture
async def srv() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer(models=[DEFAULT_MODEL]) as server:
        yield server


@contextlib.asynccontextmanager
async def mimir_node(backend: Any) -> AsyncIterator[tuple[MimirNode, str]]:
    """A mimirlite node on 127.0.0.1 and its address (with /p2p/)."""
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, backend) as node:
        yield node, host.listen_addrs[0]


@contextlib.asynccontextmanager
async def js_node(backend_url: str, *args: str, killed: bool = False) -> AsyncIterator[JsMimirNode]:
    """A JS node; on the way out it must have exited cleanly (unless ``killed``) and reported no crash."""
    node = await JsMimirNode.start(backend_url, *args)
    try:
        yield node
    finally:
        await node.stop()
    assert node.returncode == (-signal.SIGKILL if killed else 0), node.stderr_tail()
    assert not node.uncaught(), node.stderr_tail()


def wire_json(obj: Any) -> bytes:
    """A packet body as JSON.stringify writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def varint_len(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def completion_packets(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The packets the original node sends for these backend chunks."""
    return [{"event": "completionPacket", "data": c} for c in chunks]


def assert_original_identify(res: JsClientResult, models: list[str]) -> None:
    """The JS client queried by llama3.2's CID and the node answered its request_id with ``models``."""
    ident = res.identify
    assert ident is not None, res.stderr
    assert ident["cid"] == LLAMA_CID
    assert ident["packet"] == {"event": "response", "request_id": ident["request_id"], "data": models}
    assert res.models == models


async def collect(chat: AsyncIterator[Any], timeout: float = TIMEOUT) -> list[Any]:
    async def run() -> list[Any]:
        return [c async for c in chat]

    return await asyncio.wait_for(run(), timeout)


def by_str(client: MimirClient) -> dict[str, PeerId]:
    return {str(p): p for p in client.nodes}


class FrameLog:
    """Sizes of the data frames each mimirlite Stream receives (one ``feed_data`` call per yamux frame)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: dict[Stream, list[int]] = {}
        original: Callable[[Stream, bytes], bool] = Stream.feed_data

        def on_data(stream: Stream, data: bytes) -> bool:
            self.sizes.setdefault(stream, []).append(len(data))
            return original(stream, data)

        monkeypatch.setattr(Stream, "feed_data", on_data)

    def of(self, protocol: str) -> list[list[int]]:
        return [sizes for st, sizes in self.sizes.items() if st.protocol == protocol]


# ---------------------------------------------------------------- 1. JS client -> mimirlite node


async def test_js_client_chats_with_a_mimirlite_echo_node_serving_llama() -> None:
    async with mimir_node(EchoBackend(DEFAULT_MODEL)) as (_node, addr):
        res = await run_js_client(addr, PROMPT, timeout=TIMEOUT)
    assert res.returncode == 0 and res.ok, res.stderr
    assert_original_identify(res, [DEFAULT_MODEL])
    assert res.identify is not None and res.identify["known"] == [DEFAULT_MODEL]
    assert res.text == PROMPT
    assert [d["content"] for d in res.deltas] == PROMPT_TOKENS
    assert [d["finish_reason"] for d in res.deltas] == [None] * 6 + ["stop"]
    # the packets of the original node: completionPacket only, no request_id (the request had none)
    assert all(set(p) == {"event", "data"} and p["event"] == "completionPacket" for p in res.packets)
    assert all(p["data"]["object"] == "chat.completion.chunk" for p in res.packets)
    assert {p["data"]["model"] for p in res.packets} == {DEFAULT_MODEL}


async def test_js_client_chats_with_a_mimirlite_echo_node_with_another_model() -> None:
    async with mimir_node(EchoBackend()) as (_node, addr):
        # as the original client: the node does not list llama3.2, so it is not used
        res = await run_js_client(addr, PROMPT, timeout=TIMEOUT)
        assert res.returncode == EXIT_IDENTIFY and not res.ok, res.stderr
        assert_original_identify(res, ["echo"])
        assert "does not serve" in res.result["error"] and res.deltas == []
        # told to use any node, it chats; the node answers with its only model
        res = await run_js_client(addr, PROMPT, "--any-model", timeout=TIMEOUT)
    assert res.returncode == 0 and res.ok, res.stderr
    assert_original_identify(res, ["echo"])
    assert res.text == PROMPT
    assert [d["content"] for d in res.deltas] == PROMPT_TOKENS
    assert res.result["finish_reason"] == "stop"
    assert {p["data"]["model"] for p in res.packets} == {"echo"}


async def test_js_client_gets_exactly_the_backend_chunks(srv: OpenAIServer) -> None:
    async with mimir_node(OpenAIBackend(srv.base_url)) as (_node, addr):
        res = await run_js_client(addr, PROMPT, timeout=TIMEOUT)
    assert res.returncode == 0 and res.ok, res.stderr
    assert_original_identify(res, [DEFAULT_MODEL])
    # the node asked its backend for its default model, with the JS client's messages
    assert srv.chat_requests == [{"model": DEFAULT_MODEL, "messages": [SYSTEM, USER], "stream": True}]
    (sent,) = srv.sent_chunks
    assert res.packets == completion_packets(sent)
    assert res.text == PROMPT
    assert res.deltas[-1]["finish_reason"] == "stop" and res.deltas[-1]["content"] is None
    assert res.packets[-1]["data"]["choices"][0]["delta"] == {}


async def test_js_client_reads_the_backend_json_the_node_passes_on_as_it_is(srv: OpenAIServer) -> None:
    """The test server writes raw UTF-8 (``ensure_ascii=False``); the node writes its text into the packets
    unchanged (mimir/node.py ``_answer_wire``), and the JS client reads the same chunks."""
    srv.reply = "h\u00e9llo w\u00f6rld \u2603 \U0001f600 \u2028 end"
    async with mimir_node(OpenAIBackend(srv.base_url)) as (_node, addr):
        res = await run_js_client(addr, PROMPT, timeout=TIMEOUT)
    assert res.returncode == 0 and res.ok, res.stderr
    (sent,) = srv.sent_chunks
    assert res.packets == completion_packets(sent)
    assert res.text == srv.reply


@pytest.mark.parametrize("chunk_bytes", [None, 1], ids=["varint-then-body", "byte-by-byte"])
async def test_js_client_packets_split_across_frames(
    monkeypatch: pytest.MonkeyPatch, chunk_bytes: int | None
) -> None:
    frames = FrameLog(monkeypatch)
    args = () if chunk_bytes is None else ("--write-chunk-bytes", str(chunk_bytes))
    async with mimir_node(EchoBackend(DEFAULT_MODEL)) as (_node, addr):
        res = await run_js_client(addr, PROMPT, *args, timeout=TIMEOUT)
    assert res.returncode == 0 and res.ok and res.text == PROMPT, res.stderr

    # what the mimirlite node received, frame by frame, at the end of each stream (after multistream)
    ident = res.identify
    assert ident is not None
    query = wire_json({"event": "query", "request_id": ident["request_id"], "data": LLAMA_CID})
    (ident_frames,) = frames.of(MIMIR_IDENTIFY_PROTOCOL)
    assert ident_frames[-2:] == [varint_len(len(query)), len(query)]

    message = wire_json({"event": "message", "data": {"messages": [SYSTEM, USER]}})
    assert varint_len(len(message)) == 2  # a two-byte varint: split too in byte-by-byte mode
    (chat_frames,) = frames.of(CHAT_PROTOCOL)
    if chunk_bytes is None:
        assert chat_frames[-2:] == [2, len(message)]
    else:
        total = 2 + len(message)
        assert chat_frames[-total:] == [1] * total


async def test_backend_error_reaches_the_js_client_and_the_node_serves_on(srv: OpenAIServer) -> None:
    async with mimir_node(OpenAIBackend(srv.base_url)) as (_node, addr):
        srv.fail_status, srv.fail_count = 500, 1
        failed = await run_js_client(addr, PROMPT, timeout=TIMEOUT)
        srv.reply = "fine again"
        res = await run_js_client(addr, PROMPT, timeout=TIMEOUT)
    # no finish_reason: the JS client reports a truncated answer, with the one packet it saw
    assert failed.returncode == EXIT_TRUNCATED and not failed.ok, failed.stderr
    (stop,) = failed.packets
    assert set(stop) == {"event", "data"} and stop["event"] == "completionStop"
    error = stop["data"]["error"]
    assert error["type"] == "backend_error" and "500" in error["message"]
    # the next JS client is served
    assert res.returncode == 0 and res.ok and res.text == "fine again", res.stderr
    assert len(srv.chat_requests) == 2 and srv.streams_completed == 1


# ---------------------------------------------------------------- 2. mimirlite client -> JS node


async def test_mimirlite_client_chats_with_a_js_node(srv: OpenAIServer) -> None:
    async with js_node(srv.base_url) as js, MimirClient(peers=[js.addr]) as client:
        from openai.types.chat import ChatCompletionChunk

        # models learned through the original identify handshake
        assert {str(p): m for p, m in client.nodes.items()} == {js.peer_id: [DEFAULT_MODEL]}
        (query,) = js.events_named("identify_query")
        assert set(query["packet"]) == {"event", "request_id", "data"}
        assert query["packet"]["event"] == "query" and query["packet"]["data"] == LLAMA_CID

        chunks = await collect(client.chat([SYSTEM, USER]))
        assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
        (sent,) = srv.sent_chunks
        assert [c.model_dump(mode="json", exclude_unset=True) for c in chunks] == sent
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == PROMPT
        assert chunks[-1].choices[0].finish_reason == "stop"
        (message,) = js.events_named("message")
        assert message["packet"]["data"] == {"messages": [SYSTEM, USER]}
        assert srv.chat_requests == [{"model": DEFAULT_MODEL, "messages": [SYSTEM, USER], "stream": True}]

        # naming the model works too (the JS node ignores the field and asks its own model)
        chunks = await collect(client.chat([{"role": "user", "content": "named model"}], model=DEFAULT_MODEL))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "named model"
        assert srv.chat_requests[-1]["model"] == DEFAULT_MODEL
        done = await js.next_event("completion", timeout=TIMEOUT)
        assert done["ok"] is True and done["finish_reason"] == "stop"


async def test_js_node_killed_mid_answer(srv: OpenAIServer) -> None:
    srv.delay = 0.05
    srv.reply = "word " * 200
    async with js_node(srv.base_url, killed=True) as js, MimirClient(peers=[js.addr]) as client:
        loop = asyncio.get_running_loop()
        seen: list[str | None] = []
        killed_at = 0.0

        async def consume() -> None:
            nonlocal killed_at
            async for c in client.chat([USER]):
                seen.append(c.choices[0].delta.content)
                if len(seen) == 3:
                    await js.kill()
                    killed_at = loop.time()

        with pytest.raises(TruncatedAnswerError):
            await asyncio.wait_for(consume(), TIMEOUT)
        assert loop.time() - killed_at < 5
        assert seen[:3] == ["", "word", " word"] and len(seen) < 200
        assert client._inflight == {}
    await srv.wait_until(lambda: srv.open_streams == 0, timeout=10)


@pytest.mark.parametrize(
    ("on_backend_error", "fault"),
    [("reset", "status-500"), ("close", "status-500"), ("reset", "backend-down")],
)
async def test_mimirlite_client_fails_over_between_js_nodes(
    srv: OpenAIServer, on_backend_error: str, fault: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        failing = await stack.enter_async_context(OpenAIServer(models=[DEFAULT_MODEL]))
        bad = await stack.enter_async_context(
            js_node(failing.base_url, "--on-backend-error", on_backend_error)
        )
        good = await stack.enter_async_context(js_node(srv.base_url))
        client = await stack.enter_async_context(MimirClient(peers=[bad.addr, good.addr]))
        ids = by_str(client)
        assert set(ids) == {bad.peer_id, good.peer_id}
        assert all(client.nodes[p] == [DEFAULT_MODEL] for p in ids.values())
        # make the failing node look nearest, so that it is asked first
        client._rtt[ids[bad.peer_id]], client._rtt[ids[good.peer_id]] = 0.001, 0.002
        assert client._candidates(DEFAULT_MODEL) == [ids[bad.peer_id], ids[good.peer_id]]
        if fault == "status-500":
            failing.fail_status = 500
        else:
            await failing.close()

        chunks = await collect(client.chat([USER]))
        assert [c.model_dump(mode="json", exclude_unset=True) for c in chunks] == srv.sent_chunks[0]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == PROMPT

        failed = await bad.next_event("completion", timeout=TIMEOUT)
        assert failed["ok"] is False and failed["packets"] == 0 and failed["backend_error"]
        # the bad node reset the stream, or closed it without a packet: both before any chunk
        assert failed.get("reset", False) is (on_backend_error == "reset")
        if fault == "status-500":
            assert len(failing.chat_requests) == 1 and "500" in failed["backend_error"]
        assert len(srv.chat_requests) == 1
        done = await good.next_event("completion", timeout=TIMEOUT)
        assert done["ok"] is True


# ---------------------------------------------------------------- 3. both clients on one mimirlite node


async def test_js_and_mimirlite_clients_at_once_on_a_mimirlite_node(srv: OpenAIServer) -> None:
    srv.delay = 0.05  # ~1 s per answer: the two overlap
    js_words = " ".join(f"js{i}" for i in range(20))
    py_words = " ".join(f"py{i}" for i in range(20))
    async with (
        mimir_node(OpenAIBackend(srv.base_url)) as (_node, addr),
        MimirClient(peers=[addr]) as client,
    ):
        js_client = await JsMimirClient.start(
            addr, "--prompt", js_words, "--timeout-ms", str(int(TIMEOUT * 1000))
        )
        try:
            py_task = asyncio.ensure_future(collect(client.chat([{"role": "user", "content": py_words}])))
            try:
                await srv.wait_until(lambda: srv.open_streams == 2, timeout=TIMEOUT)
                res = await js_client.wait(TIMEOUT)
                chunks = await asyncio.wait_for(py_task, TIMEOUT)
            finally:
                py_task.cancel()
                with contextlib.suppress(BaseException):
                    await py_task
        finally:
            await js_client.stop()
    assert res.returncode == 0 and res.ok and res.text == js_words, res.stderr
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == py_words
    assert srv.streams_completed == 2
