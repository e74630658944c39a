"""Faults: a node killed mid-answer or before its first chunk, a link down mid-stream, a client's read
timeout, and the backend faults ``tests/mimir/test_mimir.py`` leaves open (the backend request is cancelled).

Nodes are the real command line (``python -m mimirlite node --backend echo --no-mdns``) with its echo
model slowed down: ``NODE`` runs the CLI with ``EchoBackend`` replaced by a subclass that waits
``delay`` s before each word (and ``first`` s before its first chunk) and prints on stdout when a chat
starts and how it ended (``finished=False``: the answer was cut, i.e. the backend request cancelled).
The link-down tests run the node and the client on namespace test hosts (tests/helpers/netns.py) and take the
link down with ``ip link set eth0 down`` inside one of them, mid-answer or on an idle connection; both
sides run with a short ``dead_link_timeout`` (the node: ``--dead-link-timeout``), so that the kernel
gives up on the dead link within seconds.

Every wait is bounded; every process and namespace is stopped or removed on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mimirlite import Host, HostConfig
from mimirlite.mimir import (
    AnswerTimeoutError,
    ChatError,
    EchoBackend,
    MimirClient,
    MimirNode,
    NoNodeError,
    OpenAIBackend,
    RemoteError,
    TruncatedAnswerError,
    packets,
)
from tests.helpers.netns import Inbox, NetnsHost, NetnsLoop, TestNet, require_netns
from tests.helpers.nodeproc import NodeProc
from tests.helpers.openai_server import OpenAIServer
from tests.helpers.waiting import until

live = pytest.mark.usefixtures("no_leaks")
"""Fail a test that leaves tasks, sockets or transports behind, or logs an error."""
EVENT_TIMEOUT = 10.0
"""Bound on one expected event (a chunk, a line of the node)."""
KILL_NOTICED = 5.0
"""Bound on the client noticing a killed node: the kernel closes the node's sockets at once."""
DEAD_LINK_TIMEOUT = 3.0
"""dead_link_timeout of both sides in the link-down tests: the kernel fails a connection whose peer
stopped acknowledging after about 3 s (by default 60 s; without it, about 15 minutes with data to send,
and never without)."""
DEAD_LINK_NOTICED = DEAD_LINK_TIMEOUT + 2.0
"""Bound on the node logging a dead link, counted from the link going down."""
LINK_DOWN_RELEASE = DEAD_LINK_TIMEOUT + EVENT_TIMEOUT
"""Bound on a side releasing a connection over a dead link."""
DEAD_LINK_ARGS = ("--dead-link-timeout", f"{DEAD_LINK_TIMEOUT:g}")
DEAD_LINK = "closing connection: dead link"
"""What the node logs when the kernel gives up on a connection."""
LLAMA = "llama3.2:latest"
WORDS = " ".join(f"w{i}" for i in range(200))

NODE = """
import asyncio, sys
import mimirlite.mimir
from mimirlite.mimir import backends
from mimirlite.cli import main

DELAY, FIRST = float(sys.argv[1]), float(sys.argv[2])


class MarkedEcho(backends.EchoBackend):
    def __init__(self, model=backends.ECHO_MODEL):
        super().__init__(model, delay=DELAY)

    async def stream_chat(self, model, messages, params):
        print("fault-test: chat started", flush=True)
        finished = False
        try:
            if FIRST:
                await asyncio.sleep(FIRST)
            async for chunk in super().stream_chat(model, messages, params):
                yield chunk
            finished = True
        finally:
            print(f"fault-test: chat ended finished={finished}", flush=True)


mimirlite.mimir.EchoBackend = backends.EchoBackend = MarkedEcho
sys.exit(main(sys.argv[3:]))
"""


