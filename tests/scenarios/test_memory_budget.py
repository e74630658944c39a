"""Memory bounded as a whole: the host's buffer budget (``HostConfig.max_buffered_total``, ``node
--max-buffered``).

First the pure bookkeeping (:class:`~mimirlite.net.budget.BufferBudget`), then hosts on real sockets
with a small budget (a peer that fills it loses its newest streams, another peer is served; tiny frames
are charged what they occupy), then the CLI node under 200 unfinished 4 MiB requests from 4 peers, its
resident size read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable

import pytest

from mimirlite import Host, HostConfig, Stream
from mimirlite.errors import LocalError, MimirliteError, StreamResetError
from mimirlite.mimir import MimirClient
from mimirlite.mimir.packets import CHAT_PROTOCOL
from mimirlite.net.budget import CHUNK_OVERHEAD, BufferAccount, BufferBudget
from mimirlite.wire import lp
from mimirlite.wire.multistream import MultistreamDialer
from mimirlite.wire.varint import encode_uvarint
from mimirlite.wire.yamux import YamuxConfig, YamuxSession
from tests.helpers import ECHO, echo_handler, logged, until
from tests.helpers.nodeproc import cli, make_env, node
from tests.helpers.rawpeer import FIREHOSE, attacker, echo_round_trip, firehose, settled
from tests.helpers.waiting import TIMEOUT

KIB = 1024
MIB = 1024 * KIB
LP = "/lp/1.0.0"

# --- the bookkeeping ----------------------------------------------------------------------------------


def test_budget_charges_within_the_limit_and_refuses_past_it() -> None:
    budget = BufferBudget(1000)
    a, b = budget.account(), budget.account()
    assert a.charge(600) and b.charge(400)
    assert (budget.total, a.held, b.held) == (1000, 600, 400)
    assert not a.charge(1)  # refused: nothing held
    assert (budget.total, a.held) == (1000, 600)
    a.release(100)
    assert a.charge(100)
    b.add(50)  # bytes already taken in: held past the limit
    assert budget.total == 1050 and budget.peak == 1050
    a.close()
    assert budget.total == 450 and budget.accounts == [b]
    assert not budget.fits(551) and budget.fits(550)


def test_budget_sheds_the_largest_holder_for_one_within_its_share() -> None:
    budget = BufferBudget(1000)
    shed_calls: list[int] = []

    def shed_of(acct: list[BufferAccount]) -> Callable[[int], int]:
        def shed(n: int) -> int:
            shed_calls.append(n)
            freed = min(acct[0].held, 300)  # a stream of 300 bytes at a time
            acct[0].release(freed)
            return freed

        return shed

    hog_ref: list[BufferAccount] = []
    hog = budget.account(shed_of(hog_ref))
    hog_ref.append(hog)
    small_ref: list[BufferAccount] = []
    small = budget.account(shed_of(small_ref))
    small_ref.append(small)
    assert hog.charge(900) and small.charge(100)
    newcomer = budget.account()
    assert budget.share(newcomer) == 333  # three accounts would hold bytes
    # the hog holds the most, past its share: it gives room to one that stays within its own
    assert budget.victim(newcomer, 200) is hog
    assert budget.make_room(newcomer, 200)
    assert shed_calls == [200] and hog.held == 600 and budget.fits(200)
    assert newcomer.charge(200)
    # one past its share is refused, and the largest holder is never shed for itself
    assert budget.victim(newcomer, 200) is None
    assert not budget.make_room(newcomer, 400)
    assert budget.victim(hog, 10) is None
    assert not budget.make_room(hog, 1000)
    # between two holders past the newcomer's share, the larger one gives room
    full = BufferBudget(1000)
    one, two = full.account(lambda n: 0), full.account(lambda n: 0)
    assert one.charge(400) and two.charge(600)
    assert full.victim(full.account(), 10) is two
    assert not full.make_room(full.account(), 10)  # its shed released nothing: refused


def test_budget_rejects_a_negative_limit_and_config_checks_its_field() -> None:
    with pytest.raises(LocalError):
        BufferBudget(-1)
    with pytest.raises(LocalError, match="max_buffered_total"):
        HostConfig(max_buffered_total=1024)
    assert HostConfig().max_buffered_total == 128 * MIB


# --- hosts on real sockets with a small budget -----------------------------------------------------------


class LPServer:
    """A host whose ``/lp/1.0.0`` handler reads one LP message (as the mimir node reads a request),
    with ``max_buffered_total`` set; what its handlers saw is kept."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.ended: list[BaseException | None] = []
        self.bodies: list[int] = []
        host.set_handler(LP, self.handle)
        host.set_handler(ECHO, echo_handler)
        host.set_handler(FIREHOSE, firehose)

    async def handle(self, stream: Stream) -> None:
        try:
            body = await stream.read_message(4 * MIB)
        except MimirliteError as exc:
            self.ended.append(exc)
            raise
        self.bodies.append(len(body or b""))
        self.ended.append(None)
        await stream.write(b"ok")


