"""A mixed network on namespace test hosts: both MimirLLM generations and mimirlite, found by mDNS.

One bridge of network namespaces (tests/helpers/netns.py), each peer in its own namespace with its own
address:

- a first-generation JS node (interop/mimir-node.mjs: ``/mimirllm/1.0.0`` and its identify),
- a latest-generation JS node (interop/latest-node.mjs: ``/mimir/<model>/1.0.0`` only),
- a mimirlite node (echo backend; it serves both generations),

all announcing themselves with mDNS (@libp2p/mdns for the JS nodes, as the original). Each JS node sits in
front of its own tests/helpers/openai_server.py on 127.0.0.1 of its namespace, with its own model and its own
reply, so an answer tells which node gave it. From a fourth namespace, given no address,
``python -m mimirlite peers`` lists the three with their models, generation and path (the mimirlite node
as ``[first, direct]``: it serves both and the client prefers the first), and ``python -m mimirlite chat
--model M`` reaches each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from pathlib import Path

import pytest

from tests.helpers.discovery import FIND_TIMEOUT, JS_INTERVAL_MS, chat_requests, needs_js, openai_server_in
from tests.helpers.netns import NetnsHost, TestNet, require_netns
from tests.helpers.nodeproc import RUN_TIMEOUT, NodeProc, run_cli

INTEROP = Path(__file__).resolve().parents[2] / "interop"
if str(INTEROP) not in sys.path:
    sys.path.insert(0, str(INTEROP))

from jslatest import JsLatestNode  # noqa: E402
from jsmimir import JsMimirNode  # noqa: E402

FIRST_MODEL = "first-js/llama:1b"
LATEST_MODEL = "latest-js/qwen:2b"
ECHO_MODEL = "echo"
FIRST_REPLY = "answered by the first-generation JS node"
LATEST_REPLY = "answered by the latest-generation JS node"
PROMPT = "who answers across the bridge"


def parse_peers(out: str) -> dict[str, tuple[list[str], list[str], str]]:
    """``peers`` output: {peer ID: (models, addresses, generation)}; a line is
    ``<peer>  <model>, <model>  <addr> <addr>  [first|latest]``."""
    listed: dict[str, tuple[list[str], list[str], str]] = {}
    for line in out.splitlines():
        peer, models, rest = line.split("  ", 2)
        addrs, generation = rest.rsplit("  ", 1)
        listed[peer] = (models.split(", "), addrs.split(), generation)
    return listed


def has_addr(addrs: list[str], host: NetnsHost) -> bool:
    return any(a.startswith(f"/ip4/{host.ip}/tcp/") for a in addrs)


@needs_js
@pytest.mark.interop
async def test_peers_and_chat_in_a_mixed_network() -> None:
    """First-generation JS, latest JS and mimirlite nodes on one bridge: ``peers`` lists all three with
    the right models and generation, and ``chat --model`` reaches each of them."""
    require_netns()
    async with TestNet(4) as net, contextlib.AsyncExitStack() as stack:
        first_host, latest_host, lite_host, client_host = net.hosts
        first_loop, latest_loop = net.loop(first_host), net.loop(latest_host)
        first_srv, latest_srv = await asyncio.gather(
            openai_server_in(stack, first_loop, models=[FIRST_MODEL], reply=FIRST_REPLY),
            openai_server_in(stack, latest_loop, models=[LATEST_MODEL], reply=LATEST_REPLY),
        )
        mdns = ("--mdns", "--mdns-interval-ms", JS_INTERVAL_MS)
        first, latest, lite = await asyncio.gather(
            JsMimirNode.start(
                first_srv.base_url,
                *mdns,
                models=[FIRST_MODEL],
                listen="/ip4/0.0.0.0/tcp/0",
                netns=first_host.netns,
            ),
            JsLatestNode.start(latest_srv.url, *mdns, listen="/ip4/0.0.0.0/tcp/0", netns=latest_host.netns),
            NodeProc.serve(stack, "--backend", "echo", net=net, host=lite_host),
        )
        stack.push_async_callback(first.stop)
        stack.push_async_callback(latest.stop)
        assert latest.models == [LATEST_MODEL]  # from its backend's /api/tags
        assert latest.protocols == ["/mimir/latest-js-qwen-2b/1.0.0"]
        assert lite.models == [ECHO_MODEL]

        def js_logs() -> str:
            return f"first js node:\n{first.stderr_tail()}\nlatest js node:\n{latest.stderr_tail()}"

        code, out, err = await run_cli(
            net, client_host, "peers", "-v", "--wait", f"{FIND_TIMEOUT:g}", timeout=FIND_TIMEOUT + RUN_TIMEOUT
        )
        assert code == 0, f"{err}\n{js_logs()}"
        listed = parse_peers(out)
        expected = {
            first.peer_id: ([FIRST_MODEL], first_host, "[first, direct]"),
            latest.peer_id: ([LATEST_MODEL], latest_host, "[latest, direct]"),
            lite.peer_id: ([ECHO_MODEL], lite_host, "[first, direct]"),
        }
        assert set(listed) == set(expected), f"{out}\n{err}\n{js_logs()}"
        for peer, (models, host, generation) in expected.items():
            got_models, addrs, got_generation = listed[peer]
            assert (got_models, got_generation) == (models, generation), (peer, out)
            assert has_addr(addrs, host), (peer, host.ip, addrs)

        wait = ("--wait", f"{FIND_TIMEOUT:g}")
        code, out, err = await run_cli(  # models, found by mDNS as peers found them
            net, client_host, "models", "--json", *wait, timeout=FIND_TIMEOUT + RUN_TIMEOUT
        )
        assert code == 0, f"{err}\n{js_logs()}"
        offered = {m["model"]: (m["nodes"], m["peers"]) for m in json.loads(out)["models"]}
        served = {model: (1, [peer]) for peer, (models, _, _) in expected.items() for model in models}
        assert offered == served, f"{out}\n{err}"

        answers = {FIRST_MODEL: FIRST_REPLY, LATEST_MODEL: LATEST_REPLY, ECHO_MODEL: PROMPT}
        nodes = {FIRST_MODEL: (first.peer_id, first_host), LATEST_MODEL: (latest.peer_id, latest_host)}
        nodes[ECHO_MODEL] = (lite.peer_id, lite_host)
        for model, answer in answers.items():
            code, out, err = await run_cli(
                net,
                client_host,
                "chat",
                "-v",
                "-p",
                PROMPT,
                "--model",
                model,
                "--wait",
                f"{FIND_TIMEOUT:g}",
                timeout=FIND_TIMEOUT + RUN_TIMEOUT,
            )
            assert code == 0, f"{model}: {err}\n{js_logs()}"
            assert out == f"{answer}\n", (model, out, err)
            peer, host = nodes[model]
            assert re.search(rf"{peer} at /ip4/{re.escape(host.ip)}/tcp/\d+", err), err

        # each backend saw exactly the one chat meant for it, for its own model
        first_chats, latest_chats = await asyncio.gather(
            chat_requests(first_loop, first_srv), chat_requests(latest_loop, latest_srv)
        )
        assert [r["model"] for r in first_chats] == [FIRST_MODEL]
        assert first_chats[0]["messages"][-1] == {"role": "user", "content": PROMPT}
        assert [r["model"] for r in latest_chats] == [LATEST_MODEL]
        assert latest_chats[0]["messages"][-1] == {"role": "user", "content": PROMPT}
        # the latest node answered the chat on its tunnel, and the first node on /mimirllm/1.0.0; the
        # clients learned its real model name through the tunnel (identify listed its protocol, so no probe)
        paths = [(e["method"], e["path"]) for e in latest.events_named("request")]
        assert ("GET", "/v1/models") in paths, paths
        assert [p for p in paths if p != ("GET", "/v1/models")] == [("POST", "/v1/chat/completions")]
        assert latest.events_named("probe") == []
        assert len(first.events_named("message")) == 1
        assert not first.uncaught() and not latest.uncaught(), js_logs()
        assert lite.proc.returncode is None, lite.output
