"""Tests for the sans-IO yamux session: literal frames, two sessions back to back, properties."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimirlite.errors import (
    ConnectionClosedError,
    LimitExceededError,
    LocalError,
    StreamClosedError,
    StreamResetError,
    YamuxError,
)
from mimirlite.wire.yamux import (
    INITIAL_WINDOW,
    MIN_SPLIT,
    YAMUX_PROTOCOL,
    DataReceived,
    GoAwayReceived,
    PongReceived,
    SendWindowUpdated,
    StreamAcked,
    StreamEnded,
    StreamOpened,
    StreamReset,
    YamuxConfig,
    YamuxEvent,
    YamuxSession,
)
from mimirlite.wire.yamux_frames import HEADER_STRUCT, Flag, FrameType, parse_header

DATA, WINDOW_UPDATE = FrameType.DATA, FrameType.WINDOW_UPDATE
PING, GO_AWAY = FrameType.PING, FrameType.GO_AWAY
SYN, ACK, FIN, RST = Flag.SYN, Flag.ACK, Flag.FIN, Flag.RST


def frame(ftype: int, flags: int, sid: int, length: int, payload: bytes = b"", version: int = 0) -> bytes:
    """One literal yamux frame."""
    return HEADER_STRUCT.pack(version, ftype, flags, sid, length) + payload


def data_frame(sid: int, payload: bytes, flags: int = 0) -> bytes:
    return frame(DATA, flags, sid, len(payload), payload)


GO_AWAY_PROTOCOL = frame(GO_AWAY, 0, 0, 1)


def pair(
    client_config: YamuxConfig | None = None, server_config: YamuxConfig | None = None
) -> tuple[YamuxSession, YamuxSession]:
    client = YamuxSession(is_client=True, config=client_config or YamuxConfig())
    server = YamuxSession(is_client=False, config=server_config or YamuxConfig())
    return client, server


def pump(a: YamuxSession, b: YamuxSession) -> tuple[list[YamuxEvent], list[YamuxEvent]]:
    """Shuttle bytes both ways until both are quiet; return (events at a, events at b)."""
    a_events: list[YamuxEvent] = []
    b_events: list[YamuxEvent] = []
    while True:
        to_b = a.data_to_send()
        to_a = b.data_to_send()
        if not to_b and not to_a:
            return a_events, b_events
        if to_b:
            b_events += b.receive_data(to_b)
        if to_a:
            a_events += a.receive_data(to_a)


def received(events: Iterable[YamuxEvent], sid: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived) and e.stream_id == sid)


def merge_data(events: Iterable[YamuxEvent]) -> list[YamuxEvent]:
    """Join adjacent DataReceived of one stream (payloads may arrive in pieces)."""
    out: list[YamuxEvent] = []
    for e in events:
        if isinstance(e, DataReceived) and not e.data:
            continue
        last = out[-1] if out else None
        if isinstance(e, DataReceived) and isinstance(last, DataReceived) and last.stream_id == e.stream_id:
            out[-1] = DataReceived(e.stream_id, last.data + e.data)
        else:
            out.append(e)
    return out


def open_pair() -> tuple[YamuxSession, YamuxSession, int]:
    client, server = pair()
    sid = client.open_stream()
    pump(client, server)
    return client, server, sid


# --- literal frames ---------------------------------------------------------------------------


def test_constants() -> None:
    assert YAMUX_PROTOCOL == "/yamux/1.0.0"
    assert INITIAL_WINDOW == 256 * 1024


def test_open_stream_sends_syn_window_update() -> None:
    client = YamuxSession(is_client=True)
    assert client.open_stream() == 1
    assert client.open_stream() == 3
    assert client.data_to_send() == frame(WINDOW_UPDATE, SYN, 1, 0) + frame(WINDOW_UPDATE, SYN, 3, 0)
    assert client.data_to_send() == b""
    server = YamuxSession(is_client=False)
    assert server.open_stream() == 2
    assert server.data_to_send() == bytes.fromhex("00 01 0001 00000002 00000000")


def test_inbound_syn_is_acked_immediately() -> None:
    server = YamuxSession(is_client=False)
    assert server.receive_data(frame(WINDOW_UPDATE, SYN, 1, 0)) == [StreamOpened(1)]
    assert server.data_to_send() == frame(WINDOW_UPDATE, ACK, 1, 0)
    assert server.send_window(1) == INITIAL_WINDOW


def test_syn_delta_grows_send_window() -> None:
    server = YamuxSession(is_client=False)
    server.receive_data(frame(WINDOW_UPDATE, SYN, 1, 1000))
    assert server.send_window(1) == INITIAL_WINDOW + 1000


def test_larger_initial_window_is_advertised_with_syn_and_ack() -> None:
    big = YamuxConfig(initial_window=1024 * 1024)
    client = YamuxSession(is_client=True, config=big)
    client.open_stream()
    extra = 1024 * 1024 - INITIAL_WINDOW
    assert client.data_to_send() == frame(WINDOW_UPDATE, SYN, 1, extra)
    server = YamuxSession(is_client=False, config=big)
    server.receive_data(frame(WINDOW_UPDATE, SYN, 1, 0))
    assert server.data_to_send() == frame(WINDOW_UPDATE, ACK, 1, extra)
    # and the whole larger window may be used by the remote
    assert server.receive_data(data_frame(1, b"x" * (1024 * 1024)))[0] == DataReceived(1, b"x" * 1024 * 1024)


def test_config_rejects_small_window() -> None:
    with pytest.raises(LocalError):
        YamuxConfig(initial_window=1024)
    with pytest.raises(LocalError):
        YamuxConfig(max_frame_data=0)


def test_data_with_syn_opens_stream() -> None:
    server = YamuxSession(is_client=False)
    events = server.receive_data(data_frame(1, b"hello", SYN))
    assert events == [StreamOpened(1), DataReceived(1, b"hello")]


def test_data_with_syn_and_fin() -> None:
    server = YamuxSession(is_client=False)
    events = server.receive_data(data_frame(1, b"req", SYN | FIN))
    assert events == [StreamOpened(1), DataReceived(1, b"req"), StreamEnded(1)]
    server.data_to_send()
    assert server.send_data(1, b"resp") == 4
    server.close_stream(1)
    assert server.data_to_send() == data_frame(1, b"resp") + frame(WINDOW_UPDATE, FIN, 1, 0)
    assert not server.has_stream(1)


def test_ack_on_outbound_stream() -> None:
    client = YamuxSession(is_client=True)
    client.open_stream()
    assert client.receive_data(frame(WINDOW_UPDATE, ACK, 1, 0)) == [StreamAcked(1)]
    # ACK again (e.g. on a data frame) is not reported twice
    assert client.receive_data(data_frame(1, b"a", ACK)) == [DataReceived(1, b"a")]


def test_ack_with_delta_reports_window() -> None:
    client = YamuxSession(is_client=True)
    client.open_stream()
    assert client.receive_data(frame(WINDOW_UPDATE, ACK, 1, 10)) == [StreamAcked(1), SendWindowUpdated(1)]
    assert client.send_window(1) == INITIAL_WINDOW + 10


def test_js_style_close_and_reset() -> None:
    # JS half-closes and resets with window updates (FIN may ride with ACK on an unacked stream)
    client = YamuxSession(is_client=True)
    client.open_stream()
    client.open_stream()
    assert client.receive_data(frame(WINDOW_UPDATE, ACK | FIN, 1, 0)) == [StreamAcked(1), StreamEnded(1)]
    assert client.receive_data(frame(WINDOW_UPDATE, RST, 3, 0)) == [StreamReset(3)]


def test_ping_is_answered_with_same_opaque() -> None:
    server = YamuxSession(is_client=False)
    assert server.receive_data(frame(PING, SYN, 0, 0x12345678)) == []
    assert server.data_to_send() == frame(PING, ACK, 0, 0x12345678)


def test_ping_round_trip() -> None:
    client, server = pair()
    first = client.ping()
    second = client.ping()
    assert first != second
    assert client.data_to_send() == frame(PING, SYN, 0, first) + frame(PING, SYN, 0, second)
    server.receive_data(frame(PING, SYN, 0, first) + frame(PING, SYN, 0, second))
    events = client.receive_data(server.data_to_send())
    assert events == [PongReceived(first), PongReceived(second)]
    # an unsolicited pong is ignored
    assert client.receive_data(frame(PING, ACK, 0, 999)) == []


def test_go_away_received() -> None:
    client, server, sid = open_pair()
    server.go_away()
    assert server.go_away_sent == 0
    server.go_away()  # idempotent
    assert server.data_to_send() == frame(GO_AWAY, 0, 0, 0)
    assert client.receive_data(frame(GO_AWAY, 0, 0, 0)) == [GoAwayReceived(0)]
    assert client.go_away_received == 0
    with pytest.raises(ConnectionClosedError):
        client.open_stream()
    # existing streams carry on both ways
    client.send_data(sid, b"still")
    server.send_data(sid, b"here")
    c_events, s_events = pump(client, server)
    assert received(s_events, sid) == b"still"
    assert received(c_events, sid) == b"here"


def test_after_local_go_away_inbound_syn_is_refused() -> None:
    server = YamuxSession(is_client=False)
    server.go_away()
    server.data_to_send()
    assert server.receive_data(frame(WINDOW_UPDATE, SYN, 1, 0) + data_frame(1, b"x")) == []
    assert server.data_to_send() == frame(WINDOW_UPDATE, RST, 1, 0)
    with pytest.raises(ConnectionClosedError):
        server.open_stream()


def test_frames_for_unknown_streams_are_ignored() -> None:
    server = YamuxSession(is_client=False)
    server.receive_data(frame(WINDOW_UPDATE, SYN, 1, 0))
    stray = (
        data_frame(7, b"lost data")
        + frame(WINDOW_UPDATE, 0, 9, 100)
        + frame(WINDOW_UPDATE, FIN, 11, 0)
        + frame(WINDOW_UPDATE, RST, 13, 0)
        + data_frame(2, b"x" * 100)  # our parity, never opened
    )
    assert server.receive_data(stray + data_frame(1, b"ok")) == [DataReceived(1, b"ok")]


def test_send_data_splits_into_frames() -> None:
    client = YamuxSession(is_client=True, config=YamuxConfig(max_frame_data=4))
    sid = client.open_stream()
    client.data_to_send()
    assert client.send_data(sid, memoryview(b"abcdefghij")) == 10
    assert client.data_to_send() == data_frame(1, b"abcd") + data_frame(1, b"efgh") + data_frame(1, b"ij")
    buf = bytearray(b"xyz")
    assert client.send_data(sid, buf) == 3
    buf[:] = b"000"  # the session copied it
    assert client.data_to_send() == data_frame(1, b"xyz")
    assert client.send_data(sid, b"") == 0
    assert client.data_to_send() == b""


def test_send_data_to_unknown_stream() -> None:
    client = YamuxSession(is_client=True)
    with pytest.raises(StreamClosedError):
        client.send_data(1, b"x")
    assert client.send_window(1) == 0
    client.consumed(1, 10)  # no-op
    client.close_stream(1)  # no-op
    client.reset_stream(1)  # no-op
    assert client.data_to_send() == b""


# --- two sessions back to back ----------------------------------------------------------------


def test_open_ack_and_data_both_directions() -> None:
    client, server = pair()
    sid = client.open_stream()
    client.send_data(sid, b"hello")  # data may follow SYN before the ACK
    c_events, s_events = pump(client, server)
    assert s_events == [StreamOpened(sid), DataReceived(sid, b"hello")]
    assert c_events == [StreamAcked(sid)]
    server.send_data(sid, b"world")
    c_events, s_events = pump(client, server)
    assert c_events == [DataReceived(sid, b"world")]
    assert client.stream_count == server.stream_count == 1


def test_half_close_other_side_still_sends() -> None:
    client, server, sid = open_pair()
    client.send_data(sid, b"request")
    client.close_stream(sid)
    client.close_stream(sid)  # idempotent
    c_events, s_events = pump(client, server)
    assert s_events == [DataReceived(sid, b"request"), StreamEnded(sid)]
    with pytest.raises(StreamClosedError):
        client.send_data(sid, b"more")
    assert client.send_window(sid) == 0
    server.send_data(sid, b"resp1")
    server.send_data(sid, b"resp2")
    server.close_stream(sid)
    c_events, s_events = pump(client, server)
    assert c_events == [DataReceived(sid, b"resp1"), DataReceived(sid, b"resp2"), StreamEnded(sid)]
    assert client.stream_count == 0
    assert server.stream_count == 0
    # late frames for the finished stream are ignored
    assert client.receive_data(frame(WINDOW_UPDATE, 0, sid, 5)) == []


def test_data_frame_with_fin() -> None:
    _client, server, sid = open_pair()
    events = server.receive_data(data_frame(sid, b"last", FIN))
    assert events == [DataReceived(sid, b"last"), StreamEnded(sid)]
    assert server.receive_data(frame(WINDOW_UPDATE, FIN, sid, 0)) == []  # repeated FIN is harmless
    assert server.receive_data(data_frame(sid, b"", FIN)) == []


def test_reset_by_client() -> None:
    client, server, sid = open_pair()
    client.reset_stream(sid)
    assert client.data_to_send() == frame(WINDOW_UPDATE, RST, sid, 0)
    assert not client.has_stream(sid)
    with pytest.raises(StreamClosedError):
        client.send_data(sid, b"x")
    assert server.receive_data(frame(WINDOW_UPDATE, RST, sid, 0)) == [StreamReset(sid)]
    with pytest.raises(StreamResetError):
        server.send_data(sid, b"x")
    server.reset_stream(sid)  # no-op, nothing sent
    server.close_stream(sid)
    assert server.data_to_send() == b""
    with pytest.raises(StreamClosedError):  # the glue has acknowledged the reset
        server.send_data(sid, b"x")
    # data racing with the RST is dropped silently
    assert client.receive_data(data_frame(sid, b"late")) == []


def test_rst_on_data_frame_after_payload() -> None:
    client, _server, sid = open_pair()
    assert client.receive_data(data_frame(sid, b"bye", RST)) == [DataReceived(sid, b"bye"), StreamReset(sid)]


def test_local_reset_while_frame_arrives() -> None:
    client, _server, sid = open_pair()
    msg = data_frame(sid, b"0123456789") + data_frame(sid, b"z")
    assert client.receive_data(msg[:15]) == [DataReceived(sid, b"012")]
    client.reset_stream(sid)
    assert client.receive_data(msg[15:]) == []


def test_flow_control_partial_write_and_window_update() -> None:
    client, server, sid = open_pair()
    blob = bytes(range(256)) * 1200  # 300 KiB
    sent = client.send_data(sid, blob)
    assert sent == INITIAL_WINDOW
    assert client.send_window(sid) == 0
    assert client.send_data(sid, blob[sent:]) == 0
    _, s_events = pump(client, server)
    assert received(s_events, sid) == blob[:sent]
    # consuming less than half the window sends nothing yet (consumed says whether it queued an update)
    assert server.consumed(sid, INITIAL_WINDOW // 2 - 1) is False
    assert server.data_to_send() == b""
    assert server.consumed(sid, 1) is True
    assert server.data_to_send() == frame(WINDOW_UPDATE, 0, sid, INITIAL_WINDOW // 2)
    server.receive_data(b"")
    c_events = client.receive_data(frame(WINDOW_UPDATE, 0, sid, INITIAL_WINDOW // 2))
    assert c_events == [SendWindowUpdated(sid)]
    assert client.send_window(sid) == INITIAL_WINDOW // 2
    rest = client.send_data(sid, blob[sent:])
    assert rest == len(blob) - sent
    _, s_events = pump(client, server)
    assert received(s_events, sid) == blob[sent:]


def test_no_slivers_of_window() -> None:
    # A receiver that returns credit per frame read (js-libp2p) hands back a few bytes at a time: a write
    # that does not fit waits for the window instead of going out in slivers (silly-window syndrome).
    client, _server, sid = open_pair()
    assert client.send_data(sid, b"x" * (INITIAL_WINDOW - 100)) == INITIAL_WINDOW - 100
    assert client.send_data(sid, b"m" * 212) == 0  # 100 bytes of window left: nothing
    assert client.send_data(sid, b"b" * 65536) == 0
    assert client.send_data(sid, b"s" * 100) == 100  # what fits goes
    client.receive_data(frame(WINDOW_UPDATE, 0, sid, 211))
    assert client.send_data(sid, b"m" * 212) == 0
    client.receive_data(frame(WINDOW_UPDATE, 0, sid, 1))
    assert client.send_data(sid, b"m" * 212) == 212  # whole, in one frame
    client.receive_data(frame(WINDOW_UPDATE, 0, sid, MIN_SPLIT))
    assert client.send_data(sid, b"b" * 65536) == MIN_SPLIT  # a large write is still split at the edge
    out, sizes = client.data_to_send(), []
    while out:
        ftype, length = out[1], int.from_bytes(out[8:12], "big")
        if ftype == DATA:
            sizes.append(length)
        out = out[12 + (length if ftype == DATA else 0) :]
    assert sizes[-3:] == [100, 212, MIN_SPLIT]


def test_consumed_never_grants_more_than_received() -> None:
    client, server, sid = open_pair()
    client.send_data(sid, b"x" * 1000)
    pump(client, server)
    server.consumed(sid, 10 * INITIAL_WINDOW)
    assert server.data_to_send() == b""  # only 1000 bytes to give back, below the threshold
    client.send_data(sid, b"y" * (INITIAL_WINDOW - 1000))
    pump(client, server)
    server.consumed(sid, INITIAL_WINDOW)
    assert server.data_to_send() == frame(WINDOW_UPDATE, 0, sid, INITIAL_WINDOW)


def test_consumed_after_remote_fin_sends_nothing() -> None:
    client, server, sid = open_pair()
    client.send_data(sid, b"x" * INITIAL_WINDOW)
    client.close_stream(sid)
    pump(client, server)
    server.consumed(sid, INITIAL_WINDOW)
    assert server.data_to_send() == b""


def test_large_transfer_with_flow_control() -> None:
    client, server, sid = open_pair()
    blob = bytes(range(251)) * 8000  # ~2 MB, not a multiple of anything
    pos = 0
    got = bytearray()
    while len(got) < len(blob):
        pos += client.send_data(sid, memoryview(blob)[pos:])
        assert client.send_window(sid) >= 0
        _, s_events = pump(client, server)
        chunk = received(s_events, sid)
        got += chunk
        assert pos - len(got) == 0
        server.consumed(sid, len(chunk))
    assert bytes(got) == blob


@given(st.lists(st.tuples(st.integers(0, 300_000), st.integers(0, 300_000)), min_size=1, max_size=30))
@settings(max_examples=60, deadline=None)
def test_writer_never_more_than_window_ahead(steps: list[tuple[int, int]]) -> None:
    client, server, sid = open_pair()
    unread = 0  # bytes the server received but the application has not consumed
    sent_total = 0
    for write, read in steps:
        sent_total += client.send_data(sid, b"\0" * write)
        _, s_events = pump(client, server)
        unread += len(received(s_events, sid))
        assert unread <= INITIAL_WINDOW
        read = min(read, unread)
        server.consumed(sid, read)
        unread -= read
        pump(client, server)
        # what the server has received and not yet released never exceeds one window
        assert unread + client.send_window(sid) <= INITIAL_WINDOW
    assert sent_total >= 0


# --- window auto-tuning ----------------------------------------------------------------------


def fill_and_read(
    client: YamuxSession, server: YamuxSession, sid: int, now: float, first_at: float | None = None
) -> int:
    """Client sends all its window allows; the server reads it all at ``now`` (one byte first at
    ``first_at``, when given); returns the credit of the server's window update (0: none)."""
    n = client.send_data(sid, b"\0" * client.send_window(sid))
    pump(client, server)
    if first_at is not None:
        server.consumed(sid, 1, first_at)
        n -= 1
    server.consumed(sid, n, now)
    out = server.data_to_send()
    client.receive_data(out)
    if not out:
        return 0
    header = parse_header(out)
    assert (header.type, header.flags, header.stream_id, len(out)) == (WINDOW_UPDATE, 0, sid, 12)
    return header.length


