"""Fuzz mimirlite/protocols/kad/messages.py: decode_message with tight caps, then encode and decode again.

Input: a kad message body (what one length prefix delimits on a DHT stream).
Invariants: what decodes re-encodes to bytes that decode to the same message with nothing dropped;
the caps hold (entries, addresses per entry, key size); ``dropped`` is never negative.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.protocols.kad.messages import MessageLimits, decode_message, encode_message

CAPS = MessageLimits(max_message_size=4096, max_peers=6, max_addrs_per_peer=3, max_key_size=48)


def test_one_input(data: bytes) -> None:
    msg, dropped = decode_message(data, CAPS)
    fuzzlib.check(dropped >= 0, "negative dropped count", data)
    fuzzlib.check(len(msg.closer) + len(msg.providers) <= CAPS.max_peers, "over max_peers", data)
    fuzzlib.check(len(msg.key) <= CAPS.max_key_size, "over max_key_size", data)
    for info in (*msg.closer, *msg.providers):
        fuzzlib.check(len(info.addrs) <= CAPS.max_addrs_per_peer, "over max_addrs_per_peer", data)
    again, dropped_again = decode_message(encode_message(msg), CAPS)
    fuzzlib.check(again == msg and dropped_again == 0, "re-encoded message decodes differently", data, msg)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
