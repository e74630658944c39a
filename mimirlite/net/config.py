"""Every limit and timeout of the network layer, in one place; and the allowlist a host may enforce."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from mimirlite.errors import InvalidKeyError, LocalError
from mimirlite.identity import PeerId
from mimirlite.wire.yamux import YamuxConfig


@dataclass(frozen=True)
class HostConfig:
    """Limits and timeouts of a Host and its connections."""

    dial_timeout: float = 10.0
    """TCP connect plus the whole upgrade (multistream, Noise, yamux)."""
    handshake_timeout: float = 10.0
    """Inbound connections that are not upgraded within this many seconds are closed."""
    handshake_step_timeout: float = 5.0
    """Each step of an upgrade, either role (a multistream message, a Noise handshake message, the muxer
    negotiation), must be completed by the peer within this many seconds of the previous one."""
    first_byte_timeout: float = 3.0
    """An inbound connection that sends nothing for this many seconds is closed; a pending one that has
    completed no handshake step yet, or none for this long, is stalled (see ``max_pending_per_ip``)."""
    negotiate_timeout: float = 10.0
    """multistream-select on a new stream, either role."""
    linger_timeout: float = 10.0
    """After we close a stream, how long we wait for the remote's end before resetting it."""
    max_connections: int = 1024
    """Established connections in all; newer inbound ones are refused."""
    max_pending_handshakes: int = 64
    """Inbound connections still upgrading, in all. A newer one evicts the oldest stalled one (no
    handshake step completed yet, or none for ``first_byte_timeout``); when none is stalled, it is closed."""
    max_pending_per_ip: int = 16
    """Inbound connections still upgrading from one IPv4 address or IPv6 /64: at the limit a newer one
    from there evicts the oldest stalled one from there; when none is stalled it is admitted only while
    ``max_pending_handshakes`` has room (and is the first evicted for another address's newcomer)."""
    max_connections_per_ip: int = 256
    """Inbound connections (upgrading or established) from one IP address; newer ones are closed at once."""
    max_streams_total: int = 4096
    """Streams open on all connections together: a newer inbound stream is reset (RST), opening a newer
    outbound one raises LimitExceededError. Per connection, ``yamux.max_streams`` applies too."""
    max_inbound_streams_per_connection: int = 512
    """Streams the remote may have open on one connection (the protocol is not known yet when a stream
    opens, so this covers them all; a gateway runs all its users' chats on one connection); a newer one is
    reset (RST)."""
    max_streams_per_peer: int = 1024
    """Inbound streams one peer may have open on all its connections together; a newer one is reset."""
    max_streams_per_ip: int = 2048
    """Inbound streams from one IP address (all its peers) together; a newer one is reset. Half of
    ``max_streams_total``: one address, however many peer IDs it uses, leaves the other half to others."""
    idle_timeout: float | None = 300.0
    """A connection that has no stream and received nothing (pings included) for this many seconds is
    closed. None: never."""
    keepalive_interval: float | None = 30.0
    """On connections we dialed, a yamux ping after this many seconds with nothing received, so that a
    connection we keep is not idle for the remote. None: no pings."""
    write_timeout: float | None = 60.0
    """A connection whose send buffer stays above ``write_buffer_high`` this long (the peer does not
    read) is aborted; a closing connection gets as long to flush. None: no limit."""
    dead_link_timeout: float | None = 60.0
    """A connection whose peer stops acknowledging for this long is closed by the kernel: TCP keepalive
    probes after half of it without traffic, TCP_USER_TIMEOUT bounds unacknowledged (or, to a peer
    whose receive window stays shut, unsent) data, and the socket fails with ETIMEDOUT (``closed``
    reason ``dead_link``). Linux; other platforms set what they have. None: the OS defaults (the
    retransmission timeout, about 15 minutes, and no keepalive)."""
    write_buffer_high: int = 256 * 1024
    """Socket send buffer above which writers wait (and frames wait in the session, see
    ``yamux.max_queued_replies``)."""
    max_buffered_total: int = 128 * 1024 * 1024
    """Bytes held on behalf of peers on all connections together (unread received data, partial requests
    included, and writes waiting for a peer's socket), as the buffers occupy them: data that would pass
    it resets its stream, the newest streams of the connection holding the most first (see
    :mod:`mimirlite.net.budget`). At least ``yamux.initial_window``. Per connection, ``yamux.max_buffered``
    applies too."""
    return_memory: bool = True
    """A listening host returns free heap pages to the OS (glibc's ``malloc_trim``, where there is one)
    once it released 16 MiB of peer data since its buffer budget's peak, so that its resident size
    falls back after peers that filled the budget leave. False: the process's allocator is left alone."""
    yamux: YamuxConfig = field(default_factory=YamuxConfig)
    max_known_peers: int = 4096
    """Peers whose addresses the host remembers (identify, the DHT, mDNS add them); past it the least
    recently added peer without an open connection is forgotten, so peers naming peers cost bounded memory."""
    max_addrs_per_peer: int = 64
    """Addresses remembered for one peer (identify's ``max_listen_addrs``); later ones are ignored."""
    allow_peers: frozenset[PeerId] | None = None
    """When set, the only peers served: an inbound connection from any other peer is closed right after
    the Noise handshake, and streams it opens on a connection we dialed are reset. None: open to all."""

    def __post_init__(self) -> None:
        limits = (
            "max_connections",
            "max_pending_handshakes",
            "max_pending_per_ip",
            "max_connections_per_ip",
            "max_streams_total",
            "max_inbound_streams_per_connection",
            "max_streams_per_peer",
            "max_streams_per_ip",
            "max_known_peers",
            "max_addrs_per_peer",
        )
        for name in limits:
            if getattr(self, name) < 0:
                raise LocalError(f"{name} must be >= 0")
        for name in ("handshake_timeout", "handshake_step_timeout", "first_byte_timeout"):
            if not 0 < getattr(self, name) < math.inf:
                raise LocalError(f"{name} must be a positive, finite number of seconds")
        for name in ("idle_timeout", "keepalive_interval", "write_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise LocalError(f"{name} must be a positive number of seconds or None")
        if self.max_buffered_total < self.yamux.initial_window:
            window = self.yamux.initial_window
            raise LocalError(f"max_buffered_total must be at least yamux.initial_window ({window})")
        dead = self.dead_link_timeout
        if dead is not None and not 0 < dead < math.inf:
            raise LocalError("dead_link_timeout must be a positive, finite number of seconds or None")
        if self.allow_peers is not None:
            if not all(isinstance(p, PeerId) for p in self.allow_peers):
                raise LocalError("allow_peers holds PeerId objects (see PeerId.from_string, load_allowlist)")
            object.__setattr__(self, "allow_peers", frozenset(self.allow_peers))


def parse_allowlist(text: str, source: str = "allowlist") -> frozenset[PeerId]:
    """Peer IDs, one a line; ``#`` starts a comment, blank lines are skipped.

    LocalError naming ``source`` and the line number on a line that is not one peer ID.
    """
    peers: set[PeerId] = set()
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 1:
            raise LocalError(f"{source}, line {number}: one peer ID a line, not {len(words)} words")
        try:
            peers.add(_peer_id(words[0]))
        except LocalError as exc:
            raise LocalError(f"{source}, line {number}: {exc}") from None
    return frozenset(peers)


def _peer_id(text: str) -> PeerId:
    try:
        return PeerId.from_string(text)
    except InvalidKeyError as exc:
        why = "" if str(exc).startswith("not a peer ID") else f" ({exc})"
        raise LocalError(f"not a peer ID: {text!r}{why}") from None


def load_allowlist(path: str | os.PathLike[str]) -> frozenset[PeerId]:
    """Read an allow file (see :func:`parse_allowlist`); OSError when it cannot be read."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LocalError(f"{os.fspath(path)}: not a text file of peer IDs") from None
    return parse_allowlist(text, os.fspath(path))


def allowlist(peers: Iterable[str] = (), files: Iterable[str | os.PathLike[str]] = ()) -> frozenset[PeerId]:
    """The peer IDs ``peers`` (text) and those of the allow ``files``; LocalError on a malformed one."""
    allowed: set[PeerId] = set()
    for text in peers:
        allowed.add(_peer_id(text.strip()))
    for path in files:
        allowed |= load_allowlist(path)
    return frozenset(allowed)
