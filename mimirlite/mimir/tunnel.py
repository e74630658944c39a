"""The latest MimirLLM generation's per-model HTTP tunnel, node side, sans-IO.

One protocol per model, ``/mimir/<sanitized model>/1.0.0`` (``models.tunnel_protocol``), carries one raw
HTTP/1.1 exchange: the client writes a request and closes its write side; the node answers with a status
line, headers and the body, then closes. This module reads that request (:class:`RequestReader`, on
``h11`` through the gateway's :class:`~mimirlite.gateway.http.ServerConnection`, with its head and body
bounds), decides what may reach the backend (:func:`admit`: an inference-only allowlist, the stream's
model) and writes answers as bytes (:func:`error_answer`, :func:`answer_head`). No socket, no clock: the
node (:mod:`mimirlite.mimir.node`) feeds it and owns the timeouts. ``h11`` loads only when a tunnel
request is read (``import mimirlite`` stays light).
"""

from __future__ import annotations

import http
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mimirlite.errors import MimirliteError
from mimirlite.mimir.models import model_name
from mimirlite.wire import lp

if TYPE_CHECKING:
    from mimirlite.gateway.http import ServerConnection


MAX_TUNNEL_REQUEST_HEAD = 64 * 1024
"""Bytes of a tunnel request's line and headers; more is refused with 431."""
MAX_TUNNEL_REQUEST_BODY = lp.MAX_MESSAGE
"""Bytes of a tunnel request's body, the node's packet limit (a first-generation request is one packet);
more is refused with 413."""

ALLOWED_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
        ("POST", "/api/chat"),
        ("POST", "/api/generate"),
        ("POST", "/api/embed"),
        ("POST", "/api/embeddings"),
        ("POST", "/api/show"),
        ("GET", "/api/tags"),
        ("GET", "/api/version"),
    }
)
"""What a tunnel request may ask the backend (inference only); anything else is refused 403."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Response headers about one connection, not the body: never passed on (the answer's body is sent as it
is, delimited by the end of the stream)."""


