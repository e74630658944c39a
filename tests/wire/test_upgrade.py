"""The sans-IO connection upgrade: two upgraders back to back with no sockets, literal times, and one
driving a real socket against today's Host to show the wire bytes are those of net/connection.py."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimirlite import Host, HostConfig, KeyPair, Stream
from mimirlite.errors import (
    DecodeError,
    HandshakeError,
    HandshakeTimeoutError,
    LocalError,
    MultistreamError,
    PeerIdMismatchError,
    ProtocolNotSupportedError,
)
from mimirlite.wire import yamux
from mimirlite.wire.multistream import MULTISTREAM_PROTOCOL, MultistreamDialer, encode_line
from mimirlite.wire.noise import NOISE_PROTOCOL, NoiseHandshake, NoiseTransport
from mimirlite.wire.upgrade import (
    END_STATES,
    PeerAuthenticated,
    StepCompleted,
    Upgraded,
    UpgradeEvent,
    UpgradeFailed,
    Upgrader,
    UpgradeState,
)

KEY_D = KeyPair.generate()
KEY_L = KeyPair.generate()
HEADER = encode_line(MULTISTREAM_PROTOCOL)
YAMUX = yamux.YAMUX_PROTOCOL
APP_FROM_LISTENER = b"yamux frames the listener sends with its muxer answer"
APP_FROM_DIALER = b"yamux frames the dialer sends once upgraded"
STEP = 5.0
FIRST_BYTE = 3.0
ECHO = "/echo/1.0.0"


def upgrader(initiator: bool, now: float = 0.0, **kwargs: object) -> Upgrader:
    options: dict[str, object] = {"step_timeout": STEP, "first_byte_timeout": FIRST_BYTE, **kwargs}
    key = KEY_D if initiator else KEY_L
    return Upgrader(key, initiator=initiator, now=now, **options)  # type: ignore[arg-type]


class End:
    """One side of a back-to-back exchange: its upgrader, then the transport it hands over."""

    def __init__(self, up: Upgrader, app: bytes) -> None:
        self.up = up
        self.app = app  # sent through the transport as soon as this side is upgraded
        self.events: list[UpgradeEvent] = []
        self.transport: NoiseTransport | None = None
        self.received = bytearray()  # plaintext after the upgrade: Upgraded.leftover, then the transport's
        self.sent = 0  # bytes of this side's stream handed over so far
        self.flights: list[int] = []
        self.cuts: set[int] = set()

    def take(self) -> bytes:
        out = self.up.data_to_send()
        if self.transport is not None and self.app:
            out += self.transport.encrypt(self.app)
            self.app = b""
        if out:
            self.flights.append(len(out))
        return out

    def feed(self, data: bytes, now: float) -> None:
        if self.transport is not None:
            self.received += b"".join(self.transport.receive_data(data))
            return
        events = self.up.receive_data(memoryview(bytearray(data)), now)  # a view of a buffer it must copy
        self.events += events
        for ev in events:
            if isinstance(ev, Upgraded):
                self.transport = ev.transport
                self.received += ev.leftover

    def kinds(self) -> list[type]:
        return [type(ev) for ev in self.events]


def pieces(out: bytes, start: int, cuts: set[int], one_byte: bool) -> Iterator[bytes]:
    if one_byte:
        yield from (out[i : i + 1] for i in range(len(out)))
        return
    bounds = [0, *sorted(c - start for c in cuts if start < c < start + len(out)), len(out)]
    for a, b in itertools.pairwise(bounds):
        yield out[a:b]


def exchange(d: End, listener: End, *, one_byte: bool = False, now: float = 1.0) -> None:
    """Deliver each side's bytes to the other until neither has anything to send."""
    while True:
        moved = False
        for src, dst in ((d, listener), (listener, d)):
            out = src.take()
            if out:
                moved = True
                for chunk in pieces(out, src.sent, src.cuts, one_byte):
                    dst.feed(chunk, now)
                src.sent += len(out)
        if not moved:
            return


def pair(**kwargs: object) -> tuple[End, End]:
    return End(upgrader(True, **kwargs), b""), End(upgrader(False), APP_FROM_LISTENER)


