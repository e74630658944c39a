#!/usr/bin/env python3
"""W6 (backend path) and W8 (gateway path) of bench/WORKLOADS.md: a node relaying a fast OpenAI-compatible
server, and the openai SDK reading it through the gateway.

    python interop/bench_backend.py              # answers of 20,000 chunks; 50 time-to-first-chunk runs
    python interop/bench_backend.py --quick      # answers of 2,000 chunks; 5 runs

The fast server is T1's (``bench_worker.py tun-server``: tests/helpers/openai_server.py in its own process,
streaming every chunk of an answer of ``chunks`` chunks as fast as it can; a chat whose last message is
"warm up" gets a one-token answer). Each path is asked one untimed warm-up chat, then timed:

- W6 limit: the openai SDK (``AsyncOpenAI``, in this process) reading the server directly: chunks/s from the
  call to the last chunk;
- W6 nodes: ``python -m mimirlite node --backend openai`` (the CLI, its own process), then the
  first-generation JS node (interop/mimir-node.mjs, the openai SDK for Node inside) in front of the same
  server, each asked for the answer over ``/mimirllm/1.0.0`` by the same reader in this process,
  ``MimirClient.chat_raw()`` (every chunk checked as ``chat`` checks it, without pydantic); chunks/s from
  the call to the last chunk, and the node's CPU (user + system, ``/proc/<pid>/stat``, all threads) over
  that answer divided by its chunks. The reader's own CPU is reported too, to show it is not the bound;
- W8: ``python -m mimirlite gateway --peer <the mimirlite node>`` (its own process); the openai SDK in this
  process asks it for ``ttfc_runs`` one-token answers, alternating with the same chat asked of the server
  directly: time to the first chunk, p50 of each and their difference (the added time); then the long
  answer through the gateway: chunks/s, against the direct read above, and the gateway's CPU per chunk.

Prints one JSON line, ``{"event": "result", "values": {...}}``; interop/bench.py runs this as its
``backend`` section. Every process it starts is stopped however the run ends (stdin closed, SIGTERM,
SIGKILL, bounded waits).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from bench_worker import TUN_MODEL, TUN_WARMUP  # noqa: E402
from benchlib import cpu_seconds, stop_group  # noqa: E402
from jsmimir import JsMimirNode, node_available  # noqa: E402

from mimirlite.mimir import MimirClient  # noqa: E402

LOCAL = "/ip4/127.0.0.1/tcp/0"
STEP_TIMEOUT = 60.0
FULL: dict[str, Any] = {"chunks": 20_000, "ttfc_runs": 50}
QUICK: dict[str, Any] = {"chunks": 2_000, "ttfc_runs": 5}  # CPU comes in 10 ms ticks: enough chunks for some
PROMPT = "tell me everything"


# ---------------------------------------------------------------- what interop/bench.py shows

NODE_M = "node: mimirlite (python -m mimirlite node)"
NODE_J = "node: first-generation JS (mimir-node.mjs)"
DIRECT = "openai SDK → server directly (one process)"
GATEWAY = "openai SDK → gateway → mimirlite node → server"
FIGURES = [  # bench.Figure's fields: key, workload, label, unit, higher is better
    ("w6_chunks", "W6", "backend path: chunks of one streamed answer", "chunks/s", True),
    ("w6_cpu", "W6", "backend path: node CPU per chunk", "µs", False),
    ("w6_ttfc", "W6", "backend path: time to first chunk, one-token answer, p50", "ms", False),
    ("w8_ttfc", "W8", "gateway path: added time to first chunk, p50", "ms", False),
    ("w8_chunks", "W8", "gateway path: chunks of one streamed answer", "chunks/s", True),
    ("w8_cpu", "W8", "gateway path: gateway CPU per chunk", "µs", False),
]
ROWS = {
    "w6_chunks": [NODE_M, NODE_J, DIRECT],
    "w6_cpu": [NODE_M, NODE_J],
    "w6_ttfc": [NODE_M, NODE_J, DIRECT],
    "w8_ttfc": [GATEWAY],
    "w8_chunks": [GATEWAY, DIRECT],
    "w8_cpu": [GATEWAY],
}
RATIO_TARGETS = [  # text, figure, peer, other, factor, higher is better
    ("W6 node chunks/s >= 60% of the openai SDK's direct read", "w6_chunks", NODE_M, DIRECT, 0.6, True),
    ("W6 node chunks/s >= 3x the first-generation JS node's", "w6_chunks", NODE_M, NODE_J, 3.0, True),
    ("W8 gateway path chunks/s >= 60% of the SDK's direct read", "w8_chunks", GATEWAY, DIRECT, 0.6, True),
]
ABS_TARGETS = [  # text, figure, peer, limit, higher is better
    ("W8 gateway path added time to first chunk p50 <= 2 ms", "w8_ttfc", GATEWAY, 2.0, False),
]


def collect(
    values: dict[str, Any],
    add: Callable[[str, str, float], None],
    fail: Callable[[str, list[str], str], None],
    info: dict[str, list[str]],
) -> None:
    """Hand one run's ``values`` (this script's result, or ``{"error": why}``) to interop/bench.py."""

    def put(peer: str, got: Any, pairs: list[tuple[str, str]]) -> None:
        for key, field in pairs:
            if isinstance(got, dict) and field in got:
                add(peer, key, got[field])
            else:
                why = got.get("error") if isinstance(got, dict) else None
                fail(peer, [key], str(why or values.get("error") or "no result"))

    direct = values.get("direct")
    put(DIRECT, direct, [("w6_chunks", "chunks_s"), ("w6_ttfc", "ttfc_ms"), ("w8_chunks", "chunks_s")])
    for peer, name in ((NODE_M, "mimirlite"), (NODE_J, "js")):
        put(
            peer,
            values.get(name),
            [("w6_chunks", "chunks_s"), ("w6_cpu", "node_cpu_us"), ("w6_ttfc", "ttfc_ms")],
        )
    put(
        GATEWAY,
        values.get("gateway"),
        [("w8_ttfc", "added_ttfc_ms"), ("w8_chunks", "chunks_s"), ("w8_cpu", "gateway_cpu_us")],
    )
    if "sizes" in values:
        info["sizes"] = [json.dumps(values["sizes"])]
        for name, got in (
            ("SDK direct", direct),
            ("mimirlite node", values.get("mimirlite")),
            ("JS node", values.get("js")),
        ):
            if isinstance(got, dict) and "reader_cpu_us" in got:
                info.setdefault(name, []).append(f"{got['reader_cpu_us']:.0f}")
            if isinstance(got, dict) and "server_cpu_us" in got:
                info.setdefault(f"server, {name}", []).append(f"{got['server_cpu_us']:.0f}")
        gw = values.get("gateway")
        if isinstance(gw, dict) and "ttfc_ms" in gw:
            info.setdefault("ttfc", []).append(f"{gw['ttfc_ms']:.2f} vs {gw['direct_ttfc_ms']:.2f}")


def header(info: dict[str, list[str]]) -> list[str]:
    """interop/bench.py's header lines on W6/W8."""
    if "sizes" not in info:
        return []
    sizes = json.loads(info["sizes"][0])
    readers = "; ".join(
        f"{name} {', '.join(info[name])}"
        for name in ("SDK direct", "mimirlite node", "JS node")
        if name in info
    )
    servers = "; ".join(
        f"{name} {', '.join(info[f'server, {name}'])}"
        for name in ("mimirlite node", "JS node")
        if f"server, {name}" in info
    )
    lines = [
        f"W6/W8 (interop/bench_backend.py): the T1 server streams answers of {sizes['chunks']:,} chunks as "
        "fast as it can (its own process); W6 nodes are read over /mimirllm/1.0.0 by MimirClient.chat_raw() "
        "in the runner's process; node/gateway CPU = user+sys from /proc/<pid>/stat over the answer; "
        f"{sizes['ttfc_runs']} one-token answers per path timed to their first chunk",
        f"W6/W8 reader CPU per chunk (µs, per run): {readers}",
        f"W6 test server CPU per chunk (µs, per run): {servers}",
    ]
    if "ttfc" in info:
        lines.append(
            f"W8 time to first chunk p50 (ms, per run): gateway path vs direct {'; '.join(info['ttfc'])}"
        )
    return lines


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def py_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }


