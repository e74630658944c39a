"""The Kademlia routing table (libp2p specs ``kad-dht/README.md``), sans-IO: k-buckets of peer IDs keyed by
the SHA-256 of the peer ID's bytes, XOR distance, the bucket holding our own key split when full.

Time is passed in. The table never pings: when a full bucket that cannot split meets a new peer, :meth:`add`
answers :class:`BucketFull` naming its least recently seen peer; the service checks that one and either
:meth:`add` s it again (alive: it moves to the tail, the newcomer is dropped) or :meth:`replace` s it.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from mimirlite.identity import PeerId

K = 20
"""Peers per bucket (the spec's k)."""
KEY_BITS = 256
MAX_REFRESH_CPL = 15
"""Deepest prefix length a table refresh looks up a random key at (kad-dht 14.2's limit)."""


def kad_key(data: bytes) -> bytes:
    """Where bytes sit in the keyspace: SHA-256 of them (a peer ID's bytes, or a DHT key)."""
    return hashlib.sha256(data).digest()


def peer_key(peer: PeerId) -> bytes:
    """A peer's place in the keyspace."""
    return kad_key(peer.to_bytes())


def distance(a: bytes, b: bytes) -> int:
    """XOR distance of two keys, as an integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def common_prefix_length(a: bytes, b: bytes) -> int:
    """Leading bits ``a`` and ``b`` share (256 for equal keys)."""
    return KEY_BITS - distance(a, b).bit_length()


def random_key_at(local_key: bytes, cpl: int, random: Callable[[int], bytes] = os.urandom) -> bytes:
    """A random DHT key whose place (:func:`kad_key`) shares exactly ``cpl`` leading bits with ``local_key``:
    what a refresh of that bucket looks up. Found by trying (about ``2 ** (cpl + 1)`` hashes), so ``cpl`` is
    at most :data:`MAX_REFRESH_CPL`."""
    if not 0 <= cpl <= MAX_REFRESH_CPL:
        raise ValueError(f"cpl must be within 0..{MAX_REFRESH_CPL}")
    prefix = random(24)
    n = 0
    while True:
        key = prefix + n.to_bytes(8, "big")
        if common_prefix_length(local_key, kad_key(key)) == cpl:
            return key
        n += 1


class AddResult(Enum):
    """What :meth:`RoutingTable.add` did."""

    ADDED = "added"
    UPDATED = "updated"
    """Already known: now the most recently seen of its bucket."""
    IGNORED = "ignored"
    """Our own peer ID."""


@dataclass(frozen=True, slots=True)
class BucketFull:
    """The peer's bucket is full and cannot split: check ``oldest`` (its least recently seen peer)."""

    oldest: PeerId


@dataclass(slots=True)
class _Entry:
    key: bytes
    seen: float


class RoutingTable:
    """k-buckets indexed by common prefix length with our key; the last bucket covers every longer prefix
    and splits when it overflows, as go-libp2p's and js kad-dht's tables do."""

    def __init__(self, local: PeerId, *, k: int = K) -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        self.local = local
        self.local_key = peer_key(local)
        self.k = k
        self._buckets: list[OrderedDict[PeerId, _Entry]] = [OrderedDict()]  # least recently seen first

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets)

    def __contains__(self, peer: object) -> bool:
        return isinstance(peer, PeerId) and any(peer in b for b in self._buckets)

    @property
    def bucket_count(self) -> int:
        return len(self._buckets)

    def max_common_prefix(self) -> int:
        """The longest prefix a peer of the table shares with our key (0 when empty)."""
        return max(
            (common_prefix_length(self.local_key, e.key) for b in self._buckets for e in b.values()),
            default=0,
        )

    def _index(self, key: bytes) -> int:
        return min(common_prefix_length(self.local_key, key), len(self._buckets) - 1)

    def add(self, peer: PeerId, now: float) -> AddResult | BucketFull:
        """Record that ``peer`` answered (or spoke) at ``now``."""
        if peer == self.local:
            return AddResult.IGNORED
        key = peer_key(peer)
        while True:
            bucket = self._buckets[self._index(key)]
            entry = bucket.get(peer)
            if entry is not None:
                entry.seen = now
                bucket.move_to_end(peer)
                return AddResult.UPDATED
            if len(bucket) < self.k:
                bucket[peer] = _Entry(key, now)
                return AddResult.ADDED
            if bucket is not self._buckets[-1] or len(self._buckets) == KEY_BITS:
                return BucketFull(next(iter(bucket)))
            self._split()

    def _split(self) -> None:
        """Move the last bucket's peers that share one more bit with us into a new last bucket."""
        last = self._buckets[-1]
        depth = len(self._buckets) - 1
        nearer: OrderedDict[PeerId, _Entry] = OrderedDict()
        for peer, entry in list(last.items()):
            if common_prefix_length(self.local_key, entry.key) > depth:
                nearer[peer] = last.pop(peer)
        self._buckets.append(nearer)

    def replace(self, old: PeerId, new: PeerId, now: float) -> AddResult | BucketFull:
        """``old`` failed its check: drop it and add ``new`` in its place."""
        self.remove(old)
        return self.add(new, now)

    def remove(self, peer: PeerId) -> bool:
        """Forget ``peer`` (it failed a query or a check); whether it was known."""
        return any(bucket.pop(peer, None) is not None for bucket in self._buckets)

    def closest(self, key: bytes, count: int = K) -> list[PeerId]:
        """The ``count`` known peers nearest to ``key`` (a keyspace position: :func:`kad_key` of a DHT key),
        nearest first."""
        target = int.from_bytes(key, "big")
        ranked = sorted(
            (int.from_bytes(entry.key, "big") ^ target, peer)
            for bucket in self._buckets
            for peer, entry in bucket.items()
        )
        return [peer for _, peer in ranked[:count]]

    def peers(self) -> list[PeerId]:
        """Every peer in the table, bucket by bucket, least recently seen first within each."""
        return [peer for bucket in self._buckets for peer in bucket]
