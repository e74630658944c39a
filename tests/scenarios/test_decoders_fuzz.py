"""Every decoder, fed arbitrary bytes in arbitrary pieces, raises nothing but mimirlite's own errors,
and cutting input anywhere never changes what comes out.

The per-module tests (test_varint, test_protobuf, test_lp, test_multistream, test_noise, test_yamux,
test_identity) already feed arbitrary bytes in one piece to most decoders; this module adds the
split-input invariants, structured garbage that gets past the first checks, the decoders that had no
property yet (key files, multiaddrs, Stream.read_message) and a cross-check of the two LP readers.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mimirlite.errors import (
    AddressError,
    DecodeError,
    HandshakeError,
    IncompleteReadError,
    InvalidKeyError,
    MessageTooLargeError,
    MimirliteError,
    MultistreamError,
    ProtocolNotSupportedError,
    YamuxError,
)
from mimirlite.identity import KeyPair, KeyType
from mimirlite.net.addr import parse_multiaddr
from mimirlite.net.budget import BufferBudget
from mimirlite.net.stream import Stream
from mimirlite.wire.lp import LPDecoder, decode_json, encode_json, encode_message
from mimirlite.wire.multistream import MULTISTREAM_PROTOCOL as MULTISTREAM
from mimirlite.wire.multistream import MultistreamDialer, MultistreamListener, encode_line
from mimirlite.wire.noise import NoiseHandshake, NoiseTransport
from mimirlite.wire.protobuf import (
    FIXED32,
    FIXED64,
    LENGTH_DELIMITED,
    VARINT,
    decode_message,
    encode_bytes_field,
    encode_varint_field,
    iter_fields,
)
from mimirlite.wire.varint import decode_uvarint, encode_uvarint
from mimirlite.wire.yamux import DataReceived, YamuxEvent, YamuxSession
from mimirlite.wire.yamux_frames import HEADER_STRUCT, Flag, FrameType, GoAwayCode

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HEAVY = settings(FUZZ, max_examples=60)  # for examples that run a Noise handshake or an event loop

ALICE = KeyPair(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
BOB = KeyPair(Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64))))
HEADER = encode_line(MULTISTREAM)

cuts = st.lists(st.integers(min_value=0, max_value=600), max_size=8)
"""Where to cut an input (inputs here are mostly shorter; points past the end are clamped)."""


def pieces(data: bytes, at: Iterable[int]) -> list[bytes]:
    """``data`` cut at ``at`` (each piece non-empty; ``[]`` for empty data)."""
    points = sorted({min(c, len(data)) for c in at} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    """``("ok", result)`` or ``("error", (type, message))``; anything but our errors propagates."""
    try:
        return "ok", fn()
    except MimirliteError as exc:
        return "error", (type(exc), str(exc))


# bytes that look like varints more often than uniform bytes do
varintish = st.lists(
    st.sampled_from([0x00, 0x01, 0x02, 0x7F, 0x80, 0x81, 0xFF]) | st.integers(0, 255), max_size=24
).map(bytes)


# --- varint ------------------------------------------------------------------------------------


@FUZZ
@given(varintish)
def test_uvarint_more_bytes_never_change_the_answer(buf: bytes) -> None:
    """A prefix either needs more bytes or already gives the full input's answer (value or error)."""
    full = outcome(lambda: decode_uvarint(buf))
    for cut in range(len(buf) + 1):
        part = outcome(lambda cut=cut: decode_uvarint(buf[:cut]))
        if part != ("ok", None):
            assert part == full


# --- protobuf ----------------------------------------------------------------------------------

uint63 = st.integers(0, 2**63 - 1)
field_items = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 40), st.just(VARINT), uint63),
        st.tuples(st.integers(1, 40), st.just(LENGTH_DELIMITED), st.binary(max_size=30)),
        st.tuples(st.integers(1, 40), st.just(FIXED64), st.binary(min_size=8, max_size=8)),
        st.tuples(st.integers(1, 40), st.just(FIXED32), st.binary(min_size=4, max_size=4)),
    ),
    max_size=6,
)


