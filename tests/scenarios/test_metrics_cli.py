"""``mimirlite node --metrics ADDR:PORT`` as a real process: it prints where its metrics are, a scrape
follows a chat run by ``mimirlite chat``, and prometheus_client loads only with ``--metrics``."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.helpers.nodeproc import PROBED_NODE, cli, make_env, probed_modules, started
from tests.helpers.scrape import Samples, delta, http_get, parse, val

NODE = ("node", "--no-mdns", "--no-dht", "--listen", "/ip4/127.0.0.1/tcp/0", "--backend", "echo")
METRICS_LINE = re.compile(r"Metrics at (http://127\.0\.0\.1:(\d+)/metrics)")


async def scrape(port: int) -> Samples:
    status, headers, body = await http_get(port)
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    return parse(body.decode())


async def test_a_node_process_serves_its_metrics_and_they_follow_a_chat() -> None:
    env = make_env(PYTHONUNBUFFERED="1")
    async with started("-c", PROBED_NODE, *NODE, "--metrics", "127.0.0.1:0", env=env) as proc:
        banner = await proc.read_banner()
        found = METRICS_LINE.fullmatch(await proc.read_until("Metrics at "))
        assert found, proc.lines
        port = int(found.group(2))
        before = await scrape(port)
        assert val(before, "mimirlite_node_model_served", model="echo") == 1
        res = await cli("chat", "--peer", banner.local_addr, "-p", "scraped from a process", env=env)
        assert res.rc == 0 and res.out == "scraped from a process\n", res
        after = await scrape(port)
        assert delta(before, after, "mimirlite_node_chats_total", model="echo", outcome="ok") == 1
        assert delta(before, after, "mimirlite_node_time_to_first_chunk_seconds_count") == 1
        assert delta(before, after, "mimirlite_node_chat_duration_seconds_count") == 1
        assert delta(before, after, "mimirlite_host_connections_opened_total", direction="inbound") == 1
        assert delta(before, after, "mimirlite_host_connections_opened_total", direction="outbound") == 0
        assert delta(before, after, "mimirlite_host_received_bytes_total") > 0
        assert (await http_get(port, "/"))[0] == 404
        modules = await probed_modules(proc)
    assert "prometheus_client" in modules and "mimirlite.metrics_server" in modules


async def test_a_node_without_metrics_loads_no_prometheus_client() -> None:
    env = make_env(PYTHONUNBUFFERED="1")
    async with started("-c", PROBED_NODE, *NODE, env=env) as proc:
        banner = await proc.read_banner()
        res = await cli("chat", "--peer", banner.local_addr, "-p", "not counted for Prometheus", env=env)
        assert res.rc == 0, res
        modules = await probed_modules(proc)
        assert not proc.count("Metrics at")
    assert "mimirlite.node" not in modules and "mimirlite.mimir.node" in modules  # the probe saw a node
    assert not [m for m in modules if m.startswith(("prometheus_client", "mimirlite.prometheus"))]
    assert "mimirlite.metrics_server" not in modules


def test_importing_mimirlite_and_the_gateway_loads_no_prometheus_client() -> None:
    code = (
        "import json, sys\n"
        "import mimirlite, mimirlite.cli, mimirlite.metrics, mimirlite.gateway, mimirlite.mimir.node\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    modules = json.loads(out.stdout.splitlines()[-1])
    assert "mimirlite.gateway.gateway" in modules
    assert not [m for m in modules if m.startswith(("prometheus_client", "mimirlite.prometheus"))]


async def test_a_bad_metrics_address_fails_in_one_line(env: dict[str, str]) -> None:
    listen = ("--listen", "/ip4/127.0.0.1/tcp/0")
    for bad in ("127.0.0.1:99999", "::1:9464", "nothing"):
        res = await cli("node", "--backend", "echo", *listen, "--metrics", bad, env=env)
        assert res.rc != 0, res
        assert res.err.startswith("mimirlite: metrics address"), res.err
        assert len(res.err.strip().splitlines()) == 1, res.err
