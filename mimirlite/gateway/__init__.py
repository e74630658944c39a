"""An OpenAI-compatible HTTP gateway to the mimir network: ``GET /v1/models``, ``POST /v1/chat/completions``.

- :mod:`~mimirlite.gateway.http`: HTTP/1.1 server connections, sans-IO on ``h11``;
- :mod:`~mimirlite.gateway.api`: the OpenAI API's requests, errors, SSE events and answers, as plain data;
- :mod:`~mimirlite.gateway.gateway`: the asyncio server routing requests to nodes through a MimirClient.
"""

from __future__ import annotations

from mimirlite.gateway.api import ApiError
from mimirlite.gateway.gateway import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    HTTP_REQUEST_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_IP,
    WRITE_TIMEOUT,
    Gateway,
    GatewayConfig,
    GatewayMetrics,
)
from mimirlite.gateway.http import MAX_REQUEST_BODY, MAX_REQUEST_HEAD, CorsPolicy, Door, HttpError

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "HTTP_REQUEST_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_IP",
    "MAX_REQUEST_BODY",
    "MAX_REQUEST_HEAD",
    "WRITE_TIMEOUT",
    "ApiError",
    "CorsPolicy",
    "Door",
    "Gateway",
    "GatewayConfig",
    "GatewayMetrics",
    "HttpError",
]