def encode_items(items: list[tuple[int, int, int | bytes]]) -> bytes:
    out = b""
    for field, wire_type, value in items:
        if wire_type == VARINT:
            assert isinstance(value, int)
            out += encode_varint_field(field, value)
        elif wire_type == LENGTH_DELIMITED:
            assert isinstance(value, bytes)
            out += encode_bytes_field(field, value)
        else:
            assert isinstance(value, bytes)
            out += encode_uvarint(field << 3 | wire_type) + value
    return out


@FUZZ
@given(field_items, st.data())
def test_protobuf_truncation_is_an_error_or_a_prefix(
    items: list[tuple[int, int, int | bytes]], data: Any
) -> None:
    """Cutting a message anywhere yields DecodeError or exactly its first k fields."""
    buf = encode_items(items)
    assert list(iter_fields(buf)) == items
    cut = data.draw(st.integers(0, len(buf)))
    got = outcome(lambda: list(iter_fields(buf[:cut])))
    if got[0] == "error":
        assert got[1][0] is DecodeError
    else:
        assert got[1] == items[: len(got[1])]


@FUZZ
@given(
    st.one_of(varintish, field_items.map(encode_items), st.binary(max_size=80)),
    st.dictionaries(
        st.integers(1, 40), st.sampled_from([VARINT, FIXED64, LENGTH_DELIMITED, FIXED32]), max_size=6
    ),
)
def test_decode_message_any_schema(buf: bytes, schema: dict[int, int]) -> None:
    got = outcome(lambda: decode_message(buf, schema))
    if got[0] == "error":
        assert got[1][0] is DecodeError
        return
    for field, values in got[1].items():
        assert field in schema
        assert all(isinstance(v, int) == (schema[field] == VARINT) for v in values)


# --- length-prefixed JSON ----------------------------------------------------------------------

lp_inputs = st.one_of(
    st.binary(max_size=300),
    st.lists(st.binary(max_size=90).map(encode_message) | varintish, max_size=6).map(b"".join),
)
SMALL_CAP = 64


def lp_decode(chunks: Iterable[bytes], cap: int = SMALL_CAP) -> tuple[list[bytes], tuple[str, Any], int]:
    """Bodies, then the outcome (an error, or ok) and what is left buffered."""
    decoder = LPDecoder(max_message=cap)
    bodies: list[bytes] = []

    def run() -> None:
        for chunk in chunks:
            decoder.feed(chunk)
            while (body := decoder.next_message()) is not None:
                bodies.append(body)

    return bodies, outcome(run), decoder.buffered


@FUZZ
@given(lp_inputs, cuts)
def test_lp_decoder_split_anywhere_same_result(data: bytes, at: list[int]) -> None:
    whole = lp_decode([data])
    split = lp_decode(pieces(data, at))
    assert split[0] == whole[0]
    assert split[1] == whole[1]
    if whole[1][0] == "error":
        assert whole[1][1][0] in (DecodeError, MessageTooLargeError)
    else:
        assert split[2] == whole[2]


