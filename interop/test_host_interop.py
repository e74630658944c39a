"""mimirlite against real js-libp2p (the original MimirLLM stack), in both directions.

Each test runs a mimirlite Host on 127.0.0.1 and one js-libp2p peer (``peer.mjs``): the Python host
dials the JS peer, or the JS peer dials the Python host, and both check what they see.
After every test: the JS peers exited with code 0 and reported no uncaught errors, and no asyncio
task, socket or transport was left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
from jspeer import JsPeer, JsPeerError

from mimirlite import Connection, Host, KeyPair, PeerId, Stream
from mimirlite.errors import PeerIdMismatchError, StreamClosedError

pytestmark = [
    pytest.mark.usefixtures("no_leaks"),
    # a socket or transport collected unclosed fails the test
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

ECHO = "/echo/1.0.0"
KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB


# ---------------------------------------------------------------- helpers


async def echo_handler(stream: Stream) -> None:
    """Echo every byte as it arrives, until the remote closes its write side."""
    while data := await stream.read():
        await stream.write(data)


class JsTestPeer(JsPeer):
    """A JsPeer that keeps every event it hands out, so that teardown can look for crashes."""

    seen: list[dict[str, Any]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen = []

    async def next_event(self, name: str | None = None, timeout: float = 10) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while True:
                ev = await self.events.get()
                self.seen.append(ev)
                if name is None or ev.get("event") == name:
                    return ev

        return await asyncio.wait_for(wait(), timeout)

    def events_named(self, name: str) -> list[dict[str, Any]]:
        """Every event of that name so far (queued or already handed out)."""
        while not self.events.empty():
            self.seen.append(self.events.get_nowait())
        return [ev for ev in self.seen if ev.get("event") == name]

    def uncaught(self) -> list[dict[str, Any]]:
        return self.events_named("uncaught")

    async def connections(self) -> list[dict[str, Any]]:
        return cast("list[dict[str, Any]]", (await self.call("connections", timeout=10))["connections"])


StartJs = Callable[..., Awaitable[JsTestPeer]]


class ConnLog:
    """Every connection a host established or lost, in order."""

    def __init__(self, host: Host) -> None:
        self.opened: list[Connection] = []
        self.closed: list[Connection] = []
        self._changed = asyncio.Event()
        host.on_connected.append(self._on_open)
        host.on_disconnected.append(self._on_close)

    def _on_open(self, conn: Connection) -> None:
        self.opened.append(conn)
        self._changed.set()

    def _on_close(self, conn: Connection) -> None:
        self.closed.append(conn)
        self._changed.set()

    async def wait_for(self, cond: Callable[[], bool], what: str, timeout: float = 10) -> None:
        async def wait() -> None:
            while not cond():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None

    async def first_open(self) -> Connection:
        await self.wait_for(lambda: bool(self.opened), "an inbound connection")
        return self.opened[0]


def pid(text: str) -> PeerId:
    return PeerId.from_string(text)


def with_peer_id(addr: str, peer_id: PeerId | str) -> str:
    """``addr`` with its /p2p/ component replaced."""
    base = addr.split("/p2p/")[0]
    return f"{base}/p2p/{peer_id}"


def describe(conns: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(c["peerId"], c["status"], c["direction"], c["multiplexer"], c["encryption"]) for c in conns]


async def echo_round_trip(host: Host, target: str, data: bytes, chunk: int = CHUNK) -> bytes:
    """Write ``data`` (``chunk`` bytes a write) on a new echo stream while reading the answer;
    return what came back."""
    async with await host.new_stream(target, ECHO) as stream:

        async def send() -> None:
            view = memoryview(data)
            for i in range(0, len(data), chunk):
                await stream.write(view[i : i + chunk])
            await stream.close_write()

        sender = asyncio.create_task(send())
        try:
            received = await stream.read_all()
        finally:
            await sender
    return received


# ---------------------------------------------------------------- fixtures


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as h:
        h.set_handler(ECHO, echo_handler)
        yield h
    assert not h.connections


@pytest.fixture
async def start_js() -> AsyncIterator[StartJs]:
    """Start JS peers (``await start_js(*flags)``); all are stopped at the end, and must exit cleanly."""
    peers: list[JsTestPeer] = []

    async def start(*args: str) -> JsTestPeer:
        peer = cast(JsTestPeer, await JsTestPeer.start(*args))
        peers.append(peer)
        return peer

    try:
        yield start
    finally:
        await asyncio.gather(*(p.stop() for p in peers))
    for p in peers:
        assert p.returncode == 0, f"js peer exited with {p.returncode}:\n{p.stderr_tail(40)}"
        assert not p.uncaught(), f"uncaught errors in js peer: {p.uncaught()}\n{p.stderr_tail(40)}"


# ---------------------------------------------------------------- 1. handshake and peer IDs


async def test_python_dials_js_peer_ids(host: Host, start_js: StartJs) -> None:
    js = await start_js("--no-identify")
    conn = await host.dial(js.addr)
    assert conn.initiator
    assert conn.remote_peer == pid(js.peer_id)
    assert list(host.connections) == [pid(js.peer_id)]
    ev = await js.next_event("connection:open")
    assert ev["peerId"] == str(host.peer_id)
    assert ev["direction"] == "inbound"
    assert describe(await js.connections()) == [
        (str(host.peer_id), "open", "inbound", "/yamux/1.0.0", "/noise")
    ]


async def test_js_dials_python_peer_ids(host: Host, start_js: StartJs) -> None:
    js = await start_js("--no-identify")
    log = ConnLog(host)
    r = await js.call("dial", addr=host.listen_addrs[0], timeout=10)
    assert r["peerId"] == str(host.peer_id)
    conn = await log.first_open()
    assert not conn.initiator
    assert conn.remote_peer == pid(js.peer_id)
    assert describe(await js.connections()) == [
        (str(host.peer_id), "open", "outbound", "/yamux/1.0.0", "/noise")
    ]


async def test_wrong_peer_id_is_refused(host: Host, start_js: StartJs) -> None:
    js = await start_js()
    log = ConnLog(host)
    impostor = KeyPair.generate().peer_id

    # Python dials the JS address claiming another peer ID
    with pytest.raises(PeerIdMismatchError) as info:
        await host.dial(with_peer_id(js.addr, impostor))
    assert info.value.expected == impostor
    assert info.value.actual == pid(js.peer_id)
    assert str(impostor) in str(info.value) and js.peer_id in str(info.value)
    assert not host.connections and not log.opened

    # JS dials the Python address claiming another peer ID. js-libp2p 2.5.0 does not compare the
    # /p2p/ of a dialed address with the Noise identity (its upgrader does not give the expected
    # peer to the encrypter), so it may connect: but then it sees the host's real peer ID.
    try:
        r = await js.call("dial", addr=with_peer_id(host.listen_addrs[0], impostor), timeout=10)
    except JsPeerError:
        pass
    else:
        assert r["peerId"] == str(host.peer_id)

    # both still work, with the right IDs
    assert await echo_round_trip(host, js.addr, b"still here") == b"still here"
    r = await js.call("echo", addr=host.listen_addrs[0], size=1000, timeout=10)
    assert r["received"] == 1000 and r["sha256_sent"] == r["sha256_received"]
    assert len(log.opened) == 1
    assert len(await js.connections()) == 1


# ---------------------------------------------------------------- 2. echo round trip


async def test_echo_python_to_js(host: Host, start_js: StartJs) -> None:
    js = await start_js()
    async with await host.new_stream(js.addr, ECHO) as stream:
        assert stream.protocol == ECHO
        assert stream.remote_peer == pid(js.peer_id)
        await stream.write(b"hello")
        assert await stream.read_exactly(5) == b"hello"
        await stream.write(b", world")
        await stream.close_write()
        assert await stream.read_all() == b", world"


async def test_echo_js_to_python(host: Host, start_js: StartJs) -> None:
    js = await start_js()
    for size, chunk in ((1000, 1000), (1, 1), (100_003, 4096), (0, 1024)):
        r = await js.call("echo", addr=host.listen_addrs[0], size=size, chunk=chunk, timeout=10)
        assert r["sent"] == r["received"] == size
        assert r["sha256_sent"] == r["sha256_received"]
    assert len(host.connections) == 1


# ---------------------------------------------------------------- 3. 16 MiB


async def test_16_mib_python_to_js(host: Host, start_js: StartJs) -> None:
    js = await start_js()
    payload = os.urandom(16 * MiB)
    # 1 MiB writes: yamux frames as large as the window, each spread over several Noise messages
    received = await asyncio.wait_for(echo_round_trip(host, js.addr, payload, chunk=MiB), 30)
    assert len(received) == len(payload)
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(payload).hexdigest()


async def test_16_mib_js_to_python(host: Host, start_js: StartJs) -> None:
    js = await start_js()
    r = await js.call("echo", addr=host.listen_addrs[0], size=16 * MiB, chunk=CHUNK, timeout=30)
    assert r["sent"] == r["received"] == 16 * MiB
    assert r["sha256_sent"] == r["sha256_received"]


# ---------------------------------------------------------------- 4. 100 concurrent streams


async def test_100_concurrent_streams_python_to_js(host: Host, start_js: StartJs) -> None:
    js = await start_js()
    log = ConnLog(host)

    async def one(i: int) -> bool:
        data = f"stream {i} ".encode() * 400  # about 4 KiB each
        return await echo_round_trip(host, js.addr, data) == data

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(100))), 30)
    assert results == [True] * 100
    # one connection for all of them, on both sides
    assert len(log.opened) == 1 and not log.closed
    assert list(host.connections) == [pid(js.peer_id)]
    assert describe(await js.connections()) == [
        (str(host.peer_id), "open", "inbound", "/yamux/1.0.0", "/noise")
    ]


async def test_100_concurrent_streams_js_to_python(host: Host, start_js: StartJs) -> None:
    js = await start_js()
    log = ConnLog(host)
    r = await js.call("concurrent", addr=host.listen_addrs[0], streams=100, size=4096, timeout=30)
    assert r["failed"] == []
    assert r["ok_streams"] == 100
    assert r["remotePeer"] == str(host.peer_id)
    assert len(log.opened) == 1 and not log.closed
    assert list(host.connections) == [pid(js.peer_id)]
    assert describe(await js.connections()) == [
        (str(host.peer_id), "open", "outbound", "/yamux/1.0.0", "/noise")
    ]


# ---------------------------------------------------------------- 5. half-close


async def test_half_close_python_writer(host: Host, start_js: StartJs) -> None:
    """Python closes its write side first and still reads JS's echo to the end."""
    js = await start_js()
    data = os.urandom(100 * KiB)  # less than one window: all of it is written before reading
    async with await host.new_stream(js.addr, ECHO) as stream:
        await stream.write(data)
        await stream.close_write()
        with pytest.raises(StreamClosedError):
            await stream.write(b"more")
        assert await asyncio.wait_for(stream.read_all(), 10) == data
        assert stream.at_eof


