"""Chat completion chunks as plain dicts, checked without the openai SDK.

:func:`check_chunk` accepts a chunk (a ``chat.completion.chunk`` object, as a node sends it) only when
every field the openai SDK's ``ChatCompletionChunk`` declares has the type it declares there: the
light path (:meth:`MimirClient.chat_raw`) yields what passed, as it came off the wire, and never loads
``openai`` or ``pydantic``. Fields it does not declare pass unchecked, as they do through the SDK's
models (``extra="allow"``), e.g. a ``reasoning`` in a delta. Where pydantic would coerce (``"5"`` or
``5.0`` for an int), the check refuses: nothing is rewritten, so what passed is what the node sent.

:func:`verbatim_json` says when the text a node sent may be passed on as it is (the gateway writes it
without encoding it again).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from json.scanner import make_scanner
from typing import Any

from mimirlite.mimir.packets import PacketError

__all__ = ["CHUNK_OBJECT", "check_chunk", "is_finished", "loads_event", "verbatim_json"]

CHUNK_OBJECT = "chat.completion.chunk"
"""``object`` of every chunk."""
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
ROLES = frozenset({"developer", "system", "user", "assistant", "tool"})
SERVICE_TIERS = frozenset({"auto", "default", "flex", "scale", "priority", "fast"})
_USAGE_INTS = ("completion_tokens", "prompt_tokens", "total_tokens")
_DETAIL_INTS = (
    "accepted_prediction_tokens", "audio_tokens", "reasoning_tokens", "rejected_prediction_tokens",
    "cached_tokens",
)  # fmt: skip


def _fail(where: str, what: str) -> PacketError:
    return PacketError(f"not a chat completion chunk: {where} {what}")


def _str(obj: dict[str, Any], key: str, where: str, *, required: bool = False) -> None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _fail(f"{where}{key}", "is missing" if key not in obj else "is null")
    elif not isinstance(value, str):
        raise _fail(f"{where}{key}", "is not a string")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dict(obj: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, dict):
        raise _fail(f"{where}{key}", "is not an object")
    return value


def _logprobs(items: Any, where: str) -> None:
    if items is None:
        return
    if not isinstance(items, list):
        raise _fail(where, "is not an array")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _fail(f"{where}[{i}]", "is not an object")
        _str(item, "token", f"{where}[{i}].", required=True)
        logprob = item.get("logprob")
        if not isinstance(logprob, (int, float)) or isinstance(logprob, bool):
            raise _fail(f"{where}[{i}].logprob", "is not a number")
        raw = item.get("bytes")
        if raw is not None and not (isinstance(raw, list) and all(_int(b) for b in raw)):
            raise _fail(f"{where}[{i}].bytes", "is not an array of integers")
        if "top_logprobs" not in item:
            raise _fail(f"{where}[{i}].top_logprobs", "is missing")
        top = item["top_logprobs"]
        if not isinstance(top, list):
            raise _fail(f"{where}[{i}].top_logprobs", "is not an array")
        for j, alt in enumerate(top):
            if not isinstance(alt, dict):
                raise _fail(f"{where}[{i}].top_logprobs[{j}]", "is not an object")
            _str(alt, "token", f"{where}[{i}].top_logprobs[{j}].", required=True)
            if not isinstance(alt.get("logprob"), (int, float)) or isinstance(alt.get("logprob"), bool):
                raise _fail(f"{where}[{i}].top_logprobs[{j}].logprob", "is not a number")


def _delta(delta: Any, where: str) -> None:
    if not isinstance(delta, dict):
        raise _fail(where, "is missing" if delta is None else "is not an object")
    where += "."
    _str(delta, "content", where)
    _str(delta, "refusal", where)
    role = delta.get("role")
    if role is not None and role not in ROLES:
        raise _fail(f"{where}role", "is not a role")
    call = _dict(delta, "function_call", where)
    if call is not None:
        _str(call, "name", f"{where}function_call.")
        _str(call, "arguments", f"{where}function_call.")
    calls = delta.get("tool_calls")
    if calls is None:
        return
    if not isinstance(calls, list):
        raise _fail(f"{where}tool_calls", "is not an array")
    for i, tool in enumerate(calls):
        at = f"{where}tool_calls[{i}]"
        if not isinstance(tool, dict):
            raise _fail(at, "is not an object")
        if not _int(tool.get("index")):
            raise _fail(f"{at}.index", "is not an integer")
        _str(tool, "id", f"{at}.")
        if tool.get("type") not in (None, "function"):
            raise _fail(f"{at}.type", "is not 'function'")
        function = _dict(tool, "function", f"{at}.")
        if function is not None:
            _str(function, "name", f"{at}.function.")
            _str(function, "arguments", f"{at}.function.")


def _usage(usage: dict[str, Any]) -> None:
    for key in _USAGE_INTS:
        if not _int(usage.get(key)):
            raise _fail(f"usage.{key}", "is not an integer")
    for key in ("completion_tokens_details", "prompt_tokens_details"):
        details = _dict(usage, key, "usage.")
        if details is not None:
            for name in _DETAIL_INTS:
                value = details.get(name)
                if value is not None and not _int(value):
                    raise _fail(f"usage.{key}.{name}", "is not an integer")


def check_chunk(obj: Any) -> bool:
    """Check ``obj`` (a parsed chunk) as the openai SDK's ``ChatCompletionChunk`` types it; PacketError
    naming the first field that is wrong. Returns whether a choice carries a ``finish_reason``."""
    if not isinstance(obj, dict):
        raise _fail("the chunk", "is not an object")
    _str(obj, "id", "", required=True)
    _str(obj, "model", "", required=True)
    if obj.get("object") != CHUNK_OBJECT:
        raise _fail("object", f"is not {CHUNK_OBJECT!r}")
    if not _int(obj.get("created")):
        raise _fail("created", "is not an integer")
    _str(obj, "system_fingerprint", "")
    tier = obj.get("service_tier")
    if tier is not None and tier not in SERVICE_TIERS:
        raise _fail("service_tier", "is not a service tier")
    usage = _dict(obj, "usage", "")
    if usage is not None:
        _usage(usage)
    choices = obj.get("choices")
    if not isinstance(choices, list):
        raise _fail("choices", "is missing" if choices is None else "is not an array")
    finished = False
    for i, choice in enumerate(choices):
        where = f"choices[{i}]"
        if not isinstance(choice, dict):
            raise _fail(where, "is not an object")
        if not _int(choice.get("index")):
            raise _fail(f"{where}.index", "is not an integer")
        _delta(choice.get("delta"), f"{where}.delta")
        reason = choice.get("finish_reason")
        if reason is not None:
            if reason not in FINISH_REASONS:
                raise _fail(f"{where}.finish_reason", "is not a finish reason")
            finished = True
        logprobs = _dict(choice, "logprobs", f"{where}.")
        if logprobs is not None:
            _logprobs(logprobs.get("content"), f"{where}.logprobs.content")
            _logprobs(logprobs.get("refusal"), f"{where}.logprobs.refusal")
    return finished


def is_finished(chunk: dict[str, Any]) -> bool:
    """Whether a checked chunk ends its choice (one of its choices carries a ``finish_reason``)."""
    return any(c.get("finish_reason") for c in chunk["choices"])


class _Unsafe(ValueError):
    """The text holds what another JSON parser could read differently: do not pass it on as it is."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Unsafe("duplicate key")
    return obj


