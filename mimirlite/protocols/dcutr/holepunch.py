"""The DCUtR exchange for both roles, sans-IO (libp2p specs ``relay/DCUtR.md``).

Per the spec, the peer that *received* the relayed connection (B) initiates: it opens a
``/libp2p/dcutr`` stream over the relayed connection and drives a :class:`HolePunchInitiator`; the
peer that dialed through the relay (A) answers that stream with a :class:`HolePunchResponder`.

1. B sends CONNECT with its observed addresses and starts measuring the relayed round trip.
2. A answers CONNECT with its own.
3. B sends SYNC and, half a round trip later, dials A's addresses: :class:`DialNow` with ``at = now +
   rtt / 2``.
4. A, on SYNC, dials B's addresses at once: :class:`DialNow` with ``at = now``.

Both dials cross in the NATs (TCP simultaneous open); the shell runs the dial and reports it with
``dial_result``. An attempt that fails (a timeout, a peer breaking the exchange, the dial failing) is
retried by the initiator on a new stream, up to ``max_attempts`` in all (3, as the spec, go-libp2p and
@libp2p/dcutr). Peer input never raises: a violation is a failure event with ``protocol_error`` set
(in the manner of :class:`mimirlite.wire.upgrade.Upgrader`), and a chunk that breaks the exchange
yields that failure alone (no :class:`DialNow` for a broken exchange; after one, the shell drops the
dial it started); misuse raises
:class:`~mimirlite.errors.LocalError`. Messages are framed with a uvarint length, as on the wire.

Addresses are filtered both ways by :func:`dialable_addrs`: only ``/ip4|ip6/<ip>/tcp/<port>[/p2p/<id>]``
(mimirlite dials TCP only), no relay address, no private, loopback, link-local or shared address
(unless the config allows them, for a LAN or a test on loopback), capped at ``limits.max_addrs``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from mimirlite.errors import LocalError, ProtocolError
from mimirlite.protocols.dcutr.messages import (
    DcutrLimits,
    DcutrMessageError,
    HolePunch,
    HolePunchType,
    decode_message,
    encode_message,
)
from mimirlite.wire.lp import LPDecoder
from mimirlite.wire.lp import encode_message as lp_frame
from mimirlite.wire.multiaddr import Code, Multiaddr

__all__ = [
    "AttemptFailed",
    "DialNow",
    "HolePunchConfig",
    "HolePunchEvent",
    "HolePunchFailed",
    "HolePunchInitiator",
    "HolePunchResponder",
    "HolePunchState",
    "HolePunchSucceeded",
    "dialable_addrs",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HolePunchConfig:
    """The exchange's timing and caps."""

    timeout: float = 5.0
    """Seconds for each phase of an attempt: from the start to the exchange's end, and from
    :attr:`DialNow.at` to the dial's result (@libp2p/dcutr's per-attempt ``timeout``, 5 s)."""
    max_attempts: int = 3
    """Attempts in all, each on a new stream (the spec's, go-libp2p's and @libp2p/dcutr's 3)."""
    allow_private: bool = False
    """Also dial and offer private, loopback, link-local and shared addresses (a LAN, a test)."""
    limits: DcutrLimits = field(default_factory=DcutrLimits)
    """Caps on the peer's messages; ``max_addrs`` also caps the addresses offered and dialed."""


# ---- events ----


@dataclass(frozen=True, slots=True)
class DialNow:
    """Dial ``addrs`` directly at time ``at`` (the shell's clock), then report with ``dial_result``."""

    addrs: tuple[Multiaddr, ...]
    at: float
    attempt: int


@dataclass(frozen=True, slots=True)
class HolePunchSucceeded:
    """The direct dial of ``attempt`` worked: the shell moves to it and closes the relayed connection."""

    attempt: int


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """An initiator's attempt failed and another is due: the shell resets this stream, opens a new one
    and calls :meth:`HolePunchInitiator.start_attempt`."""

    attempt: int
    reason: str
    protocol_error: bool = False
    """The peer broke the exchange (count it as ``ProtocolErrorKind.DCUTR``)."""


@dataclass(frozen=True, slots=True)
class HolePunchFailed:
    """The hole punch is over without a direct connection (the last attempt failed)."""

    attempt: int
    reason: str
    protocol_error: bool = False
    """The peer broke the exchange (count it as ``ProtocolErrorKind.DCUTR``)."""


HolePunchEvent = DialNow | HolePunchSucceeded | AttemptFailed | HolePunchFailed


