"""Per-peer rates: how often one peer may do something (identify pushes, DHT records), sans-IO."""

from __future__ import annotations

import collections

from mimirlite.identity import PeerId

MAX_PEERS = 1024
"""Peers whose budgets are kept by default."""


class PeerRate:
    """Per-peer token buckets: ``per_minute`` in a burst, refilled at that rate.

    Time is passed in (seconds, any monotonic origin). At most ``max_peers`` buckets are kept; the
    least recently used is forgotten first (a forgotten peer starts again with a full bucket).
    """

    def __init__(self, per_minute: int, max_peers: int = MAX_PEERS) -> None:
        self.per_minute = per_minute
        self.max_peers = max_peers
        self._buckets: collections.OrderedDict[PeerId, tuple[float, float]] = collections.OrderedDict()

    def take(self, peer: PeerId, now: float) -> bool:
        """Spend one unit of ``peer``'s budget at time ``now``; False when it has none left."""
        tokens, since = self._buckets.pop(peer, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + max(0.0, now - since) * self.per_minute / 60.0)
        allowed = tokens >= 1.0
        self._buckets[peer] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_peers:
            self._buckets.popitem(last=False)
        return allowed
