"""The DHT service on real hosts over loopback TCP: tables filled through identify, providers found across
hops, both modes, and every hostile input ending only its own stream, counted."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator

import pytest

from mimirlite import Host
from mimirlite.errors import ProtocolErrorKind, RefusalReason
from mimirlite.identity import KeyPair
from mimirlite.net.stream import Stream
from mimirlite.protocols import identify_service, start_services
from mimirlite.protocols.kad.lookup import LookupConfig
from mimirlite.protocols.kad.messages import (
    KadMessage,
    MessageLimits,
    MessageType,
    PeerInfo,
    decode_message,
    encode_message,
)
from mimirlite.protocols.kad.service import LAN_KAD_PROTOCOL, DhtConfig, KadDht
from mimirlite.wire import lp
from mimirlite.wire.multiaddr import Multiaddr
from tests.helpers.waiting import until

pytestmark = pytest.mark.usefixtures("no_tasks_left")  # every task ends once its hosts stopped

KEY = b"\x12\x20" + hashlib.sha256(b"llama3.2:latest").digest()


class Peer:
    """A host serving identify, ping and one DHT."""

    def __init__(self, host: Host, dht: KadDht) -> None:
        self.host = host
        self.dht = dht

    @property
    def addr(self) -> str:
        return self.host.listen_addrs[0]


@contextlib.asynccontextmanager
async def peer(*, server: bool = True, config: DhtConfig | None = None) -> AsyncIterator[Peer]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        start_services(host)
        identify = identify_service(host)
        assert identify is not None
        async with KadDht(host, identify, server=server, config=config) as dht:
            yield Peer(host, dht)


@contextlib.asynccontextmanager
async def network(n: int, config: DhtConfig | None = None) -> AsyncIterator[list[Peer]]:
    """``n`` DHT servers, each joined through the first one (its only bootstrap peer)."""
    async with contextlib.AsyncExitStack() as stack:
        peers = [await stack.enter_async_context(peer(config=config)) for _ in range(n)]
        for p in peers[1:]:
            await p.host.dial(peers[0].addr)
        await until(lambda: len(peers[0].dht.table) == n - 1, 10, "the first peer's table holds everyone")
        yield peers


async def request(host: Host, target: Peer, message: KadMessage) -> KadMessage | None:
    """One raw request on a new stream; None when the stream ended (or was reset) with no answer."""
    stream = await host.new_stream(target.addr, LAN_KAD_PROTOCOL)
    await stream.write(lp.encode_message(encode_message(message)))
    try:
        body = await stream.read_message()
    except Exception:
        return None
    await stream.close()
    return None if body is None else decode_message(body)[0]


async def test_identify_fills_tables_and_a_provider_is_found_across_hops() -> None:
    async with network(8) as peers:
        for p in peers[1:]:  # everyone joined through the first: each learnt others by its self lookup
            await until(lambda p=p: len(p.dht.table) >= 2, 10, f"{p.host.peer_id}'s table grows")
        provider, seeker = peers[3], peers[7]
        assert await provider.dht.provide(KEY) >= 1
        found = await seeker.dht.find_providers(KEY)
        assert [f.peer for f in found] == [provider.host.peer_id]
        assert Multiaddr.parse(provider.addr).without_peer_id() in found[0].addrs


async def test_the_closest_peers_store_the_record() -> None:
    async with network(10) as peers:
        provider = peers[1]
        stored = await provider.dht.provide(KEY)
        assert stored >= 1

        def holders() -> list[Peer]:
            return [p for p in peers if p.dht.providers.get(KEY, asyncio.get_running_loop().time())]

        # ADD_PROVIDER has no answer: the records land a moment after provide() returns
        await until(lambda: len(holders()) == stored + 1, 5, "every peer told holds the record")
        assert provider in holders()  # the provider keeps its own record too
        for p in holders():
            assert [r.peer for r in p.dht.providers.get(KEY, 0.0)] == [provider.host.peer_id]


async def test_what_we_provide_is_published_again_on_schedule() -> None:
    """Every ``republish_interval`` (22 h by default; a fraction of a second here) the provider sends its
    records again, and the peers holding them renew them."""
    config = DhtConfig(republish_interval=0.2)
    async with network(3, config) as peers:
        provider, holder = peers[1], peers[0]
        assert await provider.dht.provide(KEY) >= 1
        await until(lambda: holder.dht.providers.get(KEY, 0.0), 5, "the record at the holder")
        first = holder.dht.providers.get(KEY, 0.0)[0].expires
        await until(lambda: holder.dht.providers.get(KEY, 0.0)[0].expires > first, 5, "the record renewed")


async def test_a_client_mode_dht_asks_but_is_not_listed() -> None:
    async with network(3) as peers, peer(server=False) as client:
        await client.host.dial(peers[0].addr)
        await until(lambda: len(client.dht.table) >= 1, 10, "the client's table fills")
        assert LAN_KAD_PROTOCOL not in client.host.protocols
        assert client.host.peer_id not in peers[0].dht.table
        await peers[2].dht.provide(KEY)
        found = await client.dht.find_providers(KEY)
        assert [f.peer for f in found] == [peers[2].host.peer_id]


async def test_ping_and_get_value_are_answered_put_value_refused() -> None:
    async with network(3) as peers, Host() as raw:
        target = peers[0]
        assert await request(raw, target, KadMessage(MessageType.PING)) == KadMessage(MessageType.PING)
        got = await request(raw, target, KadMessage(MessageType.GET_VALUE, key=b"/pk/x"))
        assert got is not None and got.record is None and got.closer  # not found, closer peers named
        refused = await request(raw, target, KadMessage(MessageType.PUT_VALUE, key=b"/pk/x", record=b"v"))
        assert refused is None
        assert target.host.metrics.refused[RefusalReason.KAD_PUT_VALUE] == 1
        assert await request(raw, target, KadMessage(MessageType.PING)) is not None  # still served


async def test_malformed_messages_end_only_their_stream(caplog: pytest.LogCaptureFixture) -> None:
    async with network(2) as peers, Host() as raw:
        target = peers[0]
        stream = await raw.new_stream(target.addr, LAN_KAD_PROTOCOL)
        with caplog.at_level(logging.INFO, "mimirlite"):
            await stream.write(lp.encode_message(b"\x08\x04\x12\xff\x01"))  # a key longer than the message
            assert await _ended(stream)
        assert target.host.metrics.protocol_errors[ProtocolErrorKind.KAD] == 1
        assert "handler ended" in caplog.text
        assert await request(raw, target, KadMessage(MessageType.PING)) is not None
        assert await peers[1].dht.find_closest(KEY)  # the DHT goes on


async def test_absurd_counts_end_only_their_stream() -> None:
    async with network(2) as peers, Host() as raw:
        target = peers[0]
        crowd = tuple(PeerInfo(KeyPair.generate().peer_id) for _ in range(MessageLimits().max_peers + 1))
        stream = await raw.new_stream(target.addr, LAN_KAD_PROTOCOL)
        await stream.write(
            lp.encode_message(encode_message(KadMessage(MessageType.FIND_NODE, KEY, closer=crowd)))
        )
        assert await _ended(stream)
        assert target.host.metrics.protocol_errors[ProtocolErrorKind.KAD] == 1
        assert await request(raw, target, KadMessage(MessageType.FIND_NODE, key=KEY)) is not None


async def test_a_record_for_another_peer_is_left_out() -> None:
    async with network(2) as peers, Host(listen=["/ip4/127.0.0.1/tcp/0"]) as raw:
        target = peers[0]
        other = KeyPair.generate().peer_id
        forged = PeerInfo(other, (Multiaddr.parse("/ip4/127.0.0.1/tcp/4001"),))
        own = PeerInfo(raw.peer_id, (Multiaddr.parse(raw.listen_addrs[0]).without_peer_id(),))
        stream = await raw.new_stream(target.addr, LAN_KAD_PROTOCOL)
        msg = KadMessage(MessageType.ADD_PROVIDER, key=KEY, providers=(forged, own))
        await stream.write(lp.encode_message(encode_message(msg)))
        await stream.close()
        now = asyncio.get_running_loop().time()
        await until(lambda: target.dht.providers.get(KEY, now), 5, "the sender's own record is stored")
        assert [p.peer for p in target.dht.providers.get(KEY, now)] == [raw.peer_id]
        assert target.host.metrics.refused[RefusalReason.KAD_FOREIGN_PROVIDER] == 1


async def test_a_record_is_kept_without_the_senders_p2p_suffix() -> None:
    # kad-dht 14.2 sends its addresses in ADD_PROVIDER with /p2p/<its id>: kept (and answered) without it
    async with network(2) as peers, Host(listen=["/ip4/127.0.0.1/tcp/0"]) as raw:
        target = peers[0]
        bare = Multiaddr.parse(raw.listen_addrs[0]).without_peer_id()
        other = Multiaddr.parse("/ip4/127.0.0.1/tcp/4001").with_peer_id(KeyPair.generate().peer_id)
        sent = (bare.with_peer_id(raw.peer_id), bare, other)
        msg = KadMessage(MessageType.ADD_PROVIDER, key=KEY, providers=(PeerInfo(raw.peer_id, sent),))
        stream = await raw.new_stream(target.addr, LAN_KAD_PROTOCOL)
        await stream.write(lp.encode_message(encode_message(msg)))
        await stream.close()
        now = asyncio.get_running_loop().time()
        await until(lambda: target.dht.providers.get(KEY, now), 5, "the record is stored")
        [record] = target.dht.providers.get(KEY, now)
        assert record.addrs == (bare,)  # once, bare; the address of another peer left out
        got = await request(raw, target, KadMessage(MessageType.GET_PROVIDERS, key=KEY))
        assert got is not None and got.providers == (PeerInfo(raw.peer_id, (bare,)),)


async def test_providers_found_are_kept_without_their_p2p_suffix() -> None:
    # kad-dht 14.2 answers GET_PROVIDERS with a provider's addresses both bare and with /p2p/<provider>
    provider = KeyPair.generate().peer_id
    bare = Multiaddr.parse("/ip4/127.0.0.1/tcp/4001")
    other = Multiaddr.parse("/ip4/127.0.0.1/tcp/4002").with_peer_id(KeyPair.generate().peer_id)
    named = PeerInfo(provider, (bare.with_peer_id(provider), bare, other))

    async def serve(stream: Stream) -> None:
        while (body := await stream.read_message()) is not None:
            asked = decode_message(body)[0]
            answer = KadMessage(asked.type, key=asked.key)
            if asked.type is MessageType.GET_PROVIDERS:
                answer = KadMessage(asked.type, key=asked.key, providers=(named,))
            await stream.write(lp.encode_message(encode_message(answer)))

    async with peer() as seeker, Host(listen=["/ip4/127.0.0.1/tcp/0"]) as fake:
        fake.set_handler(LAN_KAD_PROTOCOL, serve)
        seeker.host.add_addrs(fake.peer_id, fake.listen_addrs)
        seeker.dht.add_peer(fake.peer_id)
        assert await seeker.dht.find_providers(KEY) == [PeerInfo(provider, (bare,))]


async def test_an_add_provider_flood_is_cut_off() -> None:
    config = DhtConfig(add_provider_per_minute=5)
    async with network(2, config) as peers, Host(listen=["/ip4/127.0.0.1/tcp/0"]) as raw:
        target = peers[0]
        own = PeerInfo(raw.peer_id, (Multiaddr.parse(raw.listen_addrs[0]).without_peer_id(),))
        stream = await raw.new_stream(target.addr, LAN_KAD_PROTOCOL)
        for i in range(50):
            key = b"\x12\x20" + hashlib.sha256(str(i).encode()).digest()
            msg = KadMessage(MessageType.ADD_PROVIDER, key=key, providers=(own,))
            try:
                await stream.write(lp.encode_message(encode_message(msg)))
            except Exception:
                break
        assert await _ended(stream)
        assert target.host.metrics.refused[RefusalReason.KAD_ADD_PROVIDER_RATE] == 1
        assert target.dht.providers.key_count == 5
        other = peers[1]
        assert await other.dht.provide(KEY) >= 1  # another peer is still served


async def test_a_dead_peer_is_pruned_and_lookups_still_converge() -> None:
    async with network(6) as peers:
        victim = peers[4]
        await until(lambda: victim.host.peer_id in peers[1].dht.table, 10, "peer 1 knows the victim")
        await victim.dht.stop()
        await victim.host.stop()
        await peers[2].dht.provide(KEY)
        await peers[1].dht.find_closest(KEY)
        await peers[1].dht.find_closest(victim.host.peer_id.to_bytes())
        assert victim.host.peer_id not in peers[1].dht.table
        assert [f.peer for f in await peers[1].dht.find_providers(KEY)] == [peers[2].host.peer_id]


async def test_a_peer_naming_endless_fake_peers_does_not_stall_a_lookup() -> None:
    """A hostile DHT server answers every request with 20 fresh peers that do not exist: the lookup ends
    within its bounds and still finds the honest provider."""
    config = DhtConfig(lookup=LookupConfig(request_timeout=2.0, deadline=10.0, max_asked=40))

    async def liar(stream: Stream) -> None:
        while (body := await stream.read_message()) is not None:
            asked = decode_message(body)[0]
            fakes = tuple(
                PeerInfo(KeyPair.generate().peer_id, (Multiaddr.parse("/ip4/127.0.0.1/tcp/1"),))
                for _ in range(20)
            )
            answer = KadMessage(asked.type, asked.key, closer=fakes)
            await stream.write(lp.encode_message(encode_message(answer)))

    async with network(5, config) as peers, Host(listen=["/ip4/127.0.0.1/tcp/0"]) as bad:
        start_services(bad)
        bad.set_handler(LAN_KAD_PROTOCOL, liar)
        for p in peers:
            await p.host.dial(bad.listen_addrs[0])
        await until(lambda: all(bad.peer_id in p.dht.table for p in peers), 10, "the liar is in every table")
        await peers[2].dht.provide(KEY)
        loop = asyncio.get_running_loop()
        started = loop.time()
        found = await peers[4].dht.find_providers(KEY)
        assert loop.time() - started < 10.0 + 2.0
        assert peers[2].host.peer_id in [f.peer for f in found]


async def test_host_remembers_a_bounded_number_of_peers() -> None:
    from mimirlite.net.config import HostConfig

    async with Host(config=HostConfig(max_known_peers=100, max_addrs_per_peer=2)) as host:
        peers = [KeyPair.generate().peer_id for _ in range(300)]
        for i, p in enumerate(peers):
            host.add_addrs(p, [f"/ip4/10.0.{i // 250}.{i % 250}/tcp/{port}" for port in (1, 2, 3)])
        assert sum(1 for p in peers if host.addrs_of(p)) == 100
        assert not host.addrs_of(peers[0]) and len(host.addrs_of(peers[-1])) == 2


async def _ended(stream: Stream) -> bool:
    """Whether the remote ended ``stream`` (reset, or closed unread), within a generous bound."""
    try:
        await asyncio.wait_for(stream.read_message(), 5)
    except asyncio.TimeoutError:
        return False
    except Exception:
        return True
    return True