@contextlib.asynccontextmanager
async def process(cmd: list[str], ready: Callable[[str], str | None]) -> AsyncIterator[tuple[str, int]]:
    """Run ``cmd`` in its own session until ``ready`` returns a value for one of its stdout lines:
    (that value, its pid). Its stdout is drained afterwards; it is stopped on exit."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=py_env(),
        cwd=str(ROOT),
        start_new_session=True,
    )
    drain: asyncio.Task[None] | None = None
    try:
        assert proc.stdout is not None
        stdout = proc.stdout

        async def first() -> str:
            while line := await stdout.readline():
                got = ready(line.decode(errors="replace").strip())
                if got is not None:
                    return got
            raise RuntimeError(f"{cmd[1:4]} exited (code {await proc.wait()})")

        value = await asyncio.wait_for(first(), STEP_TIMEOUT)

        async def rest() -> None:
            while await stdout.read(1 << 16):
                pass

        drain = asyncio.ensure_future(rest())
        yield value, proc.pid
    finally:
        await stop_group(proc, stdin_wait=0, term_wait=5.0)
        if drain is not None:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)


def test_server(chunks: int) -> contextlib.AbstractAsyncContextManager[tuple[str, int]]:
    """T1's fast server (``bench_worker.py tun-server``): (its URL without /v1, its pid)."""
    cmd = [
        sys.executable,
        str(HERE / "bench_worker.py"),
        "tun-server",
        "--impl",
        "mimirlite",
        "--params",
        json.dumps({"tun_chunks": chunks}),
    ]

    def ready(line: str) -> str | None:
        with contextlib.suppress(ValueError):
            ev = json.loads(line)
            if isinstance(ev, dict) and ev.get("event") == "ready":
                return str(ev["addr"])
        return None

    return process(cmd, ready)


