"""One exception hierarchy for mimirlite, and the kinds its counters and log lines name.

Every error mimirlite raises on purpose is a :class:`MimirliteError`, on one of these branches:

- :class:`LocalError`: we (the caller) misused an API or gave bad input: a bad argument, a call in the
  wrong state, an undecodable key or address we were handed. Fix the call.
- :class:`ProtocolError`: the remote peer broke a protocol rule (h11's ``RemoteProtocolError``); the
  connection or stream it happened on is closed with it as the logged reason.
- :class:`ClosedError`: the connection or stream is gone, or never came up (closed, reset, cut short,
  unreachable). Nobody broke a rule; retry or give up.
- :class:`RefusedError`: a limit or a policy said no, politely (one of our limits, our allowlist, the
  remote's list of protocols or its allowlist). Nothing broke; retry later or elsewhere.
- :class:`MimirliteTimeoutError`: something did not happen in time. It is also an
  :class:`asyncio.TimeoutError` (and the builtin :class:`TimeoutError`) on every supported Python, so
  ``except asyncio.TimeoutError`` around a call keeps catching it.

The kinds (:class:`CloseKind`, :class:`RefusalReason`, :class:`ProtocolErrorKind`, :class:`EndReason`) are
``str`` enums: their values are the keys of the metrics counters and the words in log lines, and a member
equals, hashes, prints and formats as its value.
"""

from __future__ import annotations

import asyncio
import enum
import sys

__all__ = [
    "AddressError",
    "CloseKind",
    "ClosedError",
    "ConnectionClosedError",
    "DecodeError",
    "DialError",
    "DnsaddrError",
    "EndReason",
    "HandshakeError",
    "HandshakeTimeoutError",
    "IncompleteReadError",
    "InvalidKeyError",
    "LimitExceededError",
    "LocalError",
    "MessageTooLargeError",
    "MimirliteError",
    "MimirliteTimeoutError",
    "MultistreamError",
    "PeerIdMismatchError",
    "PeerNotAllowedError",
    "ProtocolError",
    "ProtocolErrorKind",
    "ProtocolNotSupportedError",
    "RefusalReason",
    "RefusedByPeerError",
    "RefusedError",
    "StrEnum",
    "StreamClosedError",
    "StreamResetError",
    "YamuxError",
]

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:

    class StrEnum(str, enum.Enum):
        """``enum.StrEnum`` of Python 3.11 for 3.10: ``str()`` and ``format()`` give the value."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, format_spec: str) -> str:
            return format(str(self.value), format_spec)


# --- the kinds ---------------------------------------------------------------------------------


class CloseKind(StrEnum):
    """How a connection ended: ``Connection.close_kind`` and the keys of ``HostMetrics.closed``."""

    LOCAL = "local"
    """Closed here (``close()``, the host stopping, a local error)."""
    REMOTE = "remote"
    """The socket ended without a GoAway."""
    GO_AWAY = "go_away"
    """The remote said GoAway, as a remote closing politely does, and its streams ended."""
    IDLE = "idle"
    """No stream for ``HostConfig.idle_timeout``."""
    DEAD_LINK = "dead_link"
    """The kernel gave up on a peer that stopped acknowledging (ETIMEDOUT)."""
    WRITE_TIMEOUT = "write_timeout"
    """The peer read nothing of what we sent for ``HostConfig.write_timeout``."""
    PROTOCOL_ERROR = "protocol_error"
    """The peer broke a protocol rule (counted in ``HostMetrics.protocol_errors`` by kind)."""
    EVICTED = "evicted"
    """A stalled pending handshake closed to make room for a newer one."""


class RefusalReason(StrEnum):
    """Why work was turned away at a limit: the keys of the ``refused`` counters of ``HostMetrics``,
    ``NodeMetrics`` and ``GatewayMetrics``, and the reason words of their log lines."""

    # host: connections
    CONNECTIONS = "connections"
    """At ``max_connections`` (host), or at the gateway's ``max_connections`` with none idle."""
    CONNECTIONS_PER_IP = "connections_per_ip"
    """At ``max_connections_per_ip`` (host and gateway)."""
    PENDING_HANDSHAKES = "pending_handshakes"
    PENDING_HANDSHAKES_PER_IP = "pending_handshakes_per_ip"
    EVICTED_PENDING = "evicted_pending"
    """A stalled pending handshake closed to make room for a newer one."""
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"
    HANDSHAKE_STEP_TIMEOUT = "handshake_step_timeout"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    ALLOWLIST = "allowlist"
    """An inbound connection from a peer not on the allowlist."""
    ACCEPT_PAUSED = "accept_paused"
    """Accepting paused, out of file descriptors."""
    # host: streams
    STREAMS = "streams"
    """Over the per-connection yamux limit, or after our GoAway."""
    STREAMS_TOTAL = "streams_total"
    STREAMS_PER_CONNECTION = "streams_per_connection"
    STREAMS_PER_PEER = "streams_per_peer"
    STREAMS_PER_IP = "streams_per_ip"
    BUFFER = "buffer"
    """A stream reset because its connection held ``max_buffered``."""
    MEMORY = "memory"
    """A stream reset because the host held ``max_buffered_total`` for its peers."""
    # identify
    IDENTIFY_OVER_CAP = "identify_over_cap"
    IDENTIFY_PUSH = "identify_push"
    # kad (the DHT)
    KAD_OVER_CAP = "kad_over_cap"
    """Entries or addresses of a DHT message left out: malformed, or over ``MessageLimits``."""
    KAD_PUT_VALUE = "kad_put_value"
    """A PUT_VALUE refused: mimirlite's DHT stores no records."""
    KAD_ADD_PROVIDER_RATE = "kad_add_provider_rate"
    """A peer's ADD_PROVIDER over ``DhtConfig.add_provider_per_minute``: its stream was reset."""
    KAD_FOREIGN_PROVIDER = "kad_foreign_provider"
    """A provider record for another peer than its sender, left out."""
    KAD_PROVIDER_STORE = "kad_provider_store"
    """A provider record the store refused (``ProviderLimits``: keys, providers per key; or no address in
    the DHT's scope)."""
    # node (also the completionStop types the client reads)
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    # gateway
    AUTH = "auth"
    HOST = "host"
    CONTENT_TYPE = "content_type"
    SMUGGLING = "smuggling"
    HEAD_TOO_LARGE = "head_too_large"
    BODY_TOO_LARGE = "body_too_large"
    BAD_HTTP = "bad_http"
    REQUEST_TIMEOUT = "request_timeout"
    FORBIDDEN_PATH = "forbidden_path"
    IDLE_EVICTED = "idle_evicted"


