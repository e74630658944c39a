"""libp2p Noise secure channel (``/noise``), sans-IO.

``Noise_XX_25519_ChaChaPoly_SHA256`` with an empty prologue; every Noise message travels behind a
2-byte big-endian length. The handshake is the Noise specification's own (its SymmetricState, here
:class:`_Symmetric`, on ``cryptography``'s X25519 and ChaCha20-Poly1305 and the standard library's
SHA-256 and HMAC: the ``noiseprotocol`` package, and the 38 modules it loads, stay out of every
process); each side proves its libp2p
identity by signing ``"noise-libp2p-static-key:" + static X25519 public key`` in a
``NoiseHandshakePayload`` (responder in message 2, initiator in message 3). :class:`NoiseHandshake` walks
the :class:`HandshakeState` steps and reports :class:`HandshakeComplete` once the remote is verified.
After the handshake, :class:`NoiseTransport` encrypts with ChaCha20-Poly1305 directly, which keeps the
per-message cost low.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from mimirlite.errors import DecodeError, HandshakeError, InvalidKeyError, LocalError, PeerIdMismatchError
from mimirlite.identity import KeyPair, PeerId, PublicKey
from mimirlite.wire.protobuf import LENGTH_DELIMITED, decode_message, encode_bytes_field

log = logging.getLogger(__name__)

NOISE_PROTOCOL = "/noise"
NOISE_PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
MAX_NOISE_MESSAGE = 65535
"""Largest Noise message on the wire (the 2-byte length prefix excluded)."""
TAG_SIZE = 16
MAX_PLAINTEXT = MAX_NOISE_MESSAGE - TAG_SIZE
MAX_HANDSHAKE_PAYLOAD = 4096
"""Largest handshake payload accepted (identity key, signature, extensions); RSA-8192 fits."""
STATIC_KEY_PREFIX = b"noise-libp2p-static-key:"

_DH_LEN = 32
_ENCRYPTED_KEY = _DH_LEN + TAG_SIZE
# Per handshake message: (smallest, largest) size on the wire. Message 1 is ``e`` plus an unencrypted
# payload that we ignore; messages 2 and 3 carry an encrypted static key and an encrypted, signed payload.
_MESSAGE_BOUNDS = {
    1: (_DH_LEN, _DH_LEN + MAX_HANDSHAKE_PAYLOAD),
    2: (_DH_LEN + _ENCRYPTED_KEY + TAG_SIZE, _DH_LEN + _ENCRYPTED_KEY + TAG_SIZE + MAX_HANDSHAKE_PAYLOAD),
    3: (_ENCRYPTED_KEY + TAG_SIZE, _ENCRYPTED_KEY + TAG_SIZE + MAX_HANDSHAKE_PAYLOAD),
}
_PAYLOAD_SCHEMA = {1: LENGTH_DELIMITED, 2: LENGTH_DELIMITED}
_NOISE_FAILURES = (ValueError, InvalidTag)
"""What a bad handshake message raises: a key that is not one (or a DH result of all zeros), a bad tag."""

_MAX_NONCE = 2**64 - 1  # reserved by Noise; the last usable nonce is one below
_pack_nonce = struct.Struct("<4xQ").pack
_pack_length = struct.Struct(">H").pack


_thread = threading.local()
_GATHER_PARTS = 4
"""A message of more parts is joined (small ones), of fewer gathered in the thread's buffer."""


def _stage() -> memoryview:
    """This thread's buffer for gathering one message's plaintext."""
    stage: memoryview | None = getattr(_thread, "stage", None)
    if stage is None:
        stage = _thread.stage = memoryview(bytearray(MAX_PLAINTEXT))
    return stage


_new_ephemeral = X25519PrivateKey.generate
"""A fresh ephemeral key (bound here: a harness that fixes the static key, fuzz/fuzzlib.py, fixes only it)."""


def _frame(message: bytes | bytearray) -> bytes:
    return _pack_length(len(message)) + message


