"""Fair shares of a node: chat places and streams one peer (or one address) cannot hold against others.

The pure bookkeeping (:class:`~mimirlite.mimir.limits.Admission`, the host's stream shares) with literal
times, then real hosts and a real node on 127.0.0.1: a peer holding every chat place with answers it
never reads, on 4 connections, does not keep another peer's chat out; a stalled reader is ended only
while others wait; a busy peer that reads is never cut; one connection opening streams up to its limit
leaves room for everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest

from mimirlite import Connection, Host, HostConfig, KeyPair, Stream
from mimirlite.errors import LocalError, StreamResetError
from mimirlite.mimir import EchoBackend, MimirNode, NodeLimits, packets
from mimirlite.mimir.backends import make_chunk
from mimirlite.mimir.limits import FAIR_SHARE, STALLED, Admission, Refusal, Ticket
from mimirlite.net.addr import parse_multiaddr
from mimirlite.net.shares import StreamShares
from mimirlite.wire.yamux import INITIAL_WINDOW
from tests.helpers import logged, until
from tests.helpers.nodeproc import cli, make_env, node, one_line

LOCAL = "/ip4/127.0.0.1/tcp/0"
WAIT = 30.0
"""Upper bound on a wait for many streams and chats on a loaded machine; a healthy run is far below."""
live = pytest.mark.usefixtures("no_leaks")


def tickets(adm: Admission, *arrivals: tuple[str, str]) -> list[Ticket]:
    """``(peer, ip)`` arrivals at time 0, each taken (admitted or waiting)."""
    out = []
    for peer, ip in arrivals:
        t = adm.arrive(peer, 0.0, ip)
        assert isinstance(t, Ticket)
        out.append(t)
    return out


# ---------------------------------------------------------------- the bookkeeping


def test_a_freed_place_goes_to_the_least_served_peer_not_the_first_in_line() -> None:
    adm = Admission(NodeLimits(max_concurrent=2, queue=10))
    h1, h2, h3, h4, w = tickets(adm, ("h", "ip"), ("h", "ip"), ("h", "ip"), ("h", "ip"), ("w", "ip"))
    assert (h1.admitted, h2.admitted, h3.admitted, w.admitted) == (True, True, False, False)
    assert adm.leave(h1) == [w]  # w holds no place, h holds one: w goes first though h3 came earlier
    assert adm.leave(h2) == [h3]  # then h's own, in their order
    assert adm.leave(w) == [h4]
    assert (adm.running, adm.waiting, adm.holding("h")) == (2, 0, 2)


def test_a_freed_place_goes_to_the_least_served_address_first() -> None:
    adm = Admission(NodeLimits(max_concurrent=3, queue=10))
    # a1 and a3 (one address) and b (another) hold the places; a2 (a new peer at the busy address)
    # waits before c (a new peer at the other one)
    a1, _, b, a2, c = tickets(adm, ("a1", "X"), ("a3", "X"), ("b", "Y"), ("a2", "X"), ("c", "Y"))
    assert adm.leave(b) == [c]  # Y now holds nothing, X two: c first
    assert adm.leave(a1) == [a2]


def test_nothing_is_ended_while_nobody_waits() -> None:
    adm = Admission(NodeLimits(max_concurrent=2, queue=10, stall_timeout=30.0))
    a, b = tickets(adm, ("h", "ip"), ("h", "ip"))
    review = adm.review(1000.0, {a: 0.0, b: 0.0})  # stalled for 1000 s, but nobody waits
    assert (review.ended, review.admitted, review.next_review) == ([], [], None)
    assert a.ended is None and adm.running == 2


def test_a_peer_over_its_share_loses_its_stalled_chats_to_a_waiting_peer() -> None:
    adm = Admission(NodeLimits(max_concurrent=4, queue=10, stall_grace=2.0))
    held = tickets(adm, *[("h", "ip")] * 4)
    [w] = tickets(adm, ("w", "ip2"))
    stalled = {t: 5.0 + i for i, t in enumerate(held)}  # h's readers stopped at 5, 6, 7 and 8
    # at 6.5 no reader has been stalled for the grace: nothing ended, look again when the first is due
    early = adm.review(6.5, stalled)
    assert (early.ended, early.next_review) == ([], 7.0)
    # at 7.5 the first has: it is ended (one is enough for the one waiting) and w gets its place
    review = adm.review(7.5, stalled)
    [end] = review.ended
    assert end.ticket is held[0] and held[0].ended is end and held[0].done
    assert (end.reason, end.type) == (FAIR_SHARE, packets.OVERLOADED)
    assert end.message == (
        "ended to serve others: your reader took nothing for 2.5 s "
        "(this peer held more than its share of 4 places while others waited)"
    )
    assert review.admitted == [w] and w.admitted
    assert review.next_review is None  # nobody waits any more
    assert (adm.running, adm.holding("h"), adm.holding("w")) == (4, 3, 1)
    adm.leave(held[0])  # the chat's handler leaves too, later: nothing changes
    assert (adm.running, adm.in_progress("h")) == (4, 3)


def test_only_as_many_are_ended_as_wait_and_never_below_the_share() -> None:
    adm = Admission(NodeLimits(max_concurrent=4, queue=10, stall_grace=1.0, stall_timeout=None))
    held = tickets(adm, *[("h", "ip")] * 4)
    waiting = tickets(adm, ("w1", "ip2"), ("w2", "ip3"), ("w3", "ip4"), ("w4", "ip5"))
    review = adm.review(10.0, dict.fromkeys(held, 0.0))
    # 5 peers: a share is 4/5 of a place, rounded up to one; ending 3 leaves h one, its share
    assert len(review.ended) == 3 and review.admitted == waiting[:3]
    assert (adm.holding("h"), adm.waiting) == (1, 1)
    assert adm.review(20.0, {held[3]: 0.0}).ended == []  # h's last place is within its share
    assert adm.review(20.0, {}).next_review == 21.0  # while w4 waits, the running ones are looked at


def test_a_peer_waiting_for_itself_is_not_cut_short_but_the_stall_timeout_applies() -> None:
    adm = Admission(NodeLimits(max_concurrent=2, queue=10, stall_grace=1.0, stall_timeout=30.0))
    a, _, own = tickets(adm, ("gw", "ip"), ("gw", "ip"), ("gw", "ip"))  # a gateway: one peer, many users
    stalled = {a: 0.0}
    assert adm.review(10.0, stalled).ended == []  # its own request waits: no share to take back
    assert adm.review(10.0, stalled).next_review == 11.0
    review = adm.review(30.0, stalled)
    [end] = review.ended
    assert (end.ticket, end.reason, review.admitted) == (a, STALLED, [own])
    assert end.message == ("ended to serve others: your reader took nothing for 30 s (stall_timeout 30 s)")


def test_a_stalled_chat_within_its_share_is_ended_at_the_stall_timeout_only() -> None:
    adm = Admission(NodeLimits(max_concurrent=4, queue=10, stall_grace=1.0, stall_timeout=30.0))
    slow, *_ = tickets(adm, ("slow", "A"), ("r", "B"), ("r", "B"), ("r", "B"))
    [w] = tickets(adm, ("w", "C"))
    stalled = {slow: 0.0}  # slow holds one place, below its share (4/3): only the timeout ends it
    review = adm.review(29.0, stalled)
    assert (review.ended, review.next_review) == ([], 30.0)
    review = adm.review(30.0, stalled)
    assert [e.ticket for e in review.ended] == [slow] and review.admitted == [w]


def test_the_stall_timeout_can_be_turned_off_and_limits_are_checked() -> None:
    adm = Admission(NodeLimits(max_concurrent=1, queue=10, stall_timeout=None))
    a, _ = tickets(adm, ("a", "X"), ("a", "X"))
    assert adm.review(1e9, {a: 0.0}).ended == []
    assert NodeLimits().stall_timeout == 30.0 and NodeLimits().stall_grace == 2.0
    for bad in ({"stall_timeout": 0.0}, {"stall_grace": -1.0}, {"ended_linger": float("inf")}):
        with pytest.raises(LocalError, match="must be a positive number of seconds"):
            NodeLimits(**bad)  # type: ignore[arg-type]


def test_the_existing_limits_still_refuse_first() -> None:
    adm = Admission(NodeLimits(max_concurrent=1, queue=1))
    tickets(adm, ("a", "X"), ("b", "Y"))
    assert isinstance(adm.arrive("c", 0.0, "Z"), Refusal)


# ---------------------------------------------------------------- on real sockets


class LongEcho(EchoBackend):
    """Answers with the question ``repeat`` times over, one chunk each: a long answer from a short question.

    An 8 KiB question gives a 512 KiB answer, twice a yamux window: a reader that takes nothing stalls it.
    """

    repeat = 64

    async def stream_chat(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        text = str(messages[-1]["content"])
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        yield make_chunk(cid, model, {"role": "assistant", "content": ""})
        for _ in range(self.repeat):
            yield make_chunk(cid, model, {"content": text})
        yield make_chunk(cid, model, {}, "stop")


BIG = "x" * 8192
"""A question whose answer (``LongEcho``) is twice a yamux window."""
assert LongEcho.repeat * len(BIG) >= 2 * INITIAL_WINDOW


@contextlib.asynccontextmanager
async def long_echo_node(limits: NodeLimits) -> AsyncIterator[MimirNode]:
    async with Host(listen=[LOCAL]) as host, MimirNode(host, LongEcho(), limits=limits) as node:
        yield node


async def send_request(user: Host, node: MimirNode, text: str, request_id: str) -> Stream:
    """Open a chat and send its request; the answer is left for the caller to read (or not)."""
    stream = await user.new_stream(node.host.listen_addrs[0], packets.CHAT_PROTOCOL)
    request = {"event": packets.MESSAGE, "request_id": request_id, "data": {"messages": hello(text)}}
    await stream.write_json(request)
    await stream.close_write()
    return stream


def hello(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def read_answer(stream: Stream, timeout: float = WAIT) -> list[dict[str, Any]]:
    """Every packet until the end of the stream."""
    out = []
    while (obj := await asyncio.wait_for(stream.read_json(), timeout)) is not None:
        out.append(obj)
    return out


def completed(out: list[dict[str, Any]], text: str) -> bool:
    words = "".join(p["data"]["choices"][0]["delta"].get("content") or "" for p in out[:-1])
    return out[-1]["event"] == packets.COMPLETION_PACKET and words == text * LongEcho.repeat


def stop_error(out: list[dict[str, Any]]) -> dict[str, Any]:
    """The error of an answer that ends with a completionStop packet."""
    assert out and out[-1]["event"] == packets.COMPLETION_STOP, out[-1:]
    return out[-1]["data"]["error"]  # type: ignore[no-any-return]


def ended_request_ids(caplog: pytest.LogCaptureFixture, reason: str) -> list[str]:
    """The request ids the node logged as ended for ``reason`` (``ending chat 'id' (reason)``)."""
    found = logged(caplog, "ending chat", f"({reason})")
    return [line.split("ending chat '", 1)[1].split("'", 1)[0] for line in found]


@live
async def test_a_peer_holding_every_place_unread_on_4_connections_does_not_keep_another_peer_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The issue's target: with the default limits, one peer opens 256 chats (``max_concurrent``) on 4
    connections and never reads their answers; another peer's chat is answered within 5 s."""
    caplog.set_level(logging.INFO, "mimirlite.mimir")
    limits = NodeLimits()
    assert limits.max_concurrent == 256
    hostile_key = KeyPair.generate()
    async with (
        long_echo_node(limits) as node,
        contextlib.AsyncExitStack() as stack,
        Host() as honest,
    ):
        hostile = [await stack.enter_async_context(Host(hostile_key)) for _ in range(4)]
        held: dict[str, Stream] = {}
        for i in range(limits.max_concurrent):
            held[f"h{i}"] = await send_request(hostile[i % 4], node, BIG, f"h{i}")
        assert len({h.connections[node.host.peer_id] for h in hostile}) == 4
        await until(lambda: node.metrics.in_flight == 256, WAIT)
        loop = asyncio.get_running_loop()
        start = loop.time()
        stream = await send_request(honest, node, "hello", "honest")
        out = await read_answer(stream)
        took = loop.time() - start
        assert completed(out, "hello")
        assert took < 5.0, f"answered in {took:.2f} s"
        # one hostile chat (as many as waited) was ended, counted and logged; its reader, when it reads
        # at last, finds the rest of what was sent, then the overloaded error
        assert node.metrics.ended == {FAIR_SHARE: 1}
        [ended] = ended_request_ids(caplog, FAIR_SHARE)
        error = stop_error(await read_answer(held.pop(ended)))
        assert error["type"] == packets.OVERLOADED
        assert error["message"].startswith("ended to serve others: your reader took nothing for ")
        assert "this peer held more than its share of 256 places while others waited" in error["message"]
        assert node.metrics.in_flight == 255  # the others keep their places while nobody else waits
        for s in held.values():
            await s.reset()
        await until(lambda: node.metrics.in_flight == 0, WAIT)


