"""The connection upgrade, sans-IO: multistream(/noise) -> Noise XX -> multistream(/yamux/1.0.0).

:class:`Upgrader` takes the raw bytes of a fresh duplex byte stream (a TCP socket, or a stream of another
connection) in either role and returns events; what it has to send waits in :meth:`Upgrader.data_to_send`.
Each step the peer owes (a message we answer or act on) must come within ``step_timeout`` of the last
one, and an inbound peer's first byte within ``first_byte_timeout`` when that is shorter; the shell asks
:meth:`~Upgrader.get_timer` for the deadline and calls :meth:`~Upgrader.handle_timer` when it passes.

Events, in order: :class:`StepCompleted` each time the peer completes a step (the deadline restarts),
:class:`PeerAuthenticated` once Noise has verified the remote identity, then :class:`Upgraded` with the
:class:`~mimirlite.wire.noise.NoiseTransport` and the muxer's first plaintext bytes; or
:class:`UpgradeFailed`, after which the upgrader ignores input. The upgrader never raises on peer input.

The shell processes the events of a call before it transmits :meth:`~Upgrader.data_to_send`: a shell
that refuses the peer at :class:`PeerAuthenticated` (its allowlist) drops the events after it and what
waits to be sent (for the initiator, its last Noise message), and closes. Once :class:`Upgraded` is out,
the shell feeds later bytes to the transport; the upgrader is out of the hot path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from mimirlite.errors import HandshakeError, HandshakeTimeoutError, LocalError, MimirliteError
from mimirlite.identity import KeyPair, PeerId
from mimirlite.wire.multistream import MultistreamDialer, MultistreamListener
from mimirlite.wire.noise import NOISE_PROTOCOL, NoiseHandshake, NoiseTransport
from mimirlite.wire.yamux import YAMUX_PROTOCOL

log = logging.getLogger(__name__)


class UpgradeState(Enum):
    """Where an upgrade stands."""

    SECURITY = "security"
    """multistream-select of ``/noise`` on the raw bytes."""
    HANDSHAKE = "handshake"
    """The Noise XX handshake."""
    MUXER = "muxer"
    """multistream-select of ``/yamux/1.0.0`` inside Noise."""
    UPGRADED = "upgraded"
    """Done: the shell talks to the Noise transport."""
    FAILED = "failed"
    """Ended with an error; input is ignored."""


END_STATES = frozenset({UpgradeState.UPGRADED, UpgradeState.FAILED})


@dataclass(frozen=True, slots=True)
class StepCompleted:
    """The peer completed an upgrade step: the next step's deadline starts now."""


@dataclass(frozen=True, slots=True)
class PeerAuthenticated:
    """The Noise handshake verified the remote's identity; the shell's allowlist decides here."""

    peer_id: PeerId


@dataclass(frozen=True, slots=True)
class Upgraded:
    """The upgrade is done. ``leftover`` is plaintext muxer data already decrypted (yamux frames sent
    with the muxer's agreement); later bytes from the peer go to ``transport.receive_data``."""

    peer_id: PeerId
    transport: NoiseTransport
    leftover: bytes


@dataclass(frozen=True, slots=True)
class UpgradeFailed:
    """The upgrade failed: the peer broke a rule (``HandshakeError``, ``MultistreamError``,
    ``PeerIdMismatchError``, ``DecodeError``), refused our protocols (``ProtocolNotSupportedError``),
    closed the connection (``HandshakeError``) or missed a deadline (``HandshakeTimeoutError``)."""

    reason: MimirliteError


UpgradeEvent = StepCompleted | PeerAuthenticated | Upgraded | UpgradeFailed


def _is_noise(protocol: str) -> bool:
    return protocol == NOISE_PROTOCOL


def _is_yamux(protocol: str) -> bool:
    return protocol == YAMUX_PROTOCOL


