"""Drive the JS MimirLLM node and client (``mimir-node.mjs``, ``mimir-client.mjs``) from asyncio.

Both scripts print JSON lines on stdout (a ``ready`` event first) and diagnostics on stderr.

Node (flags of mimir-node.mjs after the backend URL; the openai SDK's retries default to 0 here)::

    async with await JsMimirNode.start(srv.base_url, "--on-backend-error", "close", models=["m:1b"]) as node:
        node.addr            # "/ip4/127.0.0.1/tcp/PORT/p2p/12D3KooW..."
        await node.next_event("completion", timeout=10)

Client, run to completion::

    res = await run_js_client(node.addr, prompt="hello", timeout=30)
    res.returncode, res.ok, res.text, res.models, res.deltas, res.result

Client, driven (e.g. killed mid-answer)::

    client = await JsMimirClient.start(node.addr, "--prompt", "hello")
    await client.next_event("delta", timeout=10)
    await client.kill()

Both run as ``jspeer.JsProcess`` does: every process started here is stopped by ``stop()`` / ``kill()`` /
``wait()`` (or leaving ``async with``): stdin EOF first (the node exits on it), then SIGTERM, then SIGKILL,
always with bounded waits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jspeer
from jspeer import HERE, NODE_MODULES, ClientResult, JsClient, JsProcess

NODE_SCRIPT = HERE / "mimir-node.mjs"
CLIENT_SCRIPT = HERE / "mimir-client.mjs"

DEFAULT_MODEL = "llama3.2:latest"
LLAMA_CID = "QmNizEt5WLyEDUHMqsm89RHHNR63DYUSdtS38AeG4XUV6C"

# client exit codes
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TRUNCATED = 2
EXIT_IDENTIFY = 3


def node_available() -> bool:
    """True when ``node`` is on PATH and ``npm ci`` has been run in interop/ (with the openai package)."""
    return jspeer.node_available() and (NODE_MODULES / "openai").is_dir()


class JsMimirNode(JsProcess):
    """``mimir-node.mjs``: events are connection:open/close, identify_query, message, completion, uncaught."""

    script = NODE_SCRIPT
    what = "js mimir node"

    @property
    def models(self) -> list[str]:
        return [str(m) for m in self.ready.get("models", [])]

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
        max_retries: int | None = 0,
        listen: str = "/ip4/127.0.0.1/tcp/0",
        env: Mapping[str, str] | None = None,
        timeout: float = 30,
        netns: str | None = None,
        reserve: Sequence[str] = (),
    ) -> JsMimirNode:
        """Start a node whose backend is ``backend_url`` (e.g. ``OpenAIServer.base_url``).

        ``models``: names served (the first one is asked of the backend); default llama3.2:latest.
        ``max_retries``: the openai SDK's retries (0 here for fast tests; None keeps the SDK default 2).
        ``args``: further flags of mimir-node.mjs (``--dht``, ``--on-backend-error close``, ``--mdns``, ...).
        ``netns``: run it in that network namespace (``ip netns exec``; needs root).
        ``reserve``: circuit relay v2 addresses (with /p2p/) it reserves a slot on before it is ready (its
        mimir handlers then run on relayed connections too); see ``circuit_addrs``.
        """
        argv = ["--listen", listen, "--backend-url", backend_url]
        for m in models:
            argv += ["--model", m]
        for relay in reserve:
            argv += ["--reserve", relay]
        if max_retries is not None:
            argv += ["--max-retries", str(max_retries)]
        argv += list(args)
        return await cls._spawn(argv, env=env, timeout=timeout, netns=netns)


class JsClientResult(ClientResult):
    """What a finished ``mimir-client.mjs`` run printed."""

    @property
    def models(self) -> list[str] | None:
        models = self.result.get("models")
        return None if models is None else [str(m) for m in models]

    @property
    def identify(self) -> dict[str, Any] | None:
        found = [e for e in self.events if e.get("event") == "identify"]
        return found[0] if found else None

    @property
    def deltas(self) -> list[dict[str, Any]]:
        """One event per completion packet: index, content, finish_reason, packet (the packet as received)."""
        return [e for e in self.events if e.get("event") == "delta"]

    @property
    def packets(self) -> list[dict[str, Any]]:
        return [e["packet"] for e in self.deltas]

    @property
    def relayed(self) -> bool | None:
        """With the relay transport (a circuit ``--peer``): whether the connection went through a relay."""
        relayed = self.result.get("relayed")
        return None if relayed is None else bool(relayed)

    @property
    def frame_sizes(self) -> list[int]:
        """Byte length of each data chunk (yamux frame) the chat stream delivered."""
        return [int(n) for n in self.result.get("frame_sizes", [])]


class JsMimirClient(JsClient[JsClientResult]):
    """``mimir-client.mjs``: events are identify, delta (one per packet), result; it exits by itself."""

    script = CLIENT_SCRIPT
    what = "js mimir client"
    result_type = JsClientResult

    @classmethod
    async def start(
        cls,
        peer: str | None,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = 30,
        netns: str | None = None,
    ) -> JsMimirClient:
        """Start a client dialing ``peer``; ``args`` are flags of mimir-client.mjs (``--prompt``, ...).

        ``peer`` None: no ``--peer`` (pass ``--mdns`` to find the node as the original client does).
        ``netns``: run it in that network namespace (``ip netns exec``; needs root).
        """
        argv = ["--peer", peer, *args] if peer is not None else list(args)
        return await cls._spawn(argv, env=env, timeout=timeout, netns=netns)


async def run_js_client(
    peer: str | None,
    prompt: str | None = "Hello",
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    netns: str | None = None,
) -> JsClientResult:
    """Run ``mimir-client.mjs --peer PEER --prompt PROMPT *args`` to completion (bounded by ``timeout``).

    ``peer`` None with ``--mdns`` in ``args``: find the node by mDNS; ``netns``: see JsMimirClient.start.
    """
    argv = list(args)
    if prompt is not None:
        argv = ["--prompt", prompt, *argv]
    argv += ["--timeout-ms", str(int(timeout * 1000))]
    client = await JsMimirClient.start(peer, *argv, env=env, timeout=30, netns=netns)
    try:
        return await client.wait(timeout + 5)
    finally:
        await client.stop()
