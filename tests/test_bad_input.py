"""Bad input on real sockets: the offender's stream or connection ends with one logged reason, the host
keeps serving well-behaved peers, and nothing is left behind (connections, tasks).

Misbehaving peers are bare TCP clients on 127.0.0.1 driven by the sans-IO cores (or by noiseprotocol
directly), so any byte can be put on the wire at any stage of the upgrade or inside the yamux session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
from collections.abc import AsyncIterator, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from noise.connection import Keypair, NoiseConnection

from mimirlite import Connection, Host, HostConfig, KeyPair, PeerId, Stream
from mimirlite.errors import DialError, PeerIdMismatchError, StreamResetError
from mimirlite.net.addr import parse_multiaddr
from mimirlite.wire import noise, yamux
from mimirlite.wire.lp import MAX_MESSAGE, encode_message
from mimirlite.wire.multistream import MULTISTREAM_PROTOCOL as MULTISTREAM
from mimirlite.wire.multistream import MultistreamDialer, encode_line
from mimirlite.wire.noise import NOISE_PROTOCOL_NAME, STATIC_KEY_PREFIX, NoiseHandshake, NoiseTransport
from mimirlite.wire.protobuf import encode_bytes_field
from mimirlite.wire.varint import encode_uvarint
from mimirlite.wire.yamux import (
    GO_AWAY_PROTOCOL_ERROR,
    DataReceived,
    GoAwayReceived,
    PongReceived,
    YamuxEvent,
    YamuxSession,
)
from mimirlite.wire.yamux_frames import HEADER_STRUCT, FrameType

from .conftest import ECHO, echo_handler

TIMEOUT = 5.0
"""Upper bound on every wait; a healthy run never gets near it."""
SINK = "/sink/1.0.0"
JSON_ECHO = "/json-echo/1.0.0"
HEADER = encode_line(MULTISTREAM)


# --- handlers ----------------------------------------------------------------------------------


async def sink_handler(stream: Stream) -> None:
    """Never read (so the stream's receive window only shrinks); return when the connection ends."""
    await asyncio.shield(stream.connection.closed)


async def json_echo(stream: Stream) -> None:
    """Answer every LP-JSON message with itself, until the remote closes."""
    while (message := await stream.read_json()) is not None:
        await stream.write_json(message)


# --- helpers -----------------------------------------------------------------------------------


def noise_frame(message: bytes) -> bytes:
    return struct.pack(">H", len(message)) + message


def yamux_header(ftype: int, flags: int, sid: int, length: int) -> bytes:
    return HEADER_STRUCT.pack(0, ftype, flags, sid, length)


def port_of(host: Host) -> int:
    return parse_multiaddr(host.listen_addrs[0]).port


def logged(caplog: pytest.LogCaptureFixture, *fragments: str, level: int = logging.INFO) -> list[str]:
    """mimirlite log messages at ``level`` or above containing every fragment; at least one expected."""
    found = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("mimirlite")
        and r.levelno >= level
        and all(f in r.getMessage() for f in fragments)
    ]
    assert found, f"nothing logged with {fragments}: {[r.getMessage() for r in caplog.records]}"
    return found


async def settled(host: Host) -> None:
    """Every task ``host`` spawned finishes by itself (bounded wait), and no handshake is pending."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while host._tasks:
        _, pending = await asyncio.wait(set(host._tasks), timeout=max(0.0, deadline - loop.time()))
        assert not pending, f"host tasks still running: {pending}"
    assert host._pending_inbound == 0


def disconnected(host: Host, peer: PeerId) -> asyncio.Future[None]:
    """Resolves when ``host`` forgets its connection to ``peer``."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_disconnected(conn: Connection) -> None:
        if conn.remote_peer == peer and not fut.done():
            fut.set_result(None)

    host.on_disconnected.append(on_disconnected)
    return fut


