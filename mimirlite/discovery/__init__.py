"""Peer discovery: mDNS on the local network, as @libp2p/mdns does it; bootstrap peers, with /dnsaddr
and /dns* multiaddrs resolved through DNS.

Importing this package loads neither ``zeroconf`` nor ``dnspython``: they load when the first mDNS
packet is built or read, and at the first DNS lookup. Its names load on first use (a module
``__getattr__``, PEP 562), each from its module: the DHT's bootstrap does not load mDNS, nor mDNS DNS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mimirlite._lazy import lazy_names as _lazy_names

if TYPE_CHECKING:
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

_LAZY = {
    "DEFAULT_INTERVAL": "mimirlite.discovery.mdns",
    "DEFAULT_LOST_AFTER": "mimirlite.discovery.mdns",
    "IPFS_BOOTSTRAP": "mimirlite.discovery.bootstrap",
    "SERVICE_TAG": "mimirlite.discovery.records",
    "Announcement": "mimirlite.discovery.records",
    "Bootstrap": "mimirlite.discovery.bootstrap",
    "DnsResolver": "mimirlite.discovery.dnsaddr",
    "LostCallback": "mimirlite.discovery.mdns",
    "MdnsDiscovery": "mimirlite.discovery.mdns",
    "PeerCallback": "mimirlite.discovery.mdns",
    "expand_bootstrap": "mimirlite.discovery.bootstrap",
    "resolve_bootstrap": "mimirlite.discovery.bootstrap",
}
"""Names loaded on first use, by the module that defines them."""

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


__getattr__, __dir__ = _lazy_names(__name__, _LAZY, globals())
