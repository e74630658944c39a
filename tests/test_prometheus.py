"""Prometheus metrics on real sockets: a node's MetricsServer and the gateway's /metrics, scraped over HTTP
and read with prometheus_client's own text parser; the numbers follow real traffic exactly. Then the
metrics server against hostile clients, and the bounded label values."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from mimirlite import Host
from mimirlite.errors import LocalError
from mimirlite.metrics import MAX_MODEL_LABELS, OTHER_MODEL, ChatMetrics, ChatOutcome, Histogram
from mimirlite.metrics_server import MetricsServer, parse_address
from mimirlite.mimir import EchoBackend, MimirClient, MimirNode, NodeLimits, OpenAIBackend, packets
from mimirlite.mimir.follow import BackendState
from mimirlite.prometheus import CONTENT_TYPE, MetricsCollector
from tests.helpers import until
from tests.helpers.gateway import WAIT, RawHttp, bounded, gateway_for, live, mimir_node, sdk, user
from tests.helpers.openai_server import OpenAIServer
from tests.helpers.scrape import Samples, delta, http_get, parse, split_response, val


async def scrape(server: MetricsServer) -> Samples:
    status, headers, body = await http_get(server.port)
    assert status == 200 and headers["content-type"] == CONTENT_TYPE, (status, headers)
    assert int(headers["content-length"]) == len(body)
    return parse(body.decode())


@contextlib.asynccontextmanager
async def served_node(backend: Any, **kwargs: Any) -> AsyncIterator[tuple[Host, MimirNode, MetricsServer]]:
    """A node on 127.0.0.1 (no DHT: no background streams) and its MetricsServer on a free port."""
    async with (
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host,
        MimirNode(host, backend, dht=False, **kwargs) as node,
        MetricsServer(host=host, node=node, address="127.0.0.1:0") as server,
    ):
        yield host, node, server


async def chat(user_host: Host, node: MimirNode, text: str, **extra: Any) -> list[dict[str, Any]]:
    """One first-generation chat on a new stream; every packet of the answer."""
    stream = await user_host.new_stream(node.host.listen_addrs[0], packets.CHAT_PROTOCOL)
    async with stream:
        packet = {"event": "message", "data": {"messages": user(text), **extra}}
        await stream.write_json(packet)
        await stream.close_write()
        out = []
        while (obj := await bounded(stream.read_json())) is not None:
            out.append(obj)
        return out


def quiet(host: Host) -> bool:
    return host.metrics.streams_current == 0


CHATS = "mimirlite_node_chats_total"
TTFC = "mimirlite_node_time_to_first_chunk_seconds_count"
DURATION = "mimirlite_node_chat_duration_seconds_count"


@live
async def test_a_chat_moves_the_node_counters_by_exactly_one() -> None:
    async with served_node(EchoBackend()) as (host, node, server), Host() as client:
        s0 = await scrape(server)
        assert val(s0, "mimirlite_node_model_served", model="echo") == 1
        assert val(s0, "mimirlite_node_chats_in_flight") == 0 and val(s0, "mimirlite_node_chats_queued") == 0

        # one new client connection: inbound on the node, outbound on the client
        await client.dial(host.listen_addrs[0])
        await until(lambda: host.metrics.connections_current == 1 and quiet(host), WAIT)
        s1 = await scrape(server)
        assert delta(s0, s1, "mimirlite_host_connections_opened_total", direction="inbound") == 1
        assert delta(s0, s1, "mimirlite_host_connections_opened_total", direction="outbound") == 0
        assert val(s1, "mimirlite_host_connections_open", direction="inbound") == 1
        mine = parse(MetricsCollector(host=client).render()[0].decode())
        assert val(mine, "mimirlite_host_connections_opened_total", direction="outbound") == 1
        assert val(mine, "mimirlite_host_connections_opened_total", direction="inbound") == 0

        # one chat: one inbound stream, one chat ok, one observation in each histogram
        answer = await chat(client, node, "counted once")
        assert answer[-1]["data"]["choices"][0]["finish_reason"] == "stop"
        await until(lambda: quiet(host), WAIT)
        s2 = await scrape(server)
        assert delta(s1, s2, CHATS, model="echo", outcome="ok") == 1
        assert sum(v for (name, _), v in s2.items() if name == CHATS) == 1
        assert delta(s1, s2, TTFC) == 1 and delta(s1, s2, DURATION) == 1
        assert delta(s1, s2, "mimirlite_node_time_to_first_chunk_seconds_bucket", le="+Inf") == 1
        assert 0 < val(s2, "mimirlite_node_time_to_first_chunk_seconds_sum") <= val(
            s2, "mimirlite_node_chat_duration_seconds_sum"
        )
        assert delta(s1, s2, "mimirlite_node_requests_total") == 1
        assert delta(s1, s2, "mimirlite_host_streams_opened_total", direction="inbound") == 1
        assert delta(s1, s2, "mimirlite_host_streams_opened_total", direction="outbound") == 0
        assert val(s2, "mimirlite_host_streams_open", direction="inbound") == 0
        assert delta(s1, s2, "mimirlite_host_received_bytes_total") > len("counted once")
        assert delta(s1, s2, "mimirlite_host_sent_bytes_total") > len("counted once")

        # a model not served: counted under "other", and as a backend error by type; no time observed
        unknown = await chat(client, node, "hi", model="not-served-here")
        assert unknown[-1]["data"]["error"]["type"] == "model_not_found"
        s3 = await scrape(server)
        assert delta(s2, s3, CHATS, model=OTHER_MODEL, outcome="model_not_found") == 1
        assert delta(s2, s3, "mimirlite_node_backend_errors_total", type="model_not_found") == 1
        assert delta(s2, s3, TTFC) == 0 and delta(s2, s3, DURATION) == 0
        assert not any(("model", "not-served-here") in labels for _, labels in s3)

        # the client leaves with a stream open: the connection closes, counted by reason, and the
        # streams it carried are no longer open on either side
        await client.new_stream(host.listen_addrs[0], packets.CHAT_PROTOCOL)
        await until(lambda: host.metrics.streams_current == 1, WAIT)
        s3 = await scrape(server)
        assert val(s3, "mimirlite_host_streams_open", direction="inbound") == 1
        client.connections[host.peer_id].close()
        await until(lambda: host.metrics.connections_current == 0, WAIT)
        s4 = await scrape(server)
        assert val(s4, "mimirlite_host_connections_open", direction="inbound") == 0
        assert val(s4, "mimirlite_host_streams_open", direction="inbound") == 0
        assert val(s4, "mimirlite_host_streams_open", direction="outbound") == 0
        assert set(client.metrics.streams_current_by_direction.values()) <= {0}
        assert set(client.metrics.connections_current_by_direction.values()) <= {0}
        closed = [v for (name, _), v in s4.items() if name == "mimirlite_host_connections_closed_total"]
        assert sum(closed) == 1


@live
async def test_a_refusal_counts_under_its_reason() -> None:
    async with served_node(EchoBackend(), limits=NodeLimits(rate=1)) as (_, node, server), Host() as client:
        assert (await chat(client, node, "first"))[-1]["data"]["choices"][0]["finish_reason"] == "stop"
        s1 = await scrape(server)
        refused = await chat(client, node, "second, too soon")
        assert refused[-1]["data"]["error"]["type"] == "rate_limited"
        s2 = await scrape(server)
        assert delta(s1, s2, "mimirlite_node_refused_total", reason="rate_limited") == 1
        assert delta(s1, s2, CHATS, model="echo", outcome="refused") == 1
        assert delta(s1, s2, CHATS, model="echo", outcome="ok") == 0
        assert delta(s1, s2, TTFC) == 0


@live
async def test_a_backend_error_counts_under_its_type() -> None:
    async with (
        OpenAIServer(models=["m:1"], fail_status=500) as srv,
        served_node(OpenAIBackend(srv.base_url, timeout=5.0), models=["m:1"]) as (_, node, server),
        Host() as client,
    ):
        s1 = await scrape(server)
        failed = await chat(client, node, "fail please")
        assert failed[-1]["data"]["error"]["type"] == "backend_error"
        s2 = await scrape(server)
        assert delta(s1, s2, "mimirlite_node_backend_errors_total", type="backend_error") == 1
        assert delta(s1, s2, CHATS, model="m:1", outcome="backend_error") == 1
        assert delta(s1, s2, TTFC) == 0 and delta(s1, s2, DURATION) == 0


@live
async def test_the_backend_state_follows_the_backend() -> None:
    async with OpenAIServer(models=["m:1"]) as srv, served_node(
        OpenAIBackend(srv.base_url, timeout=5.0), models_interval=0.2, models_grace=60.0
    ) as (_, node, server):
        def states(samples: Samples) -> list[float]:
            return [val(samples, "mimirlite_node_backend_state", state=s) for s in ("up", "down", "gone")]

        assert states(await scrape(server)) == [1, 0, 0]
        await srv.close()
        await until(lambda: node.backend_state is BackendState.DOWN, WAIT, "the node sees its backend gone")
        down = await scrape(server)
        assert states(down) == [0, 1, 0]
        assert val(down, "mimirlite_node_model_served", model="m:1") == 1  # kept through the grace period


@live
async def test_a_chat_the_client_leaves_counts_as_cancelled() -> None:
    async with served_node(EchoBackend(delay=0.05)) as (host, node, server), Host() as client:
        s1 = await scrape(server)
        stream = await client.new_stream(host.listen_addrs[0], packets.CHAT_PROTOCOL)
        words = " ".join(f"w{i}" for i in range(100))
        await stream.write_json({"event": "message", "data": {"messages": user(words)}})
        assert (await bounded(stream.read_json()))["event"] == "completionPacket"
        s2 = await scrape(server)
        assert val(s2, "mimirlite_node_chats_in_flight") == 1
        await stream.reset()
        await until(lambda: node.metrics.in_flight == 0, WAIT)
        s3 = await scrape(server)
        assert delta(s1, s3, CHATS, model="echo", outcome="cancelled") == 1
        assert delta(s1, s3, CHATS, model="echo", outcome="ok") == 0
        assert delta(s1, s3, TTFC) == 1 and delta(s1, s3, DURATION) == 0  # it started, never ended
        assert val(s3, "mimirlite_node_chats_in_flight") == 0


@live
async def test_tunnel_requests_count_as_the_models_chats() -> None:
    """The latest generation's tunnel (here embeddings, through a client's request()) counts as well."""
    async with (
        OpenAIServer(models=["m:1"]) as srv,
        served_node(OpenAIBackend(srv.base_url, timeout=5.0), models=["m:1"]) as (host, node, server),
        MimirClient([host.listen_addrs[0]], mdns=False) as client,
    ):
        s1 = await scrape(server)
        answer = await client.request("m:1", "POST", "/v1/embeddings", {"model": "m:1", "input": "hello"})
        async with answer.body:
            body = b"".join([part async for part in answer.body])
        assert answer.status == 200 and b"embedding" in body
        bad = await client.request("m:1", "DELETE", "/api/delete", {"model": "m:1"})
        async with bad.body:
            assert bad.status == 403
        await until(lambda: sum(node.metrics.chats.counts.values()) == 2, WAIT)  # counted once answered
        s2 = await scrape(server)
        assert delta(s1, s2, CHATS, model="m:1", outcome="ok") == 1
        assert delta(s1, s2, CHATS, model="m:1", outcome="bad_request") == 1
        assert delta(s1, s2, TTFC) == 1 and delta(s1, s2, DURATION) == 1


@live
async def test_a_hostile_peer_cannot_make_model_labels() -> None:
    """Chats naming 150 made-up models all count under "other"; the label set stays the served ones."""
    async with served_node(EchoBackend()) as (_, node, server), Host() as client:
        for i in range(150):
            await chat(client, node, "x", model=f'evil"\n{{model}}-{i}')
        samples = await scrape(server)
        models = {dict(labels).get("model") for name, labels in samples if name == CHATS}
        assert models == {OTHER_MODEL}
        assert val(samples, CHATS, model=OTHER_MODEL, outcome="model_not_found") == 150


@live
async def test_the_gateway_serves_its_metrics_behind_its_key() -> None:
    key = "s3cret"
    async with (
        mimir_node(EchoBackend()) as (_, addr1),
        mimir_node(EchoBackend()) as (_, addr2),
        gateway_for(addr1, addr2, api_key=key) as gw,
    ):
        raw = await RawHttp.open(gw)
        try:
            status, _, _ = await raw.request("GET", "/metrics")
            assert status == 401
        finally:
            await raw.close()
        auth = [("authorization", f"Bearer {key}")]

        async def scrape_gw() -> Samples:
            conn = await RawHttp.open(gw)
            try:
                status, headers, body = await conn.request("GET", "/metrics", headers=auth)
            finally:
                await conn.close()
            assert status == 200 and headers["content-type"] == CONTENT_TYPE
            return parse(body.decode())

        s1 = await scrape_gw()
        assert val(s1, "mimirlite_client_model_nodes", model="echo") == 2
        assert val(s1, "mimirlite_client_nodes") == 2
        assert val(s1, "mimirlite_host_connections_opened_total", direction="outbound") == 2
        async with sdk(gw, key) as client:
            stream = await client.chat.completions.create(
                model="echo", messages=user("one two three"), stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == "one two three"
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="nobody-serves-it", messages=user("x"))
        conn = await RawHttp.open(gw)
        try:
            ollama = b'{"model": "echo", "messages": [{"role": "user", "content": "as ollama"}]}'
            status, _, body = await conn.request("POST", "/api/chat", ollama, headers=auth)
            assert status == 200 and b'"done":true' in body.replace(b" ", b"")
        finally:
            await conn.close()
        s2 = await scrape_gw()
        chats = "mimirlite_gateway_chats_total"
        assert delta(s1, s2, chats, model="echo", outcome="ok") == 2  # OpenAI's and Ollama's
        assert delta(s1, s2, chats, model=OTHER_MODEL, outcome="model_not_found") == 1
        assert delta(s1, s2, "mimirlite_gateway_time_to_first_chunk_seconds_count") == 2
        assert delta(s1, s2, "mimirlite_gateway_chat_duration_seconds_count") == 2
        assert delta(s1, s2, "mimirlite_gateway_requests_total") == 4  # three chats and this scrape
        assert val(s2, "mimirlite_gateway_refused_total", reason="auth") == 1
        assert delta(s1, s2, "mimirlite_host_streams_opened_total", direction="outbound") >= 1
        assert delta(s1, s2, "mimirlite_host_received_bytes_total") > 0


# ---- the metrics server against hostile clients ----


@live
async def test_the_metrics_server_answers_only_get_and_head_of_metrics() -> None:
    async with served_node(EchoBackend()) as (_, _, server):
        status, headers, body = await http_get(server.port, method="HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 1000
        assert (await http_get(server.port, "/metrics?x=1"))[0] == 200
        assert (await http_get(server.port, "/"))[0] == 404
        assert (await http_get(server.port, "/metrics/../etc/passwd"))[0] == 404
        status, headers, _ = await http_get(server.port, method="POST")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        assert (await http_get(server.port, method="DELETE"))[0] == 405
        # loopback only: a name a web page could rebind is refused; loopback names are not
        assert (await http_get(server.port, headers="Host: evil.example:80\r\n"))[0] == 403
        assert (await http_get(server.port, headers=""))[0] in (400, 403)  # HTTP/1.1 needs a Host
        assert (await http_get(server.port, headers="Host: localhost\r\n"))[0] == 200
        assert (await http_get(server.port, headers="Host: [::1]:9\r\n"))[0] == 200


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await bounded(writer.wait_closed())


@live
async def test_the_metrics_server_bounds_heads_and_their_time() -> None:
    async with (
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host,
        MetricsServer(host=host, address=("127.0.0.1", 0), request_timeout=0.5) as server,
    ):
        # a huge head: 431 once 8 KiB are read, never buffered whole; what follows is dropped
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Junk: " + b"a" * 100_000)
        assert split_response(await bounded(reader.read()))[0] == 431
        await close(writer)
        # a head that never ends (a slow client): 408 after request_timeout, then closed
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metr")
        assert split_response(await bounded(reader.read()))[0] == 408
        await close(writer)
        # garbage instead of HTTP: 400
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x00\x01\x02 not http\r\n\r\n")
        assert split_response(await bounded(reader.read()))[0] == 400
        await close(writer)
        # a body sent with a refused method: answered, the body dropped, not read as a request
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        smuggled = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        head = b"POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
        writer.write(head + smuggled)
        raw = await bounded(reader.read())
        assert split_response(raw)[0] == 405 and raw.count(b"HTTP/1.1") == 1
        await close(writer)
        await until(lambda: server.open_connections == 0, WAIT)
        assert (await http_get(server.port))[0] == 200


@live
async def test_the_metrics_server_caps_its_connections() -> None:
    async with (
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host,
        MetricsServer(host=host, address=("127.0.0.1", 0), max_connections=2, request_timeout=30) as server,
    ):
        # two slow clients hold both places: a third is refused 503 at once
        slow = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        for _, w in slow:
            w.write(b"GET /metr")  # and nothing more
        await until(lambda: server.open_connections == 2, WAIT)
        assert (await http_get(server.port))[0] == 503
        assert (await http_get(server.port))[0] == 503
        # once they leave, their places are free again
        for _, w in slow:
            await close(w)
        await until(lambda: server.open_connections == 0, WAIT)
        assert (await http_get(server.port))[0] == 200


async def test_a_metrics_server_beyond_loopback_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", "mimirlite.metrics_server")
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        async with MetricsServer(host=host, address="0.0.0.0:0") as server:
            assert not server.loopback_only
            # any Host is taken then (anyone who reaches it may read it anyway)
            assert (await http_get(server.port, headers="Host: metrics.example\r\n"))[0] == 200
        assert any("anyone who can reach it" in r.getMessage() for r in caplog.records)
        caplog.clear()
        async with MetricsServer(host=host, address="127.0.0.1:0"):
            pass
        assert not caplog.records


def test_metrics_addresses() -> None:
    assert parse_address("9464") == ("127.0.0.1", 9464)
    assert parse_address(":9464") == ("127.0.0.1", 9464)
    assert parse_address("0.0.0.0:1") == ("0.0.0.0", 1)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    assert parse_address("localhost:0") == ("localhost", 0)
    for bad in ("", "x", "::1:9464", "1.2.3.4:70000", "1.2.3.4:-1", "1.2.3.4:", "[::1]"):
        with pytest.raises(LocalError):
            parse_address(bad)


# ---- the sans-prometheus parts ----


def test_histogram_buckets_count_as_prometheus_does() -> None:
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(value)
    assert h.cumulative() == [(0.1, 2), (1.0, 4), (float("inf"), 5)]
    assert (h.count, h.sum) == (5, pytest.approx(8.65))


def test_chat_models_are_bounded() -> None:
    chats = ChatMetrics()
    for i in range(MAX_MODEL_LABELS + 50):
        chats.count(f"m{i}", ChatOutcome.OK)
    chats.count(None, ChatOutcome.BAD_REQUEST)
    models = {model for model, _ in chats.counts}
    assert len(models) == MAX_MODEL_LABELS + 1 and OTHER_MODEL in models
    assert chats.counts[OTHER_MODEL, ChatOutcome.OK] == 50
    assert chats.counts["m0", ChatOutcome.OK] == 1  # the first ones keep their names


@live
async def test_model_names_from_nodes_are_escaped_in_labels() -> None:
    """A node may name its model anything: the label carries it escaped, and the scrape still parses."""
    name = 'a "quoted" \\ name {with} braces\nand a line'
    async with mimir_node(EchoBackend(name)) as (_, addr), gateway_for(addr) as gw:
        conn = await RawHttp.open(gw)
        try:
            status, _, body = await conn.request("GET", "/metrics")
        finally:
            await conn.close()
        assert status == 200
        samples = parse(body.decode())
        assert val(samples, "mimirlite_client_model_nodes", model=name) == 1


class KnownNodes:
    """What the collector reads of a client: the nodes it knows and their models."""

    def __init__(self, nodes: dict[str, list[str]]) -> None:
        self.nodes = nodes


def test_nodes_announcing_ever_more_models_count_under_other() -> None:
    nodes = {f"peer{i}": [f"model-{i}", "shared"] for i in range(MAX_MODEL_LABELS + 20)}
    samples = parse(MetricsCollector(client=KnownNodes(nodes)).render()[0].decode())
    family = "mimirlite_client_model_nodes"
    per_model = {dict(labels)["model"]: v for (name, labels), v in samples.items() if name == family}
    assert len(per_model) == MAX_MODEL_LABELS + 1
    assert per_model["shared"] == MAX_MODEL_LABELS + 20  # the most served first
    assert per_model[OTHER_MODEL] == 21  # the rest summed under one label
    assert val(samples, "mimirlite_client_nodes") == MAX_MODEL_LABELS + 20
