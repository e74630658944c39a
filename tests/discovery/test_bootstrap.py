"""Bootstrap keeps a host connected to its bootstrap peers: dialed at start (a /dnsaddr one resolved by a
DNS server the test runs on 127.0.0.1), dialed again after a lost connection, an unreachable one logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from mimirlite import Host
from mimirlite.discovery import Bootstrap, DnsResolver
from tests.helpers.dns import dns_server
from tests.helpers.waiting import until


async def test_bootstrap_peers_are_dialed_and_kept() -> None:
    async with contextlib.AsyncExitStack() as stack:
        b1, b2 = [await stack.enter_async_context(Host(listen=["/ip4/127.0.0.1/tcp/0"])) for _ in range(2)]
        host = await stack.enter_async_context(Host())
        boot = await stack.enter_async_context(Bootstrap(host, [b1.listen_addrs[0], b2.listen_addrs[0]]))
        assert sorted(map(str, boot.connected)) == sorted([str(b1.peer_id), str(b2.peer_id)])
        b1.connections[host.peer_id].close()  # b1 drops us: we dial it again
        await until(lambda: b1.peer_id not in host.connections, 5, "the connection to b1 ends")
        await until(lambda: b1.peer_id in host.connections, 10, "b1 dialed again")
        assert b2.peer_id in host.connections


async def test_a_dnsaddr_bootstrap_peer_resolves_through_dns() -> None:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as b:
        records = {("_dnsaddr.boot.test", "TXT"): [f"dnsaddr={b.listen_addrs[0]}"]}
        async with dns_server(records) as dns:
            resolver = DnsResolver([dns.address], timeout=5.0)
            target = f"/dnsaddr/boot.test/p2p/{b.peer_id}"
            async with Host() as host, Bootstrap(host, [target], resolver=resolver) as boot:
                assert boot.connected == [b.peer_id]


async def test_an_unreachable_bootstrap_peer_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as gone:
        addr = gone.listen_addrs[0]
    with caplog.at_level(logging.WARNING, "mimirlite"):
        async with Host() as host, Bootstrap(host, [addr]) as boot:
            assert boot.connected == []
    assert "unreachable" in caplog.text


async def test_stopping_cancels_redials() -> None:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as b, Host() as host:
        boot = Bootstrap(host, [b.listen_addrs[0]])
        await boot.start()
        b.connections[host.peer_id].close()
        await until(lambda: b.peer_id not in host.connections, 5, "the connection ends")
        await until(lambda: _redials(), 5, "a redial is under way")
        await boot.stop()
        assert not _redials()


def _redials() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "mimirlite-bootstrap" and not t.done()]
