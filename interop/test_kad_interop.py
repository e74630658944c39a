"""mimirlite's DHT (KadDht, ModelDht) with @libp2p/kad-dht 14.2.0 peers (kad-peer.mjs), both ways, loopback.

1. a JS DHT server stores a mimirlite provider record and a JS client finds it;
2. mimirlite finds a JS provider (KadDht.find_providers, and ModelDht.find by model name);
3. mimirlite is the DHT server between two JS peers (providers and findPeer go through it);
4. a JS peer's kad PING is answered, and so mimirlite enters the JS routing table;
5. a JS client-mode peer, and the public protocol /ipfs/kad/1.0.0: on loopback it carries no address, so
   mimirlite neither provides nor stores a loopback-only record there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from jskad import LAN_PROTOCOL, WAN_PROTOCOL, JsKadPeer

from mimirlite import Host
from mimirlite.errors import RefusalReason
from mimirlite.identity import KeyPair, PeerId
from mimirlite.mimir.dht import ModelDht
from mimirlite.mimir.models import MODEL_CIDS, dht_cids, dht_keys, name_cid
from mimirlite.protocols import identify_service, start_services
from mimirlite.protocols.kad.messages import PeerInfo
from mimirlite.protocols.kad.routing import common_prefix_length, peer_key
from mimirlite.protocols.kad.service import KAD_PROTOCOL, LAN_KAD_PROTOCOL, KadDht
from mimirlite.wire.multiaddr import Multiaddr
from tests.helpers.waiting import until

pytestmark = [
    pytest.mark.usefixtures("no_leaks"),
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

MODEL = "llama3.2:latest"
TABLE_CID = MODEL_CIDS[MODEL]  # QmNizEt5...
assert LAN_PROTOCOL == LAN_KAD_PROTOCOL and WAN_PROTOCOL == KAD_PROTOCOL


@contextlib.asynccontextmanager
async def mimir_dht(
    *, protocol: str = LAN_KAD_PROTOCOL, server: bool = True, key_seed: int | None = None
) -> AsyncIterator[KadDht]:
    """A mimirlite host on 127.0.0.1 serving identify, ping and one DHT (``key_seed``: a fixed identity,
    as ``kad-peer.mjs --key-seed``)."""
    keypair = None if key_seed is None else seeded_keypair(key_seed)
    async with Host(keypair, listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        start_services(host)
        identify = identify_service(host)
        assert identify is not None
        async with KadDht(host, identify, protocol=protocol, server=server) as dht:
            yield dht


def seeded_keypair(n: int) -> KeyPair:
    """The identity of ``kad-peer.mjs --key-seed n``: Ed25519 from 28 zero bytes and n, uint32 big-endian."""
    return KeyPair(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(28) + n.to_bytes(4, "big")))


def now() -> float:
    return asyncio.get_running_loop().time()


def addr_of(dht: KadDht) -> str:
    return dht.host.listen_addrs[0]


def bare(addr: str) -> str:
    """``addr`` without its /p2p/ part."""
    return addr.rsplit("/p2p/", 1)[0]


async def in_table(js: JsKadPeer, peer_id: object) -> bool:
    return str(peer_id) in await js.routing_table()


def has_peer(dht: KadDht, js: JsKadPeer) -> bool:
    return PeerId.from_string(js.peer_id) in dht.table


async def test_a_js_server_stores_a_mimirlite_record_and_a_js_client_finds_it() -> None:
    key, cid = dht_keys(MODEL)[1], dht_cids(MODEL)[1]  # the name's own CID: bafk..., raw codec
    assert cid == name_cid(MODEL)
    async with await JsKadPeer.start(key_seed=201) as server:
        async with mimir_dht() as dht:
            me, my_addr = str(dht.host.peer_id), bare(addr_of(dht))
            await dht.host.dial(server.addr)
            await until(lambda: has_peer(dht, server), 20, "the JS server in mimirlite's table")
            await until(lambda: in_table(server, me), 20, "mimirlite in the JS server's table")
            assert await dht.provide(key) == 1  # the only peer it knows
            # ADD_PROVIDER has no answer: wait until the JS server answers with the record
            async with await JsKadPeer.start(key_seed=202, bootstrap=[server.addr]) as asker:

                async def stored() -> list[dict[str, object]]:
                    got = await asker.send(server.peer_id, "GET_PROVIDERS", key=key)
                    return list(got["providers"])

                await until(stored, 10, "the record on the JS server")
                assert await stored() == [{"id": me, "addrs": [my_addr]}]
        # mimirlite is gone: what a JS client finds now, the JS server stored
        async with await JsKadPeer.start(key_seed=203, bootstrap=[server.addr]) as seeker:
            await until(lambda: in_table(seeker, server.peer_id), 20, "the JS server in the seeker's table")
            found = await seeker.find_providers(cid, timeout=10, count=1)
            assert found == [{"id": me, "addrs": [my_addr]}]
            assert not seeker.uncaught()
        assert not server.uncaught()


async def test_mimirlite_finds_a_js_provider_by_key_and_by_model_name() -> None:
    async with (
        await JsKadPeer.start(key_seed=211) as hub,
        await JsKadPeer.start(key_seed=212, bootstrap=[hub.addr]) as provider,
    ):
        await until(lambda: in_table(hub, provider.peer_id), 20, "the provider in the hub's table")
        await provider.provide(TABLE_CID)
        await provider.provide(dht_cids("other-model")[0])
        provider_id = PeerId.from_string(provider.peer_id)
        provider_addr = Multiaddr.parse(bare(provider.addr))

        async with mimir_dht() as dht:
            await dht.host.dial(hub.addr)
            await until(lambda: has_peer(dht, hub), 20, "the hub in mimirlite's table")
            found = await dht.find_providers(dht_keys("other-model")[0])
            assert [f.peer for f in found] == [provider_id]
            assert found[0].addrs == (provider_addr,)  # once, without /p2p/

        async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
            start_services(host)
            identify = identify_service(host)
            assert identify is not None
            async with ModelDht(host, identify, bootstrap=[hub.addr]) as models:
                lan = models.dht.dhts[0]
                assert lan.protocol == LAN_KAD_PROTOCOL
                await until(lambda: has_peer(lan, hub), 20, "the hub in the LAN table")
                # the table CID QmNizEt5... is what the JS peer provides: found by the model's name
                infos = await models.find(MODEL)
                assert [i.peer for i in infos] == [provider_id]
                assert infos[0].addrs == (provider_addr,)
                assert str(provider_addr) in [bare(a) for a in host.addrs_of(provider_id)]
        assert not hub.uncaught() and not provider.uncaught()


async def test_mimirlite_joining_through_one_js_peer_learns_the_others() -> None:
    """kad-dht 14.2 answers FIND_NODE with the peers closer to the key than the requester only: a lookup
    of our own ID (the join) learns nothing from it; lookups of random keys at each prefix length do."""
    async with contextlib.AsyncExitStack() as stack:
        hub = await stack.enter_async_context(await JsKadPeer.start(key_seed=271))
        others = [
            await stack.enter_async_context(await JsKadPeer.start(key_seed=272 + i, bootstrap=[hub.addr]))
            for i in range(5)
        ]
        for js in others:
            await until(lambda js=js: in_table(hub, js.peer_id), 20, "every JS peer in the hub's table")
        dht = await stack.enter_async_context(mimir_dht(key_seed=270))  # fixed: the same keyspace each run
        await dht.host.dial(hub.addr)
        ids = {PeerId.from_string(js.peer_id) for js in [hub, *others]}
        # every key at prefix length 0 from us is nearer to the peers of the other half of the keyspace
        # than to us: the hub names them all to the refresh at that length, which the join runs
        far = {p for p in ids if common_prefix_length(dht.table.local_key, peer_key(p)) == 0}
        assert len(far - {PeerId.from_string(hub.peer_id)}) >= 2  # so with this identity
        await until(lambda: far <= set(dht.table.peers()), 10, "the far half's JS peers in the table")


async def test_mimirlite_is_the_dht_server_between_two_js_peers() -> None:
    key, cid = dht_keys(MODEL)[0], TABLE_CID
    async with mimir_dht() as dht:
        boot = addr_of(dht)
        async with (
            await JsKadPeer.start(key_seed=221, bootstrap=[boot]) as a,
            await JsKadPeer.start(key_seed=222, bootstrap=[boot]) as b,
        ):
            a_id, b_id = PeerId.from_string(a.peer_id), PeerId.from_string(b.peer_id)
            await until(
                lambda: has_peer(dht, a) and has_peer(dht, b), 20, "both JS peers in mimirlite's table"
            )
            await until(lambda: in_table(a, dht.host.peer_id), 20, "mimirlite in A's table")
            await until(lambda: in_table(b, dht.host.peer_id), 20, "mimirlite in B's table")
            await a.provide(cid)

            def stored() -> list[PeerId]:
                return [p.peer for p in dht.providers.get(key, now())]

            await until(lambda: stored() == [a_id], 10, "A's record in mimirlite's provider store")
            [record] = dht.providers.get(key, now())
            assert Multiaddr.parse(bare(a.addr)) in record.addrs

            found = await b.find_providers(cid, timeout=10, count=1)
            assert [p["id"] for p in found] == [a.peer_id]
            assert bare(a.addr) in found[0]["addrs"]

            peer = await a.find_peer(b.peer_id)
            assert peer["id"] == b.peer_id and bare(b.addr) in peer["addrs"]
            assert b_id in dht.table and a_id in dht.table
            assert not a.uncaught() and not b.uncaught()


async def test_a_js_ping_is_answered_and_mimirlite_enters_the_js_table() -> None:
    async with mimir_dht() as dht, await JsKadPeer.start(key_seed=231) as js:
        await js.dial(addr_of(dht))
        # kad-dht adds a new contact to its table only once it has answered a kad PING
        await until(lambda: in_table(js, dht.host.peer_id), 20, "mimirlite in the JS routing table")
        pong = await js.send(str(dht.host.peer_id), "PING")
        assert pong["type"] == "PING"
        assert pong["closer"] == [] and pong["providers"] == []
        assert not js.uncaught()


async def test_a_js_client_mode_peer_uses_mimirlite_but_is_not_in_its_table() -> None:
    key, cid = dht_keys(MODEL)[1], dht_cids(MODEL)[1]
    async with mimir_dht() as dht:
        assert dht.add_provided(key) is not None  # mimirlite's own record, kept in its own store
        async with await JsKadPeer.start(key_seed=241, client_mode=True, bootstrap=[addr_of(dht)]) as client:
            await until(lambda: in_table(client, dht.host.peer_id), 20, "mimirlite in the client's table")
            found = await client.find_providers(cid, timeout=10, count=1)
            assert [p["id"] for p in found] == [str(dht.host.peer_id)]
            assert bare(addr_of(dht)) in found[0]["addrs"]
            # a client-mode peer does not list the protocol: it stays out of mimirlite's table
            client_id = PeerId.from_string(client.peer_id)
            await until(lambda: dht.identify.info_of(client_id), 10, "the client identified")
            info = dht.identify.info_of(client_id)
            assert info is not None and LAN_KAD_PROTOCOL not in info.protocols
            assert not has_peer(dht, client)
            assert not client.uncaught()


async def test_the_public_dht_on_loopback_carries_no_address() -> None:
    """On /ipfs/kad/1.0.0 mimirlite keeps public addresses only, and on loopback there are none: it has
    no record of its own to send, and it refuses (and counts) a JS client-mode peer's loopback-only record
    (kad-peer.mjs runs the public DHT with passthroughMapper: the JS side does send 127.0.0.1)."""
    key, cid = dht_keys(MODEL)[1], dht_cids(MODEL)[1]
    async with (
        mimir_dht(protocol=KAD_PROTOCOL) as dht,
        await JsKadPeer.start(
            key_seed=251, protocol=WAN_PROTOCOL, client_mode=True, bootstrap=[addr_of(dht)]
        ) as js,
    ):
        await until(lambda: in_table(js, dht.host.peer_id), 20, "mimirlite in the JS table")
        assert not has_peer(dht, js)  # a client-mode JS peer
        assert dht.own_addrs() == []
        assert dht.add_provided(key) is None  # no public address: nothing to announce
        assert await dht.provide(key) == 0
        assert dht.providers.get(key, now()) == []

        await js.provide(cid)  # kad-dht sends ADD_PROVIDER with no answer: it cannot tell
        metrics = dht.host.metrics
        await until(lambda: metrics.refused[RefusalReason.KAD_PROVIDER_STORE] == 1, 10, "the refusal")
        assert dht.providers.get(key, now()) == []
        assert not js.uncaught()


async def test_a_public_mimirlite_client_finds_a_js_provider_without_its_loopback_address() -> None:
    """mimirlite in client mode on /ipfs/kad/1.0.0 asks JS servers: it finds the provider's ID, but no
    address (it keeps none out of the public scope); nor does it learn the loopback addresses of the
    closer peers named, so it asks only the peers it is connected to."""
    key, cid = dht_keys(MODEL)[0], TABLE_CID
    async with (
        await JsKadPeer.start(key_seed=261, protocol=WAN_PROTOCOL) as server,
        await JsKadPeer.start(key_seed=262, protocol=WAN_PROTOCOL, bootstrap=[server.addr]) as provider,
    ):
        await until(lambda: in_table(server, provider.peer_id), 20, "the provider in the server's table")
        await provider.provide(cid)
        async with mimir_dht(protocol=KAD_PROTOCOL, server=False) as dht:
            await dht.host.dial(server.addr)
            await until(lambda: has_peer(dht, server), 20, "the JS server in mimirlite's table")
            assert str(dht.host.peer_id) not in await server.routing_table()  # mimirlite asks, serves not
            found = await dht.find_providers(key)
            # the JS server names it with 127.0.0.1, which the public DHT does not carry
            provider_id = PeerId.from_string(provider.peer_id)
            assert found == [PeerInfo(provider_id, ())]
            assert dht.host.addrs_of(provider_id) == []
            assert not server.uncaught() and not provider.uncaught()
