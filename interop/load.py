"""Load, slow readers, a soak and hostile peers against one mimirlite node: a benchmark script, not a test.

Every peer is its own process on 127.0.0.1 (hostile peers dial from other loopback addresses); the
runner (this script without a mode) starts them, drives them through stdin (one command a line; end of
input stops a worker) and reads one JSON object a line from their stdout. The node's memory and
descriptors are read by the runner from /proc/<pid>/status (VmRSS, VmHWM) and /proc/<pid>/fd; the node
reports its own asyncio task count, connections, streams, what its echo model produced and its
HostMetrics and NodeMetrics when asked (``stats``).

Scenarios (``--only load,slow,soak,hostile``; default load and slow; ``--soak [MINUTES]`` adds the
soak, 10 minutes when no value is given; ``--hostile`` adds the hostile scenario):

- ``load``: ``--clients`` client processes (one Host each) x ``--streams`` concurrent chats to one node
  whose echo model waits ``--delay`` s before each word, so that every chat overlaps the others. Every
  answer must come back complete and byte for byte what was asked (words unique to each chat, some of
  them non-ASCII): 0 lost, 0 duplicated. The node's peak RSS and descriptors are reported against their
  bounds (RSS: the baseline plus one yamux window per chat; descriptors: the baseline plus one per
  connection), and a separate pinger process pings the node (libp2p ping and yamux ping) throughout:
  its p99 must stay within 100 ms.
- ``slow``: ``--slow`` clients (one Host and one connection each, in ``--slow-procs`` processes) each ask
  for a long answer and read it one byte a second. The node can only send a yamux window (256 KiB) per
  stream before it must wait, so its RSS may not grow past ``slow x window``; a fast client measures
  chunks per second through the node alone, beside the slow readers, and alone again.
- ``soak``: ``--soak-workers`` processes connect, chat (whole answers, bursts, answers abandoned
  mid-way, slow reads, connections dropped mid-answer), ping and disconnect, at random (seeded), for
  the given minutes. After a warm-up round the node's tasks, descriptors and RSS are the baseline; at
  the end, with every client gone, they must be back to it (RSS within ``--rss-slack`` MiB).

- ``hostile`` (``--hostile`` adds it, ``--only hostile`` runs it alone): the attacks of issue 11 items
  2-4, each by its own worker processes from its own source address, beside the ``load``'s chatters
  (``--clients`` x ``--streams`` chats a round, round after round) and its pinger. The node gets
  ``--slot-chats`` chat slots on top of the load's (``max_concurrent`` = load chats + 256: the slot holder
  takes every slot the load leaves); every other limit is the library's default (``HostConfig()``, the
  rest of ``NodeLimits()``), so the run measures whatever defences the node has. A first round of the
  load alone gives the baseline RSS (the node's peak over it); then, one after the other (so that each
  figure is that attack's: memory figures are not mixed with the held chats' windows, and on two cores
  the timed targets are not measured against the other attackers' CPU), each followed by a wait until
  the attackers' connections are gone (``--attacks`` picks which, in order; default all three):

  - ``memory`` (item 4): 4 peers (127.0.0.4-7, one connection each) each keep ``--memory-streams``
    streams sending a 4 MiB chat request but its last 16 bytes, for ``--memory-hold`` s (a stream the
    node ends is opened again after a second). Checks: the node's peak RSS (VmHWM) <= baseline + 300
    MiB; once they left, VmRSS back within 50 MiB of the baseline within 60 s (watched 90 s).
  - ``lockout`` (item 2): ``--lockout-idle`` connections that send nothing and ``--lockout-dribble`` that
    send a byte of a valid multistream header, /noise proposal and first Noise message every 0.5 s, all
    from 127.0.0.2, each re-opened as soon as the node closes it. Meanwhile two honest workers make
    ``--honest-dials`` chats each, every one from a new key over a new connection: one from 127.0.0.1
    (a fresh Host's dial), one from 127.0.0.2, the flood's own address (the project's Connection on a
    socket bound to it: the Host API has no source address; real Noise and yamux). Check: each chat
    done within 2 s of its dial's start (p50 and max shown).
  - ``slots`` (item 3): one peer (one key, 4 connections from 127.0.0.3) opens ``--slot-chats`` chats
    asking for answers far longer than a yamux window, produced at once, and never reads them; once
    their windows are full (the node's echo model stalls on them), 3 times, once a round of the load is
    all in the echo model (every slot is then taken), another peer's chat (127.0.0.1) is timed. Check:
    answered within 5 s. (Without defences it waits for the load's round to end; without the load, for
    ever.)

  Also checked: the load's answers beside the attacks complete and byte for byte, 0 lost or duplicated,
  and the pinger's p99 per phase <= 100 ms. Printed under the checks (``info``): the attackers' own
  counts (connections re-opened and closed by the node, streams reset, answers with their error type,
  e.g. ``overloaded``) and what the node counted in each phase (its HostMetrics refusals, closes and
  protocol errors, its NodeMetrics refusals).

``--json FILE`` keeps every figure. Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import re
import signal
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LOCAL = "/ip4/127.0.0.1/tcp/0"
WINDOW = 256 * 1024
"""The yamux receive window per stream (mimirlite's default, the spec's initial window)."""
MIB = 1024 * 1024
START_TIMEOUT = 60.0
"""Seconds a worker has to start and say it is ready (imports are slow on a loaded machine)."""
STOP_TIMEOUT = 5.0
"""Seconds a worker has to exit once its stdin closed, then again after SIGTERM, before SIGKILL."""
IDLE_TIMEOUT = 60.0
"""Seconds the node has to be idle again (no connection, no chat) once every client left."""
PING_P99_MS = 100.0
LINE_LIMIT = 64 * MIB
"""Longest line a worker may print (the pinger's result carries every round-trip time)."""
DIAL_AT_ONCE = 16
"""Dials one slow-reader process has in progress at a time."""
UNICODE = ("é", "漢字", "🙂", "ж")
"""Put in some words so that answers are checked byte for byte beyond ASCII."""
STALLED = 2.0
"""Seconds without a chunk after which the node worker counts a chat in progress as stalled (its
writes wait for window: a reader that does not read)."""


# ==== /proc ========================================================================================


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in KiB; {} once it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return out


def open_fds(pid: int) -> int:
    """Open file descriptors of ``pid`` (-1 once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return -1


# ==== what every chat asks and what must come back =================================================


def chat_words(tag: str, n: int) -> list[str]:
    """``n`` words unique to the chat ``tag``; every fifth carries a non-ASCII suffix."""
    return [f"{tag}w{k}" + (UNICODE[k // 5 % len(UNICODE)] if k % 5 == 4 else "") for k in range(n)]


@dataclass
class Check:
    """One chat's answer compared with its question."""

    status: str = "ok"
    """ok, lost (an error or no finish), wrong (finished but not the words asked)."""
    chunks: int = 0
    duplicated: int = 0
    """Words received more than once."""
    missing: int = 0
    foreign: int = 0
    """Words that belong to no word asked (e.g. another chat's)."""
    completion_ids: list[str] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


async def checked_chat(client: Any, words: list[str], timeout: float) -> Check:
    """One chat through ``client`` (a MimirClient), its answer checked against ``words``."""
    prompt = " ".join(words)
    check = Check()
    parts: list[str] = []
    finish = None
    ids: set[str] = set()
    t0 = time.perf_counter()

    async def run() -> None:
        nonlocal finish
        async with contextlib.aclosing(client.chat([{"role": "user", "content": prompt}])) as chunks:
            async for chunk in chunks:
                check.chunks += 1
                ids.add(chunk.id)
                choice = chunk.choices[0]
                if choice.delta.content:
                    parts.append(choice.delta.content)
                if choice.finish_reason:
                    finish = choice.finish_reason

    try:
        await asyncio.wait_for(run(), timeout)
    except Exception as exc:
        check.status, check.error = "lost", f"{type(exc).__name__}: {exc}"
    check.seconds = time.perf_counter() - t0
    check.completion_ids = sorted(ids)
    text = "".join(parts)
    got = text.split(" ") if text else []
    asked = set(words)
    seen: Counter[str] = Counter(got)
    check.duplicated = sum(n - 1 for w, n in seen.items() if n > 1 and w in asked)
    check.missing = len(asked - set(seen))
    check.foreign = sum(n for w, n in seen.items() if w not in asked)
    if check.status == "ok":
        if finish != "stop":
            check.status, check.error = "lost", f"finish_reason {finish!r}"
        elif text.encode() != prompt.encode() or check.chunks != len(words) + 2 or len(ids) != 1:
            check.status = "wrong"
            check.error = f"{check.chunks} chunks, {len(ids)} completion ids, text {text[:80]!r}..."
    return check


def summarize_checks(checks: Sequence[Check]) -> dict[str, Any]:
    statuses = Counter(c.status for c in checks)
    errors = Counter(c.error for c in checks if c.error)
    return {
        "chats": len(checks),
        "ok": statuses["ok"],
        "lost": statuses["lost"],
        "wrong": statuses["wrong"],
        "chunks": sum(c.chunks for c in checks),
        "words_duplicated": sum(c.duplicated for c in checks),
        "words_missing": sum(c.missing for c in checks if c.status != "lost"),
        "words_foreign": sum(c.foreign for c in checks),
        "completion_ids": [i for c in checks for i in c.completion_ids],
        "seconds": [round(c.seconds, 4) for c in checks],
        "errors": dict(errors.most_common(5)),
    }


# ==== worker side ==================================================================================


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Control:
    """The runner's commands, one a line on stdin; end of input reads as "eof"."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.stop = asyncio.Event()
        """Set at "stop" or end of input."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Control:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        self._task = asyncio.create_task(self._read(reader), name="control")
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            cmd = line.decode().strip()
            if cmd == "stop":
                self.stop.set()
            await self.queue.put(cmd)
        self.stop.set()
        await self.queue.put("eof")

    async def expect(self, wanted: str) -> bool:
        """Wait for the command ``wanted``; False at "stop" or end of input."""
        while True:
            cmd = await self.queue.get()
            if cmd == wanted:
                return True
            if cmd in ("stop", "eof"):
                return False


async def worker_node(args: argparse.Namespace) -> None:
    """A MimirNode with the echo model (``--delay`` s a word) on 127.0.0.1; answers "stats"."""
    from mimirlite import Host
    from mimirlite.mimir import EchoBackend, MimirNode, NodeLimits
    from mimirlite.mimir.backends import make_chunk

    class CountingEcho(EchoBackend):
        """The echo model, counting chats in progress and chunks produced (read by "stats").

        Directives at the start of the question (in the text, not as request parameters, so that a node
        taking only the OpenAI parameters it allows still reads them): ``repeat=N`` makes the answer the
        question's other words ``N`` times over, a long answer from a short question, one word a chunk
        (the slow readers', the held chats'); ``delay=S`` waits ``S`` s before each word instead of the
        node's ``--delay``.
        """

        active = 0
        peak_active = 0
        started = 0
        finished = 0
        closed_early = 0
        produced = 0
        live: dict[int, int] = {}  # chunks produced so far by each chat in progress
        last: dict[int, float] = {}  # when each chat in progress produced its last chunk (monotonic)

        async def stream_chat(
            self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
        ) -> Any:
            cls = CountingEcho
            cls.active += 1
            cls.started += 1
            cls.peak_active = max(cls.peak_active, cls.active)
            serial = cls.started
            cls.live[serial] = 0
            cls.last[serial] = time.monotonic()
            done = False
            words = str(messages[-1].get("content", "")).split()
            repeat, delay = None, self.delay
            while words and words[0].startswith(("repeat=", "delay=")):
                key, _, value = words.pop(0).partition("=")
                if key == "repeat":
                    repeat = int(value)
                else:
                    delay = float(value)
            directed = repeat is not None or delay != self.delay
            answer = self._repeat(model, words, repeat or 1, delay) if words and directed else None
            try:
                async for chunk in answer or super().stream_chat(model, messages, params):
                    cls.produced += 1
                    cls.live[serial] += 1
                    cls.last[serial] = time.monotonic()
                    yield chunk
                done = True
            finally:
                cls.active -= 1
                del cls.live[serial]
                del cls.last[serial]
                if done:
                    cls.finished += 1
                else:
                    cls.closed_early += 1

        async def _repeat(self, model: str, words: list[str], repeat: int, delay: float) -> Any:
            cid = f"chatcmpl-{uuid.uuid4().hex}"
            yield make_chunk(cid, model, {"role": "assistant", "content": ""})
            for i in range(repeat * len(words)):
                if delay:
                    await asyncio.sleep(delay)
                yield make_chunk(cid, model, {"content": (" " if i else "") + words[i % len(words)]})
            yield make_chunk(cid, model, {}, "stop")

    control = await Control().start()
    limits = NodeLimits(max_concurrent=args.max_concurrent, queue=args.queue)
    backend = CountingEcho(delay=args.delay)
    async with Host(listen=[LOCAL]) as host, MimirNode(host, backend, limits=limits) as node:
        emit({"event": "ready", "addr": host.listen_addrs[0], "pid": os.getpid()})
        while (cmd := await control.queue.get()) != "eof":
            if cmd.startswith("stats"):
                if cmd == "stats gc":
                    gc.collect()
                conns = host.connections
                now = time.monotonic()
                emit(
                    {
                        "event": "stats",
                        "tasks": len(asyncio.all_tasks()),
                        "conns": len(conns),
                        "streams": sum(c.stream_count for c in conns.values()),
                        "active": CountingEcho.active,
                        "peak_active": CountingEcho.peak_active,
                        "started": CountingEcho.started,
                        "finished": CountingEcho.finished,
                        "closed_early": CountingEcho.closed_early,
                        "produced": CountingEcho.produced,
                        "fewest_produced": min(CountingEcho.live.values(), default=0),
                        "stalled": sum(now - t > STALLED for t in CountingEcho.last.values()),
                        "host_metrics": host.metrics.as_dict(),
                        "node_metrics": node.metrics.as_dict(),
                    }
                )


async def worker_chatter(args: argparse.Namespace) -> None:
    """One client Host: at each "go", ``--streams`` chats at once; prints their checked results."""
    from mimirlite.mimir import MimirClient

    control = await Control().start()
    async with MimirClient(peers=[args.addr], read_timeout=args.read_timeout) as client:
        if not client.nodes:
            emit({"event": "error", "error": f"node at {args.addr} not identified"})
            return
        warm = await checked_chat(client, chat_words(f"c{args.index}warm", 3), args.timeout)
        if warm.status != "ok":  # also imports the openai types before the timed part
            emit({"event": "error", "error": f"warm-up chat: {warm.status} {warm.error}"})
            return
        emit({"event": "ready"})
        rounds = 0
        while await control.expect("go"):  # a round at each "go" (the hostile scenario's load runs many)
            tag = f"c{args.index}" + (f"r{rounds}" if rounds else "")
            t0 = time.perf_counter()
            checks = await asyncio.gather(
                *(
                    checked_chat(client, chat_words(f"{tag}s{s}", args.words), args.timeout)
                    for s in range(args.streams)
                )
            )
            elapsed = time.perf_counter() - t0
            emit({"event": "result", "elapsed": elapsed, **summarize_checks(checks)})
            rounds += 1


async def worker_fast(args: argparse.Namespace) -> None:
    """A client timing ``--runs`` long chats one after the other at each "go": chunks per second each."""
    from mimirlite.mimir import MimirClient

    control = await Control().start()
    async with MimirClient(peers=[args.addr], read_timeout=args.read_timeout) as client:
        warm = await checked_chat(client, chat_words("fastwarm", 100), args.timeout)
        if warm.status != "ok":
            emit({"event": "error", "error": f"warm-up chat: {warm.status} {warm.error}"})
            return
        emit({"event": "ready"})
        rounds = 0
        while await control.expect("go"):
            rates, checks = [], []
            for run in range(args.runs):
                words = chat_words(f"fast{rounds}r{run}", args.words)
                check = await checked_chat(client, words, args.timeout)
                checks.append(check)
                rates.append(check.chunks / check.seconds if check.status == "ok" else 0.0)
            emit({"event": "result", "chunks_s": rates, **summarize_checks(checks)})
            rounds += 1


async def worker_pinger(args: argparse.Namespace) -> None:
    """Pings the node from "go" to "stop", libp2p ping and yamux ping in turn, every ``--interval`` s.

    At "lap" it prints the round-trip times so far (event "lap") and starts new lists."""
    from mimirlite import Host
    from mimirlite.protocols import Ping

    control = await Control().start()
    async with Host() as host:
        conn = await host.dial(args.addr)
        ping = Ping(host, serve=False)
        await ping.ping(conn, timeout=10)
        emit({"event": "ready"})
        if not await control.expect("go"):
            return
        libp2p: list[float] = []
        yamux: list[float] = []
        failures: list[str] = []
        calls: list[tuple[str, Callable[[], Awaitable[float]], list[float]]] = [
            ("libp2p", lambda: ping.ping(conn, timeout=5), libp2p),
            ("yamux", lambda: conn.ping(5), yamux),
        ]

        def report(event: str) -> None:
            emit(
                {
                    "event": event,
                    "libp2p_ms": [round(ms, 3) for ms in libp2p],
                    "yamux_ms": [round(ms, 3) for ms in yamux],
                    "failures": failures[:20],
                    "failure_count": len(failures),
                }
            )

        while not control.stop.is_set():
            for kind, call, out in calls:
                try:
                    out.append(await call() * 1000)
                except Exception as exc:
                    failures.append(f"{kind}: {type(exc).__name__}: {exc}")
            while not control.queue.empty():
                if control.queue.get_nowait() == "lap":
                    report("lap")
                    libp2p.clear(), yamux.clear(), failures.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(control.stop.wait(), args.interval)
        report("result")


async def worker_slow(args: argparse.Namespace) -> None:
    """``--hosts`` clients (a Host each) that ask for a long answer and read it one byte per ``--interval`` s.

    Ready once every stream has its first byte; at "stop" every stream is reset and the hosts stop.
    At most ``DIAL_AT_ONCE`` dials are in progress at a time: the node refuses inbound connections past
    its limit of pending handshakes (64 by default).
    """
    from mimirlite import Host
    from mimirlite.mimir import packets
    from mimirlite.mimir.packets import Packet

    control = await Control().start()
    read = [0] * args.hosts
    async with contextlib.AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(Host()) for _ in range(args.hosts)]

        dials = asyncio.Semaphore(DIAL_AT_ONCE)

        async def open_one(i: int) -> Any:
            async with dials:
                await hosts[i].dial(args.addr)
            stream = await hosts[i].new_stream(args.addr, packets.CHAT_PROTOCOL)
            prompt = f"repeat={args.words // 20 + 1} " + " ".join(chat_words(f"slow{args.index}h{i}", 20))
            request = {"messages": [{"role": "user", "content": prompt}]}
            await stream.write_json(Packet(packets.MESSAGE, request, str(uuid.uuid4())).to_json())
            await stream.close_write()
            first = await asyncio.wait_for(stream.read(1), args.timeout)
            if not first:
                raise RuntimeError("the node ended the stream at once")
            read[i] = 1
            return stream

        streams = await asyncio.gather(*(open_one(i) for i in range(args.hosts)))
        emit({"event": "ready"})

        async def trickle(i: int) -> None:
            while not control.stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(control.stop.wait(), args.interval)
                if control.stop.is_set():
                    return
                if await streams[i].read(1):
                    read[i] += 1

        await asyncio.gather(*(trickle(i) for i in range(args.hosts)))
        for stream in streams:
            await stream.reset()
        emit({"event": "result", "bytes_read": sum(read)})


