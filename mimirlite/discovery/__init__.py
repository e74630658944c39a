"""Peer discovery: mDNS on the local network, as @libp2p/mdns does it.

Importing this package does not load ``zeroconf``; it loads when the first packet is built or read.
"""

from __future__ import annotations

from mimirlite.discovery.mdns import (
    DEFAULT_INTERVAL,
    DEFAULT_LOST_AFTER,
    LostCallback,
    MdnsDiscovery,
    PeerCallback,
)
from mimirlite.discovery.records import SERVICE_TAG, Announcement

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_LOST_AFTER",
    "SERVICE_TAG",
    "Announcement",
    "LostCallback",
    "MdnsDiscovery",
    "PeerCallback",
]
