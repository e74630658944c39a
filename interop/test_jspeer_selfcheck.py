"""Self-check of the JS side of the interop harness: two (or three) js-libp2p peers talk to each other.

Proves peer.mjs and jspeer.py work before any Python host exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from jspeer import JsPeer, JsPeerError

MiB = 1024 * 1024


async def _start_many(*argsets: tuple[str, ...]) -> list[JsPeer]:
    results = await asyncio.gather(*(JsPeer.start(*a) for a in argsets), return_exceptions=True)
    peers = [r for r in results if isinstance(r, JsPeer)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        await asyncio.gather(*(p.stop() for p in peers))
        raise errors[0]
    return peers


@pytest.fixture
async def pair() -> AsyncIterator[tuple[JsPeer, JsPeer]]:
    a, b = await _start_many((), ())
    try:
        yield a, b
    finally:
        await asyncio.gather(a.stop(), b.stop())
    assert a.returncode == 0
    assert b.returncode == 0


def _drain(peer: JsPeer) -> list[dict[str, Any]]:
    out = []
    while not peer.events.empty():
        out.append(peer.events.get_nowait())
    return out


def _no_crashes(*peers: JsPeer) -> None:
    for p in peers:
        bad = [e for e in _drain(p) if e.get("event") == "uncaught"]
        assert not bad, f"uncaught errors in js peer: {bad}\n{p.stderr_tail(40)}"


async def test_dial_identify_connections(pair: tuple[JsPeer, JsPeer]) -> None:
    a, b = pair
    assert a.peer_id.startswith("12D3KooW")
    assert b.addr.startswith("/ip4/127.0.0.1/tcp/") and b.addr.endswith("/p2p/" + b.peer_id)
    r = await a.call("dial", addr=b.addr, timeout=10)
    assert r["peerId"] == b.peer_id
    ev = await a.next_event("identify", timeout=10)
    assert ev["ok"] is True and ev["peerId"] == b.peer_id
    assert "/echo/1.0.0" in ev["protocols"]
    assert "/ipfs/ping/1.0.0" in ev["protocols"]
    conns = (await a.call("connections"))["connections"]
    assert [(c["peerId"], c["status"], c["multiplexer"], c["encryption"]) for c in conns] == [
        (b.peer_id, "open", "/yamux/1.0.0", "/noise")
    ]
    _no_crashes(a, b)


async def test_echo_16mib(pair: tuple[JsPeer, JsPeer]) -> None:
    a, b = pair
    r = await a.call("echo", addr=b.addr, size=16 * MiB, chunk=65536, timeout=30)
    assert r["sent"] == r["received"] == 16 * MiB
    assert r["sha256_sent"] == r["sha256_received"]
    # odd sizes and the empty stream
    for size, chunk in ((1, 1), (100_003, 4096), (0, 1024)):
        r = await a.call("echo", addr=b.addr, size=size, chunk=chunk, timeout=10)
        assert r["received"] == size and r["sha256_sent"] == r["sha256_received"]
    _no_crashes(a, b)


async def test_concurrent_100(pair: tuple[JsPeer, JsPeer]) -> None:
    a, b = pair
    r = await a.call("concurrent", addr=b.addr, streams=100, size=4096, timeout=30)
    assert r["failed"] == []
    assert r["ok_streams"] == 100
    # all of it went over one connection
    conns = (await a.call("connections"))["connections"]
    assert len(conns) == 1
    _no_crashes(a, b)


async def test_halfclose(pair: tuple[JsPeer, JsPeer]) -> None:
    a, b = pair
    r = await a.call("halfclose", addr=b.addr, timeout=10)
    assert r["received"] == "hello"
    assert r["read_ended"] is True
    assert r["readStatus"] == "closed"
    _no_crashes(a, b)


async def test_ping_and_yamux_ping(pair: tuple[JsPeer, JsPeer]) -> None:
    a, b = pair
    r = await a.call("ping", addr=b.addr, timeout=10)
    assert r["rtt_ms"] >= 0
    r = await a.call("yamux_ping", addr=b.addr, timeout=10)
    assert 0 <= r["rtt_ms"] < 5000
    assert r["remotePeer"] == b.peer_id
    # the other direction, on the inbound side's muxer
    r = await b.call("yamux_ping", addr=a.addr, timeout=10)
    assert r["remotePeer"] == a.peer_id
    conns = (await b.call("connections"))["connections"]
    assert len(conns) == 1, "yamux_ping must reuse the existing connection"
    _no_crashes(a, b)


async def test_hangup_and_errors_do_not_crash(pair: tuple[JsPeer, JsPeer]) -> None:
    a, b = pair
    await a.call("dial", addr=b.addr, timeout=10)
    await a.call("hangup", addr=b.addr, timeout=10)
    ev = await a.next_event("connection:close", timeout=10)
    assert ev["peerId"] == b.peer_id
    with pytest.raises(JsPeerError):
        await a.call("nope")
    with pytest.raises(JsPeerError):
        await a.call("echo", addr="not a multiaddr")
    with pytest.raises(JsPeerError):
        # nothing listens there (port of a stopped listener is not reliable; use port 1)
        await a.call("dial", addr="/ip4/127.0.0.1/tcp/1/p2p/" + b.peer_id, timeout=10)
    # both still work
    r = await a.call("echo", addr=b.addr, size=1000, timeout=10)
    assert r["received"] == 1000
    _no_crashes(a, b)


async def test_identify_na_keeps_connection(pair: tuple[JsPeer, JsPeer]) -> None:
    """A peer without identify answers `na`: the identify event reports it, the connection lives on."""
    a, _ = pair
    (c,) = await _start_many(("--no-identify",))
    try:
        await a.call("dial", addr=c.addr, timeout=10)
        ev = await a.next_event("identify", timeout=10)
        assert ev["ok"] is False and ev["peerId"] == c.peer_id
        assert ev["error_name"] == "UnsupportedProtocolError", ev
        conns = (await a.call("connections"))["connections"]
        assert [(x["peerId"], x["status"]) for x in conns] == [(c.peer_id, "open")]
        r = await a.call("echo", addr=c.addr, size=10_000, timeout=10)
        assert r["sha256_sent"] == r["sha256_received"]
        assert len((await a.call("connections"))["connections"]) == 1
        _no_crashes(a, c)
    finally:
        await c.stop()


async def test_listener_survives_peer_disconnects(pair: tuple[JsPeer, JsPeer]) -> None:
    """WIRE.md pitfall: with Node-22-only deps a listener died at its first peer disconnect."""
    a, b = pair
    # graceful: the dialer stops
    await a.call("dial", addr=b.addr, timeout=10)
    await b.next_event("connection:open", timeout=10)
    await a.stop()
    await b.next_event("connection:close", timeout=10)
    # abrupt: the dialer is killed
    (c,) = await _start_many(())
    try:
        await c.call("dial", addr=b.addr, timeout=10)
        await b.next_event("connection:open", timeout=10)
        await c.kill()
        await b.next_event("connection:close", timeout=10)
    finally:
        await c.stop()
    await asyncio.sleep(0.3)
    assert b.returncode is None, b.stderr_tail(40)
    # b still serves
    (d,) = await _start_many(())
    try:
        r = await d.call("echo", addr=b.addr, size=100_000, timeout=10)
        assert r["sha256_sent"] == r["sha256_received"]
        _no_crashes(b, d)
    finally:
        await d.stop()