def forgotten(host: Host, peer: PeerId) -> None:
    """``host`` keeps no connection to ``peer``."""
    assert peer not in host.connections
    assert all(c.remote_peer != peer for c in host._all_conns)


@contextlib.asynccontextmanager
async def well_behaved_peer(server: Host) -> AsyncIterator[Host]:
    """A second Host; on exit it stops and ``server`` is seen dropping its connection."""
    async with Host() as peer:
        gone = disconnected(server, peer.peer_id)
        yield peer
        connected = peer.peer_id in server.connections
    if connected:
        await asyncio.wait_for(gone, TIMEOUT)
    forgotten(server, peer.peer_id)


async def echo_on(stream: Stream, payload: bytes) -> None:
    await stream.write(payload)
    assert await asyncio.wait_for(stream.read_exactly(len(payload)), TIMEOUT) == payload


async def echo_round_trip(server: Host, payload: bytes = b"still serving") -> None:
    """A well-behaved peer dials ``server``, echoes ``payload`` and disconnects cleanly."""
    async with well_behaved_peer(server) as peer:
        stream = await asyncio.wait_for(peer.new_stream(server.listen_addrs[0], ECHO), TIMEOUT)
        await echo_on(stream, payload)
        await stream.close_write()
        assert await asyncio.wait_for(stream.read(), TIMEOUT) == b""


class RawPeer:
    """A bare TCP client on loopback that puts whatever bytes a test wants on the wire."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.keypair = KeyPair.generate()
        self.noise: NoiseTransport | None = None
        self.session = YamuxSession(is_client=True)
        self._plaintext: list[bytes] = []

    @classmethod
    async def connect(cls, host: Host) -> RawPeer:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port_of(host)), TIMEOUT)
        return cls(reader, writer)

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    # raw bytes

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self) -> bytes:
        """The next bytes from the host; ``b""`` once it has closed (or reset) the connection."""
        try:
            return await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
        except ConnectionResetError:
            return b""

    async def recv_exactly(self, n: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), TIMEOUT)

    async def closed_by_host(self) -> bytes:
        """Whatever the host still sends until it closes the connection (bounded wait)."""
        chunks = []
        while data := await self.recv():
            chunks.append(data)
        return b"".join(chunks)

    async def recv_noise_message(self) -> bytes:
        (length,) = struct.unpack(">H", await self.recv_exactly(2))
        return await self.recv_exactly(length)

    # the upgrade, done right

    async def select(self, protocol: str) -> bytes:
        """multistream-select ``protocol`` in clear text; returns bytes read past the answer."""
        ms = MultistreamDialer([protocol])
        self.send(ms.data_to_send())
        while ms.selected is None:
            data = await self.recv()
            assert data, "host closed during multistream-select"
            ms.receive_data(data)
        return ms.leftover

    async def noise_handshake(self, expected: PeerId) -> None:
        """Select /noise and run the handshake as initiator."""
        pending = await self.select(noise.NOISE_PROTOCOL)
        hs = NoiseHandshake(self.keypair, initiator=True, expected_peer=expected)
        self.send(hs.data_to_send())
        while not hs.complete:
            data = pending or await self.recv()
            assert data, "host closed during the noise handshake"
            pending = b""
            hs.receive_data(data)
        self.send(hs.data_to_send())
        self.noise = hs.transport()
        self._plaintext += self.noise.receive_data(b"")

    async def secure(self, expected: PeerId, *, pipelined: bytes = b"") -> None:
        """The whole upgrade: Noise, then ``/yamux/1.0.0`` with ``pipelined`` right behind the proposal."""
        await self.noise_handshake(expected)
        ms = MultistreamDialer([yamux.YAMUX_PROTOCOL])
        self.send_plain(ms.data_to_send() + pipelined)
        while ms.selected is None:
            plaintext = await self.recv_plain()
            assert plaintext, "host closed during muxer negotiation"
            ms.receive_data(plaintext)
        if ms.leftover:  # yamux frames that came with the answer
            self._plaintext.insert(0, ms.leftover)

    def send_plain(self, data: bytes) -> None:
        assert self.noise is not None
        self.send(self.noise.encrypt(data))

    async def recv_plain(self) -> bytes:
        """The next decrypted bytes; ``b""`` once the host has closed."""
        assert self.noise is not None
        while not self._plaintext:
            data = await self.recv()
            if not data:
                return b""
            self._plaintext += self.noise.receive_data(data)
        out = b"".join(self._plaintext)
        self._plaintext.clear()
        return out

    # yamux, through our own session

    def flush(self) -> None:
        out = self.session.data_to_send()
        if out:
            self.send_plain(out)

    async def events(self) -> list[YamuxEvent] | None:
        """Events from the host's next frames; None once it has closed."""
        plaintext = await self.recv_plain()
        if not plaintext:
            return None
        events = self.session.receive_data(plaintext)
        self.flush()
        return events

    async def open(self, protocol: str) -> int:
        """Open a yamux stream and negotiate ``protocol`` on it."""
        sid = self.session.open_stream()
        ms = MultistreamDialer([protocol])
        self.session.send_data(sid, ms.data_to_send())
        self.flush()
        while ms.selected is None:
            events = await self.events()
            assert events is not None, "host closed during stream negotiation"
            for ev in events:
                if isinstance(ev, DataReceived) and ev.stream_id == sid:
                    ms.receive_data(ev.data)
        return sid

    async def ping(self) -> None:
        """A yamux ping answered: the host is still processing this connection."""
        opaque = self.session.ping()
        self.flush()
        while True:
            events = await self.events()
            assert events is not None, "host closed instead of answering a ping"
            if PongReceived(opaque) in events:
                return

    async def events_until_closed(self) -> list[YamuxEvent]:
        out: list[YamuxEvent] = []
        while (events := await self.events()) is not None:
            out += events
        return out


