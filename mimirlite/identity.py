"""libp2p keys and peer IDs, as described in the libp2p peer-ids spec (``peer-ids/peer-ids.md``).

Public keys of every spec key type can be decoded and used to verify signatures; our own key
pair is always Ed25519. Key messages must be canonically encoded (fields in tag order, each
exactly once, minimal varints), since the encoding is what a peer ID is derived from.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ed25519

from mimirlite.errors import DecodeError, InvalidKeyError, LocalError
from mimirlite.wire.multibase import b32encode, b58decode, b58encode, multibase_decode
from mimirlite.wire.protobuf import (
    LENGTH_DELIMITED,
    VARINT,
    encode_bytes_field,
    encode_varint_field,
    iter_fields,
)
from mimirlite.wire.varint import decode_uvarint, encode_uvarint

IDENTITY_CODE = 0x00
SHA2_256_CODE = 0x12
LIBP2P_KEY_CODEC = 0x72
CID_VERSION = 1
MAX_INLINE_KEY_LENGTH = 42
"""Encoded public keys up to this size are inlined in the peer ID (identity multihash)."""

_MIN_RSA_BITS = 2048
_MAX_RSA_BITS = 8192
_MAX_PEER_ID_TEXT = 128


class KeyType(enum.IntEnum):
    """The ``KeyType`` enum of the libp2p key protobuf."""

    RSA = 0
    ED25519 = 1
    SECP256K1 = 2
    ECDSA = 3


# --- key messages ------------------------------------------------------------------------------


def _encode_key_message(key_type: int, data: bytes) -> bytes:
    return encode_varint_field(1, key_type) + encode_bytes_field(2, data)


def _decode_key_message(buf: bytes, what: str) -> tuple[KeyType, bytes]:
    """Decode a ``PublicKey``/``PrivateKey`` message; it must be canonically encoded."""
    fields: dict[int, int | bytes] = {}
    try:
        for field, wire_type, value in iter_fields(buf):
            expected = {1: VARINT, 2: LENGTH_DELIMITED}.get(field)
            if expected is None or wire_type != expected or field in fields:
                raise InvalidKeyError(f"{what}: unexpected field {field} (wire type {wire_type})")
            fields[field] = value
    except DecodeError as e:
        raise InvalidKeyError(f"{what}: {e}") from e
    raw_type, data = fields.get(1), fields.get(2)
    if not isinstance(raw_type, int) or not isinstance(data, bytes):
        raise InvalidKeyError(f"{what}: missing Type or Data")
    try:
        key_type = KeyType(raw_type)
    except ValueError:
        raise InvalidKeyError(f"{what}: unknown key type {raw_type}") from None
    if _encode_key_message(key_type, data) != bytes(buf):
        raise InvalidKeyError(f"{what}: not canonically encoded")
    return key_type, data


def _check_public_key_data(key_type: KeyType, data: bytes) -> None:
    """Cheap shape checks; full decoding happens in ``verify``."""
    if key_type == KeyType.ED25519:
        ok = len(data) == 32
    elif key_type == KeyType.SECP256K1:
        ok = (len(data) == 33 and data[0] in (2, 3)) or (len(data) == 65 and data[0] == 4)
    else:
        ok = len(data) > 0
    if not ok:
        raise InvalidKeyError(f"malformed {key_type.name} public key ({len(data)} bytes)")


def _verify_ed25519(key_data: bytes, data: bytes, signature: bytes) -> None:
    ed25519.Ed25519PublicKey.from_public_bytes(key_data).verify(signature, data)


# RSA and ECDSA keys are rare (Ed25519 is libp2p's default): their modules load at the first one seen.


def _verify_secp256k1(key_data: bytes, data: bytes, signature: bytes) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), key_data)
    key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def _verify_ecdsa(key_data: bytes, data: bytes, signature: bytes) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_der_public_key(key_data)
    curves = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curves):
        raise ValueError("not a NIST P-256/P-384/P-521 key")
    key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def _verify_rsa(key_data: bytes, data: bytes, signature: bytes) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = serialization.load_der_public_key(key_data)
    if not isinstance(key, rsa.RSAPublicKey) or not _MIN_RSA_BITS <= key.key_size <= _MAX_RSA_BITS:
        raise ValueError(f"RSA keys must have {_MIN_RSA_BITS} to {_MAX_RSA_BITS} bits")
    key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())


_VERIFIERS = {
    KeyType.RSA: _verify_rsa,
    KeyType.ED25519: _verify_ed25519,
    KeyType.SECP256K1: _verify_secp256k1,
    KeyType.ECDSA: _verify_ecdsa,
}


@dataclass(frozen=True)
class PublicKey:
    """A libp2p public key: its type and the key bytes carried in the protobuf ``Data`` field.

    Data encodings: Ed25519 raw 32 bytes; Secp256k1 a compressed (or uncompressed) point;
    ECDSA and RSA a DER SubjectPublicKeyInfo.
    """

    key_type: KeyType
    data: bytes

    @classmethod
    def from_protobuf(cls, buf: bytes) -> PublicKey:
        """Decode a ``PublicKey`` protobuf; InvalidKeyError if malformed."""
        key_type, data = _decode_key_message(buf, "public key")
        _check_public_key_data(key_type, data)
        return cls(key_type, data)

    def to_protobuf(self) -> bytes:
        """The canonical ``PublicKey`` protobuf (what peer IDs are derived from)."""
        return _encode_key_message(self.key_type, self.data)

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's signature over ``data``; never raises."""
        verifier = _VERIFIERS.get(self.key_type)
        if verifier is None:
            return False
        try:
            verifier(bytes(self.data), bytes(data), bytes(signature))
        except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
            return False
        return True


