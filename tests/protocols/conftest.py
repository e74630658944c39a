"""Fixtures of the protocol suites: two hosts on loopback serving the echo protocol, and no task left
behind once they stopped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mimirlite import Host
from tests.helpers import ECHO, echo_handler


@pytest.fixture
async def no_tasks_left() -> AsyncIterator[None]:
    """Every task a test started (handlers, background identify) has ended once its hosts stopped."""
    yield
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not left, f"tasks left running: {left}"


@pytest.fixture
async def a(no_tasks_left: None) -> AsyncIterator[Host]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        host.set_handler(ECHO, echo_handler)
        yield host


@pytest.fixture
async def b(no_tasks_left: None) -> AsyncIterator[Host]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        host.set_handler(ECHO, echo_handler)
        yield host
