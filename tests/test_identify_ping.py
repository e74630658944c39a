"""libp2p identify and ping: the sans-IO codecs with literal bytes and properties, then two mimirlite
hosts on real loopback sockets (both roles, learned addresses, bad responders, a host without them)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from mimirlite import Connection, Host, KeyPair, PeerId, Stream
from mimirlite.errors import (
    AddressError,
    ConnectionClosedError,
    DecodeError,
    IncompleteReadError,
    LocalError,
    MessageTooLargeError,
    MimirliteError,
    ProtocolError,
    ProtocolNotSupportedError,
)
from mimirlite.protocols import (
    IDENTIFY_PROTOCOL,
    IDENTIFY_PUSH_PROTOCOL,
    PING_PROTOCOL,
    Identify,
    IdentifyError,
    IdentifyInfo,
    Ping,
    PingMismatchError,
    PingTimeoutError,
)
from mimirlite.protocols.identify import (
    MAX_IDENTIFY_MESSAGE,
    IdentifyMessage,
    decode_identify,
    encode_identify,
    encode_identify_frame,
    info_from_message,
    merge_push,
)
from mimirlite.protocols.ping import PING_SIZE, check_echo
from mimirlite.wire.lp import encode_message
from mimirlite.wire.multiaddr import multiaddr_from_bytes, multiaddr_to_bytes, tcp_multiaddr_bytes

from .conftest import ECHO, echo_handler

# ---------------------------------------------------------------- literal vectors

ZERO_KEY = KeyPair(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)))
# PublicKey protobuf of the Ed25519 key with the all-zero seed: KeyType 1, Data 32 bytes
ZERO_PUBKEY = bytes.fromhex("080112203b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29")
ZERO_PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"

MA_LOCAL_4001 = bytes.fromhex("047f000001060fa1")  # /ip4/127.0.0.1/tcp/4001
MA_OBSERVED = bytes.fromhex("04c0a8010506d6d8")  # /ip4/192.168.1.5/tcp/55000

# A message as js-libp2p writes it: fields 5, 6, 1, 2, 4, 3 in that order.
LITERAL = (
    b"\x2a\x0aipfs/0.1.0"  # 5 protocolVersion
    b"\x32\x0cjs-libp2p/2x"  # 6 agentVersion
    + b"\x0a\x24"
    + ZERO_PUBKEY  # 1 publicKey
    + b"\x12\x08"
    + MA_LOCAL_4001  # 2 listenAddrs
    + b"\x22\x08"
    + MA_OBSERVED  # 4 observedAddr
    + b"\x1a\x10/ipfs/ping/1.0.0"  # 3 protocols
    + b"\x1a\x0e/ipfs/id/1.0.0"  # 3 protocols
)
LITERAL_MESSAGE = IdentifyMessage(
    protocol_version="ipfs/0.1.0",
    agent_version="js-libp2p/2x",
    public_key=ZERO_PUBKEY,
    listen_addrs=(MA_LOCAL_4001,),
    observed_addr=MA_OBSERVED,
    protocols=("/ipfs/ping/1.0.0", "/ipfs/id/1.0.0"),
)

MULTIADDR_VECTORS = [
    ("/ip4/127.0.0.1/tcp/4001", "047f000001060fa1"),
    ("/ip4/192.168.1.5/tcp/55000", "04c0a8010506d6d8"),
    ("/ip6/::1/tcp/4001", "2900000000000000000000000000000001060fa1"),
    ("/dns4/example.com/tcp/443/wss", "360b6578616d706c652e636f6d0601bbde03"),
    ("/ip4/1.2.3.4/udp/4001/quic-v1", "040102030491020fa1cd03"),
    (
        f"/ip4/1.2.3.4/tcp/1/p2p/{ZERO_PEER}/p2p-circuit",
        "0401020304060001a50326002408011220"
        "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29a202",
    ),
]


# ---------------------------------------------------------------- multiaddr codec


def test_zero_key_vector() -> None:
    assert ZERO_KEY.public_key.to_protobuf() == ZERO_PUBKEY
    assert str(ZERO_KEY.peer_id) == ZERO_PEER


@pytest.mark.parametrize(("text", "hexed"), MULTIADDR_VECTORS)
def test_multiaddr_vectors(text: str, hexed: str) -> None:
    assert multiaddr_to_bytes(text) == bytes.fromhex(hexed)
    assert multiaddr_from_bytes(bytes.fromhex(hexed)) == text


@pytest.mark.parametrize(("text", "hexed"), MULTIADDR_VECTORS)
def test_multiaddr_agrees_with_the_multiaddr_package(text: str, hexed: str) -> None:
    from multiaddr import Multiaddr

    assert Multiaddr(text).to_bytes() == bytes.fromhex(hexed)


def test_tcp_multiaddr_bytes() -> None:
    assert tcp_multiaddr_bytes("127.0.0.1", 4001) == MA_LOCAL_4001
    assert tcp_multiaddr_bytes("::1", 4001) == bytes.fromhex("2900000000000000000000000000000001060fa1")
    assert tcp_multiaddr_bytes("fe80::1%eth0", 1) == multiaddr_to_bytes("/ip6/fe80::1/tcp/1")


@pytest.mark.parametrize(
    ("buf", "reason"),
    [
        (b"", "empty"),
        (b"\x04\x7f\x00", "truncated /ip4"),
        (b"\x04\x7f\x00\x00\x01\x06\x0f", "truncated /tcp"),
        (b"\x80", "truncated protocol code"),
        (b"\x63", "unsupported protocol code 0x63"),
        (b"\x35\x05ex", "truncated /dns"),
        (b"\x35\x00", "empty"),
        (b"\x35\x03a/b", "contains '/'"),
        (b"\x35\x02\xff\xfe", "not UTF-8"),
        (b"\xa5\x03\x03abc", "bad /p2p value"),
        (b"\x80\x00", "not minimally encoded"),
    ],
)
def test_multiaddr_from_bytes_errors(buf: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        multiaddr_from_bytes(buf)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ip4/1.2.3.4",
        "/ip4/1.2.3.4/",
        "/ip4/300.1.1.1",
        "/ip4/1.2.3.4/tcp/65536",
        "/ip4/1.2.3.4/tcp/-1",
        "/ip4/1.2.3.4/tcp",
        "/unix/x",
        "/p2p/notapeer",
        "/certhash/zabc",
    ],
)
def test_multiaddr_to_bytes_errors(text: str) -> None:
    with pytest.raises(AddressError):
        multiaddr_to_bytes(text)


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_multiaddr_decoder_only_raises_decode_error_and_is_canonical(buf: bytes) -> None:
    try:
        text = multiaddr_from_bytes(buf)
    except DecodeError:
        return
    assert multiaddr_to_bytes(text) == buf


@given(st.ip_addresses(), st.integers(0, 65535))
def test_tcp_multiaddr_round_trip(ip: object, port: int) -> None:
    buf = tcp_multiaddr_bytes(str(ip), port)
    kind = "ip4" if ":" not in str(ip) else "ip6"
    mapped = getattr(ip, "ipv4_mapped", None)  # written ::ffff:<dotted quad> on every Python (RFC 5952 5)
    assert multiaddr_from_bytes(buf) == f"/{kind}/{f'::ffff:{mapped}' if mapped else ip}/tcp/{port}"


# ---------------------------------------------------------------- Identify message codec


def test_encode_matches_js_field_order() -> None:
    assert encode_identify(LITERAL_MESSAGE) == LITERAL
    assert encode_identify_frame(LITERAL_MESSAGE) == bytes([len(LITERAL)]) + LITERAL


def test_decode_literal() -> None:
    assert decode_identify(LITERAL) == LITERAL_MESSAGE
    assert decode_identify(b"") == IdentifyMessage()


def test_decode_skips_unknown_fields_and_keeps_the_signed_record() -> None:
    record = b"\x42\x03rec"  # 8 signedPeerRecord (kept, opaque to us)
    unknown = (
        b"\x48\x96\x01"  # 9 varint
        b"\x55\x01\x02\x03\x04"  # 10 fixed32
        b"\x59" + bytes(8) + b"\x62\x03abc"  # 11 fixed64, 12 length-delimited
    )
    msg = decode_identify(record + LITERAL[:12] + unknown + LITERAL[12:])
    assert msg == dataclasses.replace(LITERAL_MESSAGE, signed_peer_record=b"rec")


def test_repeated_singular_field_keeps_the_last() -> None:
    msg = decode_identify(b"\x32\x01a\x32\x01b")
    assert msg.agent_version == "b"


def test_size_cap() -> None:
    pad_len = MAX_IDENTIFY_MESSAGE - 3  # field 12, two-byte length, then the padding
    at_cap = b"\x62" + bytes([0x80 | (pad_len & 0x7F), pad_len >> 7]) + bytes(pad_len)
    assert len(at_cap) == MAX_IDENTIFY_MESSAGE
    assert decode_identify(at_cap) == IdentifyMessage()
    with pytest.raises(MessageTooLargeError, match="8192 byte cap"):
        decode_identify(at_cap + b"\x00")
    with pytest.raises(LocalError, match="exceeds"):
        encode_identify(IdentifyMessage(protocols=("/p" * 5000,)))


@pytest.mark.parametrize(
    ("buf", "reason"),
    [
        (LITERAL[:-1], "truncated length-delimited"),
        (LITERAL[:1], "truncated varint"),
        (b"\x18\x01", "field 3 has wire type 0"),
        (b"\x32\x02\xc3\x28", "agentVersion is not UTF-8"),
        (b"\x1a\x01\xff", "protocol is not UTF-8"),
        (b"\x00\x00", "field number 0"),
        (b"\x0b", "wire type 3"),
    ],
)
def test_decode_errors(buf: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_identify(buf)


messages = st.builds(
    IdentifyMessage,
    protocol_version=st.none() | st.text(max_size=20),
    agent_version=st.none() | st.text(max_size=20),
    public_key=st.none() | st.binary(max_size=40),
    listen_addrs=st.lists(st.binary(max_size=20), max_size=4).map(tuple),
    observed_addr=st.none() | st.binary(max_size=20),
    protocols=st.lists(st.text(max_size=20), max_size=4).map(tuple),
    signed_peer_record=st.none() | st.binary(max_size=20),
)


@given(messages)
def test_encode_decode_round_trip(msg: IdentifyMessage) -> None:
    try:
        body = encode_identify(msg)
    except UnicodeEncodeError:  # lone surrogates cannot be sent
        return
    assert decode_identify(body) == msg


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_decoder_and_checks_only_raise_mimirlite_errors(buf: bytes) -> None:
    try:
        msg = decode_identify(buf)
        info_from_message(ZERO_KEY.peer_id, msg)
        merge_push(None, ZERO_KEY.peer_id, msg)
    except (DecodeError, MessageTooLargeError, IdentifyError):
        pass


@given(st.binary(max_size=MAX_IDENTIFY_MESSAGE + 64))
def test_oversized_is_always_refused(buf: bytes) -> None:
    if len(buf) > MAX_IDENTIFY_MESSAGE:
        with pytest.raises(MessageTooLargeError):
            decode_identify(buf)


# ---------------------------------------------------------------- what we learn


def test_info_from_message() -> None:
    extra_addr = b"\x63\x00"  # unknown protocol code: left out, not fatal
    msg = dataclasses.replace(LITERAL_MESSAGE, listen_addrs=(MA_LOCAL_4001, extra_addr))
    info = info_from_message(ZERO_KEY.peer_id, msg)
    assert info == IdentifyInfo(
        peer_id=ZERO_KEY.peer_id,
        public_key=ZERO_KEY.public_key,
        protocol_version="ipfs/0.1.0",
        agent_version="js-libp2p/2x",
        listen_addrs=("/ip4/127.0.0.1/tcp/4001",),
        observed_addr="/ip4/192.168.1.5/tcp/55000",
        protocols=("/ipfs/ping/1.0.0", "/ipfs/id/1.0.0"),
    )


def test_info_needs_the_peers_own_key() -> None:
    other = KeyPair.generate().peer_id
    with pytest.raises(IdentifyError, match=f"public key belongs to {ZERO_PEER}"):
        info_from_message(other, LITERAL_MESSAGE)
    with pytest.raises(IdentifyError, match="no public key"):
        info_from_message(ZERO_KEY.peer_id, IdentifyMessage(agent_version="x"))
    with pytest.raises(IdentifyError, match="bad public key"):
        info_from_message(ZERO_KEY.peer_id, IdentifyMessage(public_key=b"\x08\x01\x12\x01\x00"))


def test_push_merges_only_what_it_carries() -> None:
    old = info_from_message(ZERO_KEY.peer_id, LITERAL_MESSAGE)
    new = merge_push(old, ZERO_KEY.peer_id, IdentifyMessage(protocols=("/new/1.0.0",)))
    assert new.protocols == ("/new/1.0.0",)
    assert (new.agent_version, new.listen_addrs, new.observed_addr) == (
        old.agent_version,
        old.listen_addrs,
        old.observed_addr,
    )
    # a first push, without a key: the inlined key of the peer ID stands in
    first = merge_push(None, ZERO_KEY.peer_id, IdentifyMessage(listen_addrs=(MA_LOCAL_4001,)))
    assert first.public_key == ZERO_KEY.public_key and first.listen_addrs == ("/ip4/127.0.0.1/tcp/4001",)
    with pytest.raises(IdentifyError):
        merge_push(old, KeyPair.generate().peer_id, LITERAL_MESSAGE)


def test_check_echo() -> None:
    check_echo(b"a" * PING_SIZE, b"a" * PING_SIZE)
    with pytest.raises(PingMismatchError, match="does not match"):
        check_echo(b"a" * PING_SIZE, b"b" * PING_SIZE)


# ---------------------------------------------------------------- two hosts on loopback


@pytest.fixture
async def no_tasks_left() -> AsyncIterator[None]:
    """Every task a test started (handlers, background identify) has ended once its hosts stopped."""
    yield
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not left, f"tasks left running: {left}"


@pytest.fixture
async def a(no_tasks_left: None) -> AsyncIterator[Host]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        host.set_handler(ECHO, echo_handler)
        yield host


@pytest.fixture
async def b(no_tasks_left: None) -> AsyncIterator[Host]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        host.set_handler(ECHO, echo_handler)
        yield host


def plain(addr: str) -> str:
    return addr.rsplit("/p2p/", 1)[0]


async def inbound_conn(host: Host, peer: PeerId) -> Connection:
    """The connection ``peer`` opened to ``host``, once ``host`` has registered it."""
    if peer in host.connections:
        return host.connections[peer]
    got: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()

    def seen(conn: Connection) -> None:
        if conn.remote_peer == peer and not got.done():
            got.set_result(conn)

    host.on_connected.append(seen)
    try:
        return await asyncio.wait_for(got, 5)
    finally:
        host.on_connected.remove(seen)


Handler = Callable[[Stream], Awaitable[None]]


def counting(handler: Handler, calls: list[Stream]) -> Handler:
    async def wrapped(stream: Stream) -> None:
        calls.append(stream)
        await handler(stream)

    return wrapped


async def test_identify_both_ways(a: Host, b: Host) -> None:
    ia, ib = Identify(a), Identify(b)
    assert b.addrs_of(a.peer_id) == []
    conn = await a.dial(b.listen_addrs[0])
    info = await asyncio.wait_for(ia.identify(conn), 5)
    assert info.peer_id == b.peer_id and info.public_key == b.keypair.public_key
    assert info.agent_version == "mimirlite/0.1.0" and info.protocol_version == "ipfs/0.1.0"
    assert sorted(info.protocols) == sorted([ECHO, IDENTIFY_PROTOCOL, IDENTIFY_PUSH_PROTOCOL])
    assert info.listen_addrs == (plain(b.listen_addrs[0]),)
    # what b saw as our address is our socket's local address
    local_host, local_port = conn._transport.get_extra_info("sockname")[:2]  # type: ignore[union-attr]
    assert info.observed_addr == f"/ip4/{local_host}/tcp/{local_port}"
    assert ia.info_of(b.peer_id) == info

    # the other way: b learns the address a listens on, which it never dialed
    back = await inbound_conn(b, a.peer_id)
    info_a = await asyncio.wait_for(ib.identify(back), 5)
    assert info_a.listen_addrs == (plain(a.listen_addrs[0]),)
    assert b.addrs_of(a.peer_id) == [a.listen_addrs[0]]
    assert info_a.observed_addr == f"/ip4/127.0.0.1/tcp/{b.listen_addrs[0].split('/')[4]}"
    # by peer ID, reusing the connection
    again = await asyncio.wait_for(ib.identify(a.peer_id), 5)
    assert again == info_a and len(b.connections) == 1


async def test_run_on_connect_records_every_new_connection(a: Host, b: Host) -> None:
    served_by_b: list[Stream] = []
    served_by_a: list[Stream] = []
    ia = Identify(a, run_on_connect=True)
    ib = Identify(b, run_on_connect=True)
    a.set_handler(IDENTIFY_PROTOCOL, counting(ia._serve_identify, served_by_a))
    b.set_handler(IDENTIFY_PROTOCOL, counting(ib._serve_identify, served_by_b))
    b_learned: asyncio.Future[IdentifyInfo] = asyncio.get_running_loop().create_future()
    ib.on_identified.append(b_learned.set_result)
    conn = await a.dial(b.listen_addrs[0])
    # the run started on connect is joined, not repeated
    info = await asyncio.wait_for(ia.identify(conn), 5)
    assert ia.info_of(b.peer_id) == info
    # b, dialed, identifies a by itself
    info_a = await asyncio.wait_for(b_learned, 5)
    assert info_a.peer_id == a.peer_id and ib.info_of(a.peer_id) == info_a
    assert (len(served_by_a), len(served_by_b)) == (1, 1)
    assert b.addrs_of(a.peer_id) == [a.listen_addrs[0]]


async def test_identify_against_a_host_without_it(a: Host, b: Host, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mimirlite.protocols")
    ia = Identify(a, run_on_connect=True)
    conn = await a.dial(b.listen_addrs[0])
    with pytest.raises(ProtocolNotSupportedError, match=re.escape(IDENTIFY_PROTOCOL)):
        await asyncio.wait_for(ia.identify(conn), 5)
    assert ia.info_of(b.peer_id) is None
    assert "does not serve identify" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # the connection is unharmed
    assert conn.is_open and a.connections[b.peer_id] is conn
    stream = await a.open_on(conn, ECHO)
    await stream.write(b"still here")
    await stream.close_write()
    assert await stream.read_all() == b"still here"


def raw_responder(body: bytes) -> Handler:
    async def respond(stream: Stream) -> None:
        await stream.write(body)
        await stream.close_write()

    return respond


@pytest.mark.parametrize(
    ("frame", "error", "reason"),
    [
        (b"", IdentifyError, "stream ended before the message"),
        (encode_message(encode_identify(LITERAL_MESSAGE)), IdentifyError, "public key belongs to"),
        (encode_message(b"\x32\x01x"), IdentifyError, "no public key"),
        (encode_message(b"\x32\x05x"), DecodeError, "truncated"),
        (b"\x81\x40", MessageTooLargeError, "8192 byte cap"),
        (b"\x10abc", IncompleteReadError, "stream ended after"),
    ],
)
async def test_identify_rejects_bad_answers(
    a: Host, b: Host, frame: bytes, error: type[Exception], reason: str
) -> None:
    ia = Identify(a)
    b.set_handler(IDENTIFY_PROTOCOL, raw_responder(frame))
    conn = await a.dial(b.listen_addrs[0])
    with pytest.raises(error, match=reason) as info:
        await asyncio.wait_for(ia.identify(conn), 5)
    assert isinstance(info.value, MimirliteError)
    assert ia.info_of(b.peer_id) is None and conn.is_open


async def test_identify_times_out(a: Host, b: Host) -> None:
    async def silent(stream: Stream) -> None:
        await stream.read_all()

    ia = Identify(a, timeout=0.2)
    b.set_handler(IDENTIFY_PROTOCOL, silent)
    conn = await a.dial(b.listen_addrs[0])
    with pytest.raises(TimeoutError, match=r"timed out after 0\.2 s") as info:
        await asyncio.wait_for(ia.identify(conn), 5)
    assert isinstance(info.value, MimirliteError) and conn.is_open


async def test_identify_under_way_when_the_host_stops(a: Host, b: Host) -> None:
    ia = Identify(a)
    conn = await a.dial(b.listen_addrs[0])
    run = ia._start(conn)  # spawned, not started yet: stopping the host cancels it before its first step
    await a.stop()
    with pytest.raises(ConnectionClosedError, match="host is stopping"):
        await asyncio.wait_for(run, 5)
    with pytest.raises(LocalError, match="stopped"):
        await ia.identify(conn)


async def test_push_updates_what_the_peer_knows(a: Host, b: Host) -> None:
    ia, ib = Identify(a), Identify(b)
    conn = await a.dial(b.listen_addrs[0])
    await asyncio.wait_for(ia.identify(conn), 5)  # a learns that b takes pushes
    a.set_handler("/new/1.0.0", echo_handler)
    assert await asyncio.wait_for(ia.push(), 5) == 1
    info = ib.info_of(a.peer_id)
    assert info is not None and "/new/1.0.0" in info.protocols
    assert info.agent_version == "mimirlite/0.1.0"
    assert b.addrs_of(a.peer_id) == [a.listen_addrs[0]]
    # a peer that does not take pushes is skipped; closing stops serving identify
    ib.close()
    assert IDENTIFY_PROTOCOL not in b.protocols and IDENTIFY_PUSH_PROTOCOL not in b.protocols
    with pytest.raises(ProtocolNotSupportedError):
        await asyncio.wait_for(ia.identify(conn), 5)


async def test_ping_both_ways(a: Host, b: Host) -> None:
    pa, pb = Ping(a), Ping(b)
    conn = await a.dial(b.listen_addrs[0])
    rtt = await pa.ping(conn)
    assert 0 < rtt < 5
    await inbound_conn(b, a.peer_id)
    rtts = await pb.ping_many(a.peer_id, 5)
    assert len(rtts) == 5 and all(0 < r < 5 for r in rtts)
    assert len(a.connections) == len(b.connections) == 1
    # concurrent pings to one peer take turns on one stream at a time
    results = await asyncio.gather(*(pa.ping(b.peer_id) for _ in range(5)))
    assert all(r > 0 for r in results)


async def test_ping_uses_the_given_randomness_and_clock(a: Host, b: Host) -> None:
    Ping(b)
    ticks = iter([10.0, 10.25])
    pa = Ping(a, random_bytes=lambda n: b"\x07" * n, clock=lambda: next(ticks))
    assert await pa.ping(b.listen_addrs[0]) == 0.25


async def test_ping_detects_a_bad_echo(a: Host, b: Host) -> None:
    async def flipped(stream: Stream) -> None:
        while data := await stream.read_exactly(PING_SIZE):
            await stream.write(bytes(x ^ 0xFF for x in data))

    b.set_handler(PING_PROTOCOL, flipped)
    pa = Ping(a)
    conn = await a.dial(b.listen_addrs[0])
    with pytest.raises(PingMismatchError, match="does not match") as info:
        await pa.ping(conn)
    assert isinstance(info.value, ProtocolError)
    assert conn.is_open


async def test_ping_times_out(a: Host, b: Host) -> None:
    async def silent(stream: Stream) -> None:
        await stream.read_all()

    b.set_handler(PING_PROTOCOL, silent)
    pa = Ping(a)
    with pytest.raises(PingTimeoutError, match=r"timed out after 0\.2 s"):
        await pa.ping(b.listen_addrs[0], timeout=0.2)
    with pytest.raises(LocalError):
        await pa.ping_many(b.peer_id, 0)


async def test_ping_server_limits_streams_and_checks_payloads(a: Host, b: Host) -> None:
    Ping(b)
    conn = await a.dial(b.listen_addrs[0])
    s1, s2, s3 = [await a.open_on(conn, PING_PROTOCOL) for _ in range(3)]
    # two streams are served, the third is reset
    await asyncio.wait_for(s3.wait_reset(), 5)
    for s in (s1, s2):
        await s.write(b"x" * PING_SIZE)
        assert await s.read_exactly(PING_SIZE) == b"x" * PING_SIZE
    # a stream that ends mid-payload is a protocol error: the server resets it
    await s1.write(b"short")
    await s1.close_write()
    await asyncio.wait_for(s1.wait_reset(), 5)
    await s2.close_write()
    assert await s2.read() == b""
    await s2.close()


async def test_ping_against_a_host_without_it(a: Host, b: Host) -> None:
    pa = Ping(a)
    with pytest.raises(ProtocolNotSupportedError):
        await pa.ping(b.listen_addrs[0])
    assert a.connections[b.peer_id].is_open
    pa.close()
    assert PING_PROTOCOL not in a.protocols
