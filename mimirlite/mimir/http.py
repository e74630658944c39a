"""The backend's HTTP/1.1 client: h11 (the sans-IO core) over an asyncio protocol, no more; a chunked
body (an SSE stream: one chunk per event) is read by :mod:`mimirlite.mimir.chunked` in one call for all
that came, h11 keeping the head and the connection's state.

What a node asks of an OpenAI-compatible server: a request, its answer's head, then the body as it comes
(its transfer coding undone), with connections kept alive and reused, ``timeout`` bounding connecting,
sending and each wait for data. ``http://`` and ``https://`` (certificates verified: ``SSL_CERT_FILE`` /
``SSL_CERT_DIR`` when set, else certifi's bundle when installed, else the system's). Redirects are not
followed and no content coding is asked for (requests say ``Accept-Encoding: identity`` unless given); an
idle connection is kept :data:`KEEPALIVE_EXPIRY` seconds.

:func:`http_client` gives this client, or one over ``httpx`` with the same calls where the environment
names an HTTP proxy (httpx honours ``HTTP_PROXY`` and its kin; this client does not). Failures raise
:class:`HttpError`: :class:`HttpTimeoutError`, :class:`HttpConnectError` (nothing was answered),
:class:`HttpBrokenError` (the answer broke off or broke HTTP).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import h11

from mimirlite._version import __version__
from mimirlite.errors import MimirliteError, MimirliteTimeoutError
from mimirlite.mimir.chunked import ChunkedDecoder, ChunkedError

log = logging.getLogger(__name__)

READ_SIZE_HIGH = 256 * 1024
"""Bytes buffered from a connection before it stops being read (until they are taken)."""
MAX_HEAD = 64 * 1024
"""Bound on an answer's status line and headers, in bytes."""
MAX_IDLE = 100
"""Idle connections kept per origin (as the openai SDK keeps)."""
KEEPALIVE_EXPIRY = 5.0
"""Seconds an idle connection is kept for reuse (httpx's default): a server or a middlebox may drop it
silently after a while."""
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")
USER_AGENT = f"mimirlite/{__version__}"
"""Sent unless a request names its own (some servers refuse requests without one)."""

Headers = Sequence[tuple[str, str]]

_HEAD_END = re.compile(rb"\n\r?\n")
"""Where h11 ends a head (its blank line)."""
_LAST_CHUNK = b"0\r\n\r\n"


class HttpError(MimirliteError):
    """An HTTP request to the backend failed."""


class HttpTimeoutError(HttpError, MimirliteTimeoutError):
    """Connecting, sending or a wait for data took longer than the timeout."""


class HttpConnectError(HttpError):
    """No connection, or it failed before any answer (a bad URL too)."""


class HttpBrokenError(HttpError):
    """The answer broke off, or is not HTTP/1.1 as h11 reads it."""


class Response(Protocol):
    """An answer whose head was read; its body is taken with :meth:`receive`."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    """As sent (names in lowercase)."""

    async def receive(self) -> bytes:
        """The next bytes of the body (transfer coding undone); ``b""`` at its end."""
        ...

    async def aclose(self) -> None:
        """Done with it: its connection is kept when the body was read to its end, else closed."""
        ...


class Client(Protocol):
    """What the backend needs: :meth:`request` and :meth:`aclose`."""

    async def request(self, method: str, url: str, headers: Headers, body: bytes) -> Response:
        """Send a request and read its answer's head (the body is not read yet)."""
        ...

    async def aclose(self) -> None:
        """Close every connection."""
        ...


