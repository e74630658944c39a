"""A node out of file descriptors (EMFILE): ``mimirlite node`` runs with a lowered RLIMIT_NOFILE while
this test opens hundreds of connections to it from 20 addresses.

The node pauses accepting (with backoff) instead of spinning, logs a line per interval rather than one
per failed accept (no tracebacks), keeps serving the client connected before the flood, and accepts an
honest peer again once the flood's connections are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import sys
from collections.abc import AsyncIterator, Callable

import pytest

from mimirlite.mimir import MimirClient
from mimirlite.net.addr import parse_multiaddr
from mimirlite.net.host import FD_RESERVE
from tests.helpers import until
from tests.helpers.nodeproc import REPO, Proc, make_env
from tests.helpers.openai_server import OpenAIServer

NOFILE = 40
"""The node's descriptor limit: about 11 in use once it serves, so a few dozen connections exhaust it."""
SOURCES = [f"127.0.0.{i}" for i in range(2, 22)]
PER_SOURCE = 30
"""Connections from each source: 600 in all, far more than the node has descriptors for."""


def lowered_nofile() -> Callable[[], None]:
    def limit() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, hard))

    return limit


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_flood(port: int) -> list[socket.socket]:
    """Non-blocking connects from every source; the kernel queues what the node does not accept."""
    socks = []
    for source in SOURCES:
        for _ in range(PER_SOURCE):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.bind((source, 0))
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            socks.append(s)
    return socks


async def chat(client: MimirClient, text: str) -> str:
    parts = []
    async for chunk in client.chat([{"role": "user", "content": text}]):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts)


@contextlib.asynccontextmanager
async def limited_node(*backend: str) -> AsyncIterator[tuple[Proc, str]]:
    """``mimirlite node *backend`` with RLIMIT_NOFILE lowered to NOFILE; its 127.0.0.1 address."""
    argv = (sys.executable, "-m", "mimirlite", "node", "--no-mdns", *backend)
    argv += ("--listen", "/ip4/127.0.0.1/tcp/0")
    async with await Proc.start(*argv, cwd=REPO, env=make_env(), preexec_fn=lowered_nofile()) as proc:
        yield proc, (await proc.read_banner()).local_addr


@pytest.mark.parametrize("backend", ["echo", "openai"])
async def test_node_out_of_descriptors_pauses_accepting_and_keeps_serving(backend: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if backend == "openai":  # its HTTP connections need descriptors too
            srv = await stack.enter_async_context(OpenAIServer())
            args: tuple[str, ...] = ("--backend", "openai", "--backend-url", srv.base_url)
        else:
            args = ("--backend", "echo")
        proc, addr = await stack.enter_async_context(limited_node(*args))
        await run_flood(proc, addr)
    print(f"node stderr: {len(proc.err)} lines, {sum('Traceback' in x for x in proc.err)} tracebacks")
    # bounded log: a line per interval and reason, not one per failed accept; no tracebacks
    assert not any("Traceback" in line for line in proc.err), "".join(proc.err[:40])
    assert len(proc.err) < 40, "".join(proc.err[:60])
    assert any("not accepting connections for" in line for line in proc.err), "".join(proc.err)


async def run_flood(proc: Proc, addr: str) -> None:
    """An established client chats while the flood holds the node out of descriptors; once the flood
    is gone, a new client is served."""
    port = parse_multiaddr(addr).port
    async with MimirClient(peers=[addr]) as established:
        assert "ping" in await asyncio.wait_for(chat(established, "ping"), 10)
        flood = open_flood(port)
        try:
            await until(lambda: any("Too many open files" in line for line in proc.err), timeout=30)
            # the established client keeps chatting while the node is out of descriptors
            await until(lambda: open_fds(proc.pid) >= NOFILE - FD_RESERVE, timeout=30)
            for i in range(5):
                answer = await asyncio.wait_for(chat(established, f"still here {i}"), 10)
                assert f"still here {i}" in answer
            assert open_fds(proc.pid) >= NOFILE - FD_RESERVE  # still out of them
        finally:
            for s in flood:
                s.close()
    # the flood is gone: a new peer is accepted again
    async with MimirClient(peers=[addr]) as honest:
        assert "back" in await asyncio.wait_for(chat(honest, "back"), 30)
    assert proc.returncode is None
