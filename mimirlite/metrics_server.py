"""A small HTTP server for a node's counters: ``GET /metrics`` (and ``HEAD``) in Prometheus' text format.

``python -m mimirlite node --metrics ADDR:PORT`` runs one; from Python::

    async with MetricsServer(host=host, node=node, address="127.0.0.1:9464") as server:
        print(server.url)  # http://127.0.0.1:9464/metrics

It answers one request per connection and closes it. Every input is bounded: the request head
(:data:`MAX_HEAD`, 431 past it), the time to send it (:data:`REQUEST_TIMEOUT`, 408), the time to take
the answer (:data:`WRITE_TIMEOUT`), the connections at once (:data:`MAX_CONNECTIONS`, 503 past it); any
other path is 404, any other method 405; a body is never parsed (what the client sends after its head is
dropped, bounded, until it closes). Bound to a loopback address (the
default), a request must name the machine by a loopback ``Host`` (``localhost``, ``127.0.0.1``,
``[::1]``; 403 otherwise), so that no web page can read it through DNS rebinding. Bound to another
address, a warning says that anyone who can reach it can read the counters.

``h11`` parses the requests and ``prometheus_client`` (:mod:`mimirlite.prometheus`) renders the answers:
both load with this module, which the command line imports only with ``--metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Sequence
from http import HTTPStatus

import h11

from mimirlite.aio import Service
from mimirlite.errors import LocalError
from mimirlite.prometheus import HostSource, MetricsCollector, NodeSource

__all__ = [
    "DEFAULT_HOST",
    "MAX_CONNECTIONS",
    "MAX_HEAD",
    "REQUEST_TIMEOUT",
    "WRITE_TIMEOUT",
    "MetricsServer",
    "parse_address",
]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
"""Where ``--metrics PORT`` (or ``:PORT``) listens."""
MAX_HEAD = 8192
"""Bytes of a request's line and headers; past it 431 and closed."""
REQUEST_TIMEOUT = 10.0
"""Seconds a client has to send its request head once connected; 408 and closed after."""
WRITE_TIMEOUT = 10.0
"""Seconds a client has to take the answer; dropped after."""
MAX_CONNECTIONS = 16
"""Connections at once (a scraper needs one); a new one past it is answered 503 and closed."""
LINGER_TIMEOUT = 2.0
"""Seconds spent, after an answer, dropping what the client still sends until it closes."""
LINGER_BYTES = 1024 * 1024
"""Bytes dropped at most while lingering."""
PATH = "/metrics"
READ_SIZE = 16384
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def parse_address(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``:PORT`` or ``PORT`` (on :data:`DEFAULT_HOST`); an IPv6 address in brackets
    (``[::1]:9464``). LocalError for anything else."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host, port_text = "", text.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise LocalError(f"metrics address {text!r}: write an IPv6 address in brackets, [::1]:9464")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise LocalError(f"metrics address {text!r}: the port must be a number 0..65535 (ADDR:PORT or PORT)")
    return host or DEFAULT_HOST, int(port_text)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.partition("%")[0]).is_loopback
    except ValueError:
        return False


def _host_name(value: bytes) -> str:
    """The name part of a ``Host`` header value (``[::1]:9464`` -> ``::1``), lower case."""
    text = value.decode("ascii", "replace").strip().lower()
    if text.startswith("["):
        return text[1:].partition("]")[0]
    return text.rpartition(":")[0] if text.count(":") == 1 else text


