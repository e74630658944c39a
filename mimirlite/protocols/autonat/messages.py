"""AutoNAT v1's messages (libp2p specs ``autonat/autonat-v1.md``, ``autonat.proto``), sans-IO.

One message is one protobuf body; on a stream each goes with a uvarint length prefix
(:mod:`mimirlite.wire.lp`), which is not this module's business. :func:`encode_message` writes exactly
the bytes ``@libp2p/autonat`` 2.0.16 writes (``dist/src/pb/index.js``, protons): fields in field-number
order, every field that is set written, defaults included: ``type`` DIAL (0) and ``status`` OK (0) are
on the wire, and an empty ``statusText`` is written as an empty string (``status_text=None`` leaves it
out).

Every message is a peer's, so :func:`decode_message` is bounded by :class:`AutonatLimits`: a body over
the size cap, a list of addresses over ``max_addrs_listed``, malformed protobuf, a missing or unknown
``type`` or ``status`` are refused (:class:`AutonatMessageError`); a peer ID that is not one (read as
None), addresses that do not decode and those past ``max_addrs`` are left out and counted. What a DIAL
asks for is judged by :func:`mimirlite.protocols.autonat.verdict.DialPolicy.check_dial`, not here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mimirlite.errors import DecodeError, InvalidKeyError, ProtocolError
from mimirlite.identity import PeerId
from mimirlite.wire.multiaddr import Multiaddr, decode_many
from mimirlite.wire.protobuf import LENGTH_DELIMITED, VARINT, encode_bytes_field, iter_fields
from mimirlite.wire.varint import encode_uvarint

__all__ = [
    "AUTONAT_PROTOCOL",
    "AutonatLimits",
    "AutonatMessage",
    "AutonatMessageError",
    "Dial",
    "DialResponse",
    "MessageType",
    "PeerInfo",
    "ResponseStatus",
    "decode_message",
    "encode_message",
]

AUTONAT_PROTOCOL = "/libp2p/autonat/1.0.0"


class MessageType(enum.IntEnum):
    """``Message.MessageType``."""

    DIAL = 0
    DIAL_RESPONSE = 1


class ResponseStatus(enum.IntEnum):
    """``Message.ResponseStatus``: the server's answer to a DIAL."""

    OK = 0
    E_DIAL_ERROR = 100
    """It dialed and every dial failed: the address may be behind a NAT."""
    E_DIAL_REFUSED = 101
    """It would not dial (nothing on the requester's IP, a rate, a policy)."""
    E_BAD_REQUEST = 200
    E_INTERNAL_ERROR = 300


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """``Message.PeerInfo``: the peer to dial back and its addresses."""

    peer: PeerId | None
    """None when the message carried no ID, or bytes that are not a peer ID (counted as dropped)."""
    addrs: tuple[Multiaddr, ...] = ()


@dataclass(frozen=True, slots=True)
class Dial:
    """``Message.Dial``: the request."""

    peer: PeerInfo | None = None


@dataclass(frozen=True, slots=True)
class DialResponse:
    """``Message.DialResponse``: the answer."""

    status: ResponseStatus
    status_text: str | None = None
    """None: not on the wire; ``""``: an empty string on the wire (autonat.js sends one after a dial
    error with an empty message)."""
    addr: Multiaddr | None = None
    """The address dialed (OK) or the last one tried (E_DIAL_ERROR)."""


@dataclass(frozen=True, slots=True)
class AutonatMessage:
    """One AutoNAT message: a DIAL carries ``dial``, a DIAL_RESPONSE ``dial_response``."""

    type: MessageType
    dial: Dial | None = None
    dial_response: DialResponse | None = None


@dataclass(frozen=True, slots=True)
class AutonatLimits:
    """Caps on one message a peer sent."""

    max_message_size: int = 8192
    """Bytes of one body: @libp2p/autonat's ``MAX_MESSAGE_SIZE`` (its server reads with it); a DIAL with
    ``max_addrs_listed`` IPv6 TCP addresses (about 25 bytes each) fits."""
    max_addrs: int = 16
    """Addresses of a DIAL kept (the rest are dropped and counted): go-libp2p's autonat v1 server's
    ``maxPeerAddresses``."""
    max_addrs_listed: int = 128
    """More addresses than this in one DIAL is an error, not a long list to trim."""


class AutonatMessageError(ProtocolError):
    """An AutoNAT message a peer sent that we cannot take: too large, malformed, over a cap, of an
    unknown type or status (``ProtocolErrorKind.AUTONAT``)."""


# field numbers (autonat.proto)
_F_TYPE = 1
_F_DIAL = 2
_F_DIAL_RESPONSE = 3
_D_PEER = 1
_P_ID = 1
_P_ADDRS = 2
_R_STATUS = 1
_R_STATUS_TEXT = 2
_R_ADDR = 3

_TAG_TYPE = encode_uvarint(_F_TYPE << 3 | VARINT)
_TAG_STATUS = encode_uvarint(_R_STATUS << 3 | VARINT)
_MESSAGE_WIRE_TYPES = {_F_TYPE: VARINT, _F_DIAL: LENGTH_DELIMITED, _F_DIAL_RESPONSE: LENGTH_DELIMITED}
_DIAL_WIRE_TYPES = {_D_PEER: LENGTH_DELIMITED}
_PEER_WIRE_TYPES = {_P_ID: LENGTH_DELIMITED, _P_ADDRS: LENGTH_DELIMITED}
_RESPONSE_WIRE_TYPES = {_R_STATUS: VARINT, _R_STATUS_TEXT: LENGTH_DELIMITED, _R_ADDR: LENGTH_DELIMITED}
_MESSAGE_TYPES = {t.value: t for t in MessageType}
_STATUSES = {s.value: s for s in ResponseStatus}


