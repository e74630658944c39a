"""AutoNAT v1 and DCUtR with js-libp2p 2.5 peers (@libp2p/autonat 2.0.16, @libp2p/dcutr 2.0.15), both ways,
in the NAT lab (tests/helpers/netns.py NatLab: a 10.x wan, 192.168.x LANs behind MASQUERADE routers).

js-libp2p skips private addresses in both protocols and the lab has only private ones, so the JS peers
take the lab's wan for the public internet (``lab_public``: interop/lab-public-hook.mjs); mimirlite allows
private addresses (``allow_private``). Needs root (network namespaces, nftables).

- AutoNAT: a JS client on the wan asks a mimirlite server, which dials it back, and JS marks its address
  verified (and announces it). A mimirlite client asks a JS server: JS takes the request and the address,
  but @libp2p/autonat 2.0.16 (and 2.0.38, the last 2.x) answers from the request's own connection and
  closes it before it answers, so
  mimirlite gets no vote (UNKNOWN), on the wan as behind NAT (see that test).
- DCUtR, JS initiating: a JS peer on the wan reserves on a relay, mimirlite behind NAT dials it through the
  relay; JS sends CONNECT, mimirlite answers CONNECT, JS sends SYNC and mimirlite dials from its listen port,
  as the handshake's responder (the DCUtR responder's role in a simultaneous open, as go-libp2p's). Its SYN
  reaches JS's listener, which takes the connection as responder too, and JS's own dial (from another
  port than the one the NAT opened) is dropped: no direct connection, the exchange only, each side's
  record of it asserted; they stay relayed and talk. With mimirlite's listen port forwarded by its router,
  JS's dial reaches mimirlite's listener: a direct connection after the exchange (JS's dial, not a punch),
  and mimirlite's own dial gives way to it (the punch counts as succeeded).
- DCUtR, mimirlite initiating: mimirlite behind NAT reserves, the JS peer dials it through the relay;
  mimirlite sends CONNECT, JS answers CONNECT, mimirlite sends SYNC and dials JS's listener from its listen
  port (as the handshake's initiator). JS on the wan: a direct connection forms through the NAT. JS behind
  a NAT of its own: no direct connection after three exchanges (JS's TCP neither learns the address it is
  observed at nor dials from its listen port, so a JS peer behind NAT cannot be punched to).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from jsnat import ECHO_PROTOCOL, JsNatPeer

from mimirlite import PeerId
from mimirlite.protocols.autonat.service import AutoNat, AutonatConfig
from mimirlite.protocols.autonat.verdict import DialPolicyConfig, Reachability, TrackerConfig
from mimirlite.protocols.dcutr.holepunch import HolePunchConfig
from mimirlite.protocols.dcutr.service import HolePuncher
from mimirlite.protocols.relay.client import RelayClient
from tests.helpers import echo_handler
from tests.helpers.natlab import autonat_on, relay_on, reserve_and_punch
from tests.helpers.netns import NatLab, NetnsHost, PortForward, require_nat
from tests.helpers.waiting import until

PORT = 4001
LAB = AutonatConfig(
    dial_timeout=3.0,
    request_timeout=20.0,
    policy=DialPolicyConfig(allow_private=True),
    tracker=TrackerConfig(required=1),
)
PUNCH = HolePunchConfig(allow_private=True, timeout=5.0)
DCUTR_LOG = "mimirlite.protocols.dcutr"


async def js_on(lab: NatLab, host: NetnsHost, **kwargs: Any) -> JsNatPeer:
    """A JS NAT peer in ``host``'s namespace, listening there on PORT, the lab's wan public to it."""
    return await JsNatPeer.start(
        listen=f"/ip4/{host.ip}/tcp/{PORT}",
        lab_public=[str(lab.wan_network)],
        netns=host.netns,
        **kwargs,
    )


def wan_addr(js: JsNatPeer, host: NetnsHost) -> str:
    """Where ``js`` on wan host ``host`` listens (js-libp2p announces an address of the lab's public wan
    only once AutoNAT verified it, so its ``addrs`` may be empty)."""
    return f"/ip4/{host.ip}/tcp/{PORT}/p2p/{js.peer_id}"


async def verified(js: JsNatPeer, addr: str) -> bool:
    """JS's address manager holds ``addr`` as verified (AutoNAT confirmed it)."""
    return any(a["addr"] == addr and a["verified"] for a in await js.address_metadata())


