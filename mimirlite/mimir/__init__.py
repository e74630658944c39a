"""The MimirLLM protocols: a node that serves a backend's models and a client that uses them.

Importing this package loads neither ``openai``, ``httpx`` nor ``h11``: they load when a backend or a chat
first needs them. Its names load on first use (a module ``__getattr__``, PEP 562), each from the module
that defines it: a client process never loads the node's modules, nor a node the client's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mimirlite._lazy import lazy_names as _lazy_names

if TYPE_CHECKING:
    from mimirlite.mimir.backends import Backend, BackendError, EchoBackend, OpenAIBackend
    from mimirlite.mimir.client import (
        AnswerTimeoutError,
        ChatError,
        ClientConfig,
        MimirClient,
        NoNodeError,
        TruncatedAnswerError,
    )
    from mimirlite.mimir.follow import BackendState, FollowConfig
    from mimirlite.mimir.limits import NodeLimits
    from mimirlite.mimir.models import DEFAULT_MODEL, MODEL_CIDS
    from mimirlite.mimir.node import MimirNode
    from mimirlite.mimir.packets import CHAT_PROTOCOL, MIMIR_IDENTIFY_PROTOCOL, RemoteError

_LAZY = {
    "CHAT_PROTOCOL": "mimirlite.mimir.packets",
    "DEFAULT_MODEL": "mimirlite.mimir.models",
    "MIMIR_IDENTIFY_PROTOCOL": "mimirlite.mimir.packets",
    "MODEL_CIDS": "mimirlite.mimir.models",
    "AnswerTimeoutError": "mimirlite.mimir.client",
    "Backend": "mimirlite.mimir.backends",
    "BackendError": "mimirlite.mimir.backends",
    "BackendState": "mimirlite.mimir.follow",
    "ChatError": "mimirlite.mimir.client",
    "ClientConfig": "mimirlite.mimir.client",
    "EchoBackend": "mimirlite.mimir.backends",
    "FollowConfig": "mimirlite.mimir.follow",
    "MimirClient": "mimirlite.mimir.client",
    "MimirNode": "mimirlite.mimir.node",
    "NoNodeError": "mimirlite.mimir.client",
    "NodeLimits": "mimirlite.mimir.limits",
    "OpenAIBackend": "mimirlite.mimir.backends",
    "RemoteError": "mimirlite.mimir.packets",
    "TruncatedAnswerError": "mimirlite.mimir.client",
}
"""Names loaded on first use, by the module that defines them."""

__all__ = [
    "CHAT_PROTOCOL",
    "DEFAULT_MODEL",
    "MIMIR_IDENTIFY_PROTOCOL",
    "MODEL_CIDS",
    "AnswerTimeoutError",
    "Backend",
    "BackendError",
    "BackendState",
    "ChatError",
    "ClientConfig",
    "EchoBackend",
    "FollowConfig",
    "MimirClient",
    "MimirNode",
    "NoNodeError",
    "NodeLimits",
    "OpenAIBackend",
    "RemoteError",
    "TruncatedAnswerError",
]


__getattr__, __dir__ = _lazy_names(__name__, _LAZY, globals())