async def worker_soak(args: argparse.Namespace) -> None:
    """Until "stop": connect, do one to five random things, disconnect; counts what happened."""
    from mimirlite.mimir import MimirClient, packets
    from mimirlite.mimir.packets import Packet
    from mimirlite.protocols import Ping

    control = await Control().start()
    rng = random.Random(args.seed)
    done: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    serial = 0

    def words(n: int) -> list[str]:
        nonlocal serial
        serial += 1
        return chat_words(f"k{args.index}n{serial}", n)

    async def chat(client: MimirClient) -> None:
        check = await checked_chat(client, words(rng.randint(1, 200)), args.timeout)
        if check.status != "ok":
            raise RuntimeError(f"chat {check.status}: {check.error}")

    async def burst(client: MimirClient) -> None:
        n = rng.randint(2, 20)
        checks = await asyncio.gather(
            *(checked_chat(client, words(rng.randint(1, 50)), args.timeout) for _ in range(n))
        )
        bad = [c for c in checks if c.status != "ok"]
        if bad:
            raise RuntimeError(f"{len(bad)} of {n} chats in a burst failed: {bad[0].error}")

    async def abandon(client: MimirClient) -> None:  # the client stops reading and resets the stream
        keep = rng.randint(1, 20)
        prompt = " ".join(words(200))
        async with contextlib.aclosing(client.chat([{"role": "user", "content": prompt}])) as chunks:
            async for _ in chunks:
                keep -= 1
                if not keep:
                    break

    async def raw_stream(client: MimirClient, n: int) -> Any:
        peer = next(iter(client.nodes))
        stream = await client.host.new_stream(peer, packets.CHAT_PROTOCOL)
        prompt = " ".join(words(n))
        request = {"messages": [{"role": "user", "content": prompt}]}
        await stream.write_json(Packet(packets.MESSAGE, request, str(uuid.uuid4())).to_json())
        await stream.close_write()
        return stream

    async def slow_read(client: MimirClient) -> None:  # reads a little, slowly, then leaves
        stream = await raw_stream(client, 2000)
        try:
            for _ in range(rng.randint(1, 5)):
                await stream.read(rng.randint(1, 64))
                await asyncio.sleep(0.2)
        finally:
            await stream.reset()

    async def drop(client: MimirClient) -> None:  # the connection goes away mid-answer
        stream = await raw_stream(client, 500)
        await stream.read(1)
        client.host.connections[stream.remote_peer].close()

    async def ping(client: MimirClient) -> None:
        peer = next(iter(client.nodes))
        pinger = Ping(client.host, serve=False)
        await pinger.ping(peer, timeout=10)

    actions: dict[str, Callable[[MimirClient], Awaitable[None]]] = {
        "chat": chat,
        "burst": burst,
        "abandon": abandon,
        "slow_read": slow_read,
        "drop": drop,
        "ping": ping,
    }
    weights = [5, 2, 2, 1, 1, 1]
    emit({"event": "ready"})
    if not await control.expect("go"):
        return
    while not control.stop.is_set():
        try:
            async with MimirClient(peers=[args.addr], read_timeout=args.timeout) as client:
                if not client.nodes:
                    raise RuntimeError("node not identified")
                done["connects"] += 1
                for _ in range(rng.randint(1, 5)):
                    name = rng.choices(list(actions), weights)[0]
                    await asyncio.wait_for(actions[name](client), args.timeout)
                    done[name] += 1
                    if name == "drop" or control.stop.is_set():
                        break
        except Exception as exc:
            errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
        done["disconnects"] += 1
    emit({"event": "result", "done": dict(done), "errors": dict(errors)})


