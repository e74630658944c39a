"""The AutoNAT and DCUtR literals of the unit tests are what the JS packages' own encoders write today:
``interop/nat-encode.mjs`` runs @libp2p/autonat 2.0.16's and @libp2p/dcutr 2.0.15's protons encoders
and its output must equal the literals in tests/protocols/autonat/ and tests/protocols/dcutr/."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.protocols.autonat.test_messages import JS_AUTONAT
from tests.protocols.dcutr.test_messages import JS_DCUTR

HERE = Path(__file__).resolve().parent


def test_nat_encode_prints_the_unit_tests_literals() -> None:
    out = subprocess.run(
        ["node", "nat-encode.mjs"], cwd=HERE, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    printed = json.loads(out)
    assert printed["autonat"] == {name: hexed for name, (hexed, _) in JS_AUTONAT.items()}
    assert printed["dcutr"] == {name: hexed for name, (hexed, _) in JS_DCUTR.items()}
