"""Shared fixtures: hosts on loopback with an echo protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import settings

from mimirlite import Host, Stream
from tests.helpers.leakcheck import no_leaks
from tests.helpers.openai_server import OpenAIServer

__all__ = ["no_leaks"]

# Property tests draw the same examples on every run: a failure is reproducible, never a coin toss.
settings.register_profile("mimirlite", derandomize=True, database=None, deadline=None)
settings.load_profile("mimirlite")

ECHO = "/echo/1.0.0"


async def echo_handler(stream: Stream) -> None:
    """Echo every byte until the remote closes its write side."""
    while data := await stream.read():
        await stream.write(data)


@pytest.fixture
async def listener() -> AsyncIterator[Host]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        host.set_handler(ECHO, echo_handler)
        yield host


@pytest.fixture
async def dialer() -> AsyncIterator[Host]:
    async with Host() as host:
        yield host


@pytest.fixture
async def openai_server() -> AsyncIterator[OpenAIServer]:
    """A real OpenAI-compatible HTTP server on 127.0.0.1 serving llama3.2:latest."""
    async with OpenAIServer(models=["llama3.2:latest"]) as srv:
        yield srv
