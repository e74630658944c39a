"""One side of a benchmark run, started by ``interop/bench.py`` as its own process.

Modes (``python interop/bench_worker.py MODE [--impl mimirlite|raw] [--addr A] [--params JSON]``):

- ``listen``: serve the bench protocols, print ``{"event": "ready", "addr": ...}``, run until stdin
  closes (the runner holds it open) or a signal arrives.
- ``dial``: run the workloads of ``--params`` against ``--addr``, printing one ``result`` (or
  ``error``) line per workload, then ``done``, and exit.
- ``aead``: the ChaCha20-Poly1305 limit (``cryptography``), in this one process.
- ``e2e-node`` / ``e2e-client``: a MimirNode with the echo model, and the client that chats with it.
- ``tun-server`` / ``tun-node`` / ``tun-client`` (T1, the latest generation's tunnel):
tests/helpers/openai_server.py
  answering every chat with ``tun_chunks`` streamed chunks; a MimirNode with OpenAIBackend in front of it
  (``--addr`` the server's root URL); a MimirClient timing one such answer from a node (``--addr``), over
  ``/mimir/<model>/1.0.0`` (``tun_via: "tunnel"``) or ``/mimirllm/1.0.0`` (``"first"``).

``--impl mimirlite`` uses only mimirlite's public API; ``--impl raw`` is plain asyncio TCP (W2, W3).
Workloads are those of the project's bench/WORKLOADS.md; the wire shapes here are mirrored by
``bench-peer.mjs`` (js-libp2p) and ``bench_pylibp2p.py`` (py-libp2p).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

ECHO = "/bench/echo/1.0.0"
BULK = "/bench/bulk/1.0.0"
TOKENS = "/bench/tokens/1.0.0"
RPC = "/bench/rpc/1.0.0"

WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "a", "large",
    "language", "model", "streams", "its", "answer", "one", "token", "at", "a", "time", "to", "every",
    "peer", "that", "asked",
]

DEFAULTS: dict[str, Any] = {
    "workloads": ["W1", "W2", "W3", "W4"],
    "connects": 100,  # W1 timed connects
    "connect_warmup": 5,
    "bulk_bytes": 256 * 1024 * 1024,  # W2
    "chunk": 64 * 1024,
    "tokens": 100_000,  # W3
    "tokens_cap_s": 30.0,  # W3 stops there (a slow peer): the rate is over the messages received by then
    "rpc_seq": 2000,  # W4a
    "rpc_warmup": 50,
    "rpc_workers": 100,  # W4b
    "rpc_per_worker": 20,
    "timeout": 120.0,  # seconds per workload
    "words": 20_000,  # end to end: words of the long prompt
    "ttfc_runs": 200,  # end to end: chats timed to their first chunk
    "aead_seconds": 1.0,  # the AEAD limit: seconds per message size
    "tun_chunks": 20_000,  # T1: chunks of the streamed answer (role chunk and finish chunk included)
    "tun_via": "tunnel",  # T1 client: "tunnel" (/mimir/<model>/1.0.0) or "first" (/mimirllm/1.0.0)
}

TUN_MODEL = "llama3.2:latest"  # T1's one model (its tunnel is /mimir/llama3.2-latest/1.0.0)
TUN_WARMUP = "warm up"  # T1: a chat whose last message is this gets a one-token answer


def token_message() -> dict[str, Any]:
    """A W3 message, shaped like what a MimirLLM node streams (mutate the delta's content)."""
    return {
        "event": "completionPacket",
        "data": {
            "id": "chatcmpl-492",
            "object": "chat.completion.chunk",
            "created": 1764000000,
            "model": "llama3.2:latest",
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": None}],
        },
    }


def rpc_request(i: int) -> dict[str, Any]:
    """A W4 request (about 100 bytes of JSON)."""
    return {"method": "bench.echo", "id": i, "params": {"text": "the quick brown fox jumps over the dog"}}


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    k = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[k - 1]


def median(samples: list[float]) -> float:
    import statistics  # not at the top: listeners import no more than they need (W5)

    return statistics.median(samples)


def watch_stdin(on_eof: Callable[[], None]) -> None:
    """Call ``on_eof`` (from a thread) at stdin's end of file: the runner went away or wants us gone."""

    def run() -> None:
        with contextlib.suppress(Exception):
            while os.read(0, 4096):  # not sys.stdin: its lock would abort interpreter shutdown
                pass
        on_eof()

    threading.Thread(target=run, daemon=True, name="stdin-watch").start()


def exit_now() -> None:
    sys.stdout.flush()
    os._exit(1)


Workload = Callable[[], Awaitable[dict[str, Any]]]


async def run_workloads(params: dict[str, Any], table: dict[str, Workload]) -> None:
    """Run each requested workload with its timeout, one result line each."""
    for name in params["workloads"]:
        fn = table.get(name)
        if fn is None:
            continue
        try:
            values = await asyncio.wait_for(fn(), params["timeout"])
        except asyncio.TimeoutError:
            emit({"event": "error", "workload": name, "error": f"timed out after {params['timeout']:g} s"})
        except Exception as exc:
            emit({"event": "error", "workload": name, "error": f"{type(exc).__name__}: {exc}"})
        else:
            emit({"event": "result", "workload": name, "values": values})
    emit({"event": "done"})


# ---------------------------------------------------------------- mimirlite


async def mimirlite_listen(stop: asyncio.Event) -> None:
    from mimirlite import Host, Stream

    async def echo(stream: Stream) -> None:
        while data := await stream.read():
            await stream.write(data)

    async def bulk(stream: Stream) -> None:
        total = int.from_bytes(await stream.read_exactly(8), "big")
        got = 0
        while got < total:
            data = await stream.read()
            if not data:
                raise EOFError(f"bulk stream ended after {got} of {total} bytes")
            got += len(data)
        await stream.write(b"\x01")
        while await stream.read():
            pass

    async def tokens(stream: Stream) -> None:
        n = int.from_bytes(await stream.read_exactly(8), "big")
        msg = token_message()
        delta = msg["data"]["choices"][0]["delta"]
        words = WORDS
        nw = len(words)
        for i in range(n):
            delta["content"] = " " + words[i % nw]
            await stream.write_json(msg)

    async def rpc(stream: Stream) -> None:
        req = await stream.read_json()
        await stream.write_json({"id": req["id"], "result": req["params"]})

    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host:
        host.set_handler(ECHO, echo)
        host.set_handler(BULK, bulk)
        host.set_handler(TOKENS, tokens)
        host.set_handler(RPC, rpc)
        emit({"event": "ready", "addr": host.listen_addrs[0], "pid": os.getpid()})
        await stop.wait()


async def mimirlite_dial(addr: str, params: dict[str, Any]) -> None:
    from mimirlite import Host

    async with Host() as host:

        async def w1() -> dict[str, Any]:
            samples = []
            for i in range(params["connect_warmup"] + params["connects"]):
                t0 = time.perf_counter()
                stream = await host.new_stream(addr, ECHO)
                await stream.write(b"x")
                await stream.close_write()
                got = await stream.read_exactly(1)
                t1 = time.perf_counter()
                assert got == b"x"
                stream.connection.close()
                if i >= params["connect_warmup"]:
                    samples.append((t1 - t0) * 1000)
            return {"p50_ms": percentile(samples, 50), "p95_ms": percentile(samples, 95)}

        async def w2() -> dict[str, Any]:
            total, chunk = params["bulk_bytes"], params["chunk"]
            buf = os.urandom(chunk)
            stream = await host.new_stream(addr, BULK)
            t0 = time.perf_counter()
            await stream.write(total.to_bytes(8, "big"))
            left = total
            while left >= chunk:
                await stream.write(buf)
                left -= chunk
            if left:
                await stream.write(buf[:left])
            ack = await stream.read_exactly(1)
            t1 = time.perf_counter()
            assert ack == b"\x01"
            await stream.close()
            stream.connection.close()  # every workload starts on a fresh connection
            return {"mib_s": total / (t1 - t0) / 2**20}

        async def w3() -> dict[str, Any]:
            n = params["tokens"]
            stream = await host.new_stream(addr, TOKENS)
            t0 = time.perf_counter()
            await stream.write(n.to_bytes(8, "big"))
            await stream.close_write()
            count = 0
            last = None
            cap = t0 + params["tokens_cap_s"]
            while count < n:
                obj = await stream.read_json()
                if obj is None:
                    raise EOFError(f"token stream ended after {count} of {n} messages")
                last = obj
                count += 1
                if not count & 1023 and time.perf_counter() > cap:
                    break
            t1 = time.perf_counter()
            assert last is not None and last["data"]["choices"][0]["delta"]["content"]
            if count < n:
                await stream.reset()
                stream.connection.close()
                return {"msg_s": count / (t1 - t0), "capped": count}
            if await stream.read_json() is not None:
                raise ValueError("more messages than asked for")
            await stream.close()
            stream.connection.close()
            return {"msg_s": n / (t1 - t0)}

        peer: list[Any] = []  # the listener's PeerId, once W4 dialed it

        async def one_rpc(i: int) -> None:
            # by PeerId, as MimirClient does: a multiaddr string would be parsed again on every call
            stream = await host.new_stream(peer[0], RPC)
            await stream.write_json(rpc_request(i))
            await stream.close_write()
            reply = await stream.read_json()
            if reply is None or reply["id"] != i:
                raise ValueError(f"bad rpc reply {reply!r}")
            await stream.close()

        async def w4() -> dict[str, Any]:
            conn = await host.dial(addr)  # the one connection every request runs on
            peer[:] = [conn.remote_peer]
            for i in range(params["rpc_warmup"]):
                await one_rpc(i)
            samples = []
            t_start = time.perf_counter()
            for i in range(params["rpc_seq"]):
                t0 = time.perf_counter()
                await one_rpc(i)
                samples.append((time.perf_counter() - t0) * 1000)
            seq_elapsed = time.perf_counter() - t_start

            async def worker(w: int) -> None:
                for j in range(params["rpc_per_worker"]):
                    await one_rpc(w * 100_000 + j)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker(w) for w in range(params["rpc_workers"])))
            conc_elapsed = time.perf_counter() - t0
            conn.close()
            return {
                "seq_p50_ms": median(samples),
                "seq_req_s": params["rpc_seq"] / seq_elapsed,
                "conc_req_s": params["rpc_workers"] * params["rpc_per_worker"] / conc_elapsed,
            }

        await run_workloads(params, {"W1": w1, "W2": w2, "W3": w3, "W4": w4})


