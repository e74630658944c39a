"""The relay message codec against the bytes @libp2p/circuit-relay-v2 3.1.7 writes and reads, both ways.

JS -> mimirlite: a mimirlite Host plays a relay with raw hop and stop handlers built on the codec: a JS
relay client (``nat-peer.mjs --reserve``) reserves a slot on it (HOP RESERVE; mimirlite answers STATUS OK
with a reservation and a limit), a second JS peer dials a circuit through it (HOP CONNECT); mimirlite
sends STOP CONNECT to the first, reads its STOP STATUS, answers the HOP STATUS OK and pipes the two
streams: the second JS peer echoes through it.

mimirlite -> JS: mimirlite sends HOP RESERVE to a JS relay server (its STATUS answer: reservation,
voucher, limit) and serves a raw stop handler; a JS peer dials the circuit to mimirlite, so the JS relay
sends STOP CONNECT, mimirlite answers STATUS OK and upgrades the stream into a connection (Noise, yamux)
the JS peer echoes over. mimirlite sends HOP CONNECT to a JS peer with a reservation (STATUS OK, limit;
then a connection mimirlite echoes over), to a peer without one (NO_RESERVATION) and an empty body
(MALFORMED_MESSAGE).

Every body decodes, nothing is dropped, and encodes back to the same bytes. Identities are fixed
(Ed25519 from the seed of 28 zero bytes and the uint32 big-endian N, as ``nat-peer.mjs --key-seed N``):
JS 1 and 2, mimirlite 3. ``RELAY_CAPTURE=path.json python -m pytest interop/test_relay_capture_interop.py``
writes every body seen, as hex, to path.json: the literals of tests/protocols/relay/test_messages.py come
from such a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from jsnat import ECHO_PROTOCOL, JsNatPeer

from mimirlite import Host, KeyPair, PeerId, Stream
from mimirlite.errors import ClosedError, StreamResetError
from mimirlite.identity import PublicKey
from mimirlite.net.connection import Connection
from mimirlite.net.stream import StreamState
from mimirlite.net.transport import StreamTransport
from mimirlite.protocols.identify import Identify
from mimirlite.protocols.relay import (
    HOP_PROTOCOL,
    STOP_PROTOCOL,
    HopMessage,
    HopType,
    Limit,
    RelayLimits,
    RelayPeer,
    Reservation,
    Status,
    StopMessage,
    StopType,
    decode_hop,
    decode_stop,
    encode_hop,
    encode_stop,
)
from mimirlite.wire import lp
from mimirlite.wire.multiaddr import Multiaddr
from mimirlite.wire.protobuf import iter_fields
from mimirlite.wire.varint import encode_uvarint
from tests.helpers.waiting import until

pytestmark = [
    pytest.mark.usefixtures("no_leaks"),
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

JS_SEED, JS2_SEED, PY_SEED, RELAY2_SEED, FAKE_SEED = 1, 2, 3, 4, 9
LIMITS = RelayLimits()
TIMEOUT = 10.0
# what the mimirlite "relay" grants: an hour, go-libp2p's default limits (2 min, 128 KiB)
PY_LIMIT = Limit(duration=120, data=1 << 17)
PY_EXPIRE = 1_800_000_000  # a fixed expiry (2027-01-15), so the captured bytes do not depend on the clock
# the signed envelope (libp2p specs RFC 0002) of a reservation voucher
VOUCHER_DOMAIN = b"libp2p-relay-rsvp"
VOUCHER_PAYLOAD_TYPE = b"\x03\x02"


def seeded_keypair(n: int) -> KeyPair:
    """The identity of ``nat-peer.mjs --key-seed n``."""
    return KeyPair(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(28) + n.to_bytes(4, "big")))


def _captured(name: str, body: bytes) -> None:
    path = os.environ.get("RELAY_CAPTURE")
    if not path:
        return
    data: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        data = json.load(f)
    data[name] = body.hex()
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)


def hop_round_trip(body: bytes, name: str) -> HopMessage:
    _captured(name, body)
    msg, dropped = decode_hop(body, LIMITS)
    assert dropped == 0
    assert encode_hop(msg) == body
    return msg


def stop_round_trip(body: bytes, name: str) -> StopMessage:
    _captured(name, body)
    msg, dropped = decode_stop(body, LIMITS)
    assert dropped == 0
    assert encode_stop(msg) == body
    return msg


async def read_body(stream: Stream) -> bytes:
    body = await asyncio.wait_for(stream.read_message(LIMITS.max_message_size), TIMEOUT)
    assert body is not None, "the stream ended before a message"
    return body


async def pump(src: Stream, dst: Stream) -> None:
    """Copy ``src`` into ``dst`` until its end, then half-close ``dst``."""
    with contextlib.suppress(ClosedError):
        while data := await src.read():
            await dst.write(data)
        await dst.close_write()


async def echo(stream: Stream) -> None:
    """The echo protocol: everything read until EOF, written back, then EOF."""
    data = await stream.read_all()
    await stream.write(data)
    await stream.close_write()


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    async with Host(seeded_keypair(PY_SEED), listen=["/ip4/127.0.0.1/tcp/0"]) as h:
        Identify(h)
        h.set_handler(ECHO_PROTOCOL, echo)
        yield h


async def test_seeded_identities_match_the_js_peer() -> None:
    async with await JsNatPeer.start(key_seed=JS_SEED) as js:
        assert js.peer_id == str(seeded_keypair(JS_SEED).peer_id)


# ---------------------------------------------------------------- JS -> mimirlite (mimirlite the relay)


@dataclass
class MiniRelay:
    """A mimirlite host's raw hop handler: records what JS sends, grants every RESERVE, relays CONNECTs
    to peers connected to it."""

    host: Host
    hop_bodies: list[bytes] = field(default_factory=list)
    stop_answers: list[bytes] = field(default_factory=list)
    reserve_stream_ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, stream: Stream) -> None:
        body = await read_body(stream)
        self.hop_bodies.append(body)
        msg = decode_hop(body, LIMITS)[0]
        if msg.type is HopType.RESERVE:
            addr = Multiaddr.parse(self.host.listen_addrs[0]).without_peer_id()
            ok = HopMessage(
                HopType.STATUS, reservation=Reservation(PY_EXPIRE, (addr,)), limit=PY_LIMIT, status=Status.OK
            )
            await stream.write(lp.encode_message(encode_hop(ok)))
            # the JS client closes its hop stream once it has read the answer
            assert await asyncio.wait_for(stream.read_message(), TIMEOUT) is None
            self.reserve_stream_ended.set()
            return
        assert msg.type is HopType.CONNECT and msg.peer is not None
        src = stream.remote_peer
        target = self.host.connections[msg.peer.peer]
        stop = await self.host.open_on(target, STOP_PROTOCOL)
        async with stop:
            connect = StopMessage(StopType.CONNECT, peer=RelayPeer(src), limit=PY_LIMIT)
            await stop.write(lp.encode_message(encode_stop(connect)))
            answer = await read_body(stop)
            self.stop_answers.append(answer)
            assert decode_stop(answer, LIMITS)[0].status is Status.OK
            ok = HopMessage(HopType.STATUS, limit=PY_LIMIT, status=Status.OK)
            await stream.write(lp.encode_message(encode_hop(ok)))
            await asyncio.gather(pump(stream, stop), pump(stop, stream))


async def test_js_reserves_and_connects_through_a_mimirlite_relay(host: Host) -> None:
    relay = MiniRelay(host)
    host.set_handler(HOP_PROTOCOL, relay.handle)
    py_addr = host.listen_addrs[0]
    js_id = seeded_keypair(JS_SEED).peer_id
    async with (
        await JsNatPeer.start(key_seed=JS_SEED, reserve=[py_addr]) as target,
        await JsNatPeer.start(key_seed=JS2_SEED, relay_client=True) as source,
    ):
        assert not target.events_named("reserve-failed")
        # the reservation took: the target advertises our address with /p2p-circuit
        circuit = f"{py_addr}/p2p-circuit/p2p/{js_id}"
        assert circuit in await target.current_addrs()
        await asyncio.wait_for(relay.reserve_stream_ended.wait(), TIMEOUT)

        dialed = await source.dial(circuit)
        # our HOP STATUS carried a limit: JS marks the connection limited
        assert dialed == {"peerId": str(js_id), "relayed": True, "limited": True}
        data = b"through the mimirlite relay " * 100
        assert await source.echo(data, peer_id=str(js_id)) == data
        assert not (target.uncaught() or source.uncaught())

    reserve, connect = (hop_round_trip(b, f"js_hop_{i}") for i, b in enumerate(relay.hop_bodies))
    # RESERVE: the type alone (RESERVE is 0, written all the same)
    assert reserve == HopMessage(HopType.RESERVE)
    assert relay.hop_bodies[0] == b"\x08\x00"
    # CONNECT: the target's peer ID and, as its only address, /p2p/<target> (the circuit address's tail)
    assert connect == HopMessage(HopType.CONNECT, peer=RelayPeer(js_id, (Multiaddr.parse(f"/p2p/{js_id}"),)))
    # the target's STOP answer: STATUS OK, nothing else
    [answer] = [stop_round_trip(b, "js_stop_status") for b in relay.stop_answers]
    assert answer == StopMessage(StopType.STATUS, status=Status.OK)


# ---------------------------------------------------------------- mimirlite -> JS (a JS relay)


def voucher_fields(voucher: bytes) -> dict[int, bytes]:
    """The envelope's fields (public_key 1, payload_type 2, payload 3, signature 5)."""
    out: dict[int, bytes] = {}
    for number, _wire, value in iter_fields(voucher):
        assert isinstance(value, bytes)
        out[number] = value
    return out


