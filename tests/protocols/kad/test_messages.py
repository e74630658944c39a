"""The kad message codec: literal bytes @libp2p/kad-dht 14.2.0 wrote, hostile input, a round trip.

The literals come from one run of ``KAD_CAPTURE=/tmp/kadcap.json python -m pytest -q
interop/test_kad_capture_interop.py`` (js-libp2p 2.5, kad-dht 14.2.0 on the LAN protocol
``/ipfs/lan/kad/1.0.0``, all on 127.0.0.1): JS peer 1 (``kad-peer.mjs --key-seed 1``), JS peer 2
(``--key-seed 2``) and a mimirlite host (the same seed scheme, 3). ``JS_REQUESTS``: what JS peer 1 sent
the mimirlite host (its new-contact PING, its self-query, provide's FIND_NODE and ADD_PROVIDER, a
findProviders' GET_PROVIDERS, and PING, GET_VALUE and PUT_VALUE sent through kad-dht's Network);
``JS_ANSWERS``: what JS peer 1 answered to the mimirlite host's requests. Ports are that run's.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimirlite.errors import LocalError, ProtocolError, ProtocolErrorKind
from mimirlite.identity import PeerId
from mimirlite.protocols.kad.messages import (
    ConnectionType,
    KadMessage,
    KadMessageError,
    MessageLimits,
    MessageType,
    PeerInfo,
    decode_message,
    encode_message,
)
from mimirlite.wire.multiaddr import Multiaddr
from mimirlite.wire.protobuf import encode_bytes_field, encode_varint_field

JS1 = PeerId.from_string("12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp")  # --key-seed 1
JS2 = PeerId.from_string("12D3KooWHdiAxVd8uMQR1hGWXccidmfCwLqcMpGwR6QcTP6QRMuD")  # --key-seed 2
# dht_keys("llama3.2:latest"): the table CID's multihash (provided), the name CID's (looked up)
KEY_PROVIDED = bytes.fromhex("122005b8dc725be1f6dddb301a1c5103e5ef1141ef76ac4d57f83803a06d65973d55")
KEY_LOOKED_UP = bytes.fromhex("122017177962e7130a9fe50f07d9058650327164635c12fc381fedc3c2a552886b30")
VALUE_KEY = b"/mimirlite/capture"
RECORD = bytes.fromhex(
    "0a122f6d696d69726c6974652f636170747572651207636170747572652a18323032362d31322d30365430393a30303a30302e3030305a"
)


def addr(text: str) -> Multiaddr:
    return Multiaddr.parse(text)


JS_REQUESTS: dict[str, tuple[str, KadMessage]] = {
    "new-contact PING": ("0805", KadMessage(MessageType.PING)),
    "self-query FIND_NODE": (
        "080412260024080112204cb5abf6ad79fbf5abbccafcc269d85cd2651ed4b885b5869f241aedf0a5ba29",
        KadMessage(MessageType.FIND_NODE, key=JS1.to_bytes()),
    ),
    "provide FIND_NODE": (
        "08041222122005b8dc725be1f6dddb301a1c5103e5ef1141ef76ac4d57f83803a06d65973d55",
        KadMessage(MessageType.FIND_NODE, key=KEY_PROVIDED),
    ),
    "provide ADD_PROVIDER": (
        "08021222122005b8dc725be1f6dddb301a1c5103e5ef1141ef76ac4d57f83803a06d65973d554a5b0a260024080112204cb5ab"
        "f6ad79fbf5abbccafcc269d85cd2651ed4b885b5869f241aedf0a5ba291231047f000001069bffa503260024080112204cb5"
        "abf6ad79fbf5abbccafcc269d85cd2651ed4b885b5869f241aedf0a5ba29",
        KadMessage(
            MessageType.ADD_PROVIDER,
            key=KEY_PROVIDED,
            # the provider's addresses carry /p2p/<itself>
            providers=(PeerInfo(JS1, (addr(f"/ip4/127.0.0.1/tcp/39935/p2p/{JS1}"),)),),
        ),
    ),
    "findProviders GET_PROVIDERS": (
        "08031222122017177962e7130a9fe50f07d9058650327164635c12fc381fedc3c2a552886b30",
        KadMessage(MessageType.GET_PROVIDERS, key=KEY_LOOKED_UP),
    ),
    "GET_VALUE": (
        "080112122f6d696d69726c6974652f63617074757265",
        KadMessage(MessageType.GET_VALUE, key=VALUE_KEY),
    ),
    "PUT_VALUE": (  # type PUT_VALUE is 0: left out
        "12122f6d696d69726c6974652f636170747572651a370a122f6d696d69726c6974652f63617074757265120763617074757265"
        "2a18323032362d31322d30365430393a30303a30302e3030305a",
        KadMessage(MessageType.PUT_VALUE, key=VALUE_KEY, record=RECORD),
    ),
}

_JS2_ENTRY = PeerInfo(JS2, (addr("/ip4/127.0.0.1/tcp/36643"),))
JS_ANSWERS: dict[str, tuple[str, KadMessage]] = {
    "PING echoed": ("0805", KadMessage(MessageType.PING)),
    "FIND_NODE for JS 2": (  # no key in the answer; JS 2 twice (its peer store, then its routing table)
        "080442320a260024080112207422b9887598068e32c4448a949adb290d0f4e35b9e01b0ee5f1a1e600fe26741208047f0000"
        "01068f2342320a260024080112207422b9887598068e32c4448a949adb290d0f4e35b9e01b0ee5f1a1e600fe26741208047f"
        "000001068f23",
        KadMessage(MessageType.FIND_NODE, closer=(_JS2_ENTRY, _JS2_ENTRY)),
    ),
    "GET_PROVIDERS": (  # the key echoed; itself as provider; no peer closer than itself
        "08031222122005b8dc725be1f6dddb301a1c5103e5ef1141ef76ac4d57f83803a06d65973d554a320a260024080112204cb5ab"
        "f6ad79fbf5abbccafcc269d85cd2651ed4b885b5869f241aedf0a5ba291208047f00000106a409",
        KadMessage(
            MessageType.GET_PROVIDERS,
            key=KEY_PROVIDED,
            providers=(PeerInfo(JS1, (addr("/ip4/127.0.0.1/tcp/41993"),)),),
        ),
    ),
    "GET_VALUE of a key it lacks": (  # the key echoed, no record, closer peers
        "080112122f6d696d69726c6974652f6361707475726542320a260024080112207422b9887598068e32c4448a949adb290d0f4e"
        "35b9e01b0ee5f1a1e600fe26741208047f000001068f23",
        KadMessage(MessageType.GET_VALUE, key=VALUE_KEY, closer=(_JS2_ENTRY,)),
    ),
}

LITERALS = {f"request: {k}": v for k, v in JS_REQUESTS.items()} | {
    f"answer: {k}": v for k, v in JS_ANSWERS.items()
}


@pytest.mark.parametrize(("hexed", "expected"), list(LITERALS.values()), ids=list(LITERALS))
def test_kad_dht_bytes_decode_to_their_fields_and_encode_back_identical(
    hexed: str, expected: KadMessage
) -> None:
    body = bytes.fromhex(hexed)
    assert decode_message(body) == (expected, 0)
    assert encode_message(expected) == body


# ---------------------------------------------------------------- the layout kad-dht writes


def entry(peer: PeerId, *addrs: bytes, connection: int | None = None) -> bytes:
    """A ``Peer`` entry's body, fields as given."""
    out = encode_bytes_field(1, peer.to_bytes()) + b"".join(encode_bytes_field(2, a) for a in addrs)
    return out if connection is None else out + encode_varint_field(3, connection)


