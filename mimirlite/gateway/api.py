"""The OpenAI HTTP API's shapes, as plain data: requests checked, errors, SSE events, answers assembled;
and Ollama's native API (``/api/*``) translated to and from the network's chats.

Pure functions and small classes on dicts and bytes (no sockets, no SDK), so the gateway's answers
are unit-tested with literal values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mimirlite.mimir import packets
from mimirlite.mimir.params import MAX_NAME, ParamError, check_messages, check_model, check_params

log = logging.getLogger(__name__)

SSE_DONE = b"data: [DONE]\n\n"
"""The last event of a streamed answer."""

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"
RATE_LIMIT = "rate_limit_error"

OWNED_BY = "mimir"
"""``owned_by`` of every model listed: they belong to the nodes of the network."""


MAX_REQUEST_JSON_DEPTH = 64
"""Nesting of arrays and objects in a request body; deeper is refused with 400 (OpenAI requests, tool
schemas included, need far less, and a deep document would exhaust the stack of whoever encodes it next)."""

_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON. A lone surrogate (a node may send ``"\\ud800"`` in a string) has no
    UTF-8 form: it becomes U+FFFD, the replacement character, so the answer stays valid UTF-8 JSON; a
    float that JSON cannot hold (``NaN``, ``Infinity``, which a node may send too) becomes null."""
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite_only(obj), separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode()


