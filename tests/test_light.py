"""``import mimirlite`` stays light: the heavy dependencies load only where they are used."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from mimirlite.mimir.http import PROXY_VARS
from tests.helpers.nodeproc import PROBED_NODE, cli, make_env, probed_modules, started
from tests.helpers.openai_server import OpenAIServer

HEAVY = ("openai", "httpx", "zeroconf", "pydantic", "h11", "dns", "prometheus_client", "playwright")


def loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return [m for m in json.loads(out.stdout.splitlines()[-1]) if m in HEAVY]


def test_import_loads_no_heavy_dependency() -> None:
    assert loaded_after("import mimirlite, mimirlite.mimir, mimirlite.cli") == []


def test_heavy_dependencies_load_where_used() -> None:
    # The probe itself must see them, or the test above proves nothing.
    backend = "from mimirlite.mimir import OpenAIBackend\nOpenAIBackend('http://127.0.0.1:9/v1')._client()"
    no_proxy = "".join(f"os.environ.pop({n!r}, None)\n" for v in PROXY_VARS for n in (v, v.upper()))
    assert loaded_after(f"import os\n{no_proxy}{backend}") == ["h11"]
    assert "httpx" in loaded_after(f"import os\nos.environ['HTTP_PROXY'] = 'http://127.0.0.1:9'\n{backend}")
    assert "h11" in loaded_after("import mimirlite.gateway")
    # dnspython loads on the first lookup (a closed port: the lookup fails fast or times out)
    assert loaded_after("import mimirlite.discovery") == []
    lookup = (
        "import asyncio\n"
        "from mimirlite.discovery.dnsaddr import DnsResolver, DnsaddrError\n"
        "try:\n"
        "    asyncio.run(DnsResolver(['127.0.0.1:9'], timeout=0.2).resolve('/dns4/a.test/tcp/1'))\n"
        "except DnsaddrError:\n"
        "    pass"
    )
    assert "dns" in loaded_after(lookup)




async def test_a_node_with_an_openai_compatible_backend_serves_without_the_openai_sdk() -> None:
    """Its backend path is h11 and the project's SSE decoder: neither openai, pydantic nor httpx is
    loaded, at start or after a chat streamed through it (h11 is, which shows the probe sees that path),
    nor the client's modules."""
    env = make_env(PYTHONUNBUFFERED="1")
    for name in PROXY_VARS:  # a proxy would take httpx's way (tested above)
        env.pop(name, None)
        env.pop(name.upper(), None)
    async with OpenAIServer(models=["m:1"]) as srv:
        args = ("node", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0", "--backend-url", srv.base_url)
        async with started("-c", PROBED_NODE, *args, env=env) as proc:
            banner = await proc.read_banner()
            res = await cli("chat", "--peer", banner.local_addr, "-p", "streamed through the node", env=env)
            assert res.rc == 0 and res.out == "streamed through the node\n", res
            assert srv.streams_completed == 1
            modules = await probed_modules(proc)
    loaded = {m.split(".")[0] for m in modules}
    assert "h11" in loaded and "mimirlite.mimir.sse" in modules and "mimirlite.mimir.node" in modules
    assert {"openai", "pydantic", "httpx"}.isdisjoint(loaded), sorted(loaded)
    assert {"mimirlite.mimir.client", "mimirlite.mimir.tunnel_client"}.isdisjoint(modules)


PUBLIC = ("MimirClient", "MimirNode", "OpenAIBackend", "EchoBackend", "NodeLimits", "ClientConfig", "Host")


def test_the_public_api_imports_from_the_top_and_stays_light() -> None:
    names = ", ".join(PUBLIC)
    assert loaded_after(f"from mimirlite import {names}") == []
    assert loaded_after("from mimirlite import *") == []


def test_all_is_complete_and_each_name_is_the_defining_modules() -> None:
    import mimirlite
    from mimirlite import mimir
    from mimirlite.mimir import backends, client, limits, node

    assert set(PUBLIC) <= set(mimirlite.__all__)
    assert sorted(mimirlite.__all__) == sorted(set(mimirlite.__all__))
    for name in mimirlite.__all__:
        assert getattr(mimirlite, name) is not None, name
    assert mimirlite.MimirClient is client.MimirClient is mimir.MimirClient
    assert mimirlite.MimirNode is node.MimirNode
    assert mimirlite.OpenAIBackend is backends.OpenAIBackend and mimirlite.EchoBackend is backends.EchoBackend
    assert mimirlite.NodeLimits is limits.NodeLimits
    # every public name that is not private or a module is listed
    public = {
        n
        for n in dir(mimirlite)
        if not n.startswith("_") and not isinstance(getattr(mimirlite, n), type(mimir))
    }
    assert public - {"annotations", "TYPE_CHECKING"} <= set(mimirlite.__all__)
    try:
        mimirlite.NoSuchName  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError("a missing name must raise AttributeError")


def test_every_config_field_has_a_docstring() -> None:
    import ast
    import dataclasses
    import inspect
    import itertools
    import textwrap

    from mimirlite import ClientConfig, NodeLimits
    from mimirlite.gateway import GatewayConfig

    for cls in (ClientConfig, GatewayConfig, NodeLimits):
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
        documented = {
            stmt.target.id
            for stmt, after in itertools.pairwise(body)
            if isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
        }
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in documented]
        assert missing == [], f"{cls.__name__}: no docstring for {missing}"


