"""``mimirlite node`` follows its backend (``--models-interval``, ``--models-grace``), as a process: the test
OpenAI server gains a model, stops and comes back, and a MimirClient connected to the node sees each change;
the node says the backend went away and came back once each, however often it retried."""

from __future__ import annotations

import re

import pytest

from mimirlite import MimirClient, PeerId
from tests.helpers import until
from tests.helpers.nodeproc import cli, node
from tests.helpers.openai_server import OpenAIServer

pytestmark = pytest.mark.usefixtures("no_leaks")

LLAMA = "llama3.2:latest"
FRESH = "fresh:1b"
WAIT = 15.0
"""Bound of every wait on the node process (generous: a loaded machine)."""


async def test_node_help_shows_the_following_options(env: dict[str, str]) -> None:
    res = await cli("node", "--help", env={**env, "COLUMNS": "300"})  # one line per option
    assert res.rc == 0, res
    text = re.sub(r"\s+", " ", res.out)
    assert "--models-interval S ask the backend for its models every S seconds" in text
    assert "(default 30; 0: never)" in text
    assert "--models-grace S" in text and "(default: 3 x --models-interval)" in text


@pytest.mark.parametrize("value", ["-1", "nan"])
async def test_node_refuses_a_bad_grace(env: dict[str, str], value: str) -> None:
    async with OpenAIServer(models=[LLAMA]) as srv:
        res = await cli("node", "--backend-url", srv.base_url, "--models-grace", value, env=env)
    assert res.rc != 0 and "models grace" in res.err, res


async def test_node_process_follows_its_backend(env: dict[str, str]) -> None:
    async with OpenAIServer(models=[LLAMA]) as srv:
        args = ("--backend", "openai", "--backend-url", srv.base_url, "--no-dht")
        args += ("--models-interval", "0.2", "--models-grace", "1")
        async with node(*args, env=env) as (proc, info), MimirClient(
            [info.local_addr], mdns=False, dht=False
        ) as client:
            peer = PeerId.from_string(info.peer_id)
            assert client.nodes == {peer: [LLAMA]}
            srv.models.append(FRESH)
            await until(lambda: client.nodes == {peer: [LLAMA, FRESH]}, WAIT, "the new model")
            await srv.close()
            await until(lambda: client.nodes == {peer: []}, WAIT, "no model after the grace")
            await srv.start()
            await until(lambda: client.nodes == {peer: [LLAMA, FRESH]}, WAIT, "the models again")
            assert proc.returncode is None, proc.output  # it ran on through it all
        log = "".join(proc.err)
        assert log.count("the backend stopped answering") == 1, log
        assert log.count("serving no model until it comes back") == 1, log
        assert log.count("the backend answers again") == 1, log
