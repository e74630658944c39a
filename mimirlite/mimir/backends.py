"""Where answers come from: any OpenAI-compatible server (over ``httpx``, its event stream read by
:mod:`mimirlite.mimir.sse`), or ``echo``.

A backend lists the models it serves and streams chat completion chunks as plain dicts, shaped
exactly as the OpenAI API streams them (``object: "chat.completion.chunk"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mimirlite.errors import LocalError, MimirliteError
from mimirlite.mimir import packets
from mimirlite.mimir.chunks import loads_event
from mimirlite.mimir.packets import PacketError
from mimirlite.mimir.params import ALLOWED, MAX_NAME
from mimirlite.mimir.sse import SSEDecoder, SSEError

if TYPE_CHECKING:
    from mimirlite.mimir import http

log = logging.getLogger(__name__)

FALLBACK_BASE_URL = "http://localhost:11434/v1"
"""Ollama's OpenAI-compatible endpoint on this machine."""
ECHO_MODEL = "echo"


class BackendError(MimirliteError):
    """The backend could not answer; ``type`` is the completionStop error type sent to the client."""

    def __init__(self, type: str, message: str) -> None:
        super().__init__(message)
        self.type = type


@dataclass(frozen=True)
class HttpHead:
    """The status and headers of a backend's HTTP answer (what :meth:`Backend.forward` yields first)."""

    status: int
    headers: list[tuple[str, str]]
    """As the backend sent them (names in lowercase), its transfer coding undone: the bytes that follow
    are the body itself."""
    reason: str = ""