# ---------------------------------------------------------------- plain asyncio TCP (the limit)


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


async def raw_listen(stop: asyncio.Event) -> None:
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(9)
            kind, n = head[:1], int.from_bytes(head[1:], "big")
            if kind == b"B":
                got = 0
                while got < n:
                    data = await reader.read(1 << 18)
                    if not data:
                        return
                    got += len(data)
                writer.write(b"\x01")
                await writer.drain()
                await reader.read()  # until the dialer closes
            elif kind == b"T":
                msg = token_message()
                delta = msg["data"]["choices"][0]["delta"]
                words, nw = WORDS, len(WORDS)
                transport = writer.transport
                for i in range(n):
                    delta["content"] = " " + words[i % nw]
                    body = dumps(msg).encode()
                    writer.write(_uvarint(len(body)) + body)  # one write per message
                    if transport.get_write_buffer_size() > 1 << 18:
                        await writer.drain()
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    emit({"event": "ready", "addr": f"/ip4/127.0.0.1/tcp/{port}", "pid": os.getpid()})
    async with server:
        await stop.wait()


async def raw_dial(addr: str, params: dict[str, Any]) -> None:
    parts = addr.split("/")
    host, port = parts[2], int(parts[4])

    async def w2() -> dict[str, Any]:
        total, chunk = params["bulk_bytes"], params["chunk"]
        buf = os.urandom(chunk)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            t0 = time.perf_counter()
            writer.write(b"B" + total.to_bytes(8, "big"))
            left = total
            while left > 0:
                writer.write(buf if left >= chunk else buf[:left])
                left -= chunk
                await writer.drain()
            ack = await reader.readexactly(1)
            t1 = time.perf_counter()
            assert ack == b"\x01"
        finally:
            writer.close()
        return {"mib_s": total / (t1 - t0) / 2**20}

    async def w3() -> dict[str, Any]:
        n = params["tokens"]
        loads = json.loads
        reader, writer = await asyncio.open_connection(host, port)
        try:
            t0 = time.perf_counter()
            cap = t0 + params["tokens_cap_s"]
            writer.write(b"T" + n.to_bytes(8, "big"))
            buf = bytearray()
            pos = 0
            count = 0
            while count < n:
                data = await reader.read(1 << 18)
                if not data:
                    raise EOFError(f"token stream ended after {count} of {n} messages")
                if pos:
                    del buf[:pos]
                    pos = 0
                buf += data
                end = len(buf)
                while pos < end:
                    length = shift = 0
                    p = pos
                    while p < end:
                        b = buf[p]
                        p += 1
                        length |= (b & 0x7F) << shift
                        shift += 7
                        if b < 0x80:
                            break
                    else:
                        break  # varint incomplete
                    if p + length > end:
                        break
                    loads(bytes(buf[p : p + length]))
                    pos = p + length
                    count += 1
                if time.perf_counter() > cap:
                    break
            t1 = time.perf_counter()
        finally:
            writer.close()
        if count < n:
            return {"msg_s": count / (t1 - t0), "capped": count}
        return {"msg_s": n / (t1 - t0)}

    await run_workloads(params, {"W2": w2, "W3": w3})


