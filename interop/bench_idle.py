#!/usr/bin/env python3
"""W9 (bench/WORKLOADS.md): idle inbound connections held by one node; its RSS per connection, and a new
chat's latency while they are held.

    python interop/bench_idle.py                 # 10 client processes x 1,000 connections
    python interop/bench_idle.py --quick         # 2 client processes x 100 connections
    python interop/bench_idle.py --tracemalloc   # also: what the node allocated per connection (slower)

Two nodes in turn (``--node``), each answering through the same backend (tests/helpers/openai_server.py,
in this process, echoing the prompt word by word over HTTP):

- mimirlite (this script, ``--role node``): a Host on 127.0.0.1 and a MimirNode with its OpenAIBackend
  (no DHT, no mDNS), identifying every new connection's peer as ``mimirlite node`` does. Its caps raised
  to hold them all: ``max_connections`` and ``max_connections_per_ip`` (every client is on 127.0.0.1), and
  ``max_pending_per_ip`` to ``max_pending_handshakes`` (127.0.0.1 stands for the clients' many addresses);
  the other limits at their defaults. It raises its RLIMIT_NOFILE soft limit (``resource.setrlimit``) to
  the connections plus 256; the run fails, saying so, when the hard limit is lower;
- the first-generation JS node, ``mimir-node.mjs --max-connections`` (js-libp2p's connection manager
  keeps 300 otherwise), inheriting this process's soft limit, raised the same way.

Client processes (``--role clients``), each raising its own soft limit the same way, hold ``count``
connections each: one Host per connection (its own key pair, so a peer of its own, serving identify and
ping) dialing the node, ``--concurrency`` dials at a time, a failed dial retried (``DIAL_RETRIES``): real
TCP + Noise + yamux connections, identified by the node, kept open with the dialer's keepalive pings (30 s).

Measured, in this process: the node's VmRSS (``/proc/<pid>/status``) once it answered warm-up chats and the
warm-up client left (its baseline), and again once it holds the clients' connections (mimirlite:
``Host.connections``, and no stream open, so its identify exchanges ended; JS: its connection:open minus
connection:close events, then a second) and a second more; per connection = the growth / connections held.
The node's CPU seconds spent taking them (``/proc/<pid>/stat``). Then a new MimirClient: its connection and
first chat, then ``chats`` chats (one short answer each, timed to its last chunk): p50 and p95, beside the
same taken before the connections were there. Loopback ports: every connection takes one port of the
ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``) toward the node's one port: checked first.
``--tracemalloc N``: the mimirlite node traces allocations (N frames) and the result lists what grew most
while the connections came (slower, and tracemalloc's own memory inflates the RSS figures).

Prints one JSON line, ``{"event": "result", "values": {...}}``; interop/bench.py runs this as its ``idle``
section. Every process it starts is stopped however the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import stat
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT)]

import benchlib  # noqa: E402  (this directory)
from benchlib import cpu_seconds, rss_kib  # noqa: E402

LOCAL = "/ip4/127.0.0.1/tcp/0"
FULL: dict[str, Any] = {"clients": 10, "per_client": 1000, "concurrency": 4, "chats": 50}
QUICK: dict[str, Any] = {"clients": 2, "per_client": 100, "concurrency": 4, "chats": 10}
NOFILE_SPARE = 256
"""Descriptors a process needs beside its connections (listeners, pipes, the event loop, the reserve)."""
CONNECT_BUDGET = 300.0
"""Seconds the clients may take to connect: then each holds the connections it has (a dial still under
way then is given up and counted as ``late``)."""
STEP_TIMEOUT = 60.0
DIAL_RETRIES = 2
"""A client dials again (a new Host) after a failed dial, at most this often (a node under a burst of
handshakes may close an upgrading connection that fell behind: ``first_byte_timeout``)."""
MESSAGES = [{"role": "user", "content": "hello there"}]
MODEL = "echo"


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def raise_nofile(need: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to ``need`` (up to the hard limit); the soft limit now.
    RuntimeError when the hard limit is below ``need``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        raise RuntimeError(
            f"RLIMIT_NOFILE hard limit {hard} < {need} descriptors needed (raise it: ulimit -Hn)"
        )
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def port_range() -> tuple[int, int] | None:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return None


def watch_stdin(
    loop: asyncio.AbstractEventLoop,
    stop: asyncio.Event,
    lines: asyncio.Queue[str],
    on_eof: Callable[[], object] | None = None,
) -> None:
    """Feed stdin's lines to ``lines``; set ``stop`` (and call ``on_eof``) at its end (the runner went
    away or wants us gone)."""

    def run() -> None:
        with contextlib.suppress(Exception):
            buf = b""
            while chunk := os.read(0, 4096):  # not sys.stdin: its lock would abort interpreter shutdown
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    loop.call_soon_threadsafe(lines.put_nowait, line.decode())
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)
            if on_eof is not None:
                loop.call_soon_threadsafe(on_eof)

    threading.Thread(target=run, daemon=True, name="stdin-watch").start()


async def next_command(lines: asyncio.Queue[str], stop: asyncio.Event) -> str | None:
    """The next line the runner sent, stripped; None once ``stop`` is set."""
    get = asyncio.ensure_future(lines.get())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({get, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not get.done():
        get.cancel()
        return None
    return get.result().strip()


# ---------------------------------------------------------------- the node


async def node_role(args: argparse.Namespace) -> None:
    from mimirlite import Host, HostConfig
    from mimirlite.mimir import MimirNode, OpenAIBackend
    from mimirlite.protocols import identify_service

    nofile = raise_nofile(args.conns + NOFILE_SPARE)
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(args.tracemalloc)
    cap = args.conns + 64  # the bench's chat clients too
    # every client is on 127.0.0.1, standing for as many addresses: one address may upgrade as many
    # connections at once as all may (max_pending_handshakes, left at its default)
    defaults = HostConfig()
    config = HostConfig(
        max_connections=cap, max_connections_per_ip=cap, max_pending_per_ip=defaults.max_pending_handshakes
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    lines: asyncio.Queue[str] = asyncio.Queue()
    watch_stdin(loop, stop, lines)
    async with (
        Host(listen=[LOCAL], config=config) as host,
        MimirNode(host, OpenAIBackend(args.backend_url, models=[MODEL]), dht=False),
    ):
        identify = identify_service(host)
        assert identify is not None
        identify.identify_on_connect()  # as `mimirlite node` does
        emit({"event": "ready", "addr": host.listen_addrs[0], "pid": os.getpid(), "nofile": nofile})
        snapshot: Any = None
        while not stop.is_set():
            cmd = await next_command(lines, stop)
            if cmd is None:
                break
            if cmd == "count":
                streams = sum(c.stream_count for c in host.connections.values())
                emit({"event": "count", "connections": len(host.connections), "streams": streams})
            elif cmd == "snapshot" and args.tracemalloc:
                import gc
                import tracemalloc

                gc.collect()
                snapshot = tracemalloc.take_snapshot()
                emit({"event": "snapshot"})
            elif cmd == "diff" and args.tracemalloc:
                import gc
                import tracemalloc

                gc.collect()
                now = tracemalloc.take_snapshot()
                stats = now.compare_to(snapshot, "traceback" if args.tracemalloc > 1 else "lineno")
                top = [
                    {
                        "where": "\n".join(s.traceback.format()),
                        "size_diff": s.size_diff,
                        "count_diff": s.count_diff,
                    }
                    for s in stats[:40]
                ]
                emit({"event": "diff", "top": top, "total": sum(s.size_diff for s in stats)})


# ---------------------------------------------------------------- the clients


async def clients_role(args: argparse.Namespace) -> None:
    from mimirlite import Host, KeyPair
    from mimirlite.protocols import start_services

    raise_nofile(args.count + NOFILE_SPARE)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    lines: asyncio.Queue[str] = asyncio.Queue()
    watch_stdin(loop, stop, lines)
    hosts: list[Host] = []
    failed: list[str] = []
    sem = asyncio.Semaphore(args.concurrency)

    retries = 0

    async def one() -> None:
        nonlocal retries
        async with sem:
            for attempt in range(1 + DIAL_RETRIES):
                host = Host(KeyPair.generate())
                try:
                    await host.start()
                    start_services(host)
                    await host.dial(args.addr)
                except asyncio.CancelledError:  # out of time
                    await host.stop()
                    raise
                except Exception as exc:  # counted and reported
                    await host.stop()
                    if attempt == DIAL_RETRIES:
                        failed.append(str(exc) or type(exc).__name__)
                    else:
                        retries += 1
                        await asyncio.sleep(0.1 * (attempt + 1))
                    continue
                hosts.append(host)
                return

    try:
        dials = asyncio.gather(*(one() for _ in range(args.count)))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({dials, stopping}, timeout=args.budget, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():  # the runner is gone or wants us gone
            dials.cancel()
            await asyncio.gather(dials, return_exceptions=True)
            return
        stopping.cancel()
        late = 0
        if not dials.done():  # the node took them too slowly: hold what it took
            dials.cancel()
            await asyncio.gather(dials, return_exceptions=True)
            late = args.count - len(hosts) - len(failed)
        emit(
            {
                "event": "ready",
                "connected": len(hosts),
                "late": late,
                "failed": len(failed),
                "retries": retries,
                "errors": failed[:3],
            }
        )
        while (cmd := await next_command(lines, stop)) is not None:  # "count": our connections open still
            if cmd == "count":
                emit({"event": "count", "open": sum(1 for h in hosts if h.connections)})
    finally:
        await asyncio.gather(*(h.stop() for h in hosts), return_exceptions=True)


# ---------------------------------------------------------------- the runner


class Proc:
    """A process of this script; stdin held open (closing it stops the process)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc

    @classmethod
    async def start(cls, name: str, *args: str) -> Proc:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=str(ROOT),
            start_new_session=True,
            limit=1 << 22,
        )
        return cls(name, proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def event(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), max(0.0, deadline - time.monotonic()))
            if not line:
                err = b""
                if self.proc.stderr is not None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        err = await asyncio.wait_for(self.proc.stderr.read(), 5)
                tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-3:])
                raise RuntimeError(f"{self.name} exited (code {await self.proc.wait()}): {tail}")
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if isinstance(ev, dict) and "event" in ev:
                    return ev

    async def ask(self, cmd: str, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.event(timeout)

    async def stop(self) -> None:
        await benchlib.stop_group(self.proc, stdin_wait=3.0, term_wait=5.0)


@contextlib.asynccontextmanager
async def processes() -> AsyncIterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)