class MetricsServer(Service):
    """Serves the counters of ``host`` and ``node`` (either may be None) at ``http://ADDRESS/metrics``.

    ``address``: ``"ADDR:PORT"``, ``":PORT"`` or ``"PORT"`` (see :func:`parse_address`) or a
    ``(host, port)`` pair; port 0 takes a free one (see :attr:`port` once started).
    """

    def __init__(
        self,
        *,
        host: HostSource | None = None,
        node: NodeSource | None = None,
        address: str | tuple[str, int] = f"{DEFAULT_HOST}:9464",
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        self.listen_host, self.port = parse_address(address) if isinstance(address, str) else address
        if not 0 <= self.port <= 65535:
            raise LocalError(f"metrics port must be 0..65535, not {self.port}")
        if max_connections < 1 or not request_timeout > 0 or not write_timeout > 0:
            raise LocalError("max_connections must be >= 1 and the timeouts positive numbers of seconds")
        self.collector = MetricsCollector(host=host, node=node)
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.loopback_only = False
        """True when every listening address is a loopback one (then a loopback ``Host`` is required)."""
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """``http://ADDR:PORT/metrics``."""
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"http://{host}:{self.port}{PATH}"

    @property
    def open_connections(self) -> int:
        return len(self._tasks)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._on_connect, self.listen_host, self.port)
        addrs: Sequence[tuple[str, int]] = [s.getsockname() for s in self._server.sockets]
        self.port = addrs[0][1]
        self.loopback_only = all(_is_loopback(a[0]) for a in addrs)
        if self.loopback_only:
            log.info("metrics at %s", self.url)
        else:
            log.warning(
                "metrics at %s listen beyond this machine: anyone who can reach it can read the "
                "counters (connections, chats, models, errors)",
                self.url,
            )

    async def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None or len(self._tasks) >= self.max_connections:
            log.info("metrics: refused a connection: %d open", len(self._tasks))
            writer.write(_plain_response(503, b"too many connections\n"))
            writer.close()
            return
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            try:
                request = await asyncio.wait_for(_read_head(conn, reader), self.request_timeout)
            except asyncio.TimeoutError:
                log.info("metrics: no request within %g s", self.request_timeout)
                data = _plain_response(408, b"request timeout\n")
            except h11.RemoteProtocolError as exc:
                log.info("metrics: bad request: %s", exc)
                data = _plain_response(exc.error_status_hint, b"bad request\n")
            else:
                if request is None:
                    return  # closed before a request
                status, headers, body = self.answer(request)
                data = _response(conn, status, headers, b"" if request.method == b"HEAD" else body, len(body))
            await self._reply(reader, writer, data)
        except (ConnectionError, OSError, asyncio.TimeoutError, h11.LocalProtocolError) as exc:
            log.debug("metrics: connection ended: %s", exc or type(exc).__name__)
        finally:
            writer.transport.abort()

    def answer(self, request: h11.Request) -> tuple[int, list[tuple[str, str]], bytes]:
        """Status, headers and body for ``request`` (the body also in answer to ``HEAD``: its length)."""
        text = [("content-type", "text/plain; charset=utf-8")]
        if self.loopback_only:
            host = next((v for k, v in request.headers if k == b"host"), b"")
            if _host_name(host) not in LOOPBACK_NAMES:
                log.info("metrics: refused a request naming %r (loopback names only)", host[:100])
                return 403, text, b"name this machine: localhost, 127.0.0.1 or [::1]\n"
        if request.target.partition(b"?")[0] != PATH.encode():
            return 404, text, b"not found: the counters are at /metrics\n"
        if request.method not in (b"GET", b"HEAD"):
            return 405, [*text, ("allow", "GET, HEAD")], b"method not allowed\n"
        body, content_type = self.collector.render()
        return 200, [("content-type", content_type)], body

    async def _reply(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Send ``data`` and end our side; then drop what the client still sends until it closes (at most
        :data:`LINGER_BYTES` for :data:`LINGER_TIMEOUT`), so that closing does not reset the connection
        before the client read the answer; then close (a client that does not take it is dropped)."""
        writer.write(data)
        if writer.can_write_eof():
            writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_TIMEOUT
        dropped = 0
        with contextlib.suppress(asyncio.TimeoutError):
            while dropped < LINGER_BYTES:
                got = await asyncio.wait_for(reader.read(READ_SIZE), max(0.0, deadline - loop.time()))
                if not got:
                    break
                dropped += len(got)
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), self.write_timeout)


def _response(
    conn: h11.Connection, status: int, headers: Sequence[tuple[str, str]], body: bytes, length: int
) -> bytes:
    """A whole response to the request ``conn`` read, announcing ``length`` bytes, closing."""
    fields = [*headers, ("content-length", str(length)), ("connection", "close")]
    reason = HTTPStatus(status).phrase.encode()
    data = conn.send(h11.Response(status_code=status, headers=fields, reason=reason)) or b""
    if body:
        data += conn.send(h11.Data(data=body)) or b""
    return data + (conn.send(h11.EndOfMessage()) or b"")


async def _read_head(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    """The request's line and headers (its body, if any, is never read); None when the client closed."""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            return event
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(READ_SIZE))
        elif isinstance(event, h11.ConnectionClosed):
            return None
        else:  # nothing else comes before a request
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}", error_status_hint=400)


def _plain_response(status: int, body: bytes) -> bytes:
    """A whole HTTP/1.1 response written without a parser's state (refusals before a request)."""
    head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
    head += "content-type: text/plain; charset=utf-8\r\n"
    head += f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    return head.encode() + body