def check_upgraded(d: End, listener: End) -> None:
    for end, peer, steps in ((d, KEY_L.peer_id, 3), (listener, KEY_D.peer_id, 4)):
        kinds = end.kinds()
        assert UpgradeFailed not in kinds, end.events
        assert kinds.count(PeerAuthenticated) == 1
        assert kinds[-1] is Upgraded and kinds.count(Upgraded) == 1
        assert kinds.index(PeerAuthenticated) < kinds.index(Upgraded)
        assert kinds.count(StepCompleted) >= steps
        assert end.up.state is UpgradeState.UPGRADED
        assert end.up.remote_peer == peer
        assert end.up.get_timer() is None
        upgraded = end.events[-1]
        assert isinstance(upgraded, Upgraded) and upgraded.peer_id == peer
    assert bytes(d.received) == APP_FROM_LISTENER  # the listener's frames came with its muxer answer
    assert bytes(listener.received) == APP_FROM_DIALER


def run_pair(cut_side: str | None = None, cut: int = 0, one_byte: bool = False) -> tuple[End, End]:
    d, listener = pair(expected_peer=KEY_L.peer_id)
    if cut_side is not None:
        (d if cut_side == "dialer" else listener).cuts = {cut}
    exchange(d, listener, one_byte=one_byte)
    # once upgraded the dialer speaks through its transport
    d.app = APP_FROM_DIALER
    exchange(d, listener, one_byte=one_byte)
    return d, listener


# ---- the happy path, in pieces ----


def test_back_to_back_events_and_flights() -> None:
    d, listener = run_pair()
    check_upgraded(d, listener)
    assert d.kinds() == [StepCompleted, StepCompleted, PeerAuthenticated, StepCompleted, Upgraded]
    assert listener.kinds() == [
        StepCompleted,
        StepCompleted,
        StepCompleted,
        PeerAuthenticated,
        StepCompleted,
        Upgraded,
    ]
    # dialer: multistream header+proposal, Noise message 1, message 3 with the muxer proposal, app data
    # listener: multistream answer, Noise message 2, the muxer answer with its first frames
    assert len(d.flights) == 4
    assert len(listener.flights) == 3


def test_dialer_queues_its_proposal_at_construction() -> None:
    assert upgrader(True).data_to_send() == HEADER + encode_line(NOISE_PROTOCOL)
    assert upgrader(False).data_to_send() == b""


def test_last_noise_message_and_muxer_proposal_leave_together() -> None:
    d, listener = End(upgrader(True), b""), End(upgrader(False), b"")
    listener.feed(d.take(), 1.0)
    d.feed(listener.take(), 1.0)
    listener.feed(d.take(), 1.0)  # message 1
    d.feed(listener.take(), 1.0)  # message 2: the dialer is authenticated and proposes the muxer
    assert d.up.state is UpgradeState.MUXER
    last = d.up.data_to_send()
    length = last[0] << 8 | last[1]
    proposal = last[2 + length :]
    assert len(proposal) == 2 + len(HEADER + encode_line(YAMUX)) + 16  # one Noise message
    assert d.up.data_to_send() == b""


@pytest.mark.parametrize("side", ["dialer", "listener"])
def test_split_at_every_offset(side: str) -> None:
    d, listener = run_pair()
    total = (d if side == "dialer" else listener).sent
    assert total > 200
    for cut in range(1, total):
        check_upgraded(*run_pair(side, cut))


def test_one_byte_at_a_time() -> None:
    check_upgraded(*run_pair(one_byte=True))


def test_responder_keeps_frames_pipelined_after_the_muxer_proposal() -> None:
    listener = upgrader(False)
    transport = raw_initiator_to_muxer(listener)
    events = listener.receive_data(transport.encrypt(HEADER + encode_line(YAMUX) + b"first yamux frame"), 3.0)
    assert [type(e) for e in events] == [StepCompleted, Upgraded]
    upgraded = events[-1]
    assert isinstance(upgraded, Upgraded) and upgraded.leftover == b"first yamux frame"
    assert b"".join(transport.receive_data(listener.data_to_send())) == HEADER + encode_line(YAMUX)
    with pytest.raises(LocalError):
        listener.receive_data(b"later bytes belong to the transport", 4.0)
    assert listener.receive_eof() == []
    assert listener.handle_timer(100.0) == []