class MarkedNode(NodeProc):
    """A CLI node with the marked echo model; its stdout and stderr (its log) collected line by line."""

    line_timeout = EVENT_TIMEOUT

    @classmethod
    async def serve_marked(
        cls,
        stack: contextlib.AsyncExitStack,
        *,
        delay: float,
        first: float = 0.0,
        net: TestNet | None = None,
        host: NetnsHost | None = None,
        args: Sequence[str] = (),
    ) -> MarkedNode:
        """Start a node (in ``host``'s namespace when given; ``args``: more node options), stopped when
        ``stack`` closes."""
        ip = host.ip if host is not None else "127.0.0.1"
        return await cls.serve(
            stack,
            "node", "--backend", "echo", "--no-mdns", "-v", "--listen", f"/ip4/{ip}/tcp/0", *args,
            argv=(sys.executable, "-c", NODE, str(delay), str(first)), net=net, host=host,
        )  # fmt: skip


STARTED = "fault-test: chat started"
CUT = "fault-test: chat ended finished=False"
FINISHED = "fault-test: chat ended finished=True"


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks)


# ---- a node process killed -----------------------------------------------------------------------


@live
async def test_node_killed_mid_answer_raises_truncated_answer_at_once() -> None:
    async with contextlib.AsyncExitStack() as stack:
        node = await MarkedNode.serve_marked(stack, delay=0.05)
        client = await stack.enter_async_context(MimirClient(peers=[node.addr], read_timeout=60))
        assert client.nodes
        loop = asyncio.get_running_loop()
        chunks: list[Any] = []
        three = asyncio.Event()

        async def consume() -> None:
            async for chunk in client.chat([{"role": "user", "content": WORDS}]):
                chunks.append(chunk)
                if len(chunks) == 3:
                    three.set()

        chat = asyncio.create_task(consume())
        try:
            await asyncio.wait_for(three.wait(), EVENT_TIMEOUT)
            await node.wait_line(lambda line: line == STARTED)  # the slowed echo model answers
            await node.kill()
            killed = loop.time()
            with pytest.raises(TruncatedAnswerError, match="broke off"):
                await asyncio.wait_for(chat, KILL_NOTICED)
        finally:
            chat.cancel()
        noticed = loop.time() - killed
        assert noticed < KILL_NOTICED < client.read_timeout  # the connection's end, not a timeout
        assert 3 <= len(chunks) < 202
        assert text_of(chunks) == " ".join(WORDS.split()[: len(chunks) - 1])
        # Nothing hangs afterwards: the node is forgotten, and the next chat fails at once.
        assert client.nodes == {}
        with pytest.raises(NoNodeError):
            await asyncio.wait_for(consume(), EVENT_TIMEOUT)


@live
async def test_node_killed_before_its_first_chunk_the_client_answers_from_another() -> None:
    async with contextlib.AsyncExitStack() as stack:
        # Both nodes hold their first chunk 4 s: the node asked first is killed well before it.
        a, b = await asyncio.gather(
            MarkedNode.serve_marked(stack, delay=0.0, first=4.0),
            MarkedNode.serve_marked(stack, delay=0.0, first=4.0),
        )
        client = await stack.enter_async_context(MimirClient(peers=[a.addr, b.addr], read_timeout=60))
        assert len(client.nodes) == 2
        question = "the answer comes from the node still alive"
        chat = asyncio.create_task(_collect(client.chat([{"role": "user", "content": question}])))
        try:
            asked = asyncio.ensure_future(a.wait_line(lambda line: line == STARTED))
            other = asyncio.ensure_future(b.wait_line(lambda line: line == STARTED))
            done, pending = await asyncio.wait((asked, other), return_when=asyncio.FIRST_COMPLETED)
            for p in pending:
                p.cancel()
            first, second = (a, b) if asked in done else (b, a)
            assert not chat.done()
            await first.kill()
            chunks = await asyncio.wait_for(chat, 4.0 + EVENT_TIMEOUT)
        finally:
            chat.cancel()
        assert text_of(chunks) == question
        assert chunks[-1].choices[0].finish_reason == "stop"
        await second.wait_line(lambda line: line == FINISHED)
        assert second.count(STARTED) == 1
        assert first.count(FINISHED) == 0
        assert list(client.nodes) == [_peer_of(second)]


async def _collect(chat: Any) -> list[Any]:
    return [chunk async for chunk in chat]


