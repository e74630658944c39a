"""Parameter injection through the gateway: the real ``openai`` SDK and raw HTTP send the hostile fields
of tests/mimir/test_params_node.py to a gateway in front of a real node and the test OpenAI server; each is a
``400`` in OpenAI's error shape with ``param`` naming the field, the backend sees none of them, and an
honest request's parameters then reach it exactly."""

from __future__ import annotations

import json
import logging
from typing import Any

import openai
import pytest

from tests.helpers import logged
from tests.helpers.gateway import LLAMA, RawHttp, llama_gateway, sdk
from tests.helpers.mimir import HELLO, HONEST, HOSTILE
from tests.helpers.openai_server import OpenAIServer

live = pytest.mark.usefixtures("no_leaks")


@live
async def test_gateway_refuses_hostile_fields_with_400_naming_them(
    openai_server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "mimirlite.gateway")
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        for field, extra in HOSTILE:
            body = {k: v for k, v in extra.items() if k != "messages"}
            messages = extra.get("messages", HELLO)
            with pytest.raises(openai.BadRequestError) as err:
                await client.chat.completions.create(model=LLAMA, messages=messages, extra_body=body)
            assert err.value.status_code == 400
            assert err.value.param == field, (field, err.value.body)
            assert err.value.type == "invalid_request_error"
            logged(caplog, "refused", field)
        for kwargs in ({"n": 9}, {"temperature": 3.0}, {"stream_options": {"include_usage": "yes"}}):
            with pytest.raises(openai.BadRequestError) as err:
                await client.chat.completions.create(model=LLAMA, messages=HELLO, stream=True, **kwargs)
            assert str(err.value.param).startswith(next(iter(kwargs)))
        raw = await RawHttp.open(gw)
        try:
            body = {"model": LLAMA, "messages": HELLO, "extra_body": {"model": "gpt-4-expensive"}}
            status, _, answer = await raw.request("POST", "/v1/chat/completions", json.dumps(body).encode())
            assert status == 400
            assert json.loads(answer)["error"]["param"] == "extra_body"
        finally:
            await raw.close()
        assert openai_server.chat_requests == []

        honest = {k: HONEST[k] for k in ("temperature", "top_p", "max_tokens", "seed", "stop", "user")}
        answer = await client.chat.completions.create(model=LLAMA, messages=HELLO, **honest)
        assert answer.choices[0].message.content == "hello big"
        [sent] = openai_server.chat_requests
        assert {k: sent[k] for k in honest} == honest
        assert set(sent) == {"model", "messages", "stream", "stream_options", *honest}

        # The SDK's answer message sent back as history, as OpenAI's examples do, passes the allowlist
        # (with null fields too: tests/mimir/test_params.py); a tool call round trip too.
        history: list[Any] = [*HELLO, answer.choices[0].message, {"role": "user", "content": "and more"}]
        second = await client.chat.completions.create(model=LLAMA, messages=history)
        assert second.choices[0].message.content == "and more"
        call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        tools: list[Any] = [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            {"role": "user", "content": "so"},
        ]
        third = await client.chat.completions.create(model=LLAMA, messages=[*HELLO, *tools])
        assert third.choices[0].message.content == "so"
        _, second_sent, third_sent = openai_server.chat_requests
        assert second_sent["messages"][1] == {"role": "assistant", "content": "hello big"}
        assert third_sent["messages"][1:] == tools