class _Owner:
    """A StreamOwner that only counts credits (no connection): enough for a Stream to be read."""

    remote_peer = None
    write_blocked = False

    def __init__(self) -> None:
        self.credited = 0
        self.budget = BufferBudget(1 << 30)
        self.account = self.budget.account()

    async def drain(self) -> None:
        pass

    def stream_consumed(self, stream_id: int, n: int) -> None:
        self.credited += n

    def stream_send(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        raise NotImplementedError

    def stream_close_write(self, stream_id: int) -> None:
        raise NotImplementedError

    def stream_reset(self, stream_id: int) -> None:
        raise NotImplementedError

    def stream_linger(self, stream: Stream) -> None:
        raise NotImplementedError


async def _stream_read_messages(chunks: list[bytes], cap: int) -> tuple[list[bytes], tuple[str, Any], int]:
    """Read LP messages from a Stream while ``chunks`` arrive one per event-loop turn, then EOF."""
    conn = _Owner()
    stream = Stream(conn, 1)
    bodies: list[bytes] = []

    async def reader() -> tuple[str, Any]:
        try:
            while (body := await stream.read_message(cap)) is not None:
                bodies.append(body)
        except MimirliteError as exc:
            return "error", type(exc)
        return "ok", None

    task = asyncio.create_task(reader())
    for chunk in chunks:
        await asyncio.sleep(0)  # interleaving only: the result must not depend on it
        stream.feed_data(chunk)
    stream.feed_eof()
    result = await asyncio.wait_for(task, 5)
    if result[0] == "ok":
        assert conn.budget.total == 0  # every chunk taken was given back to the buffer budget
    return bodies, result, conn.credited


@HEAVY
@given(lp_inputs, cuts)
def test_stream_read_message_agrees_with_lp_decoder(data: bytes, at: list[int]) -> None:
    """The two LP readers (sans-IO decoder, Stream.read_message) agree on any input, split anywhere."""
    chunks = pieces(data, at)
    bodies, result, credited = asyncio.run(_stream_read_messages(chunks, SMALL_CAP))
    expected_bodies, expected, buffered = lp_decode([data])
    event(
        expected[1][0].__name__ if expected[0] == "error" else f"ok, {'partial' if buffered else 'clean'} end"
    )
    assert bodies == expected_bodies
    if expected[0] == "error":
        assert result == ("error", expected[1][0])
    elif buffered:
        assert result == ("error", IncompleteReadError)
    else:
        assert result == ("ok", None)
        assert credited == len(data)  # every byte read is granted back to the sender's window


json_texts = st.one_of(
    st.binary(max_size=60),
    st.text(alphabet='[]{}",:0123456789.eE+-tfrunlasNIiy\\ud8dc0a ', max_size=60).map(str.encode),
    st.integers(1, 3000).map(lambda n: b"[" * n),
    st.integers(1, 5000).map(lambda n: b"9" * n),
    st.sampled_from([b'"\\ud800"', b'"\\udfff\\ud800"', b"NaN", b"-Infinity", b'\xef\xbb\xbf{"a":1}']),
    st.sampled_from(["utf-16", "utf-16-le", "utf-32-be"]).map(lambda enc: '{"x": "é"}'.encode(enc)),
)


@FUZZ
@given(json_texts)
def test_decode_json_raises_only_decode_error_and_reencodes(body: bytes) -> None:
    got = outcome(lambda: decode_json(body))
    event(got[0])
    if got[0] == "error":
        assert got[1][0] is DecodeError
        return
    # whatever we accept from a peer we can send on (a node forwards what it is given)
    again = LPDecoder()
    again.feed(encode_json(got[1]))
    reencoded = again.next_message()
    assert reencoded is not None
    reencoded.decode("utf-8")  # strict UTF-8 on the wire, as JS peers expect
    assert encode_json(decode_json(reencoded)) == encode_json(got[1])


def test_lone_surrogates_are_sent_as_escapes() -> None:
    assert encode_json("\ud800") == b'\x08"\\ud800"'
    assert decode_json(encode_json({"t": "a\udfffé"})[1:]) == {"t": "a\udfffé"}


# --- multistream-select ------------------------------------------------------------------------

proposals = st.sampled_from(["/a", "/b/1.0.0", "/noise", "na", "/yamux/1.0.0", "ü"])
lines = proposals.map(encode_line)
multistream_inputs = st.one_of(
    st.binary(max_size=120),
    st.lists(lines | st.binary(max_size=6), max_size=8).map(lambda parts: HEADER + b"".join(parts)),
    st.lists(lines, max_size=8).map(lambda parts: HEADER + b"".join(parts)),
)


def run_multistream(
    machine: MultistreamDialer | MultistreamListener, chunks: Iterable[bytes]
) -> tuple[tuple[str, Any], bytes, str | None, bytes]:
    sent = [machine.data_to_send()]

    def run() -> None:
        for chunk in chunks:
            machine.receive_data(chunk)
            sent.append(machine.data_to_send())

    result = outcome(run)
    return result, b"".join(sent), machine.selected, machine.leftover


@FUZZ
@given(multistream_inputs, cuts, st.booleans())
def test_multistream_split_anywhere_same_result(data: bytes, at: list[int], listener: bool) -> None:
    def make() -> MultistreamDialer | MultistreamListener:
        if listener:
            return MultistreamListener(lambda p: p in ("/b/1.0.0", "/yamux/1.0.0"), max_attempts=4)
        return MultistreamDialer(["/a", "/noise", "/b/1.0.0"])

    whole = run_multistream(make(), [data])
    split = run_multistream(make(), pieces(data, at))
    event(f"selected={whole[2]}" if whole[0][0] == "ok" else whole[0][1][0].__name__)
    assert split[0] == whole[0]
    assert split[2:] == whole[2:]
    if whole[0][0] == "error":
        assert whole[0][1][0] in (MultistreamError, ProtocolNotSupportedError)
    else:
        assert split[1] == whole[1]


# --- Noise -------------------------------------------------------------------------------------


def fresh_pair() -> tuple[NoiseHandshake, NoiseHandshake]:
    """An initiator (expecting BOB) and a responder, nothing exchanged yet."""
    initiator = NoiseHandshake(ALICE, initiator=True, expected_peer=BOB.peer_id)
    return initiator, NoiseHandshake(BOB, initiator=False)


@HEAVY
@given(cuts, cuts, cuts, st.binary(min_size=1, max_size=100))
def test_noise_handshake_split_anywhere(
    cut1: list[int], cut2: list[int], cut3: list[int], pipelined: bytes
) -> None:
    """Each handshake message cut anywhere, message 3 sent with transport data behind it."""
    initiator, responder = fresh_pair()
    for piece in pieces(initiator.data_to_send(), cut1):
        responder.receive_data(piece)
    for piece in pieces(responder.data_to_send(), cut2):
        assert not initiator.complete
        initiator.receive_data(piece)
    assert initiator.complete and initiator.remote_peer == BOB.peer_id
    sender = initiator.transport()
    wire = initiator.data_to_send() + sender.encrypt(pipelined)
    for piece in pieces(wire, cut3):
        responder.receive_data(piece)
    assert responder.complete and responder.remote_peer == ALICE.peer_id
    assert responder.transport().receive_data(b"") == [pipelined]


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 400), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 400), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 400), st.integers(0, 255)),
)


