"""The real command line, run as subprocesses (``python -m mimirlite ...``) on 127.0.0.1.

A node is started, its printed multiaddr parsed, and ``chat`` / ``peers`` run against it. The
OpenAI-compatible backend is the test server from ``tests/helpers/openai_server.py``, running in the test's
event loop while the subprocesses run next to it (``asyncio.create_subprocess_exec``). Every process
a test starts is stopped and reaped by the test; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.nodeproc import Banner, Proc
from tests.helpers.openai_server import OpenAIServer

REPO = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 30.0
"""Seconds a command has to run to its end."""

PEER_ID = re.compile(r"^12D3KooW[1-9A-HJ-NP-Za-km-z]+$")
BACKEND_VARS = ("OLLAMA_ENDPOINT", "OPENAI_BASE_URL", "OPENAI_API_KEY")


# ---------------------------------------------------------------- helpers


def make_env(**extra: str) -> dict[str, str]:
    """The test process's environment without the backend variables, with the repository importable."""
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


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Result:
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


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections: bound (so nobody else takes it), never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def env(closed_port: int) -> dict[str, str]:
    """Subprocess environment where the default backend (``OLLAMA_ENDPOINT``) is unreachable."""
    return make_env(OLLAMA_ENDPOINT=f"http://127.0.0.1:{closed_port}/v1")


@pytest.fixture
async def echo_node(env: dict[str, str]) -> AsyncIterator[Banner]:
    async with node("--backend", "echo", env=env) as (_, info):
        yield info


# ---------------------------------------------------------------- node banner


async def test_node_prints_peer_id_addresses_and_models(env: dict[str, str]) -> None:
    args = ("--backend", "echo", "--listen", "/ip4/127.0.0.1/tcp/0")
    async with node(*args, env=env, default_sigint=True) as (p, info):
        assert PEER_ID.match(info.peer_id), info.lines
        assert info.addrs, info.lines
        for addr in info.addrs:
            assert re.fullmatch(rf"/ip4/127\.0\.0\.1/tcp/[1-9]\d*/p2p/{info.peer_id}", addr), info.lines
        assert info.models == ["echo"]
        rc, err = await p.stop(signal.SIGINT)
    # Ctrl-C ends the node quietly
    assert rc == 130, err
    assert "Traceback" not in err


async def test_node_on_unspecified_address_prints_expanded_addresses(env: dict[str, str]) -> None:
    async with node("--backend", "echo", "--listen", "/ip4/0.0.0.0/tcp/0", env=env) as (_, info):
        assert "0.0.0.0" not in "\n".join(info.lines)
        assert all(a.startswith("/ip4/") and a.endswith(f"/p2p/{info.peer_id}") for a in info.addrs)
        ports = {a.split("/")[4] for a in info.addrs}
        assert len(ports) == 1, info.addrs  # one socket, several addresses of this machine
        assert any(a.startswith("/ip4/127.0.0.1/tcp/") for a in info.addrs), info.lines
        assert info.models == ["echo"]


# ---------------------------------------------------------------- chat and peers


async def test_chat_prompt_prints_streamed_answer(env: dict[str, str], echo_node: Banner) -> None:
    res = await cli("chat", "--peer", echo_node.local_addr, "-p", "some words to echo", env=env)
    assert res.rc == 0, res
    assert res.out == "some words to echo\n"
    assert res.err == ""  # no logging without -v


@pytest.mark.parametrize("stdin", [b"hello there\nexit\nafter exit\n", b"hello there\n"], ids=["exit", "eof"])
async def test_chat_interactive_reads_stdin(env: dict[str, str], echo_node: Banner, stdin: bytes) -> None:
    res = await cli("chat", "--peer", echo_node.local_addr, env=env, stdin=stdin)
    assert res.rc == 0, res
    assert "hello there\n" in res.out
    assert res.out.count("hello there") == 1
    assert "after exit" not in res.out  # 'exit' ends the session
    assert res.err == ""