async def test_half_close_js_writer(host: Host, start_js: StartJs) -> None:
    """JS closes its write side first and still reads Python's answer, written after that close."""
    js = await start_js()
    question: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def echo_after_eof(stream: Stream) -> None:
        data = await stream.read_all()  # returns at JS's half-close
        question.set_result(data)
        await stream.write(data)  # so the whole answer is sent after JS closed its write side

    host.set_handler(ECHO, echo_after_eof)
    r = await js.call("halfclose", addr=host.listen_addrs[0], text="hello, half-closed", timeout=10)
    assert r["writeStatusAfterClose"] == "closed"
    assert r["received"] == "hello, half-closed"
    assert r["read_ended"] is True
    assert await asyncio.wait_for(question, 5) == b"hello, half-closed"


# ---------------------------------------------------------------- 6. identify and kad-dht are refused


async def test_js_identify_is_refused_and_connection_survives(host: Host, start_js: StartJs) -> None:
    js = await start_js()  # identify on, as the original runs it on every new connection
    log = ConnLog(host)
    await js.call("dial", addr=host.listen_addrs[0], timeout=10)
    ev = await js.next_event("identify", timeout=10)
    assert ev["peerId"] == str(host.peer_id)
    assert ev["ok"] is False
    assert ev["error_name"] == "UnsupportedProtocolError", ev  # mimirlite answered `na`
    # the same connection goes on, both ways
    r = await js.call("echo", addr=host.listen_addrs[0], size=10_000, timeout=10)
    assert r["sha256_sent"] == r["sha256_received"]
    assert await echo_round_trip(host, js.addr, b"after identify") == b"after identify"
    assert len(log.opened) == 1 and not log.closed
    assert describe(await js.connections()) == [
        (str(host.peer_id), "open", "outbound", "/yamux/1.0.0", "/noise")
    ]


