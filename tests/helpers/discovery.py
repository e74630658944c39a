"""What the mDNS scenario suites (tests/scenarios/test_discovery.py, test_mixed_generations.py) share:
their bounds, the JS peers' query interval and skip mark, and a test OpenAI server inside a namespace."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import pytest

from tests.helpers.netns import NetnsLoop
from tests.helpers.nodeproc import REPO
from tests.helpers.openai_server import OpenAIServer

INTEROP = REPO / "interop"
if str(INTEROP) not in sys.path:
    sys.path.insert(0, str(INTEROP))

from jsmimir import node_available  # noqa: E402

FIND_TIMEOUT = 15.0
"""Bound on finding nodes by mDNS: covers a lost first exchange, retried at the next query (10 s)."""
JS_INTERVAL_MS = "1000"
"""mDNS query interval of the JS peers (short: a lost first exchange is retried soon)."""

needs_js = pytest.mark.skipif(
    not node_available(),
    reason="needs node on PATH and `npm ci` run in interop/ (interop/node_modules missing)",
)


async def openai_server_in(stack: contextlib.AsyncExitStack, nl: NetnsLoop, **kwargs: Any) -> OpenAIServer:
    """An OpenAIServer on 127.0.0.1 of ``nl``'s namespace, served by that loop (closed with ``stack``).

    Read its state through ``nl.run``: it lives on that loop.
    """

    async def start() -> OpenAIServer:
        return await OpenAIServer(**kwargs).start()

    srv = await nl.run(start(), timeout=10)
    stack.push_async_callback(nl.run, srv.close(), 10)
    return srv


async def chat_requests(nl: NetnsLoop, srv: OpenAIServer) -> list[Any]:
    """The chat requests ``srv`` (served by ``nl``) has received so far."""

    async def get() -> list[Any]:
        return list(srv.chat_requests)

    return await nl.run(get(), timeout=5)
