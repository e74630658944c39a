"""The DHT on namespace test hosts: a provider's records follow its addresses (a node listening on every
interface gains one, and its next refresh publishes its records again with it), and peers found by mDNS
seed the routing table."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import subprocess
from collections.abc import AsyncIterator

from mimirlite import Host, MimirClient
from mimirlite.protocols import identify_service, start_services
from mimirlite.protocols.kad.service import KadDht
from tests.helpers.discovery import FIND_TIMEOUT
from tests.helpers.netns import NetnsLoop, TestNet, require_netns
from tests.helpers.nodeproc import NodeProc
from tests.helpers.waiting import until

KEY = b"\x12\x20" + hashlib.sha256(b"a model").digest()


@contextlib.asynccontextmanager
async def dht_on(loop: NetnsLoop, listen: str) -> AsyncIterator[KadDht]:
    """A Host and its DHT started on ``loop`` (a namespace's thread); stopped there on exit."""

    async def start() -> KadDht:
        host = Host(listen=[listen])
        await host.start()
        start_services(host)
        identify = identify_service(host)
        assert identify is not None
        dht = KadDht(host, identify)
        await dht.start()
        return dht

    async def stop(dht: KadDht) -> None:
        await dht.stop()
        await dht.host.stop()

    dht = await loop.run(start(), timeout=10)
    try:
        yield dht
    finally:
        await loop.run(stop(dht), timeout=10)


async def test_a_new_address_is_published_at_the_next_refresh() -> None:
    require_netns()
    async with TestNet(2) as net:
        boot_host, node_host = net.hosts
        boot_loop, loop = net.loop(boot_host), net.loop(node_host)  # one event loop per namespace host
        async with (
            dht_on(boot_loop, f"/ip4/{boot_host.ip}/tcp/4001") as boot,
            dht_on(loop, "/ip4/0.0.0.0/tcp/4001") as node,
        ):
            await loop.run(node.host.dial(boot.host.listen_addrs[0]), timeout=10)
            await until(lambda: len(node.table) == 1, 10, "the node knows its bootstrap peer")
            assert await loop.run(node.provide(KEY), timeout=10) == 1

            async def record() -> list[str]:  # read on the bootstrap peer's own loop
                async def addrs() -> list[str]:
                    return [str(a) for r in boot.providers.get(KEY, 0.0) for a in r.addrs]

                return await boot_loop.run(addrs(), timeout=5)

            async def held(ip: str) -> bool:
                return f"/ip4/{ip}/tcp/4001" in await record()

            await until(lambda: held(node_host.ip), 10, "the record at the bootstrap peer")
            # what a node listening on 0.0.0.0 announces: its interfaces' addresses, each once, never 0.0.0.0
            announced = await record()
            assert len(announced) == len(set(announced)) and not any("/0.0.0.0/" in a for a in announced)
            new_ip = str(ipaddress.IPv4Address(node_host.ip) + 100)
            subprocess.run(
                ["ip", "-n", node_host.netns, "addr", "add", f"{new_ip}/24", "dev", "eth0"],
                check=True,
                timeout=10,
            )
            await loop.run(node.refresh(), timeout=10)
            await until(lambda: held(new_ip), 10, "the new address in the record")


async def test_a_node_found_by_mdns_seeds_the_routing_table() -> None:
    """A client with mDNS on and no bootstrap peer: the node it finds on the LAN is in its DHT table too."""
    require_netns()
    async with TestNet(2) as net, contextlib.AsyncExitStack() as stack:
        node = await NodeProc.serve(stack, "--backend", "echo", net=net, host=net.hosts[0])
        loop = net.loop(1)

        async def start() -> MimirClient:
            client = MimirClient(mdns=True)
            await client.start()
            return client

        client = await loop.run(start(), timeout=10)
        try:

            async def in_table() -> bool:
                async def peers() -> list[str]:
                    assert client.dht is not None
                    return [str(p) for p in client.dht.dht.peers()]

                return str(node.peer_id) in await loop.run(peers(), timeout=5)

            await until(in_table, FIND_TIMEOUT, "the node found by mDNS in the client's DHT table")
        finally:
            await loop.run(client.stop(), timeout=10)
