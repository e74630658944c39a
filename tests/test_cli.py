"""The real command line, run as subprocesses (``python -m mimirlite ...``) on 127.0.0.1.

A node is started, its printed multiaddr parsed, and ``chat`` / ``peers`` run against it. The
OpenAI-compatible backend is the test server from ``tests/helpers/openai_server.py``, running in the test's
event loop while the subprocesses run next to it (``asyncio.create_subprocess_exec``). Every process
a test starts is stopped and reaped by the test; every wait is bounded.
"""

from __future__ import annotations

import re
import signal
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.nodeproc import PEER_ID, Banner, cli, make_env, node, one_line
from tests.helpers.openai_server import OpenAIServer

# ---------------------------------------------------------------- fixtures


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


async def test_echo_backend_serves_its_model_under_the_name_given(env: dict[str, str]) -> None:
    async with node("--backend", "echo", "--model", "named/echo:1b", env=env) as (_, info):
        assert info.models == ["named/echo:1b"]
        res = await cli(
            "chat", "--peer", info.local_addr, "--model", "named/echo:1b", "-p", "hi there", env=env
        )
        assert (res.rc, res.out) == (0, "hi there\n"), res.err
    res = await cli("node", "--backend", "echo", "--model", "a", "--model", "b", env=env)
    assert res.rc == 1
    assert one_line(res.err) == "mimirlite: the echo backend serves one model: give --model at most once"


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


@pytest.mark.parametrize("command", ["chat", "peers", "gateway"])
def test_clients_listen_for_hole_punches_when_a_relay_or_the_dht_is_in_play(command: str) -> None:
    """``--listen`` is taken as given; without it a client listens on any port when it may reach nodes
    through a relay (a relayed ``--peer``, or ``--bootstrap``), and not otherwise."""
    from mimirlite.cli import DEFAULT_LISTEN, _client_config, _parser

    relayed = f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER_ID}/p2p-circuit/p2p/{PEER_ID}"
    direct = f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER_ID}"

    def listen(*argv: str) -> tuple[str, ...]:
        args = _parser().parse_args([command, *argv])
        args.keypair = None
        return tuple(_client_config(args, peers=args.peer).listen)

    assert listen("--peer", direct) == ()
    assert listen("--peer", relayed) == (DEFAULT_LISTEN,)
    assert listen("--bootstrap", direct) == (DEFAULT_LISTEN,)
    assert listen("--bootstrap", direct, "--no-dht") == ()
    assert listen("--peer", relayed, "--listen", "/ip4/127.0.0.1/tcp/4002") == ("/ip4/127.0.0.1/tcp/4002",)
    args = _parser().parse_args([command, "--private-addrs"])
    args.keypair = None
    assert _client_config(args, peers=()).private_addrs
