"""Fuzz mimirlite/discovery/records.py: decode_packet and MdnsCore.receive.

Input: a mode byte (bit 0: the datagram came from this machine), then one mDNS datagram.
Invariants: an announcement has a peer name that is one DNS label, at most MAX_ADDRS_PER_PEER
distinct TCP addresses; the core reports a peer it tracks, with addresses it would dial.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.discovery.records import (
        MAX_ADDRS_PER_PEER,
        Announcement,
        MdnsCore,
        PeerDiscovered,
        decode_packet,
    )
    from mimirlite.errors import MimirliteError
    from mimirlite.net.addr import parse_multiaddr

CORE_NAME = "fuzzcore"


def test_one_input(data: bytes) -> None:
    if not data:
        return
    local, datagram = bool(data[0] & 1), data[1:]
    core = MdnsCore(fuzzlib.IDENTITY_A.peer_id, CORE_NAME, silent_after=60.0)
    try:
        found = decode_packet(datagram)
    except MimirliteError:
        found = None
    if isinstance(found, Announcement):
        fuzzlib.check(found.peer_name and "." not in found.peer_name, "peer name is not one label", found)
        fuzzlib.check(len(found.addrs) <= MAX_ADDRS_PER_PEER, "too many addresses", len(found.addrs))
        fuzzlib.check(len(set(found.addrs)) == len(found.addrs), "repeated address", found.addrs)
        for addr in found.addrs:
            parsed = parse_multiaddr(addr)
            fuzzlib.check(
                parsed.peer_id is None and parsed.multiaddr() == addr, "address not canonical", addr
            )
    event = core.receive(datagram, 1.0, local=local)
    if isinstance(event, PeerDiscovered):
        fuzzlib.check(event.peer_id in core.peers, "discovered peer is not tracked")
        fuzzlib.check(event.addrs and core.peers[event.peer_id] == event.addrs, "addresses disagree")
        fuzzlib.check(core.receive(datagram, 2.0, local=local) is None, "same answer reported twice")
        fuzzlib.check(core.expire(100.0)[0].peer_id == event.peer_id, "peer not expired")


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