def test_window_doubles_while_the_reader_keeps_up_with_a_fast_sender() -> None:
    client, server, sid = open_pair()
    credits = [fill_and_read(client, server, sid, now=0.0005 * i) for i in range(1, 9)]
    # each window was read at once (well within 10 ms), so each update doubles it, up to 16 MiB
    assert credits == [INITIAL_WINDOW << k for k in range(1, 7)] + [16 << 20] * 2
    assert client.send_window(sid) == 16 << 20


def test_window_stays_when_the_stream_is_slow() -> None:
    client, server, sid = open_pair()
    credits = [fill_and_read(client, server, sid, 0.020, first_at=0.0)]  # 20 ms to read a window
    credits += [fill_and_read(client, server, sid, now=0.020 * i) for i in range(2, 6)]
    assert credits == [INITIAL_WINDOW] * 5
    assert client.send_window(sid) == INITIAL_WINDOW


def test_window_stays_without_a_clock() -> None:
    client, server, sid = open_pair()
    for _ in range(5):
        n = client.send_data(sid, b"\0" * INITIAL_WINDOW)
        pump(client, server)
        server.consumed(sid, n)
        pump(client, server)
    assert client.send_window(sid) == INITIAL_WINDOW


def test_known_round_trip_time_lengthens_the_growth_period() -> None:
    client, server, sid = open_pair()
    server.rtt = 0.050  # a WAN link: a window read within 4 round trips is what limits the sender
    credits = [fill_and_read(client, server, sid, 0.060, first_at=0.0)]
    credits += [fill_and_read(client, server, sid, now=0.060 * i) for i in range(2, 4)]
    assert credits == [2 * INITIAL_WINDOW, 4 * INITIAL_WINDOW, 8 * INITIAL_WINDOW]


