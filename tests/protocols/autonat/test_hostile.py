"""The AutoNAT server (AutoNat's shell) against hostile requesters on real sockets over loopback: floods
from many peers, requests naming third parties, oversize and garbage messages, requesters that never send
or never read, many streams at once from one peer, a dial-back target that takes the TCP connection and
stalls. Each offence ends only its own stream, is logged and counted, and a well-behaved AutoNat client
is still served by the same server in the same test (its verdict turns PUBLIC); no task is left.

Who a flood may starve (see ``verdict.py``): the global budget (30 dial-backs a minute) is spent only by
requests the server will dial, so a peer over its own rate (3 a minute) or sending requests it will not
dial costs the others nothing; a flood of valid requests from more peer IDs than ``30 / 3`` may spend
it, and then others are refused (no vote, not a wrong verdict) until it refills."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from mimirlite import Host
from mimirlite.errors import MimirliteError, ProtocolErrorKind
from mimirlite.net.stream import Stream
from mimirlite.protocols import identify_service, start_services
from mimirlite.protocols.autonat.messages import (
    AUTONAT_PROTOCOL,
    AutonatMessage,
    Dial,
    DialResponse,
    MessageType,
    PeerInfo,
    ResponseStatus,
    decode_message,
    encode_message,
)
from mimirlite.protocols.autonat.service import AutoNat, AutonatConfig
from mimirlite.protocols.autonat.verdict import DialPolicyConfig, Reachability, TrackerConfig
from mimirlite.wire import lp
from mimirlite.wire.multiaddr import Multiaddr
from tests.helpers import logged
from tests.helpers.waiting import until

pytestmark = pytest.mark.usefixtures("no_leaks", "no_tasks_left")

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
DIAL_TIMEOUT = 1.0
LAB = AutonatConfig(
    dial_timeout=DIAL_TIMEOUT, policy=DialPolicyConfig(allow_private=True), tracker=TrackerConfig(required=1)
)
LOGGER = "mimirlite.protocols.autonat"


@contextlib.asynccontextmanager
async def peer(listen: str = LOOPBACK, config: AutonatConfig = LAB) -> AsyncIterator[AutoNat]:
    async with Host(listen=[listen]) as host:
        start_services(host)
        identify = identify_service(host)
        assert identify is not None
        async with AutoNat(host, identify, config) as autonat:
            yield autonat


async def served(server: AutoNat) -> None:
    """A well-behaved AutoNat client asks ``server`` and is found PUBLIC (the server dialed it back)."""
    async with peer() as client:
        before = server.dialed_back
        conn = await client.host.dial(server.host.listen_addrs[0])
        await client.identify.identify(conn)  # a new server while we know nothing: the client asks
        await until(lambda: client.reachability is Reachability.PUBLIC, 10, "the honest client's verdict")
        assert server.dialed_back == before + 1


async def server_idle(server: AutoNat) -> None:
    """No request is being served, no stream handler left running."""
    await until(lambda: server.serving == 0, 10, "the server's requests over")
    await until(
        lambda: not [t for t in asyncio.all_tasks() if t.get_name() == "mimirlite-stream" and not t.done()],
        10,
        "the stream handlers done",
    )


def dial_request(asker: Host, *addrs: str) -> AutonatMessage:
    peer_info = PeerInfo(asker.peer_id, tuple(Multiaddr.parse(a) for a in addrs))
    return AutonatMessage(MessageType.DIAL, dial=Dial(peer_info))


async def ask(asker: Host, server: AutoNat, message: AutonatMessage | bytes) -> DialResponse:
    """One request on a new stream; the server's DialResponse."""
    stream = await asker.new_stream(server.host.listen_addrs[0], AUTONAT_PROTOCOL)
    body = message if isinstance(message, bytes) else encode_message(message)
    await stream.write(lp.encode_message(body))
    answer = await asyncio.wait_for(stream.read_message(), 10)
    assert answer is not None
    response = decode_message(answer)[0].dial_response
    assert response is not None
    await stream.close()
    return response


async def ends(stream: Stream, within: float = 10.0) -> bytes:
    """What arrives on ``stream`` until the far side ends it (closed or reset) within ``within`` s."""
    got = bytearray()

    async def drain() -> None:
        with contextlib.suppress(MimirliteError):
            while data := await stream.read():
                got.extend(data)

    await asyncio.wait_for(drain(), within)
    return bytes(got)


