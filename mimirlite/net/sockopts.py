"""TCP options every connection's socket gets: no Nagle delay, and dead-link detection by the kernel.

With a ``dead_link_timeout`` the kernel itself fails a connection whose peer stopped acknowledging:
TCP_USER_TIMEOUT bounds how long sent data may stay unacknowledged, and keepalive probes (SO_KEEPALIVE,
TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) find a dead peer on a connection with nothing to send. The
socket then fails with ETIMEDOUT (or, when our own link is down, EHOSTUNREACH and the like), which ends
the connection as a ``dead_link`` close. Options a platform lacks are skipped.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import NamedTuple

log = logging.getLogger(__name__)

DEAD_LINK_ERRNOS = frozenset(
    code
    for code in (
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        getattr(errno, "EHOSTDOWN", None),
        getattr(errno, "ENETDOWN", None),
    )
    if code is not None
)
"""Socket errors meaning the kernel gave up on the peer (no acknowledgement, or no route to it)."""

_MAX_KEEPALIVE_S = 32767  # Linux's bound on TCP_KEEPIDLE and TCP_KEEPINTVL
_MAX_PROBES = 5


class KeepaliveSchedule(NamedTuple):
    """The socket option values for one ``dead_link_timeout``."""

    idle: int
    """TCP_KEEPIDLE: seconds without traffic before the first probe."""
    interval: int
    """TCP_KEEPINTVL: seconds between probes."""
    probes: int
    """TCP_KEEPCNT: unanswered probes before the connection is dropped."""
    user_timeout_ms: int
    """TCP_USER_TIMEOUT: milliseconds sent data may stay unacknowledged."""


def keepalive_schedule(timeout: float) -> KeepaliveSchedule:
    """Probes after ``timeout / 2`` of silence, up to five more spread over the rest: a dead peer is found
    about ``timeout`` seconds after it last answered (keepalive works in whole seconds, 1 at least)."""
    idle = min(_MAX_KEEPALIVE_S, max(1, int(timeout / 2)))
    rest = max(0.0, timeout - idle)
    probes = max(1, min(_MAX_PROBES, int(rest)))
    interval = min(_MAX_KEEPALIVE_S, max(1, int(rest / probes)))
    user_timeout_ms = min(2**31 - 1, max(1, round(timeout * 1000)))
    return KeepaliveSchedule(idle, interval, probes, user_timeout_ms)


def tune_tcp_socket(sock: socket.socket, dead_link_timeout: float | None) -> None:
    """Set TCP_NODELAY on a TCP socket and, unless ``dead_link_timeout`` is None, the keepalive and
    user-timeout options of :func:`keepalive_schedule` (None leaves the OS defaults)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if dead_link_timeout is None:
        return
    schedule = keepalive_schedule(dead_link_timeout)
    options = [(socket.SOL_SOCKET, "SO_KEEPALIVE", 1)]
    options += [
        (socket.IPPROTO_TCP, "TCP_KEEPIDLE", schedule.idle),
        (socket.IPPROTO_TCP, "TCP_KEEPINTVL", schedule.interval),
        (socket.IPPROTO_TCP, "TCP_KEEPCNT", schedule.probes),
        (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", schedule.user_timeout_ms),
    ]
    for level, name, value in options:
        option = getattr(socket, name, None)
        if option is None:
            continue  # not on this platform
        try:
            sock.setsockopt(level, option, value)
        except OSError as exc:
            log.debug("cannot set %s=%d on %r: %s", name, value, sock, exc)
