"""Literal wire bytes the tests put on the wire or take apart: Noise frames, yamux frames, multistream
lines. Every constant comes from the codec in mimirlite; nothing here re-declares one."""

from __future__ import annotations

import struct

from mimirlite.wire.multistream import MULTISTREAM_PROTOCOL, encode_line
from mimirlite.wire.yamux_frames import HEADER_STRUCT, Flag, FrameType, GoAwayCode

__all__ = [
    "ACK",
    "DATA",
    "FIN",
    "GO_AWAY",
    "HEADER",
    "PING",
    "RST",
    "SYN",
    "WINDOW_UPDATE",
    "data_frame",
    "go_away_protocol_error",
    "noise_frame",
    "split_noise_frames",
    "yamux_frame",
]

# Short names for literal frames in tests: the codec's own values.
DATA, WINDOW_UPDATE = FrameType.DATA, FrameType.WINDOW_UPDATE
PING, GO_AWAY = FrameType.PING, FrameType.GO_AWAY
SYN, ACK, FIN, RST = Flag.SYN, Flag.ACK, Flag.FIN, Flag.RST

HEADER = encode_line(MULTISTREAM_PROTOCOL)
"""The multistream-select header line a peer opens with."""


def noise_frame(message: bytes) -> bytes:
    """One Noise message behind its 2-byte big-endian length."""
    return struct.pack(">H", len(message)) + message


def split_noise_frames(wire: bytes) -> list[bytes]:
    """The Noise messages in a byte stream of whole frames."""
    out = []
    pos = 0
    while pos < len(wire):
        (length,) = struct.unpack_from(">H", wire, pos)
        out.append(wire[pos + 2 : pos + 2 + length])
        pos += 2 + length
    assert pos == len(wire)
    return out


def yamux_frame(
    ftype: int, flags: int, sid: int, length: int, payload: bytes = b"", version: int = 0
) -> bytes:
    """One literal yamux frame: the 12-byte header (``length`` as given, true or not), then ``payload``."""
    return HEADER_STRUCT.pack(version, ftype, flags, sid, length) + payload


def data_frame(sid: int, payload: bytes, flags: int = 0) -> bytes:
    """A yamux data frame carrying ``payload``."""
    return yamux_frame(DATA, flags, sid, len(payload), payload)


def go_away_protocol_error() -> bytes:
    """A yamux GoAway frame with the protocol-error code."""
    return yamux_frame(GO_AWAY, 0, 0, GoAwayCode.PROTOCOL_ERROR)
