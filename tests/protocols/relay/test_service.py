"""The relay service on real hosts over loopback: a peer reserves, another connects through the relay and
a full libp2p connection (Noise + yamux) runs inside the circuit; the circuit's limits end it, counted;
refusals (no reservation, relayed requests, malformed requests, full tables) answer a status and end only
their own stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from mimirlite import Host
from mimirlite.errors import ProtocolErrorKind
from mimirlite.identity import PeerId
from mimirlite.net.connection import Connection
from mimirlite.net.stream import Stream
from mimirlite.net.transport import StreamTransport
from mimirlite.protocols.relay.messages import (
    HOP_PROTOCOL,
    STOP_PROTOCOL,
    HopMessage,
    HopType,
    RelayPeer,
    Status,
    StopMessage,
    StopType,
    decode_hop,
    decode_stop,
    encode_hop,
    encode_stop,
)
from mimirlite.protocols.relay.resources import RelayResources
from mimirlite.protocols.relay.service import RelayService
from mimirlite.wire import lp
from tests.helpers import ECHO, echo_handler
from tests.helpers.waiting import until

pytestmark = pytest.mark.usefixtures("no_tasks_left")


async def hop(host: Host, relay: str | Connection, message: HopMessage) -> tuple[Stream, HopMessage]:
    """Send one HOP request to ``relay``; the stream and the relay's answer."""
    conn = relay if isinstance(relay, Connection) else await host.dial(relay)
    stream = await host.open_on(conn, HOP_PROTOCOL)
    await stream.write(lp.encode_message(encode_hop(message)))
    body = await asyncio.wait_for(stream.read_message(), 5)
    assert body is not None
    return stream, decode_hop(body)[0]