def _finite_only(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (as pydantic writes them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_only(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_only(v) for v in obj]
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def loads_body(body: bytes) -> Any:
    """A request body's JSON document; ApiError 400 when it is not UTF-8 JSON (``NaN``, ``Infinity`` and
    numbers beyond a float, like ``1e400``, are not), nests deeper than :data:`MAX_REQUEST_JSON_DEPTH`, or
    holds a lone surrogate (``"\\ud800"``)."""
    try:
        obj = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"We could not parse the JSON body of your request: {exc}") from None
    except RecursionError:
        raise ApiError(
            400, f"The JSON body of your request nests deeper than {MAX_REQUEST_JSON_DEPTH} levels."
        ) from None
    _check_tree(obj)
    return obj


def _check_tree(obj: Any) -> None:
    """ApiError 400 for nesting over :data:`MAX_REQUEST_JSON_DEPTH` or a string with a lone surrogate."""
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
        if depth > MAX_REQUEST_JSON_DEPTH:
            raise ApiError(
                400, f"The JSON body of your request nests deeper than {MAX_REQUEST_JSON_DEPTH} levels."
            )
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


# ---- paths only a tunnel serves (embeddings, completions) ----

MAX_INPUTS = 2048
"""Items in an embeddings ``input`` or a completions ``prompt`` list (OpenAI's own bound); more is 400."""
MAX_DIMENSIONS = 65536
"""Largest ``dimensions`` asked of an embeddings model."""
MAX_COMPLETION_LOGPROBS = 5
"""Largest ``logprobs`` of a legacy completion (OpenAI's bound)."""
MAX_TOKEN_ID = 2**31 - 1
"""Largest token id in a prompt or input given as tokens."""

EMBEDDINGS_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
"""``POST /v1/embeddings``: the fields forwarded (checked); any other is refused 400."""
COMPLETIONS_FIELDS = frozenset(
    {"model", "prompt", "suffix", "echo", "best_of", "logprobs", "stream",
     "temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty",
     "logit_bias", "user", "stream_options", "n"}
)  # fmt: skip
"""``POST /v1/completions``: the fields forwarded (checked; the chat parameters among them by
:func:`~mimirlite.mimir.params.check_params`); any other is refused 400."""
OLLAMA_EMBED_FIELDS = frozenset({"model", "input", "truncate", "dimensions", "options", "keep_alive"})
"""``POST /api/embed``: the fields taken; ``keep_alive`` is accepted and dropped (it would load or unload
the node's model: that is the node's business), any other is refused 400."""
OLLAMA_EMBEDDINGS_FIELDS = frozenset({"model", "prompt", "options", "keep_alive"})
"""``POST /api/embeddings`` (Ollama's older embeddings path): as :data:`OLLAMA_EMBED_FIELDS`."""
TUNNEL_FIELDS = {
    "/v1/embeddings": EMBEDDINGS_FIELDS,
    "/v1/completions": COMPLETIONS_FIELDS,
    "/api/embed": OLLAMA_EMBED_FIELDS,
    "/api/embeddings": OLLAMA_EMBEDDINGS_FIELDS,
}
"""The paths the gateway forwards through a node's tunnel as they are, with their allowlists."""
_COMPLETION_PARAMS = frozenset(
    {"temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty",
     "logit_bias", "user", "stream_options", "n"}
)  # fmt: skip


@dataclass(frozen=True)
class TunnelCall:
    """A checked body for a path the gateway forwards through a node's tunnel (:data:`TUNNEL_FIELDS`)."""

    model: str
    body: dict[str, Any]
    """The allowlisted fields, checked (``model`` included): what is forwarded, as JSON."""


def parse_tunnel_body(path: str, body: bytes) -> TunnelCall:
    """Check an embeddings or completions request for ``path`` (a key of :data:`TUNNEL_FIELDS`);
    ApiError 400 naming what is wrong. Only allowlisted fields pass, each checked and bounded."""
    obj = loads_body(body)
    if not isinstance(obj, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    fields = {k: v for k, v in obj.items() if v is not None}
    ollama = path.startswith("/api/")
    try:
        allowed = TUNNEL_FIELDS[path]
        for key in fields:
            if key not in allowed:
                shown = str(key)[:MAX_NAME]
                raise ParamError(shown, f"Unrecognized request argument supplied: {shown}")
        if not fields.get("model"):
            raise ParamError(
                "model", "model is required" if ollama else "You must provide a model parameter."
            )
        out: dict[str, Any] = {"model": check_model(fields["model"])}
        if path == "/v1/embeddings":
            out["input"] = _inputs("input", fields.get("input"), tokens=True)
            if "encoding_format" in fields:
                out["encoding_format"] = _one_of(
                    "encoding_format", fields["encoding_format"], ("float", "base64")
                )
            if "dimensions" in fields:
                out["dimensions"] = _count("dimensions", fields["dimensions"], 1, MAX_DIMENSIONS)
            out.update(check_params({k: v for k, v in fields.items() if k == "user"}))
        elif path == "/v1/completions":
            out["prompt"] = _inputs("prompt", fields.get("prompt", ""), tokens=True, empty=True)
            if "suffix" in fields:
                out["suffix"] = _str("suffix", fields["suffix"])
            for flag in ("echo", "stream"):
                if flag in fields:
                    if not isinstance(fields[flag], bool):
                        raise ParamError(flag, f"'{flag}' must be a boolean.")
                    out[flag] = fields[flag]
            if "logprobs" in fields:
                out["logprobs"] = _count("logprobs", fields["logprobs"], 0, MAX_COMPLETION_LOGPROBS)
            if "best_of" in fields:
                out["best_of"] = _count("best_of", fields["best_of"], 1, 8)
            out.update(check_params({k: v for k, v in fields.items() if k in _COMPLETION_PARAMS}))
        else:
            if path == "/api/embed":
                out["input"] = _inputs("input", fields.get("input"), tokens=False)
                if "truncate" in fields:
                    if not isinstance(fields["truncate"], bool):
                        raise ParamError("truncate", "'truncate' must be a boolean.")
                    out["truncate"] = fields["truncate"]
                if "dimensions" in fields:
                    out["dimensions"] = _count("dimensions", fields["dimensions"], 1, MAX_DIMENSIONS)
            else:
                out["prompt"] = _str("prompt", fields.get("prompt", ""))
            if "options" in fields:
                out["options"] = _embed_options(fields["options"])
    except ParamError as exc:
        log.info("%s request refused (400, param %s): %s", path, exc.param, exc.message)
        raise ApiError(400, exc.message, param=exc.param) from None
    return TunnelCall(out["model"], out)


def _str(param: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ParamError(param, f"'{param}' must be a string.")
    return value


def _one_of(param: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ParamError(param, f"'{param}' must be one of {', '.join(choices)}.")
    return str(value)


def _count(param: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ParamError(param, f"'{param}' must be an integer from {low} to {high}.")
    return value


def _tokens(param: str, value: list[Any]) -> list[int]:
    if len(value) > MAX_INPUTS * 16:
        raise ParamError(param, f"'{param}' holds more than {MAX_INPUTS * 16} tokens.")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= MAX_TOKEN_ID:
            raise ParamError(param, f"'{param}' tokens must be integers from 0 to {MAX_TOKEN_ID}.")
    return value


def _inputs(param: str, value: Any, *, tokens: bool, empty: bool = False) -> str | list[Any]:
    """A text, or a list of at most :data:`MAX_INPUTS` texts (with ``tokens``: also a list of token
    ids, or a list of such lists)."""
    what = "a string or an array of strings" + (" or of token arrays" if tokens else "")
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or (not value and not empty):
        raise ParamError(param, f"'{param}' must be {what}.")
    if len(value) > MAX_INPUTS:
        raise ParamError(param, f"'{param}' holds more than {MAX_INPUTS} items.")
    if all(isinstance(v, str) for v in value):
        return value
    if tokens and all(isinstance(v, int) for v in value):
        return _tokens(param, value)
    if tokens and all(isinstance(v, list) for v in value):
        return [_tokens(f"{param}[{i}]", v) for i, v in enumerate(value)]
    raise ParamError(param, f"'{param}' must be {what}.")


def _embed_options(options: Any) -> dict[str, Any]:
    """Ollama ``options`` for an embeddings request: its documented names only (see
    :data:`OLLAMA_OPTIONS`, :data:`OLLAMA_IGNORED_OPTIONS`), each a number, boolean or short string."""
    if not isinstance(options, dict):
        raise ParamError("options", "'options' must be an object.")
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = f"options.{str(key)[:MAX_NAME]}"
        if key not in OLLAMA_OPTIONS and key not in OLLAMA_IGNORED_OPTIONS:
            raise ParamError(name, f"Unrecognized option: '{name}'.")
        if value is None:
            continue
        if isinstance(value, str) and len(value) > MAX_NAME:
            raise ParamError(name, f"'{name}' is longer than {MAX_NAME} characters.")
        if not isinstance(value, (bool, int, float, str)):
            raise ParamError(name, f"'{name}' must be a number, a boolean or a string.")
        out[key] = value
    return out


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


# ====================================================================== Ollama's native API

OLLAMA_VERSION = "0.12.0"
"""What ``GET /api/version`` answers. Tools gate features on Ollama's version (tool calling from 0.3,
structured outputs from 0.5, ``think`` from 0.9; Open WebUI and the ``ollama`` CLI compare it as semver):
a recent real release's number passes those checks; none of them looks for a suffix, so none is added."""

OLLAMA_MODIFIED_AT = "1970-01-01T00:00:00Z"
"""``modified_at`` of every model in ``GET /api/tags``: the network does not say when a node's model
changed; the epoch says "unknown" in the RFC 3339 form Ollama's clients parse."""

OLLAMA_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "num_predict": "max_tokens",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
"""Ollama ``options`` translated, to the OpenAI chat parameter each becomes (then checked by the
allowlist of :mod:`mimirlite.mimir.params`)."""

OLLAMA_IGNORED_OPTIONS = frozenset(
    {
        "num_keep", "top_k", "min_p", "typical_p", "repeat_last_n", "repeat_penalty", "penalize_newline",
        "mirostat", "mirostat_tau", "mirostat_eta", "tfs_z", "numa", "num_ctx", "num_batch", "num_gpu",
        "main_gpu", "low_vram", "vocab_only", "use_mmap", "use_mlock", "num_thread",
    }
)  # fmt: skip
"""Ollama's other documented options: they tune a local runner and have no OpenAI counterpart, so they
are ignored (Open WebUI sends ``num_ctx`` and ``top_k`` routinely); any other name is refused 400."""

_OLLAMA_CHAT_FIELDS = frozenset(
    {"model", "messages", "stream", "format", "options", "tools", "keep_alive", "think"}
)
_OLLAMA_GENERATE_FIELDS = frozenset(
    {"model", "prompt", "system", "stream", "format", "options", "keep_alive", "think",
     "context", "suffix", "template", "raw", "images"}
)  # fmt: skip
"""Top-level fields taken; ``keep_alive``, ``think`` and a generate ``context`` are accepted and ignored
(the nodes manage their models; no context is ever answered); ``suffix``, ``template``, ``raw: true`` and
``images`` cannot be honoured over a chat and are refused 400 when set."""

_DONE_REASON = {"stop": "stop", "length": "length", "tool_calls": "stop", "content_filter": "stop"}


def ollama_error(err: ApiError) -> bytes:
    """``err`` in Ollama's error shape: ``{"error": "message"}``."""
    return dumps({"error": err.message})


def ollama_model_not_found(model: str) -> ApiError:
    """Ollama's 404 for a model nobody serves."""
    return ApiError(404, f"model '{model}' not found", param="model", code="model_not_found")


def ollama_tag(model: str) -> dict[str, Any]:
    """One entry of ``GET /api/tags``. The network knows only the name: ``size`` 0, ``digest`` the
    SHA-256 of the name (stable, distinct per name; not the weights' digest), ``details`` empty strings
    except ``format`` (``gguf``, what Ollama's clients expect) and ``family`` (the name before ``:``)."""
    family = model.split(":", 1)[0].split("/")[-1]
    return {
        "name": model,
        "model": model,
        "modified_at": OLLAMA_MODIFIED_AT,
        "size": 0,
        "digest": hashlib.sha256(model.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": "",
            "quantization_level": "",
        },
    }


def ollama_tags(models: Iterable[str]) -> dict[str, Any]:
    """``GET /api/tags``: each model once, in the order given."""
    return {"models": [ollama_tag(m) for m in dict.fromkeys(models)]}


def ollama_show(model: str) -> dict[str, Any]:
    """``POST /api/show``: what the network knows of ``model`` (its name; the rest empty)."""
    tag = ollama_tag(model)
    return {
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": tag["details"],
        "model_info": {},
        "capabilities": ["completion", "tools"],
        "modified_at": OLLAMA_MODIFIED_AT,
    }


@dataclass(frozen=True)
class OllamaCall:
    """A checked ``POST /api/chat`` or ``/api/generate`` body, translated to a chat for the network."""

    kind: str
    """``chat`` or ``generate``: the shape of the answer (``message`` or ``response``)."""
    model: str
    messages: list[dict[str, Any]]
    """Empty: nothing to ask (Ollama then only loads the model and answers ``done_reason: load``)."""
    stream: bool
    params: dict[str, Any]
    """OpenAI chat parameters, allowlisted and checked (``stream_options`` asks for the usage chunk)."""


def parse_ollama_body(body: bytes, kind: str) -> OllamaCall:
    """Check and translate an Ollama ``chat`` or ``generate`` request; ApiError 400 naming what is wrong."""
    obj = loads_body(body)
    if not isinstance(obj, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    fields = {k: v for k, v in obj.items() if v is not None}
    try:
        allowed = _OLLAMA_CHAT_FIELDS if kind == "chat" else _OLLAMA_GENERATE_FIELDS
        for key in fields:
            if key not in allowed:
                raise ParamError(str(key)[:MAX_NAME], f"Unrecognized field: '{str(key)[:MAX_NAME]}'.")
        if not fields.get("model"):
            raise ParamError("model", "model is required")
        model = check_model(fields["model"])
        stream = fields.get("stream", True)  # Ollama streams unless told not to
        if not isinstance(stream, bool):
            raise ParamError("stream", "'stream' must be a boolean.")
        params = _ollama_options(fields.get("options"))
        fmt = fields.get("format")
        if fmt == "json":
            params["response_format"] = {"type": "json_object"}
        elif isinstance(fmt, dict):
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": fmt},
            }
        elif fmt not in (None, ""):
            raise ParamError("format", "'format' must be \"json\" or a JSON schema object.")
        if "tools" in fields:
            params["tools"] = fields["tools"]
        if kind == "chat":
            raw = fields.get("messages", [])
            messages = check_messages(_ollama_messages(raw)) if raw else []
        else:
            messages = _generate_messages(fields)
        params = check_params(params)
    except ParamError as exc:
        log.info("ollama %s request refused (400, param %s): %s", kind, exc.param, exc.message)
        raise ApiError(400, exc.message, param=exc.param) from None
    params["stream_options"] = {"include_usage": True}
    return OllamaCall(kind, model, messages, stream, params)


def _ollama_options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ParamError("options", "'options' must be an object.")
    params: dict[str, Any] = {}
    for key, value in options.items():
        name = f"options.{str(key)[:MAX_NAME]}"
        if key in OLLAMA_IGNORED_OPTIONS or value is None:
            continue
        target = OLLAMA_OPTIONS.get(key)
        if target is None:
            raise ParamError(name, f"Unrecognized option: '{name}'.")
        if key == "num_predict" and isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            continue  # -1: no limit, -2: fill the context; both are the backend's default
        if key == "stop" and isinstance(value, list) and not value:
            continue
        params[target] = value
    return params


def _ollama_messages(raw: Any) -> list[Any]:
    """Ollama chat messages as OpenAI's: ``tool_calls`` arguments as JSON text with ids, a ``tool``
    message answering the latest call of its ``tool_name``; ``images`` refused (not translated yet)."""
    if not isinstance(raw, list):
        raise ParamError("messages", "'messages' must be an array.")
    out: list[Any] = []
    ids: dict[str, str] = {}
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict):
            out.append(msg)  # check_messages names it
            continue
        if msg.get("images"):
            raise ParamError(f"messages[{i}].images", "Images are not supported by this gateway.")
        copy = {
            k: v for k, v in msg.items() if k not in ("images", "thinking", "tool_name") and v is not None
        }
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            copy["tool_calls"] = []
            for j, call in enumerate(calls):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    raise ParamError(f"messages[{i}].tool_calls[{j}]", "expected {'function': {...}}")
                args = function.get("arguments", {})
                call_id = f"call_{i}_{j}"
                ids[str(function.get("name"))] = call_id
                copy["tool_calls"].append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": function.get("name"),
                            "arguments": args if isinstance(args, str) else dumps(args).decode(),
                        },
                    }
                )
        if msg.get("role") == "tool":
            copy["tool_call_id"] = ids.get(str(msg.get("tool_name")), f"call_{i}")
        out.append(copy)
    return out


def _generate_messages(fields: dict[str, Any]) -> list[dict[str, Any]]:
    if fields.get("raw") is True:
        raise ParamError(
            "raw", "'raw' prompts are not supported by this gateway (it speaks chat to the nodes)."
        )
    for key in ("suffix", "template", "images"):
        if fields.get(key):
            raise ParamError(key, f"'{key}' is not supported by this gateway.")
    prompt = fields.get("prompt", "")
    system = fields.get("system", "")
    if not isinstance(prompt, str):
        raise ParamError("prompt", "'prompt' must be a string.")
    if not isinstance(system, str):
        raise ParamError("system", "'system' must be a string.")
    if not prompt:
        return []
    messages = [{"role": "system", "content": system}] if system else []
    return check_messages([*messages, {"role": "user", "content": prompt}])


class OllamaAnswer:
    """Turns the OpenAI chunks of a streamed answer (as dicts) into Ollama's answer: one NDJSON line per
    piece of text (:meth:`add`), then the ``done`` line (:meth:`done`); or one object
    (:meth:`complete`). ``created_at`` and durations are given by the caller (no clock here)."""

    def __init__(self, call: OllamaCall) -> None:
        self.call = call
        self._text: list[str] = []
        self._calls = CompletionBuilder()
        self._has_calls = False
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None

    def _base(self, created_at: str) -> dict[str, Any]:
        return {"model": self.call.model, "created_at": created_at}

    def _piece(self, text: str, created_at: str, tool_calls: list[Any] | None = None) -> dict[str, Any]:
        out = self._base(created_at)
        if self.call.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if tool_calls:
                message["tool_calls"] = tool_calls
            out["message"] = message
        else:
            out["response"] = text
        return out

    def add(self, chunk: dict[str, Any], created_at: str) -> bytes:
        """The NDJSON line(s) for ``chunk`` (``b""`` when it carries no text)."""
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        text = ""
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                text += delta["content"]
            if delta.get("tool_calls"):
                self._has_calls = True
                self._calls.add({"choices": [choice]})
            elif choice.get("finish_reason"):
                self._calls.add(
                    {"choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]}
                )
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        if not text:
            return b""
        self._text.append(text)
        return dumps({**self._piece(text, created_at), "done": False}) + b"\n"

    def tool_calls(self) -> list[dict[str, Any]]:
        """The tool calls asked for, in Ollama's shape (``arguments`` an object)."""
        if not self._has_calls:
            return []
        choices = self._calls.result()["choices"]
        out = []
        for call in (choices[0]["message"].get("tool_calls") or []) if choices else []:
            function = call["function"]
            try:
                args = json.loads(function["arguments"] or "{}")
            except ValueError:
                args = {}
            out.append(
                {"function": {"name": function["name"], "arguments": args if isinstance(args, dict) else {}}}
            )
        return out

    def _final(self, text: str, created_at: str, duration_ns: int, tool_calls: list[Any]) -> dict[str, Any]:
        out = self._piece(text, created_at, tool_calls)
        out["done"] = True
        out["done_reason"] = _DONE_REASON.get(self._finish or "stop", "stop")
        if self.call.kind == "generate":
            out["context"] = []
        out["total_duration"] = duration_ns
        usage = self._usage or {}
        if isinstance(usage.get("prompt_tokens"), int):
            out["prompt_eval_count"] = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            out["eval_count"] = usage["completion_tokens"]
        return out

    def done(self, created_at: str, duration_ns: int) -> bytes:
        """The last NDJSON line of a streamed answer (tool calls, if any, ride on it)."""
        return dumps(self._final("", created_at, duration_ns, self.tool_calls())) + b"\n"

    def complete(self, created_at: str, duration_ns: int) -> dict[str, Any]:
        """The whole answer as one object (``stream: false``)."""
        return self._final("".join(self._text), created_at, duration_ns, self.tool_calls())

    def loaded(self, created_at: str) -> dict[str, Any]:
        """The answer to a request with nothing to ask: the model is "loaded" (as Ollama answers)."""
        out = self._piece("", created_at)
        out.update(done=True, done_reason="load")
        return out
