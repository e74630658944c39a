"""The iterative Kademlia lookup, sans-IO, on a fake clock: a synchronous driver runs it over a simulated
network (peers with their own routing knowledge, latencies, dead, slow and hostile peers) and checks the
rules on every call: alpha in flight at most, queries closest first, never us, never twice, candidates
bounded, one finish, nothing after it."""

from __future__ import annotations

import heapq
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimirlite.errors import LocalError
from mimirlite.identity import PeerId
from mimirlite.protocols.kad.lookup import (
    FinishReason,
    Lookup,
    LookupConfig,
    LookupFinished,
    LookupState,
    Query,
)
from mimirlite.protocols.kad.routing import K, kad_key, peer_key


def fake_peer(rng: random.Random) -> PeerId:
    """A peer ID as an RSA key's would be (sha2-256 multihash): cheap to make by the thousand."""
    return PeerId(b"\x12\x20" + rng.randbytes(32))


def key_int(peer: PeerId) -> int:
    return int.from_bytes(peer_key(peer), "big")


LOCAL = fake_peer(random.Random("local"))


# ---- the simulated network ----


@dataclass
class Net:
    """Who knows whom, and how each peer behaves when asked."""

    peers: list[PeerId]
    known: dict[PeerId, list[PeerId]]
    latency: dict[PeerId, float] = field(default_factory=dict)
    silent: set[PeerId] = field(default_factory=set)
    """Never answer: their requests time out."""
    refusing: set[PeerId] = field(default_factory=set)
    """Fail at once (dial refused)."""
    answer: Callable[[PeerId, int], list[PeerId]] | None = None
    """Overrides how a live peer answers (hostile peers); default: its known peers closest to the target."""
    k: int = K
    pruned: bool = False
    """Whether live peers have pruned the dead from what they answer (a DHT server drops peers that fail)."""

    def live(self) -> list[PeerId]:
        return [p for p in self.peers if p not in self.silent and p not in self.refusing]

    def respond(self, peer: PeerId, target: int) -> list[PeerId]:
        if self.answer is not None:
            return self.answer(peer, target)
        known = self.known.get(peer, [])
        if self.pruned:
            known = [p for p in known if p not in self.silent and p not in self.refusing]
        return sorted(known, key=lambda p: key_int(p) ^ target)[: self.k]


def build_net(n: int, seed: object, *, k: int = K, randoms: int = 3) -> Net:
    """``n`` peers, each knowing its own ``k`` closest and ``randoms`` random peers per distance bucket (as a
    routing table does), with latencies of 10-200 ms."""
    rng = random.Random(seed)
    peers = [fake_peer(rng) for _ in range(n)]
    keys = [key_int(p) for p in peers]
    known: dict[PeerId, list[PeerId]] = {}
    for i, peer in enumerate(peers):
        mine = keys[i]
        by_distance = sorted((mine ^ keys[j], j) for j in range(n) if j != i)
        chosen = {j for _, j in by_distance[:k]}
        buckets: dict[int, list[int]] = {}
        for d, j in by_distance:
            buckets.setdefault(d.bit_length(), []).append(j)
        for members in buckets.values():
            chosen.update(rng.sample(members, min(randoms, len(members))))
        known[peer] = [peers[j] for j in chosen]
    latency = {p: rng.uniform(0.01, 0.2) for p in peers}
    return Net(peers, known, latency, k=k)


@pytest.fixture(scope="module")
def net1000() -> Net:
    return build_net(1000, "net1000")


def true_closest(peers: Iterable[PeerId], target: bytes, k: int = K) -> tuple[PeerId, ...]:
    t = int.from_bytes(target, "big")
    return tuple(sorted(peers, key=lambda p: key_int(p) ^ t)[:k])


# ---- the driver ----


@dataclass
class Run:
    finished: LookupFinished
    queried: list[PeerId]
    answered: dict[PeerId, list[PeerId]]
    """Who answered in time, with what."""
    now: float
    ignored: int
    """Answers the lookup ignored (they came after the request timed out, or after the end)."""
    most_in_flight: int
    unfinished: set[PeerId]
    """Requests still in flight at the end."""


