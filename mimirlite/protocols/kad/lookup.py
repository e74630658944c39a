"""The iterative Kademlia lookup (libp2p specs ``kad-dht/README.md``, "Peer routing"), sans-IO: which peers
to ask next for the peers closest to a target, with ``alpha`` requests in flight, until the ``k`` closest
live peers heard of have all answered.

Time is passed in; there is no clock, socket or event loop here. The shell (the DHT service) sends the
request each :class:`Query` names, feeds back :meth:`Lookup.receive_response` (the peers the answer lists,
already decoded) or :meth:`Lookup.receive_failure` (dial refused, stream reset, undecodable answer), and
calls :meth:`Lookup.handle_timer` at :meth:`Lookup.get_timer`. A request not answered within
``request_timeout`` counts as failed; the shell may then drop it (a late answer is ignored). The lookup ends
exactly once, with a :class:`LookupFinished`; requests still in flight then are the shell's to cancel.

Bounds, whatever peers answer: at most ``max_asked`` peers are asked, at most ``max_candidates`` peers
(the closest heard of) are kept besides the ``k`` found, the whole lookup lasts at most ``deadline``
seconds.

As the spec describes it (kad-dht 14.2 instead walks disjoint paths, each asking only peers closer than
the one that named them): one set of candidates, the closest unasked of the ``k`` closest asked first,
the end when the ``k`` closest have all answered.
"""

from __future__ import annotations

import enum
import logging
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

from mimirlite.errors import LocalError
from mimirlite.identity import PeerId
from mimirlite.protocols.kad.routing import K, peer_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LookupConfig:
    """How one lookup runs and what bounds it."""

    k: int = K
    """Result size: the lookup converges when the ``k`` closest live peers heard of have answered."""
    alpha: int = 3
    """Requests in flight at once (the spec's and kad-dht's alpha)."""
    request_timeout: float = 3.0
    """Seconds one peer has to answer before it counts as failed. A live peer needs a dial (TCP,
    multistream, Noise, yamux) and one request: 4-5 round trips, 1.5 s at a 300 ms intercontinental RTT;
    3 s is twice that. Each silent peer holds one of the ``alpha`` slots that long: with a third of 1000
    simulated peers silent and still listed by the others, a lookup takes 16 s median, 25 s at worst
    (5 s, js-libp2p's dial timeout: 26 s and 41 s, past the ``deadline``)."""
    deadline: float = 30.0
    """Seconds the whole lookup may take: kad-dht's table-refresh query timeout (its 180 s default for
    other queries is too long for a chat waiting on a provider)."""
    max_asked: int = 200
    """Peers asked at most, answered or failed. A lookup for the k closest of 1000 simulated peers asks
    20-31 (3000 peers: 22-30; a third of 1000 dead and still listed: 36 median, 55 at worst); 200 leaves
    room for many dead peers yet bounds a lookup that never converges to 200 requests."""
    max_candidates: int = 10 * K
    """Candidates kept (heard of, not yet answered or failed; the closest first), so a peer answering
    floods of peer IDs costs bounded memory; ten times ``k`` keeps ``k`` live ones even when most of those
    heard of turn out dead. The ``k`` closest that answered are kept apart: candidates never crowd them
    out."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.alpha < 1 or self.max_asked < 1:
            raise LocalError("k, alpha and max_asked must be at least 1")
        if self.max_candidates < self.k:
            raise LocalError("max_candidates must be at least k")
        if not (self.request_timeout > 0 and self.deadline > 0):
            raise LocalError("request_timeout and deadline must be positive")


class LookupState(enum.Enum):
    """Where a lookup is."""

    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.Enum):
    """Why a lookup ended."""

    CONVERGED = "converged"
    """The ``k`` closest live peers heard of have all answered: none closer is left to ask."""
    EXHAUSTED = "exhausted"
    """Nothing left to ask and nothing in flight, with fewer than ``k`` live peers found (a small
    network, dead seeds, or no seeds at all)."""
    DEADLINE = "deadline"
    MAX_ASKED = "max_asked"
    """``max_asked`` peers asked, the last answers in, and still not converged."""
    STOPPED = "stopped"
    """The caller ended it (:meth:`Lookup.stop`)."""


@dataclass(frozen=True, slots=True)
class Query:
    """Event: send the lookup's request to ``peer`` now."""

    peer: PeerId


