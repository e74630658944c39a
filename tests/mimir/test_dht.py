"""Nodes and clients that meet only through the DHT: a node provides its models, a client given one bootstrap
peer (not the node) finds it, identifies it and chats; model changes are provided; the DHT can be off."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from mimirlite import Host, MimirClient, MimirNode
from mimirlite.mimir import EchoBackend, OpenAIBackend
from mimirlite.mimir.models import dht_keys
from mimirlite.protocols.kad.service import KAD_PROTOCOL, LAN_KAD_PROTOCOL
from tests.helpers.mimir import bootstrap_peer
from tests.helpers.openai_server import OpenAIServer
from tests.helpers.waiting import until


@contextlib.asynccontextmanager
async def node(bootstrap: str, model: str = "echo", **kw: object) -> AsyncIterator[MimirNode]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(
        host, EchoBackend(model), bootstrap=[bootstrap], **kw  # type: ignore[arg-type]
    ) as n:
        yield n


def client_of(bootstrap: Host) -> MimirClient:
    """A client whose only way to nodes is the DHT, through ``bootstrap``."""
    return MimirClient(bootstrap=[bootstrap.listen_addrs[0]], mdns=False)


async def test_a_client_finds_a_node_only_through_the_dht_and_chats() -> None:
    async with bootstrap_peer() as b:
        boot = b.listen_addrs[0]
        async with node(boot, "dht-model") as n:
            assert n.dht is not None
            await until(lambda: any(len(d.providers) for d in _kads(b)), 10, "a record on the bootstrap peer")
            async with MimirClient(bootstrap=[boot], mdns=False) as client:
                assert client.nodes == {}
                assert await client.wait_for_nodes("dht-model", 10)
                assert client.nodes_for("dht-model") == [n.host.peer_id]
                asked = [{"role": "user", "content": "over the DHT"}]
                words = [
                    c.choices[0].delta.content
                    async for c in client.chat(asked, model="dht-model")
                    if c.choices and c.choices[0].delta.content
                ]
                assert "".join(words).strip() == "over the DHT"


async def test_a_model_served_later_is_provided() -> None:
    async with bootstrap_peer() as b, node(b.listen_addrs[0], "first") as n, client_of(b) as client:
        assert await client.wait_for_nodes("first", 10)
        client.forget(n.host.peer_id)
        await n.set_models(["first", "second"])
        assert n.host.handler("/mimir/second/1.0.0") is not None
        assert await client.wait_for_nodes("second", 10)
        await n.set_models(["second"])
        assert n.host.handler("/mimir/first/1.0.0") is None


async def test_a_model_the_backend_gains_is_served_and_provided() -> None:
    """The node asks its backend for its models now and then (``node --models-interval``): a model pulled
    into the backend is served, provided, and found by a client through the DHT."""
    async with OpenAIServer(models=["llama3.2:latest"]) as srv, bootstrap_peer() as b:
        backend = OpenAIBackend(srv.base_url)
        async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(
            host, backend, bootstrap=[b.listen_addrs[0]], models_interval=0.05
        ) as n, client_of(b) as client:
            assert n.models == ["llama3.2:latest"]
            srv.models.append("fresh:1b")
            await until(lambda: "fresh:1b" in n.models, 10, "the node serves the new model")
            assert await client.wait_for_nodes("fresh:1b", 10)
            assert client.nodes_for("fresh:1b") == [host.peer_id]


async def test_dht_nodes_lists_the_nodes_among_the_dht_peers() -> None:
    async with bootstrap_peer() as b, node(b.listen_addrs[0]) as n, client_of(b) as client:
        assert await client.dht_nodes(10) == [n.host.peer_id]


async def test_the_node_provides_both_keys_of_a_table_model() -> None:
    async with bootstrap_peer() as b, node(b.listen_addrs[0], "llama3.2:latest") as n:
        assert n.dht is not None
        lan = _kads(b)[0]
        for key in dht_keys("llama3.2:latest"):
            await until(lambda key=key: lan.providers.get(key, 0.0), 10, f"a record for {key.hex()}")


async def test_the_dht_can_be_off() -> None:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, EchoBackend(), dht=False) as n:
        assert n.dht is None
        assert LAN_KAD_PROTOCOL not in host.protocols
    async with MimirClient(dht=False, mdns=False) as client:
        assert client.dht is None
        assert await client.find_nodes("echo") == []


async def test_by_default_the_lan_dht_serves_and_the_public_one_only_asks() -> None:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, EchoBackend()):
        assert LAN_KAD_PROTOCOL in host.protocols
        assert KAD_PROTOCOL not in host.protocols
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, EchoBackend(), dht_server=True):
        assert KAD_PROTOCOL in host.protocols


def _kads(host: Host) -> list:  # type: ignore[type-arg]
    """The DHTs serving on ``host`` (LAN first)."""
    found = []
    for protocol in (LAN_KAD_PROTOCOL, KAD_PROTOCOL):
        owner = getattr(host.handler(protocol), "__self__", None)
        if owner is not None:
            found.append(owner)
    return found


async def test_a_model_nobody_serves_is_not_looked_up_again_at_once() -> None:
    """A client (or a gateway's HTTP clients) asking for models nobody serves cannot make it flood the DHT:
    a lookup that found nothing is not repeated for ``NOT_FOUND_TTL`` seconds."""
    async with bootstrap_peer() as b, client_of(b) as client:
        assert client.dht is not None
        await until(lambda: client.dht is not None and client.dht.dht.peers(), 10, "the client joined")
        assert await client.find_nodes("nowhere:1b") == []
        opened = b.metrics.streams_opened
        assert await client.find_nodes("nowhere:1b") == []
        assert b.metrics.streams_opened == opened  # no second lookup reached the DHT
        assert await client.find_nodes("elsewhere:1b") == []
        assert b.metrics.streams_opened > opened  # another model is looked up
