"""Drive the latest-generation JS MimirLLM peers (``latest-node.mjs``, ``latest-client.mjs``) from asyncio.

They behave on the wire like sahilpohare/mimir-llm 464ffe1 (WIRE.md, second half): one protocol per
model, ``/mimir/<sanitized model>/1.0.0``, carrying one raw HTTP/1.1 exchange. Both scripts print JSON lines
on stdout (a ``ready`` event first) and diagnostics on stderr.

Node (its backend is an Ollama-like root URL; the models come from its ``GET /api/tags``)::

    async with await JsLatestNode.start(srv.url) as node:
        node.protocols       # ["/mimir/llama3.2-latest/1.0.0"]
        await node.next_event("response", timeout=10)

Client, run to completion::

    res = await run_latest_client(node.addr, "--prompt", "hello", timeout=30)
    res.ok, res.text, res.chunks, res.http, res.probes, res.result

Both run as ``jspeer.JsProcess`` does: every process started here is stopped by ``stop()`` / ``kill()`` /
``wait()`` (or leaving ``async with``) with bounded waits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jspeer
from jspeer import HERE, NODE_MODULES, ClientResult, JsClient, JsProcess

# The directory the scripts run from; node resolves their modules from there (ESM ignores NODE_PATH).
# Default interop/; point MIMIRLITE_LATEST_JS_DIR at a copy of interop/'s .mjs files beside another
# ``npm ci`` tree to try a lockfile without installing into interop/node_modules.
JS_DIR = Path(os.environ.get("MIMIRLITE_LATEST_JS_DIR") or HERE)
NODE_SCRIPT = JS_DIR / "latest-node.mjs"
CLIENT_SCRIPT = JS_DIR / "latest-client.mjs"

DEFAULT_MODEL = "llama3.2:latest"

# client exit codes
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_SERVED = 3


def node_available() -> bool:
    """True when ``node`` is on PATH and ``npm ci`` has been run in interop/ (with the openai package)."""
    return jspeer.node_available() and (_node_modules() / "openai").is_dir()


def bootstrap_available() -> bool:
    """True when @libp2p/bootstrap is installed (``npm ci`` from the lockfile that pins it)."""
    return node_available() and (_node_modules() / "@libp2p" / "bootstrap").is_dir()


def _node_modules() -> Path:
    return JS_DIR / "node_modules" if JS_DIR != HERE else NODE_MODULES


class JsLatestNode(JsProcess):
    """``latest-node.mjs``: events are connection:open/close, probe, request, response, uncaught."""

    script = NODE_SCRIPT
    what = "js latest node"

    @property
    def models(self) -> list[str]:
        return [str(m) for m in self.ready.get("models", [])]

    @property
    def protocols(self) -> list[str]:
        return [str(p) for p in self.ready.get("protocols", [])]

    @property
    def circuit_addrs(self) -> list[str]:
        """Its relayed addresses (``<relay addr>/p2p-circuit/p2p/<id>``) once ``reserve`` succeeded."""
        return [str(a) for a in self.ready.get("circuitAddrs", [])]

    @classmethod
    async def start(
        cls,
        backend_url: str,
        *args: str,
        models: Sequence[str] = (),
        listen: str = "/ip4/127.0.0.1/tcp/0",
        env: Mapping[str, str] | None = None,
        timeout: float = 30,
        netns: str | None = None,
        reserve: Sequence[str] = (),
    ) -> JsLatestNode:
        """Start a node in front of ``backend_url`` (an Ollama-like root such as ``OpenAIServer.url``; a
        trailing ``/v1`` is dropped). ``models``: serve these instead of the backend's ``/api/tags``.
        ``args``: further flags of latest-node.mjs (``--dht``, ``--max-streams N``, ``--mdns`` with
        ``--mdns-interval-ms N``: @libp2p/mdns as the original, only inside test namespaces, ...).
        ``netns``: run it in that network namespace (``ip netns exec``; needs root).
        ``reserve``: circuit relay v2 addresses (with /p2p/) it reserves a slot on before it is ready (its
        tunnels then run on relayed connections too); see ``circuit_addrs``."""
        argv = ["--listen", listen, "--backend-url", backend_url]
        for m in models:
            argv += ["--model", m]
        for relay in reserve:
            argv += ["--reserve", relay]
        argv += list(args)
        return await cls._spawn(argv, env=env, timeout=timeout, netns=netns)


class LatestClientResult(ClientResult):
    """What a finished ``latest-client.mjs`` run printed."""

    @property
    def chunks(self) -> list[dict[str, Any]]:
        """The chunk objects the openai SDK decoded, in order."""
        return [e["chunk"] for e in self.events if e.get("event") == "chunk"]

    @property
    def http(self) -> list[dict[str, Any]]:
        """One event per tunnel exchange: status, reason, headers, body_bytes, frame_sizes."""
        return [e for e in self.events if e.get("event") == "http"]

    @property
    def relayed(self) -> bool | None:
        """With the relay transport (a circuit ``--peer``): whether the connection went through a relay."""
        relayed = self.result.get("relayed")
        return None if relayed is None else bool(relayed)

    @property
    def probes(self) -> dict[str, bool]:
        return {str(e["model"]): bool(e["served"]) for e in self.events if e.get("event") == "probe"}


class JsLatestClient(JsClient[LatestClientResult]):
    """``latest-client.mjs``: events are probe, http, chunk, result; it exits by itself."""

    script = CLIENT_SCRIPT
    what = "js latest client"
    result_type = LatestClientResult

    @classmethod
    async def start(
        cls,
        peer: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = 30,
        netns: str | None = None,
    ) -> JsLatestClient:
        """Start a client dialing ``peer``; ``args`` are flags of latest-client.mjs."""
        return await cls._spawn(["--peer", peer, *args], env=env, timeout=timeout, netns=netns)


async def run_latest_client(
    peer: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    netns: str | None = None,
) -> LatestClientResult:
    """Run ``latest-client.mjs --peer PEER *args`` to completion (bounded by ``timeout``)."""
    argv = [*args, "--timeout-ms", str(int(timeout * 1000))]
    client = await JsLatestClient.start(peer, *argv, env=env, timeout=30, netns=netns)
    try:
        return await client.wait(timeout + 5)
    finally:
        await client.stop()
