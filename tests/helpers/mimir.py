"""Mimir helpers shared by the suites: a bare DHT bootstrap peer, raw LP-JSON requests to a node, a
stand-in latest-generation node, and the honest and hostile chat parameters of the parameter-injection
suites."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from mimirlite import Host, Stream
from mimirlite.mimir import DEFAULT_MODEL, MimirNode
from mimirlite.mimir.models import tunnel_protocol
from mimirlite.protocols import identify_service, start_services
from mimirlite.protocols.kad.service import Dht
from mimirlite.wire import lp


@contextlib.asynccontextmanager
async def bootstrap_peer() -> AsyncIterator[Host]:
    """A bare DHT server on 127.0.0.1: identify, ping and both DHTs, no mimir protocol."""
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        start_services(host)
        identify = identify_service(host)
        assert identify is not None
        async with Dht(host, identify):
            yield host


async def request(user: Host, node: MimirNode, protocol: str, *packets_out: Any) -> list[dict[str, Any]]:
    """Open ``protocol`` on the node, send raw LP-JSON packets, close write, read every packet back."""
    stream = await user.new_stream(node.host.listen_addrs[0], protocol)
    async with stream:
        for p in packets_out:
            await stream.write(p if isinstance(p, bytes) else lp.encode_json(p))
        await stream.close_write()
        return await read_all_packets(stream)


async def read_all_packets(stream: Stream) -> list[dict[str, Any]]:
    out = []
    while (obj := await asyncio.wait_for(stream.read_json(), 10)) is not None:
        out.append(obj)
    return out


Answer = Callable[[Stream, bytes], Awaitable[None]]
"""Answers one tunnel request (given the raw request) on its stream."""
MODELS = json.dumps({"object": "list", "data": [{"id": DEFAULT_MODEL, "object": "model"}]}).encode()


@contextlib.asynccontextmanager
async def latest_node(answer: Answer, *, identify: bool = True) -> AsyncIterator[tuple[Host, list[bytes]]]:
    """A Host serving only ``/mimir/llama3.2-latest/1.0.0``: ``GET /v1/models`` lists the real name, every
    other request is answered by ``answer`` (given the raw request)."""
    seen: list[bytes] = []

    async def handler(stream: Stream) -> None:
        request = await stream.read_all(limit=1 << 20)
        seen.append(request)
        if request.startswith(b"GET /v1/models "):
            await stream.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + MODELS)
            await stream.close()
        elif request:
            await answer(stream, request)

    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        services = start_services(host) if identify else []
        host.set_handler(tunnel_protocol(DEFAULT_MODEL), handler)
        try:
            yield host, seen
        finally:
            for s in services:
                s.close()


HELLO = [{"role": "user", "content": "hello big wide world"}]

# (field named in the refusal, what the peer adds to its request)
HOSTILE: list[tuple[str, dict[str, Any]]] = [
    ("extra_body", {"extra_body": {"model": "gpt-4-expensive"}}),
    ("extra_headers", {"extra_headers": {"Authorization": "Bearer stolen", "X-Cost": "max"}}),
    ("extra_query", {"extra_query": {"api-version": "2099-01-01"}}),
    ("timeout", {"timeout": 0.001}),
    ("self", {"self": "x"}),
    ("service_tier", {"service_tier": "priority"}),
    ("frobnicate", {"frobnicate": True}),
    ("temperature", {"temperature": "hot"}),
    ("max_tokens", {"max_tokens": True}),
    ("n", {"n": 9}),
    (
        "messages[0].content[0].text",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
    ),
]
HONEST: dict[str, Any] = {
    "temperature": 0.2,
    "top_p": 0.9,
    "max_tokens": 2,
    "stop": ["\n\n"],
    "seed": 7,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "logit_bias": {"50256": -100},
    "n": 2,
    "user": "alice",
    "response_format": {"type": "json_object"},
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
}
