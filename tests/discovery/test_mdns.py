"""mDNS discovery: sans-IO records with literal packets, then real peers on namespace test hosts.

Multicast only ever runs inside the namespaces of tests/helpers/netns.py, never on this machine's interfaces.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimirlite import Host, KeyPair, PeerId
from mimirlite.discovery import MdnsDiscovery
from mimirlite.discovery.records import (
    MAX_ADDRS_PER_PEER,
    SERVICE_TAG,
    Announcement,
    MdnsCore,
    PeerDiscovered,
    PeerLost,
    Query,
    decode_packet,
    encode_query,
    encode_response,
    is_announceable,
    random_peer_name,
)
from mimirlite.errors import DecodeError, LocalError, MimirliteError
from tests.helpers.mdns import JS_NAME, JS_PEER, JS_QUERY, JS_RESPONSE, NsPeer
from tests.helpers.netns import Inbox, RoutedNet, TestNet, require_netns

ROOT = Path(__file__).resolve().parents[2]


PTR, TXT, SRV, A, ANY = 12, 16, 33, 1, 255
RESPONSE_FLAGS = 0x8400


# ---- a literal DNS message builder (uncompressed names) ----------------------------------------


def dns_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".") if label) + b"\0"


def question(name: str, qtype: int = PTR) -> bytes:
    return dns_name(name) + struct.pack("!HH", qtype, 1)


def record(name: str, rtype: int, rdata: bytes, ttl: int = 120) -> bytes:
    return dns_name(name) + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def txt(*strings: bytes) -> bytes:
    return b"".join(bytes([len(s)]) + s for s in strings)


def message(
    flags: int,
    questions: Sequence[bytes] = (),
    answers: Sequence[bytes] = (),
    additionals: Sequence[bytes] = (),
) -> bytes:
    head = struct.pack("!HHHHHH", 0, flags, len(questions), len(answers), 0, len(additionals))
    return head + b"".join(questions) + b"".join(answers) + b"".join(additionals)


def announcement(name: str, *values: bytes, in_additionals: bool = False) -> bytes:
    """A response: PTR to ``name`` and one TXT record per value (``dnsaddr=`` + value)."""
    instance = f"{name}.{SERVICE_TAG}"
    ptr = record(SERVICE_TAG, PTR, dns_name(instance))
    texts = [record(instance, TXT, txt(b"dnsaddr=" + v)) for v in values]
    if in_additionals:
        return message(RESPONSE_FLAGS, answers=[ptr], additionals=texts)
    return message(RESPONSE_FLAGS, answers=[ptr, *texts])


@pytest.fixture(scope="module")
def peer() -> PeerId:
    return KeyPair.generate().peer_id


# ---- codec ------------------------------------------------------------------------------------


def test_query_is_byte_identical_to_libp2p_mdns() -> None:
    assert encode_query() == JS_QUERY
    assert decode_packet(JS_QUERY) == Query()


def test_reads_the_answer_libp2p_mdns_sends() -> None:
    found = decode_packet(JS_RESPONSE)
    assert found == Announcement(
        JS_NAME, PeerId.from_string(JS_PEER), ("/ip4/10.77.0.2/tcp/4001", "/ip4/127.0.0.1/tcp/4001")
    )


def test_our_answer_has_the_shape_libp2p_mdns_reads(peer: PeerId) -> None:
    from zeroconf._dns import DNSPointer, DNSText
    from zeroconf._protocol.incoming import DNSIncoming

    addrs = [f"/ip4/10.1.2.3/tcp/4001/p2p/{peer}", f"/ip4/127.0.0.1/tcp/4001/p2p/{peer}"]
    packet = encode_response("mypeer", addrs)
    assert packet is not None
    msg = DNSIncoming(packet)
    assert msg.valid and msg.is_response() and msg.flags == RESPONSE_FLAGS
    assert msg.num_questions == 0 and msg.num_answers == 3
    assert msg.num_additionals == 0 and msg.num_authorities == 0
    ptr, *texts = msg.answers()
    assert isinstance(ptr, DNSPointer)
    assert (ptr.name, ptr.alias, ptr.ttl, ptr.class_) == (
        "_p2p._udp.local.",
        "mypeer._p2p._udp.local.",
        120,
        1,
    )
    assert [t.type for t in texts] == [TXT, TXT]  # no SRV, no A/AAAA
    for text, addr in zip(texts, addrs, strict=True):
        assert isinstance(text, DNSText)
        assert text.name == "mypeer._p2p._udp.local." and text.class_ == 1 and text.ttl == 120
        assert text.text == txt(b"dnsaddr=" + addr.encode())  # one character-string per record
    assert decode_packet(packet) == Announcement(
        "mypeer", peer, ("/ip4/10.1.2.3/tcp/4001", "/ip4/127.0.0.1/tcp/4001")
    )


def test_answer_carries_only_private_and_short_addresses(peer: PeerId) -> None:
    long_ = f"/ip4/10.0.0.9/tcp/1{'/tcp/1' * 40}/p2p/{peer}"
    addrs = [f"/ip4/8.8.8.8/tcp/1/p2p/{peer}", long_, f"/ip4/192.168.1.5/tcp/2/p2p/{peer}"]
    packet = encode_response("x", addrs)
    assert packet is not None
    assert decode_packet(packet) == Announcement("x", peer, ("/ip4/192.168.1.5/tcp/2",))
    assert encode_response("x", [f"/ip4/1.1.1.1/tcp/1/p2p/{peer}"]) is None
    assert encode_response("x", ["/ip4/10.0.0.1/tcp/1"]) is None  # no peer ID
    assert encode_response("x", []) is None


def test_relayed_addresses_through_a_lan_relay_are_announced_and_read(peer: PeerId) -> None:
    """A node's ``<relay>/p2p-circuit`` address goes out as its direct ones do when the relay is on the LAN
    (mDNS carries private and loopback addresses only, as @libp2p/mdns); it is read back for dialing."""
    relay = KeyPair.generate().peer_id
    lan = f"/ip4/10.1.2.3/tcp/4001/p2p/{relay}/p2p-circuit"
    addrs = [
        f"/ip4/192.168.1.5/tcp/2/p2p/{peer}",
        f"{lan}/p2p/{peer}",
        f"/ip4/8.8.8.8/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{peer}",  # a public relay: not on mDNS
    ]
    packet = encode_response("x", addrs)
    assert packet is not None
    assert decode_packet(packet) == Announcement("x", peer, ("/ip4/192.168.1.5/tcp/2", lan))
    host = Host()
    host.add_addrs(peer, decode_packet(packet).addrs)
    assert host.addrs_of(peer) == [addrs[0], addrs[1]]


def test_unusable_relayed_addresses_are_skipped(peer: PeerId) -> None:
    relay = KeyPair.generate().peer_id
    bad = [
        f"/ip4/10.1.2.3/tcp/4001/p2p-circuit/p2p/{peer}",  # which relay?
        f"/ip4/10.1.2.3/udp/4001/quic-v1/p2p/{relay}/p2p-circuit/p2p/{peer}",  # not TCP
        f"/ip4/10.1.2.3/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{relay}/p2p-circuit/p2p/{peer}",
    ]
    packet = encode_response("x", [f"/ip4/192.168.1.5/tcp/2/p2p/{peer}", *bad])
    assert packet is not None
    assert decode_packet(packet) == Announcement("x", peer, ("/ip4/192.168.1.5/tcp/2",))


@pytest.mark.parametrize("name", ["", "a" * 64, "bad.name", "bad name", "é"])
def test_peer_name_must_be_one_label(name: str, peer: PeerId) -> None:
    with pytest.raises(LocalError):
        encode_response(name, [f"/ip4/10.0.0.1/tcp/1/p2p/{peer}"])


def test_random_peer_name_is_like_libp2p_mdns() -> None:
    name = random_peer_name()
    assert len(name) == 63 and name.isalnum() and name == name.lower()
    assert random_peer_name() != name


@pytest.mark.parametrize(
    ("addr", "ok"),
    [
        ("/ip4/10.0.0.1/tcp/1", True),
        ("/ip4/127.0.0.1/tcp/1", True),
        ("/ip4/192.168.0.1/tcp/1", True),
        ("/ip4/172.16.0.1/tcp/1", True),
        ("/ip6/::1/tcp/1", True),
        ("/ip6/fd00::1/tcp/1", True),
        ("/ip4/8.8.8.8/tcp/1", False),
        ("/ip4/0.0.0.0/tcp/1", False),
        ("/dns4/example.com/tcp/1", False),
        ("garbage", False),
    ],
)
def test_announceable_addresses(addr: str, ok: bool) -> None:
    assert is_announceable(addr) is ok


def test_reads_txt_from_additionals_and_multi_string_txt(peer: PeerId) -> None:
    spec_style = announcement("n1", f"/ip4/10.0.0.1/tcp/7/p2p/{peer}".encode(), in_additionals=True)
    assert decode_packet(spec_style) == Announcement("n1", peer, ("/ip4/10.0.0.1/tcp/7",))
    instance = f"n2.{SERVICE_TAG}"
    multi = message(
        RESPONSE_FLAGS,
        answers=[record(SERVICE_TAG, PTR, dns_name(instance))],
        additionals=[
            record(instance, SRV, struct.pack("!HHH", 0, 0, 7) + dns_name("h.local")),
            record(
                instance,
                TXT,
                txt(
                    f"dnsaddr=/ip4/10.0.0.1/tcp/7/p2p/{peer}".encode(),
                    b"other=1",
                    f"dnsaddr=/ip4/10.0.0.2/tcp/7/p2p/{peer}".encode(),
                ),
            ),
            record("h.local", A, bytes([10, 0, 0, 1])),
        ],
    )
    assert decode_packet(multi) == Announcement("n2", peer, ("/ip4/10.0.0.1/tcp/7", "/ip4/10.0.0.2/tcp/7"))


def test_peer_id_comes_from_the_first_dnsaddr(peer: PeerId) -> None:
    other = KeyPair.generate().peer_id
    packet = announcement(
        "n",
        f"/ip4/10.0.0.1/tcp/1/p2p/{peer}".encode(),
        f"/ip4/10.0.0.2/tcp/1/p2p/{other}".encode(),  # another peer's: skipped
        f"/ip4/10.0.0.3/udp/1/quic-v1/p2p/{peer}".encode(),  # not TCP: skipped
        f"/ip4/10.0.0.4/tcp/1/p2p/{peer}/extra".encode(),  # malformed, not first: skipped
        f"/ip4/10.0.0.1/tcp/1/p2p/{peer}".encode(),  # duplicate
        f"/ip4/10.0.0.5/tcp/1/ipfs/{peer}".encode(),  # legacy /ipfs/ form
    )
    assert decode_packet(packet) == Announcement("n", peer, ("/ip4/10.0.0.1/tcp/1", "/ip4/10.0.0.5/tcp/1"))
    many = announcement("n", *(f"/ip4/10.0.1.{i}/tcp/1/p2p/{peer}".encode() for i in range(40)))
    found = decode_packet(many)
    assert isinstance(found, Announcement) and len(found.addrs) == MAX_ADDRS_PER_PEER


def test_other_messages_are_not_ours(peer: PeerId) -> None:
    dnsaddr = f"dnsaddr=/ip4/10.0.0.1/tcp/1/p2p/{peer}".encode()
    other_service = message(
        RESPONSE_FLAGS,
        answers=[
            record("_http._tcp.local", PTR, dns_name("web._http._tcp.local")),
            record("web._http._tcp.local", TXT, txt(dnsaddr)),
        ],
    )
    no_ptr = message(RESPONSE_FLAGS, answers=[record(f"n.{SERVICE_TAG}", TXT, txt(dnsaddr))])
    ptr_only = message(RESPONSE_FLAGS, answers=[record(SERVICE_TAG, PTR, dns_name(f"n.{SERVICE_TAG}"))])
    for packet in (other_service, no_ptr, ptr_only, message(0, questions=[question("_http._tcp.local")])):
        assert decode_packet(packet) is None
    assert decode_packet(message(0, questions=[question("_P2P._udp.local.", ANY)])) == Query()
    assert decode_packet(message(0, questions=[question(SERVICE_TAG, SRV)])) is None


MALFORMED = {
    "short header": b"\x00\x00\x84\x00\x00",
    "label runs past the end": b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3f_p2p",
    "compression loop": b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x0c\x00\x01",
    "no peer ID": announcement("n", b"/ip4/10.0.0.1/tcp/1"),
    "bad peer ID": announcement("n", b"/ip4/10.0.0.1/tcp/1/p2p/QmNotAPeerId"),
    "peer ID then more": announcement("n", b"/ip4/10.0.0.1/tcp/1/p2p/"),
    "not UTF-8": announcement("n", b"/ip4/\xff/tcp/1/p2p/x"),
    "no dnsaddr": message(
        RESPONSE_FLAGS,
        answers=[
            record(SERVICE_TAG, PTR, dns_name(f"n.{SERVICE_TAG}")),
            record(f"n.{SERVICE_TAG}", TXT, txt(b"hello")),
        ],
    ),
    "TXT string overruns": message(
        RESPONSE_FLAGS,
        answers=[
            record(SERVICE_TAG, PTR, dns_name(f"n.{SERVICE_TAG}")),
            record(f"n.{SERVICE_TAG}", TXT, b"\x40dnsaddr=/ip4"),
        ],
    ),
    "PTR target elsewhere": message(
        RESPONSE_FLAGS,
        answers=[
            record(SERVICE_TAG, PTR, dns_name("n.example.com")),
            record("n.example.com", TXT, txt(b"dnsaddr=/ip4/10.0.0.1/tcp/1/p2p/x")),
        ],
    ),
    "too large": b"\x00" * 9001,
}


@pytest.mark.parametrize("packet", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_packets_raise_decode_error(packet: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_packet(packet)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_our_errors(data: bytes) -> None:
    try:
        found = decode_packet(data)
    except MimirliteError:
        return
    assert found is None or isinstance(found, (Query, Announcement))


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(JS_RESPONSE) - 1), st.integers(0, 255)), max_size=6),
    st.integers(0, len(JS_RESPONSE)),
)
def test_mutated_libp2p_answers_only_raise_our_errors(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(JS_RESPONSE)
    for pos, value in edits:
        data[pos] = value
    try:
        found = decode_packet(bytes(data[:cut] if cut else data))
    except MimirliteError:
        return
    assert found is None or isinstance(found, (Query, Announcement))


# ---- the state machine ------------------------------------------------------------------------


def test_core_reports_new_changed_and_silent_peers(peer: PeerId) -> None:
    me = KeyPair.generate().peer_id
    core = MdnsCore(me, "me", silent_after=30.0)
    a1 = announcement("other", f"/ip4/10.0.0.1/tcp/1/p2p/{peer}".encode())
    a2 = announcement("other", f"/ip4/10.0.0.2/tcp/1/p2p/{peer}".encode())
    assert core.receive(JS_QUERY, 0.0) == Query()
    assert core.receive(a1, 1.0) == PeerDiscovered(peer, ("/ip4/10.0.0.1/tcp/1",))
    assert core.receive(a1, 20.0) is None  # already known, same addresses
    assert core.expire(45.0) == []  # heard from 25 s ago
    assert core.receive(a2, 46.0) == PeerDiscovered(peer, ("/ip4/10.0.0.2/tcp/1",))
    assert core.peers == {peer: ("/ip4/10.0.0.2/tcp/1",)}
    assert core.expire(76.5) == [PeerLost(peer)]
    assert core.peers == {}
    assert core.receive(a2, 80.0) == PeerDiscovered(peer, ("/ip4/10.0.0.2/tcp/1",))  # back again


def test_core_reports_a_forgotten_peer_again(peer: PeerId) -> None:
    core = MdnsCore(KeyPair.generate().peer_id, "me", silent_after=30.0)
    other = KeyPair.generate().peer_id
    a = announcement("a", f"/ip4/10.0.0.1/tcp/1/p2p/{peer}".encode())
    b = announcement("b", f"/ip4/10.0.0.2/tcp/1/p2p/{other}".encode())
    assert core.receive(a, 0.0) is not None and core.receive(b, 0.0) is not None
    core.forget(peer)  # e.g. its connection dropped: the same answer is news again
    assert core.peers == {other: ("/ip4/10.0.0.2/tcp/1",)}
    assert core.receive(a, 1.0) == PeerDiscovered(peer, ("/ip4/10.0.0.1/tcp/1",))
    assert core.receive(b, 1.0) is None


def test_core_ignores_itself(peer: PeerId) -> None:
    core = MdnsCore(peer, "me", silent_after=30.0)
    own = core.response([f"/ip4/10.0.0.1/tcp/1/p2p/{peer}"])
    assert own is not None and core.receive(own, 0.0) is None
    # same name, other peer ID (a name clash is treated as ourselves, as @libp2p/mdns does)
    other = KeyPair.generate().peer_id
    assert core.receive(announcement("me", f"/ip4/10.0.0.1/tcp/1/p2p/{other}".encode()), 0.0) is None
    # other name, our peer ID
    assert core.receive(announcement("x", f"/ip4/10.0.0.1/tcp/1/p2p/{peer}".encode()), 0.0) is None


def test_core_keeps_loopback_only_from_this_machine(peer: PeerId) -> None:
    core = MdnsCore(KeyPair.generate().peer_id, "me", silent_after=30.0)
    packet = announcement(
        "o", f"/ip4/127.0.0.1/tcp/1/p2p/{peer}".encode(), f"/ip4/10.0.0.1/tcp/1/p2p/{peer}".encode()
    )
    assert core.receive(packet, 0.0, local=False) == PeerDiscovered(peer, ("/ip4/10.0.0.1/tcp/1",))
    core.forget()
    found = core.receive(packet, 0.0, local=True)
    assert found == PeerDiscovered(peer, ("/ip4/10.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/1"))
    loop_only = announcement("o", f"/ip4/127.0.0.1/tcp/1/p2p/{peer}".encode())
    core.forget()
    assert core.receive(loop_only, 0.0, local=False) is None


def test_core_bounds_the_peer_table() -> None:
    core = MdnsCore(KeyPair.generate().peer_id, "me", silent_after=30.0, max_peers=2)
    peers = [KeyPair.generate().peer_id for _ in range(3)]
    events = [
        core.receive(announcement(f"p{i}", f"/ip4/10.0.0.1/tcp/{i + 1}/p2p/{p}".encode()), 0.0)
        for i, p in enumerate(peers)
    ]
    assert [e is not None for e in events] == [True, True, False]


def test_discovery_checks_its_arguments() -> None:
    host = Host()
    for kwargs in ({"interval": 0}, {"lost_after": 0}, {"interfaces": ["eth0"]}, {"peer_name": "a.b"}):
        with pytest.raises(LocalError):
            MdnsDiscovery(host, **kwargs)


class FakeTransport:
    """Records what the shell sends (no socket)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.changed = asyncio.Event()

    def sendto(self, data: bytes, addr: Any) -> None:
        assert addr == ("224.0.0.251", 5353)
        self.sent.append(data)
        self.changed.set()

    def close(self) -> None:
        pass


