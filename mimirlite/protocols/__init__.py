"""libp2p identify and ping as services a Host can opt into (a plain Host serves neither)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mimirlite.protocols.identify import (
    IDENTIFY_PROTOCOL,
    IDENTIFY_PUSH_PROTOCOL,
    Identify,
    IdentifyConfig,
    IdentifyError,
    IdentifyInfo,
    IdentifyTimeoutError,
)
from mimirlite.protocols.ping import PING_PROTOCOL, Ping, PingMismatchError, PingTimeoutError

if TYPE_CHECKING:
    from mimirlite.net.host import Host

__all__ = [
    "IDENTIFY_PROTOCOL",
    "IDENTIFY_PUSH_PROTOCOL",
    "PING_PROTOCOL",
    "Identify",
    "IdentifyConfig",
    "IdentifyError",
    "IdentifyInfo",
    "IdentifyTimeoutError",
    "Ping",
    "PingMismatchError",
    "PingTimeoutError",
    "start_services",
]


def start_services(host: Host) -> list[Identify | Ping]:
    """Serve identify and ping on ``host`` unless it does already; returns the services started here."""
    started: list[Identify | Ping] = []
    if IDENTIFY_PROTOCOL not in host.protocols:
        started.append(Identify(host))
    if PING_PROTOCOL not in host.protocols:
        started.append(Ping(host))
    return started
