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

Every process started here is stopped by ``stop()`` / ``kill()`` / ``wait()`` (or leaving ``async with``):
stdin EOF first (the node exits on it), then SIGTERM, then SIGKILL, always with bounded waits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
NODE_SCRIPT = HERE / "mimir-node.mjs"
CLIENT_SCRIPT = HERE / "mimir-client.mjs"
NODE_MODULES = HERE / "node_modules"

DEFAULT_MODEL = "llama3.2:latest"
LLAMA_CID = "QmNizEt5WLyEDUHMqsm89RHHNR63DYUSdtS38AeG4XUV6C"

# client exit codes
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TRUNCATED = 2
EXIT_IDENTIFY = 3

_STDERR_LINES = 300
_LINE_LIMIT = 64 * 1024 * 1024

_P = TypeVar("_P", bound="_JsProcess")


def node_available() -> bool:
    """True when ``node`` is on PATH and ``npm ci`` has been run in interop/ (with the openai package)."""
    return (
        shutil.which("node") is not None
        and (NODE_MODULES / "libp2p").is_dir()
        and (NODE_MODULES / "openai").is_dir()
    )


class _JsProcess:
    """A node.js script speaking JSON lines on stdout."""

    script: Path = NODE_SCRIPT
    what = "js process"
    stops_on_stdin_eof = True

    def __init__(self, proc: asyncio.subprocess.Process, args: tuple[str, ...]) -> None:
        self._proc = proc
        self.args = args
        self.peer_id = ""
        self.addrs: list[str] = []
        self.ready: dict[str, Any] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.all_events: list[dict[str, Any]] = []
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._stop_lock = asyncio.Lock()
        self._stdout_task = asyncio.create_task(self._read_stdout(), name=f"jsmimir-stdout-{proc.pid}")
        self._stderr_task = asyncio.create_task(self._read_stderr(), name=f"jsmimir-stderr-{proc.pid}")

    @classmethod
    async def _spawn(
        cls: type[_P],
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None,
        timeout: float,
        netns: str | None = None,
    ) -> _P:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH")
        full_env = None
        if env is not None:
            full_env = {**os.environ, **env}
        # ``ip netns exec`` execs node in that network namespace (same pid: signals reach node itself)
        prefix = ["ip", "netns", "exec", netns] if netns is not None else []
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            node,
            str(cls.script),
            *args,
            cwd=str(HERE),
            env=full_env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
            start_new_session=sys.platform != "win32",
        )
        self = cls(proc, tuple(args))
        try:
            ready = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, asyncio.TimeoutError):
                raise RuntimeError(
                    f"{cls.what} {tuple(args)!r} not ready after {timeout} s; stderr:\n{self.stderr_tail()}"
                ) from None
            if isinstance(exc, RuntimeError):
                raise RuntimeError(f"{exc}; stderr:\n{self.stderr_tail()}") from None
            raise
        self.ready = ready
        self.peer_id = str(ready["peerId"])
        self.addrs = [str(a) for a in ready.get("addrs", [])]
        return self

    # ------------------------------------------------------------------ lifecycle

    @property
    def addr(self) -> str:
        """The first listen address (with /p2p/)."""
        return self.addrs[0]

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def stop(self, timeout: float = 10) -> None:
        """Close stdin and wait (the node exits at EOF); then SIGTERM, then SIGKILL. Reaps; idempotent."""
        async with self._stop_lock:
            proc = self._proc
            if proc.returncode is None and proc.stdin is not None and not proc.stdin.is_closing():
                with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                    proc.stdin.close()
                if self.stops_on_stdin_eof:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(proc.wait(), timeout)
            if proc.returncode is None:
                self._signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 3)
                except asyncio.TimeoutError:
                    self._signal(signal.SIGKILL)
                    await proc.wait()
            await self._join_readers()

    async def kill(self) -> None:
        """SIGKILL (no libp2p shutdown: the remote sees the TCP connection drop); reaps it."""
        self._signal(signal.SIGKILL)
        await self._proc.wait()
        await self.stop()

    async def _join_readers(self) -> None:
        for task in (self._stdout_task, self._stderr_task):
            if not task.done():
                try:
                    await asyncio.wait_for(asyncio.shield(task), 2)
                except asyncio.TimeoutError:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        stdin = self._proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()

    def _signal(self, sig: signal.Signals) -> None:
        # only the process we started, never its group or anything by name
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def __aenter__(self: _P) -> _P:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ events

    def stderr_tail(self, lines: int = 60) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    async def next_event(self, name: str | None = None, timeout: float = 10) -> dict[str, Any]:
        """Wait for the next event (optionally of the given name), dropping others from the queue."""

        async def wait() -> dict[str, Any]:
            while True:
                ev = await self.events.get()
                if name is None or ev.get("event") == name:
                    return ev

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"{self.what}: no {name or 'event'} in {timeout} s; stderr:\n{self.stderr_tail(30)}"
            ) from None

    def events_named(self, name: str) -> list[dict[str, Any]]:
        """All events of that name seen so far (the queue is left alone)."""
        return [e for e in self.all_events if e.get("event") == name]

    def uncaught(self) -> list[dict[str, Any]]:
        """Crashes the script reported (uncaught exceptions, unhandled rejections)."""
        return self.events_named("uncaught")

    async def _read_stdout(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        try:
            while True:
                raw = await stdout.readline()
                if not raw:
                    break
                self._route(raw)
        except (asyncio.LimitOverrunError, ValueError) as exc:
            self._stderr.append(f"[jsmimir] stdout reader stopped: {exc!r}")
        finally:
            if not self._ready.done():
                self._ready.set_exception(RuntimeError(f"{self.what} exited before it was ready"))
                self._ready.exception()  # mark retrieved

    def _route(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return
        try:
            msg = json.loads(text)
        except json.JSONDecodeError:
            self._stderr.append(f"[stdout, not JSON] {text}")
            return
        if not isinstance(msg, dict):
            self._stderr.append(f"[stdout, not an object] {text}")
            return
        if msg.get("event") == "ready" and not self._ready.done():
            self._ready.set_result(msg)
            return
        self.all_events.append(msg)
        self.events.put_nowait(msg)

    async def _read_stderr(self) -> None:
        stderr = self._proc.stderr
        assert stderr is not None
        while True:
            try:
                raw = await stderr.readline()
            except (asyncio.LimitOverrunError, ValueError):
                raw = await stderr.read(65536)
            if not raw:
                break
            self._stderr.append(raw.decode("utf-8", "replace").rstrip("\n"))


class JsMimirNode(_JsProcess):
    """``mimir-node.mjs``: events are connection:open/close, identify_query, message, completion, uncaught."""

    script = NODE_SCRIPT
    what = "js mimir node"

    @property
    def models(self) -> list[str]:
        return [str(m) for m in self.ready.get("models", [])]

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
    ) -> JsMimirNode:
        """Start a node whose backend is ``backend_url`` (e.g. ``OpenAIServer.base_url``).

        ``models``: names served (the first one is asked of the backend); default llama3.2:latest.
        ``max_retries``: the openai SDK's retries (0 here for fast tests; None keeps the SDK default 2).
        ``args``: further flags of mimir-node.mjs (``--dht``, ``--on-backend-error close``, ``--mdns``, ...).
        ``netns``: run it in that network namespace (``ip netns exec``; needs root).
        """
        argv = ["--listen", listen, "--backend-url", backend_url]
        for m in models:
            argv += ["--model", m]
        if max_retries is not None:
            argv += ["--max-retries", str(max_retries)]
        argv += list(args)
        return await cls._spawn(argv, env=env, timeout=timeout, netns=netns)


@dataclass
class JsClientResult:
    """What a finished ``mimir-client.mjs`` run printed."""

    returncode: int
    ready: dict[str, Any]
    events: list[dict[str, Any]]
    stderr: str
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.result.get("ok"))

    @property
    def text(self) -> str:
        return str(self.result.get("text", ""))

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
    def frame_sizes(self) -> list[int]:
        """Byte length of each data chunk (yamux frame) the chat stream delivered."""
        return [int(n) for n in self.result.get("frame_sizes", [])]


class JsMimirClient(_JsProcess):
    """``mimir-client.mjs``: events are identify, delta (one per packet), result; it exits by itself."""

    script = CLIENT_SCRIPT
    what = "js mimir client"
    stops_on_stdin_eof = False  # it does not read stdin: stop() goes straight to SIGTERM

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

    async def wait(self, timeout: float = 60) -> JsClientResult:
        """Wait for the client to exit; on timeout stop it and raise TimeoutError."""
        try:
            await asyncio.wait_for(self._proc.wait(), timeout)
        except asyncio.TimeoutError:
            await self.stop(timeout=1)
            raise TimeoutError(
                f"js mimir client did not exit in {timeout} s; stderr:\n{self.stderr_tail()}"
            ) from None
        await self.stop()
        results = self.events_named("result")
        return JsClientResult(
            returncode=self._proc.returncode if self._proc.returncode is not None else -1,
            ready=self.ready,
            events=list(self.all_events),
            stderr=self.stderr_tail(_STDERR_LINES),
            result=results[-1] if results else {},
        )


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
