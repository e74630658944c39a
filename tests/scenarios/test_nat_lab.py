"""The NAT lab: a node behind a MASQUERADE router learns it is private (the server's dial-back to the
router's address is dropped), and public once the router forwards its port; a private node picks a relay
and is reached through it. The lab's wan is a
private range (the network rules), so the servers allow private addresses; one server decides (the lab
has one wan segment; the segment rule is tested in tests/protocols/autonat/test_verdict.py)."""

from __future__ import annotations

import contextlib
import functools

import pytest

from mimirlite import Host
from mimirlite.protocols.autonat.service import AutonatConfig
from mimirlite.protocols.autonat.verdict import DialPolicyConfig, Reachability, TrackerConfig
from mimirlite.protocols.dcutr.holepunch import HolePunchConfig
from mimirlite.protocols.dcutr.service import HolePuncher
from mimirlite.protocols.relay.auto import AutoRelay
from mimirlite.protocols.relay.client import RelayClient
from tests.helpers import ECHO, echo_handler
from tests.helpers.natlab import autonat_on, relay_on, reserve_and_punch
from tests.helpers.netns import NatLab, NetnsHost, PortForward, require_nat
from tests.helpers.nodeproc import MIMIRLITE, REPO, RUN_TIMEOUT, UNBUFFERED, NodeProc, Proc, run_cli
from tests.helpers.waiting import until

PORT = 4001
LAB = AutonatConfig(
    dial_timeout=2.0, policy=DialPolicyConfig(allow_private=True), tracker=TrackerConfig(required=1)
)


@pytest.mark.parametrize("forwarded", [False, True], ids=["behind-nat", "port-forward"])
async def test_a_node_behind_nat_learns_its_reachability(forwarded: bool) -> None:
    require_nat()
    forwards = [PortForward(lan=0, host=0, port=PORT)] if forwarded else []
    async with NatLab(wan_hosts=1, lans=[1], forwards=forwards) as lab:
        (wan,), ((private,),) = lab.wan, lab.lans
        loop = lab.loop(private)  # one event loop per namespace host: the node's objects live on it
        async with (
            autonat_on(lab.loop(wan), f"/ip4/{wan.ip}/tcp/{PORT}", LAB) as server,
            autonat_on(loop, f"/ip4/0.0.0.0/tcp/{PORT}", LAB) as node,
        ):

            async def ask() -> tuple[list[str], Reachability]:
                conn = await node.host.dial(server.host.listen_addrs[0])
                await node.identify.identify(conn)
                candidates = [str(a) for a in node.candidate_addrs()]
                return candidates, await node.check()

            candidates, verdict = await loop.run(ask(), timeout=20)
            # the server saw the router's address: that is the candidate, with the node's listen port
            assert candidates == [f"/ip4/{lab.router_wan_ip(0)}/tcp/{PORT}"]
            assert verdict is (Reachability.PUBLIC if forwarded else Reachability.PRIVATE)


async def test_a_private_node_picks_a_relay_and_is_reached_through_it() -> None:
    """Behind NAT, with no relay given: AutoNAT says private, the node reserves on a connected peer that
    serves HOP, and a peer elsewhere on the wan reaches it through that relay."""
    require_nat()
    async with NatLab(wan_hosts=2, lans=[1]) as lab:
        (relay_host, far_host), ((private,),) = lab.wan, lab.lans
        relay_loop, node_loop, far_loop = lab.loop(relay_host), lab.loop(private), lab.loop(far_host)
        async with (
            relay_on(relay_loop, f"/ip4/{relay_host.ip}/tcp/{PORT}", LAB) as relay_side,
            autonat_on(node_loop, f"/ip4/0.0.0.0/tcp/{PORT}", LAB) as node,
        ):

            async def go_private() -> list[str]:
                node.host.set_handler(ECHO, echo_handler)
                client = RelayClient(node.host)
                await client.start()
                auto = AutoRelay(node.host, node.identify, node, client)
                await auto.start()
                conn = await node.host.dial(relay_side.host.listen_addrs[0])
                await node.identify.identify(conn)
                assert await node.check() is Reachability.PRIVATE
                await until(lambda: client.circuit_addrs, 10, "a reservation on the relay picked")
                return client.circuit_addrs

            [circuit] = await node_loop.run(go_private(), timeout=30)
            assert circuit.startswith(relay_side.host.listen_addrs[0])

            async def reach() -> bytes:
                async with Host() as far, RelayClient(far):
                    stream = await far.new_stream(circuit, ECHO)
                    await stream.write(b"found behind the NAT")
                    await stream.close_write()
                    return await stream.read_all()

            assert await far_loop.run(reach(), timeout=20) == b"found behind the NAT"


async def relay_command(lab: NatLab, stack: contextlib.AsyncExitStack, wan: NetnsHost, *args: str) -> str:
    """``mimirlite relay ARGS`` on the wan host ``wan`` (stopped with ``stack``); the address it relays on."""
    relay = await Proc.start(
        *MIMIRLITE,
        *("relay", "--no-mdns", "--listen", f"/ip4/{wan.ip}/tcp/{PORT}", *args),
        spawn=functools.partial(lab.spawn, wan),
        cwd=str(REPO),
        env=UNBUFFERED,
    )
    stack.push_async_callback(relay.stop)
    await relay.read_until("Relaying on:")
    return (await relay.readline()).strip()