class HolePunchState(enum.Enum):
    """Both roles' states."""

    IDLE = "idle"
    """Initiator: no attempt running (before the first, between two)."""
    CONNECT_SENT = "connect_sent"
    """Initiator: CONNECT sent, waiting for the peer's."""
    AWAIT_CONNECT = "await_connect"
    """Responder: waiting for the initiator's CONNECT."""
    AWAIT_SYNC = "await_sync"
    """Responder: CONNECT answered, waiting for SYNC."""
    DIALING = "dialing"
    """:class:`DialNow` emitted; waiting for ``dial_result``."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def dialable_addrs(
    addrs: Iterable[Multiaddr], *, allow_private: bool = False, limit: int = DcutrLimits().max_addrs
) -> tuple[Multiaddr, ...]:
    """The addresses worth a hole punch, in order, each once, at most ``limit``.

    Kept: ``/ip4|ip6/<ip>/tcp/<port>`` with an optional trailing ``/p2p/<id>``, whose IP is global
    (with ``allow_private``: any but unspecified and multicast). Left out: relay addresses, DNS names,
    other transports (a hole punch needs the IP the NAT mapped, and mimirlite dials TCP only).
    """
    out: list[Multiaddr] = []
    for addr in addrs:
        if len(out) >= limit:
            break
        comps = addr.components
        if not 2 <= len(comps) <= 3 or comps[1][0].code != Code.TCP:
            continue
        if len(comps) == 3 and comps[2][0].code != Code.P2P:
            continue
        ip = addr.ip
        if ip is None or ip.is_unspecified or ip.is_multicast:
            continue
        if not allow_private and not ip.is_global:
            continue
        if addr not in out:
            out.append(addr)
    return tuple(out)


class _Exchange:
    """What both roles share: framing, the queue to send, the state and its timer."""

    _role = "exchange"

    def __init__(self, own_addrs: Iterable[Multiaddr], config: HolePunchConfig) -> None:
        self.config = config
        self.own_addrs = dialable_addrs(
            own_addrs, allow_private=config.allow_private, limit=config.limits.max_addrs
        )
        if not self.own_addrs:
            raise LocalError(f"dcutr: no dialable address of ours to offer for a hole punch ({self._role})")
        self._decoder = LPDecoder(config.limits.max_message_size)
        self._out: list[bytes] = []
        self._state = HolePunchState.IDLE
        self._deadline: float | None = None
        self._peer_addrs: tuple[Multiaddr, ...] = ()
        self._max_attempts = config.max_attempts
        self.attempt = 0
        """The attempt running or last run (1-based)."""
        self.dropped = 0
        """Addresses of the peer's messages the codec left out (malformed, over the caps)."""

    @property
    def state(self) -> HolePunchState:
        return self._state

    @property
    def peer_addrs(self) -> tuple[Multiaddr, ...]:
        """The peer's dialable addresses, once its CONNECT came."""
        return self._peer_addrs

    def data_to_send(self) -> bytes:
        """What to write to the stream now (``b""`` when nothing)."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        """When the running phase times out (None when nothing is running)."""
        return self._deadline

    def _set_state(self, new: HolePunchState) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dcutr %s attempt %d: %s -> %s", self._role, self.attempt, self._state.value, new.value)
        self._state = new

    def _send(self, msg: HolePunch) -> None:
        self._out.append(lp_frame(encode_message(msg)))

    def _messages(self, data: bytes) -> list[HolePunch]:
        """The complete messages ``data`` brings; ProtocolError (DcutrMessageError, a bad prefix, a
        length over the cap) for bytes that are not one."""
        self._decoder.feed(data)
        out: list[HolePunch] = []
        while (body := self._decoder.next_message()) is not None:
            msg, dropped = decode_message(body, self.config.limits)
            self.dropped += dropped
            out.append(msg)
        return out

    def _dialable(self, msg: HolePunch) -> tuple[Multiaddr, ...]:
        addrs = dialable_addrs(
            msg.obs_addrs, allow_private=self.config.allow_private, limit=self.config.limits.max_addrs
        )
        if not addrs:
            raise DcutrMessageError(
                f"dcutr: no dialable address in the peer's CONNECT ({len(msg.obs_addrs)} sent)"
            )
        return addrs

    def _succeed(self) -> list[HolePunchEvent]:
        self._deadline = None
        self._set_state(HolePunchState.SUCCEEDED)
        return [HolePunchSucceeded(self.attempt)]

    def _fail(self, reason: str, protocol_error: bool) -> list[HolePunchEvent]:
        """End the running attempt: retry when attempts are left, else give up."""
        self._deadline = None
        self._out.clear()  # the stream is to be reset; nothing more goes on it
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dcutr %s attempt %d failed: %s", self._role, self.attempt, reason)
        if self.attempt < self._max_attempts:
            self._set_state(HolePunchState.IDLE)
            return [AttemptFailed(self.attempt, reason, protocol_error)]
        self._set_state(HolePunchState.FAILED)
        return [HolePunchFailed(self.attempt, reason, protocol_error)]

    def dial_result(self, ok: bool, now: float) -> list[HolePunchEvent]:
        """The direct dial of :class:`DialNow` worked (``ok``) or failed."""
        if self._state is not HolePunchState.DIALING:
            raise LocalError(f"dcutr: dial_result in state {self._state.value}, not dialing")
        return self._succeed() if ok else self._fail("the direct dial failed", False)

    def handle_timer(self, now: float) -> list[HolePunchEvent]:
        """Time out the running phase once ``now`` reaches :meth:`get_timer`."""
        if self._deadline is None or now < self._deadline:
            return []
        what = (
            "the direct dial" if self._state is HolePunchState.DIALING else f"the peer ({self._state.value})"
        )
        return self._fail(f"timed out waiting for {what}", False)

    def receive_data(self, data: bytes, now: float) -> list[HolePunchEvent]:
        """Feed what the stream delivered; the events it completes."""
        if self._state not in _RUNNING:
            return []  # no attempt running: the shell is closing that stream
        try:
            events: list[HolePunchEvent] = []
            for msg in self._messages(data):
                events.extend(self._on_message(msg, now))
                if self._state not in _RUNNING:
                    break
            return events
        except ProtocolError as exc:
            return self._fail(str(exc), True)

    def _on_message(self, msg: HolePunch, now: float) -> list[HolePunchEvent]:
        raise NotImplementedError


_RUNNING = frozenset(
    {
        HolePunchState.CONNECT_SENT,
        HolePunchState.AWAIT_CONNECT,
        HolePunchState.AWAIT_SYNC,
        HolePunchState.DIALING,
    }
)


class HolePunchInitiator(_Exchange):
    """B, the peer that received the relayed connection: sends CONNECT, measures the round trip, sends
    SYNC and dials half a round trip later; retries on a new stream.

    Drive it: :meth:`start_attempt` on a new ``/libp2p/dcutr`` stream, send :meth:`data_to_send`,
    feed :meth:`receive_data`, honour :meth:`get_timer`; on :class:`AttemptFailed` reset the stream and
    start the next attempt on a new one.
    """

    _role = "initiator"

    def __init__(self, own_addrs: Iterable[Multiaddr], config: HolePunchConfig | None = None) -> None:
        super().__init__(own_addrs, config or HolePunchConfig())
        self._sent_at = 0.0
        self.rtt: float | None = None
        """The last measured round trip over the relay: CONNECT sent to the peer's CONNECT received."""

    def start_attempt(self, now: float) -> None:
        """Begin the next attempt on a new stream: CONNECT is queued."""
        if self._state is not HolePunchState.IDLE:
            raise LocalError(f"dcutr: start_attempt in state {self._state.value}")
        if self.attempt >= self.config.max_attempts:
            raise LocalError(f"dcutr: all {self.config.max_attempts} attempts were made")
        self.attempt += 1
        self._decoder = LPDecoder(self.config.limits.max_message_size)
        self._sent_at = now
        self._deadline = now + self.config.timeout
        self._send(HolePunch(HolePunchType.CONNECT, self.own_addrs))
        self._set_state(HolePunchState.CONNECT_SENT)

    def _on_message(self, msg: HolePunch, now: float) -> list[HolePunchEvent]:
        if self._state is not HolePunchState.CONNECT_SENT:
            raise DcutrMessageError(f"dcutr: {msg.type.name} after the exchange ended")
        if msg.type is not HolePunchType.CONNECT:
            raise DcutrMessageError(f"dcutr: {msg.type.name} where the peer's CONNECT was due")
        self._peer_addrs = self._dialable(msg)
        rtt = self.rtt = max(0.0, now - self._sent_at)
        self._send(HolePunch(HolePunchType.SYNC))
        at = now + rtt / 2
        self._deadline = at + self.config.timeout
        self._set_state(HolePunchState.DIALING)
        return [DialNow(self._peer_addrs, at, self.attempt)]


