"""Fuzz YamuxSession.receive_data (mimirlite/wire/yamux.py), both roles, between local API calls.

Input: a mode byte (bit 0: 1 = client/dialer, 0 = server; ``mode >> 1`` picks a YamuxConfig), then
yamux records (``fuzzlib.yamux_records``): received bytes, or a local call (open a stream, send,
consume, close, reset, ping, go away) as the glue makes them.
Invariants: a session that failed keeps failing and has queued a GoAway; stream counts agree with
the streams tracked; windows never go negative nor above the configured receive window; inbound
streams have the remote's parity; no data arrives for a stream after its FIN or reset.
"""

from __future__ import annotations

import contextlib

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

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
        DataReceived,
        StreamEnded,
        StreamOpened,
        StreamReset,
        StreamState,
        YamuxConfig,
        YamuxSession,
    )
    from mimirlite.wire.yamux_frames import GoAwayCode, go_away

CONFIGS = [
    YamuxConfig(),
    YamuxConfig(max_streams=2, max_receive_frame=1024, max_frame_data=100),
    YamuxConfig(initial_window=2 * INITIAL_WINDOW, max_streams=0),
]
_SEND_BUDGET = 1 << 22
"""Bytes the local side may send per input (sends past it send nothing), to bound the work."""
_LOCAL_REFUSALS = (ConnectionClosedError, LimitExceededError, LocalError, StreamClosedError, StreamResetError)


def _apply(session: YamuxSession, op: int, arg: int, sel: int, budget: list[int]) -> None:
    sid = fuzzlib.pick_stream(list(session._streams), sel)
    if op == fuzzlib.OP_OPEN:
        session.open_stream()
    elif op in (fuzzlib.OP_SEND, fuzzlib.OP_SEND_MANY):
        size = min(arg if op == fuzzlib.OP_SEND else arg * 64, budget[0])
        budget[0] -= session.send_data(sid, b"s" * size if op == fuzzlib.OP_SEND else bytearray(size))
    elif op == fuzzlib.OP_CONSUMED:
        session.consumed(sid, arg)
    elif op == fuzzlib.OP_CLOSE:
        session.close_stream(sid)
    elif op == fuzzlib.OP_RESET:
        session.reset_stream(sid)
    elif op == fuzzlib.OP_PING:
        session.ping()
    else:
        session.go_away(arg)


def _check_state(session: YamuxSession) -> None:
    streams = session._streams
    fuzzlib.check(session._inbound >= 0 and session._outbound >= 0, "negative stream count")
    fuzzlib.check(session._inbound + session._outbound == len(streams), "stream counts disagree")
    for sid, st in streams.items():
        ended = st.state in (StreamState.CLOSED, StreamState.RESET)
        fuzzlib.check(st.sid == sid and not ended, "tracked stream is dead or misfiled", sid)
        fuzzlib.check(st.recv_window >= 0 and st.send_window >= 0, "negative window", sid)
        fuzzlib.check(st.recv_window <= session._initial_window, "granted more than the window", sid)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    is_client = bool(data[0] & 1)
    session = YamuxSession(is_client=is_client, config=CONFIGS[(data[0] >> 1) % len(CONFIGS)])
    remote_parity = 0 if is_client else 1
    ended: set[int] = set()  # streams the remote finished (FIN or RST) and that were not reopened
    budget = [_SEND_BUDGET]
    for rec in fuzzlib.yamux_records(data[1:]):
        if isinstance(rec, tuple):
            with contextlib.suppress(*_LOCAL_REFUSALS):
                _apply(session, *rec, budget)
        else:
            try:
                events = session.receive_data(rec)
            except YamuxError:
                fuzzlib.check(session.is_closed, "session failed but is not closed")
                fuzzlib.check(
                    session.data_to_send().endswith(go_away(GoAwayCode.PROTOCOL_ERROR)),
                    "no GoAway(protocol error) queued after a failure",
                )
                try:
                    session.receive_data(b"")
                except YamuxError:
                    return
                raise fuzzlib.InvariantError("a failed session accepted more data") from None
            for ev in events:
                if isinstance(ev, StreamOpened):
                    fuzzlib.check(ev.stream_id & 1 == remote_parity, "inbound stream with our parity")
                    ended.discard(ev.stream_id)
                elif isinstance(ev, DataReceived):
                    fuzzlib.check(ev.data, "empty DataReceived", ev.stream_id)
                    fuzzlib.check(ev.stream_id not in ended, "data after the remote's FIN or RST")
                elif isinstance(ev, (StreamEnded, StreamReset)):
                    ended.add(ev.stream_id)
        session.data_to_send()
        _check_state(session)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