# ---- hostile peers and honest dialers (the hostile scenario) ----

REOPEN_PAUSE = 0.25
"""Seconds at least between two opens of one lock-out connection (the node may close it at once)."""
HELD_TAIL = 16
"""Bytes a memory attacker leaves off the end of its request: the node waits for them forever."""
REOPEN_STREAM = 1.0
"""Seconds a memory attacker waits before opening a stream again once the node ended one."""


_resets: set[asyncio.Task[None]] = set()


def _refuse_stream(stream: Any) -> None:
    """A stream the node opens on a connection of :func:`dial_from`: reset (nothing is served there)."""
    task = asyncio.get_running_loop().create_task(stream.reset())
    _resets.add(task)
    task.add_done_callback(_resets.discard)


async def dial_from(host: Any, addr: str, source: str, timeout: float) -> Any:
    """A connection to ``addr`` from the local address ``source``, upgraded (multistream, Noise, yamux)
    with ``host``'s key and config: the project's Connection on a socket bound to ``source``, since the
    Host API has no source address. Not registered with ``host`` (close it yourself); streams are opened
    on it with ``host.open_on``."""
    from mimirlite.net.addr import parse_multiaddr
    from mimirlite.net.connection import Connection

    target = parse_multiaddr(addr)
    loop = asyncio.get_running_loop()
    made: list[Any] = []

    def factory() -> Any:
        conn = Connection(
            host.keypair,
            host.config,
            initiator=True,
            on_stream=_refuse_stream,
            on_close=lambda conn: None,
            expected_peer=target.peer_id,
            metrics=host.metrics,
        )
        made.append(conn)
        return conn

    async def connect() -> Any:
        _, conn = await loop.create_connection(factory, target.host, target.port, local_addr=(source, 0))
        await conn.upgrade()
        return conn

    try:
        return await asyncio.wait_for(connect(), timeout)
    except BaseException:
        for conn in made:
            conn.close()
        raise


async def raw_chat(stream: Any, words: list[str]) -> tuple[str, str]:
    """One chat on ``stream`` (negotiated): ("ok", "") when the answer is ``words`` byte for byte and
    finishes; otherwise the completionStop error type, or "lost"/"wrong", and a detail."""
    from mimirlite.mimir import packets
    from mimirlite.mimir.packets import Packet

    prompt = " ".join(words)
    request = {"messages": [{"role": "user", "content": prompt}]}
    await stream.write_json(Packet(packets.MESSAGE, request, str(uuid.uuid4())).to_json())
    await stream.close_write()
    parts: list[str] = []
    finish = None
    while (obj := await stream.read_json()) is not None:
        packet = packets.parse_packet(obj)
        if packet.event == packets.COMPLETION_STOP:
            err = packets.stop_error(packet)
            if err is not None:
                return err.type, err.message[:200]
        elif packet.event == packets.COMPLETION_PACKET:
            choice = packet.data["choices"][0]
            parts.append(choice["delta"].get("content") or "")
            finish = choice.get("finish_reason") or finish
    if finish != "stop":
        return "lost", f"finish_reason {finish!r}"
    text = "".join(parts)
    if text != prompt:
        return "wrong", f"text {text[:80]!r}"
    return "ok", ""


def stop_error_type(tail: bytes) -> str | None:
    """The error type of the last completionStop error packet in ``tail`` (raw answer bytes), if any."""
    at = tail.rfind(b'"completionStop"')
    if at < 0:
        return None
    found = re.search(rb'"type"\s*:\s*"([A-Za-z_]+)"', tail[at:])
    return found.group(1).decode() if found else "completionStop"


async def command_loop(control: Control, stats: Callable[[], dict[str, Any]]) -> None:
    """Until "stop" or end of input: answer each "stats" with ``stats()``."""
    while (cmd := await control.queue.get()) not in ("stop", "eof"):
        if cmd == "stats":
            emit({"event": "stats", **stats()})


async def cancel_all(tasks: Sequence[asyncio.Task[Any]], timeout: float = 30.0) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again every 0.5 s those still running (asyncio's
    wait_for returns a result that is there when the cancellation comes, and the task goes on), for up
    to ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = set(tasks)
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a task that failed is counted by its worker, not re-raised


async def worker_honest(args: argparse.Namespace) -> None:
    """An honest peer: at each "go", ``--runs`` chats one after the other (``--interval`` s apart), each
    from a new peer (a fresh key) over a new connection: a fresh Host's own dial when ``--source`` is not
    given (127.0.0.1), otherwise the project's Connection on a socket bound to ``--source``. Each is
    timed from the start of its dial to the end of its answer, bounded by ``--timeout`` s."""
    from mimirlite import Host
    from mimirlite.mimir import packets

    control = await Control().start()
    serial = 0

    async def attempt(tag: str) -> dict[str, Any]:
        out: dict[str, Any] = {"status": "timeout", "error": "", "connected_s": None}
        t0 = time.perf_counter()
        async with Host() as host:
            conns: list[Any] = []

            async def run() -> None:
                if args.source:
                    conn = await dial_from(host, args.addr, args.source, args.timeout)
                    conns.append(conn)
                else:
                    conn = await host.dial(args.addr)
                out["connected_s"] = round(time.perf_counter() - t0, 4)
                stream = await host.open_on(conn, packets.CHAT_PROTOCOL)
                try:
                    out["status"], out["error"] = await raw_chat(stream, chat_words(tag, args.words))
                finally:
                    await stream.reset()

            try:
                await asyncio.wait_for(run(), args.timeout)
            except asyncio.TimeoutError:
                out["error"] = f"no answer within {args.timeout:g} s"
            except Exception as exc:
                out["status"], out["error"] = "failed", f"{type(exc).__name__}: {exc}"[:200]
            finally:
                for conn in conns:
                    conn.close()
        out["seconds"] = round(time.perf_counter() - t0, 4)
        return out

    emit({"event": "ready"})
    while await control.expect("go"):
        attempts = []
        for run in range(args.runs):
            if run:
                await asyncio.sleep(args.interval)
            serial += 1
            attempts.append(await attempt(f"h{args.index}n{serial}"))
        emit({"event": "result", "attempts": attempts})


