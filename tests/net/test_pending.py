"""The pending-handshake table and the refusal-log throttle, sans-IO: time is passed in, no sockets."""

from __future__ import annotations

from mimirlite.net.pending import YOUNG, Admission, LogThrottle, PendingHandshakes, source_of

STALL = 3.0


def table(total: int = 4, per_source: int = 2) -> PendingHandshakes[str]:
    return PendingHandshakes(total, per_source, STALL)


def test_admits_up_to_the_limits() -> None:
    t = table()
    assert t.admit("a1", "A", 0.0)[:2] == (None, None)
    assert t.admit("b1", "B", 0.0)[:2] == (None, None)
    assert len(t) == 2 and t.count("A") == 1 and "a1" in t


def test_a_full_source_evicts_its_oldest_stalled_connection() -> None:
    t = table(per_source=2)
    t.admit("a1", "A", 0.0)
    t.admit("a2", "A", 1.0)
    t.admit("b1", "B", 0.5)
    # nothing completed yet: every one is stalled; the oldest of that source goes
    assert t.admit("a3", "A", 2.0) == Admission(None, "a1", 2.0)  # a1 quiet for 2 s
    assert "a1" not in t and t.count("A") == 2 and "b1" in t


def test_a_progressing_connection_is_not_evicted() -> None:
    t = table(total=3, per_source=2)
    t.admit("a1", "A", 0.0)
    t.admit("a2", "A", 0.0)
    t.progress("a1", 0.1)  # a1 completed a step; a2 only dribbles (no step)
    assert t.admit("a3", "A", 1.0)[:2] == (None, "a2")
    t.progress("a3", 1.1)
    # A's pending ones all progress: A may go over its share while the table has room ...
    assert t.admit("a4", "A", 2.0)[:2] == (None, None)
    t.progress("a4", 2.0)
    # ... not past the total
    assert t.admit("a5", "A", 2.1)[:2] == ("pending_handshakes_per_ip", None)
    assert set(t._all) == {"a1", "a3", "a4"}


def test_over_share_is_given_back_to_another_source() -> None:
    t = table(total=3, per_source=1)
    for key in ("a1", "a2", "a3"):  # a burst from A, every one progressing
        assert t.admit(key, "A", 0.0)[:2] == (None, None)
        t.progress(key, 0.0)
    assert t.admit("b1", "B", 0.1)[:2] == (None, "a3")  # A's newest, over its share, goes
    t.progress("b1", 0.1)
    assert t.admit("c1", "C", 0.2)[:2] == (None, "a2")
    t.progress("c1", 0.2)
    # every source within its share and progressing: now a newcomer is refused
    assert t.admit("d1", "D", 0.3)[:2] == ("pending_handshakes", None)


def test_progress_goes_stale() -> None:
    t = table(total=1, per_source=1)
    t.admit("a1", "A", 0.0)
    t.progress("a1", 1.0)
    assert not t.stalled("a1", 1.0 + STALL - 0.01)
    assert t.admit("a2", "A", 1.0 + STALL - 0.01).refused == "pending_handshakes_per_ip"
    assert t.stalled("a1", 1.0 + STALL)
    assert t.admit("a2", "A", 1.0 + STALL)[:2] == (None, "a1")


def test_a_full_table_evicts_the_oldest_stalled_of_any_source() -> None:
    t = table(total=3, per_source=2)
    t.admit("a1", "A", 0.0)
    t.admit("b1", "B", 1.0)
    t.admit("c1", "C", 2.0)
    t.progress("a1", 2.0)
    assert t.admit("d1", "D", 3.0)[:2] == (None, "b1")
    for key in ("c1", "d1"):
        t.progress(key, 3.0)
    assert t.admit("e1", "E", 3.5)[:2] == ("pending_handshakes", None)


def test_zero_admits_nobody() -> None:
    assert table(total=0).admit("a", "A", 0.0).refused == "pending_handshakes"
    assert table(per_source=0).admit("a", "A", 0.0).refused == "pending_handshakes_per_ip"


def test_remove_and_progress_after_leaving() -> None:
    t = table()
    t.admit("a1", "A", 0.0)
    t.remove("a1")
    t.remove("a1")
    t.progress("a1", 1.0)
    assert len(t) == 0 and t.count("A") == 0 and t._by_source == {}


def test_sources() -> None:
    assert source_of("127.0.0.2") == "127.0.0.2"
    assert source_of("2001:db8::1") == source_of("2001:db8::ffff") == "2001:db8::/64"
    assert source_of("2001:db8:0:1::1") == "2001:db8:0:1::/64"
    assert source_of("::ffff:10.0.0.1") == "10.0.0.1"
    assert source_of("fe80::1%eth0") == "fe80::/64"
    assert source_of("not an address") == "not an address"


def test_log_throttle() -> None:
    th = LogThrottle(10.0)
    assert th.allow("evicted", 0.0)
    assert not th.allow("evicted", 1.0)
    assert not th.allow("evicted", 2.0)
    assert th.allow("other", 2.0)
    assert th.next_due() == 10.0
    assert th.due(9.9) == []
    assert th.due(10.0) == [("evicted", 2)]
    assert th.next_due() is None
    assert th.allow("evicted", 10.5)  # a new interval
    assert th.due(20.5) == []  # nothing held back: no summary


def test_a_connection_with_unread_bytes_is_not_evicted() -> None:
    t = table(total=2, per_source=2)
    t.admit("a1", "A", 0.0)
    t.admit("a2", "A", 0.0)
    # a1's first message has arrived but is not processed yet: a2 goes instead
    assert t.admit("a3", "A", YOUNG, busy=lambda k: k == "a1")[:2] == (None, "a2")
    assert t.admit("a4", "A", 2 * YOUNG, busy=lambda k: True).refused == "pending_handshakes_per_ip"


def test_a_silent_newcomer_takes_only_a_place_silent_for_young_seconds() -> None:
    t = table(total=8, per_source=2)
    t.admit("a1", "A", 0.0)
    t.admit("a2", "A", 0.0)
    # an honest burst: a moment old, nothing sent yet; the next dial of the burst goes over the share
    assert t.admit("a3", "A", 0.01)[:2] == (None, None)
    # once the first ones were silent for YOUNG seconds, a silent newcomer takes the oldest place
    assert t.admit("a4", "A", YOUNG)[:2] == (None, "a1")


def test_an_eager_newcomer_takes_a_silent_place_at_once() -> None:
    t = table(total=2, per_source=2)
    t.admit("a1", "A", 0.0)
    t.admit("a2", "A", 0.0)
    assert t.admit("a3", "A", 0.01).refused == "pending_handshakes_per_ip"  # silent: refused
    assert t.admit("a3", "A", 0.01, eager=True)[:2] == (None, "a1")  # it spoke already: a1 goes
