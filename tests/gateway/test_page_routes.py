"""The chat page's routes on real sockets, without a browser: ``GET /`` (the page for browsers, Ollama's
heartbeat for the rest), ``/static/<name>`` (an allowlist: traversal and unknown names are 404), which
paths pass the door without the API key, and ``GET /mimirlite/nodes``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import h11
import pytest

from mimirlite import Host, Stream
from mimirlite.errors import RefusalReason
from mimirlite.gateway import Door, Gateway, HttpError
from mimirlite.gateway.page import PUBLIC_PATHS, STATIC, short_peer, wants_html
from mimirlite.mimir import EchoBackend, MimirNode
from mimirlite.protocols.relay.client import RelayClient
from mimirlite.protocols.relay.service import RelayService
from tests.helpers import until
from tests.helpers.gateway import LLAMA, WAIT, RawHttp, bounded, gateway_for, live, mimir_node, sdk, user
from tests.helpers.mimir import latest_node
from tests.helpers.nodeproc import gateway_command, make_env

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
KEY = "k3y-for-the-page"
AUTH = ("authorization", f"Bearer {KEY}")
TRAVERSALS = [
    "/static/../gateway.py",
    "/static/../../mimirlite/gateway/gateway.py",
    "/static/..%2fgateway.py",
    "/static/%2e%2e/gateway.py",
    "/static/%2E%2E%2Fgateway.py",
    "/static/..%5cgateway.py",
    "/static/app.js/../gateway.py",
    "/static/./app.js",
    "/static//app.js",
    "/static/%61pp.js",
    "/static/app.js%00",
    "/static/APP.JS",
    "/static/gateway.py",
    "/static/page.py",
    "/static/__init__.py",
    "/static/",
    "/static",
    "/static/app.js/",
]
"""Targets naming no file of the allowlist, as sent (no client normalizes them)."""
FIELDS = (
    "peer_id", "models", "generation", "connection", "addr", "addrs", "short", "in_flight", "rtt_ms", "pinged"
)
"""Every field of a node in ``GET /mimirlite/nodes``: ``peers --json``'s, and what the gateway measures."""


