"""AutoNAT v1's judgements, sans-IO: our reachability from the servers' dial-backs, and what a server
may dial for a DIAL request (libp2p specs ``autonat/autonat-v1.md``).

Client side, :class:`ReachabilityTracker`: each server's latest answer is one vote (:func:`dial_outcome`
reads it: OK is a success, E_DIAL_ERROR a failure, a refusal no vote). The spec: "if more than 3 peers
report a successfully dialed address, the node SHOULD assume that it is not located behind a NAT" (and
the same for failed dials), so the verdict flips to PUBLIC on 4 agreeing servers that outnumber the
others, to PRIVATE likewise, as @libp2p/autonat does for successes (``REQUIRED_SUCCESSFUL_DIALS`` 4).
As @libp2p/autonat does, servers in one network segment (the first IPv4 octet, the first IPv6 group)
count once, so one operator's servers cannot outvote the rest. Votes expire (``result_ttl``); the
verdict holds until the other one has its votes, and is UNKNOWN once no vote is left.

Server side, :class:`DialPolicy`: the spec's rule against using a server to dial third parties: no
request over a relay, only addresses on the IP the requester is observed on, its own peer ID only, no
private, loopback or link-local address for a public server, a capped count, and a per-peer and a
global rate (go-libp2p's autonat v1 server's: 3 per peer and 30 in all per minute). The global rate is
the server's own budget of dial-backs, spent only by requests it will dial: the per-peer rate and the
address checks refuse the others first. So one peer (or a few) cannot starve the others; a flood of
valid requests from more than ``global_per_minute / per_peer_per_minute`` peer IDs can, and is refused
as such (E_DIAL_REFUSED: no vote, never a wrong verdict, for whoever is refused).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from collections import OrderedDict
from dataclasses import dataclass

from mimirlite.identity import PeerId
from mimirlite.net.rate import PeerRate
from mimirlite.protocols.autonat.messages import (
    AutonatMessage,
    DialResponse,
    MessageType,
    ResponseStatus,
)
from mimirlite.wire.multiaddr import Code, Multiaddr

__all__ = [
    "DialPolicy",
    "DialPolicyConfig",
    "DialRefusal",
    "Reachability",
    "ReachabilityTracker",
    "TrackerConfig",
    "dial_outcome",
]

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Reachability(enum.Enum):
    """What the dial-backs say of us."""

    UNKNOWN = "unknown"
    PUBLIC = "public"
    PRIVATE = "private"


def dial_outcome(msg: AutonatMessage) -> bool | None:
    """A server's answer as a vote: True (OK), False (E_DIAL_ERROR), None (no vote: a refusal, a bad
    request, an internal error, or not a DIAL_RESPONSE at all)."""
    resp = msg.dial_response
    if msg.type is not MessageType.DIAL_RESPONSE or resp is None:
        return None
    if resp.status is ResponseStatus.OK:
        return True
    if resp.status is ResponseStatus.E_DIAL_ERROR:
        return False
    return None


# ---- client: the verdict ----


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """How many servers must agree, and for how long a vote counts."""

    required: int = 4
    """Agreeing servers (network segments) to flip: the spec's "more than 3 peers"."""
    result_ttl: float = 1800.0
    """Seconds a server's vote counts: two of go-libp2p's 15-minute re-check intervals."""
    max_servers: int = 64
    """Servers whose votes are kept (the oldest vote goes first)."""


@dataclass(frozen=True, slots=True)
class _Vote:
    ok: bool
    addr: Multiaddr | None
    at: float
    segment: str


def _segment(server: PeerId, server_ip: IPAddress | None) -> str:
    if server_ip is None:
        return f"peer:{server}"  # no IP known: the server is a segment of its own
    if server_ip.version == 4:
        return f"4:{server_ip.packed[0]}"
    return f"6:{server_ip.packed[:2].hex()}"


class ReachabilityTracker:
    """Our reachability from the dial-back results of several servers; time is passed in."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self._votes: OrderedDict[PeerId, _Vote] = OrderedDict()
        self._state = Reachability.UNKNOWN

    @property
    def reachability(self) -> Reachability:
        return self._state

    def record(
        self,
        server: PeerId,
        ok: bool,
        addr: Multiaddr | None,
        now: float,
        *,
        server_ip: IPAddress | None = None,
    ) -> Reachability | None:
        """One server's dial-back result (``addr``: ours it dialed, from its DialResponse); the new
        reachability if this changed it, else None. A server's later result replaces its earlier one.
        ``server_ip``: the server's IP as we see it, to count one vote per network segment."""
        self._votes.pop(server, None)
        self._votes[server] = _Vote(ok, addr, now, _segment(server, server_ip))
        while len(self._votes) > self.config.max_servers:
            self._votes.popitem(last=False)
        return self._judge(now)

    def get_timer(self) -> float | None:
        """When the oldest vote expires (None without votes)."""
        if not self._votes:
            return None
        return min(v.at for v in self._votes.values()) + self.config.result_ttl

    def handle_timer(self, now: float) -> Reachability | None:
        """Drop the votes expired by ``now``; the new reachability if that changed it, else None."""
        return self._judge(now)

    def confirmed_addrs(self, now: float) -> list[Multiaddr]:
        """Our addresses that servers dialed successfully, with votes still counting, each once."""
        out: list[Multiaddr] = []
        for vote in self._votes.values():
            live = vote.at + self.config.result_ttl > now
            if vote.ok and live and vote.addr is not None and vote.addr not in out:
                out.append(vote.addr)
        return out

    def _judge(self, now: float) -> Reachability | None:
        ttl = self.config.result_ttl
        for server in [s for s, v in self._votes.items() if v.at + ttl <= now]:
            del self._votes[server]
        ok = len({v.segment for v in self._votes.values() if v.ok})
        failed = len({v.segment for v in self._votes.values() if not v.ok})
        new = self._state
        if not self._votes:
            new = Reachability.UNKNOWN
        elif ok >= self.config.required and ok > failed:
            new = Reachability.PUBLIC
        elif failed >= self.config.required and failed > ok:
            new = Reachability.PRIVATE
        if new is self._state:
            return None
        log.info(
            "autonat: reachability %s -> %s (%d ok, %d failed)", self._state.value, new.value, ok, failed
        )
        self._state = new
        return new


