"""The chunked transfer coding of an HTTP/1.1 answer's body (RFC 9112 section 7.1), decoded, sans-IO.

:class:`ChunkedDecoder` takes the body's bytes as they come (whole buffers: an SSE stream sends each
event as its own chunk, so one read holds many) and returns their data, chunk framing removed, partial
chunks as far as they came: only a chunk-size line or a trailer line cut by a read is kept until the rest
comes. Strict and bounded: a chunk size is 1 to 16 hex digits (no sign, ``0x`` or white space before it),
then optional white space and extensions (``;name[=token|"quoted"]``, at most :data:`MAX_LINE` bytes in
all); every line ends with CRLF (a bare CR or LF is an error) and the data of a chunk with one too;
trailer fields (read and dropped) are ``name: value`` lines of at most :data:`MAX_TRAILERS` bytes in all.
Anything else raises :class:`ChunkedError`. No I/O, no clock. (mimir/http.py hands it the body after h11
read the status line and headers.)
"""

from __future__ import annotations

import re

from mimirlite.errors import DecodeError, LocalError

__all__ = ["MAX_LINE", "MAX_TRAILERS", "ChunkedDecoder", "ChunkedError"]

MAX_LINE = 4096
"""Bound on a chunk-size line (size, white space, extensions; its CRLF not counted), in bytes."""
MAX_TRAILERS = 64 * 1024
"""Bound on the trailer section (every field line and CRLF, the empty line ending it included), in bytes."""

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t !-~\x80-\xff])*"'
_PLAIN_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")
"""A chunk-size line without white space or extensions (the common case: one test)."""
# A chunk-size line (its extensions taken loosely here, checked by _EXTENSIONS when there are some).
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})([ \t]*;[^\r\n]*)?[ \t]*\r\n")
_EXTENSIONS = re.compile(
    rb"(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)+[ \t]*" % (_TOKEN, _TOKEN, _QUOTED)
)
_FIELD_LINE = re.compile(rb"%s:[\t \x21-\x7e\x80-\xff]*" % _TOKEN)

_SIZE, _DATA, _CRLF, _TRAILER, _DONE, _BROKEN = range(6)


