"""DCUtR (``/libp2p/dcutr``, libp2p specs ``relay/DCUtR.md``) on a Host: the asyncio shell over
``holepunch.py``.

When a peer reaches us through a relay (we took the circuit: STOP), we initiate: over the relayed
connection we exchange our public addresses, and both sides dial each other from their listen ports at the
same moment (TCP simultaneous open), so that each NAT sees the other's SYN as the answer to its own. A
direct connection that forms takes over from the relayed one for new streams (``Host`` prefers it); the
relayed one ends with its last stream or at the relay's limit. When punching fails (a symmetric NAT), the
peers stay relayed, and the log says so.

Every exchange is a peer's, so the shell bounds what one may cost us: exchanges only over relayed
connections, one inbound exchange at a time per connection (as @libp2p/dcutr's ``maxInboundStreams``
1; a new one is taken once the peer ended the running one's stream, as an initiator retrying does),
``PER_PEER_PER_MINUTE`` inbound exchanges a peer may start (a punch takes at most
``HolePunchConfig.max_attempts`` of them), one punch of ours at a time per peer and
``PUNCHES_PER_MINUTE`` (a peer reaching us through a relay again and again), and at most
``MAX_DIALS`` of the peer's addresses dialed per attempt, all within the attempt's dial phase
(``HolePunchConfig.timeout``). The spec lets a peer name any address it says it is observed at (over a
relay there is no IP to check them against, unlike AutoNAT), so a hostile peer can point our dials at
a third party: these caps bound how many, and how often. Refused streams are reset unread and counted
in :attr:`HolePuncher.refused`, punches not started in :attr:`HolePuncher.skipped`; a peer breaking the
exchange counts in ``host.metrics.protocol_errors[ProtocolErrorKind.DCUTR]``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from mimirlite.aio import Service
from mimirlite.errors import MimirliteError, ProtocolErrorKind
from mimirlite.net.pending import LogThrottle
from mimirlite.net.rate import PeerRate
from mimirlite.protocols.dcutr.holepunch import (
    AttemptFailed,
    DialNow,
    HolePunchConfig,
    HolePunchEvent,
    HolePunchFailed,
    HolePunchInitiator,
    HolePunchResponder,
    HolePunchSucceeded,
)
from mimirlite.protocols.dcutr.messages import DCUTR_PROTOCOL
from mimirlite.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from mimirlite.identity import PeerId
    from mimirlite.net.connection import Connection
    from mimirlite.net.host import Host
    from mimirlite.net.stream import Stream

log = logging.getLogger(__name__)

Exchange = HolePunchInitiator | HolePunchResponder

PER_PEER_PER_MINUTE = 6
"""Inbound exchanges (streams) one peer may start a minute: two whole punches of 3 attempts."""
PUNCHES_PER_MINUTE = 2
"""Hole punches we start to one peer a minute (each up to ``HolePunchConfig.max_attempts`` attempts)."""
MAX_DIALS = 4
"""Addresses of the peer dialed in one attempt, at most (the core keeps up to ``limits.max_addrs``)."""
LOG_INTERVAL = 10.0
"""Refused streams are logged at INFO once per reason per this many seconds, the rest at DEBUG."""


class HolePuncher(Service):
    """DCUtR on ``host``: answers hole punches on relayed connections, and starts one (:meth:`punch`) for
    each relayed connection a peer opened to us. ``own_addrs`` gives the public addresses to offer (e.g.
    AutoNAT's candidates: the IPs peers observe us at, with our listen ports)."""

    def __init__(
        self, host: Host, own_addrs: Callable[[], list[Multiaddr]], config: HolePunchConfig | None = None
    ) -> None:
        self.host = host
        self.own_addrs = own_addrs
        self.config = config or HolePunchConfig()
        self.succeeded = 0
        """Hole punches that gave a direct connection."""
        self.failed = 0
        """Hole punches we initiated that left the peers relayed."""
        self._running: dict[PeerId, int] = {}  # exchanges under way, by peer
        self._changed: dict[PeerId, asyncio.Event] = {}  # set when one starts or ends, or a direct one opens
        self.timeouts = 0
        """Attempts (either role) ended by ``HolePunchConfig.timeout``: the peer too slow to answer, or
        the direct dial not done by the dial phase's end."""
        self.refused: collections.Counter[str] = collections.Counter()
        """Inbound ``/libp2p/dcutr`` streams reset unread, by why: ``direct`` (not over a relayed
        connection), ``busy`` (an exchange already runs on that connection), ``rate`` (over
        ``PER_PEER_PER_MINUTE``), ``no_addrs`` (we have no address to offer)."""
        self._rate = PeerRate(PER_PEER_PER_MINUTE)
        self._serving: dict[Connection, Stream] = {}  # the inbound exchange running on a connection
        self._punching: set[PeerId] = set()  # peers we run a hole punch to
        self._punch_rate = PeerRate(PUNCHES_PER_MINUTE)
        self.skipped: collections.Counter[str] = collections.Counter()
        """Relayed connections we did not punch from, by why: ``punching`` (a punch to that peer
        runs), ``rate`` (over ``PUNCHES_PER_MINUTE`` to that peer)."""
        self._throttle = LogThrottle(LOG_INTERVAL)

    def on_relayed(self, conn: Connection) -> None:
        """A peer reached us through a relay (``RelayClient.on_relayed``): punch a hole to it, unless a
        punch to it runs or it had its ``PUNCHES_PER_MINUTE`` (a peer reconnecting through the relay
        again and again must not have us dial again and again)."""
        peer = conn.remote_peer
        assert peer is not None
        reason = "punching" if peer in self._punching else None
        if reason is None and not self._punch_rate.take(peer, self._now()):
            reason = "rate"
        if reason is not None:
            self.skipped[reason] += 1
            level = logging.INFO if self._throttle.allow("skip-" + reason, self._now()) else logging.DEBUG
            log.log(level, "dcutr: no hole punch to %s (%s)", peer, reason)
            return
        self._punching.add(peer)
        self.host.spawn(self._punch_quietly(conn, peer), "mimirlite-dcutr")

    async def _punch_quietly(self, conn: Connection, peer: PeerId) -> None:
        try:
            await self.punch(conn)
        except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
            log.info("dcutr: hole punch with %s failed: %s", peer, exc)
        finally:
            self._punching.discard(peer)

    async def _start(self) -> None:
        self.host.set_handler(DCUTR_PROTOCOL, self._serve)
        self.host.on_connected.append(self._on_connected)

    async def _stop(self) -> None:
        if self._on_connected in self.host.on_connected:
            self.host.on_connected.remove(self._on_connected)
        if self.host.handler(DCUTR_PROTOCOL) == self._serve:
            self.host.remove_handler(DCUTR_PROTOCOL)

    def _on_connected(self, conn: Connection) -> None:
        if not conn.relayed and conn.remote_peer is not None:
            self._notify(conn.remote_peer)

    def _notify(self, peer: PeerId) -> None:
        event = self._changed.pop(peer, None)
        if event is not None:
            event.set()

    def _direct(self, peer: PeerId) -> bool:
        conn = self.host.connections.get(peer)
        return conn is not None and conn.is_open and not conn.relayed

    async def wait_direct(self, peer: PeerId, *, start_within: float = 2.0, limit: float = 20.0) -> bool:
        """Wait for a hole punch with ``peer`` (reached through a relay) to give a direct connection: True
        once one is open; False when no exchange is under way and none began within ``start_within`` s,
        or after ``limit`` s. For streams that a relay's limit would cut, as go-libp2p waits before
        opening a stream on a limited connection."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        while not self._direct(peer):
            left = end - loop.time()
            busy = self._running.get(peer, 0) > 0
            wait = left if busy else min(start_within, left)
            if wait <= 0:
                return False
            changed = self._changed.setdefault(peer, asyncio.Event())
            try:
                await asyncio.wait_for(changed.wait(), wait)
            except asyncio.TimeoutError:
                if not busy:
                    return self._direct(peer)
        return True

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def punch(self, relayed: Connection) -> bool:
        """Initiate a hole punch over ``relayed`` (a connection a peer opened to us through a relay);
        whether a direct connection formed."""
        peer = relayed.remote_peer
        assert peer is not None
        try:
            core = HolePunchInitiator(self.own_addrs(), self.config)
        except MimirliteError as exc:
            log.info("dcutr: no hole punch with %s: %s", peer, exc)
            return False
        while True:
            core.start_attempt(self._now())
            stream = await self.host.open_on(relayed, DCUTR_PROTOCOL)
            outcome = await self._run(stream, core, peer, initiator=True)
            if outcome is not None:
                return outcome

    async def _serve(self, stream: Stream) -> None:
        conn = stream.connection
        peer = stream.remote_peer
        now = self._now()
        if not conn.relayed:
            await self._refuse(stream, "direct", "a hole punch over a direct connection")
            return
        running = self._serving.get(conn)
        if running is not None and not running.read_ended:  # the peer may move on from one it ended
            await self._refuse(stream, "busy", "a second exchange while one runs on the connection")
            return
        if not self._rate.take(peer, now):
            await self._refuse(stream, "rate", f"over {PER_PEER_PER_MINUTE} exchanges a minute")
            return
        try:
            core = HolePunchResponder(self.own_addrs(), now, self.config)
        except MimirliteError as exc:
            await self._refuse(stream, "no_addrs", str(exc))
            return
        self._serving[conn] = stream
        try:
            await self._run(stream, core, peer, initiator=False)
        finally:
            if self._serving.get(conn) is stream:
                del self._serving[conn]

    async def _refuse(self, stream: Stream, reason: str, why: str) -> None:
        """Reset an inbound stream unread: counted, logged (throttled per reason)."""
        self.refused[reason] += 1
        level = logging.INFO if self._throttle.allow(reason, self._now()) else logging.DEBUG
        log.log(level, "dcutr: stream from %s refused (%s): %s", stream.remote_peer, reason, why)
        await stream.reset()

    async def _run(self, stream: Stream, core: Exchange, peer: PeerId, *, initiator: bool) -> bool | None:
        """Drive one attempt on ``stream``: True (direct), False (given up), None (try again)."""
        self._running[peer] = self._running.get(peer, 0) + 1
        self._notify(peer)
        try:
            return await self._exchange(stream, core, peer, initiator=initiator)
        finally:
            left = self._running.pop(peer) - 1
            if left:
                self._running[peer] = left
            self._notify(peer)

    async def _exchange(
        self, stream: Stream, core: Exchange, peer: PeerId, *, initiator: bool
    ) -> bool | None:
        try:
            events: list[HolePunchEvent] = []
            while True:
                out = core.data_to_send()
                if out:
                    await stream.write(out)
                for event in events:
                    if isinstance(event, DialNow):
                        events = await self._dial_phase(core, peer, event, initiator=initiator)
                        break
                    if isinstance(event, HolePunchSucceeded):
                        self.succeeded += 1
                        log.info("dcutr: direct connection to %s (attempt %d)", peer, event.attempt)
                        return True
                    if isinstance(event, (AttemptFailed, HolePunchFailed)):
                        if event.protocol_error:
                            self.host.metrics.protocol_errors[ProtocolErrorKind.DCUTR] += 1
                        await stream.reset()
                        if isinstance(event, AttemptFailed) or not initiator:  # the initiator retries
                            level = logging.INFO if event.protocol_error or not initiator else logging.DEBUG
                            log.log(
                                level,
                                "dcutr: attempt %d with %s failed: %s",
                                event.attempt,
                                peer,
                                event.reason,
                            )
                            return None
                        self.failed += 1
                        log.warning(
                            "dcutr: no direct connection to %s, staying relayed: %s", peer, event.reason
                        )
                        return False
                else:
                    events = await self._next(stream, core)
        except (MimirliteError, OSError) as exc:
            self.failed += int(initiator)
            log.info("dcutr: hole punch with %s ended: %s", peer, exc)
            await stream.reset()
            return False

    async def _next(self, stream: Stream, core: Exchange) -> list[HolePunchEvent]:
        """The events of what the peer sends next, or of the running phase's timeout."""
        timer = core.get_timer()
        wait = None if timer is None else max(0.0, timer - self._now())
        try:
            data = await asyncio.wait_for(stream.read(), wait)
        except asyncio.TimeoutError:
            events = core.handle_timer(self._now())
            self.timeouts += bool(events)
            return events
        if not data:
            return core.handle_timer(float("inf"))  # the peer ended the stream: the phase is over
        return core.receive_data(data, self._now())

    async def _dial_phase(
        self, core: Exchange, peer: PeerId, event: DialNow, *, initiator: bool
    ) -> list[HolePunchEvent]:
        """Wait for ``event.at``, dial (at most ``MAX_DIALS`` addresses) until the core's deadline; the
        core's events for the outcome."""
        await asyncio.sleep(max(0.0, event.at - self._now()))
        deadline = core.get_timer()
        left = None if deadline is None else max(0.0, deadline - self._now())
        addrs = event.addrs[:MAX_DIALS]
        try:
            ok = await asyncio.wait_for(self._dial(peer, addrs, initiator=initiator), left)
        except asyncio.TimeoutError:
            assert deadline is not None
            self.timeouts += 1
            return core.handle_timer(max(deadline, self._now()))
        return core.dial_result(ok, self._now())

    async def _dial(self, peer: PeerId, addrs: tuple[Multiaddr, ...], *, initiator: bool) -> bool:
        """Dial ``addrs`` in turn until one connects, or until the peer's own dial reached us (a peer that
        is reachable: then two connections form, not one, and ours, both ends in the same role, is left)."""
        for addr in addrs:
            if self._direct(peer):
                break
            dial = asyncio.ensure_future(
                self.host.dial_from_listen_port(addr, peer, initiator=initiator, timeout=self.config.timeout)
            )
            try:
                while not dial.done() and not self._direct(peer):
                    changed = asyncio.ensure_future(self._changed.setdefault(peer, asyncio.Event()).wait())
                    try:
                        await asyncio.wait((dial, changed), return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        changed.cancel()
            finally:
                if not dial.done():
                    dial.cancel()
                    await asyncio.gather(dial, return_exceptions=True)
            if dial.cancelled():
                log.debug("dcutr: %s reached us directly while we dialed it", peer)
                break
            exc = dial.exception()
            if exc is None:
                return True
            if not isinstance(exc, (MimirliteError, OSError, asyncio.TimeoutError)):
                raise exc
            log.debug("dcutr: direct dial of %s at %s failed: %s", peer, addr, exc or type(exc).__name__)
        return self._direct(peer)
