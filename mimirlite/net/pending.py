"""Bookkeeping of inbound connections still upgrading, and of refusal log lines; sans-IO (time passed in).

:class:`PendingHandshakes` limits pending handshakes per source and in all. When a limit is reached, a
newcomer evicts the oldest pending connection that is *stalled* rather than being refused, so that
peers that connect and say nothing (or dribble bytes) cannot lock others out. A source at its share
(``max_per_source``) whose pending connections all progress (an honest burst of dials from one address)
may go over it while the whole table has room; at the total limit, a newcomer from a source within its
share evicts a connection of the source furthest over its share (its newest) when none is stalled.

- *progress* is a handshake step completed: a message of the peer that the upgrade could act on (a
  multistream message it answers, a Noise handshake message, the muxer agreed). Bytes that do not
  complete a message are no progress: a peer sending one byte a second makes none.
- a pending connection is *stalled* when it has made no progress since it arrived (and arrived at least
  ``young`` seconds ago, unless the newcomer has already sent bytes: ``eager``), or none in the last
  ``stall_after`` seconds, unless it has bytes that were not processed yet (``busy``: the node has not
  read them, e.g. the first message of a peer accepted a moment ago). An honest dialer speaks at once,
  so a silent connection a moment old is not yet a sign of anything: an honest burst of dials from one
  address is not evicted by its own newer dials. Only when no pending connection of the full table is
  stalled is the newcomer refused.

A source is an IPv4 address, or the /64 prefix of an IPv6 one (one host usually holds a whole /64).

:class:`LogThrottle` keeps a flood from writing a line per refused connection: one line per reason per
interval, then one summary line with the count of the lines it held back.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from mimirlite.errors import RefusalReason

__all__ = ["YOUNG", "Admission", "LogThrottle", "PendingHandshakes", "source_of"]

YOUNG = 0.5
"""Seconds a pending connection that has completed no step may stay silent before a silent newcomer can
take its place (a newcomer that already sent bytes can take it at once)."""

K = TypeVar("K", bound=Hashable)


def source_of(ip: str) -> str:
    """The source a pending handshake counts under: the IPv4 address, or the /64 of an IPv6 one."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


@dataclass
class _Entry:
    source: str
    arrived: float
    last_progress: float
    steps: int = 0


class Admission(NamedTuple):
    """What :meth:`PendingHandshakes.admit` decided: the newcomer is admitted unless ``refused`` names
    the full table (``pending_handshakes_per_ip`` or ``pending_handshakes``); ``evicted`` is the pending
    connection it replaced, if any (the caller closes it), ``quiet`` the seconds that one had gone without
    progress."""

    refused: RefusalReason | None
    evicted: Hashable | None
    quiet: float = 0.0


class PendingHandshakes(Generic[K]):
    """Inbound connections still upgrading, per source and in all, in arrival order."""

    def __init__(self, max_total: int, max_per_source: int, stall_after: float, young: float = YOUNG) -> None:
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.stall_after = stall_after
        self.young = young
        self._all: dict[K, _Entry] = {}  # insertion order is arrival order
        self._by_source: dict[str, dict[K, None]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, key: object) -> bool:
        return key in self._all

    def count(self, source: str) -> int:
        """Pending handshakes from ``source``."""
        return len(self._by_source.get(source, ()))

    def stalled(self, key: K, now: float, eager: bool = False) -> bool:
        """Whether ``key`` has made no progress since it arrived (``young`` s ago at least, unless the
        newcomer is ``eager``), or none in the last ``stall_after`` s."""
        e = self._all[key]
        if e.steps == 0 and (eager or now - e.arrived >= self.young):
            return True
        return now - e.last_progress >= self.stall_after

    def admit(
        self,
        key: K,
        source: str,
        now: float,
        busy: Callable[[K], bool] = lambda key: False,
        eager: bool = False,
    ) -> Admission:
        """Admit ``key`` from ``source`` at ``now``, evicting the oldest stalled connection of a full
        table (the source's first, else all); or refuse it when every pending one there progresses.

        ``busy(k)``: whether pending connection ``k`` holds bytes not processed yet (it is not evicted);
        ``eager``: whether the newcomer has already sent bytes (it may take a silent one's place at once).
        """
        if key in self._all:
            raise ValueError("already pending")
        evicted: K | None = None
        full = len(self._all) >= self.max_total
        if self.count(source) >= self.max_per_source:
            evicted = self._oldest_stalled(self._by_source.get(source, {}), now, busy, eager)
            if evicted is None and (full or self.max_per_source == 0):
                return Admission(RefusalReason.PENDING_HANDSHAKES_PER_IP, None)
        elif full:
            evicted = self._oldest_stalled(self._all, now, busy, eager)
            if evicted is None:
                evicted = self._newest_over_share()
            if evicted is None:
                return Admission(RefusalReason.PENDING_HANDSHAKES, None)
        quiet = 0.0
        if evicted is not None:
            quiet = now - self._all[evicted].last_progress
            self.remove(evicted)
        self._all[key] = _Entry(source, now, now)
        self._by_source.setdefault(source, {})[key] = None
        return Admission(None, evicted, quiet)

    def progress(self, key: K, now: float) -> None:
        """``key`` completed a handshake step at ``now`` (no-op once it left the table)."""
        e = self._all.get(key)
        if e is not None:
            e.steps += 1
            e.last_progress = now

    def remove(self, key: K) -> None:
        """``key`` is no longer pending (upgraded, failed or closed); no-op if it was not."""
        e = self._all.pop(key, None)
        if e is None:
            return
        keys = self._by_source[e.source]
        del keys[key]
        if not keys:
            del self._by_source[e.source]

    def _newest_over_share(self) -> K | None:
        """The newest pending connection of the source furthest over ``max_per_source``, if any is."""
        empty: dict[K, None] = {}
        keys = max(self._by_source.values(), key=len, default=empty)
        if len(keys) <= self.max_per_source:
            return None
        return next(reversed(keys))

    def _oldest_stalled(
        self, keys: Iterable[K], now: float, busy: Callable[[K], bool], eager: bool
    ) -> K | None:
        for key in keys:
            if self.stalled(key, now, eager) and not busy(key):
                return key
        return None


class LogThrottle:
    """Per reason, at most one log line per ``interval`` seconds; the others are counted.

    Call :meth:`due` first, for a summary line per reason whose interval ended holding events back,
    then :meth:`allow`: whether to log this event in full.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._windows: dict[str, tuple[float, int]] = {}  # reason -> (interval start, events held back)

    def allow(self, reason: str, now: float) -> bool:
        """Whether to log this event of ``reason``: the first of an interval; the rest are counted."""
        window = self._windows.get(reason)
        if window is None or now - window[0] >= self.interval:
            self._windows[reason] = (now, 0)
            return True
        self._windows[reason] = (window[0], window[1] + 1)
        return False

    def next_due(self) -> float | None:
        """When the earliest interval holding events back ends; None if none does."""
        ends = [start + self.interval for start, held in self._windows.values() if held]
        return min(ends) if ends else None

    def due(self, now: float) -> list[tuple[str, int]]:
        """(reason, events held back) for every interval ended by ``now``; those reasons start afresh."""
        out = []
        for reason, (start, held) in list(self._windows.items()):
            if now - start >= self.interval:
                del self._windows[reason]
                if held:
                    out.append((reason, held))
        return out