def _hkdf(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise's ``HKDF(chaining_key, input_key_material, 2)`` on HMAC-SHA256."""
    temp = hmac.digest(chaining_key, ikm, "sha256")
    first = hmac.digest(temp, b"\x01", "sha256")
    return first, hmac.digest(temp, first + b"\x02", "sha256")


class _Symmetric:
    """The Noise specification's SymmetricState (section 5.2) with its CipherState (5.1), for
    ``Noise_XX_25519_ChaChaPoly_SHA256`` and an empty prologue; only the handshake uses it (the
    transport's keys come from :meth:`split`)."""

    __slots__ = ("_aead", "_n", "ck", "h")

    def __init__(self) -> None:
        self.h = NOISE_PROTOCOL_NAME  # exactly HASHLEN (32) bytes long: taken as it is
        self.ck = self.h
        self._aead: ChaCha20Poly1305 | None = None
        self._n = 0
        self.mix_hash(b"")  # the prologue

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, key = _hkdf(self.ck, ikm)
        self._aead = ChaCha20Poly1305(key)
        self._n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self._aead is None:
            out = plaintext
        else:
            out = self._aead.encrypt(_pack_nonce(self._n), plaintext, self.h)
            self._n += 1
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, data: bytes) -> bytes:
        """The plaintext of ``data``; InvalidTag when it was not encrypted with this state's key and hash."""
        if self._aead is None:
            out = data
        else:
            out = self._aead.decrypt(_pack_nonce(self._n), data, self.h)
            self._n += 1
        self.mix_hash(data)
        return out

    def split(self) -> tuple[bytes, bytes]:
        """The initiator's sending key and the responder's."""
        return _hkdf(self.ck, b"")


class HandshakeState(Enum):
    """The step of one side of the XX handshake: the message that comes next, or how it ended.

    The value of a ``MESSAGE_n`` state is ``n`` (``-> e``, ``<- e, ee, s, es``, ``-> s, se``); the
    initiator writes messages 1 and 3 and reads 2, the responder the other way round.
    """

    MESSAGE_1 = 1
    MESSAGE_2 = 2
    MESSAGE_3 = 3
    COMPLETE = 4
    FAILED = 5


_AFTER = {
    HandshakeState.MESSAGE_1: HandshakeState.MESSAGE_2,
    HandshakeState.MESSAGE_2: HandshakeState.MESSAGE_3,
    HandshakeState.MESSAGE_3: HandshakeState.COMPLETE,
}


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """All three messages are exchanged and the remote proved ``remote_peer``."""

    remote_peer: PeerId


NoiseEvent = HandshakeComplete


