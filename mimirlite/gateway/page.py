"""The chat page of the gateway: its static files, the headers they are served with, and the node list
the page shows (``GET /mimirlite/nodes``).

The files live in the package (``mimirlite/gateway/static/``), are listed here by name (:data:`STATIC`:
nothing else is ever served, no path is joined or decoded) and are read once, on first use, through
``importlib.resources``. They hold no secret: the gateway's door lets ``GET``/``HEAD`` of exactly
:data:`PUBLIC_PATHS` through without the API key; the page then asks for the key (and keeps it in the
tab's ``sessionStorage``) when an API call is answered 401.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from mimirlite.errors import MimirliteError
from mimirlite.mimir.census import node_view

if TYPE_CHECKING:
    from mimirlite.identity import PeerId
    from mimirlite.mimir.client import MimirClient

log = logging.getLogger(__name__)

STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
"""Every file served under ``/static/`` and its content type: an allowlist, compared by exact name."""
PAGE = "index.html"
"""The page ``GET /`` serves to a browser."""
STATIC_PREFIX = "/static/"
NODES_PATH = "/mimirlite/nodes"
"""The node list as JSON (:func:`node_list`); an API path: it needs the API key."""
PUBLIC_PATHS = frozenset({"/", *(STATIC_PREFIX + name for name in STATIC)})
"""The paths ``GET`` and ``HEAD`` may ask without the API key (the page and its files)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""No inline script or style, nothing from another origin, no framing: text a model sends that somehow
became markup could still run nothing."""
SECURITY_HEADERS = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-cache"),
)
"""Headers of the page and of every static file."""

PING_STALE = 10.0
"""Seconds after which a node's round trip is measured again, when the node list is asked for."""
MAX_PINGS = 8
"""Pings at once in one refresh of the node list."""


def short_peer(peer: str) -> str:
    """A peer ID's short form as go-libp2p's ``ShortString`` writes it: the first 2 and last 6
    characters (``12*Ab3xYz``)."""
    return peer if len(peer) <= 10 else f"{peer[:2]}*{peer[-6:]}"


def wants_html(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for ``text/html`` (a browser loading a page; ``*/*`` alone, as
    tools and Ollama's clients send, does not), with a quality above 0."""
    for item in (accept or "").split(","):
        kind, *params = item.split(";")
        if kind.strip().lower() != "text/html":
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value.strip()) > 0
                except ValueError:
                    return False
        return True
    return False


@functools.cache
def _read(name: str) -> bytes:
    return (resources.files("mimirlite.gateway") / "static" / name).read_bytes()


def static_file(name: str) -> tuple[list[tuple[str, str]], bytes] | None:
    """The headers and body of static file ``name`` (a name of :data:`STATIC`, nothing else: None)."""
    kind = STATIC.get(name)
    if kind is None:
        return None
    return [("content-type", kind), *SECURITY_HEADERS], _read(name)


def static_path(path: str) -> tuple[list[tuple[str, str]], bytes] | None:
    """The static file a request path (``/static/<name>``, without its query) names, or None."""
    if not path.startswith(STATIC_PREFIX):
        return None
    return static_file(path[len(STATIC_PREFIX) :])


def node_list(client: MimirClient) -> dict[str, Any]:
    """The body of ``GET /mimirlite/nodes``: ``{"nodes": [...]}``, one object per node the gateway knows,
    in peer ID order: the fields of ``mimirlite peers --json``
    (:meth:`~mimirlite.mimir.census.NodeView.to_json`: ``peer_id``, ``models``, ``generation``,
    ``connection`` (``"direct"``, ``"relayed"`` or ``"not connected"``), ``addr``, ``addrs``) and

    - ``short``: the peer ID's short form (:func:`short_peer`);
    - ``in_flight``: chats and tunnel requests the gateway has open with it now;
    - ``rtt_ms``: the last measured ping round trip in milliseconds (null: none yet);
    - ``pinged``: seconds since that ping (null: none yet).
    """
    known = client.nodes
    nodes = []
    for peer in sorted(known, key=str):
        view = node_view(client, peer, known[peer])
        rtt = client.rtt(peer)
        age = client.ping_age(peer)
        nodes.append(
            {
                **view.to_json(),
                "short": short_peer(view.peer_id),
                "in_flight": client.in_flight(peer),
                "rtt_ms": None if rtt is None else round(rtt * 1000, 3),
                "pinged": None if age is None else round(age, 1),
            }
        )
    return {"nodes": nodes}


class Repinger:
    """Keeps the node list's round trips fresh while someone looks at it: :meth:`kick` (at each
    ``GET /mimirlite/nodes``) pings, in the background, the nodes whose last ping is older than
    ``stale`` seconds, at most ``max_pings`` at once, one round at a time; a node whose ping failed is
    not tried again for ``stale`` seconds. A gateway nobody looks at sends no ping of its own."""

    def __init__(self, client: MimirClient, *, stale: float = PING_STALE, max_pings: int = MAX_PINGS) -> None:
        self.client = client
        self.stale = stale
        self.max_pings = max_pings
        self._task: asyncio.Task[None] | None = None
        self._tried: dict[PeerId, float] = {}
        self._closed = False

    def kick(self) -> None:
        """Start a round for the nodes due (unless one runs, or there is none due)."""
        if self._closed or (self._task is not None and not self._task.done()):
            return
        client = self.client
        now = time.monotonic()
        known = set(client.nodes_for())
        self._tried = {p: t for p, t in self._tried.items() if p in known and now - t < self.stale}
        due = []
        for peer in known:
            age = client.ping_age(peer)
            if (age is None or age >= self.stale) and peer not in self._tried:
                due.append(peer)
                self._tried[peer] = now
        if due:
            self._task = asyncio.get_running_loop().create_task(self._round(due), name="mimirlite-repinger")

    async def _round(self, peers: list[PeerId]) -> None:
        limit = asyncio.Semaphore(self.max_pings)

        async def one(peer: PeerId) -> None:
            async with limit:
                try:
                    await self.client.measure_rtt(peer)
                except (MimirliteError, OSError, asyncio.TimeoutError) as exc:
                    log.debug("could not ping %s: %s", peer, exc or type(exc).__name__)
                except Exception:  # a background task: a bug is logged here, not lost
                    log.exception("pinging %s failed", peer)

        await asyncio.gather(*(one(p) for p in peers))

    async def aclose(self) -> None:
        """Stop the round under way (if any); no round starts after."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
