"""A yamux stream as the application sees it: read, write with backpressure, half-close, reset.

A stream talks to the connection that owns it only through :class:`StreamOwner`; the connection
pushes into it through ``feed_data`` / ``feed_eof`` / ``feed_reset`` / ``feed_window`` (aioquic's
stream reader idiom). Its half-close state is one :class:`StreamState`.
"""

from __future__ import annotations

import asyncio
import logging
from enum import Enum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, cast

from mimirlite.errors import (
    IncompleteReadError,
    MessageTooLargeError,
    StreamClosedError,
    StreamResetError,
)
from mimirlite.net.budget import CHUNK_OVERHEAD
from mimirlite.wire import lp
from mimirlite.wire.lp import LPDecoder

if TYPE_CHECKING:
    from mimirlite.identity import PeerId
    from mimirlite.net.budget import BufferAccount
    from mimirlite.net.connection import Connection

log = logging.getLogger(__name__)

DEFAULT_READ = 65536
_EARLY_CREDIT = 65536
"""A message longer than this is credited to the window while it arrives (any window fits this much)."""


class StreamState(Enum):
    """Where a stream is in its life (yamux half-closes each direction on its own)."""

    OPEN = "open"
    """Both directions carry data."""
    WRITE_CLOSED = "write_closed"
    """We closed our side (FIN sent); the remote may still send."""
    READ_EOF = "read_eof"
    """The remote closed its side (FIN received); we may still write."""
    CLOSED = "closed"
    """Both sides closed cleanly."""
    RESET = "reset"
    """Reset by either side, or ended with its connection: nothing more is read or written."""


OPEN, WRITE_CLOSED, READ_EOF, CLOSED, RESET = StreamState


