"""Bounded waits: poll a condition until it holds, fail the test (naming what) when it does not in time."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

TIMEOUT = 5.0
"""Default upper bound on a wait; a healthy run never gets near it."""


async def until(
    condition: Callable[[], object | Awaitable[object]],
    timeout: float = TIMEOUT,
    what: str = "condition",
    *,
    interval: float = 0.005,
) -> None:
    """Poll ``condition`` (a plain or an async callable) every ``interval`` s until it is truthy;
    AssertionError naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"{what} not reached in {timeout} s"
        await asyncio.sleep(interval)