# ---- the processes of the command line: a one-shot chat and a gateway answering chats

PROBE = (
    "import atexit, json, signal, sys\n"
    "def dump(*_):\n"
    "    names = sorted({m.split('.')[0] for m in sys.modules})\n"
    "    print('MODULES: ' + json.dumps(names), flush=True)\n"
    "signal.signal(signal.SIGUSR1, dump)\n"
    "atexit.register(dump)\n"
    "from mimirlite.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
"""``python -c PROBE ARGS`` runs ``mimirlite ARGS`` and prints the top-level modules it loaded, as a line
``MODULES: [...]`` on stdout, at its exit and at each SIGUSR1."""


NOT_LOADED = ("noise", "uuid", "datetime")
"""Neither the ``noiseprotocol`` package (mimirlite does the Noise handshake itself) nor the ``uuid`` and
``datetime`` modules (random request IDs and Ollama's times need neither) load in a chat or a gateway."""


def modules_line(line: str) -> list[str]:
    assert line.startswith("MODULES: "), line
    names: list[str] = json.loads(line.removeprefix("MODULES: "))
    assert {"mimirlite", "asyncio", "cryptography"} <= set(names), names  # the probe saw a real process
    return [m for m in names if m in HEAVY or m in NOT_LOADED]


async def test_a_one_shot_chat_loads_neither_openai_nor_pydantic() -> None:
    from mimirlite.mimir import EchoBackend
    from tests.helpers.gateway import mimir_node
    from tests.helpers.nodeproc import make_env, run

    async with mimir_node(EchoBackend()) as (_, addr):
        res = await run("-c", PROBE, "chat", "--no-mdns", "--peer", addr, "-p", "light words", env=make_env())
    assert res.rc == 0, res.err
    answer, probe = res.out.splitlines()
    assert answer == "light words"
    assert modules_line(probe) == []  # no openai, pydantic, httpx, zeroconf, h11, dnspython, noise...


async def test_a_gateway_answering_chats_loads_neither_openai_nor_pydantic() -> None:
    import asyncio
    import re

    import openai

    from mimirlite.mimir import EchoBackend
    from tests.helpers.gateway import WAIT, bounded, curl, mimir_node, sse_data, user
    from tests.helpers.nodeproc import RUN_TIMEOUT, make_env, started

    async with mimir_node(EchoBackend()) as (_, addr):
        args = ("gateway", "--no-mdns", "--port", "0", "--peer", addr)
        async with started("-c", PROBE, *args, env=make_env()) as proc:
            line = await proc.read_until("OpenAI-compatible API at ", RUN_TIMEOUT)
            found = re.fullmatch(r"OpenAI-compatible API at (http://[^ ]+/v1)", line)
            assert found, line
            base_url = found.group(1)

            def use_sdk() -> tuple[str, str]:
                with openai.OpenAI(base_url=base_url, api_key="-", max_retries=0, timeout=WAIT) as client:
                    whole = client.chat.completions.create(model="echo", messages=user("all at once"))
                    stream = client.chat.completions.create(
                        model="echo", messages=user("a stream"), stream=True
                    )
                    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                return whole.choices[0].message.content or "", text

            assert await bounded(asyncio.to_thread(use_sdk)) == ("all at once", "a stream")
            raw = await curl(
                f"{base_url}/chat/completions",
                "-H",
                "content-type: application/json",
                "-d",
                json.dumps({"model": "echo", "messages": user("by curl"), "stream": True}),
            )
            *chunks, done = sse_data(raw)
            deltas = [c["delta"] for e in chunks for c in json.loads(e)["choices"]]
            assert (done, "".join(d.get("content") or "" for d in deltas)) == ("[DONE]", "by curl")
            ollama = base_url.removesuffix("/v1") + "/api/chat"
            body = json.dumps({"model": "echo", "messages": user("as ollama")})
            raw = await curl(ollama, "-H", "content-type: application/json", "-d", body)
            lines = [json.loads(line) for line in raw.splitlines()]
            assert "".join(x["message"]["content"] for x in lines) == "as ollama" and lines[-1]["done"]
            proc.proc.send_signal(signal.SIGUSR1)
            loaded = modules_line(await proc.read_until("MODULES: ", RUN_TIMEOUT))
    assert loaded == ["h11"]  # the gateway's HTTP: no openai, pydantic, httpx, zeroconf, dnspython, noise...


def test_request_ids_and_ollama_times_keep_their_formats() -> None:
    import datetime
    import uuid

    from mimirlite.gateway.gateway import _now
    from mimirlite.mimir.client import _request_id

    ids = {_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
    before = datetime.datetime.now(datetime.timezone.utc)
    stamp = _now()
    after = datetime.datetime.now(datetime.timezone.utc)
    assert stamp.endswith("Z") and len(stamp) == len("2026-01-01T00:00:00.000000Z"), stamp
    assert before <= datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= after


def test_the_command_lines_copies_of_library_defaults_are_equal() -> None:
    from mimirlite import cli
    from mimirlite.mimir import limits

    assert (cli._MAX_CONCURRENT, cli._QUEUE, cli._STALL_TIMEOUT) == (
        limits.MAX_CONCURRENT,
        limits.QUEUE,
        limits.STALL_TIMEOUT,
    )
    assert "mimirlite.mimir.limits" not in loaded_modules("import mimirlite.cli")


def loaded_modules(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    names: list[str] = json.loads(out.stdout.splitlines()[-1])
    return names
