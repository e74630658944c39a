"""Self-check of the latest-generation JS peers: latest-client.mjs <-> latest-node.mjs, backend =
tests/helpers/openai_server.py (its Ollama-like ``GET /api/tags`` and ``DELETE /api/delete`` included).

Proves the JS stand-ins for sahilpohare/mimir-llm 464ffe1 (and jslatest.py) behave as WIRE.md describes
before they are paired with mimirlite, defects included.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from jslatest import (
    DEFAULT_MODEL,
    EXIT_ERROR,
    EXIT_NOT_SERVED,
    JsLatestNode,
    bootstrap_available,
    run_latest_client,
)

from mimirlite.mimir.models import tunnel_protocol
from tests.helpers.openai_server import OpenAIServer

PROMPT = "the quick brown fox jumps"
OTHER = "other/model:7b"


@pytest.fixture
async def srv() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer(models=[DEFAULT_MODEL, OTHER]) as server:
        yield server


@pytest.fixture
async def node(srv: OpenAIServer) -> AsyncIterator[JsLatestNode]:
    n = await JsLatestNode.start(srv.url)
    try:
        yield n
    finally:
        await n.stop()
    assert n.returncode == 0, n.stderr_tail()
    assert not n.uncaught(), n.stderr_tail()


def test_protocol_ids() -> None:
    assert tunnel_protocol("llama3.2:latest") == "/mimir/llama3.2-latest/1.0.0"
    assert tunnel_protocol("other/model:7b") == "/mimir/other-model-7b/1.0.0"
    assert tunnel_protocol("a_b-c.d") == "/mimir/a_b-c.d/1.0.0"


async def test_node_registers_models_of_api_tags(srv: OpenAIServer, node: JsLatestNode) -> None:
    assert node.peer_id.startswith("12D3KooW") and node.addr.endswith("/p2p/" + node.peer_id)
    assert node.models == [DEFAULT_MODEL, OTHER]
    assert node.protocols == ["/mimir/llama3.2-latest/1.0.0", "/mimir/other-model-7b/1.0.0"]
    assert [(r.method, r.path) for r in srv.requests] == [("GET", "/api/tags")]


async def test_chat_roundtrip(srv: OpenAIServer, node: JsLatestNode) -> None:
    res = await run_latest_client(node.addr, "--prompt", PROMPT, timeout=30)
    assert res.ok, res.stderr
    assert res.text == PROMPT and res.result["finish_reason"] == "stop"
    # the openai SDK decoded exactly the chunks the backend streamed
    assert res.chunks == srv.sent_chunks[0]
    # the backend got the SDK's request, path kept
    chat = srv.requests[-1]
    assert (chat.method, chat.path) == ("POST", "/v1/chat/completions")
    assert chat.json == {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
    }
    assert chat.headers["user-agent"].startswith("OpenAI/JS 4.")
    # the node forwarded the backend's headers as they are: the de-chunked body under a chunked header
    (http,) = res.http
    assert http["protocol"] == "/mimir/llama3.2-latest/1.0.0"
    assert (http["status"], http["reason"]) == (200, "OK")
    headers = dict(http["headers"])
    assert headers["transfer-encoding"] == "chunked"
    assert headers["content-type"].startswith("text/event-stream")
    sse = b"".join(f"data: {json.dumps(c, separators=(',', ':'))}\n\n".encode() for c in srv.sent_chunks[0])
    assert http["body_bytes"] == len(sse + b"data: [DONE]\n\n")
    # the client wrote one plain HTTP/1.1 request and closed its write side
    (request,) = node.events_named("request")
    assert (request["method"], request["path"]) == ("POST", "/v1/chat/completions")
    names = [k.lower() for k, _ in request["headers"]]
    assert {"host", "connection", "content-length"} <= set(names)
    assert dict((k.lower(), v) for k, v in request["headers"])["connection"] == "close"
    (response,) = node.events_named("response")
    assert response["ok"] is True and response["status"] == 200


async def test_chat_not_streamed(srv: OpenAIServer, node: JsLatestNode) -> None:
    res = await run_latest_client(node.addr, "--prompt", "hello there", "--no-stream", timeout=30)
    assert res.ok and res.text == "hello there", res.stderr
    assert res.chunks == [] and srv.requests[-1].json["stream"] is False


async def test_chat_other_model(srv: OpenAIServer, node: JsLatestNode) -> None:
    res = await run_latest_client(node.addr, "--model", OTHER, "--prompt", PROMPT, timeout=30)
    assert res.ok and res.text == PROMPT, res.stderr
    assert res.http[0]["protocol"] == "/mimir/other-model-7b/1.0.0"
    assert srv.chat_requests[-1]["model"] == OTHER


async def test_probe_served_and_unserved(srv: OpenAIServer, node: JsLatestNode) -> None:
    res = await run_latest_client(
        node.addr, "--probe", DEFAULT_MODEL, "--probe", "absent:1b", "--probe", OTHER, timeout=30
    )
    assert res.ok, res.stderr
    assert res.probes == {DEFAULT_MODEL: True, "absent:1b": False, OTHER: True}
    # a probe is an empty request: answered with nothing, nothing reaches the backend
    probes = node.events_named("probe")
    assert sorted(p["protocol"] for p in probes) == [
        "/mimir/llama3.2-latest/1.0.0",
        "/mimir/other-model-7b/1.0.0",
    ]
    assert node.events_named("request") == [] and res.http == []
    assert [(r.method, r.path) for r in srv.requests] == [("GET", "/api/tags")]


async def test_chat_unserved_model(srv: OpenAIServer, node: JsLatestNode) -> None:
    res = await run_latest_client(node.addr, "--model", "absent:1b", "--prompt", PROMPT, timeout=30)
    assert res.returncode == EXIT_NOT_SERVED and not res.ok
    assert srv.chat_requests == []


async def test_backend_error_status_passes_through(srv: OpenAIServer, node: JsLatestNode) -> None:
    srv.fail_status = 500
    srv.fail_count = 1
    res = await run_latest_client(node.addr, "--prompt", PROMPT, timeout=30)
    assert res.returncode == EXIT_ERROR and res.result["status"] == 500, res.stderr
    assert res.http[0]["status"] == 500
    res = await run_latest_client(node.addr, "--prompt", PROMPT, timeout=30)
    assert res.ok and res.text == PROMPT


async def test_defect_any_method_and_path_reaches_backend(srv: OpenAIServer, node: JsLatestNode) -> None:
    """WIRE.md's defect, reproduced: the latest node forwards DELETE /api/delete to the operator's backend."""
    body = json.dumps({"model": OTHER})
    res = await run_latest_client(node.addr, "--raw", "DELETE", "/api/delete", "--body", body, timeout=30)
    assert res.ok, res.stderr
    assert res.result["status"] == 200
    deletes = [r for r in srv.requests if r.path == "/api/delete"]
    assert len(deletes) == 1 and deletes[0].method == "DELETE" and deletes[0].json == {"model": OTHER}
    assert srv.deleted_models == [OTHER] and srv.models == [DEFAULT_MODEL]
    # any other path, too, keeping it (the test server answers its own 404)
    res = await run_latest_client(
        node.addr, "--raw", "POST", "/api/pull", "--body", '{"model":"x"}', timeout=30
    )
    assert res.ok and res.result["status"] == 404, res.stderr
    assert srv.requests[-1].path == "/api/pull"


@pytest.mark.skipif(not bootstrap_available(), reason="@libp2p/bootstrap not installed (npm ci in interop/)")
async def test_bootstrap_flag_dials_listed_peer(srv: OpenAIServer, node: JsLatestNode) -> None:
    """A latest node given --bootstrap (as the original lists bootstrap peers) dials that peer by itself."""
    async with await JsLatestNode.start(srv.url, "--bootstrap", node.addr, "--dht") as other:
        opened = await node.next_event("connection:open", timeout=20)
        assert opened["peerId"] == other.peer_id and opened["direction"] == "inbound"
        res = await run_latest_client(other.addr, "--prompt", PROMPT, "--bootstrap", node.addr, timeout=30)
        assert res.ok and res.text == PROMPT, res.stderr
        assert not other.uncaught(), other.stderr_tail()


async def test_same_sanitized_name_first_wins() -> None:
    async with OpenAIServer(models=["a:1b", "a/1b", "b"]) as server:
        async with await JsLatestNode.start(server.url) as n:
            assert n.models == ["a:1b", "a/1b", "b"]
            assert n.protocols == ["/mimir/a-1b/1.0.0", "/mimir/b/1.0.0"]
            assert "model a/1b not served: /mimir/a-1b/1.0.0 is already a:1b's" in n.stderr_tail()
            res = await run_latest_client(n.addr, "--model", "a:1b", "--prompt", PROMPT, timeout=30)
            assert res.ok and res.text == PROMPT, res.stderr
        assert n.returncode == 0 and not n.uncaught()


async def test_backend_dies_mid_answer_resets_stream(srv: OpenAIServer, node: JsLatestNode) -> None:
    srv.delay = 0.02
    srv.die_after_chunks = 3
    res = await run_latest_client(node.addr, "--prompt", PROMPT, timeout=30)
    assert res.returncode == EXIT_ERROR and not res.ok, res.stderr
    assert res.chunks == [] and res.http == []  # the buffered answer never reached the SDK
    response = await node.next_event("response", timeout=10)
    assert response["ok"] is False and response["status"] == 200 and response["error"]
    srv.die_after_chunks = None
    res = await run_latest_client(node.addr, "--prompt", PROMPT, timeout=30)
    assert res.ok and res.text == PROMPT