def test_field_order_is_kad_dht_s_not_the_field_numbers() -> None:
    a = addr("/ip4/10.0.0.1/tcp/4001")
    msg = KadMessage(
        MessageType.GET_PROVIDERS,
        key=b"k",
        record=b"r",
        closer=(PeerInfo(JS1, (a,), ConnectionType.CONNECTED),),
        providers=(PeerInfo(JS2),),
        cluster_level=3,
    )
    closer = entry(JS1, a.to_bytes(), connection=1)
    expected = (
        bytes.fromhex("0803")  # type
        + bytes.fromhex("5003")  # clusterLevel (field 10) right after the type, as dht.js writes it
        + encode_bytes_field(2, b"k")
        + encode_bytes_field(3, b"r")
        + encode_bytes_field(8, closer)
        + encode_bytes_field(9, entry(JS2))
    )
    assert encode_message(msg) == expected
    assert decode_message(expected) == (msg, 0)
    # go-libp2p writes by field number (clusterLevel last): the same message
    go_order = expected[:2] + expected[4:] + expected[2:4]
    assert decode_message(go_order) == (msg, 0)


def test_defaults_are_left_out() -> None:
    assert encode_message(KadMessage(MessageType.PUT_VALUE)) == b""
    assert decode_message(b"") == (KadMessage(MessageType.PUT_VALUE), 0)
    # an empty record is still a record
    assert encode_message(KadMessage(MessageType.PUT_VALUE, record=b"")) == b"\x1a\x00"
    assert decode_message(b"\x1a\x00")[0].record == b""
    # explicit defaults decode to the same message (and encode back without them)
    explicit = bytes.fromhex("0800" + "5000" + "1200") + encode_bytes_field(8, entry(JS1, connection=0))
    assert decode_message(explicit) == (KadMessage(MessageType.PUT_VALUE, closer=(PeerInfo(JS1),)), 0)


