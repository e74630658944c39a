"""Inbound streams held per connection, per peer and per IP address: who may open one more.

Pure bookkeeping (no socket, no event loop), shared by the connections of one Host, so that one
connection, peer or address opening streams cannot take every place of ``HostConfig.max_streams_total``
from the others. The limits are :class:`~mimirlite.net.config.HostConfig` fields.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from mimirlite.errors import RefusalReason

if TYPE_CHECKING:
    from mimirlite.net.config import HostConfig


class StreamShares:
    """Inbound streams open, by peer and by address, across the connections of one host."""

    def __init__(self, config: HostConfig) -> None:
        self.config = config
        self._per_peer: dict[Hashable, int] = {}
        self._per_ip: dict[Hashable, int] = {}

    def of_peer(self, peer: Hashable) -> int:
        return self._per_peer.get(peer, 0)

    def of_ip(self, ip: Hashable) -> int:
        return self._per_ip.get(ip, 0)

    def refusal(
        self, on_connection: int, peer: Hashable, ip: Hashable | None
    ) -> tuple[RefusalReason, str] | None:
        """Why one more inbound stream (on a connection holding ``on_connection`` of them, from ``peer``
        at ``ip``) is refused: ``(HostMetrics.refused reason, detail)``; None when it may open."""
        cfg = self.config
        if on_connection >= cfg.max_inbound_streams_per_connection:
            return (
                RefusalReason.STREAMS_PER_CONNECTION,
                f"{on_connection} inbound streams on this connection (max_inbound_streams_per_connection)",
            )
        mine = self._per_peer.get(peer, 0)
        if mine >= cfg.max_streams_per_peer:
            return (
                RefusalReason.STREAMS_PER_PEER,
                f"{mine} inbound streams from this peer (max_streams_per_peer)",
            )
        if ip is not None:
            here = self._per_ip.get(ip, 0)
            if here >= cfg.max_streams_per_ip:
                return RefusalReason.STREAMS_PER_IP, f"{here} inbound streams from {ip} (max_streams_per_ip)"
        return None

    def add(self, peer: Hashable, ip: Hashable | None) -> None:
        """Count an inbound stream that opened."""
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        if ip is not None:
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1

    def remove(self, peer: Hashable, ip: Hashable | None, n: int = 1) -> None:
        """``n`` inbound streams counted by :meth:`add` ended."""
        _take(self._per_peer, peer, n)
        if ip is not None:
            _take(self._per_ip, ip, n)


def _take(counts: dict[Hashable, int], key: Hashable, n: int) -> None:
    left = counts.get(key, 0) - n
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