class Backend(Protocol):
    """What a MimirNode needs from a backend."""

    async def list_models(self) -> list[str]:
        """Model names served; BackendError when the backend cannot be reached."""
        ...

    def stream_chat(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Chunks of the answer; BackendError on failure. Closing the generator cancels the request.

        A backend may also have ``stream_chat_wire`` (same arguments, yielding lists of ``(chunk,
        json)``: :meth:`OpenAIBackend.stream_chat_wire`): a node then calls that instead, unless a
        subclass overrides ``stream_chat`` below the class defining ``stream_chat_wire``."""
        ...

    def forward(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> AsyncGenerator[HttpHead | bytes, None]:
        """One raw HTTP request to the backend's root (``target``: path and query): its HttpHead, then
        the body's bytes as they come. BackendError when it fails (before the head, or mid-body)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def default_base_url(env: Mapping[str, str] = os.environ) -> str:
    """OLLAMA_ENDPOINT (as the original node reads it), else OPENAI_BASE_URL, else local Ollama."""
    return env.get("OLLAMA_ENDPOINT") or env.get("OPENAI_BASE_URL") or FALLBACK_BASE_URL


def make_chunk(
    completion_id: str, model: str, delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` object as the OpenAI API streams it."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        texts = (p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text")
        return " ".join(t for t in texts if isinstance(t, str))
    return ""


class EchoBackend:
    """Streams the last user message back word by word: no network, for demos and tests.

    ``delay`` seconds pass before each word, as with a model that produces 1/delay tokens a second
    (0, the default: no wait).
    """

    def __init__(self, model: str = ECHO_MODEL, *, delay: float = 0.0) -> None:
        if not (math.isfinite(delay) and delay >= 0):
            raise LocalError(f"delay must be a finite number of seconds >= 0, not {delay!r}")
        self.model = model
        self.delay = delay

    async def list_models(self) -> list[str]:
        return [self.model]

    async def stream_chat(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        if model != self.model:
            raise BackendError(packets.MODEL_NOT_FOUND, f"model {model!r} is not served here")
        text = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        yield make_chunk(cid, model, {"role": "assistant", "content": ""})
        for i, word in enumerate(text.split()):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield make_chunk(cid, model, {"content": word if i == 0 else " " + word})
        yield make_chunk(cid, model, {}, "stop")

    async def forward(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> AsyncGenerator[HttpHead | bytes, None]:
        """Answers ``/v1/chat/completions`` (SSE when ``stream``), ``/api/chat`` (NDJSON unless
        ``stream: false``), ``GET /v1/models``, ``/api/tags`` and ``/api/version`` itself; 404 else."""
        path = target.partition("?")[0]
        obj: Any = None
        if body:
            try:
                obj = json.loads(body)
            except ValueError:
                obj = None
        req: dict[str, Any] = obj if isinstance(obj, dict) else {}
        model = req.get("model", self.model)
        if (method, path) == ("POST", "/v1/chat/completions"):
            answer = self._openai_chat(model, req)
        elif (method, path) == ("POST", "/api/chat"):
            answer = self._ollama_chat(model, req)
        elif (method, path) == ("GET", "/v1/models"):
            page = {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "echo"}]}
            answer = _json_answer(200, page)
        elif (method, path) == ("GET", "/api/tags"):
            answer = _json_answer(200, {"models": [{"name": self.model, "model": self.model}]})
        elif (method, path) == ("GET", "/api/version"):
            answer = _json_answer(200, {"version": "0.0.0-echo"})
        else:
            answer = _json_answer(404, {"error": f"{method} {path} is not served by the echo backend"})
        async for part in answer:
            yield part

    async def _openai_chat(self, model: str, req: dict[str, Any]) -> AsyncGenerator[HttpHead | bytes, None]:
        chunks = self.stream_chat(model, req.get("messages") or [], {})
        if req.get("stream"):
            yield HttpHead(200, [("content-type", "text/event-stream")], "OK")
            async for chunk in chunks:
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
            return
        text = "".join([c["choices"][0]["delta"].get("content", "") async for c in chunks])
        answer = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
        }
        async for part in _json_answer(200, answer):
            yield part

    async def _ollama_chat(self, model: str, req: dict[str, Any]) -> AsyncGenerator[HttpHead | bytes, None]:
        chunks = self.stream_chat(model, req.get("messages") or [], {})
        words = [c["choices"][0]["delta"].get("content", "") async for c in chunks][1:-1]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        done = {
            "model": model,
            "created_at": stamp,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
        }
        if req.get("stream") is False:
            done["message"] = {"role": "assistant", "content": "".join(words)}
            async for part in _json_answer(200, done):
                yield part
            return
        yield HttpHead(200, [("content-type", "application/x-ndjson")], "OK")
        for word in words:
            line = {"model": model, "created_at": stamp, "message": {"role": "assistant", "content": word}}
            yield json.dumps({**line, "done": False}).encode() + b"\n"
        yield json.dumps(done).encode() + b"\n"

    async def aclose(self) -> None:
        return None


async def _json_answer(status: int, obj: Any) -> AsyncGenerator[HttpHead | bytes, None]:
    body = json.dumps(obj).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    yield HttpHead(status, headers)
    yield body


class OpenAIBackend:
    """Any OpenAI-compatible server (Ollama, vLLM, llama.cpp, OpenAI): its ``GET /models`` and its streamed
    ``POST /chat/completions`` through :mod:`mimirlite.mimir.http` (h11, loaded at the first request), the
    event stream read by :class:`~mimirlite.mimir.sse.SSEDecoder`; the openai SDK is not used."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        models: Sequence[str] = (),
        timeout: float = 60.0,
    ) -> None:
        """``models`` narrows what is served (all the backend lists when empty); ``timeout`` bounds
        connecting and each wait for data."""
        self.base_url = base_url or default_base_url()
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or "unused"
        self._wanted = list(models)
        self._timeout = timeout
        self._http: http.Client | None = None  # made at the first request

    def _client(self) -> http.Client:
        if self._http is None:
            from mimirlite.mimir.http import http_client  # h11 (httpx behind a proxy): loaded when used

            self._http = http_client(self._timeout)
        return self._http

    def _api_headers(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self._api_key}"), ("accept", "application/json")]

    async def _send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, where: str, *, api: bool
    ) -> http.Response:
        """The response (its head read, its body to come) or BackendError: timed out, or unreachable.
        ``api``: an OpenAI API call (its message says why), else a raw forward (its message shows the
        error's repr)."""
        from mimirlite.mimir.http import HttpError, HttpTimeoutError

        try:
            return await self._client().request(method, url, headers, body)
        except HttpTimeoutError as exc:
            raise BackendError(packets.BACKEND_TIMEOUT, f"backend at {where} timed out") from exc
        except HttpError as exc:
            reason = str(exc) if api else repr(exc)
            message = f"backend at {where} is unreachable: {reason}"
            raise BackendError(packets.BACKEND_UNAVAILABLE, message) from exc

    async def _read_all(self, response: http.Response, limit: int) -> bytes:
        """The whole body (at most ``limit`` bytes); BackendError when it is larger or its reading fails."""
        from mimirlite.mimir.http import HttpError, HttpTimeoutError

        parts: list[bytes] = []
        size = 0
        try:
            while data := await response.receive():
                size += len(data)
                if size > limit:
                    raise BackendError(packets.BACKEND_ERROR, f"backend answer larger than {limit} bytes")
                parts.append(data)
        except HttpTimeoutError as exc:
            raise BackendError(packets.BACKEND_TIMEOUT, f"backend at {self.base_url} timed out") from exc
        except HttpError as exc:
            raise BackendError(packets.BACKEND_ERROR, f"backend answer broke off: {exc!r}") from exc
        return b"".join(parts)

    async def _status_error(self, response: http.Response) -> BackendError:
        """The BackendError for an answer that is not 2xx (404: model_not_found), with its message."""
        try:
            body = await self._read_all(response, MAX_ERROR_BODY)
        except BackendError as exc:
            body = str(exc).encode()
        status = response.status
        kind = packets.MODEL_NOT_FOUND if status == 404 else packets.BACKEND_ERROR
        return BackendError(kind, f"backend answered HTTP {status}: {_status_message(status, body)}")

    async def list_models(self) -> list[str]:
        url = self.base_url.rstrip("/") + "/models"
        response = await self._send("GET", url, self._api_headers(), b"", self.base_url, api=True)
        try:
            if not 200 <= response.status < 300:
                raise await self._status_error(response)
            page = _json_or_none(await self._read_all(response, MAX_MODELS_BODY))
        finally:
            await response.aclose()
        offered = _model_ids(page)
        if offered is None:
            raise BackendError(packets.BACKEND_ERROR, f"backend at {self.base_url} sent no list of models")
        if not self._wanted:
            return offered
        missing = [m for m in self._wanted if m not in offered]
        if missing:
            served = ", ".join(offered) or "nothing"
            message = f"{self.base_url} does not serve {', '.join(missing)} (it serves {served})"
            raise BackendError(packets.MODEL_NOT_FOUND, message)
        return list(self._wanted)

    async def stream_chat(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        async with contextlib.aclosing(self.stream_chat_wire(model, messages, params)) as batches:
            async for batch in batches:
                for chunk, _ in batch:
                    yield chunk

    async def stream_chat_wire(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncGenerator[list[tuple[dict[str, Any], str | None]], None]:
        """:meth:`stream_chat`'s chunks in lists, one list for the chunks each read of the backend's
        answer completed (a relay writes them at once), each chunk with the backend's own JSON text of
        it when that may be passed on as it is (:func:`~mimirlite.mimir.chunks.loads_event`: one line,
        no duplicate key, nothing but JSON, so that any parser reads the chunk checked here), else None.
        A failure after good chunks is raised once they were yielded."""
        # Only allowlisted names reach the backend, whatever the caller checked; model, messages and
        # stream are this call's own (ALLOWED has none of them, and they are set last all the same).
        refused = sorted(str(name) for name in params if name not in ALLOWED)
        if refused:
            raise BackendError(packets.BAD_REQUEST, f"parameter {refused[0][:MAX_NAME]!r} is not allowed")
        fields = {name: value for name, value in params.items() if name in ALLOWED}
        fields.update(model=model, messages=messages, stream=True)
        try:
            body = json.dumps(fields, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise BackendError(packets.BAD_REQUEST, f"bad request parameters: {exc}") from exc
        from mimirlite.mimir.http import HttpError

        url = self.base_url.rstrip("/") + "/chat/completions"
        headers = [*self._api_headers(), ("content-type", "application/json")]
        response = await self._send("POST", url, headers, body, self.base_url, api=True)
        try:
            if not 200 <= response.status < 300:
                raise await self._status_error(response)
            decoder = SSEDecoder()
            receive = response.receive
            while True:
                try:
                    data = await receive()
                except HttpError as exc:
                    raise BackendError(packets.BACKEND_ERROR, f"backend stream broke off: {exc!r}") from exc
                try:
                    events = decoder.receive_data(data)
                except SSEError as exc:
                    raise BackendError(packets.BACKEND_ERROR, f"backend stream broke off: {exc}") from exc
                batch: list[tuple[dict[str, Any], str | None]] = []
                failure: BackendError | None = None
                done = False
                for event in events:
                    text = event.data
                    if text.startswith("[DONE]"):
                        done = True
                        break
                    try:
                        chunk, verbatim = loads_event(text)
                    except PacketError as exc:
                        failure = BackendError(packets.BACKEND_ERROR, f"backend stream broke off: {exc}")
                        failure.__cause__ = exc
                        break
                    if type(chunk) is not dict or "error" in chunk or event.event == "error":
                        failure = _stream_error(chunk)
                        break
                    if not verbatim and not _json_numbers(chunk):
                        why = "backend chunk holds a number JSON cannot carry (NaN, infinity)"
                        failure = BackendError(packets.BACKEND_ERROR, why)
                        break
                    batch.append((chunk, text if verbatim else None))
                if batch:
                    yield batch
                if failure is not None:
                    raise failure
                if done:
                    await _drain(response)  # so that the connection is kept for the next request
                    return
                if not data:
                    return
        finally:
            await response.aclose()

    @property
    def root_url(self) -> str:
        """The backend's root: ``base_url`` without a trailing ``/v1`` (Ollama's native API is there)."""
        return self.base_url.rstrip("/").removesuffix("/v1")

    async def forward(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> AsyncGenerator[HttpHead | bytes, None]:
        from mimirlite.mimir.http import HttpError

        sent = [*headers, ("authorization", f"Bearer {self._api_key}"), ("accept-encoding", "identity")]
        response = await self._send(method, self.root_url + target, sent, body, self.root_url, api=False)
        try:
            yield HttpHead(response.status, response.headers, response.reason)
            while True:
                try:
                    data = await response.receive()
                except HttpError as exc:
                    raise BackendError(packets.BACKEND_ERROR, f"backend answer broke off: {exc!r}") from exc
                if not data:
                    return
                yield data
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


MAX_ERROR_BODY = 64 * 1024
"""How much of an error answer's body is read for its message."""
MAX_MODELS_BODY = 8 * 1024 * 1024
"""Bound on the backend's model list (``GET /models``), in bytes."""
MAX_DRAINED = 64 * 1024
"""How much of a streamed answer is read after its ``[DONE]`` to keep the connection; more: it is closed."""


async def _drain(response: http.Response) -> None:
    """Read what is left of an answer (normally nothing but the end of its chunked body)."""
    from mimirlite.mimir.http import HttpError

    size = 0
    try:
        while data := await response.receive():
            size += len(data)
            if size > MAX_DRAINED:
                return
    except HttpError as exc:
        log.debug("backend answer's end not read: %r", exc)


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _model_ids(page: Any) -> list[str] | None:
    """The ids of an OpenAI model list (``{"data": [{"id": ...}, ...]}``), None when it is not one."""
    data = page.get("data") if isinstance(page, dict) else None
    if not isinstance(data, list):
        return None
    ids: list[str] = []
    for model in data:
        name = model.get("id") if isinstance(model, dict) else None
        if not isinstance(name, str):
            return None
        ids.append(name)
    return ids


def _error_text(obj: Any) -> str | None:
    """The message of an OpenAI error object (``{"error": {"message": ...}}``) or an Ollama one
    (``{"error": "..."}``), None when ``obj`` is neither."""
    if not isinstance(obj, dict):
        return None
    err = obj.get("error", obj)
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str) and err:
        return err
    return None


def _status_message(status: int, body: bytes) -> str:
    message = _error_text(_json_or_none(body))
    if message is not None:
        return message
    text = body[:MAX_SHOWN].decode("utf-8", "replace").strip()
    return f"Error code: {status}" + (f" - {text}" if text else "")


MAX_SHOWN = 512
"""How much of a backend's unparsed error body a message shows."""


def _stream_error(chunk: Any) -> BackendError:
    if type(chunk) is not dict:
        message = "backend stream broke off: a chunk that is not a JSON object"
        return BackendError(packets.BACKEND_ERROR, message)
    message = _error_text(chunk) or "an error occurred during streaming"
    return BackendError(packets.BACKEND_ERROR, f"backend failed mid-answer: {message}")


def _json_numbers(chunk: dict[str, Any]) -> bool:
    """Whether every number in ``chunk`` is one JSON can carry (no NaN or infinity, which Python's json
    reads and would write back, and a peer's JSON.parse refuses)."""
    try:
        json.dumps(chunk, allow_nan=False)
    except ValueError:
        return False
    return True