def test_max_window_and_growth_time_are_configurable() -> None:
    config = YamuxConfig(max_window=INITIAL_WINDOW * 3, window_growth_time=0.1)
    client, server = pair(server_config=config)
    sid = client.open_stream()
    pump(client, server)
    credits = [fill_and_read(client, server, sid, 0.05, first_at=0.0)]
    credits += [fill_and_read(client, server, sid, now=0.05 * i) for i in range(2, 5)]
    assert credits == [2 * INITIAL_WINDOW] + [3 * INITIAL_WINDOW] * 3
    with pytest.raises(LocalError):
        YamuxConfig(max_window=INITIAL_WINDOW - 1)
    with pytest.raises(LocalError):
        YamuxConfig(window_growth_time=-1)


def test_growth_keeps_all_windows_within_max_buffered() -> None:
    config = YamuxConfig(max_buffered=4 * INITIAL_WINDOW)
    client, server = pair(server_config=config)
    a, b = client.open_stream(), client.open_stream()
    pump(client, server)
    # a may grow by what b's window leaves of max_buffered: 4 - 1 (b) - 1 (a) = 2 windows
    assert fill_and_read(client, server, a, 0.001) == 2 * INITIAL_WINDOW
    assert fill_and_read(client, server, a, 0.002) == 3 * INITIAL_WINDOW
    assert fill_and_read(client, server, a, 0.003) == 3 * INITIAL_WINDOW  # no room left
    # the grown window is what the remote may send: all of it is accepted
    n = client.send_data(a, b"\0" * (4 * INITIAL_WINDOW))
    assert n == 3 * INITIAL_WINDOW
    _, events = pump(client, server)
    assert len(received(events, a)) == n
    # and the buffer limit never fires for a peer keeping to its windows
    m = client.send_data(b, b"\0" * INITIAL_WINDOW)
    _, events = pump(client, server)
    assert len(received(events, b)) == m == INITIAL_WINDOW
    assert server.buffered == 4 * INITIAL_WINDOW
    assert not server.is_closed
    # once a ends, its window is free for b to grow
    server.reset_stream(a)
    pump(client, server)
    server.consumed(b, INITIAL_WINDOW, 0.010)
    assert server.data_to_send() == frame(WINDOW_UPDATE, 0, b, 2 * INITIAL_WINDOW)


