"""What the fuzz harnesses share: input formats, fixed keys, invariant checks and the error policy.

Input formats (the capture script writes seeds in the same formats):

* **records**: a sequence of ``<u16 big-endian length><bytes>``; the last record takes what is left
  when the input ends early. Stream decoders get one ``receive_data`` call per record, so a captured
  run replays with the reads it really had, and mutating a length moves a read boundary.
* **yamux records**: like records, but a length with the top bit set is a local API call instead of
  received bytes: ``0x8000 | op << 12 | arg`` followed by one stream selector byte (see
  :func:`yamux_records`).

Error policy: mimirlite's own errors (subclasses of ``MimirliteError``) are the expected way to refuse
bad input. Anything else escaping a decoder, a broken invariant (:class:`InvariantError`) or a hang is
a crash.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from mimirlite.errors import MimirliteError
from mimirlite.identity import KeyPair

MAX_RECORD = 0xFFFF
MAX_YAMUX_DATA = 0x7FFF

# --- fixed keys ----------------------------------------------------------------------------------

IDENTITY_A = KeyPair(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
"""The local identity of every harness that needs one (the responder of a handshake)."""
IDENTITY_B = KeyPair(Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64))))
"""The remote identity (the initiator of a handshake)."""
STATIC_SEED = bytes(range(64, 96))
"""The X25519 static key of every Noise handshake under :func:`use_fixed_noise_static`."""
TRANSPORT_KEY_A = bytes(range(100, 132))
TRANSPORT_KEY_B = bytes(range(132, 164))


class _FixedStatic:
    """Stands in for ``X25519PrivateKey`` in ``mimirlite.wire.noise``: ``generate()`` is one fixed key.

    The identity payload of a handshake signs the sender's static key; with a fixed static key a
    payload captured once verifies in every later run, so the fuzzer can mutate valid payloads.
    """

    @staticmethod
    def generate() -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(STATIC_SEED)


def use_fixed_noise_static() -> None:
    """Make every NoiseHandshake created from now on use the static key :data:`STATIC_SEED`."""
    import mimirlite.wire.noise as noise_module

    noise_module.X25519PrivateKey = _FixedStatic  # type: ignore[misc, assignment]


# --- multistream protocol sets (shared with the capture script) ------------------------------------

PROTOCOL_SETS: list[list[str]] = [
    ["/noise"],
    ["/yamux/1.0.0"],
    ["/mimirllm/1.0.0"],
    ["/mimirllm/1.0.0/identify"],
    ["/ipfs/id/1.0.0"],
    ["/ipfs/id/push/1.0.0"],
    ["/ipfs/ping/1.0.0"],
    ["/echo/1.0.0"],
    ["/mimirllm/2.0.0", "/mimirllm/1.0.0", "/ipfs/id/1.0.0"],
]
"""What the dialer of the multistream harness proposes, chosen by the mode byte."""
SUPPORTED = frozenset(p for s in PROTOCOL_SETS for p in s if p != "/mimirllm/2.0.0")
"""What the listener of the multistream harness accepts."""

# --- mimir packets ---------------------------------------------------------------------------------

EXPECTED_EVENTS: list[str | None] = [
    None,
    "message",
    "command",
    "query",
    "response",
    "completionStart",
    "completionPacket",
    "completionStop",
]
"""``expected`` argument of parse_packet, chosen by the mode byte of the mimir_packets harness."""

# --- input formats ---------------------------------------------------------------------------------


def records(data: bytes) -> Iterator[bytes]:
    """Split ``data`` in records (``<u16 length><bytes>``, the last one possibly short)."""
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 2:
            yield data[pos:]
            return
        n = data[pos] << 8 | data[pos + 1]
        pos += 2
        yield data[pos : pos + n]
        pos += n


def encode_records(chunks: Sequence[bytes], limit: int = MAX_RECORD) -> bytes:
    """The record encoding of ``chunks``; a chunk longer than ``limit`` becomes several records."""
    out = bytearray()
    for chunk in chunks:
        for start in range(0, max(len(chunk), 1), limit):
            piece = chunk[start : start + limit]
            out += len(piece).to_bytes(2, "big") + piece
    return bytes(out)


# yamux local operations
OP_OPEN, OP_SEND, OP_CONSUMED, OP_CLOSE, OP_RESET, OP_PING, OP_GO_AWAY, OP_SEND_MANY = range(8)
YamuxRecord = bytes | tuple[int, int, int]


def yamux_records(data: bytes) -> Iterator[YamuxRecord]:
    """Received bytes (``bytes``) or local operations ``(op, arg, selector)``.

    A header ``h`` (u16) without the top bit: ``h`` bytes follow. With it: op ``h >> 12 & 7``, arg
    ``h & 0xFFF`` and one selector byte follow. A selector below 0x80 picks a tracked stream (index
    into the sorted ids); above, ``selector & 0x7F`` is used as a raw stream id.
    """
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 2:
            yield data[pos:]
            return
        h = data[pos] << 8 | data[pos + 1]
        pos += 2
        if h & 0x8000:
            sel = data[pos] if pos < end else 0
            pos += 1
            yield (h >> 12 & 7, h & 0xFFF, sel)
        else:
            yield data[pos : pos + h]
            pos += h


def encode_yamux_data(chunk: bytes) -> bytes:
    return encode_records([chunk], MAX_YAMUX_DATA)


def encode_yamux_op(op: int, arg: int, sel: int) -> bytes:
    return (0x8000 | op << 12 | (arg & 0xFFF)).to_bytes(2, "big") + bytes((sel & 0xFF,))


def pick_stream(tracked: Sequence[int], sel: int) -> int:
    """The stream a selector byte names (see :func:`yamux_records`)."""
    if sel < 0x80 and tracked:
        return sorted(tracked)[sel % len(tracked)]
    return sel & 0x7F


def selector_for(tracked: Sequence[int], sid: int) -> int | None:
    """The selector byte that names ``sid`` (None if no byte can)."""
    ids = sorted(tracked)
    if sid in ids and ids.index(sid) < 0x80:
        return ids.index(sid)
    if sid < 0x80:
        return 0x80 | sid
    return None


def text_of(data: bytes) -> str:
    """``data`` as text: UTF-8 when it is, else Latin-1 (every byte a code point)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# --- checks and the entry point ----------------------------------------------------------------------


class InvariantError(AssertionError):
    """A decoder returned something it must not (a crash, like an unexpected exception)."""


def check(condition: object, message: str, *details: Any) -> None:
    """Raise InvariantError unless ``condition`` holds (not an ``assert``: it survives ``-O``)."""
    if not condition:
        raise InvariantError(message + ("" if not details else ": " + " | ".join(map(repr, details))))


def run(test_one_input: Callable[[bytes], None]) -> None:
    """Fuzz ``test_one_input`` with atheris; mimirlite's own errors are the only ones allowed.

    Command line: libFuzzer's (corpus directories or input files, ``-atheris_runs=N``, ...).
    """
    import atheris

    logging.disable(logging.CRITICAL)  # decoders log what they refuse; that is not a finding

    def one_input(data: bytes) -> None:
        with contextlib.suppress(MimirliteError):
            test_one_input(data)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
