"""Following a backend's model list (sans-IO): what a node serves after each poll of its backend, and when it
asks next. Time and randomness are passed in; :class:`~mimirlite.mimir.node.MimirNode` drives it.

A backend that answers a list is ``UP``: its models are served, asked again every ``interval`` s. One that
fails (unreachable, an error, or a list without any model) is ``DOWN``: asked again after ``first_retry`` s,
doubling up to ``interval`` (less a little jitter), its models still served for ``grace`` s from its first
failure; then ``GONE``: nothing is served, and it is still asked, every ``interval`` s, until it answers.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mimirlite.errors import LocalError

DEFAULT_INTERVAL = 30.0
"""Seconds between two polls of a backend's model list (``node --models-interval``)."""
GRACE_INTERVALS = 3
"""A backend's models stay served this many intervals after it stopped answering, unless ``grace`` says."""
FIRST_RETRY = 1.0
"""Seconds before the first retry of a backend that stopped answering; it doubles up to the interval."""
JITTER = 0.1
"""Each retry comes up to this fraction early, so that nodes of one backend do not ask in step."""
MAX_ATTEMPTS_KEPT = 64
"""Times of the latest polls kept in :attr:`ModelFollower.attempts`."""


class BackendState(enum.Enum):
    """What the node knows of its backend."""

    UP = "up"
    """The last poll listed models: they are served."""
    DOWN = "down"
    """Polls fail since :attr:`ModelFollower.down_since`: the models are still served until the grace ends."""
    GONE = "gone"
    """Polls failed for longer than the grace: no model is served until the backend answers again."""


@dataclass(frozen=True)
class FollowConfig:
    """How a node follows its backend's model list."""

    interval: float = DEFAULT_INTERVAL
    """Seconds between two polls while the backend answers (and the longest wait between retries)."""
    grace: float | None = None
    """Seconds a backend that stopped answering keeps its models listed (None: ``GRACE_INTERVALS`` x
    ``interval``; 0: they drop at the first failure)."""
    first_retry: float = FIRST_RETRY
    """Seconds before the first retry; it doubles at each failure, up to ``interval``."""
    jitter: float = JITTER
    """Each retry comes up to this fraction of its wait early (0: exactly on time)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise LocalError("the models interval must be a positive number of seconds")
        if self.grace is not None and not (math.isfinite(self.grace) and self.grace >= 0):
            raise LocalError("the models grace must be a number of seconds >= 0")
        if not (math.isfinite(self.first_retry) and self.first_retry > 0):
            raise LocalError("first_retry must be a positive number of seconds")
        if not 0 <= self.jitter < 1:
            raise LocalError("jitter must be a fraction in [0, 1)")

    @property
    def grace_period(self) -> float:
        """``grace``, or ``GRACE_INTERVALS`` x ``interval`` when not given."""
        return GRACE_INTERVALS * self.interval if self.grace is None else self.grace


@dataclass(frozen=True)
class Step:
    """What a poll's outcome asks of the node."""

    delay: float
    """Seconds until the next poll."""
    serve: tuple[str, ...] | None = None
    """The models to serve from now on (empty: none), or None when that does not change."""
    news: str | None = None
    """A change of :class:`BackendState` in words (went away, dropped, came back), to log once."""


class ModelFollower:
    """The state of one backend's model list: feed it each poll's outcome (:meth:`listed`, :meth:`failed`)
    with the time; each answer says what to serve and when to ask again."""

    def __init__(
        self,
        config: FollowConfig,
        served: Sequence[str],
        *,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.served: tuple[str, ...] = tuple(served)
        """The models served now (as this follower decided)."""
        self.state = BackendState.UP
        self.down_since: float | None = None
        """When the first of the failures under way happened (None while the backend answers)."""
        self.reason = ""
        """Why the backend is DOWN or GONE (the last failure), empty while it answers."""
        self.failures = 0
        """Failed polls in a row."""
        self.attempts: list[float] = []
        """The times of the latest polls (at most ``MAX_ATTEMPTS_KEPT``), the oldest first."""
        self._rand = rand

    @property
    def drops_at(self) -> float | None:
        """When a DOWN backend's models stop being served (None unless DOWN)."""
        if self.state is not BackendState.DOWN or self.down_since is None:
            return None
        return self.down_since + self.config.grace_period

    def _attempt(self, now: float) -> None:
        self.attempts.append(now)
        del self.attempts[:-MAX_ATTEMPTS_KEPT]

    def listed(self, models: Sequence[str], now: float) -> Step:
        """The backend answered ``models`` at ``now``; an empty list is a failure (nothing to serve)."""
        names = tuple(dict.fromkeys(models))
        if not names:
            return self.failed("the backend lists no model", now)
        self._attempt(now)
        news = None
        if self.state is not BackendState.UP:
            was = self.state
            news = f"the backend answers again ({_ago(now, self.down_since)} after it stopped)"
            if was is BackendState.GONE:
                news += f"; serving {', '.join(names)} again"
        self.state = BackendState.UP
        self.down_since = None
        self.reason = ""
        self.failures = 0
        serve = None if set(names) == set(self.served) else names
        if serve is not None:
            self.served = names
        return Step(self.config.interval, serve, news)

    def failed(self, reason: str, now: float) -> Step:
        """A poll at ``now`` failed (``reason``): back off, and drop the models once the grace is over."""
        self._attempt(now)
        self.failures += 1
        self.reason = reason
        config = self.config
        news = None
        serve = None
        if self.state is BackendState.UP:
            self.state = BackendState.DOWN
            self.down_since = now
            news = (
                f"the backend stopped answering ({reason}); retrying, "
                f"its models stay listed for {config.grace_period:g} s"
            )
        drops_at = self.drops_at
        if drops_at is not None and now >= drops_at:
            self.state = BackendState.GONE
            if self.served:
                serve = ()
                self.served = ()
            news = (
                f"the backend has not answered for {_ago(now, self.down_since)} ({reason}): "
                "serving no model until it comes back"
            )
        wait = min(config.first_retry * 2.0 ** min(self.failures - 1, 64), config.interval)
        wait *= 1.0 - config.jitter * self._rand()
        drops_at = self.drops_at
        if drops_at is not None:
            wait = min(wait, drops_at - now)  # the models drop on time, not up to an interval late
        return Step(max(wait, 0.0), serve, news)


def _ago(now: float, since: float | None) -> str:
    return "a moment" if since is None else f"{now - since:.3g} s"
