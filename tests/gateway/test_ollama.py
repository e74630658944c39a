"""The gateway's Ollama-native API (``/api/*``): the pure
translations with literal values, then the real thing on 127.0.0.1 (mimirlite nodes with the echo backend
or the openai backend on the test OpenAI server, behind a MimirClient and a Gateway), asked with raw
HTTP/1.1, ``curl`` and the real ``ollama`` Python client.

mDNS is off everywhere; every server a test starts is stopped by it; every wait is bounded.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mimirlite.gateway import api
from mimirlite.gateway.api import ApiError
from tests.helpers.gateway import LLAMA, RawHttp, bounded, curl, echo_gateway, live, llama_gateway, user
from tests.helpers.openai_server import OpenAIServer

ollama = pytest.importorskip("ollama")


def ndjson(raw: bytes) -> list[dict[str, Any]]:
    """The objects of an NDJSON body, after checking every line ends with a newline."""
    assert raw.endswith(b"\n"), raw
    return [json.loads(line) for line in raw[:-1].split(b"\n")]


# ====================================================================== pure shapes


def test_tags_shape_and_placeholders() -> None:
    tags = api.ollama_tags(["llama3.2:latest", "echo", "echo"])
    assert [m["name"] for m in tags["models"]] == ["llama3.2:latest", "echo"]
    first = tags["models"][0]
    assert first["model"] == "llama3.2:latest" and first["size"] == 0
    assert first["modified_at"] == "1970-01-01T00:00:00Z" and len(first["digest"]) == 64
    assert first["details"]["family"] == "llama3.2" and first["details"]["format"] == "gguf"


def test_chat_body_translated_options_format_tools() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {
        "model": "m",
        "messages": user("hi"),
        "options": {
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 7,
            "num_predict": 12,
            "stop": ["x"],
            "num_ctx": 4096,
        },
        "format": "json",
        "tools": [tool],
        "keep_alive": "5m",
    }
    call = api.parse_ollama_body(json.dumps(body).encode(), "chat")
    assert call.stream is True  # Ollama's default
    assert call.params == {
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 7,
        "max_tokens": 12,
        "stop": ["x"],
        "response_format": {"type": "json_object"},
        "tools": [tool],
        "stream_options": {"include_usage": True},
    }
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    call = api.parse_ollama_body(
        json.dumps(
            {
                "model": "m",
                "prompt": "p",
                "system": "s",
                "format": schema,
                "stream": False,
                "options": {"num_predict": -1},
            }
        ).encode(),
        "generate",
    )
    assert call.messages == [{"role": "system", "content": "s"}, {"role": "user", "content": "p"}]
    assert call.params["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }
    assert "max_tokens" not in call.params and call.stream is False


def test_chat_tool_round_trip_messages() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "w", "arguments": {"c": "P"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "w"},
    ]
    call = api.parse_ollama_body(json.dumps({"model": "m", "messages": messages}).encode(), "chat")
    assert call.messages[1]["tool_calls"] == [
        {"id": "call_1_0", "type": "function", "function": {"name": "w", "arguments": '{"c":"P"}'}}
    ]
    assert call.messages[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1_0"}


@pytest.mark.parametrize(
    ("body", "kind", "param"),
    [
        ({"model": "m", "messages": user("x"), "options": {"mirostat_x": 1}}, "chat", "options.mirostat_x"),
        ({"model": "m", "messages": user("x"), "options": {"temperature": 9}}, "chat", "temperature"),
        ({"model": "m", "messages": user("x"), "format": "yaml"}, "chat", "format"),
        ({"model": "m", "messages": user("x"), "extra_body": {}}, "chat", "extra_body"),
        ({"model": "m", "messages": user("x"), "stream": "yes"}, "chat", "stream"),
        ({"messages": user("x")}, "chat", "model"),
        ({"model": "m", "prompt": "x", "raw": True}, "generate", "raw"),
        ({"model": "m", "prompt": "x", "template": "{{ .Prompt }}"}, "generate", "template"),
        ({"model": "m", "prompt": 3}, "generate", "prompt"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
            "chat",
            "messages[0].images",
        ),
    ],
)
def test_bad_ollama_bodies_are_400_naming_the_field(body: dict[str, Any], kind: str, param: str) -> None:
    with pytest.raises(ApiError) as info:
        api.parse_ollama_body(json.dumps(body).encode(), kind)
    assert info.value.status == 400 and info.value.param == param
    assert json.loads(api.ollama_error(info.value)) == {"error": info.value.message}


def test_answer_lines_and_final_object() -> None:
    call = api.parse_ollama_body(b'{"model":"m","messages":[{"role":"user","content":"x"}]}', "chat")
    answer = api.OllamaAnswer(call)
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    assert answer.add(role, "t0") == b""
    line = answer.add(
        {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "length"}]}, "t1"
    )
    assert json.loads(line) == {
        "model": "m",
        "created_at": "t1",
        "message": {"role": "assistant", "content": "hi"},
        "done": False,
    }
    assert answer.add({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}, "t2") == b""
    done = json.loads(answer.done("t3", 5))
    assert done == {
        "model": "m",
        "created_at": "t3",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "length",
        "total_duration": 5,
        "prompt_eval_count": 3,
        "eval_count": 1,
    }
    assert answer.complete("t4", 6)["message"]["content"] == "hi"


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_keys = st.sampled_from(
    [
        "model",
        "messages",
        "prompt",
        "system",
        "stream",
        "format",
        "options",
        "tools",
        "images",
        "raw",
        "think",
    ]
)
_field_values = st.one_of(
    _json,
    st.just("m"),
    st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "tool", "assistant"]), "content": _json}),
        max_size=3,
    ),
    st.dictionaries(st.sampled_from([*api.OLLAMA_OPTIONS, "top_k", "nope"]), _json, max_size=4),
)


@given(kind=st.sampled_from(["chat", "generate"]), body=st.dictionaries(_keys, _field_values, max_size=8))
def test_any_body_is_taken_or_refused_400(kind: str, body: dict[str, Any]) -> None:
    """Whatever a client sends, the translation either gives allowlisted parameters or a 400."""
    try:
        call = api.parse_ollama_body(json.dumps(body).encode(), kind)
    except ApiError as err:
        assert err.status == 400
    else:
        assert set(call.params) <= {
            *api.OLLAMA_OPTIONS.values(),
            "response_format",
            "tools",
            "stream_options",
        }


# ====================================================================== the real gateway


@live
async def test_version_tags_show_and_root() -> None:
    async with echo_gateway() as gw:
        conn = await RawHttp.open(gw)
        try:
            status, _, out = await conn.request("GET", "/api/version")
            assert status == 200 and json.loads(out) == {"version": api.OLLAMA_VERSION}
            status, _, out = await conn.request("GET", "/api/tags")
            assert status == 200 and [m["name"] for m in json.loads(out)["models"]] == ["echo"]
            status, _, out = await conn.request("POST", "/api/show", b'{"model":"echo"}')
            assert status == 200 and json.loads(out)["details"]["family"] == "echo"
            status, _, out = await conn.request("POST", "/api/show", b'{"model":"nope"}')
            assert (status, json.loads(out)) == (404, {"error": "model 'nope' not found"})
            status, _, out = await conn.request("GET", "/")
            assert (status, out) == (200, b"Ollama is running")
            status, _, out = await conn.request("POST", "/api/tags", b"{}")
            assert status == 405 and "error" in json.loads(out)
        finally:
            await conn.close()


@live
async def test_chat_streamed_and_not_with_curl() -> None:
    async with echo_gateway() as gw:
        body = json.dumps({"model": "echo", "messages": user("hello big world")})
        lines = ndjson(await curl(f"{gw.url}/api/chat", "-H", "Content-Type: application/json", "-d", body))
        body = json.dumps({"model": "echo", "messages": user("plain"), "stream": False})
        one = json.loads(await curl(f"{gw.url}/api/chat", "-H", "Content-Type: application/json", "-d", body))
    assert [x["message"]["content"] for x in lines] == ["hello", " big", " world", ""]
    assert all(x["model"] == "echo" and x["created_at"].endswith("Z") for x in lines)
    assert [x["done"] for x in lines] == [False, False, False, True]
    assert lines[-1]["done_reason"] == "stop"
    assert one["message"] == {"role": "assistant", "content": "plain"} and one["done"] is True


@live
async def test_generate_streamed_and_not() -> None:
    async with echo_gateway() as gw:
        conn = await RawHttp.open(gw)
        try:
            status, headers, out = await conn.request(
                "POST", "/api/generate", b'{"model":"echo","prompt":"a b"}'
            )
            assert status == 200 and headers["content-type"] == "application/x-ndjson"
            lines = ndjson(out)
            assert [x["response"] for x in lines] == ["a", " b", ""] and lines[-1]["done"] is True
            body = b'{"model":"echo","prompt":"c d","system":"s","stream":false}'
            status, _, out = await conn.request("POST", "/api/generate", body)
            assert status == 200 and json.loads(out)["response"] == "c d" and json.loads(out)["done"] is True
            status, _, out = await conn.request("POST", "/api/generate", b'{"model":"echo"}')
            assert status == 200 and json.loads(out)["done_reason"] == "load"
        finally:
            await conn.close()


@live
async def test_options_reach_the_backend_translated(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw:
        conn = await RawHttp.open(gw)
        try:
            body = {
                "model": LLAMA,
                "messages": user("one two three four"),
                "stream": False,
                "format": "json",
                "options": {
                    "temperature": 0.25,
                    "top_p": 0.5,
                    "seed": 42,
                    "num_predict": 2,
                    "stop": ["zz"],
                    "top_k": 40,
                    "num_ctx": 8192,
                },
            }
            status, _, out = await conn.request("POST", "/api/chat", json.dumps(body).encode())
            answer = json.loads(out)
            assert status == 200 and answer["message"]["content"] == "one two"
            assert answer["done_reason"] == "length"
            assert answer["prompt_eval_count"] > 0 and answer["eval_count"] == 2
            seen = openai_server.chat_requests[-1]
            assert {
                k: seen[k] for k in ("temperature", "top_p", "seed", "max_tokens", "stop", "response_format")
            } == {
                "temperature": 0.25,
                "top_p": 0.5,
                "seed": 42,
                "max_tokens": 2,
                "stop": ["zz"],
                "response_format": {"type": "json_object"},
            }
            assert "top_k" not in seen and "num_ctx" not in seen and "options" not in seen
            before = len(openai_server.requests)
            body["options"] = {"bogus": 1}
            status, _, out = await conn.request("POST", "/api/chat", json.dumps(body).encode())
            assert status == 400 and json.loads(out) == {"error": "Unrecognized option: 'options.bogus'."}
            assert len(openai_server.requests) == before
        finally:
            await conn.close()


@live
async def test_management_paths_are_403_and_reach_nothing(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw:
        before = len(openai_server.requests)
        conn = await RawHttp.open(gw)
        try:
            for method, path in [
                ("POST", "/api/pull"),
                ("POST", "/api/push"),
                ("DELETE", "/api/delete"),
                ("POST", "/api/create"),
                ("POST", "/api/copy"),
                ("POST", "/api/blobs/sha256:00"),
                ("HEAD", "/api/blobs/sha256:00"),
                ("GET", "/api/ps"),
                ("GET", "/api/whatever"),
            ]:
                body = b"" if method in ("GET", "HEAD") else json.dumps({"model": LLAMA}).encode()
                status, _, out = await conn.request(method, path, body)
                assert status == 403, (method, path)
                if method != "HEAD":
                    assert "not allowed" in json.loads(out)["error"]
        finally:
            await conn.close()
        assert gw.metrics.refused["forbidden_path"] == 9
    assert len(openai_server.requests) == before
    assert LLAMA in openai_server.models


@live
async def test_unknown_model_and_tunnel_paths() -> None:
    async with echo_gateway() as gw:
        conn = await RawHttp.open(gw)
        try:
            for path, body in [
                ("/api/chat", b'{"model":"x","messages":[{"role":"user","content":"a"}]}'),
                ("/api/generate", b'{"model":"x","prompt":"a"}'),
            ]:
                status, _, out = await conn.request("POST", path, body)
                assert (status, json.loads(out)) == (404, {"error": "model 'x' not found"})
            # forwarded through the node's tunnel: the echo backend's own 404 passes through
            # (tests/gateway/test_tunnel.py covers these paths)
            status, _, out = await conn.request("POST", "/api/embed", b'{"model":"echo","input":"a"}')
            assert status == 404 and "echo backend" in json.loads(out)["error"]
        finally:
            await conn.close()


@live
async def test_ollama_python_list_show_chat_generate(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw, ollama.AsyncClient(host=gw.url, timeout=10) as client:
        listed = await bounded(client.list())
        assert [m.model for m in listed.models] == [LLAMA]
        shown = await bounded(client.show(LLAMA))
        assert shown.details is not None and shown.details.family == "llama3.2"
        answer = await bounded(
            client.chat(model=LLAMA, messages=user("hello big world"), options={"seed": 1})
        )
        assert answer.message.content == "hello big world" and answer.done and answer.done_reason == "stop"
        stream = await bounded(client.chat(model=LLAMA, messages=user("a b c"), stream=True))
        pieces = [part async for part in stream]
        assert "".join(p.message.content or "" for p in pieces) == "a b c" and pieces[-1].done
        generated = await bounded(client.generate(model=LLAMA, prompt="x y", system="be brief"))
        assert generated.response == "x y" and generated.done
        assert openai_server.chat_requests[-1]["messages"][0] == {"role": "system", "content": "be brief"}
        parts = [p async for p in await bounded(client.generate(model=LLAMA, prompt="p q", stream=True))]
        assert "".join(p.response for p in parts) == "p q" and parts[-1].done
        with pytest.raises(ollama.ResponseError) as info:
            await bounded(client.chat(model="nope", messages=user("x")))
        assert info.value.status_code == 404 and info.value.error == "model 'nope' not found"
        with pytest.raises(ollama.ResponseError) as info:
            await bounded(client.pull(LLAMA))
        assert info.value.status_code == 403
        with pytest.raises(ollama.ResponseError) as info:
            await bounded(client.delete(LLAMA))
        assert info.value.status_code == 403
    assert LLAMA in openai_server.models and not openai_server.deleted_models


def test_tool_calls_answered_in_ollama_shape() -> None:
    call = api.parse_ollama_body(
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"stream":false}', "chat"
    )
    answer = api.OllamaAnswer(call)
    call_delta = {"index": 0, "id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"c":'}}
    answer.add({"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [call_delta]}}]}, "t")
    more = {"index": 0, "function": {"arguments": '"P"}'}}
    answer.add(
        {"choices": [{"index": 0, "delta": {"tool_calls": [more]}, "finish_reason": "tool_calls"}]}, "t"
    )
    out = answer.complete("t", 1)
    assert out["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "w", "arguments": {"c": "P"}}}],
    }
    assert out["done_reason"] == "stop"


@live
async def test_backend_errors_in_ollama_shape(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw:
        conn = await RawHttp.open(gw)
        try:
            for stream in (True, False):
                openai_server.fail_status, openai_server.fail_count = 500, 1
                openai_server.fail_message = "the GPU caught fire"
                body = json.dumps({"model": LLAMA, "messages": user("x"), "stream": stream}).encode()
                status, _, out = await conn.request("POST", "/api/chat", body)
                assert status == 502 and "the GPU caught fire" in json.loads(out)["error"]
            # cut mid-answer: the lines sent, then an error line, then the end (never a silent "done")
            openai_server.die_after_chunks = 3
            body = json.dumps({"model": LLAMA, "messages": user("one two three four")}).encode()
            status, _, out = await conn.request("POST", "/api/chat", body)
            lines = ndjson(out)
            assert status == 200 and [x["message"]["content"] for x in lines[:2]] == ["one", " two"]
            assert len(lines) == 3 and set(lines[2]) == {"error"} and "broke off" in lines[2]["error"]
        finally:
            await conn.close()


@live
async def test_a_name_without_tag_means_latest_and_head_root(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw:
        conn = await RawHttp.open(gw)
        try:
            body = json.dumps({"model": "llama3.2", "prompt": "tagless", "stream": False}).encode()
            status, _, out = await conn.request("POST", "/api/generate", body)
            assert status == 200 and json.loads(out)["response"] == "tagless"
            assert json.loads(out)["model"] == "llama3.2"
            assert openai_server.chat_requests[-1]["model"] == LLAMA
            status, _, out = await conn.request("HEAD", "/")
            assert (status, out) == (200, b"")
        finally:
            await conn.close()
