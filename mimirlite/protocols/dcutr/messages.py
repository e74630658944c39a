"""DCUtR's message (libp2p specs ``relay/DCUtR.md``, ``holepunch.proto``), sans-IO.

One ``HolePunch`` is one protobuf body; on the stream each goes with a uvarint length prefix (the
exchange in :mod:`mimirlite.protocols.dcutr.holepunch` frames them). :func:`encode_message` writes
exactly the bytes ``@libp2p/dcutr`` 2.0.15 writes (``dist/src/pb/message.js``, protons): ``type``, then
each ``ObsAddrs`` entry.

Every message is a peer's, so :func:`decode_message` is bounded by :class:`DcutrLimits`: a body over the
size cap, more than ``max_addrs_listed`` addresses, malformed protobuf, a missing or unknown ``type``
are refused (:class:`DcutrMessageError`); addresses that do not decode and those past ``max_addrs`` are
left out and counted. Which addresses are worth dialing is the exchange's business, not the codec's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mimirlite.errors import DecodeError, ProtocolError
from mimirlite.wire.multiaddr import Multiaddr, decode_many
from mimirlite.wire.protobuf import LENGTH_DELIMITED, VARINT, encode_bytes_field, iter_fields
from mimirlite.wire.varint import encode_uvarint

__all__ = [
    "DCUTR_PROTOCOL",
    "DcutrLimits",
    "DcutrMessageError",
    "HolePunch",
    "HolePunchType",
    "decode_message",
    "encode_message",
]

DCUTR_PROTOCOL = "/libp2p/dcutr"


class HolePunchType(enum.IntEnum):
    """``HolePunch.Type`` (0, ``UNUSED``, is no message: refused)."""

    CONNECT = 100
    SYNC = 300


@dataclass(frozen=True, slots=True)
class HolePunch:
    """One DCUtR message: CONNECT with the sender's observed addresses, or SYNC (no addresses)."""

    type: HolePunchType
    obs_addrs: tuple[Multiaddr, ...] = ()


@dataclass(frozen=True, slots=True)
class DcutrLimits:
    """Caps on one message a peer sent."""

    max_message_size: int = 4096
    """Bytes of one body: @libp2p/dcutr's ``MAX_DCUTR_MESSAGE_SIZE`` and go-libp2p holepunch's
    ``maxMsgSize``, both 4 KiB."""
    max_addrs: int = 16
    """Addresses kept (the rest are dropped and counted): a node with TCP and QUIC on IPv4 and IPv6,
    observed and listening, has a few; go-libp2p's autonat caps a peer's list at 16 too."""
    max_addrs_listed: int = 128
    """More addresses than this in one message is an error, not a long list to trim."""


class DcutrMessageError(ProtocolError):
    """A DCUtR message a peer sent that we cannot take: too large, malformed, over a cap, of an unknown
    type, or out of turn (``ProtocolErrorKind.DCUTR``)."""


_F_TYPE = 1
_F_OBS_ADDRS = 2
_TAG_TYPE = encode_uvarint(_F_TYPE << 3 | VARINT)
_WIRE_TYPES = {_F_TYPE: VARINT, _F_OBS_ADDRS: LENGTH_DELIMITED}
_TYPES = {t.value: t for t in HolePunchType}


def encode_message(msg: HolePunch) -> bytes:
    """The message's protobuf body (no length prefix), byte for byte as @libp2p/dcutr 2.0.15 writes it."""
    return (
        _TAG_TYPE
        + encode_uvarint(msg.type)
        + b"".join(encode_bytes_field(_F_OBS_ADDRS, a.to_bytes()) for a in msg.obs_addrs)
    )


def decode_message(buf: bytes, limits: DcutrLimits = DcutrLimits()) -> tuple[HolePunch, int]:
    """Decode one body a peer sent: the message and how many addresses were left out.

    Each address that does not decode or is past ``limits.max_addrs`` counts 1. Raises
    :class:`DcutrMessageError` for a body over ``max_message_size``, malformed protobuf, wrong wire
    types, no or an unknown ``type``, more than ``max_addrs_listed`` addresses. Unknown fields are
    skipped; a repeated ``type`` keeps its last value.
    """
    if len(buf) > limits.max_message_size:
        cap = limits.max_message_size
        raise DcutrMessageError(f"dcutr: message of {len(buf)} bytes exceeds the {cap} byte cap")
    type_value: int | None = None
    addrs: list[bytes] = []
    try:
        for field, wire_type, value in iter_fields(bytes(buf)):
            expected = _WIRE_TYPES.get(field)
            if expected is None:
                continue
            if wire_type != expected:
                raise DcutrMessageError(
                    f"dcutr: field {field} has wire type {wire_type}, expected {expected}"
                )
            if isinstance(value, int):
                type_value = value
            else:
                if len(addrs) >= limits.max_addrs_listed:
                    raise DcutrMessageError(f"dcutr: more than {limits.max_addrs_listed} addresses")
                addrs.append(value)
    except DecodeError as exc:
        raise DcutrMessageError(f"dcutr: {exc}") from None
    if type_value is None:
        raise DcutrMessageError("dcutr: message without a type")
    msg_type = _TYPES.get(type_value)
    if msg_type is None:
        raise DcutrMessageError(f"dcutr: unknown message type {type_value}")
    kept, dropped = decode_many(addrs, limits.max_addrs)
    return HolePunch(msg_type, tuple(kept)), dropped
