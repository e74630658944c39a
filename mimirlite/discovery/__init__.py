"""Peer discovery: mDNS on the local network, as @libp2p/mdns does it; bootstrap peers, with /dnsaddr
and /dns* multiaddrs resolved through DNS.

Importing this package loads neither ``zeroconf`` nor ``dnspython``: they load when the first mDNS
packet is built or read, and at the first DNS lookup.
"""

from __future__ import annotations

from mimirlite.discovery.bootstrap import IPFS_BOOTSTRAP, Bootstrap, expand_bootstrap, resolve_bootstrap
from mimirlite.discovery.dnsaddr import DnsResolver
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
    "IPFS_BOOTSTRAP",
    "SERVICE_TAG",
    "Announcement",
    "Bootstrap",
    "DnsResolver",
    "LostCallback",
    "MdnsDiscovery",
    "PeerCallback",
    "expand_bootstrap",
    "resolve_bootstrap",
]
