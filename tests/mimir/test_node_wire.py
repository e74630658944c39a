"""A node relaying an OpenAI-compatible backend writes each chunk's own JSON text into its completionPacket
when any parser reads that text as the node read it (mimirlite/mimir/node.py ``_answer_wire``,
mimirlite/mimir/backends.py ``stream_chat_wire``), and encodes the chunk it parsed otherwise (duplicate
keys, a lone surrogate escape, an event on several lines). On 127.0.0.1: a raw backend server, a
MimirNode, and a peer reading the packets' bytes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

from mimirlite import Host
from mimirlite.mimir import MimirNode, OpenAIBackend, packets
from mimirlite.wire import lp
from tests.helpers.mimir import HELLO
from tests.mimir.test_http import raw_server, read_request

MODEL = "m"
REQUEST_ID = 'r"\u00fc\u2028'  # escaped in the packet's head
HEAD = b'{"event":"completionPacket","request_id":"r\\"\\u00fc\\u2028","data":'


def event_text(content: str, *, finish: str | None = None, spaced: bool = False) -> str:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    separators = (", ", ": ") if spaced else (",", ":")
    return json.dumps(chunk, separators=separators, ensure_ascii=False)


VERBATIM = [
    event_text("h\u00e9llo \u2603", spaced=True),  # raw UTF-8 and spaces: kept as the backend wrote them
    event_text(" world"),
]
REENCODED = [
    event_text("dup").replace('"id":"chatcmpl-1"', '"id":"a","id":"chatcmpl-1"'),  # a duplicate key
    event_text("x").replace('"x"', '"\\ud800"'),  # a lone surrogate escape
]
MULTILINE = event_text("two lines").replace(',"choices"', '\ndata: ,"choices"')  # data on two lines


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def sse(*texts: str) -> bytes:
    events = [b"data: " + t.encode() + b"\n\n" for t in texts] + [b"data: [DONE]\n\n"]
    return b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


async def packets_for(texts: list[str]) -> list[bytes]:
    """The bodies of the packets a node writes for a backend streaming ``texts`` (and a last chunk)."""
    last = event_text("", finish="stop")
    bodies = await all_packets([*texts, last])
    assert json.loads(bodies[-1]) == {
        "event": "completionPacket",
        "request_id": REQUEST_ID,
        "data": json.loads(last),
    }
    return bodies[:-1]


async def all_packets(texts: list[str], backend_class: type[OpenAIBackend] = OpenAIBackend) -> list[bytes]:
    """The bodies of every packet a node writes for a backend streaming ``texts`` (one read)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            if request.startswith(b"GET "):
                body = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
                head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body)
                writer.write(head + body)
            else:
                writer.write(SSE_HEAD + sse(*texts))
            await writer.drain()

    async with (
        raw_server(serve) as (url, _),
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as node_host,
        Host() as peer,
    ):
        backend = backend_class(url + "/v1", timeout=5.0)
        async with MimirNode(node_host, backend, models=[MODEL], dht=False) as node:
            stream = await peer.new_stream(node.host.listen_addrs[0], packets.CHAT_PROTOCOL)
            async with stream:
                message = {"event": "message", "request_id": REQUEST_ID, "data": {"messages": HELLO}}
                await stream.write(lp.encode_json(message))
                await stream.close_write()
                bodies = []
                while (body := await asyncio.wait_for(stream.read_message(), 10)) is not None:
                    bodies.append(bytes(body))
    return bodies


def packet(data: Any) -> dict[str, Any]:
    return {"event": "completionPacket", "request_id": REQUEST_ID, "data": data}


async def test_a_chunk_that_reads_alike_everywhere_is_written_as_the_backend_wrote_it() -> None:
    bodies = await packets_for(VERBATIM)
    assert bodies == [HEAD + t.encode() + b"}" for t in VERBATIM]
    assert [json.loads(b) for b in bodies] == [packet(json.loads(t)) for t in VERBATIM]


async def test_a_chunk_another_parser_could_read_otherwise_is_encoded_as_the_node_read_it() -> None:
    bodies = await packets_for([*REENCODED, MULTILINE])
    read = [json.loads(t) for t in REENCODED] + [json.loads(MULTILINE.replace("\ndata: ", "\n"))]
    assert bodies == [json.dumps(packet(chunk), separators=(",", ":")).encode() for chunk in read]
    assert bodies[0].count(b'"id"') == 1 and b"chatcmpl-1" in bodies[0]  # the key the node read, once


async def test_chunks_before_a_failure_in_the_same_read_are_written_before_the_error() -> None:
    error = json.dumps({"error": {"message": "out of memory"}})
    bodies = await all_packets([*VERBATIM, error, event_text("never")])
    assert bodies[:2] == [HEAD + t.encode() + b"}" for t in VERBATIM]
    stop = json.loads(bodies[2])
    assert len(bodies) == 3 and stop["event"] == "completionStop", bodies
    assert stop["data"]["error"]["type"] == packets.BACKEND_ERROR
    assert "out of memory" in stop["data"]["error"]["message"]


async def test_a_chunk_with_a_number_json_cannot_carry_ends_the_answer() -> None:
    nan = event_text("x").replace('"created":1', '"created":NaN')  # Python's json reads it, JSON.parse not
    bodies = await all_packets([VERBATIM[0], nan, event_text("never")])
    assert bodies[0] == HEAD + VERBATIM[0].encode() + b"}"
    stop = json.loads(bodies[1])
    assert len(bodies) == 2 and stop["event"] == "completionStop", bodies
    assert stop["data"]["error"]["type"] == packets.BACKEND_ERROR
    assert "NaN" in stop["data"]["error"]["message"]
    assert all(b"NaN" not in b for b in bodies[:1])


class Shouting(OpenAIBackend):
    """A backend of one's own that changes the chunks in ``stream_chat`` only."""

    async def stream_chat(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        async for chunk in super().stream_chat(model, messages, params):
            delta = chunk["choices"][0]["delta"]
            delta["content"] = delta.get("content", "").upper()
            yield chunk


async def test_a_subclass_overriding_stream_chat_is_what_the_node_sends() -> None:
    bodies = await all_packets([event_text("quiet words"), event_text("", finish="stop")], Shouting)
    contents = [json.loads(b)["data"]["choices"][0]["delta"]["content"] for b in bodies]
    assert contents == ["QUIET WORDS", ""]