# --- peer IDs ----------------------------------------------------------------------------------


def _parse_multihash(buf: bytes) -> PublicKey | None:
    """Validate a peer ID multihash; return the inlined public key of an identity multihash."""
    try:
        code = decode_uvarint(buf)
        length = decode_uvarint(buf, code[1]) if code is not None else None
    except DecodeError as e:
        raise InvalidKeyError(f"peer ID: {e}") from e
    if code is None or length is None:
        raise InvalidKeyError("peer ID: truncated multihash")
    digest = buf[length[1] :]
    if len(digest) != length[0]:
        raise InvalidKeyError("peer ID: multihash length does not match its digest")
    if code[0] == SHA2_256_CODE:
        if len(digest) != 32:
            raise InvalidKeyError("peer ID: sha2-256 digest must be 32 bytes")
        return None
    if code[0] == IDENTITY_CODE:
        if len(digest) > MAX_INLINE_KEY_LENGTH:
            raise InvalidKeyError(f"peer ID: inlined key longer than {MAX_INLINE_KEY_LENGTH} bytes")
        return PublicKey.from_protobuf(digest)
    raise InvalidKeyError(f"peer ID: unsupported multihash code {code[0]:#x}")


class PeerId:
    """A peer ID: the multihash of a public key (inlined when small, else its SHA-256)."""

    __slots__ = ("_key", "_multihash", "_text")

    def __init__(self, multihash: bytes) -> None:
        multihash = bytes(multihash)
        self._key = _parse_multihash(multihash)
        self._multihash = multihash
        self._text: str | None = None

    @classmethod
    def from_public_key(cls, key: PublicKey) -> PeerId:
        """The peer ID of ``key``: identity multihash up to 42 encoded bytes, else sha2-256."""
        encoded = key.to_protobuf()
        if len(encoded) <= MAX_INLINE_KEY_LENGTH:
            return cls(encode_uvarint(IDENTITY_CODE) + encode_uvarint(len(encoded)) + encoded)
        return cls(encode_uvarint(SHA2_256_CODE) + encode_uvarint(32) + hashlib.sha256(encoded).digest())

    @classmethod
    def from_string(cls, text: str) -> PeerId:
        """Parse base58btc (``12D3KooW...``, ``Qm...``) or a multibase CIDv1 (``bafz...``, ``z...``)."""
        if len(text) > _MAX_PEER_ID_TEXT:
            raise InvalidKeyError("peer ID text too long")
        try:
            if text.startswith(("1", "Qm")):
                return cls(b58decode(text))
            cid = multibase_decode(text)
        except ValueError as e:
            raise InvalidKeyError(f"not a peer ID: {text!r}: {e}") from None
        try:
            version = decode_uvarint(cid)
            codec = decode_uvarint(cid, version[1]) if version is not None else None
        except DecodeError as e:
            raise InvalidKeyError(f"peer ID CID: {e}") from e
        if version is None or codec is None or version[0] != CID_VERSION:
            raise InvalidKeyError("peer ID: not a CIDv1")
        if codec[0] != LIBP2P_KEY_CODEC:
            raise InvalidKeyError(f"peer ID: CID codec {codec[0]:#x} is not libp2p-key")
        return cls(cid[codec[1] :])

    @classmethod
    def from_bytes(cls, buf: bytes) -> PeerId:
        """Parse the binary form (the multihash)."""
        return cls(buf)

    def to_bytes(self) -> bytes:
        """The multihash."""
        return self._multihash

    def to_base58(self) -> str:
        """The canonical text form: base58btc of the multihash."""
        if self._text is None:
            self._text = b58encode(self._multihash)
        return self._text

    def to_cid_string(self) -> str:
        """CIDv1 text form: multibase base32, codec libp2p-key."""
        return "b" + b32encode(
            encode_uvarint(CID_VERSION) + encode_uvarint(LIBP2P_KEY_CODEC) + self._multihash
        )

    def public_key(self) -> PublicKey | None:
        """The key inlined in an identity multihash; None for a hashed peer ID."""
        return self._key

    def matches_public_key(self, key: PublicKey) -> bool:
        """Whether ``key`` is the key this peer ID was derived from."""
        return PeerId.from_public_key(key)._multihash == self._multihash

    def __str__(self) -> str:
        return self.to_base58()

    def __repr__(self) -> str:
        return f"PeerId({self.to_base58()!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PeerId):
            return NotImplemented
        return self._multihash == other._multihash

    def __hash__(self) -> int:
        return hash(self._multihash)


