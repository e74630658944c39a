"""The asyncio shell of the gateway: an HTTP/1.1 server whose answers come from the mimir network.

Each client connection is one task driving a :class:`~mimirlite.gateway.http.ServerConnection`: it reads
with the idle and request timeouts, routes each whole request, writes what the core produces. While a
request is answered, the connection is also watched: a client that goes away cancels the answer, and
with it the mimir stream (reset, so the node cancels its backend request).

The door: the core checks each request head (``Host``, API key, content type, framing, size) before its
body is read; a refused request is answered and its connection closed. Connections are bounded in all
and per client address; at a bound, the connection idle the longest (between requests) makes room.
Every refusal is logged on one line with its reason and counted in :attr:`Gateway.metrics`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mimirlite.aio import Service, race
from mimirlite.errors import LocalError, MimirliteError, RefusalReason
from mimirlite.gateway import api, page
from mimirlite.gateway.api import ApiError
from mimirlite.gateway.chats import GatewayChat
from mimirlite.gateway.http import (
    LOOPBACK_HOSTS,
    MAX_REQUEST_BODY,
    CorsPolicy,
    Door,
    HttpError,
    Pending,
    Request,
    ServerConnection,
)
from mimirlite.metrics import ChatMetrics, plain_counts
from mimirlite.mimir.client import HttpRemoteError, MimirClient, NoNodeError, TruncatedAnswerError, WireChunk
from mimirlite.mimir.packets import RemoteError
from mimirlite.mimir.params import MAX_NAME

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
IDLE_TIMEOUT = 60.0
"""Seconds a keep-alive connection may wait for its next request before it is closed."""
HTTP_REQUEST_TIMEOUT = 30.0
"""Seconds a client has to send a whole request (head and body) once its first byte arrived; 408 after."""
WRITE_TIMEOUT = 60.0
"""Seconds a client that stopped reading has to take what is buffered for it before it is dropped."""
MAX_CONNECTIONS = 4096
"""HTTP connections at once; at the limit a new one closes the connection idle the longest (between
requests), or is answered 503 and closed when none is idle."""
MAX_CONNECTIONS_PER_IP = 1024
"""HTTP connections at once from one client address (a quarter of :data:`MAX_CONNECTIONS`: one address
cannot hold the gateway); at the limit a new one closes that address's connection idle the longest, or
is answered 429 and closed."""
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
"""``host`` values that listen on every address of the machine."""
BACKLOG = 1024
"""Connections the kernel queues before they are accepted (a burst of clients is not refused)."""

READ_SIZE = 65536
WRITE_BUFFER_HIGH = 64 * 1024
"""Bytes buffered for a client above which the writer waits for it (backpressure)."""
PIPELINE_LIMIT = 64 * 1024
"""Bytes of pipelined requests read ahead while a response is sent; beyond, reading pauses."""
LINGER_TIMEOUT = 2.0
"""After an error answer that ends a connection while the client may still be sending (413, 408), seconds
spent reading and dropping what it sends, so that closing does not reset the connection before the
client has read the answer."""
LINGER_BYTES = 1024 * 1024
"""Bytes dropped at most while lingering."""
AT_ONCE = frozenset({RefusalReason.AUTH, RefusalReason.HOST, RefusalReason.CONTENT_TYPE})
"""Refusals at the door (:class:`~mimirlite.gateway.http.HttpError` reasons) that close without lingering:
a client that has not shown the key, named the gateway or sent JSON gets no byte of its body read (each
lingering connection holds read buffers, about 400 KiB; a client that sent its whole request at once,
as the SDKs do for a chat, still reads the answer)."""

_UPSTREAM_ERRORS = (MimirliteError, OSError, asyncio.TimeoutError)
"""What a chat on the network raises when it fails (MimirClient.chat's contract)."""

SSE_HEADERS = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
)
JSON_HEADERS = (("content-type", "application/json"),)
NDJSON_HEADERS = (("content-type", "application/x-ndjson"),)
TEXT_HEADERS = (("content-type", "text/plain; charset=utf-8"),)
NO_BODY_STATUSES = frozenset({204, 205, 304})
"""Statuses a node's tunnel answer to a forwarded request may not have (they carry no body): 502."""
OLLAMA_PATHS = frozenset(
    {"/api/version", "/api/tags", "/api/show", "/api/chat", "/api/generate", "/api/embed", "/api/embeddings"}
)
"""Ollama's inference paths, the only ones under ``/api/`` served; every other (``/api/pull``, ``/api/push``,
``/api/delete``, ``/api/create``, ``/api/copy``, ``/api/blobs/...``, ``/api/ps``...) is refused 403."""