# ---- a raw initiator built from the sub-cores, to reach each phase of a responding Upgrader ----


def raw_initiator_to_muxer(listener: Upgrader, key: KeyPair = KEY_D) -> NoiseTransport:
    """Run multistream and Noise against ``listener`` (responder) by hand; it is left in MUXER."""
    ms = MultistreamDialer([NOISE_PROTOCOL])
    assert listener.receive_data(ms.data_to_send(), 1.0) == [StepCompleted()]
    ms.receive_data(listener.data_to_send())
    assert ms.selected == NOISE_PROTOCOL
    hs = NoiseHandshake(key, initiator=True, expected_peer=KEY_L.peer_id)
    assert listener.receive_data(hs.data_to_send(), 2.0) == [StepCompleted()]
    hs.receive_data(listener.data_to_send())
    assert hs.complete
    transport = hs.transport()
    events = listener.receive_data(hs.data_to_send(), 3.0)
    assert events == [StepCompleted(), PeerAuthenticated(key.peer_id)]
    assert listener.state is UpgradeState.MUXER
    return transport


def failed(events: list[UpgradeEvent], error: type[Exception]) -> Exception:
    assert len(events) >= 1
    last = events[-1]
    assert isinstance(last, UpgradeFailed), events
    assert type(last.reason) is error, last.reason
    return last.reason


def test_noise_message_pipelined_after_the_proposal() -> None:
    listener = upgrader(False)
    hs = NoiseHandshake(KEY_D, initiator=True)
    events = listener.receive_data(HEADER + encode_line(NOISE_PROTOCOL) + hs.data_to_send(), 1.0)
    assert events == [StepCompleted(), StepCompleted()]  # the proposal answered, then message 1
    out = listener.data_to_send()
    answer = HEADER + encode_line(NOISE_PROTOCOL)
    assert out.startswith(answer)
    hs.receive_data(out[len(answer) :])  # message 2
    assert hs.complete and hs.remote_peer == KEY_L.peer_id


def test_unsupported_proposal_is_refused_then_noise_agreed() -> None:
    listener = upgrader(False)
    events = listener.receive_data(HEADER + encode_line("/tls/1.0.0"), 1.0)
    assert events == [StepCompleted()]
    assert listener.data_to_send() == HEADER + encode_line("na")
    assert listener.state is UpgradeState.SECURITY
    assert listener.receive_data(encode_line(NOISE_PROTOCOL), 2.0) == [StepCompleted()]
    assert listener.state is UpgradeState.HANDSHAKE


def test_unsupported_muxer_is_refused_inside_noise() -> None:
    listener = upgrader(False)
    transport = raw_initiator_to_muxer(listener)
    assert listener.receive_data(transport.encrypt(HEADER + encode_line("/mplex/6.7.0")), 4.0) == [
        StepCompleted()
    ]
    assert b"".join(transport.receive_data(listener.data_to_send())) == HEADER + encode_line("na")
    events = listener.receive_data(transport.encrypt(encode_line(YAMUX)), 5.0)
    assert [type(e) for e in events] == [StepCompleted, Upgraded]


def test_dialer_refused_noise() -> None:
    d = upgrader(True)
    events = d.receive_data(HEADER + encode_line("na"), 1.0)
    failed(events, ProtocolNotSupportedError)
    assert d.state is UpgradeState.FAILED


def test_too_many_refused_proposals() -> None:
    listener = upgrader(False)
    failed(listener.receive_data(HEADER + encode_line("/nope") * 33, 1.0), MultistreamError)


@pytest.mark.parametrize("initiator", [True, False])
def test_garbage_in_security(initiator: bool) -> None:
    up = upgrader(initiator)
    up.data_to_send()
    failed(up.receive_data(b"\x05GET /", 1.0), MultistreamError)
    assert up.data_to_send() == b""
    assert up.receive_data(HEADER, 2.0) == []  # ignored once failed
    assert up.get_timer() is None


