"""Raw peers: a bare TCP client on 127.0.0.1 that puts whatever bytes a test wants on the wire
(:class:`RawPeer`, driven by mimirlite's sans-IO cores), one side of Noise XX run on noiseprotocol so
its payloads can lie (:class:`RawNoise`), the handlers a host under attack serves, and the checks that
a host it offended is left clean (:func:`settled`, :func:`forgotten`, :func:`echo_round_trip`)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from noise.connection import Keypair, NoiseConnection

from mimirlite import Connection, Host, KeyPair, PeerId, Stream
from mimirlite.net.addr import parse_multiaddr
from mimirlite.wire import noise, yamux
from mimirlite.wire.multistream import MultistreamDialer
from mimirlite.wire.noise import NOISE_PROTOCOL_NAME, STATIC_KEY_PREFIX, NoiseHandshake, NoiseTransport
from mimirlite.wire.protobuf import encode_bytes_field
from mimirlite.wire.yamux import DataReceived, PongReceived, YamuxEvent, YamuxSession
from tests.helpers import ECHO
from tests.helpers.frames import noise_frame, split_noise_frames
from tests.helpers.waiting import TIMEOUT, until

SINK = "/sink/1.0.0"
FIREHOSE = "/firehose/1.0.0"
CHUNK = 64 * 1024
"""Bytes :func:`firehose` writes at a time."""


# --- handlers of a host under attack --------------------------------------------------------------


async def sink_handler(stream: Stream) -> None:
    """Never read (so the stream's receive window only shrinks); return when the connection ends."""
    await asyncio.shield(stream.connection.closed)


async def firehose(stream: Stream) -> None:
    """Write until the stream or its connection ends."""
    chunk = bytes(CHUNK)
    while True:
        await stream.write(chunk)


# --- a host left clean -------------------------------------------------------------------------


def port_of(host: Host) -> int:
    return parse_multiaddr(host.listen_addrs[0]).port


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


async def echo_on(stream: Stream, payload: bytes = b"ping") -> None:
    """``payload`` echoed back on ``stream`` (bounded wait)."""
    await stream.write(payload)
    assert await asyncio.wait_for(stream.read_exactly(len(payload)), TIMEOUT) == payload


async def echo_round_trip(server: Host, payload: bytes = b"still serving") -> None:
    """A well-behaved peer dials ``server``, echoes ``payload`` and disconnects cleanly."""
    async with well_behaved_peer(server) as peer:
        stream = await asyncio.wait_for(peer.new_stream(server.listen_addrs[0], ECHO), TIMEOUT)
        await echo_on(stream, payload)
        await stream.close_write()
        assert await asyncio.wait_for(stream.read(), TIMEOUT) == b""


# --- raw peers ---------------------------------------------------------------------------------


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


class RawNoise:
    """One side of Noise XX run straight on noiseprotocol (an implementation independent of mimirlite's),
    so its payloads can lie: in memory (:meth:`write` / :meth:`read`) or, as initiator, over a
    :class:`RawPeer`'s socket (:meth:`run_until_message_3`)."""

    def __init__(self, *, initiator: bool = True) -> None:
        static = X25519PrivateKey.generate()
        self.static_public = static.public_key().public_bytes_raw()
        self.conn = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
        self.conn.set_keypair_from_private_bytes(Keypair.STATIC, static.private_bytes_raw())
        if initiator:
            self.conn.set_as_initiator()
        else:
            self.conn.set_as_responder()
        self.conn.start_handshake()
        self.state = self.conn.noise_protocol.handshake_state

    def write(self, payload: bytes = b"") -> bytes:
        """The next handshake message carrying ``payload``, framed."""
        return noise_frame(bytes(self.conn.write_message(payload)))

    def read(self, wire: bytes) -> bytes:
        """The payload of the one framed handshake message in ``wire``."""
        (message,) = split_noise_frames(wire)
        return bytes(self.conn.read_message(message))

    def signed_payload(self, signer: Any, *, extra: bytes = b"") -> bytes:
        """The libp2p handshake payload: ``signer``'s public key and its signature over our static key
        (``signer``: a KeyPair or any object with ``public_key`` and ``sign``), then ``extra``."""
        return (
            encode_bytes_field(1, signer.public_key.to_protobuf())
            + encode_bytes_field(2, signer.sign(STATIC_KEY_PREFIX + self.static_public))
            + extra
        )

    async def run_until_message_3(self, raw: RawPeer) -> None:
        """Over ``raw``: select /noise, send message 1, read and decrypt the host's message 2."""
        assert await raw.select(noise.NOISE_PROTOCOL) == b""
        raw.send(self.write())
        self.conn.read_message(await raw.recv_noise_message())

    def message_3(self, identity: KeyPair, signature: bytes) -> bytes:
        """Message 3 claiming ``identity`` with ``signature`` (true or not), framed."""
        payload = encode_bytes_field(1, identity.public_key.to_protobuf()) + encode_bytes_field(2, signature)
        return self.write(payload)


async def attacker(server: Host, session: YamuxSession | None = None) -> tuple[RawPeer, Connection]:
    """A RawPeer through the whole upgrade with ``server`` (its own yamux ``session`` if given), and
    ``server``'s side of that connection."""
    raw = await RawPeer.connect(server)
    if session is not None:
        raw.session = session
    await raw.secure(server.peer_id)
    await until(lambda: raw.keypair.peer_id in server.connections)
    return raw, server.connections[raw.keypair.peer_id]