class RawNoiseInitiator:
    """The initiator side of Noise XX run straight on noiseprotocol, so its payloads can lie."""

    def __init__(self) -> None:
        static = X25519PrivateKey.generate()
        self.static_public = static.public_key().public_bytes_raw()
        self.conn = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
        self.conn.set_keypair_from_private_bytes(Keypair.STATIC, static.private_bytes_raw())
        self.conn.set_as_initiator()
        self.conn.start_handshake()

    async def run_until_message_3(self, raw: RawPeer) -> None:
        """Select /noise, send message 1, read and decrypt the host's message 2."""
        assert await raw.select(noise.NOISE_PROTOCOL) == b""
        raw.send(noise_frame(bytes(self.conn.write_message(b""))))
        self.conn.read_message(await raw.recv_noise_message())

    def message_3(self, identity: KeyPair, signature: bytes) -> bytes:
        payload = encode_bytes_field(1, identity.public_key.to_protobuf()) + encode_bytes_field(2, signature)
        return noise_frame(bytes(self.conn.write_message(payload)))


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
async def server(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Host]:
    """The host under attack; at the end, none of its tasks or connections may still be around."""
    caplog.set_level(logging.DEBUG, logger="mimirlite")
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        host.set_handler(ECHO, echo_handler)
        host.set_handler(SINK, sink_handler)
        host.set_handler(JSON_ECHO, json_echo)
        yield host
        await settled(host)
        assert not host._all_conns
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("mimirlite") and not t.done()]


