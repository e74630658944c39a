"""The gateway's OpenAI shapes (mimirlite/gateway/api.py) with literal values: chat bodies and their
parameters, errors, the models page, completions assembled from chunks, Server-Sent Events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mimirlite.gateway import api

# ====================================================================== OpenAI shapes


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"\xff\xfe", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": 3, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": ["hi"]}', "messages[0]"),
        (b'{"model": "m", "messages": [{"content": "x"}]}', "messages[0].role"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
    ],
)
def test_bad_chat_bodies_are_400(body: bytes, param: str | None) -> None:
    with pytest.raises(api.ApiError) as err:
        api.parse_chat_body(body)
    assert err.value.status == 400
    assert err.value.to_json()["error"]["param"] == param
    assert err.value.to_json()["error"]["type"] == "invalid_request_error"


def test_chat_body_parameters() -> None:
    msgs = [{"role": "user", "content": "x"}]
    call = api.parse_chat_body(
        json.dumps({"model": "m", "messages": msgs, "stream": True, "temperature": 0.5}).encode()
    )
    assert (call.model, call.messages, call.stream, call.params) == ("m", msgs, True, {"temperature": 0.5})
    call = api.parse_chat_body(json.dumps({"model": "m", "messages": msgs, "stream": None}).encode())
    assert not call.stream
    assert call.params == {"stream_options": {"include_usage": True}}  # so the answer can carry usage


def test_error_shape_and_remote_mapping() -> None:
    err = api.ApiError(404, "no such model", param="model", code="model_not_found")
    assert json.loads(err.body()) == {
        "error": {
            "message": "no such model",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert api.remote_error("backend_error", "boom").status == 502
    assert api.remote_error("backend_error", "boom").message == "boom"
    assert api.remote_error("backend_unavailable", "x").status == 502
    assert api.remote_error("bad_request", "x").status == 400
    assert api.remote_error("rate_limited", "x").status == 429
    assert api.remote_error("overloaded", "x").status == 503


def test_models_page_lists_each_model_once() -> None:
    page = api.models_page(["a", "b", "a", "c", "b"], 17)
    assert page == {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 17, "owned_by": "mimir"} for m in ("a", "b", "c")],
    }


def test_completion_assembled_from_chunks() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
        return {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 5,
            "model": "m",
            "system_fingerprint": "fp",
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    b = api.CompletionBuilder()
    b.add(chunk({"role": "assistant", "content": ""}))
    b.add(chunk({"content": "Hel"}))
    b.add(chunk({"content": "lo"}))
    b.add(
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a"'},
                    }
                ]
            }
        )
    )
    b.add(chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}))
    b.add(chunk({"role": "assistant", "content": "other"}, "length", index=1))
    b.add(chunk({}, "tool_calls"))
    b.add(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 5,
            "model": "m",
            "choices": [],
            "usage": {"total_tokens": 3},
        }
    )
    assert b.result() == {
        "id": "c1",
        "object": "chat.completion",
        "created": 5,
        "model": "m",
        "system_fingerprint": "fp",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello",
                    "tool_calls": [
                        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": "other"},
                "logprobs": None,
                "finish_reason": "length",
            },
        ],
        "usage": {"total_tokens": 3},
    }
    assert "usage" not in _one_chunk_completion()


def _one_chunk_completion() -> dict[str, Any]:
    b = api.CompletionBuilder()
    b.add(
        {
            "id": "x",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}],
        }
    )
    return b.result()


def test_sse_event() -> None:
    assert api.sse_event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert api.SSE_DONE == b"data: [DONE]\n\n"
