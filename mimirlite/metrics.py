"""Counters a host and a node keep about their work: ``host.metrics`` and ``node.metrics``.

Plain ints and :class:`collections.Counter` objects, updated in place where the work happens (one
integer add on the hot path, bytes counted per socket read and write). Reading them is free;
:func:`stats_line` puts them on one ``key=value`` line and :func:`log_stats` logs it every N seconds.
The breakdowns added for Prometheus (by direction, :class:`ChatMetrics`: chats by model and outcome, and
the :class:`Histogram` of times) are attributes too, left out of :func:`stats_line`'s line;
:mod:`mimirlite.prometheus` serves them all.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
from collections.abc import Iterable, Iterator
from typing import Protocol

from mimirlite.errors import CloseKind, EndReason, ProtocolErrorKind, RefusalReason, StrEnum

__all__ = [
    "DURATION_BUCKETS",
    "FIRST_CHUNK_BUCKETS",
    "INBOUND",
    "MAX_MODEL_LABELS",
    "OTHER_MODEL",
    "OUTBOUND",
    "STATS_LOGGER",
    "ChatMetrics",
    "ChatOutcome",
    "ChatTally",
    "CloseKind",
    "Direction",
    "EndReason",
    "Histogram",
    "HostMetrics",
    "NodeMetrics",
    "ProtocolErrorKind",
    "RefusalReason",
    "log_stats",
    "outcome_of",
    "plain_counts",
    "stats_line",
]

STATS_LOGGER = "mimirlite.stats"
"""The logger :func:`log_stats` writes to (INFO)."""

log = logging.getLogger(STATS_LOGGER)


class Direction(StrEnum):
    """Who opened a connection or a stream: the keys of ``HostMetrics.*_by_direction``."""

    INBOUND = "inbound"
    """The remote peer did."""
    OUTBOUND = "outbound"
    """We did."""


INBOUND = Direction.INBOUND
OUTBOUND = Direction.OUTBOUND


class HostMetrics:
    """What a :class:`~mimirlite.net.host.Host` did since it was made.

    ``refused`` counts work turned away at a limit, by reason: ``connections``, ``connections_per_ip``,
    ``pending_handshakes``, ``pending_handshakes_per_ip``, ``evicted_pending`` (a stalled pending
    handshake closed to make room for a newer one), ``first_byte_timeout``, ``handshake_step_timeout``,
    ``handshake_timeout``, ``allowlist`` (inbound connections), ``accept_paused`` (accepting paused,
    out of file descriptors), ``streams``
    (over the per-connection yamux limit, or after our GoAway), ``streams_total`` (over
    ``max_streams_total``), ``streams_per_connection``, ``streams_per_peer``, ``streams_per_ip`` (inbound
    streams over ``max_inbound_streams_per_connection``, ``max_streams_per_peer``, ``max_streams_per_ip``),
    ``buffer`` (a stream reset because its connection held ``max_buffered``), ``memory`` (a stream reset
    because the host held ``max_buffered_total`` for its peers).
    ``closed`` counts ended connections by how they ended: ``local`` (closed here), ``go_away`` (the
    remote said GoAway, as a remote closing politely does, and its streams ended), ``remote`` (the socket
    ended without a GoAway), ``idle``, ``write_timeout``, ``protocol_error``, ``dead_link`` (the kernel
    gave up on a peer that stopped acknowledging, see ``HostConfig.dead_link_timeout``: ETIMEDOUT).
    ``protocol_errors`` counts peer misbehaviour by kind: ``yamux``, ``ping_flood``, ``stream_flood``,
    ``reset_flood``, ``window_update_flood``, ``noise`` (a transport message that does not decrypt),
    ``upgrade`` (a failed inbound handshake or muxer negotiation), ``negotiation`` (a stream's
    protocol negotiation).
    ``connections_opened_by_direction``, ``connections_current_by_direction``,
    ``streams_opened_by_direction`` and ``streams_current_by_direction`` split the totals by
    :class:`Direction` (not in :meth:`as_dict`).
    """

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "closed",
        "connections_closed",
        "connections_current",
        "connections_current_by_direction",
        "connections_opened",
        "connections_opened_by_direction",
        "pings_answered",
        "protocol_errors",
        "refused",
        "streams_current",
        "streams_current_by_direction",
        "streams_opened",
        "streams_opened_by_direction",
    )

    def __init__(self) -> None:
        self.connections_opened = 0
        """Connections upgraded (both directions)."""
        self.connections_closed = 0
        self.connections_current = 0
        self.streams_opened = 0
        """Streams opened (both directions, refused ones not counted)."""
        self.streams_current = 0
        self.bytes_in = 0
        """Bytes read from sockets (encrypted, framing included)."""
        self.bytes_out = 0
        self.pings_answered = 0
        """yamux pings of remote peers answered."""
        self.refused: collections.Counter[str] = collections.Counter()
        self.closed: collections.Counter[str] = collections.Counter()
        self.protocol_errors: collections.Counter[str] = collections.Counter()
        self.connections_opened_by_direction: collections.Counter[str] = collections.Counter()
        self.connections_current_by_direction: collections.Counter[str] = collections.Counter()
        self.streams_opened_by_direction: collections.Counter[str] = collections.Counter()
        self.streams_current_by_direction: collections.Counter[str] = collections.Counter()

    def as_dict(self) -> dict[str, int | dict[str, int]]:
        """A snapshot: every counter of :func:`stats_line`, Counters as plain dicts."""
        return {name: _plain(getattr(self, name)) for name in _HOST_ORDER}


_HOST_ORDER = (
    "connections_current",
    "connections_opened",
    "connections_closed",
    "streams_current",
    "streams_opened",
    "bytes_in",
    "bytes_out",
    "pings_answered",
    "refused",
    "closed",
    "protocol_errors",
)


class NodeMetrics:
    """What a :class:`~mimirlite.mimir.node.MimirNode` did since it was made.

    ``refused`` is the node's ``refused`` Counter (``rate_limited``, ``overloaded``); ``backend_errors``
    counts answers that failed, by completionStop error type (``model_not_found``, ``backend_error``,
    ``unreachable``, ...). ``in_flight`` and ``waiting`` are the chats answered now and queued.
    ``ended`` counts running chats ended with ``overloaded`` so that waiting ones get their places, by
    reason: ``fair_share`` (a reader that stalled while its peer or address held more than its share),
    ``stall_timeout`` (a reader that took nothing for ``NodeLimits.stall_timeout``).
    ``chats`` (a :class:`ChatMetrics`, not in :meth:`as_dict`) counts every chat request read, on both
    generations, by served model and :class:`ChatOutcome`, and times the ones answered.
    """

    __slots__ = (
        "backend_errors",
        "bad_requests",
        "cancelled",
        "chats",
        "ended",
        "identify_answered",
        "in_flight",
        "refused",
        "requests",
        "served",
        "waiting",
    )

    def __init__(self, refused: collections.Counter[str] | None = None) -> None:
        self.requests = 0
        """Chat requests read (well-formed or not)."""
        self.served = 0
        """Chats answered to the end (a chunk with a finish_reason)."""
        self.in_flight = 0
        self.waiting = 0
        self.refused: collections.Counter[str] = collections.Counter() if refused is None else refused
        self.bad_requests = 0
        self.backend_errors: collections.Counter[str] = collections.Counter()
        self.cancelled = 0
        """Chats whose client left while they waited or mid-answer (the backend request is cancelled)."""
        self.ended: collections.Counter[str] = collections.Counter()
        self.identify_answered = 0
        self.chats = ChatMetrics()

    def as_dict(self) -> dict[str, int | dict[str, int]]:
        """A snapshot: every counter of :func:`stats_line`, Counters as plain dicts."""
        return {name: _plain(getattr(self, name)) for name in _NODE_ORDER}


_NODE_ORDER = (
    "requests",
    "served",
    "in_flight",
    "waiting",
    "refused",
    "bad_requests",
    "backend_errors",
    "cancelled",
    "ended",
    "identify_answered",
)


FIRST_CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of the time-to-first-chunk histograms' buckets."""
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Upper bounds (seconds) of the chat-duration histograms' buckets."""
MAX_MODEL_LABELS = 100
"""Distinct models :class:`ChatMetrics` counts under their own name; later ones count as
:data:`OTHER_MODEL`."""
OTHER_MODEL = "other"
"""The model a chat counts under when it names no model served or known (or past
:data:`MAX_MODEL_LABELS`)."""


