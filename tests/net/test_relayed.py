"""A libp2p connection (Noise + yamux) upgraded inside a yamux stream of another connection, as circuit
relay v2 will run one: :class:`~mimirlite.net.transport.StreamTransport` and ``Host.upgrade_over``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from mimirlite.errors import ConnectionClosedError, HandshakeError, PeerIdMismatchError, StreamResetError
from mimirlite.identity import KeyPair
from mimirlite.net.connection import Connection, ConnectionState
from mimirlite.net.host import Host
from mimirlite.net.stream import Stream
from mimirlite.net.transport import StreamTransport
from mimirlite.protocols.ping import Ping
from tests.helpers import until

pytestmark = pytest.mark.usefixtures("no_leaks")

TUNNEL = "/test/tunnel/1.0.0"
ECHO = "/test/echo/1.0.0"
BIG = 3 * 256 * 1024 + 12345  # more than a yamux window (256 KiB), inner and outer
TIMEOUT = 10.0


@dataclass
class Pair:
    a: Host  # listens; answers the tunnel
    b: Host  # dials; opens the tunnel
    outer: Stream  # b's end of the tunnel stream, on the TCP connection
    b_transport: StreamTransport
    inner_b: Connection  # b's connection inside the tunnel
    inner_a: Connection  # a's


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as a, Host() as b:
        Ping(a)
        loop = asyncio.get_running_loop()
        inner_a: asyncio.Future[Connection] = loop.create_future()
        release = asyncio.Event()

        async def tunnel(stream: Stream) -> None:
            conn = await a.upgrade_over(StreamTransport(stream), initiator=False)
            inner_a.set_result(conn)
            await conn.closed

        async def echo(stream: Stream) -> None:
            await release.wait()  # the client's writes wait meanwhile: backpressure through both layers
            data = await stream.read_all()
            await stream.write(data[::-1])

        a.set_handler(TUNNEL, tunnel)
        a.set_handler(ECHO, echo)
        b.set_handler(ECHO, echo)
        release.set()
        outer = await b.new_stream(a.listen_addrs[0], TUNNEL)
        transport = StreamTransport(outer)
        inner_b = await b.upgrade_over(transport, initiator=True, expected_peer=a.peer_id)
        yield Pair(a, b, outer, transport, inner_b, await asyncio.wait_for(inner_a, TIMEOUT))


def _streams(*hosts: Host) -> list[int]:
    return [h.metrics.streams_current for h in hosts]


async def test_both_ends_upgrade_inside_the_stream(pair: Pair) -> None:
    a, b = pair.a, pair.b
    assert pair.inner_b.remote_peer == a.peer_id and pair.inner_a.remote_peer == b.peer_id
    assert pair.inner_b.state is ConnectionState.OPEN and pair.inner_a.state is ConnectionState.OPEN
    tcp = a.connections[b.peer_id]
    assert tcp is not pair.inner_a and tcp.remote_address is not None
    assert pair.inner_a.remote_address is None  # no socket of its own
    assert a.metrics.connections_current == 2 and b.metrics.connections_current == 2


async def test_streams_both_ways_beyond_a_window_and_ping(pair: Pair) -> None:
    payload = os.urandom(BIG)
    for opener, conn in ((pair.b, pair.inner_b), (pair.a, pair.inner_a)):
        stream = await opener.open_on(conn, ECHO)
        assert stream.connection is conn
        await asyncio.wait_for(stream.write(payload), TIMEOUT)
        await stream.close_write()
        assert await asyncio.wait_for(stream.read_all(), TIMEOUT) == payload[::-1]
        await stream.close()
    assert await pair.inner_b.ping() > 0
    assert await Ping(pair.b, serve=False).ping(pair.inner_b) > 0


async def test_a_writer_waits_while_the_remote_does_not_read(pair: Pair) -> None:
    release = asyncio.Event()

    async def slow(stream: Stream) -> None:
        await release.wait()
        await stream.write(await stream.read_all())

    pair.a.set_handler("/test/slow", slow)
    stream = await pair.b.open_on(pair.inner_b, "/test/slow")
    payload = os.urandom(BIG)
    writing = asyncio.create_task(stream.write(payload))
    await until(lambda: stream.stalled_since is not None, TIMEOUT)  # the inner window is spent
    assert not writing.done()
    release.set()
    await asyncio.wait_for(writing, TIMEOUT)
    await stream.close_write()
    assert await asyncio.wait_for(stream.read_all(), TIMEOUT) == payload
    await stream.close()


async def test_closing_the_inner_connection_ends_the_tunnel_stream(pair: Pair) -> None:
    pair.inner_b.close()
    await asyncio.wait_for(pair.inner_a.closed, TIMEOUT)
    assert pair.inner_a.close_kind == "go_away"  # its GoAway came before the end of the tunnel
    await until(lambda: _streams(pair.a, pair.b) == [0, 0], TIMEOUT)
    assert pair.a.metrics.connections_current == 1 and pair.b.metrics.connections_current == 1
    assert pair.a.connections[pair.b.peer_id].is_open  # the TCP connection carries on


async def test_resetting_the_tunnel_stream_tears_the_inner_connection_down(pair: Pair) -> None:
    stream = await pair.b.open_on(pair.inner_b, ECHO)
    await pair.outer.reset()
    await asyncio.wait_for(pair.inner_b.closed, TIMEOUT)
    await asyncio.wait_for(pair.inner_a.closed, TIMEOUT)
    assert pair.inner_b.close_kind == "remote" and pair.inner_a.close_kind == "remote"
    with pytest.raises(StreamResetError):
        await stream.read()
    await until(lambda: _streams(pair.a, pair.b) == [0, 0], TIMEOUT)
    assert pair.b.connections[pair.a.peer_id].is_open


async def test_the_outer_connection_ending_ends_the_inner(pair: Pair) -> None:
    pair.b.connections[pair.a.peer_id].close()
    await asyncio.wait_for(pair.inner_b.closed, TIMEOUT)
    await asyncio.wait_for(pair.inner_a.closed, TIMEOUT)
    await until(lambda: _streams(pair.a, pair.b) == [0, 0], TIMEOUT)
    await until(lambda: [pair.a.metrics.connections_current, pair.b.metrics.connections_current] == [0, 0])


async def test_ending_the_tunnel_stream_ends_the_inner_connection(pair: Pair) -> None:
    await pair.outer.close_write()  # a reads the end of the tunnel: its inner connection is over
    await asyncio.wait_for(pair.inner_a.closed, TIMEOUT)
    await asyncio.wait_for(pair.inner_b.closed, TIMEOUT)
    assert pair.inner_a.close_kind == "remote" and pair.inner_b.close_kind == "remote"
    await until(lambda: _streams(pair.a, pair.b) == [0, 0], TIMEOUT)


async def test_aborting_the_inner_connection_resets_the_tunnel_stream(pair: Pair) -> None:
    pair.inner_b.fail(ConnectionClosedError("given up"), hard=True)  # e.g. its peer stopped reading
    assert pair.b_transport.is_closing()
    await asyncio.wait_for(pair.inner_a.closed, TIMEOUT)
    assert pair.inner_a.close_kind == "remote"
    assert isinstance(pair.inner_a.close_reason, StreamResetError)  # the tunnel was reset, not ended
    await until(lambda: _streams(pair.a, pair.b) == [0, 0], TIMEOUT)


async def test_a_failed_upgrade_closes_the_tunnel_and_leaves_nothing() -> None:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as a, Host() as b:
        outcome: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

        async def tunnel(stream: Stream) -> None:
            try:
                await a.upgrade_over(StreamTransport(stream), initiator=False)
            except HandshakeError as exc:
                outcome.set_result(exc)

        a.set_handler(TUNNEL, tunnel)
        outer = await b.new_stream(a.listen_addrs[0], TUNNEL)
        someone_else = KeyPair.generate().peer_id
        with pytest.raises(PeerIdMismatchError):
            await b.upgrade_over(StreamTransport(outer), initiator=True, expected_peer=someone_else)
        assert "closed during the upgrade" in str(await asyncio.wait_for(outcome, TIMEOUT))
        await until(lambda: _streams(a, b) == [0, 0], TIMEOUT)
        assert a.metrics.connections_current == 1 and b.metrics.connections_current == 1
        assert b.connections[a.peer_id].is_open
