"""mimirlite: share and use language models peer to peer on the MimirLLM wire protocol.

The public API in one import::

    from mimirlite import Host, KeyPair, MimirClient, MimirNode, OpenAIBackend, EchoBackend, NodeLimits

``import mimirlite`` stays light: it loads neither openai, httpx, zeroconf nor h11, and the mimir names
(``MimirClient``, ``MimirNode``, the backends, ``NodeLimits``, ``ClientConfig``) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mimirlite._lazy import lazy_names as _lazy_names
from mimirlite._version import __version__
from mimirlite.errors import (
    ClosedError,
    LocalError,
    MimirliteError,
    MimirliteTimeoutError,
    ProtocolError,
    RefusedError,
)
from mimirlite.identity import KeyPair, PeerId, PublicKey
from mimirlite.net.config import HostConfig
from mimirlite.net.connection import Connection
from mimirlite.net.host import Host
from mimirlite.net.stream import Stream

if TYPE_CHECKING:
    from mimirlite.mimir.backends import Backend, EchoBackend, OpenAIBackend
    from mimirlite.mimir.client import ClientConfig, MimirClient
    from mimirlite.mimir.limits import NodeLimits
    from mimirlite.mimir.node import MimirNode

_LAZY = {
    "Backend": "mimirlite.mimir.backends",
    "ClientConfig": "mimirlite.mimir.client",
    "EchoBackend": "mimirlite.mimir.backends",
    "MimirClient": "mimirlite.mimir.client",
    "MimirNode": "mimirlite.mimir.node",
    "NodeLimits": "mimirlite.mimir.limits",
    "OpenAIBackend": "mimirlite.mimir.backends",
}
"""Names loaded on first use (a module ``__getattr__``, PEP 562), by the module that defines them."""

__all__ = [
    "Backend",
    "ClientConfig",
    "ClosedError",
    "Connection",
    "EchoBackend",
    "Host",
    "HostConfig",
    "KeyPair",
    "LocalError",
    "MimirClient",
    "MimirNode",
    "MimirliteError",
    "MimirliteTimeoutError",
    "NodeLimits",
    "OpenAIBackend",
    "PeerId",
    "ProtocolError",
    "PublicKey",
    "RefusedError",
    "Stream",
    "__version__",
]


__getattr__, __dir__ = _lazy_names(__name__, _LAZY, globals())