class GatewayMetrics:
    """What a :class:`Gateway` did since it was made (plain ints and a Counter, as
    :mod:`mimirlite.metrics` keeps for hosts and nodes).

    ``refused`` counts requests and connections turned away, by reason: ``auth`` (401), ``host`` (a
    ``Host`` not served here, 403), ``content_type`` (a ``POST`` not sent as JSON, 415), ``smuggling``
    (``Content-Length`` with ``Transfer-Encoding``, 400), ``head_too_large`` (431), ``body_too_large``
    (413), ``bad_http`` (400/501), ``request_timeout`` (408), ``connections`` (at ``max_connections``
    with none idle, 503), ``connections_per_ip`` (at ``max_connections_per_ip`` with none idle, 429),
    ``forbidden_path`` (an Ollama path that manages models, or any other outside :data:`OLLAMA_PATHS`,
    403) and ``idle_evicted`` (an idle keep-alive connection closed to make room for a new one).
    ``chats`` (not in :meth:`as_dict`): chat requests by model and outcome, and their times (see
    :mod:`mimirlite.gateway.chats`).
    """

    __slots__ = ("bytes_in", "chats", "connections_opened", "refused", "requests")

    def __init__(self) -> None:
        self.connections_opened = 0
        """Connections accepted (refused ones not counted)."""
        self.requests = 0
        """Whole requests routed (refused ones not counted)."""
        self.bytes_in = 0
        """Bytes read from clients, including what was read and dropped after a refusal."""
        self.refused: collections.Counter[str] = collections.Counter()
        self.chats = ChatMetrics()

    def as_dict(self) -> dict[str, int | dict[str, int]]:
        """A snapshot: every counter, the Counter as a plain dict."""
        return {
            "connections_opened": self.connections_opened,
            "requests": self.requests,
            "bytes_in": self.bytes_in,
            "refused": plain_counts(self.refused.items()),
        }


