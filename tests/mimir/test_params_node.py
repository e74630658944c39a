"""Parameter injection, end to end: a hostile peer (the project's Host API, raw LP-JSON packets) against a
real MimirNode with the openai backend in front of tests/helpers/openai_server.py. Every field outside the
allowlist, or malformed, is refused naming the field and never reaches the backend; the same node then serves
an honest chat whose parameters reach the backend exactly. The node's ``max_tokens`` cap, through
MimirNode and through the real ``node --max-tokens`` command."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from mimirlite import Host
from mimirlite.mimir import BackendError, EchoBackend, MimirNode, NodeLimits, OpenAIBackend, packets
from tests.helpers.mimir import HELLO, HONEST, HOSTILE, request
from tests.helpers.nodeproc import cli, make_env, node
from tests.helpers.openai_server import OpenAIServer

LLAMA = "llama3.2:latest"

UNKNOWN = {"extra_body", "extra_headers", "extra_query", "timeout", "self", "service_tier", "frobnicate"}


def _expected_message(field: str) -> str:
    return f"Unrecognized request argument supplied: {field}" if field in UNKNOWN else f"Invalid '{field}'"


@pytest.fixture
async def node_host() -> Any:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        yield host


@pytest.fixture
async def peer() -> Any:
    async with Host() as host:
        yield host


@pytest.mark.parametrize(("field", "extra"), HOSTILE, ids=[f for f, _ in HOSTILE])
async def test_hostile_field_never_reaches_the_backend_and_the_node_serves_on(
    node_host: Host,
    peer: Host,
    openai_server: OpenAIServer,
    caplog: pytest.LogCaptureFixture,
    field: str,
    extra: dict[str, Any],
) -> None:
    caplog.set_level(logging.WARNING, "mimirlite")
    async with MimirNode(node_host, OpenAIBackend(openai_server.base_url, timeout=5.0)) as node:
        data = {"messages": HELLO, "model": LLAMA, **extra}
        hostile = {"event": "message", "request_id": "h", "data": data}
        out = await request(peer, node, packets.CHAT_PROTOCOL, hostile)
        assert [p["event"] for p in out] == ["completionStop"], out
        error = out[0]["data"]["error"]
        assert error["type"] == "bad_request", error
        assert error["message"].startswith(_expected_message(field)), error
        assert out[0]["request_id"] == "h"
        assert any(field in r.getMessage() and "bad request" in r.getMessage() for r in caplog.records)
        assert openai_server.chat_requests == [], "a hostile request reached the backend"
        assert node.metrics.bad_requests == 1

        data = {"messages": HELLO, "model": LLAMA, "stream": True, **HONEST}
        out = await request(peer, node, packets.CHAT_PROTOCOL, {"event": "message", "data": data})
        assert [p["event"] for p in out[:-1]] == ["completionPacket"] * (len(out) - 1)
        assert out[-1]["data"]["choices"][0]["finish_reason"] == "length"
        [sent] = openai_server.chat_requests
        assert {k: v for k, v in sent.items() if k not in ("model", "messages", "stream")} == HONEST
        assert sent["messages"] == HELLO and sent["model"] == LLAMA and sent["stream"] is True
        assert node.metrics.served == 1


async def test_backend_takes_only_allowlisted_names(openai_server: OpenAIServer) -> None:
    """Defence in depth: the backend call itself refuses a name outside the allowlist."""
    backend = OpenAIBackend(openai_server.base_url, timeout=5.0)
    try:
        for params in (
            {"extra_body": {"model": "gpt-4-expensive"}},
            {"timeout": 0.001},
            {"extra_headers": {}},
        ):
            chat = backend.stream_chat(LLAMA, HELLO, params)
            with pytest.raises(BackendError) as err:
                await chat.__anext__()
            assert err.value.type == packets.BAD_REQUEST
            assert next(iter(params)) in str(err.value)
        assert openai_server.chat_requests == []
    finally:
        await backend.aclose()


async def test_node_max_tokens_cap_clamps_and_is_sent_when_none_asked(
    node_host: Host, peer: Host, openai_server: OpenAIServer
) -> None:
    backend = OpenAIBackend(openai_server.base_url, timeout=5.0)
    async with MimirNode(node_host, backend, limits=NodeLimits(max_tokens=3)) as node:
        asks: list[dict[str, Any]] = [
            {"max_tokens": 100},
            {},
            {"max_completion_tokens": 2},
            {"max_tokens": 1},
        ]
        for ask in asks:
            data = {"messages": [{"role": "user", "content": "one two three four five"}], **ask}
            out = await request(peer, node, packets.CHAT_PROTOCOL, {"event": "message", "data": data})
            assert out[-1]["event"] == "completionPacket", out[-1]
        sent = [
            {k: r[k] for k in ("max_tokens", "max_completion_tokens") if k in r}
            for r in openai_server.chat_requests
        ]
        assert sent == [{"max_tokens": 3}, {"max_tokens": 3}, {"max_completion_tokens": 2}, {"max_tokens": 1}]


async def test_cli_node_max_tokens(tmp_path: Any) -> None:
    env = make_env()
    async with OpenAIServer(models=[LLAMA]) as srv:
        async with node("--backend-url", srv.base_url, "--max-tokens", "2", env=env) as (_, info):
            res = await cli("chat", "--peer", info.local_addr, "-p", "one two three four", env=env)
        assert res.rc == 0, res
        assert res.out == "one two\n"
        [sent] = srv.chat_requests
        assert sent["max_tokens"] == 2


async def test_cli_node_refuses_a_bad_max_tokens() -> None:
    res = await cli("node", "--backend", "echo", "--max-tokens", "0", env=make_env())
    assert res.rc == 2 and "--max-tokens: must be at least 1" in res.err


@pytest.mark.usefixtures("no_leaks")
async def test_malformed_content_part_is_a_bad_request_on_an_echo_node(node_host: Host, peer: Host) -> None:
    """The echo backend joined the text parts: ``"text": 5`` was a TypeError and a traceback."""
    async with MimirNode(node_host, EchoBackend()) as node:
        for part in ({"type": "text", "text": 5}, {"type": "text"}, {"type": "text", "text": ["a"]}, "hi"):
            data = {"messages": [{"role": "user", "content": [part]}]}
            out = await request(peer, node, packets.CHAT_PROTOCOL, {"event": "message", "data": data})
            assert [p["event"] for p in out] == ["completionStop"], out
            error = out[0]["data"]["error"]
            assert error["type"] == "bad_request" and "messages[0].content[0]" in error["message"], error
        data = {"messages": [{"role": "user", "content": [{"type": "text", "text": "still here"}]}]}
        out = await request(peer, node, packets.CHAT_PROTOCOL, {"event": "message", "data": data})
        assert "".join(p["data"]["choices"][0]["delta"].get("content") or "" for p in out) == "still here"
        assert node.metrics.bad_requests == 4 and node.metrics.served == 1
        assert not node.metrics.backend_errors
