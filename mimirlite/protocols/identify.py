"""libp2p identify (``/ipfs/id/1.0.0``) and identify push (``/ipfs/id/push/1.0.0``).

The sans-IO part (the ``Identify`` protobuf, turning a message into what we learn; the multiaddrs in it
go through :mod:`mimirlite.wire.multiaddr`) takes bytes and returns data; :class:`Identify` is the
asyncio service that answers and asks on a Host.
As js-libp2p does it: the answering side writes one length-prefixed message and closes its write side;
the asking side reads it, checks that the public key is the connection's peer, and records the rest.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mimirlite._version import __version__
from mimirlite.aio import SingleFlight, wait_for
from mimirlite.errors import (
    AddressError,
    ConnectionClosedError,
    DecodeError,
    IncompleteReadError,
    InvalidKeyError,
    LocalError,
    MessageTooLargeError,
    MimirliteError,
    MimirliteTimeoutError,
    ProtocolError,
    ProtocolErrorKind,
    ProtocolNotSupportedError,
    RefusalReason,
    StreamResetError,
)
from mimirlite.identity import PeerId, PublicKey
from mimirlite.net.rate import PeerRate
from mimirlite.wire.lp import encode_message
from mimirlite.wire.multiaddr import Multiaddr, multiaddr_from_bytes, tcp_multiaddr_bytes
from mimirlite.wire.protobuf import LENGTH_DELIMITED, encode_bytes_field, iter_fields

if TYPE_CHECKING:
    from mimirlite.net.connection import Connection
    from mimirlite.net.host import Host
    from mimirlite.net.stream import Stream

log = logging.getLogger(__name__)

IDENTIFY_PROTOCOL = "/ipfs/id/1.0.0"
IDENTIFY_PUSH_PROTOCOL = "/ipfs/id/push/1.0.0"
PROTOCOL_VERSION = "ipfs/0.1.0"
MAX_IDENTIFY_MESSAGE = 8 * 1024
"""Cap on one Identify message body, as js-libp2p's and go-libp2p's identify."""
IDENTIFY_TIMEOUT = 5.0
"""Seconds for one identify exchange (open, negotiate, read), as js-libp2p's identify."""
MAX_REMEMBERED_PEERS = 1024
"""Identify results kept; the least recently updated peer is forgotten first."""


@dataclass(frozen=True)
class IdentifyConfig:
    """Limits and timeouts of the identify service: every Identify message is a peer's, hence hostile.

    A message over ``max_message_size`` is refused before its body is read; entries over the other caps
    are left out unread (logged, counted in ``host.metrics.refused["identify_over_cap"]``); a push over
    the per-peer rate is reset before it is read (``refused["identify_push"]``).
    """

    timeout: float = IDENTIFY_TIMEOUT
    """Seconds for one identify exchange (open, negotiate, read), as js-libp2p's identify."""
    max_message_size: int = MAX_IDENTIFY_MESSAGE
    """Bytes of one Identify message body (8 KiB, as js-libp2p, go-libp2p); a longer one is refused unread."""
    max_listen_addrs: int = 64
    """Listen addresses taken from one message, and TCP addresses kept for one peer; the rest are left out."""
    max_protocols: int = 256
    """Protocols taken from one message; the rest are left out."""
    max_addr_size: int = 256
    """Bytes of one listen or observed address; a longer one is left out."""
    pushes_per_minute: int = 20
    """Identify pushes taken from one peer: a bucket of this many, refilled at this rate; a push over it,
    or one while the same peer's previous push is still being read, is reset unread."""
    max_remembered_peers: int = MAX_REMEMBERED_PEERS
    """Identify results (and push buckets) kept; the least recently updated peer is forgotten first."""

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise LocalError("timeout must be a positive number of seconds")
        for name in (
            "max_message_size",
            "max_listen_addrs",
            "max_protocols",
            "max_addr_size",
            "pushes_per_minute",
            "max_remembered_peers",
        ):
            if getattr(self, name) < 0:
                raise LocalError(f"{name} must be >= 0")


class IdentifyError(ProtocolError):
    """The remote's Identify message is unusable (no message, missing or foreign public key)."""


class IdentifyTimeoutError(MimirliteTimeoutError):
    """An identify exchange did not finish in time."""


# --- the Identify message (sans-IO) ------------------------------------------------------------


