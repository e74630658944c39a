"""Mimir packets: ``{"event": E, "request_id"?: str, "data": any}``, one per LP-JSON message.

Pure functions over decoded JSON; the asyncio side reads and writes them with
``Stream.read_json`` / ``Stream.write_json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mimirlite.errors import MimirliteError, ProtocolError
from mimirlite.mimir.params import ParamError, check_messages, check_model, check_params

MIMIR_IDENTIFY_PROTOCOL = "/mimirllm/1.0.0/identify"
CHAT_PROTOCOL = "/mimirllm/1.0.0"

MESSAGE = "message"
COMMAND = "command"
QUERY = "query"
RESPONSE = "response"
COMPLETION_START = "completionStart"
COMPLETION_PACKET = "completionPacket"
COMPLETION_STOP = "completionStop"
EVENTS = frozenset({MESSAGE, COMMAND, QUERY, RESPONSE, COMPLETION_START, COMPLETION_PACKET, COMPLETION_STOP})

# Error types carried in a completionStop packet.
BAD_REQUEST = "bad_request"
MODEL_NOT_FOUND = "model_not_found"
BACKEND_ERROR = "backend_error"
BACKEND_UNAVAILABLE = "backend_unavailable"
BACKEND_TIMEOUT = "backend_timeout"
INTERNAL_ERROR = "internal_error"
RATE_LIMITED = "rate_limited"
"""This peer asks too much of the node (per-peer concurrency or rate): another node may serve it."""
OVERLOADED = "overloaded"
"""The node is busy with others (every slot and queue place taken): another node may serve it."""


class PacketError(ProtocolError):
    """A packet that is not a mimir packet, or not the one expected here."""


class RemoteError(MimirliteError):
    """A node answered a request with a completionStop error."""

    def __init__(self, type: str, message: str) -> None:
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message


class BadRequestError(MimirliteError):
    """A chat request the node cannot serve; answered with a ``bad_request`` error."""


@dataclass(frozen=True)
class Packet:
    """One decoded mimir packet."""

    event: str
    data: Any = None
    request_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The packet as sent: ``request_id`` only when there is one."""
        out: dict[str, Any] = {"event": self.event}
        if self.request_id is not None:
            out["request_id"] = self.request_id
        out["data"] = self.data
        return out


def parse_packet(obj: Any, expected: str | None = None) -> Packet:
    """Validate a decoded JSON value as a packet (of event ``expected``, if given)."""
    if not isinstance(obj, dict):
        raise PacketError(f"packet is not a JSON object but {type(obj).__name__}")
    event = obj.get("event")
    if not isinstance(event, str) or event not in EVENTS:
        raise PacketError(f"unknown packet event {event!r}")
    if expected is not None and event != expected:
        raise PacketError(f"expected a {expected!r} packet, got {event!r}")
    request_id = obj.get("request_id")
    if request_id is not None and not isinstance(request_id, str):
        raise PacketError("packet request_id is not a string")
    return Packet(event, obj.get("data"), request_id)


def error_packet(type: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """The completionStop packet that reports a failure to the client."""
    return Packet(COMPLETION_STOP, {"error": {"type": type, "message": message}}, request_id).to_json()


def stop_error(packet: Packet) -> RemoteError | None:
    """The error a completionStop packet carries, if any."""
    data = packet.data
    err = data.get("error") if isinstance(data, dict) else None
    if err is None:
        return None
    if isinstance(err, dict):
        return RemoteError(str(err.get("type", "error")), str(err.get("message", "")))
    return RemoteError("error", str(err))


@dataclass(frozen=True)
class ChatRequest:
    """What a ``message`` packet asks for: messages, an optional model, other OpenAI parameters.

    All three are checked copies (see :mod:`mimirlite.mimir.params`): ``params`` holds only allowed names.
    """

    messages: list[dict[str, Any]]
    model: str | None
    params: dict[str, Any]


def parse_chat_request(data: Any) -> ChatRequest:
    """Validate a ``message`` packet's data; BadRequestError naming the field otherwise.

    ``stream`` is accepted (a boolean or null) and dropped: a node always streams.
    """
    if not isinstance(data, dict):
        raise BadRequestError("message data must be an object with 'messages'")
    fields = dict(data)
    try:
        if "messages" not in fields:
            raise ParamError("messages", "message data has no 'messages' list")
        messages = check_messages(fields.pop("messages"))
        model = fields.pop("model", None)
        if model is not None:
            model = check_model(model)
        stream = fields.pop("stream", None)
        if stream is not None and not isinstance(stream, bool):
            raise ParamError("stream", "Invalid 'stream': expected a boolean.")
        params = check_params(fields)
    except ParamError as exc:
        raise BadRequestError(exc.message) from None
    return ChatRequest(messages, model, params)
