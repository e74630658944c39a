"""Which chat requests a node answers now, which wait, and which it refuses.

Pure bookkeeping with the time passed in as an argument (no clock, no event loop), so every limit is a
fast, deterministic test; :class:`~mimirlite.mimir.node.MimirNode` drives it. A refusal carries the
completionStop error type a client fails over on: ``rate_limited`` when one peer asks too much,
``overloaded`` when the node is busy with everyone.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass

from mimirlite.errors import LocalError
from mimirlite.mimir import packets

MAX_CONCURRENT = 256
"""Chat requests answered at once, from all peers (a gateway is one peer fronting many users)."""
QUEUE = 1024
"""Chat requests waiting, in arrival order, for one of the ``MAX_CONCURRENT`` places."""
MIN_BUCKET_SWEEP = 64
"""Rate buckets kept before refilled ones are dropped (each sweep at twice the size left by the last)."""


@dataclass(frozen=True)
class NodeLimits:
    """How much a node takes on. Per-peer limits are off (None) unless set."""

    max_concurrent: int = MAX_CONCURRENT
    """Requests answered at once in all; more wait in the queue."""
    queue: int = QUEUE
    """Requests that may wait; more are refused as ``overloaded``."""
    max_per_peer: int | None = None
    """Requests one peer may have in progress (answered or waiting); more are refused as ``rate_limited``."""
    rate: float | None = None
    """Requests one peer may start per minute, in bursts of up to ``rate``; more are ``rate_limited``."""
    max_tokens: int | None = None
    """Cap on the tokens of one answer: a larger max_tokens/max_completion_tokens is clamped to it, and
    max_tokens=cap is sent when a request asks none (None: no cap)."""

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise LocalError(f"max_concurrent must be at least 1, not {self.max_concurrent}")
        if self.queue < 0:
            raise LocalError(f"queue must not be negative, not {self.queue}")
        if self.max_per_peer is not None and self.max_per_peer < 1:
            raise LocalError(f"max_per_peer must be at least 1, not {self.max_per_peer}")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise LocalError(f"rate must be a positive number of requests per minute, not {self.rate}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise LocalError(f"max_tokens must be at least 1, not {self.max_tokens}")


class TokenBucket:
    """``capacity`` tokens, refilled at ``per_second`` tokens a second; a request takes one."""

    __slots__ = ("capacity", "per_second", "stamp", "tokens")

    def __init__(self, capacity: float, per_second: float, now: float) -> None:
        self.capacity = capacity
        self.per_second = per_second
        self.tokens = capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:  # a clock that goes back refills nothing
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.per_second)
            self.stamp = now

    def retry_after(self, now: float) -> float:
        """Seconds until a token is there (0.0: one is there now)."""
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) / self.per_second)

    def take(self, now: float) -> bool:
        """Take a token if there is one."""
        self._refill(now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.capacity


class RateLimiter:
    """A token bucket per peer: ``per_minute`` requests a minute, bursts of up to ``per_minute``.

    A refilled bucket is the same as none, so buckets of peers that went quiet are dropped.
    """

    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self._capacity = max(1.0, per_minute)
        self._per_second = per_minute / 60.0
        self._buckets: dict[Hashable, TokenBucket] = {}
        self._sweep_at = MIN_BUCKET_SWEEP

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, peer: Hashable, now: float) -> float:
        """Seconds until ``peer`` may start a request (0.0: now)."""
        bucket = self._buckets.get(peer)
        return 0.0 if bucket is None else bucket.retry_after(now)

    def take(self, peer: Hashable, now: float) -> bool:
        """Count a request of ``peer``; False (nothing counted) when it has no token left."""
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep(now)
            bucket = self._buckets[peer] = TokenBucket(self._capacity, self._per_second, now)
        return bucket.take(now)

    def _sweep(self, now: float) -> None:
        self._buckets = {p: b for p, b in self._buckets.items() if not b.full(now)}
        self._sweep_at = max(MIN_BUCKET_SWEEP, 2 * len(self._buckets))


class Ticket:
    """One admitted chat request: answered now (``admitted``) or waiting in the queue."""

    __slots__ = ("admitted", "done", "peer")

    def __init__(self, peer: Hashable) -> None:
        self.peer = peer
        self.admitted = False
        self.done = False

    def __repr__(self) -> str:
        state = "done" if self.done else "running" if self.admitted else "waiting"
        return f"<Ticket {self.peer} {state}>"


@dataclass(frozen=True)
class Refusal:
    """A request the node does not take: ``type`` is the completionStop error type."""

    type: str
    message: str


class Admission:
    """Admits chat requests under :class:`NodeLimits`, queues the overflow in arrival order.

    ``arrive(peer, now)`` gives a :class:`Ticket` (admitted now, or waiting) or a :class:`Refusal`;
    ``leave(ticket)`` when that request ends, however it ends, returns the tickets it lets in.
    """

    def __init__(self, limits: NodeLimits | None = None) -> None:
        self.limits = limits or NodeLimits()
        self.running = 0
        self._waiting: dict[Ticket, None] = {}  # insertion order is arrival order
        self._per_peer: dict[Hashable, int] = {}
        self.rate = RateLimiter(self.limits.rate) if self.limits.rate is not None else None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def in_progress(self, peer: Hashable) -> int:
        """Requests of ``peer`` answered or waiting."""
        return self._per_peer.get(peer, 0)

    def arrive(self, peer: Hashable, now: float) -> Ticket | Refusal:
        """A request from ``peer`` at time ``now`` (seconds, any origin): take it or refuse it."""
        lim = self.limits
        mine = self._per_peer.get(peer, 0)
        if lim.max_per_peer is not None and mine >= lim.max_per_peer:
            return Refusal(
                packets.RATE_LIMITED,
                f"too many requests in progress from this peer (limit {lim.max_per_peer} at once)",
            )
        if self.rate is not None:
            wait = self.rate.retry_after(peer, now)
            if wait > 0:
                return Refusal(
                    packets.RATE_LIMITED,
                    f"too many requests from this peer (limit {self.rate.per_minute:g} a minute); "
                    f"retry in {math.ceil(wait)} s",
                )
        if self.running >= lim.max_concurrent and len(self._waiting) >= lim.queue:
            return Refusal(
                packets.OVERLOADED,
                f"the node is busy: {self.running} answering, {len(self._waiting)} waiting",
            )
        if self.rate is not None:
            self.rate.take(peer, now)
        ticket = Ticket(peer)
        self._per_peer[peer] = mine + 1
        if self.running < lim.max_concurrent and not self._waiting:
            ticket.admitted = True
            self.running += 1
        else:
            self._waiting[ticket] = None
        return ticket

    def leave(self, ticket: Ticket) -> list[Ticket]:
        """``ticket``'s request ended (answered, failed, or its client left while it waited).

        Returns the waiting tickets now admitted, in arrival order. Leaving twice does nothing.
        """
        if ticket.done:
            return []
        ticket.done = True
        left = self._per_peer[ticket.peer] - 1
        if left:
            self._per_peer[ticket.peer] = left
        else:
            del self._per_peer[ticket.peer]
        if not ticket.admitted:
            del self._waiting[ticket]
            return []
        self.running -= 1
        admitted: list[Ticket] = []
        while self._waiting and self.running < self.limits.max_concurrent:
            nxt = next(iter(self._waiting))
            del self._waiting[nxt]
            nxt.admitted = True
            self.running += 1
            admitted.append(nxt)
        return admitted
