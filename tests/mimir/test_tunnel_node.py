"""A MimirNode serves the latest generation's ``/mimir/<model>/1.0.0`` HTTP tunnel beside the first
generation, on real sockets: a mimirlite Host as a raw client writes an HTTP/1.1 request, closes its write
side and reads the answer to the end; the echo backend, and the OpenAI backend in front of
tests/helpers/openai_server.py. Forbidden paths never reach the backend; bad input ends only its stream, with
the right status and a log line, and the node serves the next request."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mimirlite import Host
from mimirlite.errors import ProtocolNotSupportedError, StreamResetError
from mimirlite.mimir import EchoBackend, MimirNode, NodeLimits, OpenAIBackend, packets
from mimirlite.mimir.models import tunnel_protocol
from mimirlite.protocols import Identify
from mimirlite.wire import lp
from tests.helpers import logged, until
from tests.helpers.mimir import request
from tests.helpers.openai_server import OpenAIServer

LLAMA = "llama3.2:latest"
TUNNEL = "/mimir/llama3.2-latest/1.0.0"
HELLO = [{"role": "user", "content": "hello big world"}]


@pytest.fixture
async def node_host() -> AsyncIterator[Host]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        yield host


@pytest.fixture
async def peer() -> AsyncIterator[Host]:
    async with Host() as host:
        yield host


def http_request(method: str, target: str, body: bytes = b"", *extra: bytes) -> bytes:
    head = [f"{method} {target} HTTP/1.1".encode(), b"Host: mimir", b"Connection: close"]
    if body or method == "POST":
        head += [b"Content-Type: application/json", b"Content-Length: " + str(len(body)).encode()]
    return b"\r\n".join([*head, *extra]) + b"\r\n\r\n" + body


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": LLAMA, "messages": HELLO, **fields}).encode()


async def exchange(peer: Host, node: MimirNode, data: bytes, protocol: str = TUNNEL) -> bytes:
    """Write ``data`` on the tunnel, close the write side, read the answer to its end."""
    stream = await peer.new_stream(node.host.listen_addrs[0], protocol)
    async with stream:
        if data:
            await stream.write(data)
        await stream.close_write()
        return await asyncio.wait_for(stream.read_all(), 20)


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = answer.partition(b"\r\n\r\n")
    assert sep, answer[:200]
    lines = head.decode("latin-1").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status), headers, body


def sse_texts(body: bytes) -> list[str]:
    events = [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    return [json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]]


def error_of(body: bytes) -> str:
    return str(json.loads(body)["error"]["message"])


# ---- registration ----


async def test_tunnel_registered_per_model_beside_the_first_generation(
    node_host: Host, peer: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "mimirlite")
    models = [LLAMA, "llama3.2/latest", "echo"]
    async with MimirNode(node_host, EchoBackend(LLAMA), models=models) as node:
        assert node.tunnels == {TUNNEL: LLAMA, "/mimir/echo/1.0.0": "echo"}
        # the loser of the two names with one protocol ID is named in a WARNING
        logged(caplog, "'llama3.2/latest'", TUNNEL, "'llama3.2:latest'")
        wanted = {packets.CHAT_PROTOCOL, packets.MIMIR_IDENTIFY_PROTOCOL, TUNNEL, "/mimir/echo/1.0.0"}
        assert wanted <= set(node_host.protocols)
        # what a latest client learns from identify
        ident = Identify(peer)
        try:
            info = await ident.identify(node_host.listen_addrs[0])
        finally:
            ident.close()
        assert wanted <= set(info.protocols)
        # both names stay served on the first generation
        out = await request(peer, node, packets.MIMIR_IDENTIFY_PROTOCOL, {"event": "query", "data": None})
        assert out[0]["data"] == models
    assert TUNNEL not in node_host.protocols  # stop removes them


# ---- echo backend ----


async def test_echo_answers_chat_completions_streamed_and_not(node_host: Host, peer: Host) -> None:
    async with MimirNode(node_host, EchoBackend(LLAMA)) as node:
        status, headers, body = parse(
            await exchange(peer, node, http_request("POST", "/v1/chat/completions", chat(stream=True)))
        )
        assert status == 200 and headers["content-type"] == "text/event-stream"
        assert "transfer-encoding" not in headers and headers["connection"] == "close"
        assert sse_texts(body) == ["", "hello", " big", " world", ""]

        status, headers, body = parse(
            await exchange(peer, node, http_request("POST", "/v1/chat/completions", chat()))
        )
        assert status == 200 and int(headers["content-length"]) == len(body)
        answer = json.loads(body)
        assert answer["object"] == "chat.completion" and answer["model"] == LLAMA
        assert answer["choices"][0]["message"]["content"] == "hello big world"
        await until(lambda: node.metrics.served == 2)
        assert node.metrics.requests == 2


async def test_echo_answers_ollama_chat_as_ndjson(node_host: Host, peer: Host) -> None:
    async with MimirNode(node_host, EchoBackend(LLAMA)) as node:
        body = json.dumps({"messages": HELLO}).encode()  # no model: the stream's
        status, headers, out = parse(await exchange(peer, node, http_request("POST", "/api/chat", body)))
        assert status == 200 and headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in out.splitlines()]
        assert [m["message"]["content"] for m in lines] == ["hello", " big", " world", ""]
        assert [m["done"] for m in lines] == [False, False, False, True]
        assert all(m["model"] == LLAMA for m in lines)


async def test_empty_stream_is_a_quiet_probe(
    node_host: Host, peer: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "mimirlite")
    async with MimirNode(node_host, EchoBackend(LLAMA)) as node:
        assert await exchange(peer, node, b"") == b""
        assert logged(caplog, "tunnel probe")
        assert [r for r in caplog.records if r.levelno > logging.DEBUG and "tunnel" in r.getMessage()] == []
        assert node.metrics.requests == 0 and node.metrics.bad_requests == 0


# ---- OpenAI backend ----


async def test_forwards_to_the_backend_root_streaming(
    node_host: Host, peer: Host, openai_server: OpenAIServer
) -> None:
    async with MimirNode(node_host, OpenAIBackend(openai_server.base_url, timeout=5.0)) as node:
        answer = await exchange(
            peer, node, http_request("POST", "/v1/chat/completions?a=b", chat(stream=True))
        )
        status, headers, body = parse(answer)
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        assert "transfer-encoding" not in headers and "content-length" not in headers  # chunking undone
        assert sse_texts(body) == ["", "hello", " big", " world", ""]
        seen = openai_server.requests[-1]
        assert (seen.method, seen.path, seen.query) == ("POST", "/v1/chat/completions", "a=b")
        assert seen.json == {"model": LLAMA, "messages": HELLO, "stream": True}

        status, headers, body = parse(await exchange(peer, node, http_request("GET", "/v1/models")))
        assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == [LLAMA]
        assert int(headers["content-length"]) == len(body)
        # A backend without Ollama's native API answers its own 404: passed through.
        status, _, body = parse(await exchange(peer, node, http_request("GET", "/api/version")))
        assert status == 404 and "/api/version" in error_of(body)
        assert openai_server.requests[-1].path == "/api/version"
        await until(lambda: node.metrics.served == 3)


FORBIDDEN = [
    ("POST", "/api/pull", b'{"model":"x"}'),
    ("POST", "/api/push", b'{"model":"x"}'),
    ("DELETE", "/api/delete", b'{"model":"x"}'),
    ("POST", "/api/create", b'{"model":"x"}'),
    ("POST", "/api/copy", b'{"source":"a","destination":"b"}'),
    ("PUT", "/v1/chat/completions", b"{}"),
    ("GET", "/v1/models/llama3.2:latest", b""),
    ("POST", "/v1/files", b"{}"),
]


async def test_forbidden_paths_get_403_and_never_reach_the_backend(
    node_host: Host, peer: Host, openai_server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "mimirlite")
    async with MimirNode(node_host, OpenAIBackend(openai_server.base_url, timeout=5.0)) as node:
        before = len(openai_server.requests)  # the model list at start
        for method, path, body in FORBIDDEN:
            status, headers, out = parse(await exchange(peer, node, http_request(method, path, body)))
            assert status == 403 and headers["content-type"] == "application/json", path
            assert "not allowed" in error_of(out)
            logged(caplog, "tunnel request refused (403 forbidden)", path)
        assert len(openai_server.requests) == before, "a forbidden request reached the backend"
        assert node.metrics.bad_requests == len(FORBIDDEN)
        status, _, body = parse(
            await exchange(peer, node, http_request("POST", "/v1/chat/completions", chat(stream=True)))
        )
        assert status == 200 and sse_texts(body)[1] == "hello"


async def test_other_model_in_body_is_refused(
    node_host: Host, peer: Host, openai_server: OpenAIServer
) -> None:
    async with MimirNode(node_host, OpenAIBackend(openai_server.base_url, timeout=5.0)) as node:
        before = len(openai_server.requests)
        body = json.dumps({"model": "gpt-4-expensive", "messages": HELLO}).encode()
        status, _, out = parse(await exchange(peer, node, http_request("POST", "/v1/chat/completions", body)))
        assert status == 400 and "gpt-4-expensive" in error_of(out)
        body = json.dumps({"model": LLAMA, "messages": HELLO, "extra_body": {}}).encode()
        status, _, out = parse(await exchange(peer, node, http_request("POST", "/v1/chat/completions", body)))
        assert status == 400 and "extra_body" in error_of(out)
        assert len(openai_server.requests) == before


HUGE_LINE = b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
MANY_HEADERS = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 10_000 + b"\r\n"
DEEP = b'{"messages":' + b"[" * 10_000 + b"]" * 10_000 + b"}"

BAD = [
    ("no request line", b"\r\n\r\nHost: x\r\n\r\n", 400),
    ("garbage", b"hello there\r\n\r\n", 400),
    ("request line of 1 MiB", HUGE_LINE, 431),
    ("10,000 headers", MANY_HEADERS, 431),
    ("body longer than Content-Length", http_request("POST", "/api/chat", b"{}")[:-2] + b"2}{}", 400),
    (
        "Content-Length and Transfer-Encoding",
        http_request("POST", "/api/chat", b"{}", b"Transfer-Encoding: chunked"),
        400,
    ),
    ("invalid JSON", http_request("POST", "/v1/chat/completions", b'{"model": '), 400),
    ("deep nesting", http_request("POST", "/api/chat", DEEP), 400),
    (
        "body over 4 MiB",
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n",
        413,
    ),
    (
        "chunked body over 4 MiB",
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"100000\r\n" + b" " * 0x100000 + b"\r\n") * 5,
        413,
    ),
]


@pytest.mark.parametrize(("what", "data", "status"), BAD, ids=[b[0] for b in BAD])
async def test_bad_input_ends_only_its_stream(
    node_host: Host,
    peer: Host,
    openai_server: OpenAIServer,
    caplog: pytest.LogCaptureFixture,
    what: str,
    data: bytes,
    status: int,
) -> None:
    caplog.set_level(logging.WARNING, "mimirlite")
    async with MimirNode(node_host, OpenAIBackend(openai_server.base_url, timeout=5.0)) as node:
        before = len(openai_server.requests)
        got, headers, body = parse(await exchange(peer, node, data))
        assert got == status, (what, body)
        assert headers["content-type"] == "application/json" and error_of(body)
        logged(caplog, f"tunnel request refused ({status}")
        assert len(openai_server.requests) == before
        assert node.metrics.bad_requests == 1
        got, _, body = parse(
            await exchange(peer, node, http_request("POST", "/v1/chat/completions", chat(stream=True)))
        )
        assert got == 200 and sse_texts(body)[1] == "hello"


async def test_body_that_never_ends_is_408_at_the_request_timeout(
    node_host: Host, peer: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "mimirlite")
    async with MimirNode(node_host, EchoBackend(LLAMA), request_timeout=0.5) as node:
        stream = await peer.new_stream(node_host.listen_addrs[0], TUNNEL)
        async with stream:
            await stream.write(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            status, _, body = parse(await asyncio.wait_for(stream.read_all(), 20))
        assert status == 408 and "0.5 s" in error_of(body)
        logged(caplog, "tunnel request refused (408")
        # A request whose body is whole but whose writer never closes is too slow as well.
        stream = await peer.new_stream(node_host.listen_addrs[0], TUNNEL)
        async with stream:
            await stream.write(http_request("GET", "/v1/models"))
            status, _, _ = parse(await asyncio.wait_for(stream.read_all(), 20))
        assert status == 408
        status, _, _ = parse(await exchange(peer, node, http_request("GET", "/v1/models")))
        assert status == 200


# ---- limits ----


async def test_rate_limit_is_429(node_host: Host, peer: Host) -> None:
    async with MimirNode(node_host, EchoBackend(LLAMA), limits=NodeLimits(rate=1)) as node:
        status, _, _ = parse(await exchange(peer, node, http_request("POST", "/api/chat", chat())))
        assert status == 200
        status, _, body = parse(await exchange(peer, node, http_request("POST", "/api/chat", chat())))
        assert status == 429 and json.loads(body)["error"]["code"] == "rate_limited"
        assert node.refused["rate_limited"] == 1


async def test_overloaded_is_503_and_a_client_that_leaves_frees_its_place(
    node_host: Host, peer: Host, openai_server: OpenAIServer
) -> None:
    limits = NodeLimits(max_concurrent=1, queue=0)
    async with MimirNode(
        node_host, OpenAIBackend(openai_server.base_url, timeout=30.0), limits=limits
    ) as node:
        openai_server.hang = True
        held = await peer.new_stream(node_host.listen_addrs[0], TUNNEL)
        await held.write(http_request("POST", "/v1/chat/completions", chat(stream=True)))
        await held.close_write()
        await until(lambda: node.admission.running == 1 and openai_server.hanging == 1, 10)
        status, _, body = parse(await exchange(peer, node, http_request("POST", "/api/chat", chat())))
        assert status == 503 and json.loads(body)["error"]["code"] == "overloaded"
        await held.reset()
        await until(lambda: node.admission.running == 0, 10)
        openai_server.hang = False
        status, _, _ = parse(await exchange(peer, node, http_request("GET", "/v1/models")))
        assert status == 200
        assert node.metrics.cancelled == 1


# ---- backend failures ----


async def test_backend_unreachable_is_502(node_host: Host, peer: Host) -> None:
    backend = OpenAIBackend("http://127.0.0.1:9/v1", timeout=5.0)
    async with MimirNode(node_host, backend, models=[LLAMA]) as node:
        status, _, body = parse(await exchange(peer, node, http_request("GET", "/v1/models")))
        assert status == 502 and "unreachable" in error_of(body)
        assert node.metrics.backend_errors[packets.BACKEND_UNAVAILABLE] == 1


async def test_backend_dying_mid_answer_resets_the_stream(
    node_host: Host, peer: Host, openai_server: OpenAIServer
) -> None:
    async with MimirNode(node_host, OpenAIBackend(openai_server.base_url, timeout=5.0)) as node:
        openai_server.die_after_chunks = 2
        with pytest.raises(StreamResetError):
            await exchange(peer, node, http_request("POST", "/v1/chat/completions", chat(stream=True)))
        await until(lambda: node.metrics.backend_errors[packets.BACKEND_ERROR] == 1, 10)
        openai_server.die_after_chunks = None
        status, _, _ = parse(await exchange(peer, node, http_request("GET", "/v1/models")))
        assert status == 200


async def test_other_tunnel_protocols_are_not_served(node_host: Host, peer: Host) -> None:
    async with MimirNode(node_host, EchoBackend(LLAMA)) as node:
        assert tunnel_protocol(LLAMA) == TUNNEL
        with pytest.raises(ProtocolNotSupportedError):  # multistream-select refuses it
            await exchange(peer, node, b"", "/mimir/other/1.0.0")


# ---- the real command ----


async def test_cli_node_serves_the_tunnel_with_no_flag_and_applies_its_rate(peer: Host) -> None:
    from tests.helpers.nodeproc import make_env, node

    async with node("--backend", "echo", "--rate", "1", env=make_env()) as (_, info):
        stream = await peer.new_stream(info.local_addr, "/mimir/echo/1.0.0")
        async with stream:
            body = json.dumps({"messages": HELLO, "stream": True}).encode()
            await stream.write(http_request("POST", "/v1/chat/completions", body))
            await stream.close_write()
            status, _, out = parse(await asyncio.wait_for(stream.read_all(), 20))
        assert status == 200 and sse_texts(out) == ["", "hello", " big", " world", ""]
        stream = await peer.new_stream(info.local_addr, "/mimir/echo/1.0.0")
        async with stream:
            await stream.write(http_request("GET", "/v1/models"))
            await stream.close_write()
            status, _, out = parse(await asyncio.wait_for(stream.read_all(), 20))
        assert status == 429 and json.loads(out)["error"]["code"] == "rate_limited"


async def test_both_generations_share_the_node_places(
    node_host: Host, peer: Host, openai_server: OpenAIServer
) -> None:
    """A first-generation chat holds the only place: a tunnel request is 503, and the other way round."""
    limits = NodeLimits(max_concurrent=1, queue=0)
    async with MimirNode(
        node_host, OpenAIBackend(openai_server.base_url, timeout=30.0), limits=limits
    ) as node:
        openai_server.hang = True
        held = await peer.new_stream(node_host.listen_addrs[0], packets.CHAT_PROTOCOL)
        await held.write(lp.encode_json({"event": "message", "data": {"model": LLAMA, "messages": HELLO}}))
        await until(lambda: node.admission.running == 1 and openai_server.hanging == 1, 10)
        status, _, _ = parse(await exchange(peer, node, http_request("GET", "/v1/models")))
        assert status == 503
        await held.reset()
        await until(lambda: node.admission.running == 0 and openai_server.hanging == 0, 10)

        tunnel = await peer.new_stream(node_host.listen_addrs[0], TUNNEL)
        await tunnel.write(http_request("POST", "/v1/chat/completions", chat(stream=True)))
        await tunnel.close_write()
        await until(lambda: node.admission.running == 1 and openai_server.hanging == 1, 10)
        out = await request(
            peer, node, packets.CHAT_PROTOCOL, {"event": "message", "data": {"messages": HELLO}}
        )
        assert out[0]["data"]["error"]["type"] == "overloaded"
        await tunnel.reset()
        await until(lambda: node.admission.running == 0, 10)


async def test_answer_streams_as_it_arrives_and_a_client_leaving_cancels_the_backend(
    node_host: Host, peer: Host, openai_server: OpenAIServer
) -> None:
    async with MimirNode(node_host, OpenAIBackend(openai_server.base_url, timeout=30.0)) as node:
        openai_server.delay = 1.0  # before each event: five events take five seconds
        stream = await peer.new_stream(node_host.listen_addrs[0], TUNNEL)
        await stream.write(http_request("POST", "/v1/chat/completions", chat(stream=True)))
        await stream.close_write()
        got = b""
        while b'"hello"' not in got:
            data = await asyncio.wait_for(stream.read(), 20)
            assert data, got
            got += data
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")
        assert openai_server.streams_completed == 0  # the answer's head and first words came first
        await stream.reset()
        await openai_server.wait_until(lambda: openai_server.streams_cancelled == 1, 20)
        await until(lambda: node.metrics.cancelled == 1 and node.admission.running == 0, 10)
