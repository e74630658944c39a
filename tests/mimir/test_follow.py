"""The sans-IO follower of a backend's model list (mimirlite/mimir/follow.py): time and randomness passed in,
so every wait, state change and log line is checked exactly."""

from __future__ import annotations

import pytest

from mimirlite.errors import LocalError
from mimirlite.mimir.follow import (
    DEFAULT_INTERVAL,
    MAX_ATTEMPTS_KEPT,
    BackendState,
    FollowConfig,
    ModelFollower,
)


def follower(**kw: float) -> ModelFollower:
    config = FollowConfig(**{"interval": 30.0, "first_retry": 1.0, "jitter": 0.0, **kw})
    return ModelFollower(config, ["a"], rand=lambda: 1.0)


def test_defaults() -> None:
    config = FollowConfig()
    assert config.interval == DEFAULT_INTERVAL == 30.0
    assert config.grace_period == 90.0
    assert FollowConfig(interval=10.0).grace_period == 30.0
    assert FollowConfig(grace=0.0).grace_period == 0.0


@pytest.mark.parametrize(
    "kw",
    [
        {"interval": 0.0},
        {"interval": -1.0},
        {"interval": float("inf")},
        {"interval": float("nan")},
        {"grace": -1.0},
        {"grace": float("nan")},
        {"first_retry": 0.0},
        {"jitter": 1.0},
        {"jitter": -0.1},
    ],
)
def test_bad_settings_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(LocalError):
        FollowConfig(**kw)


def test_an_answering_backend_is_asked_every_interval_and_changes_are_served() -> None:
    f = follower()
    step = f.listed(["a"], 30.0)
    assert (step.delay, step.serve, step.news) == (30.0, None, None)
    step = f.listed(["a", "b", "a"], 60.0)
    assert step.serve == ("a", "b") and step.news is None
    assert f.listed(["b", "a"], 90.0).serve is None  # the same models in another order: no change
    assert f.listed(["b"], 120.0).serve == ("b",)
    assert f.state is BackendState.UP and f.attempts == [30.0, 60.0, 90.0, 120.0]


def test_a_failing_backend_is_retried_with_doubling_waits_up_to_the_interval() -> None:
    f = follower(interval=10.0, grace=1000.0)
    delays = [f.failed("refused", 100.0 + i).delay for i in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert f.state is BackendState.DOWN and f.failures == 7 and f.reason == "refused"


def test_jitter_only_shortens_a_wait() -> None:
    config = FollowConfig(interval=10.0, grace=1000.0, first_retry=1.0, jitter=0.25)
    early = ModelFollower(config, ["a"], rand=lambda: 1.0)
    late = ModelFollower(config, ["a"], rand=lambda: 0.0)
    assert [early.failed("x", 0.0).delay for _ in range(6)] == [0.75, 1.5, 3.0, 6.0, 7.5, 7.5]
    assert [late.failed("x", 0.0).delay for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_the_models_stay_for_the_grace_then_drop_on_time() -> None:
    f = follower(interval=30.0, grace=5.0)
    first = f.failed("connection refused", 100.0)
    assert f.state is BackendState.DOWN and f.down_since == 100.0 and f.drops_at == 105.0
    assert first.serve is None and first.news is not None and "stopped answering" in first.news
    assert "5 s" in first.news and f.served == ("a",)
    now = 100.0
    step = first
    while f.state is BackendState.DOWN:
        now += step.delay
        assert now <= 105.0  # never asked later than the end of the grace
        step = f.failed("connection refused", now)
        if f.state is BackendState.DOWN:
            assert step.news is None and step.serve is None  # said once, not at every retry
    assert now == 105.0
    assert step.serve == () and f.served == ()
    assert step.news is not None and "serving no model" in step.news
    gone = f.failed("connection refused", now + step.delay)
    assert gone.serve is None and gone.news is None and f.drops_at is None
    assert gone.delay == 16.0  # still backing off, up to the interval


def test_a_returning_backend_is_served_again_and_said_once() -> None:
    f = follower(interval=30.0, grace=5.0)
    f.failed("refused", 100.0)
    back = f.listed(["a"], 101.0)
    assert back.serve is None and back.news is not None and "answers again" in back.news
    assert f.state is BackendState.UP and f.failures == 0 and f.down_since is None and f.reason == ""
    assert back.delay == 30.0
    for t in (200.0, 201.0, 203.0, 205.0):
        f.failed("refused", t)
    assert f.state is BackendState.GONE
    again = f.listed(["a", "c"], 300.0)
    assert again.serve == ("a", "c") and again.news is not None and "serving a, c again" in again.news
    assert f.listed(["a", "c"], 330.0).news is None


def test_an_empty_list_is_a_failure() -> None:
    f = follower(grace=0.0)
    step = f.listed([], 10.0)
    assert f.state is BackendState.GONE and step.serve == ()
    assert f.reason == "the backend lists no model"


def test_the_kept_attempts_are_bounded() -> None:
    f = follower(grace=1e9)
    for i in range(MAX_ATTEMPTS_KEPT * 3):
        f.failed("x", float(i))
    assert len(f.attempts) == MAX_ATTEMPTS_KEPT and f.attempts[-1] == MAX_ATTEMPTS_KEPT * 3 - 1
