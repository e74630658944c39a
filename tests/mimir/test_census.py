"""mimirlite.mimir.census: the views ``peers`` and ``models`` print. The model counts on literal views;
the address of a connection on real hosts over loopback, direct and through mimirlite's relay."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from mimirlite import Host
from mimirlite.mimir.census import ModelView, NodeView, connection_addr, model_views
from mimirlite.protocols.relay.client import RelayClient
from mimirlite.protocols.relay.service import RelayService


def view(peer: str, *models: str) -> NodeView:
    return NodeView(peer, models, "latest", "direct", None, ())


def test_models_are_counted_by_the_nodes_serving_them_sorted_by_name() -> None:
    nodes = [view("12D3KooWb", "llama3.2:latest", "qwen:7b"), view("12D3KooWa", "llama3.2:latest"), view("c")]
    assert model_views(nodes) == [
        ModelView("llama3.2:latest", ("12D3KooWa", "12D3KooWb")),
        ModelView("qwen:7b", ("12D3KooWb",)),
    ]
    assert [m.nodes for m in model_views(nodes)] == [2, 1]
    assert model_views([view("a", "m", "m")]) == [ModelView("m", ("a",))]  # a name listed twice: one node
    assert model_views([]) == []


def test_json_objects_have_exactly_the_documented_fields() -> None:
    node = NodeView(
        "12D3KooWa", ("m:1",), None, "not connected", None, ("/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWa",)
    )
    assert node.to_json() == {
        "peer_id": "12D3KooWa",
        "models": ["m:1"],
        "generation": None,
        "connection": "not connected",
        "addr": None,
        "addrs": ["/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWa"],
    }
    assert ModelView("m:1", ("a", "b")).to_json() == {"model": "m:1", "nodes": 2, "peers": ["a", "b"]}


@contextlib.asynccontextmanager
async def relay() -> AsyncIterator[RelayService]:
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, RelayService(host) as service:
        yield service


@pytest.mark.usefixtures("no_leaks")
async def test_the_address_of_a_direct_and_of_a_relayed_connection() -> None:
    async with (
        relay() as service,
        Host() as hidden,
        RelayClient(hidden, [service.host.listen_addrs[0]]) as behind,
        Host() as source,
        RelayClient(source),
    ):
        [circuit] = behind.circuit_addrs
        conn = await source.dial(circuit)
        assert conn.relayed
        # through the relay: the relay's address as dialed, then the circuit to the peer
        assert connection_addr(conn) == circuit
        assert connection_addr(conn) == f"{service.host.listen_addrs[0]}/p2p-circuit/p2p/{hidden.peer_id}"
        direct = source.connections[service.host.peer_id]
        assert not direct.relayed
        assert connection_addr(direct) == service.host.listen_addrs[0]
        # the relay's side of an inbound connection: the peer's own address and port
        inbound = service.host.connections[source.peer_id]
        assert inbound.remote_address is not None
        ip, port = inbound.remote_address
        assert connection_addr(inbound) == f"/ip4/{ip}/tcp/{port}/p2p/{source.peer_id}"
