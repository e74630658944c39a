"""Circuit relay v2 (``/libp2p/circuit/relay/0.2.0/hop`` and ``/stop``), libp2p specs ``relay/circuit-v2.md``.

Sans-IO: the message codec (``messages.py``); what a relay service holds and carries for others, bounded
(``resources.py``). Asyncio shells: the relay service (``service.py``), the client (``client.py``) and
the choice of relays when AutoNAT finds us private (``auto.py``).
"""

from __future__ import annotations

from mimirlite.protocols.relay.messages import (
    HOP_PROTOCOL,
    STOP_PROTOCOL,
    HopMessage,
    HopType,
    Limit,
    RelayLimits,
    RelayMessageError,
    RelayPeer,
    Reservation,
    Status,
    StopMessage,
    StopType,
    decode_hop,
    decode_stop,
    encode_hop,
    encode_stop,
)

__all__ = [
    "HOP_PROTOCOL",
    "STOP_PROTOCOL",
    "HopMessage",
    "HopType",
    "Limit",
    "RelayLimits",
    "RelayMessageError",
    "RelayPeer",
    "Reservation",
    "Status",
    "StopMessage",
    "StopType",
    "decode_hop",
    "decode_stop",
    "encode_hop",
    "encode_stop",
]
