#!/usr/bin/env python3
"""W7 (bench/WORKLOADS.md): the concurrency curve, 1, 10, 100 and 1,000 concurrent chats through one node.

    python interop/bench_curve.py            # full: 100-word answers, 3,000 chats a level (echo)
    python interop/bench_curve.py --quick    # seconds: 5-word answers, the same levels, one chat a stream

The node under test is ``python -m mimirlite node`` (the CLI as users start it: ``--no-mdns --no-dht
--no-relay``, ``--max-concurrent 1000 --queue 1024``, so that 1,000 chats are answered at once, none
queued; every other limit its default), in its own process, pinned to one core (the first CPU this runner
may use) with ``taskset -c`` (so every thread it starts inherits it), or where there is no taskset with
``os.sched_setaffinity`` on its pid right after it is spawned. Its backend is the echo model at zero
delay (``--backend echo``), then tests/helpers/openai_server.py, the fast OpenAI-compatible test server
(its own process, on the load's core), streaming as fast as it can (``--backend openai``). The
first-generation JS node (interop/mimir-node.mjs, ``--max-streams 1100``), pinned the same way, stands
in front of the same fast server (it has no echo model).

The load: ``clients`` client processes (one connection each; the node's default 512 inbound streams per
connection are enough), pinned to the other CPUs, started once a node, each connected and past one
warm-up chat, then told each level's streams, split among them, all at once. Each stream runs chats one
after the other (each answer ``words`` words: ``words + 2`` chunks, counted and checked, see
:func:`client`), ``chats[backend]`` chats in all at each level (at least one per stream). Measured:
aggregate chunks/s (all chunks / from the first client's start to the last one's end, CLOCK_MONOTONIC,
one clock for all processes) and the node's CPU over the same span (user + system, all its threads: the
sum of their run times in /proc/<pid>/task/*/schedstat, in ns), per chunk. On a shared machine the wall
figure is noisy; CPU per chunk is fairer.

Prints one JSON line, ``{"event": "result", "values": {...}}``; interop/bench.py runs this as its ``curve``
section. Every process it starts is stopped however the run ends (stdin closed, SIGTERM, SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import benchlib  # this directory: stopping a process group

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = "llama3.2:latest"
LEVELS = [1, 10, 100, 1000]
FULL: dict[str, Any] = {
    "levels": LEVELS,
    "words": 100,
    "chats": {"echo": 3000, "fast": 1000, "fast-js": 200},  # at each level, at least one a stream
    "clients": 4,
    "reader": "raw",
}
QUICK: dict[str, Any] = {
    "levels": LEVELS,
    "words": 5,
    "chats": {"echo": 1, "fast": 1, "fast-js": 1},
    "clients": 2,
    "reader": "raw",
}
MAX_CONCURRENT = 1000
QUEUE = 1024
STEP_TIMEOUT = 120.0
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]
BACKENDS = ("echo", "fast", "fast-js")
"""echo: mimirlite node, echo model; fast: mimirlite node, fast server; fast-js: the JS node, fast server."""
CLK_TCK = os.sysconf("SC_CLK_TCK")


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """CPU seconds ``pid`` ran (user + system, all its threads): the sum of its threads' run time in
    /proc/<pid>/task/*/schedstat (nanoseconds), else /proc/<pid>/stat's utime + stime (clock ticks)."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def prompt(words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(words))


# ---------------------------------------------------------------- processes


class Child:
    """A process of this run: stdout lines, stdin held open (its end is the child's signal to go)."""

    live: set[Child] = set()

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()
        self.err: list[str] = []
        self.interrupt_first = False
        self._tasks = [asyncio.ensure_future(self._pump()), asyncio.ensure_future(self._pump_err())]
        Child.live.add(self)

    @classmethod
    async def start(
        cls,
        name: str,
        cmd: Sequence[str],
        cpus: set[int] | None,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> Child:
        taskset = shutil.which("taskset")
        if cpus and taskset:  # before exec: every thread the process starts inherits it
            cmd = [taskset, "-c", ",".join(map(str, sorted(cpus))), *cmd]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=str(cwd), env=env, start_new_session=True, limit=1 << 20,
        )
        if cpus and not taskset:  # its main thread, as soon as it exists (threads started before keep theirs)
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, cpus)
        return cls(name, proc)

    async def _pump(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                await self.lines.put(line.decode(errors="replace").rstrip("\n"))
        finally:
            await self.lines.put(None)

    async def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.err = [*self.err[-20:], line.decode(errors="replace").rstrip()]

    async def line(self, timeout: float = STEP_TIMEOUT) -> str:
        try:
            got = await asyncio.wait_for(self.lines.get(), timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"{self.name}: nothing in {timeout:g} s") from None
        if got is None:
            await self.lines.put(None)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 2)
            tail = " | ".join(s for s in self.err[-3:] if s.strip())
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}){': ' + tail if tail else ''}")
        return got

    async def event(self, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        """The next JSON object line (other lines skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            text = await self.line(max(deadline - time.monotonic(), 0.001))
            with contextlib.suppress(ValueError):
                obj = json.loads(text)
                if isinstance(obj, dict):
                    return obj

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")

    async def stop(self) -> None:
        try:  # cProfile writes its file on the way out: SIGINT first when asked
            await benchlib.stop_group(self.proc, interrupt_wait=30 if self.interrupt_first else None)
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            Child.live.discard(self)


def py_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def split_cpus() -> tuple[set[int] | None, set[int] | None, str]:
    """(the node's CPU, the load's CPUs, how): the node alone on one core when there are two or more."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, f"not pinned: this runner may use {len(cpus)} CPU"
    how = "taskset -c" if shutil.which("taskset") else "os.sched_setaffinity"
    return {cpus[0]}, set(cpus[1:]), (
        f"node pinned to CPU {cpus[0]} ({how}), load processes and the fast server on CPU "
        + ",".join(map(str, cpus[1:]))
    )


async def start_node(backend: str, url: str, cpus: set[int] | None, js: str | None) -> tuple[Child, str]:
    """The node under test; (process, its address)."""
    if backend == "fast-js":
        assert js is not None
        cmd = [js, str(HERE / "mimir-node.mjs"), "--listen", "/ip4/127.0.0.1/tcp/0", "--backend-url", url,
               "--model", MODEL, "--no-monitor", "--max-streams", str(MAX_CONCURRENT + 100),
               "--max-retries", "0"]
        node = await Child.start("JS node", cmd, cpus, HERE)
        try:
            while True:
                ev = await node.event(60)
                if ev.get("event") == "ready":
                    return node, str(ev["addrs"][0])
        except BaseException:
            await node.stop()
            raise
    cmd = [sys.executable, "-m", "mimirlite", "node", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns",
           "--no-dht", "--no-relay", "--max-concurrent", str(MAX_CONCURRENT), "--queue", str(QUEUE)]
    if backend == "echo":
        cmd += ["--backend", "echo", "--model", MODEL]
    else:
        cmd += ["--backend", "openai", "--backend-url", url, "--model", MODEL]
    if os.environ.get("MIMIRLITE_CURVE_PROFILE"):  # a cProfile of the node, written when it exits
        cmd[1:3] = ["-m", "cProfile", "-o", os.environ["MIMIRLITE_CURVE_PROFILE"], "-m", "mimirlite"]
    node = await Child.start("mimirlite node", cmd, cpus, ROOT, py_env())
    node.interrupt_first = bool(os.environ.get("MIMIRLITE_CURVE_PROFILE"))
    try:
        peer = ""
        while True:
            text = await node.line(60)
            if text.startswith("Peer ID:"):
                peer = text.split(":", 1)[1].strip()
            elif text.strip().startswith("/ip4/127.0.0.1/"):
                addr = text.strip()
                return node, addr if "/p2p/" in addr else f"{addr}/p2p/{peer}"
    except BaseException:
        await node.stop()
        raise


async def start_clients(addr: str, cfg: dict[str, Any], cpus: set[int] | None) -> list[Child]:
    """``clients`` load processes, each connected to the node at ``addr`` and past a warm-up chat."""
    clients: list[Child] = []
    try:
        params = {"words": cfg["words"], "reader": cfg["reader"]}
        for i in range(cfg["clients"]):
            cmd = [sys.executable, str(Path(__file__).resolve()), "client", "--addr", addr,
                   "--params", json.dumps(params)]
            clients.append(await Child.start(f"client {i + 1}", cmd, cpus, ROOT, py_env()))
        for c in clients:
            ev = await c.event()
            if ev.get("event") != "ready":
                raise RuntimeError(f"{c.name}: {ev.get('error', ev)}")
    except BaseException:
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
        raise
    return clients


async def run_level(
    clients: list[Child], node_pid: int, server_pid: int | None, streams: int, chats: int
) -> dict[str, Any]:
    """``streams`` concurrent chats (split among ``clients``), ``chats`` in all at least: chunks/s and the
    node's CPU per chunk; the CPU the load processes and the fast server used meanwhile."""
    busy = clients[: min(streams, len(clients))]
    per = [streams // len(busy) + (i < streams % len(busy)) for i in range(len(busy))]
    rounds = max(1, math.ceil(chats / streams))
    cpu0 = cpu_seconds(node_pid)
    load0 = sum(cpu_seconds(c.proc.pid) for c in busy)
    server0 = cpu_seconds(server_pid) if server_pid else 0.0
    for c, n in zip(busy, per, strict=True):
        c.send(f"{n} {rounds}")
        assert c.proc.stdin is not None
        await c.proc.stdin.drain()
    results = [await c.event(STEP_TIMEOUT * 3) for c in busy]
    cpu1 = cpu_seconds(node_pid)
    load1 = sum(cpu_seconds(c.proc.pid) for c in busy)
    server1 = cpu_seconds(server_pid) if server_pid else 0.0
    for c, r in zip(busy, results, strict=True):
        if r.get("event") != "done":
            raise RuntimeError(f"{c.name}: {r.get('error', r)}")
    chunks = sum(r["chunks"] for r in results)
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    cpu = cpu1 - cpu0
    return {
        "streams": streams,
        "chats": sum(r["chats"] for r in results),
        "chunks": chunks,
        "seconds": span,
        "chunks_s": chunks / span,
        "node_cpu_s": cpu,
        "cpu_us_per_chunk": cpu / chunks * 1e6,
        "node_cpu_share": cpu / span,
        "clients_cpu_share": (load1 - load0) / span,
        "server_cpu_share": (server1 - server0) / span,
    }


async def run_backend(
    backend: str, cfg: dict[str, Any], node_cpus: set[int] | None, load_cpus: set[int] | None, js: str | None
) -> dict[str, Any]:
    server = None
    url = ""
    out: dict[str, Any] = {}
    try:
        if backend != "echo":
            params = {"words": cfg["words"]}
            cmd = [sys.executable, str(Path(__file__).resolve()), "server", "--params", json.dumps(params)]
            server = await Child.start("fast server", cmd, load_cpus, ROOT, py_env())
            ev = await server.event(60)
            url = f"{ev['addr']}/v1"
        node, addr = await start_node(backend, url, node_cpus, js)
        try:
            clients = await start_clients(addr, cfg, load_cpus)
            try:
                for streams in cfg["levels"]:
                    log(f"    {backend}: {streams} stream{'s' * (streams != 1)}")
                    try:
                        out[str(streams)] = await run_level(
                            clients, node.proc.pid, server.proc.pid if server else None, streams,
                            cfg["chats"][backend],
                        )
                    except Exception as exc:
                        out[str(streams)] = {"error": f"{type(exc).__name__}: {exc}"}
                        break  # the clients are in an unknown state: the next levels say so
            finally:
                await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
            for streams in cfg["levels"]:
                out.setdefault(str(streams), {"error": "not run: an earlier level failed"})
        finally:
            await node.stop()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if server is not None:
            await server.stop()
    return out


def find_js() -> tuple[str | None, str]:
    node = shutil.which("node")
    if node is None:
        return None, "unavailable: node is not on PATH"
    if not (HERE / "node_modules" / "openai").is_dir():
        return None, "unavailable: interop/node_modules has no openai (run npm ci in interop/)"
    return node, ""


async def runner(cfg: dict[str, Any], backends: Sequence[str]) -> None:
    node_cpus, load_cpus, how = split_cpus()
    js, why_js = find_js()
    values: dict[str, Any] = {"sizes": cfg, "pinning": how, "max_concurrent": MAX_CONCURRENT, "queue": QUEUE}
    try:
        for backend in backends:
            if backend == "fast-js" and js is None:
                values[backend] = {"error": why_js}
                continue
            values[backend] = await run_backend(backend, cfg, node_cpus, load_cpus, js)
    finally:
        await asyncio.gather(*(c.stop() for c in list(Child.live)), return_exceptions=True)
    emit({"event": "result", "values": values})


# ---------------------------------------------------------------- workers


async def client(addr: str, params: dict[str, Any]) -> None:
    """Chat loops on one connection: ready after a warm-up chat, then for each stdin line ``<streams>
    <rounds>``, ``streams`` loops of ``rounds`` chats at once, and a ``done`` line (its monotonic span).

    ``reader``: ``"raw"`` (the default: the load should cost less than the node it measures) opens each
    chat's /mimirllm/1.0.0 stream on a Host, sends the request packet MimirClient sends, and counts the
    length-prefixed packets of the answer, decoding only the last (the chunk with finish_reason "stop");
    ``"client"``: MimirClient.chat_wire, every chunk decoded and checked."""
    from mimirlite import Host
    from mimirlite.mimir import MimirClient, packets

    words = params["words"]
    messages = [{"role": "user", "content": prompt(words)}]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with contextlib.AsyncExitStack() as stack:
        if params.get("reader", "raw") == "client":
            mc = await stack.enter_async_context(MimirClient(peers=[addr], mdns=False, dht=False))
            if not mc.nodes:
                emit({"event": "error", "error": f"node at {addr} could not be identified"})
                return

            async def one() -> int:
                count = 0
                async for _chunk in mc.chat_wire(messages, model=MODEL):
                    count += 1
                if count != words + 2:
                    raise ValueError(f"{count} chunks, expected {words + 2}")
                return count

        else:
            host = await stack.enter_async_context(Host())
            peer = (await host.dial(addr)).remote_peer
            request = {"event": packets.MESSAGE, "data": {"messages": messages, "model": MODEL}}
            loads = json.loads

            async def one() -> int:
                stream = await host.new_stream(peer, packets.CHAT_PROTOCOL)
                await stream.write_json(request)
                await stream.close_write()
                count = 0
                last = b""
                while (body := await stream.read_message()) is not None:
                    count += 1
                    last = body
                await stream.close()
                end = loads(last) if last else None
                try:
                    finish = end["data"]["choices"][0]["finish_reason"]
                except (TypeError, KeyError, IndexError):
                    finish = None
                if finish != "stop":
                    raise ValueError(f"the answer did not end with its finish chunk: {last[:300]!r}")
                if count != words + 2:  # the role chunk, a chunk a word, the finish chunk
                    raise ValueError(f"{count} packets, expected {words + 2}")
                return count

        await one()
        emit({"event": "ready"})
        while line := await reader.readline():  # "<streams> <rounds>": one level
            streams, rounds = map(int, line.split())
            chunks = chats = 0

            async def loop_chats(rounds: int) -> None:
                nonlocal chunks, chats
                for _ in range(rounds):
                    got = await one()  # not chunks += await ...: that reads chunks before the await
                    chunks += got
                    chats += 1

            start = time.monotonic()
            try:
                await asyncio.gather(*(loop_chats(rounds) for _ in range(streams)))
            except Exception as exc:
                emit({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
                return
            end = time.monotonic()
            emit({"event": "done", "start": start, "end": end, "chunks": chunks, "chats": chats})


async def server(params: dict[str, Any]) -> None:
    from tests.helpers.openai_server import OpenAIServer

    tokens = [w if i == 0 else " " + w for i, w in enumerate(prompt(params["words"]).split())]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with OpenAIServer(models=[MODEL], reply=tokens) as srv:
        emit({"event": "ready", "addr": srv.url})
        await reader.read()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "client", "server"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the runner works")
    parser.add_argument("--addr", default="")
    parser.add_argument("--params", default="{}")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"subset of {','.join(BACKENDS)}")
    parser.add_argument("--levels", help="comma-separated stream counts (default 1,10,100,1000)")
    args = parser.parse_args(argv)
    params = json.loads(args.params)
    with contextlib.suppress(KeyboardInterrupt):
        if args.mode == "client":
            asyncio.run(client(args.addr, params))
        elif args.mode == "server":
            asyncio.run(server(params))
        else:
            cfg = {**(QUICK if args.quick else FULL), **params}
            if args.levels:
                cfg["levels"] = [int(x) for x in args.levels.split(",")]
            asyncio.run(runner(cfg, [b for b in args.backends.split(",") if b]))


if __name__ == "__main__":
    main()
