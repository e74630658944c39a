"""The command line: ``node`` shares a backend's models, ``chat`` talks to them, ``peers`` lists nodes,
``models`` the models they serve, ``gateway`` serves them as an OpenAI-compatible HTTP API, ``id`` prints
the peer ID of a key file.

Each subcommand is a thin layer over the library; only this module prints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mimirlite._version import __version__
from mimirlite.errors import MimirliteError
from mimirlite.identity import KeyPair
from mimirlite.net.config import HostConfig
from mimirlite.net.host import Host

if TYPE_CHECKING:
    from mimirlite.mimir.census import NodeView
    from mimirlite.mimir.client import ClientConfig
    from mimirlite.protocols.relay.resources import RelayResources

DEFAULT_LISTEN = "/ip4/0.0.0.0/tcp/0"
MIB = 1024 * 1024
"""Bytes of peer data released since the budget's peak after which the node returns free heap pages."""
_GATEWAY_PER_IP = 1024
"""The default of ``gateway --max-connections-per-ip`` (``mimirlite.gateway.MAX_CONNECTIONS_PER_IP``,
not imported: h11 loads only for a gateway)."""
_MAX_CONCURRENT, _QUEUE, _STALL_TIMEOUT = 256, 1024, 30.0
"""The defaults of ``node --max-concurrent``, ``--queue`` and ``--stall-timeout`` (those of
``mimirlite.mimir.limits``, not imported: a chat or a gateway does not load the node's modules)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimirlite", description="Share and use LLMs peer to peer.")
    parser.add_argument("--version", action="version", version=f"mimirlite {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--peer", action="append", default=[], metavar="ADDR", help="a node (repeatable)")
    common.add_argument("--key-file", metavar="PATH", help="keep this identity (created when missing)")
    common.add_argument("--no-mdns", action="store_true", help="do not find or announce peers on the LAN")
    common.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        metavar="ADDR",
        help="join the DHT through this peer, kept connected (repeatable; a multiaddr with /p2p/, "
        "a /dnsaddr/ one, or 'ipfs' for the public IPFS bootstrap peers)",
    )
    common.add_argument("--no-dht", action="store_true", help="do not use the DHT (LAN or public)")
    common.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")

    nat = argparse.ArgumentParser(add_help=False)
    nat.add_argument(
        "--private-addrs",
        action="store_true",
        help="take private addresses as reachable in AutoNAT and hole punching (a network whose outside "
        "is itself private: a campus, a lab)",
    )
    listening = argparse.ArgumentParser(add_help=False)
    listening.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="ADDR",
        help="listen here too, so that a node reached through a relay can punch a direct connection to us "
        f"(repeatable; default: {DEFAULT_LISTEN} with --bootstrap or a relayed --peer, else none)",
    )

    relay_limits = argparse.ArgumentParser(add_help=False)
    limits = relay_limits.add_argument_group("relay service limits (go-libp2p's defaults)")
    limits.add_argument(
        "--max-reservations", type=_non_negative_int, default=128, metavar="N", help="reservations held (128)"
    )
    limits.add_argument(
        "--circuit-data",
        type=_data_cap,
        default=1 << 17,
        metavar="SIZE",
        help="bytes a relayed connection carries each way (128K; 0: no cap, for chats in a community)",
    )
    limits.add_argument(
        "--circuit-duration",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds a relayed connection lasts (120; 0: no cap)",
    )

    node = sub.add_parser("node", parents=[common, nat, relay_limits], help="serve the models of a backend")
    node.add_argument("--listen", action="append", metavar="ADDR", help=f"repeatable; {DEFAULT_LISTEN}")
    node.add_argument(
        "--relay",
        action="append",
        default=[],
        metavar="ADDR",
        help="reserve a slot on this relay (repeatable; a multiaddr with /p2p/): reachable through it "
        "from behind a NAT",
    )
    node.add_argument(
        "--no-relay",
        action="store_true",
        help="never reserve on a relay (by default a node AutoNAT finds private reserves on up to 2: "
        "the --relay ones, then connected peers that relay)",
    )
    node.add_argument(
        "--relay-service", action="store_true", help="also relay connections for others (the limits below)"
    )
    node.add_argument(
        "--models-interval",
        type=float,
        default=30.0,
        metavar="S",
        help="ask the backend for its models every S seconds and serve what changed (default 30; 0: never)",
    )
    node.add_argument(
        "--models-grace",
        type=float,
        default=None,
        metavar="S",
        help="a backend that stops answering keeps its models listed S seconds, retried meanwhile; then "
        "the node serves no model until it answers (default: 3 x --models-interval)",
    )
    node.add_argument(
        "--dht-server",
        action="store_true",
        help="answer the public DHT's requests too (for a node with a public address; "
        "the LAN DHT always does)",
    )
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
    node.add_argument(
        "--model",
        action="append",
        default=[],
        help="serve only this model (repeatable); with --backend echo: the echo model's name",
    )
    node.add_argument(
        "--stats-interval",
        type=_positive_float,
        metavar="S",
        help="log the node's counters (connections, streams, bytes, requests, refusals, errors) "
        "on one line every S seconds",
    )
    node.add_argument(
        "--metrics",
        metavar="ADDR:PORT",
        help="serve the counters to Prometheus at http://ADDR:PORT/metrics (PORT or :PORT alone: "
        "on 127.0.0.1; off by default)",
    )
    node.add_argument(
        "--dead-link-timeout",
        type=_dead_link_timeout,
        default=HostConfig.dead_link_timeout,
        metavar="SECONDS",
        help="close a connection whose peer stops acknowledging for this long (TCP keepalive and "
        "user timeout; default %(default)g; 0: the OS defaults)",
    )
    node.add_argument(
        "--max-buffered",
        type=_size,
        default=HostConfig.max_buffered_total,
        metavar="SIZE",
        help="memory held for peers on all connections (unread requests and answers): MiB, or with a "
        "K, M or G suffix; past it the newest streams of the peer holding the most are reset "
        f"(default {HostConfig.max_buffered_total // MIB})",
    )
    access = node.add_argument_group("access control (who may use this node, and how much)")
    access.add_argument(
        "--allow-peer",
        action="append",
        default=[],
        metavar="PEER_ID",
        help="serve only this peer (repeatable); without --allow-peer/--allow-file every peer is served",
    )
    access.add_argument(
        "--allow-file",
        action="append",
        default=[],
        metavar="FILE",
        help="serve only the peer IDs in FILE (one a line, # comments; repeatable)",
    )
    access.add_argument(
        "--max-concurrent",
        type=_positive_int,
        default=_MAX_CONCURRENT,
        metavar="N",
        help=f"chat requests answered at once (default {_MAX_CONCURRENT}); more wait in the queue",
    )
    access.add_argument(
        "--queue",
        type=_non_negative_int,
        default=_QUEUE,
        metavar="N",
        help=f"chat requests that may wait, in arrival order (default {_QUEUE}); more are refused",
    )
    access.add_argument(
        "--max-per-peer",
        type=_positive_int,
        metavar="N",
        help="chat requests one peer may have at once (default: no limit)",
    )
    access.add_argument(
        "--rate",
        type=_positive_float,
        metavar="N",
        help="chat requests one peer may start a minute (default: no limit)",
    )
    access.add_argument(
        "--stall-timeout",
        type=_stall_timeout,
        default=_STALL_TIMEOUT,
        metavar="SECONDS",
        help="while other chats wait, end (as overloaded) a chat whose reader took nothing for this long "
        f"(default {_STALL_TIMEOUT:g}; 0: never)",
    )
    access.add_argument(
        "--max-tokens",
        type=_positive_int,
        metavar="N",
        help="cap on the tokens of one answer: a peer's max_tokens is clamped to N, and N is sent "
        "when a peer asks none (default: no cap)",
    )

    clients = [common, listening, nat]
    chat = sub.add_parser("chat", parents=clients, help="chat with a model on the network")
    chat.add_argument("-p", "--prompt", help="answer this once and exit")
    chat.add_argument("--model", help="the model to ask (default: the node's default)")
    chat.add_argument("--system", help="a system message")
    chat.add_argument("--wait", type=float, default=10.0, metavar="S", help="how long to look for a node")

    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--wait", type=float, default=3.0, metavar="S", help="how long to look for nodes")
    listing.add_argument("--dht", action="store_true", help="also list the nodes found through the DHT")
    listing.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")
    peers = sub.add_parser("peers", parents=[*clients, listing], help="list the nodes found and their models")
    peers.add_argument("--model", help="with --dht: the model to look up (default: every DHT peer's)")
    sub.add_parser(
        "models",
        parents=[*clients, listing],
        help="list the models the nodes found serve, with how many nodes serve each",
    ).set_defaults(model=None)

    relay = sub.add_parser(
        "relay",
        parents=[common, relay_limits],
        help="relay connections for peers behind NATs (circuit relay v2)",
    )
    relay.add_argument("--listen", action="append", metavar="ADDR", help=f"repeatable; {DEFAULT_LISTEN}")

    ident = sub.add_parser("id", help="print the peer ID of a key file (created when missing)")
    ident.add_argument("--key-file", metavar="PATH", help="the key file (as node, chat, peers take it)")
    ident.set_defaults(verbose=0)

    gateway = sub.add_parser(
        "gateway",
        parents=clients,
        help="the network as an OpenAI-compatible API",
        description="Serve the models of the nodes found as an OpenAI-compatible HTTP API. To require an "
        "API key, set it in the MIMIRLITE_API_KEY environment variable rather than with --api-key: "
        "a command line shows in `ps` to every user of the machine.",
    )
    gateway.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; another one without an API key warns)",
    )
    gateway.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any)")
    gateway.add_argument(
        "--api-key",
        default=os.environ.get("MIMIRLITE_API_KEY"),
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' (default: $MIMIRLITE_API_KEY, which is better: a key "
        "given here shows in `ps`; none: open)",
    )
    gateway.add_argument(
        "--allow-host",
        action="append",
        default=[],
        type=_allow_host,
        metavar="NAME",
        help="also serve requests whose Host header is NAME (repeatable; '*': any); by default only "
        "localhost, 127.0.0.1, [::1] and the address a client connected to are served, against DNS rebinding",
    )
    gateway.add_argument(
        "--max-connections-per-ip",
        type=_positive_int,
        default=_GATEWAY_PER_IP,
        metavar="N",
        help=f"connections one client address may hold at once (default {_GATEWAY_PER_IP}); at the "
        "limit its connection idle the longest is closed, or the new one is refused (429)",
    )
    gateway.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        type=_cors_origin,
        metavar="ORIGIN",
        help="let browser pages from ORIGIN (scheme://host[:port]; '*': any) call the API (repeatable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    # A chat prints its answer and, on failure, one line: library warnings show with -v.
    quiet = logging.WARNING if args.command in ("node", "gateway", "relay") else logging.ERROR
    level = (quiet, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    run = {
        "node": _node,
        "chat": _chat,
        "peers": _peers,
        "models": _models,
        "id": _id,
        "gateway": _gateway,
        "relay": _relay,
    }[args.command]
    try:
        args.keypair = _load_keypair(args)
    except MimirliteError as exc:  # KeyFileError, InvalidKeyError: one line naming the file
        return _fail(str(exc))
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


def _fail(message: str) -> int:
    print(f"mimirlite: {message}", file=sys.stderr)
    return 1


def _load_keypair(args: argparse.Namespace) -> KeyPair | None:
    """The identity of ``--key-file`` (created when missing), else a new one (None for ``id``)."""
    if args.key_file:
        return KeyPair.load_or_create(args.key_file)
    return None if args.command == "id" else KeyPair.generate()


def _keypair(args: argparse.Namespace) -> KeyPair:
    """The identity loaded by :func:`main` before the command runs."""
    keypair: KeyPair = args.keypair
    return keypair


def _client_config(args: argparse.Namespace, peers: Sequence[str]) -> ClientConfig:
    """The client's settings from the command line (``peers`` dialed when it starts)."""
    from mimirlite.mimir import ClientConfig

    listen = args.listen
    if not listen and ((args.bootstrap and not args.no_dht) or any("/p2p-circuit" in a for a in args.peer)):
        listen = [DEFAULT_LISTEN]  # nodes behind NATs are likely: be ready for their hole punches
    return ClientConfig(
        peers=tuple(peers),
        keypair=_keypair(args),
        mdns=not args.no_mdns,
        dht=not args.no_dht,
        bootstrap=tuple(args.bootstrap),
        listen=tuple(listen),
        private_addrs=args.private_addrs,
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def _dead_link_timeout(text: str) -> float | None:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds (0: the OS defaults), not {text}")
    return value or None


def _stall_timeout(text: str) -> float | None:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds (0: never), not {text}")
    return value or None


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": MIB, "k": 1024, "m": MIB, "g": 1024 * MIB}


def _size(text: str) -> int:
    """A size in bytes: a number of MiB, or a number with a K, M or G suffix (binary units: 1K is 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or (not match.group(2) and text.strip()[-1:].isalpha()):
        raise argparse.ArgumentTypeError(f"not a size (e.g. 128, 512K, 1G): {text!r}")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value < 256 * 1024:
        raise argparse.ArgumentTypeError(f"must be at least 256K, not {text}")
    return value


def _data_cap(text: str) -> int | None:
    """A relayed connection's data cap: a size (128K, 1M ...; a bare number is bytes), or 0 for none."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size (e.g. 128K, 16M, 0): {text!r}")
    value = int(float(match.group(1)) * (_UNITS[match.group(2).lower()] if match.group(2) else 1))
    return value or None


def _relay_resources(args: argparse.Namespace) -> RelayResources:
    from mimirlite.protocols.relay.resources import RelayResources

    return RelayResources(
        max_reservations=args.max_reservations,
        circuit_data=args.circuit_data,
        circuit_duration=args.circuit_duration or None,
    )


def _cors_origin(text: str) -> str:
    from mimirlite.gateway.http import cors_origin  # h11 loads only for a gateway

    try:
        return cors_origin(text)
    except MimirliteError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _allow_host(text: str) -> str:
    from mimirlite.gateway.http import host_name  # h11 loads only for a gateway

    if text.strip() != "*" and host_name(text) is None:
        raise argparse.ArgumentTypeError(f"not a host name or address: {text!r}")
    return text


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


async def _id(args: argparse.Namespace) -> int:
    if not args.key_file:
        return _fail("id needs --key-file PATH (without a key file a node has a new peer ID at each start)")
    print(_keypair(args).peer_id)
    return 0


async def _add_peers(client: Any, addrs: Sequence[str]) -> list[str]:
    """Dial and identify the nodes given with --peer; for each that failed, why."""
    results = await asyncio.gather(*(client.add_peer(a) for a in addrs), return_exceptions=True)
    problems = []
    for addr, result in zip(addrs, results, strict=True):
        if isinstance(result, (MimirliteError, OSError, asyncio.TimeoutError)):
            problems.append(f"cannot use {addr}: {result or type(result).__name__}")
        elif isinstance(result, BaseException):
            raise result
    return problems


async def _node(args: argparse.Namespace) -> int:
    from mimirlite.discovery import MdnsDiscovery
    from mimirlite.metrics import STATS_LOGGER, log_stats
    from mimirlite.mimir import BackendError, EchoBackend, MimirNode, NodeLimits, OpenAIBackend
    from mimirlite.mimir.backends import Backend
    from mimirlite.net.config import allowlist
    from mimirlite.protocols import identify_service
    from mimirlite.protocols.autonat.service import AutoNat, AutonatConfig
    from mimirlite.protocols.autonat.verdict import DialPolicyConfig
    from mimirlite.protocols.dcutr.holepunch import HolePunchConfig
    from mimirlite.protocols.dcutr.service import HolePuncher
    from mimirlite.protocols.relay.auto import AutoRelay
    from mimirlite.protocols.relay.client import RelayClient
    from mimirlite.protocols.relay.service import RelayService

    keypair = _keypair(args)  # loaded (or refused in one line) by main() before the command runs
    if args.relay and args.no_relay:
        return _fail("--relay and --no-relay contradict each other")
    try:
        allowed = allowlist(args.allow_peer, args.allow_file) if args.allow_peer or args.allow_file else None
        limits = NodeLimits(
            args.max_concurrent,
            args.queue,
            args.max_per_peer,
            args.rate,
            stall_timeout=args.stall_timeout,
            max_tokens=args.max_tokens,
        )
    except MimirliteError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot read allow file {exc.filename}: {exc.strerror}")
    backend: Backend
    models: list[str] | None = None  # asked once here; the node takes them instead of asking again
    if args.backend == "echo":
        if len(args.model) > 1:
            return _fail("the echo backend serves one model: give --model at most once")
        backend = EchoBackend(*args.model)  # --model NAME: the echo model under that name
    else:
        backend = OpenAIBackend(args.backend_url, models=args.model)
        try:
            models = await backend.list_models()
        except BackendError as exc:
            await backend.aclose()
            if args.backend == "openai":
                return _fail(str(exc))
            print(f"No OpenAI-compatible backend answered ({exc}); serving the echo model.", flush=True)
            backend = EchoBackend()
    try:
        config = HostConfig(
            allow_peers=allowed,
            dead_link_timeout=args.dead_link_timeout,
            max_buffered_total=args.max_buffered,
        )
        host = Host(keypair, listen=args.listen or [DEFAULT_LISTEN], config=config)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(host)
            node = await stack.enter_async_context(
                MimirNode(
                    host,
                    backend,
                    models=models,
                    limits=limits,
                    dht=not args.no_dht,
                    bootstrap=args.bootstrap,
                    dht_server=args.dht_server,
                    models_interval=args.models_interval or None,
                    models_grace=args.models_grace,
                )
            )
            if args.stats_interval:
                # Asked for explicitly, so shown without -v: INFO lines on their own logger.
                logging.getLogger(STATS_LOGGER).setLevel(logging.INFO)
                stats = asyncio.ensure_future(log_stats(args.stats_interval, host=host, node=node))
                stack.callback(stats.cancel)
            metrics_url = None
            if args.metrics is not None:
                from mimirlite.metrics_server import MetricsServer

                served = MetricsServer(host=host, node=node, address=args.metrics)
                metrics_url = (await stack.enter_async_context(served)).url
            if not args.no_mdns:
                await stack.enter_async_context(MdnsDiscovery(host))
            if args.relay_service:
                await stack.enter_async_context(RelayService(host, _relay_resources(args)))
            identify = identify_service(host)
            relays = None
            if identify is not None:
                identify.identify_on_connect()  # what peers see of us: AutoNAT's and DCUtR's addresses
                private = args.private_addrs
                autonat_config = AutonatConfig(policy=DialPolicyConfig(allow_private=private))
                autonat = await stack.enter_async_context(AutoNat(host, identify, autonat_config))
                if not args.no_relay:
                    relays = await stack.enter_async_context(RelayClient(host, args.relay))
                    auto = AutoRelay(host, identify, autonat, relays, relays=args.relay)
                    await stack.enter_async_context(auto)
                    # a peer that reached us through a relay: punch a hole to it (DCUtR)
                    punch = HolePunchConfig(allow_private=private)
                    puncher = await stack.enter_async_context(
                        HolePuncher(host, autonat.candidate_addrs, punch)
                    )
                    relays.on_relayed.append(puncher.on_relayed)
            print(f"Peer ID: {host.peer_id}")
            print("Listening on:")
            for addr in host.dialable_addrs:
                print(f"  {addr}")
            print(f"Serving: {', '.join(node.models)}", flush=True)
            if metrics_url is not None:
                print(f"Metrics at {metrics_url}", flush=True)
            if relays is not None and args.relay:
                print("Reachable through relays:" if relays.circuit_addrs else "No relay reservation yet")
                for addr in relays.circuit_addrs:
                    print(f"  {addr}", flush=True)
            if relays is not None:  # later reservations (renewals do not count), as they come
                relays.on_reserved.append(lambda addr: print(f"Reachable through relay: {addr}", flush=True))
            if args.relay_service:
                print("Relaying connections for others", flush=True)
            if allowed is not None:
                print(f"Allowed peers: {len(allowed)}; any other peer is refused", flush=True)
            for peer in args.peer:
                try:
                    await host.dial(peer)
                except (MimirliteError, OSError) as exc:
                    logging.getLogger("mimirlite").warning("could not reach peer %s: %s", peer, exc)
            await asyncio.get_running_loop().create_future()
    except (MimirliteError, OSError) as exc:
        return _fail(str(exc))
    return 0


async def _relay(args: argparse.Namespace) -> int:
    from mimirlite.protocols import identify_service, start_services
    from mimirlite.protocols.kad import Dht
    from mimirlite.protocols.relay.service import RelayService

    try:
        host = Host(_keypair(args), listen=args.listen or [DEFAULT_LISTEN])
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(host)
            start_services(host)
            identify = identify_service(host)
            if not args.no_dht and identify is not None:
                await stack.enter_async_context(Dht(host, identify))
            relay = await stack.enter_async_context(RelayService(host, _relay_resources(args)))
            print(f"Peer ID: {host.peer_id}")
            print("Relaying on:")
            for addr in host.dialable_addrs:
                print(f"  {addr}")
            r = relay.resources
            data = "no data cap" if r.circuit_data is None else f"{r.circuit_data} bytes each way"
            duration = "no time cap" if r.circuit_duration is None else f"{r.circuit_duration:g} s"
            limits = f"a relayed connection: {data}, {duration}"
            print(f"Up to {r.max_reservations} reservations; {limits}", flush=True)
            await asyncio.get_running_loop().create_future()
    except (MimirliteError, OSError) as exc:
        return _fail(str(exc))
    return 0


async def _chat(args: argparse.Namespace) -> int:
    from mimirlite.mimir import MimirClient

    try:
        client = MimirClient(config=_client_config(args, peers=()))
        async with client:
            problems = await _add_peers(client, args.peer)
            hopeless = client.discovery is None and args.peer and len(problems) == len(args.peer)
            if hopeless:  # every node given refused or failed, and no other can turn up
                return _fail("; ".join(problems))
            if not await client.wait_for_nodes(args.model, args.wait):
                what = f"serving {args.model}" if args.model else ""
                why = "".join(f"; {p}" for p in problems)
                return _fail(f"no node {what} found within {args.wait:g} s{why}".replace("  ", " "))
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
    async for chunk in client.chat_raw(messages, model=model):  # checked dicts: no openai, no pydantic
        choices = chunk["choices"]
        text = choices[0]["delta"].get("content") if choices else None
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
    return await _survey(args, _print_peers)


async def _models(args: argparse.Namespace) -> int:
    return await _survey(args, _print_models)


async def _survey(args: argparse.Namespace, show: Callable[[list[NodeView], bool], None]) -> int:
    """Look for nodes as ``peers`` and ``models`` do (``--peer``, mDNS, ``--dht``) for ``--wait`` s, then
    ``show`` them (as JSON with ``--json``). None found: exit status 1 and one line on stderr (with
    ``--json``, the empty document on stdout first)."""
    from mimirlite.mimir import MimirClient
    from mimirlite.mimir.census import node_views

    try:
        client = MimirClient(config=_client_config(args, peers=()))
        async with client:
            problems = await _add_peers(client, args.peer)
            if args.dht and args.model:
                await client.wait_for_nodes(args.model, args.wait)
            elif args.dht:
                await client.dht_nodes(args.wait)
            if client.discovery is not None:
                await asyncio.sleep(args.wait)  # listen for every node on the LAN, not just the first
            if not client.nodes:
                if args.json:
                    show([], True)
                return _fail("; ".join(problems) or f"no node found within {args.wait:g} s")
            if client.puncher is not None:  # say how each node is reached once its hole punch is over
                relayed = [p for p, c in client.host.connections.items() if p in client.nodes and c.relayed]
                await asyncio.gather(*(client.puncher.wait_direct(p, limit=args.wait) for p in relayed))
            show(node_views(client), args.json)
            for problem in problems:
                print(f"mimirlite: {problem}", file=sys.stderr)
    except MimirliteError as exc:
        return _fail(str(exc))
    return 0


def _print_peers(nodes: list[NodeView], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"peers": [n.to_json() for n in nodes]}, indent=2), flush=True)
        return
    for n in nodes:
        models = ", ".join(_printable(m) for m in n.models) or "-"
        print(f"{n.peer_id}  {models}  {' '.join(n.addrs)}  [{n.generation or '?'}, {n.connection}]")


