"""Server-sent events (the ``text/event-stream`` of an OpenAI-compatible streaming answer), sans-IO.

:class:`SSEDecoder` takes the body's bytes as they come and returns the whole events they complete, as
the WHATWG HTML standard's event-stream interpretation defines them (``data``, ``event``, ``id`` and
``retry`` fields; comments; lines ended by CRLF, LF or CR; a leading BOM; an event is dispatched at an
empty line, and an event left unfinished at the end of the stream is dropped). Lines and events are
bounded: a longer one raises :class:`SSEError`. No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from mimirlite.errors import LocalError, MessageTooLargeError

MAX_LINE = 1024 * 1024
"""Default bound on one line, in bytes (without its line end)."""
MAX_EVENT = 4 * 1024 * 1024
"""Default bound on one event's data, in bytes."""

_BOM = b"\xef\xbb\xbf"


class SSEError(MessageTooLargeError):
    """The event stream broke a bound: a line or an event too long."""


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event: its ``data`` lines joined with LF, its type (``message`` unless an ``event``
    field named one) and the last event ID seen on the stream (``""`` when none)."""

    data: str
    event: str = "message"
    id: str = ""


class SSEDecoder:
    """``receive_data(bytes) -> list[Event]``; ``receive_data(b"")`` marks the end of the stream.

    ``retry`` holds the last reconnection time the stream asked for (ms), None when none.
    """

    def __init__(self, *, max_line: int = MAX_LINE, max_event: int = MAX_EVENT) -> None:
        self.max_line = max_line
        self.max_event = max_event
        self.retry: int | None = None
        self._buf = b""
        self._started = False  # the BOM is looked for at the very start only
        self._skip_lf = False  # the last line ended with a CR that may be the first half of a CRLF
        self._ended = False
        self._data: list[bytes] = []
        self._size = 0
        self._event = ""
        self._last_id = ""

    def receive_data(self, data: bytes) -> list[Event]:
        """The events that ``data`` completes, in order; ``b""`` ends the stream (an unfinished event is
        dropped, as the standard says). SSEError when a bound is broken; LocalError for data after
        the end."""
        if not data:
            self._ended = True
            self._buf = b""
            self._data = []
            return []
        if self._ended:
            raise LocalError("event stream data after its end")
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        buf = self._buf + data if self._buf else data
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._buf = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                self._skip_lf = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        rest = lines.pop()
        if len(rest) > self.max_line:
            raise SSEError(f"event stream line longer than {self.max_line} bytes")
        self._buf = rest
        events: list[Event] = []
        max_line = self.max_line
        for line in lines:
            if not line:
                if self._data:
                    events.append(self._dispatch())
                else:
                    self._event = ""
                continue
            if len(line) > max_line:
                raise SSEError(f"event stream line longer than {max_line} bytes")
            if line.startswith(b"data: "):  # the common case first
                self._add_data(line[6:])
            elif line.startswith(b"data:"):
                self._add_data(line[5:])
            elif line[0] != 0x3A:  # not a comment (":...")
                self._field(line)
        return events

    def _add_data(self, value: bytes) -> None:
        self._size += len(value) + 1
        if self._size > self.max_event:
            raise SSEError(f"event stream event larger than {self.max_event} bytes")
        self._data.append(value)

    def _field(self, line: bytes) -> None:
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._add_data(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self.retry = int(value)
        # any other field is ignored, as the standard says

    def _dispatch(self) -> Event:
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        event = Event(data.decode("utf-8", "replace"), self._event or "message", self._last_id)
        self._data = []
        self._size = 0
        self._event = ""
        return event
