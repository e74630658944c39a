"""The chat parameter allowlist (mimirlite/mimir/params.py) on literal values, and a property over
arbitrary JSON: only the project's errors, only allowlisted names out, checked copies that check again
to themselves."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimirlite.errors import LocalError, MimirliteError
from mimirlite.gateway import api
from mimirlite.mimir import NodeLimits, packets, params
from mimirlite.mimir.params import ALLOWED, ParamError, check_messages, check_params, clamp_max_tokens

USER = [{"role": "user", "content": "hi"}]
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}, "strict": True},
}

GOOD: list[dict[str, Any]] = [
    {"temperature": 0, "top_p": 1, "max_tokens": 1, "max_completion_tokens": 100},
    {"temperature": 2.0, "top_p": 0.5, "seed": -(2**63), "presence_penalty": -2, "frequency_penalty": 2},
    {"stop": "\n", "n": 8, "user": "u-1", "logprobs": True, "top_logprobs": 20},
    {"stop": ["a", "b", "c", "d"], "logit_bias": {"50256": -100, "0": 100, "17": 0.5}},
    {"response_format": {"type": "text"}},
    {"response_format": {"type": "json_object"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}}},
    {"tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False},
    {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"stream_options": {"include_usage": True}},
]


@pytest.mark.parametrize("fields", GOOD)
def test_allowed_parameters_pass_unchanged(fields: dict[str, Any]) -> None:
    assert check_params(fields) == fields


def test_null_is_not_given() -> None:
    assert check_params({"temperature": None, "stop": None, "max_tokens": 3}) == {"max_tokens": 3}


BAD: list[tuple[dict[str, Any], str]] = [
    ({"extra_body": {"model": "gpt-4-expensive"}}, "extra_body"),
    ({"extra_headers": {"Authorization": "Bearer x"}}, "extra_headers"),
    ({"extra_query": {"api-version": "1"}}, "extra_query"),
    ({"timeout": 0.001}, "timeout"),
    ({"self": 1}, "self"),
    ({"messages": USER}, "messages"),
    ({"model": "m"}, "model"),
    ({"service_tier": "priority"}, "service_tier"),
    ({"store": True}, "store"),
    ({"metadata": {"a": "b"}}, "metadata"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": 10**400}, "temperature"),
    ({"frequency_penalty": -(10**400)}, "frequency_penalty"),
    ({"max_tokens": 10**400}, "max_tokens"),
    ({"top_p": math.inf}, "top_p"),
    ({"presence_penalty": -3}, "presence_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_completion_tokens": 2**31}, "max_completion_tokens"),
    ({"seed": 2**63}, "seed"),
    ({"n": 9}, "n"),
    ({"n": 0}, "n"),
    ({"n": True}, "n"),
    ({"stop": ["a"] * 5}, "stop"),
    ({"stop": [1]}, "stop[0]"),
    ({"stop": "x" * 257}, "stop"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"-1": 1}}, "logit_bias"),
    ({"logit_bias": {"7": 101}}, "logit_bias.7"),
    ({"logit_bias": {"7": False}}, "logit_bias.7"),
    ({"logit_bias": {"7": 10**400}}, "logit_bias.7"),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ({"logprobs": 1}, "logprobs"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "text", "x": 1}}, "response_format.x"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "text", "x" * 10_000: 1}}, "response_format." + "x" * params.MAX_NAME),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": [1]}}},
        "response_format.json_schema.schema",
    ),
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": [TOOL] * 129}, "tools"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].function"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "x": 1}}]}, "tools[0].function.x"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]},
        "tools[0].function.strict",
    ),
    ({"tool_choice": "always"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name"),
    ({"parallel_tool_calls": 0}, "parallel_tool_calls"),
    ({"user": 7}, "user"),
    ({"user": "u" * 257}, "user"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"stream_options": {"include_obfuscation": False}}, "stream_options.include_obfuscation"),
    ({"stream_options": True}, "stream_options"),
]


@pytest.mark.parametrize(("fields", "param"), BAD)
def test_anything_else_is_refused_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ParamError) as err:
        check_params(fields)
    assert err.value.param == param
    assert param.split(".")[0].split("[")[0] in err.value.message


def test_deep_schema_is_refused_without_recursion() -> None:
    schema: Any = {}
    for _ in range(10_000):
        schema = {"a": schema}
    with pytest.raises(ParamError):
        check_params({"tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]})


def test_the_sdk_arguments_are_never_allowed() -> None:
    assert not params.NEVER & ALLOWED
    assert not {"self", "model", "messages", "stream"} & ALLOWED


def test_values_are_fresh_copies_without_extra_keys() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    fields = {"tools": [TOOL | {"function": {"name": "f", "parameters": schema}}], "stop": ["a"]}
    out = check_params(fields)
    assert out == fields
    assert out["tools"][0]["function"]["parameters"] is not schema
    assert out["stop"] is not fields["stop"]


GOOD_MESSAGES: list[list[dict[str, Any]]] = [
    USER,
    [{"role": "system", "content": "be brief", "name": "sys"}, {"role": "developer", "content": "x"}],
    [{"role": "user", "content": [{"type": "text", "text": "what is this?"}]}],
    [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ],
        }
    ],
    [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
    ],
    [{"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}],
]


@pytest.mark.parametrize("messages", GOOD_MESSAGES)
def test_good_messages_pass_unchanged(messages: list[dict[str, Any]]) -> None:
    assert check_messages(messages) == messages


def test_an_sdk_answer_sent_back_as_history_passes_without_its_null_fields() -> None:
    answer = {
        "role": "assistant",
        "content": "hi",
        "refusal": None,
        "annotations": [],
        "audio": None,
        "function_call": None,
        "tool_calls": None,
    }
    assert check_messages([answer]) == [{"role": "assistant", "content": "hi"}]


BAD_MESSAGES: list[tuple[Any, str]] = [
    (None, "messages"),
    ([], "messages"),
    (["hi"], "messages[0]"),
    ([{"content": "x"}], "messages[0].role"),
    ([{"role": "wizard", "content": "x"}], "messages[0].role"),
    ([{"role": "user"}], "messages[0].content"),
    ([{"role": "user", "content": 5}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages[0].content[0].text"),
    ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text"),
    ([{"role": "user", "content": ["hi"]}], "messages[0].content[0]"),
    ([{"role": "user", "content": [{"type": "video"}]}], "messages[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "text", "text": "a", "x": 1}]}], "messages[0].content[0].x"),
    (
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://10.0.0.1/"}}]}],
        "messages[0].content[0].image_url.url",
    ),
    (
        [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "data:"}}]}],
        "messages[0].content[0].type",
    ),
    ([{"role": "user", "content": "x", "extra_body": {}}], "messages[0].extra_body"),
    ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id"),
    ([{"role": "assistant", "content": None}, *USER], "messages[0].content"),
    (
        [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}],
        "messages[0].tool_calls[0].function",
    ),
    ([{"role": "assistant", "content": "x", "function_call": {"name": "f"}}], "messages[0].function_call"),
    ([*USER, {"role": "user", "content": "x", "name": 3}], "messages[1].name"),
    ([{"role": "user", "content": "x"}] * (params.MAX_MESSAGES + 1), "messages"),
]


@pytest.mark.parametrize(("messages", "param"), BAD_MESSAGES)
def test_bad_messages_are_refused_naming_the_field(messages: Any, param: str) -> None:
    with pytest.raises(ParamError) as err:
        check_messages(messages)
    assert err.value.param == param


def test_node_and_gateway_refuse_the_same_way() -> None:
    with pytest.raises(packets.BadRequestError, match="extra_body"):
        packets.parse_chat_request({"messages": USER, "extra_body": {"model": "gpt-4-expensive"}})
    with pytest.raises(packets.BadRequestError, match=r"messages\[0\]\.content\[0\]\.text"):
        packets.parse_chat_request({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]})
    request = packets.parse_chat_request({"messages": USER, "stream": True, "temperature": 0.5, "n": 2})
    assert request.params == {"temperature": 0.5, "n": 2}
    with pytest.raises(api.ApiError) as err:
        api.parse_chat_body(b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "timeout": 1}')
    assert err.value.status == 400 and err.value.param == "timeout"


def test_clamp_max_tokens() -> None:
    assert clamp_max_tokens({"temperature": 1}, None) == {"temperature": 1}
    assert clamp_max_tokens({"temperature": 1}, 50) == {"temperature": 1, "max_tokens": 50}
    assert clamp_max_tokens({"max_tokens": 500}, 50) == {"max_tokens": 50}
    assert clamp_max_tokens({"max_tokens": 5}, 50) == {"max_tokens": 5}
    assert clamp_max_tokens({"max_completion_tokens": 500}, 50) == {"max_completion_tokens": 50}
    both = clamp_max_tokens({"max_completion_tokens": 500, "max_tokens": 7}, 50)
    assert both == {"max_completion_tokens": 50, "max_tokens": 7}
    assert NodeLimits(max_tokens=50).max_tokens == 50 and NodeLimits().max_tokens is None
    with pytest.raises(LocalError):
        NodeLimits(max_tokens=0)


# ---- property: arbitrary JSON ----

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400), 2**63, 2**31])
    | st.floats()
    | st.text(max_size=8)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
)
_names = st.sampled_from(sorted(ALLOWED | {"extra_body", "timeout", "self", "x"})) | st.text(max_size=6)
_fields = st.dictionaries(_names, _json | st.sampled_from([v for g in GOOD for v in g.values()]), max_size=4)
_parts = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "refusal", "x"])}, optional={"text": _json}
    ),
    max_size=3,
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from([*params.ROLES, "x"])},
    optional={
        "content": _json | _parts | st.text(),
        "name": _json,
        "tool_call_id": _json,
        "tool_calls": _json,
    },
)
_messages = st.lists(_message, max_size=3) | _json


def _shares_a_container(a: Any, b: Any) -> bool:
    """Whether ``a`` holds (anywhere) a dict or list object that ``b`` holds too."""
    seen: set[int] = set()

    def walk(x: Any, out: set[int]) -> None:
        if isinstance(x, (dict, list)):
            out.add(id(x))
            for v in x.values() if isinstance(x, dict) else x:
                walk(v, out)

    walk(b, seen)
    mine: set[int] = set()
    walk(a, mine)
    return bool(mine & seen)


@settings(max_examples=400, deadline=None)
@given(_fields)
def test_params_property(fields: dict[str, Any]) -> None:
    try:
        out = check_params(fields)
    except MimirliteError as exc:
        assert isinstance(exc, ParamError) and isinstance(exc.param, str)
        return
    assert set(out) <= ALLOWED
    assert check_params(out) == out
    assert not _shares_a_container(out, fields)
    assert clamp_max_tokens(out, 10).get("max_tokens", 0) <= 10


@settings(max_examples=400, deadline=None)
@given(_messages)
def test_messages_property(messages: Any) -> None:
    try:
        out = check_messages(messages)
    except MimirliteError as exc:
        assert isinstance(exc, ParamError) and exc.param.startswith("messages")
        return
    assert check_messages(out) == out
    assert not _shares_a_container(out, messages)
    assert all(m["role"] in params.ROLES for m in out)