def drive(
    lookup: Lookup, net: Net, seeds: Iterable[PeerId], now: float = 0.0, *, limit: int = 100_000
) -> Run:
    """Run ``lookup`` (started from ``seeds``) to its end over ``net``, checking the rules on every event
    it emits."""
    config = lookup.config
    target = int.from_bytes(lookup.target, "big")
    pending: list[tuple[float, int, PeerId, list[PeerId] | None]] = []  # (when, seq, peer, answer | failure)
    outstanding: dict[PeerId, float] = {}  # the driver's own view of what is in flight: peer -> timeout
    queried: list[PeerId] = []
    answered: dict[PeerId, list[PeerId]] = {}
    unfinished: set[PeerId] = set()
    finished: list[LookupFinished] = []
    heard = set(seeds) - {lookup.local}  # every peer named to the lookup in time
    gone: set[PeerId] = set()  # failed or timed out
    distance: dict[PeerId, int] = {}
    crowded: list[bool] = []  # candidates full: some heard of may have been turned away for room
    seq = 0
    ignored = 0
    most = 0

    def take(events: list[Query | LookupFinished], now: float) -> None:
        nonlocal seq, most
        assert not finished, "an event after the end"
        queries = [e.peer for e in events if isinstance(e, Query)]
        ends = [e for e in events if isinstance(e, LookupFinished)]
        assert len(ends) <= 1 and (not ends or events[-1] is ends[0]), events
        distances = [key_int(p) ^ target for p in queries]
        assert distances == sorted(distances), "queries not closest first"
        crowded.append(lookup.candidates >= config.max_candidates)
        if queries and not any(crowded):  # each is among the k closest live peers heard of
            for p in heard - distance.keys():
                distance[p] = key_int(p) ^ target
            closest = heapq.nsmallest(config.k, (distance[p] for p in heard if p not in gone))
            assert all(distance[p] <= closest[-1] for p in queries), "queried beyond the k closest"
        for peer in queries:
            assert peer != lookup.local, "queried ourselves"
            assert peer not in queried, "queried twice"
            queried.append(peer)
            outstanding[peer] = now + config.request_timeout
            seq += 1
            if peer in net.refusing:
                heapq.heappush(pending, (now + 0.005, seq, peer, None))
            elif peer not in net.silent:
                answer = net.respond(peer, target)
                heapq.heappush(pending, (now + net.latency.get(peer, 0.05), seq, peer, answer))
        most = max(most, len(outstanding))
        assert len(outstanding) <= config.alpha, "more than alpha in flight"
        assert lookup.candidates <= config.max_candidates
        assert lookup.asked == len(queried) <= config.max_asked
        if ends:
            finished.append(ends[0])
            unfinished.update(outstanding)
            assert lookup.state is LookupState.FINISHED

    take(lookup.start(now), now)
    for _ in range(limit):
        if finished:
            break
        timer = lookup.get_timer()
        assert timer is not None and timer >= now
        if pending and pending[0][0] < timer:
            now, _, peer, answer = heapq.heappop(pending)
            live = outstanding.pop(peer, None) is not None
            if answer is None:
                events = lookup.receive_failure(peer, now)
            else:
                events = lookup.receive_response(peer, answer, now)
            if live:
                if answer is None:
                    gone.add(peer)
                else:
                    heard.update(p for p in answer if p != lookup.local)
            else:
                assert events == [], "a late answer was not ignored"
                ignored += 1
            if live and answer is not None:
                answered[peer] = answer
            take(events, now)
        else:
            now = timer
            for peer, due in list(outstanding.items()):
                if due <= now:
                    del outstanding[peer]
                    gone.add(peer)
            take(lookup.handle_timer(now), now)
    else:
        raise AssertionError("the lookup did not end")
    # after the end: every input is ignored, no timer
    assert lookup.get_timer() is None
    while pending:
        when, _, peer, answer = heapq.heappop(pending)
        events = (
            lookup.receive_failure(peer, when)
            if answer is None
            else lookup.receive_response(peer, answer, when)
        )
        assert events == []
        ignored += 1
    assert lookup.handle_timer(now + 1e6) == [] and lookup.stop(now) == []
    closest = finished[0].closest
    assert len(closest) <= config.k and len(set(closest)) == len(closest)
    assert set(closest) <= answered.keys(), "a result that never answered"
    assert [key_int(p) ^ target for p in closest] == sorted(key_int(p) ^ target for p in closest)
    assert lookup.state is LookupState.FINISHED
    return Run(finished[0], queried, answered, now, ignored, most, unfinished)


