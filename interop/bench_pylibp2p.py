"""One side of a benchmark run on py-libp2p (trio), started by ``interop/bench.py`` with the Python of
its own virtual environment (py-libp2p is never a dependency of mimirlite).

Modes: ``listen`` (prints ``{"event": "ready", "addr": ...}``, runs until stdin closes) and
``dial --addr A [--params JSON]`` (one ``result``/``error`` line per workload, then ``done``).
Mirrors the wire shapes of ``bench_worker.py``; the host runs TCP + Noise + yamux only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

import bench_worker  # stdlib only at import: its workload sizes, messages and output lines are shared
import multiaddr
import trio
from bench_worker import DEFAULTS, WORDS, emit, median, percentile, rpc_request, token_message
from bench_worker import _uvarint as uvarint
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

ECHO = TProtocol(bench_worker.ECHO)
BULK = TProtocol(bench_worker.BULK)
TOKENS = TProtocol(bench_worker.TOKENS)
RPC = TProtocol(bench_worker.RPC)


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def lp_json(obj: Any) -> bytes:
    body = _dumps(obj).encode()
    return uvarint(len(body)) + body


class Reader:
    """Buffered reads on a py-libp2p stream: exact byte counts and length-prefixed JSON messages."""

    READ = 65536  # read() without a size stalls the W3 stream after a few thousand messages (0.8.1)

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.pos = 0
        self.eof = False

    async def _more(self) -> bool:
        if self.eof:
            return False
        try:
            data = await self.stream.read(self.READ)
        except StreamEOF:
            data = b""
        if not data:
            self.eof = True
            return False
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += data
        return True

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            if not await self._more():
                raise EOFError(f"stream ended before {n} bytes")
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    async def message(self) -> Any:
        """One LP-JSON message, None at end of stream."""
        while True:
            buf, p, end = self.buf, self.pos, len(self.buf)
            length = shift = 0
            while p < end:
                b = buf[p]
                p += 1
                length |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    if p + length <= end:
                        self.pos = p + length
                        return json.loads(bytes(buf[p : p + length]))
                    break
            if not await self._more():
                if self.pos == len(self.buf):
                    return None
                raise EOFError("stream ended inside a message")

    async def drain(self) -> None:
        while await self._more():
            self.pos = len(self.buf)


def make_host(listen: bool) -> Any:
    kp = create_new_key_pair()
    noise = NoiseTransport(kp, noise_privkey=create_new_x25519_key_pair().private_key)
    sec = {TProtocol(NOISE_PROTOCOL_ID): noise}
    muxer = {TProtocol(YAMUX_PROTOCOL_ID): Yamux}
    addrs = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")] if listen else None
    # One connection per peer: with the default (3) a dial waits out its 250 ms happy-eyeballs head
    # start even when the only address already connected.
    config = ConnectionConfig(max_connections_per_peer=1)
    return new_host(key_pair=kp, sec_opt=sec, muxer_opt=muxer, listen_addrs=addrs, connection_config=config)


# ---------------------------------------------------------------- listener


async def echo(stream: Any) -> None:
    try:
        while True:
            try:
                data = await stream.read()
            except StreamEOF:
                break
            if not data:
                break
            await stream.write(data)
        await stream.close()
    except Exception:
        await stream.reset()


async def bulk(stream: Any) -> None:
    try:
        r = Reader(stream)
        total = int.from_bytes(await r.exactly(8), "big")
        got = len(r.buf) - r.pos
        r.pos = len(r.buf)
        while got < total:
            if not await r._more():
                raise EOFError(f"bulk stream ended after {got} of {total} bytes")
            got += len(r.buf) - r.pos
            r.pos = len(r.buf)
        await stream.write(b"\x01")
        await r.drain()
        await stream.close()
    except Exception:
        await stream.reset()


async def tokens(stream: Any) -> None:
    try:
        r = Reader(stream)
        n = int.from_bytes(await r.exactly(8), "big")
        msg = token_message()
        delta = msg["data"]["choices"][0]["delta"]
        nw = len(WORDS)
        for i in range(n):
            delta["content"] = " " + WORDS[i % nw]
            await stream.write(lp_json(msg))
        await stream.close()
    except Exception:
        await stream.reset()


async def rpc(stream: Any) -> None:
    try:
        req = await Reader(stream).message()
        await stream.write(lp_json({"id": req["id"], "result": req["params"]}))
        await stream.close()
    except Exception:
        await stream.reset()


async def listen() -> None:
    host = make_host(True)
    async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        host.set_stream_handler(ECHO, echo)
        host.set_stream_handler(BULK, bulk)
        host.set_stream_handler(TOKENS, tokens)
        host.set_stream_handler(RPC, rpc)
        addr = next(str(a) for a in host.get_addrs() if "/127.0.0.1/" in str(a))
        emit({"event": "ready", "addr": addr, "pid": os.getpid()})

        watch_stdin()
        await trio.sleep_forever()


# ---------------------------------------------------------------- dialer


def watch_stdin() -> None:
    """Exit at once when stdin reaches end of file: the runner closed it, or went away."""

    def run() -> None:
        try:
            while os.read(0, 4096):  # not sys.stdin: its lock would abort interpreter shutdown
                pass
        finally:
            sys.stdout.flush()
            os._exit(0)

    threading.Thread(target=run, daemon=True).start()


async def dial(addr: str, params: dict[str, Any]) -> None:
    watch_stdin()
    host = make_host(False)
    info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    peer = info.peer_id

    async def w1() -> dict[str, Any]:
        samples = []
        for i in range(params["connect_warmup"] + params["connects"]):
            t0 = time.perf_counter()
            await host.connect(info)
            stream = await host.new_stream(peer, [ECHO])
            await stream.write(b"x")
            await stream.close_write()
            got = await Reader(stream).exactly(1)
            t1 = time.perf_counter()
            assert got == b"x"
            await stream.close()
            await host.disconnect(peer)
            if i >= params["connect_warmup"]:
                samples.append((t1 - t0) * 1000)
        return {"p50_ms": percentile(samples, 50), "p95_ms": percentile(samples, 95)}

    async def w2() -> dict[str, Any]:
        total, chunk = params["bulk_bytes"], params["chunk"]
        buf = os.urandom(chunk)
        await host.connect(info)
        stream = await host.new_stream(peer, [BULK])
        t0 = time.perf_counter()
        await stream.write(total.to_bytes(8, "big"))
        left = total
        while left > 0:
            await stream.write(buf if left >= chunk else buf[:left])
            left -= chunk
        ack = await Reader(stream).exactly(1)
        t1 = time.perf_counter()
        assert ack == b"\x01"
        await stream.close()
        await host.disconnect(peer)  # every workload starts on a fresh connection
        return {"mib_s": total / (t1 - t0) / 2**20}

    async def w3() -> dict[str, Any]:
        n = params["tokens"]
        await host.connect(info)
        stream = await host.new_stream(peer, [TOKENS])
        t0 = time.perf_counter()
        await stream.write(n.to_bytes(8, "big"))
        await stream.close_write()
        r = Reader(stream)
        count = 0
        cap = t0 + params["tokens_cap_s"]
        while count < n:
            if await r.message() is None:
                raise EOFError(f"token stream ended after {count} of {n} messages")
            count += 1
            if not count & 1023 and time.perf_counter() > cap:
                break
        t1 = time.perf_counter()
        if count < n:
            await stream.reset()
            await host.disconnect(peer)
            return {"msg_s": count / (t1 - t0), "capped": count}
        await r.drain()
        await stream.close()
        await host.disconnect(peer)
        return {"msg_s": n / (t1 - t0)}

    async def one_rpc(i: int) -> None:
        stream = await host.new_stream(peer, [RPC])
        await stream.write(lp_json(rpc_request(i)))
        await stream.close_write()
        reply = await Reader(stream).message()
        if reply is None or reply["id"] != i:
            raise ValueError(f"bad rpc reply {reply!r}")
        await stream.close()

    async def w4() -> dict[str, Any]:
        await host.connect(info)
        for i in range(params["rpc_warmup"]):
            await one_rpc(i)
        samples = []
        start = time.perf_counter()
        for i in range(params["rpc_seq"]):
            t0 = time.perf_counter()
            await one_rpc(i)
            samples.append((time.perf_counter() - t0) * 1000)
        seq_elapsed = time.perf_counter() - start

        async def worker(w: int) -> None:
            for j in range(params["rpc_per_worker"]):
                await one_rpc(w * 100_000 + j)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for w in range(params["rpc_workers"]):
                nursery.start_soon(worker, w)
        conc_elapsed = time.perf_counter() - t0
        await host.disconnect(peer)
        return {
            "seq_p50_ms": median(samples),
            "seq_req_s": params["rpc_seq"] / seq_elapsed,
            "conc_req_s": params["rpc_workers"] * params["rpc_per_worker"] / conc_elapsed,
        }

    table = {"W1": w1, "W2": w2, "W3": w3, "W4": w4}
    async with host.run(listen_addrs=[]):
        for name in params["workloads"]:
            fn = table.get(name)
            if fn is None:
                continue
            try:
                with trio.fail_after(params["timeout"]):
                    values = await fn()
            except trio.TooSlowError:
                why = f"timed out after {params['timeout']:g} s"
                emit({"event": "error", "workload": name, "error": why})
            except Exception as exc:
                emit({"event": "error", "workload": name, "error": f"{type(exc).__name__}: {exc}"})
            else:
                emit({"event": "result", "workload": name, "values": values})
        emit({"event": "done"})
    sys.stdout.flush()
    os._exit(0)  # py-libp2p's background services can take long to wind down; nothing is left to do


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["listen", "dial"])
    parser.add_argument("--addr", default="")
    parser.add_argument("--params", default="{}")
    args = parser.parse_args()
    params = {**DEFAULTS, **json.loads(args.params)}
    try:
        if args.mode == "listen":
            trio.run(listen)
        else:
            trio.run(dial, args.addr, params)
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
