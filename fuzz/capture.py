"""Capture the seed corpora of the fuzz harnesses from real traffic.

Runs mimirlite hosts on 127.0.0.1 (a MimirNode with the echo backend and a MimirClient chatting with
it, identify, identify push and ping; plus, when node and interop/node_modules are there, a js-libp2p
peer from interop/ that dials us, echoes, pings and identifies) and records what each decoder is fed:
multistream reads, Noise handshake messages and payloads, decrypted transport plaintexts, yamux
input and the local calls between it, LP message bodies, mimir packets, identify messages, keys and
peer IDs. mDNS seeds are the packets records.py builds and the js-libp2p packets of
tests/helpers/mdns.py.

Every handshake here uses fuzzlib's fixed Noise static key, so captured identity payloads verify in the
harnesses. The mimir node runs as IDENTITY_A and the client as IDENTITY_B (fuzzlib's fixed keys).

    python fuzz/capture.py [--out fuzz/corpus] [--no-js]

Each ``<out>/<harness>/`` directory is replaced by the new seeds (small files named by their SHA-1).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import shutil
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import fuzzlib  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402

from mimirlite.discovery import records as mdns_records  # noqa: E402
from mimirlite.identity import KeyPair, KeyType, PeerId, PublicKey  # noqa: E402
from mimirlite.mimir import packets  # noqa: E402
from mimirlite.net.stream import Stream  # noqa: E402
from mimirlite.protocols import identify as identify_module  # noqa: E402
from mimirlite.wire.lp import encode_message  # noqa: E402
from mimirlite.wire.multistream import MultistreamDialer, MultistreamListener  # noqa: E402
from mimirlite.wire.noise import NoiseHandshake, NoiseTransport  # noqa: E402
from mimirlite.wire.varint import encode_uvarint  # noqa: E402
from mimirlite.wire.yamux import YamuxSession  # noqa: E402

MAX_SEED = 8 * 1024
"""Largest seed file; longer captures are cut at a record boundary."""
MAX_SEEDS = 32
"""Seeds kept per harness (the first ones captured, duplicates dropped)."""
MAX_PLAINTEXTS = 12
"""Transport plaintexts kept per connection."""
TIMEOUT = 30.0


class Recorder:
    """What the decoders saw, per decoder instance, turned into seeds at the end."""

    def __init__(self) -> None:
        self.seeds: dict[str, list[bytes]] = defaultdict(list)
        self.ms: dict[int, tuple[Any, list[bytes]]] = {}
        self.handshakes: dict[int, tuple[NoiseHandshake, list[bytes]]] = {}
        self.initiator_payloads: dict[int, bytes] = {}  # id(transport) -> the payload its handshake sent
        self.sent: dict[int, tuple[NoiseTransport, list[bytes]]] = {}
        self.received: dict[int, tuple[NoiseTransport, list[bytes]]] = {}
        self.yamux: dict[int, tuple[YamuxSession, list[bytes]]] = {}
        self.lp: dict[int, tuple[Stream, list[bytes]]] = {}

    def add(self, harness: str, seed: bytes) -> None:
        seeds = self.seeds[harness]
        if len(seed) <= MAX_SEED and seed not in seeds and len(seeds) < MAX_SEEDS:
            seeds.append(seed)

    # ---- the hooks ----

    def install(self) -> None:
        rec = self

        def wrap(owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
            original = getattr(owner, name)
            setattr(owner, name, functools.wraps(original)(make(original)))

        for cls in (MultistreamDialer, MultistreamListener):

            def ms_receive(original: Callable[..., Any]) -> Callable[..., Any]:
                def receive_data(self: Any, data: Any) -> Any:
                    rec.ms.setdefault(id(self), (self, []))[1].append(bytes(data))
                    return original(self, data)

                return receive_data

            wrap(cls, "receive_data", ms_receive)

        def hs_receive(original: Callable[..., Any]) -> Callable[..., Any]:
            def receive_data(self: NoiseHandshake, data: Any) -> Any:
                rec.handshakes.setdefault(id(self), (self, []))[1].append(bytes(data))
                return original(self, data)

            return receive_data

        def hs_verify(original: Callable[..., Any]) -> Callable[..., Any]:
            def _verify(self: NoiseHandshake, payload: bytes, remote_static: bytes) -> Any:
                rec.add("noise_payload", b"\x00" + remote_static + payload)
                rec.add("noise_payload", b"\x01" + remote_static + payload)
                rec.add("protobuf", b"\x00" + payload)
                return original(self, payload, remote_static)

            return _verify

        def hs_transport(original: Callable[..., Any]) -> Callable[..., Any]:
            def transport(self: NoiseHandshake) -> NoiseTransport:
                t: NoiseTransport = original(self)
                if self._initiator:
                    rec.initiator_payloads[id(t)] = self._payload
                return t

            return transport

        wrap(NoiseHandshake, "receive_data", hs_receive)
        wrap(NoiseHandshake, "_verify", hs_verify)
        wrap(NoiseHandshake, "transport", hs_transport)

        def tr_encrypt(original: Callable[..., Any]) -> Callable[..., Any]:
            def encrypt(self: NoiseTransport, data: Any) -> bytes:
                if data:
                    kept = rec.sent.setdefault(id(self), (self, []))[1]
                    if len(kept) < MAX_PLAINTEXTS:
                        kept.append(bytes(data))
                return original(self, data)  # type: ignore[no-any-return]

            return encrypt

        def tr_receive(original: Callable[..., Any]) -> Callable[..., Any]:
            def receive_data(self: NoiseTransport, data: Any) -> list[bytes]:
                got: list[bytes] = original(self, data)
                kept = rec.received.setdefault(id(self), (self, []))[1]
                kept.extend(got[: max(0, MAX_PLAINTEXTS - len(kept))])
                return got

            return receive_data

        wrap(NoiseTransport, "encrypt", tr_encrypt)
        wrap(NoiseTransport, "receive_data", tr_receive)

        def yamux_log(session: YamuxSession) -> list[bytes]:
            return rec.yamux.setdefault(id(session), (session, []))[1]

        def ym_receive(original: Callable[..., Any]) -> Callable[..., Any]:
            def receive_data(self: YamuxSession, data: Any) -> Any:
                yamux_log(self).append(fuzzlib.encode_yamux_data(bytes(data)))
                return original(self, data)

            return receive_data

        def ym_op(
            op: int, size: Callable[..., int] | None
        ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
            def make(original: Callable[..., Any]) -> Callable[..., Any]:
                def call(self: YamuxSession, *args: Any) -> Any:
                    sel = 0
                    if op in (fuzzlib.OP_SEND, fuzzlib.OP_CONSUMED, fuzzlib.OP_CLOSE, fuzzlib.OP_RESET):
                        found = fuzzlib.selector_for(list(self._streams), args[0])
                        sel = 0xFF if found is None else found  # 0xFF: id 127, unknown here
                    log = yamux_log(self)
                    if op == fuzzlib.OP_SEND:
                        n = len(args[1])
                        if n <= 0xFFF:
                            log.append(fuzzlib.encode_yamux_op(fuzzlib.OP_SEND, n, sel))
                        else:
                            log.append(
                                fuzzlib.encode_yamux_op(fuzzlib.OP_SEND_MANY, min(-(-n // 64), 0xFFF), sel)
                            )
                    elif op == fuzzlib.OP_CONSUMED:
                        n = args[1]
                        while n > 0:
                            log.append(fuzzlib.encode_yamux_op(op, min(n, 0xFFF), sel))
                            n -= 0xFFF
                    else:
                        log.append(fuzzlib.encode_yamux_op(op, size(*args) if size else 0, sel))
                    return original(self, *args)

                return call

            return make

        wrap(YamuxSession, "receive_data", ym_receive)
        wrap(YamuxSession, "open_stream", ym_op(fuzzlib.OP_OPEN, None))
        wrap(YamuxSession, "send_data", ym_op(fuzzlib.OP_SEND, None))
        wrap(YamuxSession, "consumed", ym_op(fuzzlib.OP_CONSUMED, None))
        wrap(YamuxSession, "close_stream", ym_op(fuzzlib.OP_CLOSE, None))
        wrap(YamuxSession, "reset_stream", ym_op(fuzzlib.OP_RESET, None))
        wrap(YamuxSession, "ping", ym_op(fuzzlib.OP_PING, None))
        wrap(YamuxSession, "go_away", ym_op(fuzzlib.OP_GO_AWAY, lambda code=0: code & 0xFFF))

        def read_message(original: Callable[..., Any]) -> Callable[..., Any]:
            async def read(self: Stream, *args: Any) -> Any:
                body = await original(self, *args)
                if body is not None:
                    rec.lp.setdefault(id(self), (self, []))[1].append(body)
                return body

            return read

        wrap(Stream, "read_message", read_message)

        def parse_packet(original: Callable[..., Any]) -> Callable[..., Any]:
            def parse(obj: Any, expected: str | None = None) -> Any:
                body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
                rec.add("mimir_packets", bytes((fuzzlib.EXPECTED_EVENTS.index(expected),)) + body)
                return original(obj, expected)

            return parse

        wrap(packets, "parse_packet", parse_packet)

        def decode_identify(original: Callable[..., Any]) -> Callable[..., Any]:
            def decode(buf: bytes, *args: Any) -> Any:
                rec.add("identify", bytes(buf))
                rec.add("protobuf", b"\x02" + bytes(buf))
                return original(buf, *args)

            return decode

        wrap(identify_module, "decode_identify", decode_identify)

        def before(owner: Any, name: str, see: Callable[[Any], None]) -> None:
            original = getattr(owner, name)  # a classmethod, bound to owner

            def call(cls: Any, value: Any) -> Any:
                see(value)
                return original(value)

            setattr(owner, name, classmethod(call))

        def public_key(buf: bytes) -> None:
            rec.add("keys", b"\x00" + bytes(buf))
            rec.add("protobuf", b"\x01" + bytes(buf))

        before(PublicKey, "from_protobuf", public_key)
        before(PeerId, "from_bytes", lambda buf: rec.add("keys", b"\x02" + bytes(buf)))
        before(PeerId, "from_string", lambda text: rec.add("keys", b"\x03" + text.encode()))

    # ---- seeds ----

    def finish(self) -> None:
        for ms, chunks in self.ms.values():
            if isinstance(ms, MultistreamDialer):
                try:
                    mode = 1 | fuzzlib.PROTOCOL_SETS.index(ms._protocols) << 1
                except ValueError:
                    continue
            else:
                mode = 0
            self.add("multistream", bytes((mode,)) + fuzzlib.encode_records(chunks))
        for hs, chunks in self.handshakes.values():
            self.add("noise_handshake", bytes((2 if hs._initiator else 0,)) + fuzzlib.encode_records(chunks))
        for tid, (_, sent) in self.sent.items():
            payload = self.initiator_payloads.get(tid)
            if payload is not None:
                for mode in (1, 3, 5):
                    self.add("noise_handshake", bytes((mode,)) + fuzzlib.encode_records([payload, *sent[:2]]))
        sender = NoiseTransport(fuzzlib.TRANSPORT_KEY_B, fuzzlib.TRANSPORT_KEY_A)
        for _, plaintexts in self.received.values():
            if not plaintexts:
                continue
            body = fuzzlib.encode_records(plaintexts)
            self.add("noise_transport", bytes((1, 0, 0)) + body)
            self.add("noise_transport", bytes((1, 7, 0)) + body)
            wire = [sender.encrypt(p) for p in plaintexts]
            self.add("noise_transport", b"\x00" + fuzzlib.encode_records(wire))
        for session, log in self.yamux.values():
            seed = bytearray((1 if session.is_client else 0,))
            for rec in log:
                if len(seed) + len(rec) > MAX_SEED:
                    break
                seed += rec
            self.add("yamux", bytes(seed))
        for _, bodies in self.lp.values():
            framed = [encode_message(b) for b in bodies]
            self.add("lp", b"\x00" + fuzzlib.encode_records(framed))
            self.add("lp", b"\x04" + fuzzlib.encode_records([b"".join(framed)]))
            self.add("varint", bytes((0,)) + framed[0][:10])
        for value in (0, 1, 127, 128, 300, 16383, 16384, 2**32, 2**63 - 1):
            self.add("varint", b"\x00" + encode_uvarint(value))

    def write(self, out: Path) -> None:
        for harness, seeds in sorted(self.seeds.items()):
            target = out / harness
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            for seed in seeds:
                (target / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
            print(f"{harness:16} {len(seeds):3} seeds, {sum(map(len, seeds)):6} bytes")


# --- traffic ---------------------------------------------------------------------------------------


async def mimir_traffic() -> None:
    """A node (echo backend) and a client: identify, chats, an error, ping, identify push."""
    from mimirlite.mimir import EchoBackend, MimirClient, MimirNode
    from mimirlite.net.host import Host
    from mimirlite.protocols import Identify, Ping

    node_host = Host(fuzzlib.IDENTITY_A, listen=["/ip4/127.0.0.1/tcp/0"])
    async with node_host, MimirNode(node_host, EchoBackend()):
        addr = node_host.dialable_addrs[0]
        async with MimirClient(peers=[addr], keypair=fuzzlib.IDENTITY_B) as client:
            messages = [{"role": "user", "content": "hello from the fuzz capture, three words"}]
            async for _ in client.chat(messages):
                pass
            system = {"role": "system", "content": "be brief"}
            async for _ in client.chat([system, *messages], model="echo", temperature=0.2, max_tokens=8):
                pass
            # requests the node refuses: an unknown model, the wrong event, no messages
            for request in (
                packets.Packet(packets.MESSAGE, {"messages": messages, "model": "none:1b"}, "r1"),
                packets.Packet(packets.QUERY, {"messages": messages}, "r2"),
                packets.Packet(packets.MESSAGE, {"messages": []}, "r3"),
            ):
                stream = await client.host.new_stream(node_host.peer_id, packets.CHAT_PROTOCOL)
                await stream.write_json(request.to_json())
                await stream.close_write()
                while (obj := await stream.read_json()) is not None:
                    packets.parse_packet(obj)
                await stream.close()
            conn = client.host.connections[node_host.peer_id]
            services = [s for s in client._services if isinstance(s, (Identify, Ping))]
            for service in services:
                if isinstance(service, Identify):
                    await service.identify(conn)
                    await service.push()
                else:
                    await service.ping(conn)


async def js_traffic() -> None:
    """A js-libp2p peer (interop/peer.mjs): dials us, echoes, pings, identifies both ways."""
    sys.path.insert(0, str(ROOT / "interop"))
    from jspeer import JsPeer, node_available

    from mimirlite.net.host import Host
    from mimirlite.protocols import Identify, Ping

    if not node_available():
        print("js peer: skipped (node or interop/node_modules missing)")
        return

    async def echo(stream: Stream) -> None:
        while data := await stream.read():
            await stream.write(data)

    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        host.set_handler("/echo/1.0.0", echo)
        identify = Identify(host, run_on_connect=True)
        ping = Ping(host)
        js = await JsPeer.start("--listen", "/ip4/127.0.0.1/tcp/0")
        try:
            conn = await host.dial(js.addr)
            await identify.identify(conn)
            await ping.ping(conn)
            ours = host.dialable_addrs[0]
            await js.call("echo", addr=ours, size=3000, chunk=1000, timeout=TIMEOUT)
            await js.call("ping", addr=ours, timeout=TIMEOUT)
            await js.call("yamux_ping", addr=ours, timeout=TIMEOUT)
            await identify.push()
            await js.call("hangup", addr=ours, timeout=TIMEOUT)
            # and a connection the js peer dials
            await js.call("echo", addr=ours, size=100, chunk=100, timeout=TIMEOUT)
        finally:
            await js.stop()


def built_seeds(rec: Recorder) -> None:
    """Seeds that are not traffic: mDNS packets, and keys of the other libp2p key types."""
    from tests.helpers.mdns import JS_QUERY, JS_RESPONSE

    peer = fuzzlib.IDENTITY_B.peer_id
    packets_built = [
        JS_QUERY,
        JS_RESPONSE,
        mdns_records.encode_query(),
        mdns_records.encode_response("fuzzpeer", [f"/ip4/127.0.0.1/tcp/4001/p2p/{peer}"]),
        mdns_records.encode_response(
            "k3m9q2x7v1b8n4c6",
            [f"/ip4/10.0.0.{i}/tcp/{4000 + i}/p2p/{peer}" for i in range(1, 6)]
            + [f"/ip6/::1/tcp/4001/p2p/{peer}", f"/ip4/192.168.1.2/tcp/4001/p2p/{peer.to_cid_string()}"],
        ),
    ]
    for packet in packets_built:
        if packet is not None:
            rec.add("mdns", b"\x00" + packet)
            rec.add("mdns", b"\x01" + packet)
    for pair in (fuzzlib.IDENTITY_A, fuzzlib.IDENTITY_B):
        rec.add("keys", b"\x01" + pair.to_private_protobuf())
        rec.add("keys", b"\x02" + pair.peer_id.to_bytes())
        rec.add("keys", b"\x03" + pair.peer_id.to_cid_string().encode())
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    others = [
        PublicKey(KeyType.RSA, rsa.generate_private_key(65537, 2048).public_key().public_bytes(*spki)),
        PublicKey(KeyType.ECDSA, ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(*spki)),
        PublicKey(
            KeyType.SECP256K1,
            ec.generate_private_key(ec.SECP256K1())
            .public_key()
            .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint),
        ),
    ]
    for key in others:
        rec.add("keys", b"\x00" + key.to_protobuf())
        rec.add("keys", b"\x02" + PeerId.from_public_key(key).to_bytes())
        rec.add("protobuf", b"\x01" + key.to_protobuf())
    rec.add("keys", b"\x01" + KeyPair.generate().to_private_protobuf())


async def main_async(args: argparse.Namespace, rec: Recorder) -> None:
    await asyncio.wait_for(mimir_traffic(), TIMEOUT)
    if not args.no_js:
        await asyncio.wait_for(js_traffic(), 2 * TIMEOUT)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "corpus", help="corpus root (default: fuzz/corpus)"
    )
    parser.add_argument("--no-js", action="store_true", help="skip the js-libp2p peer")
    args = parser.parse_args()
    fuzzlib.use_fixed_noise_static()
    rec = Recorder()
    rec.install()
    asyncio.run(main_async(args, rec))
    built_seeds(rec)
    rec.finish()
    rec.write(args.out)


if __name__ == "__main__":
    main()