def dcutr_states(caplog: pytest.LogCaptureFixture, role: str) -> list[str]:
    """The state transitions mimirlite's hole punch cores of ``role`` logged (``a -> b``)."""
    prefix = f"dcutr {role} attempt "
    return [
        r.getMessage().split(": ", 1)[1]
        for r in caplog.records
        if r.name.startswith(DCUTR_LOG) and r.getMessage().startswith(prefix) and " -> " in r.getMessage()
    ]


# ---- AutoNAT ----


@pytest.mark.parametrize("where", ["wan-from-listen-port", "behind-nat"])
async def test_mimirlite_asks_a_js_autonat_server(where: str) -> None:
    """A mimirlite AutoNAT client asks a JS server on the wan to dial it back at the address it saw (its
    observed IP with our listen port): JS decodes the request and takes that address (the lab's wan is
    public to it), but @libp2p/autonat 2.0.16 never dials: ``openConnection`` without ``force`` hands it
    the connection the request came on; it checks that one's remote address against ours (equal when we
    connected from our listen port, "Unexpected remote address" otherwise) and then closes it, before it
    writes its answer. So mimirlite gets no answer from a JS server, counts no vote (UNKNOWN), and its host
    goes on (it dials JS again)."""
    require_nat()
    async with NatLab(wan_hosts=2, lans=[1]) as lab:
        (js_host, wan_host), ((lan_host,),) = lab.wan, lab.lans
        on_wan = where.startswith("wan")
        node_host = wan_host if on_wan else lan_host
        loop = lab.loop(node_host)
        listen = f"/ip4/{wan_host.ip if on_wan else '0.0.0.0'}/tcp/{PORT}"
        async with (
            await js_on(lab, js_host, autonat=True, debug="libp2p:auto-nat*") as server,
            autonat_on(loop, listen, LAB) as node,
        ):
            server_addr = wan_addr(server, js_host)
            server_id = PeerId.from_string(server.peer_id)

            async def ask() -> tuple[list[str], bool | None, Reachability, bool]:
                if on_wan:
                    conn = await node.host.dial_from_listen_port(
                        server_addr, server_id, initiator=True, timeout=5
                    )
                else:
                    conn = await node.host.dial(server_addr)
                await node.identify.identify(conn)
                candidates = [str(a) for a in node.candidate_addrs()]
                vote = await node.probe(server_id)
                await until(lambda: server_id not in node.host.connections, 10, "JS hanging up")
                again = await node.host.dial(server_addr)
                return candidates, vote, node.reachability, again.remote_peer == server_id

            candidates, vote, verdict, redialed = await loop.run(ask(), timeout=40)
            candidate = f"/ip4/{wan_host.ip if on_wan else lab.router_wan_ip(0)}/tcp/{PORT}"
            assert candidates == [candidate]
            assert (vote, verdict, redialed) == (None, Reachability.UNKNOWN, True)
            err = server.stderr_tail()
            assert f"dial multiaddrs {candidate}/p2p/{node.host.peer_id}" in err, err
            if on_wan:
                assert f"successfully dialed {node.host.peer_id} via {candidate}" in err, err
            else:
                assert "Unexpected remote address" in err, err


async def test_a_js_autonat_client_asks_mimirlite() -> None:
    """A JS peer on the wan takes its listen address for public but unverified (so it announces nothing);
    it asks mimirlite's AutoNAT server, which dials it back, and JS marks the address verified."""
    require_nat()
    async with NatLab(wan_hosts=2, lans=[1]) as lab:
        (js_host, node_host), _ = lab.wan, lab.lans
        loop = lab.loop(node_host)
        async with (
            autonat_on(loop, f"/ip4/{node_host.ip}/tcp/{PORT}", LAB) as node,
            await js_on(lab, js_host, autonat=True) as js,
        ):
            own = f"/ip4/{js_host.ip}/tcp/{PORT}"
            assert not await verified(js, own)
            assert await js.current_addrs() == []  # js-libp2p announces verified addresses only
            await js.dial(node.host.listen_addrs[0])

            async def js_verified() -> bool:
                return await verified(js, own)

            await until(js_verified, 30, "JS's address verified by mimirlite's dial-back")
            assert await loop.run(_dialed_back(node), timeout=5) == 1
            assert await js.current_addrs() == [f"{own}/p2p/{js.peer_id}"]
            assert not js.uncaught()


async def _dialed_back(node: AutoNat) -> int:
    return node.dialed_back


# ---- DCUtR ----