# ---------------------------------------------------------------- AEAD limit


def aead(params: dict[str, Any]) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    cipher = ChaCha20Poly1305(os.urandom(32))
    seconds = params["aead_seconds"]

    def rate(size: int) -> float:
        """encrypt+decrypt round trips per second for ``size``-byte plaintexts (Noise-style nonces)."""
        msg = os.urandom(size)
        enc, dec = cipher.encrypt, cipher.decrypt
        zero4 = b"\0\0\0\0"
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            for _ in range(64):
                nonce = zero4 + n.to_bytes(8, "little")
                dec(nonce, enc(nonce, msg, None), None)
                n += 1
            now = time.perf_counter()
            if now >= deadline:
                return n / (now - t0)

    big = rate(65519)
    small = rate(200)
    emit({"event": "result", "workload": "AEAD", "values": {"mib_s": big * 65519 / 2**20, "msg_s": small}})
    emit({"event": "done"})


# ---------------------------------------------------------------- end to end (MimirNode + MimirClient)


async def e2e_node(stop: asyncio.Event) -> None:
    from mimirlite import Host
    from mimirlite.mimir import EchoBackend, MimirNode

    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, EchoBackend()):
        emit({"event": "ready", "addr": host.listen_addrs[0], "pid": os.getpid()})
        await stop.wait()