def test_grown_window_still_refuses_an_overrun() -> None:
    client, server, sid = open_pair()
    assert fill_and_read(client, server, sid, 0.001) == 2 * INITIAL_WINDOW
    with pytest.raises(YamuxError, match="overruns"):
        server.receive_data(data_frame(sid, b"\0" * (2 * INITIAL_WINDOW + 1)))


def test_max_streams_inbound_rst_and_outbound_limit() -> None:
    client, server = pair(server_config=YamuxConfig(max_streams=2))
    ids = [client.open_stream() for _ in range(3)]
    c_events, s_events = pump(client, server)
    assert s_events == [StreamOpened(ids[0]), StreamOpened(ids[1])]
    assert c_events == [StreamAcked(ids[0]), StreamAcked(ids[1]), StreamReset(ids[2])]
    assert not server.is_closed
    assert server.stream_count == 2

    small = YamuxSession(is_client=True, config=YamuxConfig(max_streams=2))
    a = small.open_stream()
    small.open_stream()
    with pytest.raises(LimitExceededError):
        small.open_stream()
    small.reset_stream(a)
    assert small.open_stream() == 5


def test_max_streams_counts_directions_separately() -> None:
    client, server = pair(server_config=YamuxConfig(max_streams=1))
    client.open_stream()
    pump(client, server)
    assert server.open_stream() == 2  # our own outbound streams are not starved by the remote's


