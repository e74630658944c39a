"""The LAN DHT at scale: 50 peers, mimirlite and js-libp2p mixed, on two bridges joined by a router
(tests/helpers/netns.py RoutedNet: no multicast crosses, and every peer runs without mDNS anyway).

- 40 mimirlite peers: 38 ``mimirlite node --backend echo --no-mdns`` processes (the first, on bridge 0, is
  the bootstrap peer B; three of the others serve the echo model as ``MODEL`` and so provide it) and two
  clients in namespace event loops of this process (a Host with identify and a ModelDht), one a bridge;
- 10 js-libp2p peers (interop/kad-peer.mjs, @libp2p/kad-dht in server mode on the LAN DHT), two of them
  providing ``MODEL``'s CID and one a client.

Every peer is given one bootstrap peer, B. The providers sit on both bridges. Every client finds every
provider within LOOKUP_BOUND s; then a third of the peers (not B, the providers or the clients) are killed
with SIGKILL, and every client still finds every provider, within AFTER_KILL_BOUND s. The lookup times are
printed (``-s``) as p50/p95.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from pathlib import Path

import pytest

from mimirlite import Host
from mimirlite.mimir.dht import ModelDht
from mimirlite.mimir.models import dht_cids, dht_keys
from mimirlite.protocols import identify_service, start_services
from tests.helpers.discovery import needs_js
from tests.helpers.netns import NetnsHost, NetnsLoop, RoutedNet, require_netns
from tests.helpers.nodeproc import NodeProc

INTEROP = Path(__file__).resolve().parents[2] / "interop"
if str(INTEROP) not in sys.path:
    sys.path.insert(0, str(INTEROP))

from jskad import JsKadPeer  # noqa: E402

MODEL = "scale/echo:7b"
LOOKUP_BOUND = 5.0
AFTER_KILL_BOUND = 10.0
LOOKUPS = 10
"""Lookups each client makes in each phase (each must find every provider)."""
START_BOUND = 60.0
"""Bound on 48 processes starting at once on a small machine (interpreter and node.js start-up)."""
PROVIDE_BOUND = 30.0


class LoopClient:
    """A mimirlite client in a namespace event loop: Host, identify and ping, ModelDht with one bootstrap."""

    def __init__(self, netloop: NetnsLoop, bootstrap: str) -> None:
        self.netloop = netloop
        self.bootstrap = bootstrap
        self.host: Host
        self.dht: ModelDht

    async def start(self) -> None:
        async def start() -> None:
            self.host = Host(listen=["/ip4/0.0.0.0/tcp/0"])
            await self.host.start()
            start_services(self.host)
            identify = identify_service(self.host)
            assert identify is not None
            self.dht = ModelDht(self.host, identify, bootstrap=[self.bootstrap])
            await self.dht.start()

        await self.netloop.run(start(), timeout=10)

    async def stop(self) -> None:
        async def stop() -> None:
            await self.dht.stop()
            await self.host.stop()

        await self.netloop.run(stop(), timeout=10)

    async def table_size(self) -> int:
        async def size() -> int:
            return len(self.dht.dht.peers())

        return await self.netloop.run(size(), timeout=5)

    async def find(self, bound: float) -> tuple[set[str], float]:
        """The providers of MODEL one lookup finds, and how long it took (timed in its own loop)."""

        async def find() -> tuple[set[str], float]:
            t0 = time.monotonic()
            found = await self.dht.find(MODEL)
            return {str(p.peer) for p in found}, time.monotonic() - t0

        return await self.netloop.run(find(), timeout=bound)


async def js_find(peer: JsKadPeer, count: int, bound: float) -> tuple[set[str], float]:
    t0 = time.monotonic()
    found = await peer.find_providers(dht_cids(MODEL)[0], timeout=bound, count=count)
    return {str(p["id"]) for p in found}, time.monotonic() - t0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def node_args(bootstrap: str | None, model: str | None = None) -> tuple[str, ...]:
    args: tuple[str, ...] = ("--no-mdns", "--backend", "echo", "--listen", "/ip4/0.0.0.0/tcp/0")
    if model is not None:
        args += ("--model", model, "-v")
    if bootstrap is not None:
        args += ("--bootstrap", bootstrap)
    return args


def addr_on(addrs: list[str], host: NetnsHost, peer: str) -> str:
    addr = next(a for a in addrs if a.startswith(f"/ip4/{host.ip}/tcp/"))
    return addr if "/p2p/" in addr else f"{addr}/p2p/{peer}"


@needs_js
@pytest.mark.interop
@pytest.mark.timeout(300)
async def test_fifty_mixed_peers_find_every_provider_also_after_a_third_die() -> None:
    require_netns()
    key_hex = dht_keys(MODEL)[0].hex()
    async with RoutedNet([25, 25]) as net, contextlib.AsyncExitStack() as stack:
        b0, b1 = net.bridges
        # bridge 0: B, client c0, 1 mimirlite provider, 17 plain mimirlite, 1 JS provider, 4 plain JS
        # bridge 1: client c1, 2 mimirlite providers, 17 plain mimirlite, 1 JS provider, 1 JS client,
        # 3 plain JS
        b_host, c0_host = b0[0], b0[1]
        lite_prov_hosts = [b0[2], b1[1], b1[2]]
        c1_host = b1[0]
        lite_plain_hosts = b0[3:20] + b1[3:20]
        js_prov_hosts = [b0[20], b1[20]]
        js_client_host = b1[21]
        js_plain_hosts = b0[21:25] + b1[22:25]
        assert len(lite_plain_hosts) + len(lite_prov_hosts) + 3 == 40
        assert len(js_plain_hosts) + len(js_prov_hosts) + 1 == 10

        t_start = time.monotonic()
        boot = await NodeProc.serve(stack, *node_args(None), net=net, host=b_host)
        b_addr = addr_on(boot.banner.addrs, b_host, boot.peer_id)

        async def js_peer(host: NetnsHost) -> JsKadPeer:
            peer = await JsKadPeer.start(
                listen=f"/ip4/{host.ip}/tcp/0", bootstrap=[b_addr], netns=host.netns, timeout=START_BOUND
            )
            stack.push_async_callback(peer.stop)
            return peer

        # everyone but the providers first, so that the providers' records go to the closest of them all
        plain = await asyncio.gather(
            *(NodeProc.serve(stack, *node_args(b_addr), net=net, host=h) for h in lite_plain_hosts)
        )
        js_plain = await asyncio.gather(*(js_peer(h) for h in js_plain_hosts))
        js_client = await js_peer(js_client_host)
        clients = [LoopClient(net.loop(h), b_addr) for h in (c0_host, c1_host)]
        for c in clients:
            await c.start()
            stack.push_async_callback(c.stop)
        t_up = time.monotonic()

        lite_prov = await asyncio.gather(
            *(NodeProc.serve(stack, *node_args(b_addr, MODEL), net=net, host=h) for h in lite_prov_hosts)
        )
        t_lite_prov = time.monotonic()
        js_prov = await asyncio.gather(*(js_peer(h) for h in js_prov_hosts))
        t_js_prov = time.monotonic()
        await asyncio.gather(*(p.provide(dht_cids(MODEL)[0], timeout=PROVIDE_BOUND) for p in js_prov))

        def provided(line: str) -> bool:
            return (
                "/ipfs/lan/kad/1.0.0" in line and f"provided {key_hex} to " in line and " to 0 of" not in line
            )

        t_js_provided = time.monotonic()
        for p in lite_prov:
            await p.wait_line(provided, PROVIDE_BOUND)
        t_provided = time.monotonic()
        providers = {p.peer_id for p in lite_prov} | {p.peer_id for p in js_prov}
        assert len(providers) == 5
        for c in clients:
            assert await c.table_size() > 0

        async def lookups(bound: float) -> dict[str, list[float]]:
            times: dict[str, list[float]] = {"mimirlite": [], "js": []}
            for _ in range(LOOKUPS):
                for c in clients:
                    found, took = await c.find(bound)
                    assert providers <= found, (providers - found, took)
                    assert took < bound
                    times["mimirlite"].append(took)
                found, took = await js_find(js_client, len(providers), bound)
                assert providers <= found, (providers - found, took)
                assert took < bound
                times["js"].append(took)
            return times

        before = await lookups(LOOKUP_BOUND)
        t_found = time.monotonic()

        # a third of the 50 die at once, without a word: 13 mimirlite processes and 4 JS ones
        victims_lite, victims_js = plain[::2][:13], js_plain[:4]
        await asyncio.gather(*(p.kill() for p in victims_lite), *(p.kill() for p in victims_js))
        assert len(victims_lite) + len(victims_js) == 17
        after = await lookups(AFTER_KILL_BOUND)
        t_end = time.monotonic()

        print(
            f"\nDHT scale: 50 peers up in {t_up - t_start:.1f} s; providers: mimirlite ones started in "
            f"{t_lite_prov - t_up:.1f} s, JS ones in {t_js_prov - t_lite_prov:.1f} s, JS provide took "
            f"{t_js_provided - t_js_prov:.1f} s, all stored {t_provided - t_up:.1f} s after the 45 were up; "
            f"first lookups in {t_found - t_provided:.1f} s, after kill "
            f"{t_end - t_found:.1f} s"
        )
        for phase, by_kind in (("before", before), ("after a third died", after)):
            for kind, times in by_kind.items():
                print(
                    f"DHT scale lookups {phase}, {kind} clients: n={len(times)} "
                    f"p50={statistics.median(times) * 1000:.0f} ms p95={percentile(times, 95) * 1000:.0f} ms "
                    f"max={max(times) * 1000:.0f} ms"
                )
