"""libp2p ping (``/ipfs/ping/1.0.0``): the asker sends 32 random bytes, the answerer echoes them.

One stream can carry many pings; the answerer echoes until the asker closes it. As the spec asks
(and js-libp2p enforces), we keep at most one outbound ping stream per connection and serve at most
:data:`MAX_INBOUND_PING_STREAMS` per connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from mimirlite.errors import (
    IncompleteReadError,
    LocalError,
    MimirliteTimeoutError,
    ProtocolError,
)
from mimirlite.identity import PeerId

if TYPE_CHECKING:
    from mimirlite.net.connection import Connection
    from mimirlite.net.host import Host
    from mimirlite.net.stream import Stream

log = logging.getLogger(__name__)

PING_PROTOCOL = "/ipfs/ping/1.0.0"
PING_SIZE = 32
"""Bytes in one ping payload."""
PING_TIMEOUT = 10.0
"""Seconds for one ping call (open, negotiate, every round), and an answerer's wait for the next ping."""
MAX_INBOUND_PING_STREAMS = 2
"""Ping streams one connection may have us serve at once, as the spec recommends."""


class PingMismatchError(ProtocolError):
    """The echo did not match the payload we sent."""


class PingTimeoutError(MimirliteTimeoutError):
    """A ping did not come back in time."""


def check_echo(sent: bytes, received: bytes) -> None:
    """Raise PingMismatchError unless ``received`` is ``sent``."""
    if received != sent:
        raise PingMismatchError(f"ping echo {received.hex()} does not match the payload {sent.hex()}")


class Ping:
    """The ping service of a Host: answers ``/ipfs/ping/1.0.0`` (when ``serve``) and measures round trips.

    ``random_bytes`` and ``clock`` can be replaced, e.g. for deterministic tests.
    """

    def __init__(
        self,
        host: Host,
        *,
        timeout: float = PING_TIMEOUT,
        serve: bool = True,
        random_bytes: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.host = host
        self.timeout = timeout
        self._random_bytes = random_bytes
        self._clock = clock
        self._serving: dict[Connection, int] = {}
        self._locks: weakref.WeakKeyDictionary[Connection, asyncio.Lock] = weakref.WeakKeyDictionary()
        self._serve = serve
        if serve:
            host.set_handler(PING_PROTOCOL, self._serve_stream)

    def close(self) -> None:
        """Stop answering pings."""
        if self._serve:
            self.host.remove_handler(PING_PROTOCOL)

    # ---- asking ----

    async def ping(self, target: Connection | PeerId | str, *, timeout: float | None = None) -> float:
        """Round-trip time in seconds of one ping to a connection's peer (or a peer / multiaddr).

        Raises PingMismatchError, PingTimeoutError, ProtocolNotSupportedError, ConnectionClosedError.
        """
        return (await self.ping_many(target, 1, timeout=timeout))[0]

    async def ping_many(
        self, target: Connection | PeerId | str, count: int, *, timeout: float | None = None
    ) -> list[float]:
        """``count`` pings in a row on one stream; their round-trip times in seconds."""
        if count < 1:
            raise LocalError("ping count must be at least 1")
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(self._ping(target, count), limit)
        except asyncio.TimeoutError:
            raise PingTimeoutError(f"ping to {target} timed out after {limit:g} s") from None

    async def _ping(self, target: Connection | PeerId | str, count: int) -> list[float]:
        conn = target if not isinstance(target, (PeerId, str)) else await self.host.dial(target)
        lock = self._locks.get(conn)
        if lock is None:
            lock = self._locks[conn] = asyncio.Lock()
        async with lock:
            stream = await self.host.open_on(conn, PING_PROTOCOL)
            rtts: list[float] = []
            try:
                for _ in range(count):
                    payload = self._random_bytes(PING_SIZE)
                    start = self._clock()
                    await stream.write(payload)
                    echo = await stream.read_exactly(PING_SIZE)
                    rtt = self._clock() - start
                    check_echo(payload, echo)
                    rtts.append(rtt)
            except BaseException:
                await stream.reset()
                raise
            await stream.close()
        log.debug("ping %s: %s", conn.remote_peer, ", ".join(f"{r * 1000:.3f} ms" for r in rtts))
        return rtts

    # ---- answering ----

    async def _serve_stream(self, stream: Stream) -> None:
        conn = stream.connection
        active = self._serving.get(conn, 0)
        if active >= MAX_INBOUND_PING_STREAMS:
            log.debug("%r: refusing a ping stream: %d already open", stream, active)
            await stream.reset()
            return
        self._serving[conn] = active + 1
        try:
            await self._echo(stream)
        finally:
            left = self._serving[conn] - 1
            if left:
                self._serving[conn] = left
            else:
                del self._serving[conn]

    async def _echo(self, stream: Stream) -> None:
        while True:
            try:
                payload = await asyncio.wait_for(stream.read_exactly(PING_SIZE), self.timeout)
            except IncompleteReadError as exc:
                if exc.partial:
                    got = len(exc.partial)
                    raise ProtocolError(f"ping stream ended after {got} of {PING_SIZE} bytes") from None
                return
            except asyncio.TimeoutError:
                log.debug("%r: no ping for %g s; resetting", stream, self.timeout)
                await stream.reset()
                return
            await stream.write(payload)
