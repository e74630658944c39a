"""The provider records a DHT server keeps (libp2p specs ``kad-dht/README.md``, ADD_PROVIDER and
GET_PROVIDERS), sans-IO: time passed in, bounded per key, in all, and per provider.

Each DHT keeps the addresses of its scope only: the public DHT (``/ipfs/kad/1.0.0``) public ones, the LAN DHT
(``/ipfs/lan/kad/1.0.0``) private and loopback ones, as the latest original configures kad-dht's mappers.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

from mimirlite.identity import PeerId
from mimirlite.wire.multiaddr import Multiaddr

PROVIDER_TTL = 48 * 3600.0
"""Seconds a provider record lives unless its provider renews it (the spec's 48 h)."""


class Scope(enum.Enum):
    """Which addresses a DHT carries."""

    PUBLIC = "public"
    LAN = "lan"


def in_scope(addr: Multiaddr, scope: Scope) -> bool:
    """Whether ``addr`` belongs in a DHT of ``scope``: an IP address by its range; a DNS name is public."""
    ip = addr.ip
    if ip is None:
        return scope is Scope.PUBLIC and addr.protocols[0] in ("dns", "dns4", "dns6", "dnsaddr")
    if scope is Scope.PUBLIC:
        return ip.is_global
    return ip.is_private or ip.is_loopback or ip.is_link_local


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    """What one DHT server stores for others."""

    max_keys: int = 10_000
    """Keys with providers, in all; a record for a new key beyond it is refused."""
    max_providers_per_key: int = 20
    """Providers kept per key (the spec's k); a new provider beyond it is refused."""
    max_addrs: int = 8
    """Addresses kept per provider record (the rest are dropped)."""
    ttl: float = PROVIDER_TTL
    """Seconds a record lives unless renewed."""


class Refusal(enum.Enum):
    """Why :meth:`ProviderStore.add` stored nothing."""

    TOO_MANY_KEYS = "too_many_keys"
    TOO_MANY_PROVIDERS = "too_many_providers"
    NO_ADDRESS_IN_SCOPE = "no_address_in_scope"


@dataclass(frozen=True, slots=True)
class Provider:
    """One provider of a key: who, where (in scope), and until when."""

    peer: PeerId
    addrs: tuple[Multiaddr, ...]
    expires: float


class ProviderStore:
    """Provider records by key (a DHT key: the multihash of a CID)."""

    def __init__(self, scope: Scope, limits: ProviderLimits | None = None) -> None:
        self.scope = scope
        self.limits = limits if limits is not None else ProviderLimits()
        self._records: dict[bytes, OrderedDict[PeerId, Provider]] = {}

    def __len__(self) -> int:
        """Provider records held, in all keys."""
        return sum(len(r) for r in self._records.values())

    @property
    def key_count(self) -> int:
        return len(self._records)

    def add(self, key: bytes, peer: PeerId, addrs: list[Multiaddr], now: float) -> Provider | Refusal:
        """Store (or renew) ``peer`` as a provider of ``key``; the record, or why nothing was stored."""
        limits = self.limits
        kept = tuple(a for a in addrs if in_scope(a, self.scope))[: limits.max_addrs]
        if not kept:
            return Refusal.NO_ADDRESS_IN_SCOPE
        records = self._records.get(key)
        if records is None:
            if len(self._records) >= limits.max_keys:
                self.expire(now)
                if len(self._records) >= limits.max_keys:
                    return Refusal.TOO_MANY_KEYS
            records = self._records[key] = OrderedDict()
        elif peer not in records and len(records) >= limits.max_providers_per_key:
            self._expire_key(key, records, now)
            if len(records) >= limits.max_providers_per_key:
                return Refusal.TOO_MANY_PROVIDERS
            self._records[key] = records  # expiry may have emptied it and let it go
        record = records[peer] = Provider(peer, kept, now + limits.ttl)
        records.move_to_end(peer)  # renewed: the latest last
        return record

    def get(self, key: bytes, now: float) -> list[Provider]:
        """The live providers of ``key``, the most recently renewed last."""
        records = self._records.get(key)
        if records is None:
            return []
        self._expire_key(key, records, now)
        return list(records.values())

    def remove(self, key: bytes, peer: PeerId) -> bool:
        """Forget ``peer`` as a provider of ``key`` (our own record, when we stop providing it); whether it
        was there."""
        records = self._records.get(key)
        if records is None or records.pop(peer, None) is None:
            return False
        if not records:
            del self._records[key]
        return True

    def expire(self, now: float) -> int:
        """Drop every record past its time; how many went."""
        before = len(self)
        for key, records in list(self._records.items()):
            self._expire_key(key, records, now)
        return before - len(self)

    def _expire_key(self, key: bytes, records: OrderedDict[PeerId, Provider], now: float) -> None:
        for peer in [p for p, r in records.items() if r.expires <= now]:
            del records[peer]
        if not records:
            self._records.pop(key, None)
