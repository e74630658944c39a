"""The programs in ``examples/``, run as subprocesses on 127.0.0.1 exactly as the README shows them.

No model server on this machine is assumed: ``OLLAMA_ENDPOINT`` is either a refusing 127.0.0.1 port
(the examples fall back to the echo model) or the test OpenAI-compatible server.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers.nodeproc import PEER_ID, make_env, run, started
from tests.helpers.openai_server import OpenAIServer

SERVING = re.compile(r"serving (?P<models>.+) at (?P<addr>/ip4/127\.0\.0\.1/tcp/\d+/p2p/(?P<peer>\S+))")


async def test_node_and_chat_examples_with_a_backend_url(env: dict[str, str]) -> None:
    reply = ["Because", " of", " Rayleigh", " scattering."]
    async with OpenAIServer(models=["llama3.2:latest", "other:1b"], reply=reply) as srv:
        async with started("examples/node.py", srv.base_url, env=env) as node:
            banner = await node.read_until("serving ")
            match = SERVING.fullmatch(banner)
            assert match, banner
            assert match["models"] == "llama3.2:latest, other:1b"
            assert PEER_ID.match(match["peer"]), banner
            res = await run("examples/chat.py", match["addr"], "Why is the sky blue?", env=env)
        assert res.rc == 0, res
        assert res.out == "Because of Rayleigh scattering.\n"
        assert res.err == ""
        [request] = srv.chat_requests
        assert request["model"] == "llama3.2:latest"  # the node's default model
        assert request["messages"] == [{"role": "user", "content": "Why is the sky blue?"}]


async def test_node_example_falls_back_to_echo(env: dict[str, str]) -> None:
    async with started("examples/node.py", env=env) as node:  # OLLAMA_ENDPOINT refuses connections
        banner = await node.read_until("serving ")
        match = SERVING.fullmatch(banner)
        assert match and match["models"] == "echo", banner
        res = await run("examples/chat.py", match["addr"], "echo these words", env=env)
    assert res.rc == 0, res
    assert res.out == "echo these words\n"


async def test_quickstart_echoes_the_prompt(env: dict[str, str]) -> None:
    res = await run("examples/quickstart.py", "Hello over libp2p", env=env)
    assert res.rc == 0, res
    node_line, client_line, answer = res.out.splitlines()
    assert re.fullmatch(
        r"node 12D3KooW\S+ serves echo at /ip4/127\.0\.0\.1/tcp/\d+/p2p/12D3KooW\S+", node_line
    )
    assert re.fullmatch(r"client 12D3KooW\S+ asks: Hello over libp2p", client_line)
    assert answer == "Hello over libp2p"
    assert res.err == ""


@pytest.mark.parametrize("variable", ["OLLAMA_ENDPOINT", "OPENAI_BASE_URL"])
async def test_quickstart_uses_the_backend_from_the_environment(variable: str) -> None:
    async with OpenAIServer(models=["llama3.2:latest"]) as srv:
        res = await run(
            "examples/quickstart.py", "Hello", "over", "libp2p", env=make_env(**{variable: srv.base_url})
        )
    assert res.rc == 0, res
    lines = res.out.splitlines()
    assert " serves llama3.2:latest at " in lines[0], res.out
    assert lines[-1] == "Hello over libp2p"
    assert [r["messages"] for r in srv.chat_requests] == [[{"role": "user", "content": "Hello over libp2p"}]]