@live
async def test_one_address_with_many_peer_ids_does_not_keep_another_address_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """4 peers at 127.0.0.1 hold every place (2 each, their share as peers) unread and queue more; a peer
    at 127.0.0.2 is let in first: its address holds nothing, theirs more than its share."""
    caplog.set_level(logging.INFO, "mimirlite.mimir")
    async with (
        long_echo_node(NodeLimits(max_concurrent=8)) as node,
        contextlib.AsyncExitStack() as stack,
        Host() as honest,
    ):
        hostile = [await stack.enter_async_context(Host()) for _ in range(4)]
        held = [await send_request(hostile[i % 4], node, BIG, f"h{i}") for i in range(8)]
        await until(lambda: node.metrics.in_flight == 8, WAIT)
        held += [await send_request(hostile[i], node, BIG, f"q{i}") for i in range(4)]
        await until(lambda: node.metrics.waiting == 4, WAIT)
        async with dial_from("127.0.0.2", honest, node.host.listen_addrs[0]) as conn:
            stream = await honest.open_on(conn, packets.CHAT_PROTOCOL)
            request = {"event": packets.MESSAGE, "data": {"messages": hello("from elsewhere")}}
            await stream.write_json(request)
            await stream.close_write()
            assert completed(await read_answer(stream), "from elsewhere")
        assert node.metrics.ended == {FAIR_SHARE: 1}
        [line] = logged(caplog, "ending chat", "(fair_share)")
        assert "this address held more than its share of 8 places while others waited" in line
        assert (node.metrics.in_flight, node.metrics.waiting) == (8, 3)  # a queued one of theirs got it
        for s in held:
            await s.reset()
        await until(lambda: node.metrics.in_flight == 0, WAIT)


