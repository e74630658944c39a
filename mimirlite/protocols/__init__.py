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
    "identify_service",
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


def identify_service(host: Host) -> Identify | None:
    """The identify service serving on ``host``, if any."""
    owner = getattr(host.handler(IDENTIFY_PROTOCOL), "__self__", None)
    return owner if isinstance(owner, Identify) else None