def test_garbage_in_handshake_responder() -> None:
    listener = upgrader(False)
    events = listener.receive_data(HEADER + encode_line(NOISE_PROTOCOL) + b"\x00\x01x", 1.0)
    assert [type(e) for e in events] == [StepCompleted, UpgradeFailed]
    assert "message 1 has 1 bytes" in str(failed(events, HandshakeError))
    # what the steps before the failure produced may still be sent; never the failing step's answer
    assert listener.data_to_send() == HEADER + encode_line(NOISE_PROTOCOL)


def test_garbage_in_handshake_initiator() -> None:
    d = upgrader(True)
    d.data_to_send()
    assert d.receive_data(HEADER + encode_line(NOISE_PROTOCOL), 1.0) == [StepCompleted()]
    assert d.state is UpgradeState.HANDSHAKE
    failed(d.receive_data(b"\x00\xa0" + bytes(160), 2.0), HandshakeError)


def test_garbage_in_muxer_responder() -> None:
    listener = upgrader(False)
    transport = raw_initiator_to_muxer(listener)
    failed(listener.receive_data(transport.encrypt(b"\x05hello"), 4.0), MultistreamError)


def test_tampered_ciphertext_in_muxer_initiator() -> None:
    d, listener = End(upgrader(True), b""), End(upgrader(False), b"")
    for _ in range(2):
        listener.feed(d.take(), 1.0)
        d.feed(listener.take(), 1.0)
    assert d.up.state is UpgradeState.MUXER
    failed(d.up.receive_data(b"\x00\x20" + bytes(32), 2.0), DecodeError)


def test_peer_id_mismatch() -> None:
    d = End(upgrader(True, expected_peer=KeyPair.generate().peer_id), b"")
    listener = End(upgrader(False), b"")
    exchange(d, listener)
    assert PeerAuthenticated not in d.kinds()
    error = failed(d.events, PeerIdMismatchError)
    assert isinstance(error, PeerIdMismatchError) and error.actual == KEY_L.peer_id
    assert d.up.state is UpgradeState.FAILED
    # message 3 was never sent: the listener still waits for it
    assert listener.up.state is UpgradeState.HANDSHAKE
    assert d.flights == [len(HEADER + encode_line(NOISE_PROTOCOL)), 34]


# ---- end of stream ----


def test_eof_in_each_phase() -> None:
    message = "connection closed during the upgrade"
    up = upgrader(False)
    assert up.state is UpgradeState.SECURITY
    assert str(failed(up.receive_eof(), HandshakeError)) == message

    up = upgrader(False)
    up.receive_data(HEADER + encode_line(NOISE_PROTOCOL), 1.0)
    assert up.state is UpgradeState.HANDSHAKE
    assert str(failed(up.receive_eof(), HandshakeError)) == message
    assert up.receive_eof() == []

    up = upgrader(False)
    raw_initiator_to_muxer(up)
    assert up.state is UpgradeState.MUXER
    assert str(failed(up.receive_eof(), HandshakeError)) == message
    assert up.state is UpgradeState.FAILED and up.get_timer() is None


# ---- deadlines, with literal times ----


def test_first_byte_deadline() -> None:
    listener = upgrader(False, now=100.0)
    assert listener.get_timer() == 103.0
    assert listener.handle_timer(102.9) == []
    reason = failed(listener.handle_timer(103.0), HandshakeTimeoutError)
    assert isinstance(reason, HandshakeTimeoutError)
    assert reason.kind == "first_byte_timeout"
    assert str(reason) == "nothing received for 3 s (first_byte_timeout)"
    assert listener.get_timer() is None
    assert listener.handle_timer(200.0) == []


def test_a_first_byte_leaves_the_step_deadline() -> None:
    listener = upgrader(False, now=100.0)
    assert listener.receive_data(HEADER[:1], 101.0) == []  # heard, but no step completed
    assert listener.get_timer() == 105.0  # counted from the start of the step
    reason = failed(listener.handle_timer(105.0), HandshakeTimeoutError)
    assert isinstance(reason, HandshakeTimeoutError) and reason.kind == "handshake_step_timeout"
    assert str(reason) == "upgrade step not completed in 5 s (handshake_step_timeout)"


