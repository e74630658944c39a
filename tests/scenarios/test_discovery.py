"""Discovery scenarios on namespace test hosts: peers that know nothing of each other find each other by mDNS.

Each test builds its own bridge of network namespaces (tests/helpers/netns.py); every peer runs in its own
namespace with its own address, and multicast never leaves the bridge. Peers are the real programs:
``python -m mimirlite node|chat|peers`` under ``ip netns exec``, a library MimirClient on an event loop
inside a namespace, and the JS MimirLLM node and client of interop/ (the original's libp2p stack, with
@libp2p/mdns). No peer is given another's address.

1. a mimirlite node and ``mimirlite chat`` find each other and chat;
2. the JS client (mDNS, identify query, chat, as the original client) finds a mimirlite node and chats;
3. ``mimirlite chat`` finds a JS node and chats;
4. a node that stops is dropped by the client (connection lost), which then uses another node
   serving the model;
5. 20 nodes on one bridge are all found by ``mimirlite peers`` within 15 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from mimirlite.identity import PeerId
from mimirlite.mimir import MimirClient
from tests.helpers.discovery import FIND_TIMEOUT, JS_INTERVAL_MS, chat_requests, needs_js, openai_server_in
from tests.helpers.netns import Inbox, TestNet, require_netns
from tests.helpers.nodeproc import REPO, NodeProc, run_cli

INTEROP = REPO / "interop"
if str(INTEROP) not in sys.path:
    sys.path.insert(0, str(INTEROP))

from jsmimir import JsMimirNode, run_js_client  # noqa: E402

LLAMA = "llama3.2:latest"
RUN_TIMEOUT = 30.0
"""Bound on a one-shot command (chat, peers) beyond its own --wait."""
EVENT_TIMEOUT = 10.0
"""Bound on one expected event (a node dropped, a chat answered)."""


# ---- helpers ------------------------------------------------------------------------------------


class ObservedClient(MimirClient):
    """A MimirClient that pushes its nodes to an Inbox on each change: ``("nodes", None, {id: models})``."""

    def __init__(self, inbox: Inbox, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inbox = inbox

    async def identify(self, peer: PeerId) -> list[str]:
        models = await super().identify(peer)
        self.inbox.push("nodes", None, self.known())
        return models

    def forget(self, peer: PeerId) -> None:
        super().forget(peer)
        self.inbox.push("nodes", None, self.known())

    def known(self) -> dict[str, list[str]]:
        return {str(peer): models for peer, models in self.nodes.items()}


def latest_nodes(items: list[tuple[str, Any, Any]]) -> dict[str, list[str]]:
    found = [b for kind, _, b in items if kind == "nodes"]
    return found[-1] if found else {}


# ---- 1. mimirlite node <-> mimirlite chat -------------------------------------------------------


async def test_cli_chat_finds_cli_node_by_mdns() -> None:
    """``mimirlite chat -p`` with no --peer finds the node on the other host by mDNS and gets its answer."""
    require_netns()
    async with TestNet(2) as net, contextlib.AsyncExitStack() as stack:
        node = await NodeProc.serve(stack, "--backend", "echo", net=net, host=net.hosts[0])
        assert node.models == ["echo"]
        code, out, err = await run_cli(
            net,
            net.hosts[1],
            "chat",
            "-v",
            "-p",
            "hello across the bridge",
            "--wait",
            f"{FIND_TIMEOUT:g}",
            timeout=FIND_TIMEOUT + RUN_TIMEOUT,
        )
        assert code == 0, err
        assert out == "hello across the bridge\n"
        # what the client learned came from mDNS: the node's peer ID at its bridge address
        assert re.search(rf"{node.peer_id} at /ip4/{re.escape(node.host.ip)}/tcp/\d+", err), err
        assert node.proc.returncode is None, node.output  # the node is still up


# ---- 2. JS client -> mimirlite node -------------------------------------------------------------


@needs_js
@pytest.mark.interop
async def test_js_client_finds_mimirlite_node_by_mdns() -> None:
    """The JS client, as the original: @libp2p/mdns finds our node, identify lists llama3.2, then the chat."""
    require_netns()
    async with TestNet(2) as net, contextlib.AsyncExitStack() as stack:
        node_host, client_host = net.hosts
        nl = net.loop(node_host)
        srv = await openai_server_in(stack, nl, models=[LLAMA])
        node = await NodeProc.serve(
            stack, "--backend", "openai", "--backend-url", srv.base_url, net=net, host=node_host
        )
        assert node.models == [LLAMA]
        res = await run_js_client(
            None,
            "hello from the original client",
            "--mdns",
            "--mdns-interval-ms",
            JS_INTERVAL_MS,
            "--listen",
            "/ip4/0.0.0.0/tcp/0",
            timeout=20,
            netns=client_host.netns,
        )
        assert res.ok, (res.returncode, res.result, res.stderr)
        assert res.text == "hello from the original client"
        assert res.result["peerId"] == node.peer_id
        assert res.models == [LLAMA]
        discovered = [e for e in res.events if e.get("event") == "peer:discovery"]
        ours = [e for e in discovered if e["peerId"] == node.peer_id]
        assert ours, discovered
        # @libp2p/mdns read our TXT records: the bridge address is among them
        assert any(a.startswith(f"/ip4/{node_host.ip}/tcp/") for a in ours[0]["addrs"]), ours
        identify = res.identify
        assert identify is not None and identify["peerId"] == node.peer_id
        assert identify["known"] == [LLAMA]
        requests = await chat_requests(nl, srv)
        assert len(requests) == 1
        assert requests[0]["model"] == LLAMA
        assert requests[0]["messages"][-1] == {"role": "user", "content": "hello from the original client"}


# ---- 3. mimirlite chat -> JS node ---------------------------------------------------------------


@needs_js
@pytest.mark.interop
async def test_cli_chat_finds_js_node_by_mdns() -> None:
    """``mimirlite chat -p`` finds a JS node (with @libp2p/mdns, as the original) and gets its answer."""
    require_netns()
    async with TestNet(2) as net, contextlib.AsyncExitStack() as stack:
        node_host, client_host = net.hosts
        nl = net.loop(node_host)
        srv = await openai_server_in(stack, nl, models=[LLAMA])
        js = await JsMimirNode.start(
            srv.base_url,
            "--mdns",
            "--mdns-interval-ms",
            JS_INTERVAL_MS,
            listen="/ip4/0.0.0.0/tcp/0",
            netns=node_host.netns,
        )
        stack.push_async_callback(js.stop)
        code, out, err = await run_cli(
            net,
            client_host,
            "chat",
            "-v",
            "-p",
            "hello to the original node",
            "--wait",
            f"{FIND_TIMEOUT:g}",
            timeout=FIND_TIMEOUT + RUN_TIMEOUT,
        )
        assert code == 0, f"{err}\njs node:\n{js.stderr_tail()}"
        assert out == "hello to the original node\n"
        assert re.search(rf"{js.peer_id} at /ip4/{re.escape(node_host.ip)}/tcp/\d+", err), err
        # the JS node saw our identify query, then the chat, from one peer on the client's host
        query = await js.next_event("identify_query", timeout=EVENT_TIMEOUT)
        message = await js.next_event("message", timeout=EVENT_TIMEOUT)
        assert query["peerId"] == message["peerId"]
        assert query["packet"]["event"] == "query"
        opened = [e for e in js.events_named("connection:open") if e["peerId"] == query["peerId"]]
        assert opened and opened[0]["remoteAddr"].startswith(f"/ip4/{client_host.ip}/tcp/"), opened
        assert message["packet"]["data"]["messages"][-1] == {
            "role": "user",
            "content": "hello to the original node",
        }
        assert len(await chat_requests(nl, srv)) == 1
        assert not js.uncaught(), js.uncaught()


# ---- 4. a node that stops is dropped; another node answers --------------------------------------


async def test_client_drops_a_stopped_node_and_uses_another() -> None:
    """Two nodes serve ``echo`` (different backends, so the answer tells which one answered); the one that
    answered is killed; the client drops it on the connection loss, and the other one answers next."""
    require_netns()
    async with TestNet(3) as net, contextlib.AsyncExitStack() as stack:
        client_host, echo_host, openai_host = net.hosts
        srv_loop = net.loop(openai_host)
        srv = await openai_server_in(stack, srv_loop, models=["echo"], reply="answered by the openai backend")
        nodes = await asyncio.gather(
            NodeProc.serve(stack, "--backend", "echo", net=net, host=echo_host),
            NodeProc.serve(
                stack, "--backend", "openai", "--backend-url", srv.base_url, net=net, host=openai_host
            ),
        )
        echo_node, openai_node = nodes
        assert echo_node.models == openai_node.models == ["echo"]
        prompt = "which node answers"
        answer_of = {echo_node.peer_id: prompt, openai_node.peer_id: "answered by the openai backend"}

        inbox = Inbox()
        nl = net.loop(client_host)

        async def start_client() -> ObservedClient:
            client = ObservedClient(inbox, mdns=True, mdns_interfaces=[client_host.ip])
            await client.start()
            return client

        client = await nl.run(start_client(), timeout=10)
        stack.push_async_callback(nl.run, client.stop(), 10)

        async def ask() -> str:
            parts: list[str] = []
            async for chunk in client.chat([{"role": "user", "content": prompt}], model="echo"):
                parts.extend(c.delta.content or "" for c in chunk.choices)
            return "".join(parts)

        both = {echo_node.peer_id: ["echo"], openai_node.peer_id: ["echo"]}
        await inbox.wait_for(lambda items: latest_nodes(items) == both, FIND_TIMEOUT)

        first = await nl.run(ask(), timeout=EVENT_TIMEOUT)
        assert first in answer_of.values()
        used = echo_node if first == answer_of[echo_node.peer_id] else openai_node
        other = openai_node if used is echo_node else echo_node

        await used.kill()
        await inbox.wait_for(lambda items: used.peer_id not in latest_nodes(items), EVENT_TIMEOUT)

        async def state() -> tuple[dict[str, list[str]], set[str]]:
            assert client.discovery is not None
            return client.known(), {str(p) for p in client.discovery.peers}

        known, by_mdns = await nl.run(state(), timeout=5)
        assert known == {other.peer_id: ["echo"]}
        # Dropped within EVENT_TIMEOUT, well before mDNS would call it silent (3 intervals of 10 s): the
        # drop came from the lost connection, and discovery forgot it too, to learn it anew if it returns.
        assert used.peer_id not in by_mdns

        second = await nl.run(ask(), timeout=EVENT_TIMEOUT)
        assert second == answer_of[other.peer_id]
        assert other.proc.returncode is None, other.output


async def test_client_learns_a_restarted_node_again(tmp_path: Path) -> None:
    """A node the client dropped (killed) comes back with the same peer ID and address: the client,
    told by mDNS, asks it for its models again and chats with it."""
    require_netns()
    key_file = str(tmp_path / "node.key")
    node_args = ("--backend", "echo", "--key-file", key_file, "--listen", "/ip4/0.0.0.0/tcp/4555")
    async with TestNet(2) as net, contextlib.AsyncExitStack() as stack:
        client_host, node_host = net.hosts
        first = await NodeProc.serve(stack, *node_args, net=net, host=node_host)
        inbox = Inbox()
        nl = net.loop(client_host)

        async def start_client() -> ObservedClient:
            client = ObservedClient(inbox, mdns=True, mdns_interfaces=[client_host.ip], mdns_interval=0.5)
            await client.start()
            return client

        client = await nl.run(start_client(), timeout=10)
        stack.push_async_callback(nl.run, client.stop(), 10)
        known = {first.peer_id: ["echo"]}
        await inbox.wait_for(lambda items: latest_nodes(items) == known, FIND_TIMEOUT)

        await first.kill()
        await inbox.wait_for(lambda items: latest_nodes(items) == {}, EVENT_TIMEOUT)
        again = await NodeProc.serve(stack, *node_args, net=net, host=node_host)
        assert again.peer_id == first.peer_id
        await inbox.wait_for(lambda items: latest_nodes(items) == known, FIND_TIMEOUT)

        async def ask() -> str:
            parts: list[str] = []
            async for chunk in client.chat([{"role": "user", "content": "back again"}], model="echo"):
                parts.extend(c.delta.content or "" for c in chunk.choices)
            return "".join(parts)

        assert await nl.run(ask(), timeout=EVENT_TIMEOUT) == "back again"


# ---- 5. 20 nodes on one bridge ------------------------------------------------------------------

MANY = 20
FIND_WITHIN = 15


async def test_peers_finds_20_nodes_within_15_s() -> None:
    """20 nodes, each on its own host of one bridge: ``mimirlite peers --wait 15`` on a 21st lists all."""
    require_netns()
    async with TestNet(MANY + 1) as net, contextlib.AsyncExitStack() as stack:
        *node_hosts, observer = net.hosts
        nodes = await asyncio.gather(
            *(NodeProc.serve(stack, "--backend", "echo", net=net, host=h) for h in node_hosts)
        )
        assert len({n.peer_id for n in nodes}) == MANY

        # `peers` lists the nodes it found (and identified) within --wait, counted from its own start
        code, out, err = await run_cli(
            net, observer, "peers", "--wait", str(FIND_WITHIN), timeout=FIND_WITHIN + RUN_TIMEOUT
        )
        assert code == 0, err
        listed: dict[str, tuple[str, list[str]]] = {}
        for line in out.splitlines():
            peer, models, addrs = line.split("  ", 2)
            listed[peer] = (models, addrs.split())
        missing = {n.peer_id for n in nodes} - set(listed)
        assert not missing, f"not found within {FIND_WITHIN} s: {missing}\n{out}\n{err}"
        assert len(listed) == MANY, out
        for n in nodes:
            served, at = listed[n.peer_id]
            assert served == "echo"
            assert any(a.startswith(f"/ip4/{n.host.ip}/tcp/") for a in at), (n.host.ip, at)
