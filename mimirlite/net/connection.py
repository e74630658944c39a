"""One libp2p connection, the asyncio shell around its sans-IO cores (in the manner of aioquic's
``asyncio/protocol.py``): bytes in -> the core -> events -> bytes out, nothing run as async code.

It runs over a :class:`~mimirlite.net.transport.ByteTransport` (a TCP socket, or a stream of another
connection). Until the upgrade is done the core is the :class:`~mimirlite.wire.upgrade.Upgrader`
(multistream, Noise, multistream, yamux; its ``get_timer()`` drives one timer, each step done calls
``on_progress``, the allowlist decides at ``PeerAuthenticated``); then incoming bytes go transport ->
Noise transport -> yamux session synchronously in ``buffer_updated``, read into one buffer per
thread; outgoing frames produced in one event-loop turn leave together, one write per Noise message.
While the socket's send buffer is above ``write_buffer_high`` frames wait in the
session (which bounds the replies it queues) and writers wait for it to drain. The connection also
enforces the host-wide stream limit, the idle and write timeouts, keepalive pings on connections it
dialed, and the drain after a remote GoAway. What it holds for its peer is charged to the host's buffer
budget (:mod:`mimirlite.net.budget`): each chunk a stream buffers, and from a pause of writing to its
resume what waits to be sent; data that does not fit resets its stream, unless a connection holding
more than its share gives up its newest streams (or, holding only what its peer does not read, closes).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, cast

from mimirlite.errors import (
    CloseKind,
    ConnectionClosedError,
    HandshakeError,
    LimitExceededError,
    MimirliteError,
    PeerNotAllowedError,
    ProtocolError,
    ProtocolErrorKind,
    RefusalReason,
    StreamResetError,
)
from mimirlite.metrics import INBOUND, OUTBOUND, HostMetrics
from mimirlite.net.budget import CHUNK_OVERHEAD, BufferAccount, BufferBudget
from mimirlite.net.shares import StreamShares
from mimirlite.net.sockopts import DEAD_LINK_ERRNOS, tune_tcp_socket
from mimirlite.net.stream import Stream, StreamState
from mimirlite.net.transport import StreamTransport
from mimirlite.wire import yamux
from mimirlite.wire.noise import NoiseTransport
from mimirlite.wire.upgrade import (
    PeerAuthenticated,
    StepCompleted,
    Upgraded,
    UpgradeEvent,
    Upgrader,
)
from mimirlite.wire.yamux import YamuxSession

if TYPE_CHECKING:
    from mimirlite.identity import KeyPair, PeerId
    from mimirlite.net.config import HostConfig
    from mimirlite.net.transport import ByteTransport

log = logging.getLogger(__name__)

RECEIVE_BUFFER = 256 * 1024
"""Bytes one socket read may take (asyncio's own read size)."""
_thread = threading.local()
_BUDGET_FULL = "stream reset: the host's buffer budget (max_buffered_total) is full"


def _receive_buffer() -> memoryview:
    """The receive buffer of this thread's connections: each read lands in it and is consumed (decrypted,
    or copied while upgrading) before the next, so one buffer serves them all and no read allocates."""
    view: memoryview | None = getattr(_thread, "receive_buffer", None)
    if view is None:
        view = _thread.receive_buffer = memoryview(bytearray(RECEIVE_BUFFER))
    return view


class ConnectionState(Enum):
    """Where a connection is in its life."""

    UPGRADING = "upgrading"
    """Negotiating Noise and yamux."""
    OPEN = "open"
    """Upgraded: streams open both ways."""
    DRAINING = "draining"
    """The remote sent GoAway: no new streams; closes once the open ones end."""
    CLOSED = "closed"
    """Ended (see ``close_kind`` and ``close_reason``)."""


UPGRADING, OPEN, DRAINING, CLOSED = ConnectionState


class Connection(asyncio.BufferedProtocol):
    """An upgraded libp2p connection carrying yamux streams (a :class:`~mimirlite.net.stream.StreamOwner`)."""

    def __init__(
        self,
        keypair: KeyPair,
        config: HostConfig,
        *,
        initiator: bool,
        on_stream: Callable[[Stream], None],
        on_close: Callable[[Connection], None],
        expected_peer: PeerId | None = None,
        accept_peer: Callable[[PeerId], bool] | None = None,
        metrics: HostMetrics | None = None,
        shares: StreamShares | None = None,
        budget: BufferBudget | None = None,
    ) -> None:
        self._keypair = keypair
        self._config = config
        self.initiator = initiator
        self._on_stream = on_stream
        self._on_close = on_close
        self._expected_peer = expected_peer
        self._accept_peer = accept_peer
        self.remote_peer: PeerId | None = None
        self.remote_address: tuple[str, int] | None = None
        self._transport: ByteTransport | None = None
        # upgrade phase: the sans-IO upgrader, made with the transport; its outcome for upgrade()
        self._upgrader: Upgrader | None = None
        self._upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._eof = False
        self.on_progress: Callable[[], None] | None = None
        """Called at each upgrade step the peer completes (see :mod:`mimirlite.net.pending`)."""
        # session phase
        self._noise: NoiseTransport | None = None
        self._session: YamuxSession | None = None
        self._streams: dict[int, Stream] = {}
        self._lingering: dict[int, asyncio.TimerHandle] = {}
        self._flush_scheduled = False
        self._write_paused = False  # the transport's buffer is above write_buffer_high
        self._backlog = 0  # bytes writers queued in the session since the last flush
        self.write_blocked = False
        """Writers wait (:meth:`drain`): writing is paused, or the backlog is above write_buffer_high.
        Read-only outside; a plain attribute, as every write reads it."""
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._pings: dict[int, tuple[float, asyncio.Future[float] | None]] = {}  # sent at, waiter
        self._metrics = metrics if metrics is not None else HostMetrics()
        self._shares = shares if shares is not None else StreamShares(config)
        self._inbound = 0  # streams the remote opened that are open (counted in _shares)
        # what this connection holds for its peer, in the host's budget (max_buffered_total): its streams'
        # unread data and, while the peer does not read (writing paused), what waits to be sent (_tx_held)
        self._budget = budget if budget is not None else BufferBudget(config.max_buffered_total)
        self._account = self._budget.account(self._shed)
        self._tx_held = 0
        self._loop = asyncio.get_running_loop()
        self._last_rx = 0.0  # loop time of the last bytes received once upgraded
        self._last_keepalive = 0.0
        self._timer: asyncio.TimerHandle | None = None  # idle and keepalive checks
        self._stall: asyncio.TimerHandle | None = None  # write timeout
        self._synced_pings = 0
        self._synced_refusals = 0
        self._state = UPGRADING
        self.close_reason: BaseException | None = None
        self.close_kind: CloseKind | None = None
        """How the connection ended (a ``HostMetrics.closed`` reason), once it has."""
        self.counted_ip: str | None = None
        """The address the host counts this inbound connection under (``max_connections_per_ip``)."""
        self.closed = self._loop.create_future()

    def __repr__(self) -> str:
        side = "out" if self.initiator else "in"
        return f"<Connection {side} {self.remote_peer} {self.remote_address}>"

    @property
    def state(self) -> ConnectionState:
        return self._state

    def _set_state(self, new: ConnectionState) -> None:
        log.debug("%r: %s -> %s", self, self._state.value, new.value)
        self._state = new

    @property
    def is_open(self) -> bool:
        """Upgraded, not closed, and the remote still accepts new streams (no GoAway from it)."""
        return self._state is OPEN

    @property
    def is_closed(self) -> bool:
        return self._state is CLOSED

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def transport(self) -> ByteTransport | None:
        """The byte stream the connection runs over, once made."""
        return self._transport

    @property
    def relayed(self) -> bool:
        """The connection runs inside a stream of another one (through a relay)."""
        return isinstance(self._transport, StreamTransport)

    @property
    def input_ended(self) -> bool:
        """The remote closed its side of the byte stream (or it was lost)."""
        return self._eof

    @property
    def account(self) -> BufferAccount:
        """This connection's account in the host's buffer budget."""
        return self._account

    def discard(self) -> None:
        """Forget a connection that never ran (refused before its transport was made): it leaves the
        host's buffer budget."""
        self._account.close()

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport | ByteTransport) -> None:
        """Made over ``transport``: a TCP socket's, or any :class:`~mimirlite.net.transport.ByteTransport`."""
        transport_ = self._transport = cast("ByteTransport", transport)
        sock = transport_.get_extra_info("socket")
        if sock is not None:
            tune_tcp_socket(sock, self._config.dead_link_timeout)  # TCP_NODELAY, dead-link detection
        peer = transport_.get_extra_info("peername")
        if peer:
            self.remote_address = (peer[0], peer[1])
        transport_.set_write_buffer_limits(high=self._config.write_buffer_high)
        cfg = self._config
        self._upgrader = Upgrader(
            self._keypair,
            initiator=self.initiator,
            now=self._loop.time(),
            expected_peer=self._expected_peer,
            step_timeout=cfg.handshake_step_timeout,
            first_byte_timeout=cfg.first_byte_timeout,
        )
        self._on_upgrade_events([])

    def get_buffer(self, sizehint: int) -> memoryview:
        return _receive_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        data = _receive_buffer()[:nbytes]  # only valid during this call: nothing may keep it
        self._metrics.bytes_in += nbytes
        if self._session is None:  # upgrading
            upgrader = self._upgrader
            if upgrader is not None and self._state is UPGRADING:
                self._on_upgrade_events(upgrader.receive_data(data, self._loop.time()))
            return
        self._last_rx = self._loop.time()
        self._on_session_data(data)

    def eof_received(self) -> bool:
        self._eof = True
        upgrader = self._upgrader
        if self._session is None and upgrader is not None and self._state is UPGRADING:
            self._on_upgrade_events(upgrader.receive_eof())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if isinstance(exc, OSError) and exc.errno in DEAD_LINK_ERRNOS and self._state is not CLOSED:
            log.warning("%r: closing connection: dead link, the peer stopped acknowledging (%s)", self, exc)
            self.fail(exc, CloseKind.DEAD_LINK)
            return
        self.fail(exc or ConnectionClosedError("connection closed by remote"), CloseKind.REMOTE)

    def pause_writing(self) -> None:
        self._write_paused = self.write_blocked = True
        self._hold_tx()
        timeout = self._config.write_timeout
        if timeout is not None and self._stall is None and self._state is not CLOSED:
            self._stall = self._loop.call_later(timeout, self._write_stalled)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._tx_held:
            self._account.release(self._tx_held)
            self._tx_held = 0
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._state is not CLOSED:
            self._schedule_flush()  # writes what waited in the session, then lets writers go on

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _write_stalled(self) -> None:
        self._stall = None
        if self._state is CLOSED:
            return
        reason = ConnectionClosedError(
            f"peer is not reading: send buffer full for {self._config.write_timeout:g} s (write_timeout)"
        )
        log.warning("%r: closing connection: %s", self, reason)
        self.fail(reason, CloseKind.WRITE_TIMEOUT, hard=True)

    async def drain(self) -> None:
        """Return once writers may add to the connection again; ConnectionClosedError if it closed."""
        if self._state is CLOSED:
            raise ConnectionClosedError("connection closed")
        fut = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        await fut

    # ---- upgrade: the sans-IO Upgrader fed from buffer_updated ----

    def _on_upgrade_events(self, events: list[UpgradeEvent]) -> None:
        """Act on what the upgrader said, then send what it has to send and re-arm its deadline."""
        upgrader = self._upgrader
        assert upgrader is not None
        for ev in events:
            if isinstance(ev, StepCompleted):
                if self.on_progress is not None:
                    self.on_progress()
            elif isinstance(ev, PeerAuthenticated):
                self.remote_peer = ev.peer_id
                if self._accept_peer is not None and not self._accept_peer(ev.peer_id):
                    # before any other protocol runs, the muxer's included: nothing more is sent
                    self._upgrade_failed(PeerNotAllowedError(ev.peer_id))
                    return
            elif isinstance(ev, Upgraded):
                self._write(upgrader.data_to_send())
                self._start_session(ev)
                return
            else:
                self._write(upgrader.data_to_send())
                self._upgrade_failed(ev.reason)
                return
        self._write(upgrader.data_to_send())
        upgrader.prepare()  # once the answer is out
        self._arm_upgrade_timer()

    def _arm_upgrade_timer(self) -> None:
        upgrader = self._upgrader
        due = None if upgrader is None else upgrader.get_timer()
        timer = self._timer
        if timer is not None:
            if due is not None and timer.when() == due:
                return
            timer.cancel()
        self._timer = None if due is None else self._loop.call_at(due, self._on_upgrade_timer, due)

    def _on_upgrade_timer(self, due: float) -> None:
        self._timer = None
        upgrader = self._upgrader
        if upgrader is not None and self._state is UPGRADING:
            self._on_upgrade_events(upgrader.handle_timer(max(due, self._loop.time())))

    def _upgrade_failed(self, reason: MimirliteError) -> None:
        if not self._upgraded.done():
            self._upgraded.set_exception(reason)
            self._upgraded.exception()  # retrieved: upgrade() raises it
        self.fail(reason, CloseKind.REMOTE if self._eof else CloseKind.LOCAL)

    def _start_session(self, ev: Upgraded) -> None:
        self._upgrader = None
        self._noise = ev.transport
        self._session = YamuxSession(is_client=self.initiator, config=self._config.yamux)
        self._set_state(OPEN)
        if not self._upgraded.done():
            self._upgraded.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._last_rx = self._last_keepalive = self._loop.time()
        self._on_timer()
        if ev.leftover:
            self._on_plaintext(ev.leftover)
            if self._state is not CLOSED:
                self._flush()

    def _write(self, data: bytes | bytearray) -> None:
        if data and self._transport is not None and not self._transport.is_closing():
            self._metrics.bytes_out += len(data)
            self._transport.write(data)

    async def upgrade(self) -> None:
        """Wait until Noise and yamux are agreed; raises HandshakeError, MultistreamError,
        PeerIdMismatchError, and PeerNotAllowedError when ``accept_peer`` refuses the peer the
        handshake authenticated (the connection is closed then).

        Each step the peer owes (a message we answer or act on) must come within
        ``handshake_step_timeout``, and an inbound peer's first byte within ``first_byte_timeout``
        (HandshakeTimeoutError); a step done calls :attr:`on_progress`.
        """
        await asyncio.shield(self._upgraded)

    # ---- session ----

    def _on_session_data(self, data: bytes | memoryview) -> None:
        assert self._noise is not None
        try:
            for plaintext in self._noise.receive_data(data):
                self._on_plaintext(plaintext)
                if self._state is CLOSED:
                    return
        except ProtocolError as exc:
            self.abort(exc, error_kind=ProtocolErrorKind.NOISE)
            return
        self._flush()

    def _on_plaintext(self, plaintext: bytes) -> None:
        session = self._session
        assert session is not None
        try:
            events = session.receive_data(plaintext)
        except ProtocolError as exc:
            self.abort(exc, error_kind=session.error_kind or yamux.KIND_PROTOCOL)
            return
        streams = self._streams
        for ev in events:
            if isinstance(ev, yamux.DataReceived):
                sid = ev.stream_id
                st = streams.get(sid)
                if st is None or sid in self._lingering:
                    session.consumed(sid, len(ev.data))
                elif not st.feed_data(ev.data):
                    self._over_budget(st, ev.data)
            elif isinstance(ev, yamux.SendWindowUpdated):
                st = streams.get(ev.stream_id)
                if st is not None:
                    st.feed_window()
            elif isinstance(ev, yamux.StreamOpened):
                sid = ev.stream_id
                total = self._metrics.streams_current
                if total >= self._config.max_streams_total:
                    log.info("%r: refusing stream %d: %d streams open (max_streams_total)", self, sid, total)
                    self._metrics.refused[RefusalReason.STREAMS_TOTAL] += 1
                    session.reset_stream(sid)
                    continue
                refusal = self._shares.refusal(self._inbound, self.remote_peer, self._ip)
                if refusal is not None:
                    log.info("%r: refusing stream %d: %s", self, sid, refusal[1])
                    self._metrics.refused[refusal[0]] += 1
                    session.reset_stream(sid)
                    continue
                self._inbound += 1
                self._shares.add(self.remote_peer, self._ip)
                st = Stream(self, sid)
                self._add_stream(st)
                self._on_stream(st)
            elif isinstance(ev, yamux.StreamEnded):
                sid = ev.stream_id
                if sid in self._lingering:
                    self._forget(sid)
                st = streams.get(sid)
                if st is not None:
                    st.feed_eof()
                    self._maybe_forget(st)
            elif isinstance(ev, yamux.StreamReset):
                st = self._drop_stream(ev.stream_id)
                self._unlinger(ev.stream_id)
                if st is not None:
                    st.feed_reset(StreamResetError("stream reset by remote"))
            elif isinstance(ev, yamux.StreamDropped):
                self._metrics.refused[RefusalReason.BUFFER] += 1
                st = self._drop_stream(ev.stream_id)
                self._unlinger(ev.stream_id)
                if st is not None:
                    st.feed_reset(LimitExceededError(f"stream reset: {ev.reason}"))
            elif isinstance(ev, yamux.PongReceived):
                entry = self._pings.pop(ev.opaque, None)
                if entry is not None:
                    rtt = time.perf_counter() - entry[0]
                    session.rtt = rtt
                    if entry[1] is not None and not entry[1].done():
                        entry[1].set_result(rtt)
            elif isinstance(ev, yamux.GoAwayReceived):
                log.info(
                    "%r: remote sent GoAway (code %d); no new streams, closing once %d end",
                    self,
                    ev.code,
                    len(streams),
                )
                self._set_state(DRAINING)
                if not streams:
                    self._loop.call_soon(self._close_if_drained)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self, force: bool = False) -> None:
        self._flush_scheduled = False
        if self._write_paused and not force:
            self._hold_tx()
            return  # the peer is not keeping up: frames wait in the session until the buffer drains
        session, transport = self._session, self._noise
        if session is not None and transport is not None:
            frames = session.frames_to_send()
            self._backlog = 0
            for message in transport.encrypt_messages(frames):
                self._write(message)
        if self.write_blocked and not self._write_paused:
            self.write_blocked = False
            self._wake_drain_waiters()

    # ---- the StreamOwner contract: what a Stream asks of its connection ----

    def stream_send(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue what the remote's window allows of ``data`` on stream ``stream_id``; bytes taken."""
        if self._session is None or self._state is CLOSED:
            raise ConnectionClosedError("connection closed")
        sent = self._session.send_data(stream_id, data)
        if sent:
            self._schedule_flush()
            backlog = self._backlog + sent
            self._backlog = backlog
            if backlog > self._config.write_buffer_high:
                self.write_blocked = True  # writers wait for the flush
        return sent

    # ---- the host's buffer budget ----

    def _over_budget(self, st: Stream, data: bytes) -> None:
        """``data`` for ``st`` does not fit in the host's buffer budget: make room, or reset ``st``."""
        if self._budget.make_room(self._account, len(data) + CHUNK_OVERHEAD) and st.feed_data(data):
            return
        self._refuse_memory(st, "its data would pass")

    def _hold_tx(self) -> None:
        """Charge what waits for a peer that does not read: the transport's buffer and the frames queued
        in the session (a header per frame besides the payload). Charged when writing pauses, released
        when it resumes; in between the buffer only drains."""
        transport = self._transport
        backlog = self._backlog
        held = transport.get_write_buffer_size() if transport is not None else 0
        if backlog:
            held += backlog + CHUNK_OVERHEAD * (2 + 2 * backlog // self._config.yamux.max_frame_data)
        if held > self._tx_held:
            self._account.add(held - self._tx_held)
            self._tx_held = held

    def _refuse_memory(self, st: Stream, why: str) -> None:
        budget = self._budget
        log.warning(
            "%r: resetting stream %d: %s the host's buffer budget (%d of max_buffered_total %d bytes held, "
            "%d for this connection)",
            self,
            st.stream_id,
            why,
            budget.total,
            budget.limit,
            self._account.held,
        )
        self._metrics.refused[RefusalReason.MEMORY] += 1
        self.stream_reset(st.stream_id)
        st.feed_reset(LimitExceededError(_BUDGET_FULL))

    def _shed(self, n: int) -> int:
        """Reset our newest streams holding received data until ``n`` bytes are released (the budget
        asks: this connection holds more than its share); how many were."""
        freed = 0
        for st in reversed(list(self._streams.values())):
            held = st.held
            if held:
                freed += held
                self._refuse_memory(st, "another peer needs room in")
                if freed >= n:
                    return freed
        if self._tx_held and self._write_paused and self._state is not CLOSED:
            freed += self._tx_held
            reason = ConnectionClosedError(
                f"peer is not reading: {self._tx_held} bytes wait to be sent while other peers need room in "
                "the host's buffer budget (max_buffered_total)"
            )
            log.warning("%r: closing connection: %s", self, reason)
            self._metrics.refused[RefusalReason.MEMORY] += 1
            self.fail(reason, CloseKind.WRITE_TIMEOUT, hard=True)
        return freed

    def stream_consumed(self, stream_id: int, n: int) -> None:
        """The application read ``n`` bytes of stream ``stream_id``: credit its receive window."""
        session = self._session
        if session is None or self._state is CLOSED:
            return
        if session.consumed(stream_id, n, self._loop.time()):
            # At once, not at the next loop turn: a reader holding a backlog turns the loop only once
            # it has read it all, and the remote's writer would idle until then.
            self._flush()

    def stream_close_write(self, stream_id: int) -> None:
        """Send stream ``stream_id``'s FIN."""
        if self._session is None or self._state is CLOSED:
            return
        self._session.close_stream(stream_id)
        self._schedule_flush()
        st = self._streams.get(stream_id)
        if st is not None:
            self._maybe_forget(st)

    def stream_reset(self, stream_id: int) -> None:
        """Send stream ``stream_id``'s RST and forget it."""
        self._drop_stream(stream_id)
        self._unlinger(stream_id)
        if self._session is None or self._state is CLOSED:
            return
        self._session.reset_stream(stream_id)
        self._schedule_flush()

    def _maybe_forget(self, st: Stream) -> None:
        if st.state is StreamState.CLOSED:
            self._drop_stream(st.stream_id)

    def _add_stream(self, st: Stream) -> None:
        self._streams[st.stream_id] = st
        m = self._metrics
        m.streams_opened += 1
        m.streams_current += 1
        direction = INBOUND if self._is_inbound(st.stream_id) else OUTBOUND
        m.streams_opened_by_direction[direction] += 1
        m.streams_current_by_direction[direction] += 1

    def _drop_stream(self, sid: int) -> Stream | None:
        st = self._streams.pop(sid, None)
        if st is not None:
            self._metrics.streams_current -= 1
            if self._is_inbound(sid):
                self._metrics.streams_current_by_direction[INBOUND] -= 1
                self._inbound -= 1
                self._shares.remove(self.remote_peer, self._ip)
            else:
                self._metrics.streams_current_by_direction[OUTBOUND] -= 1
            if self._state is DRAINING and not self._streams:
                self._loop.call_soon(self._close_if_drained)
        return st

    @property
    def _ip(self) -> str | None:
        address = self.remote_address
        return None if address is None else address[0]

    def _is_inbound(self, sid: int) -> bool:
        """Whether the remote opened stream ``sid`` (yamux: the dialer's streams are odd)."""
        return (sid % 2 == 1) != self.initiator

    def _close_if_drained(self) -> None:
        if self._state is not CLOSED and not self._streams:
            log.info("%r: the streams the remote's GoAway left open have ended; closing", self)
            self._close(CloseKind.GO_AWAY)

    def stream_linger(self, st: Stream) -> None:
        """We are done with ``st``: drop unread data; reset it if the remote never ends it."""
        sid = st.stream_id
        st.discard_unread()
        if st.read_ended or self._state is CLOSED:
            self._drop_stream(sid)
            return
        if sid not in self._lingering:
            loop = asyncio.get_running_loop()
            self._lingering[sid] = loop.call_later(self._config.linger_timeout, self._linger_expired, sid)

    def _linger_expired(self, sid: int) -> None:
        self._lingering.pop(sid, None)
        st = self._streams.get(sid)
        if st is not None:
            log.debug("%r: stream %d not ended by remote in time; resetting", self, sid)
            st.feed_reset(StreamResetError("linger timeout"))
            self.stream_reset(sid)

    def _unlinger(self, sid: int) -> None:
        handle = self._lingering.pop(sid, None)
        if handle is not None:
            handle.cancel()

    def _forget(self, sid: int) -> None:
        self._unlinger(sid)
        self._drop_stream(sid)

    # ---- timers ----

    def _on_timer(self) -> None:
        """Close the connection when idle; on one we dialed, ping a quiet remote (keepalive)."""
        self._timer = None
        if self._state is CLOSED or self._session is None:
            return
        cfg = self._config
        now = self._loop.time()
        quiet = now - self._last_rx
        due = math.inf
        idle = cfg.idle_timeout
        if idle is not None:
            if quiet >= idle and not self._streams:
                log.info("%r: idle for %.3g s (idle_timeout); closing", self, quiet)
                self._close(CloseKind.IDLE)
                return
            due = self._last_rx + idle if quiet < idle else now + idle
        keepalive = cfg.keepalive_interval
        if keepalive is not None and self.initiator:
            last = max(self._last_rx, self._last_keepalive)
            if now - last >= keepalive:
                self._last_keepalive = last = now
                if self.is_open:
                    # its pong is traffic; nobody waits for it, but it measures the round trip
                    self._pings[self._session.ping()] = (time.perf_counter(), None)
                    self._schedule_flush()
            due = min(due, last + keepalive)
        if due < math.inf:
            self._timer = self._loop.call_at(due, self._on_timer)

    def sync_metrics(self) -> None:
        """Add what the session counted since the last call to the host's metrics."""
        session = self._session
        if session is None:
            return
        m = self._metrics
        pings = session.pings_answered
        if pings != self._synced_pings:
            m.pings_answered += pings - self._synced_pings
            self._synced_pings = pings
        refusals = session.streams_refused
        if refusals != self._synced_refusals:
            m.refused[RefusalReason.STREAMS] += refusals - self._synced_refusals
            self._synced_refusals = refusals

    # ---- public ----

    def open_stream(self) -> Stream:
        """A new outbound stream (no protocol negotiated yet).

        Raises ConnectionClosedError when closed or going away, LimitExceededError at a stream limit.
        """
        if not self.is_open:
            raise ConnectionClosedError("connection is closed or going away")
        assert self._session is not None
        total = self._metrics.streams_current
        if total >= self._config.max_streams_total:
            raise LimitExceededError(f"{total} streams open on all connections (max_streams_total)")
        sid = self._session.open_stream()
        st = Stream(self, sid)
        self._add_stream(st)
        self._schedule_flush()
        return st

    async def ping(self, timeout: float = 10.0) -> float:
        """Round-trip time of a yamux ping, in seconds."""
        if not self.is_open:
            raise ConnectionClosedError("connection is closed")
        assert self._session is not None
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        opaque = self._session.ping()
        self._pings[opaque] = (time.perf_counter(), fut)
        self._schedule_flush()
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pings.pop(opaque, None)

    def close(self) -> None:
        """Say GoAway and close the socket; streams end with ConnectionClosedError."""
        self._close(CloseKind.LOCAL)

    def _close(self, kind: CloseKind) -> None:
        if self._state is CLOSED:
            return
        if self._session is not None and self._noise is not None:
            self._session.go_away(0)
            self._flush(force=True)
        self.fail(ConnectionClosedError("connection closed locally"), kind)

    def abort(self, reason: BaseException, *, error_kind: ProtocolErrorKind | str | None = None) -> None:
        """End the connection because of ``reason`` (logged once); ``error_kind`` counts it as a protocol
        error of that kind (see :class:`~mimirlite.metrics.HostMetrics`)."""
        if self._state is CLOSED:
            return
        if error_kind is None:
            log.warning("%r: closing connection: %s", self, reason)
        else:
            log.warning("%r: closing connection: %s [%s]", self, reason, error_kind)
            self._metrics.protocol_errors[error_kind] += 1
        hard = self._write_paused  # the peer does not read: do not wait to flush the GoAway
        if self._session is not None:
            self._flush(force=True)  # a session that raised has queued its GoAway
        self.fail(reason, CloseKind.LOCAL if error_kind is None else CloseKind.PROTOCOL_ERROR, hard=hard)

    def fail(self, reason: BaseException, kind: CloseKind = CloseKind.LOCAL, *, hard: bool = False) -> None:
        """End the connection now because of ``reason``, counted as ``kind`` (a ``HostMetrics.closed``
        reason): its transport is closed (aborted when ``hard``), its streams reset with ``reason``, its
        pings fail. Nothing is logged or sent (see :meth:`close` and :meth:`abort` for that)."""
        if self._state is CLOSED:
            return
        self._set_state(CLOSED)
        self._upgrader = None
        if not self._upgraded.done():
            self._upgraded.set_exception(HandshakeError("connection closed during the upgrade"))
            self._upgraded.exception()  # retrieved: upgrade() raises it
        self.close_reason = reason
        self.close_kind = kind
        transport = self._transport
        if transport is not None:
            if hard:
                transport.abort()
            else:
                transport.close()
                timeout = self._config.write_timeout
                if timeout is not None and transport.get_write_buffer_size():
                    self._loop.call_later(timeout, transport.abort)  # a peer that never reads it
        for handle in (self._timer, self._stall):
            if handle is not None:
                handle.cancel()
        self._timer = self._stall = None
        self.sync_metrics()
        exc = reason if isinstance(reason, MimirliteError) else ConnectionClosedError(str(reason))
        streams, self._streams = self._streams, {}
        self._metrics.streams_current -= len(streams)
        by_direction = self._metrics.streams_current_by_direction
        by_direction[INBOUND] -= self._inbound
        by_direction[OUTBOUND] -= len(streams) - self._inbound
        if self._inbound:
            self._shares.remove(self.remote_peer, self._ip, self._inbound)
            self._inbound = 0
        for st in streams.values():
            st.feed_reset(exc)
        for handle in self._lingering.values():
            handle.cancel()
        self._lingering.clear()
        for _, fut in self._pings.values():
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionClosedError("connection closed"))
        self._pings.clear()
        self._account.close()  # the streams gave back their data above; what waits to be sent goes too
        self._tx_held = 0
        self._write_paused = self.write_blocked = False
        self._wake_drain_waiters()
        if not self.closed.done():
            self.closed.set_result(None)
        self._on_close(self)
