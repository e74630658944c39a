"""The serving side: answers ``/mimirllm/1.0.0/identify`` queries and ``/mimirllm/1.0.0`` chats (the first
generation), and each model's ``/mimir/<model>/1.0.0`` HTTP tunnel (the latest generation, see
:mod:`mimirlite.mimir.tunnel`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

from mimirlite.aio import Service, ServiceState, race
from mimirlite.errors import (
    ConnectionClosedError,
    LocalError,
    MimirliteError,
    RefusalReason,
    StreamResetError,
)
from mimirlite.metrics import ChatOutcome, ChatTally, NodeMetrics, outcome_of
from mimirlite.mimir import packets, tunnel
from mimirlite.mimir.backends import Backend, BackendError, HttpHead
from mimirlite.mimir.dht import ModelDht
from mimirlite.mimir.follow import DEFAULT_INTERVAL, BackendState, FollowConfig, ModelFollower, Step
from mimirlite.mimir.limits import Admission, NodeLimits, Refusal, Ticket
from mimirlite.mimir.models import DEFAULT_MODEL, model_name, tunnel_protocol
from mimirlite.mimir.packets import BadRequestError, ChatRequest, Packet, PacketError
from mimirlite.mimir.params import clamp_max_tokens
from mimirlite.net.host import Host
from mimirlite.net.stream import Stream, StreamState
from mimirlite.protocols import Identify, Ping, identify_service, start_services
from mimirlite.protocols.kad.service import DhtConfig
from mimirlite.wire import lp

log = logging.getLogger(__name__)

HOLDING_TOO_MUCH = "the node holds too much for its peers now (max_buffered_total); retry later"
KEPT_PER_ITEM = 450
"""Bytes a parsed chat request keeps per message and per content part besides its text (Python objects
and the checked copy; measured: a request of many one-letter parts keeps about 14 times its size)."""
STREAM_REQUEST_TIMEOUT = 10.0
"""Seconds a client has to send its request packet once it opened a stream."""


class MimirNode(Service):
    """Serves a backend's models on ``host``; ``async with`` (or :meth:`start`) registers the protocols.

    ``limits`` bounds the chat requests answered at once, queued, and per peer (see
    :class:`~mimirlite.mimir.limits.NodeLimits`); a request over a limit is answered with a completionStop
    error of type ``rate_limited`` or ``overloaded``. While requests wait, a running chat whose reader
    stopped taking its answer is ended with ``overloaded`` when its peer or address holds more than its
    share of the places, or after ``stall_timeout`` (:meth:`~mimirlite.mimir.limits.Admission.review`).
    ``clock`` (seconds) times the per-peer rate.
    ``models``: what the backend serves when the caller already asked it (start then asks no more).
    What it did is in :attr:`metrics`.

    The node follows its backend's model list (:mod:`mimirlite.mimir.follow`): it asks every
    ``models_interval`` s (None or 0: never) and serves what changed, both generations at once, tells its
    connected peers (identify push) and the DHT. A backend that stops answering is retried with backoff;
    its models stay listed for ``models_grace`` s (None: 3 intervals), chats meanwhile get
    ``backend_error``; then the node serves no model (chats get ``model_not_found``) until the backend
    answers again. ``follow`` gives every setting of this at once (retries too), in place of those two.
    """

    def __init__(
        self,
        host: Host,
        backend: Backend,
        *,
        models: Sequence[str] | None = None,
        default_model: str | None = None,
        request_timeout: float = STREAM_REQUEST_TIMEOUT,
        limits: NodeLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        dht: bool = True,
        bootstrap: Sequence[str] = (),
        dht_server: bool = False,
        dht_config: DhtConfig | None = None,
        models_interval: float | None = DEFAULT_INTERVAL,
        models_grace: float | None = None,
        follow: FollowConfig | None = None,
    ) -> None:
        self.host = host
        self.backend = backend
        self.models: list[str] = []
        self._known_models = None if models is None else list(models)
        self.default_model = default_model
        self.request_timeout = request_timeout
        self.admission = Admission(limits)
        self.refused: collections.Counter[str] = collections.Counter()
        """Chat requests refused so far, by error type."""
        self._metrics = NodeMetrics(self.refused)
        self._clock = clock
        self._turns: dict[Ticket, asyncio.Future[None]] = {}
        self._running: dict[Ticket, tuple[Stream, str | None]] = {}  # chats answered now, request ids
        self._review_handle: asyncio.TimerHandle | None = None
        self._ending: dict[Ticket, asyncio.TimerHandle] = {}  # ended chats: reset unless done by then
        self._resets: set[asyncio.Future[None]] = set()
        self._services: list[Identify | Ping] = []
        self.tunnels: dict[str, str] = {}
        """Tunnel protocol ID -> the served model it carries."""
        self._dht_settings = (dht, tuple(bootstrap), dht_server, dht_config)
        self._providing: set[asyncio.Task[None]] = set()
        if follow is None and models_interval is not None and not models_interval >= 0:
            raise LocalError("models_interval must be a number of seconds >= 0 (0: never) or None")
        if follow is None and models_interval:
            follow = FollowConfig(interval=models_interval, grace=models_grace)
        self._follow = follow
        self.follower: ModelFollower | None = None
        """What the node knows of its backend's model list while it follows it (:attr:`backend_state`)."""
        self._watching: asyncio.Task[None] | None = None
        self._pushing: asyncio.Task[None] | None = None
        self._push_again = False
        self.dht: ModelDht | None = None
        """The DHT the node provides its models on (and the bootstrap peers), while it runs with ``dht``."""

    @property
    def backend_state(self) -> BackendState:
        """UP, DOWN (not answering; its models still served) or GONE (no model served until it answers)."""
        return BackendState.UP if self.follower is None else self.follower.state

    @property
    def limits(self) -> NodeLimits:
        return self.admission.limits

    @property
    def metrics(self) -> NodeMetrics:
        """This node's counters (requests, served, in flight, refused, backend errors, cancelled)."""
        m = self._metrics
        m.in_flight = self.admission.running
        m.waiting = self.admission.waiting
        return m

    async def start(self) -> list[str]:
        """Ask the backend for its models (unless given) and start answering; the models served.
        BackendError when the backend cannot be reached or serves no model (the node is then stopped)."""
        await super().start()
        return self.models

    async def _start(self) -> None:
        known = self._known_models
        self.models = list(known) if known is not None else await self.backend.list_models()
        if not self.models:
            raise BackendError(packets.MODEL_NOT_FOUND, "the backend serves no model")
        if self.default_model is None:
            self.default_model = DEFAULT_MODEL if DEFAULT_MODEL in self.models else self.models[0]
        elif self.default_model not in self.models:
            raise BackendError(packets.MODEL_NOT_FOUND, f"default model {self.default_model!r} is not served")
        self.host.set_handler(packets.MIMIR_IDENTIFY_PROTOCOL, self._serve_identify)
        self.host.set_handler(packets.CHAT_PROTOCOL, self._serve_chat)
        self.tunnels = {}
        self._open_tunnels(self.models)
        self._services = start_services(self.host)
        log.info("serving %s (default %s)", ", ".join(self.models), self.default_model)
        wanted, bootstrap, public_server, config = self._dht_settings
        identify = identify_service(self.host)
        if wanted and identify is not None:
            self.dht = ModelDht(
                self.host, identify, bootstrap=bootstrap, public_server=public_server, config=config
            )
            await self.dht.start()
            self._provide_soon(self.models)
        if self._follow is not None:
            self.follower = ModelFollower(self._follow, self.models)
            self._watching = self.host.spawn(self._watch_models(self.follower), "mimirlite-models")

    async def _watch_models(self, follower: ModelFollower) -> None:
        """Ask the backend for its models as ``follower`` says; serve (provide, push) what changed."""
        loop = asyncio.get_running_loop()
        delay = follower.config.interval
        while True:
            await asyncio.sleep(delay)
            try:
                models = await self.backend.list_models()
            except (MimirliteError, OSError) as exc:  # BackendError, or a backend of one's own failing
                step = follower.failed(str(exc) or type(exc).__name__, loop.time())
                if step.news is None:
                    log.debug("the backend did not list its models (attempt %d): %s", follower.failures, exc)
            else:
                step = follower.listed(models, loop.time())
            self._report(step)
            if step.serve is not None:
                await self.set_models(step.serve)
            delay = step.delay

    def _report(self, step: Step) -> None:
        """A change of the backend's state, said once (a WARNING, its return too: it ends the incident
        an operator saw begin); each retry only at DEBUG."""
        if step.news is not None:
            log.warning("%s", step.news)

    def _open_tunnels(self, models: Sequence[str]) -> None:
        for model in models:
            protocol = tunnel_protocol(model)
            kept = self.tunnels.setdefault(protocol, model)
            if kept != model:
                log.warning("model %r is not served on %s: %r has that protocol ID", model, protocol, kept)
                continue
            self.host.set_handler(protocol, self._tunnel_handler(model))

    async def set_models(self, models: Sequence[str]) -> None:
        """Serve ``models`` from now on (the backend's list changed; empty: serve none, the node runs on):
        tunnels open and close, connected peers are told (identify push), and the DHT gets provider records
        for the new ones; the dropped ones are no longer provided (records other peers hold expire within
        48 h)."""
        if self.state is not ServiceState.RUNNING:
            raise LocalError("the node is not running")
        models = list(dict.fromkeys(models))
        if self.follower is not None:
            self.follower.served = tuple(models)  # the next poll corrects a list the backend disowns
        if models == self.models:
            return
        added = [m for m in models if m not in self.models]
        dropped = [m for m in self.models if m not in models]
        for protocol, model in list(self.tunnels.items()):
            if model in dropped:
                self.host.remove_handler(protocol)
                del self.tunnels[protocol]
        self.models = models
        self._open_tunnels(added)
        if models and self.default_model not in models:
            self.default_model = DEFAULT_MODEL if DEFAULT_MODEL in models else models[0]
        if models:
            log.info("now serving %s (default %s)", ", ".join(models), self.default_model)
        else:
            log.info("now serving no model")
        if self.dht is not None:
            self.dht.unprovide(dropped)
            self._provide_soon(added)
        self._push_soon()

    def _push_soon(self) -> None:
        """Tell the connected peers our protocols (identify push), one push at a time: a change made while
        one is under way is pushed after it (a peer refuses a push while it still reads the previous one)."""
        if self._pushing is not None:
            self._push_again = True
            return
        identify = identify_service(self.host)
        if identify is not None:
            self._pushing = self.host.spawn(self._push(identify), "mimirlite-push")

    async def _push(self, identify: Identify) -> None:
        try:
            while True:
                self._push_again = False
                told = await identify.push(unidentified=True)
                log.debug("identify pushed to %d peers", told)
                if not self._push_again:
                    return
        finally:
            self._pushing = None

    def _provide_soon(self, models: Sequence[str]) -> None:
        assert self.dht is not None
        if models and self.dht.add_provided(models):  # else told when the first DHT peer appears
            task = self.host.spawn(self._provide(list(models)), "mimirlite-provide")
            self._providing.add(task)
            task.add_done_callback(self._providing.discard)

    async def _provide(self, models: list[str]) -> None:
        assert self.dht is not None
        try:
            stored = await self.dht.provide(models)
        except MimirliteError as exc:
            log.warning("providing %s in the DHT failed: %s", ", ".join(models), exc)
            return
        log.info("provided %s in the DHT (%d records stored)", ", ".join(models), stored)

    async def _stop(self) -> None:
        """Stop answering and release the backend."""
        for task in (self._watching, self._pushing):
            if task is not None:
                task.cancel()
        self._watching = self._pushing = None
        for task in list(self._providing):
            task.cancel()
        if self.dht is not None:
            await self.dht.stop()
            self.dht = None
        self.host.remove_handler(packets.MIMIR_IDENTIFY_PROTOCOL)
        self.host.remove_handler(packets.CHAT_PROTOCOL)
        for protocol in self.tunnels:
            self.host.remove_handler(protocol)
        if self._review_handle is not None:
            self._review_handle.cancel()
            self._review_handle = None
        for handle in self._ending.values():
            handle.cancel()
        self._ending.clear()
        for service in self._services:
            service.close()
        self._services = []
        await self.backend.aclose()

    async def _read_request(self, stream: Stream, event: str) -> tuple[Packet, int]:
        """The request packet and its size in bytes."""
        try:
            body = await asyncio.wait_for(stream.read_message(), self.request_timeout)
            obj = None if body is None else lp.decode_json(body)
        except asyncio.TimeoutError:
            raise BadRequestError(f"no request within {self.request_timeout:g} s") from None
        except (StreamResetError, ConnectionClosedError):
            raise  # gone (reset by its peer or at a limit, logged there): nobody to answer
        except MimirliteError as exc:
            raise BadRequestError(f"unreadable request: {exc}") from exc
        if body is None or obj is None:
            raise BadRequestError("stream ended before a request")
        try:
            return packets.parse_packet(obj, event), len(body)
        except PacketError as exc:
            raise BadRequestError(str(exc)) from None

    async def _serve_identify(self, stream: Stream) -> None:
        try:
            query, _ = await self._read_request(stream, packets.QUERY)
        except BadRequestError as exc:
            log.warning("%r: identify refused: %s", stream, exc)
            return
        log.debug("%r: identify query for %s", stream, query.data)
        await stream.write_json(Packet(packets.RESPONSE, list(self.models), query.request_id).to_json())
        self._metrics.identify_answered += 1

    async def _serve_chat(self, stream: Stream) -> None:
        request_id: str | None = None
        metrics = self._metrics
        tally = ChatTally(metrics.chats, time.perf_counter())
        try:
            packet, size = await self._read_request(stream, packets.MESSAGE)
            metrics.requests += 1
            tally.started = time.perf_counter()
            request_id = packet.request_id
            request = packets.parse_chat_request(packet.data)
            model = model_name(request.model) if request.model else self.default_model
            if model not in self.models:
                raise BackendError(packets.MODEL_NOT_FOUND, self._not_served(model))
            tally.model = model
            if not stream.hold(_kept_for(size, request)):
                tally.outcome = ChatOutcome.REFUSED
                self.refused[RefusalReason.OVERLOADED] += 1
                log.info("%r: refused (overloaded): %s", stream, HOLDING_TOO_MUCH)
                await _send_error(stream, packets.OVERLOADED, HOLDING_TOO_MUCH, request_id)
                return
            address = stream.connection.remote_address
            ip = None if address is None else address[0]
            ticket = self.admission.arrive(stream.remote_peer, self._clock(), ip)
            if isinstance(ticket, Refusal):
                stream.release()
                tally.outcome = ChatOutcome.REFUSED
                self.refused[ticket.type] += 1
                log.info("%r: refused (%s): %s", stream, ticket.type, ticket.message)
                await _send_error(stream, ticket.type, ticket.message, request_id)
                return
            try:
                if ticket.admitted or await self._wait_turn(stream, ticket):
                    self._running[ticket] = (stream, request_id)
                    await self._answer_until_done(stream, model, request, request_id, ticket, tally)
                else:
                    tally.outcome = ChatOutcome.CANCELLED
            finally:
                self._running.pop(ticket, None)
                ending = self._ending.pop(ticket, None)
                if ending is not None:
                    ending.cancel()
                self._let_in(self.admission.leave(ticket))
                stream.release()
        except BadRequestError as exc:
            log.warning("%r: bad request: %s", stream, exc)
            tally.outcome = ChatOutcome.BAD_REQUEST
            metrics.bad_requests += 1
            await _send_error(stream, packets.BAD_REQUEST, str(exc), request_id)
        except BackendError as exc:
            log.warning("%r: %s", stream, exc)
            tally.outcome = outcome_of(exc.type)
            metrics.backend_errors[exc.type] += 1
            await _send_error(stream, *self._as_sent(exc.type, str(exc)), request_id)
        finally:
            tally.end(time.perf_counter())

    def _not_served(self, model: str | None) -> str:
        """Why ``model`` is not served: not one of the backend's, or no model is (the backend is gone)."""
        if self.models:
            return f"model {model!r} is not served here"
        follower = self.follower
        if follower is None or follower.state is BackendState.UP:
            return "this node serves no model now"
        why = follower.reason
        return f"this node serves no model now: its backend is gone ({why}); its models return with it"

    def _as_sent(self, type: str, message: str) -> tuple[str, str]:
        """The error type and message a client gets for a backend error: an unreachable backend is a
        ``backend_error`` that says so (and, while the node retries it, for how long its models stay)."""
        if type != packets.BACKEND_UNAVAILABLE:
            return type, message
        text = f"the node's backend is not answering: {message}"
        follower = self.follower
        drops_at = None if follower is None else follower.drops_at
        if drops_at is not None:
            left = max(0.0, drops_at - asyncio.get_running_loop().time())
            text += f" (retrying; its models are withdrawn in {left:.0f} s unless it answers)"
        return packets.BACKEND_ERROR, text

    async def _wait_turn(self, stream: Stream, ticket: Ticket) -> bool:
        """Wait in the queue until ``ticket`` is admitted (True) or the client leaves (False)."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns[ticket] = turn
        self._review_soon()
        try:
            await race(turn, stream.wait_reset())
        finally:
            del self._turns[ticket]
        if not ticket.admitted:
            log.info("%r: client left while its request waited", stream)
            self._metrics.cancelled += 1
        return ticket.admitted

    def _let_in(self, tickets: list[Ticket]) -> None:
        for ticket in tickets:
            turn = self._turns.get(ticket)
            if turn is not None and not turn.done():
                turn.set_result(None)

    def _review_soon(self) -> None:
        """Review the running chats in this turn of the event loop (a request started waiting)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        handle = self._review_handle
        if handle is None or handle.when() > now:
            if handle is not None:
                handle.cancel()
            self._review_handle = loop.call_at(now, self._review)

    def _review(self) -> None:
        """While requests wait, end the running chats whose readers stall (see ``Admission.review``)."""
        self._review_handle = None
        loop = asyncio.get_running_loop()
        stalled: dict[Ticket, float] = {}
        for ticket, (stream, _) in self._running.items():
            since = stream.stalled_since
            if since is not None:
                stalled[ticket] = since
        review = self.admission.review(loop.time(), stalled)
        for end in review.ended:
            stream, request_id = self._running.pop(end.ticket)
            self._metrics.ended[end.reason] += 1
            log.info("%r: ending chat %r (%s): %s", stream, request_id, end.reason, end.message)
            # Its answer stops after the message being written; a reader that takes nothing more has
            # its stream reset.
            self._ending[end.ticket] = loop.call_later(self.limits.ended_linger, self._reset_ended, stream)
        self._let_in(review.admitted)
        if review.next_review is not None:
            self._review_handle = loop.call_at(review.next_review, self._review)

    def _reset_ended(self, stream: Stream) -> None:
        """Reset an ended chat's stream whose reader took nothing more (it ends the chat's handler)."""
        if stream.state is not StreamState.RESET:
            log.info("%r: resetting the ended chat: its reader took nothing more", stream)
            task = asyncio.ensure_future(stream.reset())
            self._resets.add(task)
            task.add_done_callback(self._resets.discard)

    async def _answer_until_done(
        self,
        stream: Stream,
        model: str,
        request: ChatRequest,
        request_id: str | None,
        ticket: Ticket,
        tally: ChatTally,
    ) -> None:
        """Stream the backend's answer; BackendError to report, quiet when the client left."""
        answer = asyncio.ensure_future(self._answer(stream, model, request, request_id, ticket, tally))
        await _until_done_or_reset(stream, answer)
        metrics = self._metrics
        end = ticket.ended
        if end is not None and (answer.cancelled() or answer.exception() is not None or not answer.result()):
            tally.outcome = ChatOutcome.ENDED
            await _send_error(stream, end.type, end.message, request_id)  # counted when it was ended
            return
        if answer.cancelled():
            tally.outcome = ChatOutcome.CANCELLED
            metrics.cancelled += 1
            return
        exc = answer.exception()
        if exc is None:
            tally.outcome = ChatOutcome.OK
            metrics.served += 1
        elif isinstance(exc, BackendError):
            raise exc
        elif isinstance(exc, MimirliteError):
            log.info("%r: client went away mid-answer: %s", stream, exc)
            tally.outcome = ChatOutcome.CANCELLED
            metrics.cancelled += 1
        else:
            tally.outcome = ChatOutcome.BACKEND_ERROR
            metrics.backend_errors["unexpected"] += 1
            raise exc

    async def _answer(
        self,
        stream: Stream,
        model: str,
        request: ChatRequest,
        request_id: str | None,
        ticket: Ticket,
        tally: ChatTally,
    ) -> bool:
        """Write the answer's chunks; False when the chat was ended (see ``_review``) before its end."""
        finished = False
        params = clamp_max_tokens(request.params, self.limits.max_tokens)
        wire = _wire_of(self.backend)
        if wire is not None:
            return await self._answer_wire(
                wire(model, request.messages, params), stream, request_id, ticket, tally
            )
        chat = self.backend.stream_chat(model, request.messages, params)
        async with contextlib.aclosing(chat) as chunks:
            async for chunk in chunks:
                out: dict[str, Any] = {"event": packets.COMPLETION_PACKET}
                if request_id is not None:
                    out["request_id"] = request_id
                out["data"] = chunk
                await stream.write_json(out)
                tally.first_chunk(time.perf_counter())
                if _finished(chunk):
                    finished = True
                elif ticket.ended is not None:
                    return False
        if not finished:
            raise BackendError(packets.BACKEND_ERROR, "backend answer ended before a finish_reason")
        return True

    async def _answer_wire(
        self,
        chat: AsyncGenerator[list[tuple[dict[str, Any], str | None]], None],
        stream: Stream,
        request_id: str | None,
        ticket: Ticket,
        tally: ChatTally,
    ) -> bool:
        """:meth:`_answer` from a backend's ``stream_chat_wire``: the packets of each list of chunks in
        one write, a chunk given with its JSON text written as that text inside its packet, not
        encoded again."""
        finished = False
        packet: dict[str, Any] = {"event": packets.COMPLETION_PACKET}
        if request_id is not None:
            packet["request_id"] = request_id
        head = json.dumps(packet, separators=(",", ":"))[:-1] + ',"data":'  # as lp writes it
        async with contextlib.aclosing(chat) as batches:
            async for batch in batches:
                if not batch:
                    continue
                parts = []
                last = False
                for chunk, text in batch:
                    if text is None:
                        parts.append(lp.encode_json({**packet, "data": chunk}))
                    else:
                        parts.append(lp.encode_message(f"{head}{text}}}".encode()))
                    last = _finished(chunk)
                    finished = finished or last
                await stream.write(parts[0] if len(parts) == 1 else b"".join(parts))
                tally.first_chunk(time.perf_counter())
                if not last and ticket.ended is not None:
                    return False
        if not finished:
            raise BackendError(packets.BACKEND_ERROR, "backend answer ended before a finish_reason")
        return True

    # ---- the latest generation's tunnel ----

    def _tunnel_handler(self, model: str) -> Callable[[Stream], Awaitable[None]]:
        async def serve(stream: Stream) -> None:
            await self._serve_tunnel(stream, model)

        return serve

    async def _read_tunnel_request(self, stream: Stream) -> tunnel.TunnelRequest | None:
        """The request, once the client closed its write side; None for a probe (an empty stream)."""
        reader = tunnel.RequestReader()
        while True:
            data = await stream.read()
            if not stream.hold(len(data)):  # what the reader keeps, until the request is answered
                raise tunnel.TunnelError(503, HOLDING_TOO_MUCH, packets.OVERLOADED)
            got = reader.feed(data)
            if got is not None or not data:
                return got

    async def _serve_tunnel(self, stream: Stream, model: str) -> None:
        try:
            await self._serve_tunnel_request(stream, model)
        finally:
            stream.release()

    async def _serve_tunnel_request(self, stream: Stream, model: str) -> None:
        tally = ChatTally(self._metrics.chats, time.perf_counter())
        tally.model = model
        try:
            await self._serve_tunnel_tallied(stream, model, tally)
        finally:
            tally.end(time.perf_counter())

    async def _serve_tunnel_tallied(self, stream: Stream, model: str, tally: ChatTally) -> None:
        metrics = self._metrics
        try:
            try:
                got = await asyncio.wait_for(self._read_tunnel_request(stream), self.request_timeout)
            except asyncio.TimeoutError:
                raise tunnel.TunnelError(
                    408, f"no whole request within {self.request_timeout:g} s", "request_timeout"
                ) from None
            if got is None:
                log.debug("%r: tunnel probe for %s", stream, model)
                return
            metrics.requests += 1
            tally.started = time.perf_counter()
            request = tunnel.admit(got, model, max_tokens=self.limits.max_tokens)
        except (StreamResetError, ConnectionClosedError):
            return  # gone (reset by its peer or at a limit, logged there): nobody to answer
        except tunnel.TunnelError as exc:
            log.warning("%r: tunnel request refused (%d %s): %s", stream, exc.status, exc.reason, exc.message)
            refused = exc.reason == packets.OVERLOADED
            tally.outcome = ChatOutcome.REFUSED if refused else ChatOutcome.BAD_REQUEST
            metrics.bad_requests += 1
            await _send_raw(stream, tunnel.error_answer(exc.status, exc.message, exc.reason))
            return
        log.debug("%r: tunnel %s %s for %s", stream, request.method, request.target, model)
        address = stream.connection.remote_address
        ip = None if address is None else address[0]
        ticket = self.admission.arrive(stream.remote_peer, self._clock(), ip)
        if isinstance(ticket, Refusal):
            tally.outcome = ChatOutcome.REFUSED
            self.refused[ticket.type] += 1
            log.info("%r: tunnel request refused (%s): %s", stream, ticket.type, ticket.message)
            status = 429 if ticket.type == packets.RATE_LIMITED else 503
            await _send_raw(stream, tunnel.error_answer(status, ticket.message, ticket.type))
            return
        try:
            if ticket.admitted or await self._wait_turn(stream, ticket):
                self._running[ticket] = (stream, None)
                await self._forward_until_done(stream, request, ticket, tally)
            else:
                tally.outcome = ChatOutcome.CANCELLED
        finally:
            self._running.pop(ticket, None)
            ending = self._ending.pop(ticket, None)
            if ending is not None:
                ending.cancel()
            self._let_in(self.admission.leave(ticket))

    async def _forward_until_done(
        self, stream: Stream, request: tunnel.TunnelRequest, ticket: Ticket, tally: ChatTally
    ) -> None:
        answer = asyncio.ensure_future(self._forward(stream, request, ticket, tally))
        await _until_done_or_reset(stream, answer)
        metrics = self._metrics
        if answer.cancelled():
            tally.outcome = ChatOutcome.CANCELLED
            metrics.cancelled += 1
            return
        exc = answer.exception()
        if exc is None:
            tally.outcome = ChatOutcome.OK
            metrics.served += 1
            return
        tally.outcome = ChatOutcome.ENDED if ticket.ended is not None else ChatOutcome.BACKEND_ERROR
        if isinstance(exc, tunnel.TunnelError):  # before the status line: an HTTP answer
            if ticket.ended is None:
                tally.outcome = outcome_of(exc.reason)
            metrics.backend_errors[exc.reason] += 1
            log.warning("%r: tunnel: %s", stream, exc.message)
            reason, message = self._as_sent(exc.reason, exc.message)
            await _send_raw(stream, tunnel.error_answer(exc.status, message, reason))
        elif isinstance(exc, BackendError):  # mid-answer: never a silently short answer
            if ticket.ended is None:
                metrics.backend_errors[exc.type] += 1
            log.warning("%r: tunnel answer broke off, resetting the stream: %s", stream, exc)
            with contextlib.suppress(MimirliteError):
                await stream.reset()
        elif isinstance(exc, MimirliteError):
            log.info("%r: client went away mid-answer: %s", stream, exc)
            tally.outcome = ChatOutcome.CANCELLED
            metrics.cancelled += 1
        else:
            metrics.backend_errors["unexpected"] += 1
            with contextlib.suppress(MimirliteError):
                await stream.reset()
            raise exc

    async def _forward(
        self, stream: Stream, request: tunnel.TunnelRequest, ticket: Ticket, tally: ChatTally
    ) -> None:
        """Pass the backend's answer on as it comes, then close. TunnelError (502; 503 when the request
        was ended, see ``_review``) when it fails before its status line, BackendError after it."""
        answer = self.backend.forward(request.method, request.target, request.headers, request.body)
        started = False
        async with contextlib.aclosing(answer) as parts:
            try:
                async for part in parts:
                    if isinstance(part, HttpHead):
                        head = tunnel.answer_head(
                            part.status, tunnel.passed_headers(part.headers), part.reason
                        )
                        await stream.write(head)
                        started = True
                    elif part:
                        await stream.write(part)
                        tally.first_chunk(time.perf_counter())
                    if ticket.ended is not None:
                        raise BackendError(ticket.ended.type, ticket.ended.message)
            except BackendError as exc:
                if not started:
                    status = 503 if exc.type == packets.OVERLOADED else 502
                    raise tunnel.TunnelError(status, str(exc), exc.type) from None
                raise
        if not started:
            raise tunnel.TunnelError(502, "the backend sent no answer", packets.BACKEND_ERROR)
        await stream.close_write()


