"""The multiaddrs mimirlite dials and listens on: /ip4 or /ip6, /tcp, optional /p2p."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from mimirlite.errors import AddressError, InvalidKeyError
from mimirlite.identity import PeerId


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
        pid = peer_id or self.peer_id
        text = f"/{'ip6' if self.is_ip6 else 'ip4'}/{self.host}/tcp/{self.port}"
        return f"{text}/p2p/{pid}" if pid else text


@functools.lru_cache(maxsize=1024)
def parse_multiaddr(text: str) -> TcpAddr:
    """Parse ``/ip4/<a>/tcp/<port>[/p2p/<id>]`` (or /ip6); AddressError otherwise.

    Cached: a client that opens every stream by multiaddr pays for the parse once.
    """
    from multiaddr import Multiaddr

    try:
        parts = [(p.name, v) for p, v in Multiaddr(text).items()]
    except Exception as exc:  # the multiaddr package raises several unrelated types
        raise AddressError(f"invalid multiaddr {text!r}: {exc}") from None
    return _from_parts(text, parts)


def _from_parts(text: str, parts: list[tuple[str, object]]) -> TcpAddr:
    names = [name for name, _ in parts]
    if names[:2] not in (["ip4", "tcp"], ["ip6", "tcp"]) or names[2:] not in ([], ["p2p"]):
        raise AddressError(f"unsupported multiaddr {text!r}: need /ip4|/ip6, /tcp, optional /p2p")
    host = str(ipaddress.ip_address(str(parts[0][1])))
    port = int(str(parts[1][1]))
    if not 0 <= port <= 65535:
        raise AddressError(f"invalid TCP port in {text!r}")
    peer_id = None
    if len(parts) == 3:
        try:
            peer_id = PeerId.from_string(str(parts[2][1]))
        except InvalidKeyError as exc:
            raise AddressError(f"invalid peer ID in {text!r}: {exc}") from None
    return TcpAddr(host, port, peer_id)


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
