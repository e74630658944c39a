"""libp2p identify: the sans-IO codec with literal bytes and properties, then two mimirlite hosts on
real loopback sockets (both roles, learned addresses, bad responders, a host without it)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from mimirlite import Host, KeyPair, Stream
from mimirlite.errors import (
    AddressError,
    ConnectionClosedError,
    DecodeError,
    IncompleteReadError,
    LocalError,
    MessageTooLargeError,
    MimirliteError,
    ProtocolNotSupportedError,
)
from mimirlite.protocols import (
    IDENTIFY_PROTOCOL,
    IDENTIFY_PUSH_PROTOCOL,
    Identify,
    IdentifyError,
    IdentifyInfo,
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
from mimirlite.wire.lp import encode_message
from mimirlite.wire.multiaddr import multiaddr_from_bytes, multiaddr_to_bytes, tcp_multiaddr_bytes
from mimirlite.wire.protobuf import encode_bytes_field
from tests.helpers import ECHO, echo_handler, inbound_conn

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


@given(
    st.integers(min_value=1, max_value=64),
    st.binary(min_size=1, max_size=64),
    st.booleans(),
)
def test_oversized_is_always_refused(over: int, seed: bytes, well_formed: bool) -> None:
    """Every input past the cap is refused for its size: arbitrary bytes, and a well-formed message
    (padded with an unknown field) that decodes once the cap allows it, so that its size, not its
    content, is what refuses it."""
    size = MAX_IDENTIFY_MESSAGE + over
    if well_formed:
        body = encode_identify(LITERAL_MESSAGE)
        pad = size - len(body) - 3  # 1 tag byte and 2 length bytes for an unknown field 15
        buf = body + encode_bytes_field(15, bytes(pad))
        assert decode_identify(buf, max_size=len(buf)) == LITERAL_MESSAGE
    else:
        buf = (seed * (size // len(seed) + 1))[:size]
    assert len(buf) == size > MAX_IDENTIFY_MESSAGE
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


# ---------------------------------------------------------------- two hosts on loopback


def plain(addr: str) -> str:
    return addr.rsplit("/p2p/", 1)[0]


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
