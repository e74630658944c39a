"""mimirlite hosts with their NAT services (AutoNAT, relay, DCUtR) on a namespace's loop, for the NAT labs.

Each object lives on the :class:`~tests.helpers.netns.NetnsLoop` it was started on (one thread per
namespace host); the context managers start it there and stop it there. The namespaces themselves are
:class:`~tests.helpers.netns.NatLab`'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from mimirlite import Host
from mimirlite.protocols import identify_service, start_services
from mimirlite.protocols.autonat.service import AutoNat, AutonatConfig
from mimirlite.protocols.dcutr.holepunch import HolePunchConfig
from mimirlite.protocols.dcutr.service import HolePuncher
from mimirlite.protocols.relay.client import RelayClient
from mimirlite.protocols.relay.service import RelayService
from tests.helpers.netns import NetnsLoop


@contextlib.asynccontextmanager
async def autonat_on(loop: NetnsLoop, listen: str, config: AutonatConfig) -> AsyncIterator[AutoNat]:
    """A host listening on ``listen`` with identify and AutoNAT (both roles), started on ``loop`` (a
    namespace's thread); stopped there."""

    async def start() -> AutoNat:
        host = Host(listen=[listen])
        await host.start()
        start_services(host)
        identify = identify_service(host)
        assert identify is not None
        autonat = AutoNat(host, identify, config)
        await autonat.start()
        return autonat

    async def stop(autonat: AutoNat) -> None:
        await autonat.stop()
        await autonat.host.stop()

    autonat = await loop.run(start(), timeout=10)
    try:
        yield autonat
    finally:
        await loop.run(stop(autonat), timeout=10)


@contextlib.asynccontextmanager
async def relay_on(loop: NetnsLoop, listen: str, config: AutonatConfig) -> AsyncIterator[AutoNat]:
    """:func:`autonat_on` also serving circuit relay v2 (HOP): a relay on the wan, an AutoNAT server too."""
    async with autonat_on(loop, listen, config) as node:
        relay = RelayService(node.host)
        await loop.run(relay.start(), timeout=10)
        try:
            yield node
        finally:
            await loop.run(relay.stop(), timeout=10)


async def reserve_and_punch(node: AutoNat, relay: AutoNat, punch: HolePunchConfig) -> tuple[str, HolePuncher]:
    """On ``node``'s loop: reserve on ``relay`` (a :func:`relay_on`; connected by the reservation, then
    identified, so ``node`` learns its observed address) and punch every relayed connection it takes
    (DCUtR, as the dialed side). Its circuit address and its puncher."""
    client = RelayClient(node.host, [relay.host.listen_addrs[0]])
    await client.start()
    await node.identify.identify(node.host.connections[relay.host.peer_id])
    puncher = HolePuncher(node.host, node.candidate_addrs, punch)
    await puncher.start()
    client.on_relayed.append(puncher.on_relayed)
    [circuit] = client.circuit_addrs
    return circuit, puncher