@live
async def test_the_stall_timeout_ends_a_chat_only_while_others_wait(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mimirlite.mimir")
    stall = 0.2
    limits = NodeLimits(max_concurrent=1, stall_timeout=stall)
    async with long_echo_node(limits) as node, Host() as slow, Host() as other:
        stream = await send_request(slow, node, BIG, "slow")
        await until(lambda: node.metrics.in_flight == 1)
        # alone, a reader that takes nothing keeps its place however long
        await asyncio.sleep(10 * stall)
        assert node.metrics.in_flight == 1 and node.metrics.ended == {}
        # with another waiting, it is ended; the other is answered
        waiting = await send_request(other, node, "hi", "other")
        assert completed(await read_answer(waiting), "hi")
        assert node.metrics.ended == {STALLED: 1}
        assert ended_request_ids(caplog, STALLED) == ["slow"]
        error = stop_error(await read_answer(stream))
        assert error["type"] == packets.OVERLOADED
        assert error["message"].startswith("ended to serve others: your reader took nothing for ")
        assert error["message"].endswith(f"(stall_timeout {stall:g} s)")
        assert node.metrics.as_dict()["ended"] == {STALLED: 1}


@live
async def test_a_busy_peer_that_reads_is_not_cut_when_nobody_else_waits() -> None:
    """One peer (a gateway fronting many users) fills every place and queues as many again; it reads
    every answer, if not at once: none is cut, even with a stall grace far below the answers' pauses."""
    limits = NodeLimits(max_concurrent=16, stall_grace=0.01, stall_timeout=5.0)
    async with long_echo_node(limits) as node, Host() as gateway:
        streams = [await send_request(gateway, node, BIG, f"g{i}") for i in range(32)]
        await until(lambda: (node.metrics.in_flight, node.metrics.waiting) == (16, 16), WAIT)
        await asyncio.sleep(0.2)  # every running answer stalls on its window for 20 graces
        answers = await asyncio.gather(*(read_answer(s) for s in streams))
        assert all(completed(out, BIG) for out in answers)
        assert node.metrics.ended == {} and node.metrics.served == 32


async def test_stall_timeout_from_the_command_line() -> None:
    """``node --stall-timeout``: a chat whose reader takes nothing is ended when another waits."""
    env = make_env()
    res = await cli("node", "--backend", "echo", "--stall-timeout", "-1", env=env)
    assert res.rc == 2 and "--stall-timeout: must be a number of seconds (0: never), not -1" in res.err
    async with (
        node("--backend", "echo", "--max-concurrent", "1", "--stall-timeout", "0.5", env=env) as (_, info),
        Host() as slow,
    ):
        # the echo model answers word by word: 60,000 words are far more than a window
        stream = await slow.new_stream(info.local_addr, packets.CHAT_PROTOCOL)
        await stream.write_json({"event": packets.MESSAGE, "data": {"messages": hello("word " * 60_000)}})
        res = await cli("chat", "--peer", info.local_addr, "-p", "hello there", env=env)
        assert res.rc == 0 and one_line(res.out) == "hello there", res
        error = stop_error(await read_answer(stream))
        assert error["type"] == packets.OVERLOADED and error["message"].endswith("(stall_timeout 0.5 s)")


# ---------------------------------------------------------------- streams


def test_stream_shares_per_connection_peer_and_address() -> None:
    cfg = HostConfig(max_inbound_streams_per_connection=2, max_streams_per_peer=3, max_streams_per_ip=4)
    shares = StreamShares(cfg)
    assert shares.refusal(0, "p", "X") is None
    assert shares.refusal(2, "p", "X") == (
        "streams_per_connection",
        "2 inbound streams on this connection (max_inbound_streams_per_connection)",
    )
    for _ in range(3):
        shares.add("p", "X")
    assert shares.refusal(0, "p", "X") == (
        "streams_per_peer",
        "3 inbound streams from this peer (max_streams_per_peer)",
    )
    assert shares.refusal(0, "q", "X") is None  # another peer at the same address
    shares.add("q", "X")
    assert shares.refusal(0, "q", "X") == ("streams_per_ip", "4 inbound streams from X (max_streams_per_ip)")
    assert shares.refusal(0, "r", "Y") is None and shares.refusal(0, "r", None) is None  # other addresses
    shares.remove("p", "X", 3)
    assert (shares.of_peer("p"), shares.of_ip("X")) == (0, 1)
    assert shares.refusal(0, "q", "X") is None


def test_stream_share_defaults_sit_well_below_the_host_wide_limit() -> None:
    cfg = HostConfig()
    assert cfg.max_streams_total == 4096
    assert (cfg.max_inbound_streams_per_connection, cfg.max_streams_per_peer, cfg.max_streams_per_ip) == (
        512,
        1024,
        2048,
    )
    for name in ("max_inbound_streams_per_connection", "max_streams_per_peer", "max_streams_per_ip"):
        with pytest.raises(LocalError, match=f"{name} must be >= 0"):
            HostConfig(**{name: -1})  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def dial_from(source: str, user: Host, target: str) -> AsyncIterator[Connection]:
    """A connection of ``user``'s identity to ``target`` from the source address ``source``
    (a Host dials from the address the kernel picks: 127.0.0.1 on loopback)."""
    addr = parse_multiaddr(target)
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: Connection(
            user.keypair, user.config, initiator=True, on_stream=lambda s: None, on_close=lambda c: None
        ),
        addr.host,
        addr.port,
        local_addr=(source, 0),
    )
    try:
        await asyncio.wait_for(conn.upgrade(), WAIT)
        yield conn
    finally:
        conn.close()


