"""libp2p identify, identify push and ping between mimirlite and real js-libp2p peers, both directions.

Each test runs a mimirlite Host with the Identify and Ping services on 127.0.0.1 and one js-libp2p peer
(``peer.mjs --peer-events``), which identifies every new connection and reports what its peer store
learned. After every test: the JS peers exited with code 0 and reported no uncaught errors, and no
asyncio task, socket or transport was left behind.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
from jspeer import JsPeer, JsPeerError

from mimirlite import Connection, Host, PeerId, Stream
from mimirlite.errors import ProtocolNotSupportedError
from mimirlite.protocols import (
    IDENTIFY_PROTOCOL,
    IDENTIFY_PUSH_PROTOCOL,
    PING_PROTOCOL,
    Identify,
    IdentifyInfo,
    Ping,
)

pytestmark = [
    pytest.mark.usefixtures("no_leaks"),
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

ECHO = "/echo/1.0.0"
TIMEOUT = 10


# ---------------------------------------------------------------- helpers


async def echo_handler(stream: Stream) -> None:
    while data := await stream.read():
        await stream.write(data)


class JsTestPeer(JsPeer):
    """A JsPeer that keeps every event it hands out, so that teardown can look for crashes."""

    seen: list[dict[str, Any]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen = []

    async def next_event(self, name: str | None = None, timeout: float = TIMEOUT) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while True:
                ev = await self.events.get()
                self.seen.append(ev)
                if name is None or ev.get("event") == name:
                    return ev

        return await asyncio.wait_for(wait(), timeout)

    async def event_where(self, name: str, cond: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first event of that name, seen before or arriving next, for which ``cond`` holds."""
        for ev in self.seen:
            if ev.get("event") == name and cond(ev):
                return ev

        async def wait() -> dict[str, Any]:
            while not cond(ev := await self.next_event(name)):
                pass
            return ev

        return await asyncio.wait_for(wait(), TIMEOUT)

    def uncaught(self) -> list[dict[str, Any]]:
        while not self.events.empty():
            self.seen.append(self.events.get_nowait())
        return [ev for ev in self.seen if ev.get("event") == "uncaught"]


StartJs = Callable[..., Awaitable[JsTestPeer]]


def plain(addr: str) -> str:
    return addr.rsplit("/p2p/", 1)[0]


def learned(identify: Identify, cond: Callable[[IdentifyInfo], bool]) -> asyncio.Future[IdentifyInfo]:
    """A future for the next identify result or push that ``cond`` accepts."""
    fut: asyncio.Future[IdentifyInfo] = asyncio.get_running_loop().create_future()

    def seen(info: IdentifyInfo) -> None:
        if cond(info) and not fut.done():
            fut.set_result(info)
            identify.on_identified.remove(seen)

    identify.on_identified.append(seen)
    return fut


def local_addr(conn: Connection) -> str:
    host, port = conn._transport.get_extra_info("sockname")[:2]  # type: ignore[union-attr]
    return f"/ip4/{host}/tcp/{port}"


# ---------------------------------------------------------------- fixtures


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as h:
        h.set_handler(ECHO, echo_handler)
        yield h


@pytest.fixture
def identify(host: Host) -> Identify:
    return Identify(host, run_on_connect=True)


@pytest.fixture
def ping(host: Host) -> Ping:
    return Ping(host)


@pytest.fixture
async def start_js() -> AsyncIterator[StartJs]:
    """Start JS peers (``await start_js(*flags)``); all are stopped at the end, and must exit cleanly."""
    peers: list[JsTestPeer] = []

    async def start(*args: str) -> JsTestPeer:
        peer = cast(JsTestPeer, await JsTestPeer.start("--peer-events", *args))
        peers.append(peer)
        return peer

    try:
        yield start
    finally:
        await asyncio.gather(*(p.stop() for p in peers))
    for p in peers:
        assert p.returncode == 0, f"js peer exited with {p.returncode}:\n{p.stderr_tail(40)}"
        assert not p.uncaught(), f"uncaught errors in js peer: {p.uncaught()}\n{p.stderr_tail(40)}"


