"""The AutoNAT v1 codec: literal bytes @libp2p/autonat 2.0.16 wrote, hostile input, a round trip.

The literals are what ``cd interop && node nat-encode.mjs`` printed (its ``autonat`` part;
interop/test_nat_encode_interop.py checks they still are): @libp2p/autonat's own
protons encoder (``dist/src/pb/index.js``) on messages shaped as autonat.js sends them: its DIAL
request (``askPeerToVerify``) and its server's DIAL_RESPONSE answers (``handleAutonatMessage``).
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimirlite.errors import ProtocolError, ProtocolErrorKind
from mimirlite.identity import PeerId
from mimirlite.protocols.autonat import (
    AUTONAT_PROTOCOL,
    AutonatLimits,
    AutonatMessage,
    AutonatMessageError,
    Dial,
    DialResponse,
    MessageType,
    PeerInfo,
    ResponseStatus,
    decode_message,
    encode_message,
)
from mimirlite.wire.multiaddr import Multiaddr
from mimirlite.wire.protobuf import encode_bytes_field, encode_varint_field

JS1 = PeerId.from_string("12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp")  # kad-peer --key-seed 1
A = Multiaddr.parse("/ip4/81.2.69.142/tcp/4001")


def addr(text: str) -> Multiaddr:
    return Multiaddr.parse(text)


def response(status: ResponseStatus, text: str | None = None, at: Multiaddr | None = None) -> AutonatMessage:
    return AutonatMessage(MessageType.DIAL_RESPONSE, dial_response=DialResponse(status, text, at))


JS_AUTONAT: dict[str, tuple[str, AutonatMessage]] = {
    "DIAL one address": (
        "080012340a320a260024080112204cb5abf6ad79fbf5abbccafcc269d85cd2651ed4b885b5869f241aedf0a5ba291208045102458e060fa1",
        AutonatMessage(MessageType.DIAL, dial=Dial(PeerInfo(JS1, (A,)))),
    ),
    "DIAL three addresses": (
        "0800127d0a7b0a260024080112204cb5abf6ad79fbf5abbccafcc269d85cd2651ed4b885b5869f241aedf0a5ba291208045102458e060fa11214292a001450000000000000000000000007060fa11231045102458e060fa2a503260024080112204cb5abf6ad79fbf5abbccafcc269d85cd2651ed4b885b5869f241aedf0a5ba29",
        AutonatMessage(
            MessageType.DIAL,
            dial=Dial(
                PeerInfo(
                    JS1,
                    (A, addr("/ip6/2a00:1450::7/tcp/4001"), addr(f"/ip4/81.2.69.142/tcp/4002/p2p/{JS1}")),
                )
            ),
        ),
    ),
    "DIAL_RESPONSE OK": ("08011a0c08001a08045102458e060fa1", response(ResponseStatus.OK, at=A)),
    "DIAL_RESPONSE E_DIAL_ERROR": (
        "08011a5f08641228546865206f7065726174696f6e207761732061626f727465642064756520746f2074696d656f75741a31045102458e060fa1a503260024080112204cb5abf6ad79fbf5abbccafcc269d85cd2651ed4b885b5869f241aedf0a5ba29",
        response(
            ResponseStatus.E_DIAL_ERROR,
            "The operation was aborted due to timeout",
            addr(f"/ip4/81.2.69.142/tcp/4001/p2p/{JS1}"),
        ),
    ),
    "DIAL_RESPONSE E_DIAL_ERROR empty text": (
        "08011a0e086412001a08045102458e060fa1",
        response(ResponseStatus.E_DIAL_ERROR, "", A),
    ),
    "DIAL_RESPONSE E_DIAL_REFUSED": (
        "08011a19086512156e6f206469616c61626c6520616464726573736573",
        response(ResponseStatus.E_DIAL_REFUSED, "no dialable addresses"),
    ),
    "DIAL_RESPONSE E_BAD_REQUEST": (
        "08011a2508c80112204e6f204469616c206d65737361676520666f756e6420696e206d657373616765",
        response(ResponseStatus.E_BAD_REQUEST, "No Dial message found in message"),
    ),
    "DIAL_RESPONSE E_INTERNAL_ERROR": (
        "08011a0a08ac021205c3bc62656c",
        response(ResponseStatus.E_INTERNAL_ERROR, "übel"),
    ),
}


@pytest.mark.parametrize(("hexed", "expected"), list(JS_AUTONAT.values()), ids=list(JS_AUTONAT))
def test_js_autonat_bytes_decode_to_their_fields_and_encode_back_identical(
    hexed: str, expected: AutonatMessage
) -> None:
    body = bytes.fromhex(hexed)
    assert decode_message(body) == (expected, 0)
    assert encode_message(expected) == body


def test_protocol_id_and_error_kind() -> None:
    assert AUTONAT_PROTOCOL == "/libp2p/autonat/1.0.0"
    assert issubclass(AutonatMessageError, ProtocolError)
    assert ProtocolErrorKind.AUTONAT == "autonat"


def test_defaults_are_written_as_protons_writes_them() -> None:
    # type DIAL (0) and status OK (0) are on the wire; an empty dial is an empty field
    assert encode_message(AutonatMessage(MessageType.DIAL)) == bytes.fromhex("0800")
    assert encode_message(AutonatMessage(MessageType.DIAL, Dial())) == bytes.fromhex("08001200")
    assert encode_message(AutonatMessage(MessageType.DIAL, Dial(PeerInfo(None)))) == bytes.fromhex(
        "080012020a00"
    )
    assert encode_message(response(ResponseStatus.OK)) == bytes.fromhex("08011a020800")
    for body in ("0800", "08001200", "080012020a00", "08011a020800"):
        assert encode_message(decode_message(bytes.fromhex(body))[0]) == bytes.fromhex(body)


def test_unknown_fields_are_skipped_and_the_last_singular_field_wins() -> None:
    peer = (
        encode_bytes_field(1, JS1.to_bytes())
        + encode_bytes_field(9, b"x")
        + encode_bytes_field(2, A.to_bytes())
    )
    body = (
        encode_varint_field(1, 1)
        + encode_varint_field(7, 3)
        + b"\x25"
        + bytes(4)  # field 4, fixed32
        + encode_bytes_field(2, encode_bytes_field(1, peer) + encode_varint_field(5, 1))
        + encode_varint_field(1, 0)  # type again: DIAL
    )
    assert decode_message(body) == (AutonatMessage(MessageType.DIAL, Dial(PeerInfo(JS1, (A,)))), 0)


# ---------------------------------------------------------------- hostile input

DIAL3 = bytes.fromhex(JS_AUTONAT["DIAL three addresses"][0])


@pytest.mark.parametrize("cut", range(1, len(DIAL3)))
def test_truncated_messages_raise_or_lose_whole_fields(cut: int) -> None:
    body = DIAL3[:cut]
    try:
        msg, dropped = decode_message(body)
    except AutonatMessageError:
        return
    assert encode_message(msg) == body  # a cut between top-level fields: "0800" alone
    assert dropped == 0


@pytest.mark.parametrize(
    ("hexed", "why"),
    [
        ("", "no type"),
        ("1200", "a dial without a type"),
        ("08", "truncated varint"),
        ("0880", "truncated varint"),
        ("0802", "unknown type 2"),
        ("08ffffffff0f", "type -1"),
        ("0a0100", "type as length-delimited"),
        ("0800" + "1001", "dial as varint"),
        ("0801" + "1801", "dialResponse as varint"),
        ("0800" + "1205aabb", "truncated dial"),
        ("0800" + "12020801", "dial's peer as varint"),
        ("0800" + "12040a020801", "peer id as varint"),
        ("0800" + "12040a021001", "peer addrs as varint"),
        ("0801" + "1a00", "a response without a status"),
        ("0801" + "1a021201", "statusText truncated"),
        ("0801" + "1a020801", "unknown status 1"),
        ("0801" + "1a03086601", "unknown status 102"),
        ("0801" + "1a0408001801", "addr as varint"),
        ("0801" + "1a06080012029fff", "statusText not UTF-8"),
        ("0b", "wire type 3"),
        ("00", "field 0"),
    ],
)
def test_malformed_messages_raise(hexed: str, why: str) -> None:
    with pytest.raises(AutonatMessageError):
        decode_message(bytes.fromhex(hexed))


def test_over_the_size_cap_raises_before_reading() -> None:
    with pytest.raises(AutonatMessageError, match="byte cap"):
        decode_message(DIAL3, AutonatLimits(max_message_size=len(DIAL3) - 1))
    assert decode_message(DIAL3, AutonatLimits(max_message_size=len(DIAL3)))[1] == 0
    with pytest.raises(AutonatMessageError, match="8192 byte cap"):  # the default, @libp2p/autonat's
        decode_message(b"\x08\x00\x12" + bytes(8190))


def dial_body(peer: bytes | None, *addrs: bytes) -> bytes:
    info = (b"" if peer is None else encode_bytes_field(1, peer)) + b"".join(
        encode_bytes_field(2, a) for a in addrs
    )
    return bytes.fromhex("0800") + encode_bytes_field(2, encode_bytes_field(1, info))


def test_addresses_past_max_addrs_are_dropped_and_counted_and_an_absurd_list_raises() -> None:
    addrs = [addr(f"/ip4/203.0.113.{i}/tcp/4001") for i in range(20)]
    body = dial_body(JS1.to_bytes(), *(a.to_bytes() for a in addrs))
    msg, dropped = decode_message(body)  # default: 16 kept, go-libp2p's maxPeerAddresses
    assert msg.dial is not None and msg.dial.peer is not None
    assert (msg.dial.peer.addrs, dropped) == (tuple(addrs[:16]), 4)
    limits = AutonatLimits(max_addrs=2, max_addrs_listed=20)
    msg, dropped = decode_message(body, limits)
    assert msg.dial is not None and msg.dial.peer is not None
    assert (msg.dial.peer.addrs, dropped) == (tuple(addrs[:2]), 18)
    with pytest.raises(AutonatMessageError, match="more than 19 addresses"):
        decode_message(body, dataclasses.replace(limits, max_addrs_listed=19))
    # the default: 128 listed; 129 tiny garbage entries fit in 8 KiB but are refused
    with pytest.raises(AutonatMessageError, match="more than 128"):
        decode_message(dial_body(JS1.to_bytes(), *([b"\x06"] * 129)))


def test_garbage_addresses_are_dropped_and_counted() -> None:
    garbage = [b"", b"\x04\xc0", b"\xff\xff\x03", b"\x06", bytes(2000)]
    msg, dropped = decode_message(dial_body(JS1.to_bytes(), garbage[0], A.to_bytes(), *garbage[1:]))
    assert msg == AutonatMessage(MessageType.DIAL, Dial(PeerInfo(JS1, (A,))))
    assert dropped == len(garbage)
    # a response's address that does not decode: None, counted
    body = bytes.fromhex("0801") + encode_bytes_field(
        3, bytes.fromhex("0800") + encode_bytes_field(3, b"\x04\xc0")
    )
    assert decode_message(body) == (response(ResponseStatus.OK), 1)


@pytest.mark.parametrize(
    "bad_id",
    [
        b"",
        b"\x12\x20" + bytes(31),  # sha2-256 digest one byte short
        b"\x13\x20" + bytes(32),  # not a peer ID's multihash code
        b"\x00\x05abcde",  # identity multihash of something that is not a key
        b"\xff",
    ],
)
def test_a_peer_id_that_is_not_one_reads_as_none_and_is_counted(bad_id: bytes) -> None:
    msg, dropped = decode_message(dial_body(bad_id, A.to_bytes()))
    assert msg == AutonatMessage(MessageType.DIAL, Dial(PeerInfo(None, (A,))))
    assert dropped == 1
    # no id at all is no error either: the server answers E_BAD_REQUEST
    assert decode_message(dial_body(None, A.to_bytes())) == (msg, 0)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_autonat_message_error(buf: bytes) -> None:
    try:
        msg, _ = decode_message(buf)
    except AutonatMessageError:
        return
    assert decode_message(encode_message(msg)) == (msg, 0)


# ---------------------------------------------------------------- round trip

_PEERS = [JS1, PeerId(b"\x12\x20" + bytes(range(32)))]
_ADDRS = [A, addr("/ip6/2a00:1450::7/tcp/1/p2p/" + str(JS1)), addr("/dns4/example.org/tcp/443/wss")]
peer_infos = st.builds(
    PeerInfo, st.none() | st.sampled_from(_PEERS), st.lists(st.sampled_from(_ADDRS), max_size=4).map(tuple)
)
dial_responses = st.builds(
    DialResponse,
    st.sampled_from(ResponseStatus),
    st.none() | st.text(max_size=40),
    st.none() | st.sampled_from(_ADDRS),
)
messages = st.builds(
    AutonatMessage,
    st.sampled_from(MessageType),
    st.none() | st.builds(Dial, st.none() | peer_infos),
    st.none() | dial_responses,
)


@settings(max_examples=500)
@given(messages)
def test_round_trip(msg: AutonatMessage) -> None:
    body = encode_message(msg)
    assert decode_message(body) == (msg, 0)
    assert encode_message(decode_message(body)[0]) == body
