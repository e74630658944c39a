"""Fair shares of a node: chat places and streams one peer (or one address) cannot hold against others.

The pure bookkeeping (:class:`~mimirlite.mimir.limits.Admission`, the host's stream shares) with literal
times, then real hosts and a real node on 127.0.0.1: a peer holding every chat place with answers it
never reads, on 4 connections, does not keep another peer's chat out; a stalled reader is ended only
while others wait; a busy peer that reads is never cut; one connection opening streams up to its limit
leaves room for everyone else.
"""

from __future__ import annotations

import pytest

from mimirlite.mimir import NodeLimits, packets
from mimirlite.mimir.limits import FAIR_SHARE, STALLED, Admission, Refusal, Ticket


def tickets(adm: Admission, *arrivals: tuple[str, str]) -> list[Ticket]:
    """``(peer, ip)`` arrivals at time 0, each taken (admitted or waiting)."""
    out = []
    for peer, ip in arrivals:
        t = adm.arrive(peer, 0.0, ip)
        assert isinstance(t, Ticket)
        out.append(t)
    return out


# ---------------------------------------------------------------- the bookkeeping


def test_a_freed_place_goes_to_the_least_served_peer_not_the_first_in_line() -> None:
    adm = Admission(NodeLimits(max_concurrent=2, queue=10))
    h1, h2, h3, h4, w = tickets(adm, ("h", "ip"), ("h", "ip"), ("h", "ip"), ("h", "ip"), ("w", "ip"))
    assert (h1.admitted, h2.admitted, h3.admitted, w.admitted) == (True, True, False, False)
    assert adm.leave(h1) == [w]  # w holds no place, h holds one: w goes first though h3 came earlier
    assert adm.leave(h2) == [h3]  # then h's own, in their order
    assert adm.leave(w) == [h4]
    assert (adm.running, adm.waiting, adm.holding("h")) == (2, 0, 2)


def test_a_freed_place_goes_to_the_least_served_address_first() -> None:
    adm = Admission(NodeLimits(max_concurrent=3, queue=10))
    # a1 and a3 (one address) and b (another) hold the places; a2 (a new peer at the busy address)
    # waits before c (a new peer at the other one)
    a1, _, b, a2, c = tickets(adm, ("a1", "X"), ("a3", "X"), ("b", "Y"), ("a2", "X"), ("c", "Y"))
    assert adm.leave(b) == [c]  # Y now holds nothing, X two: c first
    assert adm.leave(a1) == [a2]


def test_nothing_is_ended_while_nobody_waits() -> None:
    adm = Admission(NodeLimits(max_concurrent=2, queue=10, stall_timeout=30.0))
    a, b = tickets(adm, ("h", "ip"), ("h", "ip"))
    review = adm.review(1000.0, {a: 0.0, b: 0.0})  # stalled for 1000 s, but nobody waits
    assert (review.ended, review.admitted, review.next_review) == ([], [], None)
    assert a.ended is None and adm.running == 2


def test_a_peer_over_its_share_loses_its_stalled_chats_to_a_waiting_peer() -> None:
    adm = Admission(NodeLimits(max_concurrent=4, queue=10, stall_grace=2.0))
    held = tickets(adm, *[("h", "ip")] * 4)
    [w] = tickets(adm, ("w", "ip2"))
    stalled = {t: 5.0 + i for i, t in enumerate(held)}  # h's readers stopped at 5, 6, 7 and 8
    # at 6.5 no reader has been stalled for the grace: nothing ended, look again when the first is due
    early = adm.review(6.5, stalled)
    assert (early.ended, early.next_review) == ([], 7.0)
    # at 7.5 the first has: it is ended (one is enough for the one waiting) and w gets its place
    review = adm.review(7.5, stalled)
    [end] = review.ended
    assert end.ticket is held[0] and held[0].ended is end and held[0].done
    assert (end.reason, end.type) == (FAIR_SHARE, packets.OVERLOADED)
    assert end.message == (
        "ended to serve others: your reader took nothing for 2.5 s "
        "(this peer held more than its share of 4 places while others waited)"
    )
    assert review.admitted == [w] and w.admitted
    assert review.next_review is None  # nobody waits any more
    assert (adm.running, adm.holding("h"), adm.holding("w")) == (4, 3, 1)
    adm.leave(held[0])  # the chat's handler leaves too, later: nothing changes
    assert (adm.running, adm.in_progress("h")) == (4, 3)


