"""libp2p mDNS discovery records and state, sans-IO (libp2p spec ``discovery/mdns.md``).

On the wire this is what @libp2p/mdns 11 does: a query is one PTR question for ``_p2p._udp.local``;
an answer holds one PTR ``_p2p._udp.local -> <peer-name>._p2p._udp.local`` and one TXT record
``dnsaddr=<multiaddr>/p2p/<peer-id>`` per private or loopback address, with no SRV or A/AAAA records.
A reader takes the TXT records of the answers and additionals, keeps the ``dnsaddr=`` strings and
takes the peer ID from the first.

The DNS message codec is python-zeroconf's (``DNSIncoming``/``DNSOutgoing``, imported from the
modules that define them, on first use). Nothing here touches a socket or a clock:
:class:`MdnsCore` is given the time.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass

from mimirlite.errors import AddressError, DecodeError, LocalError, MimirliteError
from mimirlite.identity import PeerId
from mimirlite.wire.multiaddr import Multiaddr

log = logging.getLogger(__name__)

SERVICE_TAG = "_p2p._udp.local"
"""The DNS-SD service name libp2p peers query and answer for."""
MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353
RECORD_TTL = 120
"""TTL of the records we send, in seconds (as @libp2p/mdns)."""
MAX_PEER_NAME_LENGTH = 63
"""A DNS label; the peer name is the first label of the PTR target."""
MAX_TXT_STRING_LENGTH = 255
"""A TXT character-string, ``dnsaddr=`` included."""
MAX_PACKET_SIZE = 9000
"""Largest mDNS message we read (RFC 6762, section 17)."""
MAX_ADDRS_PER_PEER = 32
"""Addresses kept from one announcement; the rest are dropped."""
MAX_PEERS = 1024
"""Peers tracked at once; announcements of further peers are ignored until some are lost."""

DNSADDR_PREFIX = b"dnsaddr="
TYPE_PTR = 12
TYPE_TXT = 16
TYPE_ANY = 255
CLASS_IN = 1
_FLAGS_QUERY = 0x0000
_FLAGS_RESPONSE = 0x8400  # QR + AA, as multicast-dns sets them
_PEER_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
_PEER_ID_MARKERS = ("/p2p/", "/ipfs/")


# --- values ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A query asking for libp2p peers (PTR or ANY question for ``_p2p._udp.local``)."""


@dataclass(frozen=True)
class Announcement:
    """A peer's answer: its peer name, its peer ID and the addresses mimirlite can dial.

    ``addrs`` are TCP multiaddrs without ``/p2p/``, in the order the peer sent them.
    """

    peer_name: str
    peer_id: PeerId
    addrs: tuple[str, ...]


@dataclass(frozen=True)
class PeerDiscovered:
    """A peer seen for the first time, again after it was lost, or with new addresses."""

    peer_id: PeerId
    addrs: tuple[str, ...]


@dataclass(frozen=True)
class PeerLost:
    """A peer that answered none of our queries for the configured time."""

    peer_id: PeerId


# --- helpers -----------------------------------------------------------------------------------


def random_peer_name(rng: random.Random | None = None, length: int = MAX_PEER_NAME_LENGTH) -> str:
    """A random peer name like @libp2p/mdns makes (lower-case letters and digits, 63 by default)."""
    check_peer_name_length(length)
    choose = (rng or random.SystemRandom()).choice
    return "".join(choose(_PEER_NAME_CHARS) for _ in range(length))


def check_peer_name_length(length: int) -> None:
    if not 1 <= length <= MAX_PEER_NAME_LENGTH:
        raise LocalError(f"peer name must be 1 to {MAX_PEER_NAME_LENGTH} characters")


def check_peer_name(name: str) -> None:
    """LocalError unless ``name`` is a usable DNS label (ASCII letters, digits, ``-``, ``_``)."""
    check_peer_name_length(len(name))
    if not name.isascii() or not name.replace("-", "").replace("_", "").isalnum():
        raise LocalError(f"peer name {name!r} must be ASCII letters, digits, '-' or '_'")


