"""The limits a host enforces (connections per IP and in all, pending handshakes, streams per connection
and in all, bytes buffered per connection, idle timeout with keepalive pings) and the counters a host and
a node keep (``host.metrics``, ``node.metrics``, ``--stats-interval``), on real sockets on 127.0.0.1.

At a limit the newest work is refused with a logged reason and counted; established work carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mimirlite import Host, HostConfig, Stream
from mimirlite.errors import LimitExceededError, LocalError, MimirliteError, StreamResetError
from mimirlite.metrics import STATS_LOGGER, HostMetrics, NodeMetrics, log_stats, stats_line
from mimirlite.mimir import EchoBackend, MimirNode, NodeLimits, packets
from mimirlite.net.connection import Connection
from mimirlite.protocols import start_services
from mimirlite.wire.multistream import MULTISTREAM_PROTOCOL as MULTISTREAM
from mimirlite.wire.multistream import encode_line
from mimirlite.wire.yamux import INITIAL_WINDOW, YamuxConfig
from tests.helpers import ECHO, echo_handler, logged, until
from tests.helpers.rawpeer import echo_on, sink_handler

TIMEOUT = 5.0
"""Upper bound on every wait; a healthy run never gets near it."""
SINK = "/sink/1.0.0"
LOCAL = "/ip4/127.0.0.1/tcp/0"

INTEROP = Path(__file__).resolve().parents[2] / "interop"


# --- helpers -----------------------------------------------------------------------------------


async def finish(stream: Stream) -> None:
    await stream.close_write()
    assert await asyncio.wait_for(stream.read(), TIMEOUT) == b""


@contextlib.asynccontextmanager
async def server(config: HostConfig | None = None) -> AsyncIterator[Host]:
    async with Host(listen=[LOCAL], config=config) as host:
        host.set_handler(ECHO, echo_handler)
        host.set_handler(SINK, sink_handler)
        yield host


@contextlib.asynccontextmanager
async def clients(n: int, config: HostConfig | None = None) -> AsyncIterator[list[Host]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Host(config=config)) for _ in range(n)]


# --- configuration -----------------------------------------------------------------------------


def test_limits_are_named_config_fields() -> None:
    cfg = HostConfig()
    assert (cfg.max_connections, cfg.max_connections_per_ip, cfg.max_pending_handshakes) == (1024, 256, 64)
    assert (cfg.max_pending_per_ip, cfg.first_byte_timeout, cfg.handshake_step_timeout) == (16, 3.0, 5.0)
    assert (cfg.max_streams_total, cfg.yamux.max_streams) == (4096, 1024)
    assert (cfg.idle_timeout, cfg.keepalive_interval, cfg.write_timeout) == (300.0, 30.0, 60.0)
    assert cfg.dead_link_timeout == 60.0
    assert HostConfig(dead_link_timeout=None).dead_link_timeout is None
    assert cfg.yamux.max_buffered == 64 * 1024 * 1024
    assert (cfg.yamux.max_queued_replies, cfg.yamux.max_early_resets, cfg.yamux.max_empty_frames) == (
        4096,
        256,
        1024,
    )
    assert HostConfig(idle_timeout=None, keepalive_interval=None, write_timeout=None).idle_timeout is None
    for bad in (
        {"max_connections_per_ip": -1},
        {"max_pending_per_ip": -1},
        {"first_byte_timeout": 0},
        {"handshake_step_timeout": float("inf")},
        {"handshake_timeout": float("nan")},
        {"max_streams_total": -1},
        {"idle_timeout": 0},
        {"keepalive_interval": -1.0},
        {"write_timeout": float("nan")},
        {"dead_link_timeout": 0},
        {"dead_link_timeout": float("inf")},
    ):
        with pytest.raises(LocalError):
            HostConfig(**bad)
    for bad_yamux in (
        {"max_buffered": INITIAL_WINDOW - 1},
        {"max_queued_replies": 0},
        {"max_early_resets": 0},
        {"max_empty_frames": 0},
    ):
        with pytest.raises(LocalError):
            YamuxConfig(**bad_yamux)


# --- connections -------------------------------------------------------------------------------


async def test_connections_per_ip(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mimirlite")
    async with server(HostConfig(max_connections_per_ip=2)) as host, clients(3) as (a, b, c):
        addr = host.listen_addrs[0]
        first = await a.new_stream(addr, ECHO)
        second = await b.new_stream(addr, ECHO)
        await echo_on(first)
        await echo_on(second)
        with pytest.raises(MimirliteError):
            await c.dial(addr)
        assert host.metrics.refused == {"connections_per_ip": 1}
        assert logged(caplog, "refusing inbound connection from 127.0.0.1:", "2 connections from 127.0.0.1")
        assert host._per_ip == {"127.0.0.1": 2}
        # established work carries on
        await echo_on(first, b"still")
        await echo_on(second, b"here")
        # one leaves: its place is free for the next
        await finish(first)
        a.connections[host.peer_id].close()
        await until(lambda: host._per_ip == {"127.0.0.1": 1})
        stream = await c.new_stream(addr, ECHO)
        await echo_on(stream)
        await finish(stream)
        await finish(second)
        m = host.metrics
        assert (m.connections_opened, m.connections_current) == (3, 2)
    assert host._per_ip == {}


async def test_max_connections_and_pending_handshakes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mimirlite")
    async with server(HostConfig(max_connections=1, max_pending_handshakes=1)) as host, clients(2) as (a, b):
        addr = host.listen_addrs[0]
        stream = await a.new_stream(addr, ECHO)
        with pytest.raises(MimirliteError):
            await b.dial(addr)
        assert host.metrics.refused == {"connections": 1}
        logged(caplog, "refusing inbound connection", "1 connections (max_connections)")
        await echo_on(stream)
        await finish(stream)

    async with server(HostConfig(max_pending_handshakes=1, handshake_timeout=TIMEOUT)) as host:
        port = int(host.listen_addrs[0].split("/")[4])
        # a pending handshake that progresses (its multistream header answered) keeps its place ...
        header = encode_line(MULTISTREAM)
        talking_reader, talking = await asyncio.open_connection("127.0.0.1", port)
        talking.write(header)
        assert await asyncio.wait_for(talking_reader.readexactly(len(header)), TIMEOUT) == header
        reader, second = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # closed at once
        assert host.metrics.refused == {"pending_handshakes": 1}
        logged(caplog, "1 handshakes in progress (max_pending_handshakes)")
        for w in (talking, second):
            w.close()
        await until(lambda: host._pending_inbound == 0)
        # ... one that says nothing is evicted by a newer connection
        silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: host._pending_inbound == 1)
        # (connected and speaking before the host, on this event loop, accepts it)
        third = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        third.sendall(header)
        assert await asyncio.wait_for(silent_reader.read(), TIMEOUT) == b""
        assert host.metrics.refused == {"pending_handshakes": 1, "evicted_pending": 1}
        logged(caplog, "closing pending inbound connection from 127.0.0.1:", "stalled")
        for w in (silent, third):
            w.close()
        await until(lambda: host._pending_inbound == 0)
        async with clients(1) as (c,):  # the slot is free again
            stream = await c.new_stream(host.listen_addrs[0], ECHO)
            await echo_on(stream)
            await finish(stream)


# --- streams -----------------------------------------------------------------------------------


async def test_streams_per_connection_are_refused_with_rst(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mimirlite")
    async with server(HostConfig(yamux=YamuxConfig(max_streams=2))) as host, clients(1) as (a,):
        addr = host.listen_addrs[0]
        held = [await a.new_stream(addr, ECHO) for _ in range(2)]
        with pytest.raises(StreamResetError):
            await a.new_stream(addr, ECHO)
        assert host.metrics.refused == {"streams": 1}
        logged(caplog, "refusing inbound yamux stream", "max_streams reached")
        for s in held:
            await echo_on(s)
            await finish(s)
        await until(lambda: host.metrics.streams_current == 0)
        stream = await a.new_stream(addr, ECHO)
        await echo_on(stream)
        await finish(stream)


async def test_streams_in_all_connections(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mimirlite")
    async with server(HostConfig(max_streams_total=3)) as host, clients(2) as (a, b):
        addr = host.listen_addrs[0]
        held = [await user.new_stream(addr, ECHO) for user in (a, a, b)]
        for s in held:
            await echo_on(s)
        assert host.metrics.streams_current == 3
        # a fourth inbound stream, from either peer, is reset; the three go on
        with pytest.raises(StreamResetError):
            await b.new_stream(addr, ECHO)
        assert host.metrics.refused == {"streams_total": 1}
        logged(caplog, "refusing stream", "3 streams open (max_streams_total)")
        # so is opening one of our own
        with pytest.raises(LimitExceededError, match="max_streams_total"):
            host.connections[a.peer_id].open_stream()
        for s in held:
            await echo_on(s, b"carries on")
        await finish(held[0])
        await until(lambda: host.metrics.streams_current == 2)
        stream = await b.new_stream(addr, ECHO)
        await echo_on(stream)
        for s in (stream, held[1], held[2]):
            await finish(s)
        await until(lambda: host.metrics.streams_current == 0)
        assert host.metrics.streams_opened == 4


async def test_bytes_buffered_per_connection(caplog: pytest.LogCaptureFixture) -> None:
    """Data past ``max_buffered`` (unread on all streams of a connection) resets the stream it came on."""
    caplog.set_level(logging.INFO, "mimirlite")
    limit = INITIAL_WINDOW + 100_000
    async with server(HostConfig(yamux=YamuxConfig(max_buffered=limit))) as host, clients(1) as (a,):
        addr = host.listen_addrs[0]
        first = await a.new_stream(addr, SINK)
        await first.write(bytes(200_000))
        conn = host.connections[a.peer_id]
        session = conn._session
        assert session is not None
        await until(lambda: session.buffered == 200_000)
        second = await a.new_stream(addr, SINK)
        await second.write(bytes(200_000))  # within its window, but past the connection's limit
        with pytest.raises(StreamResetError):
            await asyncio.wait_for(second.read(), TIMEOUT)
        assert host.metrics.refused == {"buffer": 1}
        logged(caplog, f"resetting yamux stream {second.stream_id}: {limit} bytes buffered on the connection")
        assert session.buffered == 200_000
        # the first stream and the connection carry on
        await first.write(bytes(50_000))
        await until(lambda: session.buffered == 250_000)
        stream = await a.new_stream(addr, ECHO)
        await echo_on(stream)
        await finish(stream)
        assert conn.is_open


# --- idle timeout and keepalive ----------------------------------------------------------------


async def test_idle_connection_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mimirlite")
    idle = 0.3
    quiet = HostConfig(keepalive_interval=None)
    async with server(HostConfig(idle_timeout=idle)) as host, clients(1, quiet) as (a,):
        loop = asyncio.get_running_loop()
        stream = await a.new_stream(host.listen_addrs[0], ECHO)
        await echo_on(stream)
        # a stream open: not idle, however long it is quiet
        await asyncio.sleep(3 * idle)
        assert a.peer_id in host.connections
        await finish(stream)
        ended = loop.time()
        conn = host.connections[a.peer_id]
        await asyncio.wait_for(asyncio.shield(conn.closed), TIMEOUT)
        waited = loop.time() - ended
        assert idle * 0.9 <= waited < idle + 1.0
        assert conn.close_kind == "idle"
        assert host.metrics.closed == {"idle": 1}
        logged(caplog, "idle for", "(idle_timeout); closing")
        await until(lambda: host.peer_id not in a.connections)  # the dialer saw it go
        stream = await a.new_stream(host.listen_addrs[0], ECHO)  # and dials again
        await echo_on(stream)
        await finish(stream)


async def test_keepalive_pings_keep_a_dialed_connection() -> None:
    idle = 0.4
    async with (
        server(HostConfig(idle_timeout=idle)) as host,
        clients(1, HostConfig(keepalive_interval=idle / 4, idle_timeout=None)) as (a,),
    ):
        stream = await a.new_stream(host.listen_addrs[0], ECHO)
        await echo_on(stream)
        await finish(stream)
        conn = host.connections[a.peer_id]
        # 8 pings a quarter of idle_timeout apart: twice the idle timeout with no stream open
        await until(lambda: host.metrics.pings_answered >= 8 or conn.closed.done(), 4 * idle + TIMEOUT)
        assert not conn.closed.done(), conn.close_kind
        assert host.metrics.closed == {}


async def test_idle_timeout_off() -> None:
    async with (
        server(HostConfig(idle_timeout=None)) as host,
        clients(1, HostConfig(keepalive_interval=None, idle_timeout=None)) as (a,),
    ):
        stream = await a.new_stream(host.listen_addrs[0], ECHO)
        await echo_on(stream)
        await finish(stream)
        conn = host.connections[a.peer_id]
        assert conn._timer is None and a.connections[host.peer_id]._timer is None
        await asyncio.sleep(0.3)
        assert not conn.closed.done()


# --- dead links: TCP keepalive and user timeout ------------------------------------------------

LINUX_TCP = ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT")


def tcp_options(conn: Connection) -> dict[str, int]:
    """The TCP options of ``conn``'s socket, read back from the kernel."""
    assert conn._transport is not None
    sock = conn._transport.get_extra_info("socket")
    tcp = socket.IPPROTO_TCP
    return {
        "nodelay": sock.getsockopt(tcp, socket.TCP_NODELAY),
        "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "idle": sock.getsockopt(tcp, socket.TCP_KEEPIDLE),
        "interval": sock.getsockopt(tcp, socket.TCP_KEEPINTVL),
        "probes": sock.getsockopt(tcp, socket.TCP_KEEPCNT),
        "user_timeout_ms": sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT),
    }