async def fetch(
    gw: Gateway, method: str, target: str, headers: list[tuple[str, str]] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own (a refused one is closed by the gateway)."""
    conn = await RawHttp.open(gw)
    try:
        return await conn.request(method, target, headers=headers or [])
    finally:
        await conn.close()


def package_file(name: str) -> bytes:
    return (resources.files("mimirlite.gateway") / "static" / name).read_bytes()


def check_page_headers(headers: dict[str, str]) -> None:
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


@contextlib.asynccontextmanager
async def two_nodes(**kwargs: Any) -> AsyncIterator[Gateway]:
    async with (
        mimir_node(EchoBackend(delay=0.05)) as (_, a),
        mimir_node(EchoBackend(LLAMA)) as (_, b),
        gateway_for(a, b, **kwargs) as gw,
    ):
        yield gw


def test_wants_html() -> None:
    assert wants_html(BROWSER_ACCEPT)
    assert wants_html("text/html")
    assert wants_html("TEXT/HTML; q=0.5")
    assert not wants_html(None)
    assert not wants_html("*/*")
    assert not wants_html("text/*")
    assert not wants_html("application/json")
    assert not wants_html("text/html;q=0")
    assert not wants_html("text/html;q=nope")
    assert not wants_html("text/htmlx")


def test_short_peer() -> None:
    peer = "12D3KooWE2nZcpuxCd5Cqp5p5vZTRjAi7BLJhKDKqz24y7EQtgHX"
    assert short_peer(peer) == "12*EQtgHX"
    assert short_peer("short") == "short"


def test_door_lets_only_the_public_paths_through_without_the_key() -> None:
    door = Door.of(["127.0.0.1"], KEY, public=PUBLIC_PATHS)

    def head(method: str, target: str, *extra: tuple[str, str]) -> h11.Request:
        return h11.Request(method=method, target=target, headers=[("host", "127.0.0.1"), *extra])

    for target in ("/", "/?x=1", "/static/app.js", "/static/style.css?v=2", "/static/index.html"):
        door.check(head("GET", target), None)
        door.check(head("HEAD", target), None)
    refused = [
        ("POST", "/static/app.js"),
        ("PUT", "/"),
        ("DELETE", "/static/app.js"),
        ("GET", "/static/nope.js"),
        ("GET", "/static/../gateway.py"),
        ("GET", "//"),
        ("GET", "/mimirlite/nodes"),
        ("GET", "/v1/models"),
        ("GET", "http://127.0.0.1/static/app.js"),
    ]
    for method, target in refused:
        with pytest.raises(HttpError) as caught:
            door.check(head(method, target, ("content-type", "application/json")), None)
        assert (caught.value.status, caught.value.reason) == (401, RefusalReason.AUTH)
    # the Host check holds for the public paths too
    with pytest.raises(HttpError) as caught:
        door.check(h11.Request(method="GET", target="/", headers=[("host", "evil.example")]), None)
    assert caught.value.status == 403
    # with_hosts keeps the public paths
    door.with_hosts("10.0.0.1").check(head("GET", "/static/app.js"), None)


@live
async def test_root_serves_the_page_to_browsers_and_the_heartbeat_to_the_rest() -> None:
    async with mimir_node(EchoBackend()) as (_, addr), gateway_for(addr) as gw:
        status, headers, body = await fetch(gw, "GET", "/", [("accept", BROWSER_ACCEPT)])
        assert status == 200 and body == package_file("index.html")
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers["vary"] == "accept"
        check_page_headers(headers)
        assert b"<script" in body and b'<script src="/static/app.js"' in body  # no inline script
        assert body.count(b"<script") == 1 and b"style=" not in body
        status, headers, body = await fetch(gw, "HEAD", "/", [("accept", "text/html")])
        assert (status, body) == (200, b"")
        assert int(headers["content-length"]) == len(package_file("index.html"))
        for accept in ([], [("accept", "*/*")], [("accept", "text/html;q=0, */*")]):
            status, headers, body = await fetch(gw, "GET", "/", accept)
            assert (status, body) == (200, b"Ollama is running")
            assert headers["content-type"].startswith("text/plain")


@live
async def test_static_files_with_their_types_and_headers() -> None:
    async with mimir_node(EchoBackend()) as (_, addr), gateway_for(addr) as gw:
        for name, kind in STATIC.items():
            status, headers, body = await fetch(gw, "GET", f"/static/{name}")
            assert (status, headers["content-type"]) == (200, kind), name
            assert body == package_file(name) and body
            check_page_headers(headers)
            status, headers, body = await fetch(gw, "HEAD", f"/static/{name}?v=1")
            assert (status, body) == (200, b"") and headers["content-length"] == str(len(package_file(name)))
        status, _, body = await fetch(gw, "POST", "/static/app.js", [("content-type", "application/json")])
        assert status == 405 and json.loads(body)["error"]["code"] == "method_not_allowed"


@live
async def test_static_route_refuses_traversal_and_unknown_files() -> None:
    secret = package_file("index.html")[:40]
    async with mimir_node(EchoBackend()) as (_, addr), gateway_for(addr) as gw:
        for target in TRAVERSALS:
            status, _, body = await fetch(gw, "GET", target)
            assert status == 404, target
            assert json.loads(body)["error"]["code"] == "unknown_url", target
            assert secret not in body and b"import" not in body


@live
async def test_with_an_api_key_only_the_page_and_its_files_are_public() -> None:
    async with mimir_node(EchoBackend()) as (_, addr), gateway_for(addr, api_key=KEY) as gw:
        # no key: the page, its files, and the heartbeat at /
        assert (await fetch(gw, "GET", "/", [("accept", BROWSER_ACCEPT)]))[0] == 200
        assert (await fetch(gw, "GET", "/"))[2] == b"Ollama is running"
        for name in STATIC:
            assert (await fetch(gw, "GET", f"/static/{name}"))[0] == 200
            assert (await fetch(gw, "HEAD", f"/static/{name}"))[0] == 200
        refused = gw.metrics.refused[RefusalReason.AUTH]
        # no key: everything else is 401, the traversals and unknown names included
        others = [*TRAVERSALS, "/mimirlite/nodes", "/v1/models", "/api/tags", "//"]
        for target in others:
            status, _, body = await fetch(gw, "GET", target)
            assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key", target
        status, _, _ = await fetch(gw, "POST", "/static/app.js", [("content-type", "application/json")])
        assert status == 401
        assert gw.metrics.refused[RefusalReason.AUTH] == refused + len(others) + 1
        # with the key: the API answers; what is not a file is still 404
        assert (await fetch(gw, "GET", "/mimirlite/nodes", [AUTH]))[0] == 200
        for target in TRAVERSALS:
            assert (await fetch(gw, "GET", target, [AUTH]))[0] == 404, target
        # the Host check holds for the page too (DNS rebinding)
        status, _, _ = await fetch(gw, "GET", "/", [("host", "evil.example"), ("accept", BROWSER_ACCEPT)])
        assert status == 403


@live
async def test_node_list_shows_each_node_and_its_requests_in_flight() -> None:
    async with two_nodes() as gw:
        client = gw.client
        status, headers, body = await fetch(gw, "GET", "/mimirlite/nodes")
        assert status == 200 and headers["content-type"] == "application/json"
        nodes = json.loads(body)["nodes"]
        assert [n["peer_id"] for n in nodes] == sorted(str(p) for p in client.nodes)
        assert sorted(m for n in nodes for m in n["models"]) == sorted(["echo", LLAMA])
        for n in nodes:
            assert set(n) == set(FIELDS)
            assert n["short"] == short_peer(n["peer_id"])
            assert (n["generation"], n["connection"], n["in_flight"]) == ("first", "direct", 0)
            assert isinstance(n["rtt_ms"], float) and 0 < n["rtt_ms"] < WAIT * 1000
            assert isinstance(n["pinged"], float) and 0 <= n["pinged"] < 60
        echo_peer = next(n["peer_id"] for n in nodes if n["models"] == ["echo"])

        def in_flight(body: bytes) -> dict[str, int]:
            return {n["peer_id"]: n["in_flight"] for n in json.loads(body)["nodes"]}

        async with sdk(gw) as api:
            stream = await api.chat.completions.create(
                model="echo", messages=user("one two three four five six"), stream=True
            )
            async with stream:
                await bounded(anext(aiter(stream)))
                counts = in_flight((await fetch(gw, "GET", "/mimirlite/nodes"))[2])
                assert counts[echo_peer] == 1 and sum(counts.values()) == 1
                async for _ in stream:
                    pass
        await until(lambda: not any(client.in_flight(p) for p in client.nodes), WAIT, "chats ended")
        assert set(in_flight((await fetch(gw, "GET", "/mimirlite/nodes"))[2]).values()) == {0}


@live
async def test_a_tunnel_request_is_in_flight_until_its_body_is_closed() -> None:
    async with mimir_node(EchoBackend(delay=0.05)) as (_, addr), gateway_for(addr) as gw:
        client = gw.client
        [peer] = client.nodes
        body = {"model": "echo", "messages": user("a b c d e f"), "stream": True}
        answer = await bounded(client.request("echo", "POST", "/v1/chat/completions", body))
        async with answer.body:
            assert client.in_flight(peer) == 1
            await bounded(anext(answer.body))
        assert client.in_flight(peer) == 0
        # read to its end, without closing: no longer counted either
        answer = await bounded(client.request("echo", "POST", "/v1/chat/completions", body))
        assert client.in_flight(peer) == 1
        data = b"".join([d async for d in answer.body])
        assert data.endswith(b"data: [DONE]\n\n") and client.in_flight(peer) == 0
        await answer.body.aclose()
        assert client.in_flight(peer) == 0


@live
async def test_nodes_are_pinged_again_while_the_list_is_watched() -> None:
    async with mimir_node(EchoBackend()) as (_, addr), gateway_for(addr, api_key=KEY) as gw:
        client = gw.client
        [peer] = client.nodes
        gw.repinger.stale = 0.3
        ages: list[float] = []

        def aged() -> bool:
            ages.append(client.ping_age(peer) or 0.0)
            return ages[-1] > 0.9

        # nobody looks: the ping only ages (three stale periods without a ping of the gateway's own)
        await until(aged, WAIT, "the ping to be stale")
        assert ages == sorted(ages)
        status, _, body = await fetch(gw, "GET", "/mimirlite/nodes", [AUTH])
        assert status == 200 and json.loads(body)["nodes"][0]["pinged"] >= 0.3
        await until(lambda: (client.ping_age(peer) or 1) < 0.3, WAIT, "a fresh ping")
        status, _, body = await fetch(gw, "GET", "/mimirlite/nodes", [AUTH])
        assert json.loads(body)["nodes"][0]["pinged"] < 0.3
        assert await client.measure_rtt(peer) is not None


@live
async def test_the_gateway_command_prints_the_page_and_serves_it() -> None:
    """The page's files ship in the package: a ``mimirlite gateway`` process serves them, and says where."""
    env = make_env(MIMIRLITE_API_KEY=KEY)
    async with (
        mimir_node(EchoBackend()) as (_, addr),
        gateway_command("--peer", addr, env=env) as (proc, port),
    ):
        line = await proc.read_until("Chat in the browser at ", WAIT)
        assert line == f"Chat in the browser at http://127.0.0.1:{port}/"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/html\r\n")
            writer.write(b"Connection: close\r\n\r\n")
            answer = await bounded(reader.read())
        finally:
            writer.close()
            await writer.wait_closed()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"content-security-policy: " in head.lower()
        assert body == package_file("index.html")


@live
async def test_each_nodes_connection_and_generation() -> None:
    """A node behind a circuit relay is ``relayed``; a latest-generation stand-in is ``latest``."""

    async def no_chat(stream: Stream, request: bytes) -> None:
        await stream.reset()

    async with (
        latest_node(no_chat) as (latest, _),
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as relay_host,
        RelayService(relay_host),
        Host() as node_host,  # listens nowhere: reachable only through the relay
        RelayClient(node_host, [relay_host.listen_addrs[0]]) as reserved,
        MimirNode(node_host, EchoBackend("far")),
        mimir_node(EchoBackend()) as (_, near),
    ):
        [circuit] = reserved.circuit_addrs
        async with gateway_for(near, circuit, latest.listen_addrs[0], api_key=KEY) as gw:
            status, _, body = await fetch(gw, "GET", "/mimirlite/nodes", [AUTH])
            assert status == 200
            shown = {n["models"][0]: (n["connection"], n["generation"]) for n in json.loads(body)["nodes"]}
            assert shown == {
                "far": ("relayed", "first"),
                "echo": ("direct", "first"),
                LLAMA: ("direct", "latest"),
            }
            far = next(n for n in json.loads(body)["nodes"] if n["models"] == ["far"])
            assert far["addr"] == f"{relay_host.listen_addrs[0]}/p2p-circuit/p2p/{far['peer_id']}"
