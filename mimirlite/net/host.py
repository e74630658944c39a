"""The Host: listens, dials, keeps one connection per peer, and routes streams to handlers."""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

from mimirlite.aio import Service, ServiceState, SingleFlight
from mimirlite.errors import (
    AddressError,
    CloseKind,
    ConnectionClosedError,
    DialError,
    HandshakeError,
    HandshakeTimeoutError,
    LocalError,
    MimirliteError,
    PeerNotAllowedError,
    ProtocolError,
    ProtocolErrorKind,
    RefusalReason,
    RefusedByPeerError,
    StreamResetError,
)
from mimirlite.identity import KeyPair, PeerId
from mimirlite.metrics import INBOUND, OUTBOUND, HostMetrics
from mimirlite.net.addr import TcpAddr, expand_unspecified, parse_multiaddr
from mimirlite.net.budget import BufferBudget
from mimirlite.net.config import HostConfig
from mimirlite.net.connection import Connection
from mimirlite.net.heap import TRIM_INTERVAL, TRIM_RELEASED, malloc_trim
from mimirlite.net.pending import YOUNG, LogThrottle, PendingHandshakes, source_of
from mimirlite.net.shares import StreamShares
from mimirlite.net.stream import Stream
from mimirlite.net.transport import ByteTransport
from mimirlite.wire.multiaddr import Multiaddr
from mimirlite.wire.multistream import MultistreamDialer, MultistreamListener

log = logging.getLogger(__name__)

Handler = Callable[[Stream], Awaitable[None]]
ConnectionListener = Callable[[Connection], None]

