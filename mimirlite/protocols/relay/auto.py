"""Relays picked automatically: while AutoNAT says we are private, hold reservations on up to
``max_relays`` relays, the ones given first, then connected peers that serve HOP (identify says so)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mimirlite.aio import Service
from mimirlite.protocols.autonat.verdict import Reachability
from mimirlite.protocols.relay.messages import HOP_PROTOCOL

if TYPE_CHECKING:
    from mimirlite.net.host import Host
    from mimirlite.protocols.autonat.service import AutoNat
    from mimirlite.protocols.identify import Identify
    from mimirlite.protocols.relay.client import RelayClient

log = logging.getLogger(__name__)

MAX_RELAYS = 2
"""Relays a private node holds reservations on."""


class AutoRelay(Service):
    """Reserves on relays through ``client`` when ``autonat`` finds us private."""

    def __init__(
        self,
        host: Host,
        identify: Identify,
        autonat: AutoNat,
        client: RelayClient,
        *,
        relays: Sequence[str] = (),
        max_relays: int = MAX_RELAYS,
    ) -> None:
        self.host = host
        self.identify = identify
        self.autonat = autonat
        self.client = client
        self.preferred = list(relays)
        self.max_relays = max_relays
        self._picking: asyncio.Task[None] | None = None

    async def _start(self) -> None:
        self.autonat.on_reachability.append(self._on_reachability)
        if self.autonat.reachability is Reachability.PRIVATE:
            self._on_reachability(Reachability.PRIVATE)

    async def _stop(self) -> None:
        if self._on_reachability in self.autonat.on_reachability:
            self.autonat.on_reachability.remove(self._on_reachability)
        if self._picking is not None:
            self._picking.cancel()
            await asyncio.gather(self._picking, return_exceptions=True)

    def _on_reachability(self, reachability: Reachability) -> None:
        if reachability is Reachability.PRIVATE and (self._picking is None or self._picking.done()):
            self._picking = self.host.spawn(self._pick(), "mimirlite-autorelay")

    def candidates(self) -> list[str]:
        """Relays to try: the ones given, then connected peers that serve HOP, with their addresses."""
        out = list(self.preferred)
        for peer in self.host.connections:
            info = self.identify.info_of(peer)
            if info is None or HOP_PROTOCOL not in info.protocols:
                continue
            out += [a for a in self.host.addrs_of(peer) if a not in out][:1]
        return out

    async def _pick(self) -> None:
        held = await self.pick()
        log.info("reservations on %d relays", held)

    async def pick(self) -> int:
        """Reserve on relays until ``max_relays`` hold one of ours; how many do."""
        tried = set(self.client.relays)
        for addr in self.candidates():
            if len(self.client.held) >= self.max_relays:
                break
            if addr in tried:
                continue
            tried.add(addr)
            log.info("we are private: reserving on relay %s", addr)
            await self.client.add_relay(addr)
        return len(self.client.held)
