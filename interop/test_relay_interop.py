"""mimirlite's relay service (``RelayService``) carrying js-libp2p 2.5 peers (@libp2p/circuit-relay-v2
3.1.7 clients): a JS peer reserves a slot, another JS peer dials its circuit address and echoes through it;
the circuit's data limit ends it, counted; a JS peer without a reservation is refused."""

from __future__ import annotations

import pytest
from jsnat import JsNatPeer

from mimirlite import Host
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
