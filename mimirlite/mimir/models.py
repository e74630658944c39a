"""Model names: the CIDs the original clients know them by (the one table of them), the CIDs a model is
found by in the DHT, and the protocol IDs of the latest generation's per-model tunnels."""

from __future__ import annotations

import hashlib
import re

from mimirlite.wire.multibase import b32encode, b58decode

MODEL_CIDS: dict[str, str] = {
    "llama3.2:latest": "QmNizEt5WLyEDUHMqsm89RHHNR63DYUSdtS38AeG4XUV6C",
}
"""Model name -> CID, as the original MimirLLM client queries them."""

DEFAULT_MODEL = "llama3.2:latest"
"""What a request without ``model`` asks for (the original node always serves this one)."""

_NAMES_BY_CID = {cid: name for name, cid in MODEL_CIDS.items()}


def model_name(ref: str) -> str:
    """The model name for ``ref``, which is a known CID or already a name."""
    return _NAMES_BY_CID.get(ref, ref)


def model_cid(name: str) -> str | None:
    """The CID the original clients use for ``name``, if there is one."""
    return MODEL_CIDS.get(name)


SHA2_256 = 0x12
"""Multihash code of sha2-256."""
RAW_CODEC = 0x55
"""Multicodec of raw bytes: the codec of a model's own CID."""
CID_V1 = 0x01


def name_cid(name: str) -> str:
    """The CID of a model name, for every model: CIDv1, raw codec, over the sha2-256 multihash of the name's
    UTF-8 bytes, as base32 text (``b...``). Any implementation can compute it."""
    return "b" + b32encode(bytes((CID_V1, RAW_CODEC)) + _name_multihash(name))


def _name_multihash(name: str) -> bytes:
    return bytes((SHA2_256, 32)) + hashlib.sha256(name.encode()).digest()


def dht_cids(name: str) -> list[str]:
    """The CIDs a node provides for ``name`` in the DHT: the original's table CID first (latest-generation
    JS clients look that one up), then :func:`name_cid`."""
    table = MODEL_CIDS.get(name)
    own = name_cid(name)
    return [own] if table is None else [table, own]


def dht_keys(name: str) -> list[bytes]:
    """The DHT keys of :func:`dht_cids` (a key is the multihash of the CID), in the same order."""
    table = MODEL_CIDS.get(name)
    own = _name_multihash(name)
    return [own] if table is None else [b58decode(table), own]


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_TUNNEL = re.compile(r"^/mimir/([A-Za-z0-9._-]+)/1\.0\.0$")


def sanitize_model(name: str) -> str:
    """The latest generation's rule: every character outside ``[A-Za-z0-9._-]`` becomes ``-`` (lossy)."""
    return _UNSAFE.sub("-", name)


def tunnel_protocol(model: str) -> str:
    """``/mimir/<sanitized model>/1.0.0`` (``llama3.2:latest`` -> ``/mimir/llama3.2-latest/1.0.0``)."""
    return f"/mimir/{sanitize_model(model)}/1.0.0"


def sanitized_of(protocol: str) -> str | None:
    """The sanitized model name of a tunnel protocol ID, or None if it is not one."""
    m = _TUNNEL.match(protocol)
    return m.group(1) if m else None
