"""Tests for the sans-IO libp2p Noise handshake and transport."""

from __future__ import annotations

import hashlib
import itertools
import os
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mimirlite.errors import DecodeError, HandshakeError, LocalError, PeerIdMismatchError, ProtocolError
from mimirlite.identity import KeyPair, KeyType, PeerId, PublicKey
from mimirlite.wire.noise import (
    MAX_HANDSHAKE_PAYLOAD,
    MAX_NOISE_MESSAGE,
    MAX_PLAINTEXT,
    NOISE_PROTOCOL,
    STATIC_KEY_PREFIX,
    NoiseHandshake,
    NoiseTransport,
)
from mimirlite.wire.protobuf import (
    LENGTH_DELIMITED,
    decode_message,
    encode_bytes_field,
    encode_varint_field,
)
from tests.helpers.frames import noise_frame as frame
from tests.helpers.frames import split_noise_frames as split_frames
from tests.helpers.rawpeer import RawNoise

ALICE = KeyPair.generate()
BOB = KeyPair.generate()


# --- helpers -----------------------------------------------------------------------------------


def handshake(
    initiator_key: object = ALICE,
    responder_key: object = BOB,
    *,
    initiator_expects: PeerId | None = None,
    responder_expects: PeerId | None = None,
) -> tuple[NoiseHandshake, NoiseHandshake]:
    """Run a handshake between two NoiseHandshakes wired back to back in memory."""
    initiator = NoiseHandshake(initiator_key, initiator=True, expected_peer=initiator_expects)  # type: ignore[arg-type]
    responder = NoiseHandshake(responder_key, initiator=False, expected_peer=responder_expects)  # type: ignore[arg-type]
    responder.receive_data(initiator.data_to_send())
    initiator.receive_data(responder.data_to_send())
    responder.receive_data(initiator.data_to_send())
    assert initiator.complete and responder.complete
    assert initiator.data_to_send() == b"" and responder.data_to_send() == b""
    return initiator, responder


def transports() -> tuple[NoiseTransport, NoiseTransport]:
    initiator, responder = handshake()
    return initiator.transport(), responder.transport()


class EcdsaSigner:
    """A test-only identity with a secp256k1 or NIST P-256 key, encoded the libp2p way."""

    def __init__(self, curve: ec.EllipticCurve) -> None:
        self._private = ec.generate_private_key(curve)
        public = self._private.public_key()
        if isinstance(curve, ec.SECP256K1):
            data = public.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
            )
            self.public_key = PublicKey(KeyType.SECP256K1, data)
        else:
            data = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            self.public_key = PublicKey(KeyType.ECDSA, data)
        self.peer_id = PeerId.from_public_key(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data, ec.ECDSA(hashes.SHA256()))


class RsaSigner:
    """A test-only RSA identity (DER SubjectPublicKeyInfo, PKCS#1 v1.5 over SHA-256)."""

    def __init__(self) -> None:
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        data = self._private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = PublicKey(KeyType.RSA, data)
        self.peer_id = PeerId.from_public_key(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data, padding.PKCS1v15(), hashes.SHA256())


class BadSigner:
    """Signs with a flipped bit, so the static key signature does not verify."""

    def __init__(self, keypair: KeyPair) -> None:
        self.public_key = keypair.public_key
        self._keypair = keypair

    def sign(self, data: bytes) -> bytes:
        sig = bytearray(self._keypair.sign(data))
        sig[0] ^= 1
        return bytes(sig)


def raw_initiator_against(responder: NoiseHandshake, payload: Callable[[RawNoise], bytes]) -> RawNoise:
    """Run a RawNoise initiator against ``responder`` up to and including message 3."""
    raw = RawNoise(initiator=True)
    responder.receive_data(raw.write())
    raw.read(responder.data_to_send())
    responder.receive_data(raw.write(payload(raw)))
    return raw


def raw_responder_against(initiator: NoiseHandshake, payload: Callable[[RawNoise], bytes]) -> RawNoise:
    """Run a RawNoise responder against ``initiator`` up to and including message 2."""
    raw = RawNoise(initiator=False)
    raw.read(initiator.data_to_send())
    initiator.receive_data(raw.write(payload(raw)))
    return raw