def dead_link_options(idle: int, interval: int, probes: int, user_timeout_ms: int) -> dict[str, int]:
    timing = {"idle": idle, "interval": interval, "probes": probes, "user_timeout_ms": user_timeout_ms}
    return {"nodelay": 1, "keepalive": 1, **timing}


OS_DEFAULTS = {"nodelay": 1, "keepalive": 0, "user_timeout_ms": 0}
"""dead_link_timeout=None: no keepalive, no user timeout (TCP_KEEPIDLE and the like are the OS's)."""
DEFAULT, OFF = HostConfig(), HostConfig(dead_link_timeout=None)
DEAD_LINK_CASES = {
    # id: (server config, client config, the accepted socket's options, the dialed socket's options)
    "default": (DEFAULT, DEFAULT, dead_link_options(30, 6, 5, 60000), dead_link_options(30, 6, 5, 60000)),
    "custom": (
        HostConfig(dead_link_timeout=7.5),
        HostConfig(dead_link_timeout=2.0),
        dead_link_options(3, 1, 4, 7500),
        dead_link_options(1, 1, 1, 2000),
    ),
    "none": (OFF, OFF, OS_DEFAULTS, OS_DEFAULTS),
    "dialer": (OFF, HostConfig(dead_link_timeout=300), OS_DEFAULTS, dead_link_options(150, 30, 5, 300000)),
}


