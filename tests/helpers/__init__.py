"""Helpers shared by the test modules (no test module imports another).

Here: bounded waits (:func:`until`, from ``waiting``), log assertions (:func:`logged`), the echo
protocol the host fixtures serve and :func:`inbound_conn`. Modules: ``waiting`` (bounded waits),
``frames`` (raw yamux / Noise / multistream bytes), ``rawpeer`` (a bare-socket peer, a Noise side that
can lie, and the checks around a host it offends), ``nodeproc`` (subprocesses: ``mimirlite`` commands
and nodes), ``openai_server`` (a real OpenAI-compatible test server), ``netns`` (network-namespace test
hosts), ``discovery`` (what the mDNS scenario suites share), ``gateway`` (gateway fixtures), ``mimir``
(mimir requests and stand-in nodes), ``mdns`` (captured js-libp2p mDNS packets, a peer in a namespace),
``flood`` (a pre-authentication flood process), ``leakcheck`` (the ``no_leaks`` fixture), ``skips``
(the skip allowlist, a pytest plugin).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tests.helpers.waiting import TIMEOUT, until

if TYPE_CHECKING:
    import pytest

    from mimirlite import Connection, Host, PeerId, Stream

__all__ = ["ECHO", "TIMEOUT", "echo_handler", "inbound_conn", "logged", "until"]

ECHO = "/echo/1.0.0"
"""The protocol the ``listener`` fixture's host serves with :func:`echo_handler`."""


async def echo_handler(stream: Stream) -> None:
    """Echo every byte until the remote closes its write side."""
    while data := await stream.read():
        await stream.write(data)


def logged(caplog: pytest.LogCaptureFixture, *fragments: str) -> list[str]:
    """The log messages holding every fragment; fails when there is none."""
    found = [r.getMessage() for r in caplog.records if all(f in r.getMessage() for f in fragments)]
    assert found, f"nothing logged with {fragments}"
    return found


async def inbound_conn(host: Host, peer: PeerId) -> Connection:
    """The connection ``peer`` opened to ``host``, once ``host`` has registered it."""
    if peer in host.connections:
        return host.connections[peer]
    got: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()

    def seen(conn: Connection) -> None:
        if conn.remote_peer == peer and not got.done():
            got.set_result(conn)

    host.on_connected.append(seen)
    try:
        return await asyncio.wait_for(got, 5)
    finally:
        host.on_connected.remove(seen)
