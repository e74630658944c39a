"""Sans-IO protocol cores: pure state machines over bytes, no sockets, no clock, no event loop.

Every core follows one calling convention (in the manner of h11 and aioquic); an asyncio shell in
:mod:`mimirlite.net` drives it: feed what the peer sent, process the events, transmit.

- ``receive_data(data[, now]) -> list[Event]``: feed received bytes (a ``memoryview`` of a reused buffer
  is fine: a core copies what it keeps) and get the events they complete, in order.
- ``data_to_send() -> bytes``: what the core queued for the peer since the last call (``b""`` when
  nothing); the shell calls it after processing the events of a call.
- Cores with deadlines: ``get_timer() -> float | None`` (when the next deadline passes, None when there
  is none) and ``handle_timer(now) -> list[Event]`` (the shell calls it once that time is reached).
- Framing codecs that hand out one item at a time are pulled instead, as h11's ``next_event`` is:
  :class:`~mimirlite.wire.lp.LPDecoder` takes ``feed(data)``, then ``next_message()`` until None.
  Stateless codecs (varint, protobuf, multiaddr, multibase, yamux frames) are plain functions.
- Time is passed in (``now``, in the shell's loop time), never read from a clock, so tests are literal.
- Events are small frozen dataclasses (``slots=True``) defined beside their core, e.g.
  :class:`~mimirlite.wire.multistream.ProtocolSelected`, :class:`~mimirlite.wire.noise.HandshakeComplete`,
  :class:`~mimirlite.wire.upgrade.Upgraded`.
- States: one Enum per machine (e.g. :class:`~mimirlite.wire.noise.HandshakeState`,
  :class:`~mimirlite.wire.upgrade.UpgradeState`) changed through one ``_set_state`` that logs at DEBUG.
- Errors: a core raises a :class:`~mimirlite.errors.ProtocolError` subclass on bad peer input (and a
  :class:`~mimirlite.errors.LocalError` on misuse), except where it reports the failure as an event:
  :class:`~mimirlite.wire.upgrade.Upgrader` never raises on peer input, it emits
  :class:`~mimirlite.wire.upgrade.UpgradeFailed`.
"""
