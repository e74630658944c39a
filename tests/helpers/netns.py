"""Test hosts in Linux network namespaces: a private LAN that never touches this machine's interfaces.

A :class:`TestNet` creates one namespace holding a bridge and ``n`` host namespaces, each wired to
the bridge by a veth pair (``eth0`` inside the host, created directly in the namespaces: nothing is
added to the machine's own namespace). Host ``i`` gets ``10.<a>.<b>.<i + 1>/24`` on ``eth0``, with
multicast on and a 224.0.0.0/4 route, so mDNS stays on the bridge.

Code runs inside a host namespace in two ways:

- :meth:`TestNet.spawn`: a subprocess under ``ip netns exec`` (e.g. ``python -c ...`` or ``node``);
- :meth:`TestNet.loop`: an asyncio event loop on a thread that entered the namespace with
  ``setns``; every socket that thread creates belongs to the namespace (checked on entry).

A :class:`RoutedNet` is a TestNet of several bridges (one /24 each, ``sizes`` hosts on each) joined by a
router namespace that forwards IPv4 between them: each host routes all of 10.0.0.0/8, its own subnet too,
via the router (``.254`` of its subnet), so a host has one ARP neighbour, the router (the kernel's ARP table
is shared by every namespace and holds 1024 entries by default: 50 hosts talking to each other directly
overflow it). The router forwards no multicast, so mDNS stays on each bridge.

A :class:`NatLab` is a "wan" bridge (10.x) with public hosts and routers, each router a namespace doing
Linux NAT (nftables MASQUERADE, optionally symmetric or with port forwards) for its own private LAN
(192.168.<k>.0/24): hosts behind NATs, for relay, AutoNAT and hole-punching tests (needs ``nft`` too:
:func:`require_nat`).

Everything is removed on exit, also when the test fails: processes are stopped (terminate, then
kill), loops are stopped, namespaces deleted. Each net has unique names. Needs root and ``ip``;
:func:`require_netns` skips the test with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ipaddress
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import pytest

from tests.helpers.nodeproc import stop_process

T = TypeVar("T")
N = TypeVar("N", bound="TestNet")

NAME_PREFIX = "mlt"
"""Namespace names: ``mlt-<pid>-<random>-br`` and ``mlt-<pid>-<random>-h<i>``."""
CMD_TIMEOUT = 10.0
"""Bound on each ``ip`` command."""
STOP_TIMEOUT = 5.0
"""Bound on stopping one event loop before it is abandoned."""
MAX_HOSTS = 250
NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_counter = itertools.count()
_available: str | bool | None = False  # False: not probed yet; None: available; str: reason


class NetnsError(RuntimeError):
    """An ``ip`` command failed while building or tearing down a test net."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def unavailable_reason() -> str | None:
    """Why namespaces cannot be created here, or None when they can (probed once)."""
    global _available
    if _available is not False:
        return _available  # type: ignore[return-value]
    reason: str | None = None
    if not sys.platform.startswith("linux"):
        reason = "network namespaces need Linux"
    elif os.geteuid() != 0:
        reason = "network namespaces need root"
    elif shutil.which("ip") is None:
        reason = "the ip command (iproute2) is not installed"
    else:
        probe = f"{NAME_PREFIX}-{os.getpid()}-probe{secrets.token_hex(3)}"
        try:
            _ip("netns", "add", probe)
        except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
            reason = f"cannot create a network namespace: {exc}"
        else:
            with contextlib.suppress(NetnsError, OSError, subprocess.TimeoutExpired):
                _ip("netns", "del", probe)
    _available = reason
    return reason


def require_netns() -> None:
    """Skip the calling test when namespaces cannot be created."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def our_namespaces() -> list[str]:
    """Namespaces whose names this helper makes (any run)."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{NAME_PREFIX}-")]


