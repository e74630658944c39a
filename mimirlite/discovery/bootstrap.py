"""Bootstrap peers: the public IPFS list, and a user's list expanded, checked and resolved.

``"ipfs"`` in a list stands for :data:`IPFS_BOOTSTRAP`; ``/dnsaddr`` and ``/dns*`` entries resolve
through :class:`~mimirlite.discovery.dnsaddr.DnsResolver`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from mimirlite.discovery.dnsaddr import DnsResolver
from mimirlite.errors import AddressError, DnsaddrError
from mimirlite.wire.multiaddr import Code, Multiaddr

__all__ = ["IPFS_BOOTSTRAP", "expand_bootstrap", "resolve_bootstrap"]

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
