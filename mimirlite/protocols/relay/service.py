"""The circuit relay v2 service (HOP, libp2p specs ``relay/circuit-v2.md``): the asyncio shell over
``messages.py`` and ``resources.py``.

A peer RESERVEs a slot (``Reservations``: bounded in all and per address, an hour, dropped when its
connection to us ends); another peer CONNECTs to it: we open STOP on the reserving peer's connection, and
once it answers OK we carry the bytes both ways (``Circuits``: bounded per peer and in all, each with its
data cap each way and its deadline; at a limit both streams are reset and the reason logged). A request
over a relayed connection is refused: no relaying through relays.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mimirlite.aio import Service
from mimirlite.errors import MimirliteError, ProtocolError, ProtocolErrorKind
from mimirlite.identity import PeerId
from mimirlite.protocols.relay.messages import (
    HOP_PROTOCOL,
    STOP_PROTOCOL,
    HopMessage,
    HopType,
    RelayLimits,
    RelayPeer,
    Reservation,
    Status,
    StopMessage,
    StopType,
    decode_hop,
    decode_stop,
    encode_hop,
    encode_stop,
)
from mimirlite.protocols.relay.resources import (
    Circuit,
    CircuitEnd,
    Circuits,
    Direction,
    RelayResources,
    Reservations,
)
from mimirlite.wire import lp
from mimirlite.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from mimirlite.net.connection import Connection
    from mimirlite.net.host import Host
    from mimirlite.net.stream import Stream

log = logging.getLogger(__name__)

MESSAGE_TIMEOUT = 10.0
"""Seconds a peer has to send its HOP request, and the reserving peer to answer STOP."""
CHUNK = 64 * 1024
"""Bytes read from one side of a circuit at a time."""


@dataclass
class RelayMetrics:
    """What a relay service did since it started."""

    reservations: int = 0
    """Reservations granted (renewals included)."""
    circuits: int = 0
    """Circuits opened."""
    relayed_bytes: int = 0
    """Bytes carried, both ways, all circuits."""
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    """Requests refused, by the status answered (``reservation_refused``, ``no_reservation``, ...)."""
    ended: collections.Counter[str] = field(default_factory=collections.Counter)
    """Circuits ended at a limit, by which (``data``, ``duration``)."""


class RelayService(Service):
    """Serves HOP on ``host`` for others: ``async with RelayService(host) as relay``."""

    def __init__(
        self, host: Host, resources: RelayResources | None = None, limits: RelayLimits | None = None
    ) -> None:
        self.host = host
        self.resources = resources or RelayResources()
        self.limits = limits or RelayLimits()
        self.reservations = Reservations(self.resources)
        self.circuits = Circuits(self.resources)
        self.metrics = RelayMetrics()

    def __repr__(self) -> str:
        return f"<RelayService {len(self.reservations)} reservations, {len(self.circuits)} circuits>"

    async def _start(self) -> None:
        self.host.set_handler(HOP_PROTOCOL, self._serve_hop)
        self.host.on_disconnected.append(self._on_disconnected)

    async def _stop(self) -> None:
        if self.host.handler(HOP_PROTOCOL) == self._serve_hop:
            self.host.remove_handler(HOP_PROTOCOL)
        if self._on_disconnected in self.host.on_disconnected:
            self.host.on_disconnected.remove(self._on_disconnected)

    def _on_disconnected(self, conn: Connection) -> None:
        peer = conn.remote_peer
        if peer is not None and peer not in self.host.connections:
            self.reservations.remove(peer)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def _refuse(self, stream: Stream, status: Status, why: str) -> None:
        self.metrics.refused[status.name.lower()] += 1
        log.info("%r: %s from %s refused (%s): %s", self, "HOP", stream.remote_peer, status.name, why)
        await stream.write(lp.encode_message(encode_hop(HopMessage(HopType.STATUS, status=status))))

    async def _serve_hop(self, stream: Stream) -> None:
        try:
            body = await asyncio.wait_for(stream.read_message(self.limits.max_message_size), MESSAGE_TIMEOUT)
            if body is None:
                return
            request, _ = decode_hop(body, self.limits)
        except asyncio.TimeoutError:
            log.debug("%r: %s sent no HOP request in %g s", self, stream.remote_peer, MESSAGE_TIMEOUT)
            return
        except ProtocolError as exc:
            self.host.metrics.protocol_errors[ProtocolErrorKind.RELAY] += 1
            await self._refuse(stream, Status.MALFORMED_MESSAGE, str(exc))
            return
        if stream.connection.relayed:
            await self._refuse(stream, Status.PERMISSION_DENIED, "the request came over a relayed connection")
            return
        if request.type is HopType.RESERVE:
            await self._reserve(stream)
        elif request.type is HopType.CONNECT:
            await self._connect(stream, request)
        else:
            await self._refuse(stream, Status.UNEXPECTED_MESSAGE, f"a {request.type.name} is not a request")

    async def _reserve(self, stream: Stream) -> None:
        peer = stream.remote_peer
        address = stream.connection.remote_address
        ip = address[0] if address is not None else "?"
        held = self.reservations.reserve(peer, ip, self._now())
        if isinstance(held, Status):
            await self._refuse(stream, held, f"{len(self.reservations)} reservations held")
            return
        self.metrics.reservations += 1
        expire = int(time.time() + self.resources.reservation_ttl)
        addrs = tuple(Multiaddr.parse(a) for a in self.host.dialable_addrs)[: self.limits.max_addrs]
        answer = HopMessage(
            HopType.STATUS,
            reservation=Reservation(expire=expire, addrs=addrs),
            limit=self.resources.limit,
            status=Status.OK,
        )
        await stream.write(lp.encode_message(encode_hop(answer)))
        log.info("%r: reservation for %s until %d", self, peer, expire)

    async def _connect(self, stream: Stream, request: HopMessage) -> None:
        source = stream.remote_peer
        if request.peer is None:
            await self._refuse(stream, Status.MALFORMED_MESSAGE, "CONNECT without a peer")
            return
        target = request.peer.peer
        now = self._now()
        conn = self.host.connections.get(target)
        if self.reservations.get(target, now) is None or conn is None:
            await self._refuse(stream, Status.NO_RESERVATION, f"{target} holds no reservation here")
            return
        circuit = self.circuits.open(source, target, now)
        if isinstance(circuit, Status):
            await self._refuse(stream, circuit, f"{self.circuits.of(source)} circuits of {source}")
            return
        try:
            far = await self._open_stop(conn, source)
        except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
            self.circuits.close(circuit)
            await self._refuse(stream, Status.CONNECTION_FAILED, f"{target} did not take the circuit: {exc}")
            return
        self.metrics.circuits += 1
        log.info("%r: circuit %s -> %s opened", self, source, target)
        ok = HopMessage(HopType.STATUS, limit=self.resources.limit, status=Status.OK)
        try:
            await stream.write(lp.encode_message(encode_hop(ok)))
            await self._carry(circuit, stream, far)
        finally:
            self.circuits.close(circuit)

    async def _open_stop(self, conn: Connection, source: PeerId) -> Stream:
        """Open STOP to the reserving peer and have it take the circuit from ``source``."""
        far = await self.host.open_on(conn, STOP_PROTOCOL)
        try:
            offer = StopMessage(StopType.CONNECT, peer=RelayPeer(source), limit=self.resources.limit)
            await far.write(lp.encode_message(encode_stop(offer)))
            body = await asyncio.wait_for(far.read_message(self.limits.max_message_size), MESSAGE_TIMEOUT)
            if body is None:
                raise ProtocolError("STOP ended without an answer")
            answer, _ = decode_stop(body, self.limits)
            if answer.type is not StopType.STATUS or answer.status is not Status.OK:
                raise ProtocolError(f"STOP answered {answer.type.name} {answer.status}")
        except BaseException:
            await far.reset()
            raise
        return far

    async def _carry(self, circuit: Circuit, near: Stream, far: Stream) -> None:
        """Carry bytes both ways until both sides end, or a limit ends the circuit, or one side breaks
        (reset, or its connection lost): then both streams are reset, so the other side learns at once
        that the connection it carried is gone."""
        pending = {
            asyncio.ensure_future(self._pump(circuit, near, far, Direction.TO_DESTINATION)),
            asyncio.ensure_future(self._pump(circuit, far, near, Direction.TO_SOURCE)),
        }
        end: CircuitEnd | None = None
        broken: MimirliteError | None = None
        try:
            while pending and end is None and broken is None:
                left = None if circuit.deadline is None else max(0.0, circuit.deadline - self._now())
                done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    end = CircuitEnd.DURATION
                for pump in done:
                    exc = pump.exception()
                    if isinstance(exc, MimirliteError):
                        broken = broken or exc
                    else:
                        end = end or pump.result()
        finally:
            for pump in pending:
                pump.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if end is None and broken is not None:
            log.debug("%r: circuit %s -> %s broken: %s", self, circuit.source, circuit.destination, broken)
            await near.reset()
            await far.reset()
        if end is not None:
            self.metrics.ended[end.value] += 1
            log.info(
                "%r: circuit %s -> %s ended at its %s limit",
                self,
                circuit.source,
                circuit.destination,
                end.value,
            )
            await near.reset()
            await far.reset()

    async def _pump(
        self, circuit: Circuit, src: Stream, dst: Stream, direction: Direction
    ) -> CircuitEnd | None:
        """Copy ``src`` to ``dst`` within the circuit's data cap; the limit it hit, or None at the end.
        Raises what a reset or a lost connection on either side raises."""
        while data := await src.read(CHUNK):
            carried = circuit.carry(direction, len(data))
            if carried:
                await dst.write(data[:carried])
                self.metrics.relayed_bytes += carried
            if carried < len(data):
                return CircuitEnd.DATA
        await dst.close_write()
        return None