# --- violations -------------------------------------------------------------------------------


def _violation(session: YamuxSession, data: bytes) -> None:
    session.data_to_send()
    with pytest.raises(YamuxError):
        session.receive_data(data)
    assert session.is_closed
    assert session.error
    assert session.data_to_send().endswith(GO_AWAY_PROTOCOL)
    with pytest.raises(YamuxError):
        session.receive_data(frame(PING, SYN, 0, 1))
    assert session.data_to_send() == b""  # a dead session answers nothing
    with pytest.raises(ConnectionClosedError):
        session.open_stream()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(frame(7, 0, 0, 0), id="unknown-type"),
        pytest.param(frame(4, 0, 1, 0), id="unknown-type-on-stream"),
        pytest.param(frame(WINDOW_UPDATE, SYN, 1, 0, version=1), id="bad-version"),
        pytest.param(frame(WINDOW_UPDATE, SYN, 2, 0), id="wrong-parity-syn"),
        pytest.param(frame(WINDOW_UPDATE, SYN, 1, 0) * 2, id="duplicate-syn"),
        pytest.param(data_frame(1, b"x", SYN) + data_frame(1, b"y", SYN), id="duplicate-syn-data"),
        pytest.param(frame(DATA, SYN, 1, INITIAL_WINDOW + 1), id="window-overrun-syn"),
        pytest.param(
            data_frame(1, b"x" * INITIAL_WINDOW, SYN) + frame(DATA, 0, 1, 1), id="window-overrun-later"
        ),
        pytest.param(frame(DATA, 0, 99, 16 * 1024 * 1024 + 1), id="over-length-frame"),
        pytest.param(data_frame(1, b"x", SYN | FIN) + data_frame(1, b"y"), id="data-after-fin"),
        pytest.param(frame(DATA, 0, 0, 0), id="data-on-stream-0"),
        pytest.param(frame(WINDOW_UPDATE, SYN, 0, 0), id="window-update-on-stream-0"),
        pytest.param(frame(PING, SYN, 1, 0), id="ping-on-stream"),
        pytest.param(frame(PING, 0, 0, 0), id="ping-without-syn-or-ack"),
        pytest.param(frame(GO_AWAY, 0, 3, 0), id="go-away-on-stream"),
    ],
)
def test_violation_raises_and_queues_go_away(data: bytes) -> None:
    _violation(YamuxSession(is_client=False), data)


