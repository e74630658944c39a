"""Circuit relay v2's messages (libp2p specs ``relay/circuit-v2.md``), sans-IO.

``HopMessage`` goes on ``/libp2p/circuit/relay/0.2.0/hop`` (a client to a relay: RESERVE, CONNECT; the
relay's STATUS answer), ``StopMessage`` on ``/libp2p/circuit/relay/0.2.0/stop`` (a relay to the target:
CONNECT; the target's STATUS answer). One message is one protobuf body; on a stream each goes with a
uvarint length prefix (:mod:`mimirlite.wire.lp`), which is not this module's business.

:func:`encode_hop` and :func:`encode_stop` write exactly the bytes @libp2p/circuit-relay-v2 3.1.7 writes
(``pb/index.js``, protons): fields in field-number order; ``type``, ``status`` and each ``Limit`` field
written whenever present, even at 0 (``type`` RESERVE is ``08 00``; ``Limit(duration=0)`` is ``08 00``);
an empty peer ID and a ``Reservation.expire`` of 0 left out. The voucher (a signed envelope) is kept as
its opaque bytes: verifying it is not this module's job.

Every message is a peer's, so decoding is bounded by :class:`RelayLimits`: a message over a cap, malformed
protobuf, a missing or unknown ``type``, an unknown ``status`` (as protons refuses an enum value it does
not know, ``Invalid enum value``) or a limit out of its integer range raises :class:`RelayMessageError`;
a peer whose ID is not one (the whole ``peer`` is left out), and addresses that do not decode or are past
``max_addrs``, are left out and counted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mimirlite.errors import DecodeError, InvalidKeyError, LocalError, ProtocolError
from mimirlite.identity import PeerId
from mimirlite.wire.multiaddr import Multiaddr, decode_many
from mimirlite.wire.protobuf import LENGTH_DELIMITED, VARINT, encode_bytes_field, iter_fields
from mimirlite.wire.varint import encode_uvarint

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

HOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/hop"
STOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/stop"


class HopType(enum.IntEnum):
    """``HopMessage.Type``."""

    RESERVE = 0
    CONNECT = 1
    STATUS = 2


class StopType(enum.IntEnum):
    """``StopMessage.Type``."""

    CONNECT = 0
    STATUS = 1


class Status(enum.IntEnum):
    """``Status``: a STATUS message's answer."""

    UNUSED = 0
    OK = 100
    RESERVATION_REFUSED = 200
    RESOURCE_LIMIT_EXCEEDED = 201
    PERMISSION_DENIED = 202
    CONNECTION_FAILED = 203
    NO_RESERVATION = 204
    MALFORMED_MESSAGE = 400
    UNEXPECTED_MESSAGE = 401


@dataclass(frozen=True, slots=True)
class RelayPeer:
    """``Peer``: the target of a HOP CONNECT, the source of a STOP CONNECT."""

    peer: PeerId
    addrs: tuple[Multiaddr, ...] = ()


@dataclass(frozen=True, slots=True)
class Reservation:
    """``Reservation``: what a relay grants in its STATUS OK answer to RESERVE."""

    expire: int
    """When it ends, in Unix seconds (UTC); a uint64 on the wire, left out at 0."""
    addrs: tuple[Multiaddr, ...] = ()
    """The relay's own addresses, for the client to advertise with ``/p2p-circuit``."""
    voucher: bytes | None = None
    """The reservation voucher: a signed envelope's bytes, kept opaque (``b""`` is an empty one)."""


@dataclass(frozen=True, slots=True)
class Limit:
    """``Limit``: the relayed connection's limits; None is no limit of that kind."""

    duration: int | None = None
    """Seconds, a uint32 (the spec's unit; circuit-relay-v2 3.1.7 writes its milliseconds here)."""
    data: int | None = None
    """Bytes, a uint64 (circuit-relay-v2 counts both directions together against it)."""


@dataclass(frozen=True, slots=True)
class HopMessage:
    """One message on the hop protocol."""

    type: HopType
    peer: RelayPeer | None = None
    reservation: Reservation | None = None
    limit: Limit | None = None
    status: Status | None = None


