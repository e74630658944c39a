"""The two mimir protocols end to end: a MimirNode and a MimirClient on real hosts over TCP + Noise +
yamux, with the echo backend and with the openai SDK against a real OpenAI-compatible HTTP server."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mimirlite import Host, Stream
from mimirlite.mimir import (
    MODEL_CIDS,
    BackendError,
    EchoBackend,
    MimirClient,
    MimirNode,
    NoNodeError,
    OpenAIBackend,
    RemoteError,
    TruncatedAnswerError,
    packets,
)
from mimirlite.wire import lp
from mimirlite.wire.varint import encode_uvarint
from tests.helpers import until
from tests.helpers.mimir import read_all_packets, request
from tests.helpers.openai_server import OpenAIServer

LLAMA = "llama3.2:latest"
LLAMA_CID = MODEL_CIDS[LLAMA]
HELLO = [{"role": "user", "content": "hello big wide world"}]


@pytest.fixture
async def node_host() -> AsyncIterator[Host]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        yield host


@pytest.fixture
async def echo_node(node_host: Host) -> AsyncIterator[MimirNode]:
    async with MimirNode(node_host, EchoBackend(), request_timeout=1.0) as node:
        yield node


@pytest.fixture
async def llama_node(node_host: Host, openai_server: OpenAIServer) -> AsyncIterator[MimirNode]:
    backend = OpenAIBackend(openai_server.base_url, timeout=2.0)
    async with MimirNode(node_host, backend, request_timeout=1.0) as node:
        yield node


@pytest.fixture
async def user() -> AsyncIterator[Host]:
    async with Host() as host:
        yield host


def text_of(out: list[dict[str, Any]]) -> str:
    return "".join(p["data"]["choices"][0]["delta"].get("content") or "" for p in out)


# --- /mimirllm/1.0.0/identify ------------------------------------------------------------------


@pytest.mark.parametrize("query", [LLAMA_CID, LLAMA, None])
async def test_identify_answers_with_served_models(user: Host, llama_node: MimirNode, query: Any) -> None:
    out = await request(
        user,
        llama_node,
        packets.MIMIR_IDENTIFY_PROTOCOL,
        {"event": "query", "request_id": "r-1", "data": query},
    )
    assert out == [{"event": "response", "request_id": "r-1", "data": [LLAMA]}]


async def test_identify_refuses_a_non_query(user: Host, echo_node: MimirNode, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, "mimirlite")
    out = await request(user, echo_node, packets.MIMIR_IDENTIFY_PROTOCOL, {"event": "message", "data": None})
    assert out == []
    assert "identify refused" in caplog.text


# --- /mimirllm/1.0.0 on the wire ---------------------------------------------------------------


async def test_chat_as_the_original_client_sends_it(
    user: Host, llama_node: MimirNode, openai_server: OpenAIServer
) -> None:
    # No model, no request_id: the default model answers; packets carry the chunks exactly as streamed.
    out = await request(
        user, llama_node, packets.CHAT_PROTOCOL, {"event": "message", "data": {"messages": HELLO}}
    )
    assert [p["event"] for p in out] == ["completionPacket"] * len(out)
    assert all(set(p) == {"event", "data"} for p in out)
    assert [p["data"] for p in out] == openai_server.sent_chunks[0]
    assert out[-1]["data"]["choices"][0]["finish_reason"] == "stop"
    assert text_of(out) == "hello big wide world"
    assert openai_server.chat_requests[0]["model"] == LLAMA
    assert openai_server.chat_requests[0]["stream"] is True


async def test_echo_backend_streams_word_by_word(user: Host, echo_node: MimirNode) -> None:
    out = await request(
        user, echo_node, packets.CHAT_PROTOCOL, {"event": "message", "data": {"messages": HELLO}}
    )
    deltas = [p["data"]["choices"][0]["delta"].get("content") for p in out]
    assert deltas == ["", "hello", " big", " wide", " world", None]
    assert out[-1]["data"]["choices"][0]["finish_reason"] == "stop"
    assert out[0]["data"]["object"] == "chat.completion.chunk"


async def test_model_pick_params_and_request_id(user: Host, node_host: Host) -> None:
    async with (
        OpenAIServer(models=["qwen2.5:0.5b", LLAMA]) as srv,
        MimirNode(node_host, OpenAIBackend(srv.base_url)) as node,
    ):
        assert node.default_model == LLAMA
        params = {"temperature": 0.2, "max_tokens": 2, "top_p": 0.9, "stop": ["x"], "seed": 7}
        data = {"messages": HELLO, "model": "qwen2.5:0.5b", **params}
        out = await request(
            user, node, packets.CHAT_PROTOCOL, {"event": "message", "request_id": "q", "data": data}
        )
        assert all(p["request_id"] == "q" for p in out)
        assert text_of(out) == "hello big"
        assert out[-1]["data"]["choices"][0]["finish_reason"] == "length"
        sent = srv.chat_requests[0]
        assert sent["model"] == "qwen2.5:0.5b"
        assert {k: sent[k] for k in params} == params
        # A model named by its CID is the same model.
        data = {"messages": HELLO, "model": LLAMA_CID}
        await request(user, node, packets.CHAT_PROTOCOL, {"event": "message", "data": data})
        assert srv.chat_requests[1]["model"] == LLAMA


# --- failures: one completionStop error, then the close; other requests unharmed -----------------


async def expect_error(user: Host, node: MimirNode, *sent: Any) -> dict[str, Any]:
    out = await request(user, node, packets.CHAT_PROTOCOL, *sent)
    assert out, "no packet before the close"
    stop = out[-1]
    assert stop["event"] == "completionStop", out
    assert [p["event"] for p in out[:-1]] == ["completionPacket"] * (len(out) - 1)
    error: dict[str, Any] = stop["data"]["error"]
    assert error["message"]
    return error


async def still_serves(user: Host, node: MimirNode) -> None:
    out = await request(user, node, packets.CHAT_PROTOCOL, {"event": "message", "data": {"messages": HELLO}})
    assert text_of(out) == "hello big wide world"


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (b"\x05nope!", "unreadable request"),
        ({"event": "telepathy", "data": {}}, "unknown packet event"),
        ({"event": "query", "data": None}, "expected a 'message' packet"),
        ({"event": "message", "data": {}}, "no 'messages'"),
        ({"event": "message", "data": {"messages": "hi"}}, "'messages'"),
        ({"event": "message", "data": {"messages": [{"content": "no role"}]}}, "'messages[0].role'"),
        ({"event": "message", "data": {"messages": HELLO, "model": 3}}, "'model'"),
    ],
)
async def test_bad_requests_get_a_clear_error(
    user: Host, echo_node: MimirNode, caplog: Any, sent: Any, reason: str
) -> None:
    caplog.set_level(logging.WARNING, "mimirlite")
    error = await expect_error(user, echo_node, sent)
    assert error["type"] == "bad_request"
    assert reason in error["message"]
    assert "bad request" in caplog.text
    await still_serves(user, echo_node)


async def test_oversized_packet(user: Host, echo_node: MimirNode) -> None:
    big = {
        "event": "message",
        "data": {"messages": [{"role": "user", "content": "x" * (lp.MAX_MESSAGE + 10)}]},
    }
    error = await expect_error(user, echo_node, _raw_lp(big))
    assert error["type"] == "bad_request"
    assert "exceeds" in error["message"]
    await still_serves(user, echo_node)


def _raw_lp(obj: Any) -> bytes:
    """LP-JSON without the sender's size cap."""
    body = json.dumps(obj).encode()
    return encode_uvarint(len(body)) + body