class Histogram:
    """Observations in fixed buckets, as Prometheus keeps them: a count per bucket (``value <= bound``;
    the last one, past every bound, is ``+Inf``), their sum and their count. One bisect per observation."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds: tuple[float, ...] = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        """Observations per bucket (not cumulative); ``counts[-1]``: those above every bound."""
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count ``value`` (seconds) in its bucket."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` for every bucket, ``+Inf`` last (Prometheus' ``le``)."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class ChatOutcome(StrEnum):
    """How a chat request ended: the ``outcome`` of :class:`ChatMetrics` (a fixed set, whatever a peer
    or client sends)."""

    OK = "ok"
    """Answered to the end."""
    CANCELLED = "cancelled"
    """The client left while it waited or mid-answer."""
    BAD_REQUEST = "bad_request"
    """Unreadable, or refused by a check (parameters, size, a path)."""
    MODEL_NOT_FOUND = "model_not_found"
    """It named a model not served (node) or not known (gateway)."""
    REFUSED = "refused"
    """Turned away at a limit (node: ``rate_limited``, ``overloaded``; gateway: a node refused it)."""
    ENDED = "ended"
    """A node ended it to make room (``NodeMetrics.ended``)."""
    BACKEND_ERROR = "backend_error"
    """The backend failed (``NodeMetrics.backend_errors`` has the type); on the gateway, a node said so."""
    NO_NODE = "no_node"
    """Gateway: no node could be reached for it."""
    UPSTREAM_ERROR = "upstream_error"
    """Gateway: the network failed it (a node's answer broke off, timed out, or was unusable)."""


_OUTCOME_OF_TYPE = {
    "rate_limited": ChatOutcome.REFUSED,
    "overloaded": ChatOutcome.REFUSED,
    "model_not_found": ChatOutcome.MODEL_NOT_FOUND,
    "bad_request": ChatOutcome.BAD_REQUEST,
}


def outcome_of(error_type: str) -> ChatOutcome:
    """The outcome of a chat that ended with a completionStop error of ``error_type`` (any other type,
    ``backend_error`` and the like: :attr:`ChatOutcome.BACKEND_ERROR`)."""
    return _OUTCOME_OF_TYPE.get(error_type, ChatOutcome.BACKEND_ERROR)


class ChatMetrics:
    """Chat requests by ``(model, outcome)`` and how long the answered ones took.

    ``first_chunk``: seconds from the request read to the first chunk of its answer sent; ``duration``:
    from the request read to the end of an answer given to the end (outcome ``ok``). Models are the
    caller's to bound (served or known ones, else :data:`OTHER_MODEL`); past :data:`MAX_MODEL_LABELS`
    distinct ones every new one counts as :data:`OTHER_MODEL` too.
    """

    __slots__ = ("_models", "counts", "duration", "first_chunk")

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        """``(model, outcome)`` -> chats."""
        self.first_chunk = Histogram(FIRST_CHUNK_BUCKETS)
        self.duration = Histogram(DURATION_BUCKETS)
        self._models: set[str] = set()

    def count(self, model: str | None, outcome: ChatOutcome) -> None:
        """One more chat of ``model`` (None: :data:`OTHER_MODEL`) that ended with ``outcome``."""
        name = model or OTHER_MODEL
        if name not in self._models:
            if len(self._models) >= MAX_MODEL_LABELS:
                name = OTHER_MODEL
            else:
                self._models.add(name)
        self.counts[name, outcome] += 1


class ChatTally:
    """One chat request on its way, counted in a :class:`ChatMetrics` when it ends (:meth:`end`): set
    :attr:`model` (a served or known one) and :attr:`outcome` as they become known, call
    :meth:`first_chunk` as each chunk of the answer goes out. Times are passed in (seconds, one clock)."""

    __slots__ = ("_first", "_metrics", "model", "outcome", "started")

    def __init__(self, metrics: ChatMetrics, started: float) -> None:
        self._metrics = metrics
        self._first = False
        self.started = started
        """When the request was read: the start of both times."""
        self.model: str | None = None
        self.outcome: ChatOutcome | None = None

    def first_chunk(self, now: float) -> None:
        """A chunk of the answer went out at ``now``; the first one is timed."""
        if not self._first:
            self._first = True
            self._metrics.first_chunk.observe(now - self.started)

    def end(self, now: float) -> None:
        """Count the chat (once; nothing when no :attr:`outcome` was set), and time it when ``ok``."""
        outcome, self.outcome = self.outcome, None
        if outcome is None:
            return
        self._metrics.count(self.model, outcome)
        if outcome is ChatOutcome.OK:
            self._metrics.duration.observe(now - self.started)


def _plain(value: int | collections.Counter[str]) -> int | dict[str, int]:
    if isinstance(value, collections.Counter):
        return plain_counts(sorted(value.items()))
    return value


def plain_counts(items: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Counts keyed by plain ``str`` (a kind enum member counts under its value, as a literal would)."""
    return {str(key): n for key, n in items}


class _HasMetrics(Protocol):
    @property
    def metrics(self) -> HostMetrics | NodeMetrics: ...


def _flat(prefix: str, snapshot: dict[str, int | dict[str, int]]) -> Iterator[str]:
    for key, value in snapshot.items():
        if isinstance(value, dict):
            for reason, n in value.items():
                yield f"{prefix}{key}.{reason}={n}"
        else:
            yield f"{prefix}{key}={value}"


def stats_line(**sources: _HasMetrics) -> str:
    """``name.key=value`` for every counter of every source, e.g. ``stats_line(host=host, node=node)``;
    Counters show their non-zero reasons only (``host.refused.streams=3``)."""
    parts = (part for name, src in sources.items() for part in _flat(f"{name}.", src.metrics.as_dict()))
    return " ".join(parts)


async def log_stats(interval: float, **sources: _HasMetrics) -> None:
    """Log :func:`stats_line` at INFO on ``mimirlite.stats`` every ``interval`` seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        log.info("stats %s", stats_line(**sources))