def mutate(message: bytes, mutation: tuple[str, int, int]) -> bytes:
    kind, index, value = mutation
    if kind == "flip":
        index %= len(message)
        return message[:index] + bytes([message[index] ^ value]) + message[index + 1 :]
    index %= len(message) + 1
    if kind == "cut":
        return message[:index]
    return message[:index] + bytes([value]) + message[index:]


@HEAVY
@given(st.integers(1, 3), mutations, cuts)
def test_noise_handshake_mutated_message(target: int, mutation: tuple[str, int, int], at: list[int]) -> None:
    """A real handshake with one message mutated: only HandshakeError, never a wrong identity."""
    initiator, responder = fresh_pair()
    sides = {1: (initiator, responder), 2: (responder, initiator), 3: (initiator, responder)}
    try:
        for number in (1, 2, 3):
            sender, receiver = sides[number]
            message = sender.data_to_send()
            if number == target:
                message = mutate(message, mutation)
            for piece in pieces(message, at if number == target else []):
                receiver.receive_data(piece)
    except HandshakeError as exc:
        event(f"message {target}: {str(exc)[:40]}")
        return
    event(f"message {target}: no error, complete={initiator.complete}/{responder.complete}")
    if initiator.complete:
        assert initiator.remote_peer == BOB.peer_id
    if responder.complete:
        assert responder.remote_peer == ALICE.peer_id
        assert initiator.complete
        a, b = initiator.transport(), responder.transport()
        if b.buffered:
            # A byte inserted after the last handshake frame is held where transport frames go (a
            # connection then fails at its first frame); the handshake itself was sound.
            assert mutation[0] == "insert" and target == 3 and b.buffered == 1
            return
        assert b.receive_data(a.encrypt(b"check")) == [b"check"]


KEY_A, KEY_B = bytes(32), bytes(range(32))


