"""libp2p ping: the echo check, then two mimirlite hosts on real loopback sockets (both ways, the
randomness and clock given, a bad echo, a silent responder, the server's limits, a host without it)."""

from __future__ import annotations

import asyncio

import pytest

from mimirlite import Host, Stream
from mimirlite.errors import (
    LocalError,
    ProtocolError,
    ProtocolNotSupportedError,
)
from mimirlite.protocols import (
    PING_PROTOCOL,
    Ping,
    PingMismatchError,
    PingTimeoutError,
)
from mimirlite.protocols.ping import PING_SIZE, check_echo
from tests.helpers import inbound_conn


def test_check_echo() -> None:
    check_echo(b"a" * PING_SIZE, b"a" * PING_SIZE)
    with pytest.raises(PingMismatchError, match="does not match"):
        check_echo(b"a" * PING_SIZE, b"b" * PING_SIZE)


async def test_ping_both_ways(a: Host, b: Host) -> None:
    pa, pb = Ping(a), Ping(b)
    conn = await a.dial(b.listen_addrs[0])
    rtt = await pa.ping(conn)
    assert 0 < rtt < 5
    await inbound_conn(b, a.peer_id)
    rtts = await pb.ping_many(a.peer_id, 5)
    assert len(rtts) == 5 and all(0 < r < 5 for r in rtts)
    assert len(a.connections) == len(b.connections) == 1
    # concurrent pings to one peer take turns on one stream at a time
    results = await asyncio.gather(*(pa.ping(b.peer_id) for _ in range(5)))
    assert all(r > 0 for r in results)


async def test_ping_uses_the_given_randomness_and_clock(a: Host, b: Host) -> None:
    Ping(b)
    ticks = iter([10.0, 10.25])
    pa = Ping(a, random_bytes=lambda n: b"\x07" * n, clock=lambda: next(ticks))
    assert await pa.ping(b.listen_addrs[0]) == 0.25


async def test_ping_detects_a_bad_echo(a: Host, b: Host) -> None:
    async def flipped(stream: Stream) -> None:
        while data := await stream.read_exactly(PING_SIZE):
            await stream.write(bytes(x ^ 0xFF for x in data))

    b.set_handler(PING_PROTOCOL, flipped)
    pa = Ping(a)
    conn = await a.dial(b.listen_addrs[0])
    with pytest.raises(PingMismatchError, match="does not match") as info:
        await pa.ping(conn)
    assert isinstance(info.value, ProtocolError)
    assert conn.is_open


async def test_ping_times_out(a: Host, b: Host) -> None:
    async def silent(stream: Stream) -> None:
        await stream.read_all()

    b.set_handler(PING_PROTOCOL, silent)
    pa = Ping(a)
    with pytest.raises(PingTimeoutError, match=r"timed out after 0\.2 s"):
        await pa.ping(b.listen_addrs[0], timeout=0.2)
    with pytest.raises(LocalError):
        await pa.ping_many(b.peer_id, 0)


async def test_ping_server_limits_streams_and_checks_payloads(a: Host, b: Host) -> None:
    Ping(b)
    conn = await a.dial(b.listen_addrs[0])
    s1, s2, s3 = [await a.open_on(conn, PING_PROTOCOL) for _ in range(3)]
    # two streams are served, the third is reset
    await asyncio.wait_for(s3.wait_reset(), 5)
    for s in (s1, s2):
        await s.write(b"x" * PING_SIZE)
        assert await s.read_exactly(PING_SIZE) == b"x" * PING_SIZE
    # a stream that ends mid-payload is a protocol error: the server resets it
    await s1.write(b"short")
    await s1.close_write()
    await asyncio.wait_for(s1.wait_reset(), 5)
    await s2.close_write()
    assert await s2.read() == b""
    await s2.close()


async def test_ping_against_a_host_without_it(a: Host, b: Host) -> None:
    pa = Ping(a)
    with pytest.raises(ProtocolNotSupportedError):
        await pa.ping(b.listen_addrs[0])
    assert a.connections[b.peer_id].is_open
    pa.close()
    assert PING_PROTOCOL not in a.protocols