class Target:
    """A peer that reserved on the relay and takes circuits: each becomes a connection (upgraded inside the
    STOP stream) serving the echo protocol."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.inner: list[Connection] = []
        host.set_handler(STOP_PROTOCOL, self.take)
        host.set_handler(ECHO, echo_handler)

    async def take(self, stream: Stream) -> None:
        body = await stream.read_message()
        assert body is not None
        offer, _ = decode_stop(body)
        assert offer.type is StopType.CONNECT and offer.peer is not None
        await stream.write(lp.encode_message(encode_stop(StopMessage(StopType.STATUS, status=Status.OK))))
        inner = await self.host.upgrade_over(
            StreamTransport(stream), initiator=False, expected_peer=offer.peer.peer
        )
        self.inner.append(inner)
        await inner.closed  # the stream carries the connection until it ends


@contextlib.asynccontextmanager
async def relay_and_target(
    resources: RelayResources | None = None,
) -> AsyncIterator[tuple[RelayService, Target]]:
    async with (
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as relay_host,
        RelayService(relay_host, resources) as relay,
        Host() as target_host,
    ):
        target = Target(target_host)
        _, answer = await hop(target_host, relay_host.listen_addrs[0], HopMessage(HopType.RESERVE))
        assert answer.status is Status.OK and answer.reservation is not None
        yield relay, target


async def connect(host: Host, relay: RelayService, target: PeerId) -> tuple[Connection, HopMessage]:
    """A connection to ``target`` through ``relay``: CONNECT, then Noise and yamux inside the circuit."""
    stream, answer = await hop(
        host, relay.host.listen_addrs[0], HopMessage(HopType.CONNECT, RelayPeer(target))
    )
    assert answer.status is Status.OK, answer
    inner = await host.upgrade_over(StreamTransport(stream), initiator=True, expected_peer=target)
    return inner, answer


async def echo(host: Host, conn: Connection, data: bytes) -> bytes:
    stream = await host.open_on(conn, ECHO)
    await stream.write(data)
    await stream.close_write()
    return await asyncio.wait_for(stream.read_all(), 10)


async def test_a_reserving_peer_is_reached_through_the_relay() -> None:
    async with relay_and_target() as (relay, target), Host() as source:
        inner, answer = await connect(source, relay, target.host.peer_id)
        assert answer.limit == relay.resources.limit  # the circuit's limits are announced
        data = b"through the relay " * 1000
        assert await echo(source, inner, data) == data
        assert relay.metrics.circuits == 1 and relay.metrics.relayed_bytes > len(data) * 2
        assert relay.metrics.reservations == 1


async def test_the_reservation_answer_names_the_relay_and_its_limit() -> None:
    async with (
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as relay_host,
        RelayService(relay_host) as relay,
        Host() as peer,
    ):
        _, answer = await hop(peer, relay_host.listen_addrs[0], HopMessage(HopType.RESERVE))
        assert answer.status is Status.OK and answer.limit == relay.resources.limit
        assert answer.reservation is not None
        assert [str(a) for a in answer.reservation.addrs] == relay_host.dialable_addrs
        assert answer.reservation.expire > 1_700_000_000  # Unix seconds
        assert relay.reservations.get(peer.peer_id, asyncio.get_running_loop().time()) is not None
        peer.connections[relay_host.peer_id].close()  # its connection ends: the reservation goes
        await until(lambda: len(relay.reservations) == 0, 5, "the reservation dropped")


async def test_a_circuit_ends_at_its_data_limit_and_is_counted() -> None:
    async with relay_and_target(RelayResources(circuit_data=64 * 1024)) as (relay, target), Host() as source:
        inner, _ = await connect(source, relay, target.host.peer_id)
        assert await echo(source, inner, b"small") == b"small"
        with pytest.raises(Exception):  # noqa: B017 - the relayed connection ends, however it surfaces
            await echo(source, inner, b"x" * 200_000)
        await until(lambda: relay.metrics.ended["data"] == 1, 5, "the circuit ended at its data limit")
        assert len(relay.circuits) == 0


async def test_a_circuit_ends_at_its_duration() -> None:
    async with relay_and_target(RelayResources(circuit_duration=0.5)) as (relay, target), Host() as source:
        inner, answer = await connect(source, relay, target.host.peer_id)
        assert answer.limit is not None and answer.limit.duration == 1  # whole seconds on the wire
        await until(lambda: inner.is_closed, 5, "the relayed connection ended with its circuit")
        assert relay.metrics.ended["duration"] == 1 and len(relay.circuits) == 0


async def test_refusals_answer_a_status_and_count() -> None:
    resources = RelayResources(max_reservations=1)
    async with relay_and_target(resources) as (relay, target), Host() as other:
        addr = relay.host.listen_addrs[0]
        _, answer = await hop(other, addr, HopMessage(HopType.RESERVE))
        assert answer.status is Status.RESERVATION_REFUSED  # one reservation in all: the target's
        _, answer = await hop(other, addr, HopMessage(HopType.CONNECT, RelayPeer(other.peer_id)))
        assert answer.status is Status.NO_RESERVATION
        _, answer = await hop(other, addr, HopMessage(HopType.CONNECT))
        assert answer.status is Status.MALFORMED_MESSAGE
        _, answer = await hop(other, addr, HopMessage(HopType.STATUS, status=Status.OK))
        assert answer.status is Status.UNEXPECTED_MESSAGE
        stream = await other.new_stream(addr, HOP_PROTOCOL)
        await stream.write(lp.encode_message(b"\x08\x07"))  # an unknown type
        body = await asyncio.wait_for(stream.read_message(), 5)
        assert body is not None and decode_hop(body)[0].status is Status.MALFORMED_MESSAGE
        assert relay.host.metrics.protocol_errors[ProtocolErrorKind.RELAY] == 1
        assert relay.metrics.refused == {
            "reservation_refused": 1,
            "no_reservation": 1,
            "malformed_message": 2,
            "unexpected_message": 1,
        }
        # the target is still served through the relay
        inner, _ = await connect(other, relay, target.host.peer_id)
        assert await echo(other, inner, b"still relaying") == b"still relaying"


async def test_no_relaying_over_a_relayed_connection() -> None:
    async with relay_and_target() as (relay, target), Host() as source:
        inner, _ = await connect(source, relay, target.host.peer_id)
        # the target runs a relay too; the source asks it, over the relayed connection, to reserve
        async with RelayService(target.host) as second:
            stream = await source.open_on(inner, HOP_PROTOCOL)
            await stream.write(lp.encode_message(encode_hop(HopMessage(HopType.RESERVE))))
            body = await asyncio.wait_for(stream.read_message(), 5)
            assert body is not None and decode_hop(body)[0].status is Status.PERMISSION_DENIED
            assert second.metrics.refused == {"permission_denied": 1}


async def test_a_stop_refused_by_the_target_is_connection_failed() -> None:
    async with (
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as relay_host,
        RelayService(relay_host) as relay,
        Host() as target,
        Host() as source,
    ):

        async def refuse(stream: Stream) -> None:
            await stream.read_message()
            no = StopMessage(StopType.STATUS, status=Status.PERMISSION_DENIED)
            await stream.write(lp.encode_message(encode_stop(no)))

        target.set_handler(STOP_PROTOCOL, refuse)
        await hop(target, relay_host.listen_addrs[0], HopMessage(HopType.RESERVE))
        _, answer = await hop(
            source, relay_host.listen_addrs[0], HopMessage(HopType.CONNECT, RelayPeer(target.peer_id))
        )
        assert answer.status is Status.CONNECTION_FAILED
        assert len(relay.circuits) == 0
