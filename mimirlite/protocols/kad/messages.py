"""The Kademlia DHT's messages (libp2p specs ``kad-dht/README.md``, ``dht.proto``), sans-IO.

One message is one protobuf body; on a stream each goes with a uvarint length prefix
(:mod:`mimirlite.wire.lp`), which is not this module's business. :func:`encode_message` writes exactly
the bytes js-libp2p's ``@libp2p/kad-dht`` 14.2 writes (``message/dht.js``): its field order is
``type``, ``clusterLevel``, ``key``, ``record``, ``closer``, ``providers`` (not by field number, as
go-libp2p writes), and it leaves out ``type`` PUT_VALUE (0), an absent ``key``/``record``/
``clusterLevel`` and an absent ``connection``. Here an empty ``key``, a ``cluster_level`` of 0 and a
``connection`` of NOT_CONNECTED are left out: the messages kad-dht sends never carry them explicitly.

Every message is a peer's, so :func:`decode_message` is bounded by :class:`MessageLimits`: a message
over a cap is refused (:class:`KadMessageError`); an entry whose peer ID is not one, and addresses that
do not decode or are past the per-entry cap, are left out and counted.
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
    "ConnectionType",
    "KadMessage",
    "KadMessageError",
    "MessageLimits",
    "MessageType",
    "PeerInfo",
    "decode_message",
    "encode_message",
]


class MessageType(enum.IntEnum):
    """``Message.MessageType``."""

    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


class ConnectionType(enum.IntEnum):
    """``Message.ConnectionType``: what the sender knows of its connection to a peer it names."""

    NOT_CONNECTED = 0
    CONNECTED = 1
    CAN_CONNECT = 2
    CANNOT_CONNECT = 3


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """``Message.Peer``: one entry of ``closer`` or ``providers``."""

    peer: PeerId
    addrs: tuple[Multiaddr, ...] = ()
    connection: ConnectionType = ConnectionType.NOT_CONNECTED


@dataclass(frozen=True, slots=True)
class KadMessage:
    """One DHT request or response."""

    type: MessageType
    key: bytes = b""
    record: bytes | None = None
    """The ``Record`` message's bytes, kept opaque (PUT_VALUE / GET_VALUE)."""
    closer: tuple[PeerInfo, ...] = ()
    providers: tuple[PeerInfo, ...] = ()
    cluster_level: int = 0
    """``clusterLevelRaw``: unused by every implementation; kad-dht echoes it in responses. An int32 on
    the wire; only 0..2**31-1 are read and written (a negative one is ten varint bytes, more than
    :mod:`mimirlite.wire.varint` reads, and nobody sends one)."""


@dataclass(frozen=True)
class MessageLimits:
    """Caps on one message a peer sent."""

    max_message_size: int = 4 * 1024 * 1024
    """Bytes of one body: 4 MiB, go-libp2p's ``network.MessageSizeMax`` that go-libp2p-kad-dht reads
    with, and the default ``maxDataLength`` of the length-prefixed reader kad-dht 14.2 reads with."""
    max_peers: int = 200
    """``closer`` plus ``providers`` entries: a response carries K = 20 closer peers and a key's
    providers; ten times K leaves room for a busy key."""
    max_addrs_per_peer: int = 32
    """Addresses kept per entry (the rest are dropped and counted); a go-libp2p node with TCP, QUIC,
    WebTransport and WebRTC on IPv4 and IPv6 advertises about a dozen."""
    max_key_size: int = 256
    """Bytes of ``key``: a multihash (34 bytes), ``/pk/`` or ``/ipns/`` and a peer ID (about 45)."""


class KadMessageError(ProtocolError):
    """A DHT message a peer sent that we cannot take: too large, malformed, over a cap, unknown type."""


# field numbers (dht.proto)
_F_TYPE = 1
_F_KEY = 2
_F_RECORD = 3
_F_CLOSER = 8
_F_PROVIDERS = 9
_F_CLUSTER_LEVEL = 10
_P_ID = 1
_P_ADDRS = 2
_P_CONNECTION = 3

_TAG_TYPE = encode_uvarint(_F_TYPE << 3 | VARINT)
_TAG_CLUSTER_LEVEL = encode_uvarint(_F_CLUSTER_LEVEL << 3 | VARINT)
_TAG_CONNECTION = encode_uvarint(_P_CONNECTION << 3 | VARINT)
_MESSAGE_WIRE_TYPES = {
    _F_TYPE: VARINT,
    _F_KEY: LENGTH_DELIMITED,
    _F_RECORD: LENGTH_DELIMITED,
    _F_CLOSER: LENGTH_DELIMITED,
    _F_PROVIDERS: LENGTH_DELIMITED,
    _F_CLUSTER_LEVEL: VARINT,
}
_PEER_WIRE_TYPES = {_P_ID: LENGTH_DELIMITED, _P_ADDRS: LENGTH_DELIMITED, _P_CONNECTION: VARINT}
_INT32_MAX = 2**31 - 1
_MESSAGE_TYPES = {t.value: t for t in MessageType}
_CONNECTION_TYPES = {t.value: t for t in ConnectionType}