# --- 1. garbage instead of multistream-select ---------------------------------------------------


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        pytest.param(random.Random(7).randbytes(2048), "", id="random-bytes"),
        pytest.param(encode_line("/multistream/2.0.0"), "unexpected multistream header", id="bad-header"),
        pytest.param(b"\xff" * 16, "varint longer than 9 bytes", id="overlong-varint"),
        pytest.param(b"\x80\x10" + b"x" * 2100, "out of range", id="line-too-long"),
        pytest.param(b"\x13/multistream/1.0.0\r", "does not end with a newline", id="no-newline"),
        pytest.param(HEADER + encode_line("/tls/1.0.0") * 33, "refused proposals", id="proposal-flood"),
    ],
)
async def test_garbage_instead_of_multistream(
    server: Host, caplog: pytest.LogCaptureFixture, garbage: bytes, reason: str
) -> None:
    raw = await RawPeer.connect(server)
    raw.send(garbage)
    # the host hangs up by itself: our write side is still open
    await raw.closed_by_host()
    messages = logged(caplog, "failed to upgrade", reason, level=logging.WARNING)
    assert len(messages) == 1
    await settled(server)
    await echo_round_trip(server)
    await raw.aclose()


async def test_garbage_then_hang_up_mid_line(server: Host, caplog: pytest.LogCaptureFixture) -> None:
    raw = await RawPeer.connect(server)
    raw.send(HEADER[:7])
    raw.writer.write_eof()
    await raw.closed_by_host()
    reason = "connection closed during the upgrade"
    assert len(logged(caplog, "failed to upgrade", reason, level=logging.WARNING)) == 1
    await settled(server)
    await echo_round_trip(server)
    await raw.aclose()


# --- 2. oversized and truncated Noise handshake messages ----------------------------------------


@pytest.mark.parametrize("message", [1, 3])
async def test_oversized_noise_handshake_message(
    server: Host, caplog: pytest.LogCaptureFixture, message: int
) -> None:
    raw = await RawPeer.connect(server)
    if message == 1:
        assert await raw.select(noise.NOISE_PROTOCOL) == b""
        raw.send(b"\xff\xff" + bytes(100))
        reason = "noise handshake message 1 has 65535 bytes, expected 32..4128"
    else:
        initiator = RawNoiseInitiator()
        await initiator.run_until_message_3(raw)
        raw.send(struct.pack(">H", 4161) + bytes(100))
        reason = "noise handshake message 3 has 4161 bytes, expected 64..4160"
    assert await raw.closed_by_host() == b""
    assert len(logged(caplog, "failed to upgrade", reason, level=logging.WARNING)) == 1
    await settled(server)
    await echo_round_trip(server)
    await raw.aclose()


