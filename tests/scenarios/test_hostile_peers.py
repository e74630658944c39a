"""Hostile peers on real sockets: a peer that sends GoAway, RST storms, window-update floods, ping floods,
or opens streams and does not read. Only that connection ends (after a GoAway: it drains), a well-behaved
peer is served throughout, what the host holds stays bounded, and the host's metrics count it.

The hostile peer is a bare TCP client on 127.0.0.1 upgraded with mimirlite's sans-IO cores
(``RawPeer`` from the bad-input tests), so it can put any yamux frame on the wire. The first section
checks the yamux core's counters behind these limits with literal frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from mimirlite import Host, HostConfig, Stream
from mimirlite.errors import ConnectionClosedError, DialError, YamuxError
from mimirlite.net.connection import Connection
from mimirlite.wire.multistream import MultistreamDialer
from mimirlite.wire.yamux import (
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    INITIAL_WINDOW,
    DataReceived,
    GoAwayReceived,
    StreamDropped,
    StreamEnded,
    StreamOpened,
    StreamReset,
    YamuxConfig,
    YamuxSession,
)
from tests.helpers import ECHO, echo_handler, logged, until
from tests.helpers.frames import (
    ACK,
    DATA,
    FIN,
    PING,
    RST,
    SYN,
    WINDOW_UPDATE,
    go_away_protocol_error,
)
from tests.helpers.frames import yamux_frame as frame
from tests.helpers.rawpeer import (
    CHUNK,
    FIREHOSE,
    SINK,
    RawPeer,
    attacker,
    disconnected,
    echo_on,
    firehose,
    forgotten,
    settled,
    sink_handler,
    well_behaved_peer,
)
from tests.helpers.waiting import TIMEOUT

MIB = 1024 * 1024


# --- the core's counters, with literal frames ------------------------------------------------------


def test_core_pongs_queued_are_bounded() -> None:
    server = YamuxSession(is_client=False, config=YamuxConfig(max_queued_replies=10))
    pings = b"".join(frame(PING, SYN, 0, i) for i in range(10))
    for _ in range(3):  # answered, as long as the glue takes the answers
        assert server.receive_data(pings) == []
        assert server.data_to_send() == b"".join(frame(PING, ACK, 0, i) for i in range(10))
    assert server.pings_answered == 30
    with pytest.raises(YamuxError, match="11 replies queued for a peer that does not read them"):
        server.receive_data(pings + frame(PING, SYN, 0, 10))
    assert server.error_kind == "ping_flood"
    assert server.data_to_send() == go_away_protocol_error()  # the queued pongs are dropped


def test_core_stream_acks_and_refusals_count_as_replies() -> None:
    server = YamuxSession(is_client=False, config=YamuxConfig(max_streams=2, max_queued_replies=4))
    syns = b"".join(frame(WINDOW_UPDATE, SYN, sid, 0) for sid in (1, 3, 5, 7))
    assert server.receive_data(syns) == [StreamOpened(1), StreamOpened(3)]
    assert server.streams_refused == 2
    server.data_to_send()
    with pytest.raises(YamuxError):
        server.receive_data(b"".join(frame(WINDOW_UPDATE, SYN, sid, 0) for sid in (9, 11, 13, 15, 17)))
    assert server.error_kind == "stream_flood"


def test_core_early_resets() -> None:
    server = YamuxSession(is_client=False, config=YamuxConfig(max_early_resets=3))
    storm = b"".join(frame(WINDOW_UPDATE, SYN | RST, sid, 0) for sid in (1, 3, 5))
    expected = [ev for sid in (1, 3, 5) for ev in (StreamOpened(sid), StreamReset(sid))]
    assert server.receive_data(storm) == expected
    # a stream we answered before the remote reset it does not count ...
    server.receive_data(frame(WINDOW_UPDATE, SYN, 7, 0))
    server.send_data(7, b"answer")
    server.receive_data(frame(WINDOW_UPDATE, RST, 7, 0))
    # ... and one that ended normally takes one off
    server.receive_data(frame(DATA, SYN | FIN, 9, 1, b"q"))
    server.close_stream(9)
    server.receive_data(frame(WINDOW_UPDATE, SYN | RST, 11, 0))
    assert not server.is_closed
    with pytest.raises(YamuxError, match="4 streams reset by the remote before we answered them"):
        server.receive_data(frame(WINDOW_UPDATE, SYN | RST, 13, 0))
    assert server.error_kind == "reset_flood"


def test_core_frames_that_carry_nothing() -> None:
    server = YamuxSession(is_client=False, config=YamuxConfig(max_empty_frames=3))
    server.receive_data(frame(WINDOW_UPDATE, SYN, 1, 0) + frame(DATA, 0, 1, 4, b"data"))
    empty = frame(WINDOW_UPDATE, 0, 1, 0) + frame(DATA, 0, 1, 0) + frame(WINDOW_UPDATE, 0, 99, 0)
    server.receive_data(empty)
    server.consumed(1, 4)  # the application read real data: the count starts over
    server.receive_data(empty)
    with pytest.raises(YamuxError, match=r"4 frames that carry nothing \(last: window update without credit"):
        server.receive_data(frame(WINDOW_UPDATE, 0, 1, 0))
    assert server.error_kind == "window_update_flood"


def test_core_late_credit_for_a_closed_stream() -> None:
    # js-libp2p's yamux returns credit as its application reads each data frame, also after both sides
    # closed the stream (W3 js -> mimirlite): one window update per frame we sent is not a flood.
    server = YamuxSession(is_client=False, config=YamuxConfig(max_empty_frames=3))
    server.receive_data(frame(WINDOW_UPDATE, SYN | FIN, 1, 0))
    for _ in range(10):
        server.send_data(1, b"token")
    server.close_stream(1)
    assert not server.has_stream(1)  # both sides closed: forgotten
    server.receive_data(frame(WINDOW_UPDATE, 0, 1, 5) * 10)  # one per frame sent: late, not empty
    assert not server.is_closed
    server.receive_data(frame(WINDOW_UPDATE, 0, 1, 5) * 3)  # past that they count again
    with pytest.raises(YamuxError, match=r"4 frames that carry nothing \(last: window update for a stream"):
        server.receive_data(frame(WINDOW_UPDATE, 0, 1, 5))
    assert server.error_kind == "window_update_flood"


def test_core_send_window_past_32_bits() -> None:
    server = YamuxSession(is_client=False)
    server.receive_data(frame(WINDOW_UPDATE, SYN, 1, 0xFFFFFFFF - INITIAL_WINDOW))
    assert server.send_window(1) == 0xFFFFFFFF
    with pytest.raises(YamuxError, match="send window past 4294967295"):
        server.receive_data(frame(WINDOW_UPDATE, 0, 1, 1))
    assert server.error_kind == "window_update_flood"


def test_core_bytes_buffered_per_session() -> None:
    server = YamuxSession(is_client=False, config=YamuxConfig(max_buffered=INITIAL_WINDOW + 10))
    server.receive_data(frame(DATA, SYN, 1, INITIAL_WINDOW, bytes(INITIAL_WINDOW)))
    server.data_to_send()
    assert server.buffered == INITIAL_WINDOW
    events = server.receive_data(frame(DATA, SYN, 3, 5, b"fine!") + frame(DATA, 0, 3, 6, b"too mu"))
    assert events[:2] == [StreamOpened(3), DataReceived(3, b"fine!")]
    assert events[2:] == [StreamDropped(3, f"{INITIAL_WINDOW + 10} bytes buffered on the connection")]
    assert server.data_to_send() == frame(WINDOW_UPDATE, ACK, 3, 0) + frame(WINDOW_UPDATE, RST, 3, 0)
    assert server.buffered == INITIAL_WINDOW and not server.is_closed
    server.consumed(1, 1000)  # read: buffered goes down (also after the remote's FIN)
    assert server.buffered == INITIAL_WINDOW - 1000
    server.receive_data(frame(DATA, FIN, 1, 0))
    server.consumed(1, 1000)
    assert server.buffered == INITIAL_WINDOW - 2000
    server.reset_stream(1)
    assert server.buffered == 0


# --- on real sockets ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def hosted(caplog: pytest.LogCaptureFixture, config: HostConfig | None = None) -> AsyncIterator[Host]:
    """The host under attack; at the end none of its tasks, connections or streams may be left."""
    caplog.set_level(logging.INFO, logger="mimirlite")
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"], config=config) as host:
        host.set_handler(ECHO, echo_handler)
        host.set_handler(SINK, sink_handler)
        host.set_handler(FIREHOSE, firehose)
        yield host
        await settled(host)
        assert not host._all_conns and host._per_ip == {}
        assert host.metrics.streams_current == 0 and host.metrics.connections_current == 0
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("mimirlite") and not t.done()]


@contextlib.asynccontextmanager
async def good_peer(server: Host) -> AsyncIterator[Stream]:
    """A well-behaved peer with an echo stream open before the attack, checked after it."""
    async with well_behaved_peer(server) as good:
        stream = await asyncio.wait_for(good.new_stream(server.listen_addrs[0], ECHO), TIMEOUT)
        await echo_on(stream, b"before")
        yield stream
        await echo_on(stream, b"after")
        await stream.close_write()
        assert await asyncio.wait_for(stream.read(), TIMEOUT) == b""
        fresh = await asyncio.wait_for(good.new_stream(server.listen_addrs[0], ECHO), TIMEOUT)
        await echo_on(fresh, b"a new stream")
        await fresh.close_write()
        assert await asyncio.wait_for(fresh.read(), TIMEOUT) == b""


async def raw_echo(raw: RawPeer, sid: int, payload: bytes) -> None:
    raw.session.send_data(sid, payload)
    raw.flush()
    got = b""
    while len(got) < len(payload):
        events = await raw.events()
        assert events is not None, "host closed the connection"
        got += b"".join(e.data for e in events if isinstance(e, DataReceived) and e.stream_id == sid)
    assert got == payload


async def ended_with_flood(
    raw: RawPeer, server: Host, conn: Connection, kind: str, *, reset_possible: bool = False
) -> None:
    """The host sent GoAway(protocol error), closed, and counted ``kind``.

    With ``reset_possible`` the GoAway may be lost: a host that closes while the rest of the flood is
    still unread in its socket makes the kernel reset the connection.
    """
    events = await raw.events_until_closed()
    if not (reset_possible and not events):
        assert events[-1:] == [GoAwayReceived(GO_AWAY_PROTOCOL_ERROR)]
    await asyncio.wait_for(asyncio.shield(conn.closed), TIMEOUT)
    forgotten(server, raw.keypair.peer_id)
    assert conn.close_kind == "protocol_error"
    m = server.metrics
    assert m.protocol_errors == {kind: 1}
    assert m.closed == {"protocol_error": 1}
    await raw.aclose()


# --- GoAway ------------------------------------------------------------------------------------


async def test_go_away_drains_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    async with hosted(caplog) as server, good_peer(server) as good:
        raw, conn = await attacker(server)
        sid = await raw.open(ECHO)
        await raw_echo(raw, sid, b"before GoAway")
        raw.session.go_away(GO_AWAY_NORMAL)
        raw.flush()
        await until(lambda: not conn.is_open)
        logged(caplog, "remote sent GoAway (code 0); no new streams, closing once 1 end")
        # the host opens no stream to it any more: not on this connection, nor by dialing it
        with pytest.raises(ConnectionClosedError):
            conn.open_stream()
        with pytest.raises(DialError):
            await server.new_stream(raw.keypair.peer_id, ECHO)
        # the stream it has goes on to its end
        await raw_echo(raw, sid, b"after GoAway")
        await echo_on(good, b"meanwhile")
        assert not conn.closed.done()
        raw.session.close_stream(sid)
        raw.flush()
        events = await raw.events_until_closed()
        assert StreamEnded(sid) in events
        assert events[-1] == GoAwayReceived(GO_AWAY_NORMAL)
        await asyncio.wait_for(asyncio.shield(conn.closed), TIMEOUT)
        assert conn.close_kind == "go_away"
        logged(caplog, "the streams the remote's GoAway left open have ended; closing")
        assert server.metrics.closed == {"go_away": 1}
        assert server.metrics.protocol_errors == {}
        await raw.aclose()


# --- RST storms --------------------------------------------------------------------------------


def syn_rst(first: int, count: int) -> bytes:
    return b"".join(frame(WINDOW_UPDATE, SYN | RST, sid, 0) for sid in range(first, first + 2 * count, 2))


async def test_rst_storm_ends_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    async with hosted(caplog) as server, good_peer(server) as good:
        raw, conn = await attacker(server)
        opened_before = server.metrics.streams_opened
        limit = server.config.yamux.max_early_resets
        raw.send_plain(syn_rst(1, 5000))
        await echo_on(good, b"during the storm")
        await ended_with_flood(raw, server, conn, "reset_flood")
        logged(caplog, f"{limit + 1} streams reset by the remote before we answered them [reset_flood]")
        # no more than the limit ever reached a handler task
        assert server.metrics.streams_opened - opened_before <= limit + 1


async def test_a_few_quick_resets_are_fine(caplog: pytest.LogCaptureFixture) -> None:
    async with hosted(caplog) as server, good_peer(server):
        raw, conn = await attacker(server)
        raw.send_plain(syn_rst(1, 100))
        await raw.ping()
        sid = await raw.open(ECHO)
        await raw_echo(raw, sid, b"still served")
        assert conn.is_open and server.metrics.protocol_errors == {}
        gone = disconnected(server, raw.keypair.peer_id)
        await raw.aclose()
        await asyncio.wait_for(gone, TIMEOUT)


# --- window-update floods ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flood", "reason"),
    [
        pytest.param(
            lambda sid: frame(WINDOW_UPDATE, 0, sid, 0) * 5000,
            "1025 frames that carry nothing (last: window update without credit",
            id="no-credit",
        ),
        pytest.param(
            lambda sid: frame(WINDOW_UPDATE, 0, sid, 0x7FFFFFFF) * 3,
            "window updates grew stream 1's send window past 4294967295",
            id="past-32-bits",
        ),
        pytest.param(
            lambda sid: b"".join(frame(WINDOW_UPDATE, 0, s, 1) for s in range(101, 10101, 2)),
            "1025 frames that carry nothing (last: window update for a stream not open,",
            id="streams-not-open",
        ),
    ],
)
async def test_window_update_flood_ends_the_connection(
    caplog: pytest.LogCaptureFixture, flood: Callable[[int], bytes], reason: str
) -> None:
    async with hosted(caplog) as server, good_peer(server) as good:
        raw, conn = await attacker(server)
        sid = await raw.open(SINK)
        raw.send_plain(flood(sid))
        await echo_on(good, b"during the flood")
        await ended_with_flood(raw, server, conn, "window_update_flood")
        logged(caplog, reason, "[window_update_flood]")


async def test_empty_frames_between_real_data_are_fine(caplog: pytest.LogCaptureFixture) -> None:
    async with hosted(caplog) as server, good_peer(server):
        raw, conn = await attacker(server)
        sid = await raw.open(ECHO)
        for i in range(5):  # 5 x 1000 empty window updates, the echo reads real data in between
            raw.send_plain(frame(WINDOW_UPDATE, 0, sid, 0) * 1000)
            await raw_echo(raw, sid, f"round {i}".encode())
        assert conn.is_open and server.metrics.protocol_errors == {}
        gone = disconnected(server, raw.keypair.peer_id)
        await raw.aclose()
        await asyncio.wait_for(gone, TIMEOUT)


# --- ping floods -------------------------------------------------------------------------------


async def test_ping_flood_ends_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    async with hosted(caplog) as server, good_peer(server) as good:
        raw, conn = await attacker(server)
        count = 100_000  # 1.2 MB of pings sent at once: far more than 4096 in any one read
        raw.send_plain(b"".join(frame(PING, SYN, 0, i) for i in range(count)))
        await echo_on(good, b"during the flood")
        await ended_with_flood(raw, server, conn, "ping_flood", reset_possible=True)
        replies = server.config.yamux.max_queued_replies
        logged(caplog, f"{replies + 1} replies queued for a peer that does not read them [ping_flood]")
        assert server.metrics.pings_answered < count


async def test_pings_are_answered_while_the_peer_reads_them(caplog: pytest.LogCaptureFixture) -> None:
    async with hosted(caplog) as server, good_peer(server):
        raw, conn = await attacker(server)
        burst = 1000
        for round_ in range(10):
            opaques = range(round_ * burst, (round_ + 1) * burst)
            raw.send_plain(b"".join(frame(PING, SYN, 0, i) for i in opaques))
            expected = b"".join(frame(PING, ACK, 0, i) for i in opaques)
            got = b""
            while len(got) < len(expected):
                data = await raw.recv_plain()
                assert data, "host closed the connection"
                got += data
            assert got == expected
        assert conn.is_open
        assert server.metrics.pings_answered == 10 * burst
        assert server.metrics.protocol_errors == {}
        gone = disconnected(server, raw.keypair.peer_id)
        await raw.aclose()
        await asyncio.wait_for(gone, TIMEOUT)


# --- streams opened by a peer that does not read -----------------------------------------------


def buffered(conn: Connection) -> int:
    """Bytes the host holds to send on ``conn``: the socket buffer plus frames waiting in the session."""
    assert conn._transport is not None and conn._session is not None
    return conn._transport.get_write_buffer_size() + sum(len(b) for b in conn._session._out)


async def test_peer_that_reads_nothing_is_cut_by_the_write_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """It opens firehose streams (granting each 16 MiB of window) and reads nothing from its socket: the
    host's send buffer stays bounded while its writers wait, and after ``write_timeout`` it is cut."""
    streams = 8
    config = HostConfig(write_timeout=0.5, yamux=YamuxConfig(max_streams=streams))
    async with hosted(caplog, config) as server, good_peer(server) as good:
        session = YamuxSession(is_client=True, config=YamuxConfig(initial_window=16 * MIB))
        raw, conn = await attacker(server, session)
        proposal = MultistreamDialer([FIREHOSE]).data_to_send()
        for _ in range(streams + 4):  # the last 4 are over the host's limit: refused
            raw.session.send_data(raw.session.open_stream(), proposal)
        raw.flush()
        # the socket buffer up to write_buffer_high, then one flush of at most that much and one chunk
        bound = 2 * config.write_buffer_high + CHUNK + 16 * 1024
        peak = 0
        while not conn.closed.done():
            peak = max(peak, buffered(conn))
            assert peak <= bound, f"{peak} bytes held for a peer that does not read"
            await asyncio.sleep(0.01)
        assert peak > config.write_buffer_high  # it did back up
        assert conn.close_kind == "write_timeout"
        logged(caplog, "peer is not reading: send buffer full for 0.5 s (write_timeout)")
        m = server.metrics
        assert m.closed == {"write_timeout": 1}
        assert m.refused == {"streams": 4}
        await echo_on(good, b"unaffected")
        await raw.aclose()


