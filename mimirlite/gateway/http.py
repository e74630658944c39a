"""HTTP/1.1 for the gateway, sans-IO: bytes in, whole requests out; responses in, bytes out.

``h11`` parses and frames every byte (no HTTP is parsed here); this module adds what the gateway
needs on top: a whole request (head and body) as one event, the head and body size limits, ``100
Continue`` when a client waits for it, keep-alive between requests, CORS (:class:`CorsPolicy`: the
``Access-Control-*`` headers of preflights and of every response), and the door (:class:`Door`): a
request head is checked (framing, ``Host``, API key, content type) before a byte of its body is taken,
so a request refused there costs no memory. It never touches a socket or a clock:
the asyncio shell (:mod:`mimirlite.gateway.gateway`) feeds it what the client sent, sends what
:meth:`ServerConnection.data_to_send` returns, and owns every timeout.
"""

from __future__ import annotations

import enum
import hmac
import http
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from mimirlite.errors import LocalError, ProtocolError, RefusalReason

MAX_REQUEST_HEAD = 64 * 1024
"""Bytes of a request line and its headers (the whole head, as received or as parsed); more is refused
with 431."""
MAX_REQUEST_BODY = 4 * 1024 * 1024
"""Bytes of a request body; more is refused with 413. A chat request travels to the node in one mimir
packet, which is capped at the same size (``mimirlite.wire.lp.MAX_MESSAGE``)."""

CORS_METHODS = "GET, POST, OPTIONS"
"""``Access-Control-Allow-Methods`` of a preflight answer."""
CORS_HEADERS = "Authorization, Content-Type"
"""``Access-Control-Allow-Headers`` of a preflight answer that did not name the headers it wants."""
CORS_MAX_AGE = 600
"""Seconds a browser may keep a preflight answer (``Access-Control-Max-Age``)."""

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
"""``Host`` names the gateway always accepts: they name this machine, and no web page can make a browser
send them for its own site (no attacker's DNS answers for them: the DNS rebinding attack needs a name)."""

Headers = Iterable[tuple[str, str]]


