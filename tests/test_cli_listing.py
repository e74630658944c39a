"""``mimirlite models`` and ``mimirlite peers --json``, run as subprocesses against real echo nodes on
127.0.0.1 (found with ``--peer``), as tests/test_cli.py runs ``peers``. Every node is stopped by its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator

import pytest

from tests.helpers.nodeproc import PEER_ID, Banner, Result, cli, node, one_line

SHARED, OTHER = "shared:1b", "other:7b"
EVIL = "evil\x1b[31m\u202e\nfake  9 nodes"
"""A model name a hostile node may choose: a terminal escape, a bidi override, a line of its own."""


@contextlib.asynccontextmanager
async def echo_nodes(env: dict[str, str], *models: str) -> AsyncIterator[list[Banner]]:
    """One echo node serving each of ``models``, started side by side; all stopped on the way out."""
    async with contextlib.AsyncExitStack() as stack:
        starts = [stack.enter_async_context(node("--backend", "echo", "--model", m, env=env)) for m in models]
        started = await asyncio.gather(*starts)
        yield [info for _, info in started]


def peer_args(nodes: list[Banner]) -> list[str]:
    return [arg for info in nodes for arg in ("--peer", info.local_addr)]


async def run_both(command: str, nodes: list[Banner], env: dict[str, str]) -> tuple[Result, Result]:
    """``command`` as text and with ``--json``, at once."""
    text, as_json = await asyncio.gather(
        cli(command, *peer_args(nodes), env=env), cli(command, "--json", *peer_args(nodes), env=env)
    )
    assert text.rc == 0 and text.err == "", text
    assert as_json.rc == 0 and as_json.err == "", as_json
    return text, as_json


async def test_models_counts_the_nodes_serving_each_model(env: dict[str, str]) -> None:
    async with echo_nodes(env, SHARED, OTHER, SHARED) as nodes:
        text, as_json = await run_both("models", nodes, env)
    a, c, b = nodes
    # sorted by name, one line each, the counts aligned
    assert text.out.splitlines() == ["other:7b   1 node", "shared:1b  2 nodes"]
    assert json.loads(as_json.out) == {
        "models": [
            {"model": OTHER, "nodes": 1, "peers": [c.peer_id]},
            {"model": SHARED, "nodes": 2, "peers": sorted([a.peer_id, b.peer_id])},
        ]
    }


async def test_peers_json_is_what_peers_prints(env: dict[str, str]) -> None:
    async with echo_nodes(env, SHARED, OTHER, SHARED) as nodes:
        text, as_json = await run_both("peers", nodes, env)
    doc = json.loads(as_json.out)  # the whole of stdout is one document
    assert list(doc) == ["peers"]
    expected = sorted(nodes, key=lambda info: info.peer_id)
    assert [p["peer_id"] for p in doc["peers"]] == [info.peer_id for info in expected]
    for entry, info in zip(doc["peers"], expected, strict=True):
        assert entry == {
            "peer_id": info.peer_id,
            "models": info.models,
            "generation": "first",  # an echo node speaks both generations; the first is preferred
            "connection": "direct",
            "addr": info.local_addr,  # the address dialed
            "addrs": entry["addrs"],
        }
        assert info.local_addr in entry["addrs"]
        assert all(a.endswith(f"/p2p/{info.peer_id}") for a in entry["addrs"])
    # the text says the same, a line per node in the same order
    lines = [line.split("  ") for line in text.out.splitlines()]
    shown = [
        (e["peer_id"], ", ".join(e["models"]), f"[{e['generation']}, {e['connection']}]")
        for e in doc["peers"]
    ]
    assert [(f[0], f[1], f[-1]) for f in lines] == shown
    assert counts(doc) == {SHARED: 2, OTHER: 1}


def counts(doc: dict[str, list[dict[str, list[str]]]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for entry in doc["peers"]:
        for model in entry["models"]:
            found[model] = found.get(model, 0) + 1
    return found


async def test_hostile_model_names_are_escaped_in_text_and_kept_in_json(env: dict[str, str]) -> None:
    async with echo_nodes(env, EVIL, SHARED) as nodes:
        (models, models_json), (peers, peers_json) = await asyncio.gather(
            run_both("models", nodes, env), run_both("peers", nodes, env)
        )
    escaped = "evil\\x1b[31m\\u202e\\nfake  9 nodes"
    assert models.out.splitlines() == [f"{escaped}  1 node", f"{SHARED:<{len(escaped)}}  1 node"]
    assert sum(escaped in line for line in peers.out.splitlines()) == 1
    for out in (models.out, peers.out):
        assert len(out.splitlines()) == 2  # no line forged
        assert "\x1b" not in out and "\u202e" not in out
    # JSON carries the exact name, escaped by JSON itself (stdout stays ASCII)
    assert [m["model"] for m in json.loads(models_json.out)["models"]] == [EVIL, SHARED]
    assert EVIL in {m for p in json.loads(peers_json.out)["peers"] for m in p["models"]}
    assert models_json.out.isascii() and peers_json.out.isascii()


@pytest.mark.parametrize("command", ["models", "peers"])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
async def test_no_node_found_exits_1_with_one_line(env: dict[str, str], command: str, as_json: bool) -> None:
    res = await cli(command, "--wait", "0.5", *(["--json"] if as_json else []), env=env)
    assert res.rc == 1
    assert one_line(res.err) == "mimirlite: no node found within 0.5 s"
    # with --json, stdout is still one document, an empty one, for a script reading it
    if as_json:
        assert json.loads(res.out) == {command: []}
    else:
        assert res.out == ""


@pytest.mark.parametrize("command", ["models", "peers"])
async def test_unreachable_peer_is_named_and_others_still_listed(
    env: dict[str, str], closed_port: int, command: str
) -> None:
    dead = f"/ip4/127.0.0.1/tcp/{closed_port}/p2p/12D3KooWGUCdSFNFb2KY1tppaHPPi4Dav46ix1vUmsSsbEbALA2R"
    res = await cli(command, "--json", "--peer", dead, env=env)
    assert res.rc == 1 and json.loads(res.out) == {command: []}
    assert re.fullmatch(rf"mimirlite: cannot use {re.escape(dead)}: .+", one_line(res.err)), res.err
    async with echo_nodes(env, SHARED) as [info]:
        res = await cli(command, "--json", "--peer", dead, "--peer", info.local_addr, env=env)
    assert res.rc == 0, res
    assert PEER_ID.match(info.peer_id)
    assert re.fullmatch(rf"mimirlite: cannot use {re.escape(dead)}: .+", one_line(res.err)), res.err
    doc = json.loads(res.out)
    if command == "models":
        assert doc == {"models": [{"model": SHARED, "nodes": 1, "peers": [info.peer_id]}]}
    else:
        assert [p["peer_id"] for p in doc["peers"]] == [info.peer_id]
