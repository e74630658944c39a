"""mimirlite: share and use language models peer to peer on the MimirLLM wire protocol."""

from __future__ import annotations

__version__ = "0.1.0"
