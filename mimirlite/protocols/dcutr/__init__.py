"""DCUtR (``/libp2p/dcutr``), libp2p specs ``relay/DCUtR.md``: over a relayed connection, agree with the
peer on when both dial each other directly, so that both NATs open at once (TCP simultaneous open).

Sans-IO: the message codec (``messages.py``); the exchange for both roles (``holepunch.py``). Its asyncio
shell: ``service.py`` (``HolePuncher``).
"""

from __future__ import annotations

from mimirlite.protocols.dcutr.holepunch import (
    AttemptFailed,
    DialNow,
    HolePunchConfig,
    HolePunchFailed,
    HolePunchInitiator,
    HolePunchResponder,
    HolePunchState,
    HolePunchSucceeded,
    dialable_addrs,
)
from mimirlite.protocols.dcutr.messages import (
    DCUTR_PROTOCOL,
    DcutrLimits,
    DcutrMessageError,
    HolePunch,
    HolePunchType,
    decode_message,
    encode_message,
)

__all__ = [
    "DCUTR_PROTOCOL",
    "AttemptFailed",
    "DcutrLimits",
    "DcutrMessageError",
    "DialNow",
    "HolePunch",
    "HolePunchConfig",
    "HolePunchFailed",
    "HolePunchInitiator",
    "HolePunchResponder",
    "HolePunchState",
    "HolePunchSucceeded",
    "HolePunchType",
    "decode_message",
    "dialable_addrs",
    "encode_message",
]
