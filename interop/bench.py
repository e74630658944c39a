#!/usr/bin/env python3
"""Benchmarks side by side: mimirlite, js-libp2p (interop/'s pinned stack), py-libp2p and the limits.

    python interop/bench.py                      # full run: median of 3 runs, about 7 minutes
    python interop/bench.py --quick              # seconds: tiny sizes, one run (CI's smoke run)
    python interop/bench.py --markdown bench.md  # also write the table as markdown

Workloads W1-W5 are those of the project's bench/WORKLOADS.md (TCP + Noise + yamux on 127.0.0.1,
listener and dialer in separate processes), plus the end-to-end chat workload (a MimirNode with the
echo model, and a MimirClient) and T1, the latest MimirLLM generation's ``/mimir/<model>/1.0.0`` HTTP
tunnel (``--only tun``): one answer of 20,000 streamed chunks from tests/helpers/openai_server.py (its own
process) through a node, for mimirlite and the latest-generation JS peers (``latest-node.mjs``,
``latest-client.mjs``) both ways, beside mimirlite's first generation (``/mimirllm/1.0.0``) through the
same node and backend. R1 (``--only relay``, interop/bench_relay.py): a circuit relay's CPU per relayed
MiB, mimirlite's relay vs js-libp2p's, on loopback; time to first chunk through a relay and once a DCUtR
hole punch made the connection direct, in the NAT lab (root; skipped with the reason otherwise). W6 and W8
(``--only backend``, interop/bench_backend.py): ``python -m mimirlite node`` and the first-generation JS
node in front of T1's test server against the openai SDK reading it directly; the SDK through
``python -m mimirlite gateway``. W7
(``--only curve``, interop/bench_curve.py): 1, 10, 100 and 1,000 concurrent streams through one node pinned
to a core (echo model; the fast test server; the first-generation JS node before that server): aggregate
chunks/s and the node's CPU per chunk at each. F1-F3 (``--only foot``, interop/bench_footprint.py): a node
in front of the fast test server (start to listening, idle RSS) against the first-generation JS node, a
one-shot ``chat -p`` against the JS client, the gateway's idle RSS. Peers:

- mimirlite -> mimirlite, js-libp2p -> js-libp2p, mimirlite -> js-libp2p, js-libp2p -> mimirlite
  (``A -> B``: A dials, B listens); the JS side is ``bench-peer.mjs`` on interop/'s pinned stack;
- py-libp2p -> py-libp2p: the ``libp2p`` package, installed by this runner (pip) into its own virtual
  environment (``--venv``, default ``interop/.bench-venv``), never a dependency of mimirlite. A full
  run builds it when missing (about a minute, once); ``--quick`` never builds it: it uses it when it
  exists and otherwise says so in the table;
- limits: plain asyncio TCP (W2, W3) and cryptography's ChaCha20-Poly1305 (encrypt+decrypt of
  65,519-byte and 200-byte messages, one process).

Every process is started in its own session with stdin held open by this runner: a worker exits when
its stdin closes, and the runner closes, terminates, then kills each one (finally blocks, bounded
waits), on errors and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_backend  # this directory: W6 and W8
import bench_curve  # this directory: W7's backends and levels
import bench_worker  # this directory: the workers' default sizes are the full run's
import benchlib  # this directory: RSS, stopping a process group

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "bench_worker.py"
JS_PEER = HERE / "bench-peer.mjs"
LATEST_NODE = HERE / "latest-node.mjs"
LATEST_CLIENT = HERE / "latest-client.mjs"
PYL_WORKER = HERE / "bench_pylibp2p.py"
DEFAULT_VENV = HERE / ".bench-venv"
PY_LIBP2P_VERSION = "0.8.1"

FULL: dict[str, Any] = {
    "runs": 3,
    "settle": 0.5,  # seconds between a listener's ready line and its RSS reading
    "dial_budget": 400.0,  # seconds a dialer process may take for all its workloads
    "params": {k: v for k, v in bench_worker.DEFAULTS.items() if k != "workloads"},  # the workloads' sizes
}
QUICK: dict[str, Any] = {
    "runs": 1,
    "settle": 0.2,
    "dial_budget": 60.0,
    "params": {
        "connects": 5,
        "connect_warmup": 1,
        "bulk_bytes": 4 * 1024 * 1024,
        "chunk": 64 * 1024,
        "tokens": 2_000,
        "tokens_cap_s": 10.0,
        "rpc_seq": 50,
        "rpc_warmup": 5,
        "rpc_workers": 10,
        "rpc_per_worker": 5,
        "timeout": 30.0,
        "words": 500,
        "ttfc_runs": 10,
        "aead_seconds": 0.05,
        "tun_chunks": 300,
    },
}

# ---------------------------------------------------------------- what is measured


@dataclass(frozen=True)
class Figure:
    key: str
    workload: str
    label: str
    unit: str
    higher_is_better: bool


FIGURES = [
    Figure("w1_p50", "W1", "connect p50", "ms", False),
    Figure("w1_p95", "W1", "connect p95", "ms", False),
    Figure("w2", "W2", "bulk", "MiB/s", True),
    Figure("w3", "W3", "tokens", "msg/s", True),
    Figure("w4_p50", "W4", "rpc sequential p50", "ms", False),
    Figure("w4_seq", "W4", "rpc sequential", "req/s", True),
    Figure("w4_conc", "W4", "rpc concurrent workers", "req/s", True),
    Figure("w5_start", "W5", "process start to listening", "s", False),
    Figure("w5_rss", "W5", "idle listening host RSS", "MiB", False),
    Figure("e2e_chunks", "E2E", "chat chunks through one stream", "chunks/s", True),
    Figure("e2e_ttfc", "E2E", "added time to first chunk", "ms", False),
    Figure("t1_chunks", "T1", "tunnel: chunks of one streamed answer", "chunks/s", True),
    Figure("t1_ttfc", "T1", "tunnel: time to first chunk", "ms", False),
    Figure("d1_p50", "D1", "DHT lookup of a provider, p50", "ms", False),
    Figure("d1_p95", "D1", "DHT lookup of a provider, p95", "ms", False),
    Figure("d1_rss", "D1", "DHT server RSS growth per 10,000 provider records", "MiB", False),
    Figure("r1_cpu", "R1", "relay: relayed MiB per relay CPU second", "MiB/CPU-s", True),
    Figure("r1_mib_s", "R1", "relay: relayed MiB/s (wall clock)", "MiB/s", True),
    Figure("r1_ttfc_relayed", "R1", "NAT lab: time to first chunk through the relay", "ms", False),
    Figure("r1_dcutr", "R1", "NAT lab: DCUtR, relayed connection open to direct", "ms", False),
    Figure("r1_ttfc_direct", "R1", "NAT lab: time to first chunk once direct", "ms", False),
    Figure("f1_start", "F1", "node with an OpenAI-compatible backend: start to listening", "s", False),
    Figure("f1_rss", "F1", "node with an OpenAI-compatible backend: idle RSS", "MiB", False),
    Figure("f2_chat", "F2", "one-shot chat against a node on 127.0.0.1: start to exit", "s", False),
    Figure("f3_rss", "F3", "gateway idle RSS", "MiB", False),
    *(Figure(*f) for f in bench_backend.FIGURES),
    Figure("w7_chunks", "W7", "concurrent streams through one node: aggregate", "chunks/s", True),
    Figure("w7_cpu", "W7", "concurrent streams through one node: node CPU per chunk", "µs", False),
    Figure("w9_rss", "W9", "node RSS per idle connection held", "KiB", False),
    Figure("w9_chat_p50", "W9", "a new client's chat while they are held, p50", "ms", False),
    Figure("w9_first", "W9", "a new client's connection and first chat while they are held", "ms", False),
]
FIG = {f.key: f for f in FIGURES}

# (workload event, value key) -> figure key
FROM_WORKLOAD = {
    ("W1", "p50_ms"): "w1_p50",
    ("W1", "p95_ms"): "w1_p95",
    ("W2", "mib_s"): "w2",
    ("W3", "msg_s"): "w3",
    ("W4", "seq_p50_ms"): "w4_p50",
    ("W4", "seq_req_s"): "w4_seq",
    ("W4", "conc_req_s"): "w4_conc",
}


@dataclass(frozen=True)
class Pair:
    """A dialer implementation against a listener implementation."""

    key: str
    name: str
    dialer: str  # "mimirlite", "js", "pylibp2p" or "raw"
    listener: str
    workloads: tuple[str, ...] = ("W1", "W2", "W3", "W4")
    limit: bool = False


PAIRS = [
    Pair("mm", "mimirlite → mimirlite", "mimirlite", "mimirlite"),
    Pair("jj", "js-libp2p → js-libp2p", "js", "js"),
    Pair("mj", "mimirlite → js-libp2p", "mimirlite", "js"),
    Pair("jm", "js-libp2p → mimirlite", "js", "mimirlite"),
    Pair("pp", "py-libp2p → py-libp2p", "pylibp2p", "pylibp2p"),
    Pair("raw", "limit: plain asyncio TCP", "raw", "raw", ("W2", "W3"), limit=True),
]
AEAD_PEER = "limit: ChaCha20-Poly1305 enc+dec"
IMPL_NAMES = {"mimirlite": "mimirlite", "js": "js-libp2p", "pylibp2p": "py-libp2p"}
E2E_PEER = "mimirlite: MimirClient → MimirNode (echo)"
E2E_LIMIT = "limit: EchoBackend in-process"


@dataclass(frozen=True)
class TunPair:
    """T1: a client (``mimirlite`` or the latest ``js``) asking a node for one answer."""

    key: str
    name: str
    client: str
    node: str
    via: str = "tunnel"  # or "first": mimirlite's /mimirllm/1.0.0, the comparison


TUN_PAIRS = [
    TunPair("mm", "tunnel: mimirlite → mimirlite", "mimirlite", "mimirlite"),
    TunPair("jj", "tunnel: latest JS → latest JS", "js", "js"),
    TunPair("mj", "tunnel: mimirlite → latest JS", "mimirlite", "js"),
    TunPair("jm", "tunnel: latest JS → mimirlite", "js", "mimirlite"),
    TunPair("gen1", "/mimirllm/1.0.0: mimirlite → mimirlite", "mimirlite", "mimirlite", via="first"),
]
TUN = {t.key: t for t in TUN_PAIRS}
TUN_KEYS = ["t1_chunks", "t1_ttfc"]
DHT_SEARCHERS = {
    "mimirlite": "DHT: mimirlite, fresh client",
    "kad-dht": "DHT: kad-dht 14.2, fresh client",
    "mimirlite (second lookup)": "DHT: mimirlite, its second lookup",
    "kad-dht (second lookup)": "DHT: kad-dht 14.2, its second lookup",
}
DHT_SERVERS = {"mimirlite": "DHT server: mimirlite", "kad-dht": "DHT server: kad-dht 14.2"}
DHT_SCRIPT = HERE / "bench_dht.py"
RELAYS = {
    "mimirlite": "relay: mimirlite (python -m mimirlite relay)",
    "js-libp2p": "relay: js-libp2p (circuit-relay-v2 3.1.7)",
}
RELAY_KEYS = ["r1_cpu", "r1_mib_s"]
LAB_PEER = "NAT lab: MimirClient → MimirNode (echo), relay on the wan"
LAB_KEYS = ["r1_ttfc_relayed", "r1_dcutr", "r1_ttfc_direct"]
RELAY_SCRIPT = HERE / "bench_relay.py"
BACKEND_SCRIPT = HERE / "bench_backend.py"
DCUTR_SLACK_MS = 100.0  # the target: DCUtR within 2 RTT plus this
FOOT_NODES = {
    "mimirlite": "mimirlite: python -m mimirlite node",
    "js": "js-libp2p: first-generation node",
}
FOOT_CHATS = {
    "mimirlite": "mimirlite: python -m mimirlite chat -p",
    "js": "js-libp2p: first-generation client",
}
FOOT_GATEWAY = "mimirlite: python -m mimirlite gateway"
FOOT_SCRIPT = HERE / "bench_footprint.py"
CURVE_NODES = {
    "echo": "mimirlite node, echo",
    "fast": "mimirlite node, fast server",
    "fast-js": "first-gen JS node, fast server",
}
CURVE_KEYS = ["w7_chunks", "w7_cpu"]
CURVE_SCRIPT = HERE / "bench_curve.py"


def curve_peer(backend: str, streams: int) -> str:
    """W7's row name for ``backend`` at ``streams`` concurrent streams."""
    return f"{CURVE_NODES[backend]}, {streams:,} stream{'s' * (streams != 1)}"


