"""Self-check of the JS kad-dht peer (kad-peer.mjs, jskad.py): two js-libp2p DHT peers, one provides a CID,
the other finds it; a raw PING through kad-dht's own Network is echoed."""

from __future__ import annotations

import pytest
from jskad import WAN_PROTOCOL, JsKadPeer
from jspeer import JsPeerError

from mimirlite.mimir.models import dht_cids, dht_keys
from tests.helpers.waiting import until

CID = dht_cids("llama3.2:latest")[0]


async def test_two_js_kad_peers_provide_and_find() -> None:
    a = await JsKadPeer.start(key_seed=101)
    try:
        async with await JsKadPeer.start(key_seed=102, bootstrap=[a.addr]) as b:
            assert b.peer_id != a.peer_id
            # identify tells each that the other serves the DHT protocol: both routing tables fill
            await until(lambda: _has(a, b.peer_id), 20, "b in a's routing table")
            await until(lambda: _has(b, a.peer_id), 20, "a in b's routing table")
            await a.provide(CID)
            providers = await b.find_providers(CID, timeout=10, count=1)
            assert [p["id"] for p in providers] == [a.peer_id]
            assert any(addr.startswith("/ip4/127.0.0.1/tcp/") for addr in providers[0]["addrs"])
            pong = await b.send(a.peer_id, "PING")
            assert pong["type"] == "PING"
            found = await b.find_peer(a.peer_id)
            assert found["id"] == a.peer_id and a.addr.rsplit("/p2p/", 1)[0] in found["addrs"]
            closest = await b.get_closest_peers(dht_keys("llama3.2:latest")[0])
            assert a.peer_id in [p["id"] for p in closest]
            assert not b.uncaught()
    finally:
        await a.stop()
    assert a.returncode == 0
    assert not a.uncaught()


async def _has(peer: JsKadPeer, peer_id: str) -> bool:
    return peer_id in await peer.routing_table()


async def test_key_seed_gives_a_stable_identity() -> None:
    first = await JsKadPeer.start(key_seed=7)
    await first.stop()
    async with await JsKadPeer.start(key_seed=7) as again, await JsKadPeer.start(key_seed=8) as other:
        assert again.peer_id == first.peer_id
        assert other.peer_id != first.peer_id


async def test_public_protocol_and_a_client_mode_peer() -> None:
    async with (
        await JsKadPeer.start(key_seed=111, protocol=WAN_PROTOCOL) as server,
        await JsKadPeer.start(
            key_seed=112, protocol=WAN_PROTOCOL, client_mode=True, bootstrap=[server.addr]
        ) as client,
    ):
        await until(lambda: _has(client, server.peer_id), 20, "server in the client's routing table")
        # a client-mode peer queries and provides, but does not serve the protocol
        await client.provide(CID)
        providers = await server.find_providers(CID, timeout=10, count=1)
        assert [p["id"] for p in providers] == [client.peer_id]
        with pytest.raises(JsPeerError):
            await server.send(client.peer_id, "PING", timeout=5)
        assert client.peer_id not in await server.routing_table()