# --- handshake ---------------------------------------------------------------------------------


def test_protocol_id() -> None:
    assert NOISE_PROTOCOL == "/noise"
    assert MAX_PLAINTEXT == MAX_NOISE_MESSAGE - 16 == 65519


def test_handshake_learns_peer_ids() -> None:
    initiator, responder = handshake()
    assert initiator.remote_peer == BOB.peer_id
    assert responder.remote_peer == ALICE.peer_id
    assert initiator.remote_public_key == BOB.public_key
    assert responder.remote_public_key == ALICE.public_key


def test_first_message_is_bare_ephemeral_key() -> None:
    initiator = NoiseHandshake(ALICE, initiator=True)
    first = initiator.data_to_send()
    assert first[:2] == b"\x00\x20" and len(first) == 34
    assert initiator.data_to_send() == b""
    assert not initiator.complete and initiator.remote_peer is None


def test_handshake_fed_one_byte_at_a_time() -> None:
    initiator = NoiseHandshake(ALICE, initiator=True)
    responder = NoiseHandshake(BOB, initiator=False)
    for receiver, sender in ((responder, initiator), (initiator, responder), (responder, initiator)):
        wire = sender.data_to_send()
        for i in range(len(wire)):
            receiver.receive_data(wire[i : i + 1])
    assert initiator.complete and responder.complete
    assert initiator.remote_peer == BOB.peer_id and responder.remote_peer == ALICE.peer_id


def test_handshake_accepts_bytearray_and_memoryview() -> None:
    initiator = NoiseHandshake(ALICE, initiator=True)
    responder = NoiseHandshake(BOB, initiator=False)
    responder.receive_data(bytearray(initiator.data_to_send()))
    initiator.receive_data(memoryview(responder.data_to_send()))
    responder.receive_data(memoryview(bytearray(initiator.data_to_send())))
    assert initiator.complete and responder.complete


def test_expected_peer_matches() -> None:
    initiator, responder = handshake(initiator_expects=BOB.peer_id, responder_expects=ALICE.peer_id)
    assert initiator.remote_peer == BOB.peer_id and responder.remote_peer == ALICE.peer_id


def test_expected_peer_mismatch_on_initiator() -> None:
    other = KeyPair.generate().peer_id
    initiator = NoiseHandshake(ALICE, initiator=True, expected_peer=other)
    responder = NoiseHandshake(BOB, initiator=False)
    responder.receive_data(initiator.data_to_send())
    with pytest.raises(PeerIdMismatchError) as info:
        initiator.receive_data(responder.data_to_send())
    assert info.value.expected == other and info.value.actual == BOB.peer_id
    assert isinstance(info.value, HandshakeError)
    assert initiator.data_to_send() == b""  # message 3 never goes out
    assert initiator.remote_peer is None and not initiator.complete


def test_expected_peer_mismatch_on_responder() -> None:
    other = KeyPair.generate().peer_id
    initiator = NoiseHandshake(ALICE, initiator=True)
    responder = NoiseHandshake(BOB, initiator=False, expected_peer=other)
    responder.receive_data(initiator.data_to_send())
    initiator.receive_data(responder.data_to_send())
    with pytest.raises(PeerIdMismatchError):
        responder.receive_data(initiator.data_to_send())


@pytest.mark.parametrize("bad_side", ["initiator", "responder"])
def test_bad_static_key_signature(bad_side: str) -> None:
    bad = BadSigner(ALICE)
    if bad_side == "responder":
        initiator = NoiseHandshake(ALICE, initiator=True)
        responder = NoiseHandshake(bad, initiator=False)  # type: ignore[arg-type]
        responder.receive_data(initiator.data_to_send())
        with pytest.raises(HandshakeError, match="signature"):
            initiator.receive_data(responder.data_to_send())
    else:
        initiator = NoiseHandshake(bad, initiator=True)  # type: ignore[arg-type]
        responder = NoiseHandshake(BOB, initiator=False)
        responder.receive_data(initiator.data_to_send())
        initiator.receive_data(responder.data_to_send())
        with pytest.raises(HandshakeError, match="signature"):
            responder.receive_data(initiator.data_to_send())