@pytest.mark.parametrize("message", [1, 3])
async def test_truncated_noise_handshake_message(
    server: Host, caplog: pytest.LogCaptureFixture, message: int
) -> None:
    raw = await RawPeer.connect(server)
    if message == 1:
        assert await raw.select(noise.NOISE_PROTOCOL) == b""
        whole = noise_frame(bytes(32))
    else:
        initiator = RawNoiseInitiator()
        await initiator.run_until_message_3(raw)
        whole = initiator.message_3(
            raw.keypair, raw.keypair.sign(STATIC_KEY_PREFIX + initiator.static_public)
        )
    raw.send(whole[: len(whole) // 2])
    raw.writer.write_eof()
    assert await raw.closed_by_host() == b""
    reason = "connection closed during the upgrade"
    assert len(logged(caplog, "failed to upgrade", reason, level=logging.WARNING)) == 1
    await settled(server)
    await echo_round_trip(server)
    await raw.aclose()


# --- 3. a handshake signature that does not verify ----------------------------------------------


def _sign_other_static_key(identity: KeyPair, static_public: bytes) -> bytes:
    other = X25519PrivateKey.generate().public_key().public_bytes_raw()
    return identity.sign(STATIC_KEY_PREFIX + other)


def _sign_with_other_identity(identity: KeyPair, static_public: bytes) -> bytes:
    return KeyPair.generate().sign(STATIC_KEY_PREFIX + static_public)


def _flip_a_bit(identity: KeyPair, static_public: bytes) -> bytes:
    signature = bytearray(identity.sign(STATIC_KEY_PREFIX + static_public))
    signature[10] ^= 0x04
    return bytes(signature)


@pytest.mark.parametrize("make_signature", [_sign_other_static_key, _sign_with_other_identity, _flip_a_bit])
async def test_bad_handshake_signature(
    server: Host, caplog: pytest.LogCaptureFixture, make_signature: Callable[[KeyPair, bytes], bytes]
) -> None:
    raw = await RawPeer.connect(server)
    initiator = RawNoiseInitiator()
    await initiator.run_until_message_3(raw)
    raw.send(initiator.message_3(raw.keypair, make_signature(raw.keypair, initiator.static_public)))
    assert await raw.closed_by_host() == b""
    reason = "noise handshake static key signature does not verify"
    assert len(logged(caplog, "failed to upgrade", reason, level=logging.WARNING)) == 1
    await settled(server)
    forgotten(server, raw.keypair.peer_id)
    await echo_round_trip(server)
    await raw.aclose()


async def test_correct_signature_through_the_same_raw_initiator_is_accepted(server: Host) -> None:
    """Control for the test above: the hand-built message 3, signed properly, upgrades fine."""
    raw = await RawPeer.connect(server)
    initiator = RawNoiseInitiator()
    await initiator.run_until_message_3(raw)
    raw.send(initiator.message_3(raw.keypair, raw.keypair.sign(STATIC_KEY_PREFIX + initiator.static_public)))
    assert initiator.conn.handshake_finished
    transport = NoiseTransport(
        bytes(initiator.conn.noise_protocol.cipher_state_encrypt.k),
        bytes(initiator.conn.noise_protocol.cipher_state_decrypt.k),
    )
    ms = MultistreamDialer([yamux.YAMUX_PROTOCOL])
    raw.send(transport.encrypt(ms.data_to_send()))
    while ms.selected is None:
        for plaintext in transport.receive_data(await raw.recv()):
            ms.receive_data(plaintext)
    assert raw.keypair.peer_id in server.connections
    gone = disconnected(server, raw.keypair.peer_id)
    await raw.aclose()
    await asyncio.wait_for(gone, TIMEOUT)


# --- 4. dialing with the wrong peer ID ----------------------------------------------------------


async def test_wrong_peer_id(server: Host, caplog: pytest.LogCaptureFixture) -> None:
    other = KeyPair.generate().peer_id
    async with well_behaved_peer(server) as client:
        with pytest.raises(PeerIdMismatchError) as info:
            await client.dial(f"/ip4/127.0.0.1/tcp/{port_of(server)}/p2p/{other}")
        assert str(info.value) == f"dialed {other} but remote proved {server.peer_id}"
        assert info.value.expected == other and info.value.actual == server.peer_id
        assert not client.connections and not client._all_conns and not client._dialing
        await settled(client)
        # the listener saw the dialer hang up after message 2, logged it and forgot it
        await settled(server)
        reason = "connection closed during the upgrade"
        assert len(logged(caplog, "failed to upgrade", reason, level=logging.WARNING)) == 1
        forgotten(server, client.peer_id)
        # and it is unharmed: the same dialer, with the right ID, gets through
        stream = await client.new_stream(server.listen_addrs[0], ECHO)
        await echo_on(stream, b"right id")
        await stream.close_write()
        assert await asyncio.wait_for(stream.read(), TIMEOUT) == b""


# --- the host as the dialer, against a misbehaving listener -------------------------------------


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        pytest.param(encode_line("hello"), "unexpected multistream header 'hello'", id="garbage-multistream"),
        pytest.param(
            HEADER + encode_line(noise.NOISE_PROTOCOL) + b"\xff\xff",
            "noise handshake message 2 has 65535 bytes",
            id="oversized-message-2",
        ),
    ],
)
async def test_dialing_a_misbehaving_listener(
    server: Host, caplog: pytest.LogCaptureFixture, answer: bytes, reason: str
) -> None:
    async def bad_listener(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # the dialer's header and proposal
        writer.write(answer)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the dialer hangs up
        writer.close()

    bad = await asyncio.start_server(bad_listener, "127.0.0.1", 0)
    port = bad.sockets[0].getsockname()[1]
    try:
        async with well_behaved_peer(server) as client:
            with pytest.raises(DialError, match=reason):
                await client.dial(f"/ip4/127.0.0.1/tcp/{port}")
            logged(caplog, "dial", "failed", reason, level=logging.DEBUG)
            assert not client._all_conns
            await settled(client)
            # the same host still dials and serves a good peer
            stream = await client.new_stream(server.listen_addrs[0], ECHO)
            await echo_on(stream, b"fine")
            await stream.close_write()
            assert await asyncio.wait_for(stream.read(), TIMEOUT) == b""
    finally:
        bad.close()
        await bad.wait_closed()


# --- 5. yamux violations after a real upgrade ---------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        pytest.param(
            lambda sid, window: yamux_header(0x7F, 0, 0, 0), "unknown yamux frame type 127", id="unknown-type"
        ),
        pytest.param(
            lambda sid, window: yamux_header(FrameType.DATA, 0, sid, 16 * 1024 * 1024 + 1),
            "data frame of 16777217 bytes exceeds 16777216",
            id="above-frame-limit",
        ),
        pytest.param(
            lambda sid, window: yamux_header(FrameType.DATA, 0, sid, window + 1),
            "overruns stream 1 window",
            id="above-window",
        ),
    ],
)
async def test_yamux_violation_ends_only_that_connection(
    server: Host, caplog: pytest.LogCaptureFixture, frame: Callable[[int, int], bytes], reason: str
) -> None:
    async with well_behaved_peer(server) as good:
        good_stream = await good.new_stream(server.listen_addrs[0], ECHO)
        await echo_on(good_stream, b"before")

        raw = await RawPeer.connect(server)
        await raw.secure(server.peer_id)
        assert raw.keypair.peer_id in server.connections
        gone = disconnected(server, raw.keypair.peer_id)
        sid = await raw.open(SINK)
        raw.send_plain(frame(sid, raw.session.send_window(sid)))

        events = await raw.events_until_closed()
        assert events[-1:] == [GoAwayReceived(GO_AWAY_PROTOCOL_ERROR)]
        await asyncio.wait_for(gone, TIMEOUT)
        forgotten(server, raw.keypair.peer_id)
        assert len(logged(caplog, "closing connection", reason, level=logging.WARNING)) == 1

        # the other connection did not notice: same stream, then a new one
        await echo_on(good_stream, b"after")
        await good_stream.close_write()
        assert await asyncio.wait_for(good_stream.read(), TIMEOUT) == b""
        await echo_round_trip(server)
        await raw.aclose()