@dataclass(frozen=True, slots=True)
class StopMessage:
    """One message on the stop protocol."""

    type: StopType
    peer: RelayPeer | None = None
    limit: Limit | None = None
    status: Status | None = None


@dataclass(frozen=True)
class RelayLimits:
    """Caps on one hop or stop message a peer sent."""

    max_message_size: int = 4096
    """Bytes of one body: go-libp2p's ``maxMessageSize`` (4096) that its relay and client read hop and
    stop messages with, not js's (it-protobuf-stream's default, 4 MiB). A STATUS OK with a voucher and a
    dozen addresses is well under 1 KiB."""
    max_addrs: int = 32
    """Addresses kept per ``Peer`` and per ``Reservation`` (the rest are dropped and counted); a relay
    with TCP, QUIC, WebTransport and WebRTC on IPv4 and IPv6 advertises about a dozen."""
    max_voucher_size: int = 2048
    """Bytes of the voucher: an Ed25519 relay's is about 190, an RSA-4096 one's about 1200."""


class RelayMessageError(ProtocolError):
    """A relay message a peer sent that we cannot take: too large, malformed, over a cap, unknown enum."""


# field numbers (circuit-v2 proto)
_H_TYPE, _H_PEER, _H_RESERVATION, _H_LIMIT, _H_STATUS = 1, 2, 3, 4, 5
_S_TYPE, _S_PEER, _S_LIMIT, _S_STATUS = 1, 2, 3, 4
_P_ID, _P_ADDRS = 1, 2
_R_EXPIRE, _R_ADDRS, _R_VOUCHER = 1, 2, 3
_L_DURATION, _L_DATA = 1, 2

_LD = LENGTH_DELIMITED
_HOP_WIRE_TYPES = {_H_TYPE: VARINT, _H_PEER: _LD, _H_RESERVATION: _LD, _H_LIMIT: _LD, _H_STATUS: VARINT}
_STOP_WIRE_TYPES = {_S_TYPE: VARINT, _S_PEER: _LD, _S_LIMIT: _LD, _S_STATUS: VARINT}
_PEER_WIRE_TYPES = {_P_ID: _LD, _P_ADDRS: _LD}
_RESERVATION_WIRE_TYPES = {_R_EXPIRE: VARINT, _R_ADDRS: _LD, _R_VOUCHER: _LD}
_LIMIT_WIRE_TYPES = {_L_DURATION: VARINT, _L_DATA: VARINT}

_UINT32_MAX = 2**32 - 1
_UINT63_MAX = 2**63 - 1  # what mimirlite.wire.varint reads and writes
_HOP_TYPES = {t.value: t for t in HopType}
_STOP_TYPES = {t.value: t for t in StopType}
_STATUSES = {s.value: s for s in Status}


def _tag(field: int, wire_type: int) -> bytes:
    return encode_uvarint(field << 3 | wire_type)


_TAG_H_TYPE = _tag(_H_TYPE, VARINT)
_TAG_H_STATUS = _tag(_H_STATUS, VARINT)
_TAG_S_TYPE = _tag(_S_TYPE, VARINT)
_TAG_S_STATUS = _tag(_S_STATUS, VARINT)
_TAG_R_EXPIRE = _tag(_R_EXPIRE, VARINT)
_TAG_L_DURATION = _tag(_L_DURATION, VARINT)
_TAG_L_DATA = _tag(_L_DATA, VARINT)


# ---------------------------------------------------------------- encoding


def _encode_peer(p: RelayPeer) -> bytes:
    parts = [encode_bytes_field(_P_ID, p.peer.to_bytes())]
    parts.extend(encode_bytes_field(_P_ADDRS, a.to_bytes()) for a in p.addrs)
    return b"".join(parts)


def _encode_reservation(r: Reservation) -> bytes:
    parts: list[bytes] = []
    if r.expire:
        if not 0 < r.expire <= _UINT63_MAX:
            raise LocalError(f"relay: reservation expire {r.expire} is not in 0..{_UINT63_MAX}")
        parts.append(_TAG_R_EXPIRE + encode_uvarint(r.expire))
    parts.extend(encode_bytes_field(_R_ADDRS, a.to_bytes()) for a in r.addrs)
    if r.voucher is not None:
        parts.append(encode_bytes_field(_R_VOUCHER, r.voucher))
    return b"".join(parts)


