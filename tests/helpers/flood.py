"""A pre-authentication flood, run as its own process by the tests: ``python -m tests.helpers.flood PORT``.

It holds ``--idle`` TCP connections to 127.0.0.1:PORT that never send a byte and ``--dribble`` ones
that send a valid multistream header one byte every ``--every`` seconds, all bound to ``--source``,
and re-opens each one as soon as the node closes it. It prints ``flooding`` once the first round is
open, then a ``opened N`` line every second, and exits when its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from mimirlite.wire.multistream import MULTISTREAM_PROTOCOL, encode_line

HEADER = encode_line(MULTISTREAM_PROTOCOL) + encode_line("/noise")


class Flood:
    def __init__(self, port: int, source: str, every: float) -> None:
        self.port = port
        self.source = source
        self.every = every
        self.opened = 0

    async def hold(self, dribble: bool, first: asyncio.Event) -> None:
        """One connection slot: open, hold (dribbling or silent) until closed by the node, re-open."""
        while True:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(self.source, 0)
                )
            except OSError:
                await asyncio.sleep(0.05)
                continue
            self.opened += 1
            first.set()
            try:
                if dribble:
                    await self._dribble(reader, writer)
                else:
                    await reader.read()  # b"" once the node closes it
            except OSError:
                pass
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _dribble(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        closed = asyncio.ensure_future(reader.read())
        try:
            for i in range(len(HEADER)):
                writer.write(HEADER[i : i + 1])
                done, _ = await asyncio.wait({closed}, timeout=self.every)
                if done:
                    return
            await closed
        finally:
            closed.cancel()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--source", default="127.0.0.1")
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--dribble", type=int, default=50)
    parser.add_argument("--every", type=float, default=0.5)
    args = parser.parse_args()
    flood = Flood(args.port, args.source, args.every)
    first = asyncio.Event()
    slots = [asyncio.ensure_future(flood.hold(False, first)) for _ in range(args.idle)]
    slots += [asyncio.ensure_future(flood.hold(True, first)) for _ in range(args.dribble)]
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    ended = asyncio.ensure_future(stdin.read())
    await first.wait()
    print("flooding", flush=True)
    while not ended.done():
        await asyncio.wait({ended}, timeout=1.0)
        print(f"opened {flood.opened}", flush=True)
    for slot in slots:
        slot.cancel()
    await asyncio.gather(*slots, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