@dataclass(frozen=True)
class IdentifyMessage:
    """The ``Identify`` protobuf; every field optional, addresses in binary multiaddr form."""

    protocol_version: str | None = None
    agent_version: str | None = None
    public_key: bytes | None = None
    listen_addrs: tuple[bytes, ...] = ()
    observed_addr: bytes | None = None
    protocols: tuple[str, ...] = ()
    signed_peer_record: bytes | None = None


_F_PUBLIC_KEY = 1
_F_LISTEN_ADDRS = 2
_F_PROTOCOLS = 3
_F_OBSERVED_ADDR = 4
_F_PROTOCOL_VERSION = 5
_F_AGENT_VERSION = 6
_F_SIGNED_PEER_RECORD = 8
_SCHEMA = {
    f: LENGTH_DELIMITED
    for f in (
        _F_PUBLIC_KEY,
        _F_LISTEN_ADDRS,
        _F_PROTOCOLS,
        _F_OBSERVED_ADDR,
        _F_PROTOCOL_VERSION,
        _F_AGENT_VERSION,
        _F_SIGNED_PEER_RECORD,
    )
}


def encode_identify(msg: IdentifyMessage) -> bytes:
    """The protobuf body, fields in the order js-libp2p writes them.

    Raises LocalError if it exceeds :data:`MAX_IDENTIFY_MESSAGE` (peers would refuse it).
    """
    parts: list[bytes] = []
    if msg.protocol_version is not None:
        parts.append(encode_bytes_field(_F_PROTOCOL_VERSION, msg.protocol_version.encode()))
    if msg.agent_version is not None:
        parts.append(encode_bytes_field(_F_AGENT_VERSION, msg.agent_version.encode()))
    if msg.public_key is not None:
        parts.append(encode_bytes_field(_F_PUBLIC_KEY, msg.public_key))
    parts.extend(encode_bytes_field(_F_LISTEN_ADDRS, a) for a in msg.listen_addrs)
    if msg.observed_addr is not None:
        parts.append(encode_bytes_field(_F_OBSERVED_ADDR, msg.observed_addr))
    parts.extend(encode_bytes_field(_F_PROTOCOLS, p.encode()) for p in msg.protocols)
    if msg.signed_peer_record is not None:
        parts.append(encode_bytes_field(_F_SIGNED_PEER_RECORD, msg.signed_peer_record))
    body = b"".join(parts)
    if len(body) > MAX_IDENTIFY_MESSAGE:
        raise LocalError(f"identify message of {len(body)} bytes exceeds the {MAX_IDENTIFY_MESSAGE} byte cap")
    return body


def encode_identify_frame(msg: IdentifyMessage) -> bytes:
    """The message as it goes on the stream: uvarint length, then the body."""
    return encode_message(encode_identify(msg))


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"identify: {what} is not UTF-8") from None


def decode_identify(buf: bytes, max_size: int = MAX_IDENTIFY_MESSAGE) -> IdentifyMessage:
    """Decode an Identify body; unknown fields are skipped, a repeated singular field keeps its last value.

    Raises MessageTooLargeError above ``max_size`` and DecodeError for malformed protobuf or text.
    """
    return decode_identify_capped(buf, IdentifyConfig(max_message_size=max_size), capped=False)[0]


def decode_identify_capped(
    buf: bytes, config: IdentifyConfig, *, capped: bool = True
) -> tuple[IdentifyMessage, dict[str, int]]:
    """Decode an Identify body within ``config``'s caps: the message and what was left out, by kind.

    Listen addresses and protocols past ``max_listen_addrs`` / ``max_protocols`` and addresses longer
    than ``max_addr_size`` are skipped without being copied or decoded (``capped=False``: kept), so
    the cost of a message is bounded by the caps, not by how many entries it packs. Raises
    MessageTooLargeError above ``max_message_size`` and DecodeError for malformed protobuf or text.
    """
    if len(buf) > config.max_message_size:
        size, cap = len(buf), config.max_message_size
        raise MessageTooLargeError(f"identify message of {size} bytes exceeds the {cap} byte cap")
    last: dict[int, bytes] = {}
    addrs: list[bytes] = []
    protocols: list[str] = []
    dropped: collections.Counter[str] = collections.Counter()
    max_addrs = config.max_listen_addrs if capped else len(buf) + 1
    max_protocols = config.max_protocols if capped else len(buf) + 1
    max_addr = config.max_addr_size if capped else len(buf) + 1
    for field, wire_type, value in iter_fields(bytes(buf)):
        if field not in _SCHEMA:
            continue
        if wire_type != LENGTH_DELIMITED or not isinstance(value, bytes):
            raise DecodeError(f"protobuf: field {field} has wire type {wire_type}, expected 2")
        if field == _F_LISTEN_ADDRS:
            if len(value) > max_addr:
                dropped["oversized listen addresses"] += 1
            elif len(addrs) >= max_addrs:
                dropped["listen addresses"] += 1
            else:
                addrs.append(value)
        elif field == _F_PROTOCOLS:
            if len(protocols) >= max_protocols:
                dropped["protocols"] += 1
            else:
                protocols.append(_text(value, "a protocol"))
        elif field == _F_OBSERVED_ADDR and len(value) > max_addr:
            dropped["oversized observed address"] += 1
            last.pop(field, None)
        else:
            last[field] = value
    pv, av = last.get(_F_PROTOCOL_VERSION), last.get(_F_AGENT_VERSION)
    msg = IdentifyMessage(
        protocol_version=None if pv is None else _text(pv, "protocolVersion"),
        agent_version=None if av is None else _text(av, "agentVersion"),
        public_key=last.get(_F_PUBLIC_KEY),
        listen_addrs=tuple(addrs),
        observed_addr=last.get(_F_OBSERVED_ADDR),
        protocols=tuple(protocols),
        signed_peer_record=last.get(_F_SIGNED_PEER_RECORD),
    )
    return msg, dict(dropped)


