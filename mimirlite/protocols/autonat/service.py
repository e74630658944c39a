"""AutoNAT v1 (``/libp2p/autonat/1.0.0``, libp2p specs ``autonat/autonat-v1.md``) on a Host, both roles:
the asyncio shell over ``messages.py`` and ``verdict.py``.

As a server it dials a requester back on the addresses ``DialPolicy`` allows (its observed IP only, no
third party, rates), from a throwaway dialer: the connection the request came on must not answer for the
dial-back. As a client it asks connected peers that serve AutoNAT to dial us back on our candidate
addresses (the IPs peers observe us at, from identify, with our listen ports) and keeps the verdict
(``ReachabilityTracker``): PUBLIC, PRIVATE or UNKNOWN.

Every request is a peer's, so the server bounds what one may cost: one request at a time per peer
(further streams are reset unread, ``busy``), ``dial_timeout`` to send the request and for the whole
dial-back, the policy's per-peer and global rates (see ``verdict.py`` for who a flood may starve).
Refusals are counted in :attr:`AutoNat.refused` and logged (at INFO once per reason per
``LOG_INTERVAL``, then at DEBUG); bad messages also in ``host.metrics.protocol_errors[AUTONAT]``.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mimirlite.aio import Service
from mimirlite.errors import ClosedError, MimirliteError, ProtocolError, ProtocolErrorKind
from mimirlite.identity import KeyPair, PeerId
from mimirlite.net.config import HostConfig
from mimirlite.net.host import Host
from mimirlite.net.pending import LogThrottle
from mimirlite.protocols.autonat.messages import (
    AUTONAT_PROTOCOL,
    AutonatLimits,
    AutonatMessage,
    Dial,
    DialResponse,
    MessageType,
    PeerInfo,
    ResponseStatus,
    decode_message,
    encode_message,
)
from mimirlite.protocols.autonat.verdict import (
    DialPolicy,
    DialPolicyConfig,
    DialRefusal,
    Reachability,
    ReachabilityTracker,
    TrackerConfig,
    dial_outcome,
)
from mimirlite.wire import lp
from mimirlite.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from mimirlite.net.stream import Stream
    from mimirlite.protocols.identify import Identify, IdentifyInfo

log = logging.getLogger(__name__)

RECHECK = 30.0
"""Seconds between checks started by new servers while our reachability is unknown."""
LOG_INTERVAL = 10.0
"""A server's refusals are logged at INFO once per reason per this many seconds, the rest at DEBUG."""


@dataclass(frozen=True)
class AutonatConfig:
    """Both roles' settings; every request and answer is a peer's, hence hostile."""

    server: bool = True
    """Dial others back when they ask."""
    dial_timeout: float = 5.0
    """Seconds a requester has to send its request, and one dial-back may take in all (each address
    tried gets what is left; go-libp2p bounds its whole dial-back so too)."""
    request_timeout: float = 30.0
    """Seconds a server has to answer our request (it may try several of our addresses)."""
    probe_interval: float = 900.0
    """Seconds between rounds of asking (go-libp2p's 15 minutes)."""
    servers_per_round: int = 6
    """Servers asked in one round, at most."""
    max_candidates: int = 8
    """Our candidate addresses sent in one request."""
    policy: DialPolicyConfig = field(default_factory=DialPolicyConfig)
    """What a request may have us dial (``allow_private`` for a LAN or a test lab)."""
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    """How many agreeing servers turn the verdict, and how long a result counts."""
    limits: AutonatLimits = field(default_factory=AutonatLimits)
    """Caps on one message."""