class NoiseHandshake:
    """One side of the XX handshake: feed received bytes, send what :meth:`data_to_send` returns."""

    def __init__(self, keypair: KeyPair, *, initiator: bool, expected_peer: PeerId | None = None) -> None:
        """Prepare the handshake; the initiator's first message is queued at once."""
        self._initiator = initiator
        self._expected_peer = expected_peer
        static = X25519PrivateKey.generate()
        static_public = static.public_key().public_bytes_raw()
        self._payload = encode_bytes_field(1, keypair.public_key.to_protobuf()) + encode_bytes_field(
            2, keypair.sign(STATIC_KEY_PREFIX + static_public)
        )
        self._static = static
        self._static_public = static_public
        self._ephemeral = _new_ephemeral()
        self._remote_ephemeral: X25519PublicKey | None = None
        self._symmetric: _Symmetric | None = _Symmetric()
        self._step = HandshakeState.MESSAGE_1
        self._buffer = bytearray()
        self._outgoing: list[bytes] = []
        self._transport_taken = False
        self.remote_peer: PeerId | None = None
        self.remote_public_key: PublicKey | None = None
        if initiator:
            self._write()

    @property
    def state(self) -> HandshakeState:
        """The handshake's step: the message that comes next, COMPLETE or FAILED."""
        return self._step

    @property
    def complete(self) -> bool:
        """True once all three messages are exchanged and the remote identity is verified."""
        return self._step is HandshakeState.COMPLETE

    def _set_state(self, state: HandshakeState) -> None:
        if log.isEnabledFor(logging.DEBUG):
            side = "initiator" if self._initiator else "responder"
            log.debug("noise handshake (%s): %s -> %s", side, self._step.name, state.name)
        self._step = state

    def data_to_send(self) -> bytes:
        """Framed handshake messages queued since the last call."""
        out = b"".join(self._outgoing)
        self._outgoing.clear()
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[NoiseEvent]:
        """Buffer ``data`` and process every complete handshake message in it; the events they complete
        (:class:`HandshakeComplete` once the remote is verified).

        Bytes after the last handshake message are kept for :meth:`transport`. Raises
        HandshakeError (PeerIdMismatchError for the wrong identity); a failed handshake stays failed.
        """
        if self._step is HandshakeState.FAILED:
            raise HandshakeError("noise handshake already failed")
        buf = self._buffer
        buf += data
        try:
            while not self.complete and len(buf) >= 2:
                number = self._step.value
                length = buf[0] << 8 | buf[1]
                low, high = _MESSAGE_BOUNDS[number]
                if not low <= length <= high:
                    raise HandshakeError(
                        f"noise handshake message {number} has {length} bytes, expected {low}..{high}"
                    )
                if len(buf) < 2 + length:
                    break
                message = bytes(buf[2 : 2 + length])
                del buf[: 2 + length]
                self._read(message)
                if not self.complete:
                    self._write()  # the initiator's message 3 completes its side
                if self.complete:
                    assert self.remote_peer is not None
                    return [HandshakeComplete(self.remote_peer)]
        except HandshakeError:
            self._set_state(HandshakeState.FAILED)
            raise
        return []

    def transport(self) -> NoiseTransport:
        """The transport phase, holding any bytes received after the last handshake message.

        Call once, after :attr:`complete`. Call ``receive_data(b"")`` on the result to get messages
        already held (a pipelining peer sends them with its last handshake message).
        """
        if not self.complete:
            raise LocalError("noise handshake is not complete")
        if self._transport_taken:
            raise LocalError("noise transport already taken")
        self._transport_taken = True
        assert self._symmetric is not None
        initiator_key, responder_key = self._symmetric.split()
        if self._initiator:
            transport = NoiseTransport(initiator_key, responder_key, self._buffer)
        else:
            transport = NoiseTransport(responder_key, initiator_key, self._buffer)
        self._buffer = bytearray()
        self._symmetric = None  # the handshake's keys are forgotten
        return transport

    def _write(self) -> None:
        # Message 1 carries no payload; messages 2 and 3 carry our signed identity.
        step = self._step
        sym = self._symmetric
        assert sym is not None
        try:
            if step is HandshakeState.MESSAGE_1:  # -> e
                e = self._ephemeral.public_key().public_bytes_raw()
                sym.mix_hash(e)
                message = e + sym.encrypt_and_hash(b"")
            elif step is HandshakeState.MESSAGE_2:  # <- e, ee, s, es
                assert self._remote_ephemeral is not None
                e = self._ephemeral.public_key().public_bytes_raw()
                sym.mix_hash(e)
                sym.mix_key(self._ephemeral.exchange(self._remote_ephemeral))
                s = sym.encrypt_and_hash(self._static_public)
                sym.mix_key(self._static.exchange(self._remote_ephemeral))
                message = e + s + sym.encrypt_and_hash(self._payload)
            else:  # -> s, se
                assert self._remote_ephemeral is not None
                s = sym.encrypt_and_hash(self._static_public)
                sym.mix_key(self._static.exchange(self._remote_ephemeral))
                message = s + sym.encrypt_and_hash(self._payload)
        except _NOISE_FAILURES as exc:
            raise HandshakeError(f"noise handshake message {step.value} could not be built: {exc!r}") from exc
        self._outgoing.append(_frame(message))
        self._set_state(_AFTER[step])

    def _read(self, message: bytes) -> None:
        step = self._step
        sym = self._symmetric
        assert sym is not None
        try:
            if step is HandshakeState.MESSAGE_3:  # -> s, se
                remote_static = sym.decrypt_and_hash(message[:_ENCRYPTED_KEY])
                sym.mix_key(self._ephemeral.exchange(X25519PublicKey.from_public_bytes(remote_static)))
                payload = sym.decrypt_and_hash(message[_ENCRYPTED_KEY:])
            else:
                e = message[:_DH_LEN]
                self._remote_ephemeral = X25519PublicKey.from_public_bytes(e)
                sym.mix_hash(e)
                if step is HandshakeState.MESSAGE_1:  # -> e (its payload is not used)
                    sym.decrypt_and_hash(message[_DH_LEN:])
                    self._set_state(_AFTER[step])
                    return
                # <- e, ee, s, es
                sym.mix_key(self._ephemeral.exchange(self._remote_ephemeral))
                remote_static = sym.decrypt_and_hash(message[_DH_LEN : _DH_LEN + _ENCRYPTED_KEY])
                sym.mix_key(self._ephemeral.exchange(X25519PublicKey.from_public_bytes(remote_static)))
                payload = sym.decrypt_and_hash(message[_DH_LEN + _ENCRYPTED_KEY :])
        except _NOISE_FAILURES as exc:
            raise HandshakeError(f"noise handshake message {step.value} rejected: {exc!r}") from exc
        self._verify(payload, remote_static)
        self._set_state(_AFTER[step])

    def _verify(self, payload: bytes, remote_static: bytes) -> None:
        """Check the remote's signed payload against its static key; record its identity."""
        try:
            fields = decode_message(payload, _PAYLOAD_SCHEMA)
        except DecodeError as exc:
            raise HandshakeError(f"noise handshake payload undecodable: {exc}") from exc
        key_bytes = fields.get(1, [b""])[-1]
        signature = fields.get(2, [b""])[-1]
        if not isinstance(key_bytes, bytes) or not key_bytes:
            raise HandshakeError("noise handshake payload has no identity key")
        if not isinstance(signature, bytes) or not signature:
            raise HandshakeError("noise handshake payload has no identity signature")
        try:
            public_key = PublicKey.from_protobuf(key_bytes)
            valid = public_key.verify(STATIC_KEY_PREFIX + remote_static, signature)
            peer = PeerId.from_public_key(public_key)
        except InvalidKeyError as exc:
            raise HandshakeError(f"noise handshake identity key invalid: {exc}") from exc
        if not valid:
            raise HandshakeError("noise handshake static key signature does not verify")
        if self._expected_peer is not None and peer != self._expected_peer:
            raise PeerIdMismatchError(self._expected_peer, peer)
        self.remote_peer = peer
        self.remote_public_key = public_key


