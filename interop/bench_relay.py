#!/usr/bin/env python3
"""R1 (bench/WORKLOADS.md): a circuit relay's CPU per relayed MiB, and time to first chunk through a relay
and after a DCUtR upgrade in the NAT lab.

    python interop/bench_relay.py                # R1a >= 256 MiB through each relay; R1b 5 rounds of 10 chats
    python interop/bench_relay.py --quick        # R1a >= 16 MiB; R1b 1 round of 3 chats

R1a, on 127.0.0.1: a relay process, mimirlite's (``python -m mimirlite relay --circuit-data 0
--circuit-duration 0``) then js-libp2p's (``nat-peer.mjs --relay-server --no-limit``,
@libp2p/circuit-relay-v2 3.1.7), and one pair of mimirlite peers in this process: a receiver holding a
reservation on the relay and a sender that dials its circuit address and pushes ``mib`` MiB in 64 KiB
writes on a stream, acknowledged by the receiver once all arrived, and again on a new stream until the
relay used ``min_cpu_s`` CPU seconds (its CPU time is counted in 10 ms ticks). The same peers (the same
code, the same inner Noise and yamux framing) for both relays, so both are handed the same bytes;
mimirlite's, because they are driven in-process (nat-peer.mjs moves data only through JSON-line commands,
hex-encoded) and they are not what is measured. Measured: the relay process's CPU seconds (user + system,
``/proc/<pid>/stat``, all its threads) and the wall time from the first write to the last ack, after an
untimed warm-up transfer on the same circuit; reported as relayed MiB per relay CPU second and MiB/s. CPU
seconds are a fair figure on a loaded machine, wall time is not.

R1b, in the NAT lab (tests/helpers/netns.py NatLab; needs root and nft, else skipped with the reason): a
mimirlite relay on the wan (RelayService, in this process on its namespace's thread), a MimirNode with the
echo model behind NAT A (a reservation on the relay, a HolePuncher), a MimirClient behind NAT B (its own
HolePuncher, answering). Each router's wan side delays what it sends by ``--delay-ms`` (``tc netem``), so
the round trip between A and B, relayed or direct, is twice that; when the kernel has no netem the lab runs
without it and says so. Each round: (1) a fresh client reaches the node through the relay with the node's
punching held back, and times ``chats`` chats to their first chunk; (2) another fresh client reaches it
through the relay and the node punches at once (as ``mimirlite node`` does): the time from the node taking
the relayed connection (RelayClient.on_relayed) to HolePuncher.punch's success; then the client, once
its connection to the node is direct, times ``chats`` chats to their first chunk, and pings the node
(the round trip the target is counted in).

Prints one JSON line, ``{"event": "result", "values": {...}}``; interop/bench.py runs this as its ``relay``
section. Every process, namespace and thread is stopped however the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from benchlib import cpu_seconds, stop_group  # noqa: E402
from jsnat import JsNatPeer  # noqa: E402

from mimirlite import Host  # noqa: E402
from mimirlite.net.stream import Stream  # noqa: E402
from mimirlite.protocols.relay.client import RelayClient  # noqa: E402

LOCAL = "/ip4/127.0.0.1/tcp/0"
SINK = "/bench/relay-sink/1.0.0"
CHUNK = 64 * 1024
STEP_TIMEOUT = 60.0
LAB_PORT = 4001
FULL: dict[str, Any] = {"mib": 256, "warmup_mib": 32, "min_cpu_s": 1.0, "rounds": 5, "chats": 10}
QUICK: dict[str, Any] = {"mib": 16, "warmup_mib": 4, "min_cpu_s": 0.2, "rounds": 1, "chats": 3}
MAX_PUSHES = 64
"""R1a pushes ``mib`` MiB again until the relay used ``min_cpu_s`` (its CPU time comes in 10 ms ticks)."""


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- R1a: relay CPU per MiB (loopback)


@contextlib.asynccontextmanager
async def mimirlite_relay() -> AsyncIterator[tuple[str, int]]:
    """``python -m mimirlite relay`` with no circuit caps on 127.0.0.1: (its address, its pid)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    cmd = [
        sys.executable,
        "-m",
        "mimirlite",
        "relay",
        "--no-dht",
        "--no-mdns",
        "--listen",
        LOCAL,
        "--circuit-data",
        "0",
        "--circuit-duration",
        "0",
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
        cwd=str(ROOT),
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None

        async def addr() -> str:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                if line.startswith(b"Relaying on:"):
                    return (await proc.stdout.readline()).decode().strip()
            raise RuntimeError(f"mimirlite relay exited (code {await proc.wait()})")

        yield await asyncio.wait_for(addr(), STEP_TIMEOUT), proc.pid
    finally:
        await stop_group(proc, stdin_wait=None, term_wait=5.0)


@contextlib.asynccontextmanager
async def js_relay() -> AsyncIterator[tuple[str, int]]:
    """nat-peer.mjs serving the hop protocol with no limit on 127.0.0.1: (its address, its pid)."""
    async with await JsNatPeer.start(relay_server=True, no_limit=True) as peer:
        yield peer.addr, peer.pid


async def sink(stream: Stream) -> None:
    """Read to EOF; answer with the byte count (8 bytes, big-endian)."""
    total = 0
    while data := await stream.read():
        total += len(data)
    await stream.write(total.to_bytes(8, "big"))
    await stream.close_write()


async def push(sender: Host, circuit: str, size: int) -> float:
    """Write ``size`` bytes to the sink at ``circuit`` in 64 KiB writes; seconds from the first write to
    the acknowledgement."""
    stream = await sender.new_stream(circuit, SINK)
    block = os.urandom(CHUNK)
    t0 = time.perf_counter()
    left = size
    while left > 0:
        await stream.write(block if left >= CHUNK else block[:left])
        left -= CHUNK
    await stream.close_write()
    ack = await stream.read_all()
    took = time.perf_counter() - t0
    if int.from_bytes(ack, "big") != size:
        raise RuntimeError(f"the receiver got {int.from_bytes(ack, 'big')} of {size} bytes")
    return took


async def through(
    relay: Callable[[], contextlib.AbstractAsyncContextManager[tuple[str, int]]],
    mib: int,
    warmup_mib: int,
    min_cpu_s: float,
) -> dict[str, float]:
    """Transfers of ``mib`` MiB through ``relay``, one after another on one circuit, until the relay used
    ``min_cpu_s`` CPU seconds: the MiB relayed, the relay's CPU seconds and the wall time."""
    async with (
        relay() as (relay_addr, pid),
        Host(listen=[LOCAL]) as receiver,
        RelayClient(receiver, [relay_addr]) as reserved,
        Host() as sender,
        RelayClient(sender),
    ):
        receiver.set_handler(SINK, sink)
        if not reserved.circuit_addrs:
            raise RuntimeError(f"no reservation on the relay at {relay_addr}")
        [circuit] = reserved.circuit_addrs
        await asyncio.wait_for(push(sender, circuit, warmup_mib << 20), STEP_TIMEOUT)
        cpu0 = cpu_seconds(pid)
        wall = cpu = 0.0
        pushed = 0
        while cpu < min_cpu_s and pushed < MAX_PUSHES * mib:
            wall += await asyncio.wait_for(push(sender, circuit, mib << 20), STEP_TIMEOUT * 5)
            pushed += mib
            cpu = cpu_seconds(pid) - cpu0
        if not sender.connections[receiver.peer_id].relayed:
            raise RuntimeError("the sender reached the receiver directly, not through the relay")
    if cpu < min_cpu_s:
        raise RuntimeError(f"the relay used {cpu:g} CPU seconds for {pushed} MiB: too little to measure")
    return {
        "mib": pushed,
        "cpu_s": cpu,
        "wall_s": wall,
        "mib_per_cpu_s": pushed / cpu,
        "mib_s": pushed / wall,
    }


async def relay_cpu(mib: int, warmup_mib: int, min_cpu_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, relay in (("mimirlite", mimirlite_relay), ("js-libp2p", js_relay)):
        try:
            out[name] = await through(relay, mib, warmup_mib, min_cpu_s)
        except Exception as exc:  # reported in the table, the other relay still runs
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


# ---------------------------------------------------------------- R1b: the NAT lab


def add_delay(netns: str, dev: str, ms: float) -> str | None:
    """``tc netem delay`` on ``dev`` in ``netns``; None when set, else why not."""
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "tc",
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "netem",
            "delay",
            f"{ms:g}ms",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"tc exited {proc.returncode}")


async def nat_lab(rounds: int, chats: int, delay_ms: float) -> dict[str, Any]:
    """R1b: time to first chunk through the relay and once direct, and the DCUtR time, in the NAT lab."""
    from tests.helpers.netns import Inbox, NatLab, nat_unavailable_reason

    why = nat_unavailable_reason()
    if why is not None:
        return {"skipped": f"R1b needs a NAT lab: {why}"}
    from mimirlite.mimir import EchoBackend, MimirClient, MimirNode
    from mimirlite.protocols import identify_service, start_services
    from mimirlite.protocols.autonat.service import AutoNat, AutonatConfig
    from mimirlite.protocols.autonat.verdict import DialPolicyConfig, TrackerConfig
    from mimirlite.protocols.dcutr.holepunch import HolePunchConfig
    from mimirlite.protocols.dcutr.service import HolePuncher
    from mimirlite.protocols.ping import Ping
    from mimirlite.protocols.relay.service import RelayService

    lab_autonat = AutonatConfig(
        policy=DialPolicyConfig(allow_private=True), tracker=TrackerConfig(required=1)
    )
    punch_config = HolePunchConfig(allow_private=True)  # the lab's wan is a private range
    short = [{"role": "user", "content": "hello there"}]
    result: dict[str, Any] = {
        "delay_ms": delay_ms,
        "ttfc_relayed_ms": [],
        "dcutr_ms": [],
        "ttfc_direct_ms": [],
        "rtt_ms": [],
    }

    async with NatLab(wan_hosts=1, lans=[1, 1]) as lab, contextlib.AsyncExitStack() as stack:
        (wan,), ((node_host,), (client_host,)) = lab.wan, lab.lans
        for router in lab.router_namespaces:
            failed = await asyncio.to_thread(add_delay, router, "wan0", delay_ms) if delay_ms else None
            if failed is not None:
                result["delay_ms"] = 0
                result["no_delay"] = f"no delay added: tc netem failed: {failed}"
                break
        relay_loop, node_loop, client_loop = lab.loop(wan), lab.loop(node_host), lab.loop(client_host)

        async def on_host(listen: str) -> tuple[Host, AutoNat]:
            host = Host(listen=[listen])
            await host.start()
            start_services(host)
            identify = identify_service(host)
            assert identify is not None
            autonat = AutoNat(host, identify, lab_autonat)
            await autonat.start()
            return host, autonat

        async def off_host(host: Host, autonat: AutoNat, *services: Any) -> None:
            for service in services:
                await service.stop()
            await autonat.stop()
            await host.stop()

        # the relay
        relay_host, relay_autonat = await relay_loop.run(
            on_host(f"/ip4/{wan.ip}/tcp/{LAB_PORT}"), STEP_TIMEOUT
        )
        relay = RelayService(relay_host)
        stack.push_async_callback(relay_loop.run, off_host(relay_host, relay_autonat, relay), STEP_TIMEOUT)
        await relay_loop.run(relay.start(), STEP_TIMEOUT)
        relay_addr = relay_host.listen_addrs[0]

        # the node behind NAT A: a reservation, the echo model, punching to whoever comes through the relay
        inbox = Inbox()
        punching = [False]

        async def node_up() -> tuple[Host, AutoNat, list[Any]]:
            host, autonat = await on_host(f"/ip4/0.0.0.0/tcp/{LAB_PORT}")
            node = MimirNode(host, EchoBackend(), dht=False)
            await node.start()
            client = RelayClient(host, [relay_addr])
            await client.start()
            await autonat.identify.identify(host.connections[relay_host.peer_id])
            puncher = HolePuncher(host, autonat.candidate_addrs, punch_config)
            await puncher.start()

            async def punch(conn: Any, opened: float) -> None:
                try:
                    ok = await puncher.punch(conn)
                except Exception as exc:  # reported, not raised on the node's loop
                    inbox.push("punched", False, f"{type(exc).__name__}: {exc}")
                    return
                inbox.push("punched", ok, (asyncio.get_running_loop().time() - opened) * 1000)

            def on_relayed(conn: Any) -> None:
                opened = asyncio.get_running_loop().time()
                inbox.push("relayed", conn.remote_peer)
                if punching[0]:
                    host.spawn(punch(conn, opened), "bench-dcutr")

            client.on_relayed.append(on_relayed)
            if not client.circuit_addrs:
                raise RuntimeError("the node has no reservation on the relay")
            return host, autonat, [puncher, client, node]

        node, node_autonat, node_services = await node_loop.run(node_up(), STEP_TIMEOUT)
        stack.push_async_callback(node_loop.run, off_host(node, node_autonat, *node_services), STEP_TIMEOUT)
        circuit = f"{relay_addr}/p2p-circuit/p2p/{node.peer_id}"

        async def client_round(port: int, direct: bool) -> dict[str, Any]:
            """A fresh client behind NAT B reaches the node through the relay; its chats' first chunks."""
            host, autonat = await on_host(f"/ip4/0.0.0.0/tcp/{port}")
            services: list[Any] = []
            try:
                services.append(await _started(RelayClient(host)))
                await autonat.identify.identify(await host.dial(relay_addr))
                services.append(await _started(HolePuncher(host, autonat.candidate_addrs, punch_config)))
                client = MimirClient(peers=[circuit], host=host, mdns=False, dht=False)
                await client.start()
                services.insert(0, client)
                if not client.nodes:
                    raise RuntimeError("the node could not be reached through the relay")
                peer = next(iter(client.nodes))

                def relayed() -> bool:
                    return host.connections[peer].relayed

                out: dict[str, Any] = {}
                if direct:
                    deadline = time.monotonic() + STEP_TIMEOUT
                    while relayed():
                        if time.monotonic() > deadline:
                            raise RuntimeError("no direct connection to the node")
                        await asyncio.sleep(0.005)  # the punch runs on the node's side
                    out["rtt_ms"] = statistics.median(await Ping(host, serve=False).ping_many(peer, 5)) * 1000
                elif not relayed():
                    raise RuntimeError("the client reached the node directly, not through the relay")
                samples = []
                for _ in range(chats):
                    t0 = time.perf_counter()
                    chat = client.chat(short)
                    await chat.__anext__()
                    samples.append((time.perf_counter() - t0) * 1000)
                    async for _chunk in chat:
                        pass
                if relayed() is direct:
                    raise RuntimeError("the connection changed kind during the chats")
                out["ttfc_ms"] = statistics.median(samples)
                return out
            finally:
                await off_host(host, autonat, *services)

        port = LAB_PORT + 1
        for _ in range(rounds):
            punching[0] = False
            got = await client_loop.run(client_round(port, direct=False), STEP_TIMEOUT)
            result["ttfc_relayed_ms"].append(got["ttfc_ms"])
            punching[0] = True
            seen = len(punches(inbox.items))
            got = await client_loop.run(client_round(port + 1, direct=True), STEP_TIMEOUT)
            port += 2
            _, ok, ms = (await inbox.wait_for(functools.partial(punches, skip=seen), STEP_TIMEOUT))[0]
            if not ok:
                raise RuntimeError(f"the hole punch failed: {ms}")
            result["dcutr_ms"].append(ms)
            result["ttfc_direct_ms"].append(got["ttfc_ms"])
            result["rtt_ms"].append(got["rtt_ms"])
    return result


def punches(items: list[tuple[str, Any, Any]], skip: int = 0) -> list[tuple[str, Any, Any]]:
    """The node's hole punches so far, but the first ``skip``: ``("punched", ok, ms or why not)``."""
    return [i for i in items if i[0] == "punched"][skip:]


async def _started(service: Any) -> Any:
    await service.start()
    return service


# ---------------------------------------------------------------- main


async def guarded(name: str, run: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    try:
        return await run
    except Exception as exc:  # one line in the table says why
        print(f"{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"}


async def amain(args: argparse.Namespace) -> int:
    sizes = dict(QUICK if args.quick else FULL)
    for key in sizes:
        if getattr(args, key, None):
            sizes[key] = getattr(args, key)
    values: dict[str, Any] = {"sizes": sizes}
    if "a" in args.parts:
        values["cpu"] = await guarded("R1a", relay_cpu(sizes["mib"], sizes["warmup_mib"], sizes["min_cpu_s"]))
    if "b" in args.parts:
        values["lab"] = await guarded("R1b", nat_lab(sizes["rounds"], sizes["chats"], args.delay_ms))
        for note in (values["lab"].get("skipped"), values["lab"].get("no_delay")):
            if note:
                print(note, file=sys.stderr, flush=True)
    emit({"event": "result", "values": values})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="seconds: small sizes")
    parser.add_argument("--mib", type=int, help="R1a: MiB a push (256; --quick 16)")
    parser.add_argument("--warmup-mib", dest="warmup_mib", type=int, help="R1a: untimed MiB first (32; 4)")
    parser.add_argument(
        "--min-cpu-s", dest="min_cpu_s", type=float, help="R1a: push until the relay used this (1.0; 0.2)"
    )
    parser.add_argument("--rounds", type=int, help="R1b: rounds, each a relayed and a punched client (5; 1)")
    parser.add_argument("--chats", type=int, help="R1b: chats timed per client (10; 3)")
    parser.add_argument(
        "--delay-ms",
        dest="delay_ms",
        type=float,
        default=10.0,
        help="R1b: delay each NAT router adds to what it sends to the wan (10: a 20 ms RTT)",
    )
    parser.add_argument("--parts", default="ab", help="a: R1a, b: R1b (default both)")
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