def _print_models(nodes: list[NodeView], as_json: bool) -> None:
    from mimirlite.mimir.census import model_views

    models = model_views(nodes)
    if as_json:
        print(json.dumps({"models": [m.to_json() for m in models]}, indent=2), flush=True)
        return
    names = [_printable(m.model) for m in models]
    width = max((len(name) for name in names), default=0)
    for name, m in zip(names, models, strict=True):
        print(f"{name:<{width}}  {m.nodes} node{'' if m.nodes == 1 else 's'}")


def _printable(text: str) -> str:
    """``text`` (a name a peer chose) safe on a terminal: control, format and other unprintable
    characters (escape sequences, newlines, bidi overrides) as Python escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


async def _gateway(args: argparse.Namespace) -> int:
    from mimirlite.gateway import Gateway, GatewayConfig
    from mimirlite.mimir import MimirClient

    try:
        client = MimirClient(config=_client_config(args, peers=args.peer))
        gateway = Gateway(
            client,
            GatewayConfig(
                host=args.host,
                port=args.port,
                api_key=args.api_key,
                cors_origins=tuple(args.cors_origin),
                allow_hosts=tuple(args.allow_host),
                max_connections_per_ip=args.max_connections_per_ip,
            ),
        )
        async with client, gateway:
            print(f"OpenAI-compatible API at {gateway.base_url}", flush=True)
            print(f"Chat in the browser at {gateway.url}/", flush=True)
            await asyncio.get_running_loop().create_future()
    except (MimirliteError, OSError) as exc:
        return _fail(str(exc))
    return 0
