#!/usr/bin/env python3
"""D1 (bench/WORKLOADS.md): DHT lookups in a 50-peer DHT, and a DHT server's memory per provider record.

    python interop/bench_dht.py                  # 50 peers, 20 lookups per searcher, 10,000 records
    python interop/bench_dht.py --quick          # 12 peers, 4 lookups, 1,000 records

All on 127.0.0.1, the LAN DHT (``/ipfs/lan/kad/1.0.0``). The network: mimirlite DHT servers in two worker
processes of this script and @libp2p/kad-dht 14.2.0 servers (``kad-peer.mjs``, a fifth of the peers), each
joined through one bootstrap peer (the first mimirlite server). For each trial one peer of the network
(mimirlite and JS in turn) provides a fresh key; then each searcher, mimirlite's and kad-dht's, started
fresh in client mode with that one bootstrap peer and waited for until the peer is in its routing table,
looks the key up; what is timed is the lookup, until the first provider is known. The searchers take turns
going first. RSS: one DHT server process (mimirlite, then kad-dht) is sent 10,000 ADD_PROVIDER messages
for distinct keys by one peer over the wire; the growth of its RSS is reported.

Prints one JSON line, ``{"event": "result", "values": {...}}``; interop/bench.py runs this as its ``dht``
section. Every process is stopped (stdin closed, then SIGTERM, then SIGKILL) however the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from benchlib import rss_mib  # noqa: E402
from jskad import JsKadPeer  # noqa: E402

from mimirlite import Host  # noqa: E402
from mimirlite.mimir.models import SHA2_256, name_cid  # noqa: E402
from mimirlite.protocols import identify_service, start_services  # noqa: E402
from mimirlite.protocols.kad.messages import KadMessage, MessageType, PeerInfo, encode_message  # noqa: E402
from mimirlite.protocols.kad.service import LAN_KAD_PROTOCOL, DhtConfig, KadDht  # noqa: E402
from mimirlite.wire import lp  # noqa: E402
from mimirlite.wire.multiaddr import Multiaddr  # noqa: E402

LOCAL = "/ip4/127.0.0.1/tcp/0"
STEP_TIMEOUT = 60.0


def key_of(name: str) -> tuple[bytes, str]:
    """A model name's DHT key and CID (the name's own CID, as mimirlite.mimir.models computes it)."""
    return bytes((SHA2_256, 32)) + hashlib.sha256(name.encode()).digest(), name_cid(name)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- worker: mimirlite DHT servers


async def serve(count: int, bootstrap: str | None, store: bool) -> None:
    """``count`` DHT servers in this process; JSON-line commands on stdin: ``provide``, ``sizes``, ``rss``."""
    config = DhtConfig(add_provider_per_minute=10**9, max_requests_per_stream=10**9) if store else None
    async with contextlib.AsyncExitStack() as stack:
        dhts: list[KadDht] = []
        for _ in range(count):
            host = await stack.enter_async_context(Host(listen=[LOCAL]))
            start_services(host)
            identify = identify_service(host)
            assert identify is not None
            dhts.append(await stack.enter_async_context(KadDht(host, identify, config=config)))
        join = bootstrap or dhts[0].host.listen_addrs[0]  # the first worker's peers join through its first
        for d in dhts:
            if d.host.listen_addrs[0] != join:
                await d.host.dial(join)
        emit({"event": "ready", "addrs": [d.host.listen_addrs[0] for d in dhts], "pid": os.getpid()})
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "provide":
                stored = await dhts[cmd["peer"]].provide(bytes.fromhex(cmd["key"]))
                emit({"event": "provided", "stored": stored})
            elif cmd["cmd"] == "sizes":
                emit({"event": "sizes", "sizes": [len(d.table) for d in dhts]})
            elif cmd["cmd"] == "records":
                gc.collect()
                emit({"event": "records", "count": sum(len(d.providers) for d in dhts)})


class Worker:
    """This script as a worker process (``--serve``), driven by JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(
        cls, count: int, bootstrap: str | None = None, store: bool = False
    ) -> tuple[Worker, dict[str, Any]]:
        args = [sys.executable, str(Path(__file__).resolve()), "--serve", str(count)]
        if bootstrap:
            args += ["--bootstrap", bootstrap]
        if store:
            args.append("--store")
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, start_new_session=True
        )
        worker = cls(proc)
        return worker, await worker.read()

    async def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), STEP_TIMEOUT)
        if not line:
            raise RuntimeError("a DHT worker ended")
        return dict(json.loads(line))

    async def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.read()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, 9)
                await self.proc.wait()


# ---------------------------------------------------------------- the lookups