class StreamOwner(Protocol):
    """What a :class:`Stream` may ask of the connection that owns it (a Connection is one)."""

    @property
    def remote_peer(self) -> PeerId | None:
        """The authenticated peer at the other end."""

    @property
    def account(self) -> BufferAccount:
        """The connection's account in the host's buffer budget: the stream charges its unread data."""

    @property
    def write_blocked(self) -> bool:
        """Writers wait (:meth:`drain`) before adding to the connection's backlog."""

    async def drain(self) -> None:
        """Return once the connection takes writes again; ConnectionClosedError if it closed."""

    def stream_send(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue what the remote's window allows of ``data``; how many bytes were taken."""

    def stream_consumed(self, stream_id: int, n: int) -> None:
        """The application read ``n`` bytes: credit them to the receive window."""

    def stream_close_write(self, stream_id: int) -> None:
        """Send our FIN."""

    def stream_reset(self, stream_id: int) -> None:
        """Send a RST and forget the stream."""

    def stream_linger(self, stream: Stream) -> None:
        """We are done with ``stream``: drop what it still receives, reset it if the remote never ends it."""


class Stream(LPDecoder):
    """One multiplexed stream on a Connection.

    Reads return ``b""`` at the remote's end of data; writes wait while the remote's window
    is spent or the socket is backed up. Use ``async with`` to close (or reset on error).
    """

    __slots__ = (
        "_account",
        "_credit_skip",
        "_debug",
        "_error",
        "_kept",
        "_owner",
        "_read_waiter",
        "_reset_waiter",
        "_stalled_since",
        "_state",
        "_write_waiter",
        "protocol",
        "stream_id",
    )

    _CHUNK_COST = CHUNK_OVERHEAD

    def __init__(self, owner: StreamOwner, stream_id: int) -> None:
        super().__init__()
        self._owner = owner
        self.stream_id = stream_id
        self.protocol: str | None = None
        # the chunks are charged to the connection's account in the host's buffer budget as they occupy
        # memory: each its length + CHUNK_OVERHEAD (the part already read included), until it is dropped
        self._account: BufferAccount = owner.account
        self._credit_skip = 0
        self._kept = 0  # bytes the application keeps for this stream, charged by hold()
        self._state = OPEN
        self._debug = log.isEnabledFor(logging.DEBUG)  # asked once: transitions are on the per-chat path
        self._error: BaseException | None = None  # why it was reset
        self._reset_waiter: asyncio.Future[None] | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._stalled_since: float | None = None

    def __repr__(self) -> str:
        return f"<Stream {self.stream_id} {self.protocol} with {self._owner.remote_peer}>"

    @property
    def remote_peer(self) -> PeerId:
        """The authenticated peer at the other end."""
        peer = self._owner.remote_peer
        assert peer is not None
        return peer

    @property
    def connection(self) -> Connection:
        """The connection this stream runs on."""
        return cast("Connection", self._owner)

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def stalled_since(self) -> float | None:
        """The event-loop time since when a write has waited on the remote's reader (its window spent
        or the connection's send buffer full) without handing on a byte; None while no write waits."""
        return self._stalled_since

    @property
    def at_eof(self) -> bool:
        """True when the remote closed its write side and everything was read."""
        state = self._state
        return (state is READ_EOF or state is CLOSED) and not self._size

    @property
    def read_ended(self) -> bool:
        """Nothing more will arrive: the remote closed its side, or the stream was reset."""
        state = self._state
        return state is READ_EOF or state is CLOSED or state is RESET

    def _set_state(self, new: StreamState) -> None:
        if self._debug:
            log.debug("%r: %s -> %s", self, self._state.value, new.value)
        self._state = new

    # ---- fed by the connection ----

    def feed_data(self, data: bytes) -> bool:
        """Buffer ``data`` if the host's buffer budget has room for it; False (not taken) if not."""
        n = len(data)
        if not n:
            return True
        cost = n + CHUNK_OVERHEAD
        account = self._account
        budget = account.budget
        total = budget.total + cost
        if total <= budget.mark:  # BufferAccount.charge without its checks, inlined: every chunk comes here
            budget.total = total
            account.held += cost
        elif not account.charge(cost):
            return False
        self._chunks.append(data)
        self._size += n
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def feed_eof(self) -> None:
        """The remote closed its side."""
        state = self._state
        if state is OPEN:
            self._set_state(READ_EOF)
        elif state is WRITE_CLOSED:
            self._set_state(CLOSED)
        self._wake_reader()

    def feed_reset(self, exc: BaseException) -> None:
        """The stream ends because of ``exc`` (a reset by either side, or its connection's end)."""
        self.release()
        if self._state is not RESET:
            self._error = exc
            self._set_state(RESET)
        if self._chunks:  # nobody reads a reset stream: its data goes now, not when the stream is freed
            held = self.held
            self._chunks.clear()
            self._pos = self._size = 0
            self._account.release(held)
        self._wake_reader()
        self.feed_window()
        if self._reset_waiter is not None and not self._reset_waiter.done():
            self._reset_waiter.set_result(None)

    def feed_window(self) -> None:
        """The remote's window grew (or the stream ended): a waiting write tries again."""
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def unread(self, data: bytes) -> None:
        """Put back bytes a negotiation read past (already credited to the window)."""
        if data and self._state is not RESET:
            chunks = self._chunks
            cost = len(data) + CHUNK_OVERHEAD
            if self._pos:
                chunks[0] = chunks[0][self._pos :]
                cost -= self._pos
                self._pos = 0
            chunks.appendleft(data)
            self._account.add(cost)  # held a moment ago: no refusal
            self._size += len(data)
            self._credit_skip += len(data)
            self._wake_reader()

    def discard_unread(self) -> None:
        """Drop everything unread (credited to the window)."""
        if self._size:
            self._credit(self._size)
            held = self.held
            self._chunks.clear()
            self._pos = self._size = 0
            self._account.release(held)

    def hold(self, n: int) -> bool:
        """Charge ``n`` bytes the application keeps on this stream's behalf (a request it read and
        parsed, say) to the host's buffer budget; False, nothing charged, when the budget has no room
        or the stream was reset. Given back by :meth:`release`, or when the stream is reset."""
        if self._state is RESET or not self._account.charge(n):
            return False
        self._kept += n
        return True

    def release(self) -> None:
        """Give back what :meth:`hold` charged."""
        if self._kept:
            if not self._account.closed:  # else its connection's end gave it back already
                self._account.release(self._kept)
            self._kept = 0

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def held(self) -> int:
        """Bytes the unread data occupies, as charged to the host's buffer budget."""
        chunks = self._chunks
        return sum(map(len, chunks)) + CHUNK_OVERHEAD * len(chunks)

    # ---- reading ----

    def _reset_error(self) -> StreamResetError:
        return StreamResetError(str(self._error))

    async def _fill(self) -> bool:
        """Wait for data; False at end of stream. Raises if the stream was reset."""
        return bool(self._size) or await self._fill_more()

    async def _fill_more(self) -> bool:
        """Wait until more bytes than are buffered now arrive; False at end of stream. Raises if the
        stream was reset."""
        have = self._size
        while self._size == have:
            state = self._state
            if state is RESET:
                raise self._reset_error() from self._error
            if state is READ_EOF or state is CLOSED:
                return False
            self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        return True

    def _taken(self, n: int, freed: int) -> None:
        if freed:
            account = self._account  # BufferAccount.release, inlined
            account.held -= freed
            account.budget.total -= freed
        if n:  # _credit, inlined: every message comes here
            skip = self._credit_skip
            if skip:
                if skip > n:
                    self._credit_skip = skip - n
                    return
                self._credit_skip = 0
                n -= skip
                if not n:
                    return
            self._owner.stream_consumed(self.stream_id, n)

    def _credit(self, n: int) -> None:
        if self._credit_skip:
            skip = min(self._credit_skip, n)
            self._credit_skip -= skip
            n -= skip
        if n:
            self._owner.stream_consumed(self.stream_id, n)

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all buffered, at most 64 KiB, when n < 0); ``b""`` at end of stream."""
        if n == 0:
            return b""
        if not await self._fill():
            return b""
        return self._take(n if n > 0 else DEFAULT_READ)

    async def read_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; IncompleteReadError if the stream ends first."""
        parts: list[bytes] = []
        need = n
        while need:
            if not await self._fill():
                raise IncompleteReadError(n, b"".join(parts))
            chunk = self._take(need)
            parts.append(chunk)
            need -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read_all(self, limit: int = 1 << 30) -> bytes:
        """Everything until the remote closes; MessageTooLargeError past ``limit`` bytes."""
        parts: list[bytes] = []
        total = 0
        while await self._fill():
            chunk = self._take(DEFAULT_READ)
            total += len(chunk)
            if total > limit:
                raise MessageTooLargeError(f"stream sent more than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def read_message(self, max_size: int = lp.MAX_MESSAGE) -> bytes | None:
        """One length-prefixed message body (:class:`~mimirlite.wire.lp.LPDecoder`); None at a clean
        end of stream.

        Raises DecodeError for a bad varint, MessageTooLargeError above ``max_size``
        and IncompleteReadError when the stream ends inside a message.
        """
        while True:
            body = self._next_message(max_size)
            if body is not None:
                return body
            need = self._need
            if need > _EARLY_CREDIT:
                # A message longer than the window cannot arrive while we hold the part already here
                # uncredited: give the window back now (the size cap bounds what we hold).
                held = self._size - self._credit_skip
                if held > 0:
                    self._owner.stream_consumed(self.stream_id, held)
                    self._credit_skip += held
            if not await self._fill_more():
                if not self._size:
                    return None
                raise IncompleteReadError(need or 1, self._peek())

    def read_message_nowait(self, max_size: int = lp.MAX_MESSAGE) -> bytes | None:
        """A whole length-prefixed message already received, without waiting; None when none is here
        (:meth:`read_message` then waits for one, or tells the end of the stream). Raises as it does."""
        return self._next_message(max_size)

    async def read_json(self, max_size: int = lp.MAX_MESSAGE) -> Any:
        """One LP-JSON message; None at a clean end of stream (a JSON ``null`` reads as None too)."""
        body = await self.read_message(max_size)
        if body is None:
            return None
        return lp.decode_json(body)

    # ---- writing ----

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``; waits while the remote's window is spent or the socket is backed up."""
        owner = self._owner
        self._stalled_since = None
        while True:
            if owner.write_blocked:  # wait before adding to a backed-up connection, not only after
                self._stalling()
                await owner.drain()
            state = self._state
            if state is not OPEN and state is not READ_EOF:
                if state is RESET:
                    raise self._reset_error() from self._error
                raise StreamClosedError("write after close_write")
            sent = owner.stream_send(self.stream_id, data)
            if sent:
                self._stalled_since = None  # progress: a stall, if any, starts again from now
            if sent == len(data):
                break
            if sent:
                data = memoryview(data)[sent:]
            self._stalling()
            self._write_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._write_waiter
            finally:
                self._write_waiter = None
        if owner.write_blocked:
            self._stalling()
            await owner.drain()
        self._stalled_since = None

    def _stalling(self) -> None:
        if self._stalled_since is None:
            self._stalled_since = asyncio.get_running_loop().time()

    async def write_json(self, obj: Any) -> None:
        """Send one LP-JSON message."""
        await self.write(lp.encode_json(obj))

    async def close_write(self) -> None:
        """Half-close: the remote reads end of stream; we can still read."""
        state = self._state
        if state is OPEN:
            self._set_state(WRITE_CLOSED)
        elif state is READ_EOF:
            self._set_state(CLOSED)
        else:
            return
        self._owner.stream_close_write(self.stream_id)

    async def reset(self) -> None:
        """Abort both directions at once."""
        if self._state is not RESET:
            self._owner.stream_reset(self.stream_id)
        self.feed_reset(StreamResetError("reset locally"))

    async def wait_reset(self) -> None:
        """Return once the stream is reset, by either side or by the end of its connection."""
        if self._state is not RESET:
            if self._reset_waiter is None:
                self._reset_waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._reset_waiter)

    async def close(self) -> None:
        """Close our side and stop reading; what the remote still sends is discarded."""
        await self.close_write()
        self._owner.stream_linger(self)

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            await self.close()
        else:
            await self.reset()