@dataclass(frozen=True)
class GatewayConfig:
    """Every setting of a :class:`Gateway`, in the manner of aioquic's ``QuicConfiguration``:
    ``Gateway(client, GatewayConfig(...))``, or the same fields as keywords."""

    host: str = DEFAULT_HOST
    """The address to listen on (``0.0.0.0`` or ``::``: every address of the machine)."""
    port: int = DEFAULT_PORT
    """The TCP port to listen on (0: a free one, see ``Gateway.port``)."""
    api_key: str | None = None
    """When set, every request needs ``Authorization: Bearer <api_key>`` (401 and closed otherwise)."""
    cors_origins: Sequence[str] = ()
    """Browser origins (``scheme://host[:port]``, or ``*``) whose pages may call the API (CORS)."""
    max_body: int = MAX_REQUEST_BODY
    """Bytes of a request body; more is refused with 413."""
    idle_timeout: float = IDLE_TIMEOUT
    """Seconds a keep-alive connection may wait for its next request before it is closed."""
    request_timeout: float = HTTP_REQUEST_TIMEOUT
    """Seconds a client has to send a whole request once its first byte arrived; 408 after."""
    write_timeout: float = WRITE_TIMEOUT
    """Seconds a client that stopped reading has to take what is buffered for it before it is dropped."""
    max_connections: int = MAX_CONNECTIONS
    """HTTP connections at once (at the limit the one idle the longest is closed, else 503)."""
    max_connections_per_ip: int = MAX_CONNECTIONS_PER_IP
    """HTTP connections at once from one client address (at the limit its idlest is closed, else 429)."""
    allow_hosts: Sequence[str] = ()
    """Names a request's ``Host`` may give besides the loopback names and the listening address (``*``:
    any), against DNS rebinding."""

    def __post_init__(self) -> None:
        for name in ("cors_origins", "allow_hosts"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise LocalError(f"{name} is a list of strings, not one string")
            object.__setattr__(self, name, tuple(value))
        for name in ("max_body", "max_connections", "max_connections_per_ip"):
            if getattr(self, name) < 0:
                raise LocalError(f"{name} must be >= 0")
        if not 0 <= self.port <= 65535:
            raise LocalError(f"port must be 0..65535, not {self.port}")
        for name in ("idle_timeout", "request_timeout", "write_timeout"):
            if not getattr(self, name) > 0:
                raise LocalError(f"{name} must be a positive number of seconds")


class Gateway(Service):
    """Serves the mimir network known to ``client`` as an OpenAI-compatible HTTP API, and as Ollama's
    native API on the same port (``/api/tags``, ``/api/version``, ``/api/show``, ``/api/chat``,
    ``/api/generate``, ``/api/embed``, ``/api/embeddings``; every other ``/api/`` path, model management
    included, is refused 403). Chats go to any node; embeddings and legacy completions
    (``/v1/embeddings``, ``/v1/completions``, ``/api/embed``, ``/api/embeddings``) go, checked against an
    allowlist, through the ``/mimir/<model>/1.0.0`` tunnel of a node serving the model. For people:
    ``GET /`` serves a chat page to browsers (:mod:`mimirlite.gateway.page`; its files need no API key),
    and ``GET /mimirlite/nodes`` lists the nodes known (:func:`~mimirlite.gateway.page.node_list`).

    ``async with Gateway(client, port=0) as gateway`` listens (``gateway.port``, ``gateway.base_url``)
    until the block ends; :meth:`serve` listens until cancelled. The client (found nodes by ``peers``
    and mDNS) is the caller's to start and stop. With ``api_key`` every request needs
    ``Authorization: Bearer <api_key>`` (checked on the head: 401 and closed before a body is read).
    ``cors_origins`` (``scheme://host[:port]``, or ``*`` for any) lets browser pages from those origins
    call the API: preflights (``OPTIONS``, answered without the key) and CORS headers on every response;
    LocalError for a value that is not an origin.

    ``Host`` (against DNS rebinding): a request must name the gateway by a loopback name (``localhost``,
    ``127.0.0.1``, ``[::1]``), by the address its connection came to (any address of the machine when
    ``host`` is a wildcard, ``0.0.0.0`` or ``::``), by ``host`` itself, or by one of ``allow_hosts``
    (``*``: any); with or without a port. Else 403 and closed. A ``POST`` must be
    ``Content-Type: application/json`` unless its ``Origin`` is one CORS allows (415 and closed).
    """

    def __init__(
        self,
        client: MimirClient,
        config: GatewayConfig | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        api_key: str | None = None,
        cors_origins: Iterable[str] | None = None,
        max_body: int | None = None,
        idle_timeout: float | None = None,
        request_timeout: float | None = None,
        write_timeout: float | None = None,
        max_connections: int | None = None,
        max_connections_per_ip: int | None = None,
        allow_hosts: Iterable[str] | None = None,
    ) -> None:
        """``config`` (a :class:`GatewayConfig`) holds every setting; the keywords, each one a
        :class:`GatewayConfig` field, are merged into it (a keyword given, not None, wins over the
        config's field)."""
        given: dict[str, Any] = {
            "host": host,
            "port": port,
            "api_key": api_key,
            "cors_origins": None if cors_origins is None else tuple(cors_origins),
            "max_body": max_body,
            "idle_timeout": idle_timeout,
            "request_timeout": request_timeout,
            "write_timeout": write_timeout,
            "max_connections": max_connections,
            "max_connections_per_ip": max_connections_per_ip,
            "allow_hosts": None if allow_hosts is None else tuple(allow_hosts),
        }
        changes = {name: value for name, value in given.items() if value is not None}
        cfg = config or GatewayConfig()
        cfg = replace(cfg, **changes) if changes else cfg
        self.config = cfg
        """The settings this gateway runs with (``port`` as asked: 0 stays 0 here, see :attr:`port`)."""
        self.client = client
        self.host = cfg.host
        self.port = cfg.port
        """The port listened on (the free one chosen, once started with ``port`` 0)."""
        self.api_key = cfg.api_key or None
        self.cors = CorsPolicy.of(list(cfg.cors_origins)) if cfg.cors_origins else None
        """Which browser origins may call the API (None: no CORS, as for any plain HTTP server)."""
        own = [] if cfg.host.strip() in WILDCARD_HOSTS else [cfg.host]
        self.door = Door.of([*LOOPBACK_HOSTS, *own, *cfg.allow_hosts], self.api_key, public=page.PUBLIC_PATHS)
        """What each request head must show (the address a connection came to is added per connection);
        the chat page and its files need no API key."""
        self.repinger = page.Repinger(client)
        """Pings the nodes again while the chat page's node list is watched."""
        self.max_body = cfg.max_body
        self.idle_timeout = cfg.idle_timeout
        self.request_timeout = cfg.request_timeout
        self.write_timeout = cfg.write_timeout
        self.max_connections = cfg.max_connections
        self.max_connections_per_ip = cfg.max_connections_per_ip
        self.metrics = GatewayMetrics()
        self.created = int(time.time())
        """The ``created`` time of every model listed."""
        self.active_requests = 0
        """Requests being answered right now."""
        self._server: asyncio.AbstractServer | None = None
        self._conns: dict[asyncio.Task[None], _Connection] = {}
        self._evicted: set[asyncio.Task[None]] = set()
        """Connections closed to make room, whose tasks are still ending (not counted as open)."""
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._idle: dict[_Connection, None] = {}
        """Connections waiting for their next request, the one idle the longest first."""

    # ---- lifecycle ----

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``: the ``base_url`` of an OpenAI SDK."""
        return f"{self.url}/v1"

    @property
    def open_connections(self) -> int:
        return len(self._conns) - len(self._evicted)

    async def _start(self) -> None:
        """Listen on ``host``:``port`` (``port`` 0: a free one, then set here)."""
        self._server = await asyncio.start_server(self._on_connect, self.host, self.port, backlog=BACKLOG)
        addrs = [s.getsockname() for s in self._server.sockets]
        self.port = addrs[0][1]
        log.info("OpenAI-compatible gateway at %s (Ollama API at %s)", self.base_url, self.url)
        if self.api_key is None and not all(_is_loopback(a[0]) for a in addrs):
            log.warning(
                "the gateway listens on %s without an API key: anyone who can reach it can use the "
                "network's models (set MIMIRLITE_API_KEY)",
                self.host or "every address",
            )

    async def _stop(self) -> None:
        """Stop listening and end every connection (cancelling the answers in progress)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self.repinger.aclose()
        tasks = list(self._conns)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for conn in list(self._conns.values()):
            conn.writer.transport.abort()
        if server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    # ---- connections ----

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else ""
        name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "client"
        if self._server is None:
            self._refuse(writer, ApiError(503, "The gateway is stopping.", api.SERVER_ERROR))
            return
        if self._per_ip[ip] >= self.max_connections_per_ip and not self._evict_idle(ip):
            self.metrics.refused[RefusalReason.CONNECTIONS_PER_IP] += 1
            log.info("%s: refused: %d connections from its address already", name, self._per_ip[ip])
            err = ApiError(
                429, "Too many connections from your address.", api.RATE_LIMIT, code="too_many_connections"
            )
            self._refuse(writer, err)
            return
        if self.open_connections >= self.max_connections and not self._evict_idle(None):
            self.metrics.refused[RefusalReason.CONNECTIONS] += 1
            log.info("%s: refused: %d connections open, none idle", name, self.open_connections)
            self._refuse(
                writer,
                ApiError(503, "Too many connections to the gateway; try again later.", api.SERVER_ERROR),
            )
            return
        conn = _Connection(self, reader, writer, ip, name)
        task = asyncio.get_running_loop().create_task(conn.run())
        conn.task = task
        self._conns[task] = conn
        self._per_ip[ip] += 1
        self.metrics.connections_opened += 1
        task.add_done_callback(self._conn_done)

    def _refuse(self, writer: asyncio.StreamWriter, err: ApiError) -> None:
        http = ServerConnection(cors=self.cors)
        http.respond(err.status, JSON_HEADERS, err.body(), close=True)
        writer.write(http.data_to_send())
        writer.close()

    def _evict_idle(self, ip: str | None) -> bool:
        """Close the connection idle the longest (from ``ip``, or any); False when there is none."""
        victim = next((c for c in self._idle if ip is None or c.ip == ip), None)
        if victim is None or victim.task is None:
            return False
        self._idle.pop(victim)
        self._forget(victim.task)
        self._evicted.add(victim.task)
        self.metrics.refused[RefusalReason.IDLE_EVICTED] += 1
        log.info("%s: idle connection closed to make room for a new one", victim.name)
        victim.writer.transport.abort()
        victim.task.cancel()
        return True

    def _forget(self, task: asyncio.Task[None]) -> None:
        """Stop counting the connection of ``task`` against its address (once)."""
        conn = self._conns.get(task)
        if conn is not None and task not in self._evicted:
            self._per_ip[conn.ip] -= 1
            if self._per_ip[conn.ip] <= 0:
                del self._per_ip[conn.ip]

    def _conn_done(self, task: asyncio.Task[None]) -> None:
        self._forget(task)
        self._evicted.discard(task)
        conn = self._conns.pop(task, None)
        if conn is not None:
            self._idle.pop(conn, None)
            if not conn.writer.transport.is_closing():
                conn.writer.transport.abort()
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway connection failed", exc_info=task.exception())

    # ---- routing ----

    async def handle(self, req: Request, out: _Connection) -> None:
        """Answer one request (on ``out``)."""
        self.active_requests += 1
        try:
            # The core checked the head (Host, API key, content type) before the body was read.
            if self.cors is not None and req.method == "OPTIONS":  # a preflight: browsers send no key
                await out.send_empty(204, self.cors.preflight_headers(req))
                return
            path = req.path.rstrip("/")
            if path == "/v1/chat/completions":
                _allow(req, "POST")
                await self._chat(req, out)
            elif path == "/v1/models":
                _allow(req, "GET")
                models = (m for ms in self.client.nodes.values() for m in ms)
                await out.send_json(200, api.models_page(models, self.created))
            elif path.startswith("/v1/models/"):
                _allow(req, "GET")
                model = path.removeprefix("/v1/models/")
                await self._find(model)
                if not self.client.nodes_for(model):
                    raise api.model_not_found(model)
                await out.send_json(200, api.model_object(model, self.created))
            elif path in ("/v1/embeddings", "/v1/completions"):
                _allow(req, "POST")
                await self._tunnel(req, path, out)
            elif path == "/api" or path.startswith("/api/"):
                await self._ollama(req, path, out)
            elif path == "/metrics":
                _allow(req, "GET", "HEAD")
                await self._serve_metrics(out)
            elif path == "" and req.method in ("GET", "HEAD"):
                if page.wants_html(req.header("accept")):  # a browser: the chat page
                    await self._static(page.static_file(page.PAGE), out, vary=True)
                else:  # Ollama's "is it up?" (its CLI's heartbeat), tools asking for */*
                    out.http.respond(200, [*TEXT_HEADERS, ("vary", "accept")], b"Ollama is running")
                    await out.flush()
            elif req.path.startswith(page.STATIC_PREFIX):
                _allow(req, "GET", "HEAD")
                await self._static(page.static_path(req.path), out)
            elif path == page.NODES_PATH:
                _allow(req, "GET")
                self.repinger.kick()
                await out.send_json(200, page.node_list(self.client))
            else:
                raise ApiError(404, f"Unknown request URL: {req.method} {req.path}.", code="unknown_url")
        except ApiError as err:
            await out.send_error(err)
        finally:
            self.active_requests -= 1

    async def _serve_metrics(self, out: _Connection) -> None:
        """The gateway's counters, its client's host's and the nodes it knows per model, in Prometheus'
        text format (``prometheus_client`` loads at the first scrape)."""
        from mimirlite.prometheus import MetricsCollector

        collector = MetricsCollector(host=self.client.host, gateway=self, client=self.client)
        body, content_type = collector.render()
        out.http.respond(200, [("content-type", content_type)], body)
        await out.flush()

    async def _static(
        self, file: tuple[list[tuple[str, str]], bytes] | None, out: _Connection, *, vary: bool = False
    ) -> None:
        """A file of the chat page (404 when ``file`` is None: not one of them)."""
        if file is None:
            raise ApiError(404, "No such file.", code="unknown_url")
        headers, body = file
        out.http.respond(200, [*headers, ("vary", "accept")] if vary else headers, body)
        await out.flush()

    # ---- Ollama's native API ----

    async def _ollama(self, req: Request, path: str, out: _Connection) -> None:
        """One request under ``/api/``, answered in Ollama's shapes (errors as ``{"error": "..."}``)."""
        try:
            if path not in OLLAMA_PATHS:
                self.metrics.refused[RefusalReason.FORBIDDEN_PATH] += 1
                log.info("%s: refused (403): %s %s is not an inference path", out.name, req.method, req.path)
                raise ApiError(
                    403, f"{req.method} {req.path} is not allowed: this gateway serves inference only."
                )
            if path == "/api/version":
                _allow(req, "GET")
                await out.send_json(200, {"version": api.OLLAMA_VERSION})
            elif path == "/api/tags":
                _allow(req, "GET")
                await out.send_json(200, api.ollama_tags(m for ms in self.client.nodes.values() for m in ms))
            elif path == "/api/show":
                _allow(req, "POST")
                model = _show_model(req.body)
                await self._find(model, ollama=True)
                self._ollama_model(model)
                await out.send_json(200, api.ollama_show(model))
            elif path in ("/api/chat", "/api/generate"):
                _allow(req, "POST")
                await self._ollama_chat(req, path.removeprefix("/api/"), out)
            else:  # /api/embed, /api/embeddings
                _allow(req, "POST")
                await self._tunnel(req, path, out)
        except ApiError as err:
            await out.send_error(err, ollama=True)

    async def _find(self, model: str, *, ollama: bool = False) -> None:
        """Look ``model`` up in the DHT when no known node serves it (``ollama``: or its ``:latest``)."""
        if not await self.client.find_nodes(model) and ollama and ":" not in model:
            await self.client.find_nodes(f"{model}:latest")

    def _ollama_model(self, model: str) -> str:
        """The served name ``model`` stands for: itself, or as Ollama resolves a name without a tag,
        ``model:latest``; 404 ``model 'x' not found`` when no reachable node serves either."""
        if self.client.nodes_for(model):
            return model
        if ":" not in model and self.client.nodes_for(f"{model}:latest"):
            return f"{model}:latest"
        raise api.ollama_model_not_found(model)

    async def _ollama_chat(self, req: Request, kind: str, out: _Connection) -> None:
        with GatewayChat(self.metrics.chats) as chat:
            await self._ollama_chat_counted(req, kind, out, chat)

    async def _ollama_chat_counted(
        self, req: Request, kind: str, out: _Connection, chat: GatewayChat
    ) -> None:
        call = api.parse_ollama_body(req.body, kind)
        await self._find(call.model, ollama=True)
        if not self.client.nodes:
            raise ApiError(503, "No mimir node is reachable.", api.SERVER_ERROR, code="no_node")
        model = self._ollama_model(call.model)
        chat.model = model
        answer = api.OllamaAnswer(call)
        if not call.messages:  # nothing to ask: Ollama only loads the model
            await out.send_json(200, answer.loaded(_now()))
            return
        started = time.monotonic_ns()
        chunks = chat.watch(self.client.chat_raw(call.messages, model=model, **call.params))
        async with contextlib.aclosing(chunks):
            if call.stream:
                await self._ollama_stream(chunks, answer, out, started)
            else:
                try:
                    async for chunk in chunks:
                        answer.add(chunk, "")
                except _UPSTREAM_ERRORS as exc:
                    raise _upstream_error(exc) from None
                await out.send_json(200, answer.complete(_now(), time.monotonic_ns() - started))
        log.info("%s %s %s stream=%s", req.method, req.path, call.model, call.stream)

    async def _ollama_stream(
        self,
        chunks: AsyncIterator[dict[str, Any]],
        answer: api.OllamaAnswer,
        out: _Connection,
        started: int,
    ) -> None:
        """NDJSON lines as Ollama streams them; headers only once the first chunk came (a failure before
        it is an HTTP error status); a failure after it is an ``{"error": ...}`` line, then the end."""
        http = out.http
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            raise ApiError(502, "The node sent an empty answer.", api.SERVER_ERROR) from None
        except _UPSTREAM_ERRORS as exc:
            raise _upstream_error(exc) from None
        http.start_response(200, NDJSON_HEADERS)
        line = answer.add(first, _now())
        while True:
            if line:
                http.send_data(line)
                await out.flush()
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except _UPSTREAM_ERRORS as exc:
                log.warning("answer broke off mid-stream: %s", exc)
                http.send_data(api.ollama_error(_upstream_error(exc)) + b"\n")
                http.end_response()
                http.close_after_response()
                await out.flush()
                return
            line = answer.add(chunk, _now())
        http.send_data(answer.done(_now(), time.monotonic_ns() - started))
        http.end_response()
        await out.flush()

    # ---- paths forwarded through a node's tunnel ----

    async def _tunnel(self, req: Request, path: str, out: _Connection) -> None:
        """Embeddings and legacy completions (:data:`api.TUNNEL_FIELDS`): the checked body goes as it is
        through the ``/mimir/<model>/1.0.0`` tunnel of a node serving the model (a latest-generation
        node, or a mimirlite node); its answer comes back as it arrives, with its status and
        content type. 404 when nobody serves the model, 501 when only first-generation nodes do."""
        call = api.parse_tunnel_body(path, req.body)
        ollama = path.startswith("/api/")
        await self._find(call.model, ollama=ollama)
        if not self.client.nodes:
            raise ApiError(503, "No mimir node is reachable.", api.SERVER_ERROR, code="no_node")
        if ollama:
            model = self._ollama_model(call.model)
        elif self.client.nodes_for(call.model):
            model = call.model
        else:
            raise api.model_not_found(call.model)
        if not any(model in self.client.tunnels(p) for p in self.client.nodes_for(model)):
            log.info("%s: %s %s: only first-generation nodes serve %s", out.name, req.method, path, model)
            raise ApiError(
                501,
                f"{path} needs a node of the latest MimirLLM generation (or a mimirlite node) serving "
                f"{model}; the reachable nodes serving it speak only the first generation (chat only).",
                api.SERVER_ERROR,
                code="needs_latest_generation",
            )
        try:
            answer = await self.client.request(model, "POST", path, api.dumps({**call.body, "model": model}))
        except _UPSTREAM_ERRORS as exc:
            raise _upstream_error(exc) from None
        async with answer.body:
            if not 200 <= answer.status <= 599 or answer.status in NO_BODY_STATUSES:
                log.warning("%s: %s %s: the node answered HTTP %d", out.name, req.method, path, answer.status)
                raise ApiError(
                    502, f"The node sent an unusable answer (HTTP {answer.status}).", api.SERVER_ERROR
                )
            headers = [(k, v) for k, v in answer.headers if k == "content-type"][:1]
            http = out.http
            http.start_response(answer.status, headers or list(JSON_HEADERS))
            await out.flush()
            try:
                async for data in answer.body:
                    http.send_data(data)
                    await out.flush()
            except _UPSTREAM_ERRORS as exc:
                # the status line is sent: end the connection without the last chunk, so the client
                # sees a truncated answer (never a silently short one)
                log.warning("%s: %s %s: the node's answer broke off: %s", out.name, req.method, path, exc)
                raise ConnectionAbortedError(f"the node's answer broke off: {exc}") from None
            http.end_response()
            await out.flush()
        log.info("%s %s %s -> %d", req.method, req.path, model, answer.status)

    # ---- chat ----

    async def _chat(self, req: Request, out: _Connection) -> None:
        with GatewayChat(self.metrics.chats) as chat:
            await self._chat_counted(req, out, chat)

    async def _chat_counted(self, req: Request, out: _Connection, chat: GatewayChat) -> None:
        call = api.parse_chat_body(req.body)
        await self._find(call.model)
        if not self.client.nodes:
            raise ApiError(503, "No mimir node is reachable.", api.SERVER_ERROR, code="no_node")
        if not self.client.nodes_for(call.model):
            raise api.model_not_found(call.model)
        chat.model = call.model
        # closing the generator resets the mimir stream;
        # call.params holds allowlisted names only, none of them an argument of chat_wire()
        chunks = chat.watch(self.client.chat_wire(call.messages, model=call.model, **call.params))
        async with contextlib.aclosing(chunks):
            if call.stream:
                await self._stream(chunks, out)
            else:
                await self._complete(chunks, out)
        log.info("%s %s %s stream=%s", req.method, req.path, call.model, call.stream)

    async def _stream(self, chunks: AsyncIterator[WireChunk], out: _Connection) -> None:
        """Server-Sent Events as OpenAI sends them; headers only once the first chunk came, so that a
        failure before it is an HTTP error status."""
        http = out.http
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            raise ApiError(502, "The node sent an empty answer.", api.SERVER_ERROR) from None
        except _UPSTREAM_ERRORS as exc:
            raise _upstream_error(exc) from None
        http.start_response(200, SSE_HEADERS)
        http.send_data(api.sse_event(_chunk_json(first)))
        await out.flush()
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except _UPSTREAM_ERRORS as exc:
                err = _upstream_error(exc)
                log.warning("answer broke off mid-stream: %s", exc)
                http.send_data(api.sse_event(err.body()))
                http.end_response()
                http.close_after_response()
                await out.flush()
                return
            http.send_data(api.sse_event(_chunk_json(chunk)))
            await out.flush()
        http.send_data(api.SSE_DONE)
        http.end_response()
        await out.flush()

    async def _complete(self, chunks: AsyncIterator[WireChunk], out: _Connection) -> None:
        """One ``chat.completion`` assembled from the streamed chunks."""
        builder = api.CompletionBuilder()
        try:
            async for chunk in chunks:
                builder.add(chunk.data)
        except _UPSTREAM_ERRORS as exc:
            raise _upstream_error(exc) from None
        await out.send_json(200, builder.result())


def _chunk_json(chunk: WireChunk) -> bytes:
    """``chunk`` as JSON: the node's own text when it may be passed on as it is (checked, one line, no
    duplicate key, nothing but JSON), else its checked data encoded (:func:`api.dumps`: a lone surrogate
    becomes U+FFFD, a number beyond a float null)."""
    text = chunk.json
    return api.dumps(chunk.data) if text is None else text.encode()


def _now() -> str:
    """The time now as Ollama writes ``created_at`` (RFC 3339, UTC, in microseconds; without the
    ``datetime`` module, which an idle gateway need not hold)."""
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{micros:06d}Z"


def _show_model(body: bytes) -> str:
    """The model a ``POST /api/show`` body names (``model``, or ``name`` as older clients send)."""
    obj = api.loads_body(body)
    model = obj.get("model") or obj.get("name") if isinstance(obj, dict) else None
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required", param="model")
    return model[:MAX_NAME]


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.partition("%")[0]).is_loopback
    except ValueError:
        return False