class Upgrader:
    """One side of a connection upgrade; see the module docstring for the calling convention."""

    def __init__(
        self,
        keypair: KeyPair,
        *,
        initiator: bool,
        now: float,
        expected_peer: PeerId | None = None,
        step_timeout: float,
        first_byte_timeout: float,
    ) -> None:
        """Start the upgrade at time ``now``; the dialer's multistream header and proposal are queued.

        ``expected_peer``: the identity the initiator dialed (another one fails with PeerIdMismatchError).
        """
        self._keypair = keypair
        self.initiator = initiator
        self._expected_peer = expected_peer
        self._step_timeout = step_timeout
        self._first_byte_timeout = first_byte_timeout
        self._step_start = now  # the peer's last progress: the current step's deadline counts from it
        self._heard = False  # the peer has sent something
        self._state = UpgradeState.SECURITY
        self._out: list[bytes] = []
        self._remote_peer: PeerId | None = None
        self._security: MultistreamDialer | MultistreamListener | None
        if initiator:
            self._security = MultistreamDialer([NOISE_PROTOCOL])
        else:
            self._security = MultistreamListener(_is_noise)
        self._handshake: NoiseHandshake | None = None
        self._transport: NoiseTransport | None = None
        self._muxer: MultistreamDialer | MultistreamListener | None = None
        self._queue(self._security.data_to_send())

    def __repr__(self) -> str:
        side = "initiator" if self.initiator else "responder"
        return f"<Upgrader {side} {self._state.name} {self._remote_peer}>"

    @property
    def state(self) -> UpgradeState:
        return self._state

    @property
    def remote_peer(self) -> PeerId | None:
        """The peer Noise authenticated, once it has."""
        return self._remote_peer

    # ---- the calling convention ----

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[UpgradeEvent]:
        """Feed bytes received at time ``now``; the events they cause (UpgradeFailed on any peer error).

        ``data`` is not kept (a view of a reused buffer is fine). Ignored once failed; a LocalError
        once upgraded (later bytes belong to the transport).
        """
        state = self._state
        if state is UpgradeState.UPGRADED:
            raise LocalError("upgrade complete: feed the noise transport instead")
        if state is UpgradeState.FAILED or not data:
            return []
        self._heard = True
        events: list[UpgradeEvent] = []
        try:
            if state is UpgradeState.SECURITY:
                self._security_data(data, now, events)
            elif state is UpgradeState.HANDSHAKE:
                self._handshake_data(data, now, events)
            else:
                assert self._transport is not None
                self._muxer_data(self._transport.receive_data(data), now, events)
        except MimirliteError as exc:
            self._fail(exc, events)
        return events

    def receive_eof(self) -> list[UpgradeEvent]:
        """The peer closed its side: the upgrade fails unless it has ended."""
        if self._state in END_STATES:
            return []
        events: list[UpgradeEvent] = []
        self._fail(HandshakeError("connection closed during the upgrade"), events)
        return events

    def data_to_send(self) -> bytes:
        """The bytes to transmit, queued since the last call.

        After UpgradeFailed, what the steps before the failing one produced (never the failing step's
        answer).
        """
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def prepare(self) -> None:
        """Do now what the next step will need and what sent bytes need not wait for: a responder that
        agreed on Noise makes its handshake (its ephemeral key). The shell calls it after transmitting,
        so the work overlaps the initiator's first message on its way; without it, that message's
        arrival does the work."""
        if self._handshake is None and self._state is UpgradeState.HANDSHAKE:
            self._start_handshake()

    def get_timer(self) -> float | None:
        """When the current step's deadline passes (loop time); None once the upgrade has ended."""
        if self._state in END_STATES:
            return None
        if self._first_byte_pending():
            return self._step_start + self._first_byte_timeout
        return self._step_start + self._step_timeout

    def handle_timer(self, now: float) -> list[UpgradeEvent]:
        """Fail with HandshakeTimeoutError when ``now`` reached the deadline; nothing before it.

        A shell woken by its timer passes ``max(deadline, loop time)`` as aioquic does.
        """
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return []
        events: list[UpgradeEvent] = []
        self._fail(self._missed_deadline(), events)
        return events

    # ---- the steps ----

    def _security_data(
        self, data: bytes | bytearray | memoryview, now: float, events: list[UpgradeEvent]
    ) -> None:
        ms = self._security
        assert ms is not None
        selected = ms.receive_data(data)
        out = ms.data_to_send()
        if out or selected:  # a message answered, or the protocol agreed
            self._progress(now, events)
        self._queue(out)
        if selected:
            self._security = None
            self._set_state(UpgradeState.HANDSHAKE)
            if self.initiator:  # its first message goes with the agreement; a responder's: prepare()
                self._queue(self._start_handshake().data_to_send())
            if selected[0].leftover:
                self._handshake_data(selected[0].leftover, now, events)

    def _start_handshake(self) -> NoiseHandshake:
        hs = self._handshake = NoiseHandshake(
            self._keypair, initiator=self.initiator, expected_peer=self._expected_peer
        )
        return hs

    def _handshake_data(
        self, data: bytes | bytearray | memoryview, now: float, events: list[UpgradeEvent]
    ) -> None:
        hs = self._handshake or self._start_handshake()  # a responder's, unless prepare() made it
        done = hs.receive_data(data)
        if done:
            self._progress(now, events)
            self._authenticated(hs, done[0].remote_peer, now, events)
        elif out := hs.data_to_send():  # the message we waited for came: our next one answers it
            self._progress(now, events)
            self._queue(out)

    def _authenticated(
        self, hs: NoiseHandshake, peer: PeerId, now: float, events: list[UpgradeEvent]
    ) -> None:
        self._remote_peer = peer
        events.append(PeerAuthenticated(peer))
        transport = self._transport = hs.transport()
        last_handshake_message = hs.data_to_send()
        self._handshake = None
        muxer: MultistreamDialer | MultistreamListener
        muxer = MultistreamDialer([YAMUX_PROTOCOL]) if self.initiator else MultistreamListener(_is_yamux)
        self._muxer = muxer
        self._set_state(UpgradeState.MUXER)
        # The initiator's last handshake message and its muxer proposal leave together.
        self._queue(last_handshake_message + transport.encrypt(muxer.data_to_send()))
        self._muxer_data(transport.receive_data(b""), now, events)  # what came with the last message

    def _muxer_data(self, plaintexts: list[bytes], now: float, events: list[UpgradeEvent]) -> None:
        ms, transport = self._muxer, self._transport
        assert ms is not None and transport is not None
        for plaintext in plaintexts:
            ms.receive_data(plaintext)  # after the agreement, plaintexts gather in ms.leftover
        out = ms.data_to_send()
        if out or (plaintexts and ms.selected is not None):
            self._progress(now, events)
        if out:
            self._queue(transport.encrypt(out))
        if ms.selected is not None:
            peer = self._remote_peer
            assert peer is not None
            self._muxer = self._transport = None
            self._set_state(UpgradeState.UPGRADED)
            events.append(Upgraded(peer, transport, ms.leftover))

    # ---- helpers ----

    def _queue(self, data: bytes) -> None:
        if data:
            self._out.append(data)

    def _progress(self, now: float, events: list[UpgradeEvent]) -> None:
        """The peer completed an upgrade step: the next one's deadline starts now."""
        self._step_start = now
        events.append(StepCompleted())

    def _first_byte_pending(self) -> bool:
        return not self.initiator and not self._heard and self._first_byte_timeout < self._step_timeout

    def _missed_deadline(self) -> HandshakeTimeoutError:
        if self._first_byte_pending():
            timeout = self._first_byte_timeout
            return HandshakeTimeoutError(
                "first_byte_timeout", f"nothing received for {timeout:g} s (first_byte_timeout)"
            )
        return HandshakeTimeoutError(
            "handshake_step_timeout",
            f"upgrade step not completed in {self._step_timeout:g} s (handshake_step_timeout)",
        )

    def _fail(self, reason: MimirliteError, events: list[UpgradeEvent]) -> None:
        self._security = self._handshake = self._muxer = self._transport = None
        self._set_state(UpgradeState.FAILED)
        events.append(UpgradeFailed(reason))

    def _set_state(self, state: UpgradeState) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%r: %s -> %s", self, self._state.name, state.name)
        self._state = state
