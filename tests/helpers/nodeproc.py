"""Subprocesses of the tests: started, their output collected line by line, always stopped.

:class:`Proc` runs one command; reader tasks collect its stdout and stderr as they come (a chatty
process never blocks on a full pipe), every wait is bounded, and :meth:`Proc.stop` always ends and
reaps the process and closes its pipes. :meth:`Proc.read_banner` reads what ``mimirlite node`` prints
before it serves (a :class:`Banner`).

The command line's processes, the one way every suite starts them: :func:`make_env` (the environment),
:func:`started` / :func:`run` / :func:`cli` (``python ARGS``, to its end or while the test runs),
:func:`node` (``mimirlite node`` on 127.0.0.1 once it serves), :meth:`NodeProc.serve` (a node held by
an exit stack, optionally in a network namespace) and :func:`gateway_command` (``mimirlite gateway``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tests.helpers.netns import NetnsHost, TestNet

REPO = Path(__file__).resolve().parents[2]
"""The repository root: the working directory of every process, and on its PYTHONPATH."""
MIMIRLITE = (sys.executable, "-m", "mimirlite")
PEER_ID = re.compile(r"^12D3KooW[1-9A-HJ-NP-Za-km-z]+$")
"""A printed Ed25519 peer ID."""
RUN_TIMEOUT = 30.0
"""Seconds a command has to run to its end."""
BANNER_TIMEOUT = 30.0
"""Bound on a node printing its banner (generous: 20 start at once on a small machine)."""
BACKEND_VARS = ("OLLAMA_ENDPOINT", "OPENAI_BASE_URL", "OPENAI_API_KEY", "MIMIRLITE_API_KEY")
"""Variables of the test process's environment a command would act on; never passed on."""

STOP_TIMEOUT = 5.0
"""Bound on a process exiting after each signal, and on its output ending after it exited."""

P = TypeVar("P", bound="Proc")
Spawn = Callable[..., Awaitable[asyncio.subprocess.Process]]


async def stop_process(
    proc: asyncio.subprocess.Process, timeout: float = STOP_TIMEOUT, sig: signal.Signals = signal.SIGTERM
) -> None:
    """Close stdin, then ``sig``, then SIGKILL ``proc`` (that one process only); always reaps it."""
    if proc.stdin is not None and not proc.stdin.is_closing():
        proc.stdin.close()  # our test programs exit when their stdin closes
        if proc.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 2.0)
    for s in (sig, signal.SIGKILL):
        if proc.returncode is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(s)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout)
    if proc.returncode is None:
        await proc.wait()


@dataclass
class Banner:
    """What ``mimirlite node`` printed up to its ``Serving:`` line (``lines``), parsed."""

    peer_id: str
    addrs: list[str]
    models: list[str]
    lines: list[str]

    @property
    def local_addr(self) -> str:
        """The printed multiaddr on 127.0.0.1."""
        local = [a for a in self.addrs if a.startswith("/ip4/127.0.0.1/tcp/")]
        assert local, f"no 127.0.0.1 address printed: {self.lines!r}"
        return local[0]


