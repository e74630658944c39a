"""The command line: ``node`` shares a backend's models, ``chat`` talks to them, ``peers`` lists nodes.

Each subcommand is a thin layer over the library; only this module prints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from mimirlite import __version__
from mimirlite.errors import MimirliteError
from mimirlite.identity import KeyPair
from mimirlite.net.host import Host

DEFAULT_LISTEN = "/ip4/0.0.0.0/tcp/0"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimirlite", description="Share and use LLMs peer to peer.")
    parser.add_argument("--version", action="version", version=f"mimirlite {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--peer", action="append", default=[], metavar="ADDR", help="a node (repeatable)")
    common.add_argument("--key-file", metavar="PATH", help="keep this identity (created when missing)")
    common.add_argument("--no-mdns", action="store_true", help="do not find or announce peers on the LAN")
    common.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")

    node = sub.add_parser("node", parents=[common], help="serve the models of a backend")
    node.add_argument("--listen", action="append", metavar="ADDR", help=f"repeatable; {DEFAULT_LISTEN}")
    node.add_argument(
        "--backend",
        choices=("auto", "openai", "echo"),
        default="auto",
        help="openai: an OpenAI-compatible server; echo: the built-in echo model; "
        "auto (default): openai when it answers, else echo",
    )
    node.add_argument(
        "--backend-url",
        metavar="URL",
        help="OpenAI-compatible base URL (default: $OLLAMA_ENDPOINT, $OPENAI_BASE_URL, http://localhost:11434/v1)",
    )
    node.add_argument("--model", action="append", default=[], help="serve only this model (repeatable)")

    chat = sub.add_parser("chat", parents=[common], help="chat with a model on the network")
    chat.add_argument("-p", "--prompt", help="answer this once and exit")
    chat.add_argument("--model", help="the model to ask (default: the node's default)")
    chat.add_argument("--system", help="a system message")
    chat.add_argument("--wait", type=float, default=10.0, metavar="S", help="how long to look for a node")

    peers = sub.add_parser("peers", parents=[common], help="list the nodes found and their models")
    peers.add_argument("--wait", type=float, default=3.0, metavar="S", help="how long to look for nodes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    # A chat prints its answer and, on failure, one line: library warnings show with -v.
    quiet = logging.WARNING if args.command == "node" else logging.ERROR
    level = (quiet, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    run = {"node": _node, "chat": _chat, "peers": _peers}[args.command]
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


def _fail(message: str) -> int:
    print(f"mimirlite: {message}", file=sys.stderr)
    return 1


def _keypair(args: argparse.Namespace) -> KeyPair:
    return KeyPair.load_or_create(args.key_file) if args.key_file else KeyPair.generate()


async def _node(args: argparse.Namespace) -> int:
    from mimirlite.discovery import MdnsDiscovery
    from mimirlite.mimir import BackendError, EchoBackend, MimirNode, OpenAIBackend
    from mimirlite.mimir.backends import Backend

    try:
        keypair = _keypair(args)
    except MimirliteError as exc:
        return _fail(f"cannot use key file {args.key_file}: {exc}")
    backend: Backend
    if args.backend == "echo":
        backend = EchoBackend()
    else:
        backend = OpenAIBackend(args.backend_url, models=args.model)
        try:
            await backend.list_models()
        except BackendError as exc:
            await backend.aclose()
            if args.backend == "openai":
                return _fail(str(exc))
            print(f"No OpenAI-compatible backend answered ({exc}); serving the echo model.", flush=True)
            backend = EchoBackend()
    try:
        host = Host(keypair, listen=args.listen or [DEFAULT_LISTEN])
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(host)
            node = await stack.enter_async_context(MimirNode(host, backend))
            if not args.no_mdns:
                await stack.enter_async_context(MdnsDiscovery(host))
            print(f"Peer ID: {host.peer_id}")
            print("Listening on:")
            for addr in host.dialable_addrs:
                print(f"  {addr}")
            print(f"Serving: {', '.join(node.models)}", flush=True)
            for peer in args.peer:
                try:
                    await host.dial(peer)
                except (MimirliteError, OSError) as exc:
                    logging.getLogger("mimirlite").warning("could not reach peer %s: %s", peer, exc)
            await asyncio.get_running_loop().create_future()
    except (MimirliteError, OSError) as exc:
        return _fail(str(exc))
    return 0


async def _chat(args: argparse.Namespace) -> int:
    from mimirlite.mimir import MimirClient

    try:
        client = MimirClient(args.peer, keypair=_keypair(args), mdns=not args.no_mdns)
        async with client:
            if not await client.wait_for_nodes(args.model, args.wait):
                what = f"serving {args.model}" if args.model else ""
                return _fail(f"no node {what} found within {args.wait:g} s".replace("  ", " "))
            messages: list[dict[str, Any]] = []
            if args.system:
                messages.append({"role": "system", "content": args.system})
            if args.prompt is not None:
                messages.append({"role": "user", "content": args.prompt})
                await _print_answer(client, messages, args.model)
                return 0
            return await _interactive(client, messages, args.model)
    except MimirliteError as exc:
        print(file=sys.stdout, flush=True)
        return _fail(str(exc))


async def _print_answer(client: Any, messages: list[dict[str, Any]], model: str | None) -> str:
    parts: list[str] = []
    async for chunk in client.chat(messages, model=model):
        text = chunk.choices[0].delta.content if chunk.choices else None
        if text:
            parts.append(text)
            sys.stdout.write(text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(parts)


async def _interactive(client: Any, messages: list[dict[str, Any]], model: str | None) -> int:
    print("Type a message; an empty line, 'exit' or end of input quits.", flush=True)
    while True:
        try:
            line = await asyncio.to_thread(input, "> ")
        except EOFError:
            return 0
        if line.strip() in ("", "exit", "quit"):
            return 0
        messages.append({"role": "user", "content": line})
        try:
            answer = await _print_answer(client, messages, model)
        except MimirliteError as exc:
            messages.pop()
            print(f"\nmimirlite: {exc}", file=sys.stderr, flush=True)
            continue
        messages.append({"role": "assistant", "content": answer})


async def _peers(args: argparse.Namespace) -> int:
    from mimirlite.mimir import MimirClient

    client = MimirClient(args.peer, keypair=_keypair(args), mdns=not args.no_mdns)
    async with client:
        if client.discovery is not None:
            await asyncio.sleep(args.wait)  # listen for every node on the LAN, not just the first
        nodes = client.nodes
        if not nodes:
            return _fail(f"no node found within {args.wait:g} s")
        for peer, models in nodes.items():
            addrs = client.host.addrs_of(peer)
            print(f"{peer}  {', '.join(models) or '-'}  {' '.join(addrs)}")
    return 0
