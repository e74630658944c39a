"""Every limit and timeout of the network layer, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from mimirlite.wire.yamux import YamuxConfig


@dataclass(frozen=True)
class HostConfig:
    """Limits and timeouts of a Host and its connections."""

    dial_timeout: float = 10.0
    """TCP connect plus the whole upgrade (multistream, Noise, yamux)."""
    handshake_timeout: float = 10.0
    """Inbound connections that are not upgraded within this many seconds are closed."""
    negotiate_timeout: float = 10.0
    """multistream-select on a new stream, either role."""
    linger_timeout: float = 10.0
    """After we close a stream, how long we wait for the remote's end before resetting it."""
    max_connections: int = 1024
    """Established connections in all; newer inbound ones are refused."""
    max_pending_handshakes: int = 64
    """Inbound connections still upgrading; newer ones are closed at once."""
    write_buffer_high: int = 256 * 1024
    """Socket send buffer above which writers wait."""
    yamux: YamuxConfig = field(default_factory=YamuxConfig)
