"""Drive a js-libp2p Kademlia DHT peer (``interop/kad-peer.mjs``, @libp2p/kad-dht 14.2.0) from asyncio tests.

``async with await JsKadPeer.start(key_seed=1) as peer:`` ... one method per command of the script; every
wait is bounded and the process is always stopped (stdin EOF, then SIGTERM, then SIGKILL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jspeer import JsPeer

HERE = Path(__file__).resolve().parent
KAD_SCRIPT = HERE / "kad-peer.mjs"
LAN_PROTOCOL = "/ipfs/lan/kad/1.0.0"
WAN_PROTOCOL = "/ipfs/kad/1.0.0"


class JsKadPeer(JsPeer):
    """``kad-peer.mjs``: a js-libp2p node with kad-dht, answering commands by id."""

    script = KAD_SCRIPT
    what = "js kad peer"

    @classmethod
    async def start(  # type: ignore[override]
        cls,
        *,
        listen: str | None = None,
        protocol: str = LAN_PROTOCOL,
        client_mode: bool = False,
        key_seed: int | None = None,
        bootstrap: tuple[str, ...] | list[str] = (),
        timeout: float = 30,
        netns: str | None = None,
    ) -> JsKadPeer:
        """Spawn the peer (``key_seed``: a fixed Ed25519 identity; ``netns``: in that network namespace, see
        tests/helpers/netns.py) and wait for its ready line."""
        args: list[str] = ["--protocol", protocol]
        if listen is not None:
            args += ["--listen", listen]
        if client_mode:
            args.append("--client-mode")
        if key_seed is not None:
            args += ["--key-seed", str(key_seed)]
        for addr in bootstrap:
            args += ["--bootstrap", addr]
        peer = await cls._spawn(args, timeout=timeout, netns=netns)
        assert isinstance(peer, JsKadPeer)
        return peer

    # every command's answer comes within its own timeout plus this margin
    _MARGIN = 10.0

    async def dial(self, addr: str, timeout: float = 20) -> str:
        """Dial ``addr``; the remote's peer ID."""
        reply = await self.call(
            "dial", timeout=timeout + self._MARGIN, addr=addr, timeoutMs=int(timeout * 1000)
        )
        return str(reply["peerId"])

    async def provide(self, cid: str, timeout: float = 30) -> None:
        """Announce this peer as a provider of ``cid`` (FIND_NODE walk, then ADD_PROVIDER to the closest)."""
        await self.call("provide", timeout=timeout + self._MARGIN, cid=cid, timeoutMs=int(timeout * 1000))

    async def find_providers(
        self, cid: str, timeout: float = 10, count: int | None = None
    ) -> list[dict[str, Any]]:
        """Providers of ``cid`` (``[{id, addrs}]``) found until the query ends, ``count`` are found or
        ``timeout``."""
        fields: dict[str, Any] = {"cid": cid, "timeoutMs": int(timeout * 1000)}
        if count is not None:
            fields["count"] = count
        reply = await self.call("findProviders", timeout=timeout + self._MARGIN, **fields)
        return list(reply["providers"])

    async def find_peer(self, peer_id: str, timeout: float = 10) -> dict[str, Any]:
        """``{id, addrs}`` of ``peer_id`` as the DHT finds it."""
        reply = await self.call(
            "findPeer", timeout=timeout + self._MARGIN, peerId=peer_id, timeoutMs=int(timeout * 1000)
        )
        return dict(reply["peer"])

    async def get_closest_peers(self, key: bytes, timeout: float = 10) -> list[dict[str, Any]]:
        """The peers closest to ``key`` (``[{id, addrs}]``) from a FIND_NODE walk."""
        reply = await self.call(
            "getClosestPeers", timeout=timeout + self._MARGIN, key=key.hex(), timeoutMs=int(timeout * 1000)
        )
        return list(reply["peers"])

    async def routing_table(self, timeout: float = 10) -> list[str]:
        """The peer IDs in its routing table."""
        reply = await self.call("routingTable", timeout=timeout)
        return [str(p) for p in reply["peers"]]

    async def send(
        self,
        peer_id: str,
        type: str,
        *,
        key: bytes | None = None,
        record: bytes | None = None,
        cluster_level: int | None = None,
        closer: list[dict[str, Any]] | None = None,
        providers: list[dict[str, Any]] | None = None,
        no_response: bool = False,
        timeout: float = 10,
    ) -> dict[str, Any]:
        """Send one raw kad request (``type`` a MessageType name: "PING", "FIND_NODE", ...) to ``peer_id``
        through kad-dht's own Network; its response as ``{type, closer, providers, record}``
        (``no_response``: sendMessage, for ADD_PROVIDER, which has no response)."""
        message: dict[str, Any] = {"type": type}
        if key is not None:
            message["key"] = key.hex()
        if record is not None:
            message["record"] = record.hex()
        if cluster_level is not None:
            message["clusterLevel"] = cluster_level
        if closer is not None:
            message["closer"] = closer
        if providers is not None:
            message["providers"] = providers
        reply = await self.call(
            "send",
            timeout=timeout + self._MARGIN,
            peerId=peer_id,
            message=message,
            noResponse=no_response,
            timeoutMs=int(timeout * 1000),
        )
        return dict(reply["response"])