async def e2e_client(addr: str, params: dict[str, Any]) -> None:
    from mimirlite.mimir import EchoBackend, MimirClient

    short = [{"role": "user", "content": "hello there"}]

    async def inprocess_first_chunk_ms() -> float:
        backend = EchoBackend()
        samples = []
        for _ in range(params["ttfc_runs"]):
            t0 = time.perf_counter()
            gen = backend.stream_chat(backend.model, short, {})
            await gen.__anext__()
            samples.append((time.perf_counter() - t0) * 1000)
            await gen.aclose()
        return median(samples)

    async with MimirClient(peers=[addr], mdns=False) as client:  # loopback only: no discovery
        if not client.nodes:
            raise RuntimeError(f"node at {addr} could not be identified")

        async def ttfc() -> dict[str, Any]:
            for _ in range(10):  # warm up: first chat imports the openai types
                async for _chunk in client.chat(short):
                    pass
            samples = []
            for _ in range(params["ttfc_runs"]):
                t0 = time.perf_counter()
                chat = client.chat(short)
                await chat.__anext__()
                samples.append((time.perf_counter() - t0) * 1000)
                async for _chunk in chat:
                    pass
            local = await inprocess_first_chunk_ms()
            net = median(samples)
            return {"added_ttfc_ms": net - local, "ttfc_ms": net, "inprocess_ms": local}

        async def chunks() -> dict[str, Any]:
            words = params["words"]
            prompt = " ".join(WORDS[i % len(WORDS)] for i in range(words))
            messages = [{"role": "user", "content": prompt}]
            t0 = time.perf_counter()
            count = 0
            async for _chunk in client.chat(messages):
                count += 1
            elapsed = time.perf_counter() - t0
            if count != words + 2:
                raise ValueError(f"{count} chunks for {words} words")
            backend = EchoBackend()  # the same answer, produced in this process
            t0 = time.perf_counter()
            local = 0
            async for _chunk in backend.stream_chat(backend.model, messages, {}):
                local += 1
            local_elapsed = time.perf_counter() - t0
            return {"chunks_s": count / elapsed, "chunks": count, "inprocess_chunks_s": local / local_elapsed}

        await run_workloads(
            {**params, "workloads": ["TTFC", "CHUNKS"]}, {"TTFC": ttfc, "CHUNKS": chunks}
        )


# ---------------------------------------------------------------- T1: the latest generation's tunnel


def tun_tokens(chunks: int) -> list[str]:
    """The T1 answer's tokens: with the role chunk and the finish chunk, ``chunks`` chunks in all."""
    return [f" {WORDS[i % len(WORDS)]}" for i in range(max(chunks - 2, 1))]


