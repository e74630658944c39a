"""A yamux stream as the application sees it: read, write with backpressure, half-close, reset."""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mimirlite.errors import (
    IncompleteReadError,
    MessageTooLargeError,
    StreamClosedError,
    StreamResetError,
)
from mimirlite.net.budget import CHUNK_OVERHEAD
from mimirlite.wire import lp
from mimirlite.wire.varint import decode_uvarint

if TYPE_CHECKING:
    from mimirlite.identity import PeerId
    from mimirlite.net.budget import BufferAccount
    from mimirlite.net.connection import Connection

DEFAULT_READ = 65536
_EARLY_CREDIT = 65536
"""A message longer than this is credited to the window while it arrives (any window fits this much)."""


class Stream:
    """One multiplexed stream on a Connection.

    Reads return ``b""`` at the remote's end of data; writes wait while the remote's window
    is spent or the socket is backed up. Use ``async with`` to close (or reset on error).
    """

    __slots__ = (
        "_account",
        "_chunks",
        "_conn",
        "_credit_skip",
        "_eof",
        "_kept",
        "_pos",
        "_read_waiter",
        "_reset_exc",
        "_reset_waiter",
        "_size",
        "_stalled_since",
        "_write_closed",
        "_write_waiter",
        "protocol",
        "stream_id",
    )

    def __init__(self, conn: Connection, stream_id: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.protocol: str | None = None
        # unread data: the chunks as they arrived (never copied to gather them), _pos into the first
        self._chunks: deque[bytes] = deque()
        self._pos = 0
        self._size = 0  # unread bytes in all
        # the chunks are charged to the connection's account in the host's buffer budget as they occupy
        # memory: each its length + CHUNK_OVERHEAD (the part already read included), until it is dropped
        self._account: BufferAccount = conn._account
        self._credit_skip = 0
        self._kept = 0  # bytes the application keeps for this stream, charged by hold()
        self._eof = False
        self._write_closed = False
        self._reset_exc: BaseException | None = None
        self._reset_waiter: asyncio.Future[None] | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._stalled_since: float | None = None

    def __repr__(self) -> str:
        return f"<Stream {self.stream_id} {self.protocol} with {self._conn.remote_peer}>"

    @property
    def remote_peer(self) -> PeerId:
        """The authenticated peer at the other end."""
        peer = self._conn.remote_peer
        assert peer is not None
        return peer

    @property
    def connection(self) -> Connection:
        return self._conn

    @property
    def is_reset(self) -> bool:
        return self._reset_exc is not None

    @property
    def stalled_since(self) -> float | None:
        """The event-loop time since when a write has waited on the remote's reader (its window spent
        or the connection's send buffer full) without handing on a byte; None while no write waits."""
        return self._stalled_since

    @property
    def at_eof(self) -> bool:
        """True when the remote closed its write side and everything was read."""
        return self._eof and not self._size

    # ---- called by the connection ----

    def _on_data(self, data: bytes) -> bool:
        """Buffer ``data`` if the host's buffer budget has room for it; False (not taken) if not."""
        n = len(data)
        if not n:
            return True
        cost = n + CHUNK_OVERHEAD
        account = self._account
        budget = account._budget
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

    def _on_eof(self) -> None:
        self._eof = True
        self._wake_reader()

    def hold(self, n: int) -> bool:
        """Charge ``n`` bytes the application keeps on this stream's behalf (a request it read and
        parsed, say) to the host's buffer budget; False, nothing charged, when the budget has no room
        or the stream was reset. Given back by :meth:`release`, or when the stream is reset."""
        if self._reset_exc is not None or not self._account.charge(n):
            return False
        self._kept += n
        return True

    def release(self) -> None:
        """Give back what :meth:`hold` charged."""
        if self._kept:
            if not self._account.closed:  # else its connection's end gave it back already
                self._account.release(self._kept)
            self._kept = 0

    def _on_reset(self, exc: BaseException) -> None:
        self.release()
        if self._reset_exc is None:
            self._reset_exc = exc
        if self._chunks:  # nobody reads a reset stream: its data goes now, not when the stream is freed
            held = self.held
            self._chunks.clear()
            self._pos = self._size = 0
            self._account.release(held)
        self._wake_reader()
        self._wake_writer()
        if self._reset_waiter is not None and not self._reset_waiter.done():
            self._reset_waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def held(self) -> int:
        """Bytes the unread data occupies, as charged to the host's buffer budget."""
        chunks = self._chunks
        return sum(map(len, chunks)) + CHUNK_OVERHEAD * len(chunks)

    def _unread(self, data: bytes) -> None:
        """Put back bytes a negotiation read past (already credited to the window)."""
        if data and self._reset_exc is None:
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

    # ---- reading ----

    async def _fill(self) -> bool:
        """Wait for more data; False at end of stream. Raises if the stream was reset."""
        while True:
            if self._reset_exc is not None:
                raise StreamResetError(str(self._reset_exc)) from self._reset_exc
            if self._size:
                return True
            if self._eof:
                return False
            self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None

    def _take(self, n: int) -> bytes:
        """Up to ``n`` buffered bytes (at least one must be buffered), credited to the window.

        A whole chunk is handed out as it is; only a read that splits or joins chunks copies.
        """
        chunks = self._chunks
        head = chunks[0]
        pos = self._pos
        avail = len(head) - pos
        if avail > n:
            out = head[pos : pos + n]
            self._pos = pos + n
            freed = 0
        elif avail == n or len(chunks) == 1:
            out = head[pos:] if pos else head
            chunks.popleft()
            self._pos = 0
            freed = len(head) + CHUNK_OVERHEAD
        else:
            parts = [head[pos:] if pos else head]
            chunks.popleft()
            freed = len(head) + CHUNK_OVERHEAD
            need = n - avail
            while chunks and need:
                chunk = chunks[0]
                if len(chunk) > need:
                    parts.append(chunk[:need])
                    self._pos = need
                    break
                parts.append(chunk)
                chunks.popleft()
                freed += len(chunk) + CHUNK_OVERHEAD
                need -= len(chunk)
            else:
                self._pos = 0
            out = b"".join(parts)
        if freed:
            account = self._account  # BufferAccount.release, inlined
            account.held -= freed
            account._budget.total -= freed
        self._size -= len(out)
        self._credit(len(out))
        return out

    def _discard(self) -> None:
        """Drop everything unread (credited to the window)."""
        if self._size:
            self._credit(self._size)
            held = self.held
            self._chunks.clear()
            self._pos = self._size = 0
            self._account.release(held)

    def _credit(self, n: int) -> None:
        if self._credit_skip:
            skip = min(self._credit_skip, n)
            self._credit_skip -= skip
            n -= skip
        if n:
            self._conn._consumed(self.stream_id, n)

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
        """One length-prefixed message body; None at a clean end of stream.

        Raises DecodeError for a bad varint, MessageTooLargeError above ``max_size``
        and IncompleteReadError when the stream ends inside a message.
        """
        while True:
            got = self._varint()
            if got is not None:
                break
            if not await self._fill_more():
                if not self._size:
                    return None
                raise IncompleteReadError(1, self._peek())
        length, prefix = got
        if length > max_size:
            raise MessageTooLargeError(f"message of {length} bytes exceeds the {max_size} byte cap")
        head = self._chunks[0]
        start = self._pos + prefix
        end = start + length
        if end <= len(head):  # the whole message in the first chunk: one copy
            body = head[start:end]
            if end == len(head):
                self._chunks.popleft()
                self._pos = 0
                freed = len(head) + CHUNK_OVERHEAD
                account = self._account  # BufferAccount.release, inlined
                account.held -= freed
                account._budget.total -= freed
            else:
                self._pos = end
            self._size -= prefix + length
            self._credit(prefix + length)
            return body
        while self._size < prefix + length:
            if length > _EARLY_CREDIT:
                # A message longer than the window cannot arrive while we hold the part already here
                # uncredited: give the window back now (the size cap bounds what we hold).
                held = self._size - self._credit_skip
                if held > 0:
                    self._conn._consumed(self.stream_id, held)
                    self._credit_skip += held
            if not await self._fill_more():
                raise IncompleteReadError(prefix + length, self._peek())
        self._take(prefix)
        return self._take(length)

    def _varint(self) -> tuple[int, int] | None:
        """Decode the length prefix at the read position: ``(value, its length)``, None if incomplete."""
        chunks = self._chunks
        while chunks:
            head = chunks[0]
            pos = self._pos
            got = decode_uvarint(head, pos)
            if got is not None:
                return got[0], got[1] - pos
            if len(chunks) == 1:
                return None
            # the prefix spans chunks: join the (short) rest of the first with the second
            chunks.popleft()
            second = chunks[0]
            chunks[0] = head[pos:] + second
            self._pos = 0
            self._account.release(pos + CHUNK_OVERHEAD)  # two chunks become one, less the part already read
        return None

    def _peek(self) -> bytes:
        """Everything unread, without taking it (for error messages)."""
        chunks = list(self._chunks)
        if chunks and self._pos:
            chunks[0] = chunks[0][self._pos :]
        return b"".join(chunks)

    async def _fill_more(self) -> bool:
        """Wait until more bytes than are buffered now arrive; False at end of stream."""
        have = self._size
        while self._size == have:
            if self._reset_exc is not None:
                raise StreamResetError(str(self._reset_exc)) from self._reset_exc
            if self._eof:
                return False
            self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        return True

    async def read_json(self, max_size: int = lp.MAX_MESSAGE) -> Any:
        """One LP-JSON message; None at a clean end of stream (a JSON ``null`` reads as None too)."""
        body = await self.read_message(max_size)
        if body is None:
            return None
        return lp.decode_json(body)

    # ---- writing ----

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``; waits while the remote's window is spent or the socket is backed up."""
        conn = self._conn
        self._stalled_since = None
        while True:
            if conn._write_blocked:  # wait before adding to a backed-up connection, not only after
                self._stalling()
                await conn._drain()
            if self._reset_exc is not None:
                raise StreamResetError(str(self._reset_exc)) from self._reset_exc
            if self._write_closed:
                raise StreamClosedError("write after close_write")
            sent = conn._send(self.stream_id, data)
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
        if conn._write_blocked:
            self._stalling()
            await conn._drain()
        self._stalled_since = None

    def _stalling(self) -> None:
        if self._stalled_since is None:
            self._stalled_since = self._conn._loop.time()

    async def write_json(self, obj: Any) -> None:
        """Send one LP-JSON message."""
        await self.write(lp.encode_json(obj))

    async def close_write(self) -> None:
        """Half-close: the remote reads end of stream; we can still read."""
        if self._write_closed or self._reset_exc is not None:
            return
        self._write_closed = True
        self._conn._close_stream(self.stream_id)

    async def reset(self) -> None:
        """Abort both directions at once."""
        if self._reset_exc is None:
            self._conn._reset_stream(self.stream_id)
        self._on_reset(StreamResetError("reset locally"))

    async def wait_reset(self) -> None:
        """Return once the stream is reset, by either side or by the end of its connection."""
        if self._reset_exc is None:
            if self._reset_waiter is None:
                self._reset_waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._reset_waiter)

    async def close(self) -> None:
        """Close our side and stop reading; what the remote still sends is discarded."""
        await self.close_write()
        self._conn._linger(self)

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            await self.close()
        else:
            await self.reset()