def _encode_peer(info: PeerInfo) -> bytes:
    parts = [] if info.peer is None else [encode_bytes_field(_P_ID, info.peer.to_bytes())]
    parts.extend(encode_bytes_field(_P_ADDRS, a.to_bytes()) for a in info.addrs)
    return b"".join(parts)


def _encode_response(resp: DialResponse) -> bytes:
    parts = [_TAG_STATUS + encode_uvarint(resp.status)]
    if resp.status_text is not None:
        parts.append(encode_bytes_field(_R_STATUS_TEXT, resp.status_text.encode()))
    if resp.addr is not None:
        parts.append(encode_bytes_field(_R_ADDR, resp.addr.to_bytes()))
    return b"".join(parts)


def encode_message(msg: AutonatMessage) -> bytes:
    """The message's protobuf body (no length prefix), byte for byte as @libp2p/autonat 2.0.16 writes it."""
    parts = [_TAG_TYPE + encode_uvarint(msg.type)]
    if msg.dial is not None:
        peer = b"" if msg.dial.peer is None else encode_bytes_field(_D_PEER, _encode_peer(msg.dial.peer))
        parts.append(encode_bytes_field(_F_DIAL, peer))
    if msg.dial_response is not None:
        parts.append(encode_bytes_field(_F_DIAL_RESPONSE, _encode_response(msg.dial_response)))
    return b"".join(parts)


def _fields(buf: bytes, schema: dict[int, int], what: str) -> list[tuple[int, int | bytes]]:
    """The fields of ``buf`` that ``schema`` names, wire types checked; unknown fields skipped."""
    out: list[tuple[int, int | bytes]] = []
    for field, wire_type, value in iter_fields(buf):
        expected = schema.get(field)
        if expected is None:
            continue
        if wire_type != expected:
            raise AutonatMessageError(
                f"autonat: {what} field {field} has wire type {wire_type}, expected {expected}"
            )
        out.append((field, value))
    return out


def _decode_peer(buf: bytes, limits: AutonatLimits) -> tuple[PeerInfo, int]:
    peer_bytes: bytes | None = None
    addrs: list[bytes] = []
    for field, value in _fields(buf, _PEER_WIRE_TYPES, "peer"):
        assert isinstance(value, bytes)
        if field == _P_ID:
            peer_bytes = value
        else:
            if len(addrs) >= limits.max_addrs_listed:
                raise AutonatMessageError(f"autonat: more than {limits.max_addrs_listed} addresses")
            addrs.append(value)
    dropped = 0
    peer: PeerId | None = None
    if peer_bytes is not None:
        try:
            peer = PeerId(peer_bytes)
        except InvalidKeyError:
            dropped = 1
    kept, lost = decode_many(addrs, limits.max_addrs)
    return PeerInfo(peer, tuple(kept)), dropped + lost


def _decode_response(buf: bytes) -> tuple[DialResponse, int]:
    status: ResponseStatus | None = None
    text: str | None = None
    addr: Multiaddr | None = None
    dropped = 0
    for field, value in _fields(buf, _RESPONSE_WIRE_TYPES, "dialResponse"):
        if isinstance(value, int):
            status = _STATUSES.get(value)
            if status is None:
                raise AutonatMessageError(f"autonat: unknown response status {value}")
        elif field == _R_STATUS_TEXT:
            try:
                text = value.decode()
            except UnicodeDecodeError:
                raise AutonatMessageError("autonat: statusText is not UTF-8") from None
        else:
            try:
                addr, lost = Multiaddr.decode(value), 0
            except DecodeError:
                addr, lost = None, 1
            dropped = lost  # a repeated field keeps its last value, and its count
    if status is None:
        raise AutonatMessageError("autonat: dialResponse without a status")
    return DialResponse(status, text, addr), dropped


def decode_message(buf: bytes, limits: AutonatLimits = AutonatLimits()) -> tuple[AutonatMessage, int]:
    """Decode one body a peer sent: the message and how many of its items were left out.

    A peer ID that is not one counts 1 (and reads as None); each address that does not decode or is
    past ``limits.max_addrs`` counts 1. Raises :class:`AutonatMessageError` for a body over
    ``max_message_size``, malformed protobuf, wrong wire types, no or an unknown ``type``, a
    ``dialResponse`` with no or an unknown ``status``, ``statusText`` that is not UTF-8, more than
    ``max_addrs_listed`` addresses. Unknown fields are skipped; a repeated singular field keeps its last
    value.
    """
    if len(buf) > limits.max_message_size:
        cap = limits.max_message_size
        raise AutonatMessageError(f"autonat: message of {len(buf)} bytes exceeds the {cap} byte cap")
    type_value: int | None = None
    dial: Dial | None = None
    response: DialResponse | None = None
    dial_dropped = response_dropped = 0
    try:
        for field, value in _fields(bytes(buf), _MESSAGE_WIRE_TYPES, "message"):
            if isinstance(value, int):
                type_value = value
            elif field == _F_DIAL:
                peer: PeerInfo | None = None
                dial_dropped = 0
                for _, peer_buf in _fields(value, _DIAL_WIRE_TYPES, "dial"):
                    assert isinstance(peer_buf, bytes)
                    peer, dial_dropped = _decode_peer(peer_buf, limits)
                dial = Dial(peer)
            else:
                response, response_dropped = _decode_response(value)
    except DecodeError as exc:
        raise AutonatMessageError(f"autonat: {exc}") from None
    if type_value is None:
        raise AutonatMessageError("autonat: message without a type")
    msg_type = _MESSAGE_TYPES.get(type_value)
    if msg_type is None:
        raise AutonatMessageError(f"autonat: unknown message type {type_value}")
    return AutonatMessage(msg_type, dial, response), dial_dropped + response_dropped