def remove_stale() -> None:
    """Delete namespaces left by earlier runs of this helper whose process is gone."""
    for name in our_namespaces():
        try:
            pid = int(name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _ip("netns", "del", name, check=False)
        except PermissionError:
            pass


# ---- threads inside a namespace ---------------------------------------------------------------


def _netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def enter_netns(name: str) -> None:
    """Move the calling thread into namespace ``name``; raises unless it verifiably got there."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)
    here = _netns_inode(f"/proc/self/task/{threading.get_native_id()}/ns/net")
    if here != _netns_inode(str(NETNS_DIR / name)) or here == _netns_inode(f"/proc/{os.getpid()}/ns/net"):
        raise OSError(f"thread did not enter network namespace {name}")


class NetnsLoop:
    """An asyncio event loop running on a thread inside a network namespace.

    ``await netloop.run(coro)`` runs ``coro`` there and returns its result to the caller's loop.
    Objects made there (hosts, sockets) must be used there: pass them back into ``run``.
    """

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"netns-{netns}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(STOP_TIMEOUT):
            raise NetnsError(f"event loop in {self.netns} did not start")
        if self._error is not None:
            raise NetnsError(f"cannot run in {self.netns}: {self._error}")

    def _main(self) -> None:
        try:
            enter_netns(self.netns)
            loop = asyncio.new_event_loop()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self.loop = loop
        asyncio.set_event_loop(loop)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self.loop is None or self.loop.is_closed():
            coro.close()
            raise NetnsError(f"event loop in {self.netns} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on this loop; cancels it there when the wait times out or is cancelled."""
        fut = self.submit(coro)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        finally:
            fut.cancel()

    def call_soon(self, fn: Any, *args: Any) -> None:
        """Schedule a plain function on this loop (thread-safe)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        """Cancel what still runs there, close the loop, join the thread (bounded)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():
            raise NetnsError(f"event loop thread in {self.netns} did not stop")


class Inbox:
    """Events ``(kind, a, b)`` pushed from any thread, awaited on the test's loop (no polling, no sleeps).

    Make it on the test's loop; namespace loops call :meth:`push`.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.items: list[tuple[str, Any, Any]] = []
        self._changed = asyncio.Event()

    def push(self, kind: str, a: Any = None, b: Any = None) -> None:
        self._loop.call_soon_threadsafe(self._add, (kind, a, b))

    def _add(self, item: tuple[str, Any, Any]) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait_for(self, check: Callable[[list[tuple[str, Any, Any]]], Any], timeout: float) -> Any:
        async def wait() -> Any:
            while not (result := check(self.items)):
                self._changed.clear()
                await self._changed.wait()
            return result

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"not seen within {timeout} s; events: {self.items!r}") from None

    def found(self, kind: str = "peer") -> dict[Any, Any]:
        """``{a: b}`` of the events of one kind (the latest wins)."""
        return {a: b for k, a, b in self.items if k == kind}


# ---- the net ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetnsHost:
    """One test host: its namespace and its address on the bridge."""

    index: int
    netns: str
    ip: str

    def argv(self, *cmd: str) -> list[str]:
        """``cmd`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *cmd]


class TestNet:
    """A bridge and ``n`` hosts, each in its own namespace. A (sync or async) context manager."""

    __test__ = False  # not a pytest test class

    def __init__(self, n: int, *, subnet: str | None = None) -> None:
        if not 1 <= n <= MAX_HOSTS:
            raise ValueError(f"1 to {MAX_HOSTS} hosts")
        tag = f"{NAME_PREFIX}-{os.getpid()}-{next(_counter)}{secrets.token_hex(2)}"
        if subnet is None:
            subnet = f"10.{secrets.randbelow(200) + 50}.{secrets.randbelow(256)}.0/24"
        self.network = ipaddress.IPv4Network(subnet)
        if not self.network.subnet_of(ipaddress.IPv4Network("10.0.0.0/8")):
            raise ValueError("test nets use 10.0.0.0/8 only")
        self.bridge_netns = f"{tag}-br"
        self.hosts = [
            NetnsHost(i, f"{tag}-h{i}", str(self.network.network_address + i + 1)) for i in range(n)
        ]
        self._created: list[str] = []
        self._procs: list[asyncio.subprocess.Process] = []
        self._loops: list[NetnsLoop] = []

    # ---- building and removing ----

    def create(self) -> None:
        try:
            remove_stale()
            _ip("netns", "add", self.bridge_netns)
            self._created.append(self.bridge_netns)
            br = ("-n", self.bridge_netns)
            _ip(*br, "link", "add", "br0", "type", "bridge")
            _ip(*br, "link", "set", "br0", "up")
            for host in self.hosts:
                _ip("netns", "add", host.netns)
                self._created.append(host.netns)
                port = f"p{host.index}"
                h = ("-n", host.netns)
                _ip(*br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
                _ip(*br, "link", "set", port, "master", "br0", "up")
                _ip(*h, "link", "set", "lo", "up")
                _ip(*h, "addr", "add", f"{host.ip}/{self.network.prefixlen}", "dev", "eth0")
                _ip(*h, "link", "set", "eth0", "multicast", "on", "up")
                _ip(*h, "route", "add", "224.0.0.0/4", "dev", "eth0")
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        """Delete every namespace this net created (bounded, never raises for a missing one)."""
        errors: list[str] = []
        for name in reversed(self._created):
            pids = _ip("netns", "pids", name, check=False).stdout.split()
            for pid in pids:  # only processes living in our own namespaces
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            proc = _ip("netns", "del", name, check=False)
            if proc.returncode != 0 and name in our_namespaces():
                errors.append(f"{name}: {proc.stderr.strip()}")
        self._created.clear()
        if errors:
            raise NetnsError("could not delete: " + "; ".join(errors))

    def __enter__(self: N) -> N:
        self.create()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop_loops()
        self.destroy()

    async def __aenter__(self: N) -> N:
        await asyncio.to_thread(self.create)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.stop_processes()
        finally:
            try:
                await asyncio.to_thread(self._stop_loops)
            finally:
                await asyncio.to_thread(self.destroy)

    # ---- running code inside ----

    def loop(self, host: NetnsHost | int) -> NetnsLoop:
        """Start an event loop thread inside ``host``'s namespace (stopped on exit)."""
        h = self.hosts[host] if isinstance(host, int) else host
        nl = NetnsLoop(h.netns)
        self._loops.append(nl)
        nl.start()
        return nl

    async def spawn(self, host: NetnsHost | int, *argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
        """Start ``argv`` inside ``host``'s namespace (stopped on exit). kwargs go to the subprocess."""
        h = self.hosts[host] if isinstance(host, int) else host
        proc = await asyncio.create_subprocess_exec(*h.argv(*argv), **kwargs)
        self._procs.append(proc)
        return proc

    async def stop_processes(self) -> None:
        """Terminate (then kill) every process started with :meth:`spawn`, and reap them."""
        procs, self._procs = self._procs, []
        await asyncio.gather(*(stop_process(p) for p in procs))

    def _stop_loops(self) -> None:
        loops, self._loops = self._loops, []
        errors = []
        for nl in loops:
            try:
                nl.stop()
            except NetnsError as exc:
                errors.append(str(exc))
        if errors:
            raise NetnsError("; ".join(errors))


class RoutedNet(TestNet):
    """Hosts on several bridges (``sizes[k]`` hosts on bridge ``k``, subnet ``10.<a>.<b + k>.0/24``), joined
    by a router namespace that forwards IPv4 (not multicast) between them; all unicast goes through the
    router, also between hosts of one bridge (see the module's docstring). ``hosts`` lists them all, bridge
    by bridge; ``bridges[k]`` those of bridge ``k``. A (sync or async) context manager, as TestNet."""

    __test__ = False

    ROUTER_HOST = 254
    """The router's address on each bridge: ``.254``."""

    def __init__(self, sizes: list[int] | tuple[int, ...] = (25, 25)) -> None:
        if not sizes or not all(1 <= n < self.ROUTER_HOST - 1 for n in sizes) or sum(sizes) > MAX_HOSTS:
            raise ValueError(f"1 to {self.ROUTER_HOST - 2} hosts a bridge, {MAX_HOSTS} in all")
        a, b = secrets.randbelow(200) + 50, secrets.randbelow(256 - len(sizes))
        super().__init__(1, subnet=f"10.{a}.{b}.0/24")
        tag = self.bridge_netns.removesuffix("-br")
        self.networks = [ipaddress.IPv4Network(f"10.{a}.{b + k}.0/24") for k in range(len(sizes))]
        self.router_netns = f"{tag}-rt"
        self.bridge_namespaces = [f"{tag}-br{k}" for k in range(len(sizes))]
        self.bridges: list[list[NetnsHost]] = []
        self.hosts = []
        for n, network in zip(sizes, self.networks, strict=True):
            segment = [
                NetnsHost(
                    len(self.hosts) + i, f"{tag}-h{len(self.hosts) + i}", str(network.network_address + i + 1)
                )
                for i in range(n)
            ]
            self.bridges.append(segment)
            self.hosts.extend(segment)

    def router_ip(self, bridge: int) -> str:
        """The router's address on bridge ``bridge``."""
        return str(self.networks[bridge].network_address + self.ROUTER_HOST)

    def create(self) -> None:
        try:
            remove_stale()
            _ip("netns", "add", self.router_netns)
            self._created.append(self.router_netns)
            rt = ("-n", self.router_netns)
            _ip(*rt, "link", "set", "lo", "up")
            for k, (brns, network, segment) in enumerate(
                zip(self.bridge_namespaces, self.networks, self.bridges, strict=True)
            ):
                _ip("netns", "add", brns)
                self._created.append(brns)
                br = ("-n", brns)
                _ip(*br, "link", "add", "br0", "type", "bridge")
                _ip(*br, "link", "set", "br0", "up")
                _ip(
                    *br,
                    "link",
                    "add",
                    "up0",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    f"eth{k}",
                    "netns",
                    self.router_netns,
                )
                _ip(*br, "link", "set", "up0", "master", "br0", "up")
                _ip(*rt, "addr", "add", f"{self.router_ip(k)}/{network.prefixlen}", "dev", f"eth{k}")
                _ip(*rt, "link", "set", f"eth{k}", "up")
                for host in segment:
                    _ip("netns", "add", host.netns)
                    self._created.append(host.netns)
                    port = f"p{host.index}"
                    h = ("-n", host.netns)
                    _ip(*br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
                    _ip(*br, "link", "set", port, "master", "br0", "up")
                    _ip(*h, "link", "set", "lo", "up")
                    _ip(*h, "addr", "add", f"{host.ip}/{network.prefixlen}", "dev", "eth0", "noprefixroute")
                    _ip(*h, "link", "set", "eth0", "multicast", "on", "up")
                    _ip(*h, "route", "add", "224.0.0.0/4", "dev", "eth0")
                    _ip(*h, "route", "add", f"{self.router_ip(k)}/32", "dev", "eth0")
                    _ip(*h, "route", "add", "10.0.0.0/8", "via", self.router_ip(k), "dev", "eth0")
            forward = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.router_netns,
                    "sh",
                    "-c",
                    # forward, also back out of the port it came in by (hosts of one bridge) without
                    # telling the sender to go direct (an ICMP redirect would bring their ARP entries back)
                    "echo 1 > /proc/sys/net/ipv4/ip_forward && "
                    "for f in /proc/sys/net/ipv4/conf/*/send_redirects; do echo 0 > $f; done",
                ],
                capture_output=True,
                text=True,
                timeout=CMD_TIMEOUT,
                check=False,
            )
            if forward.returncode != 0:
                raise NetnsError(
                    f"cannot turn on forwarding in {self.router_netns}: {forward.stderr.strip()}"
                )
        except BaseException:
            self.destroy()
            raise


# ---- a lab with NAT routers -------------------------------------------------------------------


def nat_unavailable_reason() -> str | None:
    """Why a :class:`NatLab` cannot be built here (namespaces, or ``nft`` missing), or None."""
    reason = unavailable_reason()
    if reason is None and shutil.which("nft") is None:
        reason = "the nft command (nftables) is not installed"
    return reason


def require_nat() -> None:
    """Skip the calling test when a :class:`NatLab` cannot be built."""
    reason = nat_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def _in_netns(netns: str, *cmd: str, stdin: str | None = None) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, *cmd],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)} in {netns}: {proc.stderr.strip() or proc.returncode}")


@dataclass(frozen=True)
class PortForward:
    """A router's port forward (DNAT): TCP and UDP to ``router_wan_ip(lan):wan_port`` go to
    ``lans[lan][host]`` port ``port`` (``wan_port`` defaults to ``port``)."""

    lan: int
    host: int
    port: int
    wan_port: int | None = None


class NatLab(TestNet):
    """A "wan" and private LANs behind NAT routers, each part in its own namespace.

    The wan is a bridge on ``10.<a>.<b>.0/24``: ``wan_hosts`` public hosts (``lab.wan[i]``, ``.<i + 1>``)
    and one leg of each router (``router_wan_ip(k)``, ``.<201 + k>``). Router ``k`` has LAN ``k``, a
    bridge on ``192.168.<k>.0/24`` (router ``.254``) with ``lans[k]`` private hosts (``lab.lans[k][j]``,
    ``.<j + 1>``) whose default route is the router. Each router forwards IPv4 (no multicast, so mDNS
    stays on each LAN) and does what a home router does, with nftables: MASQUERADE of its LAN behind its
    wan address (the source port kept when free: endpoint-independent mapping, as hole punching needs),
    or, when ``symmetric[k]``, ``fully-random`` (a random source port for each new connection: hole
    punching cannot work); forwards to its LAN only replies (conntrack) and its port forwards (``forwards``);
    drops unsolicited packets to itself from the wan (no RST, no ICMP: a stealth firewall, so an early
    SYN of a simultaneous open does not kill the dialer's attempt). Wan hosts have no route to the LANs.

    ``hosts`` lists them all (wan first, then LAN by LAN); ``loop``, ``spawn`` and teardown as TestNet
    (the rules live in the routers' namespaces and go with them).
    """

    __test__ = False

    ROUTER_WAN_BASE = 201
    ROUTER_LAN_HOST = 254
    MAX_ROUTERS = 50
    MAX_WAN_HOSTS = 200

    def __init__(
        self,
        wan_hosts: int = 1,
        lans: list[int] | tuple[int, ...] = (1, 1),
        *,
        symmetric: list[bool] | tuple[bool, ...] | None = None,
        forwards: list[PortForward] | tuple[PortForward, ...] = (),
    ) -> None:
        if not 0 <= wan_hosts <= self.MAX_WAN_HOSTS:
            raise ValueError(f"0 to {self.MAX_WAN_HOSTS} wan hosts")
        if not 1 <= len(lans) <= self.MAX_ROUTERS or not all(1 <= n < self.ROUTER_LAN_HOST - 1 for n in lans):
            raise ValueError(f"1 to {self.MAX_ROUTERS} LANs of 1 to {self.ROUTER_LAN_HOST - 2} hosts")
        if wan_hosts + sum(lans) > MAX_HOSTS:
            raise ValueError(f"{MAX_HOSTS} hosts in all")
        sym = tuple(symmetric) if symmetric is not None else (False,) * len(lans)
        if len(sym) != len(lans):
            raise ValueError("one symmetric flag per LAN")
        for fw in forwards:
            if not (0 <= fw.lan < len(lans) and 0 <= fw.host < lans[fw.lan]):
                raise ValueError(f"{fw}: no such LAN host")
            if not all(1 <= p <= 65535 for p in (fw.port, fw.wan_port or fw.port)):
                raise ValueError(f"{fw}: ports are 1 to 65535")
        super().__init__(1)
        tag = self.bridge_netns.removesuffix("-br")
        self.tag = tag
        self.wan_network = self.network
        self.bridge_netns = f"{tag}-wan"
        self.symmetric = sym
        self.forwards = tuple(forwards)
        self.router_namespaces = [f"{tag}-r{k}" for k in range(len(lans))]
        self.lan_bridge_namespaces = [f"{tag}-r{k}lan" for k in range(len(lans))]
        self.lan_networks = [ipaddress.IPv4Network(f"192.168.{k}.0/24") for k in range(len(lans))]
        base = self.wan_network.network_address
        self.wan = [NetnsHost(i, f"{tag}-w{i}", str(base + i + 1)) for i in range(wan_hosts)]
        self.hosts = list(self.wan)
        self.lans: list[list[NetnsHost]] = []
        for k, (n, network) in enumerate(zip(lans, self.lan_networks, strict=True)):
            lan = [
                NetnsHost(len(self.hosts) + j, f"{tag}-r{k}h{j}", str(network.network_address + j + 1))
                for j in range(n)
            ]
            self.lans.append(lan)
            self.hosts.extend(lan)

    def router_wan_ip(self, lan: int) -> str:
        """Router ``lan``'s address on the wan: the source address wan hosts see from its LAN."""
        return str(self.wan_network.network_address + self.ROUTER_WAN_BASE + lan)

    def router_lan_ip(self, lan: int) -> str:
        """Router ``lan``'s address on its LAN: the default route of its hosts."""
        return str(self.lan_networks[lan].network_address + self.ROUTER_LAN_HOST)

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _add_bridge(self, name: str) -> None:
        self._add_netns(name)
        _ip("-n", name, "link", "add", "br0", "type", "bridge")
        _ip("-n", name, "link", "set", "br0", "up")

    def _add_host(self, bridge_netns: str, port: str, host: NetnsHost, prefixlen: int) -> None:
        """``host``'s namespace, its ``eth0`` wired to port ``port`` of the bridge in ``bridge_netns``."""
        self._add_netns(host.netns)
        br, h = ("-n", bridge_netns), ("-n", host.netns)
        _ip(*br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip(*br, "link", "set", port, "master", "br0", "up")
        _ip(*h, "addr", "add", f"{host.ip}/{prefixlen}", "dev", "eth0")
        _ip(*h, "link", "set", "eth0", "multicast", "on", "up")
        _ip(*h, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def _ruleset(self, k: int) -> str:
        lan = self.lan_networks[k]
        masq = "masquerade fully-random" if self.symmetric[k] else "masquerade"
        dnat = []
        for fw in self.forwards:
            if fw.lan == k:
                to = f"{self.lans[k][fw.host].ip}:{fw.port}"
                for proto in ("tcp", "udp"):
                    dnat.append(f'iifname "wan0" {proto} dport {fw.wan_port or fw.port} dnat to {to}')
        nl = "\n    "
        return f"""
table ip natlab {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    {nl.join(dnat)}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan0" ip saddr {lan} {masq}
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan0" oifname "wan0" accept
    iifname "wan0" oifname "lan0" ct status dnat accept
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "wan0" ct state established,related accept
    iifname "wan0" drop
  }}
}}
"""

    def create(self) -> None:
        try:
            remove_stale()
            wan_prefix = self.wan_network.prefixlen
            self._add_bridge(self.bridge_netns)
            for host in self.wan:
                self._add_host(self.bridge_netns, f"w{host.index}", host, wan_prefix)
            for k, (rt, lanbr, lan) in enumerate(
                zip(self.router_namespaces, self.lan_bridge_namespaces, self.lans, strict=True)
            ):
                self._add_netns(rt)
                r = ("-n", rt)
                _ip(
                    "-n",
                    self.bridge_netns,
                    "link",
                    "add",
                    f"r{k}",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "wan0",
                    "netns",
                    rt,
                )
                _ip("-n", self.bridge_netns, "link", "set", f"r{k}", "master", "br0", "up")
                _ip(*r, "addr", "add", f"{self.router_wan_ip(k)}/{wan_prefix}", "dev", "wan0")
                _ip(*r, "link", "set", "wan0", "up")
                self._add_bridge(lanbr)
                _ip("-n", lanbr, "link", "add", "up0", "type", "veth", "peer", "name", "lan0", "netns", rt)
                _ip("-n", lanbr, "link", "set", "up0", "master", "br0", "up")
                _ip(*r, "addr", "add", f"{self.router_lan_ip(k)}/24", "dev", "lan0")
                _ip(*r, "link", "set", "lan0", "up")
                for host in lan:
                    self._add_host(lanbr, f"p{host.index}", host, 24)
                    _ip(
                        "-n",
                        host.netns,
                        "route",
                        "add",
                        "default",
                        "via",
                        self.router_lan_ip(k),
                        "dev",
                        "eth0",
                    )
                _in_netns(rt, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
                _in_netns(rt, "nft", "-f", "-", stdin=self._ruleset(k))
        except BaseException:
            self.destroy()
            raise
