"""Fuzz mimirlite/wire/multistream.py: MultistreamDialer and MultistreamListener fed in pieces.

Input: one mode byte (bit 0: 1 = dialer, 0 = listener; ``mode >> 1`` picks the dialer's proposals
from ``fuzzlib.PROTOCOL_SETS``), then records, one ``receive_data`` each.
Invariants: the protocol selected is one proposed (dialer) or supported (listener); feeding the same
bytes in one piece gives the same selection, output, leftover and error.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.errors import MultistreamError, ProtocolNotSupportedError
    from mimirlite.wire.multistream import MultistreamDialer, MultistreamListener

Outcome = tuple[str | None, bytes, bytes, str | None]


def _negotiate(mode: int, pieces: list[bytes]) -> Outcome:
    """(selected, everything sent, leftover, error class name)."""
    ms: MultistreamDialer | MultistreamListener
    if mode & 1:
        proposals = fuzzlib.PROTOCOL_SETS[(mode >> 1) % len(fuzzlib.PROTOCOL_SETS)]
        ms = MultistreamDialer(proposals)
    else:
        proposals = []
        ms = MultistreamListener(fuzzlib.SUPPORTED.__contains__)
    sent = [ms.data_to_send()]
    error = None
    try:
        for piece in pieces:
            ms.receive_data(piece)
            sent.append(ms.data_to_send())
    except (MultistreamError, ProtocolNotSupportedError) as exc:
        sent.append(ms.data_to_send())
        error = type(exc).__name__
    if ms.selected is not None:
        if mode & 1:
            fuzzlib.check(ms.selected in proposals, "dialer selected what it did not propose", ms.selected)
        else:
            fuzzlib.check(ms.selected in fuzzlib.SUPPORTED, "listener selected an unsupported protocol")
    return ms.selected, b"".join(sent), ms.leftover, error


def test_one_input(data: bytes) -> None:
    if not data:
        return
    pieces = list(fuzzlib.records(data[1:]))
    outcome = _negotiate(data[0], pieces)
    whole = _negotiate(data[0], [b"".join(pieces)])
    fuzzlib.check(outcome == whole, "result depends on how the input is cut", pieces, outcome, whole)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