class ProtocolErrorKind(StrEnum):
    """What a peer did wrong: the keys of ``HostMetrics.protocol_errors`` (``Connection.abort``'s
    ``error_kind``, ``YamuxSession.error_kind``)."""

    YAMUX = "yamux"
    PING_FLOOD = "ping_flood"
    STREAM_FLOOD = "stream_flood"
    RESET_FLOOD = "reset_flood"
    WINDOW_UPDATE_FLOOD = "window_update_flood"
    NOISE = "noise"
    """A transport message that does not decrypt."""
    UPGRADE = "upgrade"
    """A failed inbound handshake or muxer negotiation."""
    NEGOTIATION = "negotiation"
    """A stream's protocol negotiation."""
    IDENTIFY = "identify"
    """An identify message too large, malformed or cut short."""
    KAD = "kad"
    """A Kademlia DHT message too large, malformed, over a cap or of an unknown type."""
    RELAY = "relay"
    """A circuit relay v2 message too large, malformed, over a cap or with an unknown type or status."""
    AUTONAT = "autonat"
    """An AutoNAT message too large, malformed, over a cap or with an unknown type or status."""
    DCUTR = "dcutr"
    """A DCUtR hole-punch message too large, malformed, over a cap, of an unknown type, or out of turn."""


class EndReason(StrEnum):
    """Why a node ended a running chat (answered ``overloaded``): the keys of ``NodeMetrics.ended``."""

    FAIR_SHARE = "fair_share"
    """Its peer or address held more than its share, and its reader stalled."""
    STALL_TIMEOUT = "stall_timeout"
    """Its reader took nothing for ``NodeLimits.stall_timeout`` while others waited."""


# --- the hierarchy -------------------------------------------------------------------------------


class MimirliteError(Exception):
    """Base of every error mimirlite raises on purpose."""


if sys.version_info >= (3, 11):

    class MimirliteTimeoutError(MimirliteError, TimeoutError):
        """Something did not happen in time; also an ``asyncio.TimeoutError`` (the builtin
        ``TimeoutError`` since Python 3.11)."""

else:

    class MimirliteTimeoutError(MimirliteError, asyncio.TimeoutError, TimeoutError):
        """Something did not happen in time; also an ``asyncio.TimeoutError`` and the builtin
        ``TimeoutError`` (two classes on Python 3.10)."""


# local misuse


class LocalError(MimirliteError):
    """The local caller misused an API (bad argument, wrong state, bad input it was handed)."""


