"""Shared setup of the interop tests: every test here pairs mimirlite with real js-libp2p peers, so each is
marked ``interop`` and skipped, with the reason, when node or interop/'s ``npm ci`` tree is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsmimir import node_available

from tests.helpers.leakcheck import no_leaks

__all__ = ["no_leaks"]

HERE = Path(__file__).resolve().parent
_NO_NODE = "needs node on PATH and `npm ci` run in interop/ (interop/node_modules missing)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = not node_available()
    for item in items:
        if item.path.parent == HERE:
            item.add_marker(pytest.mark.interop)
            if missing:
                item.add_marker(pytest.mark.skip(reason=_NO_NODE))