class TunnelError(MimirliteError):
    """A tunnel request refused with HTTP ``status``; ``reason`` names it in logs (``bad_http``,
    ``head_too_large``, ``body_too_large``, ``smuggling``, ``forbidden``, ``bad_json``, ``model``,
    ``bad_params``, ``trailing_data``)."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class TunnelRequest:
    """One tunnel request, as read (or, after :func:`admit`, as it goes to the backend)."""

    method: str
    target: str
    """Path and query, as sent."""
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    """Names in lowercase."""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class RequestReader:
    """Reads one HTTP/1.1 request that ends with the end of the stream.

    :meth:`feed` what the stream sent (``b""`` at its end); it answers the request once the client closed
    its write side after a whole request, None while more is needed, and raises :class:`TunnelError` as
    soon as the bytes break HTTP/1.1 or a bound (head over ``max_head``: 431; body over ``max_body``:
    413; ``Content-Length`` with ``Transfer-Encoding``: 400; a byte after the body, or an end before it:
    400). An empty stream (:attr:`received` 0 at its end) is a probe: :meth:`feed` answers None.
    """

    def __init__(
        self, *, max_head: int = MAX_TUNNEL_REQUEST_HEAD, max_body: int = MAX_TUNNEL_REQUEST_BODY
    ) -> None:
        from mimirlite.gateway.http import ServerConnection  # h11: loaded only when a tunnel is used

        self._conn: ServerConnection = ServerConnection(max_body=max_body, max_head=max_head)
        self._request: TunnelRequest | None = None
        self.received = 0
        """Bytes fed so far."""
        self.ended = False
        """The end of the stream was fed."""

    def feed(self, data: bytes) -> TunnelRequest | None:
        from mimirlite.gateway.http import HttpError, Pending

        if self.ended:
            raise TunnelError(400, "data after the end of the stream", "bad_http")
        self.received += len(data)
        if not data:
            self.ended = True
            if not self.received:
                return None
        if self._request is not None:
            if data:
                raise TunnelError(400, "bytes after the request's body", "trailing_data")
            return self._request
        conn = self._conn
        try:
            conn.receive_data(data)
            got = conn.next_request()
        except HttpError as exc:
            raise TunnelError(exc.status, exc.message, exc.reason) from None
        if got is Pending.CLOSED:
            raise TunnelError(400, "the stream ended before a request", "bad_http")
        if got is Pending.NEED_DATA:
            return None
        assert not isinstance(got, Pending)
        if conn._h11.trailing_data[0]:  # what h11 holds past the request's end
            raise TunnelError(400, "bytes after the request's body", "trailing_data")
        self._request = TunnelRequest(got.method, got.target, got.body, got.headers)
        return self._request if self.ended else None


# ---- what may go to the backend ----

_MODEL_FIELDS = {"/api/show": ("model", "name")}
"""The body fields that name the model, where not just ``model``."""


def admit(request: TunnelRequest, model: str, *, max_tokens: int | None = None) -> TunnelRequest:
    """The request as the backend gets it, for a stream of ``model``; TunnelError when refused.

    Only :data:`ALLOWED_ROUTES` pass (403). A ``GET`` has no body (400 otherwise). A ``POST`` body is a
    JSON object (400) whose model, when named (by a name or a CID), is ``model`` (400 otherwise) and is
    ``model`` when not named. A ``/v1/chat/completions`` body is checked as a first-generation chat is
    (its messages and parameters by :mod:`mimirlite.mimir.params`, ``max_tokens`` clamped to
    ``max_tokens``); embeddings and completions bodies pass the gateway's allowlists for them
    (:data:`~mimirlite.gateway.api.TUNNEL_FIELDS`); Ollama's ``keep_alive`` (which loads and unloads
    models) is dropped from the others. The request goes with a JSON ``Content-Type`` and no other header
    of the client's.
    """
    from mimirlite.gateway.api import TUNNEL_FIELDS, ApiError, dumps, loads_body, parse_tunnel_body

    route = (request.method, request.path)
    if route not in ALLOWED_ROUTES:
        shown = f"{request.method[:16]} {request.path[:200]}"
        raise TunnelError(403, f"{shown} is not allowed here (inference only)", "forbidden")
    if request.method == "GET":
        if request.body:
            raise TunnelError(400, f"GET {request.path} takes no body", "bad_http")
        return TunnelRequest(request.method, request.target, b"")
    try:
        obj = loads_body(request.body)
    except ApiError as exc:
        raise TunnelError(400, exc.message, "bad_json") from None
    if not isinstance(obj, dict):
        raise TunnelError(400, "The request body must be a JSON object.", "bad_json")
    fields = _MODEL_FIELDS.get(request.path, ("model",))
    for field in fields:
        named = obj.get(field)
        if named is None:
            continue
        if not isinstance(named, str) or model_name(named) != model:
            shown = repr(named)[:200]
            raise TunnelError(400, f"{field} {shown} is not this stream's model ({model!r})", "model")
        obj[field] = model
    if obj.get(fields[0]) is None:
        obj[fields[0]] = model
    if request.path == "/v1/chat/completions":
        obj = _checked_chat(obj, max_tokens)
    elif request.path in TUNNEL_FIELDS:  # embeddings, completions: the gateway's allowlists
        try:
            obj = parse_tunnel_body(request.path, dumps(obj)).body
        except ApiError as exc:
            raise TunnelError(400, exc.message, "bad_params") from None
    else:
        obj.pop("keep_alive", None)  # Ollama would load or unload models as the peer says
    headers = (("content-type", "application/json"),)
    return TunnelRequest(request.method, request.target, dumps(obj), headers)


def _checked_chat(obj: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
    from mimirlite.mimir.params import ParamError, check_messages, check_params, clamp_max_tokens

    fields = dict(obj)
    model = fields.pop("model")
    try:
        messages = check_messages(fields.pop("messages", None))
        stream = fields.pop("stream", None)
        if stream is not None and not isinstance(stream, bool):
            raise ParamError("stream", "'stream' must be a boolean.")
        params = clamp_max_tokens(check_params(fields), max_tokens)
    except ParamError as exc:
        raise TunnelError(400, exc.message, "bad_params") from None
    out: dict[str, Any] = {"model": model, "messages": messages}
    if stream is not None:
        out["stream"] = stream
    out.update(params)
    return out


# ---- answers ----


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


_ERROR_TYPES = {429: "rate_limit_error"}


def error_answer(status: int, message: str, code: str | None = None) -> bytes:
    """A whole answer with an OpenAI-style JSON error body (``{"error": {"message", "type", ...}}``)."""
    from mimirlite.gateway.api import ApiError

    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    body = ApiError(status, message, kind, code=code).body()
    head = answer_head(status, [("content-type", "application/json"), ("content-length", str(len(body)))])
    return head + body


def answer_head(status: int, headers: Iterable[tuple[str, str]], reason: str | None = None) -> bytes:
    """``HTTP/1.1 <status> <reason>``, ``headers`` and ``Connection: close``: the body follows until the
    end of the stream."""
    phrase = _phrase(status) if reason is None else reason
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def passed_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """A backend's response headers that still describe the body as passed on (its transfer coding
    undone): no hop-by-hop header (nor one its ``Connection`` names), no ``Content-Length`` when it came
    with ``Transfer-Encoding``."""
    given = [(k.lower(), v) for k, v in headers]
    chunked = any(k == "transfer-encoding" for k, _ in given)
    named = {t.strip().lower() for k, v in given if k == "connection" for t in v.split(",")}  # hop-by-hop too
    return [
        (k, v)
        for k, v in given
        if k not in HOP_BY_HOP and k not in named and not (chunked and k == "content-length")
    ]