async def test_window_overrun_ends_only_that_connection(
    server: Host, caplog: pytest.LogCaptureFixture
) -> None:
    async with well_behaved_peer(server) as good:
        good_stream = await good.new_stream(server.listen_addrs[0], ECHO)
        raw = await RawPeer.connect(server)
        await raw.secure(server.peer_id)
        gone = disconnected(server, raw.keypair.peer_id)
        sid = await raw.open(SINK)
        window = raw.session.send_window(sid)
        assert window > 200_000  # the 256 KiB window minus the negotiation bytes
        # exactly the window is fine (the sink never reads, so it grants nothing back) ...
        assert raw.session.send_data(sid, bytes(window)) == window
        raw.flush()
        await raw.ping()
        # ... one byte more is an overrun
        raw.send_plain(yamux_header(FrameType.DATA, 0, sid, 1) + b"!")
        events = await raw.events_until_closed()
        assert events[-1:] == [GoAwayReceived(GO_AWAY_PROTOCOL_ERROR)]
        await asyncio.wait_for(gone, TIMEOUT)
        forgotten(server, raw.keypair.peer_id)
        reason = f"data frame of 1 bytes overruns stream {sid} window 0"
        assert len(logged(caplog, "closing connection", reason, level=logging.WARNING)) == 1

        await echo_on(good_stream, b"unaffected")
        await good_stream.close_write()
        assert await asyncio.wait_for(good_stream.read(), TIMEOUT) == b""
        await raw.aclose()


