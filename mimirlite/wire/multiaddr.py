"""Multiaddrs, text and binary (multiformats ``multiaddr``): the one codec mimirlite uses, sans-IO.

Identify (binary listen and observed addresses), mDNS (``dnsaddr=`` TXT text), the host (what to
dial and listen on, through :mod:`mimirlite.net.addr`) and the DHT and circuit relay to come all go
through here. Every protocol code the project meets is in :data:`PROTOCOLS` (the multicodec table's
codes); a multiaddr with any other code is refused.

Errors have a direction: text handed in by the local user (config, CLI, API) that is not a multiaddr
raises :class:`~mimirlite.errors.AddressError` (a LocalError); bytes a peer sent that are not one raise
:class:`~mimirlite.errors.DecodeError` (a ProtocolError). Nothing else escapes. Parsing is bounded
(:data:`MAX_MULTIADDR_SIZE` bytes, :data:`MAX_MULTIADDR_TEXT` characters, :data:`MAX_COMPONENTS`
components) and cached. Whatever decodes is canonical: its text encodes back to the same bytes.

Why not the ``multiaddr`` package (0.2.0), measured against this codec for issue 13: it takes
truncated values from a peer without a word (``04c0`` reads as ``/ip4/0.0.0.192``; 8% of 30,000
mutated inputs decoded to something that does not encode back, and an ``/ip6zone`` holding ``/``
decodes to text that does not parse), has no size or component cap, does not read ``/ipfs``, and its
first parse imports 85 modules (+46 ms) where this module costs about 1 ms at ``import mimirlite``;
uncached it was also slower (21 / 17 us text->bytes / bytes->text for ``/ip4/../tcp/../p2p/..``
against 16.5 / 15 us here; cached, 0.1 / 0.25 us).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from mimirlite.errors import AddressError, DecodeError, InvalidKeyError
from mimirlite.identity import PeerId
from mimirlite.wire.multibase import b64url_encode, multibase_decode
from mimirlite.wire.varint import decode_uvarint, encode_uvarint

__all__ = [
    "MAX_COMPONENTS",
    "MAX_MULTIADDR_SIZE",
    "MAX_MULTIADDR_TEXT",
    "PROTOCOLS",
    "Code",
    "Multiaddr",
    "Protocol",
    "decode_many",
    "multiaddr_from_bytes",
    "multiaddr_to_bytes",
    "tcp_multiaddr_bytes",
    "tcp_multiaddr_text",
]

MAX_MULTIADDR_SIZE = 1024
"""Bytes of one binary multiaddr; a longer one is refused unread."""
MAX_MULTIADDR_TEXT = 2048
"""Characters of one text multiaddr; a longer one is refused unread."""
MAX_COMPONENTS = 16
"""Protocol components of one multiaddr (``/ip4/x/tcp/y/p2p/z`` has 3; a relayed WebTransport address
with two certhashes about 9)."""


class Code(enum.IntEnum):
    """The multicodec codes of the protocols mimirlite reads and writes."""

    IP4 = 0x04
    TCP = 0x06
    DCCP = 0x21
    IP6 = 0x29
    IP6ZONE = 0x2A
    DNS = 0x35
    DNS4 = 0x36
    DNS6 = 0x37
    DNSADDR = 0x38
    SCTP = 0x84
    UDP = 0x0111
    WEBRTC_DIRECT = 0x0118
    WEBRTC = 0x0119
    P2P_CIRCUIT = 0x0122
    P2P = 0x01A5
    HTTPS = 0x01BB
    TLS = 0x01C0
    SNI = 0x01C1
    NOISE = 0x01C6
    QUIC = 0x01CC
    QUIC_V1 = 0x01CD
    WEBTRANSPORT = 0x01D1
    CERTHASH = 0x01D2
    WS = 0x01DD
    WSS = 0x01DE
    HTTP = 0x01E0


class _Kind(enum.Enum):
    """How a protocol's value is written: its binary size and its text form."""

    NONE = "none"  # no value
    IP4 = "ip4"  # 4 bytes, dotted quad
    IP6 = "ip6"  # 16 bytes, RFC 5952 text
    PORT = "port"  # 2 bytes big-endian, decimal
    TEXT = "text"  # length-prefixed UTF-8 without '/'
    P2P = "p2p"  # length-prefixed peer ID multihash, base58btc
    CERTHASH = "certhash"  # length-prefixed multihash, multibase (written as base64url)


