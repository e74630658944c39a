"""HTTP/1.1 for the gateway, sans-IO: bytes in, whole requests out; responses in, bytes out.

``h11`` parses and frames every byte (no HTTP is parsed here); this module adds what the gateway
needs on top: a whole request (head and body) as one event, the body size limit, ``100 Continue``
when a client waits for it, and keep-alive between requests. It never touches a socket or a clock:
the asyncio shell (:mod:`mimirlite.gateway.gateway`) feeds it what the client sent, sends what
:meth:`ServerConnection.data_to_send` returns, and owns every timeout.
"""

from __future__ import annotations

import enum
import http
from collections.abc import Iterable
from dataclasses import dataclass

import h11

from mimirlite.errors import ProtocolError

MAX_HEAD = 64 * 1024
"""Bytes of a request line and its headers; more is refused with 431."""
MAX_BODY = 4 * 1024 * 1024
"""Bytes of a request body; more is refused with 413. A chat request travels to the node in one mimir
packet, which is capped at the same size (``mimirlite.wire.lp.MAX_MESSAGE``)."""

Headers = Iterable[tuple[str, str]]


class HttpError(ProtocolError):
    """The client broke HTTP/1.1 or a limit; answered with ``status`` (when still possible), then closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Pending(enum.Enum):
    """What :meth:`ServerConnection.next_request` returns when it has no whole request yet."""

    NEED_DATA = "need data"
    """Feed more bytes (:meth:`ServerConnection.receive_data`)."""
    CLOSED = "closed"
    """The client closed the connection between requests."""


@dataclass(frozen=True)
class Request:
    """One whole HTTP request."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    """Names in lowercase, values as sent (latin-1), in order."""
    body: bytes
    http_version: str = "1.1"

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.partition("?")[0]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lowercase), if any."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class ServerConnection:
    """The server side of one HTTP/1.1 connection, one request at a time (keep-alive, pipelining)."""

    def __init__(self, *, max_body: int = MAX_BODY, max_head: int = MAX_HEAD) -> None:
        self.max_body = max_body
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._out: list[bytes] = []
        self._head: h11.Request | None = None
        self._body = bytearray()
        self._close_after = False

    # ---- receiving ----

    def receive_data(self, data: bytes) -> None:
        """Bytes the client sent; ``b""`` when it closed its side."""
        self._h11.receive_data(data)

    @property
    def idle(self) -> bool:
        """True between requests: no byte of the next request has arrived yet."""
        return self._h11.their_state is h11.IDLE and not self._h11.trailing_data[0]

    def next_request(self) -> Request | Pending:
        """The next whole request, or what to do first. Raises HttpError when the client breaks a rule."""
        try:
            while True:
                event = self._h11.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return Pending.NEED_DATA
                if isinstance(event, h11.Request):
                    self._start(event)
                elif isinstance(event, h11.Data):
                    if len(self._body) + len(event.data) > self.max_body:
                        raise HttpError(413, f"request body over {self.max_body} bytes")
                    self._body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return self._finish()
                elif isinstance(event, h11.ConnectionClosed):
                    return Pending.CLOSED
        except h11.RemoteProtocolError as exc:
            raise HttpError(exc.error_status_hint, f"bad HTTP request: {exc}") from None

    def _start(self, head: h11.Request) -> None:
        self._head = head
        self._body = bytearray()
        length = next((v for k, v in head.headers if k == b"content-length"), None)
        if length is not None and int(length) > self.max_body:  # h11 checked it is a number
            raise HttpError(413, f"request body of {int(length)} bytes; the limit is {self.max_body}")
        if self._h11.they_are_waiting_for_100_continue:
            self._send(h11.InformationalResponse(status_code=100, headers=[], reason=_reason(100)))

    def _finish(self) -> Request:
        head = self._head
        assert head is not None
        self._head = None
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers)
        body, self._body = bytes(self._body), bytearray()
        return Request(
            head.method.decode("latin-1"),
            head.target.decode("latin-1"),
            headers,
            body,
            head.http_version.decode("latin-1"),
        )

    # ---- sending ----

    def _send(self, event: h11.Event) -> None:
        data = self._h11.send(event)
        if data:
            self._out.append(data)

    def data_to_send(self) -> bytes:
        """The bytes to write to the client now (empty when there are none)."""
        if not self._out:
            return b""
        out = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        return out

    @property
    def can_respond(self) -> bool:
        """True while no response to the current request has started."""
        return self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    def start_response(self, status: int, headers: Headers = (), *, close: bool = False) -> None:
        """The status line and headers; without a ``content-length`` the body is chunked.
        ``close``: the connection ends after this response."""
        fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        if close:
            self._close_after = True
        if self._close_after:
            fields.append((b"connection", b"close"))
        self._send(h11.Response(status_code=status, headers=fields, reason=_reason(status)))

    def send_data(self, data: bytes) -> None:
        """Part of the body."""
        if data:
            self._send(h11.Data(data=data))

    def end_response(self) -> None:
        self._send(h11.EndOfMessage())

    def respond(self, status: int, headers: Headers, body: bytes, *, close: bool = False) -> None:
        """A whole response with a ``content-length``."""
        self.start_response(status, [*headers, ("content-length", str(len(body)))], close=close)
        self.send_data(body)
        self.end_response()

    def close_after_response(self) -> None:
        """End the connection once the current response is sent (e.g. after an error mid-body)."""
        self._close_after = True

    def start_next_cycle(self) -> bool:
        """After a whole response: True (and ready for the next request) when the connection can be
        kept; False when it must be closed."""
        conn = self._h11
        if self._close_after or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        conn.start_next_cycle()
        return True
