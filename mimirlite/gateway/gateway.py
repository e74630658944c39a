"""The asyncio shell of the gateway: an HTTP/1.1 server whose answers come from the mimir network.

Each client connection is one task driving a :class:`~mimirlite.gateway.http.ServerConnection`: it reads
with the idle and request timeouts, routes each whole request, writes what the core produces. While a
request is answered, the connection is also watched: a client that goes away cancels the answer, and
with it the mimir stream (reset, so the node cancels its backend request).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from mimirlite.errors import MimirliteError
from mimirlite.gateway import api
from mimirlite.gateway.api import ApiError
from mimirlite.gateway.http import MAX_BODY, CorsPolicy, HttpError, Pending, Request, ServerConnection
from mimirlite.mimir.client import MimirClient, NoNodeError, TruncatedAnswerError
from mimirlite.mimir.packets import RemoteError

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionChunk

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
IDLE_TIMEOUT = 60.0
"""Seconds a keep-alive connection may wait for its next request before it is closed."""
REQUEST_TIMEOUT = 30.0
"""Seconds a client has to send a whole request (head and body) once its first byte arrived; 408 after."""
WRITE_TIMEOUT = 60.0
"""Seconds a client that stopped reading has to take what is buffered for it before it is dropped."""
MAX_CONNECTIONS = 4096
"""HTTP connections at once; a newer one is answered 503 and closed."""
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

_UPSTREAM_ERRORS = (MimirliteError, OSError, asyncio.TimeoutError)
"""What a chat on the network raises when it fails (MimirClient.chat's contract)."""

SSE_HEADERS = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
)
JSON_HEADERS = (("content-type", "application/json"),)