class FakeHost:
    def __init__(self) -> None:
        self.peer_id = KeyPair.generate().peer_id
        self.announced_addrs = [
            f"/ip4/10.0.0.1/tcp/4001/p2p/{self.peer_id}",
            f"/ip4/127.0.0.1/tcp/4001/p2p/{self.peer_id}",
        ]
        self.added: list[tuple[PeerId, list[str]]] = []

    def add_addrs(self, peer_id: PeerId, addrs: list[str]) -> None:
        self.added.append((peer_id, addrs))


def socketless_discovery(**kwargs: Any) -> tuple[MdnsDiscovery, FakeHost, FakeTransport]:
    """An MdnsDiscovery whose one interface (10.0.0.1/24) is a FakeTransport: the shell without sockets."""
    import ipaddress

    from mimirlite.discovery.mdns import _Sender

    host = FakeHost()
    disc = MdnsDiscovery(host, **kwargs)  # type: ignore[arg-type]
    transport = FakeTransport()
    disc._senders.append(_Sender(ipaddress.IPv4Interface("10.0.0.1/24"), transport))  # type: ignore[arg-type]
    return disc, host, transport


async def test_query_floods_get_at_most_one_answer_per_gap() -> None:
    disc, host, transport = socketless_discovery()
    for _ in range(50):
        disc._datagram(JS_QUERY, ("10.0.0.7", 5353))
    assert len(transport.sent) == 1  # at once
    transport.changed.clear()
    await asyncio.wait_for(transport.changed.wait(), 2)
    assert len(transport.sent) == 2  # one more for the queries that came during the gap, then none due
    assert all(s.deferred is None for s in disc._senders)
    assert decode_packet(transport.sent[0]) == Announcement(
        disc.peer_name, host.peer_id, ("/ip4/10.0.0.1/tcp/4001", "/ip4/127.0.0.1/tcp/4001")
    )
    await disc.stop()