def mimirlite_node(base_url: str) -> contextlib.AbstractAsyncContextManager[tuple[str, int]]:
    """``python -m mimirlite node`` in front of ``base_url`` on 127.0.0.1: (its address, its pid)."""
    cmd = [
        sys.executable,
        "-m",
        "mimirlite",
        "node",
        "--backend",
        "openai",
        "--backend-url",
        base_url,
        "--model",
        TUN_MODEL,
        "--listen",
        LOCAL,
        "--no-mdns",
        "--no-dht",
        "--no-relay",
        "--models-interval",
        "0",
    ]
    seen: list[str] = []

    def ready(line: str) -> str | None:
        if line.startswith("/ip4/") and seen and seen[-1] == "Listening on:":
            return line
        seen.append(line)
        return None

    return process(cmd, ready)


def mimirlite_gateway(node_addr: str) -> contextlib.AbstractAsyncContextManager[tuple[str, int]]:
    """``python -m mimirlite gateway --peer node_addr`` on 127.0.0.1, any port: (its base URL, its pid)."""
    cmd = [
        sys.executable,
        "-m",
        "mimirlite",
        "gateway",
        "--peer",
        node_addr,
        "--no-mdns",
        "--no-dht",
        "--port",
        "0",
    ]
    prefix = "OpenAI-compatible API at "

    def ready(line: str) -> str | None:
        return line.removeprefix(prefix) if line.startswith(prefix) else None

    return process(cmd, ready)


def messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def sdk_answer(client: Any, text: str) -> tuple[int, float, float]:
    """The openai SDK streams one answer: (chunks, seconds to the first chunk, seconds to the last)."""
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(model=TUN_MODEL, messages=messages(text), stream=True)
    count = 0
    first = 0.0
    async for _chunk in stream:
        if count == 0:
            first = time.perf_counter() - t0
        count += 1
    return count, first, time.perf_counter() - t0


def check(count: int, chunks: int, who: str) -> None:
    if count != chunks:
        raise RuntimeError(f"{who}: {count} chunks, expected {chunks}")


async def node_answer(addr: str, pid: int, chunks: int, runs: int, server: int) -> dict[str, float]:
    """``runs`` one-token answers then one long answer from the node at ``addr`` over /mimirllm/1.0.0,
    read with chat_raw()."""
    async with MimirClient(peers=[addr], mdns=False, dht=False, prefer_tunnel=False) as client:
        if not client.nodes:
            raise RuntimeError(f"node at {addr} could not be identified")
        async for _ in client.chat_raw(messages(TUN_WARMUP), model=TUN_MODEL):
            pass
        ttfc = []
        for _ in range(runs):
            t0 = time.perf_counter()
            async with contextlib.aclosing(client.chat_raw(messages(TUN_WARMUP), model=TUN_MODEL)) as it:
                async for _ in it:
                    ttfc.append((time.perf_counter() - t0) * 1000)
                    break
        count = 0
        node0, me0, server0 = cpu_seconds(pid), time.process_time(), cpu_seconds(server)
        t0 = time.perf_counter()
        async for _ in client.chat_raw(messages(PROMPT), model=TUN_MODEL):
            count += 1
        took = time.perf_counter() - t0
        node_cpu, reader_cpu = cpu_seconds(pid) - node0, time.process_time() - me0
        server_cpu = cpu_seconds(server) - server0
    check(count, chunks, f"node at {addr}")
    return {
        "chunks_s": count / took,
        "node_cpu_us": node_cpu / count * 1e6,
        "reader_cpu_us": reader_cpu / count * 1e6,
        "server_cpu_us": server_cpu / count * 1e6,
        "ttfc_ms": statistics.median(ttfc),
    }


