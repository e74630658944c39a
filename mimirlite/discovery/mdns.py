"""mDNS peer discovery on the local network, interoperable with @libp2p/mdns (asyncio shell).

The records and the peer table live in :mod:`mimirlite.discovery.records`; this module owns the
UDP sockets, the query timer and the callbacks. IPv4 only, like @libp2p/mdns's default.

Sockets: one bound to ``0.0.0.0:5353`` that joins 224.0.0.251 on each chosen interface and reads,
and one per interface bound to ``<interface IP>:5353`` that sends there (and reads unicast replies).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import math
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from mimirlite.aio import Service
from mimirlite.discovery.records import (
    MDNS_GROUP,
    MDNS_PORT,
    MdnsCore,
    PeerDiscovered,
    Query,
    check_peer_name,
    random_peer_name,
)
from mimirlite.errors import DecodeError, LocalError
from mimirlite.identity import PeerId

if TYPE_CHECKING:
    from mimirlite.net.host import Host

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 10.0
"""Seconds between queries (as @libp2p/mdns)."""
DEFAULT_LOST_AFTER = 3
"""A peer that answers none of this many query intervals in a row is reported lost."""
ANSWER_MIN_GAP = 0.25
"""Seconds between two answers on one interface; a query in between is answered at the end of the gap."""
MULTICAST_TTL = 255
_IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)  # Linux only

PeerCallback = Callable[[PeerId, list[str]], "Awaitable[None] | None"]
"""``on_peer(peer_id, addrs)``: addrs are TCP multiaddrs without /p2p/. May be a coroutine function."""
LostCallback = Callable[[PeerId], "Awaitable[None] | None"]
"""``on_lost(peer_id)``. May be a coroutine function."""


class MdnsDiscovery(Service):
    """Find libp2p peers on the local network and announce ``host`` to them.

    Answers ``_p2p._udp.local`` queries with the host's private and loopback addresses, queries at
    start and every ``interval`` seconds, adds what it finds to the host (``host.add_addrs``) and
    calls ``on_peer(peer_id, addrs)`` for a new peer (or one whose addresses changed, or that came
    back). A peer that answers none of ``lost_after`` intervals is forgotten and passed to
    ``on_lost``. ``interfaces`` restricts mDNS to the interfaces with these IPv4 addresses
    (default: every interface with an IPv4 address).

    ``async with MdnsDiscovery(host, on_peer=...)``, or ``start()`` and ``stop()``.
    """

    def __init__(
        self,
        host: Host,
        *,
        interval: float = DEFAULT_INTERVAL,
        lost_after: int = DEFAULT_LOST_AFTER,
        interfaces: Sequence[str] | None = None,
        on_peer: PeerCallback | None = None,
        on_lost: LostCallback | None = None,
        peer_name: str | None = None,
    ) -> None:
        if not interval > 0:
            raise LocalError("interval must be positive")
        if lost_after < 1:
            raise LocalError("lost_after must be at least 1")
        if peer_name is not None:
            check_peer_name(peer_name)
        self.host = host
        self.interval = float(interval)
        self.lost_after = lost_after
        self.on_peer = on_peer
        self.on_lost = on_lost
        self._interfaces = None if interfaces is None else [_parse_ipv4(ip) for ip in interfaces]
        self._core = MdnsCore(
            host.peer_id, peer_name or random_peer_name(), silent_after=lost_after * self.interval
        )
        self._receiver: asyncio.DatagramTransport | None = None
        self._senders: list[_Sender] = []
        self._local_ips: set[str] = set()
        self._timer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False

    @property
    def peer_name(self) -> str:
        """The random name we answer with (the first label of our PTR target)."""
        return self._core.peer_name

    @property
    def peers(self) -> dict[PeerId, list[str]]:
        """Peers found and not lost, with their addresses."""
        return {pid: list(addrs) for pid, addrs in self._core.peers.items()}

    @property
    def interface_addrs(self) -> list[str]:
        """The IPv4 addresses of the interfaces mDNS runs on (once started)."""
        return [str(s.iface.ip) for s in self._senders]

    # ---- lifecycle ----

    async def _start(self) -> None:
        """Open the sockets and start querying. OSError or LocalError when no interface is usable."""
        loop = asyncio.get_running_loop()
        local = _ipv4_interfaces()
        self._local_ips = {str(i.ip) for i in local}
        chosen = self._interfaces
        wanted = local if chosen is None else [_find_interface(ip, local) for ip in chosen]
        recv_sock, joined = _open_receiver(wanted)
        self._receiver, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=recv_sock)
        for iface in joined:
            send_sock = _open_sender(iface)
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=send_sock)
            self._senders.append(_Sender(iface, transport))
        log.info("mDNS discovery as %s on %s", self.peer_name, ", ".join(self.interface_addrs))
        self._timer = loop.create_task(self._run(), name="mimirlite-mdns")

    async def _stop(self) -> None:
        """Stop querying and answering, close the sockets, cancel running callbacks."""
        self._stopped = True
        pending = [t for t in (self._timer, *self._tasks) if t is not None]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for sender in self._senders:
            if sender.deferred is not None:
                sender.deferred.cancel()
            sender.transport.close()
        if self._receiver is not None:
            self._receiver.close()
        self._senders.clear()
        self._receiver = None
        self._core.forget()

    # ---- sending ----

    def forget(self, peer: PeerId) -> None:
        """Forget ``peer`` so that its next answer is reported again (e.g. once its connection dropped)."""
        self._core.forget(peer)

    def query(self) -> None:
        """Send a query now (on every interface); answers arrive through the callbacks."""
        if self._stopped or not self._senders:
            return
        packet = self._core.query()
        for sender in self._senders:
            sender.transport.sendto(packet, (MDNS_GROUP, MDNS_PORT))

    def _answer(self, source: str) -> None:
        """Answer a query from ``source`` on its interface (on all when none has its network)."""
        loop = asyncio.get_running_loop()
        src = ipaddress.IPv4Address(source)
        targets = [s for s in self._senders if src in s.iface.network] or self._senders
        for sender in targets:
            if sender.deferred is not None:
                continue  # an answer is already due on this interface
            wait = sender.last_answer + ANSWER_MIN_GAP - loop.time()
            if wait <= 0:
                self._send_answer(sender)
            else:
                sender.deferred = loop.call_later(wait, self._send_answer, sender)

    def _send_answer(self, sender: _Sender) -> None:
        sender.deferred = None
        if self._stopped:
            return
        packet = self._core.response(self.host.announced_addrs)  # relayed ones too, when on the LAN
        if packet is not None:
            sender.transport.sendto(packet, (MDNS_GROUP, MDNS_PORT))
            sender.last_answer = asyncio.get_running_loop().time()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for lost in self._core.expire(loop.time()):
                log.info("mDNS: lost %s", lost.peer_id)
                if self.on_lost is not None:
                    self._call(self.on_lost, lost.peer_id)
            self.query()
            await asyncio.sleep(self.interval)

    # ---- receiving ----

    def _datagram(self, data: bytes, source: tuple[Any, ...]) -> None:
        if self._stopped:
            return
        src_ip = str(source[0])
        try:
            event = self._core.receive(data, asyncio.get_running_loop().time(), local=self._is_local(src_ip))
        except DecodeError as exc:
            log.debug("ignoring malformed mDNS packet from %s: %s", src_ip, exc)
            return
        if isinstance(event, Query):
            self._answer(src_ip)
        elif isinstance(event, PeerDiscovered):
            addrs = list(event.addrs)
            log.info("mDNS: found %s at %s", event.peer_id, ", ".join(addrs))
            self.host.add_addrs(event.peer_id, addrs)
            if self.on_peer is not None:
                self._call(self.on_peer, event.peer_id, addrs)

    def _is_local(self, ip: str) -> bool:
        try:
            return ipaddress.ip_address(ip).is_loopback or ip in self._local_ips
        except ValueError:
            return False

    def _call(self, callback: Callable[..., Awaitable[None] | None], *args: Any) -> None:
        try:
            result = callback(*args)
        except Exception:
            log.exception("mDNS callback %r failed", callback)
            return
        if inspect.isawaitable(result):
            task = asyncio.get_running_loop().create_task(self._await(result), name="mimirlite-mdns-callback")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _await(result: Awaitable[None]) -> None:
        try:
            await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("mDNS callback failed")


class _Sender:
    """The socket that multicasts out of one interface, and when it last answered."""

    __slots__ = ("deferred", "iface", "last_answer", "transport")

    def __init__(self, iface: ipaddress.IPv4Interface, transport: asyncio.DatagramTransport) -> None:
        self.iface = iface
        self.transport = transport
        self.last_answer = -math.inf
        self.deferred: asyncio.TimerHandle | None = None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: MdnsDiscovery) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._owner._datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("mDNS socket error: %s", exc)


# ---- sockets and interfaces ----


def _parse_ipv4(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise LocalError(f"mDNS interface {text!r} is not an IPv4 address") from None


def _ipv4_interfaces() -> list[ipaddress.IPv4Interface]:
    """The first IPv4 address (with its network) of each interface of this machine."""
    import ifaddr

    out: list[ipaddress.IPv4Interface] = []
    for adapter in ifaddr.get_adapters():
        for entry in adapter.ips:
            if isinstance(entry.ip, str):
                out.append(ipaddress.IPv4Interface(f"{entry.ip}/{entry.network_prefix}"))
                break
    return out


def _find_interface(
    ip: ipaddress.IPv4Address, local: list[ipaddress.IPv4Interface]
) -> ipaddress.IPv4Interface:
    for iface in local:
        if iface.ip == ip:
            return iface
    raise LocalError(f"no interface of this machine has the address {ip}")


def _reuse(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def _open_receiver(
    ifaces: list[ipaddress.IPv4Interface],
) -> tuple[socket.socket, list[ipaddress.IPv4Interface]]:
    """A socket on 0.0.0.0:5353 joined to the mDNS group on each interface it could join."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        _reuse(sock)
        if sys.platform.startswith("linux"):
            # only the groups this socket joined, on the interfaces it joined them on
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
        sock.bind(("", MDNS_PORT))
        joined: list[ipaddress.IPv4Interface] = []
        for iface in ifaces:
            mreq = socket.inet_aton(MDNS_GROUP) + iface.ip.packed
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            except OSError as exc:
                log.debug("mDNS: cannot join %s on %s: %s", MDNS_GROUP, iface.ip, exc)
                continue
            joined.append(iface)
        if not joined:
            raise LocalError("mDNS: no interface could join the multicast group")
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, joined


def _open_sender(iface: ipaddress.IPv4Interface) -> socket.socket:
    """A socket that multicasts out of ``iface``, from port 5353 when it can."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        _reuse(sock)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, iface.ip.packed)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, MULTICAST_TTL)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        try:
            sock.bind((str(iface.ip), MDNS_PORT))
        except OSError as exc:
            log.debug("mDNS: cannot bind %s:%d (%s); sending from another port", iface.ip, MDNS_PORT, exc)
            sock.bind((str(iface.ip), 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