@pytest.mark.skipif(not all(hasattr(socket, n) for n in LINUX_TCP), reason="Linux TCP options")
@pytest.mark.parametrize("case", DEAD_LINK_CASES)
async def test_dead_link_socket_options_on_both_sides(case: str) -> None:
    server_cfg, client_cfg, accepted, dialed = DEAD_LINK_CASES[case]
    async with server(server_cfg) as host, clients(1, client_cfg) as (a,):
        stream = await a.new_stream(host.listen_addrs[0], ECHO)
        await echo_on(stream)
        out, inbound = a.connections[host.peer_id], host.connections[a.peer_id]
        assert out.initiator and not inbound.initiator
        for conn, expected in ((inbound, accepted), (out, dialed)):
            got = tcp_options(conn)
            assert {k: got[k] for k in expected} == expected, conn
        await finish(stream)


async def test_dead_link_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mimirlite")
    async with server() as host, clients(1) as (a,):
        stream = await a.new_stream(host.listen_addrs[0], ECHO)
        await echo_on(stream)
        conn = host.connections[a.peer_id]
        # What asyncio hands the protocol once TCP_USER_TIMEOUT or the keepalive probes gave up (the
        # kernel doing it for real is in tests/scenarios/test_faults.py, between network namespaces).
        conn.connection_lost(TimeoutError(errno.ETIMEDOUT, "Connection timed out"))
        assert conn.close_kind == "dead_link" and conn.closed.done()
        assert host.metrics.closed == {"dead_link": 1}
        assert host.metrics.connections_current == 0
        logged(caplog, "dead link", "Connection timed out")
        # The other side sees the socket close without a GoAway; the host goes on serving.
        await until(lambda: host.peer_id not in a.connections)
        assert a.metrics.closed == {"remote": 1}
        stream = await a.new_stream(host.listen_addrs[0], ECHO)
        await echo_on(stream)
        await finish(stream)


