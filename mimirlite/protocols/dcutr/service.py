"""DCUtR (``/libp2p/dcutr``, libp2p specs ``relay/DCUtR.md``) on a Host: the asyncio shell over
``holepunch.py``.

When a peer reaches us through a relay (we took the circuit: STOP), we initiate: over the relayed
connection we exchange our public addresses, and both sides dial each other from their listen ports at the
same moment (TCP simultaneous open), so that each NAT sees the other's SYN as the answer to its own. A
direct connection that forms takes over from the relayed one for new streams (``Host`` prefers it); the
relayed one ends with its last stream or at the relay's limit. When punching fails (a symmetric NAT), the
peers stay relayed, and the log says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from mimirlite.aio import Service
from mimirlite.errors import MimirliteError, ProtocolErrorKind
from mimirlite.net.transport import StreamTransport
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

    def on_relayed(self, conn: Connection) -> None:
        """A peer reached us through a relay (``RelayClient.on_relayed``): punch a hole to it."""
        self.host.spawn(self._punch_quietly(conn), "mimirlite-dcutr")

    async def _punch_quietly(self, conn: Connection) -> None:
        try:
            await self.punch(conn)
        except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
            log.info("dcutr: hole punch with %s failed: %s", conn.remote_peer, exc)

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
        if not isinstance(conn.transport, StreamTransport):
            log.info("dcutr: %s asked for a hole punch over a direct connection", stream.remote_peer)
            await stream.reset()
            return
        try:
            core = HolePunchResponder(self.own_addrs(), self._now(), self.config)
        except MimirliteError as exc:
            log.info("dcutr: no hole punch with %s: %s", stream.remote_peer, exc)
            await stream.reset()
            return
        await self._run(stream, core, stream.remote_peer, initiator=False)

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
                        await asyncio.sleep(max(0.0, event.at - self._now()))
                        ok = await self._dial(peer, event.addrs, initiator=initiator)
                        events = core.dial_result(ok, self._now())
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
                            log.debug(
                                "dcutr: attempt %d with %s failed: %s", event.attempt, peer, event.reason
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
            return core.handle_timer(self._now())
        if not data:
            return core.handle_timer(float("inf"))  # the peer ended the stream: the phase is over
        return core.receive_data(data, self._now())

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