def test_signature_over_another_static_key_is_rejected() -> None:
    responder = NoiseHandshake(BOB, initiator=False)
    other_static = X25519PrivateKey.generate().public_key().public_bytes_raw()

    def payload(raw: RawNoise) -> bytes:
        return encode_bytes_field(1, ALICE.public_key.to_protobuf()) + encode_bytes_field(
            2, ALICE.sign(STATIC_KEY_PREFIX + other_static)
        )

    with pytest.raises(HandshakeError, match="signature"):
        raw_initiator_against(responder, payload)


@pytest.mark.parametrize("index", [2, 40, 60, -1])
def test_tampered_message_2_ciphertext(index: int) -> None:
    initiator = NoiseHandshake(ALICE, initiator=True)
    responder = NoiseHandshake(BOB, initiator=False)
    responder.receive_data(initiator.data_to_send())
    wire = bytearray(responder.data_to_send())
    wire[index] ^= 0x80
    with pytest.raises(HandshakeError):
        initiator.receive_data(bytes(wire))
    with pytest.raises(HandshakeError):  # a failed handshake stays failed
        initiator.receive_data(b"")


@pytest.mark.parametrize("index", [2, 30, -1])
def test_tampered_message_3_ciphertext(index: int) -> None:
    initiator = NoiseHandshake(ALICE, initiator=True)
    responder = NoiseHandshake(BOB, initiator=False)
    responder.receive_data(initiator.data_to_send())
    initiator.receive_data(responder.data_to_send())
    wire = bytearray(initiator.data_to_send())
    wire[index] ^= 0x01
    with pytest.raises(HandshakeError):
        responder.receive_data(bytes(wire))
    assert not responder.complete


@pytest.mark.parametrize(
    "signer_factory",
    [lambda: EcdsaSigner(ec.SECP256K1()), lambda: EcdsaSigner(ec.SECP256R1()), RsaSigner],
    ids=["secp256k1", "p256", "rsa2048"],
)
def test_other_identity_key_types(signer_factory: Callable[[], EcdsaSigner | RsaSigner]) -> None:
    signer = signer_factory()
    # The other key type on either side, checked by our own handshake.
    initiator, responder = handshake(signer, BOB, responder_expects=signer.peer_id)
    assert responder.remote_peer == signer.peer_id
    initiator, responder = handshake(ALICE, signer, initiator_expects=signer.peer_id)
    assert initiator.remote_peer == signer.peer_id
    assert initiator.remote_public_key == signer.public_key


def test_payload_with_extensions_and_unknown_fields() -> None:
    extensions = (
        encode_bytes_field(2, b"/yamux/1.0.0")
        + encode_bytes_field(2, b"/mplex/6.7.0")
        + encode_bytes_field(1, os.urandom(34))
    )
    extra = (
        encode_bytes_field(4, extensions)
        + encode_bytes_field(99, b"from the future")
        + encode_varint_field(100, 12345)
        + encode_bytes_field(3, b"early data")
    )
    responder = NoiseHandshake(BOB, initiator=False)
    raw_initiator_against(responder, lambda raw: raw.signed_payload(ALICE, extra=extra))
    assert responder.complete and responder.remote_peer == ALICE.peer_id

    initiator = NoiseHandshake(ALICE, initiator=True)
    # Extensions before the identity fields too: field order must not matter.
    raw_responder_against(initiator, lambda raw: extra + raw.signed_payload(BOB))
    assert initiator.complete and initiator.remote_peer == BOB.peer_id


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (lambda raw: b"", "no identity key"),
        (lambda raw: encode_bytes_field(2, b"sig"), "no identity key"),
        (lambda raw: encode_bytes_field(1, ALICE.public_key.to_protobuf()), "no identity signature"),
        (lambda raw: encode_bytes_field(1, b"\x08\x09\x12\x00") + encode_bytes_field(2, b"s"), "key invalid"),
        (lambda raw: encode_varint_field(1, 5) + encode_bytes_field(2, b"s"), "undecodable"),
        (lambda raw: b"\xff\xff\xff", "undecodable"),
        (lambda raw: raw.signed_payload(ALICE)[:-3], "undecodable"),
    ],
    ids=["empty", "no-key", "no-sig", "bad-key", "key-wire-type", "garbage", "truncated"],
)
def test_bad_payloads(payload: Callable[[RawNoise], bytes], match: str) -> None:
    responder = NoiseHandshake(BOB, initiator=False)
    with pytest.raises(HandshakeError, match=match):
        raw_initiator_against(responder, payload)
    initiator = NoiseHandshake(ALICE, initiator=True)
    with pytest.raises(HandshakeError, match=match):
        raw_responder_against(initiator, payload)