# --- our own key pair --------------------------------------------------------------------------


class KeyPair:
    """Our Ed25519 identity."""

    __slots__ = ("_private", "peer_id", "public_key")

    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key = PublicKey(KeyType.ED25519, private_key.public_key().public_bytes_raw())
        self.peer_id = PeerId.from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh random key pair."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_private_protobuf(cls, buf: bytes) -> KeyPair:
        """Decode a ``PrivateKey`` protobuf holding an Ed25519 key.

        Data may be the 32-byte seed, seed || public key (64 bytes) or the legacy
        seed || public key || public key (96 bytes); embedded public keys must match the seed.
        """
        key_type, data = _decode_key_message(buf, "private key")
        if key_type != KeyType.ED25519:
            raise InvalidKeyError(f"private key: only Ed25519 is supported, not {key_type.name}")
        if len(data) not in (32, 64, 96):
            raise InvalidKeyError(f"private key: Ed25519 data must be 32, 64 or 96 bytes, not {len(data)}")
        pair = cls(ed25519.Ed25519PrivateKey.from_private_bytes(data[:32]))
        for start in range(32, len(data), 32):
            if data[start : start + 32] != pair.public_key.data:
                raise InvalidKeyError("private key: embedded public key does not match the private key")
        return pair

    def to_private_protobuf(self) -> bytes:
        """``PrivateKey`` protobuf with Data = 32-byte seed || 32-byte public key."""
        seed = self._private.private_bytes_raw()
        return _encode_key_message(KeyType.ED25519, seed + self.public_key.data)

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature over ``data``."""
        return self._private.sign(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, check_permissions: bool = True) -> KeyPair:
        """Load a key file (raw ``PrivateKey`` protobuf).

        Raises KeyFileError when the path cannot be used (missing, a directory, not a regular file,
        unreadable, or, with ``check_permissions`` on POSIX, open to group or others, as ssh refuses
        a private key) and InvalidKeyError when it holds no key; both name the path on one line.
        """
        buf = _read_key_file(os.fspath(path), check_permissions)
        if buf is None:
            raise KeyFileError(f"cannot use key file {os.fspath(path)}: No such file or directory")
        return cls._from_file(os.fspath(path), buf)

    @classmethod
    def _from_file(cls, path: str, buf: bytes) -> KeyPair:
        try:
            return cls.from_private_protobuf(buf)
        except InvalidKeyError as e:
            raise InvalidKeyError(f"cannot use key file {path}: not a key file ({e})") from e

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key file atomically (temporary file, then rename), readable by the owner only."""
        target = os.fspath(path)
        tmp = f"{target}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.to_private_protobuf())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str], *, check_permissions: bool = True) -> KeyPair:
        """Load the key file, or generate a new key and create the file (mode 0600) if there is none.

        Creation is atomic: the key is written to a temporary file in the same directory and linked
        into place only if no file is there yet, so processes started together on a new path agree on
        one identity (the ones that lose the race load the winner's key). Raises KeyFileError and
        InvalidKeyError as :meth:`load` does, and KeyFileError when the file cannot be created.
        """
        target = os.fspath(path)
        buf = _read_key_file(target, check_permissions)
        if buf is not None:
            return cls._from_file(target, buf)
        pair = cls.generate()
        try:
            created = _create_key_file(target, pair.to_private_protobuf())
        except OSError as exc:
            raise KeyFileError(f"cannot use key file {target}: cannot create it: {_reason(exc)}") from None
        if created:
            return pair
        return cls.load(target, check_permissions=check_permissions)  # another process made it first

    def __repr__(self) -> str:
        return f"KeyPair({self.peer_id})"