async def settle(workers: list[Worker], js: list[JsKadPeer], want: int) -> None:
    """Wait until every peer's routing table holds ``want`` peers (bounded)."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        sizes = [s for w in workers for s in (await w.ask(cmd="sizes"))["sizes"]]
        sizes += [len(await p.routing_table()) for p in js]
        if min(sizes) >= want:
            return
        await asyncio.sleep(0.2)  # polling a remote table: no event to wait on across processes
    raise RuntimeError(f"routing tables did not fill: smallest {min(sizes)}")


async def mimirlite_search(bootstrap: str, keys: list[tuple[bytes, str]]) -> list[float]:
    """Seconds a fresh client-mode mimirlite DHT, its bootstrap peer known, takes to find a provider."""
    async with Host() as host:
        start_services(host)
        identify = identify_service(host)
        assert identify is not None
        async with KadDht(host, identify, server=False) as dht:
            ready = asyncio.Event()
            dht.on_table_changed.append(ready.set)
            await host.dial(bootstrap)
            await asyncio.wait_for(ready.wait(), STEP_TIMEOUT)
            took = []
            for key, _ in keys:
                t0 = time.perf_counter()
                found = await dht.find_providers(key, count=1)
                took.append(time.perf_counter() - t0)
                if not found:
                    raise RuntimeError("mimirlite found no provider")
    return took


async def js_search(bootstrap: str, keys: list[tuple[bytes, str]]) -> list[float]:
    """The same for a fresh kad-dht 14.2 peer in client mode."""
    async with await JsKadPeer.start(client_mode=True, bootstrap=[bootstrap]) as peer:
        deadline = time.monotonic() + STEP_TIMEOUT
        while not await peer.routing_table():
            if time.monotonic() > deadline:
                raise RuntimeError("the JS searcher's table stayed empty")
            await asyncio.sleep(0.01)
        took = []
        for _, cid in keys:
            t0 = time.perf_counter()
            found = await peer.find_providers(cid, timeout=30, count=1)
            took.append(time.perf_counter() - t0)
            if not found:
                raise RuntimeError("kad-dht found no provider")
    return took


async def lookups(peers: int, trials: int) -> dict[str, Any]:
    n_js = max(1, peers // 5)
    n_py = peers - n_js
    workers: list[Worker] = []
    js: list[JsKadPeer] = []
    try:
        first, ready = await Worker.start(n_py // 2)
        workers.append(first)
        bootstrap = ready["addrs"][0]
        second, ready2 = await Worker.start(n_py - n_py // 2, bootstrap)
        workers.append(second)
        py_peers = [(first, i) for i in range(len(ready["addrs"]))] + [
            (second, i) for i in range(len(ready2["addrs"]))
        ]
        js = list(await asyncio.gather(*(JsKadPeer.start(bootstrap=[bootstrap]) for _ in range(n_js))))
        await settle(workers, js, min(8, peers - 2))
        times: dict[str, list[float]] = collections.defaultdict(list)
        for t in range(trials):
            keys = [key_of(f"bench-model-{t}-{i}-{time.time_ns()}") for i in range(2)]
            for key, cid in keys:
                if t % 2 == 0:
                    worker, index = py_peers[(t * 7) % len(py_peers)]
                    await worker.ask(cmd="provide", peer=index, key=key.hex())
                else:
                    await js[(t // 2) % len(js)].provide(cid)
            order = ["mimirlite", "kad-dht"] if t % 2 == 0 else ["kad-dht", "mimirlite"]
            for who in order:
                search = mimirlite_search if who == "mimirlite" else js_search
                first, second = await search(bootstrap, keys)
                times[who].append(first * 1000)
                times[f"{who} (second lookup)"].append(second * 1000)
        return {
            who: {
                "p50_ms": statistics.median(v),
                "p95_ms": sorted(v)[max(0, round(0.95 * len(v)) - 1)],
                "samples": v,
            }
            for who, v in times.items()
        }
    finally:
        await asyncio.gather(*(p.stop() for p in js), return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)


# ---------------------------------------------------------------- memory per record


async def send_records(target: str, n: int) -> None:
    """``n`` ADD_PROVIDER messages for distinct keys from one peer, 50 per stream; then a GET_PROVIDERS of
    the last key, answered once every record before it was taken."""
    async with Host(listen=[LOCAL]) as host:
        me = PeerInfo(host.peer_id, (Multiaddr.parse(host.listen_addrs[0]).without_peer_id(),))
        keys = [key_of(f"record-{i}")[0] for i in range(n)]
        for start in range(0, n, 50):
            stream = await host.new_stream(target, LAN_KAD_PROTOCOL)
            batch = b"".join(
                lp.encode_message(
                    encode_message(KadMessage(MessageType.ADD_PROVIDER, key=k, providers=(me,)))
                )
                for k in keys[start : start + 50]
            )
            await stream.write(batch)
            await stream.close()
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            stream = await host.new_stream(target, LAN_KAD_PROTOCOL)
            await stream.write(
                lp.encode_message(encode_message(KadMessage(MessageType.GET_PROVIDERS, key=keys[-1])))
            )
            body = await asyncio.wait_for(stream.read_message(), STEP_TIMEOUT)
            await stream.close()
            if body and host.peer_id.to_bytes() in body:
                return
            await asyncio.sleep(0.1)  # the server is still taking the earlier streams' records
        raise RuntimeError("the last record never arrived")


async def memory(records: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    worker, ready = await Worker.start(1, store=True)
    try:
        await asyncio.sleep(0.5)
        before = rss_mib(ready["pid"])
        await send_records(ready["addrs"][0], records)
        stored = (await worker.ask(cmd="records"))["count"]
        after = rss_mib(ready["pid"])
        out["mimirlite"] = {"records": stored, "rss_before_mib": before, "rss_after_mib": after}
    finally:
        await worker.stop()
    async with await JsKadPeer.start() as peer:
        await asyncio.sleep(0.5)
        before = rss_mib(peer.pid)
        await send_records(peer.addrs[0], records)
        after = rss_mib(peer.pid)
        out["kad-dht"] = {"records": records, "rss_before_mib": before, "rss_after_mib": after}
    for v in out.values():
        v["growth_per_10k_mib"] = (v["rss_after_mib"] - v["rss_before_mib"]) * 10_000 / records
    return out


async def amain(args: argparse.Namespace) -> int:
    if args.serve:
        await serve(args.serve, args.bootstrap, args.store)
        return 0
    peers, trials, records = (12, 4, 1000) if args.quick else (args.peers, args.trials, args.records)
    values = {"peers": peers, "lookups": await lookups(peers, trials), "memory": await memory(records)}
    emit({"event": "result", "values": values})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--peers", type=int, default=50)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--store", action="store_true", help=argparse.SUPPRESS)
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
