"""One exception hierarchy for mimirlite.

``LocalError`` means we misused the API; ``ProtocolError`` means the remote peer misbehaved
(the connection or stream it happened on is closed with this as the logged reason).
"""

from __future__ import annotations


class MimirliteError(Exception):
    """Base of every error mimirlite raises on purpose."""


class LocalError(MimirliteError):
    """The local caller misused an API (bad argument, wrong state)."""


class InvalidKeyError(MimirliteError):
    """A key, signature, peer ID or key file could not be decoded."""


class ProtocolError(MimirliteError):
    """The remote peer broke a protocol rule."""


class DecodeError(ProtocolError):
    """Bytes could not be decoded (varint, protobuf, JSON, frame)."""


class MessageTooLargeError(ProtocolError):
    """A length prefix or frame exceeded its configured cap."""


class MultistreamError(ProtocolError):
    """multistream-select negotiation failed (garbage, bad header, bad line)."""


class ProtocolNotSupportedError(MimirliteError):
    """The remote answered ``na`` to every protocol we proposed."""

    def __init__(self, protocols: list[str]) -> None:
        super().__init__(f"remote supports none of {', '.join(protocols)}")
        self.protocols = protocols


class HandshakeError(ProtocolError):
    """The Noise handshake failed (bad message, bad signature, bad payload)."""


class PeerIdMismatchError(HandshakeError):
    """The remote proved an identity other than the one we dialed."""

    def __init__(self, expected: object, actual: object) -> None:
        super().__init__(f"dialed {expected} but remote proved {actual}")
        self.expected = expected
        self.actual = actual


class HandshakeTimeoutError(HandshakeError):
    """The peer did not complete an upgrade step in time; ``kind`` names the deadline it missed
    (``first_byte_timeout`` or ``handshake_step_timeout``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class YamuxError(ProtocolError):
    """A yamux protocol violation; the session sends GoAway and closes."""


class LimitExceededError(MimirliteError):
    """A configured limit (streams, connections, buffer) was reached."""


class StreamResetError(MimirliteError):
    """The stream was reset (by either side) and carries no more data."""


class StreamClosedError(MimirliteError):
    """Write after close_write, or use of a stream whose connection ended."""


class ConnectionClosedError(MimirliteError):
    """The connection ended (by either side, or after a protocol error)."""


class DialError(MimirliteError):
    """A dial failed: no address reachable, timeout, or handshake failure."""


class PeerNotAllowedError(MimirliteError):
    """A peer that is not on our allowlist; its connection is closed right after the Noise handshake."""

    def __init__(self, peer: object) -> None:
        super().__init__(f"peer {peer} is not on the allowlist")
        self.peer = peer


class RefusedByPeerError(DialError):
    """The remote closed the connection right after the Noise handshake, before any protocol ran:
    that is how a node refuses a peer that is not on its allowlist."""


class IncompleteReadError(MimirliteError):
    """The stream ended before the expected number of bytes arrived."""

    def __init__(self, expected: int, partial: bytes) -> None:
        super().__init__(f"stream ended after {len(partial)} of {expected} bytes")
        self.expected = expected
        self.partial = partial


class AddressError(LocalError):
    """A multiaddr that mimirlite cannot dial or listen on."""
