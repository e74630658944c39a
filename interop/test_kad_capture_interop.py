"""The kad message codec against the bytes @libp2p/kad-dht 14.2.0 writes and reads, both ways.

JS -> mimirlite: a mimirlite Host serves ``/ipfs/lan/kad/1.0.0`` with a handler that records every
length-prefixed body it gets and answers minimal valid responses built with the codec; a JS kad peer
(``kad-peer.mjs``, fixed key seed) dials it, provides a CID (FIND_NODE, then ADD_PROVIDER), looks up
providers (GET_PROVIDERS) and sends PING, GET_VALUE and PUT_VALUE through kad-dht's own Network. Each body
decodes, nothing is dropped, and encodes back to the same bytes.

mimirlite -> JS: mimirlite sends FIND_NODE, GET_PROVIDERS, GET_VALUE and PING to the JS peer over one
stream and decodes its answers (closer peers are real peers of its routing table; PING is echoed).

Identities are fixed (Ed25519 from the seed of 28 zero bytes and the uint32 big-endian N, as
``kad-peer.mjs --key-seed N``): JS 1 and 2, mimirlite 3. ``KAD_CAPTURE=path.json python -m pytest
interop/test_kad_capture_interop.py`` writes every body seen, as hex, to path.json: the literals of
tests/protocols/kad/test_messages.py come from such a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from jskad import LAN_PROTOCOL, JsKadPeer

from mimirlite import Host, KeyPair, PeerId, Stream
from mimirlite.errors import ClosedError
from mimirlite.mimir.models import dht_cids, dht_keys
from mimirlite.protocols.identify import Identify
from mimirlite.protocols.kad.messages import (
    KadMessage,
    MessageLimits,
    MessageType,
    PeerInfo,
    decode_message,
    encode_message,
)
from mimirlite.protocols.kad.routing import distance, kad_key, peer_key
from mimirlite.wire import lp
from mimirlite.wire.multiaddr import Multiaddr
from mimirlite.wire.protobuf import encode_bytes_field
from tests.helpers.waiting import until

pytestmark = [
    pytest.mark.usefixtures("no_leaks"),
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

JS_SEED, JS2_SEED, PY_SEED, FAKE_SEED = 1, 2, 3, 9
MODEL = "llama3.2:latest"
CID_PROVIDED = dht_cids(MODEL)[0]  # the JS peer provides this one
KEY_PROVIDED = dht_keys(MODEL)[0]
CID_LOOKED_UP = dht_cids(MODEL)[1]  # and looks this one up: mimirlite answers a made-up provider
KEY_LOOKED_UP = dht_keys(MODEL)[1]
FAKE_ADDR = "/ip4/127.0.0.1/tcp/4001"
VALUE_KEY = b"/mimirlite/capture"
VALUE_KEY_MH = b"\x12\x20" + hashlib.sha256(VALUE_KEY).digest()  # a sha2-256 multihash, as CIDs carry
LIMITS = MessageLimits()


def seeded_keypair(n: int) -> KeyPair:
    """The identity of ``kad-peer.mjs --key-seed n``."""
    return KeyPair(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(28) + n.to_bytes(4, "big")))


def record_bytes(key: bytes, value: bytes, time_received: str) -> bytes:
    """A libp2p ``Record`` (key 1, value 2, timeReceived 5), as @libp2p/record serializes one."""
    return (
        encode_bytes_field(1, key)
        + encode_bytes_field(2, value)
        + encode_bytes_field(5, time_received.encode())
    )


@dataclass
class Recorder:
    """The mimirlite side's kad handler: records each body, answers with the codec."""

    fake: PeerInfo
    bodies: list[bytes] = field(default_factory=list)
    per_stream: list[int] = field(default_factory=list)

    def respond(self, msg: KadMessage) -> KadMessage | None:
        t = msg.type
        if t is MessageType.ADD_PROVIDER:
            return None  # kad-dht sends it with sendMessage: no response is read
        if t in (MessageType.PING, MessageType.PUT_VALUE):
            return msg  # both echoed, as kad-dht does
        if t is MessageType.FIND_NODE:
            return KadMessage(MessageType.FIND_NODE)
        if t is MessageType.GET_PROVIDERS:
            providers = (self.fake,) if msg.key == KEY_LOOKED_UP else ()
            return KadMessage(MessageType.GET_PROVIDERS, key=msg.key, providers=providers)
        return KadMessage(MessageType.GET_VALUE, key=msg.key)

    async def handle(self, stream: Stream) -> None:
        n = 0
        try:
            while (body := await stream.read_message(LIMITS.max_message_size)) is not None:
                self.bodies.append(body)
                n += 1
                answer = self.respond(decode_message(body, LIMITS)[0])
                if answer is not None:
                    await stream.write(lp.encode_message(encode_message(answer)))
            await stream.close_write()
        except ClosedError:
            pass  # the JS side may abort a stream it is done with
        finally:
            self.per_stream.append(n)

    def of_type(self, t: MessageType) -> list[tuple[KadMessage, bytes]]:
        out = []
        for b in self.bodies:
            msg = decode_message(b, LIMITS)[0]
            if msg.type is t:
                out.append((msg, b))
        return out


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    async with Host(seeded_keypair(PY_SEED), listen=["/ip4/127.0.0.1/tcp/0"]) as h:
        Identify(h)
        yield h


