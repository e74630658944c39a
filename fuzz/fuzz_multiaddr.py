"""Fuzz mimirlite/wire/multiaddr.py: binary multiaddrs a peer sends, text ones a user types.

Input: one mode byte, then the address: even, its binary form (``Multiaddr.decode``, as identify and
the DHT read it); odd, its text as UTF-8 (``Multiaddr.parse``, and the host's ``parse_multiaddr``).
Invariants: bytes raise only DecodeError (a remote error), text only AddressError (a local one); what
decodes is canonical (its bytes are the input, its text parses back to the same bytes) and within the
caps; text that parses is written back in a form that parses to the same address, and its bytes decode
to the same text; the host's TCP view of any address raises only AddressError.

    python fuzz/fuzz_multiaddr.py --write-seeds fuzz/corpus/multiaddr   # the seed corpus
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.errors import AddressError, DecodeError, MimirliteError
    from mimirlite.net.addr import parse_multiaddr, tcp_addr
    from mimirlite.wire.multiaddr import MAX_COMPONENTS, MAX_MULTIADDR_SIZE, Multiaddr


def _only(kind: type[MimirliteError], exc: MimirliteError, data: bytes) -> None:
    fuzzlib.check(isinstance(exc, kind), f"raised {type(exc).__name__}, not {kind.__name__}", data, exc)


def _tcp_view(addr: Multiaddr) -> None:
    try:
        tcp = tcp_addr(addr)
    except MimirliteError as exc:
        _only(AddressError, exc, addr.to_bytes())
        return
    fuzzlib.check(0 <= tcp.port <= 0xFFFF, "port out of range", addr, tcp)
    fuzzlib.check(Multiaddr.parse(tcp.multiaddr()) == addr, "TCP view does not write back", addr, tcp)


def _from_bytes(data: bytes) -> None:
    try:
        addr = Multiaddr.decode(data)
    except MimirliteError as exc:
        _only(DecodeError, exc, data)
        return
    fuzzlib.check(addr.to_bytes() == data, "decoded bytes differ from the input", data, addr)
    fuzzlib.check(len(data) <= MAX_MULTIADDR_SIZE, "size cap not applied", data)
    fuzzlib.check(len(addr.components) <= MAX_COMPONENTS, "component cap not applied", data)
    fuzzlib.check(Multiaddr.parse(str(addr)).to_bytes() == data, "text does not encode back", data, addr)
    _tcp_view(addr)


def _from_text(text: str) -> None:
    try:
        addr = Multiaddr.parse(text)
    except MimirliteError as exc:
        _only(AddressError, exc, text.encode("utf-8", "surrogatepass"))
        return
    fuzzlib.check(Multiaddr.parse(str(addr)) == addr, "canonical text parses differently", text, addr)
    fuzzlib.check(str(Multiaddr.decode(addr.to_bytes())) == str(addr), "bytes decode differently", text)
    try:
        parse_multiaddr(text)
    except MimirliteError as exc:
        _only(AddressError, exc, text.encode("utf-8", "surrogatepass"))
    _tcp_view(addr)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2 == 0:
        _from_bytes(data[1:])
    else:
        _from_text(data[1:].decode("utf-8", "replace"))


def seeds() -> list[bytes]:
    peer = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
    texts = [
        f"/ip4/192.168.1.5/tcp/4001/p2p/{peer}",
        "/ip6/::1/tcp/4001",
        "/ip6zone/eth0/ip6/fe80::1/udp/4001/quic-v1",
        "/dns4/example.com/tcp/443/wss",
        "/dnsaddr/bootstrap.libp2p.io/p2p/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC",
        "/ip4/127.0.0.1/udp/1234/quic-v1/webtransport/certhash/uEiDDq4_xNyDorZBH3TlGazyJdOWSwvo4PUo5YHFMrvDE8g",
        f"/ip4/10.0.0.1/tcp/4001/p2p/{peer}/p2p-circuit/p2p/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC",
        "/ip4/127.0.0.1/tcp/443/tls/sni/example.com/ws",
        "/ip4/1.2.3.4/udp/4001/webrtc-direct",
    ]
    out = [b"\x00" + Multiaddr.parse(t).to_bytes() for t in texts]
    out += [b"\x01" + t.encode() for t in texts]
    out += [
        b"\x01/ipfs/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC",
        b"\x01/certhash/b2uaraocy6yrdblb4sfptaddgimjmmpy",
    ]
    return out


def write_seeds(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for seed in seeds():
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write-seeds"]:
        write_seeds(Path(sys.argv[2]))
    else:
        fuzzlib.run(test_one_input)
