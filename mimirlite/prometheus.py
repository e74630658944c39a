"""The counters of :mod:`mimirlite.metrics` in Prometheus' text format, with ``prometheus_client``.

:class:`MetricsCollector` reads a host's, a node's, a gateway's and a client's counters when scraped
(nothing is copied on the hot path) and turns them into metric families named ``mimirlite_<part>_...``
(counters end in ``_total``; labels ``direction``, ``reason``, ``kind``, ``type``, ``model``, ``outcome``)
on its own :class:`~prometheus_client.CollectorRegistry`, not the process-wide one. :meth:`render`
gives the body and content type of an answer to ``GET /metrics``.

This module imports ``prometheus_client``: it is imported only when metrics are served (the gateway's
``/metrics``, ``node --metrics``, :mod:`mimirlite.metrics_server`).

Label values are bounded: reasons, kinds, types and outcomes are fixed words of mimirlite's code; models
are the ones a node serves or a client knows, at most :data:`~mimirlite.metrics.MAX_MODEL_LABELS` per
family (the rest count as ``other``).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from mimirlite.metrics import MAX_MODEL_LABELS, OTHER_MODEL, ChatMetrics, Histogram, HostMetrics, NodeMetrics
from mimirlite.mimir.follow import BackendState

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from mimirlite.gateway.gateway import GatewayMetrics

__all__ = [
    "CONTENT_TYPE",
    "PREFIX",
    "ClientSource",
    "GatewaySource",
    "HostSource",
    "MetricsCollector",
    "NodeSource",
]

PREFIX = "mimirlite_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The content type of :meth:`MetricsCollector.render`'s body: Prometheus' text format 0.0.4, which every
Prometheus reads (mimirlite's names and labels are plain ASCII, so the body is the same in 1.0.0)."""


class HostSource(Protocol):
    """What the collector reads of a host (a :class:`~mimirlite.net.host.Host`)."""

    @property
    def metrics(self) -> HostMetrics: ...


class NodeSource(Protocol):
    """What the collector reads of a node (a :class:`~mimirlite.mimir.node.MimirNode`)."""

    @property
    def metrics(self) -> NodeMetrics: ...

    @property
    def models(self) -> Sequence[str]: ...

    @property
    def backend_state(self) -> BackendState: ...


class GatewaySource(Protocol):
    """What the collector reads of a gateway (a :class:`~mimirlite.gateway.Gateway`)."""

    @property
    def metrics(self) -> GatewayMetrics: ...

    @property
    def active_requests(self) -> int: ...

    @property
    def open_connections(self) -> int: ...


class ClientSource(Protocol):
    """What the collector reads of a client (a :class:`~mimirlite.mimir.client.MimirClient`)."""

    @property
    def nodes(self) -> Mapping[Any, Sequence[str]]: ...


class MetricsCollector(Collector):
    """Serves the counters of ``host`` (``mimirlite_host_*``), ``node`` (``mimirlite_node_*``),
    ``gateway`` (``mimirlite_gateway_*``) and ``client`` (``mimirlite_client_*``: the nodes it knows, per
    model), each optional, on :attr:`registry` (its own)."""

    def __init__(
        self,
        *,
        host: HostSource | None = None,
        node: NodeSource | None = None,
        gateway: GatewaySource | None = None,
        client: ClientSource | None = None,
    ) -> None:
        self.host = host
        self.node = node
        self.gateway = gateway
        self.client = client
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the families are made at each scrape."""
        return ()

    def collect(self) -> Iterable[Metric]:
        if self.host is not None:
            yield from _host(self.host.metrics)
        if self.node is not None:
            yield from _node(self.node.metrics, self.node.models, self.node.backend_state)
        if self.gateway is not None:
            yield from _gateway(self.gateway)
        if self.client is not None:
            yield from _client(self.client.nodes)

    def render(self) -> tuple[bytes, str]:
        """The body of an answer to a scrape, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE


# ---- the families ----


