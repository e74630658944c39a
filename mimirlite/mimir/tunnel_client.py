"""The client's side of the latest MimirLLM generation's tunnel, sans-IO.

A latest node serves one protocol per model, ``/mimir/<sanitized model>/1.0.0``, carrying one raw HTTP/1.1
exchange: the client writes a request and closes its write side; the node answers a status line, headers
and the body, then closes (WIRE.md, second half). This module encodes the request (with h11), decodes the
answer's head (with h11, fed only the head) and its body the way the original needs it read: everything up
to the end of the stream, whatever Transfer-Encoding says (the original de-chunks the body yet keeps the
``transfer-encoding: chunked`` header), and decodes Server-Sent Events. Every buffer is bounded.

h11 is imported only when a request is encoded or a head decoded (``import mimirlite`` stays light).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from mimirlite.errors import MessageTooLargeError, ProtocolError
from mimirlite.wire.lp import MAX_MESSAGE

MAX_TUNNEL_ANSWER_HEAD = 64 * 1024
"""Bytes a tunnel answer's status line and headers may take."""
MAX_SSE_LINE = MAX_MESSAGE
"""Bytes one SSE line may take (the node's packet cap, 4 MiB)."""
MAX_EVENT = MAX_MESSAGE
"""Bytes one SSE event's data may take (the node's packet cap, 4 MiB)."""
MAX_ERROR_BODY = MAX_MESSAGE
"""Bytes of an error answer's body read to find its message."""
TUNNEL_HOST = "mimir"
"""The Host header of a tunnel request (the node forwards to its own backend whatever it says)."""

_HEAD_END = re.compile(rb"\n\r?\n")


class TunnelAnswerError(ProtocolError):
    """A tunnel answer that cannot be read as HTTP/1.1 (or SSE) within the bounds."""


class TunnelTruncatedError(TunnelAnswerError):
    """The tunnel closed before its answer was whole."""


def encode_request(
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    content_type: str = "application/json",
    host: str = TUNNEL_HOST,
) -> bytes:
    """One whole HTTP/1.1 request as the original's client writes it (Host, Connection: close,
    Content-Length; Content-Type when there is a body)."""
    import h11

    headers = [("Host", host)]
    if body is not None:
        headers.append(("Content-Type", content_type))
    headers += [("Content-Length", str(len(body or b""))), ("Connection", "close")]
    conn = h11.Connection(h11.CLIENT)
    out = conn.send(h11.Request(method=method, target=path, headers=headers)) or b""
    if body:
        out += conn.send(h11.Data(data=body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    return out


@dataclass(frozen=True)
class ResponseHead:
    """A tunnel answer's status line and headers (names lowercase, as sent)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), if any."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)


class ResponseReader:
    """Feed it the bytes of a tunnel answer; it gives the head once whole, then the body bytes.

    The body is everything up to the end of the stream when the head says Transfer-Encoding (the
    original's pitfall: it is already de-chunked), else at most Content-Length bytes when it says one
    (a shorter body at the end is truncated), else everything to the end.
    """

    def __init__(self, max_head: int = MAX_TUNNEL_ANSWER_HEAD) -> None:
        self.max_head = max_head
        self.head: ResponseHead | None = None
        self._buf = bytearray()
        self._left: int | None = None  # body bytes still due under Content-Length

    def feed(self, data: bytes) -> bytes:
        """Take ``data``; return the body bytes it carries (``b""`` while the head is incomplete)."""
        if self.head is None:
            self._buf += data
            found = _HEAD_END.search(self._buf, 0, self.max_head + 2)
            if found is None:
                if len(self._buf) > self.max_head:
                    raise MessageTooLargeError(f"tunnel answer head longer than {self.max_head} bytes")
                return b""
            raw, data = bytes(self._buf[: found.end()]), bytes(self._buf[found.end() :])
            self._buf.clear()
            self.head = _parse_head(raw, self.max_head)
            if self.head is None:  # a 1xx interim answer: the real one follows
                return self.feed(data)
            length = self.head.header("content-length")
            if length is not None and self.head.header("transfer-encoding") is None:
                self._left = int(length)
        if self._left is not None:
            data = data[: self._left]
            self._left -= len(data)
        return data

    def eof(self) -> None:
        """The stream ended: raise TunnelTruncatedError if the answer is not whole."""
        if self.head is None:
            raise TunnelTruncatedError("tunnel closed before an HTTP status line and headers")
        if self._left:
            raise TunnelTruncatedError(f"tunnel closed {self._left} bytes short of its Content-Length")


def _parse_head(raw: bytes, max_head: int) -> ResponseHead | None:
    import h11

    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", TUNNEL_HOST)]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise TunnelAnswerError(f"bad tunnel answer head: {exc}") from None
    if isinstance(event, h11.InformationalResponse):
        return None
    if not isinstance(event, h11.Response):
        raise TunnelAnswerError(f"bad tunnel answer head: {event!r}")
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
    return ResponseHead(event.status_code, event.reason.decode("latin-1"), headers)


class SseDecoder:
    """Server-Sent Events, bounded: feed body bytes, get each event's data (lines joined by ``\\n``).

    Comments, ``event:``/``id:``/``retry:`` fields and events without data are ignored. At the end,
    a last event not followed by an empty line is still given; a last line without its newline is not.
    """

    def __init__(self, max_line: int = MAX_SSE_LINE, max_event: int = MAX_EVENT) -> None:
        self.max_line = max_line
        self.max_event = max_event
        self._buf = bytearray()
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> list[str]:
        """The data of the events completed by ``data``."""
        self._buf += data
        out: list[str] = []
        start = 0
        while (nl := self._buf.find(b"\n", start)) >= 0:
            line = bytes(self._buf[start:nl])
            start = nl + 1
            if len(line) > self.max_line + 1:
                raise MessageTooLargeError(f"SSE line longer than {self.max_line} bytes")
            self._line(line[:-1] if line.endswith(b"\r") else line, out)
        del self._buf[:start]
        if len(self._buf) > self.max_line:
            raise MessageTooLargeError(f"SSE line longer than {self.max_line} bytes")
        return out

    def eof(self) -> list[str]:
        """The stream ended: the data of a last event with no empty line after it, if any."""
        out: list[str] = []
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[str]) -> None:
        if not line:
            if self._data:
                try:
                    out.append(b"\n".join(self._data).decode())
                except UnicodeDecodeError:
                    raise TunnelAnswerError("SSE event data is not UTF-8") from None
            self._data, self._size = [], 0
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if name != b"data":
            return
        value = value[1:] if value.startswith(b" ") else value
        self._size += len(value) + 1
        if self._size > self.max_event:
            raise MessageTooLargeError(f"SSE event longer than {self.max_event} bytes")
        self._data.append(value)


def error_message(status: int, body: bytes) -> tuple[str, str]:
    """``(type, message)`` of an HTTP error answer: OpenAI's ``{"error": {"type", "message"}}``,
    Ollama's ``{"error": "message"}``, else the body's text (cut short) or the status."""
    text = body.decode("utf-8", "replace").strip()
    try:
        obj: Any = json.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("detail"))
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            kind = err.get("type")
            return (kind if isinstance(kind, str) and kind else f"http_{status}", err["message"])
        if isinstance(err, str):
            return f"http_{status}", err
    return f"http_{status}", text[:500] or f"HTTP {status}"
