"""An OpenAI-compatible HTTP/1.1 server for tests (stdlib asyncio only).

It serves what a MimirLLM node asks of its backend, in the exact shapes the OpenAI API uses:

- ``GET /v1/models`` and ``GET /v1/models/{id}``;
- Ollama's ``GET /api/tags`` (``{"models": [{"name", "model", "modified_at", "size", "digest", "details"}]}``)
  and ``DELETE /api/delete`` (``{"model": name}``: removes it from ``models``, 200 with an empty body;
  recorded in ``deleted_models``), so a latest-generation MimirLLM node can stand in front of it;
- ``POST /v1/chat/completions``: with ``"stream": true`` a ``text/event-stream`` of
  ``data: {chat.completion.chunk}\\n\\n`` events (chunked transfer encoding), the first chunk with
  ``delta: {"role": "assistant", "content": ""}``, one chunk per token, a last chunk with an empty
  delta and a ``finish_reason``, then ``data: [DONE]\\n\\n``; otherwise one ``chat.completion`` JSON.
- ``POST /v1/embeddings`` (OpenAI's list of ``embedding`` objects), Ollama's ``POST /api/embed``
  (``{"embeddings": [...]}``) and ``POST /api/embeddings`` (``{"embedding": [...]}``): deterministic
  vectors, :func:`embedding` of each text (``dimensions`` long when asked, else 8);
- ``POST /v1/completions``: a legacy ``text_completion`` answered like a chat (the prompt echoed token
  by token), streamed as SSE with ``"stream": true``;
- Errors as OpenAI sends them: ``{"error": {"message", "type", "param", "code"}}`` (unknown model: 404
  ``model_not_found``; wrong key when ``api_key`` is set: 401 ``invalid_api_key``).

The answer is deterministic: by default the last user message echoed token by token
(``"hello big world"`` streams ``"hello"``, ``" big"``, ``" world"``); ``reply`` can be a string
(split the same way), a list of exact token strings, or a callable ``(request_json) -> str | list[str]``.
``max_tokens`` / ``max_completion_tokens`` cut the answer to that many tokens with ``finish_reason``
``"length"``. ``stream_options: {"include_usage": true}`` adds the usage chunk like OpenAI.

Fault modes are plain attributes, settable at any time (they apply to the next request):

- ``fail_status`` (e.g. 500) with ``fail_count`` (``None``: every request; ``n``: the next n requests,
  after which both reset to ``None``) and optional ``fail_message``;
- ``die_after_chunks = k``: a streamed answer stops after k SSE events (the role chunk counts) and the
  connection is closed without ending the chunked body (the client sees a truncated stream);
  ``die_grace`` (default 0.05 s) is the pause between the last event sent and the close;
- ``hang = True``: requests are read and recorded, then never answered until the client or the
  server closes the connection;
- ``delay``: seconds to wait before each streamed event (slow backend); ``first_chunk_delay``
  before the first one only.

What the server saw:

- ``requests``: every request as a :class:`RecordedRequest` (method, path, lowercase headers, raw body,
  parsed ``json``); ``chat_requests`` is the JSON bodies of the chat completion requests;
  ``models_requests`` counts the model list requests (``GET /v1/models``);
- ``sent_chunks``: for each streamed answer, the chunk objects actually written, in order;
- ``streams_started`` / ``streams_completed`` / ``streams_cancelled`` (the client went away
  mid-answer) / ``streams_killed`` (``die_after_chunks``) and ``open_streams``; the
  ``stream_cancelled`` event is set at the first cancelled stream;
- ``connections_total`` / ``open_connections``, ``hanging`` (requests held by ``hang`` right now);
- ``await srv.wait_until(lambda: ..., timeout)`` waits until a condition on these holds.

``models`` can be changed at any time (the next ``GET /v1/models`` lists the new ones); :meth:`close`
then :meth:`start` stops the server (connections refused, as a backend that went away) and starts it
again on the same port.

Use::

    async with OpenAIServer(models=["llama3.2:latest"]) as srv:
        client = openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        ...

As pytest fixtures (in a conftest; the server module itself does not import pytest)::

    @pytest.fixture
    async def openai_server() -> AsyncIterator[OpenAIServer]:
        async with OpenAIServer(models=["llama3.2:latest"]) as srv:
            yield srv

    @pytest.fixture
    async def openai_server_factory() -> AsyncIterator[Callable[..., Awaitable[OpenAIServer]]]:
        async with contextlib.AsyncExitStack() as stack:
            async def make(**kwargs: Any) -> OpenAIServer:
                return await stack.enter_async_context(OpenAIServer(**kwargs))
            yield make
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http
import itertools
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = ["DEFAULT_MODEL", "OpenAIServer", "RecordedRequest", "tokenize"]

DEFAULT_MODEL = "llama3.2:latest"

_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024
_READ_SIZE = 65536


def tokenize(text: str) -> list[str]:
    """Split text into word tokens that join back to it: ``"a b"`` -> ``["a", " b"]``."""
    return re.findall(r"\s*\S+|\s+$", text)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _content_text(content: Any) -> str:
    """The text of a message's content: a string, or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