JS_PROTOCOLS = {ECHO, IDENTIFY_PROTOCOL, IDENTIFY_PUSH_PROTOCOL, PING_PROTOCOL}


def check_js_learned_us(ev: dict[str, Any], host: Host) -> None:
    assert ev["ok"] is True, ev
    assert ev["peerId"] == str(host.peer_id)
    assert ev["agentVersion"] == "mimirlite/0.1.0"
    assert ev["protocolVersion"] == "ipfs/0.1.0"
    assert set(ev["protocols"]) == set(host.protocols) == {ECHO, IDENTIFY_PROTOCOL, IDENTIFY_PUSH_PROTOCOL}


async def check_js_peer_store(js: JsTestPeer, host: Host) -> None:
    r = await js.call("peerinfo", peerId=str(host.peer_id), timeout=TIMEOUT)
    assert plain(host.listen_addrs[0]) in [plain(a) for a in r["addresses"]], r
    assert r["agentVersion"] == "mimirlite/0.1.0" and r["protocolVersion"] == "ipfs/0.1.0"
    assert set(r["protocols"]) == set(host.protocols)


def check_we_learned_js(info: IdentifyInfo, js: JsTestPeer) -> None:
    assert info.peer_id == PeerId.from_string(js.peer_id)
    assert info.public_key is not None and info.peer_id.matches_public_key(info.public_key)
    assert info.agent_version is not None and info.agent_version.startswith("js-libp2p/"), info
    assert info.protocol_version == "ipfs/0.1.0"
    assert set(info.protocols) >= JS_PROTOCOLS
    assert info.listen_addrs == (plain(js.addr),)


# ---------------------------------------------------------------- identify


async def test_python_dials_js_identify_both_ways(host: Host, identify: Identify, start_js: StartJs) -> None:
    js = await start_js()
    conn = await host.dial(js.addr)
    info = await asyncio.wait_for(identify.identify(conn), TIMEOUT)  # joins the run started on connect
    check_we_learned_js(info, js)
    assert info.observed_addr is not None and plain(info.observed_addr) == local_addr(conn)
    assert identify.info_of(info.peer_id) == info
    assert host.addrs_of(info.peer_id) == [js.addr]

    # JS identified us on its own, and its peer store has our listen address
    check_js_learned_us(await js.next_event("identify"), host)
    ev = await js.event_where("peer:identify", lambda e: e["peerId"] == str(host.peer_id))
    assert ev["listenAddrs"] == [plain(host.listen_addrs[0])]
    assert ev["observedAddr"] == plain(js.addr)  # we saw JS at its listen address: we dialed it
    await check_js_peer_store(js, host)
    assert conn.is_open and len(host.connections) == 1


async def test_js_dials_python_identify_both_ways(host: Host, identify: Identify, start_js: StartJs) -> None:
    js = await start_js()
    ours = learned(identify, lambda i: str(i.peer_id) == js.peer_id)
    await js.call("dial", addr=host.listen_addrs[0], timeout=TIMEOUT)
    # we identified the dialer by ourselves, and learned an address we never dialed
    info = await asyncio.wait_for(ours, TIMEOUT)
    check_we_learned_js(info, js)
    assert host.addrs_of(info.peer_id) == [js.addr]
    conn = host.connections[info.peer_id]
    assert not conn.initiator
    assert info.observed_addr is not None and plain(info.observed_addr) == local_addr(conn)

    check_js_learned_us(await js.next_event("identify"), host)
    ev = await js.event_where("peer:identify", lambda e: e["peerId"] == str(host.peer_id))
    assert ev["listenAddrs"] == [plain(host.listen_addrs[0])]
    assert ev["observedAddr"] is not None and plain(ev["observedAddr"]).startswith("/ip4/127.0.0.1/tcp/")
    await check_js_peer_store(js, host)