LISTEN_BACKLOG = 1024
"""Connections the kernel queues for a listener before we accept them (capped by the system's
somaxconn): a flood that fills a short queue makes the kernel drop an honest peer's SYN, which it
then retransmits only a second or more later."""
ACCEPT_BATCH = 4
"""Connections one listener accepts per event-loop turn: a newcomer's first bytes are read before many
more arrive (a stalled pending handshake is evicted oldest first), and established connections are
served between batches."""
FD_RESERVE = 2
"""File descriptors held from the start and given back when accepting runs out of them (EMFILE,
ENFILE), so that established connections and the backend can still open what they need."""
ACCEPT_RETRY = (0.05, 2.0)
"""First and longest pause, in seconds, of accepting after it ran out of resources; it doubles between."""
LOBBY_SIZE = 256
"""Silent newcomers held at most while the pending table is full (see ``Host._admit``); the oldest goes
first. At a flood of about 1,000 silent connections a second, an honest dialer has about a quarter of a
second to speak."""
LOG_INTERVAL = 10.0
"""Refusals and early closes of inbound connections are logged once per reason per this many seconds,
then as one line with the count of the others."""
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Host(Service):
    """A libp2p host speaking TCP + Noise + yamux.

    ``async with Host(keypair, listen=[...]) as host`` starts listening and, on exit, closes every
    listener, connection and handler task. With ``config.allow_peers`` set it serves those peers only.
    Its limits and timeouts are ``config`` (:class:`HostConfig`); what it did is in :attr:`metrics`.
    """

    def __init__(
        self,
        keypair: KeyPair | None = None,
        listen: Iterable[str] = (),
        *,
        config: HostConfig | None = None,
    ) -> None:
        self.keypair = keypair or KeyPair.generate()
        self.peer_id: PeerId = self.keypair.peer_id
        self.config = config or HostConfig()
        self._listen = [parse_multiaddr(a) for a in listen]
        self._listeners: list[socket.socket] = []
        self._listen_addrs: list[TcpAddr] = []
        self._handlers: dict[str, Handler] = {}
        self._conns: dict[PeerId, Connection] = {}
        self._all_conns: set[Connection] = set()
        cfg = self.config
        self._pending: PendingHandshakes[Connection] = PendingHandshakes(
            cfg.max_pending_handshakes, cfg.max_pending_per_ip, cfg.first_byte_timeout
        )
        self._pending_socks: dict[Connection, socket.socket] = {}
        self._lobby: dict[socket.socket, tuple[asyncio.TimerHandle, Any]] = {}  # silent newcomers
        self._per_ip: dict[str, int] = {}
        self._throttle = LogThrottle(LOG_INTERVAL)
        self._log_timer: asyncio.TimerHandle | None = None
        self._trim_timer: asyncio.TimerHandle | None = None
        self._reserve: list[int] = []  # FD_RESERVE descriptors, while accepting is not paused
        self._accept_paused = False
        self._accept_retry: asyncio.TimerHandle | None = None
        self._accept_backoff = ACCEPT_RETRY[0]
        self._metrics = HostMetrics()
        self._stream_shares = StreamShares(self.config)
        self._budget = BufferBudget(self.config.max_buffered_total)
        self._dialing: SingleFlight[PeerId, Connection] = SingleFlight(
            lambda coro: self.spawn(coro, "mimirlite-dial"), cancelled=lambda _: LocalError("host is stopped")
        )
        self._addrs: dict[PeerId, list[TcpAddr]] = {}
        self._relayed: dict[PeerId, list[str]] = {}  # others' <relay>/p2p/<relay>/p2p-circuit addresses
        self._own_relayed: list[str] = []  # ours, the same shape
        self.on_addrs_changed: list[Callable[[], None]] = []
        """Called when the addresses we announce change (a relay reservation made or lost)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.circuit_dialer: Callable[[str], Awaitable[Connection]] | None = None
        """Dials ``.../p2p-circuit/p2p/<peer>`` addresses (a running relay client sets it)."""
        self.on_connected: list[ConnectionListener] = []
        self.on_disconnected: list[ConnectionListener] = []

    # ---- lifecycle ----

    @property
    def _stopped(self) -> bool:
        return self.state is ServiceState.STOPPED

    async def _start(self) -> None:
        """Open the listeners (:meth:`start`; a failure stops the host)."""
        loop = asyncio.get_running_loop()
        for addr in self._listen:
            sock = _listen_socket(addr)
            self._listeners.append(sock)
            name = sock.getsockname()
            self._listen_addrs.append(TcpAddr(name[0], name[1]))
        if self._listeners:
            self._take_reserve()
            if self.config.return_memory and malloc_trim() is not None:
                self._trim_timer = loop.call_later(TRIM_INTERVAL, self._on_trim_timer)
        for sock in self._listeners:
            loop.add_reader(sock.fileno(), self._on_acceptable, sock)
        for a in self._listen_addrs:
            log.info("listening on %s", a.multiaddr(self.peer_id))

    async def _stop(self) -> None:
        """Close listeners, connections and handler tasks; waits for them to finish (:meth:`stop`)."""
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            if not self._accept_paused:
                loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
        for sock in list(self._lobby):
            self._leave_lobby(sock)
            sock.close()
        for handle in (self._accept_retry, self._log_timer, self._trim_timer):
            if handle is not None:
                handle.cancel()
        self._accept_retry = self._log_timer = self._trim_timer = None
        self._release_reserve()
        for conn in list(self._all_conns):
            conn.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._flush_log(math.inf)

    @property
    def listen_addrs(self) -> list[str]:
        """Bound listen addresses, each ending in /p2p/<our peer ID>."""
        return [a.multiaddr(self.peer_id) for a in self._listen_addrs]

    @property
    def dialable_addrs(self) -> list[str]:
        """Like :attr:`listen_addrs`, with 0.0.0.0 and :: expanded to this machine's addresses."""
        return [e.multiaddr(self.peer_id) for a in self._listen_addrs for e in expand_unspecified(a)]

    @property
    def relayed_addrs(self) -> list[str]:
        """Where we are reachable through relays: ``<relay addr>/p2p-circuit/p2p/<our peer ID>``."""
        return [f"{a}/p2p/{self.peer_id}" for a in self._own_relayed]

    @property
    def announced_addrs(self) -> list[str]:
        """What we tell others (identify, the DHT): :attr:`dialable_addrs`, then :attr:`relayed_addrs`."""
        return [*self.dialable_addrs, *self.relayed_addrs]

    def set_relayed_addrs(self, addrs: Iterable[str]) -> None:
        """Our relayed addresses now (``<relay addr>/p2p/<relay>/p2p-circuit`` each), as a relay client
        holds reservations; :attr:`on_addrs_changed` is called when they changed."""
        new = list(dict.fromkeys(addrs))
        if new != self._own_relayed:
            self._own_relayed = new
            for cb in list(self.on_addrs_changed):
                cb()

    @property
    def metrics(self) -> HostMetrics:
        """This host's counters (connections, streams, bytes, refusals, protocol errors), up to date."""
        for conn in self._all_conns:
            conn.sync_metrics()
        return self._metrics

    @property
    def budget(self) -> BufferBudget:
        """The bytes this host's connections hold for their peers (``config.max_buffered_total``)."""
        return self._budget

    @property
    def connections(self) -> dict[PeerId, Connection]:
        """The open connection per connected peer."""
        return dict(self._conns)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``coro`` as a task of this host: :meth:`stop` cancels it and waits for it."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_trim_timer(self) -> None:
        """Give free heap pages back to the OS once much peer data was released (see ``return_memory``)."""
        budget = self._budget
        if budget.peak - budget.total >= TRIM_RELEASED:
            budget.reset_peak()
            trim = malloc_trim()
            if trim is not None:
                trim()
        self._trim_timer = asyncio.get_running_loop().call_later(TRIM_INTERVAL, self._on_trim_timer)

    # ---- handlers ----

    def set_handler(self, protocol: str, handler: Handler) -> None:
        """Serve ``protocol`` with ``async def handler(stream)``; the stream is closed after it returns."""
        self._handlers[protocol] = handler

    def handler(self, protocol: str) -> Handler | None:
        """The handler serving ``protocol``, if any."""
        return self._handlers.get(protocol)

    def remove_handler(self, protocol: str) -> None:
        self._handlers.pop(protocol, None)

    @property
    def protocols(self) -> list[str]:
        return list(self._handlers)

    def allows(self, peer: PeerId) -> bool:
        """Whether ``peer`` may use this host: always, unless ``config.allow_peers`` leaves it out."""
        allowed = self.config.allow_peers
        return allowed is None or peer in allowed

    # ---- peers and dialing ----

    def add_addrs(self, peer_id: PeerId, addrs: Iterable[str | TcpAddr]) -> None:
        """Remember addresses to dial ``peer_id`` at; ``HostConfig.max_known_peers`` bounds them."""
        known = self._addrs.get(peer_id)
        if known is None:
            known = self._addrs[peer_id] = []
            if len(self._addrs) > self.config.max_known_peers:
                self._forget_a_peer(peer_id)
        for a in addrs:
            if isinstance(a, str) and "/p2p-circuit" in a:
                self._add_relayed(peer_id, a)
                continue
            parsed = a if isinstance(a, TcpAddr) else parse_multiaddr(a)
            plain = TcpAddr(parsed.host, parsed.port)
            if plain not in known and len(known) < self.config.max_addrs_per_peer:
                known.append(plain)

    def _add_relayed(self, peer_id: PeerId, text: str) -> None:
        """Remember ``<relay addr>/p2p/<relay>/p2p-circuit[/p2p/<peer_id>]`` for ``peer_id``."""
        addr = Multiaddr.parse(text)
        if addr.peer_id == peer_id and addr.protocols[-1] == "p2p":
            addr = addr.without_peer_id()
        codes = addr.protocols
        if codes.count("p2p-circuit") != 1 or codes[-1] != "p2p-circuit" or codes[-2:-1] != ("p2p",):
            raise AddressError(f"{text}: not <relay addr>/p2p/<relay>/p2p-circuit")
        relayed = self._relayed.setdefault(peer_id, [])
        if str(addr) not in relayed and len(relayed) < self.config.max_addrs_per_peer:
            relayed.append(str(addr))

    def _forget_a_peer(self, newcomer: PeerId) -> None:
        """Forget the addresses of the least recently added peer that has no open connection."""
        for peer in self._addrs:
            if peer != newcomer and peer not in self._conns:
                del self._addrs[peer]
                self._relayed.pop(peer, None)
                return

    def addrs_of(self, peer_id: PeerId) -> list[str]:
        """The addresses we know for ``peer_id``: direct ones first, then through relays."""
        direct = [a.multiaddr(peer_id) for a in self._addrs.get(peer_id, [])]
        return direct + [f"{r}/p2p/{peer_id}" for r in self._relayed.get(peer_id, [])]

    async def dial(self, target: str | PeerId) -> Connection:
        """Connect to a multiaddr (with /p2p/ it is verified) or to a peer whose addresses we know.

        Reuses the open connection to the same peer; concurrent dials of one peer share one attempt
        (a task of the host, which a cancelled caller leaves going for the others). Raises DialError,
        PeerIdMismatchError.
        """
        self.check_running()
        if isinstance(target, PeerId):
            peer_id: PeerId | None = target
            addrs = self._addrs.get(target, [])
            relayed = [f"{r}/p2p/{target}" for r in self._relayed.get(target, [])]
            if not addrs and not relayed and target not in self._conns:
                raise DialError(f"no known address for {target}")
        elif "/p2p-circuit" in target:
            if self.circuit_dialer is None:
                raise DialError(f"{target}: a relayed address, and no relay client runs on this host")
            return await self.circuit_dialer(target)
        else:
            addr = parse_multiaddr(target)
            peer_id = addr.peer_id
            addrs = [addr]
            relayed = []
        if peer_id is not None:
            conn = self._conns.get(peer_id)
            if conn is not None and conn.is_open:
                return conn
            known = peer_id
            if relayed:
                return await self._dialing.run(peer_id, lambda: self._dial_peer(addrs, relayed, known))
            return await self._dialing.run(peer_id, lambda: self._dial_addrs(addrs, known))
        return await self._dial_addrs(addrs, None)

    async def _dial_peer(
        self, addrs: Sequence[TcpAddr], relayed: Sequence[str], peer_id: PeerId
    ) -> Connection:
        """Dial ``peer_id`` directly, then through its relays (when a relay client runs on this host)."""
        errors: list[str] = []
        if addrs:
            try:
                return await self._dial_addrs(addrs, peer_id)
            except DialError as exc:
                errors.append(str(exc))
        if self.circuit_dialer is None:
            errors.append(f"{len(relayed)} relayed addresses, and no relay client runs on this host")
        else:
            for addr in relayed:
                try:
                    return await self.circuit_dialer(addr)
                except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
                    errors.append(f"{addr}: {exc or type(exc).__name__}")
        raise DialError(f"could not dial {peer_id}: " + "; ".join(errors))

    async def _dial_addrs(self, addrs: Sequence[TcpAddr], peer_id: PeerId | None) -> Connection:
        errors: list[str] = []
        for addr in addrs:
            try:
                return await asyncio.wait_for(self._dial_one(addr, peer_id), self.config.dial_timeout)
            except (OSError, asyncio.TimeoutError, ProtocolError) as exc:
                reason = str(exc) or type(exc).__name__
                log.debug("dial %s failed: %s", addr.multiaddr(peer_id), reason)
                if isinstance(exc, ProtocolError) and peer_id is not None:
                    raise
                errors.append(f"{addr.multiaddr(peer_id)}: {reason}")
        raise DialError("could not dial: " + "; ".join(errors))

    async def _dial_one(self, addr: TcpAddr, peer_id: PeerId | None) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: self._new_connection(initiator=True, expected_peer=peer_id), addr.host, addr.port
        )
        try:
            await conn.upgrade()
        except HandshakeError as exc:
            conn.fail(exc)
            if conn.remote_peer is not None and conn.input_ended:
                # Authenticated, then closed before the muxer was agreed: an allowlist refused us.
                raise RefusedByPeerError(
                    f"{conn.remote_peer} closed the connection right after the handshake: "
                    f"it does not accept our peer ID {self.peer_id} (not on its allowlist?)"
                ) from exc
            raise
        except BaseException as exc:
            conn.fail(exc)
            raise
        assert conn.remote_peer is not None
        self.add_addrs(conn.remote_peer, [addr])
        self._register(conn)
        return conn

    async def dial_from_listen_port(
        self, addr: str | Multiaddr, peer_id: PeerId, *, initiator: bool, timeout: float
    ) -> Connection:
        """A direct connection to ``peer_id`` at ``addr`` from our listen port (a hole punch: both peers
        dial at once, TCP simultaneous open, and each NAT lets the other's SYN in). Both ends dialed, so
        the roles are given: ``initiator`` runs the handshake as the dialer (DCUtR's initiator does)."""
        self.check_running()
        target = parse_multiaddr(str(addr))
        source = next((a for a in self._listen_addrs if a.is_ip6 == target.is_ip6), None)
        if source is None:
            raise DialError(f"no listen address to punch from toward {addr}")
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if target.is_ip6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((source.host, source.port))
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (target.host, target.port)), timeout)
            _, conn = await loop.create_connection(
                lambda: self._new_connection(initiator=initiator, expected_peer=peer_id), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        try:
            await asyncio.wait_for(conn.upgrade(), self.config.handshake_timeout)
        except BaseException as exc:
            conn.fail(exc)
            raise
        self._register(conn)
        return conn

    def _new_connection(self, *, initiator: bool, expected_peer: PeerId | None = None) -> Connection:
        return Connection(
            self.keypair,
            self.config,
            initiator=initiator,
            on_stream=self._on_stream,
            on_close=self._on_close,
            expected_peer=expected_peer,
            accept_peer=None if initiator or self.config.allow_peers is None else self.allows,
            metrics=self._metrics,
            shares=self._stream_shares,
            budget=self._budget,
        )

    async def upgrade_over(
        self, transport: ByteTransport, *, initiator: bool, expected_peer: PeerId | None = None
    ) -> Connection:
        """Upgrade a libp2p connection (Noise, yamux) over ``transport`` (e.g. a
        :class:`~mimirlite.net.transport.StreamTransport`: a stream of another connection) and register
        it as a connection to its peer; ``expected_peer`` is verified. The responder applies the
        allowlist (PeerNotAllowedError). Raises what :meth:`Connection.upgrade` raises, or
        asyncio.TimeoutError after ``config.handshake_timeout``; the transport is closed then.
        """
        self.check_running()
        conn = self._new_connection(initiator=initiator, expected_peer=expected_peer)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        try:
            await asyncio.wait_for(conn.upgrade(), self.config.handshake_timeout)
        except BaseException as exc:
            conn.fail(exc)
            raise
        self._register(conn)
        return conn

    # ---- inbound connections ----

    @property
    def _pending_inbound(self) -> int:
        """Inbound connections still upgrading."""
        return len(self._pending)

    def _on_acceptable(self, listener: socket.socket) -> None:
        if self._accept_paused:  # another listener paused accepting earlier in this loop turn
            return
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                self._accept_backoff = ACCEPT_RETRY[0]  # caught up: a later shortage starts afresh
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause_accepting(exc)
                else:
                    self._log_inbound("accept_error", "accepting a connection failed: %s", exc)
                return
            self._accepted(sock, addr)

    def _accepted(self, sock: socket.socket, addr: Any) -> None:
        sock.setblocking(False)
        self._admit(sock, addr, waited=False)

    def _admit(self, sock: socket.socket, addr: Any, *, waited: bool) -> None:
        """Admit an accepted connection (its handshake runs in a task), or close it at a limit. At a full
        pending table with no stalled connection to replace, a newcomer that has not spoken yet waits in
        the lobby until it does (an honest dialer speaks at once) or for YOUNG seconds, then is tried
        again: a silent flood cannot make an honest peer's first bytes arrive too late."""
        ip = str(addr[0])
        where = f"{ip}:{addr[1]}"
        refusal = self._refusal(ip)
        if refusal is None:
            conn = self._new_connection(initiator=False)
            loop = asyncio.get_running_loop()
            eager = _has_bytes(sock)
            admission = self._pending.admit(conn, source_of(ip), loop.time(), self._has_unread, eager=eager)
            if admission.refused is not None:
                conn.discard()
                if not waited and not eager and not self._stopped:
                    self._wait_in_lobby(sock, addr)
                    return
                cfg = self.config
                if admission.refused == RefusalReason.PENDING_HANDSHAKES:
                    limit = f"{len(self._pending)} handshakes in progress (max_pending_handshakes)"
                else:
                    limit = f"{self._pending.count(source_of(ip))} handshakes in progress from {ip} "
                    limit += "(max_pending_per_ip)"
                refusal = admission.refused, f"{limit}, none stalled for {cfg.first_byte_timeout:g} s"
        if refusal is not None:
            self._refuse(sock, where, *refusal)
            return
        if isinstance(admission.evicted, Connection):
            self._evict(admission.evicted, where, admission.quiet)
        conn.remote_address = (ip, int(addr[1]))  # known before its transport is made
        conn.counted_ip = ip
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self._pending_socks[conn] = sock
        conn.on_progress = lambda: self._pending.progress(conn, loop.time())
        self.spawn(self._accept(conn, sock), "mimirlite-accept")

    def _refuse(self, sock: socket.socket, where: str, reason: RefusalReason, detail: str) -> None:
        self._metrics.refused[reason] += 1
        self._log_inbound(reason, "refusing inbound connection from %s: %s", where, detail)
        sock.close()

    def _wait_in_lobby(self, sock: socket.socket, addr: Any) -> None:
        """Hold a silent newcomer (see :meth:`_admit`); the lobby keeps the newest LOBBY_SIZE, each with
        its timer and address."""
        loop = asyncio.get_running_loop()
        if len(self._lobby) >= LOBBY_SIZE:
            oldest, (_, oldest_addr) = next(iter(self._lobby.items()))
            self._leave_lobby(oldest)
            where = f"{oldest_addr[0]}:{oldest_addr[1]}"
            self._refuse(
                oldest, where, RefusalReason.PENDING_HANDSHAKES, "silent while the pending table was full"
            )
        loop.add_reader(sock.fileno(), self._lobby_ready, sock)
        self._lobby[sock] = (loop.call_later(YOUNG, self._lobby_ready, sock), addr)

    def _leave_lobby(self, sock: socket.socket) -> Any:
        """Take ``sock`` out of the lobby; its address (None if it was not there)."""
        entry = self._lobby.pop(sock, None)
        if entry is None:
            return None
        entry[0].cancel()
        asyncio.get_running_loop().remove_reader(sock.fileno())
        return entry[1]

    def _lobby_ready(self, sock: socket.socket) -> None:
        """A newcomer in the lobby spoke (or waited YOUNG s): try it again."""
        addr = self._leave_lobby(sock)
        if addr is not None:
            self._admit(sock, addr, waited=True)

    def _has_unread(self, conn: Connection) -> bool:
        """Whether pending ``conn`` holds bytes its upgrade has not processed yet (not stalled, then)."""
        sock = self._pending_socks.get(conn)
        return sock is not None and _has_bytes(sock)

    def _forget_pending(self, conn: Connection) -> None:
        self._pending.remove(conn)
        self._pending_socks.pop(conn, None)

    def _refusal(self, ip: str) -> tuple[RefusalReason, str] | None:
        """Why a new inbound connection from ``ip`` is refused at a connection limit (reason, detail)."""
        cfg = self.config
        if len(self._all_conns) >= cfg.max_connections:
            return RefusalReason.CONNECTIONS, f"{len(self._all_conns)} connections (max_connections)"
        if self._per_ip.get(ip, 0) >= cfg.max_connections_per_ip:
            return (
                RefusalReason.CONNECTIONS_PER_IP,
                f"{self._per_ip[ip]} connections from {ip} (max_connections_per_ip)",
            )
        return None

    def _evict(self, victim: Connection, newcomer: str, quiet: float) -> None:
        self._metrics.refused[RefusalReason.EVICTED_PENDING] += 1
        self._log_inbound(
            RefusalReason.EVICTED_PENDING,
            "closing pending inbound connection from %s: stalled (no handshake step completed in %.3g s), "
            "its place taken by %s (max_pending_handshakes/max_pending_per_ip)",
            _host_port(victim),
            quiet,
            newcomer,
        )
        victim.fail(
            ConnectionClosedError("pending handshake evicted by a newer connection"), CloseKind.EVICTED
        )

    async def _accept(self, conn: Connection, sock: socket.socket) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        try:
            if not conn.is_closed:
                await loop.connect_accepted_socket(lambda: conn, sock)
            if conn.is_closed:  # evicted (or the host stopped) before its transport was made
                transport = conn.transport
                if transport is not None:
                    transport.close()
                else:
                    sock.close()
                conn.fail(ConnectionClosedError("closed during the upgrade"))
                return
            await asyncio.wait_for(conn.upgrade(), cfg.handshake_timeout)
        except HandshakeTimeoutError as exc:
            if conn.close_kind is not CloseKind.EVICTED:
                self._metrics.refused[exc.kind] += 1
                self._log_inbound(exc.kind, "closing inbound connection from %s: %s", _host_port(conn), exc)
                conn.fail(exc)
            return
        except asyncio.TimeoutError:
            self._metrics.refused[RefusalReason.HANDSHAKE_TIMEOUT] += 1
            self._log_inbound(
                RefusalReason.HANDSHAKE_TIMEOUT,
                "inbound connection from %s: upgrade timed out",
                _host_port(conn),
            )
            conn.fail(ConnectionClosedError("handshake timeout"))
            return
        except PeerNotAllowedError as exc:
            log.warning("refusing connection from %s at %s: not on the allowlist", exc.peer, _host_port(conn))
            self._metrics.refused[RefusalReason.ALLOWLIST] += 1
            conn.fail(exc)
            return
        except (MimirliteError, OSError) as exc:
            if conn.close_kind is not CloseKind.EVICTED:
                msg = "inbound connection from %s failed to upgrade: %s"
                self._log_inbound("upgrade_failed", msg, _host_port(conn), exc)
                if isinstance(exc, ProtocolError):
                    self._metrics.protocol_errors[ProtocolErrorKind.UPGRADE] += 1
                conn.fail(exc)
            return
        except BaseException as exc:
            if conn.transport is None:
                sock.close()
            conn.fail(exc)
            raise
        finally:
            self._forget_pending(conn)
        if self._stopped:
            conn.close()
            return
        self._register(conn)

    # ---- running out of file descriptors ----

    def _take_reserve(self) -> bool:
        """Hold FD_RESERVE descriptors; False (holding none) when the process is out of them."""
        while len(self._reserve) < FD_RESERVE:
            try:
                self._reserve.append(os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
            except OSError:
                self._release_reserve()
                return False
        return True

    def _release_reserve(self) -> None:
        reserve, self._reserve = self._reserve, []
        for fd in reserve:
            os.close(fd)

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors (or memory): stop accepting for a while and give back the reserve."""
        loop = asyncio.get_running_loop()
        self._accept_paused = True
        for sock in self._listeners:
            loop.remove_reader(sock.fileno())
        self._release_reserve()
        delay = self._accept_backoff
        self._accept_backoff = min(2 * delay, ACCEPT_RETRY[1])
        self._metrics.refused[RefusalReason.ACCEPT_PAUSED] += 1
        self._log_inbound(
            RefusalReason.ACCEPT_PAUSED,
            "not accepting connections for %g s: %s (established connections carry on)",
            delay,
            exc.strerror or exc,
        )
        self._accept_retry = loop.call_later(delay, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._accept_retry = None
        if self._stopped:
            return
        loop = asyncio.get_running_loop()
        if not self._take_reserve():  # still out: wait longer
            delay = self._accept_backoff
            self._accept_backoff = min(2 * delay, ACCEPT_RETRY[1])
            self._accept_retry = loop.call_later(delay, self._resume_accepting)
            return
        self._accept_paused = False
        for sock in self._listeners:
            loop.add_reader(sock.fileno(), self._on_acceptable, sock)

    # ---- logging a flood in few lines ----

    def _log_inbound(self, reason: str, msg: str, *args: object) -> None:
        """Log a refused or early-closed inbound connection: the first of ``reason`` per LOG_INTERVAL,
        then one line with the count of the others."""
        now = asyncio.get_running_loop().time()
        self._flush_log(now)
        if self._throttle.allow(reason, now):
            log.warning(msg, *args)
        elif self._log_timer is None:
            self._schedule_log_flush()

    def _schedule_log_flush(self) -> None:
        due = self._throttle.next_due()
        if due is not None and not self._stopped:
            self._log_timer = asyncio.get_running_loop().call_at(due, self._on_log_timer)

    def _on_log_timer(self) -> None:
        self._log_timer = None
        self._flush_log(asyncio.get_running_loop().time())
        self._schedule_log_flush()

    def _flush_log(self, now: float) -> None:
        for reason, count in self._throttle.due(now):
            text = _REASON_TEXT.get(reason, "{n} more inbound connections refused: " + reason)
            log.warning("%s in the last %g s", text.format(n=count), self._throttle.interval)

    def _register(self, conn: Connection) -> None:
        if conn.is_closed:
            return
        peer = conn.remote_peer
        assert peer is not None
        self._all_conns.add(conn)
        m = self._metrics
        m.connections_opened += 1
        m.connections_current += 1
        direction = OUTBOUND if conn.initiator else INBOUND
        m.connections_opened_by_direction[direction] += 1
        m.connections_current_by_direction[direction] += 1
        current = self._conns.get(peer)
        if current is None or not current.is_open or (current.relayed and not conn.relayed):
            self._conns[peer] = conn  # a direct connection takes over from a relayed one
        log.debug("connected %r", conn)
        for cb in self.on_connected:
            cb(conn)

    def _on_close(self, conn: Connection) -> None:
        self._forget_pending(conn)
        ip = conn.counted_ip
        if ip is not None:
            conn.counted_ip = None
            left = self._per_ip[ip] - 1
            if left:
                self._per_ip[ip] = left
            else:
                del self._per_ip[ip]
        if conn not in self._all_conns:
            return
        self._all_conns.discard(conn)
        m = self._metrics
        m.connections_closed += 1
        m.connections_current -= 1
        m.connections_current_by_direction[OUTBOUND if conn.initiator else INBOUND] -= 1
        m.closed[conn.close_kind or CloseKind.LOCAL] += 1
        peer = conn.remote_peer
        if peer is not None and self._conns.get(peer) is conn:
            del self._conns[peer]
            for other in self._all_conns:
                if other.remote_peer == peer and other.is_open:
                    self._conns[peer] = other
                    break
        log.debug("disconnected %r: %s", conn, conn.close_reason)
        for cb in self.on_disconnected:
            cb(conn)

    def check_running(self) -> None:
        """LocalError once the host is stopped."""
        if self._stopped:
            raise LocalError("host is stopped")

    # ---- streams ----

    async def new_stream(
        self, target: str | PeerId, protocols: str | Sequence[str], *, early: bytes = b""
    ) -> Stream:
        """Open a stream to ``target`` (multiaddr or known peer) for the first protocol it accepts.

        Raises ProtocolNotSupportedError when the remote refuses them all. ``early``: see :meth:`open_on`.
        """
        conn = await self.dial(target)
        return await self.open_on(conn, protocols, early=early)

    async def open_on(
        self, conn: Connection, protocols: str | Sequence[str], *, early: bytes = b""
    ) -> Stream:
        """Open a stream on ``conn`` and negotiate one of ``protocols``.

        ``early``: the first bytes of the protocol, written with the proposal instead of after its
        acceptance (one protocol only): the request of a protocol whose listener waits for it reaches the
        handler a round trip sooner. When the protocol is refused they are lost with the stream."""
        protos = [protocols] if isinstance(protocols, str) else list(protocols)
        if early and len(protos) != 1:
            raise ValueError("early data goes with one protocol only")
        stream = conn.open_stream()
        ms = MultistreamDialer(protos)
        try:
            await asyncio.wait_for(self._negotiate(stream, ms, early), self.config.negotiate_timeout)
        except BaseException:
            await stream.reset()
            raise
        stream.protocol = ms.selected
        return stream

    async def _negotiate(
        self, stream: Stream, ms: MultistreamDialer | MultistreamListener, early: bytes = b""
    ) -> None:
        out = ms.data_to_send() + early
        if out:
            await stream.write(out)
        while ms.selected is None:
            data = await stream.read()
            if not data:
                raise StreamResetError("stream ended during protocol negotiation")
            ms.receive_data(data)
            out = ms.data_to_send()
            if out:
                await stream.write(out)
        stream.unread(ms.leftover)

    def _on_stream(self, stream: Stream) -> None:
        self.spawn(self._serve(stream), "mimirlite-stream")

    async def _serve(self, stream: Stream) -> None:
        if not self.allows(stream.remote_peer):  # on a connection we dialed
            log.info("%r: refusing a stream from a peer not on the allowlist", stream)
            await stream.reset()
            return
        ms = MultistreamListener(self._handlers.__contains__)
        try:
            await asyncio.wait_for(self._negotiate(stream, ms), self.config.negotiate_timeout)
        except (MimirliteError, asyncio.TimeoutError) as exc:
            log.info("%r: inbound negotiation failed: %s", stream, exc or "timeout")
            if isinstance(exc, ProtocolError):
                self._metrics.protocol_errors[ProtocolErrorKind.NEGOTIATION] += 1
            await stream.reset()
            return
        protocol = ms.selected
        assert protocol is not None
        stream.protocol = protocol
        handler = self._handlers.get(protocol)
        if handler is None:
            await stream.reset()
            return
        try:
            await handler(stream)
        except asyncio.CancelledError:
            await stream.reset()
            raise
        except MimirliteError as exc:
            log.info("%r: handler ended: %s", stream, exc)
            await stream.reset()
        except Exception:
            log.exception("%r: handler failed", stream)
            await stream.reset()
        else:
            await stream.close()


_REASON_TEXT = {
    RefusalReason.CONNECTIONS: "{n} more inbound connections refused (max_connections)",
    RefusalReason.CONNECTIONS_PER_IP: "{n} more inbound connections refused (max_connections_per_ip)",
    RefusalReason.PENDING_HANDSHAKES: "{n} more inbound connections refused (max_pending_handshakes)",
    RefusalReason.PENDING_HANDSHAKES_PER_IP: "{n} more inbound connections refused (max_pending_per_ip)",
    RefusalReason.EVICTED_PENDING: "{n} more pending inbound connections evicted while stalled",
    RefusalReason.FIRST_BYTE_TIMEOUT: (
        "{n} more inbound connections closed: nothing received (first_byte_timeout)"
    ),
    RefusalReason.HANDSHAKE_STEP_TIMEOUT: (
        "{n} more inbound connections closed: an upgrade step took too long (handshake_step_timeout)"
    ),
    RefusalReason.HANDSHAKE_TIMEOUT: (
        "{n} more inbound connections closed: upgrade timed out (handshake_timeout)"
    ),
    RefusalReason.ACCEPT_PAUSED: "accepting paused {n} more times: out of file descriptors",
    "upgrade_failed": "{n} more inbound connections failed to upgrade",
    "accept_error": "{n} more failed accepts",
}


def _has_bytes(sock: socket.socket) -> bool:
    """Whether the peer of non-blocking ``sock`` has sent bytes not read yet."""
    if sock.fileno() < 0:
        return False
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except OSError:  # nothing to read (BlockingIOError), or the socket failed
        return False


def _listen_socket(addr: TcpAddr) -> socket.socket:
    """A non-blocking listening TCP socket bound to ``addr`` (IPv6 sockets are IPv6 only)."""
    family = socket.AF_INET6 if addr.is_ip6 else socket.AF_INET
    info = socket.getaddrinfo(addr.host, addr.port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    # SO_REUSEPORT: a hole punch dials from the listen port (Host.dial_from_listen_port)
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    sock = socket.create_server(info[0][4], family=family, backlog=LISTEN_BACKLOG, reuse_port=reuse_port)
    sock.setblocking(False)
    return sock


def _host_port(conn: Connection) -> str:
    addr = conn.remote_address
    return "an unknown address" if addr is None else f"{addr[0]}:{addr[1]}"