def test_violation_after_valid_frames_in_same_chunk() -> None:
    client, server, sid = open_pair()
    client.send_data(sid, b"fine")
    _violation(server, client.data_to_send() + frame(9, 0, 0, 0))
    with pytest.raises(StreamClosedError):
        server.send_data(sid, b"x")


def test_window_overrun_uses_remaining_window() -> None:
    client, server, sid = open_pair()
    client.send_data(sid, b"x" * (INITIAL_WINDOW - 10))
    pump(client, server)
    assert server.receive_data(data_frame(sid, b"y" * 10)) == [DataReceived(sid, b"y" * 10)]
    _violation(server, data_frame(sid, b"z"))


def test_custom_max_receive_frame() -> None:
    server = YamuxSession(is_client=False, config=YamuxConfig(max_receive_frame=100))
    server.receive_data(frame(DATA, 0, 5, 100) + b"\0" * 100)  # unknown stream, skipped
    _violation(server, frame(DATA, 0, 5, 101))


# --- split input ------------------------------------------------------------------------------


def _traffic() -> bytes:
    """A client's side of a busy exchange, as the server receives it."""
    return (
        frame(WINDOW_UPDATE, SYN, 1, 0)
        + data_frame(1, b"hello world")
        + frame(PING, SYN, 0, 77)
        + data_frame(3, b"", SYN)
        + data_frame(3, bytes(range(200)))
        + frame(WINDOW_UPDATE, 0, 1, 0)
        + data_frame(9, b"stray payload")
        + data_frame(1, b"", 0)
        + data_frame(1, b"bye", FIN)
        + frame(WINDOW_UPDATE, RST, 3, 0)
        + frame(GO_AWAY, 0, 0, 0)
    )