# --- key files ---------------------------------------------------------------------------------

MAX_KEY_FILE_SIZE = 4096
"""Bytes read from a key file at most; a larger file is not a key file."""
_O_BINARY: int = getattr(os, "O_BINARY", 0)
_O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block the open


class KeyFileError(LocalError):
    """A key file path cannot be used: missing, not a regular file, unreadable, or open to others."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _read_key_file(path: str, check_permissions: bool) -> bytes | None:
    """The bytes of the key file at ``path``; None when there is no file there (ENOENT)."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_BINARY | _O_NONBLOCK)
    except FileNotFoundError:
        if os.path.lexists(path):  # a dangling symlink is a bad path, not a missing key
            raise KeyFileError(f"cannot use key file {path}: it is a link to nothing") from None
        return None
    except OSError as exc:  # a directory cannot be opened on some systems (EISDIR, or EACCES on Windows)
        reason = "it is a directory" if os.path.isdir(path) else _reason(exc)
        raise KeyFileError(f"cannot use key file {path}: {reason}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise KeyFileError(f"cannot use key file {path}: it is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"cannot use key file {path}: it is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if check_permissions and os.name == "posix" and mode & 0o077:
            raise KeyFileError(
                f"cannot use key file {path}: permissions {mode:04o} are too open (group or others may "
                f"read or write it); run: chmod 600 {path}"
            )
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                buf = f.read(MAX_KEY_FILE_SIZE + 1)
        except OSError as exc:
            raise KeyFileError(f"cannot use key file {path}: {_reason(exc)}") from None
    finally:
        os.close(fd)
    if len(buf) > MAX_KEY_FILE_SIZE:
        raise InvalidKeyError(
            f"cannot use key file {path}: larger than {MAX_KEY_FILE_SIZE} bytes, not a key file"
        )
    return buf


def _create_key_file(path: str, data: bytes) -> bool:
    """Put ``data`` at ``path`` (mode 0600) unless a file is there; False when one was.

    Written to a temporary file in the same directory first and linked into place, so that the file
    at ``path`` is always whole; where hard links are not supported, created with O_EXCL instead.
    """
    tmp = f"{path}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            return _create_exclusive(path, data)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _sync_directory(path)
    return True


def _create_exclusive(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def _sync_directory(path: str) -> None:
    """Make the new directory entry durable (POSIX; a no-op where directories cannot be opened)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