def describe_dropped(dropped: dict[str, int], config: IdentifyConfig) -> str:
    """``dropped`` of :func:`decode_identify_capped` in words, for a log line."""
    caps = {
        "listen addresses": f"over the cap of {config.max_listen_addrs}",
        "protocols": f"over the cap of {config.max_protocols}",
        "oversized listen addresses": f"longer than {config.max_addr_size} bytes",
        "oversized observed address": f"longer than {config.max_addr_size} bytes",
    }
    return ", ".join(f"{n} {kind} {caps.get(kind, '')}".rstrip() for kind, n in sorted(dropped.items()))


# --- what we learn from a message (sans-IO) ----------------------------------------------------


@dataclass(frozen=True)
class IdentifyInfo:
    """What a peer told us about itself (and about us: ``observed_addr``)."""

    peer_id: PeerId
    public_key: PublicKey | None
    protocol_version: str | None = None
    agent_version: str | None = None
    listen_addrs: tuple[str, ...] = ()
    """Text multiaddrs as sent (no /p2p/ suffix is added); ones we cannot read are left out."""
    observed_addr: str | None = None
    """Our own address as the peer sees it."""
    protocols: tuple[str, ...] = ()


def _addrs_text(bufs: Iterable[bytes], peer_id: PeerId) -> tuple[str, ...]:
    out: list[str] = []
    for b in bufs:
        try:
            out.append(multiaddr_from_bytes(b))
        except DecodeError as exc:
            log.debug("identify from %s: skipping listen address %s: %s", peer_id, b.hex(), exc)
    return tuple(out)


def _checked_key(peer_id: PeerId, raw: bytes) -> PublicKey:
    try:
        key = PublicKey.from_protobuf(raw)
    except InvalidKeyError as exc:
        raise IdentifyError(f"identify from {peer_id}: bad public key: {exc}") from None
    if not peer_id.matches_public_key(key):
        raise IdentifyError(f"identify from {peer_id}: public key belongs to {PeerId.from_public_key(key)}")
    return key


def _observed_text(raw: bytes | None, peer_id: PeerId) -> str | None:
    if not raw:
        return None
    try:
        return multiaddr_from_bytes(raw)
    except DecodeError as exc:
        log.debug("identify from %s: unreadable observed address: %s", peer_id, exc)
        return None


def info_from_message(peer_id: PeerId, msg: IdentifyMessage) -> IdentifyInfo:
    """Check an identify answer from ``peer_id``: the public key must be there and be that peer's.

    Raises IdentifyError.
    """
    if msg.public_key is None:
        raise IdentifyError(f"identify from {peer_id}: no public key")
    return IdentifyInfo(
        peer_id=peer_id,
        public_key=_checked_key(peer_id, msg.public_key),
        protocol_version=msg.protocol_version,
        agent_version=msg.agent_version,
        listen_addrs=_addrs_text(msg.listen_addrs, peer_id),
        observed_addr=_observed_text(msg.observed_addr, peer_id),
        protocols=msg.protocols,
    )


