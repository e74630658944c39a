"""mDNS discovery between mimirlite and @libp2p/mdns 11 (the original MimirLLM stack), both ways.

Each test builds a private bridge of network namespaces (tests/helpers/netns.py): a mimirlite Host with
MdnsDiscovery on a loop inside one namespace, and ``peer.mjs --mdns`` under ``ip netns exec`` in
another. Multicast never leaves those namespaces.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from jspeer import HERE, PEER_SCRIPT, JsPeer

from mimirlite import PeerId
from tests.helpers.mdns import NsPeer
from tests.helpers.netns import Inbox, NetnsHost, TestNet, require_netns

TIMEOUT = 15.0
_LINE_LIMIT = 16 * 1024 * 1024


class NetnsJsPeer(JsPeer):
    """A JsPeer started inside a test namespace with ``ip netns exec``."""

    @classmethod
    async def start_in(cls, net: TestNet, host: NetnsHost, *args: str, timeout: float = 30) -> NetnsJsPeer:
        node = shutil.which("node")
        assert node is not None
        proc = await net.spawn(
            host,
            node,
            str(PEER_SCRIPT),
            *args,
            cwd=str(HERE),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        peer = cls(proc, args)
        try:
            ready = await asyncio.wait_for(asyncio.shield(peer._ready), timeout)
        except BaseException:
            await peer.stop()
            raise
        peer.peer_id = str(ready["peerId"])
        peer.addrs = [str(a) for a in ready["addrs"]]
        return peer

    async def wait_event(self, name: str, match: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next event ``name`` whose fields include ``match``; fails on an uncaught JS error."""

        async def wait() -> dict[str, Any]:
            while True:
                ev = await self.events.get()
                assert ev.get("event") != "uncaught", f"js peer crashed: {ev}"
                if ev.get("event") == name and all(ev.get(k) == v for k, v in match.items()):
                    return ev

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"js peer: no {name} {match} in {timeout} s:\n{self.stderr_tail(30)}"
            ) from None


JS_ARGS = ("--mdns", "--mdns-interval-ms", "1000", "--listen", "/ip4/0.0.0.0/tcp/0")


async def test_js_peer_discovers_mimirlite_and_dials_it() -> None:
    require_netns()
    async with TestNet(2) as net:
        inbox = Inbox()
        async with NsPeer(net.loop(0), inbox) as ours:
            js = await NetnsJsPeer.start_in(net, net.hosts[1], *JS_ARGS)
            try:
                ev = await js.wait_event("peer:discovery", {"peerId": str(ours.peer_id)})
                # what @libp2p/mdns read from our TXT records (it keeps loopback addresses too)
                ours_addr = f"/ip4/{net.hosts[0].ip}/tcp/{ours.port}"
                assert ours_addr in ev["addrs"]
                assert set(ev["addrs"]) <= {ours_addr, f"/ip4/127.0.0.1/tcp/{ours.port}"}
                answer = await js.call("dial", addr=f"{ours_addr}/p2p/{ours.peer_id}", timeout=TIMEOUT)
                assert answer["peerId"] == str(ours.peer_id)
                js_id = PeerId.from_string(js.peer_id)
                await inbox.wait_for(lambda _: js_id in inbox.found("connected"), TIMEOUT)
            finally:
                await js.stop()
            assert js.returncode == 0, js.stderr_tail()


async def test_mimirlite_discovers_js_peer_and_dials_it() -> None:
    require_netns()
    async with TestNet(2) as net:
        inbox = Inbox()
        async with NsPeer(net.loop(0), inbox) as ours:
            js = await NetnsJsPeer.start_in(net, net.hosts[1], *JS_ARGS)
            try:
                js_id = PeerId.from_string(js.peer_id)
                found = await inbox.wait_for(lambda _: inbox.found().get(js_id), TIMEOUT)
                js_port = js.addrs[0].split("/")[4]
                # the JS peer's bridge address; its loopback one is dropped (another machine's)
                assert found == [f"/ip4/{net.hosts[1].ip}/tcp/{js_port}"]
                conn = await ours.call(lambda: ours.host.dial(js_id), timeout=TIMEOUT)
                assert conn.remote_peer == js_id
                await js.wait_event("connection:open", {"peerId": str(ours.peer_id)})
            finally:
                await js.stop()
            assert js.returncode == 0, js.stderr_tail()