@contextlib.asynccontextmanager
async def lp_server(
    budget: int, write_buffer_high: int = HostConfig.write_buffer_high
) -> AsyncIterator[LPServer]:
    config = HostConfig(max_buffered_total=budget, write_buffer_high=write_buffer_high)
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"], config=config) as host:
        yield LPServer(host)


async def partial_request(peer: Host, server: Host, announced: int, sent: int) -> Stream:
    """A stream on which ``peer`` announces an LP message of ``announced`` bytes and sends ``sent``."""
    stream = await asyncio.wait_for(peer.new_stream(server.listen_addrs[0], LP), TIMEOUT)
    data = encode_uvarint(announced) + b"x" * sent
    await asyncio.wait_for(stream.write(data), TIMEOUT)
    return stream


@pytest.mark.usefixtures("no_leaks")
async def test_peer_filling_the_budget_loses_its_newest_stream_and_another_is_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "mimirlite")
    async with lp_server(1 * MIB) as server, Host() as hog:
        host, budget = server.host, server.host.budget
        held = [await partial_request(hog, host, 600 * KIB, 300 * KIB) for _ in range(3)]
        await until(lambda: budget.total >= 900 * KIB)
        assert host.metrics.refused["memory"] == 0
        # another peer's echo of 200 KiB does not fit: the hog, past its share, loses its newest stream
        await echo_round_trip(host, b"e" * (200 * KIB))
        assert host.metrics.refused["memory"] == 1
        assert logged(caplog, f"resetting stream {held[2].stream_id}", "max_buffered_total")
        await until(lambda: len(server.ended) == 1)
        assert isinstance(server.ended[0], StreamResetError)
        assert "max_buffered_total" in str(server.ended[0])
        with pytest.raises(StreamResetError):
            await asyncio.wait_for(held[2].read(), TIMEOUT)
        # the hog, holding the most, cannot take more: its new stream is the one reset
        fourth = await asyncio.wait_for(hog.new_stream(host.listen_addrs[0], LP), TIMEOUT)
        with contextlib.suppress(StreamResetError):
            await asyncio.wait_for(fourth.write(encode_uvarint(600 * KIB) + b"x" * (500 * KIB)), TIMEOUT)
        with pytest.raises(StreamResetError):
            await asyncio.wait_for(fourth.read(), TIMEOUT)
        assert host.metrics.refused["memory"] == 2
        assert budget.peak <= budget.limit
        # its older requests are intact: finished, they are read and answered
        for stream in held[:2]:
            await asyncio.wait_for(stream.write(b"x" * (300 * KIB)), TIMEOUT)
            assert await asyncio.wait_for(stream.read(), TIMEOUT) == b"ok"
        assert server.bodies == [600 * KIB, 600 * KIB]
        for stream in held[:2]:
            await stream.close()
    await settled(host)
    assert budget.total == 0 and budget.accounts == []


@pytest.mark.usefixtures("no_leaks")
async def test_tiny_frames_are_charged_what_they_occupy(caplog: pytest.LogCaptureFixture) -> None:
    """20,000 one-byte frames are 20 KB of payload (the yamux window's count) but about 1.3 MB of
    buffers: a budget of 1 MiB resets the stream."""
    caplog.set_level(logging.INFO, "mimirlite")
    async with lp_server(1 * MIB) as server, Host() as peer:
        host = server.host
        stream = await asyncio.wait_for(peer.new_stream(host.listen_addrs[0], LP), TIMEOUT)
        await stream.write(encode_uvarint(30_000))  # a message the handler waits for
        with contextlib.suppress(StreamResetError):
            for _ in range(20_000):
                await stream.write(b"x")
        await until(lambda: host.metrics.refused["memory"] == 1, TIMEOUT)
        assert host.budget.peak <= 1 * MIB
        assert 1 * MIB - host.budget.peak < CHUNK_OVERHEAD + 1  # it filled up to the byte
        logged(caplog, "its data would pass the host's buffer budget")
        await echo_round_trip(host)
    await settled(host)