CURVE_PEERS = [curve_peer(b, n) for b in CURVE_NODES for n in bench_curve.LEVELS]
SECTIONS = [
    *("mm", "jj", "mj", "jm", "pp", "raw", "aead", "e2e", "tun", "dht", "relay"),
    *("backend", "curve", "idle", "foot"),
]
IDLE_PEERS = {
    "mimirlite": "idle: mimirlite node (MimirNode, OpenAIBackend)",
    "js": "idle: JS node (mimir-node.mjs, first generation)",
}
IDLE_KEYS = ["w9_rss", "w9_chat_p50", "w9_first"]
IDLE_SCRIPT = HERE / "bench_idle.py"


def table_rows(params: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Every (figure key, peer name, is a limit) row of the table, in order."""
    rows: list[tuple[str, str, bool]] = []
    for f in FIGURES:
        if f.workload in ("W1", "W2", "W3", "W4"):
            for p in PAIRS:
                if f.workload in p.workloads:
                    rows.append((f.key, p.name, p.limit))
            if f.key in ("w2", "w3"):
                rows.append((f.key, AEAD_PEER, True))
        elif f.workload == "W5":
            for impl in ("mimirlite", "js", "pylibp2p"):
                rows.append((f.key, IMPL_NAMES[impl], False))
        elif f.workload == "T1":
            rows += [(f.key, t.name, False) for t in TUN_PAIRS]
        elif f.key == "d1_rss":
            rows += [(f.key, name, False) for name in DHT_SERVERS.values()]
        elif f.workload == "D1":
            rows += [(f.key, name, False) for name in DHT_SEARCHERS.values()]
        elif f.key in RELAY_KEYS:
            rows += [(f.key, name, False) for name in RELAYS.values()]
        elif f.key in LAB_KEYS:
            rows.append((f.key, LAB_PEER, False))
        elif f.workload == "F1":
            rows += [(f.key, name, False) for name in FOOT_NODES.values()]
        elif f.workload == "F2":
            rows += [(f.key, name, False) for name in FOOT_CHATS.values()]
        elif f.workload == "F3":
            rows.append((f.key, FOOT_GATEWAY, False))
        elif f.key in bench_backend.ROWS:
            rows += [(f.key, name, False) for name in bench_backend.ROWS[f.key]]
        elif f.key in CURVE_KEYS:
            rows += [(f.key, name, False) for name in CURVE_PEERS]
        elif f.key in IDLE_KEYS:
            rows += [(f.key, name, False) for name in IDLE_PEERS.values()]
        else:
            rows.append((f.key, E2E_PEER, False))
            if f.key == "e2e_chunks":
                rows.append((f.key, E2E_LIMIT, True))
    return rows


def figure_label(f: Figure, params: dict[str, Any]) -> str:
    if f.key == "w4_conc":
        return f"rpc {params['rpc_workers']} workers x {params['rpc_per_worker']}"
    if f.key == "w2" and params["bulk_bytes"] != FULL["params"]["bulk_bytes"]:
        return f"bulk ({params['bulk_bytes'] >> 20} MiB)"
    if f.key == "w3" and params["tokens"] != FULL["params"]["tokens"]:
        return f"tokens ({params['tokens']:,})"
    if f.key == "t1_chunks" and params["tun_chunks"] != FULL["params"]["tun_chunks"]:
        return f"tunnel: chunks of one streamed answer ({params['tun_chunks']:,})"
    return f.label


# ---------------------------------------------------------------- processes


class WorkerError(Exception):
    pass


class Proc:
    """A worker process: JSON lines on stdout, stderr kept for error messages, stdin held open."""

    live: set[Proc] = set()

    def __init__(self, name: str, proc: asyncio.subprocess.Process, t_spawn: float) -> None:
        self.name = name
        self.proc = proc
        self.t_spawn = t_spawn
        self.events: asyncio.Queue[tuple[float, dict[str, Any] | None]] = asyncio.Queue()
        self.stderr: collections.deque[str] = collections.deque(maxlen=30)
        self._tasks = [asyncio.ensure_future(self._read_stdout()), asyncio.ensure_future(self._read_stderr())]
        Proc.live.add(self)

    @classmethod
    async def start(
        cls, name: str, cmd: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Proc:
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            limit=1 << 20,
        )
        return cls(name, proc, t0)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                now = time.perf_counter()
                try:
                    obj = json.loads(line)
                except ValueError:
                    self.stderr.append(line.decode(errors="replace").rstrip())
                    continue
                if isinstance(obj, dict):
                    await self.events.put((now, obj))
        finally:
            await self.events.put((time.perf_counter(), None))

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr.append(line.decode(errors="replace").rstrip())

    def stderr_tail(self, n: int = 3) -> str:
        lines = [s for s in self.stderr if s.strip()]
        return " | ".join(lines[-n:])

    async def next_event(self, deadline: float) -> tuple[float, dict[str, Any]]:
        """The next JSON line; WorkerError when the process ends first or the deadline passes."""
        left = deadline - time.perf_counter()
        try:
            t, obj = await asyncio.wait_for(self.events.get(), max(left, 0.001))
        except asyncio.TimeoutError:
            raise WorkerError(f"{self.name}: no answer in time") from None
        if obj is None:
            await self.events.put((t, None))  # stay at end
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 2)
            tail = self.stderr_tail()
            raise WorkerError(
                f"{self.name} exited (code {self.proc.returncode})" + (f": {tail}" if tail else "")
            )
        return t, obj

    async def stop(self) -> None:
        """Close stdin (the worker's signal to go), then SIGTERM, then SIGKILL its process group."""
        try:
            await benchlib.stop_group(self.proc)
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            Proc.live.discard(self)

    @classmethod
    async def stop_all(cls) -> None:
        await asyncio.gather(*(p.stop() for p in list(cls.live)), return_exceptions=True)


def kill_all_now() -> None:
    """Last resort (no event loop): SIGKILL every worker still known."""
    for p in list(Proc.live):
        if p.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.proc.pid, signal.SIGKILL)


# ---------------------------------------------------------------- implementations


@dataclass
class Env:
    node: str | None = None
    node_reason: str = ""
    latest_reason: str = ""  # why the latest-generation JS peers cannot run ("" when they can)
    venv_python: str | None = None
    pyl_reason: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    def available(self, impl: str) -> str | None:
        """None when ``impl`` can run, else why not."""
        if impl == "js" and self.node is None:
            return self.node_reason
        if impl == "js-latest":
            return self.node_reason if self.node is None else (self.latest_reason or None)
        if impl == "pylibp2p" and self.venv_python is None:
            return self.pyl_reason
        return None

    def cmd(self, impl: str, mode: str) -> tuple[list[str], dict[str, str] | None, Path | None]:
        if impl == "js":
            assert self.node is not None
            return [self.node, str(JS_PEER), mode], None, HERE
        if impl == "pylibp2p":
            assert self.venv_python is not None
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
            return [self.venv_python, str(PYL_WORKER), mode], env, HERE
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        impl_arg = "raw" if impl == "raw" else "mimirlite"
        return [sys.executable, str(WORKER), mode, "--impl", impl_arg], env, ROOT


def find_node() -> tuple[str | None, str]:
    node = shutil.which("node")
    if node is None:
        return None, "unavailable: node is not on PATH"
    if not (HERE / "node_modules" / "libp2p").is_dir():
        return None, "unavailable: interop/node_modules missing (run npm ci in interop/)"
    return node, ""


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def venv_ready(venv: Path, version: str) -> bool:
    marker = venv / ".bench-ready"
    return venv_python(venv).exists() and marker.exists() and marker.read_text().strip() == version


async def build_venv(venv: Path, version: str, timeout: float = 600) -> str | None:
    """Create ``venv`` with py-libp2p ``version``; None on success, else why it failed."""
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "-q",
         f"libp2p=={version}"],
    ]
    print(f"building the py-libp2p {version} environment in {venv} (once)...", file=sys.stderr, flush=True)
    deadline = time.perf_counter() + timeout
    for cmd in steps:
        p = await Proc.start("venv build", cmd)
        try:
            left = deadline - time.perf_counter()
            try:
                await asyncio.wait_for(p.proc.wait(), max(left, 1))
            except asyncio.TimeoutError:
                return f"py-libp2p install timed out after {timeout:g} s"
            await asyncio.sleep(0.05)  # let the stderr reader catch up
            if p.proc.returncode != 0:
                errors = [s for s in p.stderr if "error" in s.lower()] or list(p.stderr)
                return f"{' '.join(cmd[2:4])} failed: {(errors[-1] if errors else 'no output')[:200]}"
        finally:
            await p.stop()
    (venv / ".bench-ready").write_text(version)
    return None