def merge_push(old: IdentifyInfo | None, peer_id: PeerId, msg: IdentifyMessage) -> IdentifyInfo:
    """Apply an identify push from ``peer_id`` to what we knew: fields it leaves out stay as they were.

    A public key, if sent, must be the peer's (IdentifyError otherwise).
    """
    base = old if old is not None else IdentifyInfo(peer_id=peer_id, public_key=peer_id.public_key())
    observed = _observed_text(msg.observed_addr, peer_id)
    return IdentifyInfo(
        peer_id=peer_id,
        public_key=base.public_key if msg.public_key is None else _checked_key(peer_id, msg.public_key),
        protocol_version=base.protocol_version if msg.protocol_version is None else msg.protocol_version,
        agent_version=base.agent_version if msg.agent_version is None else msg.agent_version,
        listen_addrs=_addrs_text(msg.listen_addrs, peer_id) if msg.listen_addrs else base.listen_addrs,
        observed_addr=base.observed_addr if observed is None else observed,
        protocols=msg.protocols or base.protocols,
    )


# --- how often a peer may push (sans-IO) -------------------------------------------------------


# --- the asyncio service -----------------------------------------------------------------------


def _agent_version() -> str:
    return f"mimirlite/{__version__}"


async def _read_one(
    stream: Stream, what: str, config: IdentifyConfig
) -> tuple[IdentifyMessage, dict[str, int]]:
    body = await stream.read_message(config.max_message_size)
    if body is None:
        raise IdentifyError(f"{what}: stream ended before the message")
    return decode_identify_capped(body, config)


