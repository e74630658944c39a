"""The Kademlia routing table: XOR distance, k-buckets, splitting, eviction candidates, closest peers."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimirlite.identity import KeyPair, PeerId
from mimirlite.protocols.kad.routing import (
    MAX_REFRESH_CPL,
    AddResult,
    BucketFull,
    K,
    RoutingTable,
    common_prefix_length,
    distance,
    kad_key,
    peer_key,
    random_key_at,
)

PEERS = [KeyPair.generate().peer_id for _ in range(300)]
LOCAL = KeyPair.generate().peer_id


def test_distance_and_prefix_on_literal_keys() -> None:
    zero = bytes(32)
    assert distance(zero, zero) == 0 and common_prefix_length(zero, zero) == 256
    top = b"\x80" + bytes(31)
    assert distance(zero, top) == 1 << 255 and common_prefix_length(zero, top) == 0
    low = bytes(31) + b"\x01"
    assert distance(top, low) == (1 << 255) | 1 and common_prefix_length(zero, low) == 255
    assert distance(low, top) == distance(top, low)


def test_keys_are_sha256_of_the_peer_id_bytes() -> None:
    peer = PEERS[0]
    assert peer_key(peer) == hashlib.sha256(peer.to_bytes()).digest() == kad_key(peer.to_bytes())


def test_add_update_self_and_remove() -> None:
    table = RoutingTable(LOCAL)
    assert table.add(LOCAL, 0.0) is AddResult.IGNORED and len(table) == 0
    assert table.add(PEERS[0], 1.0) is AddResult.ADDED
    assert table.add(PEERS[1], 2.0) is AddResult.ADDED
    assert table.add(PEERS[0], 3.0) is AddResult.UPDATED
    assert PEERS[0] in table and len(table) == 2
    assert table.peers()[-1] == PEERS[0]  # most recently seen last
    assert table.remove(PEERS[0]) and not table.remove(PEERS[0])
    assert PEERS[0] not in table and len(table) == 1


def check_invariants(table: RoutingTable) -> None:
    last = table.bucket_count - 1
    for index, bucket in enumerate(table._buckets):
        assert len(bucket) <= table.k
        for peer in bucket:
            cpl = common_prefix_length(table.local_key, peer_key(peer))
            assert cpl == index if index < last else cpl >= last


def test_the_bucket_holding_our_key_splits_and_full_far_buckets_name_their_oldest() -> None:
    table = RoutingTable(LOCAL, k=4)
    full: list[BucketFull] = []
    for i, peer in enumerate(PEERS):
        got = table.add(peer, float(i))
        if isinstance(got, BucketFull):
            full.append(got)
            assert got.oldest in table
        check_invariants(table)
    assert table.bucket_count > 2  # split as the near buckets filled
    # half of all peers share no prefix bit with us: bucket 0 overflowed, naming the first peer that
    # landed there (nearer buckets may have overflowed too, naming theirs)
    bucket0 = [p for p in PEERS if common_prefix_length(table.local_key, peer_key(p)) == 0]
    far = [f for f in full if common_prefix_length(table.local_key, peer_key(f.oldest)) == 0]
    assert far and far[0].oldest == bucket0[0]
    newcomer = next(p for p in bucket0 if p not in table)
    assert table.replace(bucket0[0], newcomer, 1000.0) is AddResult.ADDED
    assert newcomer in table and bucket0[0] not in table
    check_invariants(table)


def test_an_alive_oldest_moves_to_the_tail_and_the_newcomer_is_refused() -> None:
    table = RoutingTable(LOCAL, k=2)
    bucket0 = [p for p in PEERS if common_prefix_length(table.local_key, peer_key(p)) == 0]
    # fill enough that bucket 0 is no longer the last (splittable) one
    for i, peer in enumerate(PEERS):
        table.add(peer, float(i))
    first, second = [p for p in bucket0 if p in table][:2]
    third = next(p for p in bucket0 if p not in table)
    full = table.add(third, 500.0)
    assert isinstance(full, BucketFull) and full.oldest == first
    assert table.add(first, 501.0) is AddResult.UPDATED  # it answered its check
    again = table.add(third, 502.0)
    assert isinstance(again, BucketFull) and again.oldest == second


@settings(max_examples=50, deadline=None)
@given(st.integers(0, len(PEERS)), st.binary(min_size=32, max_size=32), st.integers(1, 30))
def test_closest_is_the_nearest_known_peers_in_order(n: int, target: bytes, count: int) -> None:
    table = RoutingTable(LOCAL, k=K)
    for i, peer in enumerate(PEERS[:n]):
        table.add(peer, float(i))
    known = table.peers()
    expected = sorted(known, key=lambda p: distance(peer_key(p), target))[:count]
    assert table.closest(target, count) == expected


def test_a_table_of_single_peer_id_type_never_holds_duplicates() -> None:
    table = RoutingTable(LOCAL, k=3)
    for _ in range(3):
        for i, peer in enumerate(PEERS[:50]):
            table.add(peer, float(i))
    assert len(table.peers()) == len(set(table.peers())) == len(table)
    assert all(isinstance(p, PeerId) for p in table.peers())


def test_random_key_at_each_prefix_length() -> None:
    local = peer_key(PEERS[0])
    for cpl in range(MAX_REFRESH_CPL + 1):
        key = random_key_at(local, cpl)
        assert common_prefix_length(local, kad_key(key)) == cpl
    assert random_key_at(local, 3, lambda n: bytes(n)) == random_key_at(local, 3, lambda n: bytes(n))
    assert random_key_at(local, 3) != random_key_at(local, 3)
    for bad in (-1, MAX_REFRESH_CPL + 1):
        with pytest.raises(ValueError):
            random_key_at(local, bad)


def test_max_common_prefix_is_the_deepest_peers() -> None:
    table = RoutingTable(PEERS[0])
    assert table.max_common_prefix() == 0
    for p in PEERS[1:40]:
        table.add(p, 0.0)
    deepest = max(common_prefix_length(table.local_key, peer_key(p)) for p in table.peers())
    assert deepest > 0 and table.max_common_prefix() == deepest