def check_voucher(voucher: bytes, relay: PeerId, peer: PeerId, expire: int) -> None:
    """The voucher is a signed envelope of a ReservationVoucher {relay, peer, expiration}, signed by
    the relay's key under the domain ``libp2p-relay-rsvp``."""
    env = voucher_fields(voucher)
    assert set(env) == {1, 2, 3, 5}
    key = PublicKey.from_protobuf(env[1])
    assert PeerId.from_public_key(key) == relay
    assert env[2] == VOUCHER_PAYLOAD_TYPE
    payload = {n: v for n, _w, v in iter_fields(env[3])}
    assert payload == {1: relay.to_bytes(), 2: peer.to_bytes(), 3: expire}
    signed = b"".join(encode_uvarint(len(p)) + p for p in (VOUCHER_DOMAIN, env[2], env[3]))
    assert key.verify(signed, env[5])


async def reserve_on(host: Host, relay: JsNatPeer) -> HopMessage:
    conn = await host.dial(relay.addr)
    stream = await host.open_on(conn, HOP_PROTOCOL)
    async with stream:
        request = encode_hop(HopMessage(HopType.RESERVE))
        await stream.write(lp.encode_message(request))
        answer = hop_round_trip(await read_body(stream), "js_relay_reserve_status")
        await stream.close_write()
        # circuit-relay-v2's handleReserve returns without closing its side: the client ends the stream
    return answer


