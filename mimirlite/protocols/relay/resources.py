"""What a circuit relay v2 service gives others (libp2p specs ``relay/circuit-v2.md``), sans-IO: the
reservations it holds and the circuits it carries, each bounded, with time passed in.

The defaults are go-libp2p's (``relay.DefaultResources``): reservations live an hour, 128 in all, 8 per IP
address; 16 circuits per peer; a circuit carries 128 KiB each way for at most 2 minutes. A community relay
for chats lifts the circuit caps (``circuit_data=None``, a longer ``circuit_duration``).
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter
from dataclasses import dataclass

from mimirlite.identity import PeerId
from mimirlite.protocols.relay.messages import Limit, Status

RESERVATION_TTL = 3600.0
"""Seconds a reservation lives unless renewed (go-libp2p's ``ReservationTTL``)."""
CIRCUIT_DURATION = 120.0
"""Seconds a circuit lives (go-libp2p's ``Limit.Duration``)."""
CIRCUIT_DATA = 1 << 17
"""Bytes a circuit carries each way (go-libp2p's ``Limit.Data``, 128 KiB)."""


@dataclass(frozen=True)
class RelayResources:
    """The relay service's limits; every request is a peer's, hence hostile."""

    reservation_ttl: float = RESERVATION_TTL
    """Seconds a reservation lives unless the peer renews it."""
    max_reservations: int = 128
    """Reservations held in all; a new peer's RESERVE beyond it is refused (RESERVATION_REFUSED, as
    go-libp2p answers at its reservation limits)."""
    max_reservations_per_ip: int = 8
    """Reservations from one IP address (IPv6: one /64)."""
    max_circuits_per_peer: int = 16
    """Open circuits one peer is an end of."""
    max_circuits: int = 256
    """Open circuits in all."""
    circuit_duration: float | None = CIRCUIT_DURATION
    """Seconds a circuit lives; None: as long as both ends keep it."""
    circuit_data: int | None = CIRCUIT_DATA
    """Bytes a circuit carries each way; None: no cap."""

    def __post_init__(self) -> None:
        for name in ("max_reservations", "max_reservations_per_ip", "max_circuits_per_peer", "max_circuits"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not self.reservation_ttl > 0:
            raise ValueError("reservation_ttl must be positive")
        if self.circuit_duration is not None and not self.circuit_duration > 0:
            raise ValueError("circuit_duration must be positive or None")
        if self.circuit_data is not None and self.circuit_data < 1:
            raise ValueError("circuit_data must be positive or None")

    @property
    def limit(self) -> Limit:
        """The limit announced with a reservation and a circuit (whole seconds, bytes)."""
        duration = None if self.circuit_duration is None else max(1, int(self.circuit_duration))
        return Limit(duration=duration, data=self.circuit_data)


@dataclass(frozen=True, slots=True)
class Held:
    """One reservation: whose, from which address, until when."""

    peer: PeerId
    ip: str
    expires: float


class Reservations:
    """The reservations a relay holds, bounded in all and per address; expired ones are dropped lazily."""

    def __init__(self, resources: RelayResources) -> None:
        self.resources = resources
        self._held: dict[PeerId, Held] = {}
        self._per_ip: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._held)

    def reserve(self, peer: PeerId, ip: str, now: float) -> Held | Status:
        """Hold (or renew) ``peer``'s reservation from ``ip``; the reservation, or the refusal status."""
        self.expire(now)
        r = self.resources
        old = self._held.get(peer)
        if old is None or old.ip != ip:
            if old is None and len(self._held) >= r.max_reservations:
                return Status.RESERVATION_REFUSED
            if self._per_ip[ip] >= r.max_reservations_per_ip:
                return Status.RESERVATION_REFUSED
        if old is not None:
            self._drop(old)
        held = Held(peer, ip, now + r.reservation_ttl)
        self._held[peer] = held
        self._per_ip[ip] += 1
        return held

    def get(self, peer: PeerId, now: float) -> Held | None:
        """``peer``'s reservation, if it holds one now."""
        held = self._held.get(peer)
        if held is not None and held.expires <= now:
            self._drop(held)
            return None
        return held

    def remove(self, peer: PeerId) -> bool:
        """Drop ``peer``'s reservation (its connection to the relay ended); whether it had one."""
        held = self._held.get(peer)
        if held is None:
            return False
        self._drop(held)
        return True

    def expire(self, now: float) -> int:
        """Drop the reservations past their time; how many."""
        gone = [h for h in self._held.values() if h.expires <= now]
        for held in gone:
            self._drop(held)
        return len(gone)

    def _drop(self, held: Held) -> None:
        del self._held[held.peer]
        self._per_ip[held.ip] -= 1
        if not self._per_ip[held.ip]:
            del self._per_ip[held.ip]


class Direction(enum.Enum):
    """Which way relayed bytes go on a circuit."""

    TO_DESTINATION = "to_destination"
    TO_SOURCE = "to_source"


class CircuitEnd(enum.Enum):
    """Why a circuit ended at the relay's limits (logged and counted by the service)."""

    DATA = "data"
    DURATION = "duration"


@dataclass(slots=True)
class Circuit:
    """One relayed connection: its ends, its deadline, the bytes it may still carry each way."""

    id: int
    source: PeerId
    destination: PeerId
    deadline: float | None
    left: dict[Direction, int | None]

    def carry(self, direction: Direction, n: int) -> int:
        """Of ``n`` bytes going ``direction``, how many the circuit carries (0: its data cap is spent)."""
        left = self.left[direction]
        if left is None:
            return n
        taken = min(n, left)
        self.left[direction] = left - taken
        return taken

    def ended(self, now: float) -> CircuitEnd | None:
        """Whether the circuit is over one of its limits at ``now``, and which."""
        if self.deadline is not None and now >= self.deadline:
            return CircuitEnd.DURATION
        if any(v == 0 for v in self.left.values()):
            return CircuitEnd.DATA
        return None


class Circuits:
    """The circuits a relay carries, bounded in all and per peer (either end)."""

    def __init__(self, resources: RelayResources) -> None:
        self.resources = resources
        self._open: dict[int, Circuit] = {}
        self._per_peer: Counter[PeerId] = Counter()
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._open)

    def open(self, source: PeerId, destination: PeerId, now: float) -> Circuit | Status:
        """A new circuit from ``source`` to ``destination``, or the refusal status."""
        r = self.resources
        if len(self._open) >= r.max_circuits:
            return Status.RESOURCE_LIMIT_EXCEEDED
        if any(self._per_peer[p] >= r.max_circuits_per_peer for p in (source, destination)):
            return Status.RESOURCE_LIMIT_EXCEEDED
        deadline = None if r.circuit_duration is None else now + r.circuit_duration
        circuit = Circuit(
            next(self._ids),
            source,
            destination,
            deadline,
            {d: r.circuit_data for d in Direction},
        )
        self._open[circuit.id] = circuit
        self._per_peer[source] += 1
        self._per_peer[destination] += 1
        return circuit

    def close(self, circuit: Circuit) -> None:
        """Forget an ended circuit (idempotent)."""
        if self._open.pop(circuit.id, None) is None:
            return
        for p in (circuit.source, circuit.destination):
            self._per_peer[p] -= 1
            if not self._per_peer[p]:
                del self._per_peer[p]

    def of(self, peer: PeerId) -> int:
        """Open circuits ``peer`` is an end of."""
        return self._per_peer[peer]
