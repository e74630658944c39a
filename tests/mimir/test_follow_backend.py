"""A node follows its backend's model list, on real parts: a MimirNode in front of the test OpenAI server
(tests/helpers/openai_server.py) polling it every fraction of a second, a MimirClient connected to it, a
Gateway in front of the client (the openai SDK talks to it), and a bare DHT peer both join. Models the
backend gains and loses reach the client (identify push), the gateway and the DHT; a backend that stops is
retried with growing waits, its models stay listed for the grace period while chats get ``backend_error``,
then drop (the node serves none, and runs on) and come back with it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging

import openai
import pytest

from mimirlite import Host, MimirClient, MimirNode, Stream
from mimirlite.errors import MimirliteError, ProtocolErrorKind, RefusalReason, StreamResetError
from mimirlite.gateway import Gateway
from mimirlite.identity import PeerId
from mimirlite.mimir import EchoBackend, OpenAIBackend, RemoteError, packets
from mimirlite.mimir.follow import BackendState, FollowConfig
from mimirlite.mimir.models import dht_keys, tunnel_protocol
from mimirlite.mimir.packets import Packet
from mimirlite.protocols import IDENTIFY_PUSH_PROTOCOL, identify_service, start_services
from mimirlite.wire.lp import encode_message
from mimirlite.wire.protobuf import encode_bytes_field
from tests.helpers import until
from tests.helpers.gateway import RawHttp, sdk, user
from tests.helpers.mimir import bootstrap_peer, request
from tests.helpers.openai_server import OpenAIServer

pytestmark = pytest.mark.usefixtures("no_leaks")

LLAMA = "llama3.2:latest"
FRESH = "fresh:1b"
WAIT = 10.0
"""Bound of every wait on a condition: a healthy run takes a fraction of it."""
INTERVAL = 0.5
FIRST_RETRY = 0.03
GRACE = 3.0
FOLLOW = FollowConfig(interval=INTERVAL, grace=GRACE, first_retry=FIRST_RETRY, jitter=0.0)


def self_records(node: MimirNode, model: str) -> list[bool]:
    """For each key of ``model``: whether the node's own DHT stores (LAN first) hold its record."""
    assert node.dht is not None
    me = node.host.peer_id
    return [
        any(p.peer == me for p in d.providers.get(key, asyncio.get_running_loop().time()))
        for key in dht_keys(model)
        for d in node.dht.dht.dhts
        if d.server
    ]


async def chat_text(client: MimirClient, model: str, text: str) -> str:
    chunks = client.chat_raw([{"role": "user", "content": text}], model=model)
    parts = [c["choices"][0]["delta"].get("content") or "" async for c in chunks if c["choices"]]
    return "".join(parts)


async def listed(gw: Gateway) -> list[str]:
    """The models the gateway lists on ``/v1/models`` (the openai SDK), checked against ``/api/tags``."""
    async with sdk(gw) as api:
        ids = [m.id async for m in api.models.list()]
    http = await RawHttp.open(gw)
    try:
        status, _, body = await http.request("GET", "/api/tags")
    finally:
        await http.close()
    assert status == 200
    assert sorted(m["name"] for m in json.loads(body)["models"]) == sorted(ids)
    return ids


