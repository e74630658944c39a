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

from mimirlite import Connection, Host, HostConfig, KeyPair, Stream
from mimirlite.errors import DialError, PeerIdMismatchError, StreamResetError
from mimirlite.wire import noise, yamux
from mimirlite.wire.lp import MAX_MESSAGE, encode_message
from mimirlite.wire.multistream import MultistreamDialer, encode_line
from mimirlite.wire.noise import STATIC_KEY_PREFIX, NoiseTransport
from mimirlite.wire.varint import encode_uvarint
from mimirlite.wire.yamux import (
    GO_AWAY_PROTOCOL_ERROR,
    GoAwayReceived,
)
from mimirlite.wire.yamux_frames import FrameType
from tests.helpers import ECHO, echo_handler
from tests.helpers.frames import HEADER, noise_frame
from tests.helpers.frames import yamux_frame as yamux_header
from tests.helpers.rawpeer import (
    SINK,
    RawNoise,
    RawPeer,
    disconnected,
    echo_on,
    echo_round_trip,
    forgotten,
    port_of,
    settled,
    sink_handler,
    well_behaved_peer,
)
from tests.helpers.waiting import TIMEOUT

JSON_ECHO = "/json-echo/1.0.0"


# --- handlers ----------------------------------------------------------------------------------


async def json_echo(stream: Stream) -> None:
    """Answer every LP-JSON message with itself, until the remote closes."""
    while (message := await stream.read_json()) is not None:
        await stream.write_json(message)


# --- helpers -----------------------------------------------------------------------------------


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
        initiator = RawNoise()
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
        initiator = RawNoise()
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
    initiator = RawNoise()
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
    initiator = RawNoise()
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
            initiator = RawNoise()
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