class HttpError(ProtocolError):
    """The client broke HTTP/1.1 or a limit; answered with ``status`` (when still possible), then closed.

    ``reason`` names the refusal in the gateway's counters (``bad_http``, ``head_too_large``,
    ``body_too_large``, ``smuggling``, ``host``, ``auth``, ``content_type``, ``request_timeout``);
    ``code`` is the ``code`` of the OpenAI-style error answered, if any.
    """

    def __init__(
        self, status: int, message: str, *, reason: str = RefusalReason.BAD_HTTP, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.code = code


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


_PORT = re.compile(r":[0-9]{0,5}")


def host_name(value: str) -> str | None:
    """The host a ``Host`` header names, as :class:`Door` compares it: lowercase, without the port, the
    brackets of an IPv6 address or a final dot, an IP address in its canonical form (an IPv4-mapped IPv6
    address as IPv4); None when ``value`` is not a host with an optional port."""
    text = value.strip().lower()
    if text.startswith("["):
        name, bracket, port = text[1:].partition("]")
        if not bracket or ":" not in name:  # brackets hold an IPv6 address
            return None
    else:
        name, colon, port = text.partition(":")
        port = colon + port
    if port and not _PORT.fullmatch(port):
        return None
    name = name.removesuffix(".")
    if not name:
        return None
    address = _address(name)
    if address is not None:
        return address
    if text.startswith("[") or not re.fullmatch(r"[a-z0-9_.-]+", name):
        return None
    return name


def _address(text: str) -> str | None:
    """``text`` as an IP address in canonical form (IPv4-mapped IPv6 as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _allowed_name(given: str) -> str | None:
    """A name or address as configured (an IPv6 address with or without brackets) in the form
    :func:`host_name` gives."""
    return _address(given.strip().lower()) or host_name(given)


def is_json_type(value: str | None) -> bool:
    """True for a ``Content-Type`` of ``application/json``, with or without parameters (charset)."""
    return value is not None and value.partition(";")[0].strip().lower() == "application/json"


@dataclass(frozen=True)
class Door:
    """What a request head must show before its body is read; a head that fails is refused at once
    (:class:`HttpError`; the connection then closes) without a byte of its body taken.

    ``hosts``: the names a ``Host`` header may give (:func:`host_name` forms; None or ``*`` in it: any;
    a request without ``Host``, which HTTP/1.0 allows, passes). ``api_key``: every request needs
    ``Authorization: Bearer <api_key>``, but a CORS preflight (``OPTIONS`` when the connection has a
    :class:`CorsPolicy`). ``json_only``: a ``POST`` must say ``Content-Type: application/json``, unless it
    comes from an ``Origin`` the CORS policy allows (a browser page may then send what it likes; any other
    page can send a "simple" cross-site ``POST`` only as ``text/plain`` or a form, which is refused).
    ``public``: paths (compared exactly, the query string left aside) that ``GET`` and ``HEAD`` may ask
    without the API key (the chat page and its static files, which hold no secret); ``Host`` is checked
    for them as for any request.
    """

    hosts: frozenset[str] | None = None
    api_key: str | None = None
    json_only: bool = True
    public: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        hosts: Iterable[str] | None,
        api_key: str | None = None,
        *,
        json_only: bool = True,
        public: Iterable[str] = (),
    ) -> Door:
        """A door allowing ``hosts`` (as given in ``Host`` headers or ``--allow-host``: any form
        :func:`host_name` takes; LocalError for one it does not)."""
        paths = frozenset(public)
        if hosts is None:
            return cls(None, api_key or None, json_only, paths)
        kept = set()
        for given in hosts:
            if given.strip() == "*":
                return cls(None, api_key or None, json_only, paths)
            name = _allowed_name(given)
            if name is None:
                raise LocalError(f"not a host name or address: {given!r}")
            kept.add(name)
        return cls(frozenset(kept), api_key or None, json_only, paths)

    def with_hosts(self, *names: str) -> Door:
        """This door, also allowing ``names`` (e.g. the address a connection came to)."""
        if self.hosts is None:
            return self
        extra = {n for n in map(_allowed_name, names) if n is not None}
        return Door(self.hosts | extra, self.api_key, self.json_only, self.public)

    def is_public(self, head: h11.Request) -> bool:
        """Whether ``head`` asks, with ``GET`` or ``HEAD``, for one of the :attr:`public` paths."""
        if head.method not in (b"GET", b"HEAD") or not self.public:
            return False
        return head.target.partition(b"?")[0].decode("latin-1") in self.public

    def check(self, head: h11.Request, cors: CorsPolicy | None) -> None:
        """HttpError when the request with ``head`` may not come in (see the class)."""
        host = _first(head, b"host")
        if self.hosts is not None and host is not None:
            name = host_name(host.decode("latin-1"))
            if name is None or name not in self.hosts:
                shown = host.decode("latin-1")[:100]
                raise HttpError(
                    403,
                    f"Host {shown!r} is not served here.",
                    reason=RefusalReason.HOST,
                    code="host_not_allowed",
                )
        preflight = cors is not None and head.method == b"OPTIONS"
        if self.api_key is not None and not preflight and not self.is_public(head):
            given = _first(head, b"authorization") or b""
            scheme, _, key = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(key.strip(), self.api_key.encode()):
                message = "Incorrect API key provided." if given else "You didn't provide an API key."
                raise HttpError(401, message, reason=RefusalReason.AUTH, code="invalid_api_key")
        if self.json_only and head.method == b"POST":
            origin = _first(head, b"origin")
            allowed = (
                cors is not None and origin is not None and cors.response_headers(origin.decode("latin-1"))
            )
            kind = _first(head, b"content-type")
            if not allowed and not is_json_type(None if kind is None else kind.decode("latin-1")):
                shown = "none" if kind is None else repr(kind.decode("latin-1")[:100])
                raise HttpError(
                    415,
                    f"Content-Type must be application/json (got {shown}).",
                    reason=RefusalReason.CONTENT_TYPE,
                    code="unsupported_media_type",
                )


def _first(head: h11.Request, name: bytes) -> bytes | None:
    for key, value in head.headers:
        if key == name:
            return bytes(value)
    return None


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class ServerConnection:
    """The server side of one HTTP/1.1 connection, one request at a time (keep-alive, pipelining).

    With ``cors``, every response carries the CORS headers for the ``Origin`` of its request. With
    ``door``, each request head is checked (:meth:`Door.check`) before its body is read. Always: a head
    over ``max_head`` bytes is refused 431, and one with both ``Content-Length`` and
    ``Transfer-Encoding`` 400 (h11 would take it, preferring chunked: the way to smuggle a request past a
    proxy that prefers the length).
    """

    def __init__(
        self,
        *,
        max_body: int = MAX_REQUEST_BODY,
        max_head: int = MAX_REQUEST_HEAD,
        cors: CorsPolicy | None = None,
        door: Door | None = None,
    ) -> None:
        self.max_body = max_body
        self.max_head = max_head
        self.cors = cors
        self.door = door
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._out: list[bytes] = []
        self._head: h11.Request | None = None
        self._head_only = False
        """The current request is ``HEAD``: its answer has headers only (h11 refuses a body byte)."""
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

    @property
    def has_trailing_data(self) -> bool:
        """Bytes received past the end of the request just read (a pipelined request, or garbage)."""
        return bool(self._h11.trailing_data[0])

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
                        raise HttpError(
                            413,
                            f"request body over {self.max_body} bytes",
                            reason=RefusalReason.BODY_TOO_LARGE,
                        )
                    self._body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return self._finish()
                elif isinstance(event, h11.ConnectionClosed):
                    return Pending.CLOSED
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            reason = RefusalReason.HEAD_TOO_LARGE if status == 431 else RefusalReason.BAD_HTTP
            raise HttpError(status, f"bad HTTP request: {exc}", reason=reason) from None

    def _cors_for(self, origin: bytes | None) -> list[tuple[bytes, bytes]]:
        if self.cors is None:
            return []
        headers = self.cors.response_headers(None if origin is None else origin.decode("latin-1"))
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]

    def _start(self, head: h11.Request) -> None:
        self._head = head
        self._head_only = head.method == b"HEAD"
        self._body = bytearray()
        self._cors_headers = self._cors_for(_first(head, b"origin"))
        # The whole head: h11 bounds only what it holds unparsed (a head arriving in one read can be larger).
        size = len(head.method) + len(head.target) + 12 + sum(len(k) + len(v) + 4 for k, v in head.headers)
        if size > self.max_head:
            raise HttpError(
                431,
                f"request head of {size} bytes; the limit is {self.max_head}",
                reason=RefusalReason.HEAD_TOO_LARGE,
            )
        length = _first(head, b"content-length")
        if length is not None and _first(head, b"transfer-encoding") is not None:
            raise HttpError(400, "both Content-Length and Transfer-Encoding", reason=RefusalReason.SMUGGLING)
        if self.door is not None:
            self.door.check(head, self.cors)
        if length is not None and int(length) > self.max_body:  # h11 checked it is a number
            raise HttpError(
                413,
                f"request body of {int(length)} bytes; the limit is {self.max_body}",
                reason=RefusalReason.BODY_TOO_LARGE,
            )
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
        """Part of the body (nothing in answer to ``HEAD``)."""
        if data and not self._head_only:
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
        self._head_only = False
        self._cors_headers = self._cors_for(None)
        return True