def _allow(req: Request, *methods: str) -> None:
    if req.method not in methods:
        raise ApiError(405, f"Method {req.method} is not allowed on {req.path}.", code="method_not_allowed")


def _upstream_error(exc: BaseException) -> ApiError:
    """The HTTP error for a failed request on the network: a latest-generation node's HTTP error status
    as it is (4xx, 5xx), a first-generation node's error by its type."""
    if isinstance(exc, HttpRemoteError) and 400 <= exc.status <= 599:
        kind = (
            api.RATE_LIMIT
            if exc.status == 429
            else api.INVALID_REQUEST
            if exc.status < 500
            else api.SERVER_ERROR
        )
        return ApiError(exc.status, exc.message, kind, code=exc.type)
    if isinstance(exc, RemoteError):
        return api.remote_error(exc.type, exc.message)
    if isinstance(exc, NoNodeError):
        return ApiError(503, f"No mimir node is reachable: {exc}", api.SERVER_ERROR, code="no_node")
    if isinstance(exc, TruncatedAnswerError):
        return ApiError(502, f"The node's answer broke off: {exc}", api.SERVER_ERROR, code="truncated_answer")
    if isinstance(exc, asyncio.TimeoutError):
        return ApiError(504, "The node did not answer in time.", api.SERVER_ERROR, code="node_timeout")
    reason = str(exc) or type(exc).__name__
    return ApiError(503, f"No mimir node is reachable: {reason}", api.SERVER_ERROR, code="no_node")


