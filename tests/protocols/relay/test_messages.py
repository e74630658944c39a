"""The circuit relay v2 message codec: literal bytes @libp2p/circuit-relay-v2 3.1.7 wrote, hostile input,
a round trip.

The literals come from one run of ``RELAY_CAPTURE=/tmp/relaycap.json python -m pytest -q
interop/test_relay_capture_interop.py`` (js-libp2p 2.5, circuit-relay-v2 3.1.7, all on 127.0.0.1): JS peer 1
(``nat-peer.mjs --key-seed 1``), JS peer 2 (``--key-seed 2``) and a mimirlite host (the same seed scheme,
3). ``JS_CLIENT``: what JS relay clients sent a mimirlite host playing a relay (peer 1's RESERVE, peer 2's
CONNECT to peer 1, peer 1's answer to the STOP CONNECT); ``JS_RELAY``: what peer 1 as a relay server
(default limits unless said) sent the mimirlite host (its answers to RESERVE, CONNECT and an empty body,
and the STOP CONNECT for peer 2's circuit dial to the host). Ports and the expiry are that run's.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimirlite.errors import LocalError, ProtocolError, ProtocolErrorKind
from mimirlite.identity import PeerId, PublicKey
from mimirlite.protocols.relay import (
    HOP_PROTOCOL,
    STOP_PROTOCOL,
    HopMessage,
    HopType,
    Limit,
    RelayLimits,
    RelayMessageError,
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
from mimirlite.wire.multiaddr import Multiaddr
from mimirlite.wire.protobuf import encode_bytes_field, encode_varint_field, iter_fields
from mimirlite.wire.varint import encode_uvarint

JS1 = PeerId.from_string("12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp")  # --key-seed 1
JS2 = PeerId.from_string("12D3KooWHdiAxVd8uMQR1hGWXccidmfCwLqcMpGwR6QcTP6QRMuD")  # --key-seed 2
PY = PeerId.from_string("12D3KooWSCufgHzV4fCwRijfH2k3abrpAJxTKxEvN1FDuRXA2U9x")  # mimirlite, seed 3
EXPIRE = 1796560254  # that run's: two hours after it
DEFAULT_LIMIT = Limit(duration=120_000, data=1 << 17)  # circuit-relay-v2's defaults: 2 min in ms, 128 KiB
# the reservation voucher JS peer 1 signed for the mimirlite host: a signed envelope (RFC 0002)
VOUCHER = bytes.fromhex(
    "0a24080112204cb5abf6ad79fbf5abbccafcc269d85cd2651ed4b885b5869f241aedf0a5ba29120203021a560a2600240801"
    "12204cb5abf6ad79fbf5abbccafcc269d85cd2651ed4b885b5869f241aedf0a5ba291226002408011220f381626e41e7027e"
    "a431bfe3009e94bdd25a746beec468948d6c3c7c5dc9a54b18feaad5d8062a40c1355c88de5f3c5b84e6466230e45863460b"
    "c48c4e17cdffcf5c7d27bc7553b96934d59ba1b2ebfd94447a0a11704821cc4a756183648259c4d8b4b614d2a103"
)


def addr(text: str) -> Multiaddr:
    return Multiaddr.parse(text)


JS_CLIENT: dict[str, tuple[str, HopMessage | StopMessage]] = {
    "HOP RESERVE": ("0800", HopMessage(HopType.RESERVE)),  # type RESERVE is 0: written all the same
    "HOP CONNECT": (  # the target's ID and, as its only address, the circuit address's /p2p/<target> tail
        "080112530a260024080112204cb5abf6ad79fbf5abbccafcc269d85cd2651ed4b885b5869f241aedf0a5ba291229a50326"
        "0024080112204cb5abf6ad79fbf5abbccafcc269d85cd2651ed4b885b5869f241aedf0a5ba29",
        HopMessage(HopType.CONNECT, peer=RelayPeer(JS1, (addr(f"/p2p/{JS1}"),))),
    ),
    "STOP STATUS OK": ("08012064", StopMessage(StopType.STATUS, status=Status.OK)),
}

JS_RELAY: dict[str, tuple[str, HopMessage | StopMessage]] = {
    "HOP STATUS OK to RESERVE": (  # reservation (expire, its address with /p2p/, voucher), then limit
        "08021a800208feaad5d8061231047f00000106819da503260024080112204cb5abf6ad79fbf5abbccafcc269d85cd2651ed4b8"
        "85b5869f241aedf0a5ba291ac401" + VOUCHER.hex() + "220808c0a907108080082864",
        HopMessage(
            HopType.STATUS,
            reservation=Reservation(EXPIRE, (addr(f"/ip4/127.0.0.1/tcp/33181/p2p/{JS1}"),), VOUCHER),
            limit=DEFAULT_LIMIT,
            status=Status.OK,
        ),
    ),
    "HOP STATUS OK to CONNECT (data 1 MiB, duration 60 s)": (
        "0802220808e0d403108080402864",
        HopMessage(HopType.STATUS, limit=Limit(duration=60_000, data=1 << 20), status=Status.OK),
    ),
    "HOP STATUS NO_RESERVATION": ("080228cc01", HopMessage(HopType.STATUS, status=Status.NO_RESERVATION)),
    "HOP STATUS MALFORMED_MESSAGE to an empty body": (
        "0802289003",
        HopMessage(HopType.STATUS, status=Status.MALFORMED_MESSAGE),
    ),
    "STOP CONNECT": (  # the source's ID without addresses, the reservation's limit
        "080012280a260024080112207422b9887598068e32c4448a949adb290d0f4e35b9e01b0ee5f1a1e600fe26741a0808c0a907"
        "10808008",
        StopMessage(StopType.CONNECT, peer=RelayPeer(JS2), limit=DEFAULT_LIMIT),
    ),
}

LITERALS = {f"client: {k}": v for k, v in JS_CLIENT.items()} | {f"relay: {k}": v for k, v in JS_RELAY.items()}


@pytest.mark.parametrize(("hexed", "expected"), list(LITERALS.values()), ids=list(LITERALS))
def test_circuit_relay_v2_bytes_decode_to_their_fields_and_encode_back_identical(
    hexed: str, expected: HopMessage | StopMessage
) -> None:
    body = bytes.fromhex(hexed)
    if isinstance(expected, HopMessage):
        assert decode_hop(body) == (expected, 0)
        assert encode_hop(expected) == body
    else:
        assert decode_stop(body) == (expected, 0)
        assert encode_stop(expected) == body


def test_protocol_ids() -> None:
    assert HOP_PROTOCOL == "/libp2p/circuit/relay/0.2.0/hop"
    assert STOP_PROTOCOL == "/libp2p/circuit/relay/0.2.0/stop"


def test_the_voucher_is_an_envelope_the_relay_signed_for_the_reserving_peer() -> None:
    """What a later step verifies: public_key (1), payload_type 0x0302 (2), payload (3): a
    ReservationVoucher {relay 1, peer 2, expiration 3 = the reservation's expire}, signature (5) over the
    varint-prefixed domain ``libp2p-relay-rsvp``, payload type and payload."""
    env = {n: v for n, _w, v in iter_fields(VOUCHER)}
    assert set(env) == {1, 2, 3, 5}
    assert isinstance(env[1], bytes) and isinstance(env[2], bytes)
    assert isinstance(env[3], bytes) and isinstance(env[5], bytes)
    key = PublicKey.from_protobuf(env[1])
    assert PeerId.from_public_key(key) == JS1
    assert env[2] == b"\x03\x02"
    assert {n: v for n, _w, v in iter_fields(env[3])} == {1: JS1.to_bytes(), 2: PY.to_bytes(), 3: EXPIRE}
    signed = b"".join(encode_uvarint(len(p)) + p for p in (b"libp2p-relay-rsvp", env[2], env[3]))
    assert key.verify(signed, env[5])
    assert not key.verify(signed, env[5][:-1] + bytes([env[5][-1] ^ 1]))


# ---------------------------------------------------------------- the layout circuit-relay-v2 writes


def peer_body(peer: PeerId, *addrs: bytes) -> bytes:
    return encode_bytes_field(1, peer.to_bytes()) + b"".join(encode_bytes_field(2, a) for a in addrs)


def test_fields_go_in_field_number_order_and_zeros_that_are_present_are_written() -> None:
    a = addr("/ip4/10.0.0.1/tcp/4001")
    msg = HopMessage(
        HopType.RESERVE,
        peer=RelayPeer(JS1, (a,)),
        reservation=Reservation(0, (a,), b""),
        limit=Limit(duration=0, data=0),
        status=Status.UNUSED,
    )
    expected = (
        bytes.fromhex("0800")
        + encode_bytes_field(2, peer_body(JS1, a.to_bytes()))
        + encode_bytes_field(3, encode_bytes_field(2, a.to_bytes()) + bytes.fromhex("1a00"))  # no expire
        + encode_bytes_field(4, bytes.fromhex("0800" + "1000"))
        + bytes.fromhex("2800")
    )
    assert encode_hop(msg) == expected
    assert decode_hop(expected) == (msg, 0)
    stop = StopMessage(StopType.CONNECT, peer=RelayPeer(JS2), limit=Limit(), status=Status.UNUSED)
    stop_bytes = (
        bytes.fromhex("0800") + encode_bytes_field(2, peer_body(JS2)) + bytes.fromhex("1a00" + "2000")
    )
    assert encode_stop(stop) == stop_bytes
    assert decode_stop(stop_bytes) == (stop, 0)


def test_absent_parts_are_left_out() -> None:
    assert encode_hop(HopMessage(HopType.STATUS, limit=Limit(data=5))) == bytes.fromhex("0802" + "22021005")
    assert encode_hop(HopMessage(HopType.CONNECT, reservation=Reservation(7))) == bytes.fromhex(
        "0801" + "1a020807"
    )
    assert encode_stop(StopMessage(StopType.STATUS)) == bytes.fromhex("0801")
    # an explicit expire 0 decodes to the same message (and encodes back without it)
    assert decode_hop(bytes.fromhex("0802" + "1a020800"))[0].reservation == Reservation(0)


def test_go_order_decodes_the_same() -> None:
    body = bytes.fromhex(JS_RELAY["HOP STATUS OK to RESERVE"][0])
    fields = [(n, w, v) for n, w, v in iter_fields(body)]
    shuffled = b"".join(
        encode_varint_field(n, v) if isinstance(v, int) else encode_bytes_field(n, v)
        for n, _w, v in reversed(fields)
    )
    assert decode_hop(shuffled) == decode_hop(body)


def test_unknown_fields_are_skipped() -> None:
    body = (
        bytes.fromhex("0801")
        + encode_varint_field(9, 7)
        + encode_bytes_field(15, b"x")
        + b"\x31"
        + bytes(8)  # field 6, fixed64
        + encode_bytes_field(2, peer_body(JS1) + encode_bytes_field(9, b"later"))
        + encode_bytes_field(4, encode_varint_field(1, 5) + encode_varint_field(7, 1))
    )
    assert decode_hop(body) == (HopMessage(HopType.CONNECT, peer=RelayPeer(JS1), limit=Limit(duration=5)), 0)
    reservation = encode_bytes_field(3, encode_varint_field(1, 9) + encode_bytes_field(4, b"?"))
    assert decode_hop(bytes.fromhex("0802") + reservation)[0].reservation == Reservation(9)


def test_a_repeated_singular_field_keeps_its_last_value() -> None:
    body = bytes.fromhex("0800" + "0801" + "2864" + "28c801")
    assert decode_hop(body) == (HopMessage(HopType.CONNECT, status=Status.RESERVATION_REFUSED), 0)


# ---------------------------------------------------------------- hostile input

RESERVE_OK = bytes.fromhex(JS_RELAY["HOP STATUS OK to RESERVE"][0])
STOP_CONNECT = bytes.fromhex(JS_RELAY["STOP CONNECT"][0])


def test_relay_message_error_is_a_protocol_error() -> None:
    assert issubclass(RelayMessageError, ProtocolError)
    assert ProtocolErrorKind.RELAY == "relay"


@pytest.mark.parametrize("cut", range(1, len(RESERVE_OK)))
def test_truncated_hop_messages_raise_or_lose_whole_fields(cut: int) -> None:
    body = RESERVE_OK[:cut]
    try:
        msg, dropped = decode_hop(body)
    except RelayMessageError:
        return
    # a cut that falls between fields is a shorter valid message
    assert encode_hop(msg) == body
    assert dropped == 0


@pytest.mark.parametrize("cut", range(1, len(STOP_CONNECT)))
def test_truncated_stop_messages_raise_or_lose_whole_fields(cut: int) -> None:
    body = STOP_CONNECT[:cut]
    try:
        msg, dropped = decode_stop(body)
    except RelayMessageError:
        return
    assert encode_stop(msg) == body
    assert dropped == 0


@pytest.mark.parametrize(
    ("hexed", "why"),
    [
        ("", "no type at all"),
        ("2864", "a status but no type"),
        ("08", "truncated varint"),
        ("0880", "truncated varint"),
        ("08021205aabb", "truncated length-delimited field"),
        ("0a0102", "type as length-delimited"),
        ("08011001", "peer as varint"),
        ("08021801", "reservation as varint"),
        ("08022001", "limit as varint"),
        ("08022a0164", "status as length-delimited"),
        ("08020b", "wire type 3 (start group)"),
        ("08020f", "wire type 7"),
        ("080200", "field 0"),
        ("0803", "unknown type 3"),
        ("08ffffffff0f", "type -1 as a uint32"),
        ("08022865", "unknown status 101"),
        ("08022801", "unknown status 1"),
        ("0802120208aa", "peer with the id as varint"),
        ("080112021001", "peer with an address as varint"),
        ("08011203" + "0a05aa", "peer truncated inside"),
        ("08021a020a00", "reservation expire as length-delimited"),
        ("08021a021001", "reservation address as varint"),
        ("08021a021801", "reservation voucher as varint"),
        ("080222020a00", "limit duration as length-delimited"),
        ("0802220212aa", "limit data as length-delimited"),
        ("080222060880808080" + "10", "limit duration 2**32"),
        ("0802220b" + "10ffffffffffffffffff01", "limit data past 2**63 (ten varint bytes)"),
    ],
)
def test_malformed_hop_messages_raise(hexed: str, why: str) -> None:
    with pytest.raises(RelayMessageError):
        decode_hop(bytes.fromhex(hexed))


@pytest.mark.parametrize(
    ("hexed", "why"),
    [
        ("", "no type at all"),
        ("2064", "a status but no type"),
        ("0802", "unknown type 2"),
        ("08012065", "unknown status 101"),
        ("08001a0212aa", "limit data as length-delimited"),
        ("08001801", "limit as varint"),
        ("08002201aa", "status as length-delimited"),
        ("0800120208aa", "peer with the id as varint"),
    ],
)
def test_malformed_stop_messages_raise(hexed: str, why: str) -> None:
    with pytest.raises(RelayMessageError):
        decode_stop(bytes.fromhex(hexed))


def test_over_the_size_cap_raises_before_reading() -> None:
    limits = RelayLimits(max_message_size=len(RESERVE_OK) - 1)
    with pytest.raises(RelayMessageError, match="byte cap"):
        decode_hop(RESERVE_OK, limits)
    assert decode_hop(RESERVE_OK, dataclasses.replace(limits, max_message_size=len(RESERVE_OK)))[1] == 0
    with pytest.raises(RelayMessageError, match="byte cap"):
        decode_stop(STOP_CONNECT, RelayLimits(max_message_size=len(STOP_CONNECT) - 1))
    # the default cap: go-libp2p's 4096
    assert RelayLimits().max_message_size == 4096
    with pytest.raises(RelayMessageError, match="byte cap"):
        decode_hop(bytes.fromhex("0802") + encode_bytes_field(9, bytes(4096)))


def test_a_voucher_over_max_voucher_size_raises() -> None:
    reservation = decode_hop(RESERVE_OK, RelayLimits(max_voucher_size=len(VOUCHER)))[0].reservation
    assert reservation is not None and reservation.voucher == VOUCHER
    with pytest.raises(RelayMessageError, match="voucher of 196 bytes"):
        decode_hop(RESERVE_OK, RelayLimits(max_voucher_size=len(VOUCHER) - 1))


@pytest.mark.parametrize(
    "bad_id",
    [
        b"",  # no id at all
        b"\x12\x20" + bytes(31),  # sha2-256 digest one byte short
        b"\x13\x20" + bytes(32),  # not a peer ID's multihash code
        b"\x00\x05abcde",  # identity multihash of something that is not a key
        b"\xff",  # truncated varint
    ],
)
def test_a_peer_with_an_invalid_id_is_dropped_and_counted(bad_id: bytes) -> None:
    a = addr("/ip4/10.0.0.1/tcp/4001")
    bad = (encode_bytes_field(1, bad_id) if bad_id else b"") + encode_bytes_field(2, a.to_bytes())
    hop = bytes.fromhex("0801") + encode_bytes_field(2, bad)
    assert decode_hop(hop) == (HopMessage(HopType.CONNECT), 1)
    stop = bytes.fromhex("0800") + encode_bytes_field(2, bad) + encode_bytes_field(3, b"")
    assert decode_stop(stop) == (StopMessage(StopType.CONNECT, limit=Limit()), 1)


GARBAGE_ADDRS = [b"", b"\x04\xc0", b"\xff\xff\x03", b"\x06", bytes(2000)]


def test_garbage_addresses_are_dropped_and_counted() -> None:
    good = addr("/ip4/10.0.0.1/tcp/4001")
    addrs = [GARBAGE_ADDRS[0], good.to_bytes(), *GARBAGE_ADDRS[1:]]
    hop = bytes.fromhex("0801") + encode_bytes_field(2, peer_body(JS1, *addrs))
    assert decode_hop(hop) == (HopMessage(HopType.CONNECT, peer=RelayPeer(JS1, (good,))), len(GARBAGE_ADDRS))
    reservation = encode_varint_field(1, 5) + b"".join(encode_bytes_field(2, a) for a in addrs)
    hop = bytes.fromhex("0802") + encode_bytes_field(3, reservation)
    assert decode_hop(hop) == (
        HopMessage(HopType.STATUS, reservation=Reservation(5, (good,))),
        len(GARBAGE_ADDRS),
    )
    stop = bytes.fromhex("0800") + encode_bytes_field(2, peer_body(JS2, *addrs))
    assert decode_stop(stop) == (
        StopMessage(StopType.CONNECT, peer=RelayPeer(JS2, (good,))),
        len(GARBAGE_ADDRS),
    )


def test_addresses_past_max_addrs_are_dropped_and_counted() -> None:
    addrs = [addr(f"/ip4/10.0.0.{i}/tcp/4001") for i in range(6)]
    raw = [a.to_bytes() for a in addrs]
    limits = RelayLimits(max_addrs=4)
    reservation = encode_varint_field(1, 5) + b"".join(encode_bytes_field(2, a) for a in raw)
    hop = (
        bytes.fromhex("0802")
        + encode_bytes_field(2, peer_body(JS1, *raw))
        + encode_bytes_field(3, reservation)
    )
    msg, dropped = decode_hop(hop, limits)
    assert msg.peer == RelayPeer(JS1, tuple(addrs[:4]))
    assert msg.reservation == Reservation(5, tuple(addrs[:4]))
    assert dropped == 4  # two past the cap in each
    msg_stop, dropped = decode_stop(
        bytes.fromhex("0800") + encode_bytes_field(2, peer_body(JS2, *raw)), limits
    )
    assert msg_stop.peer == RelayPeer(JS2, tuple(addrs[:4])) and dropped == 2


def test_limits_at_the_edges_of_their_ranges() -> None:
    top = HopMessage(HopType.STATUS, limit=Limit(duration=2**32 - 1, data=2**63 - 1))
    body = encode_hop(top)
    assert body == bytes.fromhex("0802" + "2210" + "08ffffffff0f" + "10ffffffffffffffff7f")
    assert decode_hop(body) == (top, 0)
    for bad in (Limit(duration=-1), Limit(duration=2**32), Limit(data=-1), Limit(data=2**63)):
        with pytest.raises(LocalError):
            encode_hop(HopMessage(HopType.STATUS, limit=bad))
        with pytest.raises(LocalError):
            encode_stop(StopMessage(StopType.CONNECT, limit=bad))
    for expire in (-1, 2**63):
        with pytest.raises(LocalError):
            encode_hop(HopMessage(HopType.STATUS, reservation=Reservation(expire)))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_relay_message_error(buf: bytes) -> None:
    try:
        hop, _ = decode_hop(buf)
    except RelayMessageError:
        pass
    else:
        assert decode_hop(encode_hop(hop)) == (hop, 0)
    try:
        stop, _ = decode_stop(buf)
    except RelayMessageError:
        return
    assert decode_stop(encode_stop(stop)) == (stop, 0)


# ---------------------------------------------------------------- round trip

_PEERS = [JS1, JS2, PeerId(b"\x12\x20" + bytes(range(32)))]
_ADDRS = [
    addr(t)
    for t in (
        "/ip4/127.0.0.1/tcp/4001",
        "/ip6/::1/tcp/1/p2p/" + str(JS1),
        "/dns4/example.org/tcp/443/wss",
        f"/ip4/1.2.3.4/tcp/1/p2p/{JS1}/p2p-circuit/p2p/{JS2}",
    )
]
addr_lists = st.lists(st.sampled_from(_ADDRS), max_size=4).map(tuple)
relay_peers = st.builds(RelayPeer, st.sampled_from(_PEERS), addr_lists)
limits_st = st.builds(Limit, st.none() | st.integers(0, 2**32 - 1), st.none() | st.integers(0, 2**63 - 1))
reservations = st.builds(
    Reservation, st.integers(0, 2**63 - 1), addr_lists, st.none() | st.binary(max_size=300)
)
statuses = st.none() | st.sampled_from(Status)
hop_messages = st.builds(
    HopMessage,
    st.sampled_from(HopType),
    st.none() | relay_peers,
    st.none() | reservations,
    st.none() | limits_st,
    statuses,
)
stop_messages = st.builds(
    StopMessage, st.sampled_from(StopType), st.none() | relay_peers, st.none() | limits_st, statuses
)


@settings(max_examples=500)
@given(hop_messages)
def test_hop_round_trip(msg: HopMessage) -> None:
    body = encode_hop(msg)
    assert decode_hop(body) == (msg, 0)
    assert encode_hop(decode_hop(body)[0]) == body


@settings(max_examples=300)
@given(stop_messages)
def test_stop_round_trip(msg: StopMessage) -> None:
    body = encode_stop(msg)
    assert decode_stop(body) == (msg, 0)
    assert encode_stop(decode_stop(body)[0]) == body