class AutoNat(Service):
    """AutoNAT on ``host``: ``async with AutoNat(host, identify) as autonat``; ``await autonat.check()``
    asks the connected servers now (it also runs every ``probe_interval``)."""

    def __init__(self, host: Host, identify: Identify, config: AutonatConfig | None = None) -> None:
        self.host = host
        self.identify = identify
        self.config = config or AutonatConfig()
        self.tracker = ReachabilityTracker(self.config.tracker)
        self.policy = DialPolicy(self.config.policy)
        self.on_reachability: list[Callable[[Reachability], None]] = []
        self.dialed_back = 0
        """Dial-backs that reached the requester."""
        self.refused: collections.Counter[str] = collections.Counter()
        """Requests refused, by the status answered (``e_dial_refused``, ``e_bad_request``), and
        ``busy``: streams reset unread while the peer had a request being served."""
        self.dial_failed = 0
        """Dial-backs that reached none of the requester's addresses (answered E_DIAL_ERROR)."""
        self.timeouts = 0
        """Requesters that sent no request within ``dial_timeout``."""
        self._serving: collections.Counter[PeerId] = collections.Counter()
        self._throttle = LogThrottle(LOG_INTERVAL)
        self._timer: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None
        self._last_check: float | None = None

    @property
    def reachability(self) -> Reachability:
        return self.tracker.reachability

    @property
    def serving(self) -> int:
        """Requests being served now (read, checked, dialed back, answered)."""
        return sum(self._serving.values())

    async def _start(self) -> None:
        if self.config.server:
            self.host.set_handler(AUTONAT_PROTOCOL, self._serve)
        self._timer = self.host.spawn(self._every_round(), "mimirlite-autonat")
        self.identify.on_identified.append(self._on_identified)

    async def _stop(self) -> None:
        if self._on_identified in self.identify.on_identified:
            self.identify.on_identified.remove(self._on_identified)
        if self._checking is not None:
            self._checking.cancel()
            await asyncio.gather(self._checking, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
        if self.host.handler(AUTONAT_PROTOCOL) == self._serve:
            self.host.remove_handler(AUTONAT_PROTOCOL)

    async def _every_round(self) -> None:
        while True:
            await asyncio.sleep(self.config.probe_interval)
            await self.check()

    # ---- client ----

    def _on_identified(self, info: IdentifyInfo) -> None:
        """A new server while we know nothing yet: ask now (at most once a ``RECHECK`` s), not at the
        next round."""
        if AUTONAT_PROTOCOL not in info.protocols or self.reachability is not Reachability.UNKNOWN:
            return
        now = self._now()
        busy = self._checking is not None and not self._checking.done()
        if busy or (self._last_check is not None and now - self._last_check < RECHECK):
            return
        self._last_check = now
        self._checking = self.host.spawn(self._round(), "mimirlite-autonat-check")

    def candidate_addrs(self) -> list[Multiaddr]:
        """Where we might be reachable: each IP peers observe us at, with each of our listen ports."""
        return self.identify.candidate_addrs(self.config.max_candidates)

    def servers(self) -> list[PeerId]:
        """Connected peers that say (identify) they serve AutoNAT, over direct connections."""
        out = []
        for peer, conn in self.host.connections.items():
            info = self.identify.info_of(peer)
            if info is not None and AUTONAT_PROTOCOL in info.protocols and not conn.relayed:
                out.append(peer)
        return out

    async def check(self) -> Reachability:
        """Ask up to ``servers_per_round`` servers to dial us back; the verdict after their answers. A
        check already running is joined, not doubled: a server takes one request of ours at a time."""
        if self._checking is None or self._checking.done():
            self._checking = self.host.spawn(self._round(), "mimirlite-autonat-check")
        await asyncio.shield(self._checking)
        return self.reachability

    async def _round(self) -> None:
        addrs = self.candidate_addrs()
        servers = self.servers()[: self.config.servers_per_round]
        if not addrs or not servers:
            log.debug(
                "autonat: nothing to ask (%d candidate addresses, %d servers)", len(addrs), len(servers)
            )
            return
        await asyncio.gather(*(self.probe(s, addrs) for s in servers))

    async def probe(self, server: PeerId, addrs: list[Multiaddr] | None = None) -> bool | None:
        """Ask ``server`` to dial us back; True (it reached us), False (it could not), None (no vote)."""
        addrs = self.candidate_addrs() if addrs is None else addrs
        request = AutonatMessage(MessageType.DIAL, dial=Dial(PeerInfo(self.host.peer_id, tuple(addrs))))
        try:
            answer = await asyncio.wait_for(self._ask(server, request), self.config.request_timeout)
        except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
            log.debug("autonat: %s did not answer: %s", server, exc or type(exc).__name__)
            return None
        outcome = dial_outcome(answer)
        if outcome is None:
            return None
        conn = self.host.connections.get(server)
        ip = None
        if conn is not None and conn.remote_address is not None:
            ip = ipaddress.ip_address(conn.remote_address[0])
        response = answer.dial_response
        changed = self.tracker.record(
            server, outcome, response.addr if response else None, self._now(), server_ip=ip
        )
        if changed is not None:
            for cb in list(self.on_reachability):
                cb(changed)
        return outcome

    async def _ask(self, server: PeerId, request: AutonatMessage) -> AutonatMessage:
        stream = await self.host.new_stream(server, AUTONAT_PROTOCOL)
        try:
            await stream.write(lp.encode_message(encode_message(request)))
            body = await stream.read_message(self.config.limits.max_message_size)
            if body is None:
                raise ProtocolError(f"{server} ended the stream without answering")
            try:
                answer, _ = decode_message(body, self.config.limits)
            except ProtocolError:
                self.host.metrics.protocol_errors[ProtocolErrorKind.AUTONAT] += 1
                raise
        except BaseException:
            await stream.reset()
            raise
        await stream.close()
        return answer

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # ---- server ----

    async def _serve(self, stream: Stream) -> None:
        peer = stream.remote_peer
        if self._serving[peer]:
            self.refused["busy"] += 1
            self._log_refusal("busy", "autonat: dial request from %s refused: one is being served", peer)
            await stream.reset()
            return
        self._serving[peer] += 1
        try:
            await self._serve_one(stream, peer)
        finally:
            self._serving[peer] -= 1
            if not self._serving[peer]:
                del self._serving[peer]

    async def _serve_one(self, stream: Stream, peer: PeerId) -> None:
        limits = self.config.limits
        try:
            body = await asyncio.wait_for(
                stream.read_message(limits.max_message_size), self.config.dial_timeout
            )
            if body is None:
                return
            request, _ = decode_message(body, limits)
        except asyncio.TimeoutError:
            self.timeouts += 1
            self._log_refusal(
                "timeout", "autonat: %s sent no dial request in %g s", peer, self.config.dial_timeout
            )
            return
        except ProtocolError as exc:
            self.host.metrics.protocol_errors[ProtocolErrorKind.AUTONAT] += 1
            self._log_refusal("bad", "autonat: bad dial request from %s: %s", peer, exc)
            await self._refuse(stream, DialRefusal(ResponseStatus.E_BAD_REQUEST, str(exc)))
            return
        except ClosedError as exc:
            log.debug("autonat: %s ended its request early: %s", peer, exc)
            return
        conn = stream.connection
        observed = None
        if not conn.relayed and conn.remote_address is not None:
            observed = ipaddress.ip_address(conn.remote_address[0])
        checked = self.policy.check_dial(request, peer, observed, self._now())
        if isinstance(checked, DialRefusal):
            self._log_refusal(checked.text, "autonat: dial request from %s refused: %s", peer, checked.text)
            await self._refuse(stream, checked)
            return
        await self._answer(stream, await self._dial_back(peer, checked))

    def _log_refusal(self, reason: str, msg: str, *args: object) -> None:
        level = logging.INFO if self._throttle.allow(reason, self._now()) else logging.DEBUG
        log.log(level, msg, *args)

    async def _refuse(self, stream: Stream, refusal: DialRefusal) -> None:
        self.refused[refusal.status.name.lower()] += 1
        await self._answer(stream, refusal.response())

    async def _dial_back(self, peer: PeerId, addrs: list[Multiaddr]) -> AutonatMessage:
        """Dial ``peer`` at each of ``addrs`` in turn from a throwaway host; the answer to send."""
        last: Multiaddr | None = None
        why = "no address answered"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.dial_timeout
        async with Host(
            KeyPair.generate(), config=HostConfig(dial_timeout=self.config.dial_timeout)
        ) as dialer:
            for addr in addrs:
                left = deadline - loop.time()
                if left <= 0:  # an earlier address took the whole dial_timeout
                    why = f"no answer in {self.config.dial_timeout:g} s"
                    break
                last = addr
                try:
                    await asyncio.wait_for(dialer.dial(str(addr)), left)
                except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
                    why = str(exc) or type(exc).__name__
                    continue
                self.dialed_back += 1
                log.info("autonat: dialed %s back at %s", peer, addr)
                return _response(ResponseStatus.OK, addr.without_peer_id(), None)
        self.dial_failed += 1
        log.info("autonat: could not dial %s back: %s", peer, why)
        return _response(ResponseStatus.E_DIAL_ERROR, None if last is None else last.without_peer_id(), why)

    async def _answer(self, stream: Stream, message: AutonatMessage) -> None:
        await stream.write(lp.encode_message(encode_message(message)))


def _response(status: ResponseStatus, addr: Multiaddr | None, text: str | None) -> AutonatMessage:
    return AutonatMessage(MessageType.DIAL_RESPONSE, dial_response=DialResponse(status, text, addr))
