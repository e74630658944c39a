"""The OpenAI HTTP API's shapes, as plain data: requests checked, errors, SSE events, answers assembled.

Pure functions and small classes on dicts and bytes (no sockets, no SDK), so the gateway's answers
are unit-tested with literal values.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mimirlite.mimir import packets
from mimirlite.mimir.params import ParamError, check_messages, check_model, check_params

log = logging.getLogger(__name__)

SSE_DONE = b"data: [DONE]\n\n"
"""The last event of a streamed answer."""

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"
RATE_LIMIT = "rate_limit_error"

OWNED_BY = "mimir"
"""``owned_by`` of every model listed: they belong to the nodes of the network."""


MAX_JSON_DEPTH = 64
"""Nesting of arrays and objects in a request body; deeper is refused with 400 (OpenAI requests, tool
schemas included, need far less, and a deep document would exhaust the stack of whoever encodes it next)."""

_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON. A lone surrogate (a node may send ``"\\ud800"`` in a string) has no
    UTF-8 form: it becomes U+FFFD, the replacement character, so the answer stays valid UTF-8 JSON."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def loads_body(body: bytes) -> Any:
    """A request body's JSON document; ApiError 400 when it is not UTF-8 JSON (``NaN``, ``Infinity`` and
    numbers beyond a float, like ``1e400``, are not), nests deeper than :data:`MAX_JSON_DEPTH`, or holds a
    lone surrogate (``"\\ud800"``)."""
    try:
        obj = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"We could not parse the JSON body of your request: {exc}") from None
    except RecursionError:
        raise ApiError(
            400, f"The JSON body of your request nests deeper than {MAX_JSON_DEPTH} levels."
        ) from None
    _check_tree(obj)
    return obj


def _check_tree(obj: Any) -> None:
    """ApiError 400 for nesting over :data:`MAX_JSON_DEPTH` or a string with a lone surrogate."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            items: Iterable[Any] = node.values()
            for key in node:
                _check_text(key)
        elif isinstance(node, list):
            items = node
        else:
            _check_text(node)
            continue
        if depth > MAX_JSON_DEPTH:
            raise ApiError(400, f"The JSON body of your request nests deeper than {MAX_JSON_DEPTH} levels.")
        for item in items:
            if isinstance(item, (dict, list)):
                stack.append((item, depth + 1))
            elif isinstance(item, str):
                _check_text(item)


def _check_text(value: Any) -> None:
    if isinstance(value, str) and not value.isascii() and _SURROGATE.search(value):
        raise ApiError(400, "The JSON body of your request holds a lone surrogate (an invalid \\u escape).")


class ApiError(Exception):
    """An answer in OpenAI's error format: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID_REQUEST,
        *,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def to_json(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return dumps(self.to_json())


# ---- requests ----


@dataclass(frozen=True)
class ChatCall:
    """A checked ``POST /v1/chat/completions`` body."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    params: dict[str, Any]
    """The other fields, allowlisted and checked, for the node (``stream`` is the gateway's business)."""