async def time_chats(addr: str, chats: int) -> dict[str, float]:
    """A new MimirClient: its connection + first chat, then ``chats`` chats timed to their last chunk (ms)."""
    from mimirlite.mimir import MimirClient

    t0 = time.perf_counter()
    async with MimirClient(peers=[addr], mdns=False) as client:  # loopback only: no discovery
        if not client.nodes:
            raise RuntimeError(f"node at {addr} could not be identified")
        async for _chunk in client.chat_raw(MESSAGES):
            pass
        first = (time.perf_counter() - t0) * 1000
        samples = []
        for _ in range(chats):
            t1 = time.perf_counter()
            async for _chunk in client.chat_raw(MESSAGES):
                pass
            samples.append((time.perf_counter() - t1) * 1000)
    samples.sort()
    return {
        "first_ms": first,
        "p50_ms": statistics.median(samples),
        "p95_ms": samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))],
    }


class NodeUnderTest:
    """The node the clients connect to: its address, pid, and how many connections (and streams) it holds."""

    addr = ""
    pid = 0
    nofile = 0
    counts_streams = True

    async def count(self) -> tuple[int, int | None]:
        raise NotImplementedError

    async def ask(self, cmd: str, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        raise RuntimeError(f"{cmd}: only the mimirlite node answers it")


class MimirliteNode(NodeUnderTest):
    """This script's ``--role node``."""

    def __init__(self, proc: Proc, ready: dict[str, Any]) -> None:
        self.proc = proc
        self.addr, self.pid, self.nofile = ready["addr"], ready["pid"], ready["nofile"]

    async def count(self) -> tuple[int, int | None]:
        got = await self.proc.ask("count")
        return got["connections"], got["streams"]

    async def ask(self, cmd: str, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        return await self.proc.ask(cmd, timeout)


class JsNode(NodeUnderTest):
    """``mimir-node.mjs`` (the first-generation JS node) with ``--max-connections``; its connections counted
    from its connection:open and connection:close events."""

    counts_streams = False

    def __init__(self, node: Any) -> None:
        self.node = node
        self.addr, self.pid = node.addr, node.pid
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # inherited from this process

    async def count(self) -> tuple[int, int | None]:
        await asyncio.sleep(0)
        events = [e.get("event") for e in self.node.all_events]
        return events.count("connection:open") - events.count("connection:close"), None


async def wait_count(node: NodeUnderTest, want: int, timeout: float) -> int:
    """Ask the node for its connections until it holds ``want`` with no stream open (identify done; for
    the JS node, which does not say, a second after it holds them); the connections it holds then."""
    deadline = time.monotonic() + timeout
    while True:
        conns, streams = await node.count()
        if conns >= want and streams in (0, None):
            if streams is None:
                await asyncio.sleep(1.0)
                conns, _ = await node.count()
            return conns
        if time.monotonic() > deadline:
            return conns
        await asyncio.sleep(0.2)


async def measure(node: NodeUnderTest, sizes: dict[str, Any], tracemalloc: int) -> dict[str, Any]:
    """The clients' connections to ``node``: its RSS and CPU, a new chat's latency, before and while held."""
    values: dict[str, Any] = {"node_nofile": node.nofile}
    addr, pid = node.addr, node.pid
    values["chat_before"] = await time_chats(addr, sizes["chats"])  # also warms the node's chat path up
    await wait_count(node, 0, 10)
    await asyncio.sleep(0.5)
    if tracemalloc:
        await node.ask("snapshot")
    rss0 = rss_kib(pid)
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    async with processes() as clients:
        for i in range(sizes["clients"]):
            args = ["--role", "clients", "--addr", addr, "--count", str(sizes["per_client"])]
            args += ["--concurrency", str(sizes["concurrency"]), "--budget", str(sizes["budget"])]
            clients.append(await Proc.start(f"client {i}", *args))
        results = await asyncio.gather(*(c.event(sizes["budget"] + 60) for c in clients))
        connected = sum(r["connected"] for r in results)
        values["late"] = sum(r["late"] for r in results)
        failed = sum(r["failed"] for r in results)
        values["dial_retries"] = sum(r["retries"] for r in results)
        values["connect_s"] = time.perf_counter() - t0
        if failed:
            values["connect_errors"] = [e for r in results for e in r["errors"]][:3]
        held = await wait_count(node, connected, 60)
        values["open_at_clients"] = sum([(await c.ask("count"))["open"] for c in clients])
        if node.counts_streams is False:  # the JS node: its events may lag; the clients know
            held = min(held, values["open_at_clients"]) if held else values["open_at_clients"]
        if held <= 0:
            raise RuntimeError(
                f"the node holds no connection ({connected} connected, {values['open_at_clients']} open at "
                "the clients)"
            )
        values["node_cpu_s"] = cpu_seconds(pid) - cpu0
        await asyncio.sleep(1.0)
        rss1 = rss_kib(pid)
        values.update(
            connections=held,
            failed=failed,
            rss_before_kib=rss0,
            rss_after_kib=rss1,
            rss_per_conn_kib=(rss1 - rss0) / max(1, held),
        )
        if tracemalloc:
            diff = await node.ask("diff", 300)
            values["tracemalloc"] = {"total": diff["total"], "top": diff["top"]}
        values["chat_held"] = await time_chats(addr, sizes["chats"])
        await asyncio.sleep(0.5)  # the chat client's connection is gone
        values["connections_after_chats"], _ = await node.count()
        values["open_at_clients_after_chats"] = sum([(await c.ask("count"))["open"] for c in clients])
    return values


async def run_mimirlite(sizes: dict[str, Any], tracemalloc: int, backend_url: str) -> dict[str, Any]:
    total = sizes["clients"] * sizes["per_client"]
    async with processes() as procs:
        args = ["--role", "node", "--conns", str(total), "--tracemalloc", str(tracemalloc)]
        args += ["--backend-url", backend_url]
        procs.append(await Proc.start("node", *args))
        ready = await procs[0].event(STEP_TIMEOUT)
        return await measure(MimirliteNode(procs[0], ready), sizes, tracemalloc)


async def run_js(sizes: dict[str, Any], backend_url: str) -> dict[str, Any]:
    sys.path.append(str(HERE))  # jsmimir, jspeer
    from jsmimir import JsMimirNode, node_available

    if not node_available():
        return {"skipped": "needs node and interop/node_modules with openai (npm ci in interop/)"}
    total = sizes["clients"] * sizes["per_client"]
    node = await JsMimirNode.start(backend_url, "--max-connections", str(total + 64), models=[MODEL])
    try:
        return await measure(JsNode(node), sizes, 0)
    finally:
        await node.stop()


async def run(sizes: dict[str, Any], tracemalloc: int, nodes: list[str]) -> dict[str, Any]:
    total = sizes["clients"] * sizes["per_client"]
    values: dict[str, Any] = {"sizes": sizes, "nodes": {}}
    ports = port_range()
    if ports is not None:
        free = ports[1] - ports[0] + 1
        values["ephemeral_ports"] = free
        if free < total + 100:
            raise RuntimeError(
                f"ephemeral port range {ports[0]}-{ports[1]} has {free} ports < {total} connections"
            )
    values["nofile_hard"] = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    raise_nofile(total + NOFILE_SPARE)  # the JS node inherits it
    from tests.helpers.openai_server import OpenAIServer

    async with OpenAIServer([MODEL]) as server:  # both nodes' backend, in this process
        for kind in nodes:
            try:
                if kind == "mimirlite":
                    got = await run_mimirlite(sizes, tracemalloc, server.base_url)
                else:
                    got = await run_js(sizes, server.base_url)
            except Exception as exc:  # reported as this node's result
                got = {"error": f"{type(exc).__name__}: {exc}"}
            values["nodes"][kind] = got
    return values


def stop_on_eof_or_sigterm() -> None:
    """Cancel the run (its finally blocks stop every process it started) on SIGTERM, and at the end of
    stdin when stdin is a pipe (interop/bench.py holds it open and closes it to stop us)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    if stat.S_ISFIFO(os.fstat(0).st_mode):
        watch_stdin(loop, asyncio.Event(), asyncio.Queue(), on_eof=task.cancel)


async def amain(args: argparse.Namespace) -> None:
    if args.role == "node":
        await node_role(args)
        return
    if args.role == "clients":
        await clients_role(args)
        return
    sizes = dict(QUICK if args.quick else FULL)
    sizes["budget"] = args.budget
    for key in ("clients", "per_client", "chats"):
        if getattr(args, key):
            sizes[key] = getattr(args, key)
    stop_on_eof_or_sigterm()
    try:
        values = await run(sizes, args.tracemalloc, args.node.split(","))
    except Exception as exc:  # reported as the section's result
        values = {"sizes": sizes, "error": f"{type(exc).__name__}: {exc}"}
    emit({"event": "result", "values": values})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 clients x 100 connections, 10 chats")
    parser.add_argument("--clients", type=int, default=0, help="client processes (10)")
    parser.add_argument("--per-client", type=int, default=0, help="connections per client process (1,000)")
    parser.add_argument("--chats", type=int, default=0, help="chats timed (50)")
    parser.add_argument(
        "--tracemalloc", type=int, default=0, help="frames tracemalloc keeps in the node (0: off)"
    )
    parser.add_argument("--node", default="mimirlite,js", help="the nodes measured: mimirlite,js")
    parser.add_argument("--role", choices=["run", "node", "clients"], default="run", help=argparse.SUPPRESS)
    parser.add_argument("--conns", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--addr", default="", help=argparse.SUPPRESS)
    parser.add_argument("--backend-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument(
        "--budget", type=float, default=CONNECT_BUDGET, help="seconds the clients may take to connect (300)"
    )
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(amain(args))


if __name__ == "__main__":
    main()