async def test_yamux_violation_pipelined_with_the_muxer_proposal(
    server: Host, caplog: pytest.LogCaptureFixture
) -> None:
    """A violation in the very first yamux bytes, sent with the proposal: never registered at all."""
    announced: list[Connection] = []
    server.on_connected.append(announced.append)
    raw = await RawPeer.connect(server)
    await raw.secure(server.peer_id, pipelined=yamux_header(0x7F, 0, 0, 0))
    assert await raw.events_until_closed() == [GoAwayReceived(GO_AWAY_PROTOCOL_ERROR)]
    assert (
        len(logged(caplog, "closing connection", "unknown yamux frame type 127", level=logging.WARNING)) == 1
    )
    await settled(server)
    forgotten(server, raw.keypair.peer_id)
    assert announced == []
    await echo_round_trip(server)
    await raw.aclose()


async def test_corrupted_noise_frame_ends_only_that_connection(
    server: Host, caplog: pytest.LogCaptureFixture
) -> None:
    async with well_behaved_peer(server) as good:
        good_stream = await good.new_stream(server.listen_addrs[0], ECHO)
        raw = await RawPeer.connect(server)
        await raw.secure(server.peer_id)
        gone = disconnected(server, raw.keypair.peer_id)
        raw.send(noise_frame(bytes(40)))  # not sealed with the session key
        await raw.closed_by_host()
        await asyncio.wait_for(gone, TIMEOUT)
        forgotten(server, raw.keypair.peer_id)
        reason = "noise transport message failed authentication"
        assert len(logged(caplog, "closing connection", reason, level=logging.WARNING)) == 1
        await echo_on(good_stream, b"unaffected")
        await good_stream.close_write()
        assert await asyncio.wait_for(good_stream.read(), TIMEOUT) == b""
        await raw.aclose()


# --- 6. bad LP-JSON on one stream ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        pytest.param(b"\xff" * 10 + b"{}", "varint longer than 9 bytes", id="overlong-varint"),
        pytest.param(
            encode_uvarint(MAX_MESSAGE + 1) + bytes(100_000),
            f"message of {MAX_MESSAGE + 1} bytes exceeds the {MAX_MESSAGE} byte cap",
            id="over-4-mib",
        ),
        pytest.param(encode_message(b"\xff{not json"), "message is not JSON", id="not-json"),
    ],
)
async def test_bad_lp_json_ends_only_that_stream(
    server: Host, caplog: pytest.LogCaptureFixture, bad: bytes, reason: str
) -> None:
    async with well_behaved_peer(server) as client:
        addr = server.listen_addrs[0]
        healthy = await client.new_stream(addr, JSON_ECHO)
        await healthy.write_json({"n": 1})
        assert await asyncio.wait_for(healthy.read_json(), TIMEOUT) == {"n": 1}

        offender = await client.new_stream(addr, JSON_ECHO)
        assert offender.connection is healthy.connection
        await offender.write(bad)
        with pytest.raises(StreamResetError):
            await asyncio.wait_for(offender.read(), TIMEOUT)
        assert len(logged(caplog, "handler ended", reason)) == 1

        # the same connection's other streams carry on, and new ones open
        assert healthy.connection.is_open
        await healthy.write_json({"n": 2})
        assert await asyncio.wait_for(healthy.read_json(), TIMEOUT) == {"n": 2}
        fresh = await client.new_stream(addr, JSON_ECHO)
        assert fresh.connection is healthy.connection
        await fresh.write_json(["fresh"])
        assert await asyncio.wait_for(fresh.read_json(), TIMEOUT) == ["fresh"]
        for stream in (healthy, fresh):
            await stream.close_write()
            assert await asyncio.wait_for(stream.read_json(), TIMEOUT) is None
        assert list(server.connections) == [client.peer_id]
        await settled(server)


