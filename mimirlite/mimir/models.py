"""Model names and the CIDs the original clients know them by: the one table of them."""

from __future__ import annotations

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