def js_versions() -> dict[str, str]:
    out = {}
    for pkg in ("libp2p", "@chainsafe/libp2p-noise", "@chainsafe/libp2p-yamux"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            out[pkg] = json.loads((HERE / "node_modules" / pkg / "package.json").read_text())["version"]
    return out


# ---------------------------------------------------------------- running


Samples = dict[str, dict[str, list[float]]]  # peer name -> figure key -> one value per run
Errors = dict[str, dict[str, str]]  # peer name -> figure key -> why there is no value


class Bench:
    def __init__(self, env: Env, cfg: dict[str, Any], sections: list[str]) -> None:
        self.env = env
        self.cfg = cfg
        self.params: dict[str, Any] = cfg["params"]
        self.sections = sections
        self.samples: Samples = collections.defaultdict(lambda: collections.defaultdict(list))
        self.errors: Errors = collections.defaultdict(dict)
        self.extra: dict[str, list[float]] = collections.defaultdict(list)
        self.capped: dict[str, list[int]] = collections.defaultdict(list)  # W3 runs stopped at the cap
        self.relay_info: dict[str, Any] = {}  # R1's sizes, the lab's added delay and measured round trips
        self.foot_info: dict[str, Any] = {}  # F1-F3: whether the nodes ran in a namespace of their own
        self.backend_info: dict[str, list[str]] = {}  # W6/W8: how each run went (bench_backend.notes)
        self.curve_info: dict[str, Any] = {}  # W7's sizes, how the node was pinned, its limits
        self.idle_info: dict[str, Any] = {}  # W9's sizes and measurements

    def add(self, peer: str, key: str, value: float) -> None:
        self.samples[peer][key].append(float(value))

    def fail(self, peer: str, keys: Sequence[str], why: str) -> None:
        for k in keys:
            self.errors[peer].setdefault(k, why)

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    async def start_listener(
        self, impl: str, mode: str = "listen", args: Sequence[str] = ()
    ) -> tuple[Proc, str, float, float | None]:
        cmd, env, cwd = self.env.cmd(impl, mode)
        p = await Proc.start(f"{impl} {mode}", [*cmd, *args], env, cwd)
        try:
            deadline = time.perf_counter() + 60
            while True:
                t, ev = await p.next_event(deadline)
                if ev.get("event") == "ready":
                    break
            start_s = t - p.t_spawn
            await asyncio.sleep(self.cfg["settle"])
            rss: float | None = None
            with contextlib.suppress(OSError, RuntimeError):  # gone already: no figure
                rss = benchlib.rss_mib(p.pid)
            return p, str(ev["addr"]), start_s, rss
        except BaseException:
            await p.stop()
            raise

    async def run_dialer(self, impl: str, mode: str, addr: str, params: dict[str, Any]) -> dict[str, Any]:
        """Results by workload (values dict, or an error string)."""
        cmd, env, cwd = self.env.cmd(impl, mode)
        cmd = [*cmd, "--addr", addr, "--params", json.dumps(params)]
        p = await Proc.start(f"{impl} {mode}", cmd, env, cwd)
        out: dict[str, Any] = {}
        try:
            deadline = time.perf_counter() + self.cfg["dial_budget"]
            while True:
                _, ev = await p.next_event(deadline)
                kind = ev.get("event")
                if kind == "result":
                    out[ev["workload"]] = ev["values"]
                elif kind == "error":
                    out[ev["workload"]] = str(ev["error"])
                elif kind == "done":
                    return out
        except WorkerError as exc:
            out["_error"] = str(exc)
            return out
        finally:
            await p.stop()

    async def warm_up(self) -> None:
        """Start each listener once, untimed: compiles .pyc files and fills the OS file cache."""
        impls = {"mimirlite"}
        for key in self.sections:
            pair = next((p for p in PAIRS if p.key == key), None)
            if pair is not None:
                impls |= {pair.dialer, pair.listener}
        for impl in sorted(impls):
            if self.env.available(impl) is not None:
                continue
            with contextlib.suppress(WorkerError):
                p, _, _, _ = await self.start_listener(impl)
                await p.stop()

    async def run_pair(self, pair: Pair) -> None:
        keys = [k for (w, _), k in FROM_WORKLOAD.items() if w in pair.workloads]
        for impl in (pair.listener, pair.dialer):
            why = self.env.available(impl)
            if why is not None:
                self.fail(pair.name, keys, why)
                return
        self.log(f"  {pair.name}")
        try:
            listener, addr, start_s, rss = await self.start_listener(pair.listener)
        except WorkerError as exc:
            self.fail(pair.name, keys, f"listener failed: {exc}")
            return
        try:
            if pair.listener in IMPL_NAMES:
                self.add(IMPL_NAMES[pair.listener], "w5_start", start_s)
                if rss is not None:
                    self.add(IMPL_NAMES[pair.listener], "w5_rss", rss)
            params = {**self.params, "workloads": list(pair.workloads)}
            results = await self.run_dialer(pair.dialer, "dial", addr, params)
        finally:
            await listener.stop()
        for (workload, value_key), key in FROM_WORKLOAD.items():
            if workload not in pair.workloads:
                continue
            got = results.get(workload)
            if isinstance(got, dict) and value_key in got:
                self.add(pair.name, key, got[value_key])
                if "capped" in got and key == "w3":
                    self.capped[pair.name].append(int(got["capped"]))
            else:
                why = str(got) if got is not None else results.get("_error", "no result")
                self.fail(pair.name, [key], why)

    async def run_aead(self) -> None:
        self.log(f"  {AEAD_PEER}")
        cmd, env, cwd = self.env.cmd("mimirlite", "aead")
        cmd = [*cmd, "--params", json.dumps(self.params)]
        p = await Proc.start("aead", cmd, env, cwd)
        try:
            deadline = time.perf_counter() + 60
            _, ev = await p.next_event(deadline)
            if ev.get("event") == "result":
                self.add(AEAD_PEER, "w2", ev["values"]["mib_s"])
                self.add(AEAD_PEER, "w3", ev["values"]["msg_s"])
        except WorkerError as exc:
            self.fail(AEAD_PEER, ["w2", "w3"], str(exc))
        finally:
            await p.stop()

    async def run_e2e(self) -> None:
        self.log(f"  {E2E_PEER}")
        keys = ["e2e_chunks", "e2e_ttfc"]
        try:
            node, addr, _, _ = await self.start_listener("mimirlite", "e2e-node")
        except WorkerError as exc:
            self.fail(E2E_PEER, keys, f"node failed: {exc}")
            return
        try:
            results = await self.run_dialer("mimirlite", "e2e-client", addr, self.params)
        finally:
            await node.stop()
        chunks, ttfc = results.get("CHUNKS"), results.get("TTFC")
        if isinstance(chunks, dict):
            self.add(E2E_PEER, "e2e_chunks", chunks["chunks_s"])
            self.add(E2E_LIMIT, "e2e_chunks", chunks["inprocess_chunks_s"])
        else:
            self.fail(E2E_PEER, ["e2e_chunks"], str(chunks or results.get("_error", "no result")))
            self.fail(E2E_LIMIT, ["e2e_chunks"], "no run")
        if isinstance(ttfc, dict):
            self.add(E2E_PEER, "e2e_ttfc", ttfc["added_ttfc_ms"])
            self.extra["ttfc_ms"].append(ttfc["ttfc_ms"])
            self.extra["inprocess_ms"].append(ttfc["inprocess_ms"])
        else:
            self.fail(E2E_PEER, ["e2e_ttfc"], str(ttfc or results.get("_error", "no result")))

    async def run_dht(self) -> None:
        """D1, once per bench (the script repeats its lookups itself): interop/bench_dht.py."""
        self.log("  D1: DHT lookups in a 50-peer DHT, RSS per 10,000 provider records")
        keys = ["d1_p50", "d1_p95"]
        if self.env.node is None:
            for name in DHT_SEARCHERS.values():
                self.fail(name, keys, self.env.node_reason)
            return
        cmd = [sys.executable, str(DHT_SCRIPT), *(["--quick"] if self.cfg.get("quick") else [])]
        p = await Proc.start("dht", cmd, None, HERE)
        try:
            _, ev = await p.next_event(time.perf_counter() + 900)
            values = ev["values"]
            for who, name in DHT_SEARCHERS.items():
                got = values["lookups"][who]
                self.add(name, "d1_p50", got["p50_ms"])
                self.add(name, "d1_p95", got["p95_ms"])
            for who, name in DHT_SERVERS.items():
                self.add(name, "d1_rss", values["memory"][who]["growth_per_10k_mib"])
        except (WorkerError, KeyError) as exc:
            for name in DHT_SEARCHERS.values():
                self.fail(name, keys, str(exc))
            for name in DHT_SERVERS.values():
                self.fail(name, ["d1_rss"], str(exc))
        finally:
            await p.stop()

    async def run_relay(self) -> None:
        """R1, once per run: interop/bench_relay.py (R1a the relays' CPU per MiB on loopback, R1b the NAT
        lab, skipped with its reason when no lab can be built here, e.g. not root)."""
        self.log("  R1: relay CPU per relayed MiB; time to first chunk through a relay and after DCUtR")
        cmd = [sys.executable, str(RELAY_SCRIPT), *(["--quick"] if self.cfg.get("quick") else [])]
        if self.env.node is None:
            self.fail(RELAYS["js-libp2p"], RELAY_KEYS, self.env.node_reason)
        p = await Proc.start("relay", cmd, None, HERE)
        try:
            _, ev = await p.next_event(time.perf_counter() + 600)
            values = ev["values"]
        except (WorkerError, KeyError) as exc:
            for name in RELAYS.values():
                self.fail(name, RELAY_KEYS, str(exc))
            self.fail(LAB_PEER, LAB_KEYS, str(exc))
            return
        finally:
            await p.stop()
        self.relay_info["sizes"] = values["sizes"]
        cpu = values.get("cpu", {})
        for who, name in RELAYS.items():
            got = cpu.get(who, cpu)  # R1a's own error, when it failed as a whole
            if "mib_per_cpu_s" in got:
                self.add(name, "r1_cpu", got["mib_per_cpu_s"])
                self.add(name, "r1_mib_s", got["mib_s"])
            else:
                self.fail(name, RELAY_KEYS, str(got.get("error", "no result")))
        lab = values.get("lab", {})
        if lab.get("dcutr_ms"):
            for key in LAB_KEYS:
                self.add(LAB_PEER, key, statistics.median(lab[key.removeprefix("r1_") + "_ms"]))
            self.relay_info.setdefault("rtt_ms", []).extend(lab["rtt_ms"])
            self.relay_info["delay_ms"] = lab["delay_ms"]
            self.relay_info["no_delay"] = lab.get("no_delay", "")
        else:
            why = str(lab.get("skipped") or lab.get("error") or "no result")
            self.log(f"    {why}")
            self.fail(LAB_PEER, LAB_KEYS, why)

    async def run_foot(self) -> None:
        """F1-F3, once per run: interop/bench_footprint.py (its own network namespace as root, for mDNS)."""
        self.log("  F1-F3: node start and idle RSS with an OpenAI-compatible backend, chat -p, gateway RSS")
        cmd = [sys.executable, str(FOOT_SCRIPT), *(["--quick"] if self.cfg.get("quick") else [])]
        p = await Proc.start("footprint", cmd, None, HERE)
        try:
            _, ev = await p.next_event(time.perf_counter() + 900)
            values = ev["values"]
        except (WorkerError, KeyError) as exc:
            values = {"error": str(exc)}
        finally:
            await p.stop()
        why = str(values.get("error", ""))
        self.foot_info["netns"] = values.get("netns")
        self.foot_info["runs"] = values.get("runs")
        for who, name in FOOT_NODES.items():
            got = values.get("node", {}).get(who)
            if got:
                self.add(name, "f1_start", got["start_s"])
                self.add(name, "f1_rss", got["rss_mib"])
            else:
                self.fail(name, ["f1_start", "f1_rss"], why or str(values.get("js_skipped", "no result")))
        for who, name in FOOT_CHATS.items():
            took = values.get("chat", {}).get(who)
            if took is not None:
                self.add(name, "f2_chat", took)
            else:
                self.fail(name, ["f2_chat"], why or str(values.get("js_skipped", "no result")))
        gateway = values.get("gateway", {}).get("mimirlite")
        if gateway is not None:
            self.add(FOOT_GATEWAY, "f3_rss", gateway)
        else:
            self.fail(FOOT_GATEWAY, ["f3_rss"], why or "no result")

    async def run_backend(self) -> None:
        """W6 and W8, once per run: interop/bench_backend.py."""
        self.log("  W6/W8: a node in front of a fast OpenAI-compatible server; the SDK through the gateway")
        cmd = [sys.executable, str(BACKEND_SCRIPT), *(["--quick"] if self.cfg.get("quick") else [])]
        p = await Proc.start("backend", cmd, None, HERE)
        try:
            _, ev = await p.next_event(time.perf_counter() + 600)
            values = ev["values"]
        except (WorkerError, KeyError) as exc:
            values = {"error": str(exc)}
        finally:
            await p.stop()
        bench_backend.collect(values, self.add, self.fail, self.backend_info)

    async def run_curve(self) -> None:
        """W7, once per run (interop/bench_curve.py): 1 to 1,000 concurrent streams through one node
        pinned to a core, with the echo model and the fast server; the first-generation JS node too."""
        self.log("  W7: 1, 10, 100, 1,000 concurrent streams through one node")
        cmd = [sys.executable, str(CURVE_SCRIPT), *(["--quick"] if self.cfg.get("quick") else [])]
        p = await Proc.start("curve", cmd, None, HERE)
        try:
            _, ev = await p.next_event(time.perf_counter() + 1200)
            values = ev["values"]
        except (WorkerError, KeyError) as exc:
            for name in CURVE_PEERS:
                self.fail(name, CURVE_KEYS, str(exc))
            return
        finally:
            await p.stop()
        self.curve_info = {k: values[k] for k in ("sizes", "pinning", "max_concurrent", "queue")}
        for backend in CURVE_NODES:
            got = values.get(backend, {"error": "no result"})
            for n in bench_curve.LEVELS:
                name = curve_peer(backend, n)
                level = got.get(str(n), got)
                if "chunks_s" in level:
                    self.add(name, "w7_chunks", level["chunks_s"])
                    self.add(name, "w7_cpu", level["cpu_us_per_chunk"])
                    self.extra[f"w7_share {name}"].append(level["node_cpu_share"])
                    load = level.get("clients_cpu_share", 0.0) + level.get("server_cpu_share", 0.0)
                    self.extra[f"w7_load {name}"].append(load)
                else:
                    self.fail(name, CURVE_KEYS, str(level.get("error", "no result")))

    async def run_idle(self) -> None:
        """W9, once per bench: interop/bench_idle.py (client processes holding idle connections to a node)."""
        self.log("  W9: a node holding idle connections: its RSS per connection, a new chat meanwhile")
        cmd = [sys.executable, str(IDLE_SCRIPT), *(["--quick"] if self.cfg.get("quick") else [])]
        if self.env.node is None:
            cmd += ["--node", "mimirlite"]
            self.fail(IDLE_PEERS["js"], IDLE_KEYS, self.env.node_reason)
        p = await Proc.start("idle", cmd, None, HERE)
        try:
            _, ev = await p.next_event(time.perf_counter() + 1800)
            values = ev["values"]
            if "error" in values:
                raise WorkerError(values["error"])
        except (WorkerError, KeyError) as exc:
            for name in IDLE_PEERS.values():
                self.fail(name, IDLE_KEYS, str(exc))
            return
        finally:
            await p.stop()
        self.idle_info = values
        for who, got in values["nodes"].items():
            name = IDLE_PEERS[who]
            if "chat_held" in got:
                self.add(name, "w9_rss", got["rss_per_conn_kib"])
                self.add(name, "w9_chat_p50", got["chat_held"]["p50_ms"])
                self.add(name, "w9_first", got["chat_held"]["first_ms"])
            else:
                self.fail(name, IDLE_KEYS, str(got.get("error") or got.get("skipped") or "no result"))

    async def start_latest_node(self, backend_url: str) -> tuple[Proc, str]:
        """latest-node.mjs in front of ``backend_url``, serving T1's model; (process, its address)."""
        assert self.env.node is not None
        cmd = [self.env.node, str(LATEST_NODE), "--listen", "/ip4/127.0.0.1/tcp/0",
               "--backend-url", backend_url, "--model", bench_worker.TUN_MODEL, "--no-monitor"]
        p = await Proc.start("latest JS node", cmd, None, HERE)
        try:
            deadline = time.perf_counter() + 60
            while True:
                _, ev = await p.next_event(deadline)
                if ev.get("event") == "ready":
                    return p, str(ev["addrs"][0])
        except BaseException:
            await p.stop()
            raise

    async def run_latest_client(self, addr: str) -> dict[str, Any]:
        """latest-client.mjs asks ``addr`` for one answer: it dials, probes the model's tunnel (t0),
        then the openai SDK's chat stream, which it buffers whole before its first chunk. Timed here
        from its probe line to its first and last chunk lines."""
        assert self.env.node is not None
        n = self.params["tun_chunks"]
        budget = self.cfg["dial_budget"]
        model = bench_worker.TUN_MODEL
        cmd = [self.env.node, str(LATEST_CLIENT), "--peer", addr, "--model", model, "--probe", model,
               "--prompt", "tell me everything", "--no-monitor", "--timeout-ms", str(int(budget * 1000))]
        p = await Proc.start("latest JS client", cmd, None, HERE)
        t0 = first = last = 0.0
        count = 0
        try:
            deadline = time.perf_counter() + budget + 10
            while True:
                t, ev = await p.next_event(deadline)
                kind = ev.get("event")
                if kind == "probe":
                    if not ev.get("served"):
                        raise WorkerError(f"the node does not serve {model}: {ev.get('error')}")
                    t0 = t
                elif kind == "chunk":
                    if count == 0:
                        first = t
                    last = t
                    count += 1
                elif kind == "result":
                    if not ev.get("ok"):
                        raise WorkerError(f"latest JS client: {ev.get('error')}")
                    break
            if count != n or not t0:
                raise WorkerError(f"latest JS client: {count} chunks, expected {n}")
            return {"chunks_s": count / (last - t0), "ttfc_ms": (first - t0) * 1000}
        finally:
            await p.stop()

    async def tun_client(self, t: TunPair, node_addr: str) -> None:
        """One T1 answer for ``t``, from the node at ``node_addr``; its figures, or why there are none."""
        self.log(f"  {t.name}")
        try:
            if t.client == "js":
                values: Any = await self.run_latest_client(node_addr)
            else:
                params = {**self.params, "tun_via": t.via}
                results = await self.run_dialer("mimirlite", "tun-client", node_addr, params)
                values = results.get("T1") or results.get("_error", "no result")
        except WorkerError as exc:
            values = str(exc)
        if isinstance(values, dict):
            self.add(t.name, "t1_chunks", values["chunks_s"])
            self.add(t.name, "t1_ttfc", values["ttfc_ms"])
        else:
            self.fail(t.name, TUN_KEYS, str(values))

    async def run_tun(self) -> None:
        """T1: one test server; a mimirlite node, then a latest JS node, in front of it, each asked by
        the clients of its pairs in turn."""
        why_js = self.env.available("js-latest")
        if why_js is not None:
            for t in TUN_PAIRS:
                if "js" in (t.client, t.node):
                    self.fail(t.name, TUN_KEYS, why_js)
        try:
            server, url, _, _ = await self.start_listener("mimirlite", "tun-server", ["--params",
                                                          json.dumps(self.params)])
        except WorkerError as exc:
            for t in TUN_PAIRS:
                self.fail(t.name, TUN_KEYS, f"test server failed: {exc}")
            return
        try:
            for node_impl in ("mimirlite", "js"):
                pairs = [t for t in TUN_PAIRS if t.node == node_impl
                         and (why_js is None or "js" not in (t.client, t.node))]
                if not pairs:
                    continue
                try:
                    if node_impl == "js":
                        node, addr = await self.start_latest_node(url)
                    else:
                        args = ["--addr", url, "--params", json.dumps(self.params)]
                        node, addr, _, _ = await self.start_listener("mimirlite", "tun-node", args)
                except WorkerError as exc:
                    for t in pairs:
                        self.fail(t.name, TUN_KEYS, f"node failed: {exc}")
                    continue
                try:
                    for t in pairs:
                        await self.tun_client(t, addr)
                finally:
                    await node.stop()
        finally:
            await server.stop()

    async def run(self) -> None:
        for pair in PAIRS:
            if pair.key not in self.sections:
                keys = [k for (w, _), k in FROM_WORKLOAD.items() if w in pair.workloads]
                self.fail(pair.name, keys, "not selected")
        if "aead" not in self.sections:
            self.fail(AEAD_PEER, ["w2", "w3"], "not selected")
        if "e2e" not in self.sections:
            self.fail(E2E_PEER, ["e2e_chunks", "e2e_ttfc"], "not selected")
            self.fail(E2E_LIMIT, ["e2e_chunks"], "not selected")
        if "tun" not in self.sections:
            for t in TUN_PAIRS:
                self.fail(t.name, TUN_KEYS, "not selected")
        if "dht" not in self.sections:
            for name in DHT_SEARCHERS.values():
                self.fail(name, ["d1_p50", "d1_p95"], "not selected")
            for name in DHT_SERVERS.values():
                self.fail(name, ["d1_rss"], "not selected")
        if "relay" not in self.sections:
            for name in RELAYS.values():
                self.fail(name, RELAY_KEYS, "not selected")
            self.fail(LAB_PEER, LAB_KEYS, "not selected")
        if "foot" not in self.sections:
            for name in FOOT_NODES.values():
                self.fail(name, ["f1_start", "f1_rss"], "not selected")
            for name in FOOT_CHATS.values():
                self.fail(name, ["f2_chat"], "not selected")
            self.fail(FOOT_GATEWAY, ["f3_rss"], "not selected")
        if "backend" not in self.sections:
            bench_backend.collect({"error": "not selected"}, self.add, self.fail, {})
        if "curve" not in self.sections:
            for name in CURVE_PEERS:
                self.fail(name, CURVE_KEYS, "not selected")
        if "idle" not in self.sections:
            for name in IDLE_PEERS.values():
                self.fail(name, IDLE_KEYS, "not selected")
        await self.warm_up()
        for r in range(self.cfg["runs"]):
            self.log(f"run {r + 1} of {self.cfg['runs']}")
            for key in self.sections:
                pair = next((p for p in PAIRS if p.key == key), None)
                if pair is not None:
                    await self.run_pair(pair)
                elif key == "aead":
                    await self.run_aead()
                elif key == "e2e":
                    await self.run_e2e()
                elif key == "tun":
                    await self.run_tun()
                elif key == "dht" and r == 0:
                    await self.run_dht()
                elif key == "relay":
                    await self.run_relay()
                elif key == "foot" and r == 0:
                    await self.run_foot()
                elif key == "backend":
                    await self.run_backend()
                elif key == "curve":
                    await self.run_curve()
                elif key == "idle" and r == 0:
                    await self.run_idle()
        for impl, name in IMPL_NAMES.items():
            why = self.env.available(impl)
            if why is not None:
                self.fail(name, ["w5_start", "w5_rss"], why)


# ---------------------------------------------------------------- the table


def fmt(v: float) -> str:
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


@dataclass
class Row:
    workload: str
    figure: str
    peer: str
    median: str
    spread: str
    ratio: str


def medians(samples: Samples) -> dict[str, dict[str, float]]:
    return {peer: {k: statistics.median(v) for k, v in figs.items() if v} for peer, figs in samples.items()}


def build_rows(bench: Bench) -> tuple[list[Row], list[str]]:
    """The table's rows, and the notes saying why some rows have no figure."""
    med = medians(bench.samples)
    rows = []
    notes: list[str] = []
    all_rows = table_rows(bench.params)
    for f in FIGURES:
        peers = [(peer, limit) for key, peer, limit in all_rows if key == f.key]
        contenders = [med[p][f.key] for p, limit in peers if not limit and f.key in med.get(p, {})]
        best = (max(contenders) if f.higher_is_better else min(contenders)) if contenders else None
        arrow = "↑" if f.higher_is_better else "↓"
        for peer, _limit in peers:
            vals = bench.samples.get(peer, {}).get(f.key) or []
            label = f"{figure_label(f, bench.params)} ({f.unit} {arrow})"
            if not vals:
                why = bench.errors.get(peer, {}).get(f.key, "not run")
                if why not in notes:
                    notes.append(why)
                rows.append(Row(f.workload, label, peer, f"n/a [{notes.index(why) + 1}]", "", ""))
                continue
            m = statistics.median(vals)
            shown = fmt(m)
            if f.key == "w3" and bench.capped.get(peer):
                counts = ", ".join(f"{c:,}" for c in bench.capped[peer])
                notes.append(
                    f"{peer}: W3 stopped at the {bench.params['tokens_cap_s']:g} s cap in "
                    f"{len(bench.capped[peer])} of {len(vals)} runs, after {counts} of "
                    f"{bench.params['tokens']:,} messages; the rate is over the messages received"
                )
                shown += f" [{len(notes)}]"
            spread = f"{fmt(min(vals))}\u2013{fmt(max(vals))}" if len(vals) > 1 else "n=1"
            if best is None or best == 0:
                ratio = ""
            elif m == best:
                ratio = "1.00 best"
            else:
                ratio = f"{m / best:.2f}"
            rows.append(Row(f.workload, label, peer, shown, spread, ratio))
    return rows, notes


@dataclass
class Target:
    text: str
    figure: str
    status: str


def check_targets(bench: Bench) -> list[Target]:
    med = medians(bench.samples)
    by_key = {p.key: p.name for p in PAIRS}

    def get(peer: str, key: str) -> float | None:
        return med.get(peer, {}).get(key)

    mm, jj, pp, raw = by_key["mm"], by_key["jj"], by_key["pp"], by_key["raw"]
    out = []

    def ratio_target(text: str, key: str, peer: str, other: str, factor: float, higher: bool) -> None:
        a, b = get(peer, key), get(other, key)
        if a is None or b is None:
            out.append(Target(text, "no mimirlite figure" if a is None else f"no {other} figure", "n/a"))
            return
        unit = FIG[key].unit
        ok = a >= factor * b if higher else a <= factor * b
        out.append(Target(text, f"{fmt(a)} vs {fmt(b)} {unit} ({a / b:.2f}x)", "met" if ok else "MISSED"))

    def abs_target(text: str, key: str, peer: str, limit: float, higher: bool) -> None:
        a = get(peer, key)
        if a is None:
            out.append(Target(text, "no figure", "n/a"))
            return
        ok = a >= limit if higher else a <= limit
        out.append(Target(text, f"{fmt(a)} {FIG[key].unit}", "met" if ok else "MISSED"))

    ratio_target("W2 bulk >= js-libp2p", "w2", mm, jj, 1.0, True)
    ratio_target("W2 bulk >= 3x py-libp2p", "w2", mm, pp, 3.0, True)
    ratio_target("W2 bulk >= 30% of plain asyncio TCP", "w2", mm, raw, 0.3, True)
    ratio_target("W3 tokens >= js-libp2p", "w3", mm, jj, 1.0, True)
    abs_target("W3 tokens >= 100,000 msg/s", "w3", mm, 100_000, True)
    ratio_target("W1 connect p50 <= half of js-libp2p's", "w1_p50", mm, jj, 0.5, False)
    abs_target("W4 sequential p50 <= 1.0 ms", "w4_p50", mm, 1.0, False)
    abs_target("W4 100 workers >= 5,000 req/s", "w4_conc", mm, 5000, True)
    abs_target("W5 start to listening <= 0.3 s", "w5_start", "mimirlite", 0.3, False)
    abs_target("W5 idle RSS <= 40 MiB", "w5_rss", "mimirlite", 40, False)
    abs_target("E2E added time to first chunk <= 2 ms", "e2e_ttfc", E2E_PEER, 2.0, False)
    abs_target("E2E >= 20,000 chunks/s through one node", "e2e_chunks", E2E_PEER, 20_000, True)
    tun_mm, tun_jj, gen1 = TUN["mm"].name, TUN["jj"].name, TUN["gen1"].name
    ratio_target("T1 tunnel chunks/s >= 3x the latest JS pair's", "t1_chunks", tun_mm, tun_jj, 3.0, True)
    ratio_target(
        "T1 tunnel chunks/s within 30% of /mimirllm/1.0.0's (>= 0.7x)", "t1_chunks", tun_mm, gen1, 0.7, True
    )
    dht_m, dht_j = DHT_SEARCHERS["mimirlite"], DHT_SEARCHERS["kad-dht"]
    ratio_target("D1 lookup p50 no slower than kad-dht's", "d1_p50", dht_m, dht_j, 1.0, False)
    ratio_target("D1 lookup p95 no slower than kad-dht's", "d1_p95", dht_m, dht_j, 1.0, False)
    abs_target("D1 RSS growth < 20 MiB per 10,000 records", "d1_rss", DHT_SERVERS["mimirlite"], 20, False)
    relay_m, relay_j = RELAYS["mimirlite"], RELAYS["js-libp2p"]
    ratio_target("R1 relay MiB per CPU second >= 2x js-libp2p's relay", "r1_cpu", relay_m, relay_j, 2.0, True)
    rtts = bench.relay_info.get("rtt_ms")
    if rtts:
        rtt = statistics.median(rtts)
        limit = 2 * rtt + DCUTR_SLACK_MS
        text = f"R1 DCUtR within 2 RTT + 100 ms in the NAT lab (RTT {fmt(rtt)} ms: <= {fmt(limit)} ms)"
        abs_target(text, "r1_dcutr", LAB_PEER, limit, False)
    else:
        out.append(Target("R1 DCUtR within 2 RTT + 100 ms in the NAT lab", "no figure", "n/a"))
    node_m = FOOT_NODES["mimirlite"]
    abs_target("F1 node with an OpenAI-compatible backend: idle RSS <= 40 MiB", "f1_rss", node_m, 40, False)
    abs_target("F1 node with an OpenAI-compatible backend: start <= 0.3 s", "f1_start", node_m, 0.3, False)
    chat_m = FOOT_CHATS["mimirlite"]
    abs_target("F2 chat -p against a node on 127.0.0.1 <= 0.4 s", "f2_chat", chat_m, 0.4, False)
    abs_target("F3 gateway idle RSS <= 35 MiB", "f3_rss", FOOT_GATEWAY, 35, False)
    for text, key, peer, other, factor, higher in bench_backend.RATIO_TARGETS:
        ratio_target(text, key, peer, other, factor, higher)
    for text, key, peer, limit, higher in bench_backend.ABS_TARGETS:
        abs_target(text, key, peer, limit, higher)
    for backend in ("echo", "fast"):
        ratio_target(
            f"W7 {CURVE_NODES[backend]}: 1,000 streams >= 80% of 10 streams' chunks/s",
            "w7_chunks", curve_peer(backend, 1000), curve_peer(backend, 10), 0.8, True,
        )
    abs_target(
        "W7 mimirlite node, echo: >= 30,000 chunks/s at 1,000 streams, node on one core",
        "w7_chunks", curve_peer("echo", 1000), 30_000, True,
    )
    idle_m = IDLE_PEERS["mimirlite"]
    abs_target("W9 node RSS <= 30 KiB per idle connection", "w9_rss", idle_m, 30, False)
    text = "W9 a new chat answered in < 50 ms while they are held (p50)"
    abs_target(text, "w9_chat_p50", idle_m, 50, False)
    return out


def machine_info(env: Env) -> dict[str, str]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "cpu": cpu or platform.processor() or "unknown",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    if env.node:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            info["node"] = subprocess.run(
                [env.node, "--version"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
    info.update(env.versions)
    return info


def render_text(rows: list[Row], notes: list[str], targets: list[Target], header: list[str]) -> str:
    cols = ["workload", "figure", "peer", "median", "spread (min\u2013max)", "vs best"]
    data = [[r.workload, r.figure, r.peer, r.median, r.spread, r.ratio] for r in rows]
    widths = [max(len(c), *(len(d[i]) for d in data)) for i, c in enumerate(cols)]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = (c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in pairs)
        return "  ".join(padded).rstrip()

    out = [*header, "", line(cols), line(["-" * w for w in widths])]
    last = None
    for d in data:
        if last is not None and d[0] != last:
            out.append("")
        last = d[0]
        out.append(line(d))
    out += [""] + [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    out += ["", "Targets (mimirlite → mimirlite unless said otherwise):"]
    tw = max(len(t.text) for t in targets)
    fw = max(len(t.figure) for t in targets)
    out += [f"  {t.status:<7} {t.text:<{tw}}  {t.figure:<{fw}}".rstrip() for t in targets]
    return "\n".join(out) + "\n"


def md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(rows: list[Row], notes: list[str], targets: list[Target], header: list[str]) -> str:
    out = [*(f"{h}  " for h in header[:-1]), header[-1], ""]
    out.append("| workload | figure | peer | median | spread (min\u2013max) | vs best |")
    out.append("|---|---|---|---:|---:|---:|")
    for r in rows:
        out.append(
            "| "
            + " | ".join(md_escape(c) for c in (r.workload, r.figure, r.peer, r.median, r.spread, r.ratio))
            + " |"
        )
    if notes:
        out.append("")
        out += [f"[{i}] {md_escape(n)}  " for i, n in enumerate(notes, 1)]
    out += ["", "| target (mimirlite → mimirlite unless said otherwise) | figure | status |", "|---|---|---|"]
    for t in targets:
        out.append(f"| {md_escape(t.text)} | {md_escape(t.figure)} | {t.status} |")
    return "\n".join(out) + "\n"


def header_lines(
    bench: Bench, info: dict[str, str], quick: bool, load: tuple[str, str], secs: float
) -> list[str]:
    runs = bench.cfg["runs"]
    p = bench.params
    lines = [
        f"mimirlite benchmarks ({'--quick: tiny sizes, not figures to quote' if quick else 'full run'}), "
        f"{info['date']}, {secs:.0f} s",
        f"machine: {info['cpus']} CPUs, {info['cpu']}, {info['os']}; Python {info['python']}"
        + (f", Node {info['node']}" if "node" in info else "")
        + "".join(f", {k} {v}" for k, v in info.items() if k.startswith(("libp2p", "@", "py-libp2p"))),
        f"load average at start {load[0]}, at end {load[1]}; median of {runs} run{'s' * (runs != 1)}, "
        f"each a fresh listener and dialer process pair on 127.0.0.1",
        f"sizes: W1 {p['connects']} connects (+{p['connect_warmup']} warm-up); "
        f"W2 {p['bulk_bytes'] >> 20} MiB in {p['chunk'] >> 10} KiB writes; "
        f"W3 {p['tokens']:,} messages (at most {p['tokens_cap_s']:g} s); W4 {p['rpc_seq']:,} sequential "
        f"(+{p['rpc_warmup']} warm-up), {p['rpc_workers']} workers x {p['rpc_per_worker']}; "
        f"E2E {p['words']:,} words, {p['ttfc_runs']} chats timed to their first chunk; "
        f"T1 one answer of {p['tun_chunks']:,} chunks a run",
        "vs best = median / best peer's median for that figure (limits excluded from 'best'); "
        "↑ higher is better, ↓ lower is better",
    ]
    if bench.extra.get("ttfc_ms"):
        lines.append(
            "E2E time to first chunk: "
            f"{fmt(statistics.median(bench.extra['ttfc_ms']))} ms through the node vs "
            f"{fmt(statistics.median(bench.extra['inprocess_ms']))} ms "
            "calling EchoBackend.stream_chat in-process"
        )
    r1 = bench.relay_info
    if "sizes" in r1:
        z = r1["sizes"]
        text = (
            f"R1: R1a pushes of {z['mib']} MiB through each relay on 127.0.0.1 (after {z['warmup_mib']} MiB "
            f"untimed) until the relay used {z['min_cpu_s']:g} CPU s, by one pair of mimirlite peers in one "
            "process, the relay process's CPU (user+sys) from /proc; R1b the NAT lab "
            f"(tests/helpers/netns.py), {z['rounds']} round{'s' * (z['rounds'] != 1)} of a relayed and a "
            f"punched client, {z['chats']} chats each"
        )
        if r1.get("rtt_ms"):
            added = r1["no_delay"] or f"{fmt(2 * r1['delay_ms'])} ms added by the routers (tc netem)"
            text += f"; RTT between the peers {fmt(statistics.median(r1['rtt_ms']))} ms ({added})"
        lines.append(text)
    if "backend" in bench.sections:
        lines += bench_backend.header(bench.backend_info)
    w7 = bench.curve_info
    if w7:
        z = w7["sizes"]
        chats = ", ".join(f"{b} {n:,}" for b, n in z["chats"].items())
        lines.append(
            f"W7: python -m mimirlite node --max-concurrent {w7['max_concurrent']} --queue "
            f"{w7['queue']} (the JS node mimir-node.mjs --max-streams {w7['max_concurrent'] + 100}); "
            f"{w7['pinning']}; answers of {z['words']} words ({z['words'] + 2} chunks), chats a level "
            f"({chats}; at least one a stream) from {z['clients']} client processes (a connection each) "
            "reading the /mimirllm/1.0.0 packets raw; chunks/s from the first chat's start to the last one's "
            "end; the node's CPU (user+sys, all threads, /proc/<pid>/task/*/schedstat) then, per chunk"
        )
        busy = [
            f"{CURVE_NODES[b]} {statistics.median(bench.extra[key]):.2f}, the load's core "
            f"{statistics.median(bench.extra[key.replace('w7_share', 'w7_load')]):.2f}"
            for b in CURVE_NODES
            if (key := f"w7_share {curve_peer(b, 1000)}") in bench.extra
        ]
        if busy:
            lines.append(
                "W7 at 1,000 streams, CPU s per wall s (1.00 = a core full) of the node, and of the load "
                "processes and the fast server together: " + "; ".join(busy)
            )
    w9 = bench.idle_info
    if w9:
        z = w9["sizes"]
        text = (
            f"W9: {z['clients']} client processes x {z['per_client']:,} connections (one Host and key pair "
            f"each, TCP + Noise + yamux, identified by the node) to a node on 127.0.0.1 with its caps raised "
            "(mimirlite: HostConfig max_connections, max_connections_per_ip, max_pending_per_ip; JS: "
            "--max-connections), RLIMIT_NOFILE soft limit raised by setrlimit (hard "
            f"{w9['nofile_hard']:,}; {w9.get('ephemeral_ports', 0):,} ephemeral ports); RSS per "
            f"connection = VmRSS growth / connections held; {z['chats']} chats of a new client timed to "
            "their last chunk, both nodes in front of tests/helpers/openai_server.py (in the section's "
            "runner process)"
        )
        for who, got in w9["nodes"].items():
            if "chat_held" not in got:
                continue
            held, before = got["chat_held"], got["chat_before"]
            text += (
                f"; {who}: {got['connections']:,} held ({got['open_at_clients']:,} open at the clients, "
                f"{got['failed']} failed, {got['late']:,} not taken "
                f"within {z['budget']:g} s, {got['dial_retries']} dials retried), "
                f"RSS {got['rss_before_kib'] / 1024:.1f} -> {got['rss_after_kib'] / 1024:.1f} MiB, "
                f"{got['node_cpu_s']:.2f} CPU s and {got['connect_s']:.1f} s to take them, chat p50/p95 "
                f"{fmt(held['p50_ms'])}/{fmt(held['p95_ms'])} ms while held vs "
                f"{fmt(before['p50_ms'])}/{fmt(before['p95_ms'])} ms before"
            )
        lines.append(text)
    if "tun" in bench.sections:
        lines.append(
            "T1: tests/helpers/openai_server.py streams the answer (its own process) to the node; a "
            "mimirlite client is timed from its chat() call (connection identified, one warm-up chat) to its "
            "first and last chunk; the latest JS client (one chat a process, as it is) from its probe of the "
            "tunnel, on the connection it then chats over, to its first and last chunk line: it buffers "
            "the whole answer, so its first chunk comes with its last"
        )
    if "netns" in bench.foot_info:
        where = (
            "in a network namespace of their own, mDNS on (the defaults)"
            if bench.foot_info["netns"]
            else "with mDNS off (not root: no namespace of their own to run it in)"
        )
        lines.append(
            f"F1-F3 (interop/bench_footprint.py): medians of {bench.foot_info.get('runs')} processes each, "
            "bytecode cached as an "
            f"installed package has it, nodes {where}; F1 in front of tests/helpers/openai_server.py, "
            "RSS 1 s after listening; F2 from process start to exit, a one-word answer; F3 1 s after the URL "
            "is printed"
        )
    return lines


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ---------------------------------------------------------------- main


async def amain(args: argparse.Namespace) -> int:
    cfg = json.loads(json.dumps(QUICK if args.quick else FULL))
    cfg["quick"] = args.quick
    if args.runs:
        cfg["runs"] = args.runs
    sections = [s for s in SECTIONS if not args.only or s in args.only.split(",")]
    env = Env()
    env.node, env.node_reason = find_node()
    if env.node:
        env.versions.update({f"{k}": v for k, v in js_versions().items()})
        if not (HERE / "node_modules" / "openai").is_dir():
            env.latest_reason = "unavailable: interop/node_modules has no openai (run npm ci in interop/)"
    venv = Path(args.venv).resolve()
    if "pp" in sections:
        if venv_ready(venv, PY_LIBP2P_VERSION):
            env.venv_python = str(venv_python(venv))
        elif args.quick:
            env.pyl_reason = f"skipped in --quick: no py-libp2p environment at {venv} (a full run builds it)"
        elif args.no_venv_build:
            env.pyl_reason = "skipped: no py-libp2p environment and --no-venv-build"
        else:
            why = await build_venv(venv, PY_LIBP2P_VERSION)
            if why is None:
                env.venv_python = str(venv_python(venv))
            else:
                env.pyl_reason = f"unavailable: {why}"
        if env.venv_python:
            env.versions["py-libp2p"] = PY_LIBP2P_VERSION
    bench = Bench(env, cfg, sections)
    load_start = loadavg()
    t0 = time.perf_counter()
    try:
        await bench.run()
    finally:
        await Proc.stop_all()
    secs = time.perf_counter() - t0
    info = machine_info(env)
    header = header_lines(bench, info, args.quick, (load_start, loadavg()), secs)
    rows, notes = build_rows(bench)
    targets = check_targets(bench)
    sys.stdout.write(render_text(rows, notes, targets, header))
    sys.stdout.flush()
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(rows, notes, targets, header))
    if args.json:
        dump = {
            "info": info,
            "config": cfg,
            "samples": bench.samples,
            "errors": bench.errors,
            "extra": bench.extra,
            "targets": [t.__dict__ for t in targets],
        }
        Path(args.json).write_text(json.dumps(dump, indent=1, default=dict))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run: proves the runner works")
    parser.add_argument("--runs", type=int, default=0, help="runs per peer (default 3, --quick 1)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as markdown")
    parser.add_argument("--json", metavar="FILE", help="also write every run's figures as JSON")
    parser.add_argument("--venv", default=str(DEFAULT_VENV), help="py-libp2p's own environment")
    parser.add_argument("--no-venv-build", action="store_true", help="never build the py-libp2p environment")
    parser.add_argument("--only", metavar="LIST", help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        print("interrupted; every worker was stopped", file=sys.stderr)
        return 130
    finally:
        kill_all_now()


if __name__ == "__main__":
    sys.exit(main())