class _Connection:
    """One HTTP client: its socket, its sans-IO core, its timeouts."""

    def __init__(
        self, gateway: Gateway, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ip: str, name: str
    ) -> None:
        self.gateway = gateway
        self.reader = reader
        self.writer = writer
        self.ip = ip
        self.name = name
        self.task: asyncio.Task[None] | None = None
        local = writer.get_extra_info("sockname")
        door = gateway.door.with_hosts(str(local[0])) if isinstance(local, tuple) else gateway.door
        self.http = ServerConnection(max_body=gateway.max_body, cors=gateway.cors, door=door)

    async def run(self) -> None:
        try:
            while True:
                req = await self._next_request()
                if req is None or not await self._exchange(req) or not self.http.start_next_cycle():
                    return
        except HttpError as exc:
            self.gateway.metrics.refused[exc.reason] += 1
            log.info("%s: refused (%s): %s %s", self.name, exc.reason, exc.status, exc)
            if self.http.can_respond:
                err = ApiError(exc.status, exc.message, code=exc.code)
                with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
                    await self.send_error(err, close=True)
                    if exc.reason not in AT_ONCE:
                        await self._linger()
        except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
            log.debug("%s: connection ended: %s", self.name, exc or type(exc).__name__)
        finally:
            await self._close()

    async def _linger(self) -> None:
        """Half-close, then drop what the client still sends until it closes too (bounded)."""
        if not self.writer.can_write_eof():
            return
        self.writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_TIMEOUT
        dropped = 0
        while dropped < LINGER_BYTES:
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), max(0.0, deadline - loop.time()))
            if not data:
                return
            self.gateway.metrics.bytes_in += len(data)
            dropped += len(data)

    async def _close(self) -> None:
        writer = self.writer
        if not writer.transport.is_closing():
            writer.close()
        with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1)
        writer.transport.abort()

    async def _next_request(self) -> Request | None:
        """The next whole request; None when the client closed or stayed idle too long."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            req = self.http.next_request()
            if isinstance(req, Request):
                self.gateway.metrics.requests += 1
                return req
            if req is Pending.CLOSED:
                return None
            await self.flush()  # a 100 Continue
            if self.http.idle:
                timeout = self.gateway.idle_timeout
                self.gateway._idle.setdefault(self)  # evictable until a byte comes
            else:
                if deadline is None:
                    deadline = loop.time() + self.gateway.request_timeout
                timeout = deadline - loop.time()
            try:
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), max(timeout, 0))
            except asyncio.TimeoutError:
                if self.http.idle:
                    log.debug("%s: idle for %g s; closing", self.name, self.gateway.idle_timeout)
                    return None
                limit = self.gateway.request_timeout
                raise HttpError(
                    408, f"request not received within {limit:g} s", reason=RefusalReason.REQUEST_TIMEOUT
                ) from None
            finally:
                self.gateway._idle.pop(self, None)
            self.gateway.metrics.bytes_in += len(data)
            self.http.receive_data(data)

    async def _exchange(self, req: Request) -> bool:
        """Answer ``req`` while watching the connection; False when the client went away."""
        answer = asyncio.ensure_future(self.gateway.handle(req, self))
        if await race(answer, self._watch()) is not answer:
            log.info("%s: client went away mid-answer; cancelling the request", self.name)
        if answer.cancelled():
            return False
        exc = answer.exception()
        if exc is None:
            return True
        if isinstance(exc, (ConnectionError, OSError, asyncio.TimeoutError)):
            log.info("%s: could not answer: %s", self.name, exc or type(exc).__name__)
            return False
        log.error("%s: %s %s failed", self.name, req.method, req.path, exc_info=exc)
        if self.http.can_respond:
            err = ApiError(500, "The gateway failed to answer.", api.SERVER_ERROR)
            with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
                await self.send_error(err, close=True)
        return False

    async def _watch(self) -> None:
        """Returns when the client closes or drops the connection; pipelined bytes go to the core."""
        buffered = 0
        try:
            while buffered < PIPELINE_LIMIT:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    return
                self.gateway.metrics.bytes_in += len(data)
                self.http.receive_data(data)
                buffered += len(data)
        except (ConnectionError, OSError):
            return
        await asyncio.get_running_loop().create_future()  # read ahead enough: wait for the answer

    # ---- writing ----

    async def flush(self) -> None:
        """Write what the core produced; wait (bounded) while the client is slow to take it."""
        data = self.http.data_to_send()
        if not data:
            return
        transport = self.writer.transport
        if transport.is_closing():
            raise ConnectionResetError("client connection closed")
        self.writer.write(data)
        if transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
            await asyncio.wait_for(self.writer.drain(), self.gateway.write_timeout)

    async def send_empty(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.http.respond(status, headers, b"")
        await self.flush()

    async def send_json(self, status: int, obj: Any) -> None:
        self.http.respond(status, JSON_HEADERS, api.dumps(obj))
        await self.flush()

    async def send_error(self, err: ApiError, *, close: bool = False, ollama: bool = False) -> None:
        """``err`` as OpenAI's error object, or Ollama's (``{"error": "..."}``) with ``ollama``."""
        if not self.http.can_respond:  # the answer had started: nothing to say but to close
            self.http.close_after_response()
            return
        body = api.ollama_error(err) if ollama else err.body()
        self.http.respond(err.status, JSON_HEADERS, body, close=close)
        await self.flush()