def test_first_byte_deadline_only_when_shorter() -> None:
    listener = upgrader(False, now=10.0, first_byte_timeout=STEP)
    assert listener.get_timer() == 15.0
    reason = failed(listener.handle_timer(15.0), HandshakeTimeoutError)
    assert isinstance(reason, HandshakeTimeoutError) and reason.kind == "handshake_step_timeout"
    assert upgrader(True, now=10.0).get_timer() == 15.0  # a dialer has no first-byte deadline


def test_each_step_restarts_the_deadline() -> None:
    d = End(upgrader(True, now=0.0), b"")
    listener = End(upgrader(False, now=0.0), b"")
    assert d.up.get_timer() == 5.0
    listener.feed(d.take(), 1.0)  # multistream answered at 1
    assert listener.up.get_timer() == 6.0
    d.feed(listener.take(), 2.0)  # agreed at 2
    assert d.up.get_timer() == 7.0
    first = d.take()  # Noise message 1
    listener.feed(first[:10], 4.0)  # part of a message is no step
    assert listener.up.get_timer() == 6.0
    assert listener.up.handle_timer(5.99) == []
    listener.feed(first[10:], 5.5)
    assert listener.events[-1] == StepCompleted()
    assert listener.up.get_timer() == 10.5
    d.feed(listener.take(), 6.0)  # message 2: authenticated, the muxer proposed
    assert d.up.state is UpgradeState.MUXER and d.up.get_timer() == 11.0
    failed(d.up.handle_timer(11.0), HandshakeTimeoutError)


def test_late_bytes_before_the_timer_fires_still_count() -> None:
    listener = upgrader(False, now=0.0)
    assert listener.receive_data(HEADER + encode_line(NOISE_PROTOCOL), 4.0) == [StepCompleted()]
    assert listener.get_timer() == 9.0


# ---- arbitrary bytes never raise ----


@settings(max_examples=300)
@given(
    initiator=st.booleans(),
    phase=st.sampled_from(["security", "handshake", "muxer", "muxer-encrypted"]),
    chunks=st.lists(st.binary(max_size=300), max_size=6),
)
def test_arbitrary_bytes_only_fail(initiator: bool, phase: str, chunks: list[bytes]) -> None:
    transport: NoiseTransport | None = None
    if phase.startswith("muxer"):  # a responder: the raw initiator brings it there
        up = upgrader(False)
        transport = raw_initiator_to_muxer(up)
    else:
        up = upgrader(initiator)
        if phase == "handshake":
            up.receive_data(HEADER + encode_line(NOISE_PROTOCOL), 1.0)
            assert up.state is UpgradeState.HANDSHAKE
    ended = False
    for i, chunk in enumerate(chunks):
        data = transport.encrypt(chunk) if phase == "muxer-encrypted" and transport is not None else chunk
        events = up.receive_data(data, 10.0 + i)
        up.data_to_send()
        if ended:
            assert events == []
        for ev in events:
            assert isinstance(ev, (StepCompleted, UpgradeFailed, Upgraded)), ev
            if isinstance(ev, UpgradeFailed):
                ended = True
        if up.state in END_STATES:
            ended = True
        if up.state is UpgradeState.UPGRADED:
            return
    events = up.receive_eof()
    if not ended:
        failed(events, HandshakeError)


# ---- the same wire bytes as net/connection.py, over real TCP ----


async def drive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upgrader) -> Upgraded:
    """A minimal shell: feed what the socket gives, process the events, transmit."""
    loop = asyncio.get_running_loop()
    writer.write(up.data_to_send())
    authenticated = False
    while True:
        data = await asyncio.wait_for(reader.read(65536), 10.0)
        events = up.receive_data(data, loop.time()) if data else up.receive_eof()
        for ev in events:
            if isinstance(ev, UpgradeFailed):
                raise ev.reason
            if isinstance(ev, PeerAuthenticated):
                authenticated = True
            if isinstance(ev, Upgraded):
                assert authenticated
                writer.write(up.data_to_send())
                return ev
        writer.write(up.data_to_send())