def _jspeer() -> Any:
    if str(INTEROP) not in sys.path:
        sys.path.insert(0, str(INTEROP))
    import jspeer  # type: ignore[import-not-found]

    return jspeer


def _node_available() -> bool:
    try:
        return bool(_jspeer().node_available())
    except ImportError:
        return False


@pytest.mark.skipif(not _node_available(), reason="needs node and `npm ci` run in interop/")
async def test_js_peer_that_pings_is_not_idle_one_that_does_not_is_closed() -> None:
    """A js-libp2p peer keeps its connection with its connection monitor's pings (every 10 s by default;
    0.2 s here against an idle timeout of 1 s); with the monitor off it is idle and closed."""
    idle = 1.0
    jspeer = _jspeer()
    async with server(HostConfig(idle_timeout=idle)) as host:
        services = start_services(host)
        try:
            async with (
                await jspeer.JsPeer.start("--monitor-interval-ms", "200") as pinging,
                await jspeer.JsPeer.start("--no-monitor") as quiet,
            ):
                await pinging.call("dial", addr=host.listen_addrs[0])
                await quiet.call("dial", addr=host.listen_addrs[0])
                await until(lambda: len(host.connections) == 2)
                ended = await quiet.next_event("connection:close", timeout=idle + TIMEOUT)
                assert ended["peerId"] == str(host.peer_id)
                await asyncio.sleep(2 * idle)
                assert [str(p) for p in host.connections] == [pinging.peer_id]
                assert host.metrics.closed == {"idle": 1}
                await pinging.call("echo", addr=host.listen_addrs[0], size=1000)
        finally:
            for service in services:
                service.close()