EXPECTED = [
    StreamOpened(1),
    DataReceived(1, b"hello world"),
    StreamOpened(3),
    DataReceived(3, bytes(range(200))),
    DataReceived(1, b"bye"),
    StreamEnded(1),
    StreamReset(3),
    GoAwayReceived(0),
]


def test_traffic_in_one_piece() -> None:
    server = YamuxSession(is_client=False)
    assert server.receive_data(_traffic()) == EXPECTED
    assert server.data_to_send() == (
        frame(WINDOW_UPDATE, ACK, 1, 0) + frame(PING, ACK, 0, 77) + frame(WINDOW_UPDATE, ACK, 3, 0)
    )


def test_one_byte_at_a_time() -> None:
    server = YamuxSession(is_client=False)
    events: list[YamuxEvent] = []
    for i, b in enumerate(_traffic()):
        events += server.receive_data(bytes([b]) if i % 2 else bytearray([b]))
    assert merge_data(events) == EXPECTED
    assert server.data_to_send() == (
        frame(WINDOW_UPDATE, ACK, 1, 0) + frame(PING, ACK, 0, 77) + frame(WINDOW_UPDATE, ACK, 3, 0)
    )


def test_split_at_every_boundary() -> None:
    data = _traffic()
    for cut in range(len(data) + 1):
        server = YamuxSession(is_client=False)
        events = server.receive_data(data[:cut]) + server.receive_data(memoryview(data)[cut:])
        assert merge_data(events) == EXPECTED, cut