class HolePunchResponder(_Exchange):
    """A, the peer that dialed through the relay: answers the initiator's CONNECT with its own and dials
    as SYNC arrives. One attempt per stream (the initiator retries on a new one, a new responder).
    """

    _role = "responder"

    def __init__(
        self, own_addrs: Iterable[Multiaddr], now: float, config: HolePunchConfig | None = None
    ) -> None:
        super().__init__(own_addrs, config or HolePunchConfig())
        self.attempt = 1
        self._max_attempts = 1  # the initiator owns the retries
        self._deadline = now + self.config.timeout
        self._set_state(HolePunchState.AWAIT_CONNECT)

    def _on_message(self, msg: HolePunch, now: float) -> list[HolePunchEvent]:
        if self._state is HolePunchState.AWAIT_CONNECT:
            if msg.type is not HolePunchType.CONNECT:
                raise DcutrMessageError(f"dcutr: {msg.type.name} before CONNECT")
            self._peer_addrs = self._dialable(msg)
            self._send(HolePunch(HolePunchType.CONNECT, self.own_addrs))
            self._set_state(HolePunchState.AWAIT_SYNC)
            return []
        if self._state is HolePunchState.AWAIT_SYNC:
            if msg.type is not HolePunchType.SYNC:
                raise DcutrMessageError(f"dcutr: {msg.type.name} where SYNC was due")
            self._deadline = now + self.config.timeout
            self._set_state(HolePunchState.DIALING)
            return [DialNow(self._peer_addrs, now, self.attempt)]
        raise DcutrMessageError(f"dcutr: {msg.type.name} after SYNC")