async def test_client_that_never_finishes_its_request(user: Host, echo_node: MimirNode) -> None:
    stream = await user.new_stream(echo_node.host.listen_addrs[0], packets.CHAT_PROTOCOL)
    async with stream:
        await stream.write(b"\x20{")  # a packet of 32 bytes, never completed; write side left open
        out = await read_all_packets(stream)
    assert out[-1]["data"]["error"]["type"] == "bad_request"
    assert "no request within 1 s" in out[-1]["data"]["error"]["message"]
    await still_serves(user, echo_node)


async def test_request_reset_mid_way_is_not_a_bad_request(
    user: Host, echo_node: MimirNode, caplog: pytest.LogCaptureFixture
) -> None:
    """A request whose stream is reset before it is whole (by its peer, or by the node at a limit) is
    nobody's bad request: nothing is answered on the dead stream and nothing is logged above INFO."""
    caplog.set_level(logging.INFO, logger="mimirlite")
    stream = await user.new_stream(echo_node.host.listen_addrs[0], packets.CHAT_PROTOCOL)
    await stream.write(b"\x20{")
    await until(lambda: echo_node.host.metrics.streams_current == 1)
    await stream.reset()
    await until(lambda: echo_node.host.metrics.streams_current == 0)
    await still_serves(user, echo_node)
    assert echo_node.metrics.bad_requests == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_unknown_model(user: Host, llama_node: MimirNode, openai_server: OpenAIServer) -> None:
    error = await expect_error(
        user,
        llama_node,
        {"event": "message", "request_id": "m", "data": {"messages": HELLO, "model": "gpt-9"}},
    )
    assert error["type"] == "model_not_found"
    assert openai_server.chat_requests == []


async def test_backend_500(user: Host, llama_node: MimirNode, openai_server: OpenAIServer) -> None:
    openai_server.fail_status, openai_server.fail_count = 500, 1
    error = await expect_error(user, llama_node, {"event": "message", "data": {"messages": HELLO}})
    assert error["type"] == "backend_error"
    assert "500" in error["message"]
    await still_serves(user, llama_node)


