"""yamux frame codec (hashicorp/yamux ``spec.md``): frame types, flags, GoAway codes, header, builders.

A frame is a 12-byte header ``version(u8) type(u8) flags(u16) stream_id(u32) length(u32)``, big endian,
followed by ``length`` payload bytes for data frames only. For a window update ``length`` is the credit
added to the send window, for a ping its opaque value, for a GoAway its code. Ping and GoAway use stream 0.

No state here: :mod:`mimirlite.wire.yamux` is the session. The enums are ``int`` subclasses, so raw
header fields compare equal to them; hot paths use the precompiled :data:`HEADER_STRUCT` and plain ``int``
copies of the members (an attribute of an enum class costs a Python-level lookup on every use).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from mimirlite.errors import YamuxError

__all__ = [
    "HEADER_LEN",
    "HEADER_STRUCT",
    "MAX_U32",
    "VERSION",
    "Flag",
    "FrameHeader",
    "FrameType",
    "GoAwayCode",
    "data_frame",
    "data_header",
    "go_away",
    "parse_header",
    "ping",
    "pong",
    "window_update",
]

VERSION = 0
"""The only yamux version there is."""
HEADER_LEN = 12
HEADER_STRUCT = struct.Struct(">BBHII")
"""The header: version, type, flags, stream id, length."""
MAX_U32 = 0xFFFFFFFF

_pack = HEADER_STRUCT.pack


class FrameType(IntEnum):
    """The ``type`` byte of a frame."""

    DATA = 0
    """Payload for a stream; may carry SYN/ACK/FIN/RST."""
    WINDOW_UPDATE = 1
    """Credit (``length``) for a stream's send window; may carry SYN/ACK/FIN/RST."""
    PING = 2
    """Liveness and round-trip time: SYN asks, ACK answers with the same opaque ``length``."""
    GO_AWAY = 3
    """No new streams; ``length`` is a :class:`GoAwayCode`."""


class Flag(IntFlag):
    """The ``flags`` bits of a frame."""

    SYN = 1
    """Opens a stream (or asks a ping)."""
    ACK = 2
    """Accepts a stream (or answers a ping)."""
    FIN = 4
    """Half-closes the sender's side of a stream."""
    RST = 8
    """Resets a stream."""


class GoAwayCode(IntEnum):
    """The ``length`` of a GoAway frame."""

    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """One parsed frame header (see :func:`parse_header`)."""

    version: int
    type: FrameType
    flags: Flag
    stream_id: int
    length: int


def parse_header(data: bytes | bytearray | memoryview, offset: int = 0) -> FrameHeader:
    """Parse the header at ``offset`` of ``data``.

    Raises YamuxError for fewer than 12 bytes, a version other than 0 or an unknown frame type (flag
    bits the spec does not define are kept, as a session ignores them).
    """
    if len(data) - offset < HEADER_LEN or offset < 0:
        raise YamuxError(f"yamux header needs {HEADER_LEN} bytes, got {max(len(data) - offset, 0)}")
    version, ftype, flags, sid, length = HEADER_STRUCT.unpack_from(data, offset)
    if version != VERSION:
        raise YamuxError(f"unsupported yamux version {version}")
    if ftype > FrameType.GO_AWAY:
        raise YamuxError(f"unknown yamux frame type {ftype}")
    return FrameHeader(version, FrameType(ftype), Flag(flags), sid, length)


# --- builders (each returns the wire bytes of one frame) -------------------------------------------

_DATA = int(FrameType.DATA)
_WINDOW_UPDATE = int(FrameType.WINDOW_UPDATE)
_PING = int(FrameType.PING)
_GO_AWAY = int(FrameType.GO_AWAY)
_SYN = int(Flag.SYN)
_ACK = int(Flag.ACK)


def data_header(stream_id: int, length: int, flags: int = 0) -> bytes:
    """The header of a data frame carrying ``length`` payload bytes (sent before them, not copied)."""
    return _pack(VERSION, _DATA, flags, stream_id, length)


def data_frame(stream_id: int, payload: bytes, flags: int = 0) -> bytes:
    """A whole data frame: header and ``payload``."""
    return _pack(VERSION, _DATA, flags, stream_id, len(payload)) + payload


def window_update(stream_id: int, delta: int = 0, flags: int = 0) -> bytes:
    """A window update granting ``delta`` more bytes on ``stream_id`` (with SYN: open; ACK: accept;
    FIN: half-close; RST: reset)."""
    return _pack(VERSION, _WINDOW_UPDATE, flags, stream_id, delta)


def ping(opaque: int) -> bytes:
    """A ping request (SYN) carrying ``opaque``."""
    return _pack(VERSION, _PING, _SYN, 0, opaque)


def pong(opaque: int) -> bytes:
    """The answer (ACK) to a ping that carried ``opaque``."""
    return _pack(VERSION, _PING, _ACK, 0, opaque)


def go_away(code: int = GoAwayCode.NORMAL) -> bytes:
    """A GoAway with ``code`` (a :class:`GoAwayCode`, or any u32)."""
    return _pack(VERSION, _GO_AWAY, 0, 0, code)
