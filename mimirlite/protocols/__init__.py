"""libp2p identify and ping as services a Host can opt into (a plain Host serves neither)."""

from __future__ import annotations

from mimirlite.protocols.identify import (
    IDENTIFY_PROTOCOL,
    IDENTIFY_PUSH_PROTOCOL,
    Identify,
    IdentifyError,
    IdentifyInfo,
    IdentifyTimeoutError,
)
from mimirlite.protocols.ping import PING_PROTOCOL, Ping, PingMismatchError, PingTimeoutError

__all__ = [
    "IDENTIFY_PROTOCOL",
    "IDENTIFY_PUSH_PROTOCOL",
    "PING_PROTOCOL",
    "Identify",
    "IdentifyError",
    "IdentifyInfo",
    "IdentifyTimeoutError",
    "Ping",
    "PingMismatchError",
    "PingTimeoutError",
]
