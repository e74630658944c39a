"""Sans-IO yamux session (``/yamux/1.0.0``): frames, stream states and flow-control windows.

Bytes in via :meth:`YamuxSession.receive_data` (returns events), bytes out via
:meth:`YamuxSession.data_to_send`. No sockets, no clock, no event loop: the asyncio glue owns the
stream buffers and feeds :meth:`YamuxSession.consumed` as the application reads (with the time, which
window auto-tuning needs).

Window auto-tuning (as go-yamux and js-libp2p's yamux do): a stream's receive window starts at
``initial_window`` and doubles, up to ``max_window``, whenever its reader consumed half of it within
one growth period (``window_growth_time``, or four round trips when :attr:`YamuxSession.rtt` is known
and longer): the window, not the reader, is then what limits the sender. Growth stops while the windows
of all streams together would pass ``max_buffered``, so a peer that keeps to its windows is never
dropped for what growth let it send.

Wire format (hashicorp/yamux ``spec.md``): :mod:`mimirlite.wire.yamux_frames` (the codec). The dialer
(client) opens odd stream ids, the listener (server) even ones; ping and go-away use id 0. Inbound frames
go through a table from frame type to handler (``_FRAME_HANDLERS``); each stream's half-close state is a
:class:`StreamState` (table ``STREAM_TRANSITIONS``), the session's a :class:`SessionState`.

Payloads are delivered as they arrive: a data frame split across several ``receive_data`` calls
yields one :class:`DataReceived` per piece, so nothing larger than a partial 12-byte header is ever
buffered here. Flags carried on a data frame (FIN, RST) take effect after its last payload byte.

Against hostile peers (limits in :class:`YamuxConfig`): data past ``max_buffered`` unread bytes resets
its stream; a peer that makes us queue more than ``max_queued_replies`` answers it does not take (pongs,
ACKs, refusals), resets more than ``max_early_resets`` streams before we answered them, or sends more than
``max_empty_frames`` frames that carry nothing ends the session; :attr:`YamuxSession.error_kind` says which.
Window updates that return credit for a stream already forgotten are not counted as empty, up to one per
data frame we sent on it: js-libp2p's yamux returns credit as its application reads each frame, so a
reader behind the writer sends them for a while after both sides closed the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from mimirlite.errors import (
    ConnectionClosedError,
    LimitExceededError,
    LocalError,
    ProtocolErrorKind,
    StreamClosedError,
    StreamResetError,
    YamuxError,
)
from mimirlite.wire import yamux_frames as frames
from mimirlite.wire.yamux_frames import (
    HEADER_LEN,
    HEADER_STRUCT,
    MAX_U32,
    VERSION,
    Flag,
    FrameType,
    GoAwayCode,
)

__all__ = [
    "GO_AWAY_INTERNAL_ERROR",
    "GO_AWAY_NORMAL",
    "GO_AWAY_PROTOCOL_ERROR",
    "INITIAL_WINDOW",
    "YAMUX_PROTOCOL",
    "DataReceived",
    "GoAwayReceived",
    "PongReceived",
    "SendWindowUpdated",
    "SessionInput",
    "SessionState",
    "StreamAcked",
    "StreamDropped",
    "StreamEnded",
    "StreamInput",
    "StreamOpened",
    "StreamReset",
    "StreamState",
    "YamuxConfig",
    "YamuxEvent",
    "YamuxSession",
    "next_session_state",
    "next_stream_state",
]

logger = logging.getLogger(__name__)

YAMUX_PROTOCOL = "/yamux/1.0.0"
"""The multistream-select protocol id of yamux."""
INITIAL_WINDOW = 256 * 1024
"""Per-stream window both sides assume at stream open (fixed by the spec)."""
MIN_SPLIT = 16 * 1024
"""A write is split at the edge of the send window only when at least this much window is left: a smaller
rest waits for the next window update (no silly-window slivers). Safe with any receiver that grants credit
once half its window was read, as the window is at least 256 KiB."""

GO_AWAY_NORMAL = GoAwayCode.NORMAL
GO_AWAY_PROTOCOL_ERROR = GoAwayCode.PROTOCOL_ERROR
GO_AWAY_INTERNAL_ERROR = GoAwayCode.INTERNAL_ERROR

# The per-frame paths use plain-int copies of the codec's members and bound struct methods: reading an
# attribute of an enum class, or or-ing IntFlag members, runs Python code on every use.
_pack = HEADER_STRUCT.pack
_unpack_from = HEADER_STRUCT.unpack_from
_DATA = int(FrameType.DATA)
_WINDOW_UPDATE = int(FrameType.WINDOW_UPDATE)
_SYN = int(Flag.SYN)
_ACK = int(Flag.ACK)
_FIN = int(Flag.FIN)
_RST = int(Flag.RST)
_FIN_OR_RST = _FIN | _RST
_MAX_U32 = MAX_U32

# error kinds (YamuxSession.error_kind): what a peer did to end its session
KIND_PROTOCOL = ProtocolErrorKind.YAMUX
KIND_PING_FLOOD = ProtocolErrorKind.PING_FLOOD
KIND_STREAM_FLOOD = ProtocolErrorKind.STREAM_FLOOD
KIND_RESET_FLOOD = ProtocolErrorKind.RESET_FLOOD
KIND_WINDOW_UPDATE_FLOOD = ProtocolErrorKind.WINDOW_UPDATE_FLOOD


@dataclass(frozen=True)
class YamuxConfig:
    """Limits of one yamux session."""

    initial_window: int = INITIAL_WINDOW
    """Per-stream receive window we grant; at least the spec's 256 KiB (the excess is sent with SYN/ACK)."""
    max_streams: int = 1024
    """Open streams per direction: extra inbound SYNs are answered with RST, extra opens raise."""
    max_window: int = 16 * 1024 * 1024
    """A stream's receive window grows up to this while its reader keeps up with a fast sender
    (``initial_window``: no growth)."""
    window_growth_time: float = 0.010
    """A window doubles when half of it was read within this many seconds (or four round trips): 128 KiB
    in 10 ms is 12.8 MB/s, far above a chat's tokens, and a loaded event loop's round trip."""
    max_frame_data: int = 256 * 1024
    """Largest data payload we put in one frame."""
    max_receive_frame: int = 16 * 1024 * 1024
    """A received data frame announcing a longer payload is a protocol error."""
    max_buffered: int = 64 * 1024 * 1024
    """Received bytes held for the application on all streams of the session (read by nobody yet);
    data that would go past it resets its stream (:class:`StreamDropped`). At least ``initial_window``."""
    max_queued_replies: int = 4096
    """Frames queued in answer to the remote (pongs, stream ACKs, refusal RSTs) that
    :meth:`YamuxSession.data_to_send` has not taken yet: past this the remote sends faster than it
    reads, and the session fails (``ping_flood`` or ``stream_flood``)."""
    max_early_resets: int = 256
    """Inbound streams the remote may reset before we sent anything on them, net of streams that
    ended normally (each one takes one off); past this the session fails (``reset_flood``)."""
    max_empty_frames: int = 1024
    """Frames that carry nothing (window updates without credit or flags, or for streams not open;
    empty data frames without flags) between two reads of real data; past this the session fails
    (``window_update_flood``)."""

    def __post_init__(self) -> None:
        if not INITIAL_WINDOW <= self.initial_window <= _MAX_U32:
            raise LocalError(f"initial_window must be between {INITIAL_WINDOW} and {_MAX_U32}")
        if not self.initial_window <= self.max_window <= _MAX_U32:
            raise LocalError(f"max_window must be between initial_window and {_MAX_U32}")
        if self.window_growth_time < 0:
            raise LocalError("window_growth_time must be >= 0")
        if self.max_streams < 0:
            raise LocalError("max_streams must be >= 0")
        if not 1 <= self.max_frame_data <= _MAX_U32:
            raise LocalError(f"max_frame_data must be between 1 and {_MAX_U32}")
        if self.max_receive_frame < 0:
            raise LocalError("max_receive_frame must be >= 0")
        if self.max_buffered < self.initial_window:
            raise LocalError("max_buffered must be at least initial_window")
        for name in ("max_queued_replies", "max_early_resets", "max_empty_frames"):
            if getattr(self, name) < 1:
                raise LocalError(f"{name} must be >= 1")


