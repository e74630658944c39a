"""mimirlite.errors: the hierarchy's branches, the timeout base, and the kinds as ``str`` enums whose
values are the old literal keys of the metrics counters (so counters and log lines stay byte-identical)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from mimirlite import errors
from mimirlite.errors import (
    AddressError,
    ClosedError,
    CloseKind,
    ConnectionClosedError,
    DecodeError,
    DialError,
    DnsaddrError,
    EndReason,
    HandshakeError,
    HandshakeTimeoutError,
    IncompleteReadError,
    InvalidKeyError,
    LimitExceededError,
    LocalError,
    MessageTooLargeError,
    MimirliteError,
    MimirliteTimeoutError,
    MultistreamError,
    PeerIdMismatchError,
    PeerNotAllowedError,
    ProtocolError,
    ProtocolErrorKind,
    ProtocolNotSupportedError,
    RefusalReason,
    RefusedByPeerError,
    RefusedError,
    StreamClosedError,
    StreamResetError,
    YamuxError,
)
from mimirlite.gateway.gateway import GatewayMetrics
from mimirlite.identity import KeyFileError
from mimirlite.metrics import HostMetrics, NodeMetrics, stats_line
from mimirlite.mimir import limits, packets
from mimirlite.mimir.client import AnswerTimeoutError, ChatError
from mimirlite.protocols import IdentifyTimeoutError, PingTimeoutError

from .helpers import logged

BRANCHES = (LocalError, ProtocolError, ClosedError, RefusedError)

PLACES: list[tuple[type[BaseException], type[BaseException]]] = [
    (InvalidKeyError, LocalError),
    (AddressError, LocalError),
    (KeyFileError, LocalError),
    (DecodeError, ProtocolError),
    (MessageTooLargeError, ProtocolError),
    (MultistreamError, ProtocolError),
    (HandshakeError, ProtocolError),
    (PeerIdMismatchError, ProtocolError),
    (HandshakeTimeoutError, ProtocolError),
    (YamuxError, ProtocolError),
    (StreamResetError, ClosedError),
    (StreamClosedError, ClosedError),
    (ConnectionClosedError, ClosedError),
    (IncompleteReadError, ClosedError),
    (DialError, ClosedError),
    (DnsaddrError, ClosedError),
    (RefusedByPeerError, ClosedError),
    (LimitExceededError, RefusedError),
    (ProtocolNotSupportedError, RefusedError),
    (PeerNotAllowedError, RefusedError),
    (RefusedByPeerError, RefusedError),
]


def _make(cls: type[BaseException]) -> BaseException:
    if cls is PeerIdMismatchError:
        return cls("a", "b")
    if cls is HandshakeTimeoutError:
        return cls(RefusalReason.FIRST_BYTE_TIMEOUT, "late")
    if cls is IncompleteReadError:
        return cls(4, b"ab")
    if cls is ProtocolNotSupportedError:
        return cls(["/x/1"])
    if cls is PeerNotAllowedError:
        return cls("peer")
    if cls is DnsaddrError:
        return cls("/dnsaddr/a.test", "NXDOMAIN")
    return cls("boom")


@pytest.mark.parametrize(("cls", "branch"), PLACES, ids=lambda c: c.__name__)
def test_each_error_is_on_its_branch_and_no_other(
    cls: type[BaseException], branch: type[BaseException]
) -> None:
    exc = _make(cls)
    with pytest.raises(branch):
        raise exc
    assert isinstance(exc, MimirliteError)
    others = [b for b in BRANCHES if b is not branch and isinstance(exc, b)]
    if cls is RefusedByPeerError:  # a dial that failed because the remote refused: both, on purpose
        assert others == [ClosedError] or others == [RefusedError]
    else:
        assert others == []


def test_the_branches_are_apart() -> None:
    for branch in BRANCHES:
        assert issubclass(branch, MimirliteError)
        assert not issubclass(branch, asyncio.TimeoutError)
        assert [b for b in BRANCHES if issubclass(branch, b)] == [branch]


TIMEOUTS = [
    MimirliteTimeoutError("late"),
    IdentifyTimeoutError("late"),
    PingTimeoutError("late"),
    AnswerTimeoutError("late"),
    HandshakeTimeoutError(RefusalReason.HANDSHAKE_STEP_TIMEOUT, "late"),
]


@pytest.mark.parametrize("exc", TIMEOUTS, ids=lambda e: type(e).__name__)
def test_the_timeout_base_is_caught_as_asyncio_timeout_and_as_mimirlite_error(exc: Exception) -> None:
    with pytest.raises(asyncio.TimeoutError):
        raise exc
    with pytest.raises(TimeoutError):
        raise exc
    with pytest.raises(MimirliteError):
        raise exc
    with pytest.raises(MimirliteTimeoutError):
        raise exc


async def test_the_timeout_base_passes_wait_for_and_an_except_asyncio_timeout() -> None:
    async def late() -> None:
        raise IdentifyTimeoutError("identify not received")

    caught: BaseException | None = None
    try:
        await asyncio.wait_for(late(), 5)
    except asyncio.TimeoutError as exc:
        caught = exc
    assert isinstance(caught, IdentifyTimeoutError)


def test_answer_timeout_stays_a_chat_error() -> None:
    assert issubclass(AnswerTimeoutError, ChatError)


def test_existing_names_still_import_from_their_modules() -> None:
    from mimirlite.protocols.identify import IdentifyTimeoutError as Identify2
    from mimirlite.protocols.ping import PingTimeoutError as Ping2

    assert Identify2 is IdentifyTimeoutError
    assert Ping2 is PingTimeoutError
    assert errors.HandshakeTimeoutError("handshake_step_timeout", "x").kind == "handshake_step_timeout"


OLD_CLOSE_KINDS = {
    "local",
    "remote",
    "go_away",
    "idle",
    "dead_link",
    "write_timeout",
    "protocol_error",
    "evicted",
}
OLD_REFUSALS = {
    # host
    "connections",
    "connections_per_ip",
    "pending_handshakes",
    "pending_handshakes_per_ip",
    "evicted_pending",
    "first_byte_timeout",
    "handshake_step_timeout",
    "handshake_timeout",
    "allowlist",
    "accept_paused",
    "streams",
    "streams_total",
    "streams_per_connection",
    "streams_per_peer",
    "streams_per_ip",
    "buffer",
    "memory",
    "identify_over_cap",
    "identify_push",
    # kad
    "kad_over_cap",
    "kad_put_value",
    "kad_add_provider_rate",
    "kad_foreign_provider",
    "kad_provider_store",
    # node
    "rate_limited",
    "overloaded",
    # gateway
    "auth",
    "host",
    "content_type",
    "smuggling",
    "head_too_large",
    "body_too_large",
    "bad_http",
    "request_timeout",
    "forbidden_path",
    "idle_evicted",
}
OLD_PROTOCOL_ERRORS = {
    "yamux",
    "ping_flood",
    "stream_flood",
    "reset_flood",
    "window_update_flood",
    "noise",
    "upgrade",
    "negotiation",
    "identify",
    "kad",
    "relay",
    "autonat",
    "dcutr",
}


@pytest.mark.parametrize(
    ("enum", "old"),
    [
        (CloseKind, OLD_CLOSE_KINDS),
        (RefusalReason, OLD_REFUSALS),
        (ProtocolErrorKind, OLD_PROTOCOL_ERRORS),
        (EndReason, {"fair_share", "stall_timeout"}),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_enum_values_are_the_old_strings(enum: type[errors.StrEnum], old: set[str]) -> None:
    assert {m.value for m in enum} == old
    for member in enum:
        assert member == member.value
        assert hash(member) == hash(member.value)
        assert member.name.lower() == member.value
        assert str(member) == f"{member}" == "%s" % (member,) == member.value  # noqa: UP031
        assert format(member, ">30") == format(member.value, ">30")
        assert json.dumps({member: member}) == json.dumps({member.value: member.value})


def test_the_modules_constants_are_the_enum_members() -> None:
    assert packets.RATE_LIMITED == RefusalReason.RATE_LIMITED
    assert packets.OVERLOADED == RefusalReason.OVERLOADED
    assert limits.FAIR_SHARE is EndReason.FAIR_SHARE
    assert limits.STALLED is EndReason.STALL_TIMEOUT
    from mimirlite.wire import yamux

    assert {
        yamux.KIND_PROTOCOL,
        yamux.KIND_PING_FLOOD,
        yamux.KIND_STREAM_FLOOD,
        yamux.KIND_RESET_FLOOD,
        yamux.KIND_WINDOW_UPDATE_FLOOD,
    } <= {m.value for m in ProtocolErrorKind}


def test_metrics_output_is_the_same_with_enum_keys_and_literal_keys() -> None:
    by_enum, by_text = HostMetrics(), HostMetrics()
    by_enum.refused[RefusalReason.STREAMS] += 3
    by_enum.refused["streams"] += 1  # a literal and a member count under one key
    by_enum.closed[CloseKind.GO_AWAY] += 1
    by_enum.protocol_errors[ProtocolErrorKind.PING_FLOOD] += 2
    by_text.refused["streams"] += 4
    by_text.closed["go_away"] += 1
    by_text.protocol_errors["ping_flood"] += 2
    node_enum, node_text = NodeMetrics(), NodeMetrics()
    node_enum.ended[EndReason.STALL_TIMEOUT] += 1
    node_enum.refused[RefusalReason.OVERLOADED] += 1
    node_text.ended["stall_timeout"] += 1
    node_text.refused["overloaded"] += 1

    line = stats_line(host=_Src(by_enum), node=_Src(node_enum))
    assert line == stats_line(host=_Src(by_text), node=_Src(node_text))
    assert "host.refused.streams=4 host.closed.go_away=1 host.protocol_errors.ping_flood=2" in line
    assert "node.ended.stall_timeout=1" in line
    snapshot = by_enum.as_dict()
    assert repr(snapshot) == repr(by_text.as_dict())
    assert all(type(k) is str for k in snapshot["refused"])  # type: ignore[union-attr]
    assert json.dumps(node_enum.as_dict()) == json.dumps(node_text.as_dict())


def test_gateway_metrics_output_is_the_same_with_enum_keys() -> None:
    by_enum, by_text = GatewayMetrics(), GatewayMetrics()
    by_enum.refused[RefusalReason.AUTH] += 1
    by_enum.refused[RefusalReason.CONNECTIONS_PER_IP] += 2
    by_text.refused["auth"] += 1
    by_text.refused["connections_per_ip"] += 2
    assert repr(by_enum.as_dict()) == repr(by_text.as_dict())


def test_a_log_line_with_a_member_reads_as_the_old_literal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mimirlite.test_errors")
    log = logging.getLogger("mimirlite.test_errors")
    log.info("refused (%s) [%s]", RefusalReason.HEAD_TOO_LARGE, CloseKind.DEAD_LINK)
    assert logged(caplog, "refused") == ["refused (head_too_large) [dead_link]"]


class _Src:
    def __init__(self, metrics: HostMetrics | NodeMetrics) -> None:
        self.metrics = metrics
