"""F1-F3, the footprint users meet (issue 16), printed as one JSON line ``{"event": "result", ...}``:

- F1 a node in front of an OpenAI-compatible server (tests/helpers/openai_server.py): process start to
  listening, and idle RSS 1 s after; mimirlite (``python -m mimirlite node --backend-url URL``) and the
  first-generation JS node (interop/mimir-node.mjs, with @libp2p/mdns as the original).
- F2 a one-shot chat against that mimirlite node on 127.0.0.1: wall time from process start to exit;
  ``python -m mimirlite chat -p`` and the JS client (interop/mimir-client.mjs).
- F3 the gateway's idle RSS (``python -m mimirlite gateway``), 1 s after it printed its URL.

Both nodes run with their defaults, mDNS on. mDNS may not touch this machine's interfaces, so as root the
whole script re-runs itself in a network namespace of its own (``unshare -n``; only loopback, brought up
here) and everything talks on 127.0.0.1 there; otherwise the nodes run with mDNS off (``netns`` false in
the result says so). Python processes run as installed packages do: with their bytecode cached (a cache
in a temporary folder, filled by an untimed first run), whatever PYTHONDONTWRITEBYTECODE says.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from benchlib import rss_mib  # noqa: E402  (this directory)

from tests.helpers.openai_server import OpenAIServer  # noqa: E402

MIMIRLITE = [sys.executable, "-m", "mimirlite"]
SETTLE = 1.0  # seconds between ready and the RSS reading
TIMEOUT = 60.0


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


class Run:
    """One process, its stdout read line by line; stopped (SIGTERM, then SIGKILL) by :meth:`stop`."""

    def __init__(self, proc: asyncio.subprocess.Process, t0: float) -> None:
        self.proc = proc
        self.t0 = t0

    @classmethod
    async def start(cls, cmd: list[str], env: dict[str, str]) -> Run:
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=str(REPO),
            start_new_session=True,
        )
        return cls(proc, t0)

    async def line_with(self, marker: str) -> tuple[float, str]:
        """Seconds from spawn to the first stdout line holding ``marker``, and that line."""
        assert self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), TIMEOUT)
            if not raw:
                raise RuntimeError(f"{marker!r} never printed (exit {await self.proc.wait()})")
            if marker in raw.decode(errors="replace"):
                return time.perf_counter() - self.t0, raw.decode(errors="replace").strip()

    async def next_line(self) -> str:
        assert self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.readline(), TIMEOUT)).decode().strip()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def mimirlite_node(url: str, env: dict[str, str], mdns: bool) -> tuple[Run, float, float, str]:
    cmd = [*MIMIRLITE, "node", "--backend-url", url, "--listen", "/ip4/127.0.0.1/tcp/0"]
    run = await Run.start(cmd + ([] if mdns else ["--no-mdns"]), env)
    try:
        start, _ = await run.line_with("Listening on:")
        addr = await run.next_line()
        await asyncio.sleep(SETTLE)
        return run, start, rss_mib(run.proc.pid), addr
    except BaseException:
        await run.stop()
        raise


async def js_node(node: str, url: str, mdns: bool) -> tuple[float, float]:
    cmd = [node, str(HERE / "mimir-node.mjs"), "--listen", "/ip4/127.0.0.1/tcp/0", "--backend-url", url]
    run = await Run.start(cmd + (["--mdns"] if mdns else []), dict(os.environ))
    try:
        start, _ = await run.line_with('"ready"')
        await asyncio.sleep(SETTLE)
        return start, rss_mib(run.proc.pid)
    finally:
        await run.stop()


async def one_shot(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(REPO)
    )
    _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}: {err.decode(errors='replace')[-300:]}")
    return took


async def gateway(env: dict[str, str]) -> float:
    run = await Run.start([*MIMIRLITE, "gateway", "--no-mdns", "--port", "0"], env)
    try:
        await run.line_with("OpenAI-compatible API at")
        await asyncio.sleep(SETTLE)
        return rss_mib(run.proc.pid)
    finally:
        await run.stop()


def median_of(samples: list[float]) -> float:
    return statistics.median(samples)


async def measure(runs: int, mdns: bool) -> dict[str, Any]:
    cache = tempfile.mkdtemp(prefix="mimirlite-bench-pycache-")
    env = dict(os.environ, PYTHONPYCACHEPREFIX=cache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    node = shutil.which("node")
    out: dict[str, Any] = {"runs": runs, "netns": mdns}
    try:
        async with OpenAIServer() as server:
            url = server.base_url
            # untimed: fills the bytecode cache of every command measured
            run, _, _, addr = await mimirlite_node(url, env, mdns)
            try:
                await one_shot([*MIMIRLITE, "chat", "--no-mdns", "--no-dht", "--peer", addr, "-p", "hi"], env)
            finally:
                await run.stop()
            await gateway(env)
            starts, rss, chats, js_chats = [], [], [], []
            for _ in range(runs):
                run, start, mib, addr = await mimirlite_node(url, env, mdns)
                try:
                    starts.append(start)
                    rss.append(mib)
                    chat = [*MIMIRLITE, "chat", "--no-mdns", "--no-dht", "--peer", addr, "-p", "hi"]
                    chats.append(await one_shot(chat, env))
                    if node is not None:
                        js_client = [node, str(HERE / "mimir-client.mjs"), "--peer", addr, "--prompt", "hi"]
                        js_chats.append(await one_shot(js_client, dict(os.environ)))
                finally:
                    await run.stop()
            out["node"] = {"mimirlite": {"start_s": median_of(starts), "rss_mib": median_of(rss)}}
            out["chat"] = {"mimirlite": median_of(chats)}
            out["gateway"] = {"mimirlite": median_of([await gateway(env) for _ in range(runs)])}
            if node is None:
                out["js_skipped"] = "no node on PATH"
            else:
                js = [await js_node(node, url, mdns) for _ in range(runs)]
                out["node"]["js"] = {
                    "start_s": median_of([s for s, _ in js]),
                    "rss_mib": median_of([m for _, m in js]),
                }
                out["chat"]["js"] = median_of(js_chats)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 runs of each (default 7)")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    runs = 2 if args.quick else 7
    if args.inside:  # in our own network namespace: loopback up, mDNS on
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    elif os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
        quick = ["--quick"] if args.quick else []
        cmd = ["unshare", "-n", "--", sys.executable, __file__, "--inside", *quick]
        return subprocess.run(cmd, timeout=1800).returncode
    try:
        values = asyncio.run(measure(runs, mdns=args.inside))
    except Exception as exc:  # the runner reports the reason in the rows
        values = {"error": f"{type(exc).__name__}: {exc}"}
    emit({"event": "result", "values": values})
    return 0


if __name__ == "__main__":
    sys.exit(main())
