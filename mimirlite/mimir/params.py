"""What a chat request may ask of a backend: the OpenAI chat-completion fields allowed, each checked.

One allowlist shared by the node (a ``message`` packet's data) and the gateway (a ``POST
/v1/chat/completions`` body). A field not in :data:`ALLOWED` is refused, whatever it is: the openai
SDK's own keyword arguments (``extra_body``, ``extra_headers``, ``extra_query``, ``timeout``) would let a
peer choose the model, the headers, the URL or the timeout of the operator's backend call, and fields
such as ``service_tier``, ``store``, ``metadata``, ``audio``, ``prediction`` or ``web_search_options``
cost the operator or keep data on its account. Every allowed value is type-checked and bounded and
copied into fresh dicts and lists, so unknown keys nested in a peer's objects never reach the backend.

Pure functions on decoded JSON; a refusal is a :class:`ParamError` naming the field (``param``), which
the node answers as ``bad_request`` and the gateway as ``400`` with ``param`` set.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from mimirlite.errors import MimirliteError

MAX_N = 8
"""Most choices one request may ask for (``n``): each is a full answer the backend computes."""
MAX_TOKENS_LIMIT = 2**31 - 1
"""Largest ``max_tokens`` / ``max_completion_tokens`` taken (a node's ``max_tokens`` cap clamps lower)."""
MAX_STOP = 4
"""Stop sequences, as OpenAI allows."""
MAX_STOP_CHARS = 256
"""Characters in one stop sequence."""
MAX_LOGIT_BIAS = 300
"""Entries in ``logit_bias``."""
MAX_TOP_LOGPROBS = 20
"""Largest ``top_logprobs``, as OpenAI documents."""
MAX_TOOLS = 128
"""Function tools in one request, as OpenAI allows."""
MAX_TEXT_FIELD = 16 * 1024
"""Characters in a tool or schema description."""
MAX_NAME = 256
"""Characters in a name, an id, ``user`` or ``model``."""
MAX_SCHEMA_DEPTH = 32
"""Nesting of a free-form JSON value (a JSON schema, tool parameters)."""
MAX_MESSAGES = 4096
"""Messages in one request."""
MAX_PARTS = 256
"""Content parts in one message."""
MAX_TOOL_CALLS = 128
"""Tool calls in one assistant message."""
MAX_SEED = 2**63 - 1
"""``seed`` is a signed 64-bit integer."""

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
"""Message roles taken."""

NEVER = frozenset({"extra_body", "extra_headers", "extra_query", "timeout"})
"""The openai SDK's own keyword arguments: never taken from a request (they are not in ALLOWED)."""

_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOKEN_ID = re.compile(r"(?:0|[1-9][0-9]{0,9})")


class ParamError(MimirliteError):
    """A request field that is not allowed or not well-formed; ``param`` names it (``messages[0].role``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def _bad(param: str, what: str) -> ParamError:
    return ParamError(param, f"Invalid '{param}': {what}.")


# ---- scalar checks ----


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(param: str, value: Any, low: float, high: float) -> int | float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _bad(param, f"expected a number between {low:g} and {high:g}")
    # compared before any float conversion: an integer of 400 digits does not fit in a float
    if not low <= value <= high or (isinstance(value, float) and not math.isfinite(value)):
        raise _bad(param, f"expected a number between {low:g} and {high:g}")
    return value


def _integer(param: str, value: Any, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:
        raise _bad(param, f"expected an integer between {low} and {high}")
    return int(value)


def _boolean(param: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(param, "expected a boolean")
    return value


def _string(param: str, value: Any, limit: int, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise _bad(param, "expected a string")
    if len(value) > limit:
        raise _bad(param, f"longer than {limit} characters")
    if not empty and not value:
        raise _bad(param, "expected a non-empty string")
    return value


def _text(param: str, value: Any) -> str:
    """Message text: any string (the packet or body size bounds it)."""
    if not isinstance(value, str):
        raise _bad(param, "expected a string")
    return value


def _choice(param: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _bad(param, "expected one of " + ", ".join(repr(c) for c in choices))
    return value


def _object(
    param: str, value: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``value`` as a dict with the ``required`` keys and no key outside ``required + optional``."""
    if not isinstance(value, dict):
        raise _bad(param, "expected an object")
    for key in value:
        if key not in required and key not in optional:
            name = f"{param}.{str(key)[:MAX_NAME]}"
            raise ParamError(name, f"Unrecognized argument supplied: '{name}'.")
    for key in required:
        if key not in value:
            raise ParamError(f"{param}.{key}", f"Missing required parameter: '{param}.{key}'.")
    return value


def _list(param: str, value: Any, limit: int, *, empty: bool = True) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(param, "expected an array")
    if len(value) > limit:
        raise _bad(param, f"more than {limit} items")
    if not empty and not value:
        raise _bad(param, "expected a non-empty array")
    return value


def _json(param: str, value: Any, depth: int = 0) -> Any:
    """A copy of a free-form JSON value (a schema), nested at most MAX_SCHEMA_DEPTH, numbers finite."""
    if depth > MAX_SCHEMA_DEPTH:
        raise _bad(param, f"nested deeper than {MAX_SCHEMA_DEPTH}")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad(param, "numbers must be finite")
        return value
    if isinstance(value, list):
        return [_json(param, v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(param, v, depth + 1) for k, v in value.items()}
    raise _bad(param, "expected JSON")


def _json_object(param: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(param, "expected an object")
    out: dict[str, Any] = _json(param, value)
    return out


# ---- parameters ----


def _stop(param: str, value: Any) -> str | list[str] | None:
    if value is None or isinstance(value, str):
        return None if value is None else _string(param, value, MAX_STOP_CHARS)
    items = _list(param, value, MAX_STOP)
    return [_string(f"{param}[{i}]", s, MAX_STOP_CHARS) for i, s in enumerate(items)]


def _logit_bias(param: str, value: Any) -> dict[str, int | float]:
    if not isinstance(value, dict):
        raise _bad(param, "expected an object mapping token IDs to biases")
    if len(value) > MAX_LOGIT_BIAS:
        raise _bad(param, f"more than {MAX_LOGIT_BIAS} entries")
    out: dict[str, int | float] = {}
    for key, bias in value.items():
        if not isinstance(key, str) or not _TOKEN_ID.fullmatch(key):
            raise _bad(param, f"key {str(key)[:40]!r} is not a token ID")
        out[key] = _number(f"{param}.{key}", bias, -100, 100)
    return out


def _response_format(param: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(param, "expected an object")
    kind = _choice(f"{param}.type", value.get("type"), ("text", "json_object", "json_schema"))
    if kind != "json_schema":
        _object(param, value, ("type",))
        return {"type": kind}
    _object(param, value, ("type", "json_schema"))
    schema = _named_schema(f"{param}.json_schema", value["json_schema"], "schema")
    return {"type": kind, "json_schema": schema}


def _named_schema(param: str, value: Any, schema_key: str) -> dict[str, Any]:
    """A name, optional description, JSON schema under ``schema_key`` and ``strict`` flag (a response
    format's json_schema, a tool's function)."""
    spec = _object(param, value, ("name",), ("description", schema_key, "strict"))
    out: dict[str, Any] = {"name": _function_name(f"{param}.name", spec["name"])}
    if spec.get("description") is not None:
        out["description"] = _string(f"{param}.description", spec["description"], MAX_TEXT_FIELD)
    if spec.get(schema_key) is not None:
        out[schema_key] = _json_object(f"{param}.{schema_key}", spec[schema_key])
    if spec.get("strict") is not None:
        out["strict"] = _boolean(f"{param}.strict", spec["strict"])
    return out


def _function_name(param: str, value: Any) -> str:
    if not isinstance(value, str) or not _FUNCTION_NAME.fullmatch(value):
        raise _bad(param, "expected a name of 1 to 64 letters, digits, '_' or '-'")
    return value


def _tools(param: str, value: Any) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(_list(param, value, MAX_TOOLS)):
        p = f"{param}[{i}]"
        _object(p, tool, ("type", "function"))
        _choice(f"{p}.type", tool["type"], ("function",))
        function = _named_schema(f"{p}.function", tool["function"], "parameters")
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(param: str, value: Any) -> str | dict[str, Any]:
    if isinstance(value, str):
        return _choice(param, value, ("none", "auto", "required"))
    _object(param, value, ("type", "function"))
    _choice(f"{param}.type", value["type"], ("function",))
    function = _object(f"{param}.function", value["function"], ("name",))
    name = _function_name(f"{param}.function.name", function["name"])
    return {"type": "function", "function": {"name": name}}


def _stream_options(param: str, value: Any) -> dict[str, Any]:
    options = _object(param, value, (), ("include_usage",))
    if options.get("include_usage") is None:
        return {}
    return {"include_usage": _boolean(f"{param}.include_usage", options["include_usage"])}


def _user(param: str, value: Any) -> str:
    return _string(param, value, MAX_NAME)


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "temperature": lambda p, v: _number(p, v, 0, 2),
    "top_p": lambda p, v: _number(p, v, 0, 1),
    "max_tokens": lambda p, v: _integer(p, v, 1, MAX_TOKENS_LIMIT),
    "max_completion_tokens": lambda p, v: _integer(p, v, 1, MAX_TOKENS_LIMIT),
    "stop": _stop,
    "seed": lambda p, v: _integer(p, v, -MAX_SEED - 1, MAX_SEED),
    "presence_penalty": lambda p, v: _number(p, v, -2, 2),
    "frequency_penalty": lambda p, v: _number(p, v, -2, 2),
    "logit_bias": _logit_bias,
    "logprobs": _boolean,
    "top_logprobs": lambda p, v: _integer(p, v, 0, MAX_TOP_LOGPROBS),
    "response_format": _response_format,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _boolean,
    "user": _user,
    "stream_options": _stream_options,
    "n": lambda p, v: _integer(p, v, 1, MAX_N),
}

ALLOWED: frozenset[str] = frozenset(_CHECKS)
"""The parameters a backend may receive, besides ``model``, ``messages`` and ``stream``."""


def check_params(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The allowed parameters of ``fields``, checked, as a fresh dict; ParamError for the first field that
    is not allowed or not well-formed. A field set to ``null`` is left out (as not given)."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        check = _CHECKS.get(name)
        if check is None:
            shown = str(name)[:MAX_NAME]
            raise ParamError(shown, f"Unrecognized request argument supplied: {shown}")
        if value is None:
            continue
        out[name] = check(name, value)
    return out


def clamp_max_tokens(params: Mapping[str, Any], cap: int | None) -> dict[str, Any]:
    """``params`` with ``max_tokens`` / ``max_completion_tokens`` at most ``cap``; ``max_tokens=cap`` when
    neither is asked (a cap is a cap). ``cap`` None: unchanged."""
    out = dict(params)
    if cap is None:
        return out
    asked = False
    for name in ("max_tokens", "max_completion_tokens"):
        if out.get(name) is not None:
            asked = True
            out[name] = min(out[name], cap)
    if not asked:
        out["max_tokens"] = cap
    return out


# ---- messages ----


def _parts(param: str, value: Any, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, part in enumerate(_list(param, value, MAX_PARTS)):
        p = f"{param}[{i}]"
        if not isinstance(part, dict):
            raise _bad(p, "expected a content part object")
        kind = _choice(f"{p}.type", part.get("type"), kinds)
        if kind == "text":
            _object(p, part, ("type", "text"))
            out.append({"type": "text", "text": _text(f"{p}.text", part["text"])})
        elif kind == "refusal":
            _object(p, part, ("type", "refusal"))
            out.append({"type": "refusal", "refusal": _text(f"{p}.refusal", part["refusal"])})
        else:  # image_url
            _object(p, part, ("type", "image_url"))
            ip = f"{p}.image_url"
            image = _object(ip, part["image_url"], ("url",), ("detail",))
            url = _text(f"{ip}.url", image["url"])
            if not url.startswith("data:"):
                # A remote URL would make a backend on the operator's machine fetch an address the
                # peer chose; an image travels inline as a data: URL.
                raise _bad(f"{ip}.url", "only data: URLs are accepted")
            out_image: dict[str, Any] = {"url": url}
            if image.get("detail") is not None:
                out_image["detail"] = _choice(f"{ip}.detail", image["detail"], ("auto", "low", "high"))
            out.append({"type": "image_url", "image_url": out_image})
    return out


_CONTENT_KINDS = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
}
_MESSAGE_KEYS = {
    "system": ("role", "content", "name"),
    "developer": ("role", "content", "name"),
    "user": ("role", "content", "name"),
    # An SDK's ChatCompletionMessage sent back as history carries the answer's other fields (often null).
    "assistant": (
        "role",
        "content",
        "name",
        "refusal",
        "tool_calls",
        "function_call",
        "audio",
        "annotations",
    ),
    "tool": ("role", "content", "tool_call_id"),
}


def _tool_calls(param: str, value: Any) -> list[dict[str, Any]]:
    out = []
    for i, call in enumerate(_list(param, value, MAX_TOOL_CALLS)):
        p = f"{param}[{i}]"
        _object(p, call, ("id", "type", "function"))
        _choice(f"{p}.type", call["type"], ("function",))
        function = _object(f"{p}.function", call["function"], ("name", "arguments"))
        out.append(
            {
                "id": _string(f"{p}.id", call["id"], MAX_NAME, empty=False),
                "type": "function",
                "function": {
                    "name": _function_name(f"{p}.function.name", function["name"]),
                    "arguments": _text(f"{p}.function.arguments", function["arguments"]),
                },
            }
        )
    return out


def _message(param: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(param, "expected a message object with a 'role'")
    role = value.get("role")
    if not isinstance(role, str):
        raise ParamError(f"{param}.role", f"Missing required parameter: '{param}.role'.")
    role = _choice(f"{param}.role", role, tuple(sorted(ROLES)))
    _object(param, value, ("role",), _MESSAGE_KEYS[role])
    out: dict[str, Any] = {"role": role}
    content = value.get("content")
    cp = f"{param}.content"
    if content is None:
        if role != "assistant" or not (value.get("tool_calls") or value.get("refusal")):
            raise ParamError(cp, f"Missing required parameter: '{cp}'.")
        out["content"] = None
    elif isinstance(content, str):
        out["content"] = content
    elif isinstance(content, list):
        out["content"] = _parts(cp, content, _CONTENT_KINDS[role])
    else:
        raise _bad(cp, "expected a string or an array of content parts")
    if value.get("name") is not None:
        out["name"] = _string(f"{param}.name", value["name"], MAX_NAME, empty=False)
    if role == "tool":
        call_id = value.get("tool_call_id")
        out["tool_call_id"] = _string(f"{param}.tool_call_id", call_id, MAX_NAME, empty=False)
    elif role == "assistant":
        if value.get("refusal") is not None:
            out["refusal"] = _text(f"{param}.refusal", value["refusal"])
        if value.get("tool_calls") is not None:
            out["tool_calls"] = _tool_calls(f"{param}.tool_calls", value["tool_calls"])
        for key in ("function_call", "audio"):  # accepted as null only: deprecated or paid output
            if value.get(key) is not None:
                raise _bad(f"{param}.{key}", "only null is accepted")
        if value.get("annotations") is not None:  # answer metadata, not input: left out
            _list(f"{param}.annotations", value["annotations"], MAX_PARTS)
    return out


def check_messages(value: Any, param: str = "messages") -> list[dict[str, Any]]:
    """The messages, checked and copied (only the keys OpenAI defines for each role); ParamError naming
    the first bad one (``messages[2].content[0].text``)."""
    if not isinstance(value, list) or not value:
        raise _bad(param, "expected a non-empty array of messages")
    if len(value) > MAX_MESSAGES:
        raise _bad(param, f"more than {MAX_MESSAGES} messages")
    return [_message(f"{param}[{i}]", m) for i, m in enumerate(value)]


def check_model(value: Any, param: str = "model") -> str:
    """A model name: a non-empty string of at most MAX_NAME characters."""
    return _string(param, value, MAX_NAME, empty=False)
