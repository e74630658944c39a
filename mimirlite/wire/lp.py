"""Length-prefixed messages (unsigned varint length, then the body), as it-length-prefixed frames them.

The mimir protocols carry one UTF-8 JSON document per message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json.scanner import make_scanner
from typing import Any

from mimirlite.errors import DecodeError, MessageTooLargeError
from mimirlite.wire.varint import decode_uvarint, encode_uvarint

MAX_MESSAGE = 4 * 1024 * 1024
"""Default cap on one message body, as it-length-prefixed's reader."""

# Tokens stream as thousands of small messages, so both directions call json's C code directly: the
# encoder built once (JSONEncoder.encode builds one per call) with ASCII output (other characters
# \u-escaped, lone surrogates included: valid UTF-8 JSON), and the scanner on a str (json.loads on
# bytes first detects the encoding). json.loads stays the judge of anything the scanner stops at.
_loads = json.loads
_scan: Callable[[str, int], tuple[Any, int]] = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _unserializable(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_dumps: Callable[[Any], str]
try:
    from _json import make_encoder

    _encode = make_encoder(
        None, _unserializable, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )

    def _dumps(obj: Any) -> str:
        return "".join(_encode(obj, 0))

except ImportError:  # an interpreter without json's C speedups
    _dumps = json.JSONEncoder(separators=(",", ":")).encode


def encode_message(body: bytes) -> bytes:
    """Prefix ``body`` with its length."""
    return encode_uvarint(len(body)) + body


def encode_json(obj: Any) -> bytes:
    """One LP-JSON message (compact JSON, non-ASCII characters escaped)."""
    body = _dumps(obj).encode()
    return encode_uvarint(len(body)) + body


def decode_json(body: bytes | bytearray | memoryview) -> Any:
    """Parse one message body as UTF-8 JSON; DecodeError otherwise."""
    try:
        text = str(body, "utf-8")
        try:
            obj, end = _scan(text, 0)
        except StopIteration:  # leading white space, or not JSON: json.loads says which
            return _loads(text)
        return obj if end == len(text) else _loads(text)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"message is not JSON: {exc}") from None


class LPDecoder:
    """Splits a byte stream into length-prefixed message bodies."""

    __slots__ = ("_buf", "_pos", "max_message")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_message = max_message

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buf) - self._pos

    def next_message(self) -> bytes | None:
        """The next complete body, or None until more bytes arrive."""
        buf = self._buf
        got = decode_uvarint(buf, self._pos)
        if got is None:
            return None
        length, start = got
        if length > self.max_message:
            raise MessageTooLargeError(f"message of {length} bytes exceeds the {self.max_message} byte cap")
        end = start + length
        if end > len(buf):
            return None
        body = bytes(buf[start:end])
        if end == len(buf):
            buf.clear()
            self._pos = 0
        else:
            self._pos = end
            if end > 65536 and end * 2 > len(buf):
                del buf[:end]
                self._pos = 0
        return body