async def test_the_network_follows_what_the_backend_serves(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mimirlite.mimir")
    async with contextlib.AsyncExitStack() as stack:
        srv = await stack.enter_async_context(OpenAIServer(models=[LLAMA]))
        boot = (await stack.enter_async_context(bootstrap_peer())).listen_addrs[0]
        host = await stack.enter_async_context(Host(listen=["/ip4/127.0.0.1/tcp/0"]))
        backend = OpenAIBackend(srv.base_url, timeout=5.0)
        node = await stack.enter_async_context(MimirNode(host, backend, bootstrap=[boot], follow=FOLLOW))
        me: PeerId = host.peer_id
        client = await stack.enter_async_context(MimirClient([host.listen_addrs[0]], mdns=False, dht=False))
        gw = await stack.enter_async_context(Gateway(client, port=0))
        other = await stack.enter_async_context(MimirClient(bootstrap=[boot], mdns=False))
        assert client.nodes == {me: [LLAMA]}

        # a model pulled into the backend: served, pushed to the client, listed by the gateway, provided
        srv.models.append(FRESH)
        await until(lambda: FRESH in client.nodes.get(me, []), WAIT, "the client learns the new model")
        assert sorted(client.tunnels(me)) == [FRESH, LLAMA]  # both generations
        assert FRESH in await listed(gw)
        async with sdk(gw) as api:
            answer = await api.chat.completions.create(model=FRESH, messages=user("a fresh model"))  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "a fresh model"
        assert srv.chat_requests[-1]["model"] == FRESH
        assert await other.wait_for_nodes(FRESH, WAIT)  # a DHT lookup from another peer finds the node
        assert other.nodes_for(FRESH) == [me]
        assert all(self_records(node, FRESH))

        # a model removed from the backend: gone from the client, the gateway and the node's own records
        srv.models.remove(FRESH)
        await until(lambda: client.nodes.get(me) == [LLAMA], WAIT, "the client drops the removed model")
        assert FRESH not in await listed(gw)
        assert host.handler("/mimir/fresh-1b/1.0.0") is None
        assert not any(self_records(node, FRESH))
        await until(lambda: other.nodes_for(FRESH) == [], WAIT, "the other peer hears it too")

        # the backend stops: retried with growing waits, models still listed, chats get backend_error
        down_at = asyncio.get_running_loop().time()
        await srv.close()
        follower = node.follower
        assert follower is not None
        await until(lambda: node.backend_state is BackendState.DOWN, WAIT, "the node sees the backend gone")
        with pytest.raises(RemoteError) as caught:
            await chat_text(client, LLAMA, "anyone there")
        assert caught.value.type == packets.BACKEND_ERROR
        assert "backend is not answering" in caught.value.message
        assert "withdrawn in" in caught.value.message
        async with sdk(gw) as api:
            with pytest.raises(openai.APIStatusError) as failed:
                await api.chat.completions.create(model=LLAMA, messages=user("still there?"))  # type: ignore[arg-type]
        assert failed.value.status_code == 502 and "not answering" in str(failed.value)
        tunnelled = await client.request(LLAMA, "GET", "/v1/models")  # the latest generation says it too
        error = json.loads(await tunnelled.body.read())["error"]
        assert tunnelled.status == 502 and error["code"] == packets.BACKEND_ERROR
        assert "not answering" in error["message"]
        assert client.nodes == {me: [LLAMA]} and await listed(gw) == [LLAMA]
        await until(lambda: follower.failures >= 5, WAIT, "five retries")
        assert node.backend_state is BackendState.DOWN
        tries = [t for t in follower.attempts if t >= down_at]
        gaps = [b - a for a, b in itertools.pairwise(tries)][:4]
        assert len(gaps) == 4
        # each wait at least doubles the one before (from FIRST_RETRY up), the first far below the interval
        for i, gap in enumerate(gaps):
            assert gap >= FIRST_RETRY * 2**i * 0.99, gaps
        assert gaps[0] < INTERVAL, gaps

        # the grace period ends: the node serves no model (and runs on); the client and gateway see none
        await until(lambda: node.backend_state is BackendState.GONE, WAIT, "the grace period ends")
        assert follower.down_since is not None
        assert follower.attempts[-1] >= follower.down_since + GRACE
        assert node.models == [] and host.handler(packets.CHAT_PROTOCOL) is not None
        await until(lambda: client.nodes == {me: []}, WAIT, "the client sees the node serve nothing")
        assert await listed(gw) == []
        assert not any(self_records(node, LLAMA))
        async with Host() as asker:
            asked = {"event": "message", "data": {"model": LLAMA, "messages": user("hi")}}
            stop = (await request(asker, node, packets.CHAT_PROTOCOL, asked))[-1]
            models = await request(asker, node, packets.MIMIR_IDENTIFY_PROTOCOL, {"event": "query"})
        assert stop["data"]["error"]["type"] == packets.MODEL_NOT_FOUND
        assert "backend is gone" in stop["data"]["error"]["message"]
        assert models[0]["data"] == []

        # the backend comes back: its models are served, pushed and provided again
        await srv.start()
        await until(lambda: client.nodes == {me: [LLAMA]}, WAIT, "the client sees the model again")
        assert node.backend_state is BackendState.UP
        assert await chat_text(client, LLAMA, "welcome back") == "welcome back"
        assert await listed(gw) == [LLAMA]
        await until(lambda: all(self_records(node, LLAMA)), WAIT, "provided again")

    went = [r for r in caplog.records if "stopped answering" in r.getMessage()]
    back = [r for r in caplog.records if "answers again" in r.getMessage()]
    assert len(went) == 1 and went[0].levelno == logging.WARNING
    assert len(back) == 1 and back[0].levelno == logging.WARNING


async def test_a_model_change_reaches_a_client_the_node_never_identified() -> None:
    """Without the DHT nobody identifies the node's peers; the push goes to them all the same."""
    async with OpenAIServer(models=[LLAMA]) as srv, Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        backend = OpenAIBackend(srv.base_url, timeout=5.0)
        async with MimirNode(host, backend, dht=False, follow=FOLLOW), MimirClient(
            [host.listen_addrs[0]], mdns=False, dht=False
        ) as client:
            identify = identify_service(host)
            assert identify is not None
            assert all(identify.info_of(p) is None for p in host.connections)
            srv.models.append(FRESH)
            await until(lambda: client.nodes.get(host.peer_id) == [LLAMA, FRESH], WAIT, "the push")


async def test_set_models_serves_no_model_and_back() -> None:
    """``set_models([])`` leaves the node running with nothing served; the models return with a call."""
    async with OpenAIServer(models=[LLAMA]) as srv, Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        backend = OpenAIBackend(srv.base_url, timeout=5.0)
        async with MimirNode(host, backend, dht=False, models_interval=0) as node, MimirClient(
            [host.listen_addrs[0]], mdns=False, dht=False
        ) as client:
            assert node.follower is None and node.backend_state is BackendState.UP
            await node.set_models([])
            await until(lambda: client.nodes == {host.peer_id: []}, WAIT, "no model")
            assert [p for p in host.protocols if p.startswith("/mimir/")] == []
            await node.set_models([LLAMA])
            await until(lambda: client.nodes == {host.peer_id: [LLAMA]}, WAIT, "the model again")
            assert await chat_text(client, LLAMA, "here again") == "here again"


async def test_a_backend_that_lists_no_model_is_treated_as_gone() -> None:
    async with OpenAIServer(models=[LLAMA]) as srv, Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        follow = FollowConfig(interval=0.2, grace=0.5, first_retry=0.05, jitter=0.0)
        backend = OpenAIBackend(srv.base_url, timeout=5.0)
        async with MimirNode(host, backend, dht=False, follow=follow) as node:
            srv.models.clear()
            await until(lambda: node.backend_state is BackendState.DOWN, WAIT, "down")
            assert node.models == [LLAMA]
            await until(lambda: node.models == [], WAIT, "the grace ends")
            assert node.follower is not None and node.follower.reason == "the backend lists no model"
            srv.models.append(LLAMA)
            await until(lambda: node.models == [LLAMA], WAIT, "served again")


async def push_raw(hostile: Host, client_peer: PeerId, body: bytes) -> bool:
    """One identify push of ``body`` (any size) to the client; whether the client took it (read it whole
    and closed its side) rather than resetting it."""
    stream = await hostile.open_on(hostile.connections[client_peer], IDENTIFY_PUSH_PROTOCOL)
    try:
        await stream.write(encode_message(body))
        await stream.close_write()
        await asyncio.wait_for(stream.read_all(limit=0), WAIT)
    except (StreamResetError, MimirliteError):
        await stream.reset()
        return False
    await stream.close()
    return True


def identify_body(protocols: list[str]) -> bytes:
    return b"".join(encode_bytes_field(3, p.encode()) for p in protocols)  # field 3: protocols


async def test_a_hostile_node_pushing_identify_cannot_make_the_client_misbehave() -> None:
    """A known node that pushes identify over and over, each time with other protocols (hundreds of fake
    tunnels), and once a message over the size cap: the client re-learns its models one run at a time
    (a flood while a run is under way leaves one more run, with the latest list), its tunnel list stays
    within identify's cap, its pushes over the rate are refused, and the other node is untouched."""
    queries = 0
    active = 0
    most = 0
    hold = asyncio.Event()
    hold.set()

    async def answer(stream: Stream) -> None:
        nonlocal queries, active, most
        queries += 1
        active += 1
        most = max(most, active)
        try:
            query = await stream.read_json()
            await asyncio.wait_for(hold.wait(), WAIT)
            request_id = query.get("request_id") if isinstance(query, dict) else None
            await stream.write_json(Packet(packets.RESPONSE, ["bad"], request_id).to_json())
        finally:
            active -= 1

    async with contextlib.AsyncExitStack() as stack:
        good = await stack.enter_async_context(Host(listen=["/ip4/127.0.0.1/tcp/0"]))
        await stack.enter_async_context(MimirNode(good, EchoBackend(), dht=False, models_interval=0))
        hostile = await stack.enter_async_context(Host(listen=["/ip4/127.0.0.1/tcp/0"]))
        for service in start_services(hostile):
            stack.callback(service.close)
        hostile.set_handler(packets.MIMIR_IDENTIFY_PROTOCOL, answer)
        hostile.set_handler(packets.CHAT_PROTOCOL, answer)
        addrs = [good.listen_addrs[0], hostile.listen_addrs[0]]
        client = await stack.enter_async_context(MimirClient(addrs, mdns=False, dht=False))
        assert client.nodes == {good.peer_id: ["echo"], hostile.peer_id: ["bad"]}
        first = queries
        me = client.host.peer_id

        too_big = identify_body([f"/mimir/big{i:05d}/1.0.0" for i in range(600)])
        assert len(too_big) > 8 * 1024
        assert not await push_raw(hostile, me, too_big)
        assert client.host.metrics.protocol_errors[ProtocolErrorKind.IDENTIFY] == 1

        hold.clear()  # the re-learning runs wait in the hostile node's identify answer
        taken = 0
        for i in range(40):
            fake = [f"/mimir/f{i}-{j}/1.0.0" for j in range(300)]
            mimir = [packets.MIMIR_IDENTIFY_PROTOCOL, packets.CHAT_PROTOCOL, "/mimir/bad/1.0.0"]
            taken += await push_raw(hostile, me, identify_body([*mimir, *fake]))
        assert 0 < taken < 40
        assert client.host.metrics.refused[RefusalReason.IDENTIFY_PUSH] == 40 - taken
        await until(lambda: queries == first + 1, WAIT, "one re-learning run")
        assert active == 1
        hold.set()
        await until(lambda: client.tunnels(hostile.peer_id) == {"bad": "/mimir/bad/1.0.0"}, WAIT, "learnt")
        await until(lambda: active == 0, WAIT, "the runs end")
        assert most == 1 and queries <= first + 2  # one run, then one for the latest push
        assert client.nodes == {good.peer_id: ["echo"], hostile.peer_id: ["bad"]}
        assert await chat_text(client, "echo", "still here") == "still here"


async def test_a_latest_generation_node_is_learnt_again_from_its_tunnels() -> None:
    """A node of the latest generation only (tunnels, no ``/mimirllm/1.0.0``): a push with another tunnel
    list makes the client ask ``GET /v1/models`` again for the real names (its names are not kept from the
    first time); a push with no tunnel at all leaves a peer that is no node, and the client forgets it."""
    names = [LLAMA]

    async def tunnel(stream: Stream) -> None:
        request = await stream.read_all(limit=1 << 16)
        data = [{"id": n, "object": "model"} for n in names]
        body = json.dumps({"object": "list", "data": data}).encode()
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n"
        await stream.write(head + body if request.startswith(b"GET /v1/models ") else b"")

    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as latest:
        services = start_services(latest)
        latest.set_handler(tunnel_protocol(LLAMA), tunnel)
        try:
            async with MimirClient([latest.listen_addrs[0]], mdns=False, dht=False) as client:
                peer = latest.peer_id
                assert client.nodes == {peer: [LLAMA]} and client.generation(peer) == "latest"
                identify = identify_service(latest)
                assert identify is not None
                await identify.identify(latest.connections[client.host.peer_id])  # it accepts pushes
                names.append("qwen2.5:7b")
                latest.set_handler(tunnel_protocol("qwen2.5:7b"), tunnel)
                assert await identify.push() == 1
                await until(lambda: client.nodes.get(peer) == [LLAMA, "qwen2.5:7b"], WAIT, "the real names")
                for name in names:
                    latest.remove_handler(tunnel_protocol(name))
                assert await identify.push() == 1
                await until(lambda: peer not in client.nodes, WAIT, "forgotten")
        finally:
            for service in services:
                service.close()


async def test_the_backend_list_wins_over_a_hand_set_one() -> None:
    """``set_models`` by hand while the node follows its backend: the next poll serves the backend's list."""
    async with OpenAIServer(models=[LLAMA]) as srv, Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        backend = OpenAIBackend(srv.base_url, timeout=5.0)
        follow = FollowConfig(interval=0.1, jitter=0.0)
        async with MimirNode(host, backend, dht=False, follow=follow) as node:
            await node.set_models([])
            assert node.models == []
            polled = srv.models_requests
            await srv.wait_until(lambda: srv.models_requests > polled, WAIT)
            await until(lambda: node.models == [LLAMA], WAIT, "the backend's list again")
