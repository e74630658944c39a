"""The relay service's bookkeeping, sans-IO: reservations bounded in all and per address, renewed and
expired on a fake clock; circuits bounded in all and per peer, each carrying its data cap each way until
its deadline."""

from __future__ import annotations

import pytest

from mimirlite.identity import KeyPair
from mimirlite.protocols.relay.messages import Limit, Status
from mimirlite.protocols.relay.resources import (
    CircuitEnd,
    Circuits,
    Direction,
    RelayResources,
    Reservations,
)

REFUSED = Status.RESERVATION_REFUSED
PEERS = [KeyPair.generate().peer_id for _ in range(40)]


def test_the_defaults_are_go_libp2ps() -> None:
    r = RelayResources()
    assert (r.reservation_ttl, r.max_reservations, r.max_reservations_per_ip) == (3600.0, 128, 8)
    assert (r.max_circuits_per_peer, r.circuit_duration, r.circuit_data) == (16, 120.0, 128 * 1024)
    assert r.limit == Limit(duration=120, data=131072)
    assert RelayResources(circuit_data=None, circuit_duration=None).limit == Limit()


def test_reservations_are_bounded_in_all_and_per_address() -> None:
    book = Reservations(RelayResources(max_reservations=5, max_reservations_per_ip=2))
    assert book.reserve(PEERS[0], "10.0.0.1", 0.0) != REFUSED
    assert book.reserve(PEERS[1], "10.0.0.1", 0.0) != REFUSED
    assert book.reserve(PEERS[2], "10.0.0.1", 0.0) is REFUSED  # a third from one address
    for i in range(3, 6):
        assert book.reserve(PEERS[i], f"10.0.1.{i}", 0.0) != REFUSED
    assert len(book) == 5
    assert book.reserve(PEERS[9], "10.0.2.9", 0.0) is REFUSED  # full
    renewed = book.reserve(PEERS[0], "10.0.0.1", 10.0)  # a peer holding one may always renew it
    assert not isinstance(renewed, Status) and renewed.expires == 10.0 + 3600.0


def test_reservations_expire_and_free_their_places() -> None:
    book = Reservations(RelayResources(max_reservations=1, reservation_ttl=60.0))
    assert book.get(PEERS[0], 0.0) is None
    book.reserve(PEERS[0], "10.0.0.1", 0.0)
    assert book.get(PEERS[0], 59.0) is not None
    assert book.reserve(PEERS[1], "10.0.0.2", 59.0) is REFUSED
    assert book.get(PEERS[0], 60.0) is None
    assert book.reserve(PEERS[1], "10.0.0.2", 60.0) != REFUSED
    assert book.remove(PEERS[1]) and not book.remove(PEERS[1]) and len(book) == 0


def test_a_peer_moving_address_keeps_one_reservation() -> None:
    book = Reservations(RelayResources(max_reservations_per_ip=1))
    book.reserve(PEERS[0], "10.0.0.1", 0.0)
    book.reserve(PEERS[0], "10.0.0.2", 1.0)
    assert len(book) == 1
    assert book.reserve(PEERS[1], "10.0.0.1", 2.0) != REFUSED  # the old address is free


def test_circuits_are_bounded_in_all_and_per_peer() -> None:
    circuits = Circuits(RelayResources(max_circuits=4, max_circuits_per_peer=2))
    a, b = PEERS[0], PEERS[1]
    first = circuits.open(a, b, 0.0)
    assert not isinstance(first, Status)
    assert not isinstance(circuits.open(a, PEERS[2], 0.0), Status)
    assert circuits.open(a, PEERS[3], 0.0) is Status.RESOURCE_LIMIT_EXCEEDED  # a is an end of 2 already
    assert circuits.open(PEERS[4], b, 0.0) != Status.RESOURCE_LIMIT_EXCEEDED
    assert circuits.open(PEERS[5], PEERS[6], 0.0) != Status.RESOURCE_LIMIT_EXCEEDED
    assert circuits.open(PEERS[7], PEERS[8], 0.0) is Status.RESOURCE_LIMIT_EXCEEDED  # 4 in all
    circuits.close(first)
    circuits.close(first)  # idempotent
    assert circuits.of(a) == 1 and circuits.of(b) == 1 and len(circuits) == 3
    assert not isinstance(circuits.open(a, PEERS[3], 0.0), Status)


def test_a_circuit_carries_its_data_cap_each_way_until_its_deadline() -> None:
    circuits = Circuits(RelayResources(circuit_data=1000, circuit_duration=120.0))
    c = circuits.open(PEERS[0], PEERS[1], 5.0)
    assert not isinstance(c, Status)
    assert c.carry(Direction.TO_DESTINATION, 600) == 600
    assert c.carry(Direction.TO_SOURCE, 999) == 999  # each way has its own cap
    assert c.ended(10.0) is None
    assert c.carry(Direction.TO_DESTINATION, 600) == 400  # what is left of the cap, no more
    assert c.ended(10.0) is CircuitEnd.DATA
    assert c.carry(Direction.TO_DESTINATION, 1) == 0
    other = circuits.open(PEERS[2], PEERS[3], 5.0)
    assert not isinstance(other, Status)
    assert other.ended(124.9) is None and other.ended(125.0) is CircuitEnd.DURATION


def test_a_community_relay_lifts_the_caps() -> None:
    circuits = Circuits(RelayResources(circuit_data=None, circuit_duration=None))
    c = circuits.open(PEERS[0], PEERS[1], 0.0)
    assert not isinstance(c, Status)
    assert c.carry(Direction.TO_SOURCE, 10**9) == 10**9 and c.ended(10**6) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"max_reservations": -1},
        {"reservation_ttl": 0},
        {"circuit_duration": 0},
        {"circuit_data": 0},
    ],
)
def test_nonsense_limits_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RelayResources(**bad)  # type: ignore[arg-type]