# --- metrics -----------------------------------------------------------------------------------


async def test_host_metrics_count_the_traffic() -> None:
    async with server() as host, clients(1) as (a,):
        m = host.metrics
        assert isinstance(m, HostMetrics)
        assert m.as_dict() == {
            "connections_current": 0,
            "connections_opened": 0,
            "connections_closed": 0,
            "streams_current": 0,
            "streams_opened": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "pings_answered": 0,
            "refused": {},
            "closed": {},
            "protocol_errors": {},
        }
        payload = bytes(100_000)
        for _ in range(3):
            stream = await a.new_stream(host.listen_addrs[0], ECHO)
            await stream.write(payload)
            await stream.close_write()
            assert len(await asyncio.wait_for(stream.read_all(), TIMEOUT)) == len(payload)
        for _ in range(5):
            await a.connections[host.peer_id].ping()
        await until(lambda: host.metrics.streams_current == 0)
        m = host.metrics
        assert (m.connections_opened, m.connections_current, m.connections_closed) == (1, 1, 0)
        assert m.streams_opened == 3
        assert 3 * len(payload) < m.bytes_in < 3 * len(payload) + 10_000
        assert 3 * len(payload) < m.bytes_out < 3 * len(payload) + 10_000
        assert m.pings_answered == 5
        # the dialer counts the same traffic the other way round
        assert a.metrics.bytes_out == m.bytes_in and a.metrics.streams_opened == 3
        a.connections[host.peer_id].close()
        await until(lambda: host.metrics.connections_current == 0)
        # a polite close says GoAway first: the host closes its end once the remote's streams are done
        assert host.metrics.closed == {"go_away": 1} and a.metrics.closed == {"local": 1}
        assert host.metrics.connections_closed == 1


async def chat(user: Host, node: MimirNode, packet: Any) -> list[dict[str, Any]]:
    stream = await user.new_stream(node.host.listen_addrs[0], packets.CHAT_PROTOCOL)
    async with stream:
        await stream.write_json(packet)
        await stream.close_write()
        out = []
        while (obj := await asyncio.wait_for(stream.read_json(), TIMEOUT)) is not None:
            out.append(obj)
        return out


