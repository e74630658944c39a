"""AutoNAT in the NAT lab: a node behind a MASQUERADE router learns it is private (the server's dial-back
to the router's address is dropped), and public once the router forwards its port. The lab's wan is a
private range (the network rules), so the servers allow private addresses; one server decides (the lab
has one wan segment; the segment rule is tested in tests/protocols/autonat/test_verdict.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from mimirlite import Host
from mimirlite.protocols import identify_service, start_services
from mimirlite.protocols.autonat.service import AutoNat, AutonatConfig
from mimirlite.protocols.autonat.verdict import DialPolicyConfig, Reachability, TrackerConfig
from tests.helpers.netns import NatLab, NetnsLoop, PortForward, require_nat

PORT = 4001
LAB = AutonatConfig(
    dial_timeout=2.0, policy=DialPolicyConfig(allow_private=True), tracker=TrackerConfig(required=1)
)


@contextlib.asynccontextmanager
async def autonat_on(loop: NetnsLoop, listen: str) -> AsyncIterator[AutoNat]:
    """A host with identify and AutoNAT started on ``loop`` (a namespace's thread); stopped there."""

    async def start() -> AutoNat:
        host = Host(listen=[listen])
        await host.start()
        start_services(host)
        identify = identify_service(host)
        assert identify is not None
        autonat = AutoNat(host, identify, LAB)
        await autonat.start()
        return autonat

    async def stop(autonat: AutoNat) -> None:
        await autonat.stop()
        await autonat.host.stop()

    autonat = await loop.run(start(), timeout=10)
    try:
        yield autonat
    finally:
        await loop.run(stop(autonat), timeout=10)


@pytest.mark.parametrize("forwarded", [False, True], ids=["behind-nat", "port-forward"])
async def test_a_node_behind_nat_learns_its_reachability(forwarded: bool) -> None:
    require_nat()
    forwards = [PortForward(lan=0, host=0, port=PORT)] if forwarded else []
    async with NatLab(wan_hosts=1, lans=[1], forwards=forwards) as lab:
        (wan,), ((private,),) = lab.wan, lab.lans
        async with (
            autonat_on(lab.loop(wan), f"/ip4/{wan.ip}/tcp/{PORT}") as server,
            autonat_on(lab.loop(private), f"/ip4/0.0.0.0/tcp/{PORT}") as node,
        ):
            loop = lab.loop(private)

            async def ask() -> tuple[list[str], Reachability]:
                conn = await node.host.dial(server.host.listen_addrs[0])
                await node.identify.identify(conn)
                candidates = [str(a) for a in node.candidate_addrs()]
                return candidates, await node.check()

            candidates, verdict = await loop.run(ask(), timeout=20)
            # the server saw the router's address: that is the candidate, with the node's listen port
            assert candidates == [f"/ip4/{lab.router_wan_ip(0)}/tcp/{PORT}"]
            assert verdict is (Reachability.PUBLIC if forwarded else Reachability.PRIVATE)
