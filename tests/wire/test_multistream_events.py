"""multistream-select reports the agreement as an event (ProtocolSelected)."""

from __future__ import annotations

import pytest

from mimirlite.errors import ProtocolNotSupportedError
from mimirlite.wire.multistream import (
    MULTISTREAM_PROTOCOL,
    MultistreamDialer,
    MultistreamListener,
    ProtocolSelected,
    encode_line,
)

HEADER = encode_line(MULTISTREAM_PROTOCOL)


def test_multistream_protocol_name() -> None:
    assert MULTISTREAM_PROTOCOL == "/multistream/1.0.0"
    assert HEADER == b"\x13/multistream/1.0.0\n"


def test_dialer_reports_the_selection_once() -> None:
    d = MultistreamDialer(["/a", "/b"])
    d.data_to_send()
    assert d.receive_data(HEADER) == []
    assert d.receive_data(encode_line("na")) == []
    assert d.data_to_send() == encode_line("/b")
    assert d.receive_data(encode_line("/b") + b"next layer") == [ProtocolSelected("/b", b"next layer")]
    assert d.receive_data(b" and more") == []  # gathered in leftover for the next layer
    assert (d.selected, d.leftover) == ("/b", b"next layer and more")


def test_dialer_refused_raises() -> None:
    d = MultistreamDialer(["/a"])
    with pytest.raises(ProtocolNotSupportedError):
        d.receive_data(HEADER + encode_line("na"))


def test_listener_reports_the_selection_with_leftover() -> None:
    listener = MultistreamListener(lambda p: p == "/yes")
    assert listener.receive_data(HEADER + encode_line("/no")) == []
    assert listener.data_to_send() == HEADER + encode_line("na")
    events = listener.receive_data(encode_line("/yes") + b"\x01\x02")
    assert events == [ProtocolSelected("/yes", b"\x01\x02")]
    assert listener.data_to_send() == encode_line("/yes")
    assert (listener.selected, listener.leftover) == ("/yes", b"\x01\x02")


@pytest.mark.parametrize("cut", range(1, 30))
def test_selection_in_pieces(cut: int) -> None:
    wire = HEADER + encode_line("/yes") + b"rest"
    listener = MultistreamListener(lambda p: p == "/yes")
    events = listener.receive_data(wire[:cut]) + listener.receive_data(wire[cut:])
    assert [e.protocol for e in events] == ["/yes"]
    assert listener.leftover == b"rest"