@dataclass
class Stalling:
    """A TCP listener on loopback that accepts and never speaks: a dial-back target that stalls the
    handshake. Counts connections and their ends."""

    accepted: int = 0
    eofs: int = 0
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            with contextlib.suppress(OSError):
                await reader.read()  # until the dialer gives up
            self.eofs += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def stalling() -> AsyncIterator[Stalling]:
    target = Stalling()
    target.server = await asyncio.start_server(target._accepted, "127.0.0.1", 0)
    async with target.server:
        yield target


@contextlib.asynccontextmanager
async def flooders(n: int) -> AsyncIterator[list[Host]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Host()) for _ in range(n)]


async def test_a_flood_of_refused_requests_from_many_peers_leaves_others_their_share(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """12 peers each ask 4 times to have a third party dialed (10.9.9.9): every request is refused,
    those past a peer's 3 a minute by its rate, and none spends the global budget: 48 requests, more
    than its 30, and the honest client is still dialed back."""
    caplog.set_level(logging.INFO, LOGGER)
    async with peer() as server, flooders(12) as hosts:

        async def flood(host: Host) -> list[str | None]:
            third = dial_request(host, "/ip4/10.9.9.9/tcp/4001")
            return [(await ask(host, server, third)).status_text for _ in range(4)]

        texts = await asyncio.gather(*(flood(h) for h in hosts))
        assert texts == [["no dialable addresses"] * 3 + ["too many dial requests from this peer"]] * 12
        assert server.refused == {"e_dial_refused": 48} and server.dialed_back == 0
        logged(caplog, "refused: no dialable addresses")
        logged(caplog, "refused: too many dial requests from this peer")
        await served(server)
        await server_idle(server)


async def test_a_flood_of_valid_requests_from_many_peer_ids_may_spend_the_global_budget(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The documented limit: requests the server does dial spend its global budget (set small here, 6
    a minute: one refills in 10 s), whoever sends them; past it everyone is refused, the honest client
    too (no vote), until it refills."""
    caplog.set_level(logging.INFO, LOGGER)
    small = AutonatConfig(
        dial_timeout=DIAL_TIMEOUT,
        policy=DialPolicyConfig(allow_private=True, per_peer_per_minute=3, global_per_minute=6),
    )
    async with peer(config=small) as server, flooders(3) as hosts:

        async def flood(host: Host) -> list[ResponseStatus]:
            mine = dial_request(host, f"/ip4/127.0.0.1/tcp/{closed_port}")  # its own IP: dialed, refused
            return [(await ask(host, server, mine)).status for _ in range(3)]

        statuses = [s for got in await asyncio.gather(*(flood(h) for h in hosts)) for s in got]
        assert statuses.count(ResponseStatus.E_DIAL_ERROR) == 6 == server.dial_failed
        assert statuses.count(ResponseStatus.E_DIAL_REFUSED) == 3
        async with Host(listen=[LOOPBACK]) as honest:
            answer = await ask(honest, server, dial_request(honest, honest.listen_addrs[0]))
            refusal = (answer.status, answer.status_text)
            assert refusal == (ResponseStatus.E_DIAL_REFUSED, "too many dial requests")
        assert server.refused == {"e_dial_refused": 4} and server.dialed_back == 0
        logged(caplog, "refused: too many dial requests")
        await server_idle(server)


async def test_bad_messages_answer_bad_request_and_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    async with peer() as server, Host() as asker:
        addr = server.host.listen_addrs[0]
        for body in (b"\x08" * 10_000, b"\xff\xff\xff\xff", b"\x08\x09"):  # oversize, not protobuf, unknown
            stream = await asker.new_stream(addr, AUTONAT_PROTOCOL)
            with contextlib.suppress(MimirliteError):  # the answer may come before all is written
                await stream.write(lp.encode_message(body))
            answer = await asyncio.wait_for(stream.read_message(), 5)
            assert answer is not None
            response = decode_message(answer)[0].dial_response
            assert response is not None and response.status is ResponseStatus.E_BAD_REQUEST
            await ends(stream)
        cut = await asker.new_stream(addr, AUTONAT_PROTOCOL)
        await cut.write(b"\x64" + b"\x08" * 10)  # a message of 100 bytes cut short
        await cut.close_write()
        assert await ends(cut) == b""  # no answer to a requester gone
        assert server.host.metrics.protocol_errors[ProtocolErrorKind.AUTONAT] == 3
        assert server.refused == {"e_bad_request": 3}
        logged(caplog, "bad dial request from", "exceeds the 8192 byte cap")
        assert asker.peer_id in server.host.connections  # only the streams ended
        await served(server)
        await server_idle(server)


async def test_a_requester_that_never_sends_or_never_reads(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    async with peer() as server, Host(listen=[LOOPBACK]) as asker:
        loop = asyncio.get_running_loop()
        mute = await asker.new_stream(server.host.listen_addrs[0], AUTONAT_PROTOCOL)
        opened = loop.time()
        assert await ends(mute) == b""  # the server gives up on it
        assert DIAL_TIMEOUT * 0.9 <= loop.time() - opened < DIAL_TIMEOUT * 5
        assert server.timeouts == 1
        logged(caplog, "sent no dial request in 1 s")
        deaf = await asker.new_stream(server.host.listen_addrs[0], AUTONAT_PROTOCOL)
        await deaf.write(lp.encode_message(encode_message(dial_request(asker, asker.listen_addrs[0]))))
        await until(lambda: server.dialed_back == 1, 10, "the deaf requester dialed back")
        await server_idle(server)  # answered and done, though the requester reads nothing
        await served(server)
        await server_idle(server)
        await deaf.reset()


async def test_many_streams_at_once_from_one_peer_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """One request at a time per peer: while one is being served, the peer's other streams are reset
    unread; the one being served is answered, and other peers are served meanwhile."""
    caplog.set_level(logging.INFO, LOGGER)
    async with peer() as server, Host(listen=[LOOPBACK]) as asker:
        addr = server.host.listen_addrs[0]
        first = await asker.new_stream(addr, AUTONAT_PROTOCOL)
        await until(lambda: server.serving == 1, 5, "the first stream being served")
        more = await asyncio.gather(*(asker.new_stream(addr, AUTONAT_PROTOCOL) for _ in range(30)))
        assert [await ends(s) for s in more] == [b""] * 30
        assert server.refused == {"busy": 30}
        logged(caplog, "refused: one is being served")
        await served(server)  # another peer, while the first stream is held
        await first.write(lp.encode_message(encode_message(dial_request(asker, asker.listen_addrs[0]))))
        answer = await asyncio.wait_for(first.read_message(), 5)
        assert answer is not None
        response = decode_message(answer)[0].dial_response
        assert response is not None and response.status is ResponseStatus.OK
        await ends(first)
        await server_idle(server)


async def test_a_dial_back_target_that_stalls_is_ended_by_the_dial_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The requester names its own IP with two ports that take the TCP connection and never speak:
    ``dial_timeout`` ends the whole dial-back (the first stalls it all: the second is never tried),
    E_DIAL_ERROR is answered, the connection closed, and the server answers another peer meanwhile."""
    caplog.set_level(logging.INFO, LOGGER)
    async with peer() as server, Host() as asker, stalling() as first, stalling() as second:
        loop = asyncio.get_running_loop()
        request = dial_request(asker, *(f"/ip4/127.0.0.1/tcp/{t.port}" for t in (first, second)))
        started = loop.time()
        pending = asyncio.ensure_future(ask(asker, server, request))
        try:
            await until(lambda: first.accepted == 1, 5, "the dial-back's TCP connection")
            await served(server)  # answered while the dial-back stalls
            answer = await asyncio.wait_for(asyncio.shield(pending), 10)
        finally:
            if not pending.done():
                pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        assert answer.status is ResponseStatus.E_DIAL_ERROR
        assert DIAL_TIMEOUT * 0.9 <= loop.time() - started < DIAL_TIMEOUT * 5
        await until(lambda: first.eofs == 1, 5, "the stalled connection closed")
        assert (first.accepted, second.accepted) == (1, 0) and server.dial_failed == 1
        logged(caplog, "could not dial", str(asker.peer_id), "back")
        await server_idle(server)


async def test_our_client_sends_a_server_one_request_at_a_time() -> None:
    """The other side of the bound: checks that overlap (a new server identified, the periodic round, an
    explicit check) join the running one, so a server that takes one request per peer refuses none."""
    async with peer() as server, peer() as client:
        conn = await client.host.dial(server.host.listen_addrs[0])
        await client.identify.identify(conn)  # starts a check
        verdicts = await asyncio.gather(client.check(), client.check())
        assert verdicts == [Reachability.PUBLIC] * 2
        assert not server.refused and server.dialed_back == 1
        await server_idle(server)
