"""Self-check of the JS kad-dht peer (kad-peer.mjs, jskad.py): two js-libp2p DHT peers, one provides a CID,
the other finds it; a raw PING through kad-dht's own Network is echoed."""

from __future__ import annotations

from jskad import JsKadPeer

from mimirlite.mimir.models import dht_cids
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
