"""``import mimirlite`` stays light: the heavy dependencies load only where they are used."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("openai", "httpx", "zeroconf", "pydantic", "h11")


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
    assert "openai" in loaded_after(
        "from mimirlite.mimir import OpenAIBackend\nOpenAIBackend('http://127.0.0.1:9/v1')._sdk()"
    )
    assert "h11" in loaded_after("import mimirlite.gateway")