async def test_chat_unknown_model_fails_with_one_line(env: dict[str, str], echo_node: Banner) -> None:
    args = ("chat", "--peer", echo_node.local_addr, "--model", "no-such-model", "--wait", "1")
    res = await cli(*args, "-p", "hi", env=env)
    assert res.rc != 0
    line = one_line(res.err)
    assert line.startswith("mimirlite: ") and "no-such-model" in line, line
    assert "Traceback" not in res.err


async def test_chat_without_node_fails_with_one_line(env: dict[str, str]) -> None:
    res = await cli("chat", "--wait", "0.5", "-p", "hi", env=env)
    assert res.rc != 0
    line = one_line(res.err)
    assert re.fullmatch(r"mimirlite: no node .*found.*", line), line
    assert res.out == ""


async def test_peers_lists_node_and_models(env: dict[str, str], echo_node: Banner) -> None:
    res = await cli("peers", "--peer", echo_node.local_addr, env=env)
    assert res.rc == 0, res
    line = one_line(res.out)
    fields = line.split()
    assert fields[0] == echo_node.peer_id
    assert fields[1] == "echo"
    assert echo_node.local_addr in fields[2:]


async def test_verbose_logs_to_stderr(env: dict[str, str], echo_node: Banner) -> None:
    res = await cli("chat", "-v", "--peer", echo_node.local_addr, "-p", "loud words", env=env)
    assert res.rc == 0, res
    assert res.out == "loud words\n"  # logging stays off stdout
    assert f"INFO mimirlite.mimir.client: node {echo_node.peer_id} serves echo" in res.err, res.err


# ---------------------------------------------------------------- the OpenAI-compatible backend


async def test_node_serves_backend_url_models_and_chat_streams_its_answer(env: dict[str, str]) -> None:
    reply = ["Blue", " because", " of", " Rayleigh", " scattering."]
    async with OpenAIServer(models=["small:1b", "big:70b", "other:7b"], reply=reply) as srv:
        args = ("--backend-url", srv.base_url, "--model", "big:70b", "--model", "small:1b")
        async with node(*args, env=env) as (_, info):  # env's OLLAMA_ENDPOINT is unreachable
            assert info.models == ["big:70b", "small:1b"]
            chat = ("chat", "--peer", info.local_addr, "--model", "small:1b", "--system", "Be brief.")
            res = await cli(*chat, "-p", "Why is the sky blue?", env=env)
        assert res.rc == 0, res
        assert res.out == "Blue because of Rayleigh scattering.\n"
        assert res.err == ""
        [request] = srv.chat_requests
        assert request["model"] == "small:1b"
        assert request["stream"] is True
        assert request["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Why is the sky blue?"},
        ]


async def test_chat_interactive_keeps_the_conversation(env: dict[str, str]) -> None:
    async with OpenAIServer(models=["m:1"]) as srv:
        async with node("--backend-url", srv.base_url, env=env) as (_, info):
            res = await cli("chat", "--peer", info.local_addr, env=env, stdin=b"first question\nsecond one\n")
        assert res.rc == 0, res
        assert "first question\n" in res.out and "second one\n" in res.out
        first, second = srv.chat_requests
        assert first["messages"] == [{"role": "user", "content": "first question"}]
        assert second["messages"] == [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first question"},
            {"role": "user", "content": "second one"},
        ]


@pytest.mark.parametrize(
    "variables",
    [
        {"OLLAMA_ENDPOINT": "served"},
        {"OPENAI_BASE_URL": "served"},
        {"OLLAMA_ENDPOINT": "served", "OPENAI_BASE_URL": "other"},
    ],
    ids=["ollama-endpoint", "openai-base-url", "ollama-endpoint-first"],
)
async def test_node_backend_url_from_environment(variables: dict[str, str]) -> None:
    async with OpenAIServer(models=["env:1", "env:2"]) as served, OpenAIServer(models=["no:1"]) as other:
        urls = {"served": served.base_url, "other": other.base_url}
        async with node(env=make_env(**{k: urls[v] for k, v in variables.items()})) as (_, info):
            assert info.models == ["env:1", "env:2"]
        assert served.requests and {r.path for r in served.requests} == {"/v1/models"}
        assert other.requests == []


