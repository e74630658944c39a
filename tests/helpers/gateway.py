"""What the gateway suites (tests/gateway/) share on real parts: a mimirlite node and a Gateway in front
of it on 127.0.0.1, the openai SDK, curl and raw HTTP/1.1 clients for it, and their bounds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import h11
import openai
import pytest

from mimirlite import Host
from mimirlite.gateway import Gateway
from mimirlite.mimir import EchoBackend, MimirClient, MimirNode, OpenAIBackend
from tests.helpers.openai_server import OpenAIServer

LLAMA = "llama3.2:latest"
WAIT = 10.0
"""Bound of every wait for an answer or a condition."""

live = pytest.mark.usefixtures("no_leaks")
"""Fail a test that leaves tasks, sockets or transports behind, or logs an error."""

APP = "http://app.example:3000"
"""The origin of a browser page allowed to call the gateway in these tests."""


def cors_of(headers: dict[str, str]) -> dict[str, str]:
    """The CORS headers (and Vary) of a response, as h11 parsed them."""
    return {k: v for k, v in headers.items() if k.startswith("access-control-") or k == "vary"}


@contextlib.asynccontextmanager
async def mimir_node(backend: Any) -> AsyncIterator[tuple[Host, str]]:
    """A mimirlite node on 127.0.0.1 and its address (with /p2p/)."""
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, backend):
        yield host, host.listen_addrs[0]


@contextlib.asynccontextmanager
async def gateway_for(*addrs: str, **kwargs: Any) -> AsyncIterator[Gateway]:
    """A MimirClient (mDNS off) knowing ``addrs``, behind a Gateway on 127.0.0.1 on a free port. On the way
    out, the gateway must have ended every connection and request."""
    async with MimirClient(addrs, mdns=False) as client:
        assert len(client.nodes) == len(addrs)
        gateway = Gateway(client, port=0, **kwargs)
        async with gateway:
            yield gateway
        assert gateway.open_connections == 0
        assert gateway.active_requests == 0


@contextlib.asynccontextmanager
async def echo_gateway(**kwargs: Any) -> AsyncIterator[Gateway]:
    async with mimir_node(EchoBackend()) as (_, addr), gateway_for(addr, **kwargs) as gw:
        yield gw


@contextlib.asynccontextmanager
async def llama_gateway(srv: OpenAIServer, **kwargs: Any) -> AsyncIterator[Gateway]:
    async with (
        mimir_node(OpenAIBackend(srv.base_url, timeout=5.0)) as (_, addr),
        gateway_for(addr, **kwargs) as gw,
    ):
        yield gw


@contextlib.asynccontextmanager
async def sdk(gw: Gateway, api_key: str = "unused") -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=gw.base_url, api_key=api_key, max_retries=0, timeout=WAIT
    ) as client:
        yield client


async def bounded(coro: Any, timeout: float = WAIT) -> Any:
    return await asyncio.wait_for(coro, timeout)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def curl(*args: str, timeout: float = WAIT) -> bytes:
    """``curl -sN ARGS``'s stdout (the process is reaped, killed if it overruns)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sN", "--max-time", str(int(timeout)), *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout + 5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out


def sse_data(raw: bytes) -> list[str]:
    """The ``data`` of each Server-Sent Event, after checking the framing is OpenAI's exactly."""
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events), raw
    return [e[len(b"data: ") :].decode() for e in events]


class RawHttp:
    """A client connection for exact bytes; responses are parsed by h11 (client side)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, gw: Gateway) -> RawHttp:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await bounded(self.writer.wait_closed())

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> tuple[int, dict[str, str], bytes]:
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        given = {k.lower() for k, _ in headers}
        hdrs = [*headers, ("content-length", str(len(body)))]
        if "host" not in given:
            hdrs.append(("host", "127.0.0.1"))
        if method == "POST" and "content-type" not in given:  # JSON, as the gateway wants
            hdrs.append(("content-type", "application/json"))
        self.writer.write(self.h11.send(h11.Request(method=method, target=target, headers=hdrs)) or b"")
        self.writer.write(self.h11.send(h11.Data(data=body)) or b"")
        self.writer.write(self.h11.send(h11.EndOfMessage()) or b"")
        return await bounded(self.response())

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        status, headers, body = 0, {}, bytearray()
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, headers, bytes(body)
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def read_to_eof(self) -> bytes:
        return await bounded(self.reader.read())
