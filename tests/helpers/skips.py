"""The skip allowlist: with ``MIMIRLITE_STRICT_SKIPS=1`` (as ``.ci/run`` sets) or ``--strict-skips``, a
run in which a test is skipped fails, unless that skip is listed in ``tests/allowed_skips.txt`` with its
reason. CI has root, node and npm: nothing there should skip.

The file: one entry a line, ``<node id or pattern>  # reason`` (the reason is required, after
whitespace and ``#``); ``*`` matches any run of characters and nothing else is special; an entry naming
a module or a test also covers its tests and parametrizations. Blank lines and lines starting with
``#`` are ignored. ``MIMIRLITE_ALLOWED_SKIPS`` names another file (this mechanism's own test uses it).

Registered for the whole repository by the root ``conftest.py`` (``pytest_plugins``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ALLOWLIST = Path(__file__).resolve().parents[1] / "allowed_skips.txt"
STRICT_ENV = "MIMIRLITE_STRICT_SKIPS"
FILE_ENV = "MIMIRLITE_ALLOWED_SKIPS"


@dataclass(frozen=True)
class Allowed:
    """One entry of the allowlist."""

    pattern: str
    reason: str
    line: int

    def matches(self, nodeid: str) -> bool:
        """Whether the skip of ``nodeid`` is this entry's (itself, or a test or parametrization in it)."""
        regex = ".*".join(re.escape(part) for part in self.pattern.split("*"))
        return re.fullmatch(rf"{regex}(?:(?:::|\[).*)?", nodeid) is not None


def load_allowlist(path: Path) -> list[Allowed]:
    """The entries of ``path`` (none if it does not exist); UsageError for an entry without a reason."""
    if not path.exists():
        return []
    entries = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = re.fullmatch(r"(\S.*?)\s+#\s*(\S.*)", line)
        if entry is None:
            raise pytest.UsageError(f"{path}:{number}: not `<node id or pattern>  # reason`: {raw!r}")
        entries.append(Allowed(entry[1], entry[2], number))
    return entries


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--strict-skips",
        action="store_true",
        default=False,
        help=f"fail the run when a test skips that tests/allowed_skips.txt does not list (or {STRICT_ENV}=1)",
    )


class SkipGuard:
    """Collects the skips of a run and fails the run when one is not allowed."""

    def __init__(self, allowed: list[Allowed], source: Path) -> None:
        self.allowed = allowed
        self.source = source
        self.unlisted: list[tuple[str, str]] = []

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        if any(entry.matches(report.nodeid) for entry in self.allowed):
            return
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        self.unlisted.append((report.nodeid, reason.removeprefix("Skipped: ")))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.unlisted and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.unlisted:
            return
        terminalreporter.section("skips not in the allowlist", sep="=", red=True, bold=True)
        for nodeid, reason in self.unlisted:
            terminalreporter.line(f"{nodeid}: {reason}")
        terminalreporter.line(f"{len(self.unlisted)} skipped, not listed in {self.source}: the run fails")


def pytest_configure(config: pytest.Config) -> None:
    if not (config.getoption("--strict-skips") or os.environ.get(STRICT_ENV) == "1"):
        return
    source = Path(os.environ.get(FILE_ENV) or ALLOWLIST)
    config.pluginmanager.register(SkipGuard(load_allowlist(source), source), "mimirlite-skip-guard")