def random_target(rng: random.Random) -> bytes:
    return kad_key(rng.randbytes(16))


# ---- convergence ----


@pytest.mark.parametrize("alpha", [1, 3, 8])
def test_finds_the_true_k_closest_of_1000_asking_few(net1000: Net, alpha: int) -> None:
    rng = random.Random(f"converge{alpha}")
    config = LookupConfig(alpha=alpha)
    targets = [random_target(rng) for _ in range(12)] + [peer_key(rng.choice(net1000.peers))]
    for target in targets:
        seed = rng.choice(net1000.peers)
        lookup = Lookup(target, LOCAL, [seed], 0.0, config)
        run = drive(lookup, net1000, [seed])
        assert run.finished.reason is FinishReason.CONVERGED
        assert run.finished.closest == true_closest(net1000.peers, target)
        assert lookup.closest()[:K] == list(run.finished.closest)
        assert len(run.queried) <= 60, len(run.queried)  # of 1000 peers; measured 20-31 at alpha 3
        assert run.most_in_flight == alpha  # used, never exceeded (drive checks every step)
        assert not lookup.failed


def test_a_smaller_k_finds_the_k_closest(net1000: Net) -> None:
    rng = random.Random("k5")
    for _ in range(5):
        target = random_target(rng)
        seeds = rng.sample(net1000.peers, 3)
        run = drive(Lookup(target, LOCAL, seeds, 0.0, LookupConfig(k=5)), net1000, seeds)
        assert run.finished.reason is FinishReason.CONVERGED
        assert run.finished.closest == true_closest(net1000.peers, target, 5)


def test_a_network_smaller_than_k_is_exhausted_with_every_peer() -> None:
    rng = random.Random("small")
    peers = [fake_peer(rng) for _ in range(6)]
    net = Net(peers, {p: [q for q in peers if q != p] for p in peers})
    target = random_target(rng)
    run = drive(Lookup(target, LOCAL, peers[:1], 0.0), net, peers[:1])
    assert run.finished.reason is FinishReason.EXHAUSTED
    assert run.finished.closest == true_closest(peers, target)


# ---- failures and timeouts ----


