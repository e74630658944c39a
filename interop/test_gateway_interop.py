"""The gateway in front of a JS MimirLLM node: the openai SDK and curl get answers through it.

A real js-libp2p node (``mimir-node.mjs``) whose backend is tests/helpers/openai_server.py, a MimirClient
(mDNS off) that dials it, and a Gateway on 127.0.0.1. Every process and server a test starts is stopped by it;
every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator

import openai
import pytest
from jsmimir import DEFAULT_MODEL, JsMimirNode

from mimirlite.gateway import Gateway
from mimirlite.mimir import MimirClient
from tests.helpers.openai_server import OpenAIServer

pytestmark = [
    pytest.mark.usefixtures("no_leaks"),
]

PROMPT = "the quick brown fox jumps"
TIMEOUT = 20.0


@contextlib.asynccontextmanager
async def js_gateway(backend_url: str, *args: str) -> AsyncIterator[tuple[JsMimirNode, Gateway]]:
    """A JS node on ``backend_url`` behind a gateway; the node must exit cleanly, without a crash."""
    node = await JsMimirNode.start(backend_url, *args)
    try:
        async with (
            MimirClient([node.addr], mdns=False) as client,
            Gateway(client, port=0) as gateway,
        ):
            assert client.nodes_for(DEFAULT_MODEL), "the JS node was not identified"
            yield node, gateway
            assert gateway.active_requests == 0
    finally:
        await node.stop()
    assert node.returncode == 0, node.stderr_tail()
    assert not node.uncaught(), node.stderr_tail()


async def test_the_sdk_through_the_gateway_to_a_js_node() -> None:
    async with (
        OpenAIServer(models=[DEFAULT_MODEL]) as srv,
        js_gateway(srv.base_url) as (_node, gw),
        openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=TIMEOUT) as client,
    ):
        models = [m.id async for m in client.models.list()]
        assert models == [DEFAULT_MODEL]

        messages = [{"role": "user", "content": PROMPT}]
        stream = await client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, stream=True)
        chunks = [c async for c in stream]
        # the JS node forwards the backend's chunks as they came; the gateway streams them unchanged
        assert [c.model_dump(exclude_unset=True) for c in chunks] == srv.sent_chunks[0]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == PROMPT

        answer = await client.chat.completions.create(model=DEFAULT_MODEL, messages=messages)
        assert answer.object == "chat.completion"
        assert answer.choices[0].message.content == PROMPT
        assert answer.choices[0].finish_reason == "stop"
        assert [r["messages"][-1] for r in srv.chat_requests] == [messages[-1]] * 2


async def test_curl_through_the_gateway_to_a_js_node() -> None:
    async with OpenAIServer(models=[DEFAULT_MODEL]) as srv, js_gateway(srv.base_url) as (_node, gw):
        body = json.dumps(
            {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
        )
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sN", "--max-time", str(int(TIMEOUT)), f"{gw.base_url}/chat/completions",
            "-H", "Content-Type: application/json", "-d", body,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            raw, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT + 5)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
    assert raw.endswith(b"data: [DONE]\n\n")
    events = raw[:-2].split(b"\n\n")
    assert all(e.startswith(b"data: ") for e in events)
    chunks = [json.loads(e[len(b"data: ") :]) for e in events[:-1]]
    assert chunks == srv.sent_chunks[0]


async def test_a_js_node_backend_failure_is_502() -> None:
    # The JS node reports no error on the wire (as the original): it ends the stream without an answer.
    async with (
        OpenAIServer(models=[DEFAULT_MODEL], fail_status=500, fail_message="out of memory") as srv,
        js_gateway(srv.base_url, "--on-backend-error", "close") as (_node, gw),
        openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=TIMEOUT) as client,
    ):
        with pytest.raises(openai.APIStatusError) as err:
            await client.chat.completions.create(
                model=DEFAULT_MODEL, messages=[{"role": "user", "content": "x"}]
            )
        assert err.value.status_code == 502
        assert err.value.code == "truncated_answer"