def _encode_peer(info: PeerInfo) -> bytes:
    parts = [encode_bytes_field(_P_ID, info.peer.to_bytes())]
    parts.extend(encode_bytes_field(_P_ADDRS, a.to_bytes()) for a in info.addrs)
    if info.connection:
        parts.append(_TAG_CONNECTION + encode_uvarint(info.connection))
    return b"".join(parts)


def encode_message(msg: KadMessage) -> bytes:
    """The message's protobuf body (no length prefix), byte for byte as kad-dht 14.2 writes it.

    Raises LocalError for a ``cluster_level`` outside 0..2**31-1."""
    parts: list[bytes] = []
    if msg.type:
        parts.append(_TAG_TYPE + encode_uvarint(msg.type))
    if msg.cluster_level:
        if not 0 < msg.cluster_level <= _INT32_MAX:
            raise LocalError(f"kad: cluster_level {msg.cluster_level} is not in 0..{_INT32_MAX}")
        parts.append(_TAG_CLUSTER_LEVEL + encode_uvarint(msg.cluster_level))
    if msg.key:
        parts.append(encode_bytes_field(_F_KEY, msg.key))
    if msg.record is not None:
        parts.append(encode_bytes_field(_F_RECORD, msg.record))
    parts.extend(encode_bytes_field(_F_CLOSER, _encode_peer(p)) for p in msg.closer)
    parts.extend(encode_bytes_field(_F_PROVIDERS, _encode_peer(p)) for p in msg.providers)
    return b"".join(parts)


def _decode_peer(buf: bytes, limits: MessageLimits) -> tuple[PeerInfo | None, int]:
    """One entry and how many of its addresses were left out; None (and 1 dropped) for a bad peer ID."""
    peer_bytes = b""
    addrs: list[bytes] = []
    connection = ConnectionType.NOT_CONNECTED
    for field, wire_type, value in iter_fields(buf):
        expected = _PEER_WIRE_TYPES.get(field)
        if expected is None:
            continue
        if wire_type != expected:
            raise KadMessageError(f"kad: peer field {field} has wire type {wire_type}, expected {expected}")
        if field == _P_ID:
            assert isinstance(value, bytes)
            peer_bytes = value
        elif field == _P_ADDRS:
            assert isinstance(value, bytes)
            addrs.append(value)
        else:
            assert isinstance(value, int)
            connection = _CONNECTION_TYPES.get(value, ConnectionType.NOT_CONNECTED)
    try:
        peer = PeerId(peer_bytes)
    except InvalidKeyError:
        return None, 1
    kept, dropped = decode_many(addrs, limits.max_addrs_per_peer)
    return PeerInfo(peer, tuple(kept), connection), dropped


def decode_message(buf: bytes, limits: MessageLimits = MessageLimits()) -> tuple[KadMessage, int]:
    """Decode one body a peer sent: the message and how many entries and addresses were left out.

    An entry whose peer ID is not a valid one counts 1; each address that does not decode or is past
    ``limits.max_addrs_per_peer`` counts 1. Raises :class:`KadMessageError` for a body over
    ``max_message_size``, malformed protobuf, an unknown message type, more than ``max_peers``
    entries or a key over ``max_key_size``. Unknown fields are skipped; a repeated singular field
    keeps its last value.
    """
    if len(buf) > limits.max_message_size:
        cap = limits.max_message_size
        raise KadMessageError(f"kad: message of {len(buf)} bytes exceeds the {cap} byte cap")
    type_value = 0
    key = b""
    record: bytes | None = None
    cluster_level = 0
    entries: list[tuple[int, bytes]] = []
    try:
        for field, wire_type, value in iter_fields(bytes(buf)):
            expected = _MESSAGE_WIRE_TYPES.get(field)
            if expected is None:
                continue
            if wire_type != expected:
                raise KadMessageError(f"kad: field {field} has wire type {wire_type}, expected {expected}")
            if isinstance(value, int):
                if field == _F_TYPE:
                    type_value = value
                elif value > _INT32_MAX:
                    raise KadMessageError(f"kad: clusterLevel {value} is not a non-negative int32")
                else:
                    cluster_level = value
            elif field == _F_KEY:
                if len(value) > limits.max_key_size:
                    cap = limits.max_key_size
                    raise KadMessageError(f"kad: key of {len(value)} bytes exceeds the {cap} byte cap")
                key = value
            elif field == _F_RECORD:
                record = value
            else:
                if len(entries) >= limits.max_peers:
                    raise KadMessageError(f"kad: more than {limits.max_peers} closer and provider peers")
                entries.append((field, value))
        msg_type = _MESSAGE_TYPES.get(type_value)
        if msg_type is None:
            raise KadMessageError(f"kad: unknown message type {type_value}")
        closer: list[PeerInfo] = []
        providers: list[PeerInfo] = []
        dropped = 0
        for field, value in entries:
            info, lost = _decode_peer(value, limits)
            dropped += lost
            if info is not None:
                (closer if field == _F_CLOSER else providers).append(info)
    except DecodeError as exc:
        raise KadMessageError(f"kad: {exc}") from None
    msg = KadMessage(msg_type, key, record, tuple(closer), tuple(providers), cluster_level)
    return msg, dropped