class _RawConn(asyncio.Protocol):
    """A TCP connection that says nothing unless written to; ``lost`` is done once it is closed."""

    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def worker_lockout(args: argparse.Namespace) -> None:
    """Pre-authentication lock-out (issue 11, item 2): ``--conns`` TCP connections that send nothing and
    ``--dribble`` that send, every ``--interval`` s, one byte of a valid start of an upgrade (the
    multistream header, the /noise proposal, a first Noise message), all from ``--source``; each is
    opened again as soon as the node closes it (one open per connection every ``REOPEN_PAUSE`` s at
    most), until "stop". Ready once every connection was opened once; "stats" and the result count
    opens, closes by the node and failed opens."""
    from mimirlite.net.addr import parse_multiaddr
    from mimirlite.wire import noise
    from mimirlite.wire.multistream import MultistreamDialer

    control = await Control().start()
    target = parse_multiaddr(args.addr)
    loop = asyncio.get_running_loop()
    proposal = MultistreamDialer([noise.NOISE_PROTOCOL]).data_to_send()
    dribble = proposal + (32).to_bytes(2, "big") + os.urandom(32)
    counts: Counter[str] = Counter(
        dict.fromkeys(("opened", "closed_by_node", "open_failed", "bytes_dribbled"), 0)
    )
    errors: Counter[str] = Counter()
    held: list[float] = []  # seconds each connection the node closed was open
    opened_once = [False] * (args.conns + args.dribble)
    all_open = asyncio.Event()
    open_now = 0

    async def keep(i: int, drip: bool) -> None:
        nonlocal open_now
        while not control.stop.is_set():
            started = loop.time()
            try:
                transport, conn = await asyncio.wait_for(
                    loop.create_connection(_RawConn, target.host, target.port, local_addr=(args.source, 0)),
                    5.0,
                )
            except (OSError, asyncio.TimeoutError) as exc:
                counts["open_failed"] += 1
                errors[f"{type(exc).__name__}: {exc}"[:100]] += 1
            else:
                counts["opened"] += 1
                open_now += 1
                if not opened_once[i]:
                    opened_once[i] = True
                    if all(opened_once):
                        all_open.set()
                try:
                    for byte in dribble if drip else b"":
                        transport.write(bytes([byte]))
                        counts["bytes_dribbled"] += 1
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(asyncio.shield(conn.lost), args.interval)
                        if conn.lost.done():
                            break
                    await conn.lost
                    counts["closed_by_node"] += 1
                    held.append(loop.time() - started)
                finally:
                    open_now -= 1
                    transport.abort()
            await asyncio.sleep(max(0.0, REOPEN_PAUSE - (loop.time() - started)))

    def stats() -> dict[str, Any]:
        return {
            "open_now": open_now,
            **counts,
            "reopened": max(0, counts["opened"] - len(opened_once)),
            "held_s": _dist(held),
            "errors": dict(errors.most_common(5)),
        }

    n = len(opened_once)  # the dribbling connections spread among the idle ones
    drips = [i * args.dribble // n != (i + 1) * args.dribble // n for i in range(n)]
    tasks = [asyncio.create_task(keep(i, drip)) for i, drip in enumerate(drips)]
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(all_open.wait(), args.timeout)
    emit({"event": "ready", **stats()})
    await command_loop(control, stats)
    await cancel_all(tasks)
    emit({"event": "result", **stats()})


async def worker_slots(args: argparse.Namespace) -> None:
    """Chat slots held (issue 11, item 3): one peer (one key) with ``--conns`` connections from
    ``--source`` opens ``--streams`` chats spread over them, each asking for its question's words
    ``--repeat`` times over at no delay (an answer far longer than a yamux window), and never reads them.
    Ready once each answer has begun (its first byte is there) or the node ended the stream; at "stop"
    it counts what the node did to them: streams reset, answers ended (with their error type, e.g.
    ``overloaded``), answers still going; connections closed."""
    from mimirlite import Host
    from mimirlite.errors import MimirliteError
    from mimirlite.mimir import packets
    from mimirlite.mimir.packets import Packet
    from mimirlite.net.stream import StreamState

    control = await Control().start()
    opened: list[Any] = []
    failed: Counter[str] = Counter()
    async with Host() as host:
        conns = [await dial_from(host, args.addr, args.source, args.timeout) for _ in range(args.conns)]
        # Long words: fewer chunks fill a window (less work for the node while it fills them).
        words = [f"held{k}" + "x" * 120 for k in range(20)]
        directives = f"repeat={args.repeat} delay=0 "

        async def open_one(i: int) -> None:
            try:
                stream = await host.open_on(conns[i % len(conns)], packets.CHAT_PROTOCOL)
                request = {"messages": [{"role": "user", "content": directives + " ".join(words)}]}
                await stream.write_json(Packet(packets.MESSAGE, request, str(uuid.uuid4())).to_json())
                await stream.close_write()
                opened.append(stream)
                await asyncio.wait_for(stream.read(1), args.timeout)  # the answer began (or an error)
            except (MimirliteError, asyncio.TimeoutError) as exc:
                failed[f"{type(exc).__name__}: {exc}"[:100]] += 1

        await asyncio.gather(*(open_one(i) for i in range(args.streams)))

        def stats() -> dict[str, Any]:
            return {
                "streams_opened": len(opened),
                "open_failed": dict(failed),
                "streams_reset": sum(s.state is StreamState.RESET for s in opened),
                "connections_open": sum(c.is_open for c in conns),
            }

        emit({"event": "ready", **stats()})
        await command_loop(control, stats)
        out = stats()

        async def tally(stream: Any) -> str:
            """What the node did to ``stream``: reset, ended (with its error type), or still answering.
            Reads what is there (at most two windows, each read within 0.5 s)."""
            if stream.state is StreamState.RESET:
                return "reset"
            tail = b""
            total = 0
            try:
                while total < 2 * WINDOW:
                    data = await asyncio.wait_for(stream.read(), 0.5)
                    if not data:
                        return f"ended: {stop_error_type(tail) or 'answer complete'}"
                    total += len(data)
                    tail = (tail + data)[-4096:]
            except asyncio.TimeoutError:
                pass
            except MimirliteError:
                return "reset"
            return "still answering"

        outcomes = Counter(await asyncio.gather(*(tally(s) for s in opened)))
        for conn in conns:
            conn.close()
    emit({"event": "result", **out, "outcomes": dict(outcomes)})


def partial_request(size: int) -> bytes:
    """A chat request packet whose body is ``size`` bytes, length prefix included, but its last
    ``HELD_TAIL`` bytes."""
    from mimirlite.wire.varint import encode_uvarint

    head = b'{"event":"message","request_id":"%s","data":{"messages":[{"role":"user","content":"' % (
        uuid.uuid4().hex.encode()
    )
    end = b'"}]}}'
    body = head + b"x" * (size - len(head) - len(end)) + end
    return encode_uvarint(size) + body[:-HELD_TAIL]


async def worker_memory(args: argparse.Namespace) -> None:
    """Memory (issue 11, item 4): one peer from ``--source``; at "go" it opens ``--streams`` chat streams,
    each sending a ``--size`` byte request but its last bytes and never finishing it; a stream the node
    ends (a reset, or an answer such as a request timeout) is opened anew after ``REOPEN_STREAM`` s, and a
    connection the node closes is dialed anew, until "stop". Counts requests sent (all but the tail),
    streams reset by the node (while sending or after), answers by error type, bytes sent."""
    from mimirlite import Host
    from mimirlite.errors import MimirliteError
    from mimirlite.mimir import packets

    control = await Control().start()
    payload = partial_request(args.size)
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    async with Host() as host:
        current = [await dial_from(host, args.addr, args.source, args.timeout)]
        redial = asyncio.Lock()

        async def connection() -> Any:
            async with redial:
                if not current[0].is_open:
                    counts["connections_lost"] += 1
                    current[0].close()
                    current[0] = await dial_from(host, args.addr, args.source, args.timeout)
            return current[0]

        emit({"event": "ready"})
        if not await control.expect("go"):
            current[0].close()
            return

        async def hold(i: int) -> None:
            while not control.stop.is_set():
                stream = None
                sent = False
                try:
                    stream = await host.open_on(await connection(), packets.CHAT_PROTOCOL)
                    counts["streams_opened"] += 1
                    await stream.write(payload)
                    sent = True
                    counts["requests_sent"] += 1
                    data = await stream.read()  # the node answers (an error) or ends it; we never finish
                    counts[f"answered: {stop_error_type(data) or 'end of stream'}" if data else "ended"] += 1
                except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
                    counts["reset" if sent else "reset while sending" if stream else "open failed"] += 1
                    errors[f"{type(exc).__name__}: {exc}"[:100]] += 1
                finally:
                    if stream is not None:
                        await stream.reset()
                await asyncio.sleep(REOPEN_STREAM)

        def stats() -> dict[str, Any]:
            return {**counts, "bytes_sent": host.metrics.bytes_out, "errors": dict(errors.most_common(5))}

        tasks = [asyncio.create_task(hold(i)) for i in range(args.streams)]
        await command_loop(control, stats)
        await cancel_all(tasks)
        current[0].close()
    emit({"event": "result", **stats()})


WORKERS: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {
    "node": worker_node,
    "chatter": worker_chatter,
    "fast": worker_fast,
    "pinger": worker_pinger,
    "slow": worker_slow,
    "soak-worker": worker_soak,
    "honest": worker_honest,
    "lockout": worker_lockout,
    "slot-holder": worker_slots,
    "memory-hog": worker_memory,
}


def worker_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="load.py worker")
    p.add_argument("mode", choices=list(WORKERS))
    p.add_argument("--addr", default="")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--words", type=int, default=10)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--hosts", type=int, default=1)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--read-timeout", type=float, default=60.0)
    p.add_argument("--max-concurrent", type=int, default=1024)
    p.add_argument("--queue", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", default="", help="local address to dial from (hostile peers)")
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--dribble", type=int, default=0)
    p.add_argument("--size", type=int, default=4 * MIB)
    p.add_argument("--repeat", type=int, default=1000)
    args = p.parse_args(argv)
    try:
        asyncio.run(WORKERS[args.mode](args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        emit({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        raise
    return 0


# ==== runner side ==================================================================================


class WorkerError(RuntimeError):
    """A worker failed, exited, or did not say what was expected in time."""


class Worker:
    """One worker process: commands to its stdin, JSON events from its stdout, stderr kept."""

    running: set[Worker] = set()

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._changed = asyncio.Event()
        self._eof = False
        self._tasks = [
            asyncio.create_task(self._read_stdout(), name=f"{name}-stdout"),
            asyncio.create_task(self._read_stderr(), name=f"{name}-stderr"),
        ]

    @classmethod
    async def start(cls, name: str, mode: str, *args: str) -> Worker:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            mode,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(ROOT),
            env=env,
            limit=LINE_LIMIT,
        )
        worker = cls(name, proc)
        cls.running.add(worker)
        return worker

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    self.stderr.append(line.decode("utf-8", "replace").rstrip())
                self._changed.set()
        except ValueError as exc:  # a line past LINE_LIMIT
            self.events.append({"event": "error", "error": f"unreadable output: {exc}"})
        finally:
            self._eof = True
            self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr.append(line.decode("utf-8", "replace").rstrip())
            del self.stderr[:-40]

    def send(self, command: str) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(command.encode() + b"\n")

    async def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next event of ``kind`` (consumed); WorkerError on an error event, exit or timeout."""

        async def wait() -> dict[str, Any]:
            while True:
                for i, ev in enumerate(self.events):
                    if ev.get("event") == "error":
                        raise WorkerError(f"{self.name}: {ev.get('error')}; stderr: {self.tail()}")
                    if ev.get("event") == kind:
                        del self.events[i]
                        return ev
                if self._eof:
                    raise WorkerError(f"{self.name} exited before {kind!r}; stderr: {self.tail()}")
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise WorkerError(
                f"{self.name}: no {kind!r} within {timeout:g} s; stderr: {self.tail()}"
            ) from None

    def tail(self, n: int = 5) -> str:
        return " | ".join(self.stderr[-n:])

    async def stop(self) -> None:
        """Close stdin, then SIGTERM, then SIGKILL (this process only); always reaps it."""
        proc = self.proc
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if proc.returncode is not None:
                break
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        if proc.returncode is None:
            await proc.wait()
        for task in self._tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, STOP_TIMEOUT)
        Worker.running.discard(self)

    @classmethod
    async def stop_all(cls) -> None:
        await asyncio.gather(*(w.stop() for w in list(cls.running)))


async def start_all(specs: Sequence[tuple[str, str, Sequence[str]]], ready_timeout: float) -> list[Worker]:
    """Start the workers ``(name, mode, args)`` together; wait until each is ready."""
    workers = [await Worker.start(name, mode, *args) for name, mode, args in specs]
    await asyncio.gather(*(w.expect("ready", ready_timeout) for w in workers))
    return workers


class Node:
    """The node worker, with the runner's readings of its /proc entries."""

    def __init__(self, worker: Worker, addr: str) -> None:
        self.worker = worker
        self.addr = addr
        self.pid = worker.pid
        self.peak_rss_kib = 0
        self.peak_fds = 0
        self._sampler: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, delay: float, max_concurrent: int = 1024, queue: int = 1024) -> Node:
        worker = await Worker.start(
            "node",
            "node",
            "--delay",
            str(delay),
            "--max-concurrent",
            str(max_concurrent),
            "--queue",
            str(queue),
        )
        ready = await worker.expect("ready", START_TIMEOUT)
        return cls(worker, ready["addr"])

    async def stats(self, collect: bool = False) -> dict[str, Any]:
        """The node's own counters, and its RSS (MiB) and descriptors read from /proc."""
        self.worker.send("stats gc" if collect else "stats")
        out = await self.worker.expect("stats", 30)
        status = proc_status(self.pid)
        out["rss_mib"] = status.get("VmRSS", 0) / 1024
        out["hwm_mib"] = status.get("VmHWM", 0) / 1024
        out["fds"] = open_fds(self.pid)
        out.pop("event", None)
        return out

    def sample(self) -> None:
        self.peak_rss_kib = max(self.peak_rss_kib, proc_status(self.pid).get("VmRSS", 0))
        self.peak_fds = max(self.peak_fds, open_fds(self.pid))

    def start_sampling(self, interval: float = 0.05) -> None:
        """Sample RSS and descriptors every ``interval`` s for the peaks (reset here)."""
        self.peak_rss_kib = 0
        self.peak_fds = 0

        async def run() -> None:
            while True:
                self.sample()
                await asyncio.sleep(interval)

        self._sampler = asyncio.create_task(run(), name="node-sampler")

    async def stop_sampling(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        self.sample()

    async def wait_idle(self, timeout: float = IDLE_TIMEOUT, conns: int = 0) -> dict[str, Any]:
        """Poll the node until no chat and only ``conns`` connections (without streams) remain; its
        stats (after a gc) then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            stats = await self.stats()
            if stats["conns"] == conns and stats["active"] == 0 and stats["streams"] == 0:
                return await self.stats(collect=True)
            if loop.time() > deadline:
                raise WorkerError(f"node not idle within {timeout:g} s: {stats}")
            await asyncio.sleep(0.25)


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Verdicts:
    """Named checks of one run: (what, figure, passed)."""

    items: list[tuple[str, str, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Figures printed under the checks that are no check themselves (e.g. what attackers saw)."""

    def add(self, what: str, figure: str, passed: bool) -> None:
        self.items.append((what, figure, passed))

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def passed(self) -> bool:
        return all(ok for _, _, ok in self.items)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---- load ----


@dataclass
class LoadConfig:
    clients: int = 10
    streams: int = 100
    words: int = 100
    delay: float = 0.1
    ping_interval: float = 0.02
    timeout: float = 600.0
    """Seconds for the whole load (every chat) to finish."""


async def start_chatters(node: Node, cfg: LoadConfig | HostileConfig) -> tuple[list[Worker], Worker]:
    """The load's ``cfg.clients`` chatter processes and its pinger, all ready."""
    specs = [
        (
            f"client{i}",
            "chatter",
            [
                "--addr", node.addr, "--index", str(i), "--streams", str(cfg.streams),
                "--words", str(cfg.words), "--timeout", str(cfg.timeout),
            ],
        )
        for i in range(cfg.clients)
    ]  # fmt: skip
    specs.append(("pinger", "pinger", ["--addr", node.addr, "--interval", str(cfg.ping_interval)]))
    workers = await start_all(specs, START_TIMEOUT)
    return workers[:-1], workers[-1]


async def run_load(cfg: LoadConfig, verdicts: Verdicts) -> dict[str, Any]:
    """``clients x streams`` chats at once to one node, with a pinger beside them."""
    chats = cfg.clients * cfg.streams
    node = await Node.start(cfg.delay, max_concurrent=max(chats, 1), queue=1024)
    before = await node.stats(collect=True)
    log(f"load: node {node.pid} at {node.addr}: {before}; starting {cfg.clients} clients and a pinger")
    clients, pinger = await start_chatters(node, cfg)
    connected = await node.stats()
    log(f"load: every client connected: {connected}")
    node.start_sampling()
    t0 = time.perf_counter()
    pinger.send("go")
    for c in clients:
        c.send("go")
    mid: dict[str, Any] = {}

    async def watch() -> None:  # the node's own counters while the chats run
        nonlocal mid
        while True:
            await asyncio.sleep(1.0)
            s = await node.stats()
            if s["active"] >= mid.get("active", -1):
                mid = s

    watcher = asyncio.create_task(watch(), name="load-watch")
    try:
        results = await asyncio.gather(*(c.expect("result", cfg.timeout) for c in clients))
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, WorkerError):
            await watcher
    elapsed = time.perf_counter() - t0
    pinger.send("stop")
    pings = await pinger.expect("result", 30)
    await node.stop_sampling()
    for w in [*clients, pinger]:
        await w.stop()
    after = await node.wait_idle()
    hwm = after["hwm_mib"]
    await node.worker.stop()

    ids = [i for r in results for i in r["completion_ids"]]
    totals = {
        k: sum(r[k] for r in results)
        for k in (
            "chats",
            "ok",
            "lost",
            "wrong",
            "chunks",
            "words_duplicated",
            "words_missing",
            "words_foreign",
        )
    }
    duplicated_answers = len(ids) - len(set(ids))
    seconds = [s for r in results for s in r["seconds"]]
    peak_rss = node.peak_rss_kib / 1024
    rss_bound = before["rss_mib"] + chats * WINDOW / MIB
    fd_bound = before["fds"] + cfg.clients + 1
    libp2p, yamux = pings["libp2p_ms"], pings["yamux_ms"]
    out = {
        "config": vars(cfg),
        "elapsed_s": elapsed,
        **totals,
        "duplicated_answers": duplicated_answers,
        "chat_seconds": {"p50": percentile(seconds, 50), "p99": percentile(seconds, 99), "max": max(seconds)},
        "chunks_per_s": totals["chunks"] / elapsed,
        "node_before": before,
        "node_connected": connected,
        "node_busiest": mid,
        "node_after": after,
        "peak_rss_mib": peak_rss,
        "hwm_mib": hwm,
        "rss_bound_mib": rss_bound,
        "peak_fds": node.peak_fds,
        "fd_bound": fd_bound,
        "ping_libp2p_ms": _dist(libp2p),
        "ping_yamux_ms": _dist(yamux),
        "ping_failures": pings["failures"],
        "errors": [r["errors"] for r in results if r["errors"]],
    }
    verdicts.add(
        "every chat answered, complete and byte for byte", f"{totals['ok']} of {chats}", totals["ok"] == chats
    )
    verdicts.add(
        "lost",
        f"{totals['lost']} chats, {totals['words_missing']} words",
        totals["lost"] == 0 and totals["words_missing"] == 0,
    )
    verdicts.add(
        "duplicated",
        f"{duplicated_answers} answers, {totals['words_duplicated']} words",
        duplicated_answers == 0 and totals["words_duplicated"] == 0,
    )
    verdicts.add(
        "every chat in progress at once on the node",
        f"peak {after['peak_active']} of {chats} in the echo model at once",
        after["peak_active"] == chats,
    )
    verdicts.add(
        "node peak RSS <= baseline + one window per chat",
        f"{peak_rss:.1f} MiB (baseline {before['rss_mib']:.1f}, bound {rss_bound:.0f})",
        peak_rss <= rss_bound,
    )
    verdicts.add(
        "node peak descriptors <= baseline + one per connection",
        f"{node.peak_fds} (baseline {before['fds']}, bound {fd_bound})",
        node.peak_fds <= fd_bound,
    )
    verdicts.add(
        f"ping p99 <= {PING_P99_MS:g} ms during the load",
        f"libp2p p99 {percentile(libp2p, 99):.1f} ms (n={len(libp2p)}), "
        f"yamux p99 {percentile(yamux, 99):.1f} ms",
        bool(libp2p) and percentile(libp2p, 99) <= PING_P99_MS and not pings["failure_count"],
    )
    verdicts.add(
        "node back to its baseline tasks and descriptors",
        f"tasks {before['tasks']} -> {after['tasks']}, fds {before['fds']} -> {after['fds']}",
        after["tasks"] == before["tasks"] and after["fds"] == before["fds"],
    )
    return out


def _dist(ms: Sequence[float]) -> dict[str, float]:
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "max": max(ms),
    }


# ---- slow readers ----


@dataclass
class SlowConfig:
    slow: int = 100
    slow_procs: int = 2
    slow_words: int = 5000
    """Words each slow reader asks for (20 asked, repeated): ~1.5 MiB of answer, far past one window."""
    fast_words: int = 10000
    """Words of each timed chat of the fast client (a request of about 130 KB)."""
    fast_runs: int = 3
    hold: float = 10.0
    """Seconds the slow readers stay (reading a byte a second) after the fast client's runs."""
    interval: float = 1.0
    timeout: float = 300.0


async def run_slow(cfg: SlowConfig, verdicts: Verdicts) -> dict[str, Any]:
    """A fast client's chunks/s alone, beside ``cfg.slow`` slow readers holding their windows, alone again;
    the node's RSS while the slow readers hold their windows against its RSS before them."""
    node = await Node.start(0.0)
    idle = await node.stats(collect=True)
    log(f"slow: node {node.pid} at {node.addr}: {idle}")
    fast_args = [
        "--addr", node.addr, "--words", str(cfg.fast_words), "--runs", str(cfg.fast_runs),
        "--timeout", str(cfg.timeout),
    ]  # fmt: skip
    (fast,) = await start_all([("fast", "fast", fast_args)], START_TIMEOUT)

    async def fast_round() -> dict[str, Any]:
        fast.send("go")
        return await fast.expect("result", cfg.timeout)

    alone = await fast_round()
    before = await node.wait_idle(conns=1)
    log(f"slow: fast client alone {statistics.median(alone['chunks_s']):,.0f} chunks/s; node: {before}")

    node.start_sampling()
    per = [
        cfg.slow // cfg.slow_procs + (1 if i < cfg.slow % cfg.slow_procs else 0)
        for i in range(cfg.slow_procs)
    ]
    slow_specs = [
        (
            f"slow{i}",
            "slow",
            [
                "--addr", node.addr, "--index", str(i), "--hosts", str(n), "--words", str(cfg.slow_words),
                "--interval", str(cfg.interval), "--timeout", str(cfg.timeout),
            ],
        )
        for i, n in enumerate(per)
        if n
    ]  # fmt: skip
    slow_workers = await start_all(slow_specs, START_TIMEOUT)
    stuck = await _wait_windows_full(node, cfg.slow, cfg.timeout)
    log(f"slow: {cfg.slow} slow readers hold their windows; node: {stuck}")
    beside = await fast_round()
    await asyncio.sleep(cfg.hold)  # the slow readers keep reading a byte a second meanwhile
    held = await node.stats(collect=True)
    await node.stop_sampling()
    for w in slow_workers:
        w.send("stop")
    slow_results = await asyncio.gather(*(w.expect("result", 30) for w in slow_workers))
    for w in slow_workers:
        await w.stop()
    await node.wait_idle(conns=1)
    alone_again = await fast_round()
    await fast.stop()
    after = await node.wait_idle()
    await node.worker.stop()

    growth = node.peak_rss_kib / 1024 - before["rss_mib"]
    bound = cfg.slow * WINDOW / MIB
    alone_rates = alone["chunks_s"] + alone_again["chunks_s"]
    rate_alone = statistics.median(alone_rates) or math.nan
    rate_beside = statistics.median(beside["chunks_s"])
    sent_per_slow = (stuck["produced"] - before["produced"]) / cfg.slow
    fast_ok = alone["ok"] + beside["ok"] + alone_again["ok"]
    fast_chats = alone["chats"] + beside["chats"] + alone_again["chats"]
    out = {
        "config": vars(cfg),
        "node_idle": idle,
        "node_before": before,
        "node_stuck": stuck,
        "node_held": held,
        "node_after": after,
        "peak_rss_mib": node.peak_rss_kib / 1024,
        "rss_growth_mib": growth,
        "rss_bound_mib": bound,
        "peak_fds": node.peak_fds,
        "chunks_sent_per_slow_stream": sent_per_slow,
        "slow_bytes_read": sum(r["bytes_read"] for r in slow_results),
        "fast_alone_chunks_s": alone_rates,
        "fast_beside_chunks_s": beside["chunks_s"],
        "fast_ratio": rate_beside / rate_alone,
        "fast_ok": fast_ok,
        "fast_chats": fast_chats,
    }
    verdicts.add(
        f"node RSS growth with {cfg.slow} slow readers <= {cfg.slow} windows",
        f"{growth:.1f} MiB (bound {bound:.0f} MiB; {sent_per_slow:,.0f} chunks sent per slow stream)",
        growth <= bound,
    )
    verdicts.add(
        "fast client beside the slow readers at full speed (>= 80% of alone)",
        f"{rate_beside:,.0f} vs {rate_alone:,.0f} chunks/s ({rate_beside / rate_alone:.2f}x)",
        rate_beside >= 0.8 * rate_alone,
    )
    verdicts.add(
        "fast answers complete and byte for byte", f"{fast_ok} of {fast_chats}", fast_ok == fast_chats
    )
    verdicts.add(
        "node back to its baseline tasks and descriptors",
        f"tasks {idle['tasks']} -> {after['tasks']}, fds {idle['fds']} -> {after['fds']}",
        after["tasks"] == idle["tasks"] and after["fds"] == idle["fds"],
    )
    return out


async def _wait_windows_full(node: Node, slow: int, timeout: float) -> dict[str, Any]:
    """Wait until ``slow`` chats are in progress, each has produced at least ``WINDOW / 512`` chunks (a
    chunk is a few hundred bytes), and the node has stopped producing (its sends wait for window)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = -1
    steady = 0
    while True:
        stats = await node.stats()
        full = stats["active"] >= slow and stats["fewest_produced"] >= WINDOW // 512
        if full and stats["produced"] == last:
            steady += 1
            if steady >= 3:
                return stats
        else:
            steady = 0
        last = stats["produced"]
        if loop.time() > deadline:
            raise WorkerError(f"slow readers' windows not full within {timeout:g} s: {stats}")
        await asyncio.sleep(0.5)


# ---- soak ----


@dataclass
class SoakConfig:
    minutes: float = 10.0
    workers: int = 4
    warmup: float = 30.0
    delay: float = 0.005
    sample_every: float = 30.0
    rss_slack: float = 4.0
    """MiB the node's RSS may stay above its baseline at the end (allocator arenas, caches)."""
    timeout: float = 120.0
    seed: int = 1


async def _soak_round(
    node: Node, cfg: SoakConfig, seconds: float, seed: int, series: list[Any] | None
) -> list[Any]:
    specs = [
        (
            f"soak{i}",
            "soak-worker",
            ["--addr", node.addr, "--index", str(i), "--seed", str(seed + i), "--timeout", str(cfg.timeout)],
        )
        for i in range(cfg.workers)
    ]
    specs.append(("soak-pinger", "pinger", ["--addr", node.addr, "--interval", "0.1"]))
    workers = await start_all(specs, START_TIMEOUT)
    for w in workers:
        w.send("go")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    end = t0 + seconds
    while (left := end - loop.time()) > 0:
        await asyncio.sleep(min(left, cfg.sample_every))
        if series is not None:
            s = await node.stats()
            s["t_s"] = round(loop.time() - t0)
            series.append(s)
            log(f"soak: {s['t_s']} s: rss {s['rss_mib']:.1f} MiB, fds {s['fds']}, tasks {s['tasks']}, "
                f"conns {s['conns']}, chats {s['started']}")  # fmt: skip
    for w in workers:
        w.send("stop")
    results = await asyncio.gather(*(w.expect("result", cfg.timeout + 30) for w in workers))
    for w in workers:
        await w.stop()
    return results


async def run_soak(cfg: SoakConfig, verdicts: Verdicts) -> dict[str, Any]:
    node = await Node.start(cfg.delay)
    log(f"soak: node {node.pid} at {node.addr}; warm-up {cfg.warmup:g} s")
    await _soak_round(node, cfg, cfg.warmup, cfg.seed + 1000, None)
    before = await node.wait_idle()
    log(f"soak: baseline {before}; soaking {cfg.minutes:g} min")
    series: list[Any] = []
    node.start_sampling(1.0)
    results = await _soak_round(node, cfg, cfg.minutes * 60, cfg.seed, series)
    await node.stop_sampling()
    after = await node.wait_idle()
    await node.worker.stop()
    done: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for r in results[:-1]:
        done.update(r["done"])
        errors.update(r["errors"])
    pings = results[-1]
    rss_diff = after["rss_mib"] - before["rss_mib"]
    out = {
        "config": vars(cfg),
        "done": dict(done),
        "errors": dict(errors),
        "chats_started_on_node": after["started"] - before["started"],
        "chats_closed_early_on_node": after["closed_early"] - before["closed_early"],
        "node_before": before,
        "node_after": after,
        "series": series,
        "peak_rss_mib": node.peak_rss_kib / 1024,
        "peak_fds": node.peak_fds,
        "ping_libp2p_ms": _dist(pings["libp2p_ms"]),
        "ping_failures": pings["failures"],
    }
    verdicts.add("soak: no unexpected error", f"{sum(errors.values())} errors; did {dict(done)}", not errors)
    verdicts.add(
        "soak: tasks back to baseline",
        f"{before['tasks']} -> {after['tasks']}",
        after["tasks"] == before["tasks"],
    )
    verdicts.add(
        "soak: descriptors back to baseline",
        f"{before['fds']} -> {after['fds']}",
        after["fds"] == before["fds"],
    )
    verdicts.add(
        f"soak: RSS back to baseline (within {cfg.rss_slack:g} MiB)",
        f"{before['rss_mib']:.1f} -> {after['rss_mib']:.1f} MiB (peak {node.peak_rss_kib / 1024:.1f})",
        rss_diff <= cfg.rss_slack,
    )
    return out


# ---- hostile ----


@dataclass
class HostileConfig:
    """The hostile scenario: the chat load in rounds, and beside it the attacks of issue 11 (items 2-4)
    one after the other, each by its own worker processes from its own source address."""

    clients: int = 10
    streams: int = 100
    words: int = 100
    delay: float = 0.1
    ping_interval: float = 0.02
    attacks: tuple[str, ...] = ("memory", "lockout", "slots")
    """Which attacks, in this order (memory first: the others measure times, not memory)."""
    lockout_idle: int = 200
    """Idle connections held from 127.0.0.2 (item 2)."""
    lockout_dribble: int = 50
    """Dribbling connections held beside them, a byte every ``dribble_interval`` s."""
    dribble_interval: float = 0.5
    honest_dials: int = 10
    """Chats each honest dialer makes during the lock-out (from 127.0.0.1, and from 127.0.0.2)."""
    honest_pause: float = 0.5
    lockout_target: float = 2.0
    """Seconds from an honest dial's start to the end of its answer (the issue's target)."""
    slot_chats: int = 256
    """Unread chats the slot holder opens (item 3); the node gets this many slots on top of the load's."""
    slot_conns: int = 4
    slot_repeat: int = 1000
    """The held answers are their 20 words of 125 bytes this many times over (about 8 MB each)."""
    slot_attempts: int = 3
    slot_target: float = 5.0
    memory_peers: int = 4
    memory_streams: int = 50
    memory_request: int = 4 * MIB
    memory_hold: float = 20.0
    """Seconds the memory attackers keep their unfinished requests up (re-opening any the node ends)."""
    memory_budget: float = 300.0
    """MiB the node's peak RSS may exceed its baseline under the memory attack (the issue's target)."""
    memory_slack: float = 50.0
    memory_settle: float = 60.0
    """Seconds after the attackers left by which RSS must be within ``memory_slack`` MiB of baseline."""
    memory_wait: float = 90.0
    """Seconds the RSS is watched after the attackers left."""
    attempt_timeout: float = 15.0
    """Bound on each honest chat (dial included)."""
    timeout: float = 600.0
    """Bound on each round of the chat load."""


class LoadRounds:
    """The chat load beside the attacks: every chatter's chats at once, round after round, until stopped."""

    def __init__(self, clients: Sequence[Worker], timeout: float) -> None:
        self.clients = clients
        self.timeout = timeout
        self.results: list[dict[str, Any]] = []
        self.rounds = 0
        self._new_round = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="load-rounds")

    async def round(self) -> None:
        """One round: every chatter's chats at once, until each has its checked results."""
        for c in self.clients:
            c.send("go")
        self.rounds += 1
        self._new_round.set()
        results = await asyncio.gather(*(c.expect("result", self.timeout) for c in self.clients))
        self.results.extend(results)

    async def _run(self) -> None:
        while not self._stopping:
            await self.round()

    async def next_round(self) -> None:
        """Return once the next round has started (its chats were asked for)."""
        self._new_round.clear()
        assert self._task is not None
        waiter = asyncio.ensure_future(self._new_round.wait())
        await asyncio.wait((waiter, self._task), return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task.done():
            self._task.result()  # a round failed: raise its WorkerError
            raise WorkerError("the chat load stopped")

    async def stop(self) -> None:
        """Let the round in progress end; its error, if any, is raised."""
        self._stopping = True
        if self._task is not None:
            await self._task

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def _settle(node: Node, conns: int, timeout: float = 60.0) -> dict[str, Any]:
    """Wait (bounded) until the node has ``conns`` connections again (the attackers' are gone)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        stats = await node.stats()
        if stats["conns"] <= conns or loop.time() > deadline:
            return stats
        await asyncio.sleep(0.5)


def _counter_delta(after: dict[str, Any], before: dict[str, Any], *path: str) -> dict[str, int]:
    a, b = after, before
    for key in path:
        a, b = a.get(key, {}), b.get(key, {})
    return {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0)}


def _node_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """What the node counted during a phase: refusals, closes, protocol errors (host and node)."""
    out = {
        f"host.{key}": _counter_delta(after, before, "host_metrics", key)
        for key in ("refused", "closed", "protocol_errors")
    }
    out["node.refused"] = _counter_delta(after, before, "node_metrics", "refused")
    for key in ("bad_requests", "cancelled", "served"):
        out[f"node.{key}"] = after["node_metrics"].get(key, 0) - before["node_metrics"].get(key, 0)
    return {k: v for k, v in out.items() if v}


def _times(attempts: Sequence[dict[str, Any]]) -> str:
    ok = [a["seconds"] for a in attempts if a["status"] == "ok"]
    bad = Counter(f"{a['status']}: {a['error']}"[:80] for a in attempts if a["status"] != "ok")
    text = f"{len(ok)} of {len(attempts)} answered"
    if ok:
        text += f", p50 {percentile(ok, 50):.2f} s, max {max(ok):.2f} s"
    if bad:
        text += "; " + "; ".join(f"{n}x {what}" for what, n in bad.most_common(2))
    return text


async def _attack_memory(
    cfg: HostileConfig, node: Node, baseline: float, verdicts: Verdicts
) -> dict[str, Any]:
    """Item 4: ``memory_peers`` peers, ``memory_streams`` unfinished requests of ``memory_request`` bytes
    each; the node's peak RSS against ``baseline`` (MiB), then its RSS once they left."""
    loop = asyncio.get_running_loop()
    specs = [
        (
            f"memory{i}",
            "memory-hog",
            [
                "--addr", node.addr, "--source", f"127.0.0.{4 + i}", "--streams", str(cfg.memory_streams),
                "--size", str(cfg.memory_request), "--timeout", str(cfg.attempt_timeout),
            ],
        )
        for i in range(cfg.memory_peers)
    ]  # fmt: skip
    hogs = await start_all(specs, START_TIMEOUT)
    node.start_sampling()
    t0 = loop.time()
    for h in hogs:
        h.send("go")
    series: list[tuple[float, float]] = []
    while (elapsed := loop.time() - t0) < cfg.memory_hold:
        await asyncio.sleep(min(1.0, cfg.memory_hold - elapsed))
        series.append((round(loop.time() - t0, 1), proc_status(node.pid).get("VmRSS", 0) / 1024))
    for h in hogs:
        h.send("stop")
    results = await asyncio.gather(*(h.expect("result", 60) for h in hogs))
    for h in hogs:
        await h.stop()
    await node.stop_sampling()
    left = loop.time()
    hwm = proc_status(node.pid).get("VmHWM", 0) / 1024
    peak = max(hwm, node.peak_rss_kib / 1024)
    log(f"hostile: memory: peak RSS {peak:.1f} MiB (baseline {baseline:.1f}); attackers gone, watching RSS")
    recovery: list[tuple[float, float]] = []
    back_after = None
    while (waited := loop.time() - left) <= cfg.memory_wait:
        rss = proc_status(node.pid).get("VmRSS", 0) / 1024
        recovery.append((round(waited, 1), round(rss, 1)))
        if rss <= baseline + cfg.memory_slack:
            back_after = waited
            break
        await asyncio.sleep(1.0)
    hogs_total: Counter[str] = Counter()
    for r in results:
        hogs_total.update({k: v for k, v in r.items() if isinstance(v, int)})
    streams = cfg.memory_peers * cfg.memory_streams
    verdicts.add(
        f"hostile/memory: node peak RSS <= baseline + {cfg.memory_budget:g} MiB under {streams} unfinished "
        f"{cfg.memory_request / MIB:g} MiB requests from {cfg.memory_peers} peers",
        f"VmHWM {peak:.1f} MiB, baseline {baseline:.1f} MiB (+{peak - baseline:.1f}); the attackers sent "
        f"{hogs_total['bytes_sent'] / MIB:.0f} MiB in {cfg.memory_hold:g} s (the attack's full size: "
        f"{streams * cfg.memory_request / MIB:.0f} MiB), {hogs_total['requests_sent']} requests whole but "
        "their last bytes",
        peak <= baseline + cfg.memory_budget,
    )
    last = recovery[-1][1] if recovery else math.nan
    verdicts.add(
        f"hostile/memory: RSS within {cfg.memory_slack:g} MiB of baseline within {cfg.memory_settle:g} s "
        "after the attackers left",
        f"after {back_after:.1f} s"
        if back_after is not None
        else f"not within {cfg.memory_wait:g} s: {last:.1f} MiB (baseline {baseline:.1f})",
        back_after is not None and back_after <= cfg.memory_settle,
    )
    verdicts.note(f"hostile/memory attackers (all {cfg.memory_peers}): {dict(hogs_total)}")
    every_10s = [f"{t:g} s {rss:.0f}" for t, rss in recovery[::10]]
    if recovery and len(recovery) % 10 != 1:
        every_10s.append(f"{recovery[-1][0]:g} s {recovery[-1][1]:.0f}")
    verdicts.note(f"hostile/memory: node RSS (MiB) after the attackers left: {', '.join(every_10s)}")
    return {
        "baseline_mib": baseline,
        "peak_rss_mib": peak,
        "hwm_mib": hwm,
        "sampled_peak_mib": node.peak_rss_kib / 1024,
        "rss_during": series,
        "rss_after_leaving": recovery,
        "back_within_slack_s": back_after,
        "attackers": results,
    }


async def _attack_lockout(cfg: HostileConfig, node: Node, verdicts: Verdicts) -> dict[str, Any]:
    """Item 2: idle and dribbling connections from 127.0.0.2, re-opened as soon as closed; honest chats
    dialed from 127.0.0.1 and from 127.0.0.2 meanwhile, each timed from its dial to its answer's end."""
    common = [
        "--addr", node.addr, "--runs", str(cfg.honest_dials), "--interval", str(cfg.honest_pause),
        "--words", "3", "--timeout", str(cfg.attempt_timeout),
    ]  # fmt: skip
    honest = await start_all(
        [
            ("honest-other-address", "honest", [*common, "--index", "1"]),
            ("honest-same-address", "honest", [*common, "--index", "2", "--source", "127.0.0.2"]),
        ],
        START_TIMEOUT,
    )
    flood = await Worker.start(
        "lockout",
        "lockout",
        "--addr", node.addr, "--source", "127.0.0.2", "--conns", str(cfg.lockout_idle),
        "--dribble", str(cfg.lockout_dribble), "--interval", str(cfg.dribble_interval), "--timeout", "30",
    )  # fmt: skip
    ready = await flood.expect("ready", START_TIMEOUT)
    log(f"hostile: lockout: flood in place: {ready}")
    await asyncio.sleep(1.0)  # the refused ones are re-opened: the node's table stays full
    for h in honest:
        h.send("go")
    bound = cfg.honest_dials * (cfg.attempt_timeout + cfg.honest_pause) + 60
    other, same = await asyncio.gather(*(h.expect("result", bound) for h in honest))
    flood.send("stop")
    flooded = await flood.expect("result", 60)
    for w in (*honest, flood):
        await w.stop()
    conns = cfg.clients + 1
    verdicts.add(
        f"hostile/lockout: chats from 127.0.0.1 done within {cfg.lockout_target:g} s of the dial while "
        f"{cfg.lockout_idle} idle + {cfg.lockout_dribble} dribbling connections from 127.0.0.2 are held",
        _times(other["attempts"]),
        all(a["status"] == "ok" and a["seconds"] <= cfg.lockout_target for a in other["attempts"]),
    )
    verdicts.add(
        f"hostile/lockout: chats from 127.0.0.2 (the flood's address) done within {cfg.lockout_target:g} s",
        _times(same["attempts"]),
        all(a["status"] == "ok" and a["seconds"] <= cfg.lockout_target for a in same["attempts"]),
    )
    keys = ("opened", "reopened", "closed_by_node", "open_failed", "bytes_dribbled", "held_s")
    shown = {k: flooded.get(k) for k in keys}
    verdicts.note(f"hostile/lockout flood: {shown}")
    return {
        "flood": flooded,
        "honest_other_address": other,
        "honest_same_address": same,
        "conns_after": conns,
    }


async def _wait_stalled(node: Node, want: int, timeout: float = 90.0) -> dict[str, Any]:
    """Wait (bounded) until ``want`` chats are stalled on the node (their answers wait for window) or
    the count stops changing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen: list[int] = []
    while True:
        stats = await node.stats()
        seen.append(stats["stalled"])
        steady = len(seen) >= 6 and len(set(seen[-4:])) == 1
        if stats["stalled"] >= want or steady or loop.time() > deadline:
            return stats
        await asyncio.sleep(1.0)


async def _attack_slots(
    cfg: HostileConfig, node: Node, load: LoadRounds, verdicts: Verdicts
) -> dict[str, Any]:
    """Item 3: one peer holds ``slot_chats`` unread chats on ``slot_conns`` connections from 127.0.0.3;
    another peer's chat (127.0.0.1), asked while a round of the load is in progress, timed to its end."""
    honest = await Worker.start(
        "honest-slots", "honest", "--addr", node.addr, "--runs", "1", "--words", "3", "--index", "3",
        "--timeout", str(cfg.attempt_timeout),
    )  # fmt: skip
    await honest.expect("ready", START_TIMEOUT)
    holder = await Worker.start(
        "slot-holder", "slot-holder", "--addr", node.addr, "--source", "127.0.0.3",
        "--conns", str(cfg.slot_conns), "--streams", str(cfg.slot_chats), "--repeat", str(cfg.slot_repeat),
        "--timeout", "60",
    )  # fmt: skip
    ready = await holder.expect("ready", START_TIMEOUT + 60)
    stalled = await _wait_stalled(node, cfg.slot_chats)
    log(f"hostile: slots: holder ready {ready}; {stalled['stalled']} chats stalled on the node")
    attempts = []
    loop = asyncio.get_running_loop()
    for _ in range(cfg.slot_attempts):
        await load.next_round()
        deadline = loop.time() + 10.0
        full = cfg.clients * cfg.streams + stalled["stalled"]  # the round's chats and the held ones
        while (at := await node.stats())["active"] < full and loop.time() < deadline:
            await asyncio.sleep(0.2)  # until the round's chats are all in the echo model
        honest.send("go")
        (attempt,) = (await honest.expect("result", cfg.attempt_timeout + 60))["attempts"]
        attempt["node_active_at_ask"] = at["active"]
        attempts.append(attempt)
    holder.send("stop")
    held = await holder.expect("result", 60)
    for w in (honest, holder):
        await w.stop()
    verdicts.add(
        f"hostile/slots: another peer's chat answered within {cfg.slot_target:g} s while one peer holds "
        f"{cfg.slot_chats} unread chats on {cfg.slot_conns} connections",
        _times(attempts) + f" (in the echo model at each ask: {[a['node_active_at_ask'] for a in attempts]})",
        all(a["status"] == "ok" and a["seconds"] <= cfg.slot_target for a in attempts),
    )
    keys = ("streams_opened", "open_failed", "streams_reset", "connections_open", "outcomes")
    shown = {k: held.get(k) for k in keys}
    verdicts.note(f"hostile/slots holder: {shown}")
    return {"holder_ready": ready, "node_stalled": stalled, "holder": held, "honest": attempts}


async def run_hostile(cfg: HostileConfig, verdicts: Verdicts) -> dict[str, Any]:
    """The chat load (``clients x streams`` chats a round, round after round) with a pinger, and beside
    it each attack in turn; the load's answers and pings are checked over the whole run."""
    chats = cfg.clients * cfg.streams
    node = await Node.start(cfg.delay, max_concurrent=chats + cfg.slot_chats, queue=1024)
    idle = await node.stats(collect=True)
    log(f"hostile: node {node.pid} at {node.addr}: {idle}; starting {cfg.clients} clients and a pinger")
    clients, pinger = await start_chatters(node, cfg)
    load = LoadRounds(clients, cfg.timeout)
    out: dict[str, Any] = {"config": {**vars(cfg), "attacks": list(cfg.attacks)}, "node_idle": idle}
    pings: dict[str, Any] = {}
    try:
        # The baseline: the node's peak RSS over one round of the load alone.
        pinger.send("go")
        node.start_sampling()
        await load.round()
        await node.stop_sampling()
        base = await node.stats()
        baseline = max(base["hwm_mib"], node.peak_rss_kib / 1024)
        pinger.send("lap")
        pings["load alone"] = await pinger.expect("lap", 30)
        out["node_baseline"] = base
        log(f"hostile: a round of the load alone: baseline RSS {baseline:.1f} MiB; node {base}")
        load.start()
        for name in cfg.attacks:
            before = await node.stats()
            log(f"hostile: {name}: starting beside the load (round {load.rounds})")
            others = set(Worker.running)
            try:
                if name == "memory":
                    out[name] = await _attack_memory(cfg, node, baseline, verdicts)
                elif name == "lockout":
                    out[name] = await _attack_lockout(cfg, node, verdicts)
                else:
                    out[name] = await _attack_slots(cfg, node, load, verdicts)
            except WorkerError as exc:  # this attack's workers stop; the load and the next attacks go on
                log(f"hostile: {name}: failed: {exc}")
                verdicts.add(f"hostile/{name} ran to its end", str(exc)[:300], False)
                out[name] = {"error": str(exc)}
                await node.stop_sampling()
                await asyncio.gather(*(w.stop() for w in Worker.running - others))
            after = await _settle(node, cfg.clients + 1)
            pinger.send("lap")
            pings[name] = await pinger.expect("lap", 30)
            out[name]["node_counted"] = delta = _node_delta(after, before)
            out[name]["node_after"] = after
            verdicts.note(f"hostile/{name}: the node counted {delta}")
            log(f"hostile: {name}: done; node {after}")
        await load.stop()
    finally:
        load.cancel()
    pinger.send("stop")
    pings["end"] = await pinger.expect("result", 30)
    for w in [*clients, pinger]:
        await w.stop()
    try:
        after = await node.wait_idle()
    except WorkerError as exc:
        after = await node.stats(collect=True)
        verdicts.note(f"hostile: {exc}")
    await node.worker.stop()

    results = load.results
    ids = [i for r in results for i in r["completion_ids"]]
    totals = {k: sum(r[k] for r in results) for k in ("chats", "ok", "lost", "wrong", "words_duplicated")}
    duplicated = len(ids) - len(set(ids)) + totals["words_duplicated"]
    verdicts.add(
        "hostile: the chat load beside the attacks answered, complete and byte for byte",
        f"{totals['ok']} of {totals['chats']} in {len(results) // max(cfg.clients, 1)} rounds "
        f"({totals['lost']} lost, {totals['wrong']} wrong, {duplicated} duplicated)",
        totals["chats"] > 0 and totals["ok"] == totals["chats"] and not duplicated,
    )
    laps = {name: _dist(p["libp2p_ms"]) for name, p in pings.items() if name != "end"}
    failures = sum(p["failure_count"] for p in pings.values())
    verdicts.add(
        f"hostile: ping p99 <= {PING_P99_MS:g} ms during the load and each attack",
        ", ".join(f"{name} {d.get('p99', math.nan):.1f} ms" for name, d in laps.items())
        + f"; {failures} failed",
        all(d["n"] and d["p99"] <= PING_P99_MS for d in laps.values()) and not failures,
    )
    verdicts.note(
        f"hostile: node from idle to the end: {_node_delta(after, idle)}; "
        f"tasks {idle['tasks']} -> {after['tasks']}, fds {idle['fds']} -> {after['fds']}"
    )
    out.update(
        {
            "load": {**totals, "rounds": len(results) // max(cfg.clients, 1),
                     "errors": [r["errors"] for r in results if r["errors"]]},
            "ping_libp2p_ms": laps,
            "ping_failures": [f for p in pings.values() for f in p["failures"]][:20],
            "node_after": after,
        }
    )  # fmt: skip
    return out


# ---- main ----


def machine() -> str:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return f"{os.cpu_count()} CPUs, load average {load}, Python {sys.version.split()[0]}"


async def runner(args: argparse.Namespace) -> int:
    verdicts = Verdicts()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "interop/load.py", *sys.argv[1:]]),
        "machine_at_start": machine(),
    }
    log(f"{report['command']}: {report['machine_at_start']}")
    scenarios = set(args.only.split(",")) if args.only else {"load", "slow"}
    if args.soak is not None:
        scenarios.add("soak")
    if args.hostile:
        scenarios.add("hostile")
    runs: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "load": lambda: run_load(LoadConfig(args.clients, args.streams, args.words, args.delay), verdicts),
        "slow": lambda: run_slow(SlowConfig(slow=args.slow, slow_procs=args.slow_procs), verdicts),
        "soak": lambda: run_soak(
            SoakConfig(minutes=args.soak or 10.0, workers=args.soak_workers, rss_slack=args.rss_slack),
            verdicts,
        ),
        "hostile": lambda: run_hostile(
            HostileConfig(
                clients=args.clients,
                streams=args.streams,
                words=args.words,
                delay=args.delay,
                lockout_idle=args.lockout_idle,
                lockout_dribble=args.lockout_dribble,
                honest_dials=args.honest_dials,
                slot_chats=args.slot_chats,
                memory_streams=args.memory_streams,
                memory_hold=args.memory_hold,
                attacks=tuple(a for a in args.attacks.split(",") if a),
            ),
            verdicts,
        ),
    }
    unknown = scenarios - set(runs)
    attacks = {a for a in args.attacks.split(",") if a} - {"memory", "lockout", "slots"}
    if attacks:
        print(f"unknown attack: {', '.join(sorted(attacks))} (memory, lockout, slots)", file=sys.stderr)
        return 2
    if unknown:
        print(f"unknown scenario: {', '.join(sorted(unknown))} (load, slow, soak, hostile)", file=sys.stderr)
        return 2
    for name in [n for n in runs if n in scenarios]:
        try:
            report[name] = await runs[name]()
        except (WorkerError, OSError) as exc:
            log(f"{name}: failed: {exc}")
            verdicts.add(f"{name} ran to its end", str(exc), False)
        finally:
            await Worker.stop_all()
    report["machine_at_end"] = machine()
    report["verdicts"] = [{"check": w, "figure": f, "passed": ok} for w, f, ok in verdicts.items]
    report["notes"] = verdicts.notes
    print(f"mimirlite load run, {report['date']}: {report['command']}")
    print(f"machine: at start {report['machine_at_start']}; at end {report['machine_at_end']}")
    for what, figure, ok in verdicts.items:
        print(f"  {'ok    ' if ok else 'FAILED'} {what}: {figure}")
    for text in verdicts.notes:
        print(f"  info   {text}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0 if verdicts.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in WORKERS:
        return worker_main(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="comma-separated scenarios: load, slow, soak, hostile (default load,slow)")
    p.add_argument("--clients", type=int, default=10, help="client processes of the load (default 10)")
    p.add_argument("--streams", type=int, default=100, help="chats at once per client (default 100)")
    p.add_argument("--words", type=int, default=100, help="words per chat of the load (default 100)")
    p.add_argument("--delay", type=float, default=0.1, help="echo model's seconds per word (default 0.1)")
    p.add_argument("--slow", type=int, default=100, help="slow readers (default 100)")
    p.add_argument("--slow-procs", type=int, default=2, help="processes the slow readers run in (default 2)")
    p.add_argument("--soak", type=float, nargs="?", const=10.0, metavar="MINUTES", help="add a soak (10 min)")
    p.add_argument("--soak-workers", type=int, default=4, help="client processes of the soak (default 4)")
    p.add_argument(
        "--rss-slack", type=float, default=4.0, help="MiB the soak's end RSS may exceed its baseline"
    )
    p.add_argument("--hostile", action="store_true", help="add the hostile scenario (issue 11, items 2-4)")
    p.add_argument(
        "--attacks", default="memory,lockout,slots", help="hostile: which attacks, in order (default all)"
    )
    p.add_argument("--lockout-idle", type=int, default=200, help="hostile: idle connections (default 200)")
    p.add_argument(
        "--lockout-dribble", type=int, default=50, help="hostile: dribbling connections (default 50)"
    )
    p.add_argument("--honest-dials", type=int, default=10, help="hostile: honest dials per address (10)")
    p.add_argument("--slot-chats", type=int, default=256, help="hostile: unread chats held (default 256)")
    p.add_argument(
        "--memory-streams", type=int, default=50, help="hostile: unfinished requests per peer (default 50)"
    )
    p.add_argument(
        "--memory-hold", type=float, default=20.0, help="hostile: seconds they are kept up (default 20)"
    )
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    args = p.parse_args(argv)
    try:
        return asyncio.run(runner(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
