"""StreamTransport on its own: a protocol's writes become the stream's data with the stream's
backpressure as pause_writing / resume_writing, and the stream's data, end and reset reach it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from mimirlite.errors import StreamResetError
from mimirlite.net.host import Host
from mimirlite.net.stream import Stream
from mimirlite.net.transport import StreamTransport
from tests.helpers import TIMEOUT, until

pytestmark = pytest.mark.usefixtures("no_leaks")

PIPE = "/test/pipe/1.0.0"


class Recorder(asyncio.BufferedProtocol):
    """A protocol that keeps what it is told."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.buffer = bytearray(4096)
        self.calls: list[str] = []
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received += self.buffer[:nbytes]

    def eof_received(self) -> bool:
        self.calls.append("eof")
        return False

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")
        self.lost.set_result(exc)


@pytest.fixture
async def pipe() -> AsyncIterator[tuple[StreamTransport, Stream, asyncio.Event]]:
    """Our transport over a stream whose other end (``theirs``) reads only once ``reading`` is set."""
    served: asyncio.Future[Stream] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def handler(stream: Stream) -> None:
        served.set_result(stream)
        await done.wait()

    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as a, Host() as b:
        a.set_handler(PIPE, handler)
        stream = await b.new_stream(a.listen_addrs[0], PIPE)
        theirs = await asyncio.wait_for(served, TIMEOUT)
        yield StreamTransport(stream), theirs, done
        done.set()


async def test_backpressure_pauses_and_resumes_the_protocol(
    pipe: tuple[StreamTransport, Stream, asyncio.Event],
) -> None:
    transport, theirs, _ = pipe
    protocol = Recorder()
    transport.set_write_buffer_limits(high=4096)
    transport.set_protocol(protocol)
    payload = os.urandom(1 << 20)  # four times the stream's window: the remote must read for it to pass
    for i in range(0, len(payload), 8192):
        transport.write(payload[i : i + 8192])
    assert protocol.calls == ["pause"] and transport.get_write_buffer_size() > 4096
    got = await asyncio.wait_for(theirs.read_exactly(len(payload)), TIMEOUT)
    assert got == payload
    await until(lambda: protocol.calls == ["pause", "resume"], TIMEOUT)
    assert transport.get_write_buffer_size() == 0
    await theirs.write(b"and back")
    await until(lambda: bytes(protocol.received) == b"and back", TIMEOUT)
    await theirs.close_write()  # their end: eof_received, then the transport closes and is lost
    assert await asyncio.wait_for(protocol.lost, TIMEOUT) is None
    assert protocol.calls == ["pause", "resume", "eof", "lost"] and transport.is_closing()


async def test_a_reset_is_lost_with_its_error(pipe: tuple[StreamTransport, Stream, asyncio.Event]) -> None:
    transport, theirs, _ = pipe
    protocol = Recorder()
    transport.set_protocol(protocol)
    await theirs.reset()
    assert isinstance(await asyncio.wait_for(protocol.lost, TIMEOUT), StreamResetError)
    transport.write(b"nothing")  # ignored once lost
    assert transport.get_write_buffer_size() == 0


async def test_close_sends_what_is_queued_then_ends_the_stream(
    pipe: tuple[StreamTransport, Stream, asyncio.Event],
) -> None:
    transport, theirs, _ = pipe
    protocol = Recorder()
    transport.set_protocol(protocol)
    transport.write(b"last words")
    transport.close()
    assert await asyncio.wait_for(theirs.read_all(), TIMEOUT) == b"last words"
    assert await asyncio.wait_for(protocol.lost, TIMEOUT) is None
