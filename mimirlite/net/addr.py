"""What the host can dial and listen on: ``/ip4`` or ``/ip6``, ``/tcp``, optional ``/p2p``.

The codec is :mod:`mimirlite.wire.multiaddr`; this is the host's view of it (a :class:`TcpAddr`).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from mimirlite.errors import AddressError
from mimirlite.identity import PeerId
from mimirlite.wire.multiaddr import Code, Multiaddr, tcp_multiaddr_bytes, tcp_multiaddr_text


@dataclass(frozen=True)
class TcpAddr:
    """A parsed TCP multiaddr."""

    host: str
    port: int
    peer_id: PeerId | None = None

    @property
    def is_ip6(self) -> bool:
        return ":" in self.host

    def multiaddr(self, peer_id: PeerId | None = None) -> str:
        """Text form; ``peer_id`` (or the parsed one) appended as /p2p/."""
        return tcp_multiaddr_text(self.host, self.port, peer_id or self.peer_id)

    def to_bytes(self) -> bytes:
        """Binary form, without /p2p/ (as identify sends listen and observed addresses)."""
        return tcp_multiaddr_bytes(self.host, self.port)


@functools.lru_cache(maxsize=1024)
def parse_multiaddr(text: str) -> TcpAddr:
    """Parse ``/ip4/<a>/tcp/<port>[/p2p/<id>]`` (or /ip6); AddressError otherwise.

    Cached: a client that opens every stream by multiaddr pays for the parse once.
    """
    return tcp_addr(Multiaddr.parse(text))


_TCP_SHAPES = frozenset(
    (ip, Code.TCP, *p2p) for ip in (Code.IP4, Code.IP6) for p2p in ((), (Code.P2P,))
)


def tcp_addr(addr: Multiaddr) -> TcpAddr:
    """The :class:`TcpAddr` of a multiaddr (from any source); AddressError when it is not TCP over IP."""
    shape = tuple(p.code for p, _ in addr.components)
    if shape not in _TCP_SHAPES:
        raise AddressError(f"unsupported multiaddr {str(addr)!r}: need /ip4|/ip6, /tcp, optional /p2p")
    host = str(addr.components[0][1])
    port = int(str(addr.components[1][1]))
    return TcpAddr(host, port, addr.peer_id)


def expand_unspecified(addr: TcpAddr) -> list[TcpAddr]:
    """``addr`` itself, or for 0.0.0.0 / :: each address of this machine's interfaces (same port).

    IPv6 link-local addresses are left out: they are not dialable without a zone.
    """
    ip = ipaddress.ip_address(addr.host)
    if not ip.is_unspecified:
        return [addr]
    import ifaddr  # comes with zeroconf; loaded only here

    out: list[TcpAddr] = []
    for adapter in ifaddr.get_adapters():
        for entry in adapter.ips:
            if isinstance(entry.ip, str) != (ip.version == 4):
                continue
            host = entry.ip if isinstance(entry.ip, str) else entry.ip[0]
            candidate = ipaddress.ip_address(host)
            if candidate.is_link_local:
                continue
            found = TcpAddr(str(candidate), addr.port, addr.peer_id)
            if found not in out:
                out.append(found)
    return out
