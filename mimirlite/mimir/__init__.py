"""The MimirLLM protocols: a node that serves a backend's models and a client that uses them.

Importing this package loads neither ``openai`` nor ``httpx``: they load when a backend or a chat
first needs them.
"""

from __future__ import annotations

from mimirlite.mimir.backends import Backend, BackendError, EchoBackend, OpenAIBackend
from mimirlite.mimir.client import (
    AnswerTimeoutError,
    ChatError,
    ClientConfig,
    MimirClient,
    NoNodeError,
    TruncatedAnswerError,
)
from mimirlite.mimir.limits import NodeLimits
from mimirlite.mimir.models import DEFAULT_MODEL, MODEL_CIDS
from mimirlite.mimir.node import MimirNode
from mimirlite.mimir.packets import CHAT_PROTOCOL, MIMIR_IDENTIFY_PROTOCOL, RemoteError

__all__ = [
    "CHAT_PROTOCOL",
    "DEFAULT_MODEL",
    "MIMIR_IDENTIFY_PROTOCOL",
    "MODEL_CIDS",
    "AnswerTimeoutError",
    "Backend",
    "BackendError",
    "ChatError",
    "ClientConfig",
    "EchoBackend",
    "MimirClient",
    "MimirNode",
    "NoNodeError",
    "NodeLimits",
    "OpenAIBackend",
    "RemoteError",
    "TruncatedAnswerError",
]