async def test_node_sends_openai_api_key_as_bearer() -> None:
    async with OpenAIServer(models=["keyed:1"], api_key="sk-test-123") as srv:
        env = make_env(OLLAMA_ENDPOINT=srv.base_url, OPENAI_API_KEY="sk-test-123")
        async with node(env=env) as (_, info):
            assert info.models == ["keyed:1"]
            res = await cli("chat", "--peer", info.local_addr, "-p", "secret words", env=env)
        assert res.rc == 0, res
        assert res.out == "secret words\n"
        assert {r.authorization for r in srv.requests} == {"Bearer sk-test-123"}
        assert len(srv.chat_requests) == 1


async def test_chat_to_failing_backend_fails_with_one_line(env: dict[str, str]) -> None:
    async with OpenAIServer(models=["m:1"]) as srv:
        async with node("--backend-url", srv.base_url, env=env) as (_, info):
            srv.fail_status, srv.fail_count, srv.fail_message = 500, 1, "the model crashed"
            res = await cli("chat", "--peer", info.local_addr, "-p", "hi", env=env)
            # the node survives its backend's failure and answers the next chat
            again = await cli("chat", "--peer", info.local_addr, "-p", "fine now", env=env)
        assert again.rc == 0 and again.out == "fine now\n", again
        assert len(srv.chat_requests) == 2
        assert res.rc != 0
        assert "Traceback" not in res.err
        lines = res.err.strip("\n").splitlines()
        assert len(lines) == 1, res.err
        assert re.fullmatch(r"mimirlite: .*500.*the model crashed.*", lines[0]), res.err


async def test_node_backend_openai_unreachable_fails_at_startup(
    env: dict[str, str], closed_port: int
) -> None:
    url = f"http://127.0.0.1:{closed_port}/v1"
    res = await cli(
        "node", "--backend", "openai", "--backend-url", url, "--listen", "/ip4/127.0.0.1/tcp/0", env=env
    )
    assert res.rc != 0
    line = one_line(res.err)
    assert line.startswith("mimirlite: ") and url in line and "unreachable" in line, line
    assert res.out == ""


async def test_node_falls_back_to_echo_when_backend_unreachable(
    env: dict[str, str], closed_port: int
) -> None:
    async with node(env=env) as (_, info):  # no backend option: OLLAMA_ENDPOINT, unreachable
        assert info.models == ["echo"]
        notice = info.lines[0]
        assert f"127.0.0.1:{closed_port}" in notice and "echo" in notice, info.lines
        assert info.lines[1].startswith("Peer ID: ")


# ---------------------------------------------------------------- identity


async def test_key_file_keeps_peer_id(env: dict[str, str], tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    peer_ids = []
    for _ in range(2):
        async with node("--backend", "echo", "--key-file", str(key), env=env) as (_, info):
            peer_ids.append(info.peer_id)
    assert peer_ids[0] == peer_ids[1]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


# ---------------------------------------------------------------- one look at the backend


@pytest.mark.parametrize("backend", ["auto", "openai"])
async def test_node_asks_the_backend_for_its_models_once(env: dict[str, str], backend: str) -> None:
    async with OpenAIServer(models=["once:1", "once:2"]) as srv:
        args = ("--backend", backend, "--backend-url", srv.base_url)
        async with node(*args, env=env) as (_, info):
            assert info.models == ["once:1", "once:2"]
            res = await cli("chat", "--peer", info.local_addr, "-p", "still answers", env=env)
            assert res.rc == 0 and res.out == "still answers\n", res
        # the check at start and the node's start share one GET /v1/models
        assert srv.models_requests == 1, [(r.method, r.path) for r in srv.requests]
        assert len(srv.chat_requests) == 1
