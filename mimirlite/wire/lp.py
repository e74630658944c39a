"""Length-prefixed messages (unsigned varint length, then the body), as it-length-prefixed frames them.

The mimir protocols carry one UTF-8 JSON document per message.
"""

from __future__ import annotations

import json
from collections import deque
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
    """Received bytes, kept as the chunks they arrived in, handed out as length-prefixed message bodies.

    Sans-IO: :meth:`feed` bytes, then :meth:`next_message` until it returns None (more bytes needed).
    It is the one LP reader: :class:`mimirlite.net.stream.Stream` builds on it (its ``read_message`` is
    this decoder plus waiting). Chunks are never gathered to be read: a message inside one chunk is one
    slice of it; only a prefix or body spanning chunks is joined.
    """

    __slots__ = ("_chunks", "_need", "_pos", "_size", "max_message")

    _CHUNK_COST = 0
    """What one buffered chunk costs beyond its bytes, as :meth:`_taken` is told (a Stream: the buffer
    budget's per-chunk overhead)."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._chunks: deque[bytes] = deque()  # unread data as it arrived, _pos into the first chunk
        self._pos = 0
        self._size = 0  # unread bytes in all
        self._need = 0  # bytes (prefix and body) the next message needs, once its prefix is known
        self.max_message = max_message

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer received bytes."""
        if data:
            self._chunks.append(bytes(data))
            self._size += len(data)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned."""
        return self._size

    def next_message(self) -> bytes | None:
        """The next complete body, or None until more bytes arrive; DecodeError for a bad prefix,
        MessageTooLargeError for a length above ``max_message`` (before its body arrives)."""
        return self._next_message(self.max_message)

    def _taken(self, n: int, freed: int) -> None:
        """``n`` bytes were handed out, and chunks occupying ``freed`` bytes (``_CHUNK_COST`` each
        included) were dropped: a hook for what is built on this decoder."""

    def _next_message(self, cap: int) -> bytes | None:
        chunks = self._chunks
        if not chunks:
            return None
        head = chunks[0]
        pos = self._pos
        got = decode_uvarint(head, pos)
        if got is None:
            got = self._prefix_across()
            if got is None:
                return None
            head = chunks[0]
            pos = 0
        length, start = got
        if length > cap:
            raise MessageTooLargeError(f"message of {length} bytes exceeds the {cap} byte cap")
        end = start + length
        if end <= len(head):  # the whole message in the first chunk: one copy
            body = head[start:end]
            if end == len(head):
                chunks.popleft()
                self._pos = 0
                freed = len(head) + self._CHUNK_COST
            else:
                self._pos = end
                freed = 0
            self._size -= end - pos
            self._need = 0
            self._taken(end - pos, freed)
            return body
        prefix = start - pos
        need = prefix + length
        if self._size < need:
            self._need = need
            return None
        self._need = 0
        self._take(prefix)
        return self._take(length)

    def _prefix_across(self) -> tuple[int, int] | None:
        """Decode a length prefix spanning chunks, joining the (short) rest of the first chunk with the
        next until it decodes: ``(value, end)`` in the new first chunk; None if still incomplete."""
        chunks = self._chunks
        while len(chunks) > 1:
            head = chunks.popleft()
            pos = self._pos
            chunks[0] = head[pos:] + chunks[0]
            self._pos = 0
            self._taken(0, pos + self._CHUNK_COST)  # two chunks become one, less the part already read
            got = decode_uvarint(chunks[0], 0)
            if got is not None:
                return got
        return None

    def _take(self, n: int) -> bytes:
        """Up to ``n`` buffered bytes (at least one must be buffered).

        A whole chunk is handed out as it is; only a read that splits or joins chunks copies.
        """
        chunks = self._chunks
        head = chunks[0]
        pos = self._pos
        avail = len(head) - pos
        cost = self._CHUNK_COST
        if avail > n:
            out = head[pos : pos + n]
            self._pos = pos + n
            freed = 0
        elif avail == n or len(chunks) == 1:
            out = head[pos:] if pos else head
            chunks.popleft()
            self._pos = 0
            freed = len(head) + cost
        else:
            parts = [head[pos:] if pos else head]
            chunks.popleft()
            freed = len(head) + cost
            need = n - avail
            while chunks and need:
                chunk = chunks[0]
                if len(chunk) > need:
                    parts.append(chunk[:need])
                    self._pos = need
                    break
                parts.append(chunk)
                chunks.popleft()
                freed += len(chunk) + cost
                need -= len(chunk)
            else:
                self._pos = 0
            out = b"".join(parts)
        self._size -= len(out)
        self._taken(len(out), freed)
        return out

    def _peek(self) -> bytes:
        """Everything unread, without taking it (for error messages)."""
        chunks = list(self._chunks)
        if chunks and self._pos:
            chunks[0] = chunks[0][self._pos :]
        return b"".join(chunks)