def proxied(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment names an HTTP proxy (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``)."""
    return any(env.get(name) or env.get(name.upper()) for name in PROXY_VARS)


def http_client(timeout: float, env: Mapping[str, str] = os.environ) -> Client:
    """This module's client, or the httpx one where :func:`proxied` (the proxy is then used)."""
    if proxied(env):
        return HttpxClient(timeout)
    return HttpClient(timeout)


def _ssl_context(env: Mapping[str, str]) -> ssl.SSLContext:
    cafile, capath = env.get("SSL_CERT_FILE"), env.get("SSL_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile or None, capath=capath or None)
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: its bytes into h11, bounded waits for them."""

    def __init__(self, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.answered = False  # a byte of an answer came on this connection's current request
        self.idle_since = 0.0
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._can_write: asyncio.Future[None] | None = None
        self._pending: Any = None  # an event read ahead of a body's data (more_data), for next_event
        self._rest = b""  # received, given neither to h11 nor to a body's decoder yet

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > READ_SIZE_HIGH and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()

    def pause_writing(self) -> None:
        self._can_write = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._wake_writer()

    def _wake_writer(self) -> None:
        can_write, self._can_write = self._can_write, None
        if can_write is not None and not can_write.done():
            can_write.set_result(None)

    # -- the client's side

    @property
    def reusable(self) -> bool:
        """Idle, open and quiet (a server that closed a kept connection has sent its EOF by now)."""
        transport = self.transport
        return (
            transport is not None
            and not transport.is_closing()
            and not self._eof
            and not self._chunks
            and not self._rest
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def send(self, data: bytes, timeout: float) -> None:
        if self.transport is None or self.transport.is_closing() or self._eof:
            raise HttpConnectError("connection closed")
        self.transport.write(data)
        if self._can_write is not None:
            await self._wait(self._can_write, timeout, "sending the request")
        if self._eof:
            raise HttpConnectError("connection closed while sending")

    async def read_head(self, timeout: float) -> Any:
        """The answer's head (h11's Response, after any 1xx): h11 is given the head's bytes only, what
        follows is kept for the body (:meth:`read`, or h11 after :meth:`body_to_h11`)."""
        conn = self.h11
        buf = self._rest
        eof = False
        while True:
            match = _HEAD_END.search(buf)
            if match is not None:
                conn.receive_data(buf[: match.end()])
                buf = buf[match.end() :]
            elif len(buf) > 2:  # the last two bytes may begin the blank line
                conn.receive_data(buf[:-2])
                buf = buf[-2:]
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpBrokenError(f"bad HTTP answer: {exc}") from None
            if event is h11.NEED_DATA and not eof:
                data = await self._receive(timeout)
                if data:
                    buf = buf + data if buf else data
                else:  # the end: h11 says what it makes of what it has
                    eof = True
                    conn.receive_data(buf)
                    conn.receive_data(b"")
                    buf = b""
            elif type(event) is h11.Response:
                self._rest = buf
                return event
            elif type(event) is not h11.InformationalResponse:
                raise HttpBrokenError("connection closed before an answer")

    def body_to_h11(self) -> None:
        """The body is h11's to read (not chunked): what came of it goes to h11."""
        if self._rest:
            self.h11.receive_data(self._rest)
            self._rest = b""

    async def read(self, timeout: float) -> bytes:
        """What came and was not taken yet, waiting for it (bounded); ``b""`` once the connection ended."""
        rest = self._rest
        if rest:
            self._rest = b""
            return rest
        return await self._receive(timeout)

    def chunked_body_ended(self, unused: bytes) -> bool:
        """A chunked body read by a decoder ended (``unused``: what came after it): h11 is told so with
        a last chunk of its own (it then says whether the connection may be kept). False when h11 does
        not see the end of the message."""
        self._rest = unused
        conn = self.h11
        conn.receive_data(_LAST_CHUNK)
        try:
            return type(conn.next_event()) is h11.EndOfMessage
        except h11.RemoteProtocolError:
            return False

    async def next_event(self, timeout: float) -> Any:
        """h11's next event, reading as much as it needs; HttpBrokenError when it cannot."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            return pending
        conn = self.h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpBrokenError(f"bad HTTP answer: {exc}") from None
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await self._receive(timeout))

    def more_data(self, data: bytes) -> bytes:
        """``data`` with the body bytes of the Data events that follow it in what came already, without
        waiting: one read for many small HTTP chunks (an SSE stream sends each event as one). The first
        other event is kept for :meth:`next_event`; an error is raised there again."""
        conn = self.h11
        parts: list[bytes] | None = None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                break  # h11 is in its ERROR state now: next_event raises again
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if type(event) is not h11.Data:
                self._pending = event
                break
            if parts is None:
                parts = [data]
            parts.append(bytes(event.data))
        return data if parts is None else b"".join(parts)

    async def _receive(self, timeout: float) -> bytes:
        """What came, waiting for it (bounded); ``b""`` once the connection ended."""
        if not self._chunks and not self._eof:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._wait(waiter, timeout, "waiting for the answer")
            finally:
                self._waiter = None
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._size = 0
        self.answered = True
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    @staticmethod
    async def _wait(future: asyncio.Future[None], timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(timeout, _expire, future, f"timed out after {timeout:g} s {what}")
        try:
            await future
        finally:
            timer.cancel()


def _expire(future: asyncio.Future[None], message: str) -> None:
    if not future.done():
        future.set_exception(HttpTimeoutError(message))


def _chunked(method: str, head: Any) -> bool:
    """Whether h11 would read this answer's body as chunked (its framing rules; it checked already that
    a Transfer-Encoding is ``chunked`` and nothing else)."""
    status = head.status_code
    if method == "HEAD" or status in (204, 304) or (method == "CONNECT" and 200 <= status < 300):
        return False
    return any(name == b"transfer-encoding" for name, _ in head.headers)


class _Answer:
    """A :class:`Response` read from a :class:`_Connection` of an :class:`HttpClient`: a chunked body
    through :class:`~mimirlite.mimir.chunked.ChunkedDecoder` (one call for all that came), others
    through h11."""

    def __init__(self, client: HttpClient, conn: _Connection, head: Any, method: str) -> None:
        self.status: int = head.status_code
        self.reason = head.reason.decode("latin-1")
        self.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers]
        self._client = client
        self._conn: _Connection | None = conn
        self._decoder: ChunkedDecoder | None = None
        self._broken = ""  # why the chunked body broke, raised at the next receive()
        if _chunked(method, head):
            self._decoder = ChunkedDecoder()
        else:
            conn.body_to_h11()

    async def _receive_chunked(self, conn: _Connection, decoder: ChunkedDecoder) -> bytes:
        if self._broken:
            raise HttpBrokenError(self._broken)
        timeout = self._client.timeout
        while True:
            data = await conn.read(timeout)
            try:
                body = decoder.receive_data(data)
            except ChunkedError as exc:
                self._broken = f"bad HTTP answer: {exc}"
                if exc.data:  # what came before the break first; the error at the next receive()
                    return exc.data
                raise HttpBrokenError(self._broken) from None
            if decoder.done:
                self._conn = None
                if conn.chunked_body_ended(decoder.unused):
                    self._client._release(conn)
                else:
                    conn.close()
                return body
            if body:
                return body

    async def receive(self) -> bytes:
        conn = self._conn
        if conn is None:
            return b""
        if self._decoder is not None:
            return await self._receive_chunked(conn, self._decoder)
        while True:
            event = await conn.next_event(self._client.timeout)
            kind = type(event)
            if kind is h11.Data:
                if event.data:
                    return conn.more_data(bytes(event.data))
            elif kind is h11.EndOfMessage:
                self._conn = None
                self._client._release(conn)
                return b""
            else:
                raise HttpBrokenError(f"unexpected {kind.__name__} in an answer's body")

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:  # not read to its end: the connection cannot carry another request
            conn.close()


class HttpClient:
    """HTTP/1.1 over h11 with kept-alive connections (``timeout``: seconds for each step)."""

    def __init__(self, timeout: float, *, env: Mapping[str, str] = os.environ) -> None:
        self.timeout = timeout
        self._env = env
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def request(self, method: str, url: str, headers: Headers, body: bytes) -> Response:
        origin, target, host = _split(url)
        sent = [("host", host), *headers]
        given = {name.lower() for name, _ in headers}
        if "accept-encoding" not in given:
            sent.append(("accept-encoding", "identity"))
        if "user-agent" not in given:
            sent.append(("user-agent", USER_AGENT))
        if body or method not in ("GET", "HEAD"):
            sent.append(("content-length", str(len(body))))
        for attempt in range(2):
            conn, reused = await self._connection(origin)
            try:
                try:
                    data = conn.h11.send(h11.Request(method=method, target=target, headers=sent)) or b""
                    if body:
                        data += conn.h11.send(h11.Data(data=body)) or b""
                    data += conn.h11.send(h11.EndOfMessage()) or b""
                except h11.LocalProtocolError as exc:
                    raise HttpConnectError(f"cannot send that request: {exc}") from None
                await conn.send(data, self.timeout)
                head = await conn.read_head(self.timeout)
            except HttpError as exc:
                conn.close()
                if reused and attempt == 0 and not conn.answered and not isinstance(exc, HttpTimeoutError):
                    log.debug("kept connection to %s:%d was closed; a new one", origin[1], origin[2])
                    continue  # a kept connection the server had closed: once more on a new one
                raise
            except BaseException:
                conn.close()
                raise
            return _Answer(self, conn, head, method)
        raise AssertionError("unreachable")

    async def _connection(self, origin: tuple[str, str, int]) -> tuple[_Connection, bool]:
        if self._closed:
            raise HttpConnectError("the client is closed")
        loop = asyncio.get_running_loop()
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.reusable and loop.time() - conn.idle_since <= KEEPALIVE_EXPIRY:
                conn.answered = False
                return conn, True
            conn.close()
        scheme, hostname, port = origin
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = _ssl_context(self._env)
            context = self._ssl
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(origin),
                    hostname,
                    port,
                    ssl=context,
                    server_hostname=hostname if context is not None else None,
                ),
                self.timeout,
            )
        except asyncio.TimeoutError:
            message = f"timed out after {self.timeout:g} s connecting to {hostname}:{port}"
            raise HttpTimeoutError(message) from None
        except (OSError, ssl.SSLError) as exc:
            raise HttpConnectError(f"cannot connect to {hostname}:{port}: {exc}") from exc
        return conn, False

    def _release(self, conn: _Connection) -> None:
        """A connection whose answer was read to its end: kept for the next request when it can be."""
        h = conn.h11
        if self._closed or h.our_state is not h11.DONE or h.their_state is not h11.DONE:
            conn.close()
            return
        h.start_next_cycle()
        conn.idle_since = asyncio.get_running_loop().time()
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) >= MAX_IDLE:
            conn.close()
        else:
            idle.append(conn)

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _split(url: str) -> tuple[tuple[str, str, int], str, str]:
    """``(scheme, hostname, port)``, the request target and the Host header of ``url``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise HttpConnectError(f"bad URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise HttpConnectError(f"bad URL {url!r}: http:// or https:// and a host are needed")
    default = 443 if scheme == "https" else 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc = parts.netloc.rpartition("@")[2]  # never credentials in the Host header
    return (scheme, parts.hostname, port or default), target, netloc


class _HttpxAnswer:
    def __init__(self, response: Any) -> None:
        self.status: int = response.status_code
        self.reason: str = response.reason_phrase
        self.headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers.raw]
        self._response = response
        self._body = response.aiter_raw()

    async def receive(self) -> bytes:
        import httpx

        try:
            data: bytes = await self._body.__anext__()
        except StopAsyncIteration:
            return b""
        except httpx.TimeoutException as exc:
            raise HttpTimeoutError(repr(exc)) from exc
        except httpx.HTTPError as exc:
            raise HttpBrokenError(repr(exc)) from exc
        return data

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxClient:
    """The same calls over ``httpx`` (loaded when made): where a proxy is configured, httpx's way."""

    def __init__(self, timeout: float) -> None:
        import httpx

        self.timeout = timeout
        # as many connections as the openai SDK allows itself (a node may run many chats at once)
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=MAX_IDLE)
        self._http = httpx.AsyncClient(timeout=timeout, limits=limits)

    async def request(self, method: str, url: str, headers: Headers, body: bytes) -> Response:
        import httpx

        sent = list(headers)
        if not any(name.lower() == "accept-encoding" for name, _ in headers):
            sent.append(("accept-encoding", "identity"))
        try:
            request = self._http.build_request(method, url, headers=sent, content=body)
            return _HttpxAnswer(await self._http.send(request, stream=True))
        except httpx.TimeoutException as exc:
            raise HttpTimeoutError(repr(exc)) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise HttpConnectError(repr(exc)) from exc

    async def aclose(self) -> None:
        await self._http.aclose()
