"""mDNS helpers shared by the suites (tests/discovery/test_mdns.py, interop/, fuzz/capture.py): the
packets js-libp2p's mDNS sends, and a mimirlite peer with mDNS on a loop inside a network namespace."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from mimirlite import Host, PeerId
from mimirlite.discovery import MdnsDiscovery
from tests.helpers.netns import Inbox, NetnsLoop

T = TypeVar("T")

# Bytes as @libp2p/mdns 11 sends them (multicast-dns 7.2.5 over dns-packet 5.6.1): a query, and
# the answer of a peer named JS_NAME listening on 10.77.0.2 and 127.0.0.1, port 4001.
JS_PEER = "12D3KooWL2nZ1mb2hVTh8VjK8MsUyftnskh7vWcEseutEoTi7pSP"
JS_NAME = "k3m9q2x7v1b8n4c6z0l5j2h8g6f4d1s3a9p7o5i3u1y9t7r5e3w1q8m6n4b2v0c"
JS_QUERY = bytes.fromhex("000000000001000000000000045f703270045f756470056c6f63616c00000c0001")
JS_RESPONSE = bytes.fromhex(
    "000084000000000300000000045f703270045f756470056c6f63616c00000c00010000007800513f6b336d3971"
    "327837763162386e3463367a306c356a3268386736663464317333613970376f3569337531793974377235653377"
    "3171386d366e346232763063045f703270045f756470056c6f63616c003f6b336d3971327837763162386e346336"
    "7a306c356a3268386736663464317333613970376f35693375317939743772356533773171386d366e3462327630"
    "63045f703270045f756470056c6f63616c000010000100000078005958646e73616464723d2f6970342f31302e37"
    "372e302e322f7463702f343030312f7032702f313244334b6f6f574c326e5a316d62326856546838566a4b384d73"
    "557966746e736b68377657634573657574456f5469377053503f6b336d3971327837763162386e3463367a306c35"
    "6a3268386736663464317333613970376f35693375317939743772356533773171386d366e346232763063045f70"
    "3270045f756470056c6f63616c000010000100000078005958646e73616464723d2f6970342f3132372e302e302e"
    "312f7463702f343030312f7032702f313244334b6f6f574c326e5a316d62326856546838566a4b384d7355796674"
    "6e736b68377657634573657574456f546937705350"
)


class NsPeer:
    """A Host listening on 0.0.0.0 plus MdnsDiscovery, on a loop inside a namespace.

    ``async with NsPeer(...)`` starts and stops it; events go to ``inbox``: ("peer", id, addrs),
    ("lost", id), ("connected", id).
    """

    host: Host
    disc: MdnsDiscovery

    def __init__(
        self,
        netloop: NetnsLoop,
        inbox: Inbox,
        *,
        interval: float = 1.0,
        lost_after: int = 3,
        interfaces: list[str] | None = None,
    ) -> None:
        self.netloop = netloop
        self.inbox = inbox
        self.interval = interval
        self.lost_after = lost_after
        self.interfaces = interfaces
        self._running = False

    async def start(self) -> NsPeer:
        async def start() -> None:
            self.host = Host(listen=["/ip4/0.0.0.0/tcp/0"])
            self.host.on_connected.append(lambda conn: self.inbox.push("connected", conn.remote_peer))
            await self.host.start()
            self.disc = MdnsDiscovery(
                self.host,
                interval=self.interval,
                lost_after=self.lost_after,
                interfaces=self.interfaces,
                on_peer=lambda pid, addrs: self.inbox.push("peer", pid, addrs),
                on_lost=lambda pid: self.inbox.push("lost", pid),
            )
            try:
                await self.disc.start()
            except BaseException:
                await self.host.stop()
                raise

        await self.netloop.run(start(), timeout=10)
        self._running = True
        return self

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False

        async def stop() -> None:
            try:
                await self.disc.stop()
            finally:
                await self.host.stop()

        await self.netloop.run(stop(), timeout=10)

    async def __aenter__(self) -> NsPeer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def call(self, fn: Callable[[], Awaitable[T]], timeout: float = 10) -> T:
        """Run ``fn()`` on the peer's loop (for its host or discovery)."""

        async def run() -> T:
            return await fn()

        return await self.netloop.run(run(), timeout)

    @property
    def peer_id(self) -> PeerId:
        return self.host.peer_id

    @property
    def port(self) -> int:
        return int(self.host.listen_addrs[0].split("/")[4])
