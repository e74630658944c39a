"""Share a model: serve an OpenAI-compatible backend (or the echo model) on the network.

    python examples/node.py                       # Ollama on this machine, else the echo model
    python examples/node.py http://127.0.0.1:8000/v1
"""

import asyncio
import sys

from mimirlite import Host
from mimirlite.mimir import BackendError, EchoBackend, MimirNode, OpenAIBackend


async def main() -> None:
    backend = OpenAIBackend(sys.argv[1] if len(sys.argv) > 1 else None)
    try:
        await backend.list_models()
    except BackendError:
        await backend.aclose()
        backend = EchoBackend()
    async with Host(listen=["/ip4/127.0.0.1/tcp/0"]) as host, MimirNode(host, backend) as node:
        print("serving", ", ".join(node.models), "at", *host.listen_addrs, flush=True)
        await asyncio.Event().wait()


asyncio.run(main())
