"""mimirlite's relay service and client with js-libp2p 2.5 peers (@libp2p/circuit-relay-v2 3.1.7) both ways:
JS peers reserve on and connect through a mimirlite relay (its data limit ends a circuit, counted; a peer
without a reservation is refused); mimirlite reserves on a JS relay and is reached through it, and dials a
JS peer behind a JS relay."""

from __future__ import annotations

import asyncio

import pytest
from jsnat import ECHO_PROTOCOL, JsNatPeer

from mimirlite import Host, PeerId, Stream
from mimirlite.protocols.relay.client import RelayClient
from mimirlite.protocols.relay.resources import RelayResources
from mimirlite.protocols.relay.service import RelayService
from tests.helpers.waiting import until

pytestmark = pytest.mark.usefixtures("no_leaks")


async def test_js_peers_relay_through_mimirlite() -> None:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, RelayService(host) as relay:
        relay_addr = host.listen_addrs[0]
        async with (
            await JsNatPeer.start(reserve=[relay_addr]) as target,
            await JsNatPeer.start(relay_client=True) as source,
        ):
            circuit = f"{relay_addr}/p2p-circuit/p2p/{target.peer_id}"
            await until(lambda: len(relay.reservations) == 1, 10, "the JS peer's reservation")
            assert circuit in await target.current_addrs()
            dialed = await source.dial(circuit)
            assert dialed == {"peerId": target.peer_id, "relayed": True, "limited": True}
            data = b"a JS peer through a mimirlite relay " * 500
            assert await source.echo(data, peer_id=target.peer_id) == data
            assert relay.metrics.circuits == 1 and relay.metrics.relayed_bytes >= 2 * len(data)


async def test_the_circuit_data_limit_ends_a_js_circuit() -> None:
    resources = RelayResources(circuit_data=16 * 1024)
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, RelayService(host, resources) as relay:
        relay_addr = host.listen_addrs[0]
        async with (
            await JsNatPeer.start(reserve=[relay_addr]) as target,
            await JsNatPeer.start(relay_client=True) as source,
        ):
            await until(lambda: len(relay.reservations) == 1, 10, "the JS peer's reservation")
            await source.dial(f"{relay_addr}/p2p-circuit/p2p/{target.peer_id}")
            with pytest.raises(Exception):  # noqa: B017 - the JS side sees its relayed stream end
                await source.echo(b"y" * 100_000, peer_id=target.peer_id)
            await until(lambda: relay.metrics.ended["data"] == 1, 10, "the circuit ended at its data limit")


async def test_a_circuit_to_a_peer_without_reservation_is_refused() -> None:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, RelayService(host) as relay:
        relay_addr = host.listen_addrs[0]
        async with await JsNatPeer.start(relay_client=True) as source, await JsNatPeer.start() as stranger:
            with pytest.raises(Exception, match="NO_RESERVATION"):
                await source.dial(f"{relay_addr}/p2p-circuit/p2p/{stranger.peer_id}")
            assert relay.metrics.refused["no_reservation"] == 1


async def echo_handler(stream: Stream) -> None:
    while data := await stream.read():
        await stream.write(data)
    await stream.close_write()


async def test_mimirlite_behind_a_js_relay_is_reached_by_a_js_peer() -> None:
    """mimirlite's relay client reserves on a JS relay; a JS peer dials its circuit address and echoes."""
    async with (
        await JsNatPeer.start(relay_server=True) as js_relay,
        Host() as host,
        RelayClient(host, [js_relay.addr]) as client,
        await JsNatPeer.start(relay_client=True) as js,
    ):
        host.set_handler(ECHO_PROTOCOL, echo_handler)
        [circuit] = client.circuit_addrs
        held = client.held[PeerId.from_string(js_relay.peer_id)]
        assert held.limit is not None and held.limit.data == 1 << 17  # the JS relay's default cap
        dialed = await js.dial(circuit)
        assert dialed == {"peerId": str(host.peer_id), "relayed": True, "limited": True}
        data = b"to mimirlite behind a JS relay"
        assert await js.echo(data, peer_id=str(host.peer_id)) == data


async def test_mimirlite_dials_a_js_peer_behind_a_js_relay() -> None:
    async with (
        await JsNatPeer.start(relay_server=True) as js_relay,
        await JsNatPeer.start(reserve=[js_relay.addr]) as target,
        Host() as host,
        RelayClient(host),
    ):
        circuit = f"{js_relay.addr}/p2p-circuit/p2p/{target.peer_id}"
        await until(lambda: _has(target, circuit), 10, "the JS target's reservation")
        stream = await host.new_stream(circuit, ECHO_PROTOCOL)
        await stream.write(b"to a JS peer behind a JS relay")
        await stream.close_write()
        assert await asyncio.wait_for(stream.read_all(), 10) == b"to a JS peer behind a JS relay"


async def _has(peer: JsNatPeer, addr: str) -> bool:
    return addr in await peer.current_addrs()