@pytest.mark.parametrize("forwarded", [False, True], ids=["behind-nat", "port-forward"])
async def test_dcutr_js_initiates_and_mimirlite_answers(
    caplog: pytest.LogCaptureFixture, forwarded: bool
) -> None:
    """JS on the wan took mimirlite's relayed connection (mimirlite behind NAT dialed its circuit
    address): JS sends CONNECT, mimirlite's responder answers CONNECT, JS sends SYNC, and mimirlite dials
    JS from its listen port, in vain (see the module docstring). Behind MASQUERADE alone JS's dial is
    dropped too: the two stay relayed and keep talking. Behind a port forward of mimirlite's listen port,
    JS's dial reaches mimirlite's listener: a direct connection, JS's."""
    require_nat()
    caplog.set_level(logging.DEBUG, logger=DCUTR_LOG)
    forwards = [PortForward(lan=0, host=0, port=PORT)] if forwarded else []
    async with NatLab(wan_hosts=2, lans=[1], forwards=forwards) as lab:
        (relay_host, js_host), ((node_host,),) = lab.wan, lab.lans
        loop = lab.loop(node_host)
        async with relay_on(lab.loop(relay_host), f"/ip4/{relay_host.ip}/tcp/{PORT}", LAB) as relay:
            relay_addr = relay.host.listen_addrs[0]
            async with await js_on(
                lab, js_host, reserve=[relay_addr], dcutr=True, autonat=True, debug="libp2p:dcutr*"
            ) as js:
                own = f"/ip4/{js_host.ip}/tcp/{PORT}"

                async def js_verified() -> bool:
                    return await verified(js, own)

                # the relay's AutoNAT server verifies JS's address: JS offers it in its CONNECT
                await until(js_verified, 30, "JS's address verified by the relay")
                async with autonat_on(loop, f"/ip4/0.0.0.0/tcp/{PORT}", LAB) as node:

                    async def dial_through_relay() -> bool:
                        node.host.set_handler(ECHO_PROTOCOL, echo_handler)
                        await RelayClient(node.host).start()
                        puncher = HolePuncher(node.host, node.candidate_addrs, PUNCH)
                        await puncher.start()
                        await node.identify.identify(await node.host.dial(relay_addr))
                        relayed = await node.host.dial(f"{relay_addr}/p2p-circuit/p2p/{js.peer_id}")
                        return relayed.relayed

                    assert await loop.run(dial_through_relay(), timeout=20)
                    await until(
                        lambda: (
                            "dialing -> failed" in dcutr_states(caplog, "responder")
                            or "dialing -> succeeded" in dcutr_states(caplog, "responder")
                        ),
                        30,
                        "mimirlite's answer to JS's hole punch dialed",
                    )
                    # our side: CONNECT received and answered, SYNC received, JS dialed from our listen
                    # port; JS's listener took that connection as the handshake's responder, as we did,
                    # so it cannot complete: behind a port forward, JS's own dial reaches us meanwhile,
                    # and we leave ours for it
                    states = dcutr_states(caplog, "responder")
                    assert states[:4] == [
                        "idle -> await_connect",
                        "await_connect -> await_sync",
                        "await_sync -> dialing",
                        "dialing -> succeeded" if forwarded else "dialing -> failed",
                    ], states
                    messages = [r.getMessage() for r in caplog.records]
                    if forwarded:
                        assert f"dcutr: {js.peer_id} reached us directly while we dialed it" in messages
                    else:
                        [dial] = [m for m in messages if m.startswith("dcutr: direct dial of")][:1]
                        # whichever side's first-byte timer (3 s both) ends the silent connection first
                        silent = ("failed: nothing received", "failed: connection closed during the upgrade")
                        assert any(f"at {own}/p2p/{js.peer_id} {why}" in dial for why in silent), dial
                    # JS's side: it sent CONNECT, read ours (with dialable addresses), sent SYNC and dialed
                    err = js.stderr_tail()
                    for line in ("B sending connect", "B receiving connect", "A sending sync", "B dialing"):
                        assert line in err, f"{line!r} not in JS's log:\n{err}"
                    js_id = PeerId.from_string(js.peer_id)

                    async def direct() -> bool:
                        conn = node.host.connections.get(js_id)
                        return conn is not None and not conn.relayed

                    if forwarded:
                        await loop.run(until(direct, 20, "JS's direct connection"), timeout=30)
                        # JS's dial to the router's forwarded port, our listener's
                        at = f"/ip4/{lab.router_wan_ip(0)}/tcp/{PORT}/p2p/{node.host.peer_id}"
                        punched = f"succeeded to address {at}, closing relayed connection"
                        await until(lambda: punched in js.stderr_tail(), 10, "JS's DCUtR success")
                    else:
                        assert not await loop.run(direct(), timeout=5)
                    # still talking (through the relay, or directly)
                    assert await js.echo(b"still talking", peer_id=str(node.host.peer_id)) == b"still talking"
                    assert not js.uncaught()