async def test_js_with_dht_keeps_connection(host: Host, start_js: StartJs) -> None:
    js = await start_js("--dht")
    log = ConnLog(host)
    await js.call("dial", addr=host.listen_addrs[0], timeout=10)
    ev = await js.next_event("identify", timeout=10)
    assert ev["ok"] is False and ev["error_name"] == "UnsupportedProtocolError", ev
    r = await js.call("concurrent", addr=host.listen_addrs[0], streams=10, size=4096, timeout=10)
    assert r["failed"] == [] and r["ok_streams"] == 10
    assert await echo_round_trip(host, js.addr, b"with dht") == b"with dht"
    assert len(log.opened) == 1 and not log.closed
    assert [c["status"] for c in await js.connections()] == ["open"]


# ---------------------------------------------------------------- 7. pings


async def test_js_yamux_ping_to_python(host: Host, start_js: StartJs) -> None:
    js = await start_js()
    # JS dialed: the ping goes out on JS's outbound connection
    r = await js.call("yamux_ping", addr=host.listen_addrs[0], timeout=10)
    assert r["remotePeer"] == str(host.peer_id)
    assert 0 <= r["rtt_ms"] < 5000
    assert r["muxer_rtt_ms"] >= 0  # whole milliseconds: 0 on loopback
    # and the other way: Python pings JS on the same connection
    (conn,) = host.connections.values()
    assert 0 <= await conn.ping() < 5
    assert len(await js.connections()) == 1