async def test_chat_through_a_relay_across_two_nats_from_the_command_line() -> None:
    """``mimirlite relay`` on the wan; ``node --relay`` behind NAT A prints its relayed address; ``chat
    --peer <that address>`` behind NAT B gets the node's answer through the relay."""
    require_nat()
    async with NatLab(wan_hosts=1, lans=[1, 1]) as lab, contextlib.AsyncExitStack() as stack:
        (wan,), ((node_host,), (chat_host,)) = lab.wan, lab.lans
        relay_addr = await relay_command(lab, stack, wan, "--no-dht")
        node = await NodeProc.serve(
            stack,
            *("--no-mdns", "--no-dht", "--backend", "echo", "--model", "behind-nat", "--relay", relay_addr),
            net=lab,
            host=node_host,
        )
        at = await node.wait_line(lambda line: "/p2p-circuit/p2p/" in line, RUN_TIMEOUT)
        circuit = node.out[at].strip()
        assert circuit == f"{relay_addr}/p2p-circuit/p2p/{node.peer_id}"
        asked = ("--no-mdns", "--no-dht", "--peer", circuit, "--model", "behind-nat", "-p", "across two NATs")
        rc, out, err = await run_cli(lab, chat_host, "chat", *asked, timeout=RUN_TIMEOUT)
        assert (rc, out) == (0, "across two NATs\n"), f"{err}\n--- node:\n{node.output}"


async def test_chat_finds_a_node_behind_nat_through_the_dht_and_reaches_it_through_its_relay() -> None:
    """No address given to the client but the relay's: the node behind NAT A provides its model in the DHT
    with its relayed address; ``chat --bootstrap R --model M`` behind NAT B finds it there and reaches it
    through the relay."""
    require_nat()
    async with NatLab(wan_hosts=1, lans=[1, 1]) as lab, contextlib.AsyncExitStack() as stack:
        (wan,), ((node_host,), (chat_host,)) = lab.wan, lab.lans
        relay_addr = await relay_command(lab, stack, wan)
        node = await NodeProc.serve(
            stack,
            *("--no-mdns", "--backend", "echo", "--model", "found-far"),
            *("--relay", relay_addr, "--bootstrap", relay_addr),
            net=lab,
            host=node_host,
        )
        await node.wait_line(lambda line: "/p2p-circuit/p2p/" in line, RUN_TIMEOUT)
        asked = (
            "--no-mdns",
            "--bootstrap",
            relay_addr,
            "--model",
            "found-far",
            "-p",
            "found through the DHT",
        )
        rc, out, err = await run_cli(lab, chat_host, "chat", "-v", *asked, timeout=RUN_TIMEOUT)
        assert (rc, out) == (0, "found through the DHT\n"), f"{err}\n--- node:\n{node.output}"


@pytest.mark.parametrize("symmetric", [False, True], ids=["cone-nats", "symmetric-nat"])
async def test_a_relayed_connection_is_upgraded_by_a_hole_punch(symmetric: bool) -> None:
    """A behind NAT A dials B behind NAT B through a relay on the wan; B punches (DCUtR): both dial each
    other from their listen ports at once, and a direct connection takes over from the relayed one. Behind
    a symmetric NAT the punch fails and they stay relayed, still talking."""
    require_nat()
    punch = HolePunchConfig(allow_private=True, timeout=3.0)
    async with NatLab(wan_hosts=1, lans=[1, 1], symmetric=[False, symmetric]) as lab:
        (wan,), ((a_host,), (b_host,)) = lab.wan, lab.lans
        relay_loop, a_loop, b_loop = lab.loop(wan), lab.loop(a_host), lab.loop(b_host)
        async with relay_on(relay_loop, f"/ip4/{wan.ip}/tcp/{PORT}", LAB) as relay_side:
            relay_addr = relay_side.host.listen_addrs[0]
            async with (
                autonat_on(a_loop, f"/ip4/0.0.0.0/tcp/{PORT}", LAB) as a,
                autonat_on(b_loop, f"/ip4/0.0.0.0/tcp/{PORT}", LAB) as b,
            ):

                async def b_behind_relay() -> tuple[str, HolePuncher]:
                    b.host.set_handler(ECHO, echo_handler)
                    return await reserve_and_punch(b, relay_side, punch)

                circuit, b_puncher = await b_loop.run(b_behind_relay(), timeout=20)

                async def a_dials() -> tuple[bool, bytes]:
                    await RelayClient(a.host).start()
                    await HolePuncher(a.host, a.candidate_addrs, punch).start()
                    await a.identify.identify(await a.host.dial(relay_addr))
                    relayed = await a.host.dial(circuit)
                    assert relayed.relayed
                    b_id = relayed.remote_peer
                    assert b_id is not None

                    def direct() -> bool:
                        conn = a.host.connections.get(b_id)
                        return conn is not None and not conn.relayed

                    with contextlib.suppress(AssertionError):
                        await until(direct, 10, "a direct connection")
                    stream = await a.host.new_stream(b_id, ECHO)  # direct when punched, else relayed
                    await stream.write(b"after the hole punch")
                    await stream.close_write()
                    return direct(), await stream.read_all()

                went_direct, echoed = await a_loop.run(a_dials(), timeout=40)
                assert echoed == b"after the hole punch"
                assert went_direct is not symmetric
                if symmetric:
                    await until(lambda: b_puncher.failed == 1, 20, "the punch given up")
                else:
                    assert b_puncher.succeeded == 1