async def test_callbacks_may_be_coroutines_and_may_fail(caplog: pytest.LogCaptureFixture) -> None:
    got: asyncio.Queue[tuple[PeerId, list[str]]] = asyncio.Queue()

    async def on_peer(pid: PeerId, addrs: list[str]) -> None:
        await got.put((pid, addrs))
        raise RuntimeError("callback bug")

    disc, host, _ = socketless_discovery(on_peer=on_peer)
    other = KeyPair.generate().peer_id
    disc._datagram(announcement("other", f"/ip4/10.0.0.9/tcp/5/p2p/{other}".encode()), ("10.0.0.9", 5353))
    assert await asyncio.wait_for(got.get(), 2) == (other, ["/ip4/10.0.0.9/tcp/5"])
    assert host.added == [(other, ["/ip4/10.0.0.9/tcp/5"])]
    assert disc.peers == {other: ["/ip4/10.0.0.9/tcp/5"]}
    await disc.stop()  # waits for the callback task, whose error was logged
    assert "mDNS callback failed" in caplog.text


def test_import_mimirlite_does_not_load_zeroconf() -> None:
    code = (
        "import sys, mimirlite, mimirlite.discovery\n"
        "assert 'zeroconf' not in sys.modules, 'zeroconf loaded'\n"
        "assert 'ifaddr' not in sys.modules, 'ifaddr loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=30)


# ---- namespace test hosts ---------------------------------------------------------------------

DISCOVERY_TIMEOUT = 10.0


class LogToInbox(logging.Handler):
    def __init__(self, inbox: Inbox) -> None:
        super().__init__(logging.DEBUG)
        self.inbox = inbox

    def emit(self, rec: logging.LogRecord) -> None:
        self.inbox.push("log", rec.getMessage())


@pytest.fixture
def mdns_debug() -> Iterator[None]:
    logger = logging.getLogger("mimirlite.discovery")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield
    logger.setLevel(old)


async def test_two_peers_find_each_other_and_dial() -> None:
    require_netns()
    async with TestNet(2) as net:
        inbox_a, inbox_b = Inbox(), Inbox()
        ip_a, ip_b = net.hosts[0].ip, net.hosts[1].ip
        async with NsPeer(net.loop(0), inbox_a) as a, NsPeer(net.loop(1), inbox_b) as b:
            await inbox_a.wait_for(lambda _: b.peer_id in inbox_a.found(), DISCOVERY_TIMEOUT)
            await inbox_b.wait_for(lambda _: a.peer_id in inbox_b.found(), DISCOVERY_TIMEOUT)
            # the other host's bridge address and listen port; its loopback address is dropped
            assert inbox_a.found()[b.peer_id] == [f"/ip4/{ip_b}/tcp/{b.port}"]
            assert inbox_b.found()[a.peer_id] == [f"/ip4/{ip_a}/tcp/{a.port}"]
            assert a.disc.interface_addrs == ["127.0.0.1", ip_a]
            # the host learned the addresses: dial by peer ID
            conn = await a.call(lambda: a.host.dial(b.peer_id))
            assert conn.remote_peer == b.peer_id
            await inbox_b.wait_for(lambda _: a.peer_id in inbox_b.found("connected"), DISCOVERY_TIMEOUT)


async def test_routed_net_forwards_tcp_but_not_mdns() -> None:
    """RoutedNet: a host on bridge 0 dials one on bridge 1 over TCP through the router, while mDNS finds
    only the peers of its own bridge (queries and answers never cross the router)."""
    require_netns()
    async with RoutedNet([2, 2]) as net:
        (h_a, h_c), (h_b, h_d) = net.bridges
        assert h_a.ip.rsplit(".", 2)[1] != h_b.ip.rsplit(".", 2)[1]  # two subnets
        inboxes = [Inbox() for _ in range(4)]
        loops = [net.loop(h) for h in (h_a, h_c, h_b, h_d)]
        ia, ic, ib, id_ = inboxes
        async with (
            NsPeer(loops[0], ia, interval=0.3) as a,
            NsPeer(loops[1], ic, interval=0.3) as c,
            NsPeer(loops[2], ib, interval=0.3) as b,
            NsPeer(loops[3], id_, interval=0.3) as d,
        ):
            # TCP across the router, by address
            conn = await a.call(lambda: a.host.dial(f"/ip4/{h_b.ip}/tcp/{b.port}/p2p/{b.peer_id}"))
            assert conn.remote_peer == b.peer_id
            await ib.wait_for(lambda _: a.peer_id in ib.found("connected"), DISCOVERY_TIMEOUT)
            # and on its own bridge, through the router too: a's only ARP neighbour is the router
            conn = await a.call(lambda: a.host.dial(f"/ip4/{h_c.ip}/tcp/{c.port}/p2p/{c.peer_id}"))
            assert conn.remote_peer == c.peer_id
            neigh = subprocess.run(
                ["ip", "-n", h_a.netns, "neigh", "show"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            assert {line.split()[0] for line in neigh.stdout.splitlines()} == {net.router_ip(0)}, neigh.stdout

            # mDNS on each bridge: d started last, and its query found b on its bridge; a and c, answering
            # as fast as b does, would have been found with it had multicast crossed the router
            for inbox, own in ((ia, c), (ic, a), (ib, d), (id_, b)):
                await inbox.wait_for(lambda _, i=inbox, o=own: o.peer_id in i.found(), DISCOVERY_TIMEOUT)
            for inbox, own in ((ia, c), (ic, a), (ib, d), (id_, b)):
                assert set(inbox.found()) == {own.peer_id}


async def test_interfaces_can_be_chosen() -> None:
    require_netns()
    async with TestNet(3) as net:
        inbox_a, inbox_b, inbox_c = Inbox(), Inbox(), Inbox()
        async with NsPeer(net.loop(0), inbox_a, interfaces=["127.0.0.1"]) as a:
            assert a.disc.interface_addrs == ["127.0.0.1"]
            async with NsPeer(net.loop(1), inbox_b) as b, NsPeer(net.loop(2), inbox_c) as c:
                # b and c query and answer each other over the bridge, where a does not listen
                await inbox_b.wait_for(lambda _: c.peer_id in inbox_b.found(), DISCOVERY_TIMEOUT)
                await inbox_c.wait_for(lambda _: b.peer_id in inbox_c.found(), DISCOVERY_TIMEOUT)
                assert inbox_a.found() == {}
                assert a.peer_id not in inbox_b.found() and a.peer_id not in inbox_c.found()


async def test_silent_peer_is_reported_lost() -> None:
    require_netns()
    async with TestNet(2) as net:
        inbox = Inbox()
        async with NsPeer(net.loop(0), inbox, interval=0.3, lost_after=2) as a:
            async with NsPeer(net.loop(1), Inbox(), interval=0.3) as b:
                await inbox.wait_for(lambda _: b.peer_id in inbox.found(), DISCOVERY_TIMEOUT)
                assert inbox.found("lost") == {}
            await inbox.wait_for(lambda _: b.peer_id in inbox.found("lost"), 5.0)
            assert b.peer_id not in await a.call(_peers(a.disc))


def _peers(disc: MdnsDiscovery) -> Callable[[], Awaitable[dict[PeerId, list[str]]]]:
    async def peers() -> dict[PeerId, list[str]]:
        return disc.peers

    return peers


async def _send_raw(packets: list[bytes], source_ip: str) -> None:
    """Multicast raw datagrams to 224.0.0.251:5353 out of ``source_ip`` (run inside a namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source_ip))
        sock.bind((source_ip, 0))
        for packet in packets:
            sock.sendto(packet, ("224.0.0.251", 5353))


async def test_malformed_packets_are_logged_and_ignored(mdns_debug: None) -> None:
    require_netns()
    async with TestNet(3) as net:
        inbox = Inbox()
        handler = LogToInbox(inbox)
        logger = logging.getLogger("mimirlite.discovery.mdns")
        logger.addHandler(handler)
        try:
            async with NsPeer(net.loop(0), inbox, interval=5.0) as observer:
                garbage = list(MALFORMED.values())
                await net.loop(2).run(_send_raw(garbage, net.hosts[2].ip), timeout=5)

                def malformed_logged(items: list[tuple[str, Any, Any]]) -> bool:
                    logs = [a for k, a, _ in items if k == "log" and a.startswith("ignoring malformed mDNS")]
                    return len(logs) >= len(garbage)

                await inbox.wait_for(malformed_logged, DISCOVERY_TIMEOUT)
                # still finding peers and answering them afterwards
                other_inbox = Inbox()
                async with NsPeer(net.loop(1), other_inbox, interval=5.0) as other:
                    await inbox.wait_for(lambda _: other.peer_id in inbox.found(), DISCOVERY_TIMEOUT)
                    await other_inbox.wait_for(
                        lambda _: observer.peer_id in other_inbox.found(), DISCOVERY_TIMEOUT
                    )
        finally:
            logger.removeHandler(handler)


PEER_SCRIPT = """
import asyncio, json, sys
from mimirlite import Host
from mimirlite.discovery import MdnsDiscovery

async def main():
    async with Host(listen=["/ip4/0.0.0.0/tcp/0"]) as host:
        async with MdnsDiscovery(host, interval=float(sys.argv[1])):
            print(json.dumps({"peer_id": str(host.peer_id), "addrs": host.dialable_addrs}), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes

asyncio.run(main())
"""


async def test_twenty_peers_are_all_found_and_a_crashed_one_is_lost() -> None:
    """20 peer processes (one namespace each) on one bridge; an observer starts and finds them all."""
    require_netns()
    n = 20
    async with TestNet(n + 1) as net:
        procs = await asyncio.gather(
            *(
                net.spawn(
                    i + 1,
                    sys.executable,
                    "-c",
                    PEER_SCRIPT,
                    "1.0",
                    cwd=ROOT,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                for i in range(n)
            )
        )

        async def ready(proc: asyncio.subprocess.Process) -> dict[str, Any]:
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            assert line, f"peer exited with {await proc.wait()}"
            return dict(json.loads(line))

        # interpreter start-up of 20 processes, not discovery: bounded separately
        infos = await asyncio.wait_for(asyncio.gather(*(ready(p) for p in procs)), 40)
        ids = [PeerId.from_string(i["peer_id"]) for i in infos]
        assert len(set(ids)) == n

        inbox = Inbox()
        started = time.monotonic()
        async with NsPeer(net.loop(0), inbox, interval=0.5, lost_after=6) as observer:
            await inbox.wait_for(lambda _: set(ids) <= set(inbox.found()), 15.0)
            assert time.monotonic() - started < 15.0
            for pid, info, host in zip(ids, infos, net.hosts[1:], strict=True):
                port = info["addrs"][0].split("/")[4]
                assert inbox.found()[pid] == [f"/ip4/{host.ip}/tcp/{port}"]

            # a peer that crashes (no goodbye, no more answers) is reported lost; the others are not
            procs[0].send_signal(signal.SIGKILL)
            await asyncio.wait_for(procs[0].wait(), 5)
            await inbox.wait_for(lambda _: ids[0] in inbox.found("lost"), 5.0)
            assert [a for k, a, _ in inbox.items if k == "lost"] == [ids[0]]
            assert set(await observer.call(_peers(observer.disc))) == set(ids[1:])