_VARIABLE = -1
_SIZES = {_Kind.NONE: 0, _Kind.IP4: 4, _Kind.IP6: 16, _Kind.PORT: 2}


class Protocol(NamedTuple):
    """One row of the protocol table: code, text name, value kind and value size."""

    code: int
    name: str
    kind: _Kind
    size: int
    """Bytes of the value: 0 for none, -1 (``_VARIABLE``) for a length-prefixed one."""

    @property
    def has_value(self) -> bool:
        return self.size != 0


def _protocol(code: Code, name: str, kind: _Kind) -> Protocol:
    return Protocol(code, name, kind, _SIZES.get(kind, _VARIABLE))


PROTOCOLS: tuple[Protocol, ...] = (
    _protocol(Code.IP4, "ip4", _Kind.IP4),
    _protocol(Code.TCP, "tcp", _Kind.PORT),
    _protocol(Code.DCCP, "dccp", _Kind.PORT),
    _protocol(Code.IP6, "ip6", _Kind.IP6),
    _protocol(Code.IP6ZONE, "ip6zone", _Kind.TEXT),
    _protocol(Code.DNS, "dns", _Kind.TEXT),
    _protocol(Code.DNS4, "dns4", _Kind.TEXT),
    _protocol(Code.DNS6, "dns6", _Kind.TEXT),
    _protocol(Code.DNSADDR, "dnsaddr", _Kind.TEXT),
    _protocol(Code.SCTP, "sctp", _Kind.PORT),
    _protocol(Code.UDP, "udp", _Kind.PORT),
    _protocol(Code.WEBRTC_DIRECT, "webrtc-direct", _Kind.NONE),
    _protocol(Code.WEBRTC, "webrtc", _Kind.NONE),
    _protocol(Code.P2P_CIRCUIT, "p2p-circuit", _Kind.NONE),
    _protocol(Code.P2P, "p2p", _Kind.P2P),
    _protocol(Code.HTTPS, "https", _Kind.NONE),
    _protocol(Code.TLS, "tls", _Kind.NONE),
    _protocol(Code.SNI, "sni", _Kind.TEXT),
    _protocol(Code.NOISE, "noise", _Kind.NONE),
    _protocol(Code.QUIC, "quic", _Kind.NONE),
    _protocol(Code.QUIC_V1, "quic-v1", _Kind.NONE),
    _protocol(Code.WEBTRANSPORT, "webtransport", _Kind.NONE),
    _protocol(Code.CERTHASH, "certhash", _Kind.CERTHASH),
    _protocol(Code.WS, "ws", _Kind.NONE),
    _protocol(Code.WSS, "wss", _Kind.NONE),
    _protocol(Code.HTTP, "http", _Kind.NONE),
)
"""Every protocol the codec knows, in multicodec-table order of code."""

_BY_CODE: dict[int, Protocol] = {p.code: p for p in PROTOCOLS}
_BY_NAME: dict[str, Protocol] = {p.name: p for p in PROTOCOLS}
_BY_NAME["ipfs"] = _BY_NAME["p2p"]  # the old name of /p2p, read but never written
_CODE_BYTES: dict[int, bytes] = {p.code: encode_uvarint(p.code) for p in PROTOCOLS}


# --- values ------------------------------------------------------------------------------------


def _check_multihash(value: bytes) -> None:
    """ValueError unless ``value`` is one multihash: varint code, varint length, that many bytes."""
    try:
        code = decode_uvarint(value)
        length = decode_uvarint(value, code[1]) if code is not None else None
    except DecodeError as exc:
        raise ValueError(f"not a multihash: {exc}") from None
    if length is None or len(value) - length[1] != length[0]:
        raise ValueError("not a multihash: its length does not match its digest")