async def test_backend_closes_mid_stream(
    user: Host, llama_node: MimirNode, openai_server: OpenAIServer
) -> None:
    openai_server.die_after_chunks = 2
    out = await request(
        user, llama_node, packets.CHAT_PROTOCOL, {"event": "message", "data": {"messages": HELLO}}
    )
    assert [p["event"] for p in out] == ["completionPacket", "completionPacket", "completionStop"]
    assert out[-1]["data"]["error"]["type"] == "backend_error"
    openai_server.die_after_chunks = None
    await still_serves(user, llama_node)


async def test_backend_hangs(user: Host, node_host: Host, openai_server: OpenAIServer) -> None:
    async with MimirNode(node_host, OpenAIBackend(openai_server.base_url, timeout=0.5)) as node:
        openai_server.hang = True
        error = await expect_error(user, node, {"event": "message", "data": {"messages": HELLO}})
    assert error["type"] == "backend_timeout"


async def test_backend_down(user: Host, node_host: Host) -> None:
    srv = OpenAIServer(models=[LLAMA])
    async with srv:
        backend = OpenAIBackend(srv.base_url, timeout=2.0)
        node = MimirNode(node_host, backend)
        await node.start()
    try:
        error = await expect_error(user, node, {"event": "message", "data": {"messages": HELLO}})
        assert error["type"] == "backend_error"  # the word for it; the metrics keep the cause
        assert error["message"].startswith("the node's backend is not answering: ")
        assert node.metrics.backend_errors["backend_unavailable"] == 1
    finally:
        await node.stop()


async def test_requests_are_served_concurrently(
    user: Host, llama_node: MimirNode, openai_server: OpenAIServer
) -> None:
    openai_server.first_chunk_delay = 0.3
    both = asyncio.gather(*(still_serves(user, llama_node) for _ in range(2)))
    await openai_server.wait_until(lambda: openai_server.open_streams == 2, 5)
    await asyncio.wait_for(both, 10)


async def test_client_leaving_cancels_the_backend_request(
    user: Host, llama_node: MimirNode, openai_server: OpenAIServer, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, "mimirlite")
    openai_server.delay = 0.2
    stream = await user.new_stream(llama_node.host.listen_addrs[0], packets.CHAT_PROTOCOL)
    await stream.write_json({"event": "message", "data": {"messages": HELLO * 1}})
    await stream.close_write()
    assert (await stream.read_json())["event"] == "completionPacket"
    await stream.reset()
    await asyncio.wait_for(openai_server.stream_cancelled.wait(), 5)
    assert openai_server.streams_completed == 0
    assert "client left mid-answer" in caplog.text
    openai_server.delay = 0
    await still_serves(user, llama_node)


# --- MimirClient -------------------------------------------------------------------------------


async def test_client_learns_models_and_streams_chunks(llama_node: MimirNode) -> None:
    from openai.types.chat import ChatCompletionChunk

    async with MimirClient(peers=llama_node.host.listen_addrs) as client:
        assert client.nodes == {llama_node.host.peer_id: [LLAMA]}
        assert client.nodes_for(LLAMA_CID) == [llama_node.host.peer_id]
        chunks = [c async for c in client.chat(HELLO, model=LLAMA, temperature=0.5)]
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hello big wide world"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_client_raises_the_nodes_error(llama_node: MimirNode, openai_server: OpenAIServer) -> None:
    openai_server.fail_status = 503
    async with MimirClient(peers=llama_node.host.listen_addrs) as client:
        with pytest.raises(RemoteError) as info:
            [c async for c in client.chat(HELLO)]
    assert info.value.type == "backend_error"
    assert "503" in str(info.value)


async def test_client_with_no_node() -> None:
    async with MimirClient() as client:
        assert not await client.wait_for_nodes(timeout=0.05)
        with pytest.raises(NoNodeError):
            [c async for c in client.chat(HELLO)]


async def test_client_reports_a_truncated_answer(node_host: Host, echo_node: MimirNode) -> None:
    async def cut_short(stream: Stream) -> None:
        await stream.read_json()
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "echo",
            "choices": [{"index": 0, "delta": {"content": "half"}, "finish_reason": None}],
        }
        await stream.write_json({"event": "completionPacket", "data": chunk})

    async with MimirClient(peers=node_host.listen_addrs) as client:
        node_host.set_handler(packets.CHAT_PROTOCOL, cut_short)
        seen = []
        with pytest.raises(TruncatedAnswerError):
            async for c in client.chat(HELLO):
                seen.append(c.choices[0].delta.content)
    assert seen == ["half"]


