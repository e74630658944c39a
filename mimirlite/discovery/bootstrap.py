"""Bootstrap peers: the public IPFS list, a user's list expanded, checked and resolved, and
:class:`Bootstrap`, which keeps a host connected to them.

``"ipfs"`` in a list stands for :data:`IPFS_BOOTSTRAP`; ``/dnsaddr`` and ``/dns*`` entries resolve
through :class:`~mimirlite.discovery.dnsaddr.DnsResolver`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mimirlite.aio import Service, ServiceState
from mimirlite.discovery.dnsaddr import DnsResolver
from mimirlite.errors import AddressError, DnsaddrError, MimirliteError
from mimirlite.identity import PeerId
from mimirlite.wire.multiaddr import Code, Multiaddr

if TYPE_CHECKING:
    from mimirlite.net.connection import Connection
    from mimirlite.net.host import Host

__all__ = ["IPFS_BOOTSTRAP", "Bootstrap", "expand_bootstrap", "resolve_bootstrap"]

log = logging.getLogger(__name__)

_IPFS = "ipfs"
"""The word that stands for :data:`IPFS_BOOTSTRAP` in a bootstrap list (``--bootstrap ipfs``)."""

# As the latest original MimirLLM lists them: BOOTSTRAP_LIST in shared/libp2p.ts.
IPFS_BOOTSTRAP: tuple[str, ...] = (
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt",
    "/ip4/104.131.131.82/tcp/4001/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
)
"""The public IPFS bootstrap peers (``"ipfs"`` in a bootstrap list)."""

_RESOLVED = (Code.DNSADDR, Code.DNS, Code.DNS4, Code.DNS6)


def expand_bootstrap(values: Iterable[str]) -> list[str]:
    """``values`` with ``"ipfs"`` replaced by :data:`IPFS_BOOTSTRAP`, each checked and in canonical
    text, duplicates dropped, order kept; AddressError naming the first one that is not a multiaddr."""
    out: dict[str, None] = {}
    for value in values:
        for text in IPFS_BOOTSTRAP if value.strip() == _IPFS else (value.strip(),):
            try:
                out[str(Multiaddr.parse(text))] = None
            except AddressError as exc:
                raise AddressError(f"bad bootstrap address {value!r}: {exc}") from exc
    return list(out)


async def resolve_bootstrap(values: Iterable[str], resolver: DnsResolver | None = None) -> list[Multiaddr]:
    """:func:`expand_bootstrap`, then each /dnsaddr and /dns* entry resolved (concurrently) and the rest
    kept as they are; an entry that resolves to nothing is logged (WARNING), not raised. Duplicates
    dropped, order kept. ``resolver`` defaults to a :class:`DnsResolver` on the system's nameservers."""
    addrs = [Multiaddr.parse(text) for text in expand_bootstrap(values)]
    to_resolve = [a for a in addrs if a.components[0][0].code in _RESOLVED]
    if to_resolve and resolver is None:
        resolver = DnsResolver()
    resolved: dict[Multiaddr, list[Multiaddr]] = {}
    if to_resolve:
        assert resolver is not None
        answers = await asyncio.gather(*(resolver.resolve(a) for a in to_resolve), return_exceptions=True)
        for addr, answer in zip(to_resolve, answers, strict=True):
            if isinstance(answer, DnsaddrError):
                log.warning("bootstrap %s gave no address: %s", addr, answer.why)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                resolved[addr] = answer
    out: dict[Multiaddr, None] = {}
    for addr in addrs:
        for found in resolved.get(addr, ()) if addr in to_resolve else (addr,):
            out[found] = None
    return list(out)


RECONNECT_DELAYS = (1.0, 60.0)
"""First and longest wait, in seconds, before dialing a lost bootstrap peer again; it doubles between."""


class Bootstrap(Service):
    """Dials the bootstrap peers at start and keeps connections to them (a lost one is dialed again, with
    backoff). What they serve is learnt as from any connection: identify, then the DHT's routing table.

    ``addrs`` as :func:`expand_bootstrap` takes them ("ipfs" included); ``/dnsaddr`` and ``/dns*`` ones
    resolve through ``resolver``. Only addresses with ``/p2p/`` are kept connected (a bootstrap peer's
    identity is part of its address); others are dialed once.
    """

    def __init__(self, host: Host, addrs: Iterable[str], *, resolver: DnsResolver | None = None) -> None:
        self.host = host
        self.addrs = expand_bootstrap(addrs)
        self.resolver = resolver
        self.peers: dict[PeerId, list[str]] = {}
        """Each bootstrap peer and its dialable addresses (after resolution)."""
        self._redialing: dict[PeerId, asyncio.Task[None]] = {}

    async def _start(self) -> None:
        resolved = await resolve_bootstrap(self.addrs, self.resolver)
        once: list[str] = []
        for m in resolved:
            peer = m.peer_id
            if peer is None:
                once.append(str(m))
                continue
            self.peers.setdefault(peer, []).append(str(m))
        for peer, addrs in self.peers.items():
            self.host.add_addrs(peer, addrs)
        self.host.on_disconnected.append(self._on_disconnected)
        outcomes = await asyncio.gather(
            *(self._dial(p) for p in self.peers), *(self._dial(a) for a in once), return_exceptions=True
        )
        reached = sum(1 for o in outcomes if o is True)
        log.info("bootstrap: connected to %d of %d peers", reached, len(outcomes))

    async def _stop(self) -> None:
        if self._on_disconnected in self.host.on_disconnected:
            self.host.on_disconnected.remove(self._on_disconnected)
        tasks = list(self._redialing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._redialing.clear()

    @property
    def connected(self) -> list[PeerId]:
        """The bootstrap peers connected now."""
        conns = self.host.connections
        return [p for p in self.peers if p in conns]

    async def _dial(self, target: PeerId | str) -> bool:
        try:
            await self.host.dial(target)
        except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
            log.warning("bootstrap peer %s unreachable: %s", target, exc or type(exc).__name__)
            return False
        return True

    def _on_disconnected(self, conn: Connection) -> None:
        peer = conn.remote_peer
        if peer is None or peer not in self.peers or peer in self._redialing:
            return
        if peer not in self.host.connections and self.state is ServiceState.RUNNING:
            self._redialing[peer] = self.host.spawn(self._redial(peer), "mimirlite-bootstrap")

    async def _redial(self, peer: PeerId) -> None:
        delay, longest = RECONNECT_DELAYS
        try:
            while peer not in self.host.connections:
                await asyncio.sleep(delay)
                if await self._dial(peer):
                    log.info("bootstrap peer %s reconnected", peer)
                    return
                delay = min(delay * 2, longest)
        finally:
            self._redialing.pop(peer, None)