def _captured(name: str, body: bytes) -> None:
    path = os.environ.get("KAD_CAPTURE")
    if not path or name == "-":
        return
    data: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        data = json.load(f)
    data[name] = body.hex()
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)


def assert_round_trip(body: bytes) -> KadMessage:
    msg, dropped = decode_message(body, LIMITS)
    assert dropped == 0
    assert encode_message(msg) == body
    return msg


async def test_seeded_identities_match_the_js_peer() -> None:
    async with await JsKadPeer.start(key_seed=JS_SEED) as js:
        assert js.peer_id == str(seeded_keypair(JS_SEED).peer_id)


async def test_js_requests_decode_and_encode_back_byte_identical(host: Host) -> None:
    fake = PeerInfo(seeded_keypair(FAKE_SEED).peer_id, (Multiaddr.parse(FAKE_ADDR),))
    rec = Recorder(fake)
    host.set_handler(LAN_PROTOCOL, rec.handle)
    py_id = str(host.peer_id)
    async with await JsKadPeer.start(key_seed=JS_SEED, bootstrap=[host.listen_addrs[0]]) as js:
        await until(lambda: _in_table(js, py_id), 20, "mimirlite in the JS routing table")

        await js.provide(CID_PROVIDED)
        await until(lambda: rec.of_type(MessageType.ADD_PROVIDER), 10, "ADD_PROVIDER")
        providers = await js.find_providers(CID_LOOKED_UP, timeout=10, count=1)
        # kad-dht read our GET_PROVIDERS answer: the made-up provider, with its address
        assert providers == [{"id": str(fake.peer), "addrs": [FAKE_ADDR]}]
        pong = await js.send(py_id, "PING")
        assert pong["type"] == "PING"
        got = await js.send(py_id, "GET_VALUE", key=VALUE_KEY)
        assert got["type"] == "GET_VALUE"
        assert got["record"] is None
        record = record_bytes(VALUE_KEY, b"capture", "2026-12-06T09:00:00.000Z")
        put = await js.send(py_id, "PUT_VALUE", key=VALUE_KEY, record=record)
        assert put["type"] == "PUT_VALUE"
        assert put["record"] == {"key": VALUE_KEY.hex(), "value": b"capture".hex()}
        assert not js.uncaught()

    for i, body in enumerate(rec.bodies):
        msg = assert_round_trip(body)
        _captured(f"js_request_{i}_{msg.type.name}", body)
    seen = {decode_message(b)[0].type for b in rec.bodies}
    assert seen == set(MessageType)
    # one request per stream: kad-dht opens a stream for each and closes it after the answer
    assert set(rec.per_stream) == {1}

    # what kad-dht 14.2 puts in each
    js_id = seeded_keypair(JS_SEED).peer_id
    [(add, _)] = rec.of_type(MessageType.ADD_PROVIDER)
    assert add.key == KEY_PROVIDED  # the multihash of the CID, not the CID
    assert [p.peer for p in add.providers] == [js_id]
    assert add.providers[0].addrs and all(
        str(a).startswith("/ip4/127.0.0.1/tcp/") for a in add.providers[0].addrs
    )
    assert add.closer == () and add.record is None and add.cluster_level == 0
    find_keys = {m.key for m, _ in rec.of_type(MessageType.FIND_NODE)}
    assert KEY_PROVIDED in find_keys  # provide's walk to the closest peers
    [(gp, _)] = rec.of_type(MessageType.GET_PROVIDERS)
    assert gp.key == KEY_LOOKED_UP and gp.providers == () and gp.closer == ()
    # kad-dht PINGs a new contact before it adds it to its routing table: the first request of all
    assert decode_message(rec.bodies[0])[0].type is MessageType.PING
    pings = rec.of_type(MessageType.PING)
    assert len(pings) == 2  # that one and ours
    assert all(m == KadMessage(MessageType.PING) and b == b"\x08\x05" for m, b in pings)
    # its self-query: FIND_NODE for its own peer ID
    assert js_id.to_bytes() in find_keys
    [(put_msg, _)] = rec.of_type(MessageType.PUT_VALUE)
    assert put_msg.key == VALUE_KEY and put_msg.record == record