def _peer_of(node: MarkedNode) -> Any:
    from mimirlite.identity import PeerId

    return PeerId.from_string(node.addr.rsplit("/p2p/", 1)[1])


# ---- link down between namespaces mid-stream ------------------------------------------------------


def _link_down(host: NetnsHost) -> None:
    subprocess.run(["ip", "-n", host.netns, "link", "set", "eth0", "down"], check=True, timeout=10)


@live
@pytest.mark.parametrize("side", ["client", "node"])
async def test_link_down_mid_stream_both_sides_time_out_and_clean_up(side: str) -> None:
    require_netns()
    read_timeout = 2.0
    async with contextlib.AsyncExitStack() as stack:
        net = await stack.enter_async_context(TestNet(2))
        node_host, client_host = net.hosts
        node = await MarkedNode.serve_marked(stack, delay=0.1, net=net, host=node_host, args=DEAD_LINK_ARGS)
        assert "python" in Path(f"/proc/{node.pid}/cmdline").read_text()  # ip netns exec execs in place
        idle_fds = open_fds(node.pid)
        nl: NetnsLoop = net.loop(client_host)
        inbox = Inbox()

        async def connect() -> MimirClient:
            config = HostConfig(dead_link_timeout=DEAD_LINK_TIMEOUT)
            client = MimirClient(peers=[node.addr], read_timeout=read_timeout, config=config)
            await client.start()
            return client

        client = await nl.run(connect(), timeout=EVENT_TIMEOUT)
        stack.push_async_callback(nl.run, client.stop(), EVENT_TIMEOUT)
        assert await nl.run(_known(client), timeout=EVENT_TIMEOUT)

        async def chat() -> None:
            loop = asyncio.get_running_loop()
            try:
                async for chunk in client.chat([{"role": "user", "content": WORDS}]):
                    inbox.push("chunk", chunk.choices[0].delta.content)
            except Exception as exc:
                inbox.push("raised", exc, loop.time())
            else:
                inbox.push("finished")

        answering = asyncio.ensure_future(nl.run(chat(), timeout=60))
        stack.callback(answering.cancel)
        await inbox.wait_for(lambda items: sum(k == "chunk" for k, _, _ in items) >= 3, EVENT_TIMEOUT)
        assert open_fds(node.pid) == idle_fds + 1  # the client's connection
        down_at = await nl.run(_now(), timeout=EVENT_TIMEOUT)
        _link_down(client_host if side == "client" else node_host)

        # The client: nothing comes any more; it raises within its read timeout (plus one word's delay).
        _, exc, raised_at = (await inbox.wait_for(_raised, read_timeout + EVENT_TIMEOUT))[0]
        assert isinstance(exc, AnswerTimeoutError) and isinstance(exc, ChatError), repr(exc)
        assert isinstance(exc, asyncio.TimeoutError)
        assert raised_at - down_at < read_timeout + 1.0
        assert not any(k == "finished" for k, _, _ in inbox.items)

        # The node: the kernel gives up on the dead link (ETIMEDOUT), the connection ends with that
        # reason logged, the chat is cancelled (its echo model stops mid-answer) and every descriptor of
        # the connection is released.
        dead = await node.wait_line(lambda line: DEAD_LINK in line, LINK_DOWN_RELEASE)
        assert "Connection timed out" in node.lines[dead], node.lines[dead]
        await node.wait_line(lambda line: line == CUT, EVENT_TIMEOUT)
        assert node.count(FINISHED) == 0
        await until(
            lambda: open_fds(node.pid) == idle_fds,
            EVENT_TIMEOUT,
            "the node's descriptors released",
            interval=0.02,
        )

        # The client: its stream is gone at once, its connection (and so the node) once TCP gives up.
        assert await nl.run(_forgotten(client, LINK_DOWN_RELEASE), timeout=LINK_DOWN_RELEASE + EVENT_TIMEOUT)