class Proc:
    """A running subprocess; ``out`` and ``err`` hold what it printed on stdout and stderr, line by line
    with the line ends kept."""

    what = "process"
    """How failure messages name it."""
    line_timeout = 20.0
    """Default bound, in seconds, on waiting for a line (imports are slow on a loaded machine)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._next = 0  # the first line of ``out`` that read_until has not returned
        self._changed = asyncio.Event()
        self._out_reader = asyncio.create_task(self._read(proc.stdout, self.out), name=f"stdout-{proc.pid}")
        self._err_reader = asyncio.create_task(self._read(proc.stderr, self.err), name=f"stderr-{proc.pid}")

    @classmethod
    async def start(
        cls: type[P],
        *argv: str,
        spawn: Spawn = asyncio.create_subprocess_exec,
        stdin: bool = False,
        merge_stderr: bool = False,
        **kwargs: Any,
    ) -> P:
        """Start ``argv`` with stdout and stderr piped (``merge_stderr``: stderr into ``out`` too) and,
        with ``stdin``, stdin (else /dev/null).

        ``spawn`` starts it: e.g. ``functools.partial(net.spawn, host)`` (tests/helpers/netns.py) runs it in a
        test namespace. ``kwargs`` go to ``spawn``.
        """
        pipe = asyncio.subprocess.PIPE
        stderr = asyncio.subprocess.STDOUT if merge_stderr else pipe
        stdin_to = pipe if stdin else asyncio.subprocess.DEVNULL
        return cls(await spawn(*argv, stdin=stdin_to, stdout=pipe, stderr=stderr, **kwargs))

    async def __aenter__(self: P) -> P:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def lines(self) -> list[str]:
        """Its stdout lines so far, without line ends."""
        return [line.rstrip("\n") for line in self.out]

    @property
    def output(self) -> str:
        """All it printed so far, for failure messages."""
        return "".join(self.out) + (f"--- stderr:\n{''.join(self.err)}" if self.err else "")

    async def _read(self, pipe: asyncio.StreamReader | None, into: list[str]) -> None:
        while pipe is not None and (raw := await pipe.readline()):
            into.append(raw.decode("utf-8", "replace"))
            self._changed.set()
        self._changed.set()

    async def wait_line(
        self, check: Callable[[str], bool], timeout: float | None = None, start: int = 0, *, err: bool = False
    ) -> int:
        """Index of the first line of stdout (``err``: of stderr) from ``start`` on that passes ``check``
        (line end stripped); AssertionError when that output ends first or after ``timeout`` s."""
        lines, reader = (self.err, self._err_reader) if err else (self.out, self._out_reader)
        timeout = self.line_timeout if timeout is None else timeout

        async def wait() -> int:
            seen = start
            while True:
                for i in range(seen, len(lines)):
                    if check(lines[i].rstrip("\n")):
                        return i
                seen = max(seen, len(lines))
                if reader.done():  # for the message: its exit code, and the rest of its output
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
                    await asyncio.wait((self._out_reader, self._err_reader), timeout=STOP_TIMEOUT)
                    raise AssertionError(
                        f"{self.what} ended its output (exit code {self.returncode}) before the line "
                        f"awaited; it printed:\n{self.output}"
                    )
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"line not seen within {timeout} s; {self.what} printed:\n{self.output}"
            ) from None

    async def read_until(self, prefix: str, timeout: float | None = None) -> str:
        """The next stdout line starting with ``prefix``, after the lines this returned before."""
        i = await self.wait_line(lambda line: line.startswith(prefix), timeout, self._next)
        self._next = i + 1
        return self.out[i].rstrip("\n")

    async def readline(self, timeout: float | None = None) -> str:
        """The next stdout line, after the lines :meth:`read_until` returned."""
        return await self.read_until("", timeout)

    async def read_banner(self, timeout: float | None = None) -> Banner:
        """Read ``mimirlite node``'s banner, up to its ``Serving:`` line, and parse it."""
        await self.read_until("Serving: ", timeout)
        lines = self.lines[: self._next]
        peer_id = next(line for line in lines if line.startswith("Peer ID: ")).removeprefix("Peer ID: ")
        listed = lines[lines.index("Listening on:") + 1 : -1]
        addrs = [line.strip() for line in listed if line.startswith("  ")]  # not a merged stderr's lines
        return Banner(peer_id.strip(), addrs, lines[-1].removeprefix("Serving: ").split(", "), lines)

    def count(self, text: str) -> int:
        """How many stdout lines so far contain ``text``."""
        return sum(text in line for line in self.out)

    async def finish(self, stdin: bytes | None = None, *, timeout: float) -> tuple[int, str, str]:
        """Feed ``stdin`` (when piped), close it, wait (bounded) for the end: exit status, stdout, stderr."""
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.proc.stdin.write(stdin or b"")
                await self.proc.stdin.drain()
            self.proc.stdin.close()
        returncode = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._close_pipes()
        return returncode, "".join(self.out), "".join(self.err)

    async def kill(self) -> None:
        """SIGKILL: it dies without a word (the kernel closes its sockets); reaps it."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
        """``sig``, then SIGKILL if it lingers (see :func:`stop_process`); reaps it and closes its pipes.
        Idempotent. Its exit status and stderr."""
        await stop_process(self.proc, sig=sig)
        await self._close_pipes()
        assert self.proc.returncode is not None
        return self.proc.returncode, "".join(self.err)

    async def _close_pipes(self) -> None:
        readers = (self._out_reader, self._err_reader)
        await asyncio.wait(readers, timeout=STOP_TIMEOUT)  # the output ends soon after the process
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        # asyncio has no public call for it: closes the pipes even if a grandchild still holds them open
        transport = getattr(self.proc, "_transport", None)
        if transport is not None:
            transport.close()


def make_env(**extra: str) -> dict[str, str]:
    """The test process's environment without :data:`BACKEND_VARS`, with the repository importable;
    ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if k not in BACKEND_VARS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def started(
    *args: str, env: Mapping[str, str], stdin: bool = False, default_sigint: bool = False
) -> AsyncIterator[Proc]:
    """``python *args`` from the repository root; always stopped and reaped on the way out.

    ``default_sigint`` undoes an inherited "ignore SIGINT" (background jobs of a non-interactive
    shell start that way), so that SIGINT acts as a Ctrl-C in the terminal does.
    """
    preexec_fn = _default_sigint if default_sigint else None
    cmd = (sys.executable, *args)
    async with await Proc.start(*cmd, stdin=stdin, cwd=REPO, env=dict(env), preexec_fn=preexec_fn) as p:
        yield p


PROBED_NODE = """
import json, signal, sys
def loaded(signum, frame):
    print('LOADED ' + json.dumps(sorted(sys.modules)), flush=True)
signal.signal(signal.SIGUSR1, loaded)
sys.argv[0] = 'mimirlite'
from mimirlite.cli import main
raise SystemExit(main())
"""
"""``python -c PROBED_NODE ARGS``: ``mimirlite ARGS`` printing the modules it has loaded at each SIGUSR1
(:func:`probed_modules`; the handler runs in its event loop's thread between two bytecodes: the command
goes on serving)."""