def _ip_of(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP a multiaddr starts with; None when it starts with something else or is not a multiaddr."""
    try:
        return Multiaddr.parse(addr).ip
    except AddressError:
        return None


CIRCUIT = "/p2p-circuit"


def is_announceable(addr: str) -> bool:
    """Whether a multiaddr starts with a private or loopback IP (the ones mDNS may carry)."""
    ip = _ip_of(addr)
    if ip is None or ip.is_unspecified or ip.is_multicast:
        return False
    return ip.is_loopback or ip.is_private or not ip.is_global


def order_addrs(addrs: Iterable[str], *, keep_loopback: bool) -> tuple[str, ...]:
    """Non-loopback addresses first; loopback ones last, or dropped (a remote machine's loopback)."""
    outer: list[str] = []
    loop: list[str] = []
    for addr in addrs:
        ip = _ip_of(addr)
        (loop if ip is not None and ip.is_loopback else outer).append(addr)
    return tuple(outer + loop) if keep_loopback else tuple(outer)


def _split_peer_id(value: str) -> tuple[str, PeerId]:
    """``/ip4/../tcp/../p2p/<id>`` -> (the address before /p2p/, the peer ID); DecodeError otherwise."""
    for marker in _PEER_ID_MARKERS:
        base, sep, text = value.rpartition(marker)
        if sep:
            break
    else:
        raise DecodeError(f"dnsaddr {value!r} carries no /p2p/ peer ID")
    if not base or not text or "/" in text:
        raise DecodeError(f"dnsaddr {value!r} does not end in /p2p/<peer ID>")
    try:
        return base, PeerId.from_string(text)
    except MimirliteError as exc:
        raise DecodeError(f"dnsaddr {value!r}: {exc}") from None


def _dialable(base: str) -> str | None:
    """The canonical text of ``base``, a TCP multiaddr or a relayed one (``<relay's TCP multiaddr>/p2p/
    <relay>/p2p-circuit``), or None when mimirlite cannot dial it."""
    from mimirlite.net.addr import parse_multiaddr

    relay, circuit, rest = base.rpartition(CIRCUIT)
    try:
        if circuit and not rest:
            relay_part, relay_id = _split_peer_id(relay)
            return f"{parse_multiaddr(relay_part).multiaddr()}/p2p/{relay_id}{CIRCUIT}"
        return parse_multiaddr(base).multiaddr()
    except (MimirliteError, ValueError):
        return None


def _txt_strings(rdata: bytes) -> list[bytes]:
    """Split TXT rdata into its character-strings; DecodeError when a length overruns."""
    out: list[bytes] = []
    pos = 0
    while pos < len(rdata):
        end = pos + 1 + rdata[pos]
        if end > len(rdata):
            raise DecodeError("TXT character-string overruns its record")
        out.append(rdata[pos + 1 : end])
        pos = end
    return out


def _bare(name: str) -> str:
    return name.rstrip(".").lower()


# --- codec -------------------------------------------------------------------------------------


def encode_query() -> bytes:
    """One PTR question for ``_p2p._udp.local`` (id 0, as multicast-dns sends it)."""
    from zeroconf._dns import DNSQuestion
    from zeroconf._protocol.outgoing import DNSOutgoing

    out = DNSOutgoing(_FLAGS_QUERY, multicast=True)
    out.add_question(DNSQuestion(SERVICE_TAG + ".", TYPE_PTR, CLASS_IN))
    return out.packets()[0]


def encode_response(peer_name: str, addrs: Iterable[str]) -> bytes | None:
    """The answer to a query: PTR to ``<peer_name>._p2p._udp.local`` and one TXT per address.

    ``addrs`` are full multiaddrs (ending in ``/p2p/<peer ID>``); those that are not private or
    loopback, or whose TXT string would exceed 255 bytes, are left out. None when none is left.
    Addresses that do not fit in one packet are left out too (the PTR must travel with them).
    """
    from zeroconf._dns import DNSPointer, DNSText
    from zeroconf._protocol.outgoing import DNSOutgoing

    check_peer_name(peer_name)
    instance = f"{peer_name}.{SERVICE_TAG}."
    texts: list[bytes] = []
    for addr in addrs:
        data = DNSADDR_PREFIX + addr.encode()
        if not is_announceable(addr):
            log.debug("not announcing %s over mDNS: not a private or loopback address", addr)
        elif "/p2p/" not in addr:
            log.debug("not announcing %s over mDNS: it does not end in /p2p/<peer ID>", addr)
        elif len(data) > MAX_TXT_STRING_LENGTH:
            log.debug("not announcing %s over mDNS: longer than %d bytes", addr, MAX_TXT_STRING_LENGTH)
        else:
            texts.append(bytes([len(data)]) + data)
    if not texts:
        return None
    out = DNSOutgoing(_FLAGS_RESPONSE, multicast=True)
    out.add_answer_at_time(DNSPointer(SERVICE_TAG + ".", TYPE_PTR, CLASS_IN, RECORD_TTL, instance), 0)
    for text in texts:
        out.add_answer_at_time(DNSText(instance, TYPE_TXT, CLASS_IN, RECORD_TTL, text), 0)
    packets = out.packets()
    if len(packets) > 1:
        log.debug("mDNS answer too large: sending %d of %d packets' worth", 1, len(packets))
    return packets[0]


def decode_packet(data: bytes) -> Query | Announcement | None:
    """Read one mDNS message.

    Returns a :class:`Query` for a libp2p query, an :class:`Announcement` for a libp2p answer,
    None for anything else (other services, answers without addresses). Raises DecodeError when
    the message, or the record the peer ID comes from, is malformed; later malformed ``dnsaddr``
    strings are skipped with a debug log.
    """
    if len(data) > MAX_PACKET_SIZE:
        raise DecodeError(f"mDNS packet of {len(data)} bytes exceeds {MAX_PACKET_SIZE}")
    from zeroconf._dns import DNSPointer, DNSText
    from zeroconf._protocol.incoming import DNSIncoming

    msg = DNSIncoming(bytes(data))
    if not msg.valid:
        raise DecodeError("malformed DNS message")
    if msg.is_query():
        for question in msg.questions:
            if _bare(question.name) == SERVICE_TAG and question.type in (TYPE_PTR, TYPE_ANY):
                return Query()
        return None
    aliases: list[str] = []
    txts: list[bytes] = []
    for record in msg.answers():
        if isinstance(record, DNSPointer) and record.type == TYPE_PTR:
            if _bare(record.name) == SERVICE_TAG:
                aliases.append(record.alias)
        elif isinstance(record, DNSText) and record.type == TYPE_TXT:
            txts.append(record.text)
    if not aliases or not txts:
        return None
    alias = aliases[-1]  # as @libp2p/mdns: the last PTR answer names the peer
    if not _bare(alias).endswith("." + SERVICE_TAG):
        raise DecodeError(f"PTR target {alias!r} is not under {SERVICE_TAG}")
    values = [s[len(DNSADDR_PREFIX) :] for t in txts for s in _txt_strings(t) if s.startswith(DNSADDR_PREFIX)]
    if not values:
        raise DecodeError("answer carries no dnsaddr= TXT string")
    peer_id: PeerId | None = None
    addrs: list[str] = []
    for raw in values:
        try:
            base, pid = _split_peer_id(raw.decode("utf-8"))
        except (UnicodeDecodeError, DecodeError) as exc:
            if peer_id is None:
                raise DecodeError(f"first dnsaddr: {exc}") from None
            log.debug("skipping malformed dnsaddr from %s: %s", peer_id, exc)
            continue
        if peer_id is None:
            peer_id = pid
        elif pid != peer_id:
            log.debug("skipping dnsaddr for %s in an answer from %s", pid, peer_id)
            continue
        addr = _dialable(base)
        if addr is None:
            log.debug("skipping %s from %s: neither a TCP address nor one through a relay", base, peer_id)
        elif addr not in addrs:
            if len(addrs) >= MAX_ADDRS_PER_PEER:
                log.debug("dropping addresses of %s beyond %d", peer_id, MAX_ADDRS_PER_PEER)
                break
            addrs.append(addr)
    assert peer_id is not None
    return Announcement(_bare(alias).split(".", 1)[0], peer_id, tuple(addrs))


# --- state -------------------------------------------------------------------------------------


class MdnsCore:
    """What one discovery instance knows: its own name, the peers it has seen and when.

    ``receive`` turns a datagram into events (:class:`Query` to answer, :class:`PeerDiscovered`),
    ``expire`` reports peers silent for longer than ``silent_after`` seconds. Time is passed in.
    """

    def __init__(
        self, local_peer: PeerId, peer_name: str, *, silent_after: float, max_peers: int = MAX_PEERS
    ) -> None:
        check_peer_name(peer_name)
        self.local_peer = local_peer
        self.peer_name = peer_name
        self.silent_after = silent_after
        self.max_peers = max_peers
        self._peers: dict[PeerId, tuple[tuple[str, ...], float]] = {}

    @property
    def peers(self) -> dict[PeerId, tuple[str, ...]]:
        """Peers currently known, with their addresses."""
        return {pid: addrs for pid, (addrs, _) in self._peers.items()}

    def query(self) -> bytes:
        return encode_query()

    def response(self, addrs: Iterable[str]) -> bytes | None:
        """Our answer announcing ``addrs`` (full multiaddrs); None when there is nothing to announce."""
        return encode_response(self.peer_name, addrs)

    def receive(self, data: bytes, now: float, *, local: bool = True) -> Query | PeerDiscovered | None:
        """Handle one datagram; DecodeError when it is malformed.

        ``local`` says the datagram came from this machine: only then are the peer's loopback
        addresses kept. Non-loopback addresses come first.
        """
        found = decode_packet(data)
        if found is None or isinstance(found, Query):
            return found
        if found.peer_name == self.peer_name.lower() or found.peer_id == self.local_peer:
            return None
        addrs = order_addrs(found.addrs, keep_loopback=local)
        if not addrs:
            log.debug("ignoring mDNS answer from %s: no address mimirlite can dial", found.peer_id)
            return None
        known = self._peers.get(found.peer_id)
        if known is None and len(self._peers) >= self.max_peers:
            log.debug("ignoring mDNS answer from %s: %d peers tracked", found.peer_id, self.max_peers)
            return None
        self._peers[found.peer_id] = (addrs, now)
        if known is not None and known[0] == addrs:
            return None
        return PeerDiscovered(found.peer_id, addrs)

    def expire(self, now: float) -> list[PeerLost]:
        """Forget and report the peers not heard from for more than ``silent_after`` seconds."""
        lost = [pid for pid, (_, seen) in self._peers.items() if now - seen > self.silent_after]
        for pid in lost:
            del self._peers[pid]
        return [PeerLost(pid) for pid in lost]

    def forget(self, peer: PeerId | None = None) -> None:
        """Drop ``peer`` (every known peer when None) without reporting it: its next answer is news."""
        if peer is None:
            self._peers.clear()
        else:
            self._peers.pop(peer, None)
