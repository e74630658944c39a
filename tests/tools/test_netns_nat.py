"""The NAT lab (tests/helpers/netns.py NatLab), checked with plain sockets: private hosts reach the wan
behind their router's address and cannot be dialled; a port forward lets the wan in; two hosts behind
MASQUERADE routers connect by TCP simultaneous open (hole punching), not when one router is symmetric;
multicast stays on its LAN; teardown leaves nothing, also when the test fails."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess

import pytest

from tests.helpers.netns import (
    Inbox,
    NatLab,
    NetnsLoop,
    PortForward,
    our_namespaces,
    require_nat,
)

PORT = 4001
"""Where the hosts listen (and dial from, for hole punching)."""
OBSERVER = 4100
"""The wan host's "what address do you come from" port."""
FAIL_WITHIN = 3.0
"""Bound on an attempt that must fail (a SYN dropped by a router is retried at 1 s, 3 s, ...)."""
PUNCH_WITHIN = 8.0
"""Bound on a simultaneous open that must succeed: the SYN that reaches a router first is dropped, the
other one passes and the first dialer answers it (a healthy run takes well under 1 s)."""

pytestmark = pytest.mark.timeout(120)


def _reusable(local_port: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setblocking(False)
    if local_port is not None:
        sock.bind(("0.0.0.0", local_port))
    return sock


async def _serve(port: int) -> asyncio.Server:
    """A server on ``port`` (reusable, as a libp2p listener) that sends each dialer ``ip:port`` as it sees
    it, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ip, rport = writer.get_extra_info("peername")[:2]
        writer.write(f"{ip}:{rport}\n".encode())
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, sock=_listening(port))


def _listening(port: int) -> socket.socket:
    sock = _reusable(port)
    sock.listen(16)
    return sock


async def _close(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


async def _connect(ip: str, port: int, local_port: int | None, timeout: float) -> socket.socket:
    """A connected socket to ``ip:port``, from ``local_port`` when given; OSError or TimeoutError."""
    sock = _reusable(local_port)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (ip, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def _observed(ip: str, port: int, local_port: int | None = None) -> str:
    """What ``ip:port`` (a :func:`_serve` server) sees as our address."""
    sock = await _connect(ip, port, local_port, FAIL_WITHIN)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        return (await asyncio.wait_for(reader.readline(), FAIL_WITHIN)).decode().strip()
    finally:
        writer.close()


async def _attempt(ip: str, port: int, local_port: int | None = None) -> str:
    """``"connected"``, or why a bounded attempt to connect failed."""
    try:
        sock = await _connect(ip, port, local_port, FAIL_WITHIN)
    except asyncio.TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"refused: {exc}" if isinstance(exc, ConnectionRefusedError) else f"error: {exc}"
    sock.close()
    return "connected"


async def test_private_host_reaches_the_wan_as_its_router_and_cannot_be_dialled() -> None:
    require_nat()
    async with NatLab(wan_hosts=1, lans=[2]) as lab:
        (wan,), ((priv, neighbour),) = lab.wan, lab.lans
        assert lab.router_wan_ip(0).startswith("10.") and priv.ip.startswith("192.168.0.")
        wl, pl, nl = lab.loop(wan), lab.loop(priv), lab.loop(neighbour)
        observer, listener = await wl.run(_serve(OBSERVER)), await pl.run(_serve(PORT))
        try:
            # the wan sees the router's wan address; the source port is kept (endpoint-independent mapping)
            assert (await pl.run(_observed(wan.ip, OBSERVER))).startswith(f"{lab.router_wan_ip(0)}:")
            assert await pl.run(_observed(wan.ip, OBSERVER, PORT)) == f"{lab.router_wan_ip(0)}:{PORT}"
            # on its LAN the host is reachable, directly
            assert (await nl.run(_observed(priv.ip, PORT))).startswith(f"{neighbour.ip}:")
            # from the wan, neither by its private address (no route) nor at its router (dropped)
            assert (await wl.run(_attempt(priv.ip, PORT))).startswith("error:")
            assert await wl.run(_attempt(lab.router_wan_ip(0), PORT)) == "timeout"
        finally:
            await wl.run(_close(observer))
            await pl.run(_close(listener))


async def test_hosts_behind_different_routers_cannot_dial_each_other() -> None:
    require_nat()
    async with NatLab(wan_hosts=1, lans=[1, 1]) as lab:
        (a,), (b,) = lab.lans
        al, bl, wl = lab.loop(a), lab.loop(b), lab.loop(lab.wan[0])
        listener = await bl.run(_serve(PORT))
        try:
            assert await wl.run(_attempt(lab.router_wan_ip(1), PORT)) == "timeout"
            for ip in (b.ip, lab.router_wan_ip(1)):
                result = await al.run(_attempt(ip, PORT))
                assert result == "timeout" or result.startswith("error:"), (ip, result)
            # b itself is up: its router lets its own dial out, and the reply back in
            observer = await wl.run(_serve(OBSERVER))
            assert (await bl.run(_observed(lab.wan[0].ip, OBSERVER))).startswith(lab.router_wan_ip(1) + ":")
            await wl.run(_close(observer))
        finally:
            await bl.run(_close(listener))


async def _punch(peer: str, timeout: float) -> socket.socket:
    ip, port = peer.rsplit(":", 1)
    return await _connect(ip, int(port), PORT, timeout)


async def _send(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


async def _recv(sock: socket.socket, n: int) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, n), FAIL_WITHIN)


async def _sock_close(sock: socket.socket) -> None:
    sock.close()


@pytest.mark.parametrize("symmetric", [False, True], ids=["cone", "symmetric"])
async def test_tcp_simultaneous_open_through_two_nats(symmetric: bool) -> None:
    """A and B, each listening on PORT behind its own router, learn their observed wan address:port from
    the wan host (dialling from PORT), then dial each other's observed address from PORT at the same time.
    Through two MASQUERADE routers (source port kept) one connection forms, both sides seeing it; when B's
    router is symmetric (``fully-random``: a new port per connection) it does not."""
    require_nat()
    async with NatLab(wan_hosts=1, lans=[1, 1], symmetric=(False, symmetric)) as lab:
        (wan,), ((a,), (b,)) = lab.wan, lab.lans
        wl, al, bl = lab.loop(wan), lab.loop(a), lab.loop(b)
        observer = await wl.run(_serve(OBSERVER))
        listeners = [await al.run(_serve(PORT)), await bl.run(_serve(PORT))]
        try:
            obs_a = await al.run(_observed(wan.ip, OBSERVER, PORT))
            obs_b = await bl.run(_observed(wan.ip, OBSERVER, PORT))
            assert obs_a == f"{lab.router_wan_ip(0)}:{PORT}"
            assert obs_b.startswith(f"{lab.router_wan_ip(1)}:")
            if not symmetric:
                assert obs_b == f"{lab.router_wan_ip(1)}:{PORT}"
            timeout = FAIL_WITHIN if symmetric else PUNCH_WITHIN
            results = await asyncio.gather(
                al.run(_punch(obs_b, timeout)), bl.run(_punch(obs_a, timeout)), return_exceptions=True
            )
            try:
                if symmetric:
                    assert all(isinstance(r, (asyncio.TimeoutError, OSError)) for r in results), results
                    return
                sa, sb = results
                assert isinstance(sa, socket.socket) and isinstance(sb, socket.socket), results
                assert sa.getpeername() == (lab.router_wan_ip(1), PORT)
                assert sb.getpeername() == (lab.router_wan_ip(0), PORT)
                await al.run(_send(sa, b"from a"))
                assert await bl.run(_recv(sb, 100)) == b"from a"
                await bl.run(_send(sb, b"from b"))
                assert await al.run(_recv(sa, 100)) == b"from b"
            finally:
                for sock, nl in zip(results, (al, bl), strict=True):
                    if isinstance(sock, socket.socket):
                        await nl.run(_sock_close(sock))
        finally:
            await wl.run(_close(observer))
            await al.run(_close(listeners[0]))
            await bl.run(_close(listeners[1]))


async def test_port_forward_lets_the_wan_in() -> None:
    require_nat()
    forward = PortForward(lan=0, host=0, port=PORT, wan_port=PORT + 1)
    async with NatLab(wan_hosts=1, lans=[1], forwards=[forward]) as lab:
        (wan,), ((priv,),) = lab.wan, lab.lans
        wl, pl = lab.loop(wan), lab.loop(priv)
        listener = await pl.run(_serve(PORT))
        try:
            # the private host sees the wan host's own address (DNAT only, no source NAT)
            seen = await wl.run(_observed(lab.router_wan_ip(0), PORT + 1))
            assert seen.startswith(f"{wan.ip}:"), seen
            # only the forwarded port
            assert await wl.run(_attempt(lab.router_wan_ip(0), PORT)) == "timeout"
        finally:
            await pl.run(_close(listener))


GROUP, MPORT = "224.0.0.251", 5353


async def _multicast_receiver(inbox: Inbox, name: str) -> asyncio.DatagramTransport:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", MPORT))
    mreq = struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton("0.0.0.0"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)

    class Receiver(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            inbox.push(name, data)

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Receiver, sock=sock)
    return transport


async def _send_datagram(ip: str, data: bytes, ttl: int = 255) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.sendto(data, (ip, MPORT))


async def _close_transport(transport: asyncio.DatagramTransport) -> None:
    transport.close()


async def test_multicast_stays_on_its_lan() -> None:
    """A datagram to the mDNS group reaches the sender's LAN neighbour, never the wan host: the unicast
    datagram sent after it through the router reaches the wan host first."""
    require_nat()
    async with NatLab(wan_hosts=1, lans=[2]) as lab:
        (wan,), ((priv, neighbour),) = lab.wan, lab.lans
        inbox = Inbox()
        wl, pl, nl = lab.loop(wan), lab.loop(priv), lab.loop(neighbour)
        receivers = [
            (wl, await wl.run(_multicast_receiver(inbox, "wan"))),
            (nl, await nl.run(_multicast_receiver(inbox, "lan"))),
        ]
        try:
            await pl.run(_send_datagram(GROUP, b"multicast"))
            await inbox.wait_for(lambda items: ("lan", b"multicast", None) in items, FAIL_WITHIN)
            await pl.run(_send_datagram(wan.ip, b"unicast"))
            await inbox.wait_for(lambda items: any(k == "wan" for k, _, _ in items), FAIL_WITHIN)
            assert [data for k, data, _ in inbox.items if k == "wan"] == [b"unicast"], inbox.items
        finally:
            for loop, transport in receivers:
                await loop.run(_close_transport(transport))


def _machine_state() -> tuple[str, str]:
    """This machine's own namespace: its links and its nftables ruleset (which the lab must not touch)."""
    links = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10, check=True
    )
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, timeout=10, check=True)
    return links.stdout, rules.stdout