def parse_chat_body(body: bytes) -> ChatCall:
    """Check a chat completion request; ApiError 400 naming what is wrong."""
    obj = loads_body(body)
    if not isinstance(obj, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    fields = dict(obj)
    try:
        if not fields.get("model"):
            raise ParamError("model", "You must provide a model parameter.")
        model = check_model(fields.pop("model"))
        if "messages" not in fields:
            raise ParamError("messages", "'messages' must be a non-empty array.")
        messages = check_messages(fields.pop("messages"))
        stream = fields.pop("stream", None)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise ParamError("stream", "'stream' must be a boolean.")
        # Only the allowlisted parameters, checked, go to the network (each node checks them again).
        params = check_params(fields)
    except ParamError as exc:
        log.info("chat request refused (400, param %s): %s", exc.param, exc.message)
        raise ApiError(400, exc.message, param=exc.param) from None
    if not stream:
        # The node always streams; ask for the usage chunk so the assembled answer can carry usage.
        params["stream_options"] = {"include_usage": True}
    return ChatCall(model, messages, stream, params)


# ---- models ----


def model_object(model: str, created: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": OWNED_BY}


def models_page(models: Iterable[str], created: int) -> dict[str, Any]:
    """``GET /v1/models``: each model once, in the order given."""
    return {"object": "list", "data": [model_object(m, created) for m in dict.fromkeys(models)]}


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or no reachable node serves it.",
        param="model",
        code="model_not_found",
    )


# ---- node errors ----

_REMOTE_STATUS = {
    packets.BAD_REQUEST: 400,
    packets.MODEL_NOT_FOUND: 404,
    "rate_limited": 429,
    "overloaded": 503,
}


def remote_error(type: str, message: str) -> ApiError:
    """A node's completionStop error: 502 with its message (400, 404, 429, 503 for the types that say
    the request, the model or the node's load is the cause)."""
    status = _REMOTE_STATUS.get(type, 502)
    kind = INVALID_REQUEST if status in (400, 404) else RATE_LIMIT if status == 429 else SERVER_ERROR
    return ApiError(status, message, kind, code=type)


# ---- answers ----


def sse_event(data: bytes) -> bytes:
    """One Server-Sent Event carrying ``data`` (a JSON document: it holds no newline)."""
    return b"data: " + data + b"\n\n"


class CompletionBuilder:
    """Assembles the ``chat.completion`` object OpenAI answers without streaming from the chunks of a
    streamed answer (as dicts): content, refusal and tool calls joined per choice, ``usage`` when a
    chunk carried it."""

    def __init__(self) -> None:
        self._first: dict[str, Any] | None = None
        self._choices: dict[int, dict[str, Any]] = {}
        self._tool_calls: dict[int, dict[int, dict[str, Any]]] = {}
        self._usage: Any = None

    def add(self, chunk: dict[str, Any]) -> None:
        if self._first is None:
            self._first = chunk
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        out = self._choices.get(index)
        if out is None:
            out = self._choices[index] = {
                "index": index,
                "message": {"role": "assistant", "content": None},
                "logprobs": None,
                "finish_reason": None,
            }
        message = out["message"]
        delta = choice.get("delta") or {}
        if delta.get("role"):
            message["role"] = delta["role"]
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str):
                message[key] = (message.get(key) or "") + text
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                self._add_tool_call(self._tool_calls.setdefault(index, {}), call)
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            merged = out["logprobs"] = out["logprobs"] or {}
            for key, items in logprobs.items():
                if isinstance(items, list):
                    merged[key] = [*(merged.get(key) or []), *items]
        if choice.get("finish_reason"):
            out["finish_reason"] = choice["finish_reason"]

    @staticmethod
    def _add_tool_call(calls: dict[int, dict[str, Any]], call: dict[str, Any]) -> None:
        index = call.get("index", len(calls))
        found = calls.get(index)
        if found is None:
            found = calls[index] = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        if call.get("id"):
            found["id"] = call["id"]
        if call.get("type"):
            found["type"] = call["type"]
        function = call.get("function") or {}
        for key in ("name", "arguments"):
            if isinstance(function.get(key), str):
                found["function"][key] += function[key]

    def result(self) -> dict[str, Any]:
        first = self._first or {}
        choices = []
        for index in sorted(self._choices):
            choice = self._choices[index]
            calls = self._tool_calls.get(index)
            if calls:
                message = {**choice["message"], "tool_calls": [calls[i] for i in sorted(calls)]}
                choice = {**choice, "message": message}
            choices.append(choice)
        out: dict[str, Any] = {
            "id": first.get("id", ""),
            "object": "chat.completion",
            "created": first.get("created", 0),
            "model": first.get("model", ""),
            "choices": choices,
        }
        if "system_fingerprint" in first:
            out["system_fingerprint"] = first["system_fingerprint"]
        if self._usage is not None:
            out["usage"] = self._usage
        return out
