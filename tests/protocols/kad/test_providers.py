"""The provider store: scopes, expiry, renewal, and its bounds."""

from __future__ import annotations

from mimirlite.identity import KeyPair
from mimirlite.protocols.kad.providers import (
    PROVIDER_TTL,
    Provider,
    ProviderLimits,
    ProviderStore,
    Refusal,
    Scope,
    in_scope,
)
from mimirlite.wire.multiaddr import Multiaddr

PEERS = [KeyPair.generate().peer_id for _ in range(8)]
PUBLIC = Multiaddr.parse("/ip4/8.8.8.8/tcp/4001")
PUBLIC6 = Multiaddr.parse("/ip6/2001:4860::8888/tcp/4001")
PRIVATE = Multiaddr.parse("/ip4/192.168.1.5/tcp/4001")
LOOPBACK = Multiaddr.parse("/ip4/127.0.0.1/tcp/4001")
DNS = Multiaddr.parse("/dns4/node.example.org/tcp/4001")
KEY = b"\x12\x20" + bytes(32)


def test_each_dht_keeps_the_addresses_of_its_scope() -> None:
    assert [in_scope(a, Scope.PUBLIC) for a in (PUBLIC, PUBLIC6, PRIVATE, LOOPBACK, DNS)] == [
        True,
        True,
        False,
        False,
        True,
    ]
    assert [in_scope(a, Scope.LAN) for a in (PUBLIC, PUBLIC6, PRIVATE, LOOPBACK, DNS)] == [
        False,
        False,
        True,
        True,
        False,
    ]
    lan = ProviderStore(Scope.LAN)
    record = lan.add(KEY, PEERS[0], [PUBLIC, PRIVATE, LOOPBACK, DNS], 0.0)
    assert isinstance(record, Provider) and record.addrs == (PRIVATE, LOOPBACK)
    public = ProviderStore(Scope.PUBLIC)
    assert public.add(KEY, PEERS[0], [PRIVATE, LOOPBACK], 0.0) is Refusal.NO_ADDRESS_IN_SCOPE


def test_records_expire_after_48_hours_unless_renewed() -> None:
    store = ProviderStore(Scope.LAN)
    store.add(KEY, PEERS[0], [PRIVATE], 0.0)
    store.add(KEY, PEERS[1], [PRIVATE], 10.0)
    assert [p.peer for p in store.get(KEY, PROVIDER_TTL - 1)] == [PEERS[0], PEERS[1]]
    store.add(KEY, PEERS[0], [LOOPBACK], PROVIDER_TTL - 1)  # renewed, with new addresses
    assert [(p.peer, p.addrs) for p in store.get(KEY, PROVIDER_TTL + 5)] == [
        (PEERS[1], (PRIVATE,)),
        (PEERS[0], (LOOPBACK,)),
    ]
    assert [p.peer for p in store.get(KEY, PROVIDER_TTL + 11)] == [PEERS[0]]  # PEERS[1] was not renewed
    assert store.expire(3 * PROVIDER_TTL) == 1 and len(store) == 0 and store.key_count == 0
    assert store.get(KEY, 3 * PROVIDER_TTL) == []


def test_bounds_per_key_in_all_and_per_record() -> None:
    store = ProviderStore(Scope.LAN, ProviderLimits(max_keys=2, max_providers_per_key=3, max_addrs=2))
    for peer in PEERS[:3]:
        assert isinstance(store.add(KEY, peer, [PRIVATE, LOOPBACK, PRIVATE], 0.0), Provider)
    assert store.add(KEY, PEERS[3], [PRIVATE], 1.0) is Refusal.TOO_MANY_PROVIDERS
    assert isinstance(store.add(KEY, PEERS[0], [PRIVATE], 1.0), Provider)  # a renewal is never refused
    assert all(len(p.addrs) <= 2 for p in store.get(KEY, 1.0))
    assert isinstance(store.add(b"k2", PEERS[0], [PRIVATE], 1.0), Provider)
    assert store.add(b"k3", PEERS[0], [PRIVATE], 1.0) is Refusal.TOO_MANY_KEYS
    assert len(store) == 4 and store.key_count == 2
    # once records expire they make room again, for providers and for keys
    later = PROVIDER_TTL + 0.5
    assert isinstance(store.add(KEY, PEERS[3], [PRIVATE], later), Provider)
    assert [p.peer for p in store.get(KEY, later)] == [PEERS[0], PEERS[3]]
    assert isinstance(store.add(b"k3", PEERS[1], [PRIVATE], PROVIDER_TTL + 2), Provider)
    assert store.key_count == 2


def test_a_provider_record_can_be_removed() -> None:
    """What a node that stops providing a key does to its own store (``KadDht.unprovide``)."""
    store = ProviderStore(Scope.LAN)
    other = KEY[:-1] + b"\x01"
    for peer in PEERS[:2]:
        store.add(KEY, peer, [LOOPBACK], 0.0)
    store.add(other, PEERS[0], [LOOPBACK], 0.0)
    assert store.remove(KEY, PEERS[0]) is True
    assert [p.peer for p in store.get(KEY, 1.0)] == [PEERS[1]]
    assert store.remove(KEY, PEERS[0]) is False  # already gone
    assert store.remove(KEY, PEERS[1]) is True
    assert store.get(KEY, 1.0) == [] and store.key_count == 1  # the emptied key goes
    assert [p.peer for p in store.get(other, 1.0)] == [PEERS[0]]
    assert store.remove(b"unknown", PEERS[0]) is False
