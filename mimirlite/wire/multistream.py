"""multistream-select 1.0.0, both roles, sans-IO.

Every message is ``<uvarint length><text>\\n``. The dialer proposes protocols one after another and
accepts the first the listener echoes; ``na`` moves it to the next. ``receive_data`` returns
:class:`ProtocolSelected` once a protocol is agreed, with the bytes that followed the last negotiation
message (also kept in ``leftover``, which gathers whatever is fed afterwards, for the next layer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mimirlite.errors import DecodeError, MultistreamError, ProtocolNotSupportedError
from mimirlite.wire.varint import decode_uvarint, encode_uvarint

MULTISTREAM_PROTOCOL = "/multistream/1.0.0"
NA = "na"
MAX_LINE = 1024
"""Longest message we accept; protocol ids are short, anything longer is garbage."""


def encode_line(text: str) -> bytes:
    """One multistream message: varint length, UTF-8 text, newline."""
    body = text.encode() + b"\n"
    return encode_uvarint(len(body)) + body


_HEADER = encode_line(MULTISTREAM_PROTOCOL)


@dataclass(frozen=True, slots=True)
class ProtocolSelected:
    """Both sides agreed on ``protocol``; ``leftover`` holds the bytes received after the agreement
    (they belong to the next layer). Later bytes fed to the machine gather in its ``leftover``."""

    protocol: str
    leftover: bytes


MultistreamEvent = ProtocolSelected


class _LineReader:
    """Splits received bytes into multistream messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next_line(self) -> str | None:
        buf = self._buf
        try:
            got = decode_uvarint(buf)
        except DecodeError as exc:
            raise MultistreamError(f"bad length prefix: {exc}") from None
        if got is None:
            return None
        length, start = got
        if length == 0 or length > MAX_LINE:
            raise MultistreamError(f"message length {length} out of range (1..{MAX_LINE})")
        end = start + length
        if len(buf) < end:
            return None
        if buf[end - 1] != 0x0A:
            raise MultistreamError("message does not end with a newline")
        try:
            text = bytes(buf[start : end - 1]).decode()
        except UnicodeDecodeError:
            raise MultistreamError("message is not UTF-8") from None
        del buf[:end]
        return text

    def take_rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


class MultistreamDialer:
    """Proposes ``protocols`` in order; ``selected`` is set when the listener accepts one.

    The header and first proposal are queued at construction (one round trip when accepted).
    """

    def __init__(self, protocols: Sequence[str]) -> None:
        if not protocols:
            raise ValueError("no protocol to propose")
        self._protocols = list(protocols)
        self._index = 0
        self._header_seen = False
        self._reader = _LineReader()
        self._out = _HEADER + encode_line(self._protocols[0])
        self.selected: str | None = None
        self.leftover = b""

    def data_to_send(self) -> bytes:
        out, self._out = self._out, b""
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[MultistreamEvent]:
        """Feed bytes; the events they complete. Raises MultistreamError or ProtocolNotSupportedError."""
        if self.selected is not None:
            self.leftover += bytes(data)
            return []
        self._reader.feed(data)
        while True:
            line = self._reader.next_line()
            if line is None:
                return []
            if not self._header_seen:
                if line != MULTISTREAM_PROTOCOL:
                    raise MultistreamError(f"unexpected multistream header {line[:64]!r}")
                self._header_seen = True
            elif line == self._protocols[self._index]:
                self.selected = line
                self.leftover = self._reader.take_rest()
                return [ProtocolSelected(line, self.leftover)]
            elif line == NA:
                self._index += 1
                if self._index == len(self._protocols):
                    raise ProtocolNotSupportedError(self._protocols)
                self._out += encode_line(self._protocols[self._index])
            else:
                raise MultistreamError(f"unexpected answer {line[:64]!r}")


class MultistreamListener:
    """Answers proposals: echoes the first one ``supports`` accepts, ``na`` to the rest."""

    def __init__(self, supports: Callable[[str], bool], max_attempts: int = 32) -> None:
        self._supports = supports
        self._max_attempts = max_attempts
        self._attempts = 0
        self._header_seen = False
        self._reader = _LineReader()
        self._out = b""
        self.selected: str | None = None
        self.leftover = b""

    def data_to_send(self) -> bytes:
        out, self._out = self._out, b""
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[MultistreamEvent]:
        """Feed bytes; the events they complete. Raises MultistreamError on garbage or too many refused
        proposals."""
        if self.selected is not None:
            self.leftover += bytes(data)
            return []
        self._reader.feed(data)
        while True:
            line = self._reader.next_line()
            if line is None:
                return []
            if not self._header_seen:
                if line != MULTISTREAM_PROTOCOL:
                    raise MultistreamError(f"unexpected multistream header {line[:64]!r}")
                self._header_seen = True
                self._out += _HEADER
            elif line != NA and self._supports(line):
                self.selected = line
                self._out += encode_line(line)
                self.leftover = self._reader.take_rest()
                return [ProtocolSelected(line, self.leftover)]
            else:
                self._attempts += 1
                if self._attempts > self._max_attempts:
                    raise MultistreamError(f"more than {self._max_attempts} refused proposals")
                self._out += encode_line(NA)
