"""The asyncio idioms mimirlite repeats, written once.

- :func:`race`: the first of several awaitables to finish; the others are cancelled and awaited.
- :class:`SingleFlight`: one in-flight run per key, shared by every concurrent caller.
- :class:`Service`: the lifecycle of a long-running part: ``start()``, ``stop()`` (idempotent),
  ``async with``, ``serve()``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from types import TracebackType
from typing import Any, Generic, TypeVar

from mimirlite.errors import ClosedError, LocalError

__all__ = ["Service", "ServiceState", "SingleFlight", "race"]

log = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
S = TypeVar("S", bound="Service")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for``, except that the inner task's exception is always retrieved: cancelled just as
    that task fails, Python 3.10's and 3.11's ``wait_for`` leave it unretrieved, and asyncio logs "Task
    exception was never retrieved" (a DHT lookup cancels its requests in flight as a matter of course)."""
    task = asyncio.ensure_future(aw)
    task.add_done_callback(_retrieve)
    return await asyncio.wait_for(task, timeout)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def race(*aws: Awaitable[Any]) -> asyncio.Future[Any]:
    """Wait until the first of ``aws`` is done, cancel the others and wait until they have ended; the
    first one done (the earliest given, when several are).

    Coroutines are wrapped in tasks; futures given are cancelled too when they lose. When the caller is
    cancelled meanwhile, every one of ``aws`` is cancelled and awaited before the CancelledError goes
    on. Exceptions of the awaitables are marked retrieved (no "never retrieved" warning) but not raised:
    look at the futures (``fut.cancelled()``, ``fut.exception()``, ``fut.result()``).
    """
    if not aws:
        raise LocalError("race() needs at least one awaitable")
    futures = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
        return next(f for f in futures if f.done())
    finally:
        for fut in futures:
            if not fut.done():
                fut.cancel()
        await asyncio.wait(futures)
        for fut in futures:
            if not fut.cancelled():
                fut.exception()


class SingleFlight(Generic[K, T]):
    """One in-flight run per key: the first caller for a key starts ``factory()`` in a task of its own;
    callers that come while it runs share its outcome (result or exception, the same for all).

    A caller that is cancelled leaves the run going for the others (it is shielded); the run ends
    with its work or when its task is cancelled (``spawn`` decides who owns that task, e.g. a host that
    cancels its tasks when it stops): then the waiters get ``cancelled(key)``, a ClosedError by default.
    """

    def __init__(
        self,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]] | None = None,
        *,
        cancelled: Callable[[K], BaseException] | None = None,
    ) -> None:
        self._spawn = spawn
        self._cancelled = cancelled
        self._inflight: dict[K, asyncio.Future[T]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._inflight

    def __len__(self) -> int:
        return len(self._inflight)

    def get(self, key: K) -> asyncio.Future[T] | None:
        """The run in flight for ``key``, if any."""
        return self._inflight.get(key)

    def start(self, key: K, factory: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """The future of the run for ``key``: the one in flight, or a new run of ``factory()``."""
        fut = self._inflight.get(key)
        if fut is not None:
            return fut
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        coro = self._drive(key, fut, factory)
        task = self._spawn(coro) if self._spawn is not None else asyncio.ensure_future(coro)
        # a task cancelled before it started never runs _drive: settle its future here
        task.add_done_callback(lambda _: self._settle(key, fut))
        return fut

    async def run(self, key: K, factory: Callable[[], Awaitable[T]]) -> T:
        """Start or join the run for ``key`` and wait for its outcome (raised when it failed)."""
        return await asyncio.shield(self.start(key, factory))

    async def _drive(self, key: K, fut: asyncio.Future[T], factory: Callable[[], Awaitable[T]]) -> None:
        try:
            result = await factory()
        except Exception as exc:
            _fail(fut, exc)
        else:
            if not fut.done():
                fut.set_result(result)
        finally:
            self._settle(key, fut)

    def _settle(self, key: K, fut: asyncio.Future[T]) -> None:
        if not fut.done():  # the run's task was cancelled
            why = (
                self._cancelled(key) if self._cancelled is not None else ClosedError(f"{key}: run cancelled")
            )
            _fail(fut, why)
        if self._inflight.get(key) is fut:
            del self._inflight[key]


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()  # retrieved: the callers that await it still get it raised


class ServiceState(enum.Enum):
    """Where a :class:`Service` is in its life: NEW -> RUNNING -> STOPPED (never back)."""

    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class Service:
    """The lifecycle of a long-running part (a gateway, a node, a client, mDNS discovery).

    Subclasses write ``_start()`` (acquire) and ``_stop()`` (release what is there, whatever ``_start``
    got to); this class makes ``start()`` run it once (a second call does nothing; after ``stop()``
    LocalError), a ``start()`` that fails ``stop()`` before its error goes on, ``stop()`` run ``_stop()``
    once (idempotent, also before or without ``start()``), ``async with`` start and stop, and
    :meth:`serve` start, wait until cancelled, stop.
    """

    _service_state: ServiceState = ServiceState.NEW

    @property
    def state(self) -> ServiceState:
        """NEW, RUNNING or STOPPED."""
        return self._service_state

    async def start(self) -> object:
        """Start (once); subclasses may return what they started with."""
        if self._service_state is ServiceState.RUNNING:
            return None
        if self._service_state is ServiceState.STOPPED:
            raise LocalError(f"{type(self).__name__} was stopped")
        self._service_state = ServiceState.RUNNING
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return None

    async def stop(self) -> None:
        """Stop (once; later calls return at once)."""
        if self._service_state is ServiceState.STOPPED:
            return
        self._service_state = ServiceState.STOPPED
        await self._stop()

    async def serve(self) -> None:
        """Start, then run until cancelled; stop on the way out."""
        async with self:
            await asyncio.get_running_loop().create_future()

    async def _start(self) -> None:
        """Acquire what the service runs on."""

    async def _stop(self) -> None:
        """Release it (whatever part ``_start`` acquired, if it ran at all)."""

    async def __aenter__(self: S) -> S:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