@dataclass
class StopHandler:
    """A mimirlite host's raw stop handler: records the STOP CONNECT, answers OK, upgrades the stream."""

    host: Host
    bodies: list[bytes] = field(default_factory=list)
    upgraded: list[PeerId] = field(default_factory=list)

    async def handle(self, stream: Stream) -> None:
        body = await read_body(stream)
        self.bodies.append(body)
        msg = decode_stop(body, LIMITS)[0]
        assert msg.type is StopType.CONNECT and msg.peer is not None
        await stream.write(lp.encode_message(encode_stop(StopMessage(StopType.STATUS, status=Status.OK))))
        conn = await self.host.upgrade_over(
            StreamTransport(stream), initiator=False, expected_peer=msg.peer.peer
        )
        self.upgraded.append(conn.remote_peer)
        await conn.closed


async def test_mimirlite_reserves_on_a_js_relay_and_is_dialed_through_it(host: Host) -> None:
    stop = StopHandler(host)
    host.set_handler(STOP_PROTOCOL, stop.handle)
    relay_id = seeded_keypair(JS_SEED).peer_id
    js2_id = seeded_keypair(JS2_SEED).peer_id
    async with (
        await JsNatPeer.start(key_seed=JS_SEED, relay_server=True) as relay,
        await JsNatPeer.start(key_seed=JS2_SEED, relay_client=True) as source,
    ):
        before = int(time.time())
        answer = await reserve_on(host, relay)
        assert answer.type is HopType.STATUS and answer.status is Status.OK and answer.peer is None
        assert answer.reservation is not None and answer.reservation.voucher is not None
        # expire: Unix seconds, the relay's reservationTtl (2 h) from now
        assert before + 7200 - 5 <= answer.reservation.expire <= int(time.time()) + 7200 + 5
        # its addresses: its listen address, with /p2p/<relay>
        assert [str(a) for a in answer.reservation.addrs] == [relay.addr]
        check_voucher(answer.reservation.voucher, relay_id, host.peer_id, answer.reservation.expire)
        # the default limit: 128 KiB, and the duration in milliseconds (2 min = 120000), not seconds
        assert answer.limit == Limit(duration=120_000, data=1 << 17)
        await until(lambda: _has_reservation(relay, str(host.peer_id)), TIMEOUT, "the JS relay's reservation")

        dialed = await source.dial(f"{relay.addr}/p2p-circuit/p2p/{host.peer_id}")
        assert dialed == {"peerId": str(host.peer_id), "relayed": True, "limited": True}
        data = b"through the JS relay " * 100
        assert await source.echo(data, peer_id=str(host.peer_id)) == data
        assert stop.upgraded == [js2_id]
        assert not (relay.uncaught() or source.uncaught())

    [connect] = [stop_round_trip(b, "js_relay_stop_connect") for b in stop.bodies]
    # STOP CONNECT: the source's peer ID, no addresses; the reservation's limit
    assert connect == StopMessage(StopType.CONNECT, peer=RelayPeer(js2_id), limit=Limit(120_000, 1 << 17))