async def test_identify_push_both_ways(host: Host, identify: Identify, start_js: StartJs) -> None:
    js = await start_js()
    conn = await host.dial(js.addr)
    await asyncio.wait_for(identify.identify(conn), TIMEOUT)
    await js.event_where("peer:identify", lambda e: e["peerId"] == str(host.peer_id))

    # we push a new protocol to JS
    host.set_handler("/py-new/1.0.0", echo_handler)
    assert await asyncio.wait_for(identify.push(), TIMEOUT) == 1
    ev = await js.event_where("peer:identify", lambda e: "/py-new/1.0.0" in e["protocols"])
    assert ev["peerId"] == str(host.peer_id) and ev["agentVersion"] == "mimirlite/0.1.0"
    r = await js.call("peerinfo", peerId=str(host.peer_id), timeout=TIMEOUT)
    assert "/py-new/1.0.0" in r["protocols"]

    # JS pushes its new protocol to us
    pushed = learned(identify, lambda i: "/js-new/1.0.0" in i.protocols)
    await js.call("handle", protocol="/js-new/1.0.0", timeout=TIMEOUT)
    info = await asyncio.wait_for(pushed, TIMEOUT)
    assert str(info.peer_id) == js.peer_id
    assert set(info.protocols) >= JS_PROTOCOLS
    assert info.listen_addrs == (plain(js.addr),)
    assert identify.info_of(info.peer_id) == info
    stream = await host.new_stream(info.peer_id, "/js-new/1.0.0")
    await stream.write(b"new")
    await stream.close_write()
    assert await stream.read_all() == b"new"
    assert conn.is_open and len(host.connections) == 1


async def test_identify_js_without_identify(host: Host, identify: Identify, start_js: StartJs) -> None:
    js = await start_js("--no-identify")
    conn = await host.dial(js.addr)
    with pytest.raises(ProtocolNotSupportedError, match=re.escape(IDENTIFY_PROTOCOL)):
        await asyncio.wait_for(identify.identify(conn), TIMEOUT)
    assert identify.info_of(conn.remote_peer) is None  # type: ignore[arg-type]
    # the connection goes on
    stream = await host.open_on(conn, ECHO)
    await stream.write(b"still here")
    await stream.close_write()
    assert await stream.read_all() == b"still here"
    assert conn.is_open and len(host.connections) == 1
    r = await js.call("connections", timeout=TIMEOUT)
    assert [c["status"] for c in r["connections"]] == ["open"]


# ---------------------------------------------------------------- ping


async def test_ping_both_ways(host: Host, ping: Ping, start_js: StartJs) -> None:
    js = await start_js()
    rtts = await ping.ping_many(js.addr, 5)
    assert len(rtts) == 5 and all(0 < r < 5 for r in rtts)
    conn = host.connections[PeerId.from_string(js.peer_id)]
    assert 0 < await ping.ping(conn) < 5
    # JS pings us: our answerer echoes, JS checks the echo
    for _ in range(3):
        r = await js.call("ping", addr=host.listen_addrs[0], timeout=TIMEOUT)
        assert 0 <= r["rtt_ms"] < 5000
    # all of it on the one connection
    assert len(host.connections) == 1
    assert len((await js.call("connections", timeout=TIMEOUT))["connections"]) == 1


async def test_js_ping_to_a_host_without_ping(host: Host, start_js: StartJs) -> None:
    """Without the Ping service a host answers `na`; JS reports it and the connection lives on."""
    js = await start_js()
    with pytest.raises(JsPeerError) as info:
        await js.call("ping", addr=host.listen_addrs[0], timeout=TIMEOUT)
    assert info.value.reply["error_name"] == "UnsupportedProtocolError", info.value.reply
    r = await js.call("echo", addr=host.listen_addrs[0], size=1000, timeout=TIMEOUT)
    assert r["sha256_sent"] == r["sha256_received"]
    assert len(host.connections) == 1
