"""``/dnsaddr``, ``/dns``, ``/dns4`` and ``/dns6`` multiaddrs resolved to ones the host dials.

``/dnsaddr/<host>[/p2p/<id>]`` reads the TXT records of ``_dnsaddr.<host>``, each ``dnsaddr=<multiaddr>``
(the multiaddr spec's dnsaddr, as the public IPFS bootstrap list uses it); a nested ``/dnsaddr`` is
resolved in turn, up to ``max_depth`` levels. ``/dns4|/dns6|/dns/<host>/tcp/<port>[/p2p/<id>]`` becomes
``/ip4|/ip6`` through A / AAAA lookups. What comes back is what :func:`mimirlite.net.addr.tcp_addr`
accepts (``/ip4|/ip6``, ``/tcp``, optional ``/p2p``); anything else is skipped.

A DNS server is not trusted: every lookup is bounded by ``timeout``, a resolution by
:data:`MAX_LOOKUPS` lookups, ``max_depth`` levels (a loop ends there, or sooner when a name comes back
on its own path) and ``max_results`` results; a TXT record longer than :data:`MAX_TXT` is skipped
unread. dnspython loads on the first lookup, not on import.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mimirlite.errors import AddressError, DnsaddrError, LocalError
from mimirlite.identity import PeerId
from mimirlite.net.addr import tcp_addr
from mimirlite.wire.multiaddr import MAX_MULTIADDR_TEXT, Code, Multiaddr

if TYPE_CHECKING:
    import dns.asyncresolver

__all__ = ["MAX_LOOKUPS", "MAX_TXT", "DnsResolver", "DnsaddrError"]

log = logging.getLogger(__name__)

PREFIX = "dnsaddr="
MAX_TXT = len(PREFIX) + MAX_MULTIADDR_TEXT
"""Bytes of one TXT record (its strings joined); a longer one cannot hold a multiaddr and is skipped."""
MAX_LOOKUPS = 32
"""DNS lookups of one :meth:`DnsResolver.resolve`, nested ones included."""

_DNS = (Code.DNS, Code.DNS4, Code.DNS6)
_IP = (Code.IP4, Code.IP6)


class _Failed(Exception):
    """A lookup that gave nothing, with why (internal: it becomes one of DnsaddrError's reasons)."""


def _nameserver(text: str) -> tuple[str, int]:
    """``"ip"``, ``"ip:port"`` or ``"[ip6]:port"`` -> (ip, port); LocalError if it is neither."""
    host, port = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise LocalError(f"bad nameserver {text!r}: need ip, ip:port or [ip6]:port")
        if rest:
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(text, port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise LocalError(f"bad nameserver {text!r}: {host!r} is not an IP address") from None
    return host, port


def _port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise LocalError(f"bad nameserver {text!r}: bad port {port_text!r}")
    return int(port_text)


def _tail(addr: Multiaddr) -> str:
    """The text of ``addr`` after its first component (``/tcp/4001/p2p/...``)."""
    return "".join(f"/{p.name}" + (f"/{v}" if v is not None else "") for p, v in addr.components[1:])


class _Run:
    """One resolution: its results, what it skipped and why its lookups failed."""

    def __init__(self, resolver: DnsResolver) -> None:
        self.resolver = resolver
        self.results: list[Multiaddr] = []
        self.seen: set[Multiaddr] = set()
        self.lookups = 0
        self.reasons: list[str] = []
        self.malformed = 0  # TXT records that are not dnsaddr= or do not parse (or are too long)
        self.unusable = 0  # addresses mimirlite's host does not dial (/udp, /quic-v1, /ws, ...)
        self.other_peer = 0  # addresses of another peer than the one asked for

    @property
    def full(self) -> bool:
        return len(self.results) >= self.resolver.max_results

    def why(self) -> str:
        parts = list(dict.fromkeys(self.reasons))
        for count, one, many in (
            (self.malformed, "malformed TXT record", "malformed TXT records"),
            (self.unusable, "address not TCP over IP", "addresses not TCP over IP"),
            (self.other_peer, "address of another peer", "addresses of another peer"),
        ):
            if count:
                parts.append(f"{count} {one if count == 1 else many} skipped")
        return "; ".join(parts) or "no records"

    def add(self, addr: Multiaddr, want: PeerId | None) -> None:
        try:
            tcp_addr(addr)
        except AddressError:
            self.unusable += 1
            log.debug("dnsaddr: skipped %s: not TCP over IP", addr)
            return
        if want is not None and addr.peer_id != want:
            self.other_peer += 1
            return
        if addr not in self.seen and not self.full:
            self.seen.add(addr)
            self.results.append(addr)

    async def walk(self, addr: Multiaddr, want: PeerId | None, path: tuple[str, ...]) -> None:
        """Resolve ``addr`` into the results, keeping only ``want``'s addresses when it is given."""
        code = addr.components[0][0].code
        if code in _IP:
            self.add(addr, want)
        elif code == Code.DNSADDR:
            await self._dnsaddr(addr, want, path)
        elif code in _DNS:
            await self._dns(addr, want)
        else:
            self.unusable += 1
            log.debug("dnsaddr: skipped %s: not TCP over IP", addr)

    async def _lookup(self, name: str, rdtype: str) -> list[str]:
        if self.lookups >= MAX_LOOKUPS:
            raise _Failed(f"more than {MAX_LOOKUPS} lookups")
        self.lookups += 1
        return await self.resolver._lookup(name, rdtype)

    async def _dnsaddr(self, addr: Multiaddr, want: PeerId | None, path: tuple[str, ...]) -> None:
        if len(addr.components) > 2 or (len(addr.components) == 2 and addr.peer_id is None):
            self.unusable += 1  # /dnsaddr/<host> takes only a /p2p/<id> after it
            log.debug("dnsaddr: skipped %s: /dnsaddr/<host> takes only /p2p/<id> after it", addr)
            return
        if want is not None and addr.peer_id not in (None, want):
            self.other_peer += 1  # another peer's entry: not worth a lookup
            return
        want = want or addr.peer_id
        host = str(addr.components[0][1]).lower().rstrip(".")
        if host in path:
            self.reasons.append(f"loop: /dnsaddr/{host} after {' -> '.join(path)}")
            return
        if len(path) >= self.resolver.max_depth:
            self.reasons.append(f"/dnsaddr/{host} nested deeper than max_depth={self.resolver.max_depth}")
            return
        try:
            records = await self._lookup(f"_dnsaddr.{host}", "TXT")
        except _Failed as exc:
            self.reasons.append(str(exc))
            return
        path = (*path, host)
        for record in records:
            if self.full:
                break
            if not record:  # too long or not ASCII: logged by _lookup
                self.malformed += 1
                continue
            if not record.startswith(PREFIX):
                self.malformed += 1
                log.debug("dnsaddr: skipped a TXT record of _dnsaddr.%s: not dnsaddr=", host)
                continue
            try:
                entry = Multiaddr.parse(record[len(PREFIX) :])
            except AddressError as exc:
                self.malformed += 1
                log.debug("dnsaddr: skipped a TXT record of _dnsaddr.%s: %s", host, exc)
                continue
            await self.walk(entry, want, path)

    async def _dns(self, addr: Multiaddr, want: PeerId | None) -> None:
        tail = _tail(addr)
        code = addr.components[0][0].code
        try:  # the shape the host dials, checked before any lookup
            tcp_addr(Multiaddr.parse("/ip4/127.0.0.1" + tail))
        except AddressError:
            self.unusable += 1
            log.debug("dnsaddr: skipped %s: not TCP", addr)
            return
        if want is not None and addr.peer_id != want:
            self.other_peer += 1
            return
        host = str(addr.components[0][1])
        kinds = [("A", "ip4")] if code == Code.DNS4 else [("AAAA", "ip6")] if code == Code.DNS6 else []
        kinds = kinds or [("A", "ip4"), ("AAAA", "ip6")]
        for rdtype, proto in kinds:
            if self.full:
                break
            try:
                ips = await self._lookup(host, rdtype)
            except _Failed as exc:
                self.reasons.append(str(exc))
                continue
            for ip in ips:
                try:
                    found = Multiaddr.parse(f"/{proto}/{ip}{tail}")
                except AddressError:  # dnspython parsed it: not expected, but not trusted either
                    self.unusable += 1
                    continue
                self.add(found, want)


class DnsResolver:
    """Resolves /dnsaddr, /dns, /dns4 and /dns6 multiaddrs to ones the host dials (/ip4|/ip6 + /tcp [+ /p2p]).

    ``nameservers``: ``"ip"`` or ``"ip:port"`` (``"[ip6]:port"``) each; None uses the system's
    (/etc/resolv.conf). ``timeout`` bounds each lookup; ``max_depth`` the nested /dnsaddr levels (the
    input's own lookup is the first); ``max_results`` the addresses returned.
    """

    def __init__(
        self,
        nameservers: Sequence[str] | None = None,
        *,
        timeout: float = 5.0,
        max_depth: int = 4,
        max_results: int = 64,
    ) -> None:
        if isinstance(nameservers, str):
            raise LocalError("nameservers is a sequence of addresses, not one string")
        if timeout <= 0 or max_depth < 1 or max_results < 1:
            raise LocalError("timeout must be > 0, max_depth and max_results >= 1")
        self._nameservers = None if nameservers is None else [_nameserver(n) for n in nameservers]
        if self._nameservers == []:
            raise LocalError("nameservers is empty (None uses the system's)")
        self.timeout = timeout
        self.max_depth = max_depth
        self.max_results = max_results
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _dns(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            import dns.asyncresolver  # loaded here: `import mimirlite` stays free of dnspython
            import dns.nameserver
            import dns.resolver

            try:
                resolver = dns.asyncresolver.Resolver(configure=self._nameservers is None)
            except dns.resolver.NoResolverConfiguration as exc:
                raise _Failed(f"no system DNS configuration ({exc})") from None
            if self._nameservers is not None:
                resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in self._nameservers]
            resolver.timeout = self.timeout
            resolver.lifetime = self.timeout
            self._resolver = resolver
        return self._resolver

    async def _lookup(self, name: str, rdtype: str) -> list[str]:
        """The records of one lookup as text (TXT: the strings joined); _Failed with why otherwise."""
        import dns.exception
        import dns.name
        import dns.resolver

        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            raise _Failed(f"{name}: not a DNS name ({exc})") from None
        try:
            answer = await asyncio.wait_for(self._dns().resolve(qname, rdtype, search=False), self.timeout)
        except (asyncio.TimeoutError, dns.exception.Timeout):
            raise _Failed(f"{name} {rdtype}: no answer in {self.timeout} s") from None
        except dns.resolver.NXDOMAIN:
            raise _Failed(f"{name}: NXDOMAIN (no such name)") from None
        except dns.resolver.NoAnswer:
            raise _Failed(f"{name}: no {rdtype} records") from None
        except dns.resolver.NoNameservers as exc:
            raise _Failed(f"{name} {rdtype}: no nameserver answered ({exc})") from None
        except dns.exception.DNSException as exc:
            raise _Failed(f"{name} {rdtype}: {exc}") from None
        out: list[str] = []
        for rdata in answer.rrset or ():
            if rdtype != "TXT":
                out.append(rdata.to_text())
                continue
            strings: tuple[bytes, ...] = rdata.strings
            size = sum(map(len, strings))
            if size > MAX_TXT:
                log.debug(
                    "dnsaddr: skipped a TXT record of %s unread: %d bytes, over %d", name, size, MAX_TXT
                )
                out.append("")  # counted as malformed
                continue
            try:
                out.append(b"".join(strings).decode("ascii"))
            except UnicodeDecodeError:
                log.debug("dnsaddr: skipped a TXT record of %s: not ASCII", name)
                out.append("")
        return out

    async def resolve(self, addr: Multiaddr | str) -> list[Multiaddr]:
        """The TCP multiaddrs ``addr`` stands for, in the order DNS gave them, without duplicates.

        An /ip4 or /ip6 input comes back as is. With a trailing /p2p/<id>, only that peer's addresses
        come back. DnsaddrError (with why) when nothing usable did; AddressError for an input that
        is neither /dnsaddr, /dns, /dns4, /dns6 nor /ip4, /ip6.
        """
        ma = addr if isinstance(addr, Multiaddr) else Multiaddr.parse(addr)
        code = ma.components[0][0].code
        if code in _IP:
            return [ma]
        if code != Code.DNSADDR and code not in _DNS:
            raise AddressError(f"cannot resolve {str(ma)!r}: not /dnsaddr, /dns, /dns4, /dns6, /ip4 or /ip6")
        run = _Run(self)
        try:
            await run.walk(ma, None, ())
        except _Failed as exc:  # the resolver could not be set up
            run.reasons.append(str(exc))
        if not run.results:
            raise DnsaddrError(str(ma), run.why())
        log.debug("resolved %s to %d addresses in %d lookups", ma, len(run.results), run.lookups)
        return run.results
