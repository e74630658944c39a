"""How the gateway counts its chats (``Gateway.metrics.chats``, a :class:`~mimirlite.metrics.ChatMetrics`):
each chat request (``/v1/chat/completions``, ``/api/chat``, ``/api/generate``) by the model it named, when
a known node serves it (else ``other``), and by a fixed :class:`~mimirlite.metrics.ChatOutcome`; the time
to its first chunk and, answered to the end, its duration."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import TypeVar

from mimirlite.errors import MimirliteError
from mimirlite.gateway.api import ApiError
from mimirlite.metrics import ChatMetrics, ChatOutcome, ChatTally, outcome_of
from mimirlite.mimir.client import HttpRemoteError, NoNodeError
from mimirlite.mimir.packets import RemoteError

T = TypeVar("T")

_CLIENT_GONE = (asyncio.CancelledError, ConnectionError, OSError, asyncio.TimeoutError)
"""What ends a chat's handler when its client went away or stopped reading."""


class GatewayChat:
    """One chat request, counted when its ``with`` block ends: set :attr:`model` once the model is known
    to be served, pass the network's chunks through :meth:`watch`. Its outcome is what the chunks did (to
    the end: ``ok``; an error: by its kind), else what ended the block (an :class:`ApiError` by its
    status, the client leaving: ``cancelled``); a block that started no chat and raised nothing (Ollama's
    "load the model" request) is not counted."""

    def __init__(self, metrics: ChatMetrics) -> None:
        self.tally = ChatTally(metrics, time.perf_counter())

    @property
    def model(self) -> str | None:
        return self.tally.model

    @model.setter
    def model(self, model: str) -> None:
        self.tally.model = model

    def __enter__(self) -> GatewayChat:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        tally = self.tally
        if tally.outcome is None and exc is not None:
            tally.outcome = _outcome_of_exit(exc)
        tally.end(time.perf_counter())

    async def watch(self, chunks: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        """``chunks`` as they come (closed with this generator), timed and their end noted."""
        tally = self.tally
        async with contextlib.aclosing(chunks):
            try:
                async for chunk in chunks:
                    tally.first_chunk(time.perf_counter())
                    yield chunk
            except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
                tally.outcome = _outcome_of_upstream(exc)
                raise
            tally.outcome = ChatOutcome.OK


def _outcome_of_upstream(exc: BaseException) -> ChatOutcome:
    """The outcome of a chat the network failed with ``exc``."""
    if isinstance(exc, HttpRemoteError):
        if exc.status == 404:
            return ChatOutcome.MODEL_NOT_FOUND
        if exc.status in (429, 503):
            return ChatOutcome.REFUSED
        return ChatOutcome.BAD_REQUEST if exc.status < 500 else ChatOutcome.BACKEND_ERROR
    if isinstance(exc, RemoteError):
        return outcome_of(exc.type)
    if isinstance(exc, NoNodeError):
        return ChatOutcome.NO_NODE
    return ChatOutcome.UPSTREAM_ERROR


def _outcome_of_exit(exc: BaseException) -> ChatOutcome:
    """The outcome of a chat whose handler ended with ``exc`` before the network said how it ended."""
    if isinstance(exc, ApiError):
        if exc.code == "no_node":
            return ChatOutcome.NO_NODE
        if exc.status == 404:
            return ChatOutcome.MODEL_NOT_FOUND
        if exc.status == 429:
            return ChatOutcome.REFUSED
        return ChatOutcome.BAD_REQUEST if exc.status < 500 else ChatOutcome.UPSTREAM_ERROR
    if isinstance(exc, _CLIENT_GONE):
        return ChatOutcome.CANCELLED
    return ChatOutcome.UPSTREAM_ERROR