async def test_yamux_pings_on_a_python_dialed_connection(host: Host, start_js: StartJs) -> None:
    js = await start_js()
    conn = await host.dial(js.addr)
    assert 0 <= await conn.ping() < 5
    # JS answers and sends pings on its inbound side too (it reuses this connection)
    r = await js.call("yamux_ping", addr=host.listen_addrs[0], timeout=10)
    assert r["remotePeer"] == str(host.peer_id)
    assert 0 <= r["rtt_ms"] < 5000
    assert host.connections == {conn.remote_peer: conn}
    assert len(await js.connections()) == 1


async def test_js_connection_monitor_keeps_connection_alive(host: Host, start_js: StartJs) -> None:
    """libp2p's connection monitor pings every connection (here every 200 ms) on /ipfs/ping/1.0.0;
    mimirlite answers `na`, which the monitor counts as alive: the connection must stay up."""
    interval = 0.2
    js = await start_js("--no-identify", "--monitor-interval-ms", str(int(interval * 1000)))
    log = ConnLog(host)
    await js.call("dial", addr=host.listen_addrs[0], timeout=10)
    conn = await log.first_open()
    start = time.monotonic()

    async def alive_over_intervals(n: int) -> None:
        while True:
            assert conn.is_open and not log.closed
            conns = await js.connections()
            assert [c["status"] for c in conns] == ["open"], conns
            if time.monotonic() - start >= n * interval and conns[0]["rtt"] is not None:
                return
            await asyncio.sleep(interval / 4)

    await asyncio.wait_for(alive_over_intervals(5), 10)
    assert not js.events_named("connection:close")
    # the refused heartbeat streams do not pile up on either side (one may be in flight)
    assert conn.stream_count <= 2
    assert len((await js.connections())[0]["streams"]) <= 2
    r = await js.call("echo", addr=host.listen_addrs[0], size=1000, timeout=10)
    assert r["sha256_sent"] == r["sha256_received"]
    assert log.opened == [conn] and host.connections == {conn.remote_peer: conn}


# ---------------------------------------------------------------- 8. shutdown


async def test_python_host_stops_while_js_connected(start_js: StartJs) -> None:
    js = await start_js("--no-identify")
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as h:
        h.set_handler(ECHO, echo_handler)
        await js.call("echo", addr=h.listen_addrs[0], size=1000, timeout=10)
        assert len(h.connections) == 1
    ev = await js.next_event("connection:close", timeout=10)
    assert ev["peerId"] == str(h.peer_id)
    assert await js.connections() == []


async def test_js_stops_while_python_connected(host: Host, start_js: StartJs) -> None:
    js = await start_js("--no-identify")
    log = ConnLog(host)
    await host.dial(js.addr)
    await js.stop()
    assert js.returncode == 0
    await log.wait_for(lambda: bool(log.closed), "the connection to end")
    assert not host.connections
    # the host goes on with another JS peer
    other = await start_js("--no-identify")
    assert await echo_round_trip(host, other.addr, b"next") == b"next"
