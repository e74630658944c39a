"""Pre-authentication fairness on real sockets: peers that connect and say nothing, or dribble a
multistream header a byte at a time, cannot lock others out of a node.

A flood (``tests/helpers/flood.py``, its own process) holds 200 silent and 50 dribbling connections from one
address and re-opens each as soon as the node closes it. An honest peer from another address, and one
from the flood's own address, each completes an echo within 2 s of starting its dial, several times,
while the flood runs on. Evictions and early closes are counted in ``host.metrics.refused`` and logged
in a few lines, not one per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator

import pytest

from mimirlite import Host, HostConfig
from mimirlite.errors import DialError
from mimirlite.net.addr import parse_multiaddr
from mimirlite.wire import yamux
from mimirlite.wire.multistream import MultistreamDialer
from mimirlite.wire.noise import NoiseHandshake
from tests.helpers import ECHO, echo_handler, logged, until
from tests.helpers.frames import HEADER
from tests.helpers.nodeproc import REPO, Proc, make_env
from tests.helpers.rawpeer import RawPeer

TARGET = 2.0
"""Seconds from an honest peer's dial start to its echo back, while the flood runs (issue 11)."""
ROUNDS = 4


@contextlib.asynccontextmanager
async def flood(port: int, source: str, idle: int = 200, dribble: int = 50) -> AsyncIterator[Proc]:
    argv = (sys.executable, "-m", "tests.helpers.flood", str(port), "--source", source)
    argv += ("--idle", str(idle), "--dribble", str(dribble))
    async with await Proc.start(*argv, stdin=True, cwd=REPO, env=make_env()) as proc:
        await proc.read_until("flooding", timeout=30)
        yield proc


async def timed_echo(node: Host) -> float:
    """A new honest peer dials ``node`` and echoes a message: seconds from its dial start to the echo."""
    async with Host() as honest:
        loop = asyncio.get_running_loop()
        started = loop.time()
        stream = await asyncio.wait_for(honest.new_stream(node.listen_addrs[0], ECHO), 10 * TARGET)
        await stream.write(b"honest")
        assert await asyncio.wait_for(stream.read_exactly(6), 10 * TARGET) == b"honest"
        elapsed = loop.time() - started
        await stream.close_write()
        assert await asyncio.wait_for(stream.read(), 10 * TARGET) == b""
    return elapsed


@pytest.mark.parametrize("flood_from", ["127.0.0.2", "127.0.0.1"], ids=["other-address", "same-address"])
async def test_honest_peer_served_within_2s_during_a_flood(
    caplog: pytest.LogCaptureFixture, flood_from: str
) -> None:
    caplog.set_level(logging.INFO, "mimirlite")
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as node:
        node.set_handler(ECHO, echo_handler)
        port = parse_multiaddr(node.listen_addrs[0]).port
        refused = node.metrics.refused
        async with flood(port, flood_from) as proc:
            await proc.wait_line(lambda line: line.startswith("opened") and int(line.split()[1]) >= 1000, 60)
            times = []
            for _ in range(ROUNDS):
                before = refused["evicted_pending"]
                times.append(await timed_echo(node))
                assert refused["evicted_pending"] > before  # the flood went on meanwhile
                await until(lambda n=before + 500: refused["evicted_pending"] >= n, timeout=30)
            print(f"honest echo from {flood_from} during the flood: {[round(t, 3) for t in times]} s")
            assert max(times) < TARGET, times
            assert node._pending_inbound <= node.config.max_pending_handshakes
        m = node.metrics
        assert m.connections_opened == ROUNDS
        assert m.refused["evicted_pending"] >= 500
    # a line for the first eviction, then one summary line per interval: not one per connection
    lines = [r for r in caplog.records if r.name.startswith("mimirlite") and r.levelno >= logging.WARNING]
    assert len(lines) < 20, [r.getMessage() for r in lines]
    logged(caplog, "closing pending inbound connection from", "stalled")


async def test_a_burst_of_honest_dials_from_one_address_is_all_served() -> None:
    """Many more dials at once from one address than its share of pending handshakes (clients behind one
    NAT starting together): each is a moment old and silent when the next arrives, and none may be
    taken for a stalled peer and evicted by the next one of the same burst."""
    config = HostConfig(max_pending_handshakes=32, max_pending_per_ip=2)
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"], config=config) as node:
        node.set_handler(ECHO, echo_handler)
        addr = node.listen_addrs[0]
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(Host()) for _ in range(24)]
            results = await asyncio.gather(
                *(asyncio.wait_for(c.dial(addr), 10 * TARGET) for c in clients), return_exceptions=True
            )
            assert [r for r in results if isinstance(r, BaseException)] == []
        assert node.metrics.connections_opened == 24
        assert node.metrics.refused["evicted_pending"] == 0