def test_our_payload_follows_the_spec() -> None:
    """What we send verifies for an independent peer: identity key and signature over our static key."""
    responder = NoiseHandshake(BOB, initiator=False)
    raw = RawNoise(initiator=True)
    responder.receive_data(raw.write())
    payload = raw.read(responder.data_to_send())
    fields = decode_message(payload, {1: LENGTH_DELIMITED, 2: LENGTH_DELIMITED})
    key = PublicKey.from_protobuf(fields[1][0])  # type: ignore[arg-type]
    assert key == BOB.public_key
    static = bytes(raw.state.rs.public_bytes)
    assert key.verify(STATIC_KEY_PREFIX + static, fields[2][0])  # type: ignore[arg-type]


def test_first_message_with_plaintext_payload_is_accepted() -> None:
    responder = NoiseHandshake(BOB, initiator=False)
    raw = RawNoise(initiator=True)
    responder.receive_data(raw.write(b"ignored payload"))
    raw.read(responder.data_to_send())
    responder.receive_data(raw.write(raw.signed_payload(ALICE)))
    assert responder.complete and responder.remote_peer == ALICE.peer_id


@pytest.mark.parametrize(
    ("initiator", "wire"),
    [
        (False, frame(os.urandom(31))),  # message 1 shorter than an ephemeral key
        (False, b"\xff\xff"),  # length prefix over the cap: rejected before the body arrives
        (False, struct.pack(">H", 32 + MAX_HANDSHAKE_PAYLOAD + 1)),
        (False, frame(b"")),
        (True, frame(os.urandom(95))),  # message 2 below e + encrypted s + tag
        (True, struct.pack(">H", 32 + 48 + 16 + MAX_HANDSHAKE_PAYLOAD + 1)),
    ],
)
def test_impossible_message_sizes(initiator: bool, wire: bytes) -> None:
    hs = NoiseHandshake(ALICE, initiator=initiator)
    with pytest.raises(HandshakeError, match="bytes, expected"):
        hs.receive_data(wire)


def test_message_3_size_bounds() -> None:
    initiator = NoiseHandshake(ALICE, initiator=True)
    responder = NoiseHandshake(BOB, initiator=False)
    responder.receive_data(initiator.data_to_send())
    responder.data_to_send()
    with pytest.raises(HandshakeError, match="bytes, expected"):
        responder.receive_data(frame(os.urandom(63)))


def test_payload_at_the_cap_is_accepted() -> None:
    responder = NoiseHandshake(BOB, initiator=False)

    def payload(raw: RawNoise) -> bytes:
        body = raw.signed_payload(ALICE)
        # Field 99 costs a 2-byte key and a 2-byte length ahead of the filler.
        padding = encode_bytes_field(99, b"x" * (MAX_HANDSHAKE_PAYLOAD - len(body) - 4))
        assert len(body + padding) == MAX_HANDSHAKE_PAYLOAD
        return body + padding

    raw_initiator_against(responder, payload)
    assert responder.complete


def test_truncated_message_is_buffered() -> None:
    initiator = NoiseHandshake(ALICE, initiator=True)
    responder = NoiseHandshake(BOB, initiator=False)
    responder.receive_data(initiator.data_to_send())
    message_2 = responder.data_to_send()
    initiator.receive_data(message_2[:-1])
    assert not initiator.complete and initiator.data_to_send() == b""
    initiator.receive_data(message_2[-1:])
    assert initiator.data_to_send() != b""