async def echo_over_yamux(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upgraded: Upgraded, *, is_client: bool
) -> bytes:
    """Open a yamux stream over the upgraded transport, select the echo protocol, send hello."""
    transport = upgraded.transport
    session = yamux.YamuxSession(is_client=is_client)
    expected = HEADER + encode_line(ECHO) + b"hello"
    got = bytearray()
    plaintexts = [upgraded.leftover] if upgraded.leftover else []
    sid = session.open_stream()
    session.send_data(sid, expected)
    while True:
        for plaintext in plaintexts:
            for ev in session.receive_data(plaintext):
                if isinstance(ev, yamux.DataReceived) and ev.stream_id == sid:
                    got += ev.data
                    session.consumed(sid, len(ev.data))
        out = session.data_to_send()
        if out:
            writer.write(transport.encrypt(out))
        if len(got) >= len(expected):
            return bytes(got)
        data = await asyncio.wait_for(reader.read(65536), 10.0)
        assert data, "the host closed the connection"
        plaintexts = transport.receive_data(data)


async def echo_handler(stream: Stream) -> None:
    while data := await stream.read():
        await stream.write(data)


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    async with Host(KEY_L, listen=["/ip4/127.0.0.1/tcp/0"], config=HostConfig()) as h:
        h.set_handler(ECHO, echo_handler)
        yield h


async def test_upgrader_dials_a_real_host(host: Host) -> None:
    port = int(host.listen_addrs[0].split("/")[4])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        up = Upgrader(
            KEY_D,
            initiator=True,
            now=asyncio.get_running_loop().time(),
            expected_peer=host.peer_id,
            step_timeout=STEP,
            first_byte_timeout=FIRST_BYTE,
        )
        upgraded = await drive(reader, writer, up)
        assert upgraded.peer_id == host.peer_id
        echoed = await echo_over_yamux(reader, writer, upgraded, is_client=True)
        assert echoed == HEADER + encode_line(ECHO) + b"hello"
        assert host.connections[KEY_D.peer_id].remote_peer == KEY_D.peer_id
    finally:
        writer.close()


async def test_real_host_dials_an_upgrader(host: Host) -> None:
    done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up = Upgrader(
                KEY_D,
                initiator=False,
                now=asyncio.get_running_loop().time(),
                step_timeout=STEP,
                first_byte_timeout=FIRST_BYTE,
            )
            upgraded = await drive(reader, writer, up)
            assert upgraded.peer_id == host.peer_id
            done.set_result(await echo_over_yamux(reader, writer, upgraded, is_client=False))
        except BaseException as exc:  # reported to the test through the future
            if not done.done():
                done.set_exception(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        conn = await host.dial(f"/ip4/127.0.0.1/tcp/{port}/p2p/{KEY_D.peer_id}")
        assert conn.remote_peer == KEY_D.peer_id
        assert await asyncio.wait_for(done, 10.0) == HEADER + encode_line(ECHO) + b"hello"
    finally:
        server.close()
        await server.wait_closed()



def test_prepare_makes_a_responders_handshake_once_its_answer_is_out() -> None:
    d, listener = pair(expected_peer=KEY_L.peer_id)
    listener.feed(d.take(), 1.0)  # the dialer's multistream header and /noise proposal
    assert listener.up.state is UpgradeState.HANDSHAKE
    d.feed(listener.take(), 1.0)  # its answer leaves before any handshake work...
    assert listener.up._handshake is None  # ...which is made lazily: by prepare(), or by message 1
    listener.up.prepare()
    made = listener.up._handshake
    assert made is not None
    listener.up.prepare()  # idempotent
    assert listener.up._handshake is made
    exchange(d, listener)
    d.app = APP_FROM_DIALER
    exchange(d, listener)
    check_upgraded(d, listener)
    listener.up.prepare()  # a no-op once upgraded
    assert listener.up.state is UpgradeState.UPGRADED


def test_a_responder_without_prepare_makes_its_handshake_when_message_one_comes() -> None:
    check_upgraded(*run_pair())  # run_pair never calls prepare()