async def tun_server(stop: asyncio.Event, params: dict[str, Any]) -> None:
    from tests.helpers.openai_server import OpenAIServer  # the repository root is on PYTHONPATH

    tokens = tun_tokens(params["tun_chunks"])

    def reply(body: dict[str, Any]) -> list[str]:
        messages = body.get("messages") or [{}]
        return ["ok"] if messages[-1].get("content") == TUN_WARMUP else tokens

    async with OpenAIServer(models=[TUN_MODEL], reply=reply) as srv:
        emit({"event": "ready", "addr": srv.url, "pid": os.getpid()})
        await stop.wait()


async def tun_node(stop: asyncio.Event, backend_url: str, params: dict[str, Any]) -> None:
    from mimirlite import Host
    from mimirlite.mimir import MimirNode, OpenAIBackend

    backend = OpenAIBackend(f"{backend_url}/v1", models=[TUN_MODEL], timeout=params["timeout"])
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, backend):
        emit({"event": "ready", "addr": host.listen_addrs[0], "pid": os.getpid()})
        await stop.wait()


async def tun_client(addr: str, params: dict[str, Any]) -> None:
    """One ``tun_chunks`` answer from the node at ``addr`` after a one-token warm-up chat, timed from
    the call of ``MimirClient.chat`` (connection identified) to its first and last chunk."""
    from mimirlite.mimir import MimirClient
    from mimirlite.mimir.client import LATEST

    tunnel = params["tun_via"] == "tunnel"
    async with MimirClient(peers=[addr], mdns=False, prefer_tunnel=tunnel) as client:  # loopback only
        if not client.nodes:
            raise RuntimeError(f"node at {addr} could not be identified")
        peer = next(iter(client.nodes))
        if tunnel and TUN_MODEL not in client.tunnels(peer):
            raise RuntimeError(f"node at {addr} serves no tunnel for {TUN_MODEL}")
        if not tunnel and client.generation(peer) == LATEST:
            raise RuntimeError(f"node at {addr} does not serve /mimirllm/1.0.0")

        async def t1() -> dict[str, Any]:
            async for _chunk in client.chat([{"role": "user", "content": TUN_WARMUP}], model=TUN_MODEL):
                pass
            messages = [{"role": "user", "content": "tell me everything"}]
            count = 0
            first = 0.0
            t0 = time.perf_counter()
            async for _chunk in client.chat(messages, model=TUN_MODEL):
                if count == 0:
                    first = time.perf_counter()
                count += 1
            elapsed = time.perf_counter() - t0
            if count != params["tun_chunks"]:
                raise ValueError(f"{count} chunks, expected {params['tun_chunks']}")
            return {"chunks_s": count / elapsed, "ttfc_ms": (first - t0) * 1000, "chunks": count}

        await run_workloads({**params, "workloads": ["T1"]}, {"T1": t1})


# ---------------------------------------------------------------- main


async def amain(args: argparse.Namespace, params: dict[str, Any]) -> None:
    if args.mode in ("listen", "e2e-node", "tun-server", "tun-node"):
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_eof() -> None:
            with contextlib.suppress(RuntimeError):  # the loop may be gone already
                loop.call_soon_threadsafe(stop.set)

        watch_stdin(on_eof)
        if args.mode == "e2e-node":
            await e2e_node(stop)
        elif args.mode == "tun-server":
            await tun_server(stop, params)
        elif args.mode == "tun-node":
            await tun_node(stop, args.addr, params)
        elif args.impl == "raw":
            await raw_listen(stop)
        else:
            await mimirlite_listen(stop)
        return
    watch_stdin(exit_now)
    if args.mode == "dial":
        await (raw_dial if args.impl == "raw" else mimirlite_dial)(args.addr, params)
    elif args.mode == "e2e-client":
        await e2e_client(args.addr, params)
    elif args.mode == "tun-client":
        await tun_client(args.addr, params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=[
        "listen", "dial", "aead", "e2e-node", "e2e-client", "tun-server", "tun-node", "tun-client"
    ])
    parser.add_argument("--impl", choices=["mimirlite", "raw"], default="mimirlite")
    parser.add_argument("--addr", default="")
    parser.add_argument("--params", default="{}", help="JSON object overriding the workload sizes")
    args = parser.parse_args()
    params = {**DEFAULTS, **json.loads(args.params)}
    if args.mode == "aead":
        aead(params)
        return
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(amain(args, params))


if __name__ == "__main__":
    main()
