"""The gateway's door, on real sockets: what a request head must show before its body is read (the API
key, a ``Host`` naming the gateway, JSON as ``application/json``, one framing, a bounded head), what
the gateway does with JSON and text it cannot encode, and how its connections are shared (idle ones make
room, per-address limits). Hostile clients are raw sockets on 127.0.0.x; each refusal is checked as the
client sees it, in the gateway's counters and in its log, and an honest client is served meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import openai
import pytest

from mimirlite.errors import LocalError
from mimirlite.gateway import MAX_CONNECTIONS_PER_IP, Gateway, HttpError
from mimirlite.gateway.http import MAX_REQUEST_HEAD, Door, Request, ServerConnection, host_name
from mimirlite.mimir import EchoBackend
from tests.helpers import logged, until
from tests.helpers.gateway import (
    APP,
    WAIT,
    RawHttp,
    bounded,
    echo_gateway,
    gateway_for,
    live,
    mimir_node,
    sdk,
    user,
)
from tests.helpers.nodeproc import REPO, Proc, gateway_command, make_env

MiB = 1024 * 1024
CHAT = json.dumps({"model": "echo", "messages": user("still served")}).encode()


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mimirlite.gateway")


def head(
    target: str = "/v1/chat/completions",
    *,
    method: str = "POST",
    host: str | None = "127.0.0.1",
    length: int | None = None,
    extra: tuple[tuple[str, str], ...] = (("content-type", "application/json"),),
) -> bytes:
    """A request head, as raw bytes (no validation: hostile heads are the point)."""
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in extra]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@contextlib.asynccontextmanager
async def raw(port: int, source: str = "127.0.0.1", to: str = "127.0.0.1") -> AsyncIterator[RawHttp]:
    """A raw client connection from ``source`` to ``to``:``port``, closed at the end."""
    reader, writer = await asyncio.open_connection(to, port, local_addr=(source, 0))
    conn = RawHttp(reader, writer)
    try:
        yield conn
    finally:
        await conn.close()


async def refused(port: int, data: bytes, source: str = "127.0.0.1") -> tuple[int, dict[str, Any], bytes]:
    """Send ``data`` on a new connection; the one answer (status, error object, raw) before the gateway
    closes the connection, which it must."""
    async with raw(port, source) as conn:
        if data:
            conn.writer.write(data)
        out = await conn.read_to_eof()
    head_, _, body = out.partition(b"\r\n\r\n")
    assert out.count(b"HTTP/1.1 ") == 1, out
    assert b"\r\nconnection: close\r\n" in head_ + b"\r\n", out
    return int(head_.split(b" ")[1]), json.loads(body)["error"], out


async def served(port: int, *, source: str = "127.0.0.1", key: str | None = None) -> None:
    """An honest chat on a new connection is answered."""
    auth = [] if key is None else [("authorization", f"Bearer {key}")]
    async with raw(port, source) as conn:
        status, _, out = await conn.request("POST", "/v1/chat/completions", CHAT, auth)
    assert status == 200 and json.loads(out)["choices"][0]["message"]["content"] == "still served", out


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


# ====================================================================== 1. the key, before the body


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of process ``pid``, in KiB (from /proc)."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status if line.startswith("Vm"))
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


@live
async def test_unauthenticated_bodies_cost_the_gateway_no_memory() -> None:
    """100 clients without the key, each announcing a 4 MiB body: each is answered 401 from its head,
    before it sends a byte of the body, and the connection is closed without reading what they send after:
    the gateway command's peak RSS stays within 32 MiB of what it was (it held every body before: 38 -> 475
    MiB). A client with the key is served meanwhile."""
    env = make_env(MIMIRLITE_API_KEY="the-key")
    async with (
        mimir_node(EchoBackend()) as (_, addr),
        gateway_command("--peer", addr, env=env) as (proc, port),
    ):
        await served(port, key="the-key")  # the chat path loaded, then the baseline
        before = memory_kib(proc.pid)
        answered = 0

        async def unauthenticated(i: int) -> bytes:
            nonlocal answered
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                auth = (("authorization", "Bearer wrong"),) if i % 2 else ()
                writer.write(head(length=4 * MiB, extra=(("content-type", "application/json"), *auth)))
                answer = await bounded(reader.readuntil(b"\r\n\r\n"))  # no body byte sent yet
                length = int(answer.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                answer += await bounded(reader.readexactly(length))
                answered += 1
                chunk = b"x" * 65536
                with contextlib.suppress(ConnectionError):  # then the body, until the gateway hangs up
                    for _ in range(4 * MiB // len(chunk)):
                        writer.write(chunk)
                        await bounded(writer.drain())
                return answer
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await bounded(writer.wait_closed())

        attack = [asyncio.ensure_future(unauthenticated(i)) for i in range(100)]
        try:
            await until(lambda: answered >= 50, WAIT)
            await served(port, key="the-key")  # served while the others push their bodies
            answers = await bounded(asyncio.gather(*attack), 60)
        finally:
            for task in attack:
                task.cancel()
            await asyncio.wait(attack, timeout=WAIT)
        after = memory_kib(proc.pid)
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 401 ") and b"connection: close" in answer, answer
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "invalid_api_key"
    growth_mib = (after["VmHWM"] - before["VmRSS"]) / 1024
    assert growth_mib < 32, (before, after)  # about 1 MiB here


@live
async def test_a_request_without_the_key_is_refused_from_its_head(caplog: pytest.LogCaptureFixture) -> None:
    async with echo_gateway(api_key="s3cret", cors_origins=[APP]) as gw:
        # a 4 MiB body announced, none sent: answered at once, closed
        status, error, out = await refused(gw.port, head(length=4 * MiB))
        assert (status, error["code"]) == (401, "invalid_api_key")
        # a wrong key, waiting for 100 Continue: no Continue, the 401
        expect = (
            ("content-type", "application/json"),
            ("authorization", "Bearer nope"),
            ("expect", "100-continue"),
        )
        status, error, out = await refused(gw.port, head(length=MiB, extra=expect))
        assert status == 401 and b"100 Continue" not in out
        # not Bearer
        status, _, _ = await refused(
            gw.port, head("/v1/models", method="GET", extra=(("authorization", "Basic s3cret"),))
        )
        assert status == 401
        assert gw.metrics.refused["auth"] == 3
        assert len(logged(caplog, "refused (auth)")) == 3
        # a CORS preflight needs no key, as before
        async with raw(gw.port) as conn:
            preflight = [("origin", APP), ("access-control-request-method", "POST")]
            status, headers, _ = await conn.request("OPTIONS", "/v1/chat/completions", headers=preflight)
            assert status == 204 and headers["access-control-allow-origin"] == APP
            status, _, _ = await conn.request(
                "GET", "/v1/models", headers=[("authorization", "Bearer s3cret")]
            )
            assert status == 200
        await served(gw.port, key="s3cret")
    no_tracebacks(caplog)


# ====================================================================== 2. Host (DNS rebinding)


def test_host_names_as_compared() -> None:
    for value, name in [
        ("localhost", "localhost"),
        ("LocalHost:8080", "localhost"),
        ("localhost.", "localhost"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[0:0:0:0:0:0:0:1]:8080", "::1"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),
        ("my-box.lan:", "my-box.lan"),
    ]:
        assert host_name(value) == name, value
    for bad in ["", ":80", "::1", "[::1", "[127.0.0.1]", "a b", "a:b", "h:123456", "ex\u00e4mple.com", "a/b"]:
        assert host_name(bad) is None, bad
    assert Door.of(["[::1]", "::1", "My.Box"]).hosts == {"::1", "my.box"}
    assert Door.of(["a", "*"]).hosts is None
    with pytest.raises(LocalError, match="not a host"):
        Door.of(["a b"])


@live
async def test_host_must_name_the_gateway(caplog: pytest.LogCaptureFixture) -> None:
    async with echo_gateway(allow_hosts=["my.box"]) as gw:
        port = gw.port
        with pytest.raises(LocalError, match="not a host"):
            Gateway(gw.client, allow_hosts=["http://my.box/"])
        async with raw(
            gw.port
        ) as conn:  # every name of the gateway, with or without the port: one connection
            for host in ["localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.1:{port}", "[::1]",
                         f"[::1]:{port}", "LOCALHOST", "my.box", f"MY.BOX:{port}"]:  # fmt: skip
                status, _, out = await conn.request("GET", "/v1/models", headers=[("host", host)])
                assert status == 200, (host, out)
        bad_hosts = ["evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", "localhost.evil.example",
                     "127.0.0.2", "[::2]", "my.box.evil", "", "local host"]  # fmt: skip
        for host in bad_hosts:
            status, error, _ = await refused(gw.port, head("/v1/models", method="GET", host=host, extra=()))
            assert (status, error["code"]) == (403, "host_not_allowed"), host
        assert gw.metrics.refused["host"] == len(bad_hosts)
        assert logged(caplog, "refused (host)", "evil.example")
        await served(gw.port)
    # bound to another loopback address: that one too
    async with mimir_node(EchoBackend()) as (_, addr), gateway_for(addr, host="127.0.0.5") as gw:
        async with raw(gw.port, to="127.0.0.5") as conn:
            for host in ("127.0.0.5", f"127.0.0.5:{gw.port}", "localhost"):
                assert (await conn.request("GET", "/v1/models", headers=[("host", host)]))[0] == 200
        async with raw(gw.port, to="127.0.0.5") as conn:
            conn.writer.write(head("/v1/models", method="GET", host="127.0.0.6", extra=()))
            assert (await conn.read_to_eof()).startswith(b"HTTP/1.1 403 ")
    no_tracebacks(caplog)


@live
async def test_a_wildcard_gateway_accepts_the_address_a_client_came_to(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bound to 0.0.0.0: a ``Host`` naming the address the connection came to (any of the machine's),
    a loopback name or an allowed name; nothing else. Without an API key it warns, once."""
    async with mimir_node(EchoBackend()) as (_, addr), gateway_for(addr, host="0.0.0.0") as gw:
        assert len(logged(caplog, "without an API key", "MIMIRLITE_API_KEY")) == 1
        for to in ("127.0.0.2", "127.0.0.1"):
            async with raw(gw.port, to=to) as conn:
                for host in (to, f"{to}:{gw.port}", "localhost"):
                    assert (await conn.request("GET", "/v1/models", headers=[("host", host)]))[0] == 200, host
        for to, host in (("127.0.0.2", "127.0.0.3"), ("127.0.0.2", "evil.example")):
            async with raw(gw.port, to=to) as conn:
                conn.writer.write(head("/v1/models", method="GET", host=host, extra=()))
                assert (await conn.read_to_eof()).startswith(b"HTTP/1.1 403 "), host
    no_tracebacks(caplog)