@FUZZ
@given(
    st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=5),
    st.integers(0, 2000),
    st.integers(1, 255),
    cuts,
)
def test_noise_transport_corruption_is_caught_where_it_happens(
    plaintexts: list[bytes], index: int, xor: int, at: list[int]
) -> None:
    """Nothing from the corrupted frame on comes out; DecodeError, and the transport stays failed."""
    sender, receiver = NoiseTransport(KEY_A, KEY_B), NoiseTransport(KEY_B, KEY_A)
    frames = [sender.encrypt(p) for p in plaintexts]
    wire = bytearray(b"".join(frames))
    index %= len(wire)
    wire[index] ^= xor
    # the frame holding the corrupted byte; a corrupted length prefix may move later frames too
    hit, start = 0, 0
    while start + len(frames[hit]) <= index:
        start += len(frames[hit])
        hit += 1
    got: list[bytes] = []
    try:
        for piece in pieces(bytes(wire), at):
            got += receiver.receive_data(piece)
    except DecodeError:
        # frames completed by earlier pieces came out; the failing call returns nothing
        assert len(got) <= hit
        assert got == plaintexts[: len(got)]
        later = outcome(lambda: receiver.receive_data(b"x"))
        assert later[0] == "error" and later[1][0] is DecodeError
        return
    # no error: only possible when a corrupted length prefix left a frame incomplete
    assert index - start < 2
    assert got == plaintexts[:hit]
    assert receiver.buffered > 0


# --- yamux -------------------------------------------------------------------------------------


def merge(events: Iterable[YamuxEvent]) -> list[YamuxEvent]:
    """Adjacent DataReceived of one stream joined (payload boundaries depend on the cuts)."""
    out: list[YamuxEvent] = []
    for ev in events:
        last = out[-1] if out else None
        if isinstance(ev, DataReceived) and not ev.data:
            continue
        if isinstance(ev, DataReceived) and isinstance(last, DataReceived) and last.stream_id == ev.stream_id:
            out[-1] = DataReceived(ev.stream_id, last.data + ev.data)
        else:
            out.append(ev)
    return out


@st.composite
def yamux_traffic(draw: st.DrawFn, is_client: bool) -> bytes:
    """Mostly well-formed frames from the remote (its stream ids, sensible flags) and a few lies."""
    remote_ids = [2, 4, 6] if is_client else [1, 3, 5]
    stream_ids = [*remote_ids, 1 if is_client else 2]  # run_yamux opens the last one
    frames = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["data"] * 5 + ["window"] * 3 + ["ping", "go_away", "lie"]))
        syn, ack, fin, rst = Flag.SYN, Flag.ACK, Flag.FIN, Flag.RST
        flags = draw(st.sampled_from([0, 0, 0, syn, syn, ack, fin, rst, syn | fin]))
        sid = draw(st.sampled_from(stream_ids))
        payload = b""
        if kind == "data":
            payload = draw(st.binary(max_size=40))
            header = (0, FrameType.DATA, flags, sid, len(payload))
        elif kind == "window":
            header = (0, FrameType.WINDOW_UPDATE, flags, sid, draw(st.sampled_from([0, 1, 1000, 2**31])))
        elif kind == "ping":
            ping_flags = draw(st.sampled_from([Flag.SYN, Flag.ACK]))
            header = (0, FrameType.PING, ping_flags, 0, draw(st.integers(0, 2**32 - 1)))
        elif kind == "go_away":
            header = (0, FrameType.GO_AWAY, 0, 0, draw(st.sampled_from(GoAwayCode)))
        else:  # any header at all, with a declared length the payload may not match
            header = (
                draw(st.sampled_from([0, 0, 0, 1])),
                draw(st.integers(0, 255)),
                draw(st.integers(0, 0xFFFF)),
                draw(st.integers(0, 8) | st.integers(0, 2**32 - 1)),
                draw(st.integers(0, 64) | st.integers(0, 2**32 - 1)),
            )
            payload = draw(st.binary(max_size=16))
        frames.append(HEADER_STRUCT.pack(*header) + payload)
    return b"".join(frames)


