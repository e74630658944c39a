"""Fuzz mimirlite/mimir/packets.py on decoded JSON: parse_packet, parse_chat_request, stop_error.

Input: a mode byte (``parse_packet``'s ``expected``: ``fuzzlib.EXPECTED_EVENTS[mode % 8]``), then
one LP-JSON message body, decoded with ``lp.decode_json`` as a node and a client do.
Invariants: a packet survives ``to_json``; a chat request keeps the request's messages and model, and
its parameters are allowlisted ones.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.mimir.packets import (
        MESSAGE,
        parse_chat_request,
        parse_packet,
        stop_error,
    )
    from mimirlite.mimir.params import ALLOWED
    from mimirlite.wire.lp import decode_json


def test_one_input(data: bytes) -> None:
    if not data:
        return
    expected = fuzzlib.EXPECTED_EVENTS[data[0] % len(fuzzlib.EXPECTED_EVENTS)]
    obj = decode_json(data[1:])
    packet = parse_packet(obj, expected)
    fuzzlib.check(expected is None or packet.event == expected, "packet of another event accepted")
    again = parse_packet(packet.to_json(), expected)
    fuzzlib.check(again.event == packet.event and again.request_id == packet.request_id, "to_json lost data")
    err = stop_error(packet)
    if err is not None:
        fuzzlib.check(isinstance(err.type, str) and isinstance(err.message, str), "error is not text")
    if packet.event == MESSAGE:
        request = parse_chat_request(packet.data)
        fuzzlib.check(len(request.messages) == len(packet.data["messages"]), "messages were lost")
        fuzzlib.check(set(request.params) <= ALLOWED, "a parameter outside the allowlist passed")
        fuzzlib.check(request.model == packet.data.get("model"), "model was replaced")


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