def _encode_limit(lim: Limit) -> bytes:
    parts: list[bytes] = []
    if lim.duration is not None:
        if not 0 <= lim.duration <= _UINT32_MAX:
            raise LocalError(f"relay: limit duration {lim.duration} is not a uint32")
        parts.append(_TAG_L_DURATION + encode_uvarint(lim.duration))
    if lim.data is not None:
        if not 0 <= lim.data <= _UINT63_MAX:
            raise LocalError(f"relay: limit data {lim.data} is not in 0..{_UINT63_MAX}")
        parts.append(_TAG_L_DATA + encode_uvarint(lim.data))
    return b"".join(parts)


def encode_hop(m: HopMessage) -> bytes:
    """The message's protobuf body (no length prefix), byte for byte as circuit-relay-v2 3.1.7 writes it.

    Raises LocalError for a limit or an expiry outside its integer range."""
    parts = [_TAG_H_TYPE + encode_uvarint(m.type)]
    if m.peer is not None:
        parts.append(encode_bytes_field(_H_PEER, _encode_peer(m.peer)))
    if m.reservation is not None:
        parts.append(encode_bytes_field(_H_RESERVATION, _encode_reservation(m.reservation)))
    if m.limit is not None:
        parts.append(encode_bytes_field(_H_LIMIT, _encode_limit(m.limit)))
    if m.status is not None:
        parts.append(_TAG_H_STATUS + encode_uvarint(m.status))
    return b"".join(parts)


def encode_stop(m: StopMessage) -> bytes:
    """The message's protobuf body (no length prefix), byte for byte as circuit-relay-v2 3.1.7 writes it.

    Raises LocalError for a limit outside its integer range."""
    parts = [_TAG_S_TYPE + encode_uvarint(m.type)]
    if m.peer is not None:
        parts.append(encode_bytes_field(_S_PEER, _encode_peer(m.peer)))
    if m.limit is not None:
        parts.append(encode_bytes_field(_S_LIMIT, _encode_limit(m.limit)))
    if m.status is not None:
        parts.append(_TAG_S_STATUS + encode_uvarint(m.status))
    return b"".join(parts)


# ---------------------------------------------------------------- decoding


def _fields(buf: bytes, wire_types: dict[int, int], what: str) -> list[tuple[int, int | bytes]]:
    """The known fields of ``buf`` in order, each checked against its wire type; unknown ones skipped."""
    out: list[tuple[int, int | bytes]] = []
    for field, wire_type, value in iter_fields(buf):
        expected = wire_types.get(field)
        if expected is None:
            continue
        if wire_type != expected:
            msg = f"relay: {what} field {field} has wire type {wire_type}, expected {expected}"
            raise RelayMessageError(msg)
        out.append((field, value))
    return out


def _decode_peer(buf: bytes, limits: RelayLimits) -> tuple[RelayPeer | None, int]:
    """The peer and how many addresses were left out; None (and 1 dropped) for an invalid peer ID."""
    peer_bytes = b""
    addrs: list[bytes] = []
    for field, value in _fields(buf, _PEER_WIRE_TYPES, "peer"):
        assert isinstance(value, bytes)
        if field == _P_ID:
            peer_bytes = value
        else:
            addrs.append(value)
    try:
        peer = PeerId(peer_bytes)
    except InvalidKeyError:
        return None, 1
    kept, dropped = decode_many(addrs, limits.max_addrs)
    return RelayPeer(peer, tuple(kept)), dropped


def _decode_reservation(buf: bytes, limits: RelayLimits) -> tuple[Reservation, int]:
    expire = 0
    addrs: list[bytes] = []
    voucher: bytes | None = None
    for field, value in _fields(buf, _RESERVATION_WIRE_TYPES, "reservation"):
        if isinstance(value, int):
            expire = value
        elif field == _R_ADDRS:
            addrs.append(value)
        else:
            if len(value) > limits.max_voucher_size:
                cap = limits.max_voucher_size
                raise RelayMessageError(f"relay: voucher of {len(value)} bytes exceeds the {cap} byte cap")
            voucher = value
    kept, dropped = decode_many(addrs, limits.max_addrs)
    return Reservation(expire, tuple(kept), voucher), dropped