def _ip6_text(ip6: ipaddress.IPv6Address) -> str:
    """RFC 5952 text; an IPv4-mapped address ends in a dotted quad (as go-multiaddr, Python 3.13)."""
    mapped = ip6.ipv4_mapped
    return str(ip6) if mapped is None else f"::ffff:{mapped}"


def _value_from_text(kind: _Kind, value: str) -> tuple[bytes, str]:
    """(binary value, canonical text) of a text value; ValueError when it is malformed."""
    if kind is _Kind.IP4:  # ipaddress takes only the canonical dotted quad (no leading zeros)
        return ipaddress.IPv4Address(value).packed, value
    if kind is _Kind.IP6:
        if "%" in value:  # ipaddress would take a scope; multiaddr writes it as /ip6zone
            raise ValueError("an IPv6 zone goes in /ip6zone")
        ip6 = ipaddress.IPv6Address(value)
        return ip6.packed, _ip6_text(ip6)
    if kind is _Kind.PORT:
        if not (value.isascii() and value.isdigit()) or len(value) > 5 or int(value) > 0xFFFF:
            raise ValueError(f"bad port {value!r}")
        port = int(value)
        return port.to_bytes(2, "big"), value if value[0] != "0" else str(port)
    if kind is _Kind.P2P:
        try:
            pid = PeerId.from_string(value)
        except InvalidKeyError as exc:
            raise ValueError(str(exc)) from None
        # base58btc text is already canonical (one text per byte string); a CID is rewritten
        return pid.to_bytes(), value if value.startswith(("1", "Qm")) else pid.to_base58()
    if kind is _Kind.CERTHASH:
        raw = multibase_decode(value)
        _check_multihash(raw)
        return raw, "u" + b64url_encode(raw)
    return value.encode("utf-8"), value


def _value_to_text(kind: _Kind, value: bytes) -> str:
    """Canonical text of a binary value; ValueError when it is malformed."""
    if kind is _Kind.IP4:
        return str(ipaddress.IPv4Address(value))
    if kind is _Kind.IP6:
        return _ip6_text(ipaddress.IPv6Address(value))
    if kind is _Kind.PORT:
        return str(int.from_bytes(value, "big"))
    if kind is _Kind.P2P:
        try:
            return PeerId.from_bytes(value).to_base58()
        except InvalidKeyError as exc:
            raise ValueError(f"bad value: {exc}") from None
    if kind is _Kind.CERTHASH:
        _check_multihash(value)
        return "u" + b64url_encode(value)
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("value is not UTF-8") from None
    if not text or "/" in text:
        raise ValueError("value is empty or contains '/'")
    return text


# --- the multiaddr -----------------------------------------------------------------------------