class Gateway:
    """Serves the mimir network known to ``client`` as an OpenAI-compatible HTTP API.

    ``async with Gateway(client, port=0) as gateway`` listens (``gateway.port``, ``gateway.base_url``)
    until the block ends; :meth:`serve` listens until cancelled. The client (found nodes by ``peers``
    and mDNS) is the caller's to start and stop. With ``api_key`` every request needs
    ``Authorization: Bearer <api_key>``. ``cors_origins`` (``scheme://host[:port]``, or ``*`` for any)
    lets browser pages from those origins call the API: preflights (``OPTIONS``, answered without the
    key) and CORS headers on every response; LocalError for a value that is not an origin.
    """

    def __init__(
        self,
        client: MimirClient,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        api_key: str | None = None,
        cors_origins: Iterable[str] = (),
        max_body: int = MAX_BODY,
        idle_timeout: float = IDLE_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.client = client
        self.host = host
        self.port = port
        self.api_key = api_key or None
        origins = list(cors_origins)
        self.cors = CorsPolicy.of(origins) if origins else None
        """Which browser origins may call the API (None: no CORS, as for any plain HTTP server)."""
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.max_connections = max_connections
        self.created = int(time.time())
        """The ``created`` time of every model listed."""
        self.active_requests = 0
        """Requests being answered right now."""
        self._server: asyncio.AbstractServer | None = None
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

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
        return len(self._conns)

    async def start(self) -> None:
        """Listen on ``host``:``port`` (``port`` 0: a free one, then set here)."""
        if self._server is not None:
            raise RuntimeError("gateway already started")
        self._server = await asyncio.start_server(self._on_connect, self.host, self.port, backlog=BACKLOG)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("OpenAI-compatible gateway at %s", self.base_url)

    async def stop(self) -> None:
        """Stop listening and end every connection (cancelling the answers in progress). Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._conns)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for writer in list(self._conns.values()):
            writer.transport.abort()
        if server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def serve(self) -> None:
        """Listen until cancelled."""
        async with self:
            await asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ---- connections ----

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None or len(self._conns) >= self.max_connections:
            http = ServerConnection(cors=self.cors)
            err = ApiError(503, "Too many connections to the gateway; try again later.", api.SERVER_ERROR)
            http.respond(err.status, JSON_HEADERS, err.body(), close=True)
            writer.write(http.data_to_send())
            writer.close()
            return
        conn = _Connection(self, reader, writer)
        task = asyncio.get_running_loop().create_task(conn.run())
        self._conns[task] = writer
        task.add_done_callback(self._conn_done)

    def _conn_done(self, task: asyncio.Task[None]) -> None:
        writer = self._conns.pop(task, None)
        if writer is not None and not writer.transport.is_closing():
            writer.transport.abort()
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway connection failed", exc_info=task.exception())

    # ---- routing ----

    async def handle(self, req: Request, out: _Connection) -> None:
        """Answer one request (on ``out``)."""
        self.active_requests += 1
        try:
            if self.cors is not None and req.method == "OPTIONS":  # a preflight: browsers send no key
                await out.send_empty(204, self.cors.preflight_headers(req))
                return
            self._check_auth(req)
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
                if not self.client.nodes_for(model):
                    raise api.model_not_found(model)
                await out.send_json(200, api.model_object(model, self.created))
            else:
                raise ApiError(404, f"Unknown request URL: {req.method} {req.path}.", code="unknown_url")
        except ApiError as err:
            await out.send_error(err)
        finally:
            self.active_requests -= 1

    def _check_auth(self, req: Request) -> None:
        if self.api_key is None:
            return
        given = req.header("authorization") or ""
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            message = "Incorrect API key provided." if given else "You didn't provide an API key."
            raise ApiError(401, message, code="invalid_api_key")

    # ---- chat ----

    async def _chat(self, req: Request, out: _Connection) -> None:
        call = api.parse_chat_body(req.body)
        if not self.client.nodes:
            raise ApiError(503, "No mimir node is reachable.", api.SERVER_ERROR, code="no_node")
        if not self.client.nodes_for(call.model):
            raise api.model_not_found(call.model)
        try:  # an async generator (its annotation says AsyncIterator): closing it resets the mimir stream
            chunks = cast(
                "AsyncGenerator[ChatCompletionChunk, None]",
                self.client.chat(call.messages, model=call.model, **call.params),
            )
        except TypeError as exc:  # a field named like an argument of chat()
            raise ApiError(400, f"Unsupported request field: {exc}") from None
        async with contextlib.aclosing(chunks):
            if call.stream:
                await self._stream(chunks, out)
            else:
                await self._complete(chunks, out)
        log.info("%s %s %s stream=%s", req.method, req.path, call.model, call.stream)

    async def _stream(self, chunks: AsyncIterator[ChatCompletionChunk], out: _Connection) -> None:
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
        http.send_data(api.sse_event(first.model_dump_json(exclude_unset=True).encode()))
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
            http.send_data(api.sse_event(chunk.model_dump_json(exclude_unset=True).encode()))
            await out.flush()
        http.send_data(api.SSE_DONE)
        http.end_response()
        await out.flush()

    async def _complete(self, chunks: AsyncIterator[ChatCompletionChunk], out: _Connection) -> None:
        """One ``chat.completion`` assembled from the streamed chunks."""
        builder = api.CompletionBuilder()
        try:
            async for chunk in chunks:
                builder.add(chunk.model_dump(mode="json", exclude_unset=True))
        except _UPSTREAM_ERRORS as exc:
            raise _upstream_error(exc) from None
        await out.send_json(200, builder.result())


def _allow(req: Request, *methods: str) -> None:
    if req.method not in methods:
        raise ApiError(405, f"Method {req.method} is not allowed on {req.path}.", code="method_not_allowed")


def _upstream_error(exc: BaseException) -> ApiError:
    """The HTTP error for a failed chat on the network."""
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

    def __init__(self, gateway: Gateway, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.gateway = gateway
        self.reader = reader
        self.writer = writer
        self.http = ServerConnection(max_body=gateway.max_body, cors=gateway.cors)
        peer = writer.get_extra_info("peername")
        self.name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "client"

    async def run(self) -> None:
        try:
            while True:
                req = await self._next_request()
                if req is None or not await self._exchange(req) or not self.http.start_next_cycle():
                    return
        except HttpError as exc:
            log.info("%s: %s", self.name, exc)
            if self.http.can_respond:
                err = ApiError(exc.status, exc.message)
                with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
                    await self.send_error(err, close=True)
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
                return req
            if req is Pending.CLOSED:
                return None
            await self.flush()  # a 100 Continue
            if self.http.idle:
                timeout = self.gateway.idle_timeout
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
                raise HttpError(408, f"request not received within {limit:g} s") from None
            self.http.receive_data(data)

    async def _exchange(self, req: Request) -> bool:
        """Answer ``req`` while watching the connection; False when the client went away."""
        answer = asyncio.ensure_future(self.gateway.handle(req, self))
        watch = asyncio.ensure_future(self._watch())
        try:
            await asyncio.wait((answer, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not answer.done():
                if watch.done():
                    log.info("%s: client went away mid-answer; cancelling the request", self.name)
                answer.cancel()
            watch.cancel()
            await asyncio.wait((answer, watch))
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

    async def send_error(self, err: ApiError, *, close: bool = False) -> None:
        if not self.http.can_respond:  # the answer had started: nothing to say but to close
            self.http.close_after_response()
            return
        self.http.respond(err.status, JSON_HEADERS, err.body(), close=close)
        await self.flush()