def test_only_as_many_are_ended_as_wait_and_never_below_the_share() -> None:
    adm = Admission(NodeLimits(max_concurrent=4, queue=10, stall_grace=1.0, stall_timeout=None))
    held = tickets(adm, *[("h", "ip")] * 4)
    waiting = tickets(adm, ("w1", "ip2"), ("w2", "ip3"), ("w3", "ip4"), ("w4", "ip5"))
    review = adm.review(10.0, dict.fromkeys(held, 0.0))
    # 5 peers: a share is 4/5 of a place, rounded up to one; ending 3 leaves h one, its share
    assert len(review.ended) == 3 and review.admitted == waiting[:3]
    assert (adm.holding("h"), adm.waiting) == (1, 1)
    assert adm.review(20.0, {held[3]: 0.0}).ended == []  # h's last place is within its share
    assert adm.review(20.0, {}).next_review == 21.0  # while w4 waits, the running ones are looked at


def test_a_peer_waiting_for_itself_is_not_cut_short_but_the_stall_timeout_applies() -> None:
    adm = Admission(NodeLimits(max_concurrent=2, queue=10, stall_grace=1.0, stall_timeout=30.0))
    a, _, own = tickets(adm, ("gw", "ip"), ("gw", "ip"), ("gw", "ip"))  # a gateway: one peer, many users
    stalled = {a: 0.0}
    assert adm.review(10.0, stalled).ended == []  # its own request waits: no share to take back
    assert adm.review(10.0, stalled).next_review == 11.0
    review = adm.review(30.0, stalled)
    [end] = review.ended
    assert (end.ticket, end.reason, review.admitted) == (a, STALLED, [own])
    assert end.message == ("ended to serve others: your reader took nothing for 30 s (stall_timeout 30 s)")


def test_a_stalled_chat_within_its_share_is_ended_at_the_stall_timeout_only() -> None:
    adm = Admission(NodeLimits(max_concurrent=4, queue=10, stall_grace=1.0, stall_timeout=30.0))
    slow, *_ = tickets(adm, ("slow", "A"), ("r", "B"), ("r", "B"), ("r", "B"))
    [w] = tickets(adm, ("w", "C"))
    stalled = {slow: 0.0}  # slow holds one place, below its share (4/3): only the timeout ends it
    review = adm.review(29.0, stalled)
    assert (review.ended, review.next_review) == ([], 30.0)
    review = adm.review(30.0, stalled)
    assert [e.ticket for e in review.ended] == [slow] and review.admitted == [w]


def test_the_stall_timeout_can_be_turned_off_and_limits_are_checked() -> None:
    adm = Admission(NodeLimits(max_concurrent=1, queue=10, stall_timeout=None))
    a, _ = tickets(adm, ("a", "X"), ("a", "X"))
    assert adm.review(1e9, {a: 0.0}).ended == []
    assert NodeLimits().stall_timeout == 30.0 and NodeLimits().stall_grace == 2.0
    for bad in ({"stall_timeout": 0.0}, {"stall_grace": -1.0}, {"ended_linger": float("inf")}):
        with pytest.raises(Exception, match="must be a positive number of seconds"):
            NodeLimits(**bad)  # type: ignore[arg-type]


def test_the_existing_limits_still_refuse_first() -> None:
    adm = Admission(NodeLimits(max_concurrent=1, queue=1))
    tickets(adm, ("a", "X"), ("b", "Y"))
    assert isinstance(adm.arrive("c", 0.0, "Z"), Refusal)
