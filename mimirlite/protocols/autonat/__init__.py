"""AutoNAT v1 (``/libp2p/autonat/1.0.0``), libp2p specs ``autonat/autonat-v1.md``: ask peers to dial us
back to learn whether we are reachable, and dial back the peers that ask.

Sans-IO: the message codec (``messages.py``); the reachability verdict and the server's checks of a DIAL
request (``verdict.py``); the asyncio shell, both roles on a Host (``service.py``).
"""

from __future__ import annotations

from mimirlite.protocols.autonat.messages import (
    AUTONAT_PROTOCOL,
    AutonatLimits,
    AutonatMessage,
    AutonatMessageError,
    Dial,
    DialResponse,
    MessageType,
    PeerInfo,
    ResponseStatus,
    decode_message,
    encode_message,
)
from mimirlite.protocols.autonat.verdict import (
    DialPolicy,
    DialPolicyConfig,
    DialRefusal,
    Reachability,
    ReachabilityTracker,
    TrackerConfig,
    dial_outcome,
)

__all__ = [
    "AUTONAT_PROTOCOL",
    "AutonatLimits",
    "AutonatMessage",
    "AutonatMessageError",
    "Dial",
    "DialPolicy",
    "DialPolicyConfig",
    "DialRefusal",
    "DialResponse",
    "MessageType",
    "PeerInfo",
    "Reachability",
    "ReachabilityTracker",
    "ResponseStatus",
    "TrackerConfig",
    "decode_message",
    "dial_outcome",
    "encode_message",
]