def test_cluster_level_is_a_non_negative_int32() -> None:
    top = KadMessage(MessageType.PING, cluster_level=2**31 - 1)
    body = encode_message(top)
    assert body == bytes.fromhex("0805" + "50ffffffff07")
    assert decode_message(body) == (top, 0)
    with pytest.raises(KadMessageError, match="clusterLevel"):
        decode_message(bytes.fromhex("0805" + "508080808008"))  # 2**31
    with pytest.raises(KadMessageError):
        decode_message(bytes.fromhex("0805" + "50ffffffffffffffffff01"))  # -1 as kad-dht would write it
    for bad in (-1, 2**31):
        with pytest.raises(LocalError):
            encode_message(KadMessage(MessageType.PING, cluster_level=bad))


def test_unknown_fields_are_skipped() -> None:
    body = (
        bytes.fromhex("0804")
        + encode_varint_field(5, 7)
        + encode_bytes_field(15, b"x")
        + b"\x21"
        + bytes(8)  # field 4, fixed64
        + encode_bytes_field(8, entry(JS1) + encode_bytes_field(9, b"later"))
    )
    assert decode_message(body) == (KadMessage(MessageType.FIND_NODE, closer=(PeerInfo(JS1),)), 0)


def test_unknown_connection_type_reads_as_not_connected() -> None:
    body = encode_bytes_field(8, entry(JS1, connection=9))
    assert decode_message(body)[0].closer == (PeerInfo(JS1, (), ConnectionType.NOT_CONNECTED),)


# ---------------------------------------------------------------- hostile input

ADD_PROVIDER = bytes.fromhex(JS_REQUESTS["provide ADD_PROVIDER"][0])


def test_kad_message_error_is_a_protocol_error() -> None:
    assert issubclass(KadMessageError, ProtocolError)
    assert ProtocolErrorKind.KAD == "kad"


@pytest.mark.parametrize("cut", range(1, len(ADD_PROVIDER)))
def test_truncated_messages_raise_or_lose_whole_fields(cut: int) -> None:
    body = ADD_PROVIDER[:cut]
    try:
        msg, dropped = decode_message(body)
    except KadMessageError:
        return
    # a cut that falls between fields is a shorter valid message
    assert encode_message(msg) == body
    assert dropped == 0


@pytest.mark.parametrize(
    ("hexed", "why"),
    [
        ("08", "truncated varint"),
        ("0880", "truncated varint"),
        ("1205aabb", "truncated length-delimited field"),
        ("0a0104", "type as length-delimited"),
        ("1005", "key as varint"),
        ("1805", "record as varint"),
        ("4001", "closer as varint"),
        ("4801", "providers as varint"),
        ("5201aa", "clusterLevel as length-delimited"),
        ("0b", "wire type 3 (start group)"),
        ("0f", "wire type 7"),
        ("00", "field 0"),
        ("0806", "unknown type 6"),
        ("08ffffffff0f", "type -1"),
        ("420208aa", "closer entry with the id as varint"),
        ("4204" + "1a020000", "closer entry with connection as length-delimited"),
        ("4203" + "0a05aa", "closer entry truncated inside"),
    ],
)
def test_malformed_messages_raise(hexed: str, why: str) -> None:
    with pytest.raises(KadMessageError):
        decode_message(bytes.fromhex(hexed))


def test_over_the_size_cap_raises_before_reading() -> None:
    limits = MessageLimits(max_message_size=len(ADD_PROVIDER) - 1)
    with pytest.raises(KadMessageError, match="byte cap"):
        decode_message(ADD_PROVIDER, limits)
    assert (
        decode_message(ADD_PROVIDER, dataclasses.replace(limits, max_message_size=len(ADD_PROVIDER)))[1] == 0
    )
    # the default cap: 4 MiB
    with pytest.raises(KadMessageError, match="byte cap"):
        decode_message(b"\x1a" + bytes(4 * 1024 * 1024))