# ====================================================================== 3. POST bodies as JSON only


@live
async def test_post_bodies_only_as_json(caplog: pytest.LogCaptureFixture) -> None:
    async with echo_gateway(cors_origins=[APP]) as gw:
        kinds = ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "application/jsonp", "application/json-seq",
                 None]  # fmt: skip
        for kind in kinds:
            extra = () if kind is None else (("content-type", kind),)
            status, error, _ = await refused(gw.port, head(length=len(CHAT), extra=extra) + CHAT)
            assert (status, error["code"]) == (415, "unsupported_media_type"), kind
        # a page from an origin CORS does not allow: its simple POST is refused too
        evil = (("content-type", "text/plain"), ("origin", "http://evil.example"))
        assert (await refused(gw.port, head(length=len(CHAT), extra=evil) + CHAT))[0] == 415
        assert gw.metrics.refused["content_type"] == len(kinds) + 1
        assert logged(caplog, "refused (content_type)", "text/plain")
        async with raw(gw.port) as conn:
            for kind in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
                status, _, _ = await conn.request(
                    "POST", "/v1/chat/completions", CHAT, [("content-type", kind)]
                )
                assert status == 200, kind
            # the page CORS allows may send what it likes
            allowed = [("content-type", "text/plain"), ("origin", APP)]
            status, headers, _ = await conn.request("POST", "/v1/chat/completions", CHAT, allowed)
            assert status == 200 and headers["access-control-allow-origin"] == APP
    no_tracebacks(caplog)


