"""Shared fixtures: hosts on loopback with an echo protocol, the test OpenAI server, the environment of
a command-line subprocess; the property tests' profile."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import settings

from mimirlite import Host
from tests.helpers import ECHO, echo_handler
from tests.helpers.leakcheck import no_leaks
from tests.helpers.nodeproc import make_env
from tests.helpers.openai_server import OpenAIServer

__all__ = ["no_leaks"]

# Property tests draw the same examples on every run: a failure is reproducible, never a coin toss.
settings.register_profile("mimirlite", derandomize=True, database=None, deadline=None)
settings.load_profile("mimirlite")

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


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections: bound (so nobody else takes it), never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def env(closed_port: int) -> dict[str, str]:
    """Environment of a command-line subprocess whose default backend (``OLLAMA_ENDPOINT``) refuses
    connections."""
    return make_env(OLLAMA_ENDPOINT=f"http://127.0.0.1:{closed_port}/v1")