WireChat = Callable[..., AsyncGenerator[list[tuple[dict[str, Any], str | None]], None]]
"""A backend's ``stream_chat_wire``: lists of ``(chunk, its JSON text or None)``, one list per read."""


def _wire_of(backend: Backend) -> WireChat | None:
    """``backend.stream_chat_wire`` when it gives what ``backend.stream_chat`` would: not when a subclass
    overrides ``stream_chat`` below the class that defines ``stream_chat_wire``."""
    mro = type(backend).__mro__
    wire_owner = next((c for c in mro if "stream_chat_wire" in vars(c)), None)
    chat_owner = next((c for c in mro if "stream_chat" in vars(c)), None)
    if wire_owner is None or chat_owner is None or not issubclass(wire_owner, chat_owner):
        return None
    wire: WireChat = backend.stream_chat_wire  # type: ignore[attr-defined]
    return wire


async def _send_raw(stream: Stream, data: bytes) -> None:
    with contextlib.suppress(MimirliteError):
        await stream.write(data)
        await stream.close_write()


async def _until_done_or_reset(stream: Stream, answer: asyncio.Future[Any]) -> None:
    """Wait for ``answer``; cancel it (and so the backend request) if the client resets the stream."""
    if await race(answer, stream.wait_reset()) is not answer:
        log.info("%r: client left mid-answer; cancelling the backend request", stream)


async def _send_error(stream: Stream, type: str, message: str, request_id: str | None) -> None:
    with contextlib.suppress(MimirliteError):
        await stream.write_json(packets.error_packet(type, message, request_id))


def _kept_for(size: int, request: ChatRequest) -> int:
    """What a parsed chat request of ``size`` bytes keeps in memory while it is served, about."""
    parts = sum(len(m["content"]) for m in request.messages if isinstance(m.get("content"), list))
    return 2 * size + KEPT_PER_ITEM * (len(request.messages) + parts)


def _finished(chunk: dict[str, Any]) -> bool:
    """Whether a backend's chunk ends the answer (its first choice has a ``finish_reason``)."""
    choices = chunk.get("choices")
    return bool(choices and isinstance(choices[0], dict) and choices[0].get("finish_reason"))
