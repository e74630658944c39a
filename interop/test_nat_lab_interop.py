"""JS MimirLLM peers behind NAT, in the NAT lab (tests/helpers/netns.py NatLab), both ways through a relay on
the wan: (a) a JS node (interop/mimir-node.mjs, the first generation, or latest-node.mjs) behind NAT A
reserves a slot on the relay (``--reserve``) and a mimirlite client (MimirClient) behind NAT B chats with it
through its relayed address; (b) a mimirlite node behind NAT A reserves on the relay and the JS client
(mimir-client.mjs / latest-client.mjs) behind NAT B chats with it. The relay is a mimirlite RelayService or
a js-libp2p circuit relay v2 server (interop/nat-peer.mjs --relay-server, @libp2p/circuit-relay-v2 3.1.7).

Each case checks the whole answer, that the connection was relayed (on the mimirlite side its transport is a
StreamTransport: a connection upgraded over a relayed stream; on the JS side the connection's address has
/p2p-circuit) and a clean teardown (the JS processes exit 0 without crash reports, the circuit closes).
The JS relay's default limit (128 KiB both directions together, 2 min) ends a longer answer: the mimirlite
client gets an error and only part of the text; with ``--no-limit`` the same answer arrives whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from jslatest import JsLatestNode, run_latest_client
from jsmimir import JsMimirNode, run_js_client
from jsnat import JsNatPeer

from mimirlite import Host, PeerId
from mimirlite.errors import MimirliteError
from mimirlite.mimir.backends import EchoBackend
from mimirlite.mimir.client import MimirClient
from mimirlite.mimir.node import MimirNode
from mimirlite.net.connection import Connection
from mimirlite.protocols.relay.client import RelayClient
from mimirlite.protocols.relay.service import RelayService
from tests.helpers.discovery import openai_server_in
from tests.helpers.netns import NatLab, NetnsHost, NetnsLoop, require_nat
from tests.helpers.nodeproc import RUN_TIMEOUT, run_cli
from tests.helpers.openai_server import OpenAIServer
from tests.helpers.waiting import until

pytestmark = pytest.mark.usefixtures("no_leaks")  # errors logged by mimirlite (any thread) fail a test too

PORT = 4001
MODEL = "behind-nat:1b"
REPLY = "answered by a JS node behind NAT A, through the relay"
PROMPT = "a JS client behind NAT B asks through the relay"
JS_RELAY_LIMIT = 128 * 1024  # @libp2p/circuit-relay-v2's default data limit, both directions together
RELAYS = ["mimirlite-relay", "js-relay"]
GENERATIONS = ["first", "latest"]


@dataclass
class Relay:
    """A relay on the wan: its address (with /p2p/), and the mimirlite service (None for the JS relay)."""

    addr: str
    loop: NetnsLoop
    service: RelayService | None = None
    js: JsNatPeer | None = None

    async def open_circuits(self) -> int | None:
        """Circuits open now on a mimirlite relay (None for the JS relay)."""
        service = self.service
        if service is None:
            return None

        async def count() -> int:
            return len(service.circuits)

        return await self.loop.run(count(), timeout=5)

    async def circuits_opened(self) -> int | None:
        """Circuits opened so far by a mimirlite relay (None for the JS relay)."""
        service = self.service
        if service is None:
            return None

        async def count() -> int:
            return service.metrics.circuits

        return await self.loop.run(count(), timeout=5)


async def start_relay(
    lab: NatLab, stack: contextlib.AsyncExitStack, wan: NetnsHost, kind: str, *, no_limit: bool = False
) -> Relay:
    """A relay of ``kind`` (``mimirlite-relay`` / ``js-relay``) on the wan host ``wan``, stopped with
    ``stack``; ``no_limit``: the JS relay without its default limits."""
    loop = lab.loop(wan)
    listen = f"/ip4/{wan.ip}/tcp/{PORT}"
    if kind == "js-relay":
        js = await JsNatPeer.start(relay_server=True, no_limit=no_limit, listen=listen, netns=wan.netns)
        stack.push_async_callback(stopped_cleanly, js)
        return Relay(js.addr, loop, js=js)
    assert not no_limit

    async def start() -> RelayService:
        host = Host(listen=[listen])
        await host.start()
        service = RelayService(host)
        await service.start()
        return service

    async def stop(service: RelayService) -> None:
        await service.stop()
        await service.host.stop()

    service = await loop.run(start(), timeout=10)
    stack.push_async_callback(loop.run, stop(service), 10)
    return Relay(service.host.listen_addrs[0], loop, service=service)


async def stopped_cleanly(js: Any) -> None:
    """Stop a JS process (stdin EOF) and check it exited 0 without reporting a crash."""
    await js.stop()
    assert js.returncode == 0, f"{js.what} exit code {js.returncode}; stderr:\n{js.stderr_tail(30)}"
    assert not js.uncaught(), js.uncaught()


async def js_node_behind_nat(
    generation: str, srv: OpenAIServer, host: NetnsHost, relay: Relay, stack: contextlib.AsyncExitStack
) -> JsMimirNode | JsLatestNode:
    """A JS node of ``generation`` on ``host`` (behind a NAT), in front of ``srv`` (on 127.0.0.1 of the same
    namespace), with a reservation on ``relay``; stopped (and checked) with ``stack``."""
    listen = f"/ip4/{host.ip}/tcp/0"
    node: JsMimirNode | JsLatestNode
    if generation == "first":
        node = await JsMimirNode.start(
            srv.base_url, models=[MODEL], listen=listen, netns=host.netns, reserve=[relay.addr]
        )
    else:
        node = await JsLatestNode.start(
            srv.url, models=[MODEL], listen=listen, netns=host.netns, reserve=[relay.addr]
        )
    stack.push_async_callback(stopped_cleanly, node)
    assert not node.events_named("reserve-failed"), node.events_named("reserve-failed")
    return node


@dataclass
class Chat:
    """What the mimirlite client behind NAT B got: the text, the error that ended it (if any), whether its
    connection to the node ran over a relayed stream, and its own peer ID."""

    text: str
    error: str | None
    relayed: bool
    peer_id: str


async def chat_through(circuit: str, node_id: str) -> Chat:
    """MimirClient dials the node at its relayed address ``circuit`` and asks it MODEL."""
    async with MimirClient(peers=[circuit], mdns=False, dht=False) as client:
        node = PeerId.from_string(node_id)
        await until(lambda: node in client.nodes, 20, "the node behind NAT A identified")
        conn = client.host.connections.get(node)
        relayed = conn is not None and conn.relayed
        text, error = "", None
        try:
            async for chunk in client.chat([{"role": "user", "content": "hello"}], model=MODEL):
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
        except (MimirliteError, OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        return Chat(text, error, relayed, str(client.host.peer_id))


@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize("relay_kind", RELAYS)
async def test_mimirlite_chats_with_a_js_node_behind_nat(relay_kind: str, generation: str) -> None:
    """(a) A JS node behind NAT A reserves on the relay; a mimirlite client behind NAT B gets its whole
    answer through the relayed address."""
    require_nat()
    async with NatLab(wan_hosts=1, lans=[1, 1]) as lab, contextlib.AsyncExitStack() as stack:
        (wan,), ((node_host,), (chat_host,)) = lab.wan, lab.lans
        relay = await start_relay(lab, stack, wan, relay_kind)
        srv = await openai_server_in(stack, lab.loop(node_host), models=[MODEL], reply=REPLY)
        node = await js_node_behind_nat(generation, srv, node_host, relay, stack)
        [circuit] = node.circuit_addrs
        assert circuit == f"{relay.addr}/p2p-circuit/p2p/{node.peer_id}"

        got = await lab.loop(chat_host).run(chat_through(circuit, node.peer_id), timeout=60)
        assert (got.text, got.error) == (REPLY, None), node.stderr_tail(30)
        assert got.relayed, "the mimirlite client's connection did not run over a relayed stream"
        opened = await node.next_event("connection:open", timeout=10)
        while opened["peerId"] != got.peer_id:
            opened = await node.next_event("connection:open", timeout=10)
        assert opened["relayed"] and opened["limited"], opened  # both relays set limits by default
        assert "/p2p-circuit" in opened["remoteAddr"], opened
        assert await relay.circuits_opened() in (None, 1)

        # teardown: the client left, so the JS node sees the relayed connection close, and the circuit ends
        await until(lambda: _closed(node, got.peer_id), 30, "the JS node saw the relayed connection close")
        assert all(e["relayed"] for e in _closed(node, got.peer_id))
        if relay.service is not None:
            await until(lambda: _no_circuit(relay), 10, "the circuit closed")


@pytest.mark.parametrize("generation", GENERATIONS)
async def test_the_chat_command_reaches_a_js_node_behind_nat(generation: str) -> None:
    """``python -m mimirlite chat --peer <relayed address>`` behind NAT B prints the whole answer of a JS
    node behind NAT A, through the JS relay."""
    require_nat()
    async with NatLab(wan_hosts=1, lans=[1, 1]) as lab, contextlib.AsyncExitStack() as stack:
        (wan,), ((node_host,), (chat_host,)) = lab.wan, lab.lans
        relay = await start_relay(lab, stack, wan, "js-relay")
        srv = await openai_server_in(stack, lab.loop(node_host), models=[MODEL], reply=REPLY)
        node = await js_node_behind_nat(generation, srv, node_host, relay, stack)
        [circuit] = node.circuit_addrs
        asked = ("--no-mdns", "--no-dht", "--peer", circuit, "--model", MODEL, "-p", "hello")
        rc, out, err = await run_cli(lab, chat_host, "chat", *asked, timeout=RUN_TIMEOUT)
        assert (rc, out) == (0, f"{REPLY}\n"), f"{err}\n--- js node:\n{node.stderr_tail(30)}"
        opened = node.events_named("connection:open")
        assert [e["relayed"] for e in opened] == [False, True], opened  # to the relay, then from the client
        # the chat command exited: the JS node sees the relayed connection close (at its next ping, 10 s)
        await until(lambda: len(node.events_named("connection:close")) == 1, 30, "the JS node saw the close")


@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize("relay_kind", RELAYS)
async def test_a_js_client_chats_with_a_mimirlite_node_behind_nat(relay_kind: str, generation: str) -> None:
    """(b) A mimirlite node behind NAT A reserves on the relay; the JS client behind NAT B gets its whole
    answer through the relayed address."""
    require_nat()
    async with NatLab(wan_hosts=1, lans=[1, 1]) as lab, contextlib.AsyncExitStack() as stack:
        (wan,), ((node_host,), (chat_host,)) = lab.wan, lab.lans
        relay = await start_relay(lab, stack, wan, relay_kind)
        node_loop = lab.loop(node_host)
        node = await node_loop.run(start_lite_node(node_host, relay.addr), timeout=30)
        stack.push_async_callback(node_loop.run, node.stop(), 10)
        [circuit] = node.relay.circuit_addrs
        assert circuit == f"{relay.addr}/p2p-circuit/p2p/{node.host.peer_id}"

        if generation == "first":
            res: Any = await run_js_client(circuit, PROMPT, "--any-model", netns=chat_host.netns, timeout=60)
        else:
            res = await run_latest_client(
                circuit, "--model", MODEL, "--prompt", PROMPT, netns=chat_host.netns
            )
        assert res.ok and res.text == PROMPT, res.stderr
        assert res.relayed is True and res.result["limited"] is True, res.result
        assert res.returncode == 0 and not [e for e in res.events if e.get("event") == "uncaught"]

        js_peer = PeerId.from_string(res.ready["peerId"])
        relayed = await node_loop.run(node.relayed_from(js_peer), timeout=5)
        assert relayed, "the mimirlite node's connection from the JS client did not run over a relayed stream"
        assert await relay.circuits_opened() in (None, 1)
        # teardown: the JS client exited, so its relayed connection to the node closes
        await node_loop.run(
            until(lambda: js_peer not in node.host.connections, 10, "the connection closed"), 15
        )


def _closed(js: Any, peer_id: str) -> list[dict[str, Any]]:
    return [e for e in js.events_named("connection:close") if e["peerId"] == peer_id]


async def _no_circuit(relay: Relay) -> bool:
    return await relay.open_circuits() == 0


@dataclass
class LiteNode:
    """A mimirlite node (echo backend) with a relay client, all on one namespace's loop."""

    host: Host
    node: MimirNode
    relay: RelayClient
    relayed: list[Connection]

    async def relayed_from(self, peer: PeerId) -> bool:
        """Whether ``peer`` reached us through a relay, over a connection upgraded on a relayed stream."""
        return any(c.remote_peer == peer and c.relayed for c in self.relayed)

    async def stop(self) -> None:
        await self.relay.stop()
        await self.node.stop()
        await self.host.stop()