class NoiseTransport:
    """Encrypts and decrypts framed Noise transport messages once the handshake is done."""

    __slots__ = (
        "_buffer",
        "_decrypt",
        "_early",
        "_encrypt",
        "_encrypt_into",
        "_failed",
        "_receive_nonce",
        "_send_nonce",
    )

    def __init__(
        self, send_key: bytes, receive_key: bytes, received: bytes | bytearray | memoryview = b""
    ) -> None:
        """Use ``send_key`` / ``receive_key``; ``received`` holds bytes not yet decrypted."""
        cipher = ChaCha20Poly1305(send_key)
        self._encrypt = cipher.encrypt
        self._encrypt_into = getattr(cipher, "encrypt_into", None)  # cryptography >= 47
        self._decrypt = ChaCha20Poly1305(receive_key).decrypt
        self._send_nonce = 0
        self._receive_nonce = 0
        self._buffer = bytearray()  # less than one whole frame
        self._early = bytes(received)  # whatever arrived with the handshake, decrypted on the next call
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes held of a frame that is not complete yet."""
        return len(self._buffer) + len(self._early)

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Framed ciphertext of ``data``, split into messages of at most MAX_PLAINTEXT bytes."""
        messages = self.encrypt_messages([data])
        if len(messages) == 1:
            return bytes(messages[0])
        return b"".join(messages)

    def encrypt_messages(self, parts: Iterable[bytes | bytearray | memoryview]) -> list[bytes | bytearray]:
        """Framed ciphertext of the concatenated ``parts``, one object per message (none if empty).

        The parts are never joined as a whole: a message made of a few parts (a frame header and a large
        payload) is gathered in a buffer kept per thread, one of many small parts is joined, and each is
        sealed into a buffer of its own; so a large write allocates nothing larger than one message
        (fresh memory past the allocator's thresholds would page-fault on every byte).
        """
        messages: list[bytes | bytearray] = []
        batch: list[bytes | bytearray | memoryview] = []  # the parts of the next message
        size = 0
        for part in parts:
            if type(part) is memoryview and part.format != "B":
                part = part.cast("B")
            n = len(part)
            if size + n <= MAX_PLAINTEXT:
                batch.append(part)
                size += n
                continue
            view = memoryview(part)
            pos = 0
            while n - pos > MAX_PLAINTEXT - size:
                take = MAX_PLAINTEXT - size
                batch.append(view[pos : pos + take])
                messages.append(self._seal(batch, MAX_PLAINTEXT))
                batch = []
                size = 0
                pos += take
            if pos < n:
                batch.append(view[pos:])
                size += n - pos
        if size:
            messages.append(self._seal(batch, size))
        return messages

    def _seal(self, parts: list[bytes | bytearray | memoryview], size: int) -> bytes | bytearray:
        """One framed message of the ``size`` bytes of ``parts``: 2-byte length, ciphertext, tag."""
        plaintext: bytes | bytearray | memoryview
        if len(parts) == 1:
            plaintext = parts[0]
        elif len(parts) > _GATHER_PARTS:
            plaintext = b"".join(parts)
        else:
            plaintext = stage = _stage()[:size]
            pos = 0
            for part in parts:
                end = pos + len(part)
                stage[pos:end] = part
                pos = end
        nonce = self._send_nonce
        if nonce >= _MAX_NONCE:
            raise LocalError("noise send nonces exhausted")
        self._send_nonce = nonce + 1
        size += TAG_SIZE
        encrypt_into = self._encrypt_into
        if encrypt_into is None:
            return _pack_length(size) + self._encrypt(_pack_nonce(nonce), plaintext, None)
        message = bytearray(2 + size)
        message[0] = size >> 8
        message[1] = size & 0xFF
        with memoryview(message) as out:
            encrypt_into(_pack_nonce(nonce), plaintext, None, out[2:])
        return message

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Plaintexts of every message completed by ``data`` (empty ones are dropped).

        A partial frame is held until the rest arrives. Raises DecodeError when a message fails
        authentication; the transport is unusable afterwards.
        """
        if self._failed:
            raise DecodeError("noise transport already failed")
        if self._early:
            data = self._early + bytes(data)
            self._early = b""
        view = memoryview(data)
        if view.format != "B":
            view = view.cast("B")
        out: list[bytes] = []
        pos = 0
        end = len(view)
        decrypt = self._decrypt
        try:
            if self._buffer:
                pos = self._complete_pending(view, out)
                if self._buffer:
                    return out
            nonce = self._receive_nonce
            while end - pos >= 2:
                stop = pos + 2 + (view[pos] << 8 | view[pos + 1])
                if stop > end:
                    break
                if nonce >= _MAX_NONCE:
                    raise DecodeError("noise receive nonces exhausted")
                plaintext = decrypt(_pack_nonce(nonce), view[pos + 2 : stop], None)
                nonce += 1
                if plaintext:
                    out.append(plaintext)
                pos = stop
        except InvalidTag:
            self._failed = True
            raise DecodeError("noise transport message failed authentication") from None
        except DecodeError:
            self._failed = True
            raise
        self._receive_nonce = nonce
        if pos < end:
            self._buffer += view[pos:]
        return out

    def _complete_pending(self, view: memoryview, out: list[bytes]) -> int:
        """Move bytes from ``view`` into the held partial frame; decrypt it if complete.

        Returns how many bytes of ``view`` were used. Copies at most one frame. Raises InvalidTag
        or DecodeError for :meth:`receive_data` to turn into a failed transport.
        """
        buf = self._buffer
        pos = 0
        if len(buf) < 2:
            pos = min(2 - len(buf), len(view))
            buf += view[:pos]
            if len(buf) < 2:
                return pos
        total = 2 + (buf[0] << 8 | buf[1])
        take = min(total - len(buf), len(view) - pos)
        buf += view[pos : pos + take]
        pos += take
        if len(buf) < total:
            return pos
        nonce = self._receive_nonce
        if nonce >= _MAX_NONCE:
            raise DecodeError("noise receive nonces exhausted")
        with memoryview(buf) as frame:
            plaintext = self._decrypt(_pack_nonce(nonce), frame[2:], None)  # InvalidTag: caller fails
        self._receive_nonce = nonce + 1
        buf.clear()
        if plaintext:
            out.append(plaintext)
        return pos