def message(text: str, **extra: Any) -> dict[str, Any]:
    return {"event": "message", "data": {"messages": [{"role": "user", "content": text}], **extra}}


async def test_node_metrics() -> None:
    async with (
        server() as host,
        MimirNode(host, EchoBackend(delay=0.05), limits=NodeLimits(max_concurrent=1, queue=0)) as node,
        clients(1) as (user,),
    ):
        assert isinstance(node.metrics, NodeMetrics)
        assert node.metrics.refused is node.refused
        # served
        out = await chat(user, node, message("one two"))
        assert out[-1]["data"]["choices"][0]["finish_reason"] == "stop"
        # cancelled mid-answer, and refused while it runs
        stream = await user.new_stream(host.listen_addrs[0], packets.CHAT_PROTOCOL)
        await stream.write_json(message("a b c d e f g h i j k l m n o p"))
        assert (await asyncio.wait_for(stream.read_json(), TIMEOUT))["event"] == "completionPacket"
        assert node.metrics.in_flight == 1
        busy = await chat(user, node, message("busy"))
        assert busy[-1]["data"]["error"]["type"] == "overloaded"
        await stream.reset()
        await until(lambda: node.metrics.in_flight == 0)
        # a bad request, an unknown model
        assert (await chat(user, node, {"event": "message", "data": {}}))[-1]["data"]["error"]["type"] == (
            "bad_request"
        )
        unknown = await chat(user, node, message("hi", model="nope"))
        assert unknown[-1]["data"]["error"]["type"] == "model_not_found"
        # identify
        async with await user.new_stream(host.listen_addrs[0], packets.MIMIR_IDENTIFY_PROTOCOL) as ident:
            await ident.write_json({"event": "query", "data": "x"})
            assert (await asyncio.wait_for(ident.read_json(), TIMEOUT))["data"] == ["echo"]
        await until(lambda: node.metrics.identify_answered == 1)
        assert node.metrics.as_dict() == {
            "requests": 5,
            "served": 1,
            "in_flight": 0,
            "waiting": 0,
            "refused": {"overloaded": 1},
            "bad_requests": 1,
            "backend_errors": {"model_not_found": 1},
            "cancelled": 1,
            "ended": {},
            "identify_answered": 1,
        }


async def test_stats_line_and_log_stats(caplog: pytest.LogCaptureFixture) -> None:
    async with server() as host, MimirNode(host, EchoBackend()) as node, clients(1) as (user,):
        await chat(user, node, message("hi"))
        await until(lambda: host.metrics.streams_current == 0)
        line = stats_line(host=host, node=node)
        assert line.startswith("host.connections_current=1 host.connections_opened=1 ")
        assert " node.requests=1 node.served=1 " in line
        assert "refused" not in line  # empty counters leave nothing
        host.metrics.refused["streams"] += 2
        assert " host.refused.streams=2 " in stats_line(host=host, node=node)

        caplog.set_level(logging.INFO, STATS_LOGGER)
        task = asyncio.ensure_future(log_stats(0.05, host=host, node=node))
        await until(lambda: len([r for r in caplog.records if r.name == STATS_LOGGER]) >= 2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        record = next(r for r in caplog.records if r.name == STATS_LOGGER)
        assert record.levelno == logging.INFO
        assert record.getMessage().startswith("stats host.connections_current=1 ")


async def test_cli_stats_interval_logs_without_verbose() -> None:
    """``node --stats-interval`` prints its stats lines at the default log level (no -v)."""
    from tests.helpers.nodeproc import make_env, started

    args = ("-m", "mimirlite", "node", "--backend", "echo", "--no-mdns", "--listen", LOCAL)
    async with started(*args, "--stats-interval", "0.2", env=make_env()) as proc:
        await proc.read_until("Serving:")
        line = proc.err[await proc.wait_line(lambda _: True, 20, err=True)]
        assert line.startswith("INFO mimirlite.stats: stats host.connections_current=0 "), line
        assert " node.requests=0 " in line
        await proc.stop()