async def _has_reservation(relay: JsNatPeer, peer_id: str) -> bool:
    return peer_id in await relay.reservations()


async def hop_request(host: Host, conn: Connection, msg: bytes, name: str) -> tuple[Stream, HopMessage]:
    stream = await host.open_on(conn, HOP_PROTOCOL)
    await stream.write(lp.encode_message(msg))
    return stream, hop_round_trip(await read_body(stream), name)


async def test_mimirlite_connects_through_a_js_relay(host: Host) -> None:
    js2_id = seeded_keypair(JS2_SEED).peer_id
    fake = seeded_keypair(FAKE_SEED).peer_id
    async with (
        await JsNatPeer.start(
            key_seed=JS_SEED, relay_server=True, data_limit=1 << 20, duration_limit=60
        ) as relay,
        await JsNatPeer.start(key_seed=JS2_SEED, reserve=[relay.addr]) as target,
    ):
        assert not target.events_named("reserve-failed")
        assert await relay.reservations() == [str(js2_id)]
        conn = await host.dial(relay.addr)

        # no reservation for that peer
        nobody = encode_hop(HopMessage(HopType.CONNECT, peer=RelayPeer(fake)))
        stream, answer = await hop_request(host, conn, nobody, "js_relay_connect_no_reservation")
        assert answer == HopMessage(HopType.STATUS, status=Status.NO_RESERVATION)
        await stream.close()

        # an empty body (no type): MALFORMED_MESSAGE, then the relay resets the stream; a reset that comes
        # in before we read drops the answer (as yamux does), so a few tries on new streams
        for attempt in range(1, 6):
            try:
                stream, answer = await hop_request(host, conn, b"", "js_relay_malformed")
                break
            except StreamResetError:
                assert attempt < 5, "the relay reset every stream before its answer could be read"
        assert answer == HopMessage(HopType.STATUS, status=Status.MALFORMED_MESSAGE)
        with contextlib.suppress(StreamResetError):
            await stream.close()

        # a reserved peer: STATUS OK with the limit (the duration in milliseconds), then the stream
        # is the circuit: mimirlite upgrades it and echoes over it
        connect = encode_hop(HopMessage(HopType.CONNECT, peer=RelayPeer(js2_id)))
        _captured("py_hop_connect", connect)
        stream, answer = await hop_request(host, conn, connect, "js_relay_connect_status")
        assert answer == HopMessage(HopType.STATUS, limit=Limit(60_000, 1 << 20), status=Status.OK)
        inner = await host.upgrade_over(StreamTransport(stream), initiator=True, expected_peer=js2_id)
        try:
            echo_stream = await host.open_on(inner, ECHO_PROTOCOL)
            data = b"mimirlite through the JS relay " * 100
            await echo_stream.write(data)
            await echo_stream.close_write()
            assert await asyncio.wait_for(echo_stream.read_all(), TIMEOUT) == data
            conns = [c for c in await target.connections() if c["peer"] == str(host.peer_id)]
            assert [(c["relayed"], c["limited"], c["direction"]) for c in conns] == [(True, True, "inbound")]
        finally:
            inner.close()
        assert not (relay.uncaught() or target.uncaught())


