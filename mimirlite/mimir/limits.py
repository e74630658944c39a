"""Which chat requests a node answers now, which wait, and which it refuses.

Pure bookkeeping with the time passed in as an argument (no clock, no event loop), so every limit is a
fast, deterministic test; :class:`~mimirlite.mimir.node.MimirNode` drives it. A refusal carries the
completionStop error type a client fails over on: ``rate_limited`` when one peer asks too much,
``overloaded`` when the node is busy with everyone.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from mimirlite.errors import EndReason, LocalError
from mimirlite.mimir import packets

MAX_CONCURRENT = 256
"""Chat requests answered at once, from all peers (a gateway is one peer fronting many users)."""
QUEUE = 1024
"""Chat requests waiting for one of the ``MAX_CONCURRENT`` places (least served address and peer first)."""
STALL_TIMEOUT = 30.0
"""Seconds a chat's reader may take nothing while others wait, before the chat is ended."""
STALL_GRACE = 2.0
"""Seconds a chat of a peer (or address) holding more than its share may take nothing while others wait."""
ENDED_LINGER = 10.0
"""Seconds an ended chat has to take the rest of its answer and the error before its stream is reset."""
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
    stall_timeout: float | None = STALL_TIMEOUT
    """A running chat whose reader took no byte for this long while others wait is ended (``overloaded``).
    None: never."""
    stall_grace: float = STALL_GRACE
    """While others wait, a chat of a peer or address holding more than its share of ``max_concurrent``
    (divided by the peers, or addresses, with requests) is ended once its reader took no byte this long."""
    ended_linger: float = ENDED_LINGER
    """An ended chat's stream is reset when its reader has not taken the error within this many seconds."""
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
        if self.stall_timeout is not None and not 0 < self.stall_timeout < math.inf:
            raise LocalError(f"stall_timeout must be a positive number of seconds, not {self.stall_timeout}")
        for name in ("stall_grace", "ended_linger"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise LocalError(f"{name} must be a positive number of seconds, not {value}")
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
    """One admitted chat request: answered now (``admitted``) or waiting in the queue.

    ``peer`` and ``ip`` are whom its places are counted against; ``ended`` says why the node ended it
    to serve others, once it did.
    """

    __slots__ = ("admitted", "done", "ended", "ip", "peer", "seq")

    def __init__(self, peer: Hashable, ip: Hashable, seq: int) -> None:
        self.peer = peer
        self.ip = ip
        self.seq = seq
        self.admitted = False
        self.done = False
        self.ended: Ended | None = None

    def __repr__(self) -> str:
        state = "done" if self.done else "running" if self.admitted else "waiting"
        return f"<Ticket {self.peer} {state}>"


@dataclass(frozen=True)
class Refusal:
    """A request the node does not take: ``type`` is the completionStop error type."""

    type: str
    message: str


FAIR_SHARE = EndReason.FAIR_SHARE
"""An ended chat's reason: its peer or address held more than its share, and its reader stalled."""
STALLED = EndReason.STALL_TIMEOUT
"""An ended chat's reason: its reader took nothing for ``stall_timeout`` while others waited."""


@dataclass(frozen=True)
class Ended:
    """A running request ended so that waiting ones get its place (answered with ``overloaded``)."""

    ticket: Ticket
    reason: str
    """``fair_share`` or ``stall_timeout`` (a ``NodeMetrics.ended`` reason)."""
    message: str
    type: str = packets.OVERLOADED


@dataclass(frozen=True)
class Review:
    """What :meth:`Admission.review` decided: requests ended, waiting ones let in, when to look again."""

    ended: list[Ended]
    admitted: list[Ticket]
    next_review: float | None
    """The time to review again (None: nobody waits, nothing to review until someone does)."""


def _add(counts: dict[Hashable, int], key: Hashable, n: int) -> None:
    left = counts.get(key, 0) + n
    if left:
        counts[key] = left
    else:
        del counts[key]


class Admission:
    """Admits chat requests under :class:`NodeLimits` and shares the places fairly.

    ``arrive(peer, now, ip)`` gives a :class:`Ticket` (admitted now, or waiting) or a :class:`Refusal`;
    ``leave(ticket)`` when that request ends, however it ends, returns the tickets it lets in. A freed
    place goes to the waiting request whose address, then peer, holds the fewest places (arrival order
    among equals), so one peer or address that queued many requests does not starve the others.

    While requests wait, :meth:`review` ends running ones whose reader stopped taking the answer: any
    after ``stall_timeout``, and, after the shorter ``stall_grace``, those of a peer or address that holds
    more than its share of ``max_concurrent`` (divided by the peers, or addresses, with requests in
    progress) while others wait. Nobody waiting, nothing is ended: a lone busy peer keeps every place.
    """

    def __init__(self, limits: NodeLimits | None = None) -> None:
        self.limits = limits or NodeLimits()
        self.running = 0
        self._queued = 0
        self._waiting: dict[Hashable, dict[Ticket, None]] = {}  # by peer, each in arrival order
        self._running: dict[Ticket, None] = {}
        self._per_peer: dict[Hashable, int] = {}  # in progress (running or waiting)
        self._per_ip: dict[Hashable, int] = {}
        self._running_peer: dict[Hashable, int] = {}
        self._running_ip: dict[Hashable, int] = {}
        self._queued_peer: dict[Hashable, int] = {}
        self._queued_ip: dict[Hashable, int] = {}
        self._seq = 0
        self.rate = RateLimiter(self.limits.rate) if self.limits.rate is not None else None

    @property
    def waiting(self) -> int:
        return self._queued

    def in_progress(self, peer: Hashable) -> int:
        """Requests of ``peer`` answered or waiting."""
        return self._per_peer.get(peer, 0)

    def holding(self, peer: Hashable) -> int:
        """Places ``peer`` holds (requests of it answered now)."""
        return self._running_peer.get(peer, 0)

    def arrive(self, peer: Hashable, now: float, ip: Hashable | None = None) -> Ticket | Refusal:
        """A request from ``peer`` (at address ``ip``, if known) at time ``now`` (seconds, any origin):
        take it or refuse it."""
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
        if self.running >= lim.max_concurrent and self._queued >= lim.queue:
            return Refusal(
                packets.OVERLOADED,
                f"the node is busy: {self.running} answering, {self._queued} waiting",
            )
        if self.rate is not None:
            self.rate.take(peer, now)
        self._seq += 1
        ticket = Ticket(peer, peer if ip is None else ip, self._seq)
        _add(self._per_peer, peer, 1)
        _add(self._per_ip, ticket.ip, 1)
        if self.running < lim.max_concurrent and not self._queued:
            self._admit(ticket)
        else:
            self._waiting.setdefault(peer, {})[ticket] = None
            self._queued += 1
            _add(self._queued_peer, peer, 1)
            _add(self._queued_ip, ticket.ip, 1)
        return ticket

    def leave(self, ticket: Ticket) -> list[Ticket]:
        """``ticket``'s request ended (answered, failed, or its client left while it waited).

        Returns the waiting tickets now admitted. Leaving twice does nothing.
        """
        if ticket.done:
            return []
        ticket.done = True
        _add(self._per_peer, ticket.peer, -1)
        _add(self._per_ip, ticket.ip, -1)
        if not ticket.admitted:
            self._unqueue(ticket)
            return []
        self.running -= 1
        del self._running[ticket]
        _add(self._running_peer, ticket.peer, -1)
        _add(self._running_ip, ticket.ip, -1)
        return self._fill()

    def review(self, now: float, stalled: Mapping[Ticket, float]) -> Review:
        """End running requests whose reader stalled, when others wait for their places.

        ``stalled`` maps running tickets whose answer waits on its reader to the time (same clock as
        ``now``) since when the reader has taken nothing. Each ended ticket has left (its place is
        given to a waiting one, in ``admitted``); answer it with its :class:`Ended` error and stop.
        """
        if not self._queued:
            return Review([], [], None)
        lim = self.limits
        ended: list[Ended] = []
        admitted: list[Ticket] = []
        next_review = now + lim.stall_grace  # a reader that stalls from now on is looked at by then
        order = sorted((since, t.seq, t) for t, since in stalled.items() if t in self._running)
        for since, _, ticket in order:
            if not self._queued:
                break
            idle = now - since
            over = self._over_share(ticket)
            if lim.stall_timeout is not None and idle >= lim.stall_timeout:
                reason = STALLED
                why = f"stall_timeout {lim.stall_timeout:g} s"
            elif over and idle >= lim.stall_grace:
                reason = FAIR_SHARE
                why = f"{over} held more than its share of {lim.max_concurrent} places while others waited"
            else:
                due = since + lim.stall_grace if over else math.inf
                if lim.stall_timeout is not None:
                    due = min(due, since + lim.stall_timeout)
                next_review = min(next_review, due)
                continue
            end = Ended(
                ticket, reason, f"ended to serve others: your reader took nothing for {idle:.3g} s ({why})"
            )
            ticket.ended = end
            ended.append(end)
            admitted += self.leave(ticket)
        return Review(ended, admitted, next_review if self._queued else None)

    def _over_share(self, ticket: Ticket) -> str:
        """``"this peer"`` or ``"this address"`` when the one ``ticket`` is counted against holds more
        than its share of the places while requests of others wait; ``""`` when neither does."""
        cap, queued = self.limits.max_concurrent, self._queued
        peer, ip = ticket.peer, ticket.ip
        share = -(-cap // len(self._per_peer))  # rounded up to whole places
        if self._running_peer.get(peer, 0) > share and queued > self._queued_peer.get(peer, 0):
            return "this peer"
        share = -(-cap // len(self._per_ip))
        if self._running_ip.get(ip, 0) > share and queued > self._queued_ip.get(ip, 0):
            return "this address"
        return ""

    def _admit(self, ticket: Ticket) -> None:
        ticket.admitted = True
        self.running += 1
        self._running[ticket] = None
        _add(self._running_peer, ticket.peer, 1)
        _add(self._running_ip, ticket.ip, 1)

    def _unqueue(self, ticket: Ticket) -> None:
        mine = self._waiting[ticket.peer]
        del mine[ticket]
        if not mine:
            del self._waiting[ticket.peer]
        self._queued -= 1
        _add(self._queued_peer, ticket.peer, -1)
        _add(self._queued_ip, ticket.ip, -1)

    def _fill(self) -> list[Ticket]:
        admitted: list[Ticket] = []
        cap = self.limits.max_concurrent
        while self._queued and self.running < cap:
            ticket = self._next()
            self._unqueue(ticket)
            self._admit(ticket)
            admitted.append(ticket)
        return admitted

    def _next(self) -> Ticket:
        """The waiting ticket whose address, then peer, holds the fewest places; the earliest among those."""
        running_ip, running_peer = self._running_ip, self._running_peer
        best: Ticket | None = None
        best_key = (0, 0, 0)
        for mine in self._waiting.values():
            head = next(iter(mine))
            key = (running_ip.get(head.ip, 0), running_peer.get(head.peer, 0), head.seq)
            if best is None or key < best_key:
                best, best_key = head, key
        assert best is not None
        return best