async def test_client_reports_a_reset_mid_answer_as_truncated(node_host: Host, echo_node: MimirNode) -> None:
    # A node that dies mid-answer: the stream is reset (or its connection drops) after some chunks.
    async def reset_midway(stream: Stream) -> None:
        await stream.read_json()
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "echo",
            "choices": [{"index": 0, "delta": {"content": "half"}, "finish_reason": None}],
        }
        await stream.write_json({"event": "completionPacket", "data": chunk})
        await asyncio.wait_for(got_chunk.wait(), 5)
        await stream.reset()

    got_chunk = asyncio.Event()
    async with MimirClient(peers=node_host.listen_addrs) as client:
        node_host.set_handler(packets.CHAT_PROTOCOL, reset_midway)
        seen = []
        with pytest.raises(TruncatedAnswerError):
            async for c in client.chat(HELLO):
                seen.append(c.choices[0].delta.content)
                got_chunk.set()
    assert seen == ["half"]


async def test_client_fails_over_before_the_first_chunk(openai_server: OpenAIServer) -> None:
    async with (
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as bad_host,
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as good_host,
        OpenAIServer(models=[LLAMA]) as failing,
        MimirNode(bad_host, OpenAIBackend(failing.base_url)),
        MimirNode(good_host, OpenAIBackend(openai_server.base_url)),
        MimirClient(peers=bad_host.listen_addrs + good_host.listen_addrs) as client,
    ):
        assert set(client.nodes_for(LLAMA)) == {bad_host.peer_id, good_host.peer_id}
        assert client.rtt(bad_host.peer_id) is not None and client.rtt(good_host.peer_id) is not None
        # Make the failing node look nearest, so that it is asked first.
        client._rtt[bad_host.peer_id], client._rtt[good_host.peer_id] = 0.001, 0.002
        failing.fail_status = 500
        chunks = [c async for c in client.chat(HELLO, model=LLAMA)]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hello big wide world"
        assert len(failing.chat_requests) == 1


async def test_client_drops_a_node_that_disconnects(openai_server: OpenAIServer) -> None:
    async with MimirClient() as client:
        async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, EchoBackend()):
            assert await client.add_peer(host.listen_addrs[0]) == ["echo"]
            assert await client.wait_for_nodes("echo", 1)
            peer = host.peer_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while peer in client.nodes and loop.time() < deadline:
            await asyncio.wait_for(client._changed.wait(), deadline - loop.time())
        assert client.nodes == {}


async def test_client_leaving_mid_answer_resets_the_stream(
    llama_node: MimirNode, openai_server: OpenAIServer
) -> None:
    openai_server.delay = 0.2
    async with MimirClient(peers=llama_node.host.listen_addrs) as client:
        answer = client.chat(HELLO)
        first = await answer.__anext__()
        assert first.choices[0].delta.role == "assistant"
        await answer.aclose()
        await asyncio.wait_for(openai_server.stream_cancelled.wait(), 5)
        assert client._inflight == {}


async def test_client_prefers_the_least_busy_then_the_nearest_node() -> None:
    async with (
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as a,
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as b,
        MimirNode(a, EchoBackend()),
        MimirNode(b, EchoBackend()),
        MimirClient(peers=a.listen_addrs + b.listen_addrs) as client,
    ):
        rtt_a, rtt_b = client.rtt(a.peer_id), client.rtt(b.peer_id)
        assert rtt_a is not None and rtt_b is not None and rtt_a > 0 and rtt_b > 0
        client._rtt[a.peer_id], client._rtt[b.peer_id] = 0.002, 0.001
        assert client._candidates("echo") == [b.peer_id, a.peer_id]
        answer = client.chat(HELLO, model="echo")
        await answer.__anext__()  # b is now answering one request
        assert client._candidates("echo") == [a.peer_id, b.peer_id]
        await answer.aclose()
        assert client._candidates("echo") == [b.peer_id, a.peer_id]


async def test_node_given_models_does_not_ask_the_backend_again(user: Host, node_host: Host) -> None:
    async with OpenAIServer(models=["qwen2.5:0.5b", LLAMA]) as srv:
        backend = OpenAIBackend(srv.base_url, timeout=2.0)
        models = await backend.list_models()  # as the CLI checks the backend first
        async with MimirNode(node_host, backend, models=models) as node:
            assert srv.models_requests == 1
            assert node.models == ["qwen2.5:0.5b", LLAMA] and node.default_model == LLAMA
            query = {"event": "query", "request_id": "r", "data": None}
            out = await request(user, node, packets.MIMIR_IDENTIFY_PROTOCOL, query)
            assert out == [{"event": "response", "request_id": "r", "data": ["qwen2.5:0.5b", LLAMA]}]
            await still_serves(user, node)
        assert srv.models_requests == 1
    with pytest.raises(BackendError, match="serves no model"):  # given models are checked as asked ones
        await MimirNode(node_host, EchoBackend(), models=[]).start()