# ---- server: what a DIAL may have us dial ----


@dataclass(frozen=True, slots=True)
class DialPolicyConfig:
    """A server's limits on dial-backs."""

    max_addrs: int = 16
    """Addresses dialed per request: go-libp2p's ``maxPeerAddresses``."""
    per_peer_per_minute: int = 3
    """Requests one peer may make a minute: go-libp2p's ``throttlePeerMax``."""
    global_per_minute: int = 30
    """Requests all peers may make a minute: go-libp2p's ``throttleGlobalMax``."""
    allow_private: bool = False
    """Dial private, loopback and link-local addresses (a server on a LAN, a test on loopback); a
    public server leaves it off."""


@dataclass(frozen=True, slots=True)
class DialRefusal:
    """Why a DIAL gets no dial: its answer is :meth:`response`."""

    status: ResponseStatus
    text: str

    def response(self) -> AutonatMessage:
        """The DIAL_RESPONSE to send."""
        return AutonatMessage(MessageType.DIAL_RESPONSE, dial_response=DialResponse(self.status, self.text))


class DialPolicy:
    """The server's checks of DIAL requests, with the rates' state; time is passed in."""

    def __init__(self, config: DialPolicyConfig | None = None) -> None:
        self.config = config or DialPolicyConfig()
        self._per_peer = PeerRate(self.config.per_peer_per_minute)
        self._global_tokens = float(self.config.global_per_minute)
        self._global_since: float | None = None

    def check_dial(
        self, request: AutonatMessage, sender: PeerId, observed_ip: IPAddress | None, now: float
    ) -> list[Multiaddr] | DialRefusal:
        """The addresses to dial back for ``sender``'s request (each ending in ``/p2p/<sender>``), or
        the refusal to answer with. ``observed_ip``: the IP of the connection the request came on
        (None for a relayed connection: refused, the IP cannot be checked)."""
        if observed_ip is None:
            return DialRefusal(ResponseStatus.E_DIAL_REFUSED, "refusing a dial request over a relay")
        dial = request.dial
        if request.type is not MessageType.DIAL or dial is None:
            return DialRefusal(ResponseStatus.E_BAD_REQUEST, "no Dial message found in message")
        if dial.peer is None or dial.peer.peer is None:
            return DialRefusal(ResponseStatus.E_BAD_REQUEST, "missing or bad peer id")
        if dial.peer.peer != sender:
            return DialRefusal(ResponseStatus.E_BAD_REQUEST, "peer id mismatch")
        if not self._per_peer.take(sender, now):
            return DialRefusal(ResponseStatus.E_DIAL_REFUSED, "too many dial requests from this peer")
        addrs = self._dialable(dial.peer.addrs, sender, observed_ip)
        if not addrs:
            return DialRefusal(ResponseStatus.E_DIAL_REFUSED, "no dialable addresses")
        # Only a request we will dial spends the global budget: the per-peer rate and the checks above
        # refuse the rest first, so a flood of bad requests from many peers leaves others their share.
        if not self._take_global(now):
            return DialRefusal(ResponseStatus.E_DIAL_REFUSED, "too many dial requests")
        return addrs

    def _take_global(self, now: float) -> bool:
        cap = float(self.config.global_per_minute)
        since = now if self._global_since is None else self._global_since
        tokens = min(cap, self._global_tokens + max(0.0, now - since) * cap / 60.0)
        self._global_since = now
        allowed = tokens >= 1.0
        self._global_tokens = tokens - 1.0 if allowed else tokens
        return allowed

    def _dialable(
        self, addrs: tuple[Multiaddr, ...], sender: PeerId, observed_ip: IPAddress
    ) -> list[Multiaddr]:
        out: list[Multiaddr] = []
        if not self.config.allow_private and not observed_ip.is_global:
            return out
        for addr in addrs:
            if len(out) >= self.config.max_addrs:
                break
            comps = addr.components
            if not 2 <= len(comps) <= 3 or comps[1][0].code != Code.TCP:
                continue  # only /ip4|ip6/<ip>/tcp/<port>[/p2p/<id>]: what mimirlite dials
            if len(comps) == 3 and (comps[2][0].code != Code.P2P or addr.peer_id != sender):
                continue  # a relay, another transport, or another peer: a third party
            if addr.ip != observed_ip:
                continue
            target = addr if len(comps) == 3 else addr.with_peer_id(sender)
            if target not in out:
                out.append(target)
        return out
