"""Two mimirlite hosts over real TCP on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from mimirlite import Host, HostConfig, KeyPair, Stream
from mimirlite.errors import (
    AddressError,
    DialError,
    IncompleteReadError,
    MessageTooLargeError,
    PeerIdMismatchError,
    ProtocolNotSupportedError,
    StreamClosedError,
    StreamResetError,
)
from tests.helpers import ECHO, echo_handler
from tests.helpers.rawpeer import disconnected
from tests.helpers.waiting import TIMEOUT, until


async def test_echo_and_peer_ids(listener: Host, dialer: Host) -> None:
    addr = listener.listen_addrs[0]
    assert addr.endswith(f"/p2p/{listener.peer_id}")
    stream = await dialer.new_stream(addr, ECHO)
    assert stream.protocol == ECHO
    assert stream.remote_peer == listener.peer_id
    await stream.write(b"hello")
    assert await stream.read_exactly(5) == b"hello"
    await stream.close_write()
    assert await stream.read() == b""
    conn = listener.connections[dialer.peer_id]
    assert conn.remote_peer == dialer.peer_id


async def test_connection_is_reused(listener: Host, dialer: Host) -> None:
    addr = listener.listen_addrs[0]
    results = await asyncio.gather(*(dialer.dial(addr) for _ in range(5)))
    assert len({id(c) for c in results}) == 1
    s1 = await dialer.new_stream(addr, ECHO)
    s2 = await dialer.new_stream(listener.peer_id, ECHO)
    assert s1.connection is s2.connection is results[0]


async def test_16_mib_with_matching_sha256(listener: Host, dialer: Host) -> None:
    payload = os.urandom(16 * 1024 * 1024)
    stream = await dialer.new_stream(listener.listen_addrs[0], ECHO)

    async def send() -> None:
        view = memoryview(payload)
        for i in range(0, len(payload), 65536):
            await stream.write(view[i : i + 65536])
        await stream.close_write()

    sender = asyncio.create_task(send())
    received = await stream.read_all()
    await sender
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(payload).hexdigest()


async def test_100_concurrent_streams(listener: Host, dialer: Host) -> None:
    addr = listener.listen_addrs[0]

    async def one(i: int) -> bytes:
        async with await dialer.new_stream(addr, ECHO) as stream:
            data = f"stream {i} ".encode() * 100
            await stream.write(data)
            await stream.close_write()
            return await stream.read_all() == data

    assert all(await asyncio.gather(*(one(i) for i in range(100))))
    assert len(dialer.connections) == 1


async def test_half_close_keeps_the_other_direction(dialer: Host) -> None:
    got = asyncio.get_running_loop().create_future()

    async def late_writer(stream: Stream) -> None:
        got.set_result(await stream.read_all())
        await stream.write(b"after your FIN")

    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as server:
        server.set_handler("/late/1", late_writer)
        stream = await dialer.new_stream(server.listen_addrs[0], "/late/1")
        await stream.write(b"question")
        await stream.close_write()
        with pytest.raises(StreamClosedError):
            await stream.write(b"more")
        assert await stream.read_all() == b"after your FIN"
        assert await got == b"question"


async def test_reset_reaches_the_other_side(dialer: Host) -> None:
    reset_seen = asyncio.get_running_loop().create_future()

    async def handler(stream: Stream) -> None:
        try:
            while await stream.read():
                pass
        except StreamResetError:
            reset_seen.set_result(True)
            raise

    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as server:
        server.set_handler("/r/1", handler)
        stream = await dialer.new_stream(server.listen_addrs[0], "/r/1")
        await stream.write(b"x")
        await stream.reset()
        assert await asyncio.wait_for(reset_seen, 5)
        with pytest.raises(StreamResetError):
            await stream.read()


async def test_na_then_next_protocol(listener: Host, dialer: Host) -> None:
    stream = await dialer.new_stream(listener.listen_addrs[0], ["/nope/1", "/nope/2", ECHO])
    assert stream.protocol == ECHO
    with pytest.raises(ProtocolNotSupportedError):
        await dialer.new_stream(listener.listen_addrs[0], ["/nope/1", "/nope/2"])
    # the connection survives refused protocols
    await stream.write(b"ok")
    assert await stream.read_exactly(2) == b"ok"


async def test_early_data_goes_with_the_proposal(listener: Host, dialer: Host) -> None:
    """``early``: the first bytes ride with the proposal; the handler reads them as stream data, after the
    negotiation, and a refused protocol loses them with the stream."""
    stream = await dialer.new_stream(listener.listen_addrs[0], ECHO, early=b"early bird")
    assert stream.protocol == ECHO
    assert await stream.read_exactly(10) == b"early bird"
    await stream.write(b"!")
    await stream.close_write()
    assert await stream.read() == b"!"
    assert await stream.read() == b""
    with pytest.raises((ProtocolNotSupportedError, StreamResetError)):
        await dialer.new_stream(listener.listen_addrs[0], "/nope/1", early=b"lost")
    with pytest.raises(ValueError):
        await dialer.new_stream(listener.listen_addrs[0], ["/nope/1", ECHO], early=b"x")
    # the connection survives
    again = await dialer.new_stream(listener.listen_addrs[0], ECHO, early=b"ok")
    assert await again.read_exactly(2) == b"ok"


async def test_read_message_nowait_takes_only_whole_buffered_messages(listener: Host, dialer: Host) -> None:
    """read_message_nowait: the next message when it is whole in the buffer, None otherwise (a part of
    one stays for read_message), never waiting."""
    from mimirlite.wire import lp

    stream = await dialer.new_stream(listener.listen_addrs[0], ECHO)
    assert stream.read_message_nowait() is None  # nothing yet
    two = lp.encode_message(b"one") + lp.encode_message(b"two")
    part = lp.encode_message(b"three")
    await stream.write(two + part[:3])
    await until(lambda: stream.held > 0)  # one write: one frame back from the echo
    assert stream.read_message_nowait() == b"one"
    assert stream.read_message_nowait() == b"two"
    assert stream.read_message_nowait() is None  # "three" is not whole yet
    await stream.write(part[3:])
    assert await stream.read_message() == b"three"
    await stream.close_write()
    assert await stream.read_message() is None


async def test_wrong_peer_id_is_refused(listener: Host, dialer: Host) -> None:
    port = listener.listen_addrs[0].split("/")[4]
    other = KeyPair.generate().peer_id
    with pytest.raises(PeerIdMismatchError):
        await dialer.dial(f"/ip4/127.0.0.1/tcp/{port}/p2p/{other}")
    assert other not in dialer.connections
    assert await dialer.dial(listener.listen_addrs[0])


async def test_ipv6_and_several_listen_addresses(dialer: Host) -> None:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0"]) as server:
        server.set_handler(ECHO, echo_handler)
        assert [a.split("/")[1] for a in server.listen_addrs] == ["ip4", "ip6"]
        stream = await dialer.new_stream(server.listen_addrs[1], ECHO)
        await stream.write(b"v6")
        assert await stream.read_exactly(2) == b"v6"


async def test_lp_json_helpers_and_cap(listener: Host, dialer: Host) -> None:
    stream = await dialer.new_stream(listener.listen_addrs[0], ECHO)
    await stream.write_json({"event": "query", "data": None, "text": "ünïcode"})
    assert await stream.read_json() == {"event": "query", "data": None, "text": "ünïcode"}
    await stream.write_json("x" * 2000)
    with pytest.raises(MessageTooLargeError):
        await stream.read_json(max_size=1000)


async def test_read_exactly_reports_truncation(dialer: Host) -> None:
    async def short(stream: Stream) -> None:
        await stream.write(b"abc")

    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as server:
        server.set_handler("/short/1", short)
        stream = await dialer.new_stream(server.listen_addrs[0], "/short/1")
        with pytest.raises(IncompleteReadError) as info:
            await stream.read_exactly(10)
        assert info.value.partial == b"abc"


async def test_reads_across_frame_boundaries(dialer: Host) -> None:
    """Each write arrives as its own yamux frame: reads must join and split them exactly."""
    body = bytes(range(256)) + b"tail" * 11  # 300 bytes: a two-byte length prefix
    big = os.urandom(1 << 20)  # longer than any window: credited while it arrives
    pieces = [
        b"\xac",  # the prefix split between frames
        b"\x02" + body[:100],
        body[100:299],
        body[299:] + b"\x02hi\x03you",  # the end of one message, two more in the same frame
        b"\x80\x80\x40",  # 1 MiB prefix on its own
        *(big[i : i + 50_000] for i in range(0, len(big), 50_000)),
        b"abc",
        b"defg",
        b"h" * 70_000,
    ]

    async def pieces_handler(stream: Stream) -> None:
        for piece in pieces:
            await stream.write(piece)
            await asyncio.sleep(0)  # the next write is a separate frame (and likely a separate read)
        await stream.close_write()

    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as server:
        server.set_handler("/pieces/1", pieces_handler)
        stream = await dialer.new_stream(server.listen_addrs[0], "/pieces/1")
        assert await stream.read_message() == body
        assert await stream.read_message() == b"hi"
        assert await stream.read_message() == b"you"
        assert await stream.read_message(max_size=2 << 20) == big
        assert await stream.read_exactly(2) == b"ab"  # splits a frame
        assert await stream.read_exactly(3) == b"cde"  # joins two
        rest = await stream.read_all()
        assert rest == b"fg" + b"h" * 70_000
        assert stream.at_eof
        assert await stream.read() == b""
        assert await stream.read_message() is None


async def test_backpressure_bounds_what_a_slow_reader_buffers(dialer: Host) -> None:
    window = HostConfig().yamux.initial_window
    started = asyncio.Event()
    release = asyncio.Event()
    progress: list[int] = []

    async def slow(stream: Stream) -> None:
        started.set()
        await release.wait()
        await stream.read_all()

    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as server:
        server.set_handler("/slow/1", slow)
        stream = await dialer.new_stream(server.listen_addrs[0], "/slow/1")

        async def writer() -> None:
            chunk = b"\0" * 16384
            for _ in range(64):  # 1 MiB, four windows' worth
                await stream.write(chunk)
                progress.append(len(chunk))
            await stream.close_write()

        task = asyncio.create_task(writer())
        await started.wait()
        # the writer runs until the window stops it: its write waits with (nearly) a window sent
        await until(
            lambda: stream.stalled_since is not None and sum(progress) >= window - 16384,
            TIMEOUT,
            "the writer waiting on the spent window",
        )
        assert not task.done()
        assert window - 16384 <= sum(progress) <= window
        release.set()
        await asyncio.wait_for(task, 10)


async def test_dial_errors_are_clear(dialer: Host) -> None:
    with pytest.raises(AddressError):
        await dialer.dial("/dns4/example/tcp/1")
    with pytest.raises(DialError):
        await dialer.dial(KeyPair.generate().peer_id)
    closed = Host(listen=["/ip4/127.0.0.1/tcp/0"])
    await closed.start()
    addr = closed.listen_addrs[0]
    await closed.stop()
    with pytest.raises(DialError):
        await dialer.dial(addr)


async def test_yamux_ping_and_clean_shutdown(listener: Host) -> None:
    dialer = Host()
    await dialer.start()
    conn = await dialer.dial(listener.listen_addrs[0])
    assert 0 < await conn.ping() < 5
    stream = await dialer.new_stream(listener.listen_addrs[0], ECHO)
    gone = disconnected(listener, dialer.peer_id)
    await dialer.stop()
    assert conn.closed.done()
    with pytest.raises(StreamResetError):  # its connection closed under it
        await stream.write(b"x")
    # the listener notices and forgets the connection
    await asyncio.wait_for(gone, TIMEOUT)
    assert dialer.peer_id not in listener.connections


async def test_window_update_leaves_while_the_reader_still_holds_data(listener: Host, dialer: Host) -> None:
    """A reader with a backlog sends its window update as soon as it has read half the window, not
    once it has read everything it holds (its event loop turns only then): the remote's writer goes
    on meanwhile. Without this W3 ran at half speed whenever the window had not grown (issue 16)."""
    message = "x" * 198  # 200-byte LP-JSON messages, like W3's
    count = 2000  # about 400 KiB: the writer fills the 256 KiB window, then waits for its update

    async def tokens(stream: Stream) -> None:
        for _ in range(count):
            await stream.write_json(message)
        await stream.close_write()

    listener.set_handler("/test/tokens/1.0.0", tokens)
    stream = await dialer.new_stream(listener.listen_addrs[0], "/test/tokens/1.0.0")
    await until(lambda: stream.held >= 250_000, TIMEOUT)  # a window's worth arrived, unread
    before = dialer.metrics.bytes_out
    for _ in range(count // 2):  # 200 KiB, none of these reads suspends: the loop does not turn
        assert await stream.read_json() == message
    assert dialer.metrics.bytes_out > before, "the window update waited for the loop to turn"
    got = count // 2
    while await stream.read_json() is not None:
        got += 1
    assert got == count
