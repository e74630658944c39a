"""Fuzz mimirlite/mimir/params.py, the chat parameter allowlist, on decoded JSON: check_params,
check_messages, clamp_max_tokens, and packets.parse_chat_request which applies them for a node.

Input: a mode byte (``mode % 3``: 0 parameters, 1 messages, 2 a ``message`` packet's data), a field
byte (mode 0 with a JSON value that is not an object: the value is given to the allowed parameter
``sorted(ALLOWED)[field % len(ALLOWED)]``), then one JSON document, decoded with ``lp.decode_json`` as
a node does. Invariants: only allowlisted names come out (never the SDK's ``extra_*``/``timeout``);
what comes out checks again to itself; it shares no dict or list with the input (checked copies); a
``max_tokens`` cap clamps.
"""

from __future__ import annotations

from typing import Any

import atheris

with atheris.instrument_imports(include=["mimirlite"]):
    import fuzzlib

    from mimirlite.mimir.packets import parse_chat_request
    from mimirlite.mimir.params import ALLOWED, NEVER, check_messages, check_params, clamp_max_tokens
    from mimirlite.wire.lp import decode_json

FIELDS = sorted(ALLOWED)
CAP = 16


def _containers(obj: Any, out: set[int]) -> set[int]:
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, (dict, list)):
            out.add(id(x))
            stack.extend(x.values() if isinstance(x, dict) else x)
    return out


def _check_fresh(out: Any, given: Any) -> None:
    shared = _containers(out, set()) & _containers(given, set())
    fuzzlib.check(not shared, "a checked value shares a container with the input")


def _check_params_out(out: dict[str, Any]) -> None:
    fuzzlib.check(set(out) <= ALLOWED and not set(out) & NEVER, "a name outside the allowlist passed", out)
    clamped = clamp_max_tokens(out, CAP)
    for name in ("max_tokens", "max_completion_tokens"):
        fuzzlib.check(clamped.get(name, 0) <= CAP, "the cap did not clamp", clamped)
    fuzzlib.check("max_tokens" in clamped or "max_completion_tokens" in clamped, "no cap sent")


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    mode, field = data[0] % 3, FIELDS[data[1] % len(FIELDS)]
    obj = decode_json(data[2:])
    if mode == 0:
        fields = obj if isinstance(obj, dict) else {field: obj}
        out = check_params(fields)
        _check_params_out(out)
        fuzzlib.check(check_params(out) == out, "checked parameters do not check to themselves")
        _check_fresh(out, fields)
    elif mode == 1:
        messages = check_messages(obj)
        fuzzlib.check(len(messages) == len(obj), "messages were lost")
        fuzzlib.check(check_messages(messages) == messages, "checked messages do not check to themselves")
        _check_fresh(messages, obj)
    else:
        request = parse_chat_request(obj)
        _check_params_out(request.params)
        fuzzlib.check(request.model is None or isinstance(request.model, str), "model is not text")
        _check_fresh([request.messages, request.params], obj)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
