"""Drive a js-libp2p peer (``interop/peer.mjs``) from asyncio tests.

The peer speaks JSON lines: one ``ready`` event on stdout, then answers to commands
(``{"id": .., "ok": ..}``) and events (``{"event": ..}``). See ``peer.mjs`` for commands.
:class:`JsProcess`, the running of such a script, is shared with ``jsmimir.py``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

HERE = Path(__file__).resolve().parent
PEER_SCRIPT = HERE / "peer.mjs"
NODE_MODULES = HERE / "node_modules"

_STDERR_LINES = 300
_LINE_LIMIT = 64 * 1024 * 1024  # answers such as "connections" can get long

_P = TypeVar("_P", bound="JsProcess")


def node_available() -> bool:
    """True when ``node`` is on PATH and ``npm ci`` has been run in interop/."""
    return shutil.which("node") is not None and (NODE_MODULES / "libp2p").is_dir()


class JsProcess:
    """A node.js script of interop/ printing JSON lines on stdout, a ``ready`` event first; its stderr is
    kept for messages. Stopped by ``stop()`` / ``kill()`` (or leaving ``async with``): stdin EOF first,
    then SIGTERM, then SIGKILL, always with bounded waits."""

    script: Path
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
        self._stdout_task = asyncio.create_task(self._read_stdout(), name=f"{self.what}-stdout-{proc.pid}")
        self._stderr_task = asyncio.create_task(self._read_stderr(), name=f"{self.what}-stderr-{proc.pid}")

    @classmethod
    async def _spawn(
        cls: type[_P],
        args: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        netns: str | None = None,
    ) -> _P:
        """Start ``node SCRIPT *args`` (``env`` added to ours; in network namespace ``netns`` when given) and
        wait for its ready line."""
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH")
        full_env = None if env is None else {**os.environ, **env}
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
        """Close stdin and wait (when it exits at EOF); then SIGTERM, then SIGKILL. Reaps; idempotent."""
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

    def stderr_tail(self, lines: int = _STDERR_LINES) -> str:
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
            self._stderr.append(f"[{self.what}] stdout reader stopped: {exc!r}")
        finally:
            if not self._ready.done():
                err = RuntimeError(
                    f"{self.what} stdout closed before it was ready (exit code {self.returncode})"
                )
                self._ready.set_exception(err)
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
        self._handle(msg, text)

    def _handle(self, msg: dict[str, Any], text: str) -> None:
        """One JSON object from stdout: the ready event, else an event for ``events``."""
        if msg.get("event") == "ready" and not self._ready.done():
            self._ready.set_result(msg)
        else:
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


class JsPeerError(Exception):
    """A command answered ``ok: false`` (the message is the peer's error string)."""

    def __init__(self, message: str, reply: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reply: dict[str, Any] = reply or {}


@dataclass
class ClientResult:
    """What a finished JS client run printed: its exit code, events and last ``result`` event."""

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


_R = TypeVar("_R", bound=ClientResult)


class JsClient(JsProcess, Generic[_R]):
    """A JS client script that runs one job and exits by itself; :meth:`wait` gives its ``result_type``."""

    result_type: type[_R]
    stops_on_stdin_eof = False  # it does not read stdin: stop() goes straight to SIGTERM

    async def wait(self, timeout: float = 60) -> _R:
        """Wait for the client to exit; on timeout stop it and raise TimeoutError."""
        try:
            await asyncio.wait_for(self._proc.wait(), timeout)
        except asyncio.TimeoutError:
            await self.stop(timeout=1)
            raise TimeoutError(
                f"{self.what} did not exit in {timeout} s; stderr:\n{self.stderr_tail()}"
            ) from None
        await self.stop()
        results = self.events_named("result")
        return self.result_type(
            returncode=self._proc.returncode if self._proc.returncode is not None else -1,
            ready=self.ready,
            events=list(self.all_events),
            stderr=self.stderr_tail(),
            result=results[-1] if results else {},
        )


class JsPeer(JsProcess):
    """``peer.mjs``: commands answered by id (:meth:`call`), events in ``events``."""

    script = PEER_SCRIPT
    what = "js peer"

    def __init__(self, proc: asyncio.subprocess.Process, args: tuple[str, ...]) -> None:
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._closed = False
        super().__init__(proc, args)

    @classmethod
    async def start(cls, *args: str, timeout: float = 30) -> JsPeer:
        """Spawn ``node interop/peer.mjs *args`` and wait for its ready line."""
        return await cls._spawn(args, timeout=timeout)

    async def stop(self, timeout: float = 10) -> None:
        """Send the exit command, then stop as :meth:`JsProcess.stop`; commands still waiting fail."""
        if not self._closed and self.returncode is None:
            self._closed = True
            with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                await self._send({"id": 0, "cmd": "exit"})
        self._closed = True
        await super().stop(timeout)
        self._fail_pending(RuntimeError(f"js peer exited (code {self.returncode})"))

    # ------------------------------------------------------------------ commands

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

    async def _send(self, obj: dict[str, Any]) -> None:
        stdin = self._proc.stdin
        if stdin is None or stdin.is_closing():
            raise RuntimeError("js peer stdin is closed")
        stdin.write((json.dumps(obj) + "\n").encode())
        await stdin.drain()

    # ------------------------------------------------------------------ readers

    async def _read_stdout(self) -> None:
        try:
            await super()._read_stdout()
        finally:
            self._fail_pending(RuntimeError(f"js peer stdout closed (exit code {self._proc.returncode})"))

    def _handle(self, msg: dict[str, Any], text: str) -> None:
        if "event" in msg and "id" not in msg:
            super()._handle(msg, text)
            return
        mid = msg.get("id")
        fut = self._pending.get(mid) if isinstance(mid, int) else None
        if fut is not None and not fut.done():
            fut.set_result(msg)
        elif mid != 0:  # 0 is the exit command sent by stop()
            self._stderr.append(f"[stdout, unrouted] {text}")

    def _fail_pending(self, err: Exception) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
