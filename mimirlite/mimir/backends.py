"""Where answers come from: any OpenAI-compatible server (through the ``openai`` SDK), or ``echo``.

A backend lists the models it serves and streams chat completion chunks as plain dicts, shaped
exactly as the OpenAI API streams them (``object: "chat.completion.chunk"``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mimirlite.errors import LocalError, MimirliteError
from mimirlite.mimir import packets
from mimirlite.mimir.params import ALLOWED, MAX_NAME

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
        """Chunks of the answer; BackendError on failure. Closing the generator cancels the request."""
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
    """Any OpenAI-compatible server (Ollama, vLLM, llama.cpp, OpenAI) through ``openai.AsyncOpenAI``."""

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
        self._client: Any = None
        self._http: Any = None

    def _sdk(self) -> Any:
        if self._client is None:
            import openai  # heavy: loaded only when a backend is used

            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self._api_key, max_retries=0, timeout=self._timeout
            )
        return self._client

    async def list_models(self) -> list[str]:
        try:
            offered = [m.id async for m in self._sdk().models.list()]
        except Exception as exc:
            raise _backend_error(exc, self.base_url) from exc
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
        # Only allowlisted names reach the SDK, whatever the caller checked: never extra_body,
        # extra_headers, extra_query or timeout (they would pick the model, headers, URL, timeout).
        refused = sorted(str(name) for name in params if name not in ALLOWED)
        if refused:
            raise BackendError(packets.BAD_REQUEST, f"parameter {refused[0][:MAX_NAME]!r} is not allowed")
        kwargs = {name: value for name, value in params.items() if name in ALLOWED}
        try:
            stream = await self._sdk().chat.completions.create(
                model=model, messages=messages, stream=True, **kwargs
            )
        except TypeError as exc:  # a parameter this SDK version does not know
            raise BackendError(packets.BAD_REQUEST, f"bad request parameters: {exc}") from exc
        except Exception as exc:
            raise _backend_error(exc, self.base_url) from exc
        try:
            async for chunk in stream:
                yield chunk.model_dump(mode="json", exclude_unset=True)
        except Exception as exc:
            cause = exc.__cause__ or exc
            raise BackendError(packets.BACKEND_ERROR, f"backend stream broke off: {cause!r}") from exc
        finally:
            await stream.close()

    @property
    def root_url(self) -> str:
        """The backend's root: ``base_url`` without a trailing ``/v1`` (Ollama's native API is there)."""
        return self.base_url.rstrip("/").removesuffix("/v1")

    async def forward(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> AsyncGenerator[HttpHead | bytes, None]:
        import httpx  # loaded only when the tunnel is used

        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout)
        sent = [*headers, ("authorization", f"Bearer {self._api_key}"), ("accept-encoding", "identity")]
        request = self._http.build_request(method, self.root_url + target, headers=sent, content=body)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise BackendError(packets.BACKEND_TIMEOUT, f"backend at {self.root_url} timed out") from exc
        except httpx.HTTPError as exc:
            message = f"backend at {self.root_url} is unreachable: {exc!r}"
            raise BackendError(packets.BACKEND_UNAVAILABLE, message) from exc
        try:
            head = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers.raw]
            yield HttpHead(response.status_code, head, response.reason_phrase)
            try:
                async for data in response.aiter_raw():
                    yield data
            except httpx.HTTPError as exc:
                raise BackendError(packets.BACKEND_ERROR, f"backend answer broke off: {exc!r}") from exc
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def _backend_error(exc: Exception, base_url: str) -> BackendError:
    """Map an openai SDK (or transport) failure to a BackendError with a clear message."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return BackendError(packets.BACKEND_TIMEOUT, f"backend at {base_url} timed out")
    if isinstance(exc, openai.APIConnectionError):
        return BackendError(packets.BACKEND_UNAVAILABLE, f"backend at {base_url} is unreachable: {exc}")
    if isinstance(exc, openai.APIStatusError):
        kind = packets.MODEL_NOT_FOUND if exc.status_code == 404 else packets.BACKEND_ERROR
        return BackendError(kind, f"backend answered HTTP {exc.status_code}: {_status_message(exc)}")
    return BackendError(packets.BACKEND_ERROR, f"backend failed: {exc!r}")


def _status_message(exc: Any) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(exc.message)