@given(st.lists(st.integers(1, 64), max_size=40))
@settings(max_examples=200, deadline=None)
def test_arbitrary_chunking(sizes: list[int]) -> None:
    data = _traffic()
    server = YamuxSession(is_client=False)
    events: list[YamuxEvent] = []
    pos = 0
    for size in sizes:
        events += server.receive_data(data[pos : pos + size])
        pos += size
    events += server.receive_data(data[pos:])
    assert merge_data(events) == EXPECTED


@given(st.binary(max_size=300), st.booleans())
@settings(max_examples=500, deadline=None)
def test_arbitrary_bytes_raise_only_yamux_error(data: bytes, is_client: bool) -> None:
    session = YamuxSession(is_client=is_client)
    session.open_stream()
    try:
        session.receive_data(data)
    except YamuxError:
        assert session.is_closed
        assert session.data_to_send().endswith(GO_AWAY_PROTOCOL)


@given(st.lists(st.tuples(st.sampled_from([DATA, WINDOW_UPDATE, PING, GO_AWAY]), st.integers(0, 15),
                          st.integers(0, 6), st.binary(max_size=20)), max_size=20))
@settings(max_examples=300, deadline=None)
def test_arbitrary_valid_headers_raise_only_yamux_error(
    frames: list[tuple[int, int, int, bytes]],
) -> None:
    session = YamuxSession(is_client=False)
    wire = b"".join(
        data_frame(sid, p, flags) if t == DATA else frame(t, flags, sid, int.from_bytes(p[:4] or b"\0", "big"))  # noqa: E501
        for t, flags, sid, p in frames
    )
    try:
        for i in range(0, len(wire), 7):
            session.receive_data(wire[i : i + 7])
    except YamuxError:
        assert session.is_closed
