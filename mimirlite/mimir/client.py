"""The using side: learns nodes, asks each for its models, and streams chats from one that serves them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from mimirlite.aio import Service, ServiceState, SingleFlight
from mimirlite.errors import (
    LocalError,
    MimirliteError,
    MimirliteTimeoutError,
    ProtocolError,
    ProtocolNotSupportedError,
    StreamResetError,
)
from mimirlite.identity import KeyPair, PeerId
from mimirlite.mimir import packets
from mimirlite.mimir.chunks import CHUNK_OBJECT, check_chunk, is_finished, loads_event
from mimirlite.mimir.models import (
    DEFAULT_MODEL,
    model_cid,
    model_name,
    sanitize_model,
    sanitized_of,
    tunnel_protocol,
)
from mimirlite.mimir.packets import Packet, PacketError, RemoteError
from mimirlite.mimir.tunnel_client import (
    MAX_ERROR_BODY,
    ResponseHead,
    ResponseReader,
    SseDecoder,
    TunnelTruncatedError,
    encode_request,
    error_message,
)
from mimirlite.net.config import HostConfig
from mimirlite.net.connection import Connection
from mimirlite.net.host import Host
from mimirlite.net.stream import Stream
from mimirlite.protocols import (
    IdentifyInfo,
    IdentifyTimeoutError,
    Ping,
    identify_service,
    start_services,
)
from mimirlite.protocols.relay.client import RelayClient
from mimirlite.wire import lp

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionChunk

    from mimirlite.discovery.mdns import MdnsDiscovery
    from mimirlite.mimir.dht import ModelDht
    from mimirlite.protocols.dcutr.service import HolePuncher
    from mimirlite.protocols.kad.service import DhtConfig

log = logging.getLogger(__name__)

MIMIR_IDENTIFY_TIMEOUT = 5.0
"""Seconds a node has to answer an identify query (as the original client)."""
READ_TIMEOUT = 120.0
"""Seconds to wait for each packet of an answer (a large model may think long before its first token)."""
NOT_FOUND_TTL = 10.0
"""Seconds a model the DHT named no node for is not looked up again."""
SEARCH_PAUSES = (0.25, 2.0)
"""First and longest pause, in seconds, between DHT lookups while waiting for a node; it doubles between."""
MAX_LOOKUPS = 4
"""DHT lookups of models run at once; more wait their turn."""
MAX_NOT_FOUND = 1024
"""Models remembered as not found (the least recently missed is forgotten first)."""
MDNS_INTERVAL = 10.0
"""Seconds between mDNS queries by default (``mimirlite.discovery.mdns.DEFAULT_INTERVAL``, not imported:
discovery, the DHT and hole punching load only for a client that uses them)."""


@dataclass(frozen=True)
class ClientConfig:
    """Every setting of a :class:`MimirClient`, in the manner of aioquic's ``QuicConfiguration``:
    ``MimirClient(config=ClientConfig(...))``, or the same fields as keywords."""

    peers: Sequence[str] = ()
    """Multiaddrs of nodes to dial and identify when the client starts (with ``/p2p/`` they are verified)."""
    keypair: KeyPair | None = None
    """The identity of the client's own Host (None: a fresh one each run)."""
    host_config: HostConfig | None = None
    """Limits and timeouts of the client's own Host (None: the defaults)."""
    identify_timeout: float = MIMIR_IDENTIFY_TIMEOUT
    """Seconds a node has to answer the mimir identify query (its models)."""
    read_timeout: float = READ_TIMEOUT
    """Seconds to wait for each packet of an answer; AnswerTimeoutError after."""
    mdns: bool = False
    """Also find nodes on the local network by mDNS (and drop them when they go silent)."""
    mdns_interfaces: Sequence[str] | None = None
    """The IPv4 addresses of the interfaces mDNS runs on (None: all)."""
    mdns_interval: float = MDNS_INTERVAL
    """Seconds between mDNS queries."""
    probe_models: Sequence[str] = (DEFAULT_MODEL,)
    """Models whose ``/mimir/<model>/1.0.0`` tunnel is probed on a peer that answers no identify."""
    prefer_tunnel: bool = False
    """Chat over the HTTP tunnel with nodes that serve both generations (else ``/mimirllm/1.0.0``)."""
    dht: bool = True
    """Find nodes serving a model in the DHT (LAN and public) when no known node serves it."""
    bootstrap: Sequence[str] = ()
    """Peers to join the DHT through, kept connected: multiaddrs with ``/p2p/``, ``/dnsaddr/...``, or
    ``"ipfs"`` for the public IPFS bootstrap peers."""
    dht_server: bool = False
    """Run the public DHT in server mode (answer others); the LAN DHT always is."""
    dht_config: DhtConfig | None = None
    """The DHT's limits and timings (None: the defaults)."""
    listen: Sequence[str] = ()
    """Multiaddrs the client's own Host listens on (``/ip4/0.0.0.0/tcp/0``: any port). A client that
    listens takes hole punches (DCUtR) from nodes it reaches through a relay, and waits for one before
    chatting over a relay that limits its connections."""
    private_addrs: bool = False
    """Offer and dial private addresses in hole punches (a network whose outside is itself private)."""

    def __post_init__(self) -> None:
        for name in ("peers", "probe_models", "bootstrap", "listen"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise LocalError(f"{name} is a list of strings, not one string")
            object.__setattr__(self, name, tuple(value))
        if self.mdns_interfaces is not None:
            object.__setattr__(self, "mdns_interfaces", tuple(self.mdns_interfaces))
        for name in ("identify_timeout", "read_timeout", "mdns_interval"):
            if not getattr(self, name) > 0:
                raise LocalError(f"{name} must be a positive number of seconds")


def _mimir_protocols(protocols: Iterable[str]) -> frozenset[str]:
    """The protocols of a node's list that tell which models it serves: both generations'."""
    first = (packets.CHAT_PROTOCOL, packets.MIMIR_IDENTIFY_PROTOCOL)
    return frozenset(p for p in protocols if p in first or sanitized_of(p) is not None)


def _request_id() -> str:
    """A random UUID (version 4) as text: the ``requestId`` of a packet (without the ``uuid`` module)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class ChatError(MimirliteError):
    """A chat could not be answered."""


class NoNodeError(ChatError):
    """No known node serves the model asked for."""


class TruncatedAnswerError(ChatError):
    """The answer ended before a chunk with a ``finish_reason``."""


class AnswerTimeoutError(ChatError, MimirliteTimeoutError):
    """The node sent nothing for ``read_timeout`` seconds while an answer was awaited."""


class HttpRemoteError(RemoteError):
    """A latest-generation node answered a tunnel request with an HTTP error status."""

    def __init__(self, status: int, type: str, message: str) -> None:
        super().__init__(type, message)
        self.status = status
        self.args = (f"HTTP {status}: {type}: {message}",)


FIRST = "first"
"""Generation of a node answering ``/mimirllm/1.0.0`` (length-prefixed JSON packets)."""
LATEST = "latest"
"""Generation of a node serving only ``/mimir/<model>/1.0.0`` tunnels (raw HTTP/1.1)."""

Body = bytes | dict[str, Any] | list[Any] | None


class MimirClient(Service):
    """Knows the nodes of the network and their models; :meth:`chat` asks one of them.

    ``async with MimirClient(peers=[multiaddr, ...]) as client`` dials and identifies the given
    nodes before the body runs. With ``mdns=True`` it also finds nodes on the local network (on the
    interfaces with the IPv4 addresses ``mdns_interfaces``, default all; a query every
    ``mdns_interval`` s) and asks each for its models as it appears; nodes that go silent or
    disconnect are dropped, and learned again when they answer anew. Give ``host`` to share a Host
    you run; otherwise the client runs its own.

    Both MimirLLM generations are used, whichever a node speaks (its libp2p identify protocol list
    tells): ``/mimirllm/1.0.0`` (preferred when a node serves both) and the latest one's per-model
    ``/mimir/<model>/1.0.0`` HTTP tunnels, whose real model names are asked with ``GET /v1/models``
    (else ``GET /api/tags``). A peer without identify is asked on ``/mimirllm/1.0.0/identify``, else
    probed for the tunnels of ``probe_models`` and of the models other nodes serve. With
    ``prefer_tunnel``, chats go over the tunnel with nodes that serve both.
    """

    def __init__(
        self,
        peers: Iterable[str] | None = None,
        *,
        config: ClientConfig | HostConfig | None = None,
        host: Host | None = None,
        keypair: KeyPair | None = None,
        host_config: HostConfig | None = None,
        identify_timeout: float | None = None,
        read_timeout: float | None = None,
        mdns: bool | None = None,
        mdns_interfaces: Sequence[str] | None = None,
        mdns_interval: float | None = None,
        probe_models: Sequence[str] | None = None,
        prefer_tunnel: bool | None = None,
        dht: bool | None = None,
        bootstrap: Sequence[str] | None = None,
        dht_server: bool | None = None,
    ) -> None:
        """``config`` (a :class:`ClientConfig`) holds every setting; ``peers`` and the keywords, each one
        a :class:`ClientConfig` field, are merged into it (a keyword given, not None, wins over the
        config's field). A :class:`HostConfig` given as ``config`` is taken as ``host_config`` (the
        meaning ``config`` had before ClientConfig). ``host`` is a Host you run, to share: then
        ``keypair`` and ``host_config`` are not used."""
        if isinstance(config, HostConfig):
            if host_config is not None:
                raise TypeError("config (a HostConfig) and host_config given together")
            config, host_config = None, config
        given: dict[str, Any] = {
            "peers": None if peers is None else tuple(peers),
            "keypair": keypair,
            "host_config": host_config,
            "identify_timeout": identify_timeout,
            "read_timeout": read_timeout,
            "mdns": mdns,
            "mdns_interfaces": mdns_interfaces,
            "mdns_interval": mdns_interval,
            "probe_models": probe_models,
            "prefer_tunnel": prefer_tunnel,
            "dht": dht,
            "bootstrap": bootstrap,
            "dht_server": dht_server,
        }
        changes = {name: value for name, value in given.items() if value is not None}
        cfg = config or ClientConfig()
        self.config: ClientConfig = replace(cfg, **changes) if changes else cfg
        """The settings this client runs with."""
        cfg = self.config
        self._own_host = host is None
        self.prefer_tunnel = cfg.prefer_tunnel
        self.host = host or Host(cfg.keypair, cfg.listen, config=cfg.host_config)
        self._static = list(cfg.peers)
        self.identify_timeout = cfg.identify_timeout
        self.read_timeout = cfg.read_timeout
        self._nodes: dict[PeerId, list[str]] = {}
        self._tunnels: dict[PeerId, dict[str, str]] = {}  # model name -> /mimir/<sanitized>/1.0.0
        self._generation: dict[PeerId, str] = {}
        self._seen: dict[PeerId, frozenset[str]] = {}  # a node's mimir protocols when last learnt
        self._pushed: dict[PeerId, Sequence[str]] = {}  # protocols a node pushed since: to learn from
        self._relearning: dict[PeerId, asyncio.Task[None]] = {}
        self._names_of: dict[Connection, dict[str, str]] = {}  # a latest node's names, once per connection
        self.probe_models = list(cfg.probe_models)
        self._inflight: dict[PeerId, int] = {}
        self._rtt: dict[PeerId, float] = {}
        self._rtt_at: dict[PeerId, float] = {}  # time.monotonic() when each RTT was measured
        self._services = start_services(self.host)
        self._ping = Ping(self.host, serve=False)
        self.discovery: MdnsDiscovery | None = None
        if cfg.mdns:
            from mimirlite.discovery.mdns import MdnsDiscovery

            self.discovery = MdnsDiscovery(
                self.host,
                interval=cfg.mdns_interval,
                interfaces=cfg.mdns_interfaces,
                on_peer=self._discovered,
                on_lost=self.forget,
            )
        self._changed = asyncio.Event()
        self._relay: RelayClient | None = None
        self.puncher: HolePuncher | None = None
        """DCUtR: hole punches from nodes reached through a relay, while the client listens."""
        self.dht: ModelDht | None = None
        """The DHT and bootstrap peers, while the client runs with ``dht`` on."""
        self._finding: SingleFlight[str, list[PeerId]] = SingleFlight(
            lambda coro: self.host.spawn(coro, "mimirlite-find"),
            cancelled=lambda _: LocalError("client stopped"),
        )
        self._not_found: OrderedDict[str, float] = OrderedDict()  # model -> when a lookup last found none
        self._lookups = asyncio.Semaphore(MAX_LOOKUPS)

    # ---- lifecycle ----

    async def _start(self) -> None:
        """Start the host (if ours) and learn the static peers' models."""
        if self._own_host:
            await self.host.start()
        self.host.on_disconnected.append(self._on_disconnected)
        if self.discovery is not None:
            await self.discovery.start()
        cfg = self.config
        identify = identify_service(self.host)
        if identify is not None:
            identify.on_identified.append(self._on_identified)
        if self.host.circuit_dialer is None:  # --peer may be <relay>/p2p-circuit/p2p/<node>
            self._relay = RelayClient(self.host)
            await self._relay.start()
            if self.host.listen_addrs and identify is not None:
                identify.identify_on_connect()  # what peers see of us: the addresses a punch offers
                from mimirlite.protocols.dcutr.holepunch import HolePunchConfig
                from mimirlite.protocols.dcutr.service import HolePuncher

                config = HolePunchConfig(allow_private=cfg.private_addrs)
                self.puncher = HolePuncher(self.host, identify.candidate_addrs, config)
                await self.puncher.start()
                self._relay.on_relayed.append(self.puncher.on_relayed)
        if cfg.dht and identify is not None:
            from mimirlite.mimir.dht import ModelDht

            self.dht = ModelDht(
                self.host,
                identify,
                bootstrap=cfg.bootstrap,
                public_server=cfg.dht_server,
                config=cfg.dht_config,
            )
            await self.dht.start()
        if self._static:
            await asyncio.gather(*(self._try_add(a) for a in self._static))

    async def _stop(self) -> None:
        """Stop discovery, the DHT and the services, and the host if it is ours."""
        if self.dht is not None:
            await self.dht.stop()
        if self.puncher is not None:
            await self.puncher.stop()
        if self._relay is not None:
            await self._relay.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        if self._on_disconnected in self.host.on_disconnected:
            self.host.on_disconnected.remove(self._on_disconnected)
        identify = identify_service(self.host)
        if identify is not None and self._on_identified in identify.on_identified:
            identify.on_identified.remove(self._on_identified)
        relearning = list(self._relearning.values())
        for task in relearning:
            task.cancel()
        await asyncio.gather(*relearning, return_exceptions=True)
        self._relearning.clear()
        self._pushed.clear()
        for service in self._services:
            service.close()
        self._names_of.clear()
        if self._own_host:
            await self.host.stop()

    # ---- nodes ----

    @property
    def nodes(self) -> dict[PeerId, list[str]]:
        """Each known node and the models it serves."""
        return {peer: list(models) for peer, models in self._nodes.items()}

    def nodes_for(self, model: str | None = None) -> list[PeerId]:
        """Nodes serving ``model`` (any node when None)."""
        if model is None:
            return list(self._nodes)
        name = model_name(model)
        return [peer for peer, models in self._nodes.items() if name in models]

    async def find_nodes(self, model: str | None = None) -> list[PeerId]:
        """Nodes serving ``model`` (the default model when None): the known ones, else those the DHT names as
        its providers, once identified. A lookup that found none is not repeated for ``NOT_FOUND_TTL`` s
        (any caller, HTTP clients of the gateway included, could otherwise make the client flood the DHT)."""
        name = model_name(model or DEFAULT_MODEL)
        known = self.nodes_for(name)
        if known or self.dht is None:
            return known
        loop = asyncio.get_running_loop()
        last = self._not_found.get(name)
        if last is not None and loop.time() - last < NOT_FOUND_TTL:
            return []
        found = await self._finding.run(name, lambda: self._find(name))
        if not found:
            self._not_found[name] = loop.time()
            self._not_found.move_to_end(name)
            while len(self._not_found) > MAX_NOT_FOUND:
                self._not_found.popitem(last=False)
        return found

    async def _find(self, name: str) -> list[PeerId]:
        assert self.dht is not None
        async with self._lookups:
            providers = await self.dht.find(name)
        fresh = [p.peer for p in providers if p.peer not in self._nodes and p.peer != self.host.peer_id]
        await asyncio.gather(*(self._identify_quietly(p) for p in fresh))
        return self.nodes_for(name)

    async def dht_nodes(self, timeout: float = 10.0) -> list[PeerId]:
        """The nodes among the DHT's peers: waits up to ``timeout`` s for a routing table to fill (from the
        bootstrap peers), looks up our own ID to learn more, and identifies each peer not known yet."""
        if self.dht is None:
            return []
        dht = self.dht.dht
        if not dht.peers():
            filled = asyncio.Event()
            for d in dht.dhts:
                d.on_table_changed.append(filled.set)
            try:
                await asyncio.wait_for(filled.wait(), timeout)
            except asyncio.TimeoutError:
                return []
            finally:
                for d in dht.dhts:
                    d.on_table_changed.remove(filled.set)
        await dht.refresh()
        peers = dht.peers()
        fresh = [p for p in peers if p not in self._nodes]
        await asyncio.gather(*(self._identify_quietly(p) for p in fresh))
        return [p for p in peers if p in self._nodes]

    async def _identify_quietly(self, peer: PeerId) -> None:
        async with self._lookups:
            try:
                await self.identify(peer)
            except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
                log.info("DHT peer %s is not a node we can use: %s", peer, exc or type(exc).__name__)

    async def add_peer(self, addr: str) -> list[str]:
        """Dial a node at ``addr``, ask its models and remember them."""
        conn = await self.host.dial(addr)
        assert conn.remote_peer is not None
        return await self.identify(conn.remote_peer)

    async def _try_add(self, addr: str) -> None:
        try:
            await self.add_peer(addr)
        except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
            log.warning("could not use node %s: %s", addr, exc or type(exc).__name__)

    async def _discovered(self, peer: PeerId, addrs: list[str]) -> None:
        try:
            await self.identify(peer)
        except ProtocolNotSupportedError:
            log.debug("discovered peer %s is not a mimir node", peer)
        except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
            log.info("discovered peer %s did not answer identify: %s", peer, exc or type(exc).__name__)
            if self.discovery is not None:
                self.discovery.forget(peer)  # ask again at its next answer

    def generation(self, peer: PeerId) -> str | None:
        """``"first"`` or ``"latest"``: the generation the client speaks with ``peer`` (None: unknown)."""
        return self._generation.get(peer)

    def tunnels(self, peer: PeerId) -> dict[str, str]:
        """The latest-generation tunnel protocol of each model ``peer`` serves on one."""
        return dict(self._tunnels.get(peer, {}))

    async def identify(self, peer: PeerId) -> list[str]:
        """Learn which generation ``peer`` speaks and which models it serves; record them.

        From libp2p identify's protocol list: ``/mimirllm/1.0.0/identify`` is asked for the names
        (first generation, preferred); else the latest generation's ``/mimir/<model>/1.0.0``
        protocols, whose real names are asked through a tunnel. ProtocolNotSupportedError when the
        peer speaks neither.
        """
        return await self._learn(peer, await self._remote_protocols(peer))

    async def _learn(self, peer: PeerId, protocols: Sequence[str] | None) -> list[str]:
        """:meth:`identify` once ``peer``'s protocol list is known (None: it did not say)."""
        tunnels: dict[str, str] = {}
        if protocols is None:  # no libp2p identify: ask as the first generation did, else probe
            try:
                models = await self._identify_first(peer)
                generation = FIRST
            except ProtocolNotSupportedError:
                tunnels = await self._probe(peer)
                if not tunnels:
                    raise
                models, generation = list(tunnels), LATEST
        else:
            served = [n for p in protocols if (n := sanitized_of(p)) is not None]
            if packets.MIMIR_IDENTIFY_PROTOCOL in protocols:
                models = await self._identify_first(peer)
                generation = FIRST
                tunnels = {m: tunnel_protocol(m) for m in models if sanitize_model(m) in served}
            elif served:
                conn = self.host.connections.get(peer)
                known = self._names_of.get(conn) if conn is not None else None
                if known is None or set(known.values()) != {f"/mimir/{s}/1.0.0" for s in served}:
                    known = await self._latest_names(peer, served)  # first asked, or the list changed
                tunnels = known
                if conn is not None and conn.is_open:
                    self._names_of[conn] = tunnels
                models, generation = list(tunnels), LATEST
            else:
                raise ProtocolNotSupportedError([packets.CHAT_PROTOCOL, "/mimir/<model>/1.0.0"])
        await self._measure_rtt(peer)
        self._nodes[peer] = [model_name(m) for m in models]
        self._tunnels[peer] = tunnels
        self._generation[peer] = generation
        if protocols is not None:
            self._seen[peer] = _mimir_protocols(protocols)
        log.info("node %s serves %s (%s generation)", peer, ", ".join(models) or "nothing", generation)
        self._notify()
        return list(models)

    async def _remote_protocols(self, peer: PeerId) -> list[str] | None:
        """The protocols ``peer`` says it serves (libp2p identify), or None when it did not say."""
        service = identify_service(self.host)
        if service is None:
            return None
        try:
            info = await service.identify(peer)
        except (ProtocolNotSupportedError, ProtocolError, IdentifyTimeoutError) as exc:
            log.debug("%s did not answer libp2p identify: %s", peer, exc)
            return None
        return list(info.protocols)

    async def _probe(self, peer: PeerId) -> dict[str, str]:
        """Open (and close at once) the tunnel of each model worth asking: the served ones."""
        names = dict.fromkeys([*self.probe_models, *(m for ms in self._nodes.values() for m in ms)])
        found: dict[str, str] = {}
        for name in names:
            protocol = tunnel_protocol(name)
            try:
                stream = await self.host.new_stream(peer, protocol)
            except ProtocolNotSupportedError:
                continue
            await stream.close()
            found[name] = protocol
        return found

    async def _latest_names(self, peer: PeerId, served: list[str]) -> dict[str, str]:
        """The real name of each model behind ``served`` (sanitized names), asked through a tunnel:
        ``GET /v1/models``, else ``GET /api/tags``; a name the node does not list stays sanitized."""
        protocol = f"/mimir/{served[0]}/1.0.0"
        names: list[str] = []
        for path, key, field in (("/v1/models", "data", "id"), ("/api/tags", "models", "name")):
            try:
                status, _, body = await asyncio.wait_for(
                    self._fetch(peer, protocol, "GET", path), self.identify_timeout
                )
                listed = json.loads(body)[key] if status == 200 else []
                names = [str(m[field]) for m in listed if isinstance(m, dict) and field in m]
            except (MimirliteError, OSError, asyncio.TimeoutError, ValueError, TypeError, KeyError) as exc:
                log.debug("%s: GET %s through %s failed: %s", peer, path, protocol, exc)
                continue
            if status == 200 and names:
                break
            log.debug("%s: GET %s through %s answered %d", peer, path, protocol, status)
        tunnels = {n: tunnel_protocol(n) for n in names if sanitize_model(n) in served}
        covered = {sanitize_model(n) for n in tunnels}
        tunnels.update({s: f"/mimir/{s}/1.0.0" for s in served if s not in covered})
        return tunnels

    async def _fetch(
        self, peer: PeerId, protocol: str, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, ResponseHead, bytes]:
        """One whole tunnel exchange, its body bounded by MAX_ERROR_BODY."""
        stream, reader, first = await self._open_tunnel(peer, protocol, method, path, body)
        assert reader.head is not None
        return reader.head.status, reader.head, await self._read_body(stream, reader, first)

    async def _identify_first(self, peer: PeerId) -> list[str]:
        """Ask ``/mimirllm/1.0.0/identify`` for the models a first-generation node serves."""
        request_id = _request_id()
        stream = await self.host.new_stream(peer, packets.MIMIR_IDENTIFY_PROTOCOL)
        async with stream:
            await stream.write_json(Packet(packets.QUERY, model_cid(DEFAULT_MODEL), request_id).to_json())
            await stream.close_write()
            try:
                obj = await asyncio.wait_for(stream.read_json(), self.identify_timeout)
            except asyncio.TimeoutError:
                raise ChatError(f"{peer} did not answer identify in {self.identify_timeout:g} s") from None
            packet = packets.parse_packet(obj, packets.RESPONSE)
            if packet.request_id not in (None, request_id):
                raise PacketError("identify response answers another request")
            models = packet.data
            if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
                raise PacketError("identify response data is not a list of model names")
        return list(models)

    async def _measure_rtt(self, peer: PeerId) -> None:
        """Ping ``peer`` (libp2p ping, else a yamux ping) to rank it among nodes serving a model."""
        try:
            try:
                rtt = await self._ping.ping(peer, timeout=self.identify_timeout)
            except ProtocolNotSupportedError:
                rtt = await self.host.connections[peer].ping(self.identify_timeout)
        except (MimirliteError, KeyError, asyncio.TimeoutError) as exc:
            log.debug("could not ping %s: %s", peer, exc)
            return
        self._rtt[peer] = rtt
        self._rtt_at[peer] = time.monotonic()

    def rtt(self, peer: PeerId) -> float | None:
        """The last measured round-trip time to ``peer``, in seconds."""
        return self._rtt.get(peer)

    def _on_identified(self, info: IdentifyInfo) -> None:
        """A libp2p identify answer or push: re-learn the models of a known node whose mimir protocols
        changed (one run per node at a time; a push during it is taken once it ends, the latest only)."""
        peer = info.peer_id
        seen = self._seen.get(peer)
        if seen is None or peer not in self._nodes or self.state is not ServiceState.RUNNING:
            return
        if _mimir_protocols(info.protocols) == seen and peer not in self._pushed:
            return
        self._pushed[peer] = info.protocols
        if peer not in self._relearning:
            self._relearning[peer] = self.host.spawn(self._relearn(peer), "mimirlite-relearn")

    async def _relearn(self, peer: PeerId) -> None:
        try:
            while (protocols := self._pushed.pop(peer, None)) is not None:
                if peer not in self._nodes:
                    return  # forgotten meanwhile (disconnected, gone silent)
                if _mimir_protocols(protocols) == self._seen.get(peer):
                    continue  # learnt meanwhile
                log.info("node %s changed its protocols: asking for its models again", peer)
                try:
                    await self._learn(peer, protocols)
                except ProtocolNotSupportedError:
                    log.info("node %s serves neither generation any more", peer)
                    self.forget(peer)
                except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
                    reason = exc or type(exc).__name__
                    log.info("node %s: asking for its models again failed: %s", peer, reason)
        finally:
            self._relearning.pop(peer, None)  # at once: a push from now on starts another run

    def ping_age(self, peer: PeerId) -> float | None:
        """Seconds since :meth:`rtt` was last measured for ``peer`` (None: never)."""
        at = self._rtt_at.get(peer)
        return None if at is None else max(0.0, time.monotonic() - at)

    async def measure_rtt(self, peer: PeerId) -> float | None:
        """Ping a known node ``peer`` now (libp2p ping, else a yamux ping; bounded by ``identify_timeout``)
        and keep the round trip, which ranks it among the nodes serving a model. The round-trip time in
        seconds; None when the ping failed (the last one measured is kept)."""
        if peer not in self._nodes:
            return None
        before = self._rtt_at.get(peer)
        await self._measure_rtt(peer)
        return self._rtt[peer] if self._rtt_at.get(peer) != before else None

    def in_flight(self, peer: PeerId) -> int:
        """Chats and tunnel requests (:meth:`request`) open with ``peer`` now."""
        return self._inflight.get(peer, 0)

    def _begin(self, peer: PeerId) -> None:
        self._inflight[peer] = self._inflight.get(peer, 0) + 1

    def _end(self, peer: PeerId) -> None:
        left = self._inflight.get(peer, 0) - 1
        if left > 0:
            self._inflight[peer] = left
        else:
            self._inflight.pop(peer, None)

    def forget(self, peer: PeerId) -> None:
        """Drop ``peer`` from the known nodes."""
        self._rtt.pop(peer, None)
        self._seen.pop(peer, None)
        self._pushed.pop(peer, None)
        self._rtt_at.pop(peer, None)
        self._tunnels.pop(peer, None)
        self._generation.pop(peer, None)
        if self._nodes.pop(peer, None) is not None:
            log.info("node %s dropped", peer)
            self._notify()

    def _on_disconnected(self, conn: Connection) -> None:
        self._names_of.pop(conn, None)
        peer = conn.remote_peer
        if peer is not None and peer not in self.host.connections:
            self.forget(peer)
            if self.discovery is not None:
                self.discovery.forget(peer)  # identify it again if it keeps answering

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_nodes(self, model: str | None = None, timeout: float = 10.0) -> bool:
        """Wait up to ``timeout`` s until a node serving ``model`` (any, when None) is known."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        search = None
        if self.dht is not None and not self.nodes_for(model):
            search = self.host.spawn(self._search_until(model, deadline), "mimirlite-search")
        try:
            while not self.nodes_for(model):
                left = deadline - loop.time()
                if left <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except asyncio.TimeoutError:
                    return False
            return True
        finally:
            if search is not None:
                search.cancel()

    async def _search_until(self, model: str | None, deadline: float) -> None:
        """Look ``model`` up in the DHT until a node serving it is known (the routing table may still be
        filling from the bootstrap peers), waiting longer between tries, up to ``deadline``."""
        name = model_name(model or DEFAULT_MODEL)
        loop = asyncio.get_running_loop()
        pause = SEARCH_PAUSES[0]
        while not self.nodes_for(model) and loop.time() < deadline:
            try:
                await self._finding.run(name, lambda: self._find(name))
            except MimirliteError as exc:
                log.info("DHT lookup of %s failed: %s", name, exc)
            if self.nodes_for(model):
                return
            await asyncio.sleep(max(0.0, min(pause, deadline - loop.time())))
            pause = min(pause * 2, SEARCH_PAUSES[1])

    # ---- chat ----

    def _candidates(self, model: str | None) -> list[PeerId]:
        """Nodes serving ``model``: the least busy first, then the nearest (ping round trip)."""
        inf = float("inf")
        return sorted(self.nodes_for(model), key=lambda p: (self._inflight.get(p, 0), self._rtt.get(p, inf)))

    async def chat(
        self, messages: list[dict[str, Any]], model: str | None = None, **params: Any
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Stream the answer as openai ``ChatCompletionChunk`` objects (loads the openai SDK; see
        :meth:`chat_raw` for the same chunks as plain dicts, without it).

        Raises NoNodeError, RemoteError (the node's completionStop error; HttpRemoteError, with the
        ``status``, when a latest-generation node answers an HTTP error), TruncatedAnswerError,
        AnswerTimeoutError (nothing came for ``read_timeout`` s; also an ``asyncio.TimeoutError``).
        A node that fails before its first chunk is replaced by another serving the model.
        """
        from openai.types.chat import ChatCompletionChunk  # heavy: loaded only when chatting

        async with contextlib.aclosing(self.chat_raw(messages, model, **params)) as chunks:
            async for chunk in chunks:
                try:
                    yield ChatCompletionChunk.model_validate(chunk)
                except ValueError as exc:
                    raise PacketError(f"not a chat completion chunk: {exc}") from None

    async def chat_raw(
        self, messages: list[dict[str, Any]], model: str | None = None, **params: Any
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Stream the answer as the chunk dicts the node sent (``chat.completion.chunk`` objects), each
        checked as :meth:`chat` checks it (:func:`~mimirlite.mimir.chunks.check_chunk`: every field the
        openai SDK declares has its type), without loading ``openai`` or ``pydantic``. Raises as
        :meth:`chat`; a node that fails before its first chunk is replaced by another serving the model."""
        async with contextlib.aclosing(self.chat_wire(messages, model, **params)) as chunks:
            async for chunk in chunks:
                yield chunk.data

    async def chat_wire(
        self, messages: list[dict[str, Any]], model: str | None = None, **params: Any
    ) -> AsyncGenerator[WireChunk, None]:
        """As :meth:`chat_raw`, each chunk with the JSON text the node sent for it, when that text may be
        passed on as it is (:class:`WireChunk`; a proxy writes it without encoding the chunk again)."""
        candidates = self._candidates(model)
        if not candidates and self.dht is not None:
            await self.find_nodes(model)
            candidates = self._candidates(model)
        if not candidates:
            raise NoNodeError(f"no known node serves {model}" if model else "no node known")
        data: dict[str, Any] = {"messages": messages, **params}
        if model is not None:
            data["model"] = model_name(model)
        for i, peer in enumerate(candidates):
            answer: _Answer | _TunnelAnswer
            if self._generation.get(peer) == LATEST or (
                self.prefer_tunnel and data.get("model") in self._tunnels.get(peer, {})
            ):
                answer = _TunnelAnswer(self, peer, data)
            else:
                answer = _Answer(self, peer, data)
            try:
                async with contextlib.aclosing(answer.chunks()) as chunks:
                    async for chunk in chunks:
                        yield chunk
                return
            except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
                last_candidate = i == len(candidates) - 1
                if (
                    last_candidate
                    or answer.started
                    or (isinstance(exc, RemoteError) and exc.type == packets.BAD_REQUEST)
                    or (isinstance(exc, HttpRemoteError) and exc.status in (400, 413))
                ):
                    raise
                reason = str(exc) or type(exc).__name__
                log.warning("node %s failed before answering: %s; trying another", peer, reason)

    async def request(self, model: str, method: str, path: str, body: Body = None) -> TunnelResponse:
        """One raw HTTP/1.1 exchange through the tunnel of a node serving ``model`` on the latest
        generation's ``/mimir/<model>/1.0.0`` (Ollama's native API, embeddings...).

        ``body``: bytes, or an object sent as JSON. Returns ``(status, headers, body)`` once the
        status line and headers have come; iterate ``body`` (a :class:`TunnelBody`, async iterator
        of bytes read to the end of the stream as the original needs) to its end, or ``aclose()``
        it, to free the stream.
        Raises NoNodeError; a node failing before its head is replaced by another serving the model.
        """
        name = model_name(model)
        if not self.nodes_for(name):
            await self.find_nodes(name)
        candidates = [p for p in self._candidates(name) if name in self._tunnels.get(p, {})]
        if not candidates:
            raise NoNodeError(f"no known node serves {model} on a tunnel")
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        for i, peer in enumerate(candidates):
            self._begin(peer)  # in flight until the body is read to its end or closed
            try:
                stream, reader, first = await self._open_tunnel(
                    peer, self._tunnels[peer][name], method, path, raw
                )
            except BaseException as exc:
                self._end(peer)
                if not isinstance(exc, (MimirliteError, OSError, asyncio.TimeoutError)):
                    raise
                if i == len(candidates) - 1:
                    raise
                log.warning("node %s failed before answering: %s; trying another", peer, exc)
                continue
            assert reader.head is not None
            answer = TunnelBody(self, stream, reader, first, on_end=functools.partial(self._end, peer))
            return TunnelResponse(reader.head.status, reader.head.headers, answer)
        raise NoNodeError(f"no known node serves {model} on a tunnel")  # pragma: no cover

    async def _chat_stream(self, peer: PeerId, protocol: str, early: bytes = b"") -> Stream:
        """A new stream for a chat: over a relayed connection the relay limits, first wait for a hole
        punch under way to give a direct one (a long answer would end at the relay's limit). ``early``:
        the request, sent with the protocol's proposal (:meth:`Host.open_on`)."""
        conn = self.host.connections.get(peer)
        relay, puncher = self._relay, self.puncher
        limited = conn is not None and relay is not None and relay.limit_of(conn) is not None
        if limited and puncher is not None and self._punches(peer) and not await puncher.wait_direct(peer):
            log.info("no direct connection to %s: chatting through the relay, within its limits", peer)
        return await self.host.new_stream(peer, protocol, early=early)

    def _punches(self, peer: PeerId) -> bool:
        """Whether ``peer`` may punch a hole to us: it serves DCUtR, or we do not know yet."""
        from mimirlite.protocols.dcutr.messages import DCUTR_PROTOCOL

        identify = identify_service(self.host)
        info = identify.info_of(peer) if identify is not None else None
        return info is None or DCUTR_PROTOCOL in info.protocols

    async def _read(self, stream: Stream, peer: PeerId) -> bytes:
        try:
            return await asyncio.wait_for(stream.read(), self.read_timeout)
        except asyncio.TimeoutError:
            raise AnswerTimeoutError(f"{peer} sent nothing for {self.read_timeout:g} s") from None

    async def _open_tunnel(
        self, peer: PeerId, protocol: str, method: str, path: str, body: bytes | None
    ) -> tuple[Stream, ResponseReader, bytes]:
        """Write one request on a new tunnel stream, close our side, read the answer's head.
        Returns the stream, its reader (head decoded) and the first body bytes."""
        stream = await self._chat_stream(peer, protocol)
        try:
            await stream.write(encode_request(method, path, body))
            await stream.close_write()
            reader = ResponseReader()
            first = b""
            while reader.head is None:
                data = await self._read(stream, peer)
                if not data:
                    reader.eof()
                first = reader.feed(data)
        except (StreamResetError, TunnelTruncatedError) as exc:
            await stream.reset()
            raise TruncatedAnswerError(f"tunnel to {peer} ended before its answer's head: {exc}") from exc
        except BaseException:
            await stream.reset()
            raise
        return stream, reader, first

    async def _body(
        self, stream: Stream, reader: ResponseReader, first: bytes
    ) -> AsyncGenerator[bytes, None]:
        """The body bytes as they arrive, to the end of the stream; TruncatedAnswerError if it is
        reset or shorter than its Content-Length. The stream is closed (reset if left early)."""
        whole = False
        peer = stream.remote_peer
        try:
            if first:
                yield first
            while True:
                try:
                    data = await self._read(stream, peer)
                except StreamResetError as exc:
                    raise TruncatedAnswerError(f"tunnel answer broke off: {exc}") from exc
                if not data:
                    try:
                        reader.eof()
                    except TunnelTruncatedError as exc:
                        raise TruncatedAnswerError(str(exc)) from None
                    whole = True
                    return
                data = reader.feed(data)
                if data:
                    yield data
        finally:
            await (stream.close() if whole else stream.reset())

    async def _read_body(self, stream: Stream, reader: ResponseReader, first: bytes) -> bytes:
        """The whole body, at most MAX_ERROR_BODY bytes."""
        return await TunnelBody(self, stream, reader, first).read()


class TunnelBody:
    """The body of a tunnel answer, as it arrives (to the end of the stream; TruncatedAnswerError if
    it is cut short). Iterate it to its end, or ``aclose()`` it (also ``async with``) to free the stream."""

    def __init__(
        self,
        client: MimirClient,
        stream: Stream,
        reader: ResponseReader,
        first: bytes,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        """``on_end`` is called once, when the body ends (read to its end, failed, or closed)."""
        self._stream = stream
        self._started = False
        self._gen = client._body(stream, reader, first)
        self._on_end = on_end

    def __aiter__(self) -> TunnelBody:
        return self

    async def __anext__(self) -> bytes:
        self._started = True
        try:
            return await self._gen.__anext__()
        except BaseException:
            self._ended()
            raise

    def _ended(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()

    async def read(self) -> bytes:
        """The rest of the body, at most MAX_ERROR_BODY bytes (PacketError past it)."""
        parts: list[bytes] = []
        size = 0
        async with self:
            async for data in self:
                size += len(data)
                if size > MAX_ERROR_BODY:
                    raise PacketError(f"tunnel answer longer than {MAX_ERROR_BODY} bytes")
                parts.append(data)
        return b"".join(parts)

    async def aclose(self) -> None:
        """Stop reading: the stream is reset unless the body was read to its end."""
        self._ended()
        await self._gen.aclose()
        if not self._started:
            self._started = True
            await self._stream.reset()

    async def __aenter__(self) -> TunnelBody:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class WireChunk(NamedTuple):
    """One chunk of an answer, checked (:meth:`MimirClient.chat_wire`)."""

    data: dict[str, Any]
    """The chunk as the node sent it (a ``chat.completion.chunk`` object)."""
    json: str | None
    """The node's own JSON text of the chunk, when it may be passed on as it is (one line, no duplicate
    key, nothing but JSON: :func:`~mimirlite.mimir.chunks.loads_event`); None: encode ``data``."""


class TunnelResponse(NamedTuple):
    """A tunnel answer: status, headers (lowercase names, as sent) and the body as it arrives."""

    status: int
    headers: list[tuple[str, str]]
    body: TunnelBody


class _TunnelAnswer:
    """One chat request to one latest-generation node, through its model's tunnel."""

    def __init__(self, client: MimirClient, peer: PeerId, data: dict[str, Any]) -> None:
        self.client = client
        self.peer = peer
        tunnels = client._tunnels.get(peer, {})
        self.model = data.get("model") or next(iter(tunnels), DEFAULT_MODEL)
        self.protocol = tunnels.get(self.model) or tunnel_protocol(self.model)
        self.data = {**data, "model": self.model, "stream": True}
        self.started = False

    async def chunks(self) -> AsyncGenerator[WireChunk, None]:
        client = self.client
        inflight = client._inflight
        inflight[self.peer] = inflight.get(self.peer, 0) + 1
        try:
            body = json.dumps(self.data).encode()
            stream, reader, first = await client._open_tunnel(
                self.peer, self.protocol, "POST", "/v1/chat/completions", body
            )
            assert reader.head is not None
            if reader.head.status != 200:
                raw = await client._read_body(stream, reader, first)
                raise HttpRemoteError(reader.head.status, *error_message(reader.head.status, raw))
            kind = (reader.head.header("content-type") or "").split(";")[0].strip().lower()
            if kind == "application/json":  # a backend that does not stream: one whole completion
                whole = self._whole(await client._read_body(stream, reader, first))
                self.started = True
                yield WireChunk(whole, None)
                return
            sse = SseDecoder()
            finished = done = False
            async with contextlib.aclosing(client._body(stream, reader, first)) as pieces:
                async for piece in pieces:
                    for event in [] if done else sse.feed(piece):
                        if event.strip() == "[DONE]":
                            done = True  # read on to the node's close, so the stream ends cleanly
                            break
                        chunk = self._chunk(event)
                        finished = finished or is_finished(chunk.data)
                        self.started = True
                        yield chunk
                for event in [] if done else sse.eof():
                    if event.strip() == "[DONE]":
                        done = True
                        break
                    chunk = self._chunk(event)
                    finished = finished or is_finished(chunk.data)
                    self.started = True
                    yield chunk
            if not (finished or done):
                raise TruncatedAnswerError(f"answer from {self.peer} ended before it was finished")
        finally:
            inflight[self.peer] -= 1
            if not inflight[self.peer]:
                del inflight[self.peer]

    def _whole(self, body: bytes) -> dict[str, Any]:
        """A ``chat.completion`` answered instead of a stream, as one chunk carrying all of it."""
        try:
            obj = json.loads(body)
            choices = [
                {
                    "index": c.get("index", 0),
                    "delta": c.get("message") or {},
                    "finish_reason": c.get("finish_reason") or "stop",
                }
                for c in obj["choices"]
            ]
            fields = {
                k: obj[k] for k in ("id", "created", "model", "system_fingerprint", "usage") if k in obj
            }
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise PacketError(f"tunnel answer is not a chat completion: {exc}") from None
        chunk = {**fields, "object": CHUNK_OBJECT, "choices": choices}
        check_chunk(chunk)
        return chunk

    def _chunk(self, event: str) -> WireChunk:
        obj, verbatim = loads_event(event)
        if isinstance(obj, dict) and "error" in obj and "choices" not in obj:
            raise HttpRemoteError(200, *error_message(200, event.encode()))
        check_chunk(obj)
        return WireChunk(obj, event if verbatim else None)


class _Answer:
    """One chat request to one node."""

    def __init__(self, client: MimirClient, peer: PeerId, data: dict[str, Any]) -> None:
        self.client = client
        self.peer = peer
        self.data = data
        self.started = False

    async def chunks(self) -> AsyncGenerator[WireChunk, None]:
        client = self.client
        request_id = _request_id()
        inflight = client._inflight
        inflight[self.peer] = inflight.get(self.peer, 0) + 1
        finished = False
        stream = None
        try:
            request = lp.encode_json(Packet(packets.MESSAGE, self.data, request_id).to_json())
            stream = await client._chat_stream(self.peer, packets.CHAT_PROTOCOL, request)
            await stream.close_write()
            while True:
                try:
                    body = stream.read_message_nowait()  # a chunk already here: no timer, no task
                    if body is not None:
                        obj = lp.decode_json(body)
                    else:
                        obj = await asyncio.wait_for(stream.read_json(), client.read_timeout)
                except StreamResetError as exc:  # reset, or the node's connection dropped
                    if finished:
                        return
                    raise TruncatedAnswerError(f"answer from {self.peer} broke off: {exc}") from exc
                except asyncio.TimeoutError:
                    if finished:
                        return
                    raise AnswerTimeoutError(
                        f"{self.peer} sent nothing for {client.read_timeout:g} s"
                    ) from None
                if obj is None:
                    if finished:
                        return
                    raise TruncatedAnswerError(f"answer from {self.peer} ended before it was finished")
                packet = packets.parse_packet(obj)
                if packet.event == packets.COMPLETION_STOP:
                    error = packets.stop_error(packet)
                    if error is not None:
                        raise error
                    finished = True
                elif packet.event == packets.COMPLETION_PACKET:
                    if check_chunk(packet.data):
                        finished = True
                    self.started = True
                    yield WireChunk(packet.data, None)
        finally:
            inflight[self.peer] -= 1
            if not inflight[self.peer]:
                del inflight[self.peer]
            if stream is not None:
                await (stream.close() if finished else stream.reset())
