"""Self-check of the JS mimir peers: mimir-client.mjs <-> mimir-node.mjs, backend =
tests/helpers/openai_server.py.

Proves the JS reference node and client (and jsmimir.py) work before they are paired with mimirlite.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from jsmimir import (
    DEFAULT_MODEL,
    EXIT_IDENTIFY,
    EXIT_TRUNCATED,
    LLAMA_CID,
    JsMimirClient,
    JsMimirNode,
    run_js_client,
)

from tests.helpers.openai_server import OpenAIServer

PROMPT = "the quick brown fox jumps"
SYSTEM = {"role": "system", "content": "You are a helpful assistant"}


def _varint_len(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _lp_frame_sizes(packets: list[dict[str, Any]]) -> list[int]:
    """Chunk sizes of packets sent through the streaming lp.encode: varint, then body, for each."""
    sizes = []
    for p in packets:
        body = len(json.dumps(p, separators=(",", ":"), ensure_ascii=False).encode())
        sizes += [_varint_len(body), body]
    return sizes


@pytest.fixture
async def srv() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer(models=[DEFAULT_MODEL]) as server:
        yield server


@pytest.fixture
async def node(srv: OpenAIServer) -> AsyncIterator[JsMimirNode]:
    n = await JsMimirNode.start(srv.base_url)
    try:
        yield n
    finally:
        await n.stop()
    assert n.returncode == 0, n.stderr_tail()
    assert not n.uncaught(), n.stderr_tail()


async def test_chat_roundtrip(srv: OpenAIServer, node: JsMimirNode) -> None:
    assert node.peer_id.startswith("12D3KooW") and node.addr.endswith("/p2p/" + node.peer_id)
    assert node.models == [DEFAULT_MODEL]
    res = await run_js_client(node.addr, PROMPT, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.ok and res.text == PROMPT
    assert res.models == [DEFAULT_MODEL]
    # identify: query for the CID, response echoing the request_id with the model names
    ident = res.identify
    assert ident is not None and ident["cid"] == LLAMA_CID and ident["known"] == [DEFAULT_MODEL]
    assert ident["packet"] == {
        "event": "response",
        "request_id": ident["request_id"],
        "data": [DEFAULT_MODEL],
    }
    (query,) = node.events_named("identify_query")
    assert query["packet"] == {"event": "query", "request_id": ident["request_id"], "data": LLAMA_CID}
    # chat: one message packet without model or request_id
    (message,) = node.events_named("message")
    assert message["packet"] == {
        "event": "message",
        "data": {"messages": [SYSTEM, {"role": "user", "content": PROMPT}]},
    }
    # the backend got exactly what the original node asks
    assert srv.chat_requests == [
        {"model": DEFAULT_MODEL, "messages": [SYSTEM, {"role": "user", "content": PROMPT}], "stream": True}
    ]
    # every chunk went through untouched, as a completionPacket, with nothing before or after
    assert res.packets == [{"event": "completionPacket", "data": c} for c in srv.sent_chunks[0]]
    assert [d["content"] for d in res.deltas] == ["", "the", " quick", " brown", " fox", " jumps", None]
    assert res.deltas[-1]["finish_reason"] == "stop" and res.result["finish_reason"] == "stop"
    done = await node.next_event("completion", timeout=10)
    assert done["ok"] is True and done["packets"] == 7 and done["finish_reason"] == "stop"
    # streaming lp.encode: the varint and the JSON body of each packet travel as two yamux frames
    assert res.frame_sizes == _lp_frame_sizes(res.packets)
    assert message["frame_sizes"] == _lp_frame_sizes([message["packet"]])
    assert ident["frame_sizes"] == _lp_frame_sizes([ident["packet"]])
    assert query["frame_sizes"] == _lp_frame_sizes([query["packet"]])


async def test_sequential_and_concurrent_clients(srv: OpenAIServer, node: JsMimirNode) -> None:
    res = await run_js_client(node.addr, "one", "--no-system", timeout=30)
    assert res.ok and res.text == "one", res.stderr
    assert srv.chat_requests[0]["messages"] == [{"role": "user", "content": "one"}]
    results = await asyncio.gather(
        *(run_js_client(node.addr, f"client {i} here", timeout=30) for i in range(3))
    )
    assert sorted(r.text for r in results) == [f"client {i} here" for i in range(3)]
    assert all(r.ok for r in results), [r.stderr for r in results]
    assert srv.streams_completed == 4


async def test_identify_lists_other_models(srv: OpenAIServer) -> None:
    srv.models = ["other:7b"]
    async with await JsMimirNode.start(srv.base_url, models=["other:7b", "tiny:1b"]) as node:
        assert node.models == ["other:7b", "tiny:1b"]
        # the client only keeps nodes serving the model it knows for the CID
        res = await run_js_client(node.addr, PROMPT, timeout=30)
        assert res.returncode == EXIT_IDENTIFY and not res.ok
        assert res.models == ["other:7b", "tiny:1b"] and "does not serve" in res.result["error"]
        assert srv.chat_requests == []
        res = await run_js_client(node.addr, None, "--identify-only", "--any-model", timeout=30)
        assert res.returncode == 0 and res.models == ["other:7b", "tiny:1b"] and res.deltas == []
        # the node asks its backend for its first model
        res = await run_js_client(node.addr, "hi there", "--any-model", timeout=30)
        assert res.ok and res.text == "hi there", res.stderr
        assert srv.chat_requests[-1]["model"] == "other:7b"
        assert not node.uncaught()


async def test_truncated_answer_backend_dies(srv: OpenAIServer, node: JsMimirNode) -> None:
    srv.die_after_chunks = 3
    res = await run_js_client(node.addr, PROMPT, timeout=30)
    assert res.returncode == EXIT_TRUNCATED, res.stderr
    assert res.result["ok"] is False and "truncated" in res.result["error"]
    done = await node.next_event("completion", timeout=10)
    assert done["ok"] is False and done["backend_error"]
    # the client got every chunk the node forwarded (normally all 3 the backend sent; under load
    # the backend SDK may drop the last ones it had not parsed when it saw the connection close)
    contents = [d["content"] for d in res.deltas]
    assert len(contents) == done["packets"] and 1 <= len(contents) <= 3
    assert contents == ["", "the", " quick"][: len(contents)]
    assert res.packets == [
        {"event": "completionPacket", "data": c} for c in srv.sent_chunks[0][: len(contents)]
    ]
    # the node lives on
    srv.die_after_chunks = None
    res = await run_js_client(node.addr, PROMPT, timeout=30)
    assert res.ok and res.text == PROMPT


async def test_backend_error_status(srv: OpenAIServer) -> None:
    async with await JsMimirNode.start(srv.base_url, "--on-backend-error", "close") as node:
        srv.fail_status = 500
        res = await run_js_client(node.addr, PROMPT, timeout=30)
        assert res.returncode == EXIT_TRUNCATED and res.deltas == [], res.stderr
        done = await node.next_event("completion", timeout=10)
        assert done["ok"] is False and done["packets"] == 0 and "500" in done["backend_error"]
        assert "reset" not in done  # closed cleanly
        srv.fail_status = None
        srv.reply = "fine again"
        res = await run_js_client(node.addr, PROMPT, timeout=30)
        assert res.ok and res.text == "fine again"
        assert not node.uncaught()


async def test_client_leaving_mid_answer_cancels_backend(srv: OpenAIServer, node: JsMimirNode) -> None:
    srv.delay = 0.05
    srv.reply = "word " * 200
    res = await run_js_client(node.addr, PROMPT, "--abort-after", "3", timeout=30)
    assert res.returncode == 0 and res.result.get("aborted") is True, res.stderr
    assert len(res.deltas) == 3
    # the node saw the stream reset and dropped its backend request
    await asyncio.wait_for(srv.stream_cancelled.wait(), 10)
    done = await node.next_event("completion", timeout=10)
    assert done["ok"] is False
    assert len(srv.sent_chunks[0]) < 50


async def test_client_killed_mid_answer(srv: OpenAIServer, node: JsMimirNode) -> None:
    srv.delay = 0.05
    srv.reply = "word " * 200
    client = await JsMimirClient.start(node.addr, "--prompt", PROMPT)
    try:
        await client.next_event("delta", timeout=15)
        await client.kill()
    finally:
        await client.stop()
    await asyncio.wait_for(srv.stream_cancelled.wait(), 10)
    await node.next_event("connection:close", timeout=10)
    assert srv.streams_cancelled == 1


async def test_dht_flag(srv: OpenAIServer) -> None:
    async with await JsMimirNode.start(srv.base_url, "--dht") as node:
        res = await run_js_client(node.addr, PROMPT, "--dht", timeout=30)
        assert res.ok and res.text == PROMPT, res.stderr
        assert not node.uncaught()


async def test_backend_error_hang_mode(srv: OpenAIServer) -> None:
    async with await JsMimirNode.start(srv.base_url, "--on-backend-error", "hang") as node:
        srv.die_after_chunks = 2
        res = await run_js_client(node.addr, PROMPT, timeout=3)
        # the stream stays open: the client gives up at its own deadline
        assert res.returncode == EXIT_TRUNCATED and 1 <= len(res.deltas) <= 2, res.stderr
        assert "timed out" in res.result["error"]
        done = await node.next_event("completion", timeout=10)
        assert done["ok"] is False and done["reset"] is False
        assert not node.uncaught()
