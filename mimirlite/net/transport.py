"""The duplex byte stream a Connection runs over: :class:`ByteTransport`, the seam.

A TCP socket's asyncio transport is one (the host dials and accepts those); :class:`StreamTransport`
is another: it runs a whole libp2p connection inside a yamux :class:`~mimirlite.net.stream.Stream` of
another connection (what circuit relay v2 needs). It pumps the stream's reads into the connection,
turns the stream's backpressure (the outer window spent) into ``pause_writing`` / ``resume_writing``,
and the stream's end or reset into ``connection_lost``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from mimirlite.errors import MimirliteError
from mimirlite.net.stream import Stream

log = logging.getLogger(__name__)

DEFAULT_HIGH = 64 * 1024
"""Bytes a StreamTransport queues before it pauses its protocol's writing (asyncio's own default)."""


class ByteTransport(Protocol):
    """What a Connection uses of the byte stream it runs over (a subset of ``asyncio.Transport``)."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; never blocks (the protocol's ``pause_writing`` says when to stop)."""

    def close(self) -> None:
        """Send what is queued, then close; ``connection_lost(None)`` follows."""

    def abort(self) -> None:
        """Close now, dropping what is queued; ``connection_lost(None)`` follows."""

    def is_closing(self) -> bool:
        """Closing or closed."""

    def get_write_buffer_size(self) -> int:
        """Bytes queued, not yet handed on."""

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Pause the protocol's writing above ``high`` queued bytes, resume it at ``low``."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``"socket"``, ``"peername"``... where the transport has them; ``default`` otherwise."""

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Deliver what arrives to ``protocol`` from now on."""


class StreamTransport:
    """A :class:`ByteTransport` over a yamux stream of another connection (see the module docstring).

    Give it to :meth:`mimirlite.net.host.Host.upgrade_over`; reading starts at :meth:`set_protocol`. It
    owns the stream: its end closes the stream (:meth:`close`) or resets it (:meth:`abort`).
    """

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._protocol: asyncio.BufferedProtocol | None = None
        self._loop = asyncio.get_running_loop()
        self._queue: list[bytes] = []
        self._queued = 0  # bytes queued or being written, not yet taken by the stream
        self._high = DEFAULT_HIGH
        self._low = DEFAULT_HIGH // 4
        self._paused = False  # the protocol's writing is paused
        self._closing = False
        self._lost = False
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._wake_writer: asyncio.Future[None] | None = None
        self._resetting: asyncio.Task[None] | None = None
        self.bytes_in = 0
        """Bytes the stream delivered (what a relay's data limit counts, with :attr:`bytes_out`)."""
        self.bytes_out = 0
        """Bytes the connection wrote, queued or gone."""

    def __repr__(self) -> str:
        return f"<StreamTransport over {self._stream!r}>"

    @property
    def stream(self) -> Stream:
        """The stream carrying the bytes."""
        return self._stream

    # ---- ByteTransport ----

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.BufferedProtocol)
        self._protocol = protocol
        if self._reader is None and not self._closing:
            self._reader = self._loop.create_task(self._read_loop(), name="mimirlite-stream-transport-in")
            self._writer = self._loop.create_task(self._write_loop(), name="mimirlite-stream-transport-out")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "stream":
            return self._stream
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self._queue.append(bytes(data))
        self._queued += len(data)
        self.bytes_out += len(data)
        self._wake()
        if not self._paused and self._queued > self._high and self._protocol is not None:
            self._paused = True
            self._protocol.pause_writing()

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return self._queued

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = DEFAULT_HIGH if high is None else high
        self._low = self._high // 4 if low is None else low

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._wake()  # the writer sends what is queued, closes the stream, then reports the loss
        if self._writer is None:
            self._loop.call_soon(self._lose, None)

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        self._queue.clear()
        self._queued = 0
        self._cancel_tasks()
        reset = self._stream.reset()
        self._resetting = self._loop.create_task(reset, name="mimirlite-stream-transport-reset")
        self._loop.call_soon(self._lose, None)

    # ---- the pumps ----

    def _wake(self) -> None:
        waiter = self._wake_writer
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _read_loop(self) -> None:
        """The stream's data into the protocol; its end or reset ends the connection."""
        protocol = self._protocol
        assert protocol is not None
        stream = self._stream
        try:
            while True:
                data = await stream.read()
                if not data:
                    break
                self.bytes_in += len(data)
                view = memoryview(data)
                while view and not self._lost:
                    buf = memoryview(protocol.get_buffer(len(view)))
                    n = min(len(buf), len(view))
                    buf[:n] = view[:n]
                    view = view[n:]
                    protocol.buffer_updated(n)
                if self._lost:
                    return
        except MimirliteError as exc:  # reset, or its connection ended
            self._closing = True
            self._cancel_writer()
            self._lose(exc)
            return
        if not self._lost and not protocol.eof_received():
            self.close()

    async def _write_loop(self) -> None:
        """What the protocol wrote into the stream, waiting on the stream's backpressure; at close, the
        stream is closed once everything went out."""
        stream = self._stream
        try:
            while True:
                if self._queue:
                    queue, self._queue = self._queue, []
                    data = queue[0] if len(queue) == 1 else b"".join(queue)
                    await stream.write(data)
                    self._queued -= len(data)
                    if self._paused and self._queued <= self._low and self._protocol is not None:
                        self._paused = False
                        self._protocol.resume_writing()
                    continue
                if self._closing:
                    break
                self._wake_writer = self._loop.create_future()
                try:
                    await self._wake_writer
                finally:
                    self._wake_writer = None
            await stream.close()
        except MimirliteError as exc:  # reset, or its connection ended
            self._cancel_reader()
            self._lose(exc)
            return
        self._cancel_reader()
        self._lose(None)

    def _cancel_reader(self) -> None:
        task = self._reader
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _cancel_writer(self) -> None:
        task = self._writer
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _cancel_tasks(self) -> None:
        self._cancel_reader()
        self._cancel_writer()

    def _lose(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._queue.clear()
        self._queued = 0
        log.debug("%r: lost (%s)", self, exc)
        if self._protocol is not None:
            self._protocol.connection_lost(exc)