class Multiaddr:
    """A valid multiaddr: its canonical binary and text forms and its components.

    Make one with :meth:`parse` (text from the local user: AddressError) or :meth:`decode` (bytes from
    a peer: DecodeError); both are cached. Equal when the bytes are equal; hashable; immutable.
    """

    __slots__ = ("_bytes", "_text", "components")

    components: tuple[tuple[Protocol, str | None], ...]
    """Each protocol with its value in canonical text (None for a protocol without a value)."""

    def __init__(self, buf: bytes, text: str, components: tuple[tuple[Protocol, str | None], ...]) -> None:
        # private: go through parse() / decode(), which validate
        self._bytes = buf
        self._text = text
        self.components = components

    @staticmethod
    def parse(text: str) -> Multiaddr:
        """Parse a text multiaddr (``/ip4/1.2.3.4/tcp/4001/p2p/12D3KooW...``); AddressError if not one."""
        return _parse_text(text)

    @staticmethod
    def decode(buf: bytes) -> Multiaddr:
        """Read a binary multiaddr a peer sent; DecodeError if it is not one."""
        return _decode_bytes(bytes(buf))

    def to_bytes(self) -> bytes:
        """The binary form (what identify, the DHT and relay messages carry)."""
        return self._bytes

    @property
    def protocols(self) -> tuple[str, ...]:
        """The protocol names, in order (``("ip4", "tcp", "p2p")``)."""
        return tuple(p.name for p, _ in self.components)

    def value_for(self, name: str) -> str | None:
        """The text value of the first component named ``name`` (None if there is none or it has no value)."""
        for proto, value in self.components:
            if proto.name == name:
                return value
        return None

    @property
    def peer_id(self) -> PeerId | None:
        """The peer ID of a trailing ``/p2p/<id>`` (the peer this address reaches), else None."""
        if self.components and self.components[-1][0].code == Code.P2P:
            return PeerId.from_string(str(self.components[-1][1]))
        return None

    def without_peer_id(self) -> Multiaddr:
        """This address without its trailing ``/p2p/<id>`` (itself when it has none)."""
        if not self.components or self.components[-1][0].code != Code.P2P or len(self.components) == 1:
            return self
        return _parse_text(self._text.rsplit("/p2p/", 1)[0])

    def with_peer_id(self, peer_id: PeerId) -> Multiaddr:
        """This address ending in ``/p2p/<peer_id>`` (replacing a trailing one)."""
        base = self.without_peer_id()
        only_p2p = base.components[-1][0].code == Code.P2P  # the address was /p2p/<id> alone
        return _parse_text(f"{'' if only_p2p else base._text}/p2p/{peer_id}")

    def encapsulate(self, other: Multiaddr) -> Multiaddr:
        """``other`` appended to this address (``/ip4/../p2p/relay`` + ``/p2p-circuit/p2p/target``)."""
        return _parse_text(self._text + other._text)

    @property
    def is_relayed(self) -> bool:
        """Whether the address goes through a circuit relay (has ``/p2p-circuit``)."""
        return any(p.code == Code.P2P_CIRCUIT for p, _ in self.components)

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address of a leading ``/ip4`` or ``/ip6`` component, else None."""
        proto, value = self.components[0]
        if proto.code == Code.IP4:
            return ipaddress.IPv4Address(value)
        if proto.code == Code.IP6:
            return ipaddress.IPv6Address(value)
        return None

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"Multiaddr({self._text!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Multiaddr):
            return NotImplemented
        return self._bytes == other._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)


@functools.lru_cache(maxsize=1024)
def _parse_text(text: str) -> Multiaddr:
    if len(text) > MAX_MULTIADDR_TEXT:
        raise AddressError(f"multiaddr of {len(text)} characters exceeds the {MAX_MULTIADDR_TEXT} cap")
    parts = text.split("/")
    if len(parts) < 2 or parts[0] != "" or "" in parts[1:]:
        raise AddressError(f"invalid multiaddr {text!r}: it must be /<protocol>[/<value>]...")
    out = bytearray()
    texts: list[str] = []
    components: list[tuple[Protocol, str | None]] = []
    i = 1
    while i < len(parts):
        proto = _BY_NAME.get(parts[i])
        if proto is None:
            raise AddressError(f"unsupported protocol /{parts[i]} in {text!r}")
        if len(components) >= MAX_COMPONENTS:
            raise AddressError(f"multiaddr {text[:64]!r}... has more than {MAX_COMPONENTS} components")
        out += _CODE_BYTES[proto.code]
        texts.append(proto.name)
        i += 1
        if proto.size == 0:
            components.append((proto, None))
            continue
        if i >= len(parts):
            raise AddressError(f"missing /{proto.name} value in {text!r}")
        try:
            raw, canonical = _value_from_text(proto.kind, parts[i])
        except ValueError as exc:
            raise AddressError(f"invalid /{proto.name} value in {text!r}: {exc}") from None
        if proto.size == _VARIABLE:
            out += encode_uvarint(len(raw))
        out += raw
        texts.append(canonical)
        components.append((proto, canonical))
        i += 1
    if len(out) > MAX_MULTIADDR_SIZE:
        raise AddressError(f"multiaddr {text[:64]!r}... exceeds {MAX_MULTIADDR_SIZE} bytes")
    return Multiaddr(bytes(out), "/" + "/".join(texts), tuple(components))


@functools.lru_cache(maxsize=1024)
def _decode_bytes(buf: bytes) -> Multiaddr:
    if len(buf) > MAX_MULTIADDR_SIZE:
        raise DecodeError(f"multiaddr: {len(buf)} bytes exceed the {MAX_MULTIADDR_SIZE} byte cap")
    if not buf:
        raise DecodeError("multiaddr: empty")
    texts: list[str] = []
    components: list[tuple[Protocol, str | None]] = []
    pos = 0
    while pos < len(buf):
        if len(components) >= MAX_COMPONENTS:
            raise DecodeError(f"multiaddr: more than {MAX_COMPONENTS} components")
        got = decode_uvarint(buf, pos)
        if got is None:
            raise DecodeError("multiaddr: truncated protocol code")
        code, pos = got
        proto = _BY_CODE.get(code)
        if proto is None:
            raise DecodeError(f"multiaddr: unsupported protocol code {code:#x}")
        texts.append(proto.name)
        size = proto.size
        if size == 0:
            components.append((proto, None))
            continue
        if size == _VARIABLE:
            got = decode_uvarint(buf, pos)
            if got is None:
                raise DecodeError(f"multiaddr: truncated /{proto.name} length")
            size, pos = got
        if pos + size > len(buf):
            raise DecodeError(f"multiaddr: truncated /{proto.name} value")
        try:
            value = _value_to_text(proto.kind, buf[pos : pos + size])
        except ValueError as exc:
            raise DecodeError(f"multiaddr: bad /{proto.name} value: {exc}") from None
        texts.append(value)
        components.append((proto, value))
        pos += size
    return Multiaddr(buf, "/" + "/".join(texts), tuple(components))


# --- shortcuts ---------------------------------------------------------------------------------


def multiaddr_from_bytes(buf: bytes) -> str:
    """The text form of a binary multiaddr; DecodeError for bytes we cannot read."""
    return str(_decode_bytes(bytes(buf)))


def decode_many(bufs: Iterable[bytes], max_count: int) -> tuple[list[Multiaddr], int]:
    """Decode a peer's list of binary multiaddrs, keeping at most ``max_count``.

    Ones that do not decode are skipped, and past ``max_count`` the rest are not decoded at all (a
    peer's list costs at most ``max_count`` decodes); the int is how many were left out either way.
    """
    out: list[Multiaddr] = []
    dropped = 0
    for buf in bufs:
        if len(out) >= max_count:
            dropped += 1
            continue
        try:
            out.append(_decode_bytes(bytes(buf)))
        except DecodeError:
            dropped += 1
    return out, dropped


def multiaddr_to_bytes(text: str) -> bytes:
    """The binary form of a text multiaddr; AddressError for one we cannot encode."""
    return _parse_text(text).to_bytes()


def tcp_multiaddr_bytes(host: str, port: int) -> bytes:
    """``/ip4|ip6/<host>/tcp/<port>`` in binary form (an IPv6 zone is dropped); ValueError for a bad host."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    code = _CODE_BYTES[Code.IP4 if ip.version == 4 else Code.IP6]
    return code + ip.packed + _CODE_BYTES[Code.TCP] + port.to_bytes(2, "big")


def tcp_multiaddr_text(host: str, port: int, peer_id: PeerId | None = None) -> str:
    """``/ip4|ip6/<host>/tcp/<port>[/p2p/<peer_id>]`` for an IP address ``host`` already checked."""
    text = f"/{'ip6' if ':' in host else 'ip4'}/{host}/tcp/{port}"
    return f"{text}/p2p/{peer_id}" if peer_id else text
