"""AutoNAT on real hosts over loopback: a server dials a requester back from a throwaway dialer, the
requester's verdict follows (servers allow private addresses and one agreeing server decides, as a test
on one machine needs: the network-segment rule is in test_verdict.py); refusals and bad requests end only
their own stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from mimirlite import Host
from mimirlite.errors import ProtocolErrorKind
from mimirlite.protocols import identify_service, start_services
from mimirlite.protocols.autonat.messages import (
    AUTONAT_PROTOCOL,
    AutonatMessage,
    Dial,
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
from tests.helpers.waiting import until

pytestmark = pytest.mark.usefixtures("no_tasks_left")

LAB = AutonatConfig(
    dial_timeout=2.0, policy=DialPolicyConfig(allow_private=True), tracker=TrackerConfig(required=1)
)


@contextlib.asynccontextmanager
async def peer(listen: str = "/ip4/127.0.0.1/tcp/0", config: AutonatConfig = LAB) -> AsyncIterator[AutoNat]:
    async with Host(listen=[listen]) as host:
        start_services(host)
        identify = identify_service(host)
        assert identify is not None
        async with AutoNat(host, identify, config) as autonat:
            yield autonat


async def know(client: AutoNat, server: AutoNat) -> None:
    """Connect and identify both ways, so the client knows the server serves AutoNAT and where it is seen."""
    conn = await client.host.dial(server.host.listen_addrs[0])
    await client.identify.identify(conn)


async def test_a_reachable_peer_is_found_public() -> None:
    async with peer() as server, peer() as client:
        changes: list[Reachability] = []
        client.on_reachability.append(changes.append)
        await know(client, server)  # a server identified while we know nothing: the client asks at once
        await until(lambda: changes == [Reachability.PUBLIC], 10, "the verdict from the first server")
        assert client.servers() == [server.host.peer_id] and server.dialed_back == 1
        port = Multiaddr.parse(client.host.listen_addrs[0]).value_for("tcp")
        ours = f"/ip4/127.0.0.1/tcp/{port}"
        assert [str(a) for a in client.candidate_addrs()] == [ours]
        assert [str(a) for a in client.tracker.confirmed_addrs(asyncio.get_running_loop().time())] == [ours]
        assert await client.check() is Reachability.PUBLIC  # asking again agrees
        assert server.dialed_back == 2 and changes == [Reachability.PUBLIC]


async def test_a_peer_nobody_can_dial_is_found_private() -> None:
    # it listens on 127.0.0.2 but is seen at 127.0.0.1: the dial-back to 127.0.0.1:<its port> fails
    async with peer() as server, peer(listen="/ip4/127.0.0.2/tcp/0") as client:
        await know(client, server)
        await until(lambda: client.reachability is Reachability.PRIVATE, 10, "the verdict")
        assert server.dialed_back == 0


async def raw_request(asker: Host, server: AutoNat, message: AutonatMessage | bytes) -> AutonatMessage:
    stream = await asker.new_stream(server.host.listen_addrs[0], AUTONAT_PROTOCOL)
    body = message if isinstance(message, bytes) else encode_message(message)
    await stream.write(lp.encode_message(body))
    answer = await asyncio.wait_for(stream.read_message(), 10)
    assert answer is not None
    return decode_message(answer)[0]


async def test_requests_for_third_parties_and_bad_requests_are_refused() -> None:
    async with peer() as server, Host(listen=["/ip4/127.0.0.1/tcp/0"]) as asker:
        third = AutonatMessage(
            MessageType.DIAL, dial=Dial(PeerInfo(asker.peer_id, (Multiaddr.parse("/ip4/10.9.9.9/tcp/4001"),)))
        )
        answer = await raw_request(asker, server, third)
        assert (
            answer.dial_response is not None and answer.dial_response.status is ResponseStatus.E_DIAL_REFUSED
        )
        other = Host().peer_id
        spoofed = AutonatMessage(
            MessageType.DIAL, dial=Dial(PeerInfo(other, (Multiaddr.parse(asker.listen_addrs[0]),)))
        )
        answer = await raw_request(asker, server, spoofed)
        assert (
            answer.dial_response is not None and answer.dial_response.status is ResponseStatus.E_BAD_REQUEST
        )
        answer = await raw_request(asker, server, b"\x08\x09")  # an unknown message type
        assert (
            answer.dial_response is not None and answer.dial_response.status is ResponseStatus.E_BAD_REQUEST
        )
        assert server.host.metrics.protocol_errors[ProtocolErrorKind.AUTONAT] == 1
        assert server.dialed_back == 0


async def test_a_flood_of_requests_is_rate_limited() -> None:
    async with peer() as server, Host(listen=["/ip4/127.0.0.1/tcp/0"]) as asker:
        ask = AutonatMessage(
            MessageType.DIAL, dial=Dial(PeerInfo(asker.peer_id, (Multiaddr.parse(asker.listen_addrs[0]),)))
        )
        statuses = []
        for _ in range(5):
            answer = await raw_request(asker, server, ask)
            assert answer.dial_response is not None
            statuses.append(answer.dial_response.status)
        # go-libp2p's 3 requests a minute per peer: the rest refused without a dial
        assert statuses == [ResponseStatus.OK] * 3 + [ResponseStatus.E_DIAL_REFUSED] * 2
        assert server.dialed_back == 3