def _counter(name: str, doc: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _by(name: str, doc: str, label: str, counts: Mapping[str, int], *, gauge: bool = False) -> Metric:
    """A counter (or gauge) family with one sample per key of ``counts`` (keys are fixed words)."""
    family: CounterMetricFamily | GaugeMetricFamily
    if gauge:
        family = GaugeMetricFamily(PREFIX + name, doc, labels=[label])
    else:
        family = CounterMetricFamily(PREFIX + name, doc, labels=[label])
    for key, n in sorted((str(k), v) for k, v in counts.items()):
        family.add_metric([key], n)
    return family


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(PREFIX + name, doc)
    buckets = [(_le(bound), n) for bound, n in hist.cumulative()]
    family.add_metric([], buckets, sum_value=hist.sum)
    return family


def _le(bound: float) -> str:
    """A bucket's bound as Prometheus writes it (``0.5``, ``10.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _host(m: HostMetrics) -> Iterator[Metric]:
    p = "host_"
    yield _by(
        p + "connections_opened",
        "Connections upgraded, by who opened them.",
        "direction",
        m.connections_opened_by_direction,
    )
    yield _by(
        p + "connections_open",
        "Connections open now, by who opened them.",
        "direction",
        m.connections_current_by_direction,
        gauge=True,
    )
    yield _by(p + "connections_closed", "Connections ended, by how they ended.", "reason", m.closed)
    yield _by(
        p + "streams_opened",
        "Streams opened, by who opened them.",
        "direction",
        m.streams_opened_by_direction,
    )
    yield _by(
        p + "streams_open",
        "Streams open now, by who opened them.",
        "direction",
        m.streams_current_by_direction,
        gauge=True,
    )
    yield _counter(p + "received_bytes", "Bytes read from sockets (encrypted, framing included).", m.bytes_in)
    yield _counter(p + "sent_bytes", "Bytes written to sockets (encrypted, framing included).", m.bytes_out)
    yield _counter(p + "pings_answered", "yamux pings of remote peers answered.", m.pings_answered)
    yield _by(p + "refused", "Work turned away at a limit, by reason.", "reason", m.refused)
    yield _by(p + "protocol_errors", "Peer misbehaviour, by kind.", "kind", m.protocol_errors)


def _node(m: NodeMetrics, models: Sequence[str], backend: BackendState) -> Iterator[Metric]:
    p = "node_"
    yield _counter(p + "requests", "Chat and tunnel requests read.", m.requests)
    yield from _chats(p, m.chats, "Chat and tunnel requests, by served model and outcome.")
    yield _gauge(p + "chats_in_flight", "Chats answered now.", m.in_flight)
    yield _gauge(p + "chats_queued", "Chats waiting for a place.", m.waiting)
    yield _by(p + "refused", "Chats refused at a limit, by reason.", "reason", m.refused)
    yield _by(p + "backend_errors", "Answers that failed, by error type.", "type", m.backend_errors)
    yield _by(p + "ended", "Running chats ended to make room, by reason.", "reason", m.ended)
    yield _counter(p + "identify_answered", "MimirLLM identify queries answered.", m.identify_answered)
    served = GaugeMetricFamily(
        PREFIX + p + "model_served", "1 for each model this node serves.", labels=["model"]
    )
    for model in sorted(set(models))[:MAX_MODEL_LABELS]:
        served.add_metric([model], 1)
    yield served
    state = GaugeMetricFamily(
        PREFIX + p + "backend_state",
        "1 for the state the node's backend is in: up, down (not answering; its models still served) or "
        "gone (down past the grace period; no model served).",
        labels=["state"],
    )
    for each in BackendState:
        state.add_metric([each.value], 1 if each is backend else 0)
    yield state


def _chats(prefix: str, chats: ChatMetrics, doc: str) -> Iterator[Metric]:
    family = CounterMetricFamily(PREFIX + prefix + "chats", doc, labels=["model", "outcome"])
    for (model, outcome), n in sorted((tuple(map(str, k)), v) for k, v in chats.counts.items()):
        family.add_metric([model, outcome], n)
    yield family
    yield _histogram(
        prefix + "time_to_first_chunk_seconds",
        "Seconds from a request read to the first chunk of its answer sent.",
        chats.first_chunk,
    )
    yield _histogram(
        prefix + "chat_duration_seconds",
        "Seconds from a request read to the end of its answer (answered to the end).",
        chats.duration,
    )


def _gateway(gateway: GatewaySource) -> Iterator[Metric]:
    m = gateway.metrics
    p = "gateway_"
    yield _counter(p + "connections_opened", "HTTP connections accepted.", m.connections_opened)
    yield _gauge(p + "connections_open", "HTTP connections open now.", gateway.open_connections)
    yield _counter(p + "requests", "HTTP requests routed.", m.requests)
    yield _gauge(p + "requests_in_flight", "HTTP requests being answered now.", gateway.active_requests)
    yield _counter(p + "received_bytes", "Bytes read from HTTP clients.", m.bytes_in)
    yield _by(p + "refused", "HTTP requests and connections turned away, by reason.", "reason", m.refused)
    yield from _chats(p, m.chats, "Chat requests, by model (a known node serves it, else other) and outcome.")


def _client(nodes: Mapping[Any, Sequence[str]]) -> Iterator[Metric]:
    p = "client_"
    yield _gauge(p + "nodes", "Nodes known.", len(nodes))
    per_model: collections.Counter[str] = collections.Counter()
    for models in nodes.values():
        per_model.update(set(models))
    family = GaugeMetricFamily(
        PREFIX + p + "model_nodes", "Known nodes serving each model.", labels=["model"]
    )
    ranked = sorted(per_model.items(), key=lambda item: (-item[1], item[0]))
    for model, n in ranked[:MAX_MODEL_LABELS]:
        family.add_metric([model], n)
    rest = ranked[MAX_MODEL_LABELS:]
    if rest:  # a node announcing ever more names counts them under one label
        family.add_metric([OTHER_MODEL], sum(n for _, n in rest))
    yield family