@pytest.mark.usefixtures("no_leaks")
async def test_peer_that_does_not_read_is_charged_and_closed_when_another_needs_room(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What waits for a peer that reads nothing from its socket is charged from the moment writing
    pauses; holding the most, and nothing it sent, that peer's connection is closed to make room."""
    caplog.set_level(logging.INFO, "mimirlite")
    async with lp_server(768 * KIB, write_buffer_high=512 * KIB) as server, Host() as other:
        host = server.host
        windows = YamuxConfig(initial_window=16 * MIB)
        raw, conn = await attacker(host, YamuxSession(is_client=True, config=windows))
        proposal = MultistreamDialer([FIREHOSE]).data_to_send()
        for _ in range(8):
            raw.session.send_data(raw.session.open_stream(), proposal)
        raw.flush()
        await until(lambda: conn._write_paused, TIMEOUT)
        assert conn._account.held >= 512 * KIB  # the socket's buffer at least (write_buffer_high)
        # another peer's request of 300 KiB, within its share, does not fit beside it: the reader-of-nothing
        # goes (it holds no data of its own to give up)
        held = await partial_request(other, host, 400 * KIB, 300 * KIB)
        await asyncio.wait_for(conn.closed, TIMEOUT)
        assert conn.close_kind == "write_timeout"
        logged(caplog, "peer is not reading", "max_buffered_total")
        assert host.metrics.refused["memory"] == 1
        await asyncio.wait_for(held.write(b"x" * (100 * KIB)), TIMEOUT)
        assert await asyncio.wait_for(held.read(), TIMEOUT) == b"ok"
        await held.close()
        await raw.aclose()
    await settled(host)


# --- the CLI node: 200 unfinished 4 MiB requests from 4 peers ------------------------------------------

HOSTILE_PEERS = 4
STREAMS_EACH = 50
PEAK_ABOVE_BASELINE = 300 * MIB
SETTLED_ABOVE_BASELINE = 50 * MIB
SETTLE_TIMEOUT = 70.0


def memory(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (its peak) of process ``pid``, in bytes."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * KIB
    return found


async def chat_once(addr: str) -> str:
    async with MimirClient(peers=[addr]) as client:
        parts = [
            chunk.choices[0].delta.content or ""
            async for chunk in client.chat([{"role": "user", "content": "hello there"}])
            if chunk.choices
        ]
    return "".join(parts)


async def hostile_peer(addr: str, payload: bytes, held: asyncio.Event, leave: asyncio.Event) -> None:
    """Open ``STREAMS_EACH`` chat streams, send ``payload`` (an unfinished request) on each, hold them."""
    async with Host() as peer:

        async def one() -> None:
            with contextlib.suppress(MimirliteError, asyncio.TimeoutError):
                stream = await asyncio.wait_for(peer.new_stream(addr, CHAT_PROTOCOL), 20)
                await asyncio.wait_for(stream.write(payload), 30)  # a reset stream ends the write

        await asyncio.gather(*(one() for _ in range(STREAMS_EACH)))
        held.set()
        await leave.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")
async def test_node_memory_stays_bounded_under_unfinished_4mib_requests() -> None:
    async with node("--backend", "echo", "--stats-interval", "1", env=make_env()) as (proc, info):
        addr = info.local_addr
        assert await chat_once(addr)  # warm: imports and the first chat are part of the baseline
        baseline = memory(proc.pid)["VmRSS"]
        body = b'{"event":"message","data":{"messages":[{"role":"user","content":"' + b"a" * (4 * MIB - 100)
        payload = lp.encode_message(body)[:-16]  # 4 MiB announced, never finished
        leave = asyncio.Event()
        held = [asyncio.Event() for _ in range(HOSTILE_PEERS)]
        peers = [asyncio.ensure_future(hostile_peer(addr, payload, h, leave)) for h in held]
        try:
            # every request sent (or its stream reset), none finished: the node holds what it can
            await asyncio.wait_for(asyncio.gather(*(h.wait() for h in held)), 60)
            answer = await asyncio.wait_for(chat_once(addr), 30)  # an honest peer is served meanwhile
            assert answer, proc.output
            peak = memory(proc.pid)["VmHWM"]
            assert peak <= baseline + PEAK_ABOVE_BASELINE, (peak // MIB, baseline // MIB)
            await proc.wait_line(lambda line: "max_buffered_total" in line, 10, err=True)
            stats = await proc.wait_line(lambda line: "host.refused.memory=" in line, 10, err=True)
            refused = re.search(r"host\.refused\.memory=(\d+)", proc.err[stats])
            assert refused is not None and int(refused.group(1)) >= 1
        finally:
            leave.set()
            await asyncio.gather(*peers, return_exceptions=True)
        await until(lambda: memory(proc.pid)["VmRSS"] <= baseline + SETTLED_ABOVE_BASELINE, SETTLE_TIMEOUT)
        assert memory(proc.pid)["VmHWM"] <= baseline + PEAK_ABOVE_BASELINE
        assert await chat_once(addr)


async def test_node_max_buffered_flag_sets_the_budget() -> None:
    env = make_env()
    async with node("--backend", "echo", "--max-buffered", "1M", env=env) as (proc, info), Host() as peer:
        stream = await asyncio.wait_for(peer.new_stream(info.local_addr, CHAT_PROTOCOL), TIMEOUT)
        with contextlib.suppress(StreamResetError):
            await asyncio.wait_for(stream.write(encode_uvarint(4 * MIB) + b"x" * (2 * MIB)), TIMEOUT)
        with pytest.raises(StreamResetError):
            await asyncio.wait_for(stream.read(), TIMEOUT)
        refusal = f"of max_buffered_total {MIB} bytes held"
        await proc.wait_line(lambda line: refusal in line, TIMEOUT, err=True)
        assert await chat_once(info.local_addr)
    bad = await cli("node", "--max-buffered", "10K", env=env)
    assert bad.rc == 2 and "--max-buffered: must be at least 256K, not 10K" in bad.err