def closer_than(key: bytes, than: PeerId, peers: list[PeerId]) -> set[PeerId]:
    """Which of ``peers`` are closer to ``key`` than ``than`` in the keyspace."""
    target = kad_key(key)
    limit = distance(peer_key(than), target)
    return {p for p in peers if distance(peer_key(p), target) < limit}


async def _in_table(js: JsKadPeer, peer_id: str) -> bool:
    return peer_id in await js.routing_table()


async def _request(stream: Stream, msg: KadMessage, name: str) -> KadMessage:
    await stream.write(lp.encode_message(encode_message(msg)))
    body = await asyncio.wait_for(stream.read_message(LIMITS.max_message_size), 10)
    assert body is not None
    _captured(name, body)
    return assert_round_trip(body)


async def test_js_answers_decode(host: Host) -> None:
    host.set_handler(LAN_PROTOCOL, Recorder(PeerInfo(host.peer_id)).handle)
    py_id = str(host.peer_id)
    js2_id = seeded_keypair(JS2_SEED).peer_id
    async with (
        await JsKadPeer.start(key_seed=JS_SEED) as js,
        await JsKadPeer.start(key_seed=JS2_SEED, bootstrap=[js.addr]) as js2,
    ):
        await until(lambda: _in_table(js, str(js2_id)), 20, "JS 2 in JS 1's routing table")
        await js.provide(CID_PROVIDED)
        await host.dial(js.addr)
        await until(lambda: _in_table(js, py_id), 20, "mimirlite in JS 1's routing table")

        stream = await host.new_stream(PeerId.from_string(js.peer_id), LAN_PROTOCOL)
        async with stream:
            # several requests on one stream: kad-dht answers each in turn; one it refuses (GET_VALUE
            # without a key) gets no answer at all, and the stream goes on
            await stream.write(lp.encode_message(encode_message(KadMessage(MessageType.GET_VALUE))))
            ping = await _request(stream, KadMessage(MessageType.PING), "js_answer_PING")
            assert ping == KadMessage(MessageType.PING)

            found = await _request(
                stream, KadMessage(MessageType.FIND_NODE, key=js2_id.to_bytes()), "js_answer_FIND_NODE"
            )
            assert found.type is MessageType.FIND_NODE and found.key == b""
            # JS 2 comes twice, with its address: once as the peer the key names (kad-dht looks
            # the key up in its peer store first), once from its routing table (peers closer to
            # the key than the requester: mimirlite is not)
            assert [p.peer for p in found.closer] == [js2_id, js2_id]
            js2_addr = js2.addr.rsplit("/p2p/", 1)[0]
            assert all([str(a) for a in p.addrs] == [js2_addr] for p in found.closer)

            provs = await _request(
                stream, KadMessage(MessageType.GET_PROVIDERS, key=KEY_PROVIDED), "js_answer_GET_PROVIDERS"
            )
            assert provs.type is MessageType.GET_PROVIDERS and provs.key == KEY_PROVIDED
            # closer: the peers of its table closer to the key than itself (not the requester)
            js_id = PeerId.from_string(js.peer_id)
            assert {p.peer for p in provs.closer} == closer_than(KEY_PROVIDED, js_id, [js2_id, host.peer_id])
            # providers: itself, with its own address
            assert [p.peer for p in provs.providers] == [js_id]
            assert [str(a) for a in provs.providers[0].addrs] == [js.addr.rsplit("/p2p/", 1)[0]]

            missing = await _request(
                stream, KadMessage(MessageType.GET_VALUE, key=VALUE_KEY), "js_answer_GET_VALUE"
            )
            # a key it lacks: the key echoed, no record, its closest peers
            assert missing.type is MessageType.GET_VALUE and missing.key == VALUE_KEY
            assert missing.record is None
            # closer: the peers of its table closer to the key than the requester
            assert {p.peer for p in missing.closer} == closer_than(VALUE_KEY, host.peer_id, [js2_id])

            # ADD_PROVIDER has no answer; kad-dht keeps a provider entry only for the sender itself
            # (with at least one address): one naming another peer is ignored
            me = PeerInfo(host.peer_id, (Multiaddr.parse(host.listen_addrs[0]).without_peer_id(),))
            other = PeerInfo(seeded_keypair(FAKE_SEED).peer_id, (Multiaddr.parse(FAKE_ADDR),))
            for key, info in ((KEY_LOOKED_UP, me), (VALUE_KEY_MH, other)):
                add = KadMessage(MessageType.ADD_PROVIDER, key=key, providers=(info,))
                await stream.write(lp.encode_message(encode_message(add)))
            mine = await _request(stream, KadMessage(MessageType.GET_PROVIDERS, key=KEY_LOOKED_UP), "-")
            assert mine.providers == (me,)
            theirs = await _request(stream, KadMessage(MessageType.GET_PROVIDERS, key=VALUE_KEY_MH), "-")
            assert theirs.providers == ()
            await stream.close_write()
        assert not js.uncaught() and not js2.uncaught()