async def test_garbage_stream_negotiation_resets_only_that_stream(
    server: Host, caplog: pytest.LogCaptureFixture
) -> None:
    async with well_behaved_peer(server) as client:
        healthy = await client.new_stream(server.listen_addrs[0], ECHO)
        offender = healthy.connection.open_stream()  # no multistream-select: raw bytes instead
        await offender.write(b"\xff" * 16)
        with pytest.raises(StreamResetError):
            await asyncio.wait_for(offender.read(), TIMEOUT)
        logged(caplog, "inbound negotiation failed", "varint longer than 9 bytes", level=logging.DEBUG)
        assert healthy.connection.is_open
        await echo_on(healthy, b"still here")
        await healthy.close_write()
        assert await asyncio.wait_for(healthy.read(), TIMEOUT) == b""
        await settled(server)


async def test_lone_surrogate_json_is_echoed(server: Host, caplog: pytest.LogCaptureFixture) -> None:
    """Valid JSON text a JS peer can send (half a surrogate pair, escaped): read and written back."""
    async with well_behaved_peer(server) as client:
        stream = await client.new_stream(server.listen_addrs[0], JSON_ECHO)
        await stream.write(encode_message(b'{"text":"\\ud83d"}'))
        assert await asyncio.wait_for(stream.read_json(), TIMEOUT) == {"text": "\ud83d"}
        await stream.close_write()
        assert await asyncio.wait_for(stream.read_json(), TIMEOUT) is None
        await settled(server)
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "handler" in r.getMessage()]


# --- 7. a peer that stalls mid-handshake --------------------------------------------------------


@pytest.mark.parametrize("stage", ["multistream-header", "noise-message-1", "muxer-negotiation"])
async def test_stalled_handshake_times_out(caplog: pytest.LogCaptureFixture, stage: str) -> None:
    caplog.set_level(logging.DEBUG, logger="mimirlite")
    timeout = 0.5
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"], config=HostConfig(handshake_timeout=timeout)) as server:
        server.set_handler(ECHO, echo_handler)
        loop = asyncio.get_running_loop()
        started = loop.time()
        raw = await RawPeer.connect(server)
        if stage == "multistream-header":
            raw.send(HEADER)
            assert await raw.recv_exactly(len(HEADER)) == HEADER
        elif stage == "noise-message-1":
            initiator = RawNoiseInitiator()
            await initiator.run_until_message_3(raw)
        else:
            await raw.noise_handshake(server.peer_id)
        # the host is now waiting on the staller; a good peer connects and echoes meanwhile
        pending_when_good_peer_connected: list[int] = []
        server.on_connected.append(
            lambda conn: pending_when_good_peer_connected.append(server._pending_inbound)
        )
        await echo_round_trip(server)
        assert pending_when_good_peer_connected == [1]

        assert await raw.closed_by_host() == b""
        assert loop.time() - started >= timeout * 0.9
        assert len(logged(caplog, "upgrade timed out", level=logging.WARNING)) == 1
        await settled(server)
        assert not server._all_conns
        await echo_round_trip(server)
        await raw.aclose()


async def test_stop_during_a_stalled_handshake() -> None:
    """Stopping the host ends a handshake still in progress; nothing is left running."""
    server = Host(listen=["/ip4/127.0.0.1/tcp/0"], config=HostConfig(handshake_timeout=4 * TIMEOUT))
    await server.start()
    raw = await RawPeer.connect(server)
    raw.send(HEADER)
    assert await raw.recv_exactly(len(HEADER)) == HEADER
    assert server._pending_inbound == 1
    await asyncio.wait_for(server.stop(), TIMEOUT)
    assert await raw.closed_by_host() == b""
    assert not server._tasks and not server._all_conns and server._pending_inbound == 0
    await raw.aclose()
