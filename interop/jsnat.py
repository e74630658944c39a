"""Drive a js-libp2p NAT traversal peer (``interop/nat-peer.mjs``: circuit relay v2 server and client,
DCUtR, AutoNAT v1, an echo protocol) from asyncio tests.

``async with await JsNatPeer.start(relay_server=True, key_seed=1) as relay:`` ... one method per command of
the script; every wait is bounded and the process is always stopped (stdin EOF, then SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jspeer import JsPeer

HERE = Path(__file__).resolve().parent
NAT_SCRIPT = HERE / "nat-peer.mjs"
LAB_PUBLIC_HOOK = HERE / "lab-public-hook.mjs"
ECHO_PROTOCOL = "/mimirlite-test/echo/1.0.0"


class JsNatPeer(JsPeer):
    """``nat-peer.mjs``: a js-libp2p node with circuit relay v2 / DCUtR / AutoNAT by flag, answering
    commands by id."""

    script = NAT_SCRIPT
    what = "js nat peer"

    @classmethod
    async def start(  # type: ignore[override]
        cls,
        *,
        listen: str | list[str] | tuple[str, ...] | None = None,
        key_seed: int | None = None,
        relay_server: bool = False,
        max_reservations: int | None = None,
        data_limit: int | None = None,
        duration_limit: int | None = None,
        no_limit: bool = False,
        relay_client: bool = False,
        reserve: tuple[str, ...] | list[str] = (),
        dcutr: bool = False,
        autonat: bool = False,
        lab_public: tuple[str, ...] | list[str] = (),
        debug: str | None = None,
        timeout: float = 30,
        netns: str | None = None,
    ) -> JsNatPeer:
        """Spawn the peer and wait for its ready line.

        ``key_seed``: a fixed Ed25519 identity; ``relay_server``: serve the hop protocol, with
        ``max_reservations``, ``data_limit`` (bytes, both directions together), ``duration_limit``
        (seconds) or ``no_limit``; ``relay_client``: the circuit transport; ``reserve``: relay addresses
        (with /p2p/) to reserve a slot on at start (implies the client); ``dcutr``, ``autonat``: those
        services; ``lab_public``: IPv4 CIDRs the peer takes for public (the NAT lab's stand-in for the
        internet: js-libp2p's DCUtR and AutoNAT skip private addresses; ``lab-public-hook.mjs`` is loaded
        through NODE_OPTIONS); ``debug``: js-libp2p's DEBUG namespaces (e.g. ``libp2p:dcutr*``), logged to
        its stderr (``stderr_tail``); ``netns``: in that network namespace (tests/helpers/netns.py)."""
        args: list[str] = []
        for addr in [listen] if isinstance(listen, str) else (listen or ()):
            args += ["--listen", addr]
        if key_seed is not None:
            args += ["--key-seed", str(key_seed)]
        if relay_server:
            args.append("--relay-server")
        if max_reservations is not None:
            args += ["--max-reservations", str(max_reservations)]
        if data_limit is not None:
            args += ["--data-limit", str(data_limit)]
        if duration_limit is not None:
            args += ["--duration-limit", str(duration_limit)]
        if no_limit:
            args.append("--no-limit")
        if relay_client:
            args.append("--relay-client")
        for addr in reserve:
            args += ["--reserve", addr]
        if dcutr:
            args.append("--dcutr")
        if autonat:
            args.append("--autonat")
        env: dict[str, str] = {}
        for cidr in lab_public:
            args += ["--lab-public", cidr]
        if lab_public:
            env["NODE_OPTIONS"] = f"{os.environ.get('NODE_OPTIONS', '')} --import={LAB_PUBLIC_HOOK}".strip()
        if debug is not None:
            env["DEBUG"] = debug
        peer = await cls._spawn(args, timeout=timeout, netns=netns, env=env or None)
        assert isinstance(peer, JsNatPeer)
        return peer

    @property
    def addr(self) -> str:
        """The first direct (not ``/p2p-circuit``) listen address, with /p2p/. With ``lab_public`` a
        peer announces a lab-public address only once AutoNAT verified it: build that one from its IP."""
        for a in self.addrs:
            if "/p2p-circuit" not in a:
                return a
        raise LookupError(f"{self.what} announced no direct address at start (addrs {self.addrs})")

    # every command's answer comes within its own timeout plus this margin
    _MARGIN = 10.0

    async def dial(self, addr: str, timeout: float = 20) -> dict[str, Any]:
        """Dial ``addr`` (circuit ones too): ``{peerId, relayed, limited}`` (``limited``: the relay set
        limits on the connection)."""
        return await self.call(
            "dial", timeout=timeout + self._MARGIN, addr=addr, timeoutMs=int(timeout * 1000)
        )

    async def connections(self, timeout: float = 10) -> list[dict[str, Any]]:
        """Its open connections: ``[{peer, addr, relayed, limited, direction, status}]``."""
        reply = await self.call("connections", timeout=timeout)
        return list(reply["connections"])

    async def current_addrs(self, timeout: float = 10) -> list[str]:
        """Its multiaddrs now (circuit ones once a reservation is made)."""
        reply = await self.call("addrs", timeout=timeout)
        return [str(a) for a in reply["addrs"]]

    async def reserve(self, relay_addr: str, timeout: float = 20) -> list[str]:
        """Listen on ``relay_addr``/p2p-circuit now (reserve a slot there); its multiaddrs after."""
        reply = await self.call(
            "reserve", timeout=timeout + self._MARGIN, addr=relay_addr, timeoutMs=int(timeout * 1000)
        )
        return [str(a) for a in reply["addrs"]]

    async def echo(
        self, data: bytes, *, addr: str | None = None, peer_id: str | None = None, timeout: float = 20
    ) -> bytes:
        """Open the echo protocol to ``addr`` or ``peer_id``, write ``data``, close, read to EOF."""
        if (addr is None) == (peer_id is None):
            raise ValueError("echo needs exactly one of addr and peer_id")
        target = {"addr": addr} if addr is not None else {"peerId": peer_id}
        reply = await self.call(
            "echo", timeout=timeout + self._MARGIN, hex=data.hex(), timeoutMs=int(timeout * 1000), **target
        )
        return bytes.fromhex(reply["hex"])

    async def hang_up(self, peer_id: str, timeout: float = 10) -> None:
        """Close its connections to ``peer_id``."""
        await self.call("hangUp", timeout=timeout, peerId=peer_id)

    async def reservations(self, timeout: float = 10) -> list[str]:
        """A relay server's reservations: the peer IDs holding one."""
        reply = await self.call("reservations", timeout=timeout)
        return [str(p) for p in reply["reservations"]]

    async def address_metadata(self, timeout: float = 10) -> list[dict[str, Any]]:
        """Its address manager's addresses: ``[{addr, type, verified}]`` (``verified``: AutoNAT confirmed
        it, or js-libp2p takes it for private and needs no check)."""
        reply = await self.call("addressMetadata", timeout=timeout)
        return list(reply["addrs"])

    async def lab_public(self, ips: list[str] | tuple[str, ...] = (), timeout: float = 10) -> dict[str, Any]:
        """``{cidrs, private: {ip: bool}}``: the ``--lab-public`` CIDRs in effect, and what js-libp2p's
        ``isPrivateIp`` says of each of ``ips``."""
        return await self.call("labPublic", timeout=timeout, ips=list(ips))
