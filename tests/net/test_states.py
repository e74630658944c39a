"""The explicit states of a stream (half-closes, reset) and of a connection (open, draining, closed),
seen from outside through ``Stream.state`` / ``Connection.state`` and the DEBUG transition lines."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from mimirlite.net.connection import ConnectionState
from mimirlite.net.host import Host
from mimirlite.net.stream import Stream, StreamState
from tests.helpers import TIMEOUT, logged, until

pytestmark = pytest.mark.usefixtures("no_leaks")

HOLD = "/test/hold/1.0.0"


@pytest.fixture
async def hosts() -> AsyncIterator[tuple[Host, Host, list[Stream], asyncio.Event]]:
    served: list[Stream] = []
    done = asyncio.Event()

    async def hold(stream: Stream) -> None:  # keeps its stream until told to end it
        served.append(stream)
        await done.wait()

    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as a, Host() as b:
        a.set_handler(HOLD, hold)
        yield a, b, served, done
        done.set()


async def test_half_closes_then_closed(hosts: tuple[Host, Host, list[Stream], asyncio.Event]) -> None:
    a, b, served, _ = hosts
    mine = await b.new_stream(a.listen_addrs[0], HOLD)
    await until(lambda: bool(served), TIMEOUT)
    theirs = served[0]
    assert mine.state is StreamState.OPEN and theirs.state is StreamState.OPEN
    await mine.close_write()
    assert mine.state is StreamState.WRITE_CLOSED
    await until(lambda: theirs.state is StreamState.READ_EOF, TIMEOUT)
    assert await theirs.read() == b"" and theirs.at_eof
    await theirs.write(b"still writing")  # a half-closed stream carries data the other way
    assert await mine.read_exactly(13) == b"still writing"
    await theirs.close_write()
    assert theirs.state is StreamState.CLOSED
    await until(lambda: mine.state is StreamState.CLOSED, TIMEOUT)
    await until(lambda: a.metrics.streams_current == 0 and b.metrics.streams_current == 0, TIMEOUT)


async def test_reset_either_way(hosts: tuple[Host, Host, list[Stream], asyncio.Event]) -> None:
    a, b, served, _ = hosts
    mine = await b.new_stream(a.listen_addrs[0], HOLD)
    await until(lambda: bool(served), TIMEOUT)
    await mine.close_write()
    await mine.reset()  # after a half-close too
    assert mine.state is StreamState.RESET
    await until(lambda: served[0].state is StreamState.RESET, TIMEOUT)
    await mine.close_write()  # no effect once reset
    assert mine.state is StreamState.RESET


async def test_connection_phases_are_logged(
    hosts: tuple[Host, Host, list[Stream], asyncio.Event], caplog: pytest.LogCaptureFixture
) -> None:
    a, b, served, _ = hosts
    caplog.set_level(logging.DEBUG, logger="mimirlite.net")
    mine = await b.new_stream(a.listen_addrs[0], HOLD)
    conn = mine.connection
    assert conn.state is ConnectionState.OPEN and conn.is_open
    logged(caplog, "upgrading -> open")
    await until(lambda: bool(served), TIMEOUT)
    served[0].connection.close()  # GoAway while our stream is open: we drain, then the socket ends
    await asyncio.wait_for(conn.closed, TIMEOUT)
    assert conn.state is ConnectionState.CLOSED and not conn.is_open
    logged(caplog, "open -> draining")
    logged(caplog, "draining -> closed")
    assert mine.state is StreamState.RESET
