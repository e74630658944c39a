"""The using side: learns nodes, asks each for its models, and streams chats from one that serves them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mimirlite.discovery import MdnsDiscovery
from mimirlite.discovery.mdns import DEFAULT_INTERVAL as MDNS_INTERVAL
from mimirlite.errors import MimirliteError, ProtocolNotSupportedError, StreamResetError
from mimirlite.identity import KeyPair, PeerId
from mimirlite.mimir import packets
from mimirlite.mimir.models import DEFAULT_MODEL, model_cid, model_name
from mimirlite.mimir.packets import Packet, PacketError, RemoteError
from mimirlite.net.config import HostConfig
from mimirlite.net.connection import Connection
from mimirlite.net.host import Host
from mimirlite.protocols import Ping, start_services

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionChunk

log = logging.getLogger(__name__)

IDENTIFY_TIMEOUT = 5.0
"""Seconds a node has to answer an identify query (as the original client)."""
READ_TIMEOUT = 120.0
"""Seconds to wait for each packet of an answer (a large model may think long before its first token)."""


class ChatError(MimirliteError):
    """A chat could not be answered."""


class NoNodeError(ChatError):
    """No known node serves the model asked for."""


class TruncatedAnswerError(ChatError):
    """The answer ended before a chunk with a ``finish_reason``."""


class AnswerTimeoutError(ChatError, asyncio.TimeoutError):
    """The node sent nothing for ``read_timeout`` seconds while an answer was awaited."""


class MimirClient:
    """Knows the nodes of the network and their models; :meth:`chat` asks one of them.

    ``async with MimirClient(peers=[multiaddr, ...]) as client`` dials and identifies the given
    nodes before the body runs. With ``mdns=True`` it also finds nodes on the local network (on the
    interfaces with the IPv4 addresses ``mdns_interfaces``, default all; a query every
    ``mdns_interval`` s) and asks each for its models as it appears; nodes that go silent or
    disconnect are dropped, and learned again when they answer anew. Give ``host`` to share a Host
    you run; otherwise the client runs its own.
    """

    def __init__(
        self,
        peers: Iterable[str] = (),
        *,
        host: Host | None = None,
        keypair: KeyPair | None = None,
        config: HostConfig | None = None,
        identify_timeout: float = IDENTIFY_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        mdns: bool = False,
        mdns_interfaces: Sequence[str] | None = None,
        mdns_interval: float = MDNS_INTERVAL,
    ) -> None:
        self._own_host = host is None
        self.host = host or Host(keypair, config=config)
        self._static = list(peers)
        self.identify_timeout = identify_timeout
        self.read_timeout = read_timeout
        self._nodes: dict[PeerId, list[str]] = {}
        self._inflight: dict[PeerId, int] = {}
        self._rtt: dict[PeerId, float] = {}
        self._services = start_services(self.host)
        self._ping = Ping(self.host, serve=False)
        self.discovery: MdnsDiscovery | None = None
        if mdns:
            self.discovery = MdnsDiscovery(
                self.host,
                interval=mdns_interval,
                interfaces=mdns_interfaces,
                on_peer=self._discovered,
                on_lost=self.forget,
            )
        self._changed = asyncio.Event()

    # ---- lifecycle ----

    async def start(self) -> None:
        """Start the host (if ours) and learn the static peers' models."""
        if self._own_host:
            await self.host.start()
        self.host.on_disconnected.append(self._on_disconnected)
        if self.discovery is not None:
            await self.discovery.start()
        if self._static:
            await asyncio.gather(*(self._try_add(a) for a in self._static))

    async def stop(self) -> None:
        if self.discovery is not None:
            await self.discovery.stop()
        if self._on_disconnected in self.host.on_disconnected:
            self.host.on_disconnected.remove(self._on_disconnected)
        for service in self._services:
            service.close()
        if self._own_host:
            await self.host.stop()

    async def __aenter__(self) -> MimirClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

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

    async def identify(self, peer: PeerId) -> list[str]:
        """Query ``peer`` on the identify protocol and record the models it serves."""
        request_id = str(uuid.uuid4())
        stream = await self.host.new_stream(peer, packets.IDENTIFY_PROTOCOL)
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
        await self._measure_rtt(peer)
        self._nodes[peer] = [model_name(m) for m in models]
        log.info("node %s serves %s", peer, ", ".join(models) or "nothing")
        self._notify()
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

    def rtt(self, peer: PeerId) -> float | None:
        """The last measured round-trip time to ``peer``, in seconds."""
        return self._rtt.get(peer)

    def forget(self, peer: PeerId) -> None:
        """Drop ``peer`` from the known nodes."""
        self._rtt.pop(peer, None)
        if self._nodes.pop(peer, None) is not None:
            log.info("node %s dropped", peer)
            self._notify()

    def _on_disconnected(self, conn: Connection) -> None:
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
        while not self.nodes_for(model):
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return False
        return True

    # ---- chat ----

    def _candidates(self, model: str | None) -> list[PeerId]:
        """Nodes serving ``model``: the least busy first, then the nearest (ping round trip)."""
        inf = float("inf")
        return sorted(self.nodes_for(model), key=lambda p: (self._inflight.get(p, 0), self._rtt.get(p, inf)))

    async def chat(
        self, messages: list[dict[str, Any]], model: str | None = None, **params: Any
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Stream the answer as openai ``ChatCompletionChunk`` objects.

        Raises NoNodeError, RemoteError (the node's completionStop error), TruncatedAnswerError,
        AnswerTimeoutError (nothing came for ``read_timeout`` s; also an ``asyncio.TimeoutError``).
        A node that fails before its first chunk is replaced by another serving the model.
        """
        candidates = self._candidates(model)
        if not candidates:
            raise NoNodeError(f"no known node serves {model}" if model else "no node known")
        data: dict[str, Any] = {"messages": messages, **params}
        if model is not None:
            data["model"] = model_name(model)
        for i, peer in enumerate(candidates):
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
                ):
                    raise
                reason = str(exc) or type(exc).__name__
                log.warning("node %s failed before answering: %s; trying another", peer, reason)


class _Answer:
    """One chat request to one node."""

    def __init__(self, client: MimirClient, peer: PeerId, data: dict[str, Any]) -> None:
        self.client = client
        self.peer = peer
        self.data = data
        self.started = False

    async def chunks(self) -> AsyncGenerator[ChatCompletionChunk, None]:
        from openai.types.chat import ChatCompletionChunk  # heavy: loaded only when chatting

        client = self.client
        request_id = str(uuid.uuid4())
        inflight = client._inflight
        inflight[self.peer] = inflight.get(self.peer, 0) + 1
        finished = False
        stream = None
        try:
            stream = await client.host.new_stream(self.peer, packets.CHAT_PROTOCOL)
            await stream.write_json(Packet(packets.MESSAGE, self.data, request_id).to_json())
            await stream.close_write()
            while True:
                try:
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
                    try:
                        chunk = ChatCompletionChunk.model_validate(packet.data)
                    except ValueError as exc:
                        raise PacketError(f"completionPacket is not a chat completion chunk: {exc}") from None
                    if any(c.finish_reason for c in chunk.choices):
                        finished = True
                    self.started = True
                    yield chunk
        finally:
            inflight[self.peer] -= 1
            if not inflight[self.peer]:
                del inflight[self.peer]
            if stream is not None:
                await (stream.close() if finished else stream.reset())
