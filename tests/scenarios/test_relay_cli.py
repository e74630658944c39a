"""The relay from the command line, on 127.0.0.1: ``mimirlite relay``, a node reserving on it with
``--relay`` (it prints its relayed address), and ``chat --peer <relayed address>`` answered through it."""

from __future__ import annotations

from mimirlite import Host
from mimirlite.protocols.relay.client import RelayClient
from tests.helpers.nodeproc import UNBUFFERED, cli, node, started
from tests.helpers.waiting import until

LOCAL = "/ip4/127.0.0.1/tcp/0"


async def test_chat_reaches_a_node_through_a_relay() -> None:
    relay_cmd = ("-m", "mimirlite", "relay", "-v", "--no-mdns", "--no-dht", "--listen", LOCAL)
    async with started(*relay_cmd, env=UNBUFFERED) as relay:
        await relay.read_until("Relaying on:")
        relay_addr = (await relay.readline()).strip()
        assert "/p2p/" in relay_addr
        limits = await relay.read_until("Up to ")
        assert "131072 bytes each way, 120 s" in limits
        args = ("--backend", "echo", "--model", "far", "--no-dht", "--relay", relay_addr)
        async with node(*args, env=UNBUFFERED) as (proc, banner):
            await proc.read_until("Reachable through relays:")
            circuit = (await proc.readline()).strip()
            assert circuit == f"{relay_addr}/p2p-circuit/p2p/{banner.peer_id}"
            asked = ("--no-dht", "--peer", circuit, "--model", "far", "-p", "through the relay")
            result = await cli("chat", *asked, env=UNBUFFERED)
            assert (result.rc, result.out) == (0, "through the relay\n"), result.err
            opened = f"-> {banner.peer_id} opened"  # the relay's log (stderr) shows the circuit
            await until(lambda: any(opened in line for line in relay.err), 10, "the relay logged it")


async def test_relay_limits_from_the_command_line() -> None:
    args = ("--circuit-data", "0", "--circuit-duration", "0", "--max-reservations", "4")
    relay_cmd = ("-m", "mimirlite", "relay", "--no-mdns", "--no-dht", "--listen", LOCAL, *args)
    async with started(*relay_cmd, env=UNBUFFERED) as relay:
        line = await relay.read_until("Up to ")
        assert line == "Up to 4 reservations; a relayed connection: no data cap, no time cap"


async def test_a_node_can_relay_for_others() -> None:
    async with node("--backend", "echo", "--no-dht", "--relay-service", env=UNBUFFERED) as (proc, banner):
        await proc.read_until("Relaying connections for others")
        async with Host() as host, RelayClient(host, [banner.local_addr]) as client:
            assert client.circuit_addrs == [f"{banner.local_addr}/p2p-circuit/p2p/{host.peer_id}"]


async def test_relay_and_no_relay_contradict() -> None:
    result = await cli(
        "node", "--backend", "echo", "--no-relay", "--relay", "/ip4/127.0.0.1/tcp/1", env=UNBUFFERED
    )
    assert result.rc == 1 and "contradict" in result.err
