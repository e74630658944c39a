"""The OpenAI-compatible gateway, the real thing on 127.0.0.1 (its sans-IO HTTP core and OpenAI shapes:
test_http.py, test_api.py): mimirlite nodes (echo backend, or the openai backend on the test OpenAI
server) reached over libp2p by a MimirClient behind a Gateway, asked by the real ``openai`` SDK (sync in
a thread, and async), ``curl``, raw HTTP/1.1 bytes, and the ``gateway`` command run as a subprocess.

mDNS is off everywhere; every server and process a test starts is stopped by it; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import h11
import openai
import pytest

from mimirlite import Host
from mimirlite.errors import LocalError
from mimirlite.gateway import Gateway
from mimirlite.mimir import EchoBackend, MimirClient, MimirNode, OpenAIBackend
from mimirlite.protocols import identify_service, start_services
from mimirlite.protocols.kad import Dht
from tests.helpers.gateway import (
    APP,
    LLAMA,
    WAIT,
    RawHttp,
    bounded,
    cors_of,
    curl,
    echo_gateway,
    gateway_for,
    live,
    llama_gateway,
    mimir_node,
    sdk,
    sse_data,
    user,
)
from tests.helpers.nodeproc import gateway_command, make_env, run
from tests.helpers.openai_server import OpenAIServer
from tests.helpers.waiting import until

# ====================================================================== the openai SDK


@live
async def test_async_sdk_streams_exactly_what_the_backend_sent(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        stream = await client.chat.completions.create(
            model=LLAMA, messages=user("hello big wide world"), stream=True, temperature=0.3
        )
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hello big wide world"
    assert [c.model_dump(exclude_unset=True) for c in chunks] == openai_server.sent_chunks[0]
    assert chunks[-1].choices[0].finish_reason == "stop"
    (sent,) = openai_server.chat_requests
    assert sent["model"] == LLAMA and sent["messages"] == user("hello big wide world")
    assert sent["temperature"] == 0.3 and sent["stream"] is True


@live
async def test_async_sdk_without_stream_gets_one_completion_with_usage(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        answer = await client.chat.completions.create(
            model=LLAMA, messages=user("one two three"), max_tokens=2
        )
    assert answer.object == "chat.completion"
    assert answer.model == LLAMA and answer.id.startswith("chatcmpl-")
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "one two"
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (
        3,
        2,
        5,
    )
    assert openai_server.chat_requests[0]["max_tokens"] == 2


@live
async def test_async_sdk_stream_with_usage_chunk(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        stream = await client.chat.completions.create(
            model=LLAMA, messages=user("a b"), stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 4


@live
async def test_sync_sdk_in_a_thread_streaming_and_not() -> None:
    async with echo_gateway() as gw:

        def use_sdk() -> tuple[str, list[str | None], list[str]]:
            with openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=WAIT) as client:
                whole = client.chat.completions.create(model="echo", messages=user("sync hello there"))
                stream = client.chat.completions.create(
                    model="echo", messages=user("and streamed"), stream=True
                )
                deltas = [c.choices[0].delta.content for c in stream]
                models = [m.id for m in client.models.list()]
            return whole.choices[0].message.content or "", deltas, models

        whole, deltas, models = await bounded(asyncio.to_thread(use_sdk))
    assert whole == "sync hello there"
    assert deltas == ["", "and", " streamed", None]
    assert models == ["echo"]


# ====================================================================== curl and raw HTTP


@live
async def test_curl_sees_openai_sse_framing(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw:
        body = json.dumps({"model": LLAMA, "messages": user("over curl"), "stream": True})
        raw = await curl(
            f"{gw.base_url}/chat/completions", "-H", "Content-Type: application/json", "-d", body
        )
        data = sse_data(raw)
        assert data[-1] == "[DONE]"
        assert [json.loads(d) for d in data[:-1]] == openai_server.sent_chunks[0]
        # with the headers: a streamed body
        head = await curl(
            "-i", f"{gw.base_url}/chat/completions", "-H", "Content-Type: application/json", "-d", body
        )
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-type: text/event-stream; charset=utf-8\r\n" in head.lower()
    assert b"transfer-encoding: chunked\r\n" in head.lower()


@live
async def test_curl_without_stream_and_models() -> None:
    async with echo_gateway() as gw:
        body = json.dumps({"model": "echo", "messages": user("plain answer")})
        answer = json.loads(
            await curl(f"{gw.base_url}/chat/completions", "-H", "Content-Type: application/json", "-d", body)
        )
        models = json.loads(await curl(f"{gw.base_url}/models"))
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "plain answer"}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["echo"]


@live
async def test_keep_alive_and_pipelining_on_one_connection() -> None:
    async with echo_gateway() as gw:
        conn = await RawHttp.open(gw)
        try:
            for text in ("first one", "second one", "third one"):
                body = json.dumps({"model": "echo", "messages": user(text)}).encode()
                status, _, out = await conn.request("POST", "/v1/chat/completions", body)
                assert status == 200 and json.loads(out)["choices"][0]["message"]["content"] == text
                assert gw.open_connections == 1
            # two requests written at once: answered in order on the same connection
            conn.h11.start_next_cycle()
            second = h11.Connection(h11.CLIENT)
            get = h11.Request(method="GET", target="/v1/models", headers=[("host", "127.0.0.1")])
            conn.writer.write(conn.h11.send(get) + conn.h11.send(h11.EndOfMessage()))
            conn.writer.write(second.send(get) + second.send(h11.EndOfMessage()))
            assert (await bounded(conn.response()))[0] == 200
            conn.h11.start_next_cycle()
            conn.h11.send(get)
            conn.h11.send(h11.EndOfMessage())
            status, _, out = await bounded(conn.response())
            assert status == 200 and json.loads(out)["data"][0]["id"] == "echo"
            assert gw.open_connections == 1
        finally:
            await conn.close()


# ====================================================================== /v1/models follows the network


@live
async def test_models_follow_nodes_joining_and_leaving() -> None:
    async with (
        mimir_node(EchoBackend()) as (_, echo_addr),
        gateway_for(echo_addr) as gw,
        sdk(gw) as client,
    ):

        async def ids() -> list[str]:
            return [m.id async for m in client.models.list()]

        assert await ids() == ["echo"]
        async with (
            mimir_node(EchoBackend("tiny:1b")) as (_, tiny_addr),
            mimir_node(EchoBackend()) as (_, echo2),
        ):
            await gw.client.add_peer(tiny_addr)
            await gw.client.add_peer(echo2)  # a second node serving echo: still listed once
            assert sorted(await ids()) == ["echo", "tiny:1b"]
            assert (await client.models.retrieve("tiny:1b")).id == "tiny:1b"
            answer = await client.chat.completions.create(model="tiny:1b", messages=user("routed here"))
            assert answer.model == "tiny:1b" and answer.choices[0].message.content == "routed here"
        # both nodes stopped: the client drops them when their connections close

        async def tiny_gone() -> bool:
            return await ids() == ["echo"]

        await until(tiny_gone, WAIT, interval=0.05)
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("tiny:1b")
        with pytest.raises(openai.NotFoundError) as err:
            await client.chat.completions.create(model="tiny:1b", messages=user("x"))
        assert err.value.code == "model_not_found"


# ====================================================================== errors


@live
async def test_unknown_model_is_404() -> None:
    async with echo_gateway() as gw, sdk(gw) as client:
        with pytest.raises(openai.NotFoundError) as err:
            await client.chat.completions.create(model="gpt-9", messages=user("x"))
        assert err.value.status_code == 404
        assert err.value.body == {
            "message": "The model `gpt-9` does not exist or no reachable node serves it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-9", messages=user("x"), stream=True)


@live
async def test_malformed_requests_are_400_and_the_connection_stays() -> None:
    async with echo_gateway() as gw:
        conn = await RawHttp.open(gw)
        try:
            for body, param in [
                (b"{oops", None),
                (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
                (b'{"model": "echo"}', "messages"),
            ]:
                status, headers, out = await conn.request("POST", "/v1/chat/completions", body)
                assert status == 400 and headers["content-type"] == "application/json"
                error = json.loads(out)["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert error["type"] == "invalid_request_error" and error["param"] == param
            status, _, out = await conn.request("GET", "/v1/nothing")
            assert status == 404 and json.loads(out)["error"]["code"] == "unknown_url"
            status, _, out = await conn.request("GET", "/v1/chat/completions")
            assert status == 405
            status, _, _ = await conn.request("POST", "/v1/models")
            assert status == 405
            assert gw.open_connections == 1  # every error answered on the same connection
        finally:
            await conn.close()


@live
async def test_no_node_reachable_is_503() -> None:
    async with mimir_node(EchoBackend()) as (host, addr), gateway_for(addr) as gw, sdk(gw) as client:
        await host.stop()  # the only node goes away

        async def forgotten() -> bool:
            return not gw.client.nodes

        await until(forgotten, WAIT, interval=0.05)
        with pytest.raises(openai.InternalServerError) as err:
            await client.chat.completions.create(model="echo", messages=user("x"))
        assert err.value.status_code == 503
        assert err.value.code == "no_node"
        assert [m async for m in client.models.list()] == []


@live
async def test_a_node_error_is_502_with_its_message(openai_server: OpenAIServer) -> None:
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        for stream in (False, True):
            openai_server.fail_status, openai_server.fail_count = 500, 1
            openai_server.fail_message = "the GPU caught fire"
            with pytest.raises(openai.InternalServerError) as err:
                await client.chat.completions.create(model=LLAMA, messages=user("x"), stream=stream)
            assert err.value.status_code == 502
            assert "the GPU caught fire" in err.value.message
            assert err.value.code == "backend_error"
        # and the next request is served
        answer = await client.chat.completions.create(model=LLAMA, messages=user("fine again"))
        assert answer.choices[0].message.content == "fine again"


@live
async def test_a_stream_cut_mid_answer_ends_with_an_error_event(openai_server: OpenAIServer) -> None:
    openai_server.die_after_chunks = 3  # role chunk and two tokens, then the backend connection drops
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        body = json.dumps({"model": LLAMA, "messages": user("one two three four"), "stream": True})
        data = sse_data(
            await curl(f"{gw.base_url}/chat/completions", "-H", "Content-Type: application/json", "-d", body)
        )
        assert [json.loads(d) for d in data[:3]] == openai_server.sent_chunks[0]
        assert len(data) == 4 and "[DONE]" not in data
        error = json.loads(data[3])["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "backend_error"

        stream = await client.chat.completions.create(
            model=LLAMA, messages=user("one two three four"), stream=True
        )
        got: list[str] = []
        with pytest.raises(openai.APIError) as err:
            async for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
        assert "".join(got) == "one two"
        assert "broke off" in err.value.message
        # without streaming: 502
        with pytest.raises(openai.InternalServerError) as err2:
            await client.chat.completions.create(model=LLAMA, messages=user("one two three four"))
        assert err2.value.status_code == 502


@live
async def test_a_node_killed_mid_answer_ends_the_stream_with_an_error_event(
    openai_server: OpenAIServer,
) -> None:
    openai_server.delay = 0.1
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        node = MimirNode(host, OpenAIBackend(openai_server.base_url, timeout=5.0))
        await node.start()
        try:
            async with gateway_for(host.listen_addrs[0]) as gw:
                conn = await RawHttp.open(gw)
                try:
                    body = json.dumps({"model": LLAMA, "messages": user("a b c d e f g h"), "stream": True})
                    conn.writer.write(
                        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(body), body.encode())
                    )
                    got = b""
                    while got.count(b"data: ") < 2:
                        got += await bounded(conn.reader.read(65536))
                    await host.stop()  # the node's connection drops mid-answer
                    got += await conn.read_to_eof()  # the gateway ends the stream, then closes
                finally:
                    await conn.close()
        finally:
            await node.stop()
    assert b"data: [DONE]" not in got
    assert got.endswith(b"\r\n0\r\n\r\n")  # the chunked body is ended properly
    events = [line for line in got.split(b"\r\n") if line.startswith(b"data: ")]
    last = json.loads(events[-1][len(b"data: ") :])
    assert last["error"]["code"] == "truncated_answer"


@live
async def test_a_body_over_the_limit_is_413() -> None:
    async with echo_gateway(max_body=1000) as gw:
        # refused on its Content-Length, before the body is read
        conn = await RawHttp.open(gw)
        try:
            conn.writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1001\r\n\r\n"
            )
            out = await conn.read_to_eof()
        finally:
            await conn.close()
        assert out.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
        head, _, body = out.partition(b"\r\n\r\n")
        assert b"connection: close" in head
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
        # a chunked body that grows over the limit, still being sent when refused
        conn = await RawHttp.open(gw)
        try:
            conn.writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            conn.writer.write(b"400\r\n" + b"x" * 0x400 + b"\r\n" + b"400\r\n" + b"x" * 0x400)
            out = await conn.read_to_eof()
        finally:
            await conn.close()
        assert out.startswith(b"HTTP/1.1 413 ")
        # the SDK's request, too large
        async with sdk(gw) as client:
            with pytest.raises(openai.APIStatusError) as err:
                await client.chat.completions.create(model="echo", messages=user("x" * 2000))
            assert err.value.status_code == 413
            answer = await client.chat.completions.create(model="echo", messages=user("small"))
            assert answer.choices[0].message.content == "small"


@live
async def test_api_key() -> None:
    async with echo_gateway(api_key="s3cret") as gw:
        for key in ("wrong", "s3cre"):
            async with sdk(gw, api_key=key) as client:
                with pytest.raises(openai.AuthenticationError) as err:
                    await client.chat.completions.create(model="echo", messages=user("x"))
                assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
                with pytest.raises(openai.AuthenticationError):
                    await client.models.list()
        for auth in ([], [("authorization", "Basic s3cret")]):  # none at all; not Bearer
            conn = await RawHttp.open(gw)  # a 401 closes its connection
            try:
                assert (await conn.request("GET", "/v1/models", headers=auth))[0] == 401
            finally:
                await conn.close()
        async with sdk(gw, api_key="s3cret") as client:
            answer = await client.chat.completions.create(model="echo", messages=user("let me in"))
            assert answer.choices[0].message.content == "let me in"


@live
async def test_slow_and_idle_clients_time_out() -> None:
    async with echo_gateway(request_timeout=0.3, idle_timeout=0.3) as gw:
        # a request that never completes: 408, then closed
        conn = await RawHttp.open(gw)
        try:
            conn.writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            out = await conn.read_to_eof()
            assert out.startswith(b"HTTP/1.1 408 ") and b'"error"' in out
        finally:
            await conn.close()
        # a head sent byte by byte, too slowly
        conn = await RawHttp.open(gw)
        try:
            for byte in b"GET /v1/mod":
                conn.writer.write(bytes([byte]))
                await asyncio.sleep(0.05)
            out = await conn.read_to_eof()
            assert out.startswith(b"HTTP/1.1 408 ")
        finally:
            await conn.close()
        # a connection that sends nothing, or nothing more after an answer: closed quietly
        conn = await RawHttp.open(gw)
        try:
            assert await conn.read_to_eof() == b""
        finally:
            await conn.close()
        conn = await RawHttp.open(gw)
        try:
            assert (await conn.request("GET", "/v1/models"))[0] == 200
            assert await conn.read_to_eof() == b""
        finally:
            await conn.close()

        async def all_closed() -> bool:
            return gw.open_connections == 0

        await until(all_closed, WAIT, interval=0.05)


@live
async def test_connections_over_the_limit_get_503() -> None:
    async with echo_gateway(max_connections=1) as gw:
        first = await RawHttp.open(gw)
        try:
            assert (await first.request("GET", "/v1/models"))[0] == 200
            # the first is busy (half its next request sent), so not closed to make room (as an idle one is)
            first.h11.start_next_cycle()
            head = first.h11.send(
                h11.Request(method="GET", target="/v1/models", headers=[("host", "127.0.0.1")])
            )
            assert head and first.h11.send(h11.EndOfMessage()) == b""
            read = gw.metrics.bytes_in
            first.writer.write(head[:10])
            await until(lambda: gw.metrics.bytes_in > read, WAIT)
            second = await RawHttp.open(gw)
            try:
                out = await second.read_to_eof()
            finally:
                await second.close()
            assert out.startswith(b"HTTP/1.1 503 ") and b"Too many connections" in out
            first.writer.write(head[10:])
            assert (await bounded(first.response()))[0] == 200  # the first is still served
        finally:
            await first.close()


# ====================================================================== a client that leaves


@live
@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_disconnects_cancels_its_upstream_request(
    openai_server: OpenAIServer, stream: bool
) -> None:
    openai_server.delay = 0.2
    async with llama_gateway(openai_server) as gw:
        conn = await RawHttp.open(gw)
        body = json.dumps({"model": LLAMA, "messages": user("a b c d e f g h i j k l"), "stream": stream})
        conn.writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode())
        )
        if stream:
            got = b""
            while b"data: " not in got:
                got += await bounded(conn.reader.read(65536))
        else:
            await openai_server.wait_until(lambda: sum(map(len, openai_server.sent_chunks)) >= 2)
        await conn.close()
        # the gateway resets the mimir stream; the node cancels its backend request
        await bounded(openai_server.stream_cancelled.wait())
        assert openai_server.streams_cancelled == 1 and openai_server.streams_completed == 0

        async def idle() -> bool:
            return gw.active_requests == 0 and gw.open_connections == 0

        await until(idle, WAIT, interval=0.05)


@live
async def test_stopping_the_gateway_cancels_answers_in_progress(openai_server: OpenAIServer) -> None:
    openai_server.first_chunk_delay = 30
    async with llama_gateway(openai_server) as gw, sdk(gw) as client:
        pending = asyncio.ensure_future(client.chat.completions.create(model=LLAMA, messages=user("x")))
        await openai_server.wait_until(lambda: openai_server.streams_started == 1)
        await bounded(gw.stop())
        with pytest.raises(openai.APIConnectionError):
            await bounded(pending)
        await bounded(openai_server.stream_cancelled.wait())


# ====================================================================== many at once


class GatedEcho(EchoBackend):
    """The echo backend, holding every answer until ``gate`` opens; counts the requests held."""

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__()
        self.gate = gate
        self.waiting = 0

    async def stream_chat(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        self.waiting += 1
        await self.gate.wait()
        async for chunk in super().stream_chat(model, messages, params):
            yield chunk


@live
async def test_250_requests_at_once_all_answered() -> None:
    total = 250
    gate = asyncio.Event()
    backends = [GatedEcho(gate), GatedEcho(gate)]
    async with (
        mimir_node(backends[0]) as (_, a),
        mimir_node(backends[1]) as (_, b),
        gateway_for(a, b) as gw,
        sdk(gw) as client,
    ):

        async def ask(i: int) -> tuple[int, str]:
            text = f"request number {i}"
            if i % 2:
                stream = await client.chat.completions.create(model="echo", messages=user(text), stream=True)
                return i, "".join([c.choices[0].delta.content or "" async for c in stream])
            answer = await client.chat.completions.create(model="echo", messages=user(text))
            return i, answer.choices[0].message.content or ""

        tasks = [asyncio.ensure_future(ask(i)) for i in range(total)]
        try:

            async def all_waiting() -> bool:
                return sum(be.waiting for be in backends) == total

            await until(all_waiting, 60, interval=0.05)  # every request is in flight at the same time
            assert gw.active_requests == total
            assert min(be.waiting for be in backends) > 0  # spread over both nodes
            gate.set()
            results = await bounded(asyncio.gather(*tasks), 60)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks, timeout=WAIT)
    assert sorted(results) == [(i, f"request number {i}") for i in range(total)]


# ====================================================================== the command


@live
async def test_gateway_command_answers_the_sdk() -> None:
    env = make_env(MIMIRLITE_API_KEY="cli-key")
    async with (
        mimir_node(EchoBackend()) as (_, addr),
        gateway_command("--peer", addr, env=env) as (proc, port),
    ):
        base_url = f"http://127.0.0.1:{port}/v1"
        assert f"OpenAI-compatible API at {base_url}" in proc.lines

        def use_sdk() -> tuple[str, int]:
            with openai.OpenAI(base_url=base_url, api_key="cli-key", max_retries=0, timeout=WAIT) as client:
                answer = client.chat.completions.create(model="echo", messages=user("from the command"))
            with openai.OpenAI(base_url=base_url, api_key="other", max_retries=0, timeout=WAIT) as client:
                try:
                    client.models.list()
                except openai.AuthenticationError as exc:
                    refused = exc.status_code
            return answer.choices[0].message.content or "", refused

        assert await bounded(asyncio.to_thread(use_sdk)) == ("from the command", 401)


@live
async def test_gateway_command_reports_a_port_in_use() -> None:
    async with echo_gateway() as gw:
        res = await run("-m", "mimirlite", "gateway", "--no-mdns", "--port", str(gw.port), env=make_env())
    assert res.rc == 1
    assert res.err.startswith("mimirlite: ") and res.out == ""


@live
async def test_cors_preflight_for_allowed_and_other_origins() -> None:
    async with echo_gateway(api_key="s3cret", cors_origins=[APP]) as gw:
        with pytest.raises(LocalError, match="not a CORS origin"):
            Gateway(gw.client, cors_origins=[APP, "app.example"])
        conn = await RawHttp.open(gw)
        try:
            # what a browser sends before a POST with a key and JSON: no key on the preflight itself
            asked = [("origin", APP), ("access-control-request-method", "POST")]
            asked.append(("access-control-request-headers", "authorization, content-type"))
            status, headers, body = await conn.request("OPTIONS", "/v1/chat/completions", headers=asked)
            assert (status, body) == (204, b"")
            assert cors_of(headers) == {
                "access-control-allow-origin": APP,
                "vary": "origin",
                "access-control-allow-methods": "GET, POST, OPTIONS",
                "access-control-allow-headers": "authorization, content-type",
                "access-control-max-age": "600",
            }
            status, headers, _ = await conn.request("OPTIONS", "/v1/models", headers=[("origin", APP)])
            assert status == 204
            assert headers["access-control-allow-headers"] == "Authorization, Content-Type"
            # another origin: answered, but without a CORS header the browser stops there
            other = [("origin", "http://evil.example"), ("access-control-request-method", "POST")]
            status, headers, _ = await conn.request("OPTIONS", "/v1/chat/completions", headers=other)
            assert status == 204 and cors_of(headers) == {}
            # the request after a preflight still needs the key, and its answer names the origin
            status, headers, _ = await conn.request(
                "GET", "/v1/models", headers=[("origin", APP), ("authorization", "Bearer s3cret")]
            )
            assert status == 200 and cors_of(headers) == {
                "access-control-allow-origin": APP,
                "vary": "origin",
            }
            status, headers, _ = await conn.request(
                "GET",
                "/v1/models",
                headers=[("origin", "http://evil.example"), ("authorization", "Bearer s3cret")],
            )
            assert status == 200 and cors_of(headers) == {}
            assert gw.open_connections == 1  # all on one kept-alive connection
        finally:
            await conn.close()


@live
async def test_cors_headers_on_a_streamed_answer_and_on_errors() -> None:
    async with echo_gateway(api_key="s3cret", cors_origins=["http://a.example", APP]) as gw:
        conn = await RawHttp.open(gw)
        try:
            key = ("authorization", "Bearer s3cret")
            body = json.dumps({"model": "echo", "messages": user("streamed to a page"), "stream": True})
            status, headers, out = await conn.request(
                "POST", "/v1/chat/completions", body.encode(), [("origin", APP), key]
            )
            assert status == 200 and headers["content-type"].startswith("text/event-stream")
            assert cors_of(headers) == {"access-control-allow-origin": APP, "vary": "origin"}
            data = sse_data(out)
            assert data[-1] == "[DONE]"
            text = "".join(json.loads(d)["choices"][0]["delta"].get("content") or "" for d in data[:-1])
            assert text == "streamed to a page"
            # 404 and 405 too
            status, headers, _ = await conn.request("GET", "/v1/nothing", headers=[("origin", APP), key])
            assert status == 404 and headers["access-control-allow-origin"] == APP
            status, headers, _ = await conn.request("DELETE", "/v1/models", headers=[("origin", APP), key])
            assert status == 405 and headers["access-control-allow-origin"] == APP
            # 401 without the key (which closes the connection): the page can read why
            status, headers, out = await conn.request("GET", "/v1/models", headers=[("origin", APP)])
            assert status == 401 and json.loads(out)["error"]["code"] == "invalid_api_key"
            assert cors_of(headers) == {"access-control-allow-origin": APP, "vary": "origin"}
        finally:
            await conn.close()
    # '*': any page, no Vary
    async with echo_gateway(cors_origins=["*"]) as gw:
        conn = await RawHttp.open(gw)
        try:
            status, headers, _ = await conn.request(
                "GET", "/v1/models", headers=[("origin", "http://any.example")]
            )
            assert status == 200 and cors_of(headers) == {"access-control-allow-origin": "*"}
            status, headers, _ = await conn.request(
                "OPTIONS", "/v1/chat/completions", headers=[("origin", "http://x.example")]
            )
            assert status == 204 and headers["access-control-allow-origin"] == "*"
            assert headers["access-control-allow-methods"] == "GET, POST, OPTIONS"
        finally:
            await conn.close()


@live
@pytest.mark.parametrize("api_key", [None, "s3cret"])
async def test_no_cors_unless_configured(api_key: str | None) -> None:
    async with echo_gateway(api_key=api_key) as gw:
        assert gw.cors is None
        conn = await RawHttp.open(gw)
        try:
            preflight = [("origin", APP), ("access-control-request-method", "POST")]
            status, headers, out = await conn.request("OPTIONS", "/v1/chat/completions", headers=preflight)
            # as before CORS existed: the key is checked first, then the method
            assert status == (405 if api_key is None else 401), out
            assert cors_of(headers) == {}
        finally:
            await conn.close()
        conn = await RawHttp.open(gw)  # a 401 closed the first
        try:
            auth = [] if api_key is None else [("authorization", f"Bearer {api_key}")]
            status, headers, _ = await conn.request("GET", "/v1/models", headers=[("origin", APP), *auth])
            assert status == 200 and cors_of(headers) == {}
        finally:
            await conn.close()


@live
async def test_gateway_command_cors_origin() -> None:
    env = make_env()
    # not an origin: refused by the argument parser, one usage error
    bad = await run(
        "-m", "mimirlite", "gateway", "--no-mdns", "--port", "0", "--cors-origin", "app.example", env=env
    )
    assert bad.rc == 2 and "--cors-origin" in bad.err and "not a CORS origin" in bad.err
    origins = ("--cors-origin", APP, "--cors-origin", "https://b.example")
    async with (
        mimir_node(EchoBackend()) as (_, addr),
        gateway_command("--peer", addr, "--api-key", "k", *origins, env=env) as (_, port),
    ):
        conn = RawHttp(*await asyncio.open_connection("127.0.0.1", port))
        try:
            preflight = [("origin", "https://b.example"), ("access-control-request-method", "POST")]
            status, headers, _ = await conn.request("OPTIONS", "/v1/chat/completions", headers=preflight)
            assert status == 204 and headers["access-control-allow-origin"] == "https://b.example"
            status, headers, _ = await conn.request("GET", "/v1/models", headers=[("origin", APP)])
            assert status == 401 and headers["access-control-allow-origin"] == APP
        finally:
            await conn.close()


@live
async def test_a_model_served_by_a_node_known_only_through_the_dht() -> None:
    """The gateway's client knows no node, only a bootstrap peer: a request for a model makes it look the
    model up in the DHT, and the answer comes from the node found there; an unknown model stays 404."""
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as boot:
        start_services(boot)
        identify = identify_service(boot)
        assert identify is not None
        async with (
            Dht(boot, identify),
            Host(listen=["/ip4/127.0.0.1/tcp/0"]) as node_host,
            MimirNode(node_host, EchoBackend("far-model"), bootstrap=[boot.listen_addrs[0]]),
        ):
            client = MimirClient(bootstrap=[boot.listen_addrs[0]], mdns=False)
            async with client, Gateway(client, port=0) as gw, sdk(gw) as api:
                assert client.nodes == {}
                answer = await bounded(
                    api.chat.completions.create(model="far-model", messages=user("found far away"))
                )
                assert answer.choices[0].message.content == "found far away"
                assert client.nodes_for("far-model") == [node_host.peer_id]
                with pytest.raises(openai.NotFoundError):
                    await bounded(api.chat.completions.create(model="nowhere", messages=user("x")))