@live
async def test_link_down_under_an_idle_inbound_connection_the_node_notices_and_serves_on() -> None:
    """The node has nothing to send on a client's connection (no chat, no pings: it is the client's to
    ping) when that client's link goes down. Only TCP keepalive can tell: the node closes it within about
    ``DEAD_LINK_TIMEOUT`` (not at its idle timeout, 300 s), logs why, counts it, and serves another peer.
    The DHT is off on both sides: its join right after a peer connects (lookups, a provider record) would
    put data in flight when the link goes down, which is TCP_USER_TIMEOUT's case, not keepalive's."""
    require_netns()
    async with contextlib.AsyncExitStack() as stack:
        net = await stack.enter_async_context(TestNet(3))
        node_host, gone_host, other_host = net.hosts
        args = (*DEAD_LINK_ARGS, "--stats-interval", "0.5", "--no-dht")
        node = await MarkedNode.serve_marked(stack, delay=0.0, net=net, host=node_host, args=args)
        idle_fds = open_fds(node.pid)
        gone_loop, other_loop = net.loop(gone_host), net.loop(other_host)

        async def connect() -> MimirClient:
            # No keepalive pings from the client either: nothing at all travels once it knows the node.
            client = MimirClient(peers=[node.addr], config=HostConfig(keepalive_interval=None), dht=False)
            await client.start()
            return client

        gone = await gone_loop.run(connect(), timeout=EVENT_TIMEOUT)
        stack.push_async_callback(gone_loop.run, gone.stop(), EVENT_TIMEOUT)
        assert await gone_loop.run(_known(gone), timeout=EVENT_TIMEOUT)
        assert open_fds(node.pid) == idle_fds + 1  # the client's connection, now idle
        loop = asyncio.get_running_loop()
        down_at = loop.time()
        _link_down(gone_host)

        dead = await node.wait_line(lambda line: DEAD_LINK in line, DEAD_LINK_NOTICED)
        noticed = loop.time() - down_at
        assert noticed < DEAD_LINK_NOTICED, noticed
        assert "<Connection in " in node.lines[dead], node.lines[dead]  # the inbound one
        assert "Connection timed out" in node.lines[dead], node.lines[dead]  # ETIMEDOUT
        await until(
            lambda: open_fds(node.pid) == idle_fds,
            EVENT_TIMEOUT,
            "the node's descriptors released",
            interval=0.02,
        )
        await node.wait_line(lambda line: "host.closed.dead_link=1" in line, EVENT_TIMEOUT, start=dead)

        # Another peer is served as before.
        other = await other_loop.run(connect(), timeout=EVENT_TIMEOUT)
        stack.push_async_callback(other_loop.run, other.stop(), EVENT_TIMEOUT)
        question = [{"role": "user", "content": "still serving"}]
        chunks = await other_loop.run(_collect(other.chat(question)), timeout=EVENT_TIMEOUT)
        assert text_of(chunks) == "still serving"
        assert node.count(DEAD_LINK) == 1


