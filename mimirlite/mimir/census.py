"""What the network offers, as plain data: the nodes a client knows (how it reaches each) and the models
they serve, with how many nodes serve each. ``mimirlite peers`` and ``mimirlite models`` print these, as
text or as one JSON document (:meth:`NodeView.to_json`, :meth:`ModelView.to_json`).

Model names come from peers: the views keep them as given; a caller that shows them on a terminal escapes
them (``mimirlite.cli``), JSON escapes them by itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mimirlite.wire.multiaddr import tcp_multiaddr_text

if TYPE_CHECKING:
    from mimirlite.identity import PeerId
    from mimirlite.mimir.client import MimirClient
    from mimirlite.net.connection import Connection

Path = Literal["direct", "relayed", "not connected"]
"""How a node is reached: a connection of our own, one through a relay, or none at the moment."""


@dataclass(frozen=True)
class NodeView:
    """One node as a client knows it."""

    peer_id: str
    models: tuple[str, ...]
    """The models it serves, in the order it listed them."""
    generation: str | None
    """``"first"`` or ``"latest"``: the protocol generation spoken with it (None: unknown)."""
    connection: Path
    addr: str | None
    """The multiaddr of the connection in use (through the relay for a relayed one); None when not
    connected or not known."""
    addrs: tuple[str, ...]
    """Every address known for it: direct ones first, then through relays."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``peers --json``: exactly these fields."""
        return {
            "peer_id": self.peer_id,
            "models": list(self.models),
            "generation": self.generation,
            "connection": self.connection,
            "addr": self.addr,
            "addrs": list(self.addrs),
        }


@dataclass(frozen=True)
class ModelView:
    """One model and the nodes that serve it."""

    model: str
    peers: tuple[str, ...]
    """The peer IDs of the nodes serving it, sorted."""

    @property
    def nodes(self) -> int:
        """How many nodes serve it."""
        return len(self.peers)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``models --json``: exactly these fields."""
        return {"model": self.model, "nodes": self.nodes, "peers": list(self.peers)}


def connection_addr(conn: Connection) -> str | None:
    """The multiaddr ``conn`` runs over: ``/ip4|ip6/<ip>/tcp/<port>/p2p/<peer>``, or for a relayed
    connection the relay's such address with ``/p2p-circuit/p2p/<peer>``; None when not known yet."""
    peer = conn.remote_peer
    if peer is None:
        return None
    if conn.relayed:
        transport = conn.transport
        stream = transport.get_extra_info("stream") if transport is not None else None
        relay = connection_addr(stream.connection) if stream is not None else None
        return None if relay is None else f"{relay}/p2p-circuit/p2p/{peer}"
    if conn.remote_address is None:
        return None
    ip, port = conn.remote_address
    return tcp_multiaddr_text(ip.split("%", 1)[0], port, peer)  # an IPv6 zone is this machine's business


def node_view(client: MimirClient, peer: PeerId, models: Sequence[str]) -> NodeView:
    """Node ``peer`` (serving ``models``) as ``client`` knows it now."""
    host = client.host
    conn = host.connections.get(peer)
    if conn is not None and conn.is_closed:
        conn = None
    path: Path = "not connected" if conn is None else "relayed" if conn.relayed else "direct"
    return NodeView(
        peer_id=str(peer),
        models=tuple(models),
        generation=client.generation(peer),
        connection=path,
        addr=None if conn is None else connection_addr(conn),
        addrs=tuple(host.addrs_of(peer)),
    )


def node_views(client: MimirClient) -> list[NodeView]:
    """The nodes ``client`` knows now, sorted by peer ID."""
    nodes = client.nodes
    return [node_view(client, peer, nodes[peer]) for peer in sorted(nodes, key=str)]


def model_views(nodes: Iterable[NodeView]) -> list[ModelView]:
    """Every model the ``nodes`` serve, sorted by name, each with the nodes serving it."""
    serving: dict[str, set[str]] = {}
    for node in nodes:
        for model in node.models:
            serving.setdefault(model, set()).add(node.peer_id)
    return [ModelView(model, tuple(sorted(peers))) for model, peers in sorted(serving.items())]
