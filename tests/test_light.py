"""``import mimirlite`` stays light: the heavy dependencies load only where they are used."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from mimirlite.mimir.http import PROXY_VARS
from tests.helpers.nodeproc import cli, make_env, started
from tests.helpers.openai_server import OpenAIServer

HEAVY = ("openai", "httpx", "zeroconf", "pydantic", "h11", "dns")


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


# A node process that prints the modules it has loaded when it gets SIGUSR1 (the handler runs in its
# event loop's thread between two bytecodes: the node goes on serving).
_PROBED_NODE = """
import json, signal, sys
def loaded(signum, frame):
    print('LOADED ' + json.dumps(sorted(sys.modules)), flush=True)
signal.signal(signal.SIGUSR1, loaded)
sys.argv[0] = 'mimirlite'
from mimirlite.cli import main
raise SystemExit(main())
"""


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
        async with started("-c", _PROBED_NODE, *args, env=env) as proc:
            banner = await proc.read_banner()
            res = await cli("chat", "--peer", banner.local_addr, "-p", "streamed through the node", env=env)
            assert res.rc == 0 and res.out == "streamed through the node\n", res
            assert srv.streams_completed == 1
            proc.proc.send_signal(signal.SIGUSR1)
            modules = json.loads((await proc.read_until("LOADED ")).removeprefix("LOADED "))
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
    assert public - {"annotations", "importlib", "TYPE_CHECKING"} <= set(mimirlite.__all__)
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
