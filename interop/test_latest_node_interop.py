"""The latest MimirLLM generation's client (interop/latest-client.mjs, as sahilpohare/mimir-llm 464ffe1
behaves) against a mimirlite node: it finds the node's models by probing ``/mimir/<model>/1.0.0``, chats
through the tunnel with the openai SDK, and meets the node's allowlist where the original forwards
anything to its backend."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from jslatest import DEFAULT_MODEL, run_latest_client

from mimirlite import Host
from mimirlite.mimir import EchoBackend, MimirNode, OpenAIBackend
from mimirlite.mimir.backends import Backend
from tests.helpers.openai_server import OpenAIServer

PROMPT = "the quick brown fox jumps"


@contextlib.asynccontextmanager
async def mimir_node(backend: Backend) -> AsyncIterator[tuple[MimirNode, str]]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, backend) as node:
        yield node, host.listen_addrs[0]


@pytest.fixture
async def srv() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer(models=[DEFAULT_MODEL]) as server:
        yield server


async def test_latest_client_probes_and_chats_with_an_echo_node() -> None:
    async with mimir_node(EchoBackend(DEFAULT_MODEL)) as (node, addr):
        res = await run_latest_client(addr, "--probe", DEFAULT_MODEL, "--probe", "absent:1b", timeout=30)
        assert res.ok and res.probes == {DEFAULT_MODEL: True, "absent:1b": False}, res.stderr
        assert node.metrics.requests == 0  # a probe is no request
        res = await run_latest_client(addr, "--prompt", PROMPT, timeout=30)
        assert res.ok and res.text == PROMPT, res.stderr
        assert res.http[0]["protocol"] == "/mimir/llama3.2-latest/1.0.0" and res.http[0]["status"] == 200
        res = await run_latest_client(addr, "--prompt", PROMPT, "--no-stream", timeout=30)
        assert res.ok and res.text == PROMPT, res.stderr
        assert node.metrics.served == 2


async def test_latest_client_through_a_node_in_front_of_an_openai_server(srv: OpenAIServer) -> None:
    async with mimir_node(OpenAIBackend(srv.base_url, timeout=5.0)) as (_node, addr):
        res = await run_latest_client(addr, "--prompt", PROMPT, timeout=30)
        assert res.ok and res.text == PROMPT, res.stderr
        assert res.chunks == srv.sent_chunks[0]  # the SDK decoded what the backend streamed
        chat = srv.requests[-1]
        assert (chat.method, chat.path) == ("POST", "/v1/chat/completions")
        assert chat.json["model"] == DEFAULT_MODEL and chat.json["stream"] is True


async def test_management_paths_are_refused_and_never_reach_the_backend(srv: OpenAIServer) -> None:
    """Where the original node forwards DELETE /api/delete (and any path) to its backend, ours answers 403."""
    async with mimir_node(OpenAIBackend(srv.base_url, timeout=5.0)) as (node, addr):
        before, refused = len(srv.requests), node.metrics.bad_requests
        for method, path in (("DELETE", "/api/delete"), ("POST", "/api/pull"), ("POST", "/api/create")):
            body = json.dumps({"model": DEFAULT_MODEL})
            res = await run_latest_client(addr, "--raw", method, path, "--body", body, timeout=30)
            assert res.result["status"] == 403, res.stderr
            assert "not allowed here" in json.loads(res.result["body"])["error"]["message"]
        assert len(srv.requests) == before and srv.deleted_models == []
        assert node.metrics.bad_requests == refused + 3
        res = await run_latest_client(addr, "--prompt", PROMPT, timeout=30)  # and it serves on
        assert res.ok and res.text == PROMPT, res.stderr
