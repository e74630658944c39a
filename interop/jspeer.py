"""Drive a js-libp2p peer (``interop/peer.mjs``) from asyncio tests.

The peer speaks JSON lines: one ``ready`` event on stdout, then answers to commands
(``{"id": .., "ok": ..}``) and events (``{"event": ..}``). See ``peer.mjs`` for commands.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import shutil
import signal
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

HERE = Path(__file__).resolve().parent
PEER_SCRIPT = HERE / "peer.mjs"
NODE_MODULES = HERE / "node_modules"

_STDERR_LINES = 200
_LINE_LIMIT = 64 * 1024 * 1024  # answers such as "connections" can get long


def node_available() -> bool:
    """True when ``node`` is on PATH and ``npm ci`` has been run in interop/."""
    return shutil.which("node") is not None and (NODE_MODULES / "libp2p").is_dir()


class JsPeerError(Exception):
    """A command answered ``ok: false`` (the message is the peer's error string)."""

    def __init__(self, message: str, reply: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reply: dict[str, Any] = reply or {}


class JsPeer:
    peer_id: str
    addrs: list[str]
    events: asyncio.Queue[dict[str, Any]]

    def __init__(self, proc: asyncio.subprocess.Process, args: tuple[str, ...]) -> None:
        self._proc = proc
        self._args = args
        self.peer_id = ""
        self.addrs = []
        self.events = asyncio.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._closed = False
        self._stop_lock = asyncio.Lock()
        self._stdout_task = asyncio.create_task(self._read_stdout(), name=f"jspeer-stdout-{proc.pid}")
        self._stderr_task = asyncio.create_task(self._read_stderr(), name=f"jspeer-stderr-{proc.pid}")

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def start(cls, *args: str, timeout: float = 30) -> JsPeer:
        """Spawn ``node interop/peer.mjs *args`` and wait for its ready line."""
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH")
        proc = await asyncio.create_subprocess_exec(
            node,
            str(PEER_SCRIPT),
            *args,
            cwd=str(HERE),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
            start_new_session=sys.platform != "win32",
        )
        peer = cls(proc, args)
        try:
            ready = await asyncio.wait_for(asyncio.shield(peer._ready), timeout)
        except BaseException as exc:
            await peer.stop()
            if isinstance(exc, asyncio.TimeoutError):
                raise RuntimeError(
                    f"js peer {args!r} not ready after {timeout} s; stderr:\n{peer.stderr_tail()}"
                ) from None
            if isinstance(exc, RuntimeError):
                raise RuntimeError(f"{exc}; stderr:\n{peer.stderr_tail()}") from None
            raise
        peer.peer_id = str(ready["peerId"])
        peer.addrs = [str(a) for a in ready["addrs"]]
        return peer

    async def stop(self, timeout: float = 10) -> None:
        """Ask the peer to exit, then terminate / kill it. Always reaps; idempotent."""
        async with self._stop_lock:
            proc = self._proc
            if proc.returncode is None and not self._closed:
                self._closed = True
                try:
                    await self._send({"id": 0, "cmd": "exit"})
                    if proc.stdin is not None:
                        proc.stdin.close()
                except (ConnectionError, RuntimeError, OSError):
                    pass
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.wait(), timeout)
            self._closed = True
            if proc.returncode is None:
                self._signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 3)
                except asyncio.TimeoutError:
                    self._signal(signal.SIGKILL)
                    await proc.wait()
            for task in (self._stdout_task, self._stderr_task):
                if not task.done():
                    try:
                        await asyncio.wait_for(asyncio.shield(task), 2)
                    except asyncio.TimeoutError:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
            self._fail_pending(RuntimeError(f"js peer exited (code {proc.returncode})"))

    async def kill(self) -> None:
        """Kill the peer abruptly (SIGKILL, no libp2p shutdown), e.g. to test a remote crash; reaps it."""
        self._signal(signal.SIGKILL)
        await self._proc.wait()
        await self.stop()

    def _signal(self, sig: signal.Signals) -> None:
        # only the process we started, never its group or anything by name
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def __aenter__(self) -> JsPeer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ commands

    @property
    def addr(self) -> str:
        """The first listen address (with /p2p/)."""
        return self.addrs[0]

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def stderr_tail(self, lines: int = _STDERR_LINES) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    async def call(self, cmd: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        """Run one command; return its answer (without id/ok); raise JsPeerError if ok is false."""
        if self._closed or self._proc.returncode is not None:
            raise RuntimeError(f"js peer is not running; stderr:\n{self.stderr_tail(20)}")
        cid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            await self._send({**fields, "id": cid, "cmd": cmd})
            try:
                reply = await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(f"js peer: {cmd} (id {cid}) got no answer in {timeout} s") from None
        finally:
            self._pending.pop(cid, None)
        if not reply.get("ok"):
            raise JsPeerError(str(reply.get("error", "unknown error")), reply)
        return {k: v for k, v in reply.items() if k not in ("id", "ok")}

    async def next_event(self, name: str | None = None, timeout: float = 10) -> dict[str, Any]:
        """Wait for the next event (optionally of the given name), dropping others."""

        async def wait() -> dict[str, Any]:
            while True:
                ev = await self.events.get()
                if name is None or ev.get("event") == name:
                    return ev

        return await asyncio.wait_for(wait(), timeout)

    async def _send(self, obj: dict[str, Any]) -> None:
        stdin = self._proc.stdin
        if stdin is None or stdin.is_closing():
            raise RuntimeError("js peer stdin is closed")
        stdin.write((json.dumps(obj) + "\n").encode())
        await stdin.drain()

    # ------------------------------------------------------------------ readers

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
            self._stderr.append(f"[jspeer] stdout reader stopped: {exc!r}")
        finally:
            err = RuntimeError(f"js peer stdout closed (exit code {self._proc.returncode})")
            if not self._ready.done():
                self._ready.set_exception(err)
                self._ready.exception()  # mark retrieved
            self._fail_pending(err)

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
        if "event" in msg and "id" not in msg:
            if msg["event"] == "ready":
                if not self._ready.done():
                    self._ready.set_result(msg)
            else:
                self.events.put_nowait(msg)
            return
        mid = msg.get("id")
        fut = self._pending.get(mid) if isinstance(mid, int) else None
        if fut is not None and not fut.done():
            fut.set_result(msg)
        elif mid != 0:  # 0 is the exit command sent by stop()
            self._stderr.append(f"[stdout, unrouted] {text}")

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

    def _fail_pending(self, err: Exception) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
