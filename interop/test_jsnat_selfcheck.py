"""Self-check of the JS NAT traversal peer (nat-peer.mjs, jsnat.py): a JS relay, a JS peer reserving a slot
on it, a third JS peer echoing through the circuit; the NAT lab's ``--lab-public`` shim in effect (js-libp2p's
isPrivateIp, and a JS AutoNAT server that takes a 10.x address it refuses without it)."""

from __future__ import annotations

import pytest
from jsnat import JsNatPeer
from jspeer import JsPeerError
from test_nat_interop import LAB, PORT, wan_addr

from mimirlite import PeerId
from tests.helpers.natlab import autonat_on
from tests.helpers.netns import NatLab, require_nat
from tests.helpers.waiting import until

NOBODY = "12D3KooWHdiAxVd8uMQR1hGWXccidmfCwLqcMpGwR6QcTP6QRMuD"  # --key-seed 2, not started here


async def test_a_js_peer_echoes_through_a_js_relay() -> None:
    async with (
        await JsNatPeer.start(relay_server=True, key_seed=201) as relay,
        await JsNatPeer.start(reserve=[relay.addr], key_seed=202) as target,
        await JsNatPeer.start(relay_client=True, key_seed=203) as source,
    ):
        # the reservation: the relay holds one for the target, which now advertises a circuit address
        assert await relay.reservations() == [target.peer_id]
        circuit = f"{relay.addr}/p2p-circuit/p2p/{target.peer_id}"
        relay_tcp = relay.addr.rsplit("/p2p/", 1)[0]
        suffix = f"/p2p-circuit/p2p/{target.peer_id}"
        assert any(a.startswith(relay_tcp) and a.endswith(suffix) for a in await target.current_addrs())

        dialed = await source.dial(circuit)
        assert dialed == {"peerId": target.peer_id, "relayed": True, "limited": True}
        data = bytes(range(256)) * 4
        assert await source.echo(data, peer_id=target.peer_id) == data

        # both ends see one relayed, limited connection to each other (the relay's defaults)
        [out] = [c for c in await source.connections() if c["peer"] == target.peer_id]
        assert (out["relayed"], out["limited"], out["direction"]) == (True, True, "outbound")

        async def target_sees_it() -> bool:
            conns = [c for c in await target.connections() if c["peer"] == source.peer_id]
            return [(c["relayed"], c["limited"], c["direction"]) for c in conns] == [(True, True, "inbound")]

        await until(target_sees_it, 10, "the target's inbound relayed connection")
        # the relay sees two direct connections
        assert {c["peer"] for c in await relay.connections() if not c["relayed"]} == {
            target.peer_id,
            source.peer_id,
        }
        assert not (relay.uncaught() or target.uncaught() or source.uncaught())


async def test_a_circuit_dial_without_a_reservation_fails() -> None:
    async with (
        await JsNatPeer.start(relay_server=True, key_seed=201) as relay,
        await JsNatPeer.start(relay_client=True, key_seed=203) as source,
    ):
        with pytest.raises(JsPeerError, match="NO_RESERVATION"):
            await source.dial(f"{relay.addr}/p2p-circuit/p2p/{NOBODY}")


async def test_dcutr_and_autonat_peers_relay_and_hang_up() -> None:
    # DCUtR and AutoNAT in js only use public addresses (not 127.0.0.1): here they just run alongside
    async with (
        await JsNatPeer.start(relay_server=True, autonat=True) as relay,
        await JsNatPeer.start(reserve=[relay.addr], dcutr=True, autonat=True) as target,
        await JsNatPeer.start(relay_client=True, dcutr=True, autonat=True) as source,
    ):
        assert target.addr != relay.addr
        dialed = await source.dial(f"{relay.addr}/p2p-circuit/p2p/{target.peer_id}")
        assert dialed["relayed"]
        assert await source.echo(b"x", addr=f"{relay.addr}/p2p-circuit/p2p/{target.peer_id}") == b"x"
        await source.hang_up(target.peer_id)
        assert [c for c in await source.connections() if c["peer"] == target.peer_id] == []
        assert not (relay.uncaught() or target.uncaught() or source.uncaught())


async def test_lab_public_makes_js_take_a_range_for_public() -> None:
    ips = ["127.0.0.1", "10.1.2.3", "192.168.0.1"]
    async with await JsNatPeer.start(lab_public=["127.0.0.0/8"]) as lab:
        assert await lab.lab_public(ips) == {
            "cidrs": ["127.0.0.0/8"],
            "private": {"127.0.0.1": False, "10.1.2.3": True, "192.168.0.1": True},
        }
        # its own address is now public, hence unverified until AutoNAT checks it: not announced
        assert await lab.current_addrs() == []
        [meta] = await lab.address_metadata()
        assert (meta["type"], meta["verified"]) == ("transport", False)
    async with await JsNatPeer.start() as plain:
        assert (await plain.lab_public(ips))["private"] == dict.fromkeys(ips, True)
        assert [m["verified"] for m in await plain.address_metadata()] == [True]


async def test_lab_public_without_the_hook_is_refused() -> None:
    with pytest.raises(RuntimeError, match="needs the resolve hook"):
        await JsNatPeer._spawn(["--lab-public", "10.0.0.0/8"], timeout=20)


@pytest.mark.parametrize("shim", [True, False], ids=["lab-public", "plain"])
async def test_a_js_autonat_server_dials_a_lab_address_only_with_the_shim(shim: bool) -> None:
    """A mimirlite node on the lab's wan asks a JS AutoNAT server there: with the wan public to JS, JS takes
    the 10.x address to dial; without, it refuses it ("no dialable addresses")."""
    require_nat()
    async with NatLab(wan_hosts=2, lans=[1]) as lab:
        (js_host, node_host), _ = lab.wan, lab.lans
        loop = lab.loop(node_host)
        async with (
            await JsNatPeer.start(
                listen=f"/ip4/{js_host.ip}/tcp/{PORT}",
                autonat=True,
                lab_public=[str(lab.wan_network)] if shim else [],
                debug="libp2p:auto-nat*",
                netns=js_host.netns,
            ) as server,
            autonat_on(loop, f"/ip4/{node_host.ip}/tcp/{PORT}", LAB) as node,
        ):
            server_id = PeerId.from_string(server.peer_id)

            async def ask() -> None:
                await node.identify.identify(await node.host.dial(wan_addr(server, js_host)))
                await node.probe(server_id)

            await loop.run(ask(), timeout=30)
            err = server.stderr_tail()
            ours = f"/ip4/{node_host.ip}/tcp/{PORT}/p2p/{node.host.peer_id}"
            assert (f"dial multiaddrs {ours}" in err) is shim, err
            assert ("refused to dial all multiaddrs" in err) is not shim, err