async def test_peer_that_grants_no_window_is_bounded_by_windows_and_stream_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It reads its socket but never grants window back: each stream gets one window (256 KiB) and no
    more, streams past the limit are refused, and, like any slow reader, its connection stays."""
    streams = 8
    config = HostConfig(yamux=YamuxConfig(max_streams=streams))
    async with hosted(caplog, config) as server, good_peer(server) as good:
        raw, conn = await attacker(server)
        proposal = MultistreamDialer([FIREHOSE]).data_to_send()
        opened = [raw.session.open_stream() for _ in range(streams + 4)]  # the last 4 are refused
        for sid in opened:
            raw.session.send_data(sid, proposal)
        raw.flush()
        refused = opened[streams:]
        got = dict.fromkeys(opened[:streams], 0)  # the protocol answer, then the firehose
        resets: list[int] = []
        window = INITIAL_WINDOW
        while sum(got.values()) < streams * window or len(resets) < len(refused):
            events = await raw.events()
            assert events is not None
            for ev in events:
                if isinstance(ev, DataReceived):
                    got[ev.stream_id] += len(ev.data)
                elif isinstance(ev, StreamReset):
                    resets.append(ev.stream_id)
        assert sorted(resets) == refused
        # nothing more comes: the host waits for window, holding nothing for this peer
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(raw.reader.read(1), 0.3)
        assert got == dict.fromkeys(got, window)
        assert buffered(conn) == 0
        assert len(server._tasks) <= streams + 2  # one writer a stream (plus the good peer's echo)
        assert server.metrics.refused == {"streams": len(refused)}
        await echo_on(good, b"unaffected")
        assert conn.is_open
        gone = disconnected(server, raw.keypair.peer_id)
        await raw.aclose()
        await asyncio.wait_for(gone, TIMEOUT)
