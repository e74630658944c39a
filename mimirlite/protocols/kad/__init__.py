"""The Kademlia DHT (``/ipfs/kad/1.0.0``, ``/ipfs/lan/kad/1.0.0``), libp2p specs ``kad-dht/README.md``.

Sans-IO: the routing table (``routing.py``), the provider store (``providers.py``), the iterative lookup
(``lookup.py``), the message codec (``messages.py``); their asyncio shell: ``service.py`` (:class:`KadDht`,
one DHT on a Host, and :class:`Dht`, the LAN and public ones together).
"""

from __future__ import annotations

from mimirlite.protocols.kad.lookup import LookupConfig
from mimirlite.protocols.kad.messages import MessageLimits
from mimirlite.protocols.kad.providers import ProviderLimits
from mimirlite.protocols.kad.service import KAD_PROTOCOL, LAN_KAD_PROTOCOL, Dht, DhtConfig, KadDht

__all__ = [
    "KAD_PROTOCOL",
    "LAN_KAD_PROTOCOL",
    "Dht",
    "DhtConfig",
    "KadDht",
    "LookupConfig",
    "MessageLimits",
    "ProviderLimits",
]