async def refused_stream(user: Host, node: MimirNode) -> None:
    with pytest.raises(StreamResetError):
        await user.new_stream(node.host.listen_addrs[0], packets.CHAT_PROTOCOL)


@live
async def test_streams_held_by_one_connection_peer_or_address_leave_room_for_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Lowered limits in the default proportions: a connection, then a peer (two connections), then an
    address (two peers) open streams up to their share; each next one is reset, counted and logged,
    and a peer from another address still opens streams and chats."""
    caplog.set_level(logging.INFO, "mimirlite")
    cfg = HostConfig(
        max_streams_total=32,
        max_inbound_streams_per_connection=4,
        max_streams_per_peer=6,
        max_streams_per_ip=8,
    )
    key = KeyPair.generate()
    async with (
        Host(listen=[LOCAL], config=cfg) as host,
        MimirNode(host, LongEcho(), request_timeout=60.0) as node,
        Host(key) as first,
        Host(key) as second,
        Host() as neighbour,
        Host() as honest,
    ):
        addr = host.listen_addrs[0]
        held = [await first.new_stream(addr, packets.CHAT_PROTOCOL) for _ in range(4)]
        await refused_stream(first, node)
        assert host.metrics.refused == {"streams_per_connection": 1}
        logged(
            caplog,
            "refusing stream",
            "4 inbound streams on this connection (max_inbound_streams_per_connection)",
        )
        held += [await second.new_stream(addr, packets.CHAT_PROTOCOL) for _ in range(2)]
        await refused_stream(second, node)
        assert host.metrics.refused["streams_per_peer"] == 1
        logged(caplog, "refusing stream", "6 inbound streams from this peer (max_streams_per_peer)")
        held += [await neighbour.new_stream(addr, packets.CHAT_PROTOCOL) for _ in range(2)]
        await refused_stream(neighbour, node)
        assert host.metrics.refused["streams_per_ip"] == 1
        logged(caplog, "refusing stream", "8 inbound streams from 127.0.0.1 (max_streams_per_ip)")
        # a peer at another address opens streams and chats
        async with dial_from("127.0.0.2", honest, addr) as conn:
            assert host.metrics.streams_current == 8
            for i in range(3):
                stream = await honest.open_on(conn, packets.CHAT_PROTOCOL)
                request = {"event": packets.MESSAGE, "data": {"messages": hello(f"hi{i}")}}
                await stream.write_json(request)
                await stream.close_write()
                assert completed(await read_answer(stream), f"hi{i}")
        # the held streams carry on, and once they end their places are free again
        stream = held[0]
        await stream.write_json({"event": packets.MESSAGE, "data": {"messages": hello("still here")}})
        await stream.close_write()
        assert completed(await read_answer(stream), "still here")
        for s in held[1:]:
            await s.reset()
        await until(lambda: host.metrics.streams_current == 0)
        stream = await send_request(first, node, "again", "again")
        assert completed(await read_answer(stream), "again")
        assert host.metrics.refused == {
            "streams_per_connection": 1,
            "streams_per_peer": 1,
            "streams_per_ip": 1,
        }