def test_transport_before_complete_or_twice() -> None:
    initiator = NoiseHandshake(ALICE, initiator=True)
    with pytest.raises(LocalError):
        initiator.transport()
    initiator, _ = handshake()
    initiator.transport()
    with pytest.raises(LocalError):
        initiator.transport()


def test_pipelined_bytes_after_message_3_survive() -> None:
    initiator = NoiseHandshake(ALICE, initiator=True)
    responder = NoiseHandshake(BOB, initiator=False)
    responder.receive_data(initiator.data_to_send())
    initiator.receive_data(responder.data_to_send())
    sender = initiator.transport()
    early = sender.encrypt(b"first request") + sender.encrypt(b"second")
    late = sender.encrypt(b"third")
    # Message 3, two whole transport messages and half of a third, all in one read.
    responder.receive_data(initiator.data_to_send() + early + late[:5])
    assert responder.complete
    receiver = responder.transport()
    assert receiver.buffered == len(early) + 5
    assert receiver.receive_data(b"") == [b"first request", b"second"]
    assert receiver.buffered == 5
    assert receiver.receive_data(late[5:]) == [b"third"]
    assert receiver.buffered == 0


def test_bytes_after_completion_are_kept_for_transport() -> None:
    initiator, responder = handshake()
    sender = initiator.transport()
    responder.receive_data(sender.encrypt(b"later"))
    assert responder.transport().receive_data(b"") == [b"later"]


# --- transport ---------------------------------------------------------------------------------


def test_transport_both_directions() -> None:
    a, b = transports()
    assert b.receive_data(a.encrypt(b"ping")) == [b"ping"]
    assert a.receive_data(b.encrypt(b"pong")) == [b"pong"]
    assert b.receive_data(a.encrypt(bytearray(b"x")) + a.encrypt(memoryview(b"yz"))) == [b"x", b"yz"]


def test_one_mebibyte_round_trip() -> None:
    a, b = transports()
    data = os.urandom(1 << 20)
    wire = a.encrypt(data)
    received = b.receive_data(wire)
    assert hashlib.sha256(b"".join(received)).digest() == hashlib.sha256(data).digest()
    # And again in uneven reads, the other way round.
    wire = b.encrypt(data)
    got = []
    for start in range(0, len(wire), 10007):
        got += a.receive_data(wire[start : start + 10007])
    assert hashlib.sha256(b"".join(got)).digest() == hashlib.sha256(data).digest()
    assert a.buffered == 0


@pytest.mark.parametrize(
    ("size", "frames"), [(1, 1), (65519, 1), (65520, 2), (131038, 2), (131039, 3), (200000, 4)]
)
def test_large_plaintext_is_split(size: int, frames: int) -> None:
    a, b = transports()
    data = os.urandom(size)
    wire = a.encrypt(memoryview(data))
    messages = split_frames(wire)
    assert len(messages) == frames
    assert all(len(m) <= MAX_NOISE_MESSAGE for m in messages)
    assert sum(len(m) - 16 for m in messages) == size
    assert b"".join(b.receive_data(wire)) == data


