"""The DCUtR codec: literal bytes @libp2p/dcutr 2.0.15 wrote, hostile input, a round trip.

The literals are what ``cd interop && node nat-encode.mjs`` printed (its ``dcutr`` part;
interop/test_nat_encode_interop.py checks they still are): @libp2p/dcutr's own
protons encoder (``dist/src/pb/message.js``) on messages shaped as dcutr.js sends them (CONNECT with the
address manager's addresses, SYNC with an empty list).
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimirlite.errors import ProtocolError, ProtocolErrorKind
from mimirlite.identity import PeerId
from mimirlite.protocols.dcutr import (
    DCUTR_PROTOCOL,
    DcutrLimits,
    DcutrMessageError,
    HolePunch,
    HolePunchType,
    decode_message,
    encode_message,
)
from mimirlite.wire.multiaddr import Multiaddr
from mimirlite.wire.protobuf import encode_bytes_field, encode_varint_field

JS1 = PeerId.from_string("12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp")  # kad-peer --key-seed 1


def addr(text: str) -> Multiaddr:
    return Multiaddr.parse(text)


JS_DCUTR: dict[str, tuple[str, HolePunch]] = {
    "CONNECT": (
        "08641208045db8d822060fa112142926064700000000000000000000001111060fa1",
        HolePunch(
            HolePunchType.CONNECT,
            (addr("/ip4/93.184.216.34/tcp/4001"), addr("/ip6/2606:4700::1111/tcp/4001")),
        ),
    ),
    "CONNECT with relay and private addresses": (
        "08641208045db8d822060fa1123304c0000201060fa1a503260024080112204cb5abf6ad79fbf5abbccafcc269d85cd2651ed4b885b5869f241aedf0a5ba29a202120804c0a80109060fa11208047f000001060fa1",
        HolePunch(
            HolePunchType.CONNECT,
            (
                addr("/ip4/93.184.216.34/tcp/4001"),
                addr(f"/ip4/192.0.2.1/tcp/4001/p2p/{JS1}/p2p-circuit"),
                addr("/ip4/192.168.1.9/tcp/4001"),
                addr("/ip4/127.0.0.1/tcp/4001"),
            ),
        ),
    ),
    "SYNC": ("08ac02", HolePunch(HolePunchType.SYNC)),
}


@pytest.mark.parametrize(("hexed", "expected"), list(JS_DCUTR.values()), ids=list(JS_DCUTR))
def test_js_dcutr_bytes_decode_to_their_fields_and_encode_back_identical(
    hexed: str, expected: HolePunch
) -> None:
    body = bytes.fromhex(hexed)
    assert decode_message(body) == (expected, 0)
    assert encode_message(expected) == body


def test_protocol_id_and_error_kind() -> None:
    assert DCUTR_PROTOCOL == "/libp2p/dcutr"
    assert issubclass(DcutrMessageError, ProtocolError)
    assert ProtocolErrorKind.DCUTR == "dcutr"


def test_unknown_fields_are_skipped_and_the_last_type_wins() -> None:
    a = addr("/ip4/93.184.216.34/tcp/4001")
    body = (
        encode_varint_field(1, 300)
        + encode_bytes_field(7, b"x")
        + b"\x19"
        + bytes(8)  # field 3, fixed64
        + encode_bytes_field(2, a.to_bytes())
        + encode_varint_field(1, 100)
    )
    assert decode_message(body) == (HolePunch(HolePunchType.CONNECT, (a,)), 0)


# ---------------------------------------------------------------- hostile input

CONNECT = bytes.fromhex(JS_DCUTR["CONNECT"][0])


@pytest.mark.parametrize("cut", range(1, len(CONNECT)))
def test_truncated_messages_raise_or_lose_whole_fields(cut: int) -> None:
    body = CONNECT[:cut]
    try:
        msg, dropped = decode_message(body)
    except DcutrMessageError:
        return
    assert encode_message(msg) == body
    assert dropped == 0


@pytest.mark.parametrize(
    ("hexed", "why"),
    [
        ("", "no type"),
        ("1200", "an address and no type"),
        ("08", "truncated varint"),
        ("08ac", "truncated varint"),
        ("0800", "UNUSED"),
        ("0865", "unknown type 101"),
        ("08ffffffff0f", "type -1"),
        ("0a0164", "type as length-delimited"),
        ("0864" + "1001", "an address as varint"),
        ("0864" + "1205aabb", "truncated address"),
        ("0b", "wire type 3"),
        ("00", "field 0"),
    ],
)
def test_malformed_messages_raise(hexed: str, why: str) -> None:
    with pytest.raises(DcutrMessageError):
        decode_message(bytes.fromhex(hexed))


def test_over_the_size_cap_raises_before_reading() -> None:
    with pytest.raises(DcutrMessageError, match="byte cap"):
        decode_message(CONNECT, DcutrLimits(max_message_size=len(CONNECT) - 1))
    assert decode_message(CONNECT, DcutrLimits(max_message_size=len(CONNECT)))[1] == 0
    with pytest.raises(DcutrMessageError, match="4096 byte cap"):  # the default, @libp2p/dcutr's and go's
        decode_message(b"\x08\x64\x12" + bytes(4094))


def connect(*addrs: bytes) -> bytes:
    return bytes.fromhex("0864") + b"".join(encode_bytes_field(2, a) for a in addrs)


def test_addresses_past_max_addrs_are_dropped_and_counted_and_an_absurd_list_raises() -> None:
    addrs = [addr(f"/ip4/198.51.100.{i}/tcp/4001") for i in range(20)]
    body = connect(*(a.to_bytes() for a in addrs))
    assert decode_message(body) == (HolePunch(HolePunchType.CONNECT, tuple(addrs[:16])), 4)
    limits = DcutrLimits(max_addrs=3, max_addrs_listed=20)
    assert decode_message(body, limits) == (HolePunch(HolePunchType.CONNECT, tuple(addrs[:3])), 17)
    with pytest.raises(DcutrMessageError, match="more than 19 addresses"):
        decode_message(body, dataclasses.replace(limits, max_addrs_listed=19))
    with pytest.raises(DcutrMessageError, match="more than 128"):  # the default
        decode_message(connect(*([b"\x06"] * 129)))


def test_garbage_addresses_are_dropped_and_counted() -> None:
    good = addr("/ip4/93.184.216.34/tcp/4001")
    garbage = [b"", b"\x04\xc0", b"\xff\xff\x03", b"\x06", bytes(2000)]
    msg, dropped = decode_message(connect(garbage[0], good.to_bytes(), *garbage[1:]))
    assert (msg, dropped) == (HolePunch(HolePunchType.CONNECT, (good,)), len(garbage))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_dcutr_message_error(buf: bytes) -> None:
    try:
        msg, _ = decode_message(buf)
    except DcutrMessageError:
        return
    assert decode_message(encode_message(msg)) == (msg, 0)


_ADDRS = [
    addr(t)
    for t in (
        "/ip4/93.184.216.34/tcp/4001",
        "/ip6/2001:db8::1/tcp/1/p2p/" + str(JS1),
        "/dns4/example.org/tcp/443/wss",
    )
]


@settings(max_examples=300)
@given(
    st.builds(
        HolePunch, st.sampled_from(HolePunchType), st.lists(st.sampled_from(_ADDRS), max_size=16).map(tuple)
    )
)
def test_round_trip(msg: HolePunch) -> None:
    body = encode_message(msg)
    assert decode_message(body) == (msg, 0)
    assert encode_message(decode_message(body)[0]) == body