def _constant(name: str) -> Any:
    raise _Unsafe(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Unsafe("number out of range")
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def verbatim_json(text: str) -> bool:
    """Whether ``text`` (a JSON document that parses) reads the same in any JSON parser and fits on one
    SSE line: no line break, no lone surrogate escape (``\\ud800``, which strict parsers refuse)."""
    return "\n" not in text and "\r" not in text and ("\\u" not in text or not _SURROGATE_ESCAPE.search(text))


# Built once, the scanner called directly (as wire/lp.py does): json.loads with hooks builds a decoder
# per call, and its decode() matches white space twice; the decoder stays the judge of what the
# scanner stops at (white space around the document, or not JSON).
_STRICT = json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_constant, parse_float=_finite)
_scan_strict: Callable[[str, int], tuple[Any, int]] = make_scanner(_STRICT)  # type: ignore[arg-type]


def _loads_strict(text: str) -> Any:
    if text.startswith("\ufeff"):
        return json.loads(text)  # refused as json.loads refuses it
    try:
        obj, end = _scan_strict(text, 0)
    except StopIteration:
        return _STRICT.decode(text)
    return obj if end == len(text) else _STRICT.decode(text)


def loads_event(text: str) -> tuple[Any, bool]:
    """Parse one SSE event's JSON; returns ``(obj, verbatim)``: ``verbatim`` when the text may be passed
    on as it is: besides :func:`verbatim_json`, no duplicate key (parsers differ on which one wins),
    no ``NaN``/``Infinity`` and no number beyond a float (not JSON). PacketError when it is not JSON."""
    try:
        obj = _loads_strict(text)
    except _Unsafe:
        pass
    except (ValueError, RecursionError):
        raise PacketError("SSE event is not JSON") from None
    else:
        return obj, verbatim_json(text)
    try:
        return json.loads(text), False
    except (ValueError, RecursionError):
        raise PacketError("SSE event is not JSON") from None
