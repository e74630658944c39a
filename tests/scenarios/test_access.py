"""Access control on a node: the allowlist, the request limits and their refusals, and ``mimirlite id``.

Real hosts, nodes and clients on 127.0.0.1 (mDNS off); the command line runs as subprocesses with
``--no-mdns``. Requests are held open by a backend that waits for a test's go, so every limit is
reached on purpose, never by timing; the per-peer rate runs on an injected clock. Every wait is
bounded, and everything a test starts is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import stat
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from mimirlite import Connection, Host, HostConfig, KeyPair, PeerId
from mimirlite.cli import _parser
from mimirlite.errors import (
    ConnectionClosedError,
    HandshakeError,
    LocalError,
    RefusedByPeerError,
    StreamResetError,
)
from mimirlite.mimir import EchoBackend, MimirClient, MimirNode, NodeLimits, NoNodeError, RemoteError, packets
from mimirlite.mimir.limits import MIN_BUCKET_SWEEP, Admission, RateLimiter, Refusal, Ticket
from mimirlite.net.config import allowlist, load_allowlist, parse_allowlist
from mimirlite.wire import yamux
from mimirlite.wire.multistream import MultistreamDialer
from tests.helpers.nodeproc import PEER_ID, Result, cli, make_env, node, one_line, run, started
from tests.helpers.openai_server import OpenAIServer
from tests.helpers.rawpeer import RawPeer
from tests.helpers.waiting import until

LOCAL = "/ip4/127.0.0.1/tcp/0"
WAIT = 5.0
"""Seconds any condition a test waits for has to come true."""

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


# ---------------------------------------------------------------- helpers


class HeldEcho(EchoBackend):
    """The echo model, holding every answer until ``release`` is set; records the order it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.asked: list[str] = []

    async def stream_chat(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        self.asked.append(messages[-1]["content"])
        await self.release.wait()
        async for chunk in super().stream_chat(model, messages, params):
            yield chunk


def hello(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def ask(user: Host, node: MimirNode, text: str) -> list[dict[str, Any]]:
    """One chat request on the wire, as a peer sends it; every packet of the answer."""
    stream = await user.new_stream(node.host.listen_addrs[0], packets.CHAT_PROTOCOL)
    async with stream:
        await stream.write_json(
            {"event": packets.MESSAGE, "request_id": text, "data": {"messages": hello(text)}}
        )
        await stream.close_write()
        out = []
        while (obj := await asyncio.wait_for(stream.read_json(), WAIT)) is not None:
            out.append(obj)
        return out


def answer_text(out: list[dict[str, Any]]) -> str:
    assert out and out[-1]["event"] == packets.COMPLETION_PACKET, out
    return "".join(p["data"]["choices"][0]["delta"].get("content") or "" for p in out)


def refusal(out: list[dict[str, Any]]) -> tuple[str, str]:
    """The (type, message) of an answer that is one completionStop error."""
    [packet] = out
    assert packet["event"] == packets.COMPLETION_STOP, out
    error = packet["data"]["error"]
    return error["type"], error["message"]


async def chat_text(client: MimirClient, text: str) -> str:
    return "".join([c.choices[0].delta.content or "" async for c in client.chat(hello(text), model="echo")])


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    async with contextlib.AsyncExitStack() as s:
        yield s


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """Start tasks that the test ends (any left are cancelled and awaited before the nodes stop)."""
    tasks: list[asyncio.Task[Any]] = []

    def start(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def start_node(
    stack: contextlib.AsyncExitStack,
    backend: EchoBackend | None = None,
    *,
    limits: NodeLimits | None = None,
    clock: Callable[[], float] | None = None,
    config: HostConfig | None = None,
) -> MimirNode:
    host = await stack.enter_async_context(Host(listen=[LOCAL], config=config))
    kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return await stack.enter_async_context(MimirNode(host, backend or EchoBackend(), limits=limits, **kwargs))


async def start_user(stack: contextlib.AsyncExitStack, keypair: KeyPair | None = None) -> Host:
    return await stack.enter_async_context(Host(keypair))


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- allowlist: parsing


def test_allow_file_parsing(tmp_path: Path) -> None:
    a, b, c = (KeyPair.generate().peer_id for _ in range(3))
    text = f"# operators we trust\n\n{a}\n   {b}   # bob, trailing comment\r\n\t\n{a}\n# {c} left out\n"
    assert parse_allowlist(text) == {a, b}
    assert parse_allowlist("") == frozenset()
    assert parse_allowlist(f"{a.to_cid_string()}\n") == {a}  # the CID form of a peer ID is one too

    path = tmp_path / "allow.txt"
    path.write_text(text)
    assert load_allowlist(path) == {a, b}
    assert allowlist([str(c)], [path]) == {a, b, c}

    for bad, line, says in [
        (f"{a}\n\nnot-a-peer-id\n", 3, "not a peer ID: 'not-a-peer-id'"),
        (f"# one\n{a} {b}\n", 2, "one peer ID a line"),
        (f"{str(a)[:-3]}\n", 1, "not a peer ID"),
        ("/ip4/127.0.0.1/tcp/4001\n", 1, "not a peer ID"),
    ]:
        with pytest.raises(LocalError) as info:
            parse_allowlist(bad, "allow.txt")
        assert str(info.value).startswith(f"allow.txt, line {line}: "), info.value
        assert says in str(info.value)
        path.write_text(bad)
        with pytest.raises(LocalError, match=rf"^{path}, line {line}: "):
            load_allowlist(path)

    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(LocalError, match="not a text file"):
        load_allowlist(path)
    with pytest.raises(FileNotFoundError):
        load_allowlist(tmp_path / "missing.txt")
    with pytest.raises(LocalError, match="not a peer ID: 'nope'"):
        allowlist(["nope"])

    assert HostConfig(allow_peers={a}).allow_peers == frozenset({a})  # type: ignore[arg-type]
    with pytest.raises(LocalError, match="PeerId objects"):
        HostConfig(allow_peers=frozenset({str(a)}))  # type: ignore[arg-type]


# ---------------------------------------------------------------- allowlist: on the wire


async def test_allowlist_serves_listed_peers_and_closes_others_after_the_handshake(
    stack: contextlib.AsyncExitStack, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, "mimirlite")
    allowed, other = KeyPair.generate(), KeyPair.generate()
    node = await start_node(stack, config=HostConfig(allow_peers=frozenset({allowed.peer_id})))
    served: list[PeerId] = []

    async def probe(stream: Any) -> None:
        served.append(stream.remote_peer)

    node.host.set_handler("/probe/1.0.0", probe)
    addr = node.host.listen_addrs[0]
    assert node.host.allows(allowed.peer_id) and not node.host.allows(other.peer_id)

    # The listed peer is served.
    async with MimirClient(peers=[addr], keypair=allowed) as client:
        assert client.nodes == {node.host.peer_id: ["echo"]}
        assert await chat_text(client, "allowed words") == "allowed words"

    # Any other peer: its dial fails once the handshake has authenticated both sides, with a clear error.
    refused = await start_user(stack, other)
    port = addr.split("/")[4]
    for target in (addr, f"/ip4/127.0.0.1/tcp/{port}"):  # with and without the node's peer ID
        with pytest.raises(RefusedByPeerError) as info:
            await refused.dial(target)
        message = str(info.value)
        assert str(node.host.peer_id) in message and str(other.peer_id) in message
        assert "right after the handshake" in message and "allowlist" in message
    assert refused.connections == {}

    # On the wire: the handshake completes (the node proves its identity), then the node closes the
    # connection without another byte, even when the peer sends its muxer proposal, a stream and a
    # protocol proposal on it right behind its last handshake message.
    raw = await RawPeer.connect(node.host)
    try:
        await raw.noise_handshake(node.host.peer_id)
        sid = raw.session.open_stream()
        raw.session.send_data(sid, MultistreamDialer(["/probe/1.0.0"]).data_to_send() + b"hello")
        raw.send_plain(MultistreamDialer([yamux.YAMUX_PROTOCOL]).data_to_send() + raw.session.data_to_send())
        assert await raw.closed_by_host() == b""
    finally:
        await raw.aclose()

    # The same, as a Connection sees it: authenticated, then closed before any stream can be opened.
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: Connection(
            other, HostConfig(), initiator=True, on_stream=lambda s: None, on_close=lambda c: None
        ),
        "127.0.0.1",
        int(port),
    )
    try:
        with pytest.raises(HandshakeError, match="closed during the upgrade"):
            await asyncio.wait_for(conn.upgrade(), WAIT)
        assert conn.remote_peer == node.host.peer_id
        with pytest.raises(ConnectionClosedError):
            conn.open_stream()
    finally:
        conn.close()

    # A client with the refused key learns nothing and says why.
    async with MimirClient(keypair=other) as client:
        with pytest.raises(RefusedByPeerError, match="allowlist"):
            await client.add_peer(addr)
        assert client.nodes == {}
        with pytest.raises(NoNodeError):
            await chat_text(client, "never")

    await until(lambda: list(node.host.connections) == [], WAIT)  # the allowed client left too
    assert served == []  # no stream of the refused peer ever reached a handler
    refusals = [r for r in caplog.records if "refusing connection" in r.getMessage()]
    assert len(refusals) == 5  # one logged reason per refused connection
    for record in refusals:
        assert record.levelno == logging.WARNING and record.name == "mimirlite.net.host"
        refused_peer = raw.keypair.peer_id if record is refusals[2] else other.peer_id
        assert f"refusing connection from {refused_peer} at 127.0.0.1:" in record.getMessage()
        assert record.getMessage().endswith("not on the allowlist")


async def test_allowlist_resets_streams_of_unlisted_peers_on_connections_the_node_dialed(
    stack: contextlib.AsyncExitStack, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, "mimirlite")
    node = await start_node(stack, config=HostConfig(allow_peers=frozenset()))
    other = await stack.enter_async_context(Host(listen=[LOCAL]))
    await node.host.dial(other.listen_addrs[0])  # the node may dial anyone; it serves no one else
    await until(lambda: node.host.peer_id in other.connections, WAIT)
    conn = other.connections[node.host.peer_id]
    with pytest.raises(StreamResetError):
        await other.open_on(conn, packets.MIMIR_IDENTIFY_PROTOCOL)
    assert "refusing a stream from a peer not on the allowlist" in caplog.text


async def test_without_an_allowlist_everyone_is_served(stack: contextlib.AsyncExitStack) -> None:
    node = await start_node(stack)
    assert node.host.config.allow_peers is None and node.host.allows(KeyPair.generate().peer_id)
    for _ in range(2):
        assert answer_text(await ask(await start_user(stack), node, "open to all")) == "open to all"


# ---------------------------------------------------------------- limits: the bookkeeping


def test_admission_runs_max_concurrent_queues_least_served_first_then_refuses() -> None:
    adm = Admission(NodeLimits(max_concurrent=2, queue=2))
    a, b, c, d = (adm.arrive(p, 0.0) for p in ("p1", "p2", "p1", "p3"))
    assert isinstance(a, Ticket) and isinstance(b, Ticket) and isinstance(c, Ticket) and isinstance(d, Ticket)
    assert (a.admitted, b.admitted, c.admitted, d.admitted) == (True, True, False, False)
    assert (adm.running, adm.waiting) == (2, 2)
    full = adm.arrive("p4", 0.0)
    assert full == Refusal(packets.OVERLOADED, "the node is busy: 2 answering, 2 waiting")
    assert adm.leave(b) == [d]  # p3 holds no place, p1 holds one: the least served goes first
    assert d.admitted and (adm.running, adm.waiting) == (2, 1)
    assert adm.leave(b) == []  # leaving twice changes nothing
    assert adm.leave(a) == [c]
    assert adm.leave(c) == [] and adm.leave(d) == []
    assert (adm.running, adm.waiting, adm.in_progress("p1")) == (0, 0, 0)


def test_admission_a_waiting_request_that_leaves_frees_its_place() -> None:
    adm = Admission(NodeLimits(max_concurrent=1, queue=1))
    first, second = adm.arrive("a", 0.0), adm.arrive("b", 0.0)
    assert isinstance(first, Ticket) and isinstance(second, Ticket) and not second.admitted
    assert isinstance(adm.arrive("c", 0.0), Refusal)
    assert adm.leave(second) == []  # its client went away while it waited
    third = adm.arrive("c", 0.0)
    assert isinstance(third, Ticket) and not third.admitted
    assert adm.leave(first) == [third]
    assert adm.in_progress("b") == 0


def test_admission_per_peer_concurrency() -> None:
    adm = Admission(NodeLimits(max_concurrent=1, queue=10, max_per_peer=2))
    running, waiting = adm.arrive("p", 0.0), adm.arrive("p", 0.0)  # waiting ones count too
    assert isinstance(running, Ticket) and isinstance(waiting, Ticket)
    assert adm.in_progress("p") == 2
    refused = adm.arrive("p", 0.0)
    assert isinstance(refused, Refusal) and refused.type == packets.RATE_LIMITED
    assert refused.message == "too many requests in progress from this peer (limit 2 at once)"
    assert isinstance(adm.arrive("q", 0.0), Ticket)  # other peers are not affected
    adm.leave(running)
    assert isinstance(adm.arrive("p", 0.0), Ticket)


def test_admission_per_peer_rate_on_the_clock_it_is_given() -> None:
    adm = Admission(NodeLimits(rate=2))  # 2 a minute: a burst of 2, then one every 30 s
    for _ in range(2):
        ticket = adm.arrive("p", 0.0)
        assert isinstance(ticket, Ticket)
        adm.leave(ticket)
    refused = adm.arrive("p", 0.0)
    assert refused == Refusal(
        packets.RATE_LIMITED, "too many requests from this peer (limit 2 a minute); retry in 30 s"
    )
    assert isinstance(adm.arrive("q", 0.0), Ticket)  # per peer
    late = adm.arrive("p", 29.5)
    assert isinstance(late, Refusal) and late.message.endswith("retry in 1 s")
    assert isinstance(adm.arrive("p", 30.0), Ticket)
    assert isinstance(adm.arrive("p", 30.0), Refusal)
    assert isinstance(adm.arrive("p", 30.0 + 60.0), Ticket)
    assert isinstance(adm.arrive("p", 30.0 + 60.0), Ticket)  # a full minute refilled the burst
    assert isinstance(adm.arrive("p", 30.0 + 60.0), Refusal)


def test_admission_refusals_cost_no_rate() -> None:
    adm = Admission(NodeLimits(max_concurrent=1, queue=0, max_per_peer=1, rate=1))
    busy = adm.arrive("other", 0.0)
    assert isinstance(busy, Ticket)
    over = adm.arrive("p", 0.0)
    assert isinstance(over, Refusal) and over.type == packets.OVERLOADED
    adm.leave(busy)
    mine = adm.arrive("p", 0.0)  # the overloaded refusal did not spend p's one request a minute
    assert isinstance(mine, Ticket)
    again = adm.arrive("p", 0.0)
    assert isinstance(again, Refusal) and "in progress" in again.message  # per-peer concurrency first


def test_rate_limiter_forgets_quiet_peers() -> None:
    limiter = RateLimiter(60)  # one a second
    for i in range(20 * MIN_BUCKET_SWEEP):
        assert limiter.take(f"peer{i}", float(i))  # each peer's bucket is full again a second later
        assert len(limiter) <= MIN_BUCKET_SWEEP
    assert limiter.retry_after("new", 0.0) == 0.0


def test_node_limits_are_checked() -> None:
    assert NodeLimits() == NodeLimits(256, 1024, None, None)
    for bad in (
        {"max_concurrent": 0},
        {"queue": -1},
        {"max_per_peer": 0},
        {"rate": 0},
        {"rate": float("inf")},
    ):
        with pytest.raises(LocalError):
            NodeLimits(**bad)


# ---------------------------------------------------------------- limits: on a node


async def test_overloaded_when_every_place_and_the_queue_are_taken(
    stack: contextlib.AsyncExitStack, spawn: Spawn
) -> None:
    backend = HeldEcho()
    node = await start_node(stack, backend, limits=NodeLimits(max_concurrent=1, queue=1))
    user = await start_user(stack)
    first = spawn(ask(user, node, "first one"))
    await until(lambda: backend.asked == ["first one"], WAIT)
    second = spawn(ask(user, node, "second one"))
    await until(lambda: node.admission.waiting == 1, WAIT)

    kind, message = refusal(await ask(await start_user(stack), node, "third one"))
    assert kind == packets.OVERLOADED == "overloaded"
    assert message == "the node is busy: 1 answering, 1 waiting"
    assert node.refused == {"overloaded": 1}
    # A busy node still answers identify, so clients can learn it and go elsewhere.
    async with MimirClient(peers=node.host.listen_addrs) as client:
        assert client.nodes == {node.host.peer_id: ["echo"]}

    backend.release.set()
    assert answer_text(await asyncio.wait_for(first, WAIT)) == "first one"
    assert answer_text(await asyncio.wait_for(second, WAIT)) == "second one"
    assert (node.admission.running, node.admission.waiting) == (0, 0)


async def test_the_queue_serves_requests_in_arrival_order(
    stack: contextlib.AsyncExitStack, spawn: Spawn
) -> None:
    backend = HeldEcho()
    node = await start_node(stack, backend, limits=NodeLimits(max_concurrent=1, queue=10))
    users = [await start_user(stack) for _ in range(3)]
    answers = [spawn(ask(users[0], node, "r0"))]
    await until(lambda: backend.asked == ["r0"], WAIT)
    for i in range(1, 8):  # from several peers, each request arriving after the one before it
        answers.append(spawn(ask(users[i % 3], node, f"r{i}")))
        await until(lambda: node.admission.waiting == len(answers) - 1, WAIT)
    backend.release.set()
    texts = [answer_text(out) for out in await asyncio.wait_for(asyncio.gather(*answers), WAIT)]
    assert texts == [f"r{i}" for i in range(8)]
    assert backend.asked == [f"r{i}" for i in range(8)]  # answered one at a time, in arrival order


async def test_a_request_whose_client_leaves_the_queue_gives_up_its_place(
    stack: contextlib.AsyncExitStack, spawn: Spawn, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, "mimirlite")
    backend = HeldEcho()
    node = await start_node(stack, backend, limits=NodeLimits(max_concurrent=1, queue=1))
    user = await start_user(stack)
    first = spawn(ask(user, node, "held"))
    await until(lambda: backend.asked == ["held"], WAIT)
    leaving = spawn(ask(user, node, "leaving"))
    await until(lambda: node.admission.waiting == 1, WAIT)
    leaving.cancel()  # resets its stream
    await until(lambda: node.admission.waiting == 0, WAIT)
    assert "client left while its request waited" in caplog.text
    later = spawn(ask(user, node, "later"))  # its place is free again: not refused
    await until(lambda: node.admission.waiting == 1, WAIT)
    backend.release.set()
    assert answer_text(await asyncio.wait_for(first, WAIT)) == "held"
    assert answer_text(await asyncio.wait_for(later, WAIT)) == "later"
    assert backend.asked == ["held", "later"]
    assert node.refused == {}


async def test_per_peer_concurrency_is_refused_as_rate_limited(
    stack: contextlib.AsyncExitStack, spawn: Spawn
) -> None:
    backend = HeldEcho()
    node = await start_node(stack, backend, limits=NodeLimits(max_per_peer=1))
    greedy, modest = await start_user(stack), await start_user(stack)
    held = spawn(ask(greedy, node, "mine"))
    await until(lambda: backend.asked == ["mine"], WAIT)
    kind, message = refusal(await ask(greedy, node, "and another"))
    assert kind == packets.RATE_LIMITED == "rate_limited"
    assert message == "too many requests in progress from this peer (limit 1 at once)"
    other = spawn(ask(modest, node, "someone else"))  # another peer is served meanwhile
    await until(lambda: len(backend.asked) == 2, WAIT)
    backend.release.set()
    assert answer_text(await asyncio.wait_for(held, WAIT)) == "mine"
    assert answer_text(await asyncio.wait_for(other, WAIT)) == "someone else"
    assert answer_text(await ask(greedy, node, "once more")) == "once more"  # its one place is free again
    assert node.refused == {"rate_limited": 1}


async def test_per_peer_rate_is_refused_as_rate_limited(stack: contextlib.AsyncExitStack) -> None:
    clock = Clock()
    node = await start_node(stack, limits=NodeLimits(rate=2), clock=clock)
    peer, other = await start_user(stack), await start_user(stack)
    assert answer_text(await ask(peer, node, "one")) == "one"
    assert answer_text(await ask(peer, node, "two")) == "two"
    assert refusal(await ask(peer, node, "three")) == (
        packets.RATE_LIMITED,
        "too many requests from this peer (limit 2 a minute); retry in 30 s",
    )
    assert answer_text(await ask(other, node, "someone else")) == "someone else"
    clock.now += 30
    assert answer_text(await ask(peer, node, "three again")) == "three again"
    assert node.refused == {"rate_limited": 1}


# ---------------------------------------------------------------- limits: the client goes elsewhere


async def test_client_fails_over_from_an_overloaded_node(
    stack: contextlib.AsyncExitStack, spawn: Spawn, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, "mimirlite.mimir.client")
    held = HeldEcho()
    busy = await start_node(stack, held, limits=NodeLimits(max_concurrent=1, queue=0))
    free = await start_node(stack)
    hold = spawn(ask(await start_user(stack), busy, "hold"))
    await until(lambda: held.asked == ["hold"], WAIT)
    client = await stack.enter_async_context(
        MimirClient(peers=busy.host.listen_addrs + free.host.listen_addrs)
    )
    client._rtt[busy.host.peer_id], client._rtt[free.host.peer_id] = 0.001, 0.002  # busy is asked first
    assert await chat_text(client, "go elsewhere") == "go elsewhere"
    assert busy.refused == {"overloaded": 1}
    assert f"node {busy.host.peer_id} failed before answering: overloaded" in caplog.text
    held.release.set()
    assert answer_text(await asyncio.wait_for(hold, WAIT)) == "hold"


async def test_client_fails_over_from_a_per_peer_limit(
    stack: contextlib.AsyncExitStack, spawn: Spawn
) -> None:
    held = HeldEcho()
    limits = NodeLimits(max_per_peer=1)
    first, second = await start_node(stack, held, limits=limits), await start_node(stack, limits=limits)
    # Two clients with one identity (say, two programs with one key file): one peer to the nodes.
    shared = await start_user(stack)
    addrs = first.host.listen_addrs + second.host.listen_addrs
    one = await stack.enter_async_context(MimirClient(peers=addrs, host=shared))
    two = await stack.enter_async_context(MimirClient(peers=addrs, host=shared))
    for client in (one, two):
        client._rtt[first.host.peer_id], client._rtt[second.host.peer_id] = 0.001, 0.002
    hold = spawn(chat_text(one, "holding my place"))
    await until(lambda: held.asked == ["holding my place"], WAIT)
    assert await chat_text(two, "served elsewhere") == "served elsewhere"
    assert first.refused == {"rate_limited": 1} and second.refused == {}
    held.release.set()
    assert await asyncio.wait_for(hold, WAIT) == "holding my place"


async def test_client_fails_over_from_a_rate_limited_node_and_reports_when_all_refuse(
    stack: contextlib.AsyncExitStack,
) -> None:
    clock = Clock()
    limits = NodeLimits(rate=1)
    nodes = [await start_node(stack, limits=limits, clock=clock) for _ in range(2)]
    client = await stack.enter_async_context(MimirClient(peers=[n.host.listen_addrs[0] for n in nodes]))
    assert await chat_text(client, "first") == "first"  # the nearest node spends its one a minute
    assert sorted(sum(n.refused.values()) for n in nodes) == [0, 0]
    assert await chat_text(client, "second") == "second"  # refused by it, answered by the other
    assert sorted(sum(n.refused.values()) for n in nodes) == [0, 1]
    with pytest.raises(RemoteError) as info:  # both refuse: the client says so
        await chat_text(client, "third")
    assert info.value.type == packets.RATE_LIMITED and "retry in 60 s" in info.value.message
    assert sorted(sum(n.refused.values()) for n in nodes) == [1, 2]
    clock.now += 60
    assert await chat_text(client, "a minute later") == "a minute later"


async def test_client_does_not_fail_over_on_a_bad_request(
    stack: contextlib.AsyncExitStack, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, "mimirlite")
    nodes = [await start_node(stack) for _ in range(2)]
    client = await stack.enter_async_context(MimirClient(peers=[n.host.listen_addrs[0] for n in nodes]))
    with pytest.raises(RemoteError) as info:
        async for _ in client.chat([{"content": "no role"}], model="echo"):
            pass
    assert info.value.type == packets.BAD_REQUEST
    assert caplog.text.count("bad request") == 1  # one node asked, not both
    assert "trying another" not in caplog.text


# ---------------------------------------------------------------- the command line


@pytest.fixture
def env() -> dict[str, str]:
    """Subprocess environment without backend variables (nodes are given their backend)."""
    return make_env()


async def peer_id_of(key: Path, env: dict[str, str]) -> str:
    res = await cli_id("--key-file", str(key), env=env)
    assert res.rc == 0 and res.err == "", res
    peer = one_line(res.out)
    assert PEER_ID.match(peer), res
    return peer


async def cli_id(*args: str, env: dict[str, str]) -> Result:
    return await run("-m", "mimirlite", "id", *args, env=env)


async def test_id_prints_the_peer_id_a_node_has_with_that_key_file(
    env: dict[str, str], tmp_path: Path
) -> None:
    key = tmp_path / "node.key"
    peer = await peer_id_of(key, env)  # creates the key file
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert await peer_id_of(key, env) == peer  # and then reads it
    assert peer == str(KeyPair.load(key).peer_id)
    async with node("--backend", "echo", "--key-file", str(key), env=env) as (_, info):
        assert info.peer_id == peer

    res = await cli_id(env=env)
    assert res.rc != 0 and res.out == ""
    assert one_line(res.err) == (
        "mimirlite: id needs --key-file PATH (without a key file a node has a new peer ID at each start)"
    )
    key.write_bytes(b"not a key")
    res = await cli_id("--key-file", str(key), env=env)
    assert res.rc != 0 and one_line(res.err).startswith(f"mimirlite: cannot use key file {key}: ")


async def test_node_allowlist_from_the_command_line(env: dict[str, str], tmp_path: Path) -> None:
    keys = {name: tmp_path / f"{name}.key" for name in ("alice", "carol", "mallory")}
    ids = {name: await peer_id_of(key, env) for name, key in keys.items()}
    allow = tmp_path / "allow.txt"
    allow.write_text(f"# who may use this node\n\n{ids['alice']}  # alice\n")
    args = ("--backend", "echo", "--allow-file", str(allow), "--allow-peer", ids["carol"])
    async with node(*args, env=env) as (proc, info):
        assert await proc.readline() == "Allowed peers: 2; any other peer is refused"
        for name in ("alice", "carol"):  # listed in the file, and with --allow-peer
            res = await cli(
                "chat", "--key-file", str(keys[name]), "--peer", info.local_addr, "-p", "hi", env=env
            )
            assert (res.rc, res.out, res.err) == (0, "hi\n", ""), res
        res = await cli("peers", "--key-file", str(keys["alice"]), "--peer", info.local_addr, env=env)
        assert res.rc == 0 and one_line(res.out).split()[:2] == [info.peer_id, "echo"], res

        for command in (("chat", "-p", "hi"), ("peers",)):
            res = await cli(*command, "--key-file", str(keys["mallory"]), "--peer", info.local_addr, env=env)
            assert res.rc != 0 and res.out == "", res
            line = one_line(res.err)
            assert line.startswith(f"mimirlite: cannot use {info.local_addr}: "), line
            assert f"it does not accept our peer ID {ids['mallory']} (not on its allowlist?)" in line
        _, err = await proc.stop()
    refused = [line for line in err.splitlines() if "refusing connection" in line]
    assert len(refused) == 2, err
    for line in refused:
        assert line.startswith(f"WARNING mimirlite.net.host: refusing connection from {ids['mallory']} at ")
        assert line.endswith("not on the allowlist")


async def test_node_with_a_bad_allow_file_fails_with_one_line(env: dict[str, str], tmp_path: Path) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text(f"{KeyPair.generate().peer_id}\n# fine so far\nsomebody\n")
    base = ("node", "--no-mdns", "--backend", "echo", "--listen", LOCAL)
    res = await cli_run(*base, "--allow-file", str(allow), env=env)
    assert res.rc != 0 and res.out == ""
    assert one_line(res.err) == f"mimirlite: {allow}, line 3: not a peer ID: 'somebody'"
    res = await cli_run(*base, "--allow-file", str(tmp_path / "missing.txt"), env=env)
    assert (
        one_line(res.err)
        == f"mimirlite: cannot read allow file {tmp_path / 'missing.txt'}: No such file or directory"
    )
    res = await cli_run(*base, "--allow-peer", "12D3KooWnope", env=env)
    assert res.rc != 0 and one_line(res.err).startswith("mimirlite: not a peer ID: '12D3KooWnope'")
    res = await cli_run(*base, "--queue", "-1", env=env)
    assert res.rc == 2 and "--queue: must not be negative, not -1" in res.err


async def cli_run(*args: str, env: dict[str, str]) -> Result:
    return await run("-m", "mimirlite", *args, env=env)


async def test_node_limits_from_the_command_line(env: dict[str, str], tmp_path: Path) -> None:
    key = tmp_path / "me.key"
    async with OpenAIServer(models=["m:1"]) as srv:
        limits = ("--max-concurrent", "1", "--queue", "0", "--max-per-peer", "1", "--rate", "2")
        async with node("--backend-url", srv.base_url, *limits, env=env) as (_, info):
            me = ("chat", "--key-file", str(key), "--peer", info.local_addr)
            # My request, held by a slow backend, takes the node's only place.
            srv.first_chunk_delay = 60.0
            slow = ("-m", "mimirlite", *me[:1], "--no-mdns", *me[1:], "-p", "slow")
            async with started(*slow, env=env):
                await srv.wait_until(lambda: len(srv.chat_requests) == 1, WAIT)
                srv.first_chunk_delay = 0.0
                res = await cli(*me, "-p", "mine again", env=env)  # --max-per-peer 1
                assert res.rc != 0 and res.out.strip() == "", res
                assert one_line(res.err) == (
                    "mimirlite: rate_limited: too many requests in progress from this peer (limit 1 at once)"
                )
                res = await cli("chat", "--peer", info.local_addr, "-p", "someone else", env=env)
                assert res.rc != 0 and res.out.strip() == "", res
                assert one_line(res.err) == "mimirlite: overloaded: the node is busy: 1 answering, 0 waiting"
            # The slow client is gone (stopped), and with it its request: the place is free again.
            await srv.wait_until(lambda: srv.streams_cancelled == 1, WAIT)
            res = await cli(*me, "-p", "now then", env=env)
            assert (res.rc, res.out) == (0, "now then\n"), res
            # --rate 2: the slow request and this one were mine for this minute; refusals cost nothing.
            res = await cli(*me, "-p", "once too often", env=env)
            assert res.rc != 0
            assert one_line(res.err).startswith(
                "mimirlite: rate_limited: too many requests from this peer (limit 2 a minute); retry in "
            )
            res = await cli("chat", "--peer", info.local_addr, "-p", "a new peer", env=env)
            assert (res.rc, res.out) == (0, "a new peer\n"), res


@pytest.mark.parametrize("command", ["node", "chat", "peers", "gateway", "id"])
def test_every_subcommand_takes_a_key_file(command: str) -> None:
    assert _parser().parse_args([command, "--key-file", "my.key"]).key_file == "my.key"