def with_dead(net: Net, seed: str, *, silent: bool, pruned: bool) -> Net:
    """``net`` with a random third of its peers dead: ``silent`` (requests time out) or refusing (fail at
    once); ``pruned``: the live peers no longer list them in their answers."""
    dead = set(random.Random(seed).sample(net.peers, len(net.peers) // 3))
    if silent:
        return Net(net.peers, net.known, net.latency, silent=dead, pruned=pruned)
    return Net(net.peers, net.known, net.latency, refusing=dead, pruned=pruned)


@pytest.mark.parametrize("silent", [True, False], ids=["silent", "refusing"])
def test_a_third_dead_still_finds_the_k_closest_live(net1000: Net, silent: bool) -> None:
    # the servers have dropped the dead from their tables (as a DHT server does with peers that fail);
    # our own has not: we know 200 peers, a third of them dead, and seed with the k closest of those
    net = with_dead(net1000, f"dead{silent}", silent=silent, pruned=True)
    dead = net.silent | net.refusing
    rng = random.Random(f"third{silent}")
    table = rng.sample(net.peers, 200)
    failed = 0
    for _ in range(6):
        target = random_target(rng)
        seeds = true_closest(table, target)
        lookup = Lookup(target, LOCAL, seeds, 0.0)
        run = drive(lookup, net, seeds)
        assert run.finished.reason is FinishReason.CONVERGED
        assert run.finished.closest == true_closest(net.live(), target)
        assert lookup.failed == {p for p in run.queried if p in dead} - run.unfinished
        failed += len(lookup.failed)
        if silent and lookup.failed:  # they failed by timing out, through get_timer/handle_timer
            assert run.now >= lookup.config.request_timeout
    assert failed >= 6


@pytest.mark.parametrize("silent", [True, False], ids=["silent", "refusing"])
def test_a_third_dead_and_still_listed_finds_the_closest_live_heard_of(net1000: Net, silent: bool) -> None:
    # every table still lists the dead: answers carry them, each costs a request, and a live peer only the
    # dead would have named can stay unknown; the lookup still ends with the k closest live it heard of
    net = with_dead(net1000, f"stale{silent}", silent=silent, pruned=False)
    dead = net.silent | net.refusing
    rng = random.Random(f"stale{silent}")
    found = []
    for _ in range(10):
        target = random_target(rng)
        seeds = [rng.choice(net.live())]
        lookup = Lookup(target, LOCAL, seeds, 0.0, LookupConfig(deadline=60.0))
        run = drive(lookup, net, seeds)
        # exhausted: fewer than k live peers were named at all
        assert run.finished.reason in (FinishReason.CONVERGED, FinishReason.EXHAUSTED)
        heard = {p for answer in run.answered.values() for p in answer} - dead
        assert run.finished.closest == true_closest(heard, target)
        assert lookup.failed == {p for p in run.queried if p in dead} - run.unfinished
        found.append(len(set(run.finished.closest) & set(true_closest(net.live(), target))))
    assert min(found) >= 16 and sum(found) >= 19 * len(found), found  # measured: 16-20, mean 19.9


def test_slow_peers_time_out_and_their_late_answers_are_ignored(net1000: Net) -> None:
    rng = random.Random("slow")
    slow = set(rng.sample(net1000.peers, 100))
    latency = {p: (7.0 if p in slow else t) for p, t in net1000.latency.items()}  # past the 3 s timeout
    net = Net(net1000.peers, net1000.known, latency)
    ignored = 0
    for _ in range(6):
        target = random_target(rng)
        seeds = [rng.choice(net1000.peers)]
        lookup = Lookup(target, LOCAL, seeds, 0.0)
        run = drive(lookup, net, seeds)  # fails if a late answer is not ignored
        assert lookup.failed == {p for p in run.queried if p in slow} - run.unfinished
        heard = {p for answer in run.answered.values() for p in answer} - slow
        assert run.finished.closest == true_closest(heard, target)
        ignored += run.ignored
    assert ignored > 0


def test_only_dead_seeds_exhausts_with_nothing(net1000: Net) -> None:
    seeds = net1000.peers[:5]
    net = Net(net1000.peers, net1000.known, net1000.latency, silent=set(seeds))
    lookup = Lookup(random_target(random.Random(1)), LOCAL, seeds, 0.0)
    run = drive(lookup, net, seeds)
    assert run.finished == LookupFinished((), FinishReason.EXHAUSTED)
    assert lookup.failed == set(seeds)
    assert run.now == 2 * lookup.config.request_timeout  # 3 then 2, alpha at a time


def test_the_deadline_ends_a_lookup_stuck_on_silent_peers(net1000: Net) -> None:
    config = LookupConfig(request_timeout=5.0, deadline=12.0)
    lookup = Lookup(random_target(random.Random(2)), LOCAL, net1000.peers[:50], 100.0, config)
    assert lookup.get_timer() == 112.0
    assert len(lookup.start(100.0)) == 3
    assert lookup.get_timer() == 105.0
    assert lookup.handle_timer(104.9) == []
    assert [type(e) for e in lookup.handle_timer(105.0)] == [Query] * 3
    assert lookup.get_timer() == 110.0
    assert [type(e) for e in lookup.handle_timer(110.0)] == [Query] * 3
    assert lookup.get_timer() == 112.0  # the deadline comes before the next timeouts (115)
    assert lookup.handle_timer(112.0) == [LookupFinished((), FinishReason.DEADLINE)]
    assert lookup.asked == 9 and len(lookup.failed) == 6 and lookup.get_timer() is None


# ---- hostile peers ----


def flooding(
    net: Net, count: int, seed: str, dead: set[PeerId] | None = None
) -> Callable[[PeerId, int], list[PeerId]]:
    """Every peer of ``net`` answers as it would plus ``count`` fresh random peer IDs: made up (added to
    ``dead``), or live ones that, asked in turn, answer ``count`` fresh ones."""
    rng = random.Random(seed)
    members = set(net.peers)

    def answer(peer: PeerId, target: int) -> list[PeerId]:
        fresh = [fake_peer(rng) for _ in range(count)]
        if dead is not None:
            dead.update(fresh)
        if peer in members:
            return Net.respond(Net(net.peers, net.known), peer, target) + fresh
        return fresh

    return answer


def test_floods_of_made_up_refusing_ids_end_by_max_asked(net1000: Net) -> None:
    net = Net(net1000.peers, net1000.known, net1000.latency)
    net.answer = flooding(net, 500, "refusing", net.refusing)
    config = LookupConfig(max_candidates=60)
    lookup = Lookup(random_target(random.Random(3)), LOCAL, net.peers[:3], 0.0, config)
    run = drive(lookup, net, net.peers[:3])  # checks candidates <= 60 after every call
    assert run.finished.reason is FinishReason.MAX_ASKED
    assert lookup.asked == config.max_asked == 200 and lookup.candidates == 60
    assert run.finished.closest == true_closest(run.answered, lookup.target)
    assert run.now < config.deadline


def test_floods_of_made_up_silent_ids_end_by_the_deadline(net1000: Net) -> None:
    net = Net(net1000.peers, net1000.known, net1000.latency)
    net.answer = flooding(net, 500, "silent", net.silent)
    lookup = Lookup(random_target(random.Random(4)), LOCAL, net.peers[:3], 0.0)
    run = drive(lookup, net, net.peers[:3])
    assert run.finished.reason is FinishReason.DEADLINE
    assert run.now == lookup.config.deadline == 30.0
    assert lookup.config.max_candidates - 10 <= lookup.candidates <= lookup.config.max_candidates
    # each made-up peer holds one of the 3 slots for the 3 s timeout
    assert 0 < len(lookup.failed) <= 3 * 30 / 3.0 and lookup.asked < lookup.config.max_asked


def test_floods_of_live_flooding_ids_still_converge_in_bounded_memory(net1000: Net) -> None:
    net = Net(net1000.peers, net1000.known, net1000.latency)
    net.answer = flooding(net, 1000, "live")
    config = LookupConfig(max_candidates=50)
    lookup = Lookup(random_target(random.Random(5)), LOCAL, net.peers[:3], 0.0, config)
    run = drive(lookup, net, net.peers[:3])  # checks candidates <= 50 after every call
    # each answer's fresh ids rarely beat the k closest of all heard of: it converges, late
    assert run.finished.reason is FinishReason.CONVERGED and len(run.finished.closest) == K
    assert lookup.asked < config.max_asked


def test_peers_listing_us_or_themselves_are_not_queried(net1000: Net) -> None:
    def answer(peer: PeerId, target: int) -> list[PeerId]:
        return [LOCAL, peer, *Net.respond(net1000, peer, target)]

    net = Net(net1000.peers, net1000.known, net1000.latency, answer=answer)
    rng = random.Random("us")
    target = peer_key(LOCAL)  # we are the closest of all to our own key
    seeds = [LOCAL, rng.choice(net.peers)]
    lookup = Lookup(target, LOCAL, seeds, 0.0)
    run = drive(lookup, net, seeds)  # fails on a query to us, or to a peer asked already
    assert run.finished.reason is FinishReason.CONVERGED
    assert run.finished.closest == true_closest(net.peers, target)
    assert lookup.candidates <= lookup.config.max_candidates


def small_world(n: int, seed: str) -> tuple[list[PeerId], bytes]:
    rng = random.Random(seed)
    return [fake_peer(rng) for _ in range(n)], random_target(rng)


def test_answers_not_in_flight_are_ignored() -> None:
    (a, b, c, x, y), target = small_world(5, "ignored")
    lookup = Lookup(target, LOCAL, [a, b], 0.0, LookupConfig(alpha=1))
    (first,) = lookup.start(0.0)
    assert isinstance(first, Query) and first.peer in (a, b)
    asked = first.peer
    other = b if asked == a else a
    # never asked: ignored, nothing learnt
    assert lookup.receive_response(c, [x, y], 0.1) == []
    assert lookup.receive_failure(c, 0.1) == [] and lookup.receive_failure(other, 0.1) == []
    assert lookup.candidates == 2 and lookup.asked == 1 and not lookup.failed
    # asked: found; it lists us and itself, neither becomes a candidate (other and x are)
    events = lookup.receive_response(asked, [LOCAL, asked, x], 0.2)
    assert lookup.candidates == 2 and lookup.closest() == [asked]
    assert [type(e) for e in events] == [Query]
    assert events[0].peer in (other, x) and events[0].peer != asked  # type: ignore[union-attr]
    # twice: ignored
    assert lookup.receive_response(asked, [y], 0.3) == [] and lookup.candidates == 2
    # after the end: ignored
    assert lookup.stop(0.4) == [LookupFinished((asked,), FinishReason.STOPPED)]
    second = events[0].peer  # type: ignore[union-attr]
    assert lookup.receive_response(second, [y], 0.5) == []
    assert lookup.receive_failure(second, 0.5) == [] and lookup.handle_timer(99.0) == []
    assert lookup.stop(0.6) == [] and lookup.get_timer() is None
    assert lookup.closest() == [asked] and lookup.state is LookupState.FINISHED


def test_a_response_past_the_deadline_ends_the_lookup() -> None:
    (a, x), target = small_world(2, "late")
    lookup = Lookup(target, LOCAL, [a], 0.0, LookupConfig(request_timeout=9.0, deadline=5.0))
    assert lookup.start(1.0) == [Query(a)]
    assert lookup.get_timer() == 5.0
    assert lookup.receive_response(a, [x], 6.0) == [LookupFinished((), FinishReason.DEADLINE)]


# ---- start, stop, no seeds, config, logs ----


def test_no_seeds_or_only_ourselves_exhausts_at_once() -> None:
    _, target = small_world(0, "none")
    for seeds in ([], [LOCAL]):
        lookup = Lookup(target, LOCAL, seeds, 0.0)
        assert lookup.start(0.0) == [LookupFinished((), FinishReason.EXHAUSTED)]
        assert lookup.state is LookupState.FINISHED and lookup.get_timer() is None and lookup.asked == 0


def test_stop_ends_once_with_what_answered() -> None:
    peers, target = small_world(8, "stop")
    lookup = Lookup(target, LOCAL, peers, 0.0)
    queries = lookup.start(0.0)
    assert len(queries) == 3 and lookup.state is LookupState.RUNNING
    assert all(isinstance(q, Query) for q in queries)
    answered = queries[1].peer  # type: ignore[union-attr]
    lookup.receive_response(answered, [], 0.1)
    assert lookup.stop(0.2) == [LookupFinished((answered,), FinishReason.STOPPED)]
    assert lookup.stop(0.3) == [] and lookup.start is not None


def test_start_twice_and_bad_arguments_are_local_errors() -> None:
    peers, target = small_world(3, "misuse")
    lookup = Lookup(target, LOCAL, peers, 0.0)
    lookup.start(0.0)
    with pytest.raises(LocalError):
        lookup.start(0.0)
    with pytest.raises(LocalError):
        Lookup(target[:31], LOCAL, peers, 0.0)
    for bad in ({"k": 0}, {"alpha": 0}, {"max_asked": 0}, {"max_candidates": K - 1}, {"deadline": 0.0}):
        with pytest.raises(LocalError):
            LookupConfig(**bad)  # type: ignore[arg-type]


def test_seeds_beyond_max_candidates_keep_the_closest() -> None:
    peers, target = small_world(50, "seeds")
    lookup = Lookup(target, LOCAL, peers, 0.0, LookupConfig(k=3, max_candidates=10))
    assert lookup.candidates == 10
    queries = lookup.start(0.0)
    assert [q.peer for q in queries] == list(true_closest(peers, target, 3))  # type: ignore[union-attr]


def test_the_state_transition_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    peers, target = small_world(3, "logs")
    caplog.set_level(logging.DEBUG, logger="mimirlite.protocols.kad.lookup")
    lookup = Lookup(target, LOCAL, peers, 0.0)
    lookup.start(0.0)
    assert "running -> finished" not in caplog.text
    lookup.stop(1.0)
    assert "running -> finished" in caplog.text and "stopped" in caplog.text
    caplog.clear()
    caplog.set_level(logging.INFO, logger="mimirlite.protocols.kad.lookup")
    quiet = Lookup(target, LOCAL, peers, 0.0)
    quiet.start(0.0)
    quiet.stop(1.0)
    assert caplog.text == ""


# ---- any small network ----


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 6),
    st.integers(1, 5),
    st.integers(0, 30),
    st.integers(1, 60),
    st.randoms(use_true_random=False),
)
def test_any_network_keeps_the_rules(
    n: int, k: int, alpha: int, extra_candidates: int, max_asked: int, rng: random.Random
) -> None:
    peers = [fake_peer(rng) for _ in range(n)]
    known = {p: [q for q in [*peers, LOCAL] if q != p and rng.random() < 0.3] for p in peers}
    roles = {p: rng.choice(["ok", "ok", "ok", "silent", "refusing", "slow"]) for p in peers}
    latency = {p: (4.0 if roles[p] == "slow" else rng.uniform(0.0, 1.0)) for p in peers}
    net = Net(
        peers,
        known,
        latency,
        silent={p for p in peers if roles[p] == "silent"},
        refusing={p for p in peers if roles[p] == "refusing"},
        k=k,
    )
    config = LookupConfig(
        k=k,
        alpha=alpha,
        max_candidates=k + extra_candidates,
        max_asked=max_asked,
        request_timeout=3.0,
        deadline=rng.choice([5.0, 30.0]),
    )
    seeds = [*rng.sample(peers, rng.randint(0, n)), LOCAL]
    target = random_target(rng)
    lookup = Lookup(target, LOCAL, seeds, 0.0, config)
    run = drive(lookup, net, seeds)  # the per-call rules
    reason = run.finished.reason
    assert lookup.failed == {p for p in run.queried if roles[p] != "ok"} - run.unfinished
    if reason is FinishReason.MAX_ASKED:
        assert lookup.asked == max_asked
    if reason is FinishReason.DEADLINE:
        assert run.now == config.deadline
    if reason in (FinishReason.CONVERGED, FinishReason.EXHAUSTED) and n <= config.max_candidates:
        # nothing evicted: the result is the k closest of all that answered, and no live peer heard of and
        # closer than the last result is left unasked
        assert run.finished.closest == true_closest(run.answered, target, k)
        heard = (set(seeds) | {p for a in run.answered.values() for p in a}) - {LOCAL}
        t = int.from_bytes(target, "big")
        bound = key_int(run.finished.closest[-1]) ^ t if run.finished.closest else 0
        for p in heard:
            if reason is FinishReason.EXHAUSTED or key_int(p) ^ t < bound:
                assert p in run.queried
        assert (reason is FinishReason.CONVERGED) == (len(run.finished.closest) == k)