class ChunkedError(DecodeError):
    """A body that breaks the chunked coding (or a bound); ``data``: the body data the buffer held
    before the break (not returned otherwise)."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data


class ChunkedDecoder:
    """``receive_data(bytes) -> bytes``; ``receive_data(b"")`` marks the end of the connection.

    ``done`` once the last chunk and the trailers were read; ``unused`` then holds the bytes that came
    after the body (none from a server that waits for the next request).
    """

    __slots__ = (
        "_buf", "_crlf", "_error", "_left", "_state", "_trailers", "max_line", "max_trailers", "unused",
    )  # fmt: skip

    def __init__(self, *, max_line: int = MAX_LINE, max_trailers: int = MAX_TRAILERS) -> None:
        self.max_line = max_line
        self.max_trailers = max_trailers
        self.unused = b""
        self._buf = b""  # a chunk-size or trailer line not yet whole
        self._state = _SIZE
        self._left = 0  # data bytes of the current chunk still to come
        self._crlf = 0  # bytes of the CRLF after a chunk's data already seen (0 or 1)
        self._trailers = 0  # bytes of trailer section read
        self._error = ""  # why it broke (_BROKEN)

    @property
    def done(self) -> bool:
        """Whether the body ended (its last chunk and trailers read; not when it broke)."""
        return self._state == _DONE

    def receive_data(self, data: bytes) -> bytes:
        """The body data in ``data`` (with what was kept from the last call), in order; ``b""`` ends the
        connection (ChunkedError unless the body had ended). ChunkedError at a break (its ``data``: the
        data before it), and at every call after it; LocalError for data after the body's end."""
        if self._state == _BROKEN:
            raise ChunkedError(self._error)
        if not data:
            if self._state != _DONE:
                raise ChunkedError("connection closed inside a chunked body")
            return b""
        if self._state == _DONE:
            raise LocalError("data after the end of a chunked body")
        buf = self._buf + data if self._buf else data
        self._buf = b""
        out: list[bytes] = []
        try:
            self._decode(buf, out)
        except ChunkedError as exc:
            exc.data = b"".join(out)
            self._state = _BROKEN
            self._error = str(exc)
            raise
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def _decode(self, buf: bytes, out: list[bytes]) -> None:
        pos = 0
        end = len(buf)
        state = self._state
        plain = self.max_line >= 16  # a plain size line is within the bound
        while pos < end:
            if state == _SIZE:
                match = _PLAIN_SIZE_LINE.match(buf, pos) if plain else None
                if match is None:
                    match = self._size_line(buf, pos)
                if match is None:
                    self._buf = buf[pos:]
                    break
                size = int(match.group(1), 16)
                pos = match.end()
                if size == 0:
                    state = _TRAILER
                    continue
                stop = pos + size
                if stop + 2 <= end:  # the whole chunk and its CRLF: the common case
                    out.append(buf[pos:stop])  # as when it comes in pieces: the data before its CRLF
                    if buf[stop : stop + 2] != b"\r\n":
                        raise ChunkedError("chunk data not followed by CRLF")
                    pos = stop + 2
                    continue
                self._left = size
                state = _DATA
            elif state == _DATA:
                take = min(self._left, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    state = _CRLF
                    self._crlf = 0
            elif state == _CRLF:
                want = b"\r\n"[self._crlf :]
                got = buf[pos : pos + len(want)]
                if not want.startswith(got):
                    raise ChunkedError("chunk data not followed by CRLF")
                pos += len(got)
                self._crlf += len(got)
                if self._crlf == 2:
                    state = _SIZE
            elif state == _TRAILER:
                pos = self._trailer_line(buf, pos)
                if pos < 0:
                    break
                if self._state == _DONE:
                    self.unused = buf[pos:]
                    return
            else:  # pragma: no cover - _DONE returns above
                raise AssertionError(state)
        self._state = state  # where the next call goes on (what it needs of a line kept in _buf)

    def _size_line(self, buf: bytes, pos: int) -> re.Match[bytes] | None:
        """The chunk-size line at ``pos`` (one with white space or extensions: the plain ones are
        matched before); None when it is not whole yet (and may still be one)."""
        match = _SIZE_LINE.match(buf, pos)
        if match is None:
            self._size_line_incomplete(buf, pos)
            return None
        if match.end() - pos - 2 > self.max_line:
            raise ChunkedError(f"chunk size line longer than {self.max_line} bytes")
        if match.group(2) is not None and _EXTENSIONS.fullmatch(match.group(2)) is None:
            raise ChunkedError("bad chunk extension")
        return match

    def _size_line_incomplete(self, buf: bytes, pos: int) -> None:
        """No whole chunk-size line at ``pos``: ChunkedError when none can come (a line end is there,
        or the line is already too long, or it cannot start a size line), else nothing (wait for more)."""
        rest = len(buf) - pos
        if b"\n" in buf[pos : pos + self.max_line + 2]:
            raise ChunkedError(f"bad chunk size line {bytes(buf[pos : pos + 40])!r}")
        if rest > self.max_line + 1:
            raise ChunkedError(f"chunk size line longer than {self.max_line} bytes")
        if buf[pos : pos + 1] not in b"0123456789abcdefABCDEF" or not rest:
            raise ChunkedError(f"bad chunk size line {bytes(buf[pos : pos + 40])!r}")

    def _trailer_line(self, buf: bytes, pos: int) -> int:
        """Read one trailer line at ``pos``: where the next starts, or -1 (kept: not whole yet). The
        empty line ends the body (``_state`` becomes _DONE)."""
        room = self.max_trailers - self._trailers
        nl = buf.find(b"\n", pos, pos + room)
        if nl < 0:
            if len(buf) - pos >= room:
                raise ChunkedError(f"chunked body trailers larger than {self.max_trailers} bytes")
            self._buf = buf[pos:]
            return -1
        self._trailers += nl + 1 - pos
        if buf[nl - 1 : nl] != b"\r" or nl == pos:
            raise ChunkedError("chunked body trailer line not ended by CRLF")
        line = buf[pos : nl - 1]
        if not line:
            self._state = _DONE
        elif _FIELD_LINE.fullmatch(line) is None:
            raise ChunkedError(f"bad chunked body trailer line {bytes(line[:40])!r}")
        return nl + 1