def _decode_limit(buf: bytes) -> Limit:
    duration: int | None = None
    data: int | None = None
    for field, value in _fields(buf, _LIMIT_WIRE_TYPES, "limit"):
        assert isinstance(value, int)
        if field == _L_DURATION:
            if value > _UINT32_MAX:
                raise RelayMessageError(f"relay: limit duration {value} is not a uint32")
            duration = value
        else:
            data = value
    return Limit(duration, data)


def _status(value: int) -> Status:
    status = _STATUSES.get(value)
    if status is None:
        raise RelayMessageError(f"relay: unknown status {value}")
    return status


def _check_size(buf: bytes, limits: RelayLimits) -> None:
    if len(buf) > limits.max_message_size:
        cap = limits.max_message_size
        raise RelayMessageError(f"relay: message of {len(buf)} bytes exceeds the {cap} byte cap")


def decode_hop(buf: bytes, limits: RelayLimits = RelayLimits()) -> tuple[HopMessage, int]:
    """Decode one hop body a peer sent: the message and how many peers and addresses were left out.

    A peer whose ID is not a valid one is left out (``peer`` None) and counts 1; each address that
    does not decode or is past ``limits.max_addrs`` counts 1. Raises :class:`RelayMessageError` for a
    body over ``max_message_size``, malformed protobuf, a missing or unknown type, an unknown status, a
    voucher over ``max_voucher_size`` or a duration over a uint32. Unknown fields are skipped; a
    repeated singular field keeps its last value.
    """
    _check_size(buf, limits)
    type_value: int | None = None
    peer: RelayPeer | None = None
    reservation: Reservation | None = None
    limit: Limit | None = None
    status: Status | None = None
    dropped = 0
    try:
        for field, value in _fields(bytes(buf), _HOP_WIRE_TYPES, "hop"):
            if isinstance(value, int):
                if field == _H_TYPE:
                    type_value = value
                else:
                    status = _status(value)
            elif field == _H_PEER:
                peer, lost = _decode_peer(value, limits)
                dropped += lost
            elif field == _H_RESERVATION:
                reservation, lost = _decode_reservation(value, limits)
                dropped += lost
            else:
                limit = _decode_limit(value)
    except DecodeError as exc:
        raise RelayMessageError(f"relay: {exc}") from None
    if type_value is None:
        raise RelayMessageError("relay: hop message without a type")
    msg_type = _HOP_TYPES.get(type_value)
    if msg_type is None:
        raise RelayMessageError(f"relay: unknown hop message type {type_value}")
    return HopMessage(msg_type, peer, reservation, limit, status), dropped


def decode_stop(buf: bytes, limits: RelayLimits = RelayLimits()) -> tuple[StopMessage, int]:
    """Decode one stop body a peer sent: the message and how many peers and addresses were left out.

    As :func:`decode_hop` (a stop message has no reservation)."""
    _check_size(buf, limits)
    type_value: int | None = None
    peer: RelayPeer | None = None
    limit: Limit | None = None
    status: Status | None = None
    dropped = 0
    try:
        for field, value in _fields(bytes(buf), _STOP_WIRE_TYPES, "stop"):
            if isinstance(value, int):
                if field == _S_TYPE:
                    type_value = value
                else:
                    status = _status(value)
            elif field == _S_PEER:
                peer, lost = _decode_peer(value, limits)
                dropped += lost
            else:
                limit = _decode_limit(value)
    except DecodeError as exc:
        raise RelayMessageError(f"relay: {exc}") from None
    if type_value is None:
        raise RelayMessageError("relay: stop message without a type")
    msg_type = _STOP_TYPES.get(type_value)
    if msg_type is None:
        raise RelayMessageError(f"relay: unknown stop message type {type_value}")
    return StopMessage(msg_type, peer, limit, status), dropped