yamux_inputs = st.booleans().flatmap(
    lambda is_client: st.tuples(
        st.just(is_client), st.one_of(st.binary(max_size=200), *[yamux_traffic(is_client)] * 2)
    )
)


def run_yamux(is_client: bool, chunks: Iterable[bytes]) -> tuple[tuple[str, Any], list[YamuxEvent], bytes]:
    session = YamuxSession(is_client=is_client)
    session.open_stream()  # so some frames hit a stream of ours
    events: list[YamuxEvent] = []

    def run() -> None:
        for chunk in chunks:
            events.extend(session.receive_data(chunk))

    result = outcome(run)
    if result[0] == "error":
        assert session.is_closed
    return result, merge(events), session.data_to_send()


@settings(FUZZ, max_examples=250)
@given(yamux_inputs, cuts)
def test_yamux_split_anywhere_same_result(traffic: tuple[bool, bytes], at: list[int]) -> None:
    """Same events, same error and same bytes sent back, however the input is cut."""
    is_client, data = traffic
    whole = run_yamux(is_client, [data])
    split = run_yamux(is_client, pieces(data, at))
    kinds = sorted({type(e).__name__ for e in whole[1]})
    event("error" if whole[0][0] == "error" else f"ok: {len(kinds)} kinds of event")
    for kind in kinds:
        event(f"has {kind}")
    assert split[0] == whole[0]
    assert split[2] == whole[2]
    if whole[0][0] == "error":
        assert whole[0][1][0] is YamuxError
    else:
        assert split[1] == whole[1]


# --- identity: key files and multiaddrs --------------------------------------------------------

key_files = st.one_of(
    st.binary(max_size=120),
    st.builds(
        lambda key_type, data: encode_varint_field(1, key_type) + encode_bytes_field(2, data),
        st.sampled_from(list(KeyType)) | st.integers(0, 300),
        st.binary(max_size=100),
    ),
    st.builds(
        lambda seed, tail: KeyPair.from_private_protobuf(
            encode_varint_field(1, 1) + encode_bytes_field(2, seed)
        ).to_private_protobuf()[: 100 - tail],
        st.binary(min_size=32, max_size=32),
        st.integers(0, 100),
    ),
)


@FUZZ
@given(key_files)
def test_key_file_loading_raises_only_invalid_key(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "node.key"
        path.write_bytes(content)
        path.chmod(0o600)  # a key file open to others is refused before it is read
        got = outcome(lambda: KeyPair.load(path))
        again = outcome(lambda: KeyPair.load_or_create(path))
        assert path.read_bytes() == content  # a bad key file is never replaced
    event(got[0])
    if got[0] == "error":
        assert got[1][0] is InvalidKeyError
        assert str(path) in got[1][1]
        assert again[0] == "error" and again[1][0] is InvalidKeyError
    else:
        assert again[0] == "ok" and again[1].peer_id == got[1].peer_id
        assert KeyPair.from_private_protobuf(got[1].to_private_protobuf()).peer_id == got[1].peer_id


multiaddr_texts = st.one_of(
    st.text(max_size=60),
    st.lists(
        st.sampled_from(
            ["ip4", "ip6", "tcp", "udp", "p2p", "dns4", "127.0.0.1", "::1", "0", "65536", "-1", "x", ""]
        )
        | st.text(max_size=8),
        max_size=7,
    ).map(lambda parts: "/" + "/".join(parts)),
    st.builds(
        lambda port, tail: f"/ip4/127.0.0.1/tcp/{port}/p2p/{tail}",
        st.integers(-5, 70000),
        st.sampled_from(
            [str(ALICE.peer_id), str(ALICE.peer_id)[:-1], ALICE.peer_id.to_cid_string(), "Qm", ""]
        ),
    ),
)


@FUZZ
@given(multiaddr_texts)
def test_parse_multiaddr_raises_only_address_error(text: str) -> None:
    got = outcome(lambda: parse_multiaddr(text))
    event(got[0])
    if got[0] == "error":
        assert got[1][0] is AddressError
        return
    addr = got[1]
    assert 0 <= addr.port <= 65535
    assert parse_multiaddr(addr.multiaddr()) == addr
