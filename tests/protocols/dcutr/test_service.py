"""HolePuncher (the DCUtR shell) against hostile peers on real sockets: a mimirlite relay on loopback gives
the relayed connections; a hostile peer (a Host behind the relay, writing raw DCUtR bytes) opens
``/libp2p/dcutr`` streams on its relayed connection to the victim. Each offence ends only its stream, is
logged and counted, and a well-behaved peer is still served by the same HolePuncher in the same test
(it sends CONNECT, gets ours back, sends SYNC and sees us dial it); no task is left."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from mimirlite import Host
from mimirlite.errors import MimirliteError, ProtocolErrorKind
from mimirlite.net.connection import Connection
from mimirlite.net.stream import Stream
from mimirlite.protocols.dcutr.holepunch import HolePunchConfig
from mimirlite.protocols.dcutr.messages import (
    DCUTR_PROTOCOL,
    HolePunch,
    HolePunchType,
    decode_message,
    encode_message,
)
from mimirlite.protocols.dcutr.service import MAX_DIALS, PER_PEER_PER_MINUTE, HolePuncher
from mimirlite.protocols.relay.client import RelayClient
from mimirlite.protocols.relay.service import RelayService
from mimirlite.wire import lp
from mimirlite.wire.multiaddr import Multiaddr
from mimirlite.wire.protobuf import encode_bytes_field
from tests.helpers import ECHO, echo_handler, logged
from tests.helpers.rawpeer import settled
from tests.helpers.waiting import until

pytestmark = pytest.mark.usefixtures("no_leaks", "no_tasks_left")

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
TIMEOUT = 1.0
"""The victim's per-phase timeout: short, so that a peer that never answers costs the test a second."""
LAB = HolePunchConfig(timeout=TIMEOUT, allow_private=True)
CONNECT = b"\x08\x64"  # HolePunch.type = CONNECT (100), as the body's first field
LOGGER = "mimirlite.protocols.dcutr"


def frame(body: bytes) -> bytes:
    return lp.encode_message(body)


async def send(stream: Stream, body: bytes) -> None:
    """Write one framed message; the victim may have reset the stream already (refused unread)."""
    with contextlib.suppress(MimirliteError):
        await stream.write(frame(body))


def connect_with(raw_addrs: list[bytes]) -> bytes:
    """A CONNECT body listing ``raw_addrs`` as they are (multiaddr bytes or not)."""
    return CONNECT + b"".join(encode_bytes_field(2, a) for a in raw_addrs)


def addr_bytes(text: str) -> bytes:
    return Multiaddr.parse(text).to_bytes()


async def ends(stream: Stream, within: float = 10.0) -> None:
    """The far side ends ``stream`` (reset or closed) within ``within`` seconds; what came is dropped."""

    async def drain() -> None:
        with contextlib.suppress(MimirliteError):
            while await stream.read():
                pass

    await asyncio.wait_for(drain(), within)