async def probed_modules(proc: Proc) -> list[str]:
    """The modules a :data:`PROBED_NODE` process has loaded now."""
    proc.proc.send_signal(signal.SIGUSR1)
    line = await proc.read_until("LOADED ")
    modules: list[str] = json.loads(line.removeprefix("LOADED "))
    return modules


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Result:
    """How a command ended: exit status, stdout, stderr."""

    rc: int
    out: str
    err: str


async def run(*args: str, env: Mapping[str, str], stdin: bytes | None = None) -> Result:
    """Run ``python *args`` to its end (bounded) and collect what it printed."""
    async with started(*args, env=env, stdin=stdin is not None) as p:
        return Result(*await p.finish(stdin, timeout=RUN_TIMEOUT))


async def cli(command: str, *args: str, env: Mapping[str, str], stdin: bytes | None = None) -> Result:
    """``mimirlite COMMAND *args``, with mDNS off: tests stay off the machine's real interfaces."""
    return await run("-m", "mimirlite", command, "--no-mdns", *args, env=env, stdin=stdin)


@contextlib.asynccontextmanager
async def node(
    *args: str, env: Mapping[str, str], default_sigint: bool = False
) -> AsyncIterator[tuple[Proc, Banner]]:
    """``mimirlite node *args`` on 127.0.0.1 (unless ``args`` says where), once it serves."""
    listen = () if "--listen" in args else ("--listen", "/ip4/127.0.0.1/tcp/0")
    cmd = ("-m", "mimirlite", "node", "--no-mdns", *listen, *args)
    async with started(*cmd, env=env, default_sigint=default_sigint) as p:
        yield p, await p.read_banner()


def one_line(text: str) -> str:
    """The only line of ``text`` (asserted)."""
    lines = text.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line, got {text!r}"
    return lines[0]


UNBUFFERED = make_env(PYTHONUNBUFFERED="1")
"""The environment of nodes and commands whose output is read as a log, line by line."""

N = TypeVar("N", bound="NodeProc")


class NodeProc(Proc):
    """A node process that serves (``mimirlite node ARGS`` unless ``argv`` says another program), its
    stdout and stderr (its log) collected line by line in ``out``, its banner parsed."""

    what = "node"
    host: NetnsHost | None = None
    """The namespace test host it runs in (None: this machine's namespace)."""
    banner: Banner

    @property
    def peer_id(self) -> str:
        return self.banner.peer_id

    @property
    def models(self) -> list[str]:
        return self.banner.models

    @property
    def addr(self) -> str:
        """Its first printed listen address."""
        return self.banner.addrs[0]

    @classmethod
    async def serve(
        cls: type[N],
        stack: contextlib.AsyncExitStack,
        *args: str,
        net: TestNet | None = None,
        host: NetnsHost | None = None,
        argv: tuple[str, ...] = (*MIMIRLITE, "node"),
        env: Mapping[str, str] | None = None,
    ) -> N:
        """Start ``argv ARGS`` (in ``host``'s namespace of ``net`` when given), stopped when ``stack``
        closes, and wait for its banner: a valid peer ID and a listen address (on ``host``'s IP)."""
        spawn: Spawn = asyncio.create_subprocess_exec
        if net is not None and host is not None:
            spawn = functools.partial(net.spawn, host)
        proc = await cls.start(
            *argv, *args, spawn=spawn, merge_stderr=True, cwd=str(REPO), env=dict(env or UNBUFFERED)
        )
        stack.push_async_callback(proc.stop)
        proc.banner = await proc.read_banner(BANNER_TIMEOUT)
        proc.host = host
        assert PEER_ID.match(proc.peer_id), proc.output
        prefix = f"/ip4/{host.ip}/tcp/" if host is not None else "/ip4/"
        assert any(a.startswith(prefix) for a in proc.banner.addrs), proc.output
        return proc


async def run_cli(net: TestNet, host: NetnsHost, *args: str, timeout: float) -> tuple[int, str, str]:
    """Run ``python -m mimirlite ARGS`` in ``host``'s namespace to the end: (returncode, stdout, stderr)."""
    spawn = functools.partial(net.spawn, host)
    async with await Proc.start(*MIMIRLITE, *args, spawn=spawn, cwd=str(REPO), env=UNBUFFERED) as proc:
        try:
            return await proc.finish(timeout=timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"mimirlite {' '.join(args)} did not finish in {timeout} s") from None


@contextlib.asynccontextmanager
async def gateway_command(*args: str, env: Mapping[str, str]) -> AsyncIterator[tuple[Proc, int]]:
    """``python -m mimirlite gateway --no-mdns --port 0 ARGS`` and its port, once it serves; stopped at
    the end."""
    proc = await Proc.start(*MIMIRLITE, "gateway", "--no-mdns", "--port", "0", *args, cwd=REPO, env=dict(env))
    async with proc:
        line = await proc.read_until("OpenAI-compatible API at ", RUN_TIMEOUT)
        found = re.fullmatch(r"OpenAI-compatible API at http://[^ ]+:(\d+)/v1", line)
        assert found, line
        yield proc, int(found.group(1))