@pytest.mark.parametrize("js_behind_nat", [False, True], ids=["js-on-the-wan", "js-behind-nat"])
async def test_dcutr_mimirlite_initiates_and_punches_to_js(
    caplog: pytest.LogCaptureFixture, js_behind_nat: bool
) -> None:
    """mimirlite behind NAT took JS's relayed connection (it reserved on the relay; JS dialed its circuit
    address): mimirlite sends CONNECT, JS answers CONNECT, mimirlite sends SYNC and, half a round trip
    later, dials JS from its listen port. JS on the wan: a direct connection through mimirlite's NAT.
    JS behind a NAT of its own: JS offers only its LAN address (it takes no TCP address it is observed at,
    and its dial, from another port than its listen port, opens its NAT for no answer), so the three
    attempts fail and the two stay relayed, still talking."""
    require_nat()
    caplog.set_level(logging.DEBUG, logger=DCUTR_LOG)
    async with NatLab(wan_hosts=2, lans=[1, 1]) as lab:
        (relay_host, wan_js_host), ((node_host,), (lan_js_host,)) = lab.wan, lab.lans
        js_host = lan_js_host if js_behind_nat else wan_js_host
        loop = lab.loop(node_host)
        async with relay_on(lab.loop(relay_host), f"/ip4/{relay_host.ip}/tcp/{PORT}", LAB) as relay:
            relay_addr = relay.host.listen_addrs[0]
            async with (
                await js_on(
                    lab, js_host, relay_client=True, dcutr=True, autonat=True, debug="libp2p:dcutr*"
                ) as js,
                autonat_on(loop, f"/ip4/0.0.0.0/tcp/{PORT}", LAB) as node,
            ):
                own = f"/ip4/{js_host.ip}/tcp/{PORT}"
                await js.dial(relay_addr)

                async def js_verified() -> bool:
                    return await verified(js, own)

                # on the wan, the relay's AutoNAT server verifies JS's address (JS offers it in its
                # CONNECT then); behind NAT it is a LAN address, which JS takes as verified at once
                await until(js_verified, 30, "JS's address verified")

                circuit, puncher = await loop.run(reserve_and_punch(node, relay, PUNCH), timeout=20)
                dialed = await js.dial(circuit)
                assert dialed["relayed"]

                async def punched() -> bool:
                    return puncher.succeeded + puncher.failed > 0

                async def outcome() -> tuple[int, int, bool, bytes]:
                    await until(punched, 60, "mimirlite's hole punch over")
                    js_id = PeerId.from_string(js.peer_id)
                    conn = node.host.connections.get(js_id)
                    direct = conn is not None and not conn.relayed
                    stream = await node.host.new_stream(js_id, ECHO_PROTOCOL)  # direct when there is one
                    direct = direct and stream.connection is conn
                    await stream.write(b"after the hole punch")
                    await stream.close_write()
                    return puncher.succeeded, puncher.failed, direct, await stream.read_all()

                succeeded, failed, direct, echoed = await loop.run(outcome(), timeout=80)
                states = dcutr_states(caplog, "initiator")
                assert states[:2] == ["idle -> connect_sent", "connect_sent -> dialing"], states
                err = js.stderr_tail()
                for line in ("A receiving connect", "A sending connect", "A receiving sync", "A dialing"):
                    assert line in err, f"{line!r} not in JS's log:\n{err}"
                assert echoed == b"after the hole punch"
                if js_behind_nat:
                    # three attempts, each a full exchange, each dial to JS's LAN address in vain
                    assert (succeeded, failed, direct) == (0, 1, False)
                    assert states.count("connect_sent -> dialing") == PUNCH.max_attempts, states
                    assert err.count("A receiving sync") == PUNCH.max_attempts, err
                    assert not js.uncaught()
                    return
                assert (succeeded, failed, direct) == (1, 0, True)

                # JS sees it too: inbound from the router's address, with our listen port (the NAT kept it)
                async def js_direct() -> bool:
                    conns = [c for c in await js.connections() if c["peer"] == str(node.host.peer_id)]
                    return any(
                        not c["relayed"] and c["addr"].startswith(f"/ip4/{lab.router_wan_ip(0)}/tcp/{PORT}/")
                        for c in conns
                    )

                await until(js_direct, 10, "JS's direct connection to mimirlite")
                assert not js.uncaught()
