"""The mimirlite client (library and ``chat`` CLI) against the latest-generation JS node (latest-node.mjs,
in front of tests/helpers/openai_server.py): identify-based discovery of the real model names through the
tunnel, streamed chats, errors, a node killed mid-answer, the raw ``request()`` tunnel; and a node speaking
both generations reached on the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
from jslatest import DEFAULT_MODEL, JsLatestNode

from mimirlite import Host, Stream
from mimirlite.errors import StreamResetError
from mimirlite.mimir import EchoBackend, MimirClient, MimirNode, RemoteError, TruncatedAnswerError
from mimirlite.mimir.client import FIRST, LATEST, HttpRemoteError, NoNodeError
from mimirlite.mimir.models import tunnel_protocol
from tests.helpers import until
from tests.helpers.nodeproc import cli, make_env
from tests.helpers.openai_server import OpenAIServer

PROMPT = "the quick brown fox jumps"
USER = {"role": "user", "content": PROMPT}
OTHER = "other/model:7b"
TIMEOUT = 20.0


@pytest.fixture
async def srv() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer(models=[DEFAULT_MODEL, OTHER]) as server:
        yield server


@contextlib.asynccontextmanager
async def latest_node(backend_url: str, *, killed: bool = False) -> AsyncIterator[JsLatestNode]:
    node = await JsLatestNode.start(backend_url)
    try:
        yield node
    finally:
        await node.stop()
    assert node.returncode == (-signal.SIGKILL if killed else 0), node.stderr_tail()
    assert not node.uncaught(), node.stderr_tail()


async def collect(chat: AsyncIterator[Any], timeout: float = TIMEOUT) -> list[Any]:
    async def run() -> list[Any]:
        return [c async for c in chat]

    return await asyncio.wait_for(run(), timeout)


async def test_discovery_asks_v1_models_through_the_tunnel(srv: OpenAIServer) -> None:
    async with latest_node(srv.url) as js, MimirClient(peers=[js.addr]) as client:
        # real names, not the sanitized ones of the protocol IDs
        assert {str(p): m for p, m in client.nodes.items()} == {js.peer_id: [DEFAULT_MODEL, OTHER]}
        (peer,) = client.nodes
        assert client.generation(peer) == LATEST
        assert client.tunnels(peer) == {
            DEFAULT_MODEL: "/mimir/llama3.2-latest/1.0.0",
            OTHER: "/mimir/other-model-7b/1.0.0",
        }
        # once: one GET /v1/models through the tunnel, and no probe dial
        assert [(r.method, r.path) for r in srv.requests] == [("GET", "/api/tags"), ("GET", "/v1/models")]
        assert js.events_named("probe") == []
        # asked again on the same connection: the names are known
        assert await client.identify(peer) == [DEFAULT_MODEL, OTHER]
        assert [r.path for r in srv.requests] == ["/api/tags", "/v1/models"]


async def test_discovery_falls_back_to_api_tags(srv: OpenAIServer) -> None:
    async with latest_node(srv.url) as js:
        srv.fail_status, srv.fail_count = 404, 1  # the next request: GET /v1/models
        async with MimirClient(peers=[js.addr]) as client:
            assert list(client.nodes.values()) == [[DEFAULT_MODEL, OTHER]]
            paths = [r.path for r in srv.requests]
            assert paths[-2:] == ["/v1/models", "/api/tags"]


async def test_streamed_chat_equals_what_the_server_streamed(srv: OpenAIServer) -> None:
    async with latest_node(srv.url) as js, MimirClient(peers=[js.addr]) as client:
        from openai.types.chat import ChatCompletionChunk

        chunks = await collect(client.chat([USER], model=OTHER))
        assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
        (sent,) = srv.sent_chunks
        assert [c.model_dump(mode="json", exclude_unset=True) for c in chunks] == sent
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == PROMPT
        assert srv.chat_requests == [{"model": OTHER, "messages": [USER], "stream": True}]
        (request,) = [e for e in js.events_named("request") if e["method"] == "POST"]
        assert (request["method"], request["path"]) == ("POST", "/v1/chat/completions")
        assert request["protocol"] == "/mimir/other-model-7b/1.0.0"
        assert all(e["ok"] and e["status"] == 200 for e in js.events_named("response"))
        # no model named: the node's first model
        chunks = await collect(client.chat([{"role": "user", "content": "any model"}]))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "any model"
        assert srv.chat_requests[-1]["model"] == DEFAULT_MODEL
        assert client._inflight == {}


async def test_backend_error_status_is_a_remote_error(srv: OpenAIServer) -> None:
    async with latest_node(srv.url) as js, MimirClient(peers=[js.addr]) as client:
        srv.fail_status, srv.fail_count, srv.fail_message = 500, 1, "the backend broke"
        with pytest.raises(HttpRemoteError) as info:
            await collect(client.chat([USER]))
        assert isinstance(info.value, RemoteError)
        assert info.value.status == 500 and info.value.message == "the backend broke"
        assert info.value.type == "server_error"
        # an unknown model: the backend's own 404
        with pytest.raises(NoNodeError):
            await collect(client.chat([USER], model="absent:1b"))
        chunks = await collect(client.chat([USER]))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == PROMPT


async def test_failover_between_latest_nodes_before_the_first_chunk(srv: OpenAIServer) -> None:
    async with (
        latest_node(srv.url) as a,
        latest_node(srv.url) as b,
        MimirClient(peers=[a.addr, b.addr]) as client,
    ):
        assert len(client.nodes_for(OTHER)) == 2
        srv.fail_status, srv.fail_count = 500, 1
        chunks = await collect(client.chat([USER], model=OTHER))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == PROMPT
        assert len(srv.chat_requests) == 2
        # each node got one chat: the failing one, then the other
        await until(
            lambda: all(any(e["method"] == "POST" for e in n.events_named("request")) for n in (a, b))
        )


async def test_node_killed_mid_answer_is_truncated(srv: OpenAIServer) -> None:
    srv.delay = 0.05
    srv.reply = "word " * 200
    async with latest_node(srv.url, killed=True) as js, MimirClient(peers=[js.addr]) as client:
        seen: list[str | None] = []

        async def consume() -> None:
            async for c in client.chat([USER]):
                seen.append(c.choices[0].delta.content)
                if len(seen) == 3:
                    await js.kill()

        with pytest.raises(TruncatedAnswerError):
            await asyncio.wait_for(consume(), TIMEOUT)
        assert seen[:3] == ["", "word", " word"] and len(seen) < 200
        assert client._inflight == {}


async def test_backend_dies_mid_answer_is_truncated(srv: OpenAIServer) -> None:
    srv.delay = 0.02
    srv.die_after_chunks = 3
    async with latest_node(srv.url) as js, MimirClient(peers=[js.addr]) as client:
        seen: list[Any] = []
        with pytest.raises(TruncatedAnswerError):
            async for c in client.chat([USER]):
                seen.append(c)
        assert len(seen) <= 3
        models = await js.next_event("response", timeout=TIMEOUT)  # discovery's GET /v1/models
        chat = await js.next_event("response", timeout=TIMEOUT)
        assert models["ok"] is True and chat["ok"] is False


async def test_request_gives_the_raw_tunnel(srv: OpenAIServer) -> None:
    async with latest_node(srv.url) as js, MimirClient(peers=[js.addr]) as client:
        status, headers, body = await client.request(OTHER, "GET", "/api/tags")
        raw = b"".join([piece async for piece in body])
        assert status == 200 and dict(headers)["content-type"].startswith("application/json")
        assert [m["name"] for m in json.loads(raw)["models"]] == [DEFAULT_MODEL, OTHER]
        assert srv.requests[-1].path == "/api/tags"
        (request,) = [e for e in js.events_named("request") if e["path"] == "/api/tags"]
        assert request["protocol"] == "/mimir/other-model-7b/1.0.0"
        # a body object goes as JSON, the streamed SSE body arrives as it is (its header says chunked)
        body_obj = {"model": DEFAULT_MODEL, "messages": [USER], "stream": True}
        status, headers, body = await client.request(DEFAULT_MODEL, "POST", "/v1/chat/completions", body_obj)
        raw = b"".join([piece async for piece in body])
        assert status == 200 and dict(headers)["transfer-encoding"] == "chunked"
        sse = b"".join(
            f"data: {json.dumps(c, separators=(',', ':'))}\n\n".encode() for c in srv.sent_chunks[-1]
        )
        assert raw == sse + b"data: [DONE]\n\n"
        with pytest.raises(NoNodeError):
            await client.request("absent:1b", "GET", "/api/tags")


async def test_chat_cli_reaches_a_latest_node(srv: OpenAIServer) -> None:
    async with latest_node(srv.url) as js:
        res = await cli("chat", "--peer", js.addr, "--model", OTHER, "-p", PROMPT, env=make_env())
        assert res.rc == 0, res.err
        assert PROMPT in res.out
        assert srv.chat_requests == [{"model": OTHER, "messages": [USER], "stream": True}]


async def test_peers_cli_shows_real_names_and_generation(srv: OpenAIServer) -> None:
    env = make_env()
    async with (
        latest_node(srv.url) as js,
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host,
        MimirNode(host, EchoBackend()),
    ):
        res = await cli("peers", "--peer", js.addr, "--peer", host.listen_addrs[0], env=env)
    assert res.rc == 0, res.err
    lines = {line.split()[0]: line for line in res.out.splitlines()}
    assert set(lines) == {js.peer_id, str(host.peer_id)}
    _, models, rest = lines[js.peer_id].split("  ", 2)
    assert models == f"{DEFAULT_MODEL}, {OTHER}" and rest.endswith("  [latest, direct]")
    _, models, rest = lines[str(host.peer_id)].split("  ", 2)
    assert models == "echo" and rest.endswith("  [first, direct]")


async def test_node_speaking_both_generations_is_reached_on_the_first() -> None:
    """A mimirlite node that also serves the model's tunnel: the client learns both, chats on the first
    generation and opens no tunnel (not even to ask the names)."""
    tunneled: list[str] = []

    async def tunnel(stream: Stream) -> None:
        tunneled.append(stream.protocol)
        await stream.reset()

    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, EchoBackend(DEFAULT_MODEL)):
        host.set_handler(tunnel_protocol(DEFAULT_MODEL), tunnel)
        async with MimirClient(peers=[host.listen_addrs[0]]) as client:
            (peer,) = client.nodes
            assert client.generation(peer) == FIRST
            assert client.nodes[peer] == [DEFAULT_MODEL]
            assert client.tunnels(peer) == {DEFAULT_MODEL: "/mimir/llama3.2-latest/1.0.0"}
            chunks = await collect(client.chat([USER]))
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == PROMPT
            assert tunneled == []
            # the raw tunnel still goes to the tunnel (whose reset may overtake the end of the negotiation)
            with pytest.raises((TruncatedAnswerError, StreamResetError)):
                await client.request(DEFAULT_MODEL, "GET", "/api/tags")
            assert tunneled == ["/mimir/llama3.2-latest/1.0.0"]