@pytest.mark.parametrize(
    "sizes",
    [[], [0], [5, 0, 7], [12, 65536, 12, 65536], [65519], [65519, 1], [1, 65519], [100_000, 3, 200_000]],
)
@pytest.mark.parametrize("encrypt_into", [True, False])
def test_encrypt_messages_gathers_parts_into_whole_messages(sizes: list[int], encrypt_into: bool) -> None:
    key_a, key_b = os.urandom(32), os.urandom(32)
    sender, reference, receiver = (
        NoiseTransport(key_a, key_b),
        NoiseTransport(key_a, key_b),
        NoiseTransport(key_b, key_a),
    )
    if not encrypt_into:
        sender._encrypt_into = None  # as with cryptography < 47
    parts = [os.urandom(n) for n in sizes]
    messages = sender.encrypt_messages([parts[0], *map(memoryview, parts[1:])] if parts else [])
    data = b"".join(parts)
    # the same messages as encrypting the joined data: full messages, then the rest
    assert b"".join(messages) == reference.encrypt(data)
    assert len(messages) == -(-len(data) // MAX_PLAINTEXT)
    assert all(len(m) <= MAX_NOISE_MESSAGE + 2 for m in messages)
    assert b"".join(receiver.receive_data(b"".join(messages))) == data


def test_memoryview_of_wider_items() -> None:
    a, b = transports()
    words = memoryview(bytearray(range(256)) * 1024).cast("I")
    wire = a.encrypt(words)
    assert b"".join(b.receive_data(wire)) == words.tobytes()


def test_empty_input() -> None:
    a, b = transports()
    assert a.encrypt(b"") == b""
    assert b.receive_data(b"") == []
    # An empty transport message (just a tag) yields no plaintext.
    key_a, key_b = os.urandom(32), os.urandom(32)
    sender, receiver = NoiseTransport(key_a, key_b), NoiseTransport(key_b, key_a)
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    empty = ChaCha20Poly1305(key_a).encrypt(bytes(12), b"", None)
    assert receiver.receive_data(frame(empty)) == []
    after = ChaCha20Poly1305(key_a).encrypt(struct.pack("<4xQ", 1), b"after", None)
    assert receiver.receive_data(frame(after)) == [b"after"]
    assert sender.encrypt(b"") == b""


def test_split_at_every_boundary() -> None:
    key_a, key_b = os.urandom(32), os.urandom(32)
    sender = NoiseTransport(key_a, key_b)
    plaintexts = [b"a", b"hello world", os.urandom(300), b"z" * 17]
    wire = b"".join(sender.encrypt(p) for p in plaintexts)
    for cut in range(len(wire) + 1):
        receiver = NoiseTransport(key_b, key_a)
        got = receiver.receive_data(wire[:cut])
        got += receiver.receive_data(wire[cut:])
        assert got == plaintexts, cut
        assert receiver.buffered == 0
    receiver = NoiseTransport(key_b, key_a)
    got = []
    for i in range(len(wire)):
        got += receiver.receive_data(memoryview(wire)[i : i + 1])
        assert receiver.buffered == len(wire[: i + 1]) - sum(len(p) + 18 for p in got)
    assert got == plaintexts


def test_split_across_three_reads() -> None:
    key = os.urandom(32)
    sender = NoiseTransport(key, key)
    plaintexts = [os.urandom(n) for n in (5, 70000, 3)]
    wire = b"".join(sender.encrypt(p) for p in plaintexts)
    for first in (1, 2, 3, 1000, 65550, 65553):
        for second in (first + 1, first + 2, first + 65537, len(wire) - 1):
            receiver = NoiseTransport(key, key)
            got = receiver.receive_data(wire[:first])
            got += receiver.receive_data(bytearray(wire[first:second]))
            got += receiver.receive_data(wire[second:])
            assert b"".join(got) == b"".join(plaintexts)


@pytest.mark.parametrize("index", [0, 1, 2, 10, -1])
def test_tampered_transport_frame(index: int) -> None:
    a, b = transports()
    wire = bytearray(a.encrypt(b"secret message"))
    wire[index] ^= 0x01
    with pytest.raises(DecodeError):
        # a length byte flipped either shortens the frame or leaves it waiting for more
        b.receive_data(bytes(wire) + a.encrypt(b"next") + bytes(70000))
    with pytest.raises(DecodeError):
        b.receive_data(b"")


def test_tampered_frame_completing_a_held_partial() -> None:
    a, b = transports()
    wire = bytearray(a.encrypt(b"secret message"))
    wire[-1] ^= 0x01
    assert b.receive_data(bytes(wire[:7])) == []
    with pytest.raises(DecodeError):
        b.receive_data(bytes(wire[7:]))


def test_replayed_frame_fails() -> None:
    a, b = transports()
    wire = a.encrypt(b"once")
    assert b.receive_data(wire) == [b"once"]
    with pytest.raises(DecodeError):
        b.receive_data(wire)


def test_short_frames_fail() -> None:
    for wire in (frame(b""), frame(os.urandom(15))):
        _, b = transports()
        with pytest.raises(DecodeError):
            b.receive_data(wire)


# --- cross-check with noiseprotocol's own transport ----------------------------------------------


def test_interop_with_noiseprotocol_as_responder() -> None:
    initiator = NoiseHandshake(ALICE, initiator=True, expected_peer=BOB.peer_id)
    raw = raw_responder_against(initiator, lambda raw: raw.signed_payload(BOB))
    raw.read(initiator.data_to_send())
    assert raw.conn.handshake_finished and initiator.complete
    ours = initiator.transport()
    for size in (1, 100, MAX_PLAINTEXT):
        data = os.urandom(size)
        assert ours.receive_data(frame(raw.conn.encrypt(data))) == [data]
        (message,) = split_frames(ours.encrypt(data))
        assert raw.conn.decrypt(message) == data


def test_interop_with_noiseprotocol_as_initiator() -> None:
    responder = NoiseHandshake(BOB, initiator=False, expected_peer=ALICE.peer_id)
    raw = RawNoise(initiator=True)
    responder.receive_data(raw.write())
    raw.read(responder.data_to_send())
    assert raw.conn.handshake_finished is False
    # noiseprotocol's first transport message rides in the same read as message 3.
    message_3 = raw.write(raw.signed_payload(ALICE))
    pipelined = frame(raw.conn.encrypt(b"pipelined"))
    responder.receive_data(message_3 + pipelined)
    ours = responder.transport()
    assert ours.receive_data(b"") == [b"pipelined"]
    data = os.urandom(200000)
    wire = ours.encrypt(data)
    assert b"".join(raw.conn.decrypt(m) for m in split_frames(wire)) == data
    for _ in range(3):
        assert ours.receive_data(frame(raw.conn.encrypt(b"more"))) == [b"more"]


# --- properties --------------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

frames_strategy = st.lists(st.binary(max_size=300).map(frame), max_size=4).map(b"".join)


@PROPERTY_SETTINGS
@given(initiator=st.booleans(), chunks=st.lists(st.binary(max_size=200) | frames_strategy, max_size=4))
def test_handshake_garbage_raises_only_handshake_error(initiator: bool, chunks: list[bytes]) -> None:
    hs = NoiseHandshake(ALICE, initiator=initiator)
    try:
        for chunk in chunks:
            hs.receive_data(chunk)
    except HandshakeError:
        pass


@PROPERTY_SETTINGS
@given(chunks=st.lists(st.binary(max_size=200) | frames_strategy, max_size=4))
def test_responder_garbage_after_real_first_message(chunks: list[bytes]) -> None:
    initiator = NoiseHandshake(ALICE, initiator=True)
    responder = NoiseHandshake(BOB, initiator=False)
    responder.receive_data(initiator.data_to_send())
    try:
        for chunk in chunks:
            responder.receive_data(chunk)
    except HandshakeError:
        pass
    assert not responder.complete


KEY_A, KEY_B = os.urandom(32), os.urandom(32)


@PROPERTY_SETTINGS
@given(chunks=st.lists(st.binary(max_size=300) | frames_strategy, max_size=5))
def test_transport_garbage_raises_only_decode_error(chunks: list[bytes]) -> None:
    receiver = NoiseTransport(KEY_A, KEY_B)
    try:
        for chunk in chunks:
            assert receiver.receive_data(chunk) == []
    except DecodeError as exc:
        assert isinstance(exc, ProtocolError)


@PROPERTY_SETTINGS
@given(
    plaintexts=st.lists(st.binary(min_size=1, max_size=2000), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=20000), max_size=6),
)
def test_transport_round_trip_any_split(plaintexts: list[bytes], cuts: list[int]) -> None:
    sender, receiver = NoiseTransport(KEY_A, KEY_B), NoiseTransport(KEY_B, KEY_A)
    wire = b"".join(sender.encrypt(p) for p in plaintexts)
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    got: list[bytes] = []
    for start, stop in itertools.pairwise(points):
        got += receiver.receive_data(wire[start:stop])
    assert got == plaintexts
    assert receiver.buffered == 0