@dataclass
class Listener:
    """A plain TCP listener on loopback, standing for a peer's (or a third party's) address: it notes
    each connection's source port, then closes it at once, or holds it open (``stall``)."""

    stall: bool = False
    sources: list[int] = field(default_factory=list)
    eofs: int = 0
    server: asyncio.Server | None = None

    @property
    def addr(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"/ip4/127.0.0.1/tcp/{port}"

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sources.append(writer.get_extra_info("peername")[1])
        try:
            if self.stall:
                with contextlib.suppress(OSError):
                    await reader.read()  # until the dialer gives up and closes
                self.eofs += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def listening(stall: bool = False) -> AsyncIterator[Listener]:
    listener = Listener(stall)
    listener.server = await asyncio.start_server(listener._accepted, "127.0.0.1", 0)
    async with listener.server:
        yield listener


@dataclass
class Lab:
    relay: RelayService
    victim: HolePuncher


@contextlib.asynccontextmanager
async def lab(config: HolePunchConfig = LAB, own: list[str] | None = None) -> AsyncIterator[Lab]:
    """A relay on loopback and the victim: a listening Host with a relay client (to dial circuit
    addresses) and a HolePuncher offering its listen address (or ``own``)."""
    async with (
        Host(listen=[LOOPBACK]) as relay_host,
        RelayService(relay_host) as relay,
        Host(listen=[LOOPBACK]) as victim_host,
        RelayClient(victim_host),
    ):
        victim_host.set_handler(ECHO, echo_handler)
        addrs = own if own is not None else victim_host.listen_addrs
        async with HolePuncher(victim_host, lambda: [Multiaddr.parse(a) for a in addrs], config) as puncher:
            yield Lab(relay, puncher)


@contextlib.asynccontextmanager
async def relayed_peer(lab: Lab) -> AsyncIterator[tuple[Host, Connection]]:
    """A peer behind the relay that the victim dialed through it: the peer's Host and its side of the
    relayed connection."""
    async with Host() as host, RelayClient(host, [lab.relay.host.listen_addrs[0]]) as client:
        victim = lab.victim.host
        await victim.dial(client.circuit_addrs[0])
        await until(lambda: victim.peer_id in host.connections, 5, "the relayed connection at the peer")
        conn = host.connections[victim.peer_id]
        assert conn.relayed
        yield host, conn


async def honest_exchange(lab: Lab) -> None:
    """A well-behaved peer behind the relay sends CONNECT with a loopback address, gets the victim's
    addresses back, sends SYNC and sees the victim dial it from its listen port."""
    victim = lab.victim.host
    async with relayed_peer(lab) as (host, conn), listening() as listener:
        stream = await host.open_on(conn, DCUTR_PROTOCOL)
        connect = HolePunch(HolePunchType.CONNECT, (Multiaddr.parse(listener.addr),))
        await stream.write(frame(encode_message(connect)))
        body = await asyncio.wait_for(stream.read_message(), 5)
        assert body is not None
        answer, _ = decode_message(body)
        assert answer.type is HolePunchType.CONNECT
        assert [str(a) for a in answer.obs_addrs] == victim.listen_addrs
        await stream.write(frame(encode_message(HolePunch(HolePunchType.SYNC))))
        await until(lambda: listener.sources, 5, "the victim's dial")
        port = Multiaddr.parse(victim.listen_addrs[0]).value_for("tcp")
        assert listener.sources == [int(port)]  # from its listen port, as a hole punch dials
        await ends(stream)  # the dial failed (not a libp2p peer): the attempt ends, so does its stream
        relayed = victim.connections[host.peer_id]
        await until(lambda: relayed.stream_count == 0, 5, "the victim's dcutr stream gone")


async def victim_settles(lab: Lab) -> None:
    """The victim's exchanges are over: no handler left running on its host, its relayed connections
    carry no stream."""
    await settled(lab.victim.host)
    for conn in lab.victim.host.connections.values():
        if conn.relayed:
            assert conn.stream_count == 0, conn


def honest_responder(addr: str) -> Callable[[Stream], Awaitable[None]]:
    """A well-behaved responder's handler: answers CONNECT with ``addr``, takes SYNC."""

    async def respond(stream: Stream) -> None:
        body = await stream.read_message()
        assert body is not None and decode_message(body)[0].type is HolePunchType.CONNECT
        await stream.write(frame(encode_message(HolePunch(HolePunchType.CONNECT, (Multiaddr.parse(addr),)))))
        sync = await stream.read_message()
        assert sync is not None and decode_message(sync)[0].type is HolePunchType.SYNC
        await ends(stream)

    return respond


async def honest_punch_served(circuit_addr: str, victim: Host) -> None:
    """A well-behaved peer reaches the victim through the relay (at ``circuit_addr``) and answers its hole
    punch: the victim completes the exchange and dials the address offered, from its listen port."""
    async with Host() as honest, RelayClient(honest), listening() as listener:
        honest.set_handler(DCUTR_PROTOCOL, honest_responder(listener.addr))
        await honest.dial(circuit_addr)
        await until(lambda: listener.sources, 10, "the victim's dial to the honest peer")
        port = int(Multiaddr.parse(victim.listen_addrs[0]).value_for("tcp"))
        assert set(listener.sources) == {port}


def no_punch_running() -> bool:
    return not [t for t in asyncio.all_tasks() if t.get_name() == "mimirlite-dcutr" and not t.done()]


ABSURD = {
    "thousands of addresses (an oversize message)": connect_with(
        [addr_bytes(f"/ip4/127.0.0.1/tcp/{p}") for p in range(2000, 4000)]
    ),
    "more addresses than the codec lists": connect_with(
        [addr_bytes(f"/ip4/127.0.0.1/tcp/{p}") for p in range(2000, 2200)]
    ),
    "garbage addresses": connect_with([b"\xff\xfe\xfd", b"\x04\x7f\x00", b"\x00" * 40] * 5),
    "relay and DNS addresses only": connect_with(
        [
            addr_bytes("/dns4/relay.example/tcp/4001"),
            addr_bytes(f"/ip4/127.0.0.1/tcp/4001/p2p/{Host().peer_id}/p2p-circuit"),
            addr_bytes("/ip4/127.0.0.1/udp/4001/quic-v1"),
        ]
    ),
    "SYNC before CONNECT": b"\x08\xac\x02",
    "an unknown message type": b"\x08\x07",
    "not protobuf": b"\xff\xff\xff\xff",
}


@pytest.mark.parametrize("what", list(ABSURD))
async def test_an_absurd_message_ends_its_stream_counted(what: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    async with lab() as lab_, relayed_peer(lab_) as (hostile, conn):
        stream = await hostile.open_on(conn, DCUTR_PROTOCOL)
        await stream.write(frame(ABSURD[what]))
        await ends(stream)
        victim = lab_.victim
        await until(
            lambda: victim.host.metrics.protocol_errors[ProtocolErrorKind.DCUTR] == 1, 5, "the error counted"
        )
        logged(caplog, "dcutr: attempt 1 with", str(hostile.peer_id), "failed")
        assert conn.is_open  # only the stream ended: the relayed connection goes on
        await honest_exchange(lab_)
        assert victim.host.metrics.protocol_errors[ProtocolErrorKind.DCUTR] == 1
        assert not victim.refused
        await victim_settles(lab_)


async def test_private_addresses_are_refused_when_not_allowed(caplog: pytest.LogCaptureFixture) -> None:
    """A victim that dials public addresses only (the default) takes no CONNECT listing private ones;
    a peer with a public address is still answered (never dialed here: it gets no SYNC)."""
    caplog.set_level(logging.INFO, LOGGER)
    public = "/ip4/1.1.1.1/tcp/4001"  # offered and answered, never dialed
    async with lab(HolePunchConfig(timeout=TIMEOUT), own=[public]) as lab_:
        async with relayed_peer(lab_) as (hostile, conn):
            stream = await hostile.open_on(conn, DCUTR_PROTOCOL)
            private = ["/ip4/127.0.0.1/tcp/4001", "/ip4/10.0.0.1/tcp/4001", "/ip4/192.168.1.1/tcp/4001"]
            await stream.write(frame(connect_with([addr_bytes(a) for a in private])))
            await ends(stream)
            logged(caplog, "no dialable address in the peer's CONNECT (3 sent)")
        async with relayed_peer(lab_) as (honest, conn):
            stream = await honest.open_on(conn, DCUTR_PROTOCOL)
            await stream.write(frame(connect_with([addr_bytes("/ip4/1.0.0.1/tcp/4001")])))
            body = await asyncio.wait_for(stream.read_message(), 5)
            assert body is not None and [str(a) for a in decode_message(body)[0].obs_addrs] == [public]
            await stream.reset()
        assert lab_.victim.host.metrics.protocol_errors[ProtocolErrorKind.DCUTR] == 1
        await victim_settles(lab_)


async def test_a_hole_punch_over_a_direct_connection_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    async with lab() as lab_, Host() as hostile:
        conn = await hostile.dial(lab_.victim.host.listen_addrs[0])
        stream = await hostile.open_on(conn, DCUTR_PROTOCOL)
        await send(stream, connect_with([addr_bytes("/ip4/127.0.0.1/tcp/9")]))
        await ends(stream)
        assert lab_.victim.refused == {"direct": 1}
        logged(caplog, "refused (direct)", "over a direct connection")
        assert conn.is_open
        await honest_exchange(lab_)
        await victim_settles(lab_)


async def test_a_peer_that_never_answers_is_timed_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    async with lab() as lab_, relayed_peer(lab_) as (hostile, conn):
        loop = asyncio.get_running_loop()
        silent = await hostile.open_on(conn, DCUTR_PROTOCOL)  # opens, never writes
        started = loop.time()
        await ends(silent)
        assert TIMEOUT * 0.9 <= loop.time() - started < TIMEOUT * 5
        # another answers CONNECT, then never sends SYNC
        half = await hostile.open_on(conn, DCUTR_PROTOCOL)
        await half.write(frame(connect_with([addr_bytes("/ip4/127.0.0.1/tcp/9")])))
        assert await asyncio.wait_for(half.read_message(), 5) is not None
        await ends(half)
        assert lab_.victim.timeouts == 2
        logged(caplog, "timed out waiting for the peer (await_connect)")
        logged(caplog, "timed out waiting for the peer (await_sync)")
        assert lab_.victim.host.metrics.protocol_errors[ProtocolErrorKind.DCUTR] == 0
        await honest_exchange(lab_)
        await victim_settles(lab_)


async def test_streams_again_and_again_on_one_connection_are_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One exchange at a time per relayed connection (the rest reset unread, ``busy``), and at most
    ``PER_PEER_PER_MINUTE`` exchanges a peer may start (``rate``)."""
    caplog.set_level(logging.INFO, LOGGER)
    async with lab() as lab_, relayed_peer(lab_) as (hostile, conn):
        victim = lab_.victim
        first = await hostile.open_on(conn, DCUTR_PROTOCOL)
        await first.write(frame(connect_with([addr_bytes("/ip4/127.0.0.1/tcp/9")])))
        assert await asyncio.wait_for(first.read_message(), 5) is not None  # being served
        more = await asyncio.gather(*(hostile.open_on(conn, DCUTR_PROTOCOL) for _ in range(20)))
        await asyncio.gather(*(ends(s) for s in more))
        assert victim.refused == {"busy": 20}
        await ends(first)  # it never sent SYNC: timed out
        # one after the other now: the rate refuses those past the peer's budget
        for _ in range(PER_PEER_PER_MINUTE + 3):
            stream = await hostile.open_on(conn, DCUTR_PROTOCOL)
            await send(stream, b"\x08\xac\x02")  # SYNC first: ends at once
            await ends(stream)
        assert victim.refused == {"busy": 20, "rate": 4}
        assert victim.host.metrics.protocol_errors[ProtocolErrorKind.DCUTR] == PER_PEER_PER_MINUTE - 1
        logged(caplog, "refused (busy)")
        logged(caplog, "refused (rate)")
        assert conn.is_open
        await honest_exchange(lab_)  # another peer has its own budget
        await victim_settles(lab_)


async def test_an_initiator_pointing_at_third_parties_gets_few_dials_in_bounded_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The spec lets the initiator name any address it is observed at, and over a relay no IP can be
    checked: a hostile one may point us at others. We dial at most MAX_DIALS of them per attempt, all
    within the attempt's dial phase (a third party that takes the TCP connection and stalls the
    handshake is dropped at that deadline)."""
    caplog.set_level(logging.INFO, LOGGER)
    async with contextlib.AsyncExitStack() as stack:
        lab_ = await stack.enter_async_context(lab())
        hostile, conn = await stack.enter_async_context(relayed_peer(lab_))
        closing = [await stack.enter_async_context(listening()) for _ in range(12)]
        stream = await hostile.open_on(conn, DCUTR_PROTOCOL)
        await stream.write(frame(connect_with([addr_bytes(t.addr) for t in closing])))
        assert await asyncio.wait_for(stream.read_message(), 5) is not None
        await stream.write(frame(b"\x08\xac\x02"))  # SYNC
        await ends(stream)
        assert sum(len(t.sources) for t in closing) == MAX_DIALS
        assert [len(t.sources) for t in closing[:MAX_DIALS]] == [1] * MAX_DIALS  # in the order given
        logged(caplog, "the direct dial failed")

        stalling = await stack.enter_async_context(listening(stall=True))
        stream = await hostile.open_on(conn, DCUTR_PROTOCOL)
        await stream.write(frame(connect_with([addr_bytes(stalling.addr)])))
        assert await asyncio.wait_for(stream.read_message(), 5) is not None
        loop = asyncio.get_running_loop()
        await stream.write(frame(b"\x08\xac\x02"))
        synced = loop.time()
        await ends(stream)
        assert loop.time() - synced < TIMEOUT * 3  # the dial phase's deadline, not the handshake's 10 s
        assert len(stalling.sources) == 1
        await until(lambda: stalling.eofs == 1, 5, "the stalled TCP connection closed by the victim")
        logged(caplog, "timed out waiting for the direct dial")
        assert lab_.victim.timeouts == 1
        await honest_exchange(lab_)
        await victim_settles(lab_)


async def test_our_hole_punch_to_a_peer_that_never_answers_gives_up(caplog: pytest.LogCaptureFixture) -> None:
    """The initiator side: a peer reaches us through the relay and takes our dcutr streams without ever
    answering; each attempt times out, we stay relayed after the last, and the relayed connection works."""
    caplog.set_level(logging.INFO, LOGGER)
    async with (
        Host(listen=[LOOPBACK]) as relay_host,
        RelayService(relay_host),
        Host(listen=[LOOPBACK]) as host,
        RelayClient(host, [relay_host.listen_addrs[0]]) as client,
        HolePuncher(host, lambda: [Multiaddr.parse(a) for a in host.listen_addrs], LAB) as puncher,
        Host() as hostile,
        RelayClient(hostile),
    ):
        host.set_handler(ECHO, echo_handler)
        client.on_relayed.append(puncher.on_relayed)
        taken: list[Stream] = []

        async def never_answer(stream: Stream) -> None:
            taken.append(stream)
            with contextlib.suppress(MimirliteError):
                while await stream.read():
                    pass

        hostile.set_handler(DCUTR_PROTOCOL, never_answer)
        conn = await hostile.dial(client.circuit_addrs[0])
        await until(lambda: puncher.failed == 1, TIMEOUT * 10, "the hole punch given up")
        assert len(taken) == 3 and puncher.timeouts == 3 and puncher.succeeded == 0
        logged(caplog, "no direct connection to", "staying relayed", "timed out")
        assert no_punch_running()
        await honest_punch_served(client.circuit_addrs[0], host)
        await until(no_punch_running, 10, "the punches' tasks done")
        stream = await hostile.open_on(conn, ECHO)  # the relayed connection still carries streams
        await stream.write(b"still relayed")
        await stream.close_write()
        assert await asyncio.wait_for(stream.read_all(), 5) == b"still relayed"


async def test_a_peer_may_start_again_once_it_ended_its_stream(caplog: pytest.LogCaptureFixture) -> None:
    """An initiator retrying (its attempt over: it reset the stream) is not refused as busy while our
    dial of the old attempt still runs; one that holds its stream open is."""
    caplog.set_level(logging.INFO, LOGGER)
    async with lab() as lab_, relayed_peer(lab_) as (peer, conn), listening(stall=True) as target:
        old = await peer.open_on(conn, DCUTR_PROTOCOL)
        await old.write(frame(connect_with([addr_bytes(target.addr)])))
        assert await asyncio.wait_for(old.read_message(), 5) is not None
        await old.write(frame(b"\x08\xac\x02"))  # SYNC: the victim dials the stalling target
        await until(lambda: target.sources, 5, "the victim's dial")
        await old.reset()
        retry = await peer.open_on(conn, DCUTR_PROTOCOL)
        await retry.write(frame(connect_with([addr_bytes("/ip4/127.0.0.1/tcp/9")])))
        assert await asyncio.wait_for(retry.read_message(), 5) is not None  # answered, not refused
        held = await peer.open_on(conn, DCUTR_PROTOCOL)
        await ends(held)
        assert lab_.victim.refused == {"busy": 1}
        await ends(retry)  # no SYNC: timed out
        await until(lambda: target.eofs == 1, 5, "the old attempt's dial given up")
        await honest_exchange(lab_)
        await victim_settles(lab_)


async def test_our_punches_to_a_hostile_responder_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """The initiator side: a peer that reached us through the relay answers our CONNECT with garbage
    (each attempt fails, counted as a protocol error; we stay relayed); a punch to a peer is not started
    while one runs, nor past ``PUNCHES_PER_MINUTE``."""
    caplog.set_level(logging.INFO, LOGGER)
    async with (
        Host(listen=[LOOPBACK]) as relay_host,
        RelayService(relay_host),
        Host(listen=[LOOPBACK]) as host,
        RelayClient(host, [relay_host.listen_addrs[0]]) as client,
        HolePuncher(host, lambda: [Multiaddr.parse(a) for a in host.listen_addrs], LAB) as puncher,
        Host() as hostile,
        RelayClient(hostile),
    ):
        host.set_handler(ECHO, echo_handler)
        client.on_relayed.append(puncher.on_relayed)

        async def garbage(stream: Stream) -> None:
            await stream.read_message()
            await stream.write(frame(b"\xff\xff\xff\xff"))
            await ends(stream)

        hostile.set_handler(DCUTR_PROTOCOL, garbage)
        conn = await hostile.dial(client.circuit_addrs[0])
        await until(lambda: puncher.failed == 1, 10, "the first hole punch given up")
        assert host.metrics.protocol_errors[ProtocolErrorKind.DCUTR] == 3  # one per attempt
        logged(caplog, "dcutr: attempt 1 with", str(hostile.peer_id), "failed")
        logged(caplog, "no direct connection to", "staying relayed")
        relayed = host.connections[hostile.peer_id]
        puncher.on_relayed(relayed)  # as if it reached us again: the second punch this minute
        puncher.on_relayed(relayed)  # while that one runs
        await until(lambda: puncher.failed == 2, 10, "the second hole punch given up")
        puncher.on_relayed(relayed)  # a third this minute
        assert puncher.skipped == {"punching": 1, "rate": 1}
        logged(caplog, "no hole punch to", "(rate)")
        assert host.metrics.protocol_errors[ProtocolErrorKind.DCUTR] == 6
        await honest_punch_served(client.circuit_addrs[0], host)  # another peer: its own budget
        await until(no_punch_running, 10, "the punches' tasks done")
        assert puncher.skipped == {"punching": 1, "rate": 1}
        stream = await hostile.open_on(conn, ECHO)  # the relayed connection still carries streams
        await stream.write(b"still relayed")
        await stream.close_write()
        assert await asyncio.wait_for(stream.read_all(), 5) == b"still relayed"