async def test_silent_peer_is_closed_after_first_byte_timeout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mimirlite")
    config = HostConfig(first_byte_timeout=0.3, handshake_step_timeout=5.0, handshake_timeout=10.0)
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"], config=config) as node:
        loop = asyncio.get_running_loop()
        started = loop.time()
        raw = await RawPeer.connect(node)
        assert await raw.closed_by_host() == b""
        assert 0.25 <= loop.time() - started < 3.0
        assert node.metrics.refused == {"first_byte_timeout": 1}
        logged(caplog, "nothing received for 0.3 s (first_byte_timeout)")
        await until(lambda: node._pending_inbound == 0)
        await raw.aclose()


@pytest.mark.parametrize("stage", ["multistream-header", "noise-message-1"])
async def test_dribbler_is_closed_after_handshake_step_timeout(
    caplog: pytest.LogCaptureFixture, stage: str
) -> None:
    """Bytes that do not complete a step do not extend its deadline: a byte every 0.1 s is closed."""
    caplog.set_level(logging.INFO, "mimirlite")
    config = HostConfig(first_byte_timeout=0.3, handshake_step_timeout=0.6, handshake_timeout=10.0)
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"], config=config) as node:
        loop = asyncio.get_running_loop()
        raw = await RawPeer.connect(node)
        if stage == "multistream-header":
            slow = HEADER
        else:
            await raw.select("/noise")
            slow = b"\x00\x20" + bytes(32)  # Noise message 1, never finished in time
        started = loop.time()
        closed = asyncio.ensure_future(raw.closed_by_host())
        for i in range(len(slow)):
            if closed.done():
                break
            raw.send(slow[i : i + 1])
            await asyncio.sleep(0.1)
        await closed
        assert 0.5 <= loop.time() - started < 2.0
        assert node.metrics.refused == {"handshake_step_timeout": 1}
        logged(caplog, "upgrade step not completed in 0.6 s (handshake_step_timeout)")
        await until(lambda: node._pending_inbound == 0)
        await raw.aclose()


async def test_steps_on_time_are_not_cut_short() -> None:
    """A handshake whose steps each come within the step deadline completes, even when the whole
    takes longer than one step's deadline."""
    config = HostConfig(first_byte_timeout=0.5, handshake_step_timeout=0.5, handshake_timeout=10.0)
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"], config=config) as node:
        node.set_handler(ECHO, echo_handler)
        raw = await RawPeer.connect(node)
        await asyncio.sleep(0.3)
        pending = await raw.select("/noise")  # steps 1 and 2: header, proposal
        await asyncio.sleep(0.3)
        hs = NoiseHandshake(raw.keypair, initiator=True, expected_peer=node.peer_id)
        raw.send(hs.data_to_send())  # step 3: Noise message 1
        while not hs.complete:
            data = pending or await raw.recv()
            assert data, "host closed during the noise handshake"
            pending = b""
            hs.receive_data(data)
        await asyncio.sleep(0.3)
        raw.send(hs.data_to_send())  # step 4: Noise message 3
        raw.noise = hs.transport()
        await asyncio.sleep(0.3)
        ms = MultistreamDialer([yamux.YAMUX_PROTOCOL])  # step 5: the muxer
        raw.send_plain(ms.data_to_send())
        while ms.selected is None:
            plaintext = await raw.recv_plain()
            assert plaintext, "host closed during muxer negotiation"
            ms.receive_data(plaintext)
        await until(lambda: node.metrics.connections_opened == 1)
        assert not node.metrics.refused
        await raw.aclose()


async def test_our_dial_to_a_silent_listener_ends_at_the_step_deadline() -> None:
    """The dialer side has step deadlines too: a listener that accepts and never answers fails the dial
    after ``handshake_step_timeout``, well before ``dial_timeout``."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        config = HostConfig(handshake_step_timeout=0.3, dial_timeout=20.0)
        async with Host(config=config) as dialer:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(DialError, match="handshake_step_timeout"):
                await dialer.dial(f"/ip4/127.0.0.1/tcp/{port}")
            assert 0.25 <= loop.time() - started < 5.0
    finally:
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
