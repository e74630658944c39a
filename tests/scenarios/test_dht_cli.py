"""The command line over the DHT, end to end, on two bridges of namespace test hosts (tests/helpers/netns.py
RoutedNet): no multicast crosses between them, and every command runs with ``--no-mdns`` anyway, so the only
way one node learns of another is the DHT, joined through one bootstrap peer.

- B, the bootstrap peer: ``mimirlite node --backend echo --no-mdns`` on bridge 0 (its echo model under another
  name, so that an answer tells who gave it);
- N: ``mimirlite node --backend echo --model M --bootstrap B`` on bridge 1: it provides M on the LAN DHT;
- on bridge 0, ``chat --bootstrap B --model M -p ...`` gets N's echo, ``peers --dht --bootstrap B``
  (with and without ``--model M``) lists N with M and its bridge-1 address, and ``models --dht`` lists M
  as served by N.
"""

from __future__ import annotations

import contextlib
import json

from tests.helpers.netns import RoutedNet, require_netns
from tests.helpers.nodeproc import RUN_TIMEOUT, NodeProc, run_cli

MODEL = "dht-only/echo:1b"
B_MODEL = "bootstrap-echo"
PROMPT = "found through the DHT across the router"


def listed(out: str) -> dict[str, tuple[list[str], list[str]]]:
    """``peers`` output: {peer ID: (models, addresses)}."""
    found: dict[str, tuple[list[str], list[str]]] = {}
    for line in out.splitlines():
        peer, models, rest = line.split("  ", 2)
        found[peer] = (models.split(", "), rest.rsplit("  ", 1)[0].split())
    return found


async def test_chat_and_peers_find_a_node_only_through_the_dht() -> None:
    require_netns()
    async with RoutedNet([2, 1]) as net, contextlib.AsyncExitStack() as stack:
        (b_host, client_host), (n_host,) = net.bridges
        boot = await NodeProc.serve(
            stack, "--no-mdns", "--backend", "echo", "--model", B_MODEL, net=net, host=b_host
        )
        b_addr = next(a for a in boot.banner.addrs if a.startswith(f"/ip4/{b_host.ip}/tcp/"))
        if "/p2p/" not in b_addr:
            b_addr = f"{b_addr}/p2p/{boot.peer_id}"
        node = await NodeProc.serve(
            stack,
            *("--no-mdns", "--backend", "echo", "--model", MODEL, "--bootstrap", b_addr, "-v"),
            net=net,
            host=n_host,
        )
        assert node.models == [MODEL], node.output
        common = ("--no-mdns", "--bootstrap", b_addr)

        rc, out, err = await run_cli(
            net, client_host, "chat", *common, "--model", MODEL, "-p", PROMPT, timeout=RUN_TIMEOUT
        )
        assert rc == 0, f"chat failed ({rc}):\n{out}\n--- stderr:\n{err}\n--- node:\n{node.output}"
        assert PROMPT in out, out

        for extra in (("--model", MODEL), ()):
            rc, out, err = await run_cli(
                net, client_host, "peers", "--dht", *common, *extra, timeout=RUN_TIMEOUT
            )
            assert rc == 0, f"peers {extra} failed ({rc}):\n{out}\n--- stderr:\n{err}"
            found = listed(out)
            assert node.peer_id in found, out
            models, addrs = found[node.peer_id]
            assert models == [MODEL], out
            assert any(a.startswith(f"/ip4/{n_host.ip}/tcp/") for a in addrs), out

        # models --dht: every model of the DHT's nodes, with how many nodes serve each
        rc, out, err = await run_cli(
            net, client_host, "models", "--dht", "--json", *common, timeout=RUN_TIMEOUT
        )
        assert rc == 0, f"models failed ({rc}):\n{out}\n--- stderr:\n{err}"
        offered = {m["model"]: m["peers"] for m in json.loads(out)["models"]}
        assert offered[MODEL] == [node.peer_id], out
