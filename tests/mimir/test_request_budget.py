"""Requests a node holds while it serves them count in the host's buffer budget (max_buffered_total):
a parsed chat request by what its Python objects keep (many tiny content parts keep about 14 times their
size), a tunnel request by its bytes from the first one read. Past the budget a newer request is refused
(``overloaded``; 503 on the tunnel) and the requests already held are served; the budget is given back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from mimirlite import Host, HostConfig
from mimirlite.errors import StreamResetError
from mimirlite.mimir import EchoBackend, MimirNode, packets
from mimirlite.mimir.models import tunnel_protocol
from mimirlite.mimir.node import _kept_for
from mimirlite.mimir.packets import parse_chat_request
from mimirlite.net.stream import Stream
from mimirlite.wire import lp
from tests.helpers import until

MODEL = "llama3.2:latest"
BUDGET = 4 * 1024 * 1024
PARTS = 2000
"""One request of PARTS tiny parts (one letter, the rest empty: a short answer) keeps about
PARTS * KEPT_PER_ITEM bytes: a few fit the budget, not 10."""
TIMEOUT = 10.0


@pytest.fixture
async def node() -> AsyncIterator[MimirNode]:
    config = HostConfig(max_buffered_total=BUDGET)
    backend = EchoBackend(MODEL, delay=1.0)  # each chat holds its request about two seconds
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"], config=config) as host, MimirNode(host, backend) as node:
        yield node


@pytest.fixture
async def peer() -> AsyncIterator[Host]:
    async with Host() as host:
        yield host


def many_parts_request() -> dict[str, object]:
    content = [{"type": "text", "text": "a" if i == 0 else ""} for i in range(PARTS // 8)]
    return {"event": "message", "data": {"messages": [{"role": "user", "content": content}] * 8}}


async def read_packets(stream: Stream) -> list[dict[str, object]]:
    out = []
    while (obj := await asyncio.wait_for(stream.read_json(), TIMEOUT)) is not None:
        out.append(obj)
    return out


async def test_parsed_requests_count_until_served(node: MimirNode, peer: Host) -> None:
    raw = lp.encode_json(many_parts_request())
    fit = BUDGET // _kept_for(len(raw), parse_chat_request(many_parts_request()["data"]))
    assert 2 <= fit <= 6
    budget = node.host.budget
    streams = []
    for _ in range(10):
        stream = await peer.new_stream(node.host.listen_addrs[0], packets.CHAT_PROTOCOL)
        await stream.write_json(many_parts_request())
        await stream.close_write()
        streams.append(stream)
    answers = await asyncio.gather(*(read_packets(s) for s in streams))
    refused = [a for a in answers if a[-1]["event"] == packets.COMPLETION_STOP]
    served = [a for a in answers if a[-1]["event"] == packets.COMPLETION_PACKET]
    assert len(served) in (fit - 1, fit) and len(refused) == 10 - len(served)  # (less the unread bytes)
    error = refused[0][-1]["data"]["error"]  # type: ignore[index]
    assert error["type"] == packets.OVERLOADED and "max_buffered_total" in error["message"]
    assert node.refused[packets.OVERLOADED] == len(refused)
    assert budget.peak <= BUDGET
    await until(lambda: budget.total == 0)
    # the budget was given back: the same request is served again
    stream = await peer.new_stream(node.host.listen_addrs[0], packets.CHAT_PROTOCOL)
    await stream.write_json(many_parts_request())
    await stream.close_write()
    assert (await read_packets(stream))[-1]["event"] == packets.COMPLETION_PACKET


async def test_unfinished_tunnel_requests_count_from_their_first_byte(node: MimirNode, peer: Host) -> None:
    budget = node.host.budget
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: node\r\ncontent-type: application/json\r\n"
    head += b"content-length: %d\r\n\r\n" % (3 * 1024 * 1024)
    body = json.dumps({"messages": [{"role": "user", "content": "x" * (1024 * 1024)}]}).encode()
    streams = []
    for _ in range(6):  # each would keep 1 MiB and more; never finished
        stream = await peer.new_stream(node.host.listen_addrs[0], tunnel_protocol(MODEL))
        await stream.write(head + body)
        streams.append(stream)
    # the budget holds what it can; the newest that do not fit are answered 503 (or reset when their
    # bytes could not even be taken in)
    await until(lambda: budget.peak >= BUDGET - 1024 * 1024)
    ends = []
    for stream in streams[-2:]:
        try:
            ends.append(await asyncio.wait_for(stream.read(), TIMEOUT))
        except StreamResetError:
            ends.append(b"reset")
    assert all(e == b"reset" or (e.startswith(b"HTTP/1.1 503 ") and b"max_buffered_total" in e) for e in ends)
    assert budget.peak <= BUDGET
    for stream in streams:
        await stream.reset()
    await until(lambda: budget.total == 0)


def test_what_a_request_keeps() -> None:
    """The estimate stays above what parsing and checking such a request really keeps."""
    import tracemalloc

    for data in (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 256}] * 64},
        {"messages": [{"role": "user", "content": "a"}] * 4096},
        {"messages": [{"role": "user", "content": "word " * 50_000}]},
    ):
        raw = json.dumps(data).encode()
        tracemalloc.start()
        request = parse_chat_request(lp.decode_json(raw))
        kept = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert kept <= _kept_for(len(raw), request), (len(raw), kept)
