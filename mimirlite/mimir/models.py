"""Model names: the CIDs the original clients know them by (the one table of them), and the protocol
IDs of the latest generation's per-model tunnels."""

from __future__ import annotations

import re

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
