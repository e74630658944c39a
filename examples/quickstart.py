"""A node and a client in one process, talking over a real libp2p connection on 127.0.0.1.

    python examples/quickstart.py "Hello over libp2p"

The node serves Ollama's models when Ollama runs on this machine, else the built-in echo model.
"""

import asyncio
import sys

from mimirlite import Host
from mimirlite.mimir import BackendError, EchoBackend, MimirClient, MimirNode, OpenAIBackend


async def main(prompt: str) -> None:
    backend = OpenAIBackend()
    try:
        await backend.list_models()
    except BackendError:
        await backend.aclose()
        backend = EchoBackend()
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, backend) as node:
        print(f"node {host.peer_id} serves {', '.join(node.models)} at {host.listen_addrs[0]}")
        async with MimirClient(peers=host.listen_addrs) as client:
            print(f"client {client.host.peer_id} asks: {prompt}")
            async for chunk in client.chat([{"role": "user", "content": prompt}]):
                print(chunk.choices[0].delta.content or "", end="", flush=True)
            print()


asyncio.run(main(" ".join(sys.argv[1:]) or "Hello over libp2p"))