async def start_lite_node(host: NetnsHost, relay_addr: str) -> LiteNode:
    """``mimirlite node --backend echo --model MODEL --relay RELAY`` in process (on the calling loop)."""
    h = Host(listen=[f"/ip4/{host.ip}/tcp/{PORT}"])
    await h.start()
    node = MimirNode(h, EchoBackend(MODEL), dht=False)
    await node.start()
    relay = RelayClient(h, [relay_addr])
    lite = LiteNode(h, node, relay, [])
    relay.on_relayed.append(lite.relayed.append)
    await relay.start()
    return lite


@contextlib.asynccontextmanager
async def nat_lab_with_relay(
    kind: str, *, no_limit: bool
) -> AsyncIterator[tuple[NatLab, Relay, contextlib.AsyncExitStack]]:
    async with NatLab(wan_hosts=1, lans=[1, 1]) as lab, contextlib.AsyncExitStack() as stack:
        yield lab, await start_relay(lab, stack, lab.wan[0], kind, no_limit=no_limit), stack


@pytest.mark.parametrize("no_limit", [False, True], ids=["default-limit", "no-limit"])
async def test_an_answer_past_the_js_relays_limit(no_limit: bool) -> None:
    """An answer of about 500 KiB, past the JS relay's 128 KiB: with the relay's default limit the relay
    ends the relayed connection when the cap is reached (the stream is reset), and the mimirlite client gets
    a TruncatedAnswerError and only the start of the answer; with ``--no-limit`` it arrives whole."""
    require_nat()
    words = [f" w{i:05d}" for i in range(1500)]  # some 350 bytes a packet on the wire: ~500 KiB
    long_reply = "".join(words)
    async with nat_lab_with_relay("js-relay", no_limit=no_limit) as (lab, relay, stack):
        (node_host,), (chat_host,) = lab.lans
        srv = await openai_server_in(stack, lab.loop(node_host), models=[MODEL], reply=words)
        node = await js_node_behind_nat("first", srv, node_host, relay, stack)
        [circuit] = node.circuit_addrs
        got = await lab.loop(chat_host).run(chat_through(circuit, node.peer_id), timeout=90)
        assert got.relayed
        if no_limit:
            assert (got.text, got.error) == (long_reply, None)
        else:
            assert got.error is not None and got.error.startswith("TruncatedAnswerError"), got.error
            assert long_reply.startswith(got.text) and 0 < len(got.text) < len(long_reply) // 2, got
            completion = await node.next_event("completion", timeout=20)
            assert completion["ok"] is False, completion