def _lab_namespaces(lab: NatLab) -> list[str]:
    return [name for name in our_namespaces() if name.startswith(f"{lab.tag}-")]


@pytest.mark.parametrize("fails", [False, True], ids=["ok", "body-raises"])
async def test_teardown_leaves_nothing(fails: bool) -> None:
    require_nat()
    before = _machine_state()
    lab = NatLab(wan_hosts=1, lans=[1, 1], symmetric=(False, True), forwards=[PortForward(0, 0, PORT)])
    procs: list[asyncio.subprocess.Process] = []
    loops: list[NetnsLoop] = []

    async def body() -> None:
        async with lab:
            assert len(_lab_namespaces(lab)) == 1 + 1 + 2 * (
                1 + 1 + 1
            )  # wan bridge, wan host, 2 x (router, LAN bridge, host)
            assert _machine_state() == before
            for host in lab.hosts:
                procs.append(await lab.spawn(host, "sleep", "60"))
                loops.append(lab.loop(host))
            assert all(p.returncode is None for p in procs)
            if fails:
                raise RuntimeError("the test body fails")

    if fails:
        with pytest.raises(RuntimeError, match="the test body fails"):
            await body()
    else:
        await body()
    assert _lab_namespaces(lab) == []
    assert all(p.returncode is not None for p in procs)
    assert all(nl.loop is not None and nl.loop.is_closed() for nl in loops)
    assert _machine_state() == before
