"""The relay client on real hosts over loopback, with mimirlite's relay service: reservations made, renewed
and made again when lost; ``Host.dial`` of a circuit address; STOP taken only from our relays; a relayed
connection ending at the relay's duration limit says so."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from mimirlite import Host
from mimirlite.errors import DialError, MimirliteError
from mimirlite.protocols import identify_service, start_services
from mimirlite.protocols.kad.service import KadDht
from mimirlite.protocols.relay.client import RelayClient, RelayRefusedError, split_circuit
from mimirlite.protocols.relay.messages import (
    STOP_PROTOCOL,
    RelayPeer,
    Status,
    StopMessage,
    StopType,
    decode_stop,
    encode_stop,
)
from mimirlite.protocols.relay.resources import RelayResources
from mimirlite.protocols.relay.service import RelayService
from mimirlite.wire import lp
from tests.helpers import ECHO, echo_handler
from tests.helpers.waiting import until

pytestmark = pytest.mark.usefixtures("no_tasks_left")


@contextlib.asynccontextmanager
async def relay(resources: RelayResources | None = None) -> AsyncIterator[RelayService]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, RelayService(host, resources) as service:
        yield service


@contextlib.asynccontextmanager
async def behind(service: RelayService) -> AsyncIterator[RelayClient]:
    """A peer that does not listen, reachable only through ``service``'s relay, serving echo."""
    async with Host() as host, RelayClient(host, [service.host.listen_addrs[0]]) as client:
        host.set_handler(ECHO, echo_handler)
        yield client


async def echo_via(host: Host, addr: str, data: bytes) -> bytes:
    stream = await host.new_stream(addr, ECHO)
    await stream.write(data)
    await stream.close_write()
    return await asyncio.wait_for(stream.read_all(), 10)


async def test_a_peer_behind_a_relay_is_dialed_by_its_circuit_address() -> None:
    async with relay() as service, behind(service) as target, Host() as source, RelayClient(source):
        [addr] = target.circuit_addrs
        assert addr == f"{service.host.listen_addrs[0]}/p2p-circuit/p2p/{target.host.peer_id}"
        data = b"dialed through the relay " * 300
        assert await echo_via(source, addr, data) == data
        assert source.connections[target.host.peer_id].transport is not None  # one connection, reused
        assert await echo_via(source, addr, b"again") == b"again"
        assert service.metrics.circuits == 1


async def test_a_circuit_address_needs_a_relay_client_and_a_reservation() -> None:
    async with relay() as service, Host() as source:
        stranger = Host().peer_id
        addr = f"{service.host.listen_addrs[0]}/p2p-circuit/p2p/{stranger}"
        with pytest.raises(DialError, match="no relay client"):
            await source.dial(addr)
        async with RelayClient(source):
            with pytest.raises(RelayRefusedError) as refused:
                await source.dial(addr)
            assert refused.value.status is Status.NO_RESERVATION


def test_circuit_addresses_are_checked() -> None:
    relay_peer, target = Host().peer_id, Host().peer_id
    assert split_circuit(f"/ip4/10.0.0.1/tcp/4001/p2p/{relay_peer}/p2p-circuit/p2p/{target}") == (
        f"/ip4/10.0.0.1/tcp/4001/p2p/{relay_peer}",
        target,
    )
    for bad in (
        f"/ip4/10.0.0.1/tcp/4001/p2p-circuit/p2p/{target}",  # which relay?
        f"/ip4/10.0.0.1/tcp/4001/p2p/{relay_peer}/p2p-circuit",  # to whom?
        f"/ip4/10.0.0.1/tcp/4001/p2p/{relay_peer}/p2p-circuit/p2p/{target}/p2p-circuit/p2p/{target}",
    ):
        with pytest.raises(DialError):
            split_circuit(bad)


async def test_a_reservation_is_renewed_before_it_expires() -> None:
    """Renewed while still held: our relayed address is announced all along (no gap at each renewal)."""
    async with relay(RelayResources(reservation_ttl=2.0)) as service, behind(service) as target:
        relay_peer = service.host.peer_id
        first = target.held[relay_peer].expire
        announced: list[list[str]] = []
        target.host.on_addrs_changed.append(lambda: announced.append(target.host.relayed_addrs))
        await until(
            lambda: relay_peer in target.held and target.held[relay_peer].expire > first,
            10,
            "the reservation renewed",
        )
        assert service.metrics.reservations >= 2
        assert all(announced), announced
        assert target.host.relayed_addrs == target.circuit_addrs


async def test_a_lost_relay_connection_is_reserved_again() -> None:
    async with relay() as service, behind(service) as target:
        service.host.connections[target.host.peer_id].close()
        await until(lambda: service.metrics.reservations >= 2, 10, "reserved again")
        assert len(service.reservations) == 1 and target.circuit_addrs


async def test_stop_is_taken_only_from_our_relays() -> None:
    async with (
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as rogue,
        Host() as victim_host,
        RelayClient(victim_host) as victim,
    ):
        # a peer that is not our relay offers us a circuit
        await victim_host.dial(rogue.listen_addrs[0])
        conn = rogue.connections[victim_host.peer_id]
        stream = await rogue.open_on(conn, STOP_PROTOCOL)
        offer = StopMessage(StopType.CONNECT, peer=RelayPeer(rogue.peer_id))
        await stream.write(lp.encode_message(encode_stop(offer)))
        body = await asyncio.wait_for(stream.read_message(), 5)
        assert body is not None and decode_stop(body)[0].status is Status.PERMISSION_DENIED
        assert not victim.held


def limit_warnings(caplog: pytest.LogCaptureFixture, fragment: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
        and r.name.startswith("mimirlite.protocols.relay")
        and fragment in r.getMessage()
    ]


