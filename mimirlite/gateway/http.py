"""HTTP/1.1 for the gateway, sans-IO: bytes in, whole requests out; responses in, bytes out.

``h11`` parses and frames every byte (no HTTP is parsed here); this module adds what the gateway
needs on top: a whole request (head and body) as one event, the body size limit, ``100 Continue``
when a client waits for it, keep-alive between requests, and CORS (:class:`CorsPolicy`: the
``Access-Control-*`` headers of preflights and of every response). It never touches a socket or a clock:
the asyncio shell (:mod:`mimirlite.gateway.gateway`) feeds it what the client sent, sends what
:meth:`ServerConnection.data_to_send` returns, and owns every timeout.
"""

from __future__ import annotations

import enum
import http
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from mimirlite.errors import LocalError, ProtocolError

MAX_HEAD = 64 * 1024
"""Bytes of a request line and its headers; more is refused with 431."""
MAX_BODY = 4 * 1024 * 1024
"""Bytes of a request body; more is refused with 413. A chat request travels to the node in one mimir
packet, which is capped at the same size (``mimirlite.wire.lp.MAX_MESSAGE``)."""

CORS_METHODS = "GET, POST, OPTIONS"
"""``Access-Control-Allow-Methods`` of a preflight answer."""
CORS_HEADERS = "Authorization, Content-Type"
"""``Access-Control-Allow-Headers`` of a preflight answer that did not name the headers it wants."""
CORS_MAX_AGE = 600
"""Seconds a browser may keep a preflight answer (``Access-Control-Max-Age``)."""

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


def cors_origin(origin: str) -> str:
    """``origin`` as a CORS policy keeps it (``*``, or ``scheme://host[:port]`` in lowercase); LocalError
    when it is neither."""
    text = origin.strip().lower().removesuffix("/")
    if text == "*":
        return text
    problem = LocalError(f"not a CORS origin: {origin!r} (expected '*' or scheme://host[:port])")
    try:
        parts = urlsplit(text)
        port = parts.port  # ValueError when not a number from 0 to 65535
    except ValueError:
        raise problem from None
    if (
        not parts.scheme
        or not parts.hostname
        or port == 0
        or parts.username is not None
        or parts.path
        or parts.query
        or parts.fragment
        or "*" in text
        or any(c.isspace() for c in text)
    ):
        raise problem
    return text


@dataclass(frozen=True)
class CorsPolicy:
    """Which browser origins may call the server: ``*`` (any) or a set of ``scheme://host[:port]``.

    An allowed origin gets ``Access-Control-Allow-Origin`` on every response (and ``Vary: Origin`` when
    the answer names it); any other origin gets no CORS header, so its browser keeps the answer from it.
    """

    origins: frozenset[str]
    max_age: int = CORS_MAX_AGE

    @classmethod
    def of(cls, origins: Iterable[str], *, max_age: int = CORS_MAX_AGE) -> CorsPolicy:
        """The policy for ``origins``, each checked and kept as :func:`cors_origin` does (LocalError)."""
        kept = frozenset(cors_origin(o) for o in origins)
        if not kept:
            raise LocalError("a CORS policy needs at least one origin ('*' for any)")
        return cls(kept, max_age)

    @property
    def any_origin(self) -> bool:
        return "*" in self.origins

    def response_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """The CORS headers of any response to a request from ``origin`` (its ``Origin`` header)."""
        if self.any_origin:
            return [("access-control-allow-origin", "*")]
        if origin is not None and origin.lower() in self.origins:
            return [("access-control-allow-origin", origin), ("vary", "origin")]
        return []

    def preflight_headers(self, req: Request) -> list[tuple[str, str]]:
        """What a preflight (``OPTIONS``) answer adds to :meth:`response_headers`: nothing for an origin
        not allowed; else the methods, the headers asked for (or the usual ones) and the max age."""
        if not self.response_headers(req.header("origin")):
            return []
        asked = (req.header("access-control-request-headers") or "").strip()
        return [
            ("access-control-allow-methods", CORS_METHODS),
            ("access-control-allow-headers", asked or CORS_HEADERS),
            ("access-control-max-age", str(self.max_age)),
        ]


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class ServerConnection:
    """The server side of one HTTP/1.1 connection, one request at a time (keep-alive, pipelining).

    With ``cors``, every response carries the CORS headers for the ``Origin`` of its request.
    """

    def __init__(
        self, *, max_body: int = MAX_BODY, max_head: int = MAX_HEAD, cors: CorsPolicy | None = None
    ) -> None:
        self.max_body = max_body
        self.cors = cors
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._out: list[bytes] = []
        self._head: h11.Request | None = None
        self._body = bytearray()
        self._close_after = False
        self._cors_headers = self._cors_for(None)

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

    def _cors_for(self, origin: bytes | None) -> list[tuple[bytes, bytes]]:
        if self.cors is None:
            return []
        headers = self.cors.response_headers(None if origin is None else origin.decode("latin-1"))
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]

    def _start(self, head: h11.Request) -> None:
        self._head = head
        self._body = bytearray()
        self._cors_headers = self._cors_for(next((v for k, v in head.headers if k == b"origin"), None))
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
        fields += self._cors_headers
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
        """A whole response with a ``content-length`` (none for 204 and 304, which have no body)."""
        length = [] if status in (204, 304) else [("content-length", str(len(body)))]
        self.start_response(status, [*headers, *length], close=close)
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
        self._cors_headers = self._cors_for(None)
        return True
