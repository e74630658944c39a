"""Helpers shared by the test modules: bounded waits and log assertions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

TIMEOUT = 5.0
"""Default upper bound on a wait; a healthy run never gets near it."""


async def until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def logged(caplog: pytest.LogCaptureFixture, *fragments: str) -> list[str]:
    """The log messages holding every fragment; fails when there is none."""
    found = [r.getMessage() for r in caplog.records if all(f in r.getMessage() for f in fragments)]
    assert found, f"nothing logged with {fragments}"
    return found
