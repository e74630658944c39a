"""Counters a host and a node keep about their work: ``host.metrics`` and ``node.metrics``.

Plain ints and :class:`collections.Counter` objects, updated in place where the work happens (one
integer add on the hot path, bytes counted per socket read and write). Reading them is free;
:func:`stats_line` puts them on one ``key=value`` line and :func:`log_stats` logs it every N seconds.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Iterable, Iterator
from typing import Protocol

from mimirlite.errors import CloseKind, EndReason, ProtocolErrorKind, RefusalReason

__all__ = [
    "STATS_LOGGER",
    "CloseKind",
    "EndReason",
    "HostMetrics",
    "NodeMetrics",
    "ProtocolErrorKind",
    "RefusalReason",
    "log_stats",
    "plain_counts",
    "stats_line",
]

STATS_LOGGER = "mimirlite.stats"
"""The logger :func:`log_stats` writes to (INFO)."""

log = logging.getLogger(STATS_LOGGER)


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
    """

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "closed",
        "connections_closed",
        "connections_current",
        "connections_opened",
        "pings_answered",
        "protocol_errors",
        "refused",
        "streams_current",
        "streams_opened",
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

    def as_dict(self) -> dict[str, int | dict[str, int]]:
        """A snapshot: every counter, Counters as plain dicts."""
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
    """

    __slots__ = (
        "backend_errors",
        "bad_requests",
        "cancelled",
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

    def as_dict(self) -> dict[str, int | dict[str, int]]:
        """A snapshot: every counter, Counters as plain dicts."""
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