def _raised(items: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    return [item for item in items if item[0] == "raised"]


async def _now() -> float:
    return asyncio.get_running_loop().time()


async def _known(client: MimirClient) -> bool:
    return bool(client.nodes)


async def _forgotten(client: MimirClient, timeout: float) -> bool:
    """Inside the client's loop: no stream open on any connection at once; no node left within timeout."""
    assert all(conn.stream_count == 0 for conn in client.host.connections.values())
    await until(
        lambda: not client.nodes and not client.host.connections, timeout, "the client forgetting its node"
    )
    return True


# ---- the client's read timeout (regression: it raised a bare TimeoutError) -----------------------


class WatchedEcho(EchoBackend):
    """The echo model, telling when an answer's generator ended and whether it finished."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay=delay)
        self.ended = asyncio.Event()
        self.finished: bool | None = None

    async def stream_chat(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> Any:
        self.finished = False
        try:
            async for chunk in super().stream_chat(model, messages, params):
                yield chunk
            self.finished = True
        finally:
            self.ended.set()


@pytest.fixture
async def slow_echo_node() -> AsyncIterator[tuple[Host, WatchedEcho]]:
    backend = WatchedEcho(delay=30.0)
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, backend):
        yield host, backend


@live
async def test_read_timeout_mid_answer_is_a_chat_error_and_cancels_the_backend_request(
    slow_echo_node: tuple[Host, WatchedEcho],
) -> None:
    host, backend = slow_echo_node
    async with MimirClient(peers=host.listen_addrs, read_timeout=0.3) as client:
        chunks: list[Any] = []
        with pytest.raises(AnswerTimeoutError, match=r"sent nothing for 0\.3 s") as info:
            async for chunk in client.chat([{"role": "user", "content": "one two"}]):
                chunks.append(chunk)
        assert [c.choices[0].delta.role for c in chunks] == ["assistant"]  # then 30 s of nothing
        assert isinstance(info.value, ChatError) and isinstance(info.value, asyncio.TimeoutError)
        await asyncio.wait_for(backend.ended.wait(), EVENT_TIMEOUT)
        assert backend.finished is False
        assert all(c.stream_count == 0 for c in client.host.connections.values())


@live
async def test_read_timeout_before_the_first_chunk_cancels_the_backend_request(
    openai_server: OpenAIServer,
) -> None:
    openai_server.first_chunk_delay = 30.0
    async with (
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host,
        MimirNode(host, OpenAIBackend(openai_server.base_url)),
        MimirClient(peers=host.listen_addrs, read_timeout=0.3) as client,
    ):
        with pytest.raises(AnswerTimeoutError):
            await _collect(client.chat([{"role": "user", "content": "hello"}]))
        await asyncio.wait_for(openai_server.stream_cancelled.wait(), EVENT_TIMEOUT)
        assert openai_server.streams_completed == 0


# ---- backend faults: what tests/mimir/test_mimir.py does not check --------------------------------------


HELLO = [{"role": "user", "content": "hello big wide world"}]


@live
async def test_hanging_backend_request_is_closed_and_others_are_served(openai_server: OpenAIServer) -> None:
    async with (
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host,
        MimirNode(host, OpenAIBackend(openai_server.base_url, timeout=5.0)),
        MimirClient(peers=host.listen_addrs) as client,
    ):
        openai_server.hang = True
        hung = asyncio.create_task(_collect(client.chat(HELLO)))
        try:
            await openai_server.wait_until(lambda: openai_server.hanging == 1, EVENT_TIMEOUT)
            openai_server.hang = False
            chunks = await asyncio.wait_for(_collect(client.chat(HELLO)), EVENT_TIMEOUT)
            assert text_of(chunks) == "hello big wide world"
            assert openai_server.hanging == 1  # served beside the one still hanging
            with pytest.raises(RemoteError) as info:
                await asyncio.wait_for(hung, EVENT_TIMEOUT)
        finally:
            hung.cancel()
        assert info.value.type == packets.BACKEND_TIMEOUT
        await openai_server.wait_until(lambda: openai_server.hanging == 0, EVENT_TIMEOUT)  # request closed


@live
async def test_client_connection_dropped_mid_answer_cancels_the_backend_request(
    openai_server: OpenAIServer,
) -> None:
    openai_server.delay = 0.2
    async with (
        Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host,
        MimirNode(host, OpenAIBackend(openai_server.base_url)),
    ):
        async with MimirClient(peers=host.listen_addrs) as client:
            answer = client.chat(HELLO)
            first = await asyncio.wait_for(answer.__anext__(), EVENT_TIMEOUT)
            assert first.choices[0].delta.role == "assistant"
            client.host.connections[host.peer_id].close()  # the whole connection goes, mid-answer
            with pytest.raises(TruncatedAnswerError):
                await asyncio.wait_for(answer.__anext__(), EVENT_TIMEOUT)
        await asyncio.wait_for(openai_server.stream_cancelled.wait(), EVENT_TIMEOUT)
        assert openai_server.streams_completed == 0
        async with MimirClient(peers=host.listen_addrs) as client:  # the node serves on
            assert text_of(await _collect(client.chat(HELLO))) == "hello big wide world"
