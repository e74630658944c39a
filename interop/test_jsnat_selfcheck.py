"""Self-check of the JS NAT traversal peer (nat-peer.mjs, jsnat.py): a JS relay, a JS peer reserving a slot
on it, a third JS peer echoing through the circuit."""

from __future__ import annotations

import pytest
from jsnat import JsNatPeer
from jspeer import JsPeerError

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
