"""The yamux frame codec against the spec's bytes, and the session's state machines (tables and frames).

Spec: https://github.com/hashicorp/yamux/blob/master/spec.md (version 0; types 0 data, 1 window update,
2 ping, 3 go away; flags SYN 1, ACK 2, FIN 4, RST 8; GoAway codes 0 normal, 1 protocol error, 2 internal).
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mimirlite.errors import YamuxError
from mimirlite.wire.yamux import (
    SESSION_TRANSITIONS,
    STREAM_TRANSITIONS,
    GoAwayReceived,
    SessionInput,
    SessionState,
    StreamAcked,
    StreamEnded,
    StreamInput,
    StreamOpened,
    StreamReset,
    StreamState,
    YamuxSession,
    next_session_state,
    next_stream_state,
)
from mimirlite.wire.yamux_frames import (
    HEADER_LEN,
    HEADER_STRUCT,
    Flag,
    FrameHeader,
    FrameType,
    GoAwayCode,
    data_frame,
    data_header,
    go_away,
    parse_header,
    ping,
    pong,
    window_update,
)


def spec(hex_header: str) -> bytes:
    """A header written as the spec lays it out: version type flags(2) stream id(4) length(4)."""
    raw = bytes.fromhex(hex_header)
    assert len(raw) == HEADER_LEN
    return raw


# --- codes -------------------------------------------------------------------------------------------


def test_codes_are_the_spec_values() -> None:
    assert [(t.name, int(t)) for t in FrameType] == [
        ("DATA", 0),
        ("WINDOW_UPDATE", 1),
        ("PING", 2),
        ("GO_AWAY", 3),
    ]
    assert [(f.name, int(f)) for f in Flag] == [("SYN", 1), ("ACK", 2), ("FIN", 4), ("RST", 8)]
    assert [(c.name, int(c)) for c in GoAwayCode] == [
        ("NORMAL", 0),
        ("PROTOCOL_ERROR", 1),
        ("INTERNAL_ERROR", 2),
    ]
    assert HEADER_STRUCT.size == HEADER_LEN == 12


# --- builders against literal bytes --------------------------------------------------------------------

BUILT = [
    # id, built, header as the spec lays it out, payload
    ("data-header", data_header(1, 5), "00 00 0000 00000001 00000005", b""),
    ("data", data_frame(3, b"hi"), "00 00 0000 00000003 00000002", b"hi"),
    ("data-syn", data_frame(3, b"", Flag.SYN), "00 00 0001 00000003 00000000", b""),
    ("data-ack", data_frame(2, b"!", Flag.ACK), "00 00 0002 00000002 00000001", b"!"),
    ("data-fin", data_frame(5, b"end", Flag.FIN), "00 00 0004 00000005 00000003", b"end"),
    ("data-rst", data_frame(7, b"", Flag.RST), "00 00 0008 00000007 00000000", b""),
    ("data-max", data_header(0xFFFFFFFF, 0xFFFFFFFF), "00 00 0000 ffffffff ffffffff", b""),
    ("window-syn", window_update(1, 0, Flag.SYN), "00 01 0001 00000001 00000000", b""),
    ("window-ack", window_update(2, 262144, Flag.ACK), "00 01 0002 00000002 00040000", b""),
    ("window-credit", window_update(9, 1000), "00 01 0000 00000009 000003e8", b""),
    ("window-fin", window_update(1, 0, Flag.FIN), "00 01 0004 00000001 00000000", b""),
    ("window-rst", window_update(1, 0, Flag.RST), "00 01 0008 00000001 00000000", b""),
    ("window-ack-fin", window_update(4, 16, Flag.ACK | Flag.FIN), "00 01 0006 00000004 00000010", b""),
    ("ping", ping(7), "00 02 0001 00000000 00000007", b""),
    ("pong", pong(7), "00 02 0002 00000000 00000007", b""),
    ("ping-opaque", ping(0xDEADBEEF), "00 02 0001 00000000 deadbeef", b""),
    ("go-away-normal", go_away(), "00 03 0000 00000000 00000000", b""),
    ("go-away-protocol", go_away(GoAwayCode.PROTOCOL_ERROR), "00 03 0000 00000000 00000001", b""),
    ("go-away-internal", go_away(GoAwayCode.INTERNAL_ERROR), "00 03 0000 00000000 00000002", b""),
]


@pytest.mark.parametrize(("built", "header", "payload"), [c[1:] for c in BUILT], ids=[c[0] for c in BUILT])
def test_builder_writes_the_spec_bytes(built: bytes, header: str, payload: bytes) -> None:
    assert built == spec(header) + payload


def test_session_output_is_the_builders_output() -> None:
    client = YamuxSession(is_client=True)
    sid = client.open_stream()
    assert client.data_to_send() == window_update(sid, 0, Flag.SYN)
    client.send_data(sid, b"abc")
    assert client.data_to_send() == data_frame(sid, b"abc")
    opaque = client.ping()
    assert client.data_to_send() == ping(opaque)
    client.close_stream(sid)
    assert client.data_to_send() == window_update(sid, 0, Flag.FIN)
    client.go_away(GoAwayCode.INTERNAL_ERROR)
    assert client.data_to_send() == go_away(GoAwayCode.INTERNAL_ERROR)
    server = YamuxSession(is_client=False)
    server.receive_data(window_update(1, 0, Flag.SYN) + ping(9))
    assert server.data_to_send() == window_update(1, 0, Flag.ACK) + pong(9)


# --- header parse ---------------------------------------------------------------------------------------


def test_parse_header_reads_every_field() -> None:
    header = parse_header(spec("00 01 0006 00000004 00000010"))
    assert header == FrameHeader(0, FrameType.WINDOW_UPDATE, Flag.ACK | Flag.FIN, 4, 16)
    assert header.type is FrameType.WINDOW_UPDATE
    assert Flag.FIN in header.flags and Flag.SYN not in header.flags


def test_parse_header_at_an_offset_ignores_what_follows() -> None:
    wire = b"xx" + ping(5) + b"trailing"
    assert parse_header(wire, 2) == FrameHeader(0, FrameType.PING, Flag.SYN, 0, 5)


@pytest.mark.parametrize("size", range(HEADER_LEN))
def test_parse_header_of_short_input_raises(size: int) -> None:
    with pytest.raises(YamuxError, match=f"needs 12 bytes, got {size}"):
        parse_header(go_away()[:size])
    with pytest.raises(YamuxError, match="needs 12 bytes"):
        parse_header(b"z" * 20 + go_away()[:size], 20)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(spec("01 00 0000 00000001 00000000"), "unsupported yamux version 1", id="version-1"),
        pytest.param(spec("ff 02 0001 00000000 00000000"), "unsupported yamux version 255", id="version-255"),
        pytest.param(spec("00 04 0000 00000000 00000000"), "unknown yamux frame type 4", id="type-4"),
        pytest.param(spec("00 ff 0000 00000000 00000000"), "unknown yamux frame type 255", id="type-255"),
    ],
)
def test_parse_header_of_garbage_raises(raw: bytes, reason: str) -> None:
    with pytest.raises(YamuxError, match=reason):
        parse_header(raw)


def test_parse_header_keeps_flag_bits_the_spec_does_not_define() -> None:
    header = parse_header(spec("00 00 8011 00000001 00000000"))
    assert int(header.flags) == 0x8011 and Flag.SYN in header.flags


@given(st.binary(min_size=0, max_size=40))
def test_parse_header_of_any_bytes_returns_the_header_or_raises_yamux_error(raw: bytes) -> None:
    try:
        header = parse_header(raw)
    except YamuxError:
        assert len(raw) < HEADER_LEN or raw[0] != 0 or raw[1] > 3
        return
    fields = (header.version, header.type, header.flags, header.stream_id, header.length)
    assert HEADER_STRUCT.pack(*fields) == raw[:HEADER_LEN]


# --- the stream state machine: the table --------------------------------------------------------------

S, I = StreamState, StreamInput  # noqa: E741
LIVE = [s for s in S if s not in (S.CLOSED, S.RESET)]

STREAM_CASES = [
    # ACK of a stream we opened, whatever FIN went first
    (S.SYN_SENT, I.ACK_RECEIVED, S.ESTABLISHED),
    (S.SYN_SENT_LOCAL_CLOSED, I.ACK_RECEIVED, S.LOCAL_CLOSED),
    (S.SYN_SENT_REMOTE_CLOSED, I.ACK_RECEIVED, S.REMOTE_CLOSED),
    # FIN, ours then theirs
    (S.ESTABLISHED, I.FIN_SENT, S.LOCAL_CLOSED),
    (S.LOCAL_CLOSED, I.FIN_RECEIVED, S.CLOSED),
    # FIN, theirs then ours
    (S.ESTABLISHED, I.FIN_RECEIVED, S.REMOTE_CLOSED),
    (S.REMOTE_CLOSED, I.FIN_SENT, S.CLOSED),
    # FIN before the ACK, either way
    (S.SYN_SENT, I.FIN_SENT, S.SYN_SENT_LOCAL_CLOSED),
    (S.SYN_SENT, I.FIN_RECEIVED, S.SYN_SENT_REMOTE_CLOSED),
    (S.SYN_SENT_LOCAL_CLOSED, I.FIN_RECEIVED, S.CLOSED),
    (S.SYN_SENT_REMOTE_CLOSED, I.FIN_SENT, S.CLOSED),
    # RST either way from every live state
    *[(state, rst, S.RESET) for state in LIVE for rst in (I.RST_SENT, I.RST_RECEIVED)],
]

STREAM_NO_CHANGE = [
    # a repeated FIN, either way
    (S.LOCAL_CLOSED, I.FIN_SENT),
    (S.SYN_SENT_LOCAL_CLOSED, I.FIN_SENT),
    (S.REMOTE_CLOSED, I.FIN_RECEIVED),
    (S.SYN_SENT_REMOTE_CLOSED, I.FIN_RECEIVED),
    # an ACK for a stream acknowledged already (or inbound)
    (S.ESTABLISHED, I.ACK_RECEIVED),
    (S.LOCAL_CLOSED, I.ACK_RECEIVED),
    (S.REMOTE_CLOSED, I.ACK_RECEIVED),
    # nothing leaves an end state
    *[(end, event) for end in (S.CLOSED, S.RESET) for event in I],
]


@pytest.mark.parametrize(("state", "event", "expected"), STREAM_CASES)
def test_stream_transition(state: StreamState, event: StreamInput, expected: StreamState) -> None:
    assert next_stream_state(state, event) is expected


@pytest.mark.parametrize(("state", "event"), STREAM_NO_CHANGE)
def test_stream_input_that_changes_nothing(state: StreamState, event: StreamInput) -> None:
    assert next_stream_state(state, event) is None


def test_stream_cases_cover_every_pair() -> None:
    listed = {(s, e) for s, e, _ in STREAM_CASES} | set(STREAM_NO_CHANGE)
    assert listed == {(s, e) for s in S for e in I}
    assert set(STREAM_TRANSITIONS) == {(s, e) for s, e, _ in STREAM_CASES}


# --- the stream state machine: literal frames through a session ----------------------------------------


def acked_client() -> tuple[YamuxSession, int]:
    client = YamuxSession(is_client=True)
    sid = client.open_stream()
    client.data_to_send()
    assert client.stream_state(sid) is S.SYN_SENT
    assert client.receive_data(window_update(sid, 0, Flag.ACK)) == [StreamAcked(sid)]
    assert client.stream_state(sid) is S.ESTABLISHED
    return client, sid


def test_fin_ours_then_theirs() -> None:
    client, sid = acked_client()
    client.close_stream(sid)
    assert client.stream_state(sid) is S.LOCAL_CLOSED
    assert client.receive_data(data_frame(sid, b"late", Flag.FIN))[-1] == StreamEnded(sid)
    assert client.stream_state(sid) is None and not client.has_stream(sid)  # CLOSED: forgotten


def test_fin_theirs_then_ours() -> None:
    client, sid = acked_client()
    assert client.receive_data(window_update(sid, 0, Flag.FIN)) == [StreamEnded(sid)]
    assert client.stream_state(sid) is S.REMOTE_CLOSED
    assert client.receive_data(window_update(sid, 0, Flag.FIN)) == []  # a repeated FIN is harmless
    client.send_data(sid, b"still allowed")
    client.close_stream(sid)
    assert client.stream_state(sid) is None


def test_rst_received() -> None:
    client, sid = acked_client()
    assert client.receive_data(window_update(sid, 0, Flag.RST)) == [StreamReset(sid)]
    assert client.stream_state(sid) is None


def test_rst_sent() -> None:
    client, sid = acked_client()
    client.reset_stream(sid)
    assert client.data_to_send() == window_update(sid, 0, Flag.RST)
    assert client.stream_state(sid) is None


def test_ack_after_our_fin_still_acks() -> None:
    client = YamuxSession(is_client=True)
    sid = client.open_stream()
    client.close_stream(sid)
    assert client.stream_state(sid) is S.SYN_SENT_LOCAL_CLOSED
    assert client.receive_data(window_update(sid, 0, Flag.ACK)) == [StreamAcked(sid)]
    assert client.stream_state(sid) is S.LOCAL_CLOSED


def test_ack_and_fin_in_one_frame() -> None:
    client = YamuxSession(is_client=True)
    sid = client.open_stream()
    assert client.receive_data(window_update(sid, 0, Flag.FIN)) == [StreamEnded(sid)]
    assert client.stream_state(sid) is S.SYN_SENT_REMOTE_CLOSED
    assert client.receive_data(window_update(sid, 0, Flag.ACK | Flag.FIN)) == [StreamAcked(sid)]
    assert client.stream_state(sid) is S.REMOTE_CLOSED


def test_inbound_stream_starts_established() -> None:
    server = YamuxSession(is_client=False)
    assert server.receive_data(window_update(1, 0, Flag.SYN)) == [StreamOpened(1)]
    assert server.stream_state(1) is S.ESTABLISHED


def test_stream_transitions_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="mimirlite.wire.yamux"):
        acked_client()
    assert "yamux stream 1: SYN_SENT -> ESTABLISHED" in caplog.messages
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mimirlite.wire.yamux"):
        acked_client()
    assert not caplog.records


# --- the session state machine --------------------------------------------------------------------------

SS, SI = SessionState, SessionInput

SESSION_CASES = [
    (SS.OPEN, SI.GO_AWAY_SENT, SS.GO_AWAY_SENT),
    (SS.OPEN, SI.GO_AWAY_RECEIVED, SS.GO_AWAY_RECEIVED),
    (SS.GO_AWAY_SENT, SI.GO_AWAY_RECEIVED, SS.DRAINING),
    (SS.GO_AWAY_RECEIVED, SI.GO_AWAY_SENT, SS.DRAINING),
    *[(state, SI.FAILURE, SS.FAILED) for state in SS if state is not SS.FAILED],
]


@pytest.mark.parametrize(("state", "event", "expected"), SESSION_CASES)
def test_session_transition(state: SessionState, event: SessionInput, expected: SessionState) -> None:
    assert next_session_state(state, event) is expected


def test_session_pairs_not_listed_change_nothing() -> None:
    assert set(SESSION_TRANSITIONS) == {(s, e) for s, e, _ in SESSION_CASES}
    for state in SS:
        for event in SI:
            if (state, event) not in SESSION_TRANSITIONS:
                assert next_session_state(state, event) is None


def test_session_states_through_frames(caplog: pytest.LogCaptureFixture) -> None:
    server = YamuxSession(is_client=False)
    assert server.state is SS.OPEN
    with caplog.at_level(logging.DEBUG, logger="mimirlite.wire.yamux"):
        server.go_away()
    assert server.state is SS.GO_AWAY_SENT
    assert any(m.endswith("OPEN -> GO_AWAY_SENT") for m in caplog.messages)
    assert server.receive_data(go_away(GoAwayCode.NORMAL)) == [GoAwayReceived(0)]
    assert server.state is SS.DRAINING
    assert server.receive_data(go_away(GoAwayCode.INTERNAL_ERROR)) == []  # a second GoAway changes nothing
    with pytest.raises(YamuxError, match="unknown yamux frame type 4"):
        server.receive_data(spec("00 04 0000 00000000 00000000"))
    assert server.state is SS.FAILED and server.is_closed
    assert server.data_to_send().endswith(go_away(GoAwayCode.PROTOCOL_ERROR))


def test_which_way_data_may_flow_in_each_stream_state() -> None:
    we_sent_no_fin = {S.SYN_SENT, S.SYN_SENT_REMOTE_CLOSED, S.ESTABLISHED, S.REMOTE_CLOSED}
    they_sent_no_fin = {S.SYN_SENT, S.SYN_SENT_LOCAL_CLOSED, S.ESTABLISHED, S.LOCAL_CLOSED}
    assert {s for s in S if s.sending} == we_sent_no_fin
    assert {s for s in S if s.receiving} == they_sent_no_fin
    assert {s for s in S if s.ended} == {S.CLOSED, S.RESET}
