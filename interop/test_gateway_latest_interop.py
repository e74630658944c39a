"""The gateway in front of a LATEST-generation JS node (latest-node.mjs, one ``/mimir/<model>/1.0.0`` tunnel
per model, raw HTTP/1.1 to its backend, tests/helpers/openai_server.py): the openai SDK (chat streamed and
not, embeddings, completions), curl and ollama-python (chat, generate, embed) get their answers through it; a
backend error status passes through; the paths that manage models stay 403 at the gateway.

Every process and server a test starts is stopped by it; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import openai
import pytest
from jslatest import DEFAULT_MODEL, JsLatestNode

from mimirlite.gateway import Gateway
from mimirlite.mimir import MimirClient
from mimirlite.mimir.client import LATEST
from tests.helpers.openai_server import OpenAIServer, embedding

ollama = pytest.importorskip("ollama")

pytestmark = [
    pytest.mark.usefixtures("no_leaks"),
]

PROMPT = "the quick brown fox jumps"
TIMEOUT = 20.0


@contextlib.asynccontextmanager
async def latest_gateway(srv: OpenAIServer) -> AsyncIterator[Gateway]:
    """A latest JS node in front of ``srv`` behind a gateway; the node must exit cleanly, without a crash."""
    node = await JsLatestNode.start(srv.url)
    try:
        async with MimirClient([node.addr], mdns=False) as client, Gateway(client, port=0) as gateway:
            (peer,) = client.nodes_for(DEFAULT_MODEL)
            assert client.generation(peer) == LATEST
            yield gateway
            assert gateway.active_requests == 0
    finally:
        await node.stop()
    assert node.returncode == 0, node.stderr_tail()
    assert not node.uncaught(), node.stderr_tail()


@contextlib.asynccontextmanager
async def sdk(gw: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=gw.base_url, api_key="unused", max_retries=0, timeout=TIMEOUT
    ) as client:
        yield client


async def curl(*args: str) -> bytes:
    """``curl -sN ARGS``'s stdout (the process is reaped, killed if it overruns)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sN", "--max-time", str(int(TIMEOUT)), *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT + 5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out


async def test_the_sdk_chat_embeddings_and_completions_through_a_latest_node() -> None:
    async with OpenAIServer(models=[DEFAULT_MODEL]) as srv, latest_gateway(srv) as gw, sdk(gw) as client:
        messages = [{"role": "user", "content": PROMPT}]
        stream = await client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, stream=True)
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == PROMPT
        assert chunks[-1].choices[0].finish_reason == "stop"
        answer = await client.chat.completions.create(model=DEFAULT_MODEL, messages=messages)
        assert answer.choices[0].message.content == PROMPT

        vectors = await client.embeddings.create(model=DEFAULT_MODEL, input=["one", "two"])
        assert [d.embedding for d in vectors.data] == [embedding("one"), embedding("two")]
        whole = await client.completions.create(model=DEFAULT_MODEL, prompt="once upon a time")
        assert whole.choices[0].text == "once upon a time"
        streamed = await client.completions.create(model=DEFAULT_MODEL, prompt="a b", stream=True)
        pieces = [c async for c in streamed]
        assert "".join(c.choices[0].text for c in pieces) == "a b"
        assert [r.path for r in srv.requests if r.method == "POST"] == [
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/embeddings",
            "/v1/completions",
            "/v1/completions",
        ]


async def test_curl_through_a_latest_node() -> None:
    async with OpenAIServer(models=[DEFAULT_MODEL]) as srv, latest_gateway(srv) as gw:
        messages = [{"role": "user", "content": PROMPT}]
        body = json.dumps({"model": DEFAULT_MODEL, "messages": messages, "stream": True})
        out = await curl(
            "-H", "content-type: application/json", "-d", body, f"{gw.base_url}/chat/completions"
        )
        events = [e for e in out.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        text = "".join(
            json.loads(e[len(b"data: ") :])["choices"][0]["delta"].get("content") or "" for e in events[:-1]
        )
        assert text == PROMPT
        body = json.dumps({"model": DEFAULT_MODEL, "input": "hello"})
        out = await curl(
            "-i", "-H", "content-type: application/json", "-d", body, f"{gw.base_url}/embeddings"
        )
        head, _, payload = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"content-type: application/json" in head.lower()
        assert json.loads(payload)["data"][0]["embedding"] == embedding("hello")


async def test_ollama_python_chat_generate_embed_through_a_latest_node() -> None:
    async with (
        OpenAIServer(models=[DEFAULT_MODEL]) as srv,
        latest_gateway(srv) as gw,
        ollama.AsyncClient(host=gw.url, timeout=TIMEOUT) as client,
    ):
        answer = await client.chat(model=DEFAULT_MODEL, messages=[{"role": "user", "content": PROMPT}])
        assert answer.message.content == PROMPT and answer.done
        stream = await client.chat(
            model="llama3.2", messages=[{"role": "user", "content": "a b"}], stream=True
        )
        parts = [p async for p in stream]
        assert "".join(p.message.content or "" for p in parts) == "a b" and parts[-1].done
        generated = await client.generate(model=DEFAULT_MODEL, prompt="hello there")
        assert generated.response == "hello there"
        vectors = await client.embed(model=DEFAULT_MODEL, input=["x", "y"])
        assert [list(v) for v in vectors.embeddings] == [embedding("x"), embedding("y")]
        assert [r.path for r in srv.requests if r.path == "/api/embed"] == ["/api/embed"]


async def test_a_backend_error_status_passes_through_a_latest_node() -> None:
    async with OpenAIServer(models=[DEFAULT_MODEL]) as srv, latest_gateway(srv) as gw, sdk(gw) as client:
        messages = [{"role": "user", "content": PROMPT}]
        srv.fail_status, srv.fail_count, srv.fail_message = 429, 1, "slow down"
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model=DEFAULT_MODEL, messages=messages)
        assert limited.value.status_code == 429 and "slow down" in str(limited.value)
        srv.fail_status, srv.fail_count, srv.fail_message = 400, 1, "bad prompt"
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, stream=True)
        assert "bad prompt" in str(bad.value)
        srv.fail_status, srv.fail_count, srv.fail_message = 500, 1, "embedder down"
        with pytest.raises(openai.InternalServerError) as down:
            await client.embeddings.create(model=DEFAULT_MODEL, input="x")
        assert down.value.status_code == 500 and "embedder down" in str(down.value)
        answer = await client.chat.completions.create(model=DEFAULT_MODEL, messages=messages)
        assert answer.choices[0].message.content == PROMPT


async def test_management_paths_stay_403_at_the_gateway() -> None:
    async with OpenAIServer(models=[DEFAULT_MODEL]) as srv, latest_gateway(srv) as gw:
        before = len(srv.requests)
        for method, path in [("POST", "/api/pull"), ("DELETE", "/api/delete"), ("POST", "/api/create"),
                             ("POST", "/api/copy"), ("POST", "/api/push")]:  # fmt: skip
            out = await curl("-i", "-X", method, "-H", "content-type: application/json",
                             "-d", json.dumps({"model": DEFAULT_MODEL}), f"{gw.url}{path}")  # fmt: skip
            assert out.startswith(b"HTTP/1.1 403"), out
        assert len(srv.requests) == before and srv.deleted_models == []
        assert gw.metrics.refused["forbidden_path"] == 5