@dataclass
class RecordedRequest:
    """One HTTP request as the server received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    json: Any = None

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    buf: bytearray = field(default_factory=bytearray)
    eof: bool = False

    async def fill(self) -> bool:
        """Read more bytes into the buffer; False at EOF."""
        if self.eof:
            return False
        try:
            data = await self.reader.read(_READ_SIZE)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    async def read_until(self, sep: bytes, limit: int) -> bytes | None:
        """Bytes up to and including sep; None at a clean EOF before any byte."""
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                end = i + len(sep)
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            if len(self.buf) > limit:
                raise _BadRequest(431, "request head too large")
            start = max(0, len(self.buf) - len(sep) + 1)
            if not await self.fill():
                if self.buf:
                    raise _BadRequest(400, "connection closed inside a request")
                return None

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self.fill():
                raise _BadRequest(400, "connection closed inside a request body")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class OpenAIServer:
    """OpenAI-compatible HTTP/1.1 server on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        models: Iterable[str] = (DEFAULT_MODEL,),
        *,
        reply: str | Sequence[str] | Callable[[dict[str, Any]], str | Sequence[str]] | None = None,
        owned_by: str = "library",
        created: int | None = None,
        system_fingerprint: str | None = "fp_mimirlite",
        api_key: str | None = None,
        fail_status: int | None = None,
        fail_count: int | None = None,
        fail_message: str | None = None,
        die_after_chunks: int | None = None,
        die_grace: float = 0.05,
        hang: bool = False,
        delay: float = 0.0,
        first_chunk_delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.models: list[str] = list(models)
        self.reply = reply
        self.owned_by = owned_by
        self.created = int(time.time()) if created is None else created
        self.system_fingerprint = system_fingerprint
        self.api_key = api_key
        self.fail_status = fail_status
        self.fail_count = fail_count
        self.fail_message = fail_message
        self.die_after_chunks = die_after_chunks
        self.die_grace = die_grace
        self.hang = hang
        self.delay = delay
        self.first_chunk_delay = first_chunk_delay
        self.host = host
        self.port = port

        self.requests: list[RecordedRequest] = []
        self.deleted_models: list[str] = []
        self.sent_chunks: list[list[dict[str, Any]]] = []
        self.streams_started = 0
        self.streams_completed = 0
        self.streams_cancelled = 0
        self.streams_killed = 0
        self.connections_total = 0
        self.hanging = 0
        self.stream_cancelled = asyncio.Event()

        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], _Conn] = {}
        self._closing = asyncio.Event()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, the OpenAI SDKs' ``base_url`` / ``baseURL``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no /v1)."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> OpenAIServer:
        """Listen (again, after :meth:`close`: on the same port, its records kept, as a backend restarts)."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._closing.clear()
        self._server = await asyncio.start_server(self._on_connect, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening, close every connection, end every task. Idempotent."""
        self._closing.set()
        server, self._server = self._server, None
        if server is not None:
            server.close()
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

    async def __aenter__(self) -> OpenAIServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ observations

    @property
    def chat_requests(self) -> list[Any]:
        """JSON bodies of the chat completion requests received, in order."""
        return [r.json for r in self.requests if r.method == "POST" and r.path.endswith("/chat/completions")]

    @property
    def models_requests(self) -> int:
        """How many model list requests (``GET /v1/models``, as a backend checks what it serves) came."""
        paths = ("/v1/models", "/models")
        return sum(1 for r in self.requests if r.method == "GET" and r.path.rstrip("/") in paths)

    @property
    def open_streams(self) -> int:
        return self.streams_started - self.streams_completed - self.streams_cancelled - self.streams_killed

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds (checked at each change of the server's state)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            event = self._changed
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"condition not met after {timeout} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, 0.5))

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    # ------------------------------------------------------------------ connections

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing.is_set():
            writer.transport.abort()
            return
        conn = _Conn(reader, writer)
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self._conns[task] = conn
        self.connections_total += 1
        task.add_done_callback(self._conn_done)
        self._notify()

    def _conn_done(self, task: asyncio.Task[None]) -> None:
        conn = self._conns.pop(task, None)
        if conn is not None:
            conn.writer.transport.abort()
        self._notify()

    async def _serve(self, conn: _Conn) -> None:
        try:
            while True:
                try:
                    keep_alive = await self._one_request(conn)
                except _BadRequest as exc:
                    with contextlib.suppress(ConnectionError, OSError):
                        await self._send_error(conn, exc.status, str(exc), keep_alive=False)
                    return
                if not keep_alive:
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            # the done callback aborts anything left; a plain close flushes what was written
            writer = conn.writer
            if not writer.transport.is_closing():
                writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def _one_request(self, conn: _Conn) -> bool:
        """Read and answer one request; True to keep the connection for another."""
        head = await conn.read_until(b"\r\n\r\n", _MAX_HEAD)
        if head is None:
            return False
        lines = head[:-4].decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            raise _BadRequest(400, "bad request line") from None
        if not version.startswith("HTTP/1."):
            raise _BadRequest(400, "unsupported HTTP version")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(400, "bad header line")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
        if headers.get("expect", "").lower() == "100-continue":
            conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._read_body(conn, headers)
        path, _, query = target.partition("?")
        parsed: Any = None
        if body and "json" in headers.get("content-type", "application/json"):
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        req = RecordedRequest(method, path, query, headers, body, parsed)
        self.requests.append(req)
        self._notify()
        return await self._dispatch(conn, req, keep_alive)

    async def _read_body(self, conn: _Conn, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            total = 0
            while True:
                size_line = await conn.read_until(b"\r\n", _MAX_HEAD)
                if size_line is None:
                    raise _BadRequest(400, "connection closed inside a chunked body")
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _BadRequest(400, "bad chunk size") from None
                if size == 0:
                    while await conn.read_until(b"\r\n", _MAX_HEAD) not in (b"\r\n", None):
                        pass
                    return b"".join(parts)
                total += size
                if total > _MAX_BODY:
                    raise _BadRequest(413, "request body too large")
                parts.append(await conn.read_exactly(size))
                await conn.read_exactly(2)
        length = headers.get("content-length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise _BadRequest(400, "bad content-length") from None
        if n < 0 or n > _MAX_BODY:
            raise _BadRequest(413, "request body too large")
        return await conn.read_exactly(n)

    # ------------------------------------------------------------------ routing

    async def _dispatch(self, conn: _Conn, req: RecordedRequest, keep_alive: bool) -> bool:
        if self.hang:
            await self._hang(conn)
            return False
        if self.fail_status is not None and (self.fail_count is None or self.fail_count > 0):
            status = self.fail_status
            if self.fail_count is not None:
                self.fail_count -= 1
                if self.fail_count <= 0:
                    self.fail_status = None
                    self.fail_count = None
            await self._send_error(conn, status, self.fail_message, keep_alive=keep_alive)
            return keep_alive
        if self.api_key is not None and req.headers.get("authorization") != f"Bearer {self.api_key}":
            await self._send_error(
                conn,
                401,
                "Incorrect API key provided.",
                code="invalid_api_key",
                keep_alive=keep_alive,
            )
            return keep_alive

        path = req.path.rstrip("/")
        if path in ("/v1/models", "/models"):
            if req.method != "GET":
                return await self._method_not_allowed(conn, req, keep_alive)
            data = [self._model_object(m) for m in self.models]
            await self._send_json(conn, 200, {"object": "list", "data": data}, keep_alive=keep_alive)
            return keep_alive
        for prefix in ("/v1/models/", "/models/"):
            if path.startswith(prefix):
                if req.method != "GET":
                    return await self._method_not_allowed(conn, req, keep_alive)
                model = path[len(prefix) :]
                if model not in self.models:
                    await self._model_not_found(conn, model, keep_alive)
                else:
                    await self._send_json(conn, 200, self._model_object(model), keep_alive=keep_alive)
                return keep_alive
        if path in ("/v1/chat/completions", "/chat/completions"):
            if req.method != "POST":
                return await self._method_not_allowed(conn, req, keep_alive)
            return await self._chat(conn, req, keep_alive)
        if path in ("/v1/embeddings", "/embeddings", "/api/embed", "/api/embeddings"):
            if req.method != "POST":
                return await self._method_not_allowed(conn, req, keep_alive)
            return await self._embeddings(conn, req, path, keep_alive)
        if path in ("/v1/completions", "/completions"):
            if req.method != "POST":
                return await self._method_not_allowed(conn, req, keep_alive)
            return await self._completion(conn, req, keep_alive)
        if path == "/api/tags":
            if req.method != "GET":
                return await self._method_not_allowed(conn, req, keep_alive)
            tags = {"models": [self._tag_object(m) for m in self.models]}
            await self._send_json(conn, 200, tags, keep_alive=keep_alive)
            return keep_alive
        if path == "/api/delete":
            if req.method != "DELETE":
                return await self._method_not_allowed(conn, req, keep_alive)
            return await self._delete_model(conn, req, keep_alive)
        await self._send_error(
            conn,
            404,
            f"Unknown request URL: {req.method} {req.path}.",
            code="unknown_url",
            keep_alive=keep_alive,
        )
        return keep_alive

    async def _method_not_allowed(self, conn: _Conn, req: RecordedRequest, keep_alive: bool) -> bool:
        await self._send_error(
            conn, 405, f"Method {req.method} not allowed for {req.path}.", keep_alive=keep_alive
        )
        return keep_alive

    async def _model_not_found(self, conn: _Conn, model: str, keep_alive: bool) -> None:
        await self._send_error(
            conn,
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
            keep_alive=keep_alive,
        )

    def _model_object(self, model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": self.created, "owned_by": self.owned_by}

    def _tag_object(self, model: str) -> dict[str, Any]:
        """One entry of Ollama's ``GET /api/tags`` list."""
        digest = hashlib.sha256(model.encode()).hexdigest()
        family = model.split(":", 1)[0]
        return {
            "name": model,
            "model": model,
            "modified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "size": 1_000_000,
            "digest": digest,
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": family,
                "families": [family],
                "parameter_size": "1B",
                "quantization_level": "Q4_K_M",
            },
        }

    async def _delete_model(self, conn: _Conn, req: RecordedRequest, keep_alive: bool) -> bool:
        """Ollama's ``DELETE /api/delete {"model": name}``: the model is gone (200, empty body); else 404."""
        body = req.json if isinstance(req.json, dict) else {}
        model = body.get("model", body.get("name"))
        if not isinstance(model, str) or model not in self.models:
            await self._send_json(conn, 404, {"error": f"model '{model}' not found"}, keep_alive=keep_alive)
            return keep_alive
        self.models.remove(model)
        self.deleted_models.append(model)
        self._notify()
        head = self._head(200, [("Content-Length", "0")], keep_alive)
        conn.writer.write(head)
        await conn.writer.drain()
        return keep_alive

    async def _hang(self, conn: _Conn) -> None:
        """Hold the request unanswered until the client leaves or the server closes."""
        self.hanging += 1
        self._notify()
        try:
            while await conn.fill():
                pass
        finally:
            self.hanging -= 1
            self._notify()

    # ------------------------------------------------------------------ embeddings, completions

    async def _embeddings(self, conn: _Conn, req: RecordedRequest, path: str, keep_alive: bool) -> bool:
        """OpenAI's ``/v1/embeddings`` and Ollama's ``/api/embed`` / ``/api/embeddings``, each in its own
        shape, with :func:`embedding` vectors (``dimensions`` long, default :data:`EMBEDDING_DIMENSIONS`)."""
        body = req.json if isinstance(req.json, dict) else {}
        model = body.get("model")
        ollama = path.startswith("/api/")
        if not isinstance(model, str) or model not in self.models:
            if ollama:
                await self._send_json(
                    conn, 404, {"error": f"model '{model}' not found"}, keep_alive=keep_alive
                )
            else:
                await self._model_not_found(conn, str(model), keep_alive)
            return keep_alive
        size = body.get("dimensions")
        size = size if isinstance(size, int) and 0 < size <= 4096 else EMBEDDING_DIMENSIONS
        if path == "/api/embeddings":
            vector = embedding(str(body.get("prompt", "")), size)
            await self._send_json(conn, 200, {"embedding": vector}, keep_alive=keep_alive)
            return keep_alive
        raw = body.get("input", "")
        texts = [raw] if isinstance(raw, str) else [t if isinstance(t, str) else _dumps(t) for t in raw]
        vectors = [embedding(t, size) for t in texts]
        tokens = sum(len(tokenize(t)) for t in texts)
        if ollama:
            answer: dict[str, Any] = {"model": model, "embeddings": vectors, "prompt_eval_count": tokens}
        else:
            data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
            usage = {"prompt_tokens": tokens, "total_tokens": tokens}
            answer = {"object": "list", "data": data, "model": model, "usage": usage}
        await self._send_json(conn, 200, answer, keep_alive=keep_alive)
        return keep_alive

    async def _completion(self, conn: _Conn, req: RecordedRequest, keep_alive: bool) -> bool:
        """A legacy ``text_completion``: the prompt echoed token by token (as :meth:`_chat` answers the last
        user message, ``reply`` and ``max_tokens`` included); streamed as SSE with ``"stream": true``."""
        body = req.json if isinstance(req.json, dict) else {}
        model = body.get("model")
        if not isinstance(model, str) or model not in self.models:
            await self._model_not_found(conn, str(model), keep_alive)
            return keep_alive
        prompt = body.get("prompt", "")
        prompt = prompt if isinstance(prompt, str) else " ".join(str(p) for p in prompt)
        tokens = self._answer_tokens({**body, "messages": [{"role": "user", "content": prompt}]})
        finish_reason = "stop"
        limit = body.get("max_tokens")
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < len(tokens):
            tokens, finish_reason = tokens[:limit], "length"
        completion_id = f"cmpl-mimirlite{next(self._ids):06d}"

        def piece(text: str, reason: str | None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": self.created,
                "model": model,
                "system_fingerprint": self.system_fingerprint,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
            }

        if body.get("stream") is True:
            chunks = [piece(t, None) for t in tokens] + [piece("", finish_reason)]
            return await self._send_stream(conn, chunks, keep_alive)
        answer = piece("".join(tokens), finish_reason)
        n = len(tokenize(prompt))
        answer["usage"] = {
            "prompt_tokens": n,
            "completion_tokens": len(tokens),
            "total_tokens": n + len(tokens),
        }
        await self._send_json(conn, 200, answer, keep_alive=keep_alive)
        return keep_alive

    # ------------------------------------------------------------------ chat completions

    def _answer_tokens(self, body: dict[str, Any]) -> list[str]:
        reply = self.reply
        if callable(reply):
            reply = reply(body)
        if reply is None:
            text = ""
            for msg in reversed(body.get("messages") or []):
                if isinstance(msg, dict) and msg.get("role") == "user":
                    text = _content_text(msg.get("content"))
                    break
            return tokenize(text)
        if isinstance(reply, str):
            return tokenize(reply)
        return [str(t) for t in reply]

    async def _chat(self, conn: _Conn, req: RecordedRequest, keep_alive: bool) -> bool:
        body = req.json
        if not isinstance(body, dict):
            await self._send_error(
                conn, 400, "We could not parse the JSON body of your request.", keep_alive=keep_alive
            )
            return keep_alive
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            await self._send_error(
                conn, 400, "'messages' is a required property", param="messages", keep_alive=keep_alive
            )
            return keep_alive
        model = body.get("model")
        if not isinstance(model, str) or not model:
            await self._send_error(
                conn, 400, "you must provide a model parameter", param="model", keep_alive=keep_alive
            )
            return keep_alive
        if model not in self.models:
            await self._model_not_found(conn, model, keep_alive)
            return keep_alive

        tokens = self._answer_tokens(body)
        finish_reason = "stop"
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < len(tokens):
            tokens = tokens[:limit]
            finish_reason = "length"
        prompt_tokens = sum(
            len(tokenize(_content_text(m.get("content")))) for m in messages if isinstance(m, dict)
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        completion_id = f"chatcmpl-mimirlite{next(self._ids):06d}"

        if body.get("stream") is True:
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
            chunks = self._stream_chunks(completion_id, model, tokens, finish_reason, usage, include_usage)
            return await self._send_stream(conn, chunks, keep_alive)

        completion = {
            "id": completion_id,
            "object": "chat.completion",
            "created": self.created,
            "model": model,
            "system_fingerprint": self.system_fingerprint,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(tokens), "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        }
        await self._send_json(conn, 200, completion, keep_alive=keep_alive)
        return keep_alive

    def _stream_chunks(
        self,
        completion_id: str,
        model: str,
        tokens: list[str],
        finish_reason: str,
        usage: dict[str, int],
        include_usage: bool,
    ) -> list[dict[str, Any]]:
        def chunk(delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
            c: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": model,
                "system_fingerprint": self.system_fingerprint,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
            }
            if include_usage:
                c["usage"] = None
            return c

        out = [chunk({"role": "assistant", "content": ""}, None)]
        out += [chunk({"content": t}, None) for t in tokens]
        out.append(chunk({}, finish_reason))
        if include_usage:
            out.append(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": model,
                    "system_fingerprint": self.system_fingerprint,
                    "choices": [],
                    "usage": usage,
                }
            )
        return out

    async def _send_stream(self, conn: _Conn, chunks: list[dict[str, Any]], keep_alive: bool) -> bool:
        """Stream chunks as SSE; False when the connection cannot be reused afterwards."""
        writer = conn.writer
        head = self._head(
            200,
            [
                ("Content-Type", "text/event-stream; charset=utf-8"),
                ("Transfer-Encoding", "chunked"),
                ("Cache-Control", "no-cache"),
            ],
            keep_alive,
        )
        sent: list[dict[str, Any]] = []
        self.sent_chunks.append(sent)
        self.streams_started += 1
        self._notify()
        # While we stream, the client sends nothing: a read returning EOF means it went away.
        watcher = asyncio.ensure_future(self._watch_eof(conn))
        outcome = "cancelled"
        try:
            writer.write(head)
            await writer.drain()
            die_after = self.die_after_chunks
            for i, c in enumerate(chunks):
                if die_after is not None and i >= die_after:
                    # let the client take in what was sent before the connection goes: some
                    # clients drop bytes they had not read yet when they see the close
                    if self.die_grace > 0:
                        await asyncio.wait([watcher], timeout=self.die_grace)
                    outcome = "killed"
                    return False
                pause = self.delay + (self.first_chunk_delay if i == 0 else 0.0)
                if pause > 0:
                    await asyncio.wait([watcher], timeout=pause)
                if watcher.done():
                    return False
                writer.write(_http_chunk(f"data: {_dumps(c)}\n\n".encode()))
                await writer.drain()
                sent.append(c)
                self._notify()
            writer.write(_http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
            outcome = "completed"
            return keep_alive and not watcher.done()
        except (ConnectionError, OSError):
            return False
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if outcome == "completed":
                self.streams_completed += 1
            elif outcome == "killed":
                self.streams_killed += 1
                writer.close()
            else:
                self.streams_cancelled += 1
                self.stream_cancelled.set()
            self._notify()

    async def _watch_eof(self, conn: _Conn) -> None:
        while await conn.fill():
            pass

    # ------------------------------------------------------------------ responses

    def _head(self, status: int, headers: list[tuple[str, str]], keep_alive: bool) -> bytes:
        phrase = http.HTTPStatus(status).phrase if status in http.HTTPStatus._value2member_map_ else ""
        lines = [f"HTTP/1.1 {status} {phrase}"]
        lines += [f"{k}: {v}" for k, v in headers]
        lines.append(f"x-request-id: req_mimirlite{len(self.requests):06d}")
        lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send_json(self, conn: _Conn, status: int, obj: Any, *, keep_alive: bool) -> None:
        body = _dumps(obj).encode()
        head = self._head(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], keep_alive
        )
        conn.writer.write(head + body)
        await conn.writer.drain()

    async def _send_error(
        self,
        conn: _Conn,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
        keep_alive: bool,
    ) -> None:
        err_type, default_code, default_message = _ERRORS.get(
            status,
            ("server_error" if status >= 500 else "invalid_request_error", None, None),
        )
        if message is None:
            message = default_message or f"Error {status}"
        error = {
            "message": message,
            "type": err_type,
            "param": param,
            "code": code if code is not None else default_code,
        }
        await self._send_json(conn, status, {"error": error}, keep_alive=keep_alive)


_ERRORS: dict[int, tuple[str, str | None, str | None]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Request not allowed."),
    404: ("invalid_request_error", None, "Not found."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


EMBEDDING_DIMENSIONS = 8
"""Length of the vectors answered unless ``dimensions`` asks otherwise."""


def embedding(text: str, size: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The deterministic vector answered for ``text``: bytes of its SHA-256 chain, each as ``b / 255``."""
    out: list[float] = []
    seed = text.encode()
    while len(out) < size:
        seed = hashlib.sha256(seed).digest()
        out += [round(b / 255, 6) for b in seed]
    return out[:size]


def _http_chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"
