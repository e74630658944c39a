"""The Kademlia DHT on a Host (libp2p specs ``kad-dht/README.md``): the asyncio shell over the sans-IO parts.

:class:`KadDht` is one DHT, on one protocol: ``/ipfs/kad/1.0.0`` (public addresses only) or
``/ipfs/lan/kad/1.0.0`` (private and loopback ones). In server mode it answers FIND_NODE, GET_PROVIDERS,
ADD_PROVIDER, PING and GET_VALUE (never a record: it stores none) and refuses PUT_VALUE; in client mode it
serves nothing, so identify does not list the protocol and others leave it out of their tables, as
kad-dht does. Either way it looks up peers and providers. Its routing table holds the peers identify
shows serving the protocol (every connection's peer is identified), pruned when one fails to answer.

As kad-dht 14.2: a request opens a new stream, writes one length-prefixed message and reads one answer
(ADD_PROVIDER has none); an inbound stream may carry several requests in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mimirlite.aio import Service, wait_for
from mimirlite.errors import (
    AddressError,
    MimirliteError,
    ProtocolError,
    ProtocolErrorKind,
    RefusalReason,
)
from mimirlite.identity import PeerId
from mimirlite.net.rate import PeerRate
from mimirlite.protocols.kad.lookup import Lookup, LookupConfig, LookupFinished, Query
from mimirlite.protocols.kad.messages import (
    KadMessage,
    KadMessageError,
    MessageLimits,
    MessageType,
    PeerInfo,
    decode_message,
    encode_message,
)
from mimirlite.protocols.kad.providers import ProviderLimits, ProviderStore, Refusal, Scope, in_scope
from mimirlite.protocols.kad.routing import (
    MAX_REFRESH_CPL,
    AddResult,
    BucketFull,
    K,
    RoutingTable,
    kad_key,
    random_key_at,
)
from mimirlite.wire import lp
from mimirlite.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from mimirlite.net.connection import Connection
    from mimirlite.net.host import Host
    from mimirlite.net.stream import Stream
    from mimirlite.protocols.identify import Identify, IdentifyInfo

log = logging.getLogger(__name__)

KAD_PROTOCOL = "/ipfs/kad/1.0.0"
"""The public DHT (IPFS's Amino DHT): public addresses only."""
LAN_KAD_PROTOCOL = "/ipfs/lan/kad/1.0.0"
"""The LAN DHT: private, loopback and link-local addresses only."""
REPUBLISH_INTERVAL = 22 * 3600.0
"""Seconds between republishing our provider records (they live 48 h), as kad-dht's reprovider."""


@dataclass(frozen=True)
class DhtConfig:
    """Limits and timings of one DHT; every message and record is a peer's, hence hostile."""

    lookup: LookupConfig = field(default_factory=LookupConfig)
    """An iterative lookup's concurrency (alpha), result size (k), deadline and bound on peers asked, and
    the seconds one request (dial, open a stream, send, read the answer) may take, lookup or not."""
    messages: MessageLimits = field(default_factory=MessageLimits)
    """Caps on one message: size, peer entries, addresses per entry, key size."""
    providers: ProviderLimits = field(default_factory=ProviderLimits)
    """What the provider store keeps for others: keys, providers per key, addresses, record lifetime."""
    stream_idle_timeout: float = 10.0
    """Seconds an inbound stream may wait for its next request before it is closed."""
    max_requests_per_stream: int = 64
    """Requests answered on one inbound stream; the stream is closed after them."""
    add_provider_per_minute: int = 120
    """ADD_PROVIDER messages taken from one peer a minute; its stream is reset beyond that."""
    max_peer_checks: int = 8
    """Liveness checks of the oldest peer of a full bucket in flight; newcomers beyond it are dropped."""
    republish_interval: float = REPUBLISH_INTERVAL
    """Seconds between republishing what we provide."""
    refresh_interval: float = 600.0
    """Seconds between lookups of our own ID, which keep the routing table filled."""

    def __post_init__(self) -> None:
        for name in ("stream_idle_timeout", "republish_interval", "refresh_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("max_requests_per_stream", "add_provider_per_minute", "max_peer_checks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


class KadDht(Service):
    """One Kademlia DHT on ``host``: ``async with KadDht(host, identify) as dht``.

    ``server`` (default True) answers others' requests; a client only asks. ``identify`` feeds the routing
    table (peers that list ``protocol``); every new connection's peer is identified for it.
    """

    def __init__(
        self,
        host: Host,
        identify: Identify,
        *,
        protocol: str = LAN_KAD_PROTOCOL,
        server: bool = True,
        config: DhtConfig | None = None,
    ) -> None:
        if protocol not in (KAD_PROTOCOL, LAN_KAD_PROTOCOL):
            raise ValueError(f"unknown DHT protocol {protocol!r}")
        self.host = host
        self.identify = identify
        self.protocol = protocol
        self.scope = Scope.PUBLIC if protocol == KAD_PROTOCOL else Scope.LAN
        self.server = server
        self.config = config or DhtConfig()
        self.table = RoutingTable(host.peer_id, k=self.config.lookup.k)
        self.providers = ProviderStore(self.scope, self.config.providers)
        self._provided: set[bytes] = set()
        self._announced: list[Multiaddr] = []  # the addresses our records carry
        self._add_budget = PeerRate(self.config.add_provider_per_minute)
        self._checking: set[PeerId] = set()
        self._timers: list[asyncio.Task[None]] = []
        self.on_table_changed: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        mode = "server" if self.server else "client"
        return f"<KadDht {self.protocol} {mode}, {len(self.table)} peers>"

    # ---- lifecycle ----

    async def _start(self) -> None:
        if self.server:
            self.host.set_handler(self.protocol, self._serve)
        self.identify.on_identified.append(self._on_identified)
        self.host.on_connected.append(self._on_connected)
        self.host.on_addrs_changed.append(self._on_addrs_changed)
        for conn in self.host.connections.values():
            self._on_connected(conn)
        cfg = self.config
        self._timers = [
            self.host.spawn(self._every(cfg.refresh_interval, self.refresh), "mimirlite-kad-refresh"),
            self.host.spawn(self._every(cfg.republish_interval, self.republish), "mimirlite-kad-republish"),
        ]

    async def _stop(self) -> None:
        for task in self._timers:
            task.cancel()
        for task in self._timers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.server and self.host.handler(self.protocol) == self._serve:
            self.host.remove_handler(self.protocol)
        for listeners, cb in (
            (self.identify.on_identified, self._on_identified),
            (self.host.on_connected, self._on_connected),
            (self.host.on_addrs_changed, self._on_addrs_changed),
        ):
            if cb in listeners:
                listeners.remove(cb)  # type: ignore[arg-type]

    async def _every(self, interval: float, job: Callable[[], Awaitable[int]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except MimirliteError as exc:
                log.info("%r: periodic %s failed: %s", self, job.__name__, exc)

    # ---- the routing table ----

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _on_connected(self, conn: Connection) -> None:
        peer = conn.remote_peer
        if peer is not None and self.identify.info_of(peer) is None:
            self.host.spawn(self._identify_quietly(conn), "mimirlite-kad-identify")

    async def _identify_quietly(self, conn: Connection) -> None:
        try:
            await self.identify.identify(conn)
        except (MimirliteError, asyncio.TimeoutError) as exc:
            log.debug("%r: %s did not answer identify: %s", self, conn.remote_peer, exc)

    def _on_addrs_changed(self) -> None:
        """Our addresses changed (a relay reservation): publish our records with them now."""
        if self._provided and len(self.table):
            self.host.spawn(self._republish_quietly(), "mimirlite-kad-republish")

    async def _republish_quietly(self) -> None:
        try:
            await self.republish()
        except MimirliteError as exc:
            log.info("%r: publishing our records again failed: %s", self, exc)

    def _on_identified(self, info: IdentifyInfo) -> None:
        if self.protocol in info.protocols:
            self.add_peer(info.peer_id)
        elif info.peer_id in self.table:
            self.table.remove(info.peer_id)
            self._changed()

    def _changed(self) -> None:
        for cb in list(self.on_table_changed):
            cb()

    def add_peer(self, peer: PeerId) -> None:
        """Put ``peer`` (a DHT server whose addresses the host knows) in the routing table."""
        if peer == self.host.peer_id:
            return
        result = self.table.add(peer, self._now())
        if isinstance(result, BucketFull):
            if len(self._checking) < self.config.max_peer_checks and result.oldest not in self._checking:
                self._checking.add(result.oldest)
                self.host.spawn(self._check_oldest(result.oldest, peer), "mimirlite-kad-check")
        elif result is AddResult.ADDED:
            if len(self.table) == 1:  # the first peer: join the DHT through it
                self.host.spawn(self._joined(), "mimirlite-kad-join")
            self._changed()

    async def _joined(self) -> None:
        """Fill the routing table by a lookup of our own ID, then publish what we provide."""
        try:
            await self.refresh()
            if self._provided:
                await self.republish()
        except MimirliteError as exc:
            log.info("%r: joining the DHT failed: %s", self, exc)

    async def _check_oldest(self, oldest: PeerId, newcomer: PeerId) -> None:
        """Keep the oldest peer of a full bucket if it answers a PING, else put ``newcomer`` in its place."""
        try:
            alive = await self._ping(oldest)
            if alive:
                self.table.add(oldest, self._now())  # seen now: it moves to the bucket's end
            else:
                self.table.replace(oldest, newcomer, self._now())
                self._changed()
        finally:
            self._checking.discard(oldest)

    async def _ping(self, peer: PeerId) -> bool:
        try:
            answer = await self._request(peer, KadMessage(MessageType.PING))
        except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
            log.debug("%r: %s did not answer PING: %s", self, peer, exc)
            return False
        return answer.type is MessageType.PING

    def _failed(self, peer: PeerId, why: object) -> None:
        if self.table.remove(peer):
            log.debug("%r: %s pruned from the routing table: %s", self, peer, why)
            self._changed()

    # ---- addresses ----

    def _scoped(self, addrs: Iterable[str | Multiaddr]) -> list[Multiaddr]:
        out: list[Multiaddr] = []
        for a in addrs:
            try:
                m = a if isinstance(a, Multiaddr) else Multiaddr.parse(a)
            except AddressError:
                continue
            if in_scope(m, self.scope):
                out.append(m.without_peer_id())
        return out

    def _peer_info(self, peer: PeerId) -> PeerInfo:
        addrs = self._scoped(self.host.addrs_of(peer))[: self.config.messages.max_addrs_per_peer]
        return PeerInfo(peer, tuple(addrs))

    def own_addrs(self) -> list[Multiaddr]:
        """Our addresses as this DHT carries them (in its scope)."""
        return list(dict.fromkeys(self._scoped(self.host.announced_addrs)))

    def _learn(self, infos: Iterable[PeerInfo]) -> None:
        """Remember the in-scope TCP addresses of peers a response names, to dial them."""
        for info in infos:
            if info.peer == self.host.peer_id:
                continue
            for m in _addrs_of(info.peer, info.addrs):
                if not in_scope(m, self.scope):
                    continue
                try:
                    self.host.add_addrs(info.peer, [str(m)])
                except AddressError:
                    continue  # not TCP over IP: nothing we dial

    # ---- serving ----

    async def _serve(self, stream: Stream) -> None:
        cfg = self.config
        peer = stream.remote_peer
        for _ in range(cfg.max_requests_per_stream):
            try:
                body = await asyncio.wait_for(
                    stream.read_message(cfg.messages.max_message_size), cfg.stream_idle_timeout
                )
                if body is None:
                    return
                request, dropped = decode_message(body, cfg.messages)
            except asyncio.TimeoutError:
                log.debug("%r: %s sent no request in %g s", self, peer, cfg.stream_idle_timeout)
                return
            except ProtocolError:
                self.host.metrics.protocol_errors[ProtocolErrorKind.KAD] += 1
                raise  # the host logs it and resets the stream
            if dropped:
                self.host.metrics.refused[RefusalReason.KAD_OVER_CAP] += 1
                log.debug("%r: %s's %s: %d entries left out", self, peer, request.type.name, dropped)
            answer = self._answer(peer, request)
            if answer is not None:
                await stream.write(lp.encode_message(encode_message(answer)))

    def _answer(self, peer: PeerId, request: KadMessage) -> KadMessage | None:
        kind = request.type
        if kind is MessageType.PING:
            return KadMessage(MessageType.PING)
        if kind is MessageType.FIND_NODE:
            return KadMessage(kind, key=request.key, closer=self._closer(request.key, peer))
        if kind is MessageType.GET_PROVIDERS:
            now = self._now()
            found = tuple(PeerInfo(p.peer, p.addrs) for p in self.providers.get(request.key, now))
            return KadMessage(kind, key=request.key, closer=self._closer(request.key, peer), providers=found)
        if kind is MessageType.ADD_PROVIDER:
            self._take_providers(peer, request)
            return None
        if kind is MessageType.GET_VALUE:  # we store no records: "not found", and closer peers
            return KadMessage(kind, key=request.key, closer=self._closer(request.key, peer))
        # PUT_VALUE: refused, we store no records
        self.host.metrics.refused[RefusalReason.KAD_PUT_VALUE] += 1
        raise KadMessageError(f"{peer}: PUT_VALUE refused: this DHT stores no records")

    def _closer(self, key: bytes, asker: PeerId) -> tuple[PeerInfo, ...]:
        peers = self.table.closest(kad_key(key), self.config.lookup.k + 1)
        infos = (self._peer_info(p) for p in peers if p != asker)
        return tuple(i for i in infos if i.addrs)[: self.config.lookup.k]

    def _take_providers(self, sender: PeerId, request: KadMessage) -> None:
        now = self._now()
        if not self._add_budget.take(sender, now):
            self.host.metrics.refused[RefusalReason.KAD_ADD_PROVIDER_RATE] += 1
            raise KadMessageError(
                f"{sender}: over {self.config.add_provider_per_minute} ADD_PROVIDER messages a minute"
            )
        for info in request.providers:
            if info.peer != sender:  # a record only for its sender, as the spec says
                self.host.metrics.refused[RefusalReason.KAD_FOREIGN_PROVIDER] += 1
                log.info("%r: %s sent a provider record for %s: left out", self, sender, info.peer)
                continue
            result = self.providers.add(request.key, sender, _addrs_of(sender, info.addrs), now)
            if isinstance(result, Refusal):
                self.host.metrics.refused[RefusalReason.KAD_PROVIDER_STORE] += 1
                log.info("%r: provider record of %s refused: %s", self, sender, result.value)
            else:
                self._learn([info])

    # ---- asking ----

    async def _request(self, peer: PeerId, message: KadMessage) -> KadMessage:
        """Send ``message`` to ``peer`` on a new stream and read its answer (request timeout)."""
        return await wait_for(self._exchange(peer, message), self.config.lookup.request_timeout)

    async def _exchange(self, peer: PeerId, message: KadMessage) -> KadMessage:
        stream = await self.host.new_stream(peer, self.protocol)
        try:
            await stream.write(lp.encode_message(encode_message(message)))
            if message.type is MessageType.ADD_PROVIDER:
                await stream.close()
                return message
            body = await stream.read_message(self.config.messages.max_message_size)
            if body is None:
                raise KadMessageError(f"{peer} ended the stream without answering {message.type.name}")
            try:
                answer, dropped = decode_message(body, self.config.messages)
            except ProtocolError:
                self.host.metrics.protocol_errors[ProtocolErrorKind.KAD] += 1
                raise
            if dropped:
                self.host.metrics.refused[RefusalReason.KAD_OVER_CAP] += 1
            if answer.type is not message.type:
                raise KadMessageError(f"{peer} answered {message.type.name} with {answer.type.name}")
        except BaseException:
            await stream.reset()
            raise
        await stream.close()
        return answer

    async def _lookup(
        self, key: bytes, message: KadMessage, found: Callable[[PeerId, KadMessage], bool] | None = None
    ) -> LookupFinished:
        """An iterative lookup of ``key``, asking with ``message``; ``found`` returns True to stop early."""
        loop = asyncio.get_running_loop()
        target = kad_key(key)
        seeds = self.table.closest(target, self.config.lookup.k)
        lookup = Lookup(target, self.host.peer_id, seeds, loop.time(), self.config.lookup)
        answers: asyncio.Queue[tuple[PeerId, KadMessage | BaseException]] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def ask(peer: PeerId) -> None:
            try:
                answers.put_nowait((peer, await self._request(peer, message)))
            except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
                answers.put_nowait((peer, exc))

        events: list[Query | LookupFinished] = list(lookup.start(loop.time()))
        try:
            while True:
                for event in events:
                    if isinstance(event, LookupFinished):
                        return event
                    task = loop.create_task(ask(event.peer), name="mimirlite-kad-ask")
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                timer = lookup.get_timer()
                try:
                    wait = None if timer is None else max(0.0, timer - loop.time())
                    peer, got = await asyncio.wait_for(answers.get(), wait)
                except asyncio.TimeoutError:
                    events = list(lookup.handle_timer(loop.time()))
                    continue
                if isinstance(got, BaseException):
                    self._failed(peer, got)
                    events = list(lookup.receive_failure(peer, loop.time()))
                    continue
                self._learn(got.closer)
                self._learn(got.providers)
                events = list(lookup.receive_response(peer, (p.peer for p in got.closer), loop.time()))
                if found is not None and found(peer, got):
                    events += lookup.stop(loop.time())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def find_closest(self, key: bytes) -> list[PeerId]:
        """The k peers closest to ``key`` that answered a lookup, closest first."""
        done = await self._lookup(key, KadMessage(MessageType.FIND_NODE, key=key))
        return list(done.closest)

    async def find_providers(self, key: bytes, count: int = K) -> list[PeerInfo]:
        """Up to ``count`` providers of ``key`` (our own store first), with their in-scope addresses."""
        now = self._now()
        seen: dict[PeerId, PeerInfo] = {}
        for p in self.providers.get(key, now):
            seen[p.peer] = PeerInfo(p.peer, p.addrs)

        def found(_: PeerId, answer: KadMessage) -> bool:
            for info in answer.providers:
                if len(seen) >= count:
                    break
                addrs = tuple(a for a in _addrs_of(info.peer, info.addrs) if in_scope(a, self.scope))
                if info.peer not in seen or (addrs and not seen[info.peer].addrs):
                    seen[info.peer] = PeerInfo(info.peer, addrs)
            return len(seen) >= count

        if len(seen) < count:
            await self._lookup(key, KadMessage(MessageType.GET_PROVIDERS, key=key), found)
        return list(seen.values())[:count]

    async def find_peer(self, peer: PeerId) -> list[Multiaddr]:
        """The in-scope addresses of ``peer``, from a lookup of its ID (empty when not found)."""
        if self.host.addrs_of(peer):
            return self._scoped(self.host.addrs_of(peer))

        def found(_: PeerId, answer: KadMessage) -> bool:
            return any(i.peer == peer and i.addrs for i in answer.closer)

        key = peer.to_bytes()
        await self._lookup(key, KadMessage(MessageType.FIND_NODE, key=key), found)
        return self._scoped(self.host.addrs_of(peer))

    def add_provided(self, key: bytes) -> PeerInfo | None:
        """Provide ``key`` from now on: our own store holds the record (server mode) and it is republished.

        Returns the record others are sent, or None when we have no address in this DHT's scope.
        """
        self._provided.add(key)
        addrs = self.own_addrs()[: self.config.messages.max_addrs_per_peer]
        self._announced = addrs
        if not addrs:
            log.debug("%r: no %s address to provide %s with", self, self.scope.value, key.hex())
            return None
        if self.server:
            self.providers.add(key, self.host.peer_id, addrs, self._now())
        return PeerInfo(self.host.peer_id, tuple(addrs))

    async def provide(self, key: bytes) -> int:
        """Provide ``key`` (:meth:`add_provided`) and tell the k closest peers.

        Returns how many peers took the record: 0 when we have no address in scope or know no peer (the
        record is sent once the first peer is in the routing table).
        """
        me = self.add_provided(key)
        if me is None or not len(self.table):
            return 0
        closest = await self.find_closest(key)
        message = KadMessage(MessageType.ADD_PROVIDER, key=key, providers=(me,))
        outcomes = await asyncio.gather(*(self._request(p, message) for p in closest), return_exceptions=True)
        stored = sum(1 for o in outcomes if not isinstance(o, BaseException))
        log.info("%r: provided %s to %d of %d peers", self, key.hex(), stored, len(closest))
        return stored

    def unprovide(self, key: bytes) -> None:
        """Stop providing ``key``: our own store drops our record and it is not republished (records
        already stored elsewhere expire in 48 h)."""
        self._provided.discard(key)
        self.providers.remove(key, self.host.peer_id)

    async def republish(self) -> int:
        """Provide every key we provide again; returns the number of keys."""
        self.providers.expire(self._now())
        keys = list(self._provided)
        for key in keys:
            await self.provide(key)
        return len(keys)

    async def refresh(self) -> int:
        """Fill the routing table: a lookup of our own ID, then of a random key at each prefix length up
        to the deepest of the table's peers (as kad-dht's table refresh; kad-dht answers FIND_NODE with the
        peers closer to the key than the asker only, so our own ID alone learns nothing from it); and our
        records published again if our addresses changed (an interface came up or went away); returns the
        table's size."""
        if len(self.table):
            await self.find_closest(self.host.peer_id.to_bytes())
            cpl = 0
            while len(self.table) and cpl <= min(self.table.max_common_prefix(), MAX_REFRESH_CPL):
                await self.find_closest(random_key_at(self.table.local_key, cpl))
                cpl += 1
        self.providers.expire(self._now())
        if self._provided and self.own_addrs()[: self.config.messages.max_addrs_per_peer] != self._announced:
            log.info("%r: our addresses changed: publishing our records again", self)
            await self.republish()
        return len(self.table)


def _addrs_of(peer: PeerId, addrs: Iterable[Multiaddr]) -> list[Multiaddr]:
    """``peer``'s addresses as a record keeps them: without their trailing ``/p2p/<peer>`` (kad-dht 14.2
    sends its addresses with it), once each; one ending in another peer's ID does not reach ``peer``."""
    out: list[Multiaddr] = []
    for a in addrs:
        owner = a.peer_id
        if owner is not None:
            if owner != peer:
                continue
            a = a.without_peer_id()
        if a not in out:
            out.append(a)
    return out


def merge_peer_infos(found: Iterable[PeerInfo]) -> list[PeerInfo]:
    """One entry per peer, its addresses from every entry in turn."""
    merged: dict[PeerId, list[Multiaddr]] = {}
    for info in found:
        addrs = merged.setdefault(info.peer, [])
        addrs.extend(a for a in info.addrs if a not in addrs)
    return [PeerInfo(peer, tuple(addrs)) for peer, addrs in merged.items()]


class Dht(Service):
    """The two DHTs the latest MimirLLM runs: the LAN one (server mode by default) and the public one
    (client mode unless ``public_server``: until AutoNAT tells us we are reachable, a server there would
    be listed by others and fail them). Each can be left out (``lan=False``, ``public=False``)."""

    def __init__(
        self,
        host: Host,
        identify: Identify,
        *,
        lan: bool = True,
        public: bool = True,
        public_server: bool = False,
        config: DhtConfig | None = None,
    ) -> None:
        self.dhts: list[KadDht] = []
        if lan:
            self.dhts.append(KadDht(host, identify, protocol=LAN_KAD_PROTOCOL, config=config))
        if public:
            self.dhts.append(
                KadDht(host, identify, protocol=KAD_PROTOCOL, server=public_server, config=config)
            )
        if not self.dhts:
            raise ValueError("a Dht needs the LAN DHT, the public one, or both")

    def __repr__(self) -> str:
        return f"<Dht {self.dhts}>"

    async def _start(self) -> None:
        for dht in self.dhts:
            await dht.start()

    async def _stop(self) -> None:
        for dht in self.dhts:
            await dht.stop()

    def peers(self) -> list[PeerId]:
        """Every peer in any routing table."""
        return list(dict.fromkeys(p for d in self.dhts for p in d.table.peers()))

    async def provide(self, key: bytes) -> int:
        """Provide ``key`` on each DHT; how many peers took the record in all."""
        counts = await asyncio.gather(*(d.provide(key) for d in self.dhts), return_exceptions=True)
        for d, c in zip(self.dhts, counts, strict=True):
            if isinstance(c, BaseException) and not isinstance(c, MimirliteError):
                raise c
            if isinstance(c, BaseException):
                log.info("%r: providing %s failed: %s", d, key.hex(), c)
        return sum(c for c in counts if isinstance(c, int))

    def unprovide(self, key: bytes) -> None:
        for d in self.dhts:
            d.unprovide(key)

    async def find_providers(self, key: bytes, count: int = K) -> list[PeerInfo]:
        """Providers of ``key`` from both DHTs at once, one entry per peer."""
        results = await asyncio.gather(
            *(d.find_providers(key, count) for d in self.dhts), return_exceptions=True
        )
        found: list[PeerInfo] = []
        for d, r in zip(self.dhts, results, strict=True):
            if isinstance(r, BaseException):
                if not isinstance(r, MimirliteError):
                    raise r
                log.info("%r: finding providers of %s failed: %s", d, key.hex(), r)
            else:
                found.extend(r)
        return merge_peer_infos(found)[:count]

    async def refresh(self) -> int:
        """A lookup of our own ID on each DHT; the peers in all tables."""
        await asyncio.gather(*(d.refresh() for d in self.dhts), return_exceptions=True)
        return len(self.peers())