def test_more_entries_than_max_peers_raise_counting_closer_and_providers() -> None:
    limits = MessageLimits(max_peers=3)
    two_and_one = encode_bytes_field(8, entry(JS1)) * 2 + encode_bytes_field(9, entry(JS2))
    msg, dropped = decode_message(two_and_one, limits)
    assert (len(msg.closer), len(msg.providers), dropped) == (2, 1, 0)
    with pytest.raises(KadMessageError, match="more than 3"):
        decode_message(two_and_one + encode_bytes_field(9, entry(JS2)), limits)
    # invalid entries count against the cap too: they cost the decoding
    with pytest.raises(KadMessageError, match="more than 3"):
        decode_message(encode_bytes_field(8, b"") * 4, limits)


def test_key_over_max_key_size_raises() -> None:
    limits = MessageLimits(max_key_size=34)
    assert decode_message(encode_bytes_field(2, KEY_PROVIDED), limits)[0].key == KEY_PROVIDED
    with pytest.raises(KadMessageError, match="key of 35 bytes"):
        decode_message(encode_bytes_field(2, KEY_PROVIDED + b"x"), limits)


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
def test_an_entry_with_an_invalid_peer_id_is_dropped_and_counted(bad_id: bytes) -> None:
    a = addr("/ip4/10.0.0.1/tcp/4001")
    bad = (
        encode_bytes_field(1, bad_id) + encode_bytes_field(2, a.to_bytes())
        if bad_id
        else encode_bytes_field(2, a.to_bytes())
    )
    body = (
        bytes.fromhex("0803")
        + encode_bytes_field(8, entry(JS1, a.to_bytes()))
        + encode_bytes_field(8, bad)
        + encode_bytes_field(9, bad)
        + encode_bytes_field(9, entry(JS2))
    )
    msg, dropped = decode_message(body)
    assert msg.closer == (PeerInfo(JS1, (a,)),)
    assert msg.providers == (PeerInfo(JS2),)
    assert dropped == 2


def test_garbage_addresses_are_dropped_and_counted() -> None:
    good = addr("/ip4/10.0.0.1/tcp/4001")
    garbage = [b"", b"\x04\xc0", b"\xff\xff\x03", b"\x06", bytes(2000)]
    body = encode_bytes_field(9, entry(JS1, garbage[0], good.to_bytes(), *garbage[1:]))
    msg, dropped = decode_message(body)
    assert msg.providers == (PeerInfo(JS1, (good,)),)
    assert dropped == len(garbage)


def test_addresses_past_max_addrs_per_peer_are_dropped_and_counted() -> None:
    addrs = [addr(f"/ip4/10.0.0.{i}/tcp/4001") for i in range(6)]
    body = encode_bytes_field(8, entry(JS1, *(a.to_bytes() for a in addrs))) + encode_bytes_field(
        8, entry(JS2, addrs[0].to_bytes())
    )
    msg, dropped = decode_message(body, MessageLimits(max_addrs_per_peer=4))
    assert msg.closer == (PeerInfo(JS1, tuple(addrs[:4])), PeerInfo(JS2, (addrs[0],)))
    assert dropped == 2


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_kad_message_error(buf: bytes) -> None:
    try:
        msg, _ = decode_message(buf)
    except KadMessageError:
        return
    assert decode_message(encode_message(msg)) == (msg, 0)


# ---------------------------------------------------------------- round trip

_PEERS = [JS1, JS2, PeerId(b"\x12\x20" + bytes(range(32)))]
_ADDRS = [
    addr(t)
    for t in ("/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/1/p2p/" + str(JS1), "/dns4/example.org/tcp/443/wss")
]
peer_infos = st.builds(
    PeerInfo,
    st.sampled_from(_PEERS),
    st.lists(st.sampled_from(_ADDRS), max_size=4).map(tuple),
    st.sampled_from(ConnectionType),
)
messages = st.builds(
    KadMessage,
    st.sampled_from(MessageType),
    st.binary(max_size=64),
    st.none() | st.binary(max_size=64),
    st.lists(peer_infos, max_size=5).map(tuple),
    st.lists(peer_infos, max_size=5).map(tuple),
    st.integers(0, 2**31 - 1),
)


@settings(max_examples=500)
@given(messages)
def test_round_trip(msg: KadMessage) -> None:
    body = encode_message(msg)
    assert decode_message(body) == (msg, 0)
    assert encode_message(decode_message(body)[0]) == body