async def _connect_through(host: Host, relay: JsNatPeer, target: PeerId) -> tuple[Stream, Connection, Limit]:
    """HOP CONNECT to ``target`` through ``relay``, then the connection upgraded over the stream."""
    conn = await host.dial(relay.addr)
    msg = encode_hop(HopMessage(HopType.CONNECT, peer=RelayPeer(target)))
    stream, answer = await hop_request(host, conn, msg, "-")
    assert answer.status is Status.OK and answer.limit is not None
    inner = await host.upgrade_over(StreamTransport(stream), initiator=True, expected_peer=target)
    return stream, inner, answer.limit


async def test_a_js_relay_enforces_its_limits_by_resetting_the_circuit(host: Host) -> None:
    js2_id = seeded_keypair(JS2_SEED).peer_id
    # the data limit counts the bytes of both directions together (one counter in createLimitedRelay);
    # past it the relay resets both streams of the circuit, with no message
    async with (
        await JsNatPeer.start(key_seed=JS_SEED, relay_server=True, data_limit=4096) as relay,
        await JsNatPeer.start(key_seed=JS2_SEED, reserve=[relay.addr]) as target,
    ):
        stream, inner, limit = await _connect_through(host, relay, js2_id)
        assert limit == Limit(duration=120_000, data=4096)
        try:
            with pytest.raises(ClosedError):
                echo_stream = await host.open_on(inner, ECHO_PROTOCOL)
                await echo_stream.write(bytes(20_000))
                await echo_stream.close_write()
                await asyncio.wait_for(echo_stream.read_all(), TIMEOUT)
            await asyncio.wait_for(inner.closed, TIMEOUT)
            assert stream.state is StreamState.RESET
        finally:
            inner.close()
        assert not (relay.uncaught() or target.uncaught())

    # the duration limit: the relay resets the circuit when it runs out (idle or not); it writes its
    # milliseconds in Limit.duration
    async with (
        # another relay identity: no stale connection of the host to the first one's peer ID to reuse
        await JsNatPeer.start(key_seed=RELAY2_SEED, relay_server=True, duration_limit=1) as relay,
        await JsNatPeer.start(key_seed=JS2_SEED, reserve=[relay.addr]) as target,
    ):
        stream, inner, limit = await _connect_through(host, relay, js2_id)
        assert limit == Limit(duration=1000, data=1 << 17)
        try:
            await asyncio.wait_for(inner.closed, TIMEOUT)
            assert stream.state is StreamState.RESET
        finally:
            inner.close()
        assert not (relay.uncaught() or target.uncaught())
