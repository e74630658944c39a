"""Ask a node a question and print the answer as it streams.

    python examples/chat.py /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW... "Why is the sky blue?"
"""

import asyncio
import sys

from mimirlite.mimir import MimirClient


async def main(node: str, prompt: str) -> None:
    async with MimirClient(peers=[node]) as client:
        async for chunk in client.chat([{"role": "user", "content": prompt}]):
            print(chunk.choices[0].delta.content or "", end="", flush=True)
        print()


asyncio.run(main(sys.argv[1], sys.argv[2]))
