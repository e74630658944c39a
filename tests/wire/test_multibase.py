"""mimirlite.wire.multibase on the multibase spec's vectors (multiformats/multibase tests/*.csv) and
the base58btc draft's (draft-msporny-base58)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mimirlite.wire.multibase import (
    b32decode,
    b32encode,
    b36decode,
    b58decode,
    b58encode,
    b64url_decode,
    b64url_encode,
    multibase_decode,
    multibase_encode,
)

# tests/basic.csv, tests/leading_zero.csv, tests/two_leading_zeros.csv: the encodings mimirlite reads
MULTIBASE_VECTORS = [
    (
        b"yes mani !",
        "z7paNL19xttacUY",
        "bpfsxgidnmfxgsibb",
        "k2lcpzo5yikidynfl",
        "ueWVzIG1hbmkgIQ",
        "f796573206d616e692021",
    ),
    (
        b"\x00yes mani !",
        "z17paNL19xttacUY",
        "bab4wk4zanvqw42jaee",
        "k02lcpzo5yikidynfl",
        "uAHllcyBtYW5pICE",
        "f00796573206d616e692021",
    ),
    (
        b"\x00\x00yes mani !",
        "z117paNL19xttacUY",
        "baaahszltebwwc3tjeaqq",
        "k002lcpzo5yikidynfl",
        "uAAB5ZXMgbWFuaSAh",
        "f0000796573206d616e692021",
    ),
]

BASE58_VECTORS = [
    (b"", ""),
    (b"\x00", "1"),
    (b"Hello World!", "2NEpo7TZRRrLZSi2U"),
    (
        b"The quick brown fox jumps over the lazy dog.",
        "USm3fpXnKG5EUBx2ndxBDMPVciP5hGey2Jh4NDv6gmeo1LkMeiKrLJUUBk6Z",
    ),
    (bytes.fromhex("0000287fb4cd"), "11233QC4"),
]


@pytest.mark.parametrize("row", MULTIBASE_VECTORS)
def test_multibase_vectors(row: tuple[bytes, str, str, str, str, str]) -> None:
    data, *texts = row
    for text in texts:
        assert multibase_decode(text) == data
        assert multibase_encode(data, text[0]) == text
    assert multibase_encode(data) == texts[3]  # base64url by default


@pytest.mark.parametrize(("data", "text"), BASE58_VECTORS)
def test_base58btc_vectors(data: bytes, text: str) -> None:
    assert b58encode(data) == text
    assert b58decode(text) == data


@pytest.mark.parametrize(
    ("decoder", "text"),
    [
        (b58decode, "0OIl"),  # characters base58btc leaves out
        (b58decode, "2NEpo7TZRRrLZSi2U+"),
        (b32decode, "PFSXGIDNMFXGSIBB"),  # upper case
        (b32decode, "pfsxgidnmfxgsibb="),  # padding
        (b32decode, "a"),  # impossible length
        (b32decode, "ab4wk4zanvqw42jaef"),  # non-zero trailing bits
        (b36decode, "2LCPZO"),
        (b64url_decode, "eWVzIG1hbmkgIQ=="),  # padding
        (b64url_decode, "eWVz+G1h"),  # base64, not base64url
        (b64url_decode, "eWVzIG1hbmkgIR"),  # non-zero trailing bits
        (b64url_decode, "a"),
        (multibase_decode, ""),
        (multibase_decode, "M" + "eWVzIG1hbmkgIQ"),  # base64 (not read)
        (multibase_decode, "F796573"),  # base16upper (not read)
        (multibase_decode, "f7965732"),  # odd length
    ],
)
def test_malformed_text_raises_value_error(decoder: object, text: str) -> None:
    with pytest.raises(ValueError):
        decoder(text)  # type: ignore[operator]


def test_unknown_prefix_to_encode() -> None:
    with pytest.raises(ValueError, match="unsupported multibase prefix"):
        multibase_encode(b"x", "m")


@given(st.binary(max_size=80), st.sampled_from("zbkuf"))
def test_round_trip(data: bytes, prefix: str) -> None:
    assert multibase_decode(multibase_encode(data, prefix)) == data
    assert b58decode(b58encode(data)) == data
    assert b32decode(b32encode(data)) == data
    assert b64url_decode(b64url_encode(data)) == data


@given(st.text(alphabet="123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz", max_size=60))
def test_every_base58_text_is_canonical(text: str) -> None:
    """Multiaddr text keeps a base58btc peer ID as given: that is only right if decoding is one to one."""
    assert b58encode(b58decode(text)) == text
