"""The MimirLLM protocols: a node that serves a backend's models and a client that uses them.

Importing this package loads neither ``openai``, ``httpx`` nor ``h11``: they load when a backend or a
chat first needs them. The client's names (:class:`MimirClient`, its config and errors) load on first
use, so that a node never loads the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mimirlite.mimir.backends import Backend, BackendError, EchoBackend, OpenAIBackend
from mimirlite.mimir.limits import NodeLimits
from mimirlite.mimir.models import DEFAULT_MODEL, MODEL_CIDS
from mimirlite.mimir.node import MimirNode
from mimirlite.mimir.packets import CHAT_PROTOCOL, MIMIR_IDENTIFY_PROTOCOL, RemoteError

if TYPE_CHECKING:
    from mimirlite.mimir.client import (
        AnswerTimeoutError,
        ChatError,
        ClientConfig,
        MimirClient,
        NoNodeError,
        TruncatedAnswerError,
    )

_LAZY = frozenset(
    {"AnswerTimeoutError", "ChatError", "ClientConfig", "MimirClient", "NoNodeError", "TruncatedAnswerError"}
)
"""The client's names, loaded from :mod:`mimirlite.mimir.client` on first use (PEP 562)."""

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


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'mimirlite.mimir' has no attribute {name!r}")
    value = getattr(importlib.import_module("mimirlite.mimir.client"), name)
    globals()[name] = value
    return value
