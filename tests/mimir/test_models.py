"""Model names as DHT keys: the CID rule any implementation can compute."""

from __future__ import annotations

import base64
import hashlib

from hypothesis import given
from hypothesis import strategies as st

from mimirlite.mimir.models import DEFAULT_MODEL, MODEL_CIDS, dht_cids, dht_keys, name_cid
from mimirlite.wire.multibase import b58decode, multibase_decode

EMPTY_RAW_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
"""The well-known CIDv1 (raw, sha2-256) of zero bytes, as IPFS prints it."""


def independent_cid(name: str) -> str:
    """The rule written again with the standard library only."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    raw = bytes([0x01, 0x55, 0x12, 0x20]) + digest
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def test_the_empty_name_has_ipfs_well_known_raw_cid() -> None:
    assert name_cid("") == EMPTY_RAW_CID


@given(st.text(max_size=200))
def test_name_cid_is_cidv1_raw_sha256_of_the_utf8_name(name: str) -> None:
    cid = name_cid(name)
    assert cid == independent_cid(name)
    assert multibase_decode(cid)[4:] == hashlib.sha256(name.encode()).digest()


def test_a_table_model_is_provided_under_the_originals_cid_first() -> None:
    assert dht_cids(DEFAULT_MODEL) == [MODEL_CIDS[DEFAULT_MODEL], name_cid(DEFAULT_MODEL)]
    table_key, own_key = dht_keys(DEFAULT_MODEL)
    assert table_key == b58decode("QmNizEt5WLyEDUHMqsm89RHHNR63DYUSdtS38AeG4XUV6C")
    assert table_key[:2] == b"\x12\x20" and len(table_key) == 34  # a CIDv0 is its sha2-256 multihash
    assert own_key == b"\x12\x20" + hashlib.sha256(DEFAULT_MODEL.encode()).digest()


def test_other_models_have_only_their_own_cid() -> None:
    assert dht_cids("qwen2.5:7b") == [independent_cid("qwen2.5:7b")]
    assert dht_keys("qwen2.5:7b") == [multibase_decode(name_cid("qwen2.5:7b"))[2:]]  # the CID's multihash