# ====================================================================== 4. framing and head size


@live
@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
    ],
)
async def test_content_length_with_transfer_encoding_is_refused_and_closed(
    framing: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    smuggled = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    data = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    data += framing + b"\r\n0\r\n\r\n" + smuggled
    async with echo_gateway() as gw:
        status, error, _ = await refused(gw.port, data)  # one answer only: the GET behind is never read
        assert status == 400 and "Transfer-Encoding" in error["message"]
        assert gw.metrics.refused["smuggling"] == 1 and gw.metrics.requests == 0
        assert logged(caplog, "refused (smuggling)")
        await served(gw.port)


def test_core_one_limit_for_the_whole_head() -> None:
    # h11 bounds what it holds unparsed; a head arriving whole in one read is counted too
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 90) for i in range(20))
    conn = ServerConnection(max_head=1024)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
    with pytest.raises(HttpError) as err:
        conn.next_request()
    assert (err.value.status, err.value.reason) == (431, "head_too_large")
    conn = ServerConnection(max_head=1024)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n" + fields[:500] + b"\r\n\r\n")
    assert isinstance(conn.next_request(), Request)


@live
async def test_a_head_over_the_limit_is_431_and_closed(caplog: pytest.LogCaptureFixture) -> None:
    async with echo_gateway() as gw:
        fields = "".join(f"X-{i}: {'v' * 1000}\r\n" for i in range(MAX_REQUEST_HEAD // 1000 + 2)).encode()
        data = head("/v1/models", method="GET", extra=()).removesuffix(b"\r\n") + fields + b"\r\n"
        status, _, _ = await refused(gw.port, data)  # one write: h11 would have parsed it whole
        assert status == 431
        assert gw.metrics.refused["head_too_large"] == 1
        assert logged(caplog, "refused (head_too_large)")
        async with raw(gw.port) as conn:  # half the limit is fine
            half = [(f"x-{i}", "v" * 1000) for i in range(MAX_REQUEST_HEAD // 2000)]
            assert (await conn.request("GET", "/v1/models", headers=half))[0] == 200


# ====================================================================== 5. JSON and encodings


@live
async def test_json_and_encoding_failures_are_400_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def chat(content: bytes) -> bytes:
        return b'{"model":"echo","messages":[{"role":"user","content":' + content + b"}]}"

    bad = {
        "nested 100,000 deep": chat(b"[" * 100_000 + b"]" * 100_000),
        "nested 65 deep": chat(b"[" * 62 + b"]" * 62),
        "invalid UTF-8": chat(b'"\xff\xfe"'),
        "a lone high surrogate": chat(b'"a\\ud800b"'),
        "a lone low surrogate": chat(b'"\\udc00"'),
        "a surrogate key": b'{"model":"echo","messages":[{"role":"user","content":"x"}],"\\ud800":1}',
        "NaN": b'{"model":"echo","messages":[{"role":"user","content":"x"}],"temperature":NaN}',
        "beyond a float": b'{"model":"echo","messages":[{"role":"user","content":"x"}],"seed":1e400}',
    }
    async with (
        echo_gateway() as gw,
        raw(gw.port) as conn,
    ):  # one connection: a bad body is the request's problem
        for what, body in bad.items():
            status, _, out = await conn.request("POST", "/v1/chat/completions", body)
            error = json.loads(out)["error"]
            assert (status, error["type"]) == (400, "invalid_request_error"), (what, out)
        # a surrogate pair is a character: served
        status, _, out = await conn.request("POST", "/v1/chat/completions", chat(b'"\\ud83d\\ude00 ok"'))
        assert status == 200 and json.loads(out)["choices"][0]["message"]["content"] == "\U0001f600 ok"
        assert gw.open_connections == 1
    no_tracebacks(caplog)


@live
async def test_a_head_request_is_answered_without_a_body(caplog: pytest.LogCaptureFixture) -> None:
    async with echo_gateway() as gw, raw(gw.port) as conn:
        for target, status in (("/v1/models", 405), ("/v1/nothing", 404)):
            conn.writer.write(head(target, method="HEAD", extra=()))
            answer = await bounded(conn.reader.readuntil(b"\r\n\r\n"))  # headers only, then the next
            assert answer.startswith(b"HTTP/1.1 %d " % status) and b"content-length: " in answer, answer
        assert (await conn.request("GET", "/v1/models"))[0] == 200
    no_tracebacks(caplog)


class SurrogateEcho(EchoBackend):
    """The echo backend, answering ``<lone>`` as a lone surrogate (``"\\ud800"`` on the wire)."""

    async def stream_chat(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        async for chunk in super().stream_chat(model, messages, params):
            for choice in chunk.get("choices", ()):
                text = choice["delta"].get("content")
                if text:
                    choice["delta"]["content"] = text.replace("<lone>", "\ud800")
            yield chunk


@live
async def test_a_lone_surrogate_from_a_node_is_replaced(caplog: pytest.LogCaptureFixture) -> None:
    """A node's answer holding ``"\\ud800"`` (no UTF-8 form): U+FFFD in its place, streamed or not."""
    async with mimir_node(SurrogateEcho()) as (_, addr), gateway_for(addr) as gw, sdk(gw) as client:
        answer = await client.chat.completions.create(model="echo", messages=user("a <lone> b"))
        assert answer.choices[0].message.content == "a \ufffd b"
        stream = await client.chat.completions.create(model="echo", messages=user("c <lone> d"), stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "c \ufffd d"
    no_tracebacks(caplog)


# ====================================================================== 5. idle connections, per address


async def idle_connection(gw: Gateway, source: str = "127.0.0.1") -> RawHttp:
    """A connection that made one request and now waits, kept alive."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, local_addr=(source, 0))
    conn = RawHttp(reader, writer)
    assert (await conn.request("GET", "/v1/models"))[0] == 200
    return conn


async def busy_connection(gw: Gateway, source: str = "127.0.0.1") -> RawHttp:
    """A connection in the middle of sending a request head (so not idle)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, local_addr=(source, 0))
    read = gw.metrics.bytes_in
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    await until(lambda: gw.metrics.bytes_in > read, WAIT)
    return RawHttp(reader, writer)


async def finish_busy(conn: RawHttp) -> int:
    conn.writer.write(b"\r\n")
    data = await bounded(conn.reader.readuntil(b"\r\n"))
    return int(data.split(b" ")[1])


@live
async def test_idle_connections_make_room_oldest_first(caplog: pytest.LogCaptureFixture) -> None:
    async with echo_gateway(max_connections=8) as gw:
        conns = [await idle_connection(gw) for _ in range(8)]
        silent: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            await bounded(served(gw.port), 5)  # at once, not after the idle timeout
            assert await conns[0].read_to_eof() == b""  # the one idle the longest was closed
            assert (await conns[1].request("GET", "/v1/models"))[0] == 200  # the others still served
            assert gw.metrics.refused["idle_evicted"] == 1
            assert logged(caplog, "idle connection closed to make room")
            # connections that never sent a byte are idle too (the 4,096-socket lock-out)
            await until(lambda: gw.open_connections == 7)
            opened = gw.metrics.connections_opened
            for i in range(1, 9):
                silent.append(await asyncio.open_connection("127.0.0.1", gw.port))
                await until(lambda n=opened + i: gw.metrics.connections_opened == n)  # accepted
                assert gw.open_connections == 8
            assert gw.metrics.refused["idle_evicted"] == 1 + 7
            await bounded(served(gw.port), 5)
            assert gw.metrics.refused["idle_evicted"] == 1 + 7 + 1
            assert [await c.read_to_eof() for c in conns[1:]] == [b""] * 7  # all made room, in turn
        finally:
            for conn in conns:
                await conn.close()
            for _, writer in silent:
                writer.close()
    no_tracebacks(caplog)


@live
async def test_connections_per_address_are_limited(caplog: pytest.LogCaptureFixture) -> None:
    assert MAX_CONNECTIONS_PER_IP == 1024
    async with echo_gateway(max_connections_per_ip=2) as gw:
        busy = [await busy_connection(gw, "127.0.0.2") for _ in range(2)]
        idle = [await idle_connection(gw, "127.0.0.3") for _ in range(2)]
        try:
            # a third from a busy address: refused, 429; other addresses are served meanwhile
            status, error, _ = await refused(gw.port, b"", source="127.0.0.2")  # refused on accept
            assert (status, error["code"], error["type"]) == (429, "too_many_connections", "rate_limit_error")
            assert gw.metrics.refused["connections_per_ip"] == 1
            assert logged(caplog, "refused: 2 connections from its address already")
            await served(gw.port)
            # a third from an address with idle connections: its own oldest idle one makes room
            await served(gw.port, source="127.0.0.3")
            assert await idle[0].read_to_eof() == b""
            assert (await idle[1].request("GET", "/v1/models"))[0] == 200
            assert gw.metrics.refused["idle_evicted"] == 1
            assert [await finish_busy(c) for c in busy] == [200, 200]  # the busy ones were left alone
        finally:
            for conn in busy + idle:
                await conn.close()
    no_tracebacks(caplog)


# ====================================================================== the command


def _stderr_lines(err: str, prefix: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(prefix)]


@live
async def test_gateway_command_warns_once_without_a_key_off_loopback() -> None:
    from mimirlite import cli

    assert cli._GATEWAY_PER_IP == MAX_CONNECTIONS_PER_IP
    env = make_env()
    async with mimir_node(EchoBackend()) as (_, addr):
        # 0.0.0.0 without a key: one WARNING line; --allow-host names are served, others not
        async with gateway_command(
            "--peer", addr, "--host", "0.0.0.0", "--allow-host", "my.box", env=env
        ) as (
            proc,
            port,
        ):
            async with raw(port) as conn:
                assert (await conn.request("GET", "/v1/models", headers=[("host", f"my.box:{port}")]))[
                    0
                ] == 200
            status, _, _ = await refused(
                port, head("/v1/models", method="GET", host="evil.example", extra=())
            )
            assert status == 403
            _, err = await proc.stop()
        warnings = _stderr_lines(err, "WARNING")
        assert (
            len(warnings) == 1 and "without an API key" in warnings[0] and "MIMIRLITE_API_KEY" in warnings[0]
        )
        # the key from MIMIRLITE_API_KEY: no warning, and the key is required
        async with gateway_command(
            "--peer", addr, "--host", "0.0.0.0", env=make_env(MIMIRLITE_API_KEY="k")
        ) as (
            proc,
            port,
        ):
            base_url = f"http://127.0.0.1:{port}/v1"
            for key in ("k", "not-k"):
                async with openai.AsyncOpenAI(
                    base_url=base_url, api_key=key, max_retries=0, timeout=WAIT
                ) as client:
                    if key == "k":
                        assert [m.id async for m in client.models.list()] == ["echo"]
                    else:
                        with pytest.raises(openai.AuthenticationError):
                            await client.models.list()
            _, err = await proc.stop()
        assert _stderr_lines(err, "WARNING") == []
        # loopback without a key: no warning
        async with gateway_command("--peer", addr, env=env) as (proc, _):
            _, err = await proc.stop()
        assert _stderr_lines(err, "WARNING") == []
    # the help recommends the environment variable; a bad --allow-host is a usage error
    async with await Proc.start(
        sys.executable, "-m", "mimirlite", "gateway", "--help", cwd=REPO, env=env
    ) as proc:
        code, out, _ = await proc.finish(timeout=30)
    text = " ".join(out.split())
    assert code == 0 and "MIMIRLITE_API_KEY" in text and "`ps`" in text and "--allow-host" in text
    async with await Proc.start(
        sys.executable, "-m", "mimirlite", "gateway", "--allow-host", "a b", cwd=REPO, env=env
    ) as proc:
        code, _, err = await proc.finish(timeout=30)
    assert code == 2 and "--allow-host" in err and "not a host name" in err


def test_gateway_command_options(capsys: pytest.CaptureFixture[str]) -> None:
    from mimirlite import cli

    args = cli._parser().parse_args(
        ["gateway", "--allow-host", "my.box", "--allow-host", "[fd00::1]:80", "--max-connections-per-ip", "8"]
    )
    assert (args.allow_host, args.max_connections_per_ip) == (["my.box", "[fd00::1]:80"], 8)
    assert cli._parser().parse_args(["gateway"]).max_connections_per_ip == MAX_CONNECTIONS_PER_IP
    for bad in (["--max-connections-per-ip", "0"], ["--allow-host", "http://my.box/"]):
        with pytest.raises(SystemExit):
            cli._parser().parse_args(["gateway", *bad])
    assert "--max-connections-per-ip" in capsys.readouterr().err
