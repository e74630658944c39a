"""The DHT as a mimir node and client use it: models are keys (:func:`~mimirlite.mimir.models.dht_keys`),
a node provides the models it serves, a client finds who provides the one it wants; bootstrap peers join
the node or client to the DHT beyond its LAN."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from mimirlite.aio import Service
from mimirlite.discovery.bootstrap import Bootstrap
from mimirlite.errors import AddressError
from mimirlite.mimir.models import dht_keys
from mimirlite.protocols.kad.service import Dht, DhtConfig, merge_peer_infos

if TYPE_CHECKING:
    from mimirlite.discovery.dnsaddr import DnsResolver
    from mimirlite.net.host import Host
    from mimirlite.protocols.identify import Identify
    from mimirlite.protocols.kad.messages import PeerInfo

log = logging.getLogger(__name__)


class ModelDht(Service):
    """Both DHTs (:class:`~mimirlite.protocols.kad.service.Dht`) and the bootstrap peers, for models.

    ``public_server`` runs the public DHT in server mode (``--dht-server``); ``bootstrap`` as
    :class:`~mimirlite.discovery.bootstrap.Bootstrap` takes it ("ipfs", multiaddrs, /dnsaddr).
    """

    def __init__(
        self,
        host: Host,
        identify: Identify,
        *,
        bootstrap: Sequence[str] = (),
        public_server: bool = False,
        resolver: DnsResolver | None = None,
        config: DhtConfig | None = None,
    ) -> None:
        self.host = host
        self.dht = Dht(host, identify, public_server=public_server, config=config)
        self.bootstrap = Bootstrap(host, bootstrap, resolver=resolver) if bootstrap else None

    async def _start(self) -> None:
        await self.dht.start()
        if self.bootstrap is not None:
            await self.bootstrap.start()

    async def _stop(self) -> None:
        if self.bootstrap is not None:
            await self.bootstrap.stop()
        await self.dht.stop()

    def add_provided(self, names: Iterable[str]) -> bool:
        """Provide these models from now on (see :meth:`provide`) without telling anyone yet; True when a
        routing table has peers to tell now (else they are told once the first peer appears)."""
        names = list(names)
        for key in (k for n in names for k in dht_keys(n)):
            for d in self.dht.dhts:
                d.add_provided(key)
        return bool(self.dht.peers())

    async def provide(self, names: Iterable[str]) -> int:
        """Provide each model's keys on both DHTs (republished every 22 h, and when the first peers of a
        routing table appear); how many records peers took."""
        keys = [k for n in names for k in dht_keys(n)]
        counts = await asyncio.gather(*(self.dht.provide(k) for k in keys))
        return sum(counts)

    def unprovide(self, names: Iterable[str]) -> None:
        """Stop providing these models (records already stored elsewhere expire within 48 h)."""
        for name in names:
            for key in dht_keys(name):
                self.dht.unprovide(key)

    async def find(self, name: str, count: int = 20) -> list[PeerInfo]:
        """Providers of model ``name`` under any of its keys, one entry per peer; their addresses are
        remembered by the host, so each can be dialed by its peer ID."""
        found = await asyncio.gather(*(self.dht.find_providers(k, count) for k in dht_keys(name)))
        providers = merge_peer_infos(p for batch in found for p in batch)[:count]
        for info in providers:
            if info.peer == self.host.peer_id:
                continue
            for a in info.addrs:
                with contextlib.suppress(AddressError):  # not TCP over IP: nothing we dial
                    self.host.add_addrs(info.peer, [str(a)])
        log.info("DHT: %d providers of %s", len(providers), name)
        return providers
