"""Hole punching behind a js-libp2p relay, in the NAT lab, from the command line: the JS relay
(@libp2p/circuit-relay-v2 3.1.7) keeps its default limit (128 KiB, both ways together, 2 minutes) on each
relayed connection. ``node --relay <JS relay>`` behind NAT A; ``chat`` and ``peers`` behind NAT B reach it
through the relay, take its hole punch (they listen because the address they are given is relayed) and wait
for it before chatting, so an answer of about 600 KiB arrives whole over the direct connection. Behind a
symmetric NAT the punch fails: a short chat still goes through the relay, ``peers`` says "relayed", and the
long answer is cut at the relay's limit, which shows the long one needed the punched path."""

from __future__ import annotations

import contextlib

import pytest
from jsnat import JsNatPeer

from tests.helpers.netns import NatLab, require_nat
from tests.helpers.nodeproc import RUN_TIMEOUT, NodeProc, run_cli

PORT = 4001
LONG = " ".join(f"w{i:04d}" for i in range(3000))
"""3,000 words: the echo node streams each as one chunk of about 200 bytes, some 600 KiB in all."""
RELAY_DATA_LIMIT = 128 * 1024


@pytest.mark.parametrize("symmetric", [False, True], ids=["cone-nats", "symmetric-nat"])
async def test_a_long_answer_needs_the_punched_connection_past_a_js_relay(symmetric: bool) -> None:
    require_nat()
    async with (
        NatLab(wan_hosts=1, lans=[1, 1], symmetric=[False, symmetric]) as lab,
        contextlib.AsyncExitStack() as stack,
    ):
        (wan,), ((node_host,), (chat_host,)) = lab.wan, lab.lans
        relay = await stack.enter_async_context(
            await JsNatPeer.start(relay_server=True, listen=f"/ip4/{wan.ip}/tcp/{PORT}", netns=wan.netns)
        )
        relay_addr = f"/ip4/{wan.ip}/tcp/{PORT}/p2p/{relay.peer_id}"
        node = await NodeProc.serve(
            stack,
            *("-v", "--no-mdns", "--no-dht", "--backend", "echo", "--model", "far", "--private-addrs"),
            *("--relay", relay_addr),
            net=lab,
            host=node_host,
        )
        at = await node.wait_line(
            lambda line: line.startswith("  /ip4/") and "/p2p-circuit/" in line, RUN_TIMEOUT
        )
        circuit = node.out[at].strip()
        client = ("-v", "--no-mdns", "--no-dht", "--private-addrs", "--peer", circuit)

        rc, out, err = await run_cli(lab, chat_host, "peers", *client, "--wait", "30", timeout=60)
        path = "relayed" if symmetric else "direct"
        assert rc == 0 and f"[first, {path}]" in out, f"{out}{err}\n--- node:\n{node.output}"

        rc, out, err = await run_cli(lab, chat_host, "chat", *client, "-p", LONG, timeout=60)
        if symmetric:
            assert rc != 0 and len(out) < len(LONG), f"{err}\n--- node:\n{node.output}"
            rc, out, err = await run_cli(lab, chat_host, "chat", *client, "-p", "still relayed", timeout=60)
            assert (rc, out) == (0, "still relayed\n"), f"{err}\n--- node:\n{node.output}"
            await node.wait_line(lambda line: "staying relayed" in line, RUN_TIMEOUT)
        else:
            assert (rc, out) == (0, LONG + "\n"), f"{err[-3000:]}\n--- node:\n{node.output[-5000:]}"
            await node.wait_line(lambda line: "dcutr: direct connection" in line, RUN_TIMEOUT)