@dataclass(frozen=True, slots=True)
class LookupFinished:
    """Event, emitted exactly once: the lookup is over."""

    closest: tuple[PeerId, ...]
    """Up to ``k`` peers that answered, closest to the target first."""
    reason: FinishReason


# a candidate's progress: answered ones leave the candidates for the found, failed ones for ``failed``
_NEW = 0
_ASKED = 1

_Event = Query | LookupFinished


class Lookup:
    """One iterative lookup for the peers closest to ``target`` (a keyspace position: ``kad_key`` of a DHT
    key, or ``peer_key`` of a peer), starting from ``seeds`` (the routing table's closest)."""

    def __init__(
        self,
        target: bytes,
        local: PeerId,
        seeds: Iterable[PeerId],
        now: float,
        config: LookupConfig = LookupConfig(),
    ) -> None:
        if len(target) != 32:
            raise LocalError("a lookup target is a 32-byte kad key")
        self.target = target
        self.local = local
        self.config = config
        self._target = int.from_bytes(target, "big")
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._state = LookupState.RUNNING
        self._started = False
        self._deadline = now + config.deadline
        # the candidates (not asked, or in flight), closest first: parallel lists (distances for bisect),
        # and each one's progress
        self._dists: list[int] = []
        self._peers: list[PeerId] = []
        self._status: dict[PeerId, int] = {}
        # the k closest that answered, closest first; kept apart so that candidates never crowd them out
        self._found_dists: list[int] = []
        self._found: list[PeerId] = []
        self._in_flight: dict[PeerId, float] = {}  # peer -> when its request times out
        self._asked: set[PeerId] = set()
        self._failed: set[PeerId] = set()
        for peer in seeds:
            self._offer(peer)

    # ---- read-only views ----

    @property
    def state(self) -> LookupState:
        """Running until the one :class:`LookupFinished`."""
        return self._state

    @property
    def asked(self) -> int:
        """Peers asked so far (answered, failed or in flight)."""
        return len(self._asked)

    @property
    def failed(self) -> frozenset[PeerId]:
        """Peers whose request failed or timed out: the shell prunes them from its routing table."""
        return frozenset(self._failed)

    @property
    def candidates(self) -> int:
        """Candidates kept now (at most ``max_candidates``): peers heard of, not yet answered or failed."""
        return len(self._peers)

    def closest(self, n: int | None = None) -> list[PeerId]:
        """The ``n`` (default: all, at most ``k``) closest peers that answered, closest first."""
        return self._found[:n]

    # ---- inputs ----

    def start(self, now: float) -> list[_Event]:
        """The first queries (up to ``alpha``), or the end: no seeds, or past the deadline already."""
        if self._started:
            raise LocalError("lookup already started")
        self._started = True
        if self._state is LookupState.FINISHED:
            return []
        if now >= self._deadline:
            return [self._end(FinishReason.DEADLINE)]
        return self._step(now)

    def receive_response(self, peer: PeerId, closer: Iterable[PeerId], now: float) -> list[_Event]:
        """``peer`` answered, listing ``closer``; ignored (``[]``) unless a request to it is in flight."""
        if self._state is LookupState.FINISHED or self._in_flight.pop(peer, None) is None:
            return []
        if now >= self._deadline:
            return [self._end(FinishReason.DEADLINE)]
        self._answered(peer)
        offer = self._offer
        for other in closer:
            if other != peer:
                offer(other)
        return self._step(now)

    def receive_failure(self, peer: PeerId, now: float) -> list[_Event]:
        """The request to ``peer`` failed; ignored (``[]``) unless one is in flight."""
        if self._state is LookupState.FINISHED or self._in_flight.pop(peer, None) is None:
            return []
        self._fail(peer)
        if now >= self._deadline:
            return [self._end(FinishReason.DEADLINE)]
        return self._step(now)

    def stop(self, now: float) -> list[LookupFinished]:
        """End the lookup now (the caller has what it wanted)."""
        if self._state is LookupState.FINISHED:
            return []
        return [self._end(FinishReason.STOPPED)]

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due: the earliest request timeout or the deadline; None once over."""
        if self._state is LookupState.FINISHED:
            return None
        if self._in_flight:
            return min(self._deadline, min(self._in_flight.values()))
        return self._deadline

    def handle_timer(self, now: float) -> list[_Event]:
        """Requests past their timeout fail; past the deadline the lookup ends."""
        if self._state is LookupState.FINISHED:
            return []
        if now >= self._deadline:
            return [self._end(FinishReason.DEADLINE)]
        late = [peer for peer, due in self._in_flight.items() if due <= now]
        if not late:
            return []
        for peer in late:
            del self._in_flight[peer]
            self._fail(peer)
        if self._debug:
            log.debug("lookup %s: %d request(s) timed out", self.target.hex()[:12], len(late))
        return self._step(now)

    # ---- the core ----

    def _offer(self, peer: PeerId) -> None:
        """Keep ``peer`` as a candidate if it is new, not us, and among the ``max_candidates`` closest."""
        if peer in self._status or peer in self._asked or peer == self.local:
            return
        d = int.from_bytes(peer_key(peer), "big") ^ self._target
        dists = self._dists
        full = len(dists) >= self.config.max_candidates
        if full and d >= dists[-1]:
            return
        i = bisect_right(dists, d)
        dists.insert(i, d)
        self._peers.insert(i, peer)
        self._status[peer] = _NEW
        if full:
            # the farthest goes; if it is in flight, its answer still counts
            dists.pop()
            del self._status[self._peers.pop()]

    def _drop(self, peer: PeerId) -> None:
        """Take ``peer`` off the candidates, if it is still one (it may have been crowded out)."""
        if self._status.pop(peer, None) is not None:
            i = self._peers.index(peer)
            del self._peers[i]
            del self._dists[i]

    def _fail(self, peer: PeerId) -> None:
        self._failed.add(peer)
        self._drop(peer)

    def _answered(self, peer: PeerId) -> None:
        """``peer`` answered: from the candidates to the found, if among the ``k`` closest that answered."""
        self._drop(peer)
        d = int.from_bytes(peer_key(peer), "big") ^ self._target
        dists = self._found_dists
        if len(dists) >= self.config.k:
            if d >= dists[-1]:
                return
            dists.pop()
            self._found.pop()
        i = bisect_right(dists, d)
        dists.insert(i, d)
        self._found.insert(i, peer)

    def _step(self, now: float) -> list[_Event]:
        """Converged? Else ask the closest unasked among the ``k`` closest heard of (found and candidates
        together), up to ``alpha`` in flight; with nothing in flight and nothing sent, the lookup is
        exhausted, or out of peers it may ask."""
        config = self.config
        k = config.k
        found = self._found_dists
        dists = self._dists
        if len(found) == k and (not dists or dists[0] > found[-1]):
            return [self._end(FinishReason.CONVERGED)]
        events: list[_Event] = []
        status = self._status
        in_flight = self._in_flight
        asked = self._asked
        unasked = False
        closer_found = 0  # found peers closer than the candidate at hand: its rank is i + closer_found
        for i, peer in enumerate(self._peers):
            d = dists[i]
            while closer_found < len(found) and found[closer_found] < d:
                closer_found += 1
            if i + closer_found >= k:
                break
            if status[peer] != _NEW:
                continue
            if len(in_flight) >= config.alpha or len(asked) >= config.max_asked:
                unasked = True
                break
            status[peer] = _ASKED
            asked.add(peer)
            in_flight[peer] = now + config.request_timeout
            events.append(Query(peer))
        if not in_flight:
            # nothing was sent, so nothing is left to ask in the k closest, or the budget is spent
            events.append(self._end(FinishReason.MAX_ASKED if unasked else FinishReason.EXHAUSTED))
        return events

    def _end(self, reason: FinishReason) -> LookupFinished:
        self._set_state(LookupState.FINISHED)
        closest = tuple(self._found)
        if self._debug:
            log.debug(
                "lookup %s: %s, %d found, %d asked, %d failed",
                self.target.hex()[:12],
                reason.value,
                len(closest),
                len(self._asked),
                len(self._failed),
            )
        self._in_flight.clear()
        return LookupFinished(closest, reason)

    def _set_state(self, new: LookupState) -> None:
        if self._debug:
            log.debug("lookup %s: %s -> %s", self.target.hex()[:12], self._state.value, new.value)
        self._state = new