async def run(params: dict[str, Any]) -> dict[str, Any]:
    from openai import AsyncOpenAI

    chunks = params["chunks"]
    out: dict[str, Any] = {"sizes": params}
    async with test_server(chunks) as (url, server):
        base = f"{url}/v1"
        direct = AsyncOpenAI(base_url=base, api_key="bench", max_retries=0, timeout=STEP_TIMEOUT)
        await sdk_answer(direct, TUN_WARMUP)
        ttfc = [(await sdk_answer(direct, TUN_WARMUP))[1] * 1000 for _ in range(params["ttfc_runs"])]
        me0 = time.process_time()
        count, _, took = await sdk_answer(direct, PROMPT)
        check(count, chunks, "openai SDK, direct")
        out["direct"] = {
            "chunks_s": count / took,
            "reader_cpu_us": (time.process_time() - me0) / count * 1e6,
            "ttfc_ms": statistics.median(ttfc),
        }

        async with mimirlite_node(base) as (addr, pid):
            try:
                out["mimirlite"] = await node_answer(addr, pid, chunks, params["ttfc_runs"], server)
            except Exception as exc:
                out["mimirlite"] = {"error": f"{type(exc).__name__}: {exc}"}
            try:
                out["gateway"] = await gateway_path(addr, direct, chunks, params["ttfc_runs"])
            except Exception as exc:
                out["gateway"] = {"error": f"{type(exc).__name__}: {exc}"}

        if not node_available():
            out["js"] = {"error": "unavailable: node or interop/node_modules (npm ci) missing"}
        else:
            try:
                async with await JsMimirNode.start(base, "--no-monitor", models=[TUN_MODEL]) as js:
                    out["js"] = await node_answer(js.addr, js.pid, chunks, params["ttfc_runs"], server)
            except Exception as exc:
                out["js"] = {"error": f"{type(exc).__name__}: {exc}"}
        await direct.close()
    return out


async def gateway_path(node_addr: str, direct: Any, chunks: int, runs: int) -> dict[str, Any]:
    """W8: time to first chunk through the gateway vs direct (alternating), then the long answer."""
    from openai import AsyncOpenAI

    async with mimirlite_gateway(node_addr) as (gw_url, pid):
        via = AsyncOpenAI(base_url=gw_url, api_key="bench", max_retries=0, timeout=STEP_TIMEOUT)
        try:
            await sdk_answer(via, TUN_WARMUP)
            ttfc_gw: list[float] = []
            ttfc_direct: list[float] = []
            for _ in range(runs):
                ttfc_direct.append((await sdk_answer(direct, TUN_WARMUP))[1] * 1000)
                ttfc_gw.append((await sdk_answer(via, TUN_WARMUP))[1] * 1000)
            gw0 = cpu_seconds(pid)
            count, _, took = await sdk_answer(via, PROMPT)
            gw_cpu = cpu_seconds(pid) - gw0
            check(count, chunks, "openai SDK through the gateway")
        finally:
            await via.close()
    p50_gw, p50_direct = statistics.median(ttfc_gw), statistics.median(ttfc_direct)
    return {
        "chunks_s": count / took,
        "gateway_cpu_us": gw_cpu / count * 1e6,
        "ttfc_ms": p50_gw,
        "direct_ttfc_ms": p50_direct,
        "added_ttfc_ms": p50_gw - p50_direct,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI's smoke run)")
    parser.add_argument("--chunks", type=int, help="chunks of the long answer")
    args = parser.parse_args(argv)
    params = dict(QUICK if args.quick else FULL)
    if args.chunks:
        params["chunks"] = args.chunks
    try:
        values = asyncio.run(run(params))
    except Exception as exc:
        values = {"error": f"{type(exc).__name__}: {exc}", "sizes": params}
    emit({"event": "result", "values": values})
    return 0


if __name__ == "__main__":
    sys.exit(main())