class Identify:
    """The identify service of a Host: answers ``/ipfs/id/1.0.0`` and takes pushes.

    ``Identify(host, run_on_connect=True)`` also identifies every new connection's peer in the
    background; results are kept (:meth:`info_of`) and the peer's TCP listen addresses are added to
    the host. Failures of those background runs are logged, and the connection is left alone.
    Callbacks in ``on_identified`` get every result and every push, once recorded.
    Limits are ``config``'s (:class:`IdentifyConfig`); ``timeout``, when given, replaces its timeout.
    """

    def __init__(
        self,
        host: Host,
        *,
        run_on_connect: bool = False,
        agent_version: str | None = None,
        timeout: float | None = None,
        accept_push: bool = True,
        config: IdentifyConfig | None = None,
    ) -> None:
        self.host = host
        self.agent_version = agent_version or _agent_version()
        config = config or IdentifyConfig()
        if timeout is not None:
            config = dataclasses.replace(config, timeout=timeout)
        self.config = config
        self.timeout = config.timeout
        self._push_budget = PeerRate(config.pushes_per_minute, config.max_remembered_peers)
        self._pushing: set[PeerId] = set()
        self._over_budget: set[PeerId] = set()
        self._infos: collections.OrderedDict[PeerId, IdentifyInfo] = collections.OrderedDict()
        self._inflight: SingleFlight[Connection, IdentifyInfo] = SingleFlight(
            lambda coro: host.spawn(coro, "mimirlite-identify"),
            cancelled=lambda _: ConnectionClosedError("identify cancelled: the host is stopping"),
        )
        """One identify run per connection, joined by every caller (a run ends with the host)."""
        self.on_identified: list[Callable[[IdentifyInfo], None]] = []
        self._protocols = [IDENTIFY_PROTOCOL]
        host.set_handler(IDENTIFY_PROTOCOL, self._serve_identify)
        if accept_push:
            self._protocols.append(IDENTIFY_PUSH_PROTOCOL)
            host.set_handler(IDENTIFY_PUSH_PROTOCOL, self._serve_push)
        self._run_on_connect = run_on_connect
        if run_on_connect:
            host.on_connected.append(self._on_connected)

    def close(self) -> None:
        """Stop serving and stop identifying new connections (runs under way finish or end with the host)."""
        for p in self._protocols:
            self.host.remove_handler(p)
        if self._run_on_connect and self._on_connected in self.host.on_connected:
            self.host.on_connected.remove(self._on_connected)

    # ---- what we know ----

    def info_of(self, peer: PeerId) -> IdentifyInfo | None:
        """The latest identify result (or push) from ``peer``, if any."""
        return self._infos.get(peer)

    def candidate_addrs(self, limit: int = 8) -> list[Multiaddr]:
        """Where we might be reachable from outside: each IP peers observe us at over direct connections,
        with each of our TCP listen ports (AutoNAT's candidates, DCUtR's offer); at most ``limit``."""
        ports = [Multiaddr.parse(a).value_for("tcp") for a in self.host.listen_addrs]
        out: list[Multiaddr] = []
        for peer, conn in self.host.connections.items():
            info = self._infos.get(peer)
            if conn.relayed or info is None or info.observed_addr is None:
                continue  # through a relay a peer sees the relay's side, not ours
            try:
                ip = Multiaddr.parse(info.observed_addr).ip
            except AddressError:
                continue
            if ip is None:
                continue
            family = "ip4" if ip.version == 4 else "ip6"
            for port in ports:
                addr = Multiaddr.parse(f"/{family}/{ip}/tcp/{port}")
                if addr not in out:
                    out.append(addr)
        return out[:limit]

    def _remember(self, info: IdentifyInfo) -> None:
        self._infos[info.peer_id] = info
        self._infos.move_to_end(info.peer_id)
        while len(self._infos) > self.config.max_remembered_peers:
            self._infos.popitem(last=False)
        dialable: list[str] = []
        room = self.config.max_listen_addrs - len(self.host.addrs_of(info.peer_id))
        for a in info.listen_addrs:
            if room <= 0:
                break  # as many addresses as we keep for one peer: the ones known first stay
            try:
                self.host.add_addrs(info.peer_id, [a])
            except AddressError:
                continue  # not TCP over IP: nothing we could dial
            dialable.append(a)
            room = self.config.max_listen_addrs - len(self.host.addrs_of(info.peer_id))
        log.debug(
            "identified %s: %s, %d protocols, addrs %s",
            info.peer_id,
            info.agent_version,
            len(info.protocols),
            dialable,
        )
        for cb in list(self.on_identified):
            cb(info)

    # ---- what we say ----

    def message_for(self, conn: Connection) -> IdentifyMessage:
        """Our Identify message for the peer at the other end of ``conn``."""
        listen: list[bytes] = []
        for text in self.host.announced_addrs:
            try:
                listen.append(Multiaddr.parse(text).without_peer_id().to_bytes())
            except AddressError as exc:
                log.debug("not announcing %s: %s", text, exc)
        observed = None
        if conn.remote_address is not None:
            try:
                observed = tcp_multiaddr_bytes(*conn.remote_address)
            except ValueError:
                observed = None
        return IdentifyMessage(
            protocol_version=PROTOCOL_VERSION,
            agent_version=self.agent_version,
            public_key=self.host.keypair.public_key.to_protobuf(),
            listen_addrs=tuple(listen),
            observed_addr=observed,
            protocols=tuple(self.host.protocols),
        )

    async def _serve_identify(self, stream: Stream) -> None:
        await stream.write(encode_identify_frame(self.message_for(stream.connection)))
        await stream.close_write()

    def _push_refusal(self, peer: PeerId, now: float) -> str | None:
        """Why a push from ``peer`` is refused unread at ``now``, or None when it is taken."""
        if peer in self._pushing:
            return "its previous push is still being read"
        if not self._push_budget.take(peer, now):
            return f"over {self.config.pushes_per_minute} pushes a minute"
        return None

    def _count_dropped(self, what: str, dropped: dict[str, int]) -> None:
        if dropped:
            self.host.metrics.refused[RefusalReason.IDENTIFY_OVER_CAP] += 1
            log.info("%s: left out %s", what, describe_dropped(dropped, self.config))

    async def _serve_push(self, stream: Stream) -> None:
        peer = stream.remote_peer
        what = f"identify push from {peer}"
        refusal = self._push_refusal(peer, asyncio.get_running_loop().time())
        if refusal is not None:
            self.host.metrics.refused[RefusalReason.IDENTIFY_PUSH] += 1
            if peer in self._over_budget:  # one line when a peer goes over, not one per push
                log.debug("%s refused: %s", what, refusal)
            else:
                log.info("%s refused: %s; resetting its push streams", what, refusal)
                if len(self._over_budget) >= self.config.max_remembered_peers:
                    self._over_budget.clear()  # bounded: at worst a peer's going over is logged again
                self._over_budget.add(peer)
            await stream.reset()
            return
        self._over_budget.discard(peer)
        self._pushing.add(peer)
        try:
            msg, dropped = await asyncio.wait_for(_read_one(stream, what, self.config), self.timeout)
            info = merge_push(self._infos.get(peer), peer, msg)
        except asyncio.TimeoutError:
            raise IdentifyTimeoutError(f"{what} not received in {self.timeout:g} s") from None
        except (ProtocolError, IncompleteReadError):  # too large, malformed, foreign key, cut short
            self.host.metrics.protocol_errors[ProtocolErrorKind.IDENTIFY] += 1
            raise  # the host logs it and resets the stream
        finally:
            self._pushing.discard(peer)
        self._count_dropped(what, dropped)
        self._remember(info)

    async def push(self, *, unidentified: bool = False) -> int:
        """Send our current Identify message to every connected peer that accepts pushes (``unidentified``:
        and to every one not identified yet, which refuses the protocol if it takes no push).

        Returns how many peers took it; failures are logged at debug level.
        """
        conns = [
            c
            for peer, c in self.host.connections.items()
            if ((info := self._infos.get(peer)) is None and unidentified)
            or (info is not None and IDENTIFY_PUSH_PROTOCOL in info.protocols)
        ]
        results = await asyncio.gather(*(self._push_one(c) for c in conns), return_exceptions=True)
        for conn, res in zip(conns, results, strict=True):
            if isinstance(res, BaseException):
                if not isinstance(res, MimirliteError):
                    raise res
                log.debug("identify push to %s failed: %s", conn.remote_peer, res)
        return sum(1 for r in results if not isinstance(r, BaseException))

    async def _push_one(self, conn: Connection) -> None:
        async def run() -> None:
            stream = await self.host.open_on(conn, IDENTIFY_PUSH_PROTOCOL)
            async with stream:
                await stream.write(encode_identify_frame(self.message_for(conn)))
                await stream.close_write()
                # the peer ends its side once it has taken the message, and has nothing to say
                await stream.read_all(limit=0)

        try:
            await asyncio.wait_for(run(), self.timeout)
        except asyncio.TimeoutError:
            raise IdentifyTimeoutError(f"identify push to {conn.remote_peer} timed out") from None

    # ---- asking ----

    async def identify(self, target: Connection | PeerId | str) -> IdentifyInfo:
        """Ask a connection's peer (or a peer / multiaddr, dialing if needed) who it is.

        Joins a run already under way on the same connection. Records the result and the peer's
        TCP listen addresses. Raises ProtocolNotSupportedError (the peer has no identify),
        IdentifyError, IdentifyTimeoutError, DecodeError, MessageTooLargeError, ConnectionClosedError.
        """
        conn = target if not isinstance(target, (PeerId, str)) else await self.host.dial(target)
        return await asyncio.shield(self._start(conn))

    def _start(self, conn: Connection) -> asyncio.Future[IdentifyInfo]:
        if conn not in self._inflight:
            self.host.check_running()
        return self._inflight.start(conn, lambda: self._identify_once(conn))

    def identify_on_connect(self) -> None:
        """From now on, also identify every new connection's peer in the background."""
        if not self._run_on_connect:
            self._run_on_connect = True
            self.host.on_connected.append(self._on_connected)

    def _on_connected(self, conn: Connection) -> None:
        try:
            fut = self._start(conn)
        except LocalError:  # the host is stopping
            return
        fut.add_done_callback(lambda f: self._log_outcome(conn, f))

    def _log_outcome(self, conn: Connection, fut: asyncio.Future[IdentifyInfo]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if exc is None:
            return
        if isinstance(exc, ProtocolNotSupportedError):
            log.debug("%s does not serve identify", conn.remote_peer)
        elif isinstance(exc, (ConnectionClosedError, StreamResetError)) or not conn.is_open:
            log.debug("identify of %s ended with its connection: %s", conn.remote_peer, exc)
        else:
            log.warning("identify of %s failed: %s", conn.remote_peer, exc)

    async def _identify_once(self, conn: Connection) -> IdentifyInfo:
        try:
            info = await wait_for(self._query(conn), self.timeout)
        except asyncio.TimeoutError:
            reason = f"identify of {conn.remote_peer} timed out after {self.timeout:g} s"
            raise IdentifyTimeoutError(reason) from None
        self._remember(info)
        return info

    async def _query(self, conn: Connection) -> IdentifyInfo:
        peer = conn.remote_peer
        assert peer is not None
        stream = await self.host.open_on(conn, IDENTIFY_PROTOCOL)
        what = f"identify of {peer}"
        try:
            msg, dropped = await _read_one(stream, what, self.config)
        except BaseException as exc:
            if isinstance(exc, (ProtocolError, IncompleteReadError)):
                self.host.metrics.protocol_errors[ProtocolErrorKind.IDENTIFY] += 1
            await stream.reset()
            raise
        await stream.close()
        self._count_dropped(what, dropped)
        return info_from_message(peer, msg)