class InvalidKeyError(LocalError):
    """A key, signature, peer ID or key file could not be decoded.

    Local: the decoders raise it on input the caller hands them (key files, peer IDs in text, the
    allowlist); where the bytes came from a peer (Noise payload, identify), the protocol code turns it
    into its :class:`ProtocolError` (``HandshakeError``, ``IdentifyError``)."""


class AddressError(LocalError):
    """A multiaddr that mimirlite cannot dial or listen on."""


# remote protocol violations


class ProtocolError(MimirliteError):
    """The remote peer broke a protocol rule."""


class DecodeError(ProtocolError):
    """Bytes could not be decoded (varint, protobuf, JSON, frame)."""


class MessageTooLargeError(ProtocolError):
    """A length prefix or frame exceeded its configured cap."""


class MultistreamError(ProtocolError):
    """multistream-select negotiation failed (garbage, bad header, bad line)."""


class HandshakeError(ProtocolError):
    """The Noise handshake failed (bad message, bad signature, bad payload)."""


class PeerIdMismatchError(HandshakeError):
    """The remote proved an identity other than the one we dialed."""

    def __init__(self, expected: object, actual: object) -> None:
        super().__init__(f"dialed {expected} but remote proved {actual}")
        self.expected = expected
        self.actual = actual


class HandshakeTimeoutError(HandshakeError, MimirliteTimeoutError):
    """The peer did not complete an upgrade step in time; ``kind`` names the deadline it missed
    (:attr:`RefusalReason.FIRST_BYTE_TIMEOUT` or :attr:`RefusalReason.HANDSHAKE_STEP_TIMEOUT`). A remote
    violation and a timeout both."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class YamuxError(ProtocolError):
    """A yamux protocol violation; the session sends GoAway and closes."""


# closed / reset


class ClosedError(MimirliteError):
    """The connection or stream is gone, or never came up (closed, reset, cut short, unreachable)."""


class StreamResetError(ClosedError):
    """The stream was reset (by either side) and carries no more data."""


class StreamClosedError(ClosedError):
    """Write after close_write, or use of a stream whose connection ended."""


class ConnectionClosedError(ClosedError):
    """The connection ended (by either side, or after a protocol error)."""


class IncompleteReadError(ClosedError):
    """The stream ended before the expected number of bytes arrived.

    Closed, not a protocol error: ending a stream is legal; a caller for whom a short message is a
    violation says so (identify counts it as one)."""

    def __init__(self, expected: int, partial: bytes) -> None:
        super().__init__(f"stream ended after {len(partial)} of {expected} bytes")
        self.expected = expected
        self.partial = partial


class DialError(ClosedError):
    """A dial failed: no address reachable, timeout, or handshake failure (no connection came up)."""


class DnsaddrError(ClosedError):
    """A ``/dnsaddr`` or ``/dns*`` multiaddr resolved to nothing the host can dial (NXDOMAIN, no records,
    no usable record, a timeout, a loop): ``addr`` is the input and ``why`` says what came back.

    Closed, not a protocol error: a name that does not resolve is unreachable, no peer broke a rule."""

    def __init__(self, addr: str, why: str) -> None:
        super().__init__(f"{addr} resolved to nothing dialable: {why}")
        self.addr = addr
        self.why = why


# refused


class RefusedError(MimirliteError):
    """A limit or a policy said no; nothing broke and nobody broke a rule."""


class LimitExceededError(RefusedError):
    """A configured limit (streams, connections, buffer) was reached.

    Refused, not local misuse: one of our own limits turned the work away (opening a stream over the
    limit, or a stream reset because its buffer budget was full)."""


class ProtocolNotSupportedError(RefusedError):
    """The remote answered ``na`` to every protocol we proposed.

    Refused, not a protocol error: ``na`` is a legal answer (the remote's protocol list said no)."""

    def __init__(self, protocols: list[str]) -> None:
        super().__init__(f"remote supports none of {', '.join(protocols)}")
        self.protocols = protocols


class PeerNotAllowedError(RefusedError):
    """A peer that is not on our allowlist; its connection is closed right after the Noise handshake.

    Refused: our allowlist said no to a peer that did nothing wrong."""

    def __init__(self, peer: object) -> None:
        super().__init__(f"peer {peer} is not on the allowlist")
        self.peer = peer


class RefusedByPeerError(DialError, RefusedError):
    """The remote closed the connection right after the Noise handshake, before any protocol ran:
    that is how a node refuses a peer that is not on its allowlist (a dial failure, and a refusal)."""
