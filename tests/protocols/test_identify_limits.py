"""Identify's caps against a hostile peer on real loopback sockets: oversized messages, messages packed
with more listen addresses and protocols than kept, and pushes too many or too often, while an honest
peer's echo on the same host is served. Each refusal is counted in ``host.metrics`` and logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from mimirlite import Connection, Host, KeyPair, Stream
from mimirlite.errors import DecodeError, LocalError, MessageTooLargeError, StreamResetError
from mimirlite.net.rate import PeerRate
from mimirlite.protocols import IDENTIFY_PROTOCOL, IDENTIFY_PUSH_PROTOCOL, Identify
from mimirlite.protocols.identify import (
    MAX_IDENTIFY_MESSAGE,
    IdentifyConfig,
    IdentifyMessage,
    decode_identify,
    decode_identify_capped,
    encode_identify,
)
from mimirlite.wire.lp import encode_message
from mimirlite.wire.multiaddr import tcp_multiaddr_bytes
from mimirlite.wire.protobuf import encode_bytes_field
from tests.helpers import ECHO, TIMEOUT, echo_handler, logged, until

pytestmark = pytest.mark.usefixtures("no_leaks")


def addrs(n: int, port: int = 4001) -> tuple[bytes, ...]:
    """``n`` distinct binary /ip4/10.x.y.z/tcp/<port> addresses, 8 bytes each."""
    return tuple(tcp_multiaddr_bytes(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", port) for i in range(n))


# Listen addresses only, as many as fit in one message: 10 bytes a field, 819 addresses.
PACKED = b"".join(encode_bytes_field(2, a) for a in addrs((MAX_IDENTIFY_MESSAGE) // 10))
assert len(PACKED) <= MAX_IDENTIFY_MESSAGE


@pytest.fixture
async def node() -> AsyncIterator[tuple[Host, Identify]]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        host.set_handler(ECHO, echo_handler)
        # a long read timeout: a push refused unread is reset long before a read would time out
        yield host, Identify(host, config=IdentifyConfig(timeout=60.0))


@pytest.fixture
async def evil() -> AsyncIterator[Host]:
    async with Host() as host:
        yield host


@pytest.fixture
async def honest() -> AsyncIterator[Host]:
    async with Host() as host:
        yield host


async def push(conn: Connection, frame: bytes) -> str:
    """Push ``frame`` raw; "taken" when the node closed the stream, "reset" when it reset it."""
    stream = await open_push(conn)
    try:
        await stream.write(frame)
        await stream.close_write()
        await asyncio.wait_for(stream.read_all(limit=0), TIMEOUT)
    except StreamResetError:
        return "reset"
    await stream.close()
    return "taken"


_dialed_by: dict[Connection, Host] = {}


async def dial(client: Host, server: Host) -> Connection:
    conn = await client.dial(server.listen_addrs[0])
    _dialed_by[conn] = client
    return conn


async def open_push(conn: Connection) -> Stream:
    """An identify push stream on a connection :func:`dial` made, nothing written yet."""
    return await _dialed_by[conn].open_on(conn, IDENTIFY_PUSH_PROTOCOL)


async def echo(client: Host, server: Host, payload: bytes) -> bytes:
    stream = await client.new_stream(server.listen_addrs[0], ECHO)
    await stream.write(payload)
    await stream.close_write()
    return await stream.read_all()


async def test_a_push_flood_is_refused_unread_while_an_honest_echo_is_served(
    node: tuple[Host, Identify], evil: Host, honest: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mimirlite")
    host, identify = node
    conn = await dial(evil, host)
    frame = encode_message(PACKED)
    per_minute = identify.config.pushes_per_minute

    async def flood() -> list[str]:
        return [await push(conn, frame) for _ in range(per_minute + 10)]

    outcomes, echoed = await asyncio.wait_for(
        asyncio.gather(flood(), echo(honest, host, b"honest" * 1000)), 4 * TIMEOUT
    )
    assert echoed == b"honest" * 1000
    # the bucket's burst is taken, every push past it is reset before a byte of it is read
    assert outcomes.count("taken") >= per_minute and outcomes[-1] == "reset"
    refused = outcomes.count("reset")
    assert host.metrics.refused["identify_push"] == refused
    # of 819 addresses a push, 64 are taken once; the rest are left out undecoded, and counted
    assert len(host.addrs_of(evil.peer_id)) == identify.config.max_listen_addrs == 64
    info = identify.info_of(evil.peer_id)
    assert info is not None and len(info.listen_addrs) == 64
    assert host.metrics.refused["identify_over_cap"] == outcomes.count("taken")
    logged(caplog, f"identify push from {evil.peer_id}: left out 755 listen addresses over the cap of 64")
    # one line when the peer goes over, not one per refused push
    assert len(logged(caplog, "refused: over 20 pushes a minute")) == 1
    # a push that sends nothing is reset at once too: the node never waits to read it
    stream = await open_push(conn)
    await asyncio.wait_for(stream.wait_reset(), TIMEOUT)
    assert host.metrics.refused["identify_push"] == refused + 1
    # the peer's connection and its other streams are unharmed
    assert conn.is_open and await echo(evil, host, b"still") == b"still"


async def test_a_push_while_the_previous_one_is_read_is_refused(
    node: tuple[Host, Identify], evil: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mimirlite")
    host, identify = node
    conn = await dial(evil, host)
    first = await open_push(conn)
    body = encode_identify(IdentifyMessage(protocols=("/a/1.0.0", "/b/1.0.0")))
    frame = encode_message(body)
    await first.write(frame[:1])  # the length prefix, then nothing: the node is reading this push
    await until(lambda: evil.peer_id in identify._pushing)
    assert await push(conn, encode_message(b"")) == "reset"
    assert host.metrics.refused["identify_push"] == 1
    logged(caplog, "refused: its previous push is still being read")
    # once the first push is in, the next is taken
    await first.write(frame[1:])
    await first.close_write()
    await asyncio.wait_for(first.read_all(limit=0), TIMEOUT)
    await first.close()
    assert await push(conn, encode_message(encode_identify(IdentifyMessage(agent_version="x")))) == "taken"
    info = identify.info_of(evil.peer_id)
    assert info is not None and info.agent_version == "x" and info.protocols == ("/a/1.0.0", "/b/1.0.0")


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x81\x40", "message of 8193 bytes exceeds the 8192 byte cap"),  # refused before the body
        (encode_message(b"\x1a\x02\xff\xfe"), "a protocol is not UTF-8"),
        (encode_message(b"\x0a\x03abc"), "bad public key"),
        (b"\x10abc", "stream ended after"),
    ],
)
async def test_a_bad_push_is_reset_counted_and_logged(
    node: tuple[Host, Identify], evil: Host, caplog: pytest.LogCaptureFixture, frame: bytes, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="mimirlite")
    host, identify = node
    conn = await dial(evil, host)
    assert await push(conn, frame) == "reset"
    assert host.metrics.protocol_errors["identify"] == 1
    logged(caplog, "handler ended", reason)
    assert identify.info_of(evil.peer_id) is None
    assert conn.is_open and await echo(evil, host, b"still") == b"still"


async def test_a_push_over_the_caps_keeps_what_fits(
    node: tuple[Host, Identify], evil: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mimirlite")
    host, identify = node
    conn = await dial(evil, host)
    long_addr = tcp_multiaddr_bytes("10.0.0.1", 1) + b"\x35\xf0\x01" + b"a" * 240  # /dns/aaa…, 251 bytes
    msg = IdentifyMessage(
        listen_addrs=(long_addr + b"a" * 16, *addrs(70, port=5000)),
        observed_addr=long_addr + b"a" * 16,
        protocols=tuple(f"/p{i}" for i in range(300)),
    )
    assert await push(conn, encode_message(encode_identify(msg))) == "taken"
    info = identify.info_of(evil.peer_id)
    assert info is not None
    assert info.protocols == tuple(f"/p{i}" for i in range(256))
    assert info.listen_addrs == tuple(f"/ip4/10.0.0.{i}/tcp/5000" for i in range(64))
    assert info.observed_addr is None
    assert host.metrics.refused["identify_over_cap"] == 1
    logged(
        caplog,
        "left out 6 listen addresses over the cap of 64, 1 oversized listen addresses longer than 256 bytes, "
        "1 oversized observed address longer than 256 bytes, 44 protocols over the cap of 256",
    )
    # the addresses kept for a peer stay at the cap across pushes with other addresses
    assert (
        await push(conn, encode_message(b"".join(encode_bytes_field(2, a) for a in addrs(5, 6000))))
        == "taken"
    )
    assert len(host.addrs_of(evil.peer_id)) == 64
    assert not [a for a in host.addrs_of(evil.peer_id) if "/tcp/6000/" in a]


async def test_an_identify_answer_over_the_caps_keeps_what_fits(
    node: tuple[Host, Identify], evil: Host
) -> None:
    host, identify = node
    key = evil.keypair.public_key.to_protobuf()
    answer = IdentifyMessage(
        public_key=key, listen_addrs=addrs(100), protocols=tuple(f"/p{i}" for i in range(300))
    )

    async def respond(stream: Stream) -> None:
        await stream.write(encode_message(encode_identify(answer)))
        await stream.close_write()

    evil.set_handler(IDENTIFY_PROTOCOL, respond)
    conn = await dial(evil, host)  # the node asks back over the connection the peer dialed
    await until(lambda: evil.peer_id in host.connections)
    back = host.connections[evil.peer_id]
    info = await asyncio.wait_for(identify.identify(back), TIMEOUT)
    assert len(info.protocols) == 256 and len(info.listen_addrs) == 64
    assert len(host.addrs_of(evil.peer_id)) == 64
    assert host.metrics.refused["identify_over_cap"] == 1
    assert conn.is_open


def test_decode_skips_entries_over_the_caps_unread() -> None:
    config = IdentifyConfig(max_listen_addrs=2, max_protocols=1, max_addr_size=8)
    # past the caps nothing is decoded: a protocol that is not UTF-8 there is never looked at
    body = (
        PACKED[:30]
        + encode_bytes_field(3, b"/ok")
        + encode_bytes_field(3, b"\xff")
        + encode_bytes_field(2, b"x" * 9)
    )
    msg, dropped = decode_identify_capped(body, config)
    assert msg.listen_addrs == addrs(2) and msg.protocols == ("/ok",)
    assert dropped == {"listen addresses": 1, "protocols": 1, "oversized listen addresses": 1}
    # uncapped, the same message is decoded in full (and the bad protocol is an error)
    with pytest.raises(DecodeError, match="not UTF-8"):
        decode_identify(body)
    with pytest.raises(MessageTooLargeError, match="9 bytes exceeds the 8 byte cap"):
        decode_identify_capped(b"\x00" * 9, IdentifyConfig(max_message_size=8))


def test_push_budget_refills_at_its_rate() -> None:
    peer, other = KeyPair.generate().peer_id, KeyPair.generate().peer_id
    budget = PeerRate(per_minute=3, max_peers=1)
    assert [budget.take(peer, 100.0) for _ in range(4)] == [True, True, True, False]
    assert not budget.take(peer, 119.0)  # 0.95 of a push back after 19 s
    assert budget.take(peer, 120.0) and not budget.take(peer, 120.0)
    assert budget.take(other, 120.0)  # one bucket kept: the first peer's is forgotten
    assert [budget.take(peer, 120.0) for _ in range(4)] == [True, True, True, False]


def test_config_is_checked() -> None:
    with pytest.raises(LocalError, match="max_listen_addrs must be >= 0"):
        IdentifyConfig(max_listen_addrs=-1)
    with pytest.raises(LocalError, match="timeout must be a positive"):
        IdentifyConfig(timeout=0)
