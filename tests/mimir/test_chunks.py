"""The light check of chat completion chunks (mimirlite/mimir/chunks.py) against the openai SDK's own
``ChatCompletionChunk``: what one accepts the other does, except the coercions pydantic makes (refused
here, so that what passes is what the node sent); and when a node's JSON text may be passed on as it is."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from openai.types.chat import ChatCompletionChunk

from mimirlite.mimir.chunks import check_chunk, is_finished, loads_event, verbatim_json
from mimirlite.mimir.packets import PacketError

BASE: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "m",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": None}],
}

Edit = Callable[[dict[str, Any]], object]


def delta(**fields: Any) -> Edit:
    return lambda c: c["choices"][0]["delta"].update(fields)


def choice(**fields: Any) -> Edit:
    return lambda c: c["choices"][0].update(fields)


LOGPROB = {
    "token": "hi",
    "logprob": -0.5,
    "bytes": [104, 105],
    "top_logprobs": [{"token": "hi", "logprob": -0.5}],
}
USAGE = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
CALL = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{"}}

# (name, edit, accepted): the SDK's model and the light check agree on each
CASES: list[tuple[str, Edit, bool]] = [
    ("plain", lambda c: None, True),
    ("usage chunk", lambda c: c.update(choices=[], usage=USAGE), True),
    (
        "usage with details",
        lambda c: c.update(usage={**USAGE, "prompt_tokens_details": {"cached_tokens": 1}}),
        True,
    ),
    ("usage null", lambda c: c.update(usage=None), True),
    ("extra fields pass", lambda c: c.update(x_node={"any": ["thing"]}), True),
    ("extra delta field", delta(reasoning="thinking"), True),
    ("finish reason", choice(finish_reason="length"), True),
    ("no finish_reason", lambda c: c["choices"][0].pop("finish_reason"), True),
    ("tool call", delta(tool_calls=[CALL]), True),
    ("function call", delta(function_call={"name": "f", "arguments": "{}"}), True),
    ("refusal", delta(refusal="no"), True),
    ("logprobs", choice(logprobs={"content": [LOGPROB], "refusal": None}), True),
    ("service tier", lambda c: c.update(service_tier="default"), True),
    ("fingerprint", lambda c: c.update(system_fingerprint="fp"), True),
    ("not an object", lambda c: c.clear(), False),
    ("no id", lambda c: c.pop("id"), False),
    ("id a number", lambda c: c.update(id=5), False),
    ("no model", lambda c: c.pop("model"), False),
    ("other object", lambda c: c.update(object="chat.completion"), False),
    ("no created", lambda c: c.pop("created"), False),
    ("created a fraction", lambda c: c.update(created=1.5), False),
    ("no choices", lambda c: c.pop("choices"), False),
    ("choices null", lambda c: c.update(choices=None), False),
    ("choice a number", lambda c: c.update(choices=[5]), False),
    ("no index", lambda c: c["choices"][0].pop("index"), False),
    ("no delta", lambda c: c["choices"][0].pop("delta"), False),
    ("delta null", choice(delta=None), False),
    ("content a number", delta(content=5), False),
    ("unknown role", delta(role="root"), False),
    ("unknown finish reason", choice(finish_reason="bored"), False),
    ("tool call without index", delta(tool_calls=[{"id": "x"}]), False),
    ("tool call of another type", delta(tool_calls=[{**CALL, "type": "shell"}]), False),
    ("tool arguments an object", delta(tool_calls=[{**CALL, "function": {"arguments": {}}}]), False),
    ("partial usage", lambda c: c.update(usage={"prompt_tokens": 1}), False),
    (
        "usage detail a list",
        lambda c: c.update(usage={**USAGE, "prompt_tokens_details": {"cached_tokens": [1]}}),
        False,
    ),
    ("logprob without top", choice(logprobs={"content": [{"token": "a", "logprob": 0}]}), False),
    ("logprob a list", choice(logprobs={"content": [{**LOGPROB, "logprob": [-1]}]}), False),
    ("unknown service tier", lambda c: c.update(service_tier="free"), False),
    ("fingerprint a number", lambda c: c.update(system_fingerprint=3), False),
]


def sdk_accepts(obj: Any) -> bool:
    try:
        ChatCompletionChunk.model_validate(obj)
    except ValueError:
        return False
    return True


def light_accepts(obj: Any) -> bool:
    try:
        check_chunk(obj)
    except PacketError:
        return False
    return True


@pytest.mark.parametrize(("edit", "accepted"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_light_check_agrees_with_the_sdk(edit: Edit, accepted: bool) -> None:
    chunk = copy.deepcopy(BASE)
    edit(chunk)
    assert (light_accepts(chunk), sdk_accepts(chunk)) == (accepted, accepted)


# what pydantic coerces (a node's "5" becomes 5): refused here, never rewritten
COERCED: list[tuple[str, Edit]] = [
    ("created a string", lambda c: c.update(created="1700000000")),
    ("created a float", lambda c: c.update(created=1700000000.0)),
    ("created a boolean", lambda c: c.update(created=True)),
    ("index a string", choice(index="0")),
    ("logprob a string", choice(logprobs={"content": [{**LOGPROB, "logprob": "-1"}]})),
    (
        "usage detail a string",
        lambda c: c.update(usage={**USAGE, "prompt_tokens_details": {"cached_tokens": "1"}}),
    ),
]


@pytest.mark.parametrize("edit", [c[1] for c in COERCED], ids=[c[0] for c in COERCED])
def test_what_pydantic_would_coerce_is_refused(edit: Edit) -> None:
    chunk = copy.deepcopy(BASE)
    edit(chunk)
    assert sdk_accepts(chunk) and not light_accepts(chunk)


def test_finish_is_reported() -> None:
    chunk = copy.deepcopy(BASE)
    assert check_chunk(chunk) is False and not is_finished(chunk)
    chunk["choices"].append({"index": 1, "delta": {}, "finish_reason": "stop"})
    assert check_chunk(chunk) is True and is_finished(chunk)
    with pytest.raises(PacketError, match=r"choices\[0\]\.delta\.content"):
        check_chunk({**BASE, "choices": [{"index": 0, "delta": {"content": ["x"]}}]})


@pytest.mark.parametrize(
    ("text", "verbatim"),
    [
        ('{"a":1,"b":[1.5,"\\u00e9t\\u00e9"],"c":{"d":null}}', True),
        ('{"a":"h\u00e9llo"}', True),
        ('{"a":1,"a":2}', False),  # parsers differ on which one wins
        ('{"a":{"b":1,"b":2}}', False),
        ('{"a":NaN}', False),  # not JSON
        ('{"a":-Infinity}', False),
        ('{"a":1e400}', False),  # beyond a float: infinity here
        ('{"a":\n1}', False),  # two SSE data lines
        ('{"a":\r1}', False),
        ('{"a":"\\ud800"}', False),  # a lone surrogate: strict parsers refuse it
        ('{"a":"\\uDBFF"}', False),
        ('{"a":"\\ud7ff"}', True),
    ],
)
def test_verbatim_only_what_reads_the_same_everywhere(text: str, verbatim: bool) -> None:
    obj, ok = loads_event(text)
    assert ok is verbatim
    assert isinstance(obj, dict) and "a" in obj


def test_duplicate_keys_read_as_python_reads_them_and_junk_is_refused() -> None:
    assert loads_event('{"a":1,"a":2}') == ({"a": 2}, False)
    assert verbatim_json('{"a":1}') and not verbatim_json('{"a":\n1}')
    for junk in ("", "{", "[DONE", '{"a":1}x'):
        with pytest.raises(PacketError, match="not JSON"):
            loads_event(junk)