_DEFAULT_CONFIG = YamuxConfig()


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The remote opened stream ``stream_id`` (its ACK is already queued)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamAcked:
    """The remote acknowledged a stream we opened."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Payload bytes for ``stream_id``; hand :meth:`YamuxSession.consumed` their count once read."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The remote half-closed ``stream_id`` (FIN): no more data comes; we may still send."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The remote reset ``stream_id`` (RST); the session has forgotten it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamDropped:
    """We reset ``stream_id`` ourselves (RST queued, stream forgotten) because of a limit: ``reason``."""

    stream_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class SendWindowUpdated:
    """Our send window for ``stream_id`` grew; writers blocked on it may proceed."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The answer to a ping we sent with ``opaque``."""

    opaque: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The remote will accept no new streams (``code``: 0 normal, 1 protocol error, 2 internal)."""

    code: int


YamuxEvent = (
    StreamOpened
    | StreamAcked
    | DataReceived
    | StreamEnded
    | StreamReset
    | StreamDropped
    | SendWindowUpdated
    | PongReceived
    | GoAwayReceived
)


# --- session ------------------------------------------------------------------------------------


class StreamState(Enum):
    """Where one stream is (the states of hashicorp/yamux's ``stream.go``), and which way data may flow.

    There is no SYN_RECEIVED: an inbound stream is ACKed as its SYN is read, so it starts ESTABLISHED. An
    outbound stream keeps waiting for the ACK (and says so with :class:`StreamAcked` when it comes) even
    after a FIN either way, hence the two ``SYN_SENT_*`` states. CLOSED and RESET are end states: the
    session has forgotten the stream.
    """

    #                         name                      we send, they send
    SYN_SENT =               ("syn_sent",               True,    True)  # fmt: skip
    """We opened it (SYN); no ACK yet."""
    SYN_SENT_LOCAL_CLOSED =  ("syn_sent_local_closed",  False,   True)  # fmt: skip
    """We opened it and sent FIN before the ACK came."""
    SYN_SENT_REMOTE_CLOSED = ("syn_sent_remote_closed", True,    False)  # fmt: skip
    """We opened it; the remote sent FIN before (or without) its ACK."""
    ESTABLISHED =            ("established",            True,    True)  # fmt: skip
    """Both directions are open."""
    LOCAL_CLOSED =           ("local_closed",           False,   True)  # fmt: skip
    """We sent FIN: we send no more, the remote still may."""
    REMOTE_CLOSED =          ("remote_closed",          True,    False)  # fmt: skip
    """The remote sent FIN: it sends no more, we still may."""
    CLOSED =                 ("closed",                 False,   False)  # fmt: skip
    """Both sides sent FIN (end state)."""
    RESET =                  ("reset",                  False,   False)  # fmt: skip
    """Either side sent RST, or we dropped it for a limit (end state)."""

    def __init__(self, label: str, sending: bool, receiving: bool) -> None:
        # plain attributes, not properties nor set lookups: the per-frame paths read them
        self.sending = sending  # we may still send data (we sent no FIN)
        self.receiving = receiving  # the remote may still send data (it sent no FIN)
        self.ended = not sending and not receiving  # an end state: the stream is forgotten
        self.next: dict[StreamInput, StreamState] = {}  # this state's row of STREAM_TRANSITIONS

    __hash__ = object.__hash__  # members are singletons: hash by identity, in C (Enum's own is Python)


class StreamInput(Enum):
    """What moves a stream from one :class:`StreamState` to the next."""

    __hash__ = object.__hash__  # identity hash, in C: looked up per transition

    ACK_RECEIVED = "ack_received"
    FIN_SENT = "fin_sent"
    FIN_RECEIVED = "fin_received"
    RST_SENT = "rst_sent"
    """We reset it (:meth:`YamuxSession.reset_stream`) or dropped it for a limit."""
    RST_RECEIVED = "rst_received"


_S = StreamState
_I = StreamInput
_LIVE = [state for state in StreamState if not state.ended]
STREAM_TRANSITIONS: dict[tuple[StreamState, StreamInput], StreamState] = {
    # state                         input              -> next state
    (_S.SYN_SENT,                  _I.ACK_RECEIVED):  _S.ESTABLISHED,
    (_S.SYN_SENT,                  _I.FIN_SENT):      _S.SYN_SENT_LOCAL_CLOSED,
    (_S.SYN_SENT,                  _I.FIN_RECEIVED):  _S.SYN_SENT_REMOTE_CLOSED,
    (_S.SYN_SENT_LOCAL_CLOSED,     _I.ACK_RECEIVED):  _S.LOCAL_CLOSED,
    (_S.SYN_SENT_LOCAL_CLOSED,     _I.FIN_RECEIVED):  _S.CLOSED,
    (_S.SYN_SENT_REMOTE_CLOSED,    _I.ACK_RECEIVED):  _S.REMOTE_CLOSED,
    (_S.SYN_SENT_REMOTE_CLOSED,    _I.FIN_SENT):      _S.CLOSED,
    (_S.ESTABLISHED,               _I.FIN_SENT):      _S.LOCAL_CLOSED,
    (_S.ESTABLISHED,               _I.FIN_RECEIVED):  _S.REMOTE_CLOSED,
    (_S.LOCAL_CLOSED,              _I.FIN_RECEIVED):  _S.CLOSED,
    (_S.REMOTE_CLOSED,             _I.FIN_SENT):      _S.CLOSED,
    **{(state, rst): _S.RESET for state in _LIVE for rst in (_I.RST_SENT, _I.RST_RECEIVED)},
}  # fmt: skip
"""The stream state machine. A pair not in it leaves the state as it is: a repeated FIN either way, an ACK
on a stream already acknowledged (or inbound), anything in an end state (the stream is forgotten)."""

_ESTABLISHED = _S.ESTABLISHED
_CLOSED = _S.CLOSED
for _state in StreamState:  # each state's row of the table, looked up per transition without a tuple key
    _state.next = {event: new for (state, event), new in STREAM_TRANSITIONS.items() if state is _state}


def next_stream_state(state: StreamState, event: StreamInput) -> StreamState | None:
    """The state ``event`` moves a stream in ``state`` to, or None when it changes nothing."""
    return state.next.get(event)


class SessionState(Enum):
    """Where a session is."""

    __hash__ = object.__hash__  # identity hash, in C: looked up per transition

    OPEN = "open"
    """Streams may be opened either way."""
    GO_AWAY_SENT = "go_away_sent"
    """We sent GoAway: inbound SYNs are refused; existing streams go on."""
    GO_AWAY_RECEIVED = "go_away_received"
    """The remote sent GoAway: we open no more streams; existing ones go on."""
    DRAINING = "draining"
    """Both sides sent GoAway: no new streams either way; existing ones go on."""
    FAILED = "failed"
    """A protocol violation or a flood ended it (GoAway(protocol error) queued; end state)."""


class SessionInput(Enum):
    """What moves a session from one :class:`SessionState` to the next."""

    __hash__ = object.__hash__  # identity hash, in C: looked up per transition

    GO_AWAY_SENT = "go_away_sent"
    GO_AWAY_RECEIVED = "go_away_received"
    FAILURE = "failure"


_SS = SessionState
_SI = SessionInput
SESSION_TRANSITIONS: dict[tuple[SessionState, SessionInput], SessionState] = {
    # state                  input                 -> next state
    (_SS.OPEN,             _SI.GO_AWAY_SENT):      _SS.GO_AWAY_SENT,
    (_SS.OPEN,             _SI.GO_AWAY_RECEIVED):  _SS.GO_AWAY_RECEIVED,
    (_SS.GO_AWAY_SENT,     _SI.GO_AWAY_RECEIVED):  _SS.DRAINING,
    (_SS.GO_AWAY_RECEIVED, _SI.GO_AWAY_SENT):      _SS.DRAINING,
    **{(state, _SI.FAILURE): _SS.FAILED for state in _SS if state is not _SS.FAILED},
}  # fmt: skip
"""The session state machine. A pair not in it changes nothing: a second GoAway either way, anything
once FAILED."""

_OPEN = _SS.OPEN
_FAILED = _SS.FAILED
_REFUSING = frozenset({_SS.GO_AWAY_SENT, _SS.DRAINING, _SS.FAILED})
"""States in which inbound SYNs are refused."""


def next_session_state(state: SessionState, event: SessionInput) -> SessionState | None:
    """The state ``event`` moves a session in ``state`` to, or None when it changes nothing."""
    return SESSION_TRANSITIONS.get((state, event))


class _Stream:
    """Per-stream bookkeeping (no data: the glue buffers it)."""

    __slots__ = (
        "debug",
        "epoch",
        "frames_sent",
        "outbound",
        "recv_window",
        "send_window",
        "sid",
        "state",
        "unacked",
        "window",
    )

    def __init__(self, sid: int, outbound: bool, recv_window: int) -> None:
        self.sid = sid
        self.outbound = outbound
        self.state = _S.SYN_SENT if outbound else _ESTABLISHED  # inbound: ACKed as its SYN is read
        self.send_window = INITIAL_WINDOW  # what the remote lets us send
        self.window = recv_window  # our grant: received + unread + remote's credit stay within it
        self.recv_window = recv_window  # what the remote may still send us
        self.epoch: float | None = None  # when the current window period began (first read, last update)
        self.unacked = 0  # consumed bytes not yet returned to the remote in a window update
        self.frames_sent = 0  # data frames we sent on it
        self.debug = logger.isEnabledFor(logging.DEBUG)  # asked once: a stream sees several transitions

    def _set_state(self, new: StreamState) -> None:
        if self.debug:
            logger.debug("yamux stream %d: %s -> %s", self.sid, self.state.name, new.name)
        self.state = new

    def handle(self, event: StreamInput) -> StreamState | None:
        """Apply ``event``; return the new state, or None when it changes nothing."""
        new = self.state.next.get(event)  # next_stream_state, inline: a stream sees several per life
        if new is not None:
            self._set_state(new)
        return new


class YamuxSession:
    """One yamux session over an ordered, reliable byte stream (sans-IO)."""

    def __init__(self, *, is_client: bool, config: YamuxConfig = _DEFAULT_CONFIG) -> None:
        self._is_client = is_client
        self._config = config
        self._initial_window = config.initial_window
        self._window_extra = config.initial_window - INITIAL_WINDOW
        self._max_window = config.max_window
        self._growth_time = config.window_growth_time
        self.rtt = 0.0
        """Round-trip time of the connection in seconds, 0 while unknown; the glue sets it from pings."""
        self._max_frame_data = config.max_frame_data
        self._max_receive_frame = config.max_receive_frame
        self._max_streams = config.max_streams
        self._max_buffered = config.max_buffered
        self._max_replies = config.max_queued_replies
        self._max_early_resets = config.max_early_resets
        self._max_empty = config.max_empty_frames
        self._remote_parity = 0 if is_client else 1
        self._next_id = 1 if is_client else 2
        self._streams: dict[int, _Stream] = {}
        self._inbound = 0
        self._outbound = 0
        # ids the remote reset, so send_data can say StreamResetError; cleared by close/reset, capped.
        self._remote_resets: dict[int, None] = {}
        # streams forgotten after we sent data frames on them, by id: window updates with credit the remote
        # may still send for them (one per frame at most), not counted as empty frames; capped like the above.
        self._late_credit: dict[int, int] = {}
        self._out: list[bytes | memoryview] = []
        self._pings: set[int] = set()
        self._next_ping = 0
        self._state = _OPEN
        self._local_go_away: int | None = None  # the codes of the GoAways sent and received
        self._remote_go_away: int | None = None
        self._error: str | None = None  # why it FAILED
        self._error_kind: ProtocolErrorKind | None = None
        self._buffered = 0  # received bytes not yet consumed, all streams
        self._granted = 0  # sum of the windows of open streams
        self._replies = 0  # frames queued in answer to the remote since the last data_to_send
        self._early_resets = 0
        self._empty_frames = 0
        self.pings_answered = 0
        """Pings of the remote answered so far."""
        self.streams_refused = 0
        """Inbound streams refused with RST (over ``max_streams``, or after our GoAway)."""
        # parser state: a partial header, or the rest of a data frame's payload
        self._hdr = bytearray()
        self._rx_remaining = 0
        self._rx_stream: _Stream | None = None
        self._rx_flags = 0

    # --- properties -----------------------------------------------------------------------------

    @property
    def is_client(self) -> bool:
        """True for the dialer side (odd stream ids)."""
        return self._is_client

    @property
    def config(self) -> YamuxConfig:
        """The limits this session was created with."""
        return self._config

    @property
    def state(self) -> SessionState:
        """Where the session is: open, after a GoAway either way, or failed."""
        return self._state

    @property
    def is_closed(self) -> bool:
        """True once a protocol error killed the session (a GoAway is queued)."""
        return self._state is _FAILED

    @property
    def error(self) -> str | None:
        """Why the session died, if it did."""
        return self._error

    @property
    def error_kind(self) -> ProtocolErrorKind | None:
        """What killed the session, as a short name: ``yamux`` (a protocol violation), ``ping_flood``,
        ``stream_flood``, ``reset_flood`` or ``window_update_flood``; None while it is alive."""
        return self._error_kind

    @property
    def buffered(self) -> int:
        """Received bytes not yet consumed, on all streams (see ``YamuxConfig.max_buffered``)."""
        return self._buffered

    @property
    def go_away_received(self) -> int | None:
        """The remote's GoAway code, or None."""
        return self._remote_go_away

    @property
    def go_away_sent(self) -> int | None:
        """The code of the GoAway we sent, or None."""
        return self._local_go_away

    @property
    def stream_count(self) -> int:
        """Streams not yet forgotten (either side still open, no RST)."""
        return len(self._streams)

    def has_stream(self, stream_id: int) -> bool:
        """True while ``stream_id`` is tracked."""
        return stream_id in self._streams

    def stream_state(self, stream_id: int) -> StreamState | None:
        """Where ``stream_id`` is, or None once forgotten (after CLOSED or RESET) or never seen."""
        stream = self._streams.get(stream_id)
        return None if stream is None else stream.state

    # --- output ---------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued since the last call, as one bytes object (``b""`` if nothing)."""
        out = self.frames_to_send()
        if len(out) == 1 and isinstance(out[0], bytes):
            return out[0]
        return b"".join(out)

    def frames_to_send(self) -> list[bytes | memoryview]:
        """Like :meth:`data_to_send`, as the queued pieces (headers and payloads) in order, not joined."""
        out = self._out
        if out:
            self._out = []
            self._replies = 0
        return out

    # --- local API ------------------------------------------------------------------------------

    def open_stream(self) -> int:
        """Open an outbound stream (queues a window update with SYN) and return its id."""
        state = self._state
        if state is not _OPEN:
            if state is _FAILED:
                raise ConnectionClosedError(f"yamux session failed: {self._error}")
            if state is not SessionState.GO_AWAY_SENT:
                raise ConnectionClosedError("remote sent GoAway; no new streams")
            raise ConnectionClosedError("we sent GoAway; no new streams")
        if self._outbound >= self._max_streams:
            raise LimitExceededError(f"at most {self._max_streams} outbound yamux streams")
        sid = self._next_id
        if sid > _MAX_U32:
            raise LimitExceededError("yamux stream ids exhausted")
        self._next_id = sid + 2
        self._streams[sid] = _Stream(sid, True, self._initial_window)
        self._granted += self._initial_window
        self._outbound += 1
        self._out.append(frames.window_update(sid, self._window_extra, _SYN))
        return sid

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue as much of ``data`` as the send window allows; return the number of bytes taken.

        When ``data`` does not fit, a rest of window below :data:`MIN_SPLIT` takes nothing (0): the caller
        waits for a window update instead of sending a sliver (a receiver that returns credit as it reads
        each frame, like js-libp2p's yamux, would otherwise get every message in ever smaller pieces).
        ``bytes`` are queued without copying; other buffers are copied, so the caller may reuse them.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._state is _FAILED:
                raise StreamClosedError(f"yamux session failed: {self._error}")
            if stream_id in self._remote_resets:
                raise StreamResetError(f"yamux stream {stream_id} was reset by the remote")
            raise StreamClosedError(f"yamux stream {stream_id} is not open")
        if not stream.state.sending:
            raise StreamClosedError(f"yamux stream {stream_id} is closed for writing")
        if self._state is _FAILED:
            raise StreamClosedError(f"yamux session failed: {self._error}")
        size = len(data) if type(data) is not memoryview else data.nbytes
        window = stream.send_window
        n = size if size <= window else window if window >= MIN_SPLIT else 0
        if n <= 0:
            return 0
        stream.send_window = window - n
        max_frame = self._max_frame_data
        out = self._out
        if n == size and n <= max_frame and isinstance(data, bytes):
            out.append(_pack(0, _DATA, 0, stream_id, n))
            out.append(data)
            stream.frames_sent += 1
            return n
        immutable = isinstance(data, bytes)
        view = memoryview(data).cast("B")
        pos = 0
        while pos < n:
            chunk = n - pos
            if chunk > max_frame:
                chunk = max_frame
            out.append(_pack(0, _DATA, 0, stream_id, chunk))
            piece = view[pos : pos + chunk]
            out.append(piece if immutable else piece.tobytes())
            pos += chunk
            stream.frames_sent += 1
        return n

    def send_window(self, stream_id: int) -> int:
        """Bytes we may still send on ``stream_id`` (0 for unknown or write-closed streams)."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.state.sending:
            return 0
        return stream.send_window

    def close_stream(self, stream_id: int) -> None:
        """Half-close our side of ``stream_id`` (FIN); idempotent, no-op for unknown streams."""
        self._remote_resets.pop(stream_id, None)
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        new = stream.handle(StreamInput.FIN_SENT)
        if new is None:  # FIN already sent
            return
        if self._state is not _FAILED:
            self._out.append(frames.window_update(stream_id, 0, _FIN))
        if new is _CLOSED:
            self._ended(stream)

    def reset_stream(self, stream_id: int) -> None:
        """Reset ``stream_id`` (RST) and forget it; no-op for unknown streams."""
        self._remote_resets.pop(stream_id, None)
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.handle(StreamInput.RST_SENT)
        if self._state is not _FAILED:
            self._out.append(frames.window_update(stream_id, 0, _RST))
        self._forget(stream)

    def consumed(self, stream_id: int, n: int, now: float | None = None) -> bool:
        """The application read ``n`` received bytes of ``stream_id``; grant them back in batches.

        A window update goes out once half the window has been consumed; ``now`` (seconds, any
        monotonic clock) lets the window grow (module docstring), None keeps it fixed. No-op for
        unknown streams; after the remote's FIN (it sends no more data) only the buffered count goes down.
        Returns True when a window update was queued: send it now, not once the reader has drained what
        it holds, or the remote's writer idles while we read (W3 ran at half speed that way).
        """
        stream = self._streams.get(stream_id)
        if stream is None or n <= 0:
            return False
        window = stream.window
        held = window - stream.recv_window - stream.unacked
        if n > held:  # never grant more than was received
            n = held
        self._buffered -= n
        self._empty_frames = 0  # the remote sends real data
        unacked = stream.unacked + n
        if not stream.state.receiving:
            stream.unacked = unacked
            return False
        epoch = stream.epoch
        if epoch is None and now is not None:
            stream.epoch = epoch = now
        if unacked < window >> 1 or self._state is _FAILED:
            stream.unacked = unacked
            return False
        grant = unacked
        if epoch is not None and now is not None:
            if window < self._max_window and now - epoch < max(self._growth_time, 4 * self.rtt):
                grow = min(window, self._max_window - window, self._max_buffered - self._granted)
                if grow > 0:
                    stream.window = window + grow
                    self._granted += grow
                    grant += grow
            stream.epoch = now
        stream.recv_window += grant
        stream.unacked = 0
        self._out.append(_pack(0, _WINDOW_UPDATE, 0, stream_id, grant))
        return True

    def ping(self) -> int:
        """Queue a ping and return its opaque value (the matching :class:`PongReceived` carries it)."""
        if self._state is _FAILED:
            raise ConnectionClosedError(f"yamux session failed: {self._error}")
        opaque = self._next_ping
        self._next_ping = (opaque + 1) & _MAX_U32
        self._pings.add(opaque)
        self._out.append(frames.ping(opaque))
        return opaque

    def go_away(self, code: int = GO_AWAY_NORMAL) -> None:
        """Queue a GoAway: we accept no new inbound streams, existing ones go on. Idempotent."""
        new = next_session_state(self._state, SessionInput.GO_AWAY_SENT)
        if new is None:  # sent already, or failed
            return
        if not 0 <= code <= _MAX_U32:
            raise LocalError("GoAway code must fit in 32 bits")
        self._set_state(new)
        self._local_go_away = code
        self._out.append(frames.go_away(code))

    # --- input ----------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[YamuxEvent]:
        """Parse every complete frame in ``data`` (plus buffered bytes) and return the events.

        Raises YamuxError on a protocol violation; a GoAway(protocol error) is then queued and the
        session is dead (every later call raises YamuxError too).
        """
        if self._state is _FAILED:
            raise YamuxError(f"yamux session already failed: {self._error}")
        if type(data) is not bytes:
            data = bytes(data)
        events: list[YamuxEvent] = []
        end = len(data)
        pos = 0
        hdr = self._hdr
        if hdr:
            pos = HEADER_LEN - len(hdr)
            hdr += data[:pos]
            if len(hdr) < HEADER_LEN:
                return events
            version, ftype, flags, sid, length = _unpack_from(hdr, 0)
            hdr.clear()
            self._on_header(version, ftype, flags, sid, length, events)
        streams = self._streams
        max_buffered = self._max_buffered
        while True:
            remaining = self._rx_remaining
            if remaining:
                # rest of a data frame's payload
                n = end - pos
                if n <= 0:
                    break
                if n > remaining:
                    n = remaining
                stream = self._rx_stream
                if stream is not None:
                    if stream.state.ended:  # reset locally while its frame was arriving
                        self._rx_stream = stream = None
                    else:
                        events.append(DataReceived(stream.sid, data[pos : pos + n]))
                pos += n
                remaining -= n
                self._rx_remaining = remaining
                if not remaining and stream is not None:
                    self._rx_stream = None
                    if self._rx_flags & _FIN_OR_RST:
                        self._end_flags(stream, self._rx_flags, events)
                continue
            if end - pos < HEADER_LEN:
                if pos < end:
                    hdr += data[pos:]
                break
            version, ftype, flags, sid, length = _unpack_from(data, pos)
            pos += HEADER_LEN
            if ftype == _DATA and not flags and not version:
                # hot path: plain data on a known stream, payload complete in this chunk
                stream = streams.get(sid)
                if (
                    stream is not None
                    and length
                    and length <= stream.recv_window
                    and stream.state.receiving
                    and length <= self._max_receive_frame
                    and end - pos >= length
                    and self._buffered + length <= max_buffered
                ):
                    stream.recv_window -= length
                    self._buffered += length
                    events.append(DataReceived(sid, data[pos : pos + length]))
                    pos += length
                    continue
            self._on_header(version, ftype, flags, sid, length, events)
        return events

    # --- internals ------------------------------------------------------------------------------

    def _set_state(self, new: SessionState) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            role = "client" if self._is_client else "server"
            logger.debug("yamux %s session: %s -> %s", role, self._state.name, new.name)
        self._state = new

    def _fail(self, reason: str, kind: ProtocolErrorKind = KIND_PROTOCOL) -> YamuxError:
        """Kill the session: queue GoAway(protocol error) and return the error to raise.

        A flood (any ``kind`` but a plain violation) also drops the replies queued for it.
        """
        new = next_session_state(self._state, SessionInput.FAILURE)
        if new is not None:
            self._set_state(new)
        self._error = reason
        self._error_kind = kind
        if kind != KIND_PROTOCOL:
            self._out.clear()
        self._out.append(frames.go_away(GoAwayCode.PROTOCOL_ERROR))
        self._local_go_away = GoAwayCode.PROTOCOL_ERROR
        self._hdr.clear()
        self._rx_remaining = 0
        self._rx_stream = None
        return YamuxError(reason)

    def _forget(self, stream: _Stream) -> None:
        """Drop a stream that reached an end state (CLOSED or RESET)."""
        self._buffered -= stream.window - stream.recv_window - stream.unacked
        self._granted -= stream.window
        del self._streams[stream.sid]
        if stream.frames_sent:
            late = self._late_credit
            late[stream.sid] = stream.frames_sent
            if len(late) > 2 * self._max_streams + 16:
                del late[next(iter(late))]
        if stream.outbound:
            self._outbound -= 1
        else:
            self._inbound -= 1

    def _ended(self, stream: _Stream) -> None:
        """Forget a stream both sides closed normally; it takes one off the early-reset count."""
        if self._early_resets:
            self._early_resets -= 1
        self._forget(stream)

    def _reply(self, frame: bytes, kind: ProtocolErrorKind) -> None:
        """Queue a frame answering the remote; fail with ``kind`` when the remote does not read them."""
        self._out.append(frame)
        self._replies += 1
        if self._replies > self._max_replies:
            raise self._fail(f"{self._replies} replies queued for a peer that does not read them", kind)

    def _on_header(
        self, version: int, ftype: int, flags: int, sid: int, length: int, events: list[YamuxEvent]
    ) -> None:
        """Handle one frame header (data payload, if any, is consumed by the caller)."""
        if version != VERSION:
            raise self._fail(f"unsupported yamux version {version}")
        handler = _FRAME_HANDLERS.get(ftype)
        if handler is None:
            raise self._fail(f"unknown yamux frame type {ftype}")
        handler(self, flags, sid, length, events)

    # frame handlers (the table _FRAME_HANDLERS below): one per frame type, after the version check

    def _on_data(self, flags: int, sid: int, length: int, events: list[YamuxEvent]) -> None:
        if length > self._max_receive_frame:
            raise self._fail(f"data frame of {length} bytes exceeds {self._max_receive_frame}")
        stream = self._stream_for(flags, sid, events)
        if stream is None:
            self._rx_remaining = length  # skip the payload of an ignored frame
            self._rx_stream = None
            return
        if length:
            if not stream.state.receiving:
                raise self._fail(f"data on stream {sid} after its FIN")
            if length > stream.recv_window:
                raise self._fail(
                    f"data frame of {length} bytes overruns stream {sid} window {stream.recv_window}"
                )
            if self._buffered + length > self._max_buffered:
                self._drop(stream, f"{self._max_buffered} bytes buffered on the connection", events)
                self._rx_remaining = length
                self._rx_stream = None
                return
            stream.recv_window -= length
            self._buffered += length
            self._rx_remaining = length
            self._rx_stream = stream
            self._rx_flags = flags
        elif flags & _FIN_OR_RST:
            self._end_flags(stream, flags, events)
        elif not flags:
            self._empty("empty data frame on stream", sid)

    def _on_window_update(self, flags: int, sid: int, length: int, events: list[YamuxEvent]) -> None:
        stream = self._stream_for(flags, sid, events)
        if stream is not None:
            if length:
                window = stream.send_window + length
                if window > _MAX_U32:
                    raise self._fail(
                        f"window updates grew stream {sid}'s send window past {_MAX_U32}",
                        KIND_WINDOW_UPDATE_FLOOD,
                    )
                stream.send_window = window
                if not flags & _SYN:
                    events.append(SendWindowUpdated(sid))
            elif not flags:
                self._empty("window update without credit on stream", sid)
            if flags & _FIN_OR_RST:
                self._end_flags(stream, flags, events)
        elif not flags:
            late = self._late_credit.get(sid) if length else None
            if late:  # credit for frames we sent before the stream ended: late, not empty
                if late > 1:
                    self._late_credit[sid] = late - 1
                else:
                    del self._late_credit[sid]
            else:
                self._empty("window update for a stream not open,", sid)

    def _on_ping(self, flags: int, sid: int, length: int, events: list[YamuxEvent]) -> None:
        if sid != 0:
            raise self._fail(f"ping on stream {sid}")
        if flags & _SYN:
            self.pings_answered += 1
            self._reply(frames.pong(length), KIND_PING_FLOOD)
        elif flags & _ACK:
            if length in self._pings:
                self._pings.discard(length)
                events.append(PongReceived(length))
        else:
            raise self._fail("ping without SYN or ACK")

    def _on_go_away(self, flags: int, sid: int, length: int, events: list[YamuxEvent]) -> None:
        if sid != 0:
            raise self._fail(f"GoAway on stream {sid}")
        new = next_session_state(self._state, SessionInput.GO_AWAY_RECEIVED)
        if new is not None:  # else a repeated GoAway
            self._set_state(new)
            self._remote_go_away = length
            events.append(GoAwayReceived(length))

    def _stream_for(self, flags: int, sid: int, events: list[YamuxEvent]) -> _Stream | None:
        """Apply SYN/ACK of a data or window-update frame; return the live stream or None (ignore)."""
        if sid == 0:
            raise self._fail("data or window update on stream 0")
        stream = self._streams.get(sid)
        if flags & _SYN:
            if sid & 1 != self._remote_parity:
                raise self._fail(f"SYN for stream {sid} with our parity")
            if stream is not None:
                raise self._fail(f"SYN for stream {sid} which is already open")
            if self._state in _REFUSING or self._inbound >= self._max_streams:
                logger.info(
                    "refusing inbound yamux stream %d (%s)",
                    sid,
                    "GoAway sent" if self._state in _REFUSING else "max_streams reached",
                )
                self.streams_refused += 1
                self._reply(frames.window_update(sid, 0, _RST), KIND_STREAM_FLOOD)
                return None
            stream = _Stream(sid, False, self._initial_window)
            self._streams[sid] = stream
            self._granted += self._initial_window
            self._inbound += 1
            self._remote_resets.pop(sid, None)
            self._late_credit.pop(sid, None)
            self._reply(frames.window_update(sid, self._window_extra, _ACK), KIND_STREAM_FLOOD)
            events.append(StreamOpened(sid))
            return stream
        if stream is None:
            return None  # closed or reset here: frames racing with our RST/FIN are dropped
        if flags & _ACK and stream.handle(StreamInput.ACK_RECEIVED) is not None:
            events.append(StreamAcked(sid))
        return stream

    def _end_flags(self, stream: _Stream, flags: int, events: list[YamuxEvent]) -> None:
        """Apply FIN/RST once a frame (and its payload) is complete."""
        if stream.state.ended:  # reset locally while its frame was arriving
            return
        sid = stream.sid
        if flags & _RST:
            # an inbound stream we sent nothing on (no data, no FIN)
            if not stream.outbound and not stream.frames_sent and stream.state.sending:
                self._early_resets += 1
                if self._early_resets > self._max_early_resets:
                    raise self._fail(
                        f"{self._early_resets} streams reset by the remote before we answered them",
                        KIND_RESET_FLOOD,
                    )
            stream.handle(StreamInput.RST_RECEIVED)
            self._forget(stream)
            resets = self._remote_resets
            resets[sid] = None
            if len(resets) > 2 * self._max_streams + 16:
                del resets[next(iter(resets))]
            events.append(StreamReset(sid))
        else:
            new = stream.handle(StreamInput.FIN_RECEIVED)
            if new is not None:  # else a repeated FIN, harmless
                events.append(StreamEnded(sid))
                if new is _CLOSED:
                    self._ended(stream)

    def _empty(self, what: str, sid: int) -> None:
        """Count a frame that carries nothing; too many between two reads of real data are a flood."""
        self._empty_frames += 1
        if self._empty_frames > self._max_empty:
            reason = f"{self._empty_frames} frames that carry nothing (last: {what} {sid})"
            raise self._fail(reason, KIND_WINDOW_UPDATE_FLOOD)

    def _drop(self, stream: _Stream, reason: str, events: list[YamuxEvent]) -> None:
        """Reset ``stream`` ourselves because of a limit, and tell the glue why."""
        logger.info("resetting yamux stream %d: %s", stream.sid, reason)
        stream.handle(StreamInput.RST_SENT)
        self._out.append(frames.window_update(stream.sid, 0, _RST))
        self._forget(stream)
        events.append(StreamDropped(stream.sid, reason))


_FrameHandler = Callable[[YamuxSession, int, int, int, list[YamuxEvent]], None]
_FRAME_HANDLERS: dict[int, _FrameHandler] = {
    FrameType.DATA: YamuxSession._on_data,
    FrameType.WINDOW_UPDATE: YamuxSession._on_window_update,
    FrameType.PING: YamuxSession._on_ping,
    FrameType.GO_AWAY: YamuxSession._on_go_away,
}
"""Frame type -> handler, called with the session (a class-level table of plain functions, as aioquic's
frame handlers are a table of bound methods, without a reference cycle per session)."""