async def test_a_relayed_connection_ending_at_the_duration_limit_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        relay(RelayResources(circuit_duration=1.0)) as service,
        behind(service) as target,
        Host() as source,
        RelayClient(source) as client,
    ):
        with caplog.at_level(logging.INFO, "mimirlite.protocols.relay"):
            conn = await source.dial(target.circuit_addrs[0])
            await asyncio.wait_for(conn.closed, 10)
            await until(
                lambda: len(limit_warnings(caplog, "duration limit (1 s)")) == 2, 5, "both ends' warnings"
            )
        assert service.metrics.ended["duration"] == 1
        assert client.ended == {"duration": 1} and target.ended == {"duration": 1}
        assert await echo_via(source, target.circuit_addrs[0], b"dialed again") == b"dialed again"
        assert service.metrics.circuits == 2


async def test_a_relayed_connection_ending_at_the_data_limit_says_so_and_a_new_dial_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        relay(RelayResources(circuit_data=64 * 1024)) as service,
        behind(service) as target,
        Host() as source,
        RelayClient(source) as client,
    ):
        addr = target.circuit_addrs[0]
        with caplog.at_level(logging.INFO, "mimirlite.protocols.relay"):
            assert await echo_via(source, addr, b"small") == b"small"
            with pytest.raises(MimirliteError):  # the relay resets the circuit at 64 KiB
                await echo_via(source, addr, b"x" * 200_000)
            await until(lambda: service.metrics.ended["data"] == 1, 5, "the circuit ended at its data limit")
            await until(
                lambda: client.ended == {"data": 1} and target.ended == {"data": 1}, 5, "both ends count it"
            )
            assert len(limit_warnings(caplog, "data limit (65536 bytes")) == 2  # both ends, the limit named
        assert await echo_via(source, addr, b"dialed again") == b"dialed again"
        assert service.metrics.circuits == 2 and not client.ended["duration"]


async def test_a_relayed_connection_closed_below_its_limits_is_not_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        relay(RelayResources(circuit_data=64 * 1024)) as service,
        behind(service) as target,
        Host() as source,
        RelayClient(source) as client,
    ):
        with caplog.at_level(logging.INFO, "mimirlite.protocols.relay"):
            conn = await source.dial(target.circuit_addrs[0])
            assert await echo_via(source, target.circuit_addrs[0], b"y" * 40_000) == b"y" * 40_000
            conn.close()
            await until(lambda: target.host.connections.get(source.peer_id) is None, 5, "closed at both ends")
        assert not client.ended and not target.ended and not limit_warnings(caplog, "limit")


async def test_relayed_addresses_are_announced_and_dialed_by_peer_id() -> None:
    """A peer that does not listen, behind the relay: identify and its DHT provider record carry its
    relayed address, and a peer that found it in the DHT dials it by peer ID, through the relay."""
    key = b"\x12\x20" + bytes(range(32))
    async with contextlib.AsyncExitStack() as stack:
        service = await stack.enter_async_context(relay())
        relay_kad = await stack.enter_async_context(kad_on(service.host))
        target = await stack.enter_async_context(behind(service))
        target_kad = await stack.enter_async_context(kad_on(target.host))
        [relayed] = target.host.relayed_addrs
        assert target.host.announced_addrs == [relayed]  # it listens nowhere: only through the relay
        await until(lambda: len(target_kad.table) == 1, 10, "the target's DHT knows the relay")
        assert await target_kad.provide(key) == 1
        record = [relayed.removesuffix(f"/p2p/{target.host.peer_id}")]
        await until(
            lambda: [str(a) for r in relay_kad.providers.get(key, 0.0) for a in r.addrs] == record,
            5,
            "the record at the relay, with the relayed address",
        )
        source = await stack.enter_async_context(Host())
        await stack.enter_async_context(RelayClient(source))
        source_kad = await stack.enter_async_context(kad_on(source))
        await source.dial(service.host.listen_addrs[0])
        await until(lambda: len(source_kad.table) == 1, 10, "the source's DHT knows the relay")
        [found] = await source_kad.find_providers(key)
        assert found.peer == target.host.peer_id
        assert source.addrs_of(target.host.peer_id) == [relayed]
        stream = await source.new_stream(target.host.peer_id, ECHO)  # by peer ID: through the relay
        await stream.write(b"found in the DHT, reached through the relay")
        await stream.close_write()
        assert await stream.read_all() == b"found in the DHT, reached through the relay"
        info = await source_kad.identify.identify(source.connections[target.host.peer_id])
        assert relayed.removesuffix(f"/p2p/{target.host.peer_id}") in info.listen_addrs


@contextlib.asynccontextmanager
async def kad_on(host: Host) -> AsyncIterator[KadDht]:
    start_services(host)
    identify = identify_service(host)
    assert identify is not None
    async with KadDht(host, identify) as dht:
        yield dht


async def test_a_relayed_connection_ends_at_once_when_the_far_side_vanishes() -> None:
    """The source stops (its connection to the relay ends without a word on the circuit): the relay resets
    the circuit's other stream, and the target's relayed connection ends then, not at a limit."""
    async with relay() as service, behind(service) as target:
        source = Host()
        await source.start()
        try:
            await RelayClient(source).start()
            assert await echo_via(source, target.circuit_addrs[0], b"hello") == b"hello"
            inner = target.host.connections[source.peer_id]
        finally:
            await source.stop()
        await asyncio.wait_for(inner.closed, 5)
        await until(lambda: len(service.circuits) == 0, 5, "the circuit gone at the relay")
        assert not target.ended and not service.metrics.ended
        assert target.circuit_addrs  # the reservation holds
