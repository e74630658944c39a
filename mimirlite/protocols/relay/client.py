"""The circuit relay v2 client (libp2p specs ``relay/circuit-v2.md``): reservations on relays, kept and
renewed; circuits taken (STOP) and dialed (HOP CONNECT), each carrying a full libp2p connection (Noise +
yamux inside the relayed stream: ``Host.upgrade_over`` over a ``StreamTransport``).

A peer behind a NAT reserves on a relay and is reachable at ``<relay addr>/p2p-circuit/p2p/<its id>``;
``Host.dial`` of such an address goes through :meth:`RelayClient.dial` once a client runs on the host. STOP
is taken only from relays we hold a reservation on; a relayed connection that ends at the relay's limit
says so in the log.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mimirlite.aio import Service
from mimirlite.errors import (
    CloseKind,
    DialError,
    LocalError,
    MimirliteError,
    ProtocolError,
    ProtocolErrorKind,
    StreamResetError,
)
from mimirlite.identity import PeerId
from mimirlite.net.transport import StreamTransport
from mimirlite.protocols.relay.messages import (
    HOP_PROTOCOL,
    STOP_PROTOCOL,
    HopMessage,
    HopType,
    Limit,
    RelayLimits,
    RelayPeer,
    Status,
    StopMessage,
    StopType,
    decode_hop,
    decode_stop,
    encode_hop,
    encode_stop,
)
from mimirlite.wire import lp
from mimirlite.wire.multiaddr import Code, Multiaddr

if TYPE_CHECKING:
    from mimirlite.net.connection import Connection
    from mimirlite.net.host import Host
    from mimirlite.net.stream import Stream

log = logging.getLogger(__name__)

ANSWER_TIMEOUT = 10.0
"""Seconds a relay has to answer a HOP request, and a peer to send its STOP request."""
RENEW_AT = 0.75
"""A reservation is renewed when this share of its lifetime has passed."""
RETRY = (1.0, 60.0)
"""First and longest wait, in seconds, before reserving again on a relay that failed; it doubles."""
DATA_SHARE = 0.9
"""A relayed connection reset by the relay after carrying this share of its data limit (both ways)
ended at that limit: what we count and what the relay counted differ by what was in flight."""


class RelayRefusedError(DialError):
    """A relay answered a HOP request with another status than OK."""

    def __init__(self, relay: PeerId, status: Status | None, what: str) -> None:
        name = status.name if status is not None else "no status"
        super().__init__(f"relay {relay} refused {what}: {name}")
        self.status = status


@dataclass(frozen=True, slots=True)
class Held:
    """A reservation we hold: on which relay (reached at ``addr``), until when (Unix seconds), the limit
    its circuits have, and the address others reach us at through it."""

    relay: PeerId
    addr: str
    expire: int
    limit: Limit | None

    @property
    def circuit_addr(self) -> str:
        return f"{self.addr}/p2p-circuit"


def split_circuit(addr: str) -> tuple[str, PeerId]:
    """``<relay addr with /p2p/>/p2p-circuit/p2p/<target>`` -> (the relay's address, the target)."""
    m = Multiaddr.parse(addr)
    codes = [p.code for p, _ in m.components]
    if codes.count(Code.P2P_CIRCUIT) != 1 or codes[-2:] != [Code.P2P_CIRCUIT, Code.P2P]:
        raise DialError(f"{addr}: not <relay>/p2p-circuit/p2p/<peer>")
    text = str(m)
    relay_part, _, _ = text.partition("/p2p-circuit")
    target = m.peer_id
    assert target is not None
    if Multiaddr.parse(relay_part).peer_id is None:
        raise DialError(f"{addr}: the relay's part has no /p2p/<relay>")
    return relay_part, target


class RelayClient(Service):
    """Reservations on ``relays`` (multiaddrs with ``/p2p/``), kept while it runs; takes circuits from
    them and dials through any relay. ``async with RelayClient(host, relays) as client``."""

    def __init__(
        self, host: Host, relays: list[str] | tuple[str, ...] = (), limits: RelayLimits | None = None
    ) -> None:
        self.host = host
        self.relays = list(relays)
        self.limits = limits or RelayLimits()
        self.held: dict[PeerId, Held] = {}
        """The reservations we hold, by relay."""
        self._keepers: list[asyncio.Task[None]] = []
        self.on_reserved: list[Callable[[str], None]] = []
        """Called with our relayed address (``<relay>/p2p-circuit/p2p/<us>``) at each new reservation."""
        self.on_relayed: list[Callable[[Connection], None]] = []
        """Called with each connection a peer opened to us through a relay (DCUtR punches from there)."""
        self._limited: dict[Connection, Limit] = {}  # open relayed connections the relay limits
        self.ended: collections.Counter[str] = collections.Counter()
        """Our relayed connections (dialed or taken) that ended at a relay's limit, by which
        (``duration``, ``data``)."""

    def __repr__(self) -> str:
        return f"<RelayClient {len(self.held)} reservations>"

    @property
    def circuit_addrs(self) -> list[str]:
        """Where others reach us through our relays: ``<relay addr>/p2p-circuit/p2p/<our id>``."""
        return [f"{h.circuit_addr}/p2p/{self.host.peer_id}" for h in self.held.values()]

    async def _start(self) -> None:
        self.host.set_handler(STOP_PROTOCOL, self._serve_stop)
        self.host.circuit_dialer = self.dial
        ready = [asyncio.get_running_loop().create_future() for _ in self.relays]
        self._keepers = [
            self.host.spawn(self._keep(addr, first), "mimirlite-relay-reservation")
            for addr, first in zip(self.relays, ready, strict=True)
        ]
        if ready:
            await asyncio.wait(ready, timeout=ANSWER_TIMEOUT * 2)

    async def _stop(self) -> None:
        for task in self._keepers:
            task.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)
        if self.host.handler(STOP_PROTOCOL) == self._serve_stop:
            self.host.remove_handler(STOP_PROTOCOL)
        if self.host.circuit_dialer == self.dial:
            self.host.circuit_dialer = None
        self.held.clear()
        self.host.set_relayed_addrs(())

    def add_relay(self, addr: str) -> asyncio.Future[None]:
        """Hold a reservation on the relay at ``addr`` from now on; done after the first attempt."""
        first = asyncio.get_running_loop().create_future()
        self.relays.append(addr)
        self._keepers.append(self.host.spawn(self._keep(addr, first), "mimirlite-relay-reservation"))
        return first

    async def _keep(self, addr: str, first: asyncio.Future[None]) -> None:
        """Hold a reservation on the relay at ``addr``: reserve, renew before it expires, reserve again
        (with backoff) when the relay refuses or its connection ends."""
        pause = RETRY[0]
        held: Held | None = None
        while True:
            try:
                held = await self.reserve(addr)
            except LocalError:
                return  # the host is stopping
            except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
                log.warning("reservation on relay %s failed: %s; trying again in %g s", addr, exc, pause)
                if held is not None:  # the renewal failed: the reservation is not ours to announce
                    self._drop(held)
                    held = None
                if not first.done():
                    first.set_result(None)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY[1])
                continue
            pause = RETRY[0]
            if not first.done():
                first.set_result(None)
            conn = self.host.connections.get(held.relay)
            lifetime = max(1.0, held.expire - time.time())
            closed: asyncio.Future[None] = (
                conn.closed if conn is not None else asyncio.get_running_loop().create_future()
            )
            try:
                await asyncio.wait_for(asyncio.shield(closed), lifetime * RENEW_AT)
            except asyncio.TimeoutError:
                continue  # renew: the reservation stays announced until the answer replaces it
            log.info("connection to relay %s ended: reserving again", held.relay)
            self._drop(held)
            held = None

    def _drop(self, held: Held) -> None:
        if self.held.get(held.relay) is held:
            del self.held[held.relay]
            self.host.set_relayed_addrs(h.circuit_addr for h in self.held.values())

    async def reserve(self, addr: str) -> Held:
        """Reserve a slot on the relay at ``addr`` (with ``/p2p/``); the reservation."""
        conn = await self.host.dial(addr)
        relay = conn.remote_peer
        assert relay is not None
        stream, answer = await self._hop(conn, HopMessage(HopType.RESERVE))
        await stream.close()
        if answer.status is not Status.OK or answer.reservation is None:
            raise RelayRefusedError(relay, answer.status, "a reservation")
        plain = str(Multiaddr.parse(addr).without_peer_id())
        held = Held(relay, f"{plain}/p2p/{relay}", answer.reservation.expire, answer.limit)
        first = relay not in self.held
        self.held[relay] = held
        self.host.set_relayed_addrs(h.circuit_addr for h in self.held.values())
        if first:
            ours = f"{held.circuit_addr}/p2p/{self.host.peer_id}"
            log.info("reserved on relay %s: reachable at %s", relay, ours)
            for cb in list(self.on_reserved):
                cb(ours)
        return held

    async def _hop(self, conn: Connection, request: HopMessage) -> tuple[Stream, HopMessage]:
        stream = await self.host.open_on(conn, HOP_PROTOCOL)
        try:
            await stream.write(lp.encode_message(encode_hop(request)))
            body = await asyncio.wait_for(stream.read_message(self.limits.max_message_size), ANSWER_TIMEOUT)
            if body is None:
                raise ProtocolError(f"relay {conn.remote_peer} ended the stream without answering")
            try:
                answer, _ = decode_hop(body, self.limits)
            except ProtocolError:
                self.host.metrics.protocol_errors[ProtocolErrorKind.RELAY] += 1
                raise
            if answer.type is not HopType.STATUS:
                raise ProtocolError(f"relay {conn.remote_peer} answered {answer.type.name}")
        except BaseException:
            await stream.reset()
            raise
        return stream, answer

    async def dial(self, addr: str) -> Connection:
        """A connection to the peer at ``<relay addr>/p2p-circuit/p2p/<peer>``, through that relay."""
        relay_addr, target = split_circuit(addr)
        existing = self.host.connections.get(target)
        if existing is not None and existing.is_open:
            return existing
        relay_conn = await self.host.dial(relay_addr)
        relay = relay_conn.remote_peer
        assert relay is not None
        stream, answer = await self._hop(relay_conn, HopMessage(HopType.CONNECT, RelayPeer(target)))
        if answer.status is not Status.OK:
            await stream.reset()
            raise RelayRefusedError(relay, answer.status, f"a circuit to {target}")
        inner = await self.host.upgrade_over(StreamTransport(stream), initiator=True, expected_peer=target)
        log.info("connected to %s through relay %s (limit %s)", target, relay, _limit_text(answer.limit))
        self._watch(inner, relay, answer.limit)
        return inner

    async def _serve_stop(self, stream: Stream) -> None:
        relay = stream.remote_peer
        try:
            body = await asyncio.wait_for(stream.read_message(self.limits.max_message_size), ANSWER_TIMEOUT)
            if body is None:
                return
            offer, _ = decode_stop(body, self.limits)
        except asyncio.TimeoutError:
            return
        except ProtocolError:
            self.host.metrics.protocol_errors[ProtocolErrorKind.RELAY] += 1
            await self._answer_stop(stream, Status.MALFORMED_MESSAGE)
            return
        if relay not in self.held:
            log.info("STOP from %s refused: we hold no reservation there", relay)
            await self._answer_stop(stream, Status.PERMISSION_DENIED)
            return
        if offer.type is not StopType.CONNECT or offer.peer is None:
            await self._answer_stop(
                stream, Status.MALFORMED_MESSAGE if offer.peer is None else Status.UNEXPECTED_MESSAGE
            )
            return
        await self._answer_stop(stream, Status.OK)
        source = offer.peer.peer
        inner = await self.host.upgrade_over(StreamTransport(stream), initiator=False, expected_peer=source)
        log.info("%s connected through relay %s (limit %s)", source, relay, _limit_text(offer.limit))
        self._watch(inner, relay, offer.limit)
        for cb in list(self.on_relayed):
            cb(inner)
        await inner.closed  # the stream carries the connection until it ends

    async def _answer_stop(self, stream: Stream, status: Status) -> None:
        await stream.write(lp.encode_message(encode_stop(StopMessage(StopType.STATUS, status=status))))

    def limit_of(self, conn: Connection) -> Limit | None:
        """The relay's limit on ``conn``, a relayed connection of ours (None: unlimited, or not relayed)."""
        return self._limited.get(conn)

    def _watch(self, inner: Connection, relay: PeerId, limit: Limit | None) -> None:
        """Keep ``inner``'s limit while it is open. When it ends, tell whether it ended at the relay's
        limit: at WARNING with the limit named, counted in :attr:`ended`. The relay does not say why it
        reset the circuit, so it is read from what we saw: the duration (its announced limit is in whole
        seconds) or the bytes carried, both ways (JS circuit-relay-v2 counts both directions together,
        mimirlite's relay each way: a circuit at either cap carried at least ``limit.data`` in all), with
        its stream reset by the relay."""
        if limit is None or (limit.duration is None and limit.data is None):
            return
        loop = asyncio.get_running_loop()
        opened = loop.time()
        self._limited[inner] = limit
        transport = inner.transport

        def ended(_: object) -> None:
            self._limited.pop(inner, None)
            lasted = loop.time() - opened
            carried = 0
            if isinstance(transport, StreamTransport):
                carried = transport.bytes_in + transport.bytes_out
            reset = inner.close_kind is CloseKind.REMOTE and isinstance(inner.close_reason, StreamResetError)
            end = None
            if limit.duration is not None and lasted >= limit.duration * 0.95:
                end, why = "duration", f"at the relay's duration limit ({limit.duration} s)"
            elif limit.data is not None and reset and carried >= limit.data * DATA_SHARE:
                end, why = "data", f"at the relay's data limit ({limit.data} bytes; {carried} carried)"
            if end is not None:
                self.ended[end] += 1
                log.warning("relayed connection to %s through %s ended %s", inner.remote_peer, relay, why)
            else:
                log.info(
                    "relayed connection to %s through %s ended after %.1f s and %d bytes (its limits: %s)",
                    inner.remote_peer,
                    relay,
                    lasted,
                    carried,
                    _limit_text(limit),
                )

        inner.closed.add_done_callback(ended)


def _limit_text(limit: Limit | None) -> str:
    if limit is None or (limit.duration is None and limit.data is None):
        return "none"
    parts = []
    if limit.duration is not None:
        parts.append(f"{limit.duration} s")
    if limit.data is not None:
        parts.append(f"{limit.data} bytes")
    return ", ".join(parts)
