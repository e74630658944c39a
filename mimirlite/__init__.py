"""mimirlite: share and use language models peer to peer on the MimirLLM wire protocol."""

from __future__ import annotations

from mimirlite.errors import MimirliteError
from mimirlite.identity import KeyPair, PeerId, PublicKey
from mimirlite.net.config import HostConfig
from mimirlite.net.connection import Connection
from mimirlite.net.host import Host
from mimirlite.net.stream import Stream

__version__ = "0.1.0"

__all__ = [
    "Connection",
    "Host",
    "HostConfig",
    "KeyPair",
    "MimirliteError",
    "PeerId",
    "PublicKey",
    "Stream",
    "__version__",
]
