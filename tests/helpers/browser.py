"""A real browser for the chat page's tests: Debian's headless Chromium driven by Playwright for Python.

Playwright launches the system's ``chromium`` (``executable_path``; ``playwright install`` is never run,
no browser is downloaded) with a fresh profile in the test's temporary directory. :func:`open_page`
gives a :class:`BrowserPage`: the page, the dialogs it opened (each dismissed), its uncaught errors and
Content-Security-Policy violations, and :meth:`BrowserPage.shot` saving a screenshot of each state
under :func:`artifacts_dir` (``test-artifacts/page/`` at the repository root, or
``$MIMIRLITE_ARTIFACTS/page``).
Without chromium or playwright, :func:`require_browser` skips the test with the reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import ConsoleMessage, Dialog, Page

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
VIEWPORT = {"width": 1100, "height": 700}
"""The window size of every page (that of the README's screenshot)."""
WAIT_MS = 10_000
"""Bound of every wait in the browser, in milliseconds."""


def chromium_path() -> str | None:
    """The system's Chromium (Debian's ``chromium`` package), if installed."""
    return shutil.which("chromium") or next(
        (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.access(p, os.X_OK)), None
    )


def require_browser() -> str:
    """The Chromium to launch; skips the test (with the reason) without it or without playwright."""
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright Python package is not installed (pip install playwright; .ci/run does)")
    path = chromium_path()
    if path is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    return path


def artifacts_dir() -> Path:
    """Where the screenshots go (made if missing): ``$MIMIRLITE_ARTIFACTS/page``, else
    ``test-artifacts/page`` at the repository root."""
    base = Path(os.environ.get("MIMIRLITE_ARTIFACTS") or ROOT / "test-artifacts")
    folder = base / "page"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class BrowserPage:
    """A page in the browser and what it did."""

    page: Page
    name: str
    """Prefix of the screenshots' file names (the test's name)."""
    dialogs: list[str] = field(default_factory=list)
    """The message of every ``alert``/``confirm``/``prompt`` the page opened (each dismissed)."""
    errors: list[str] = field(default_factory=list)
    """Uncaught exceptions and unhandled rejections of the page's scripts."""
    violations: list[str] = field(default_factory=list)
    """Console messages about the Content-Security-Policy (a blocked script, style or request)."""
    shots: list[Path] = field(default_factory=list)

    async def shot(self, state: str) -> Path:
        """A screenshot of the page now, saved as ``<test>-<state>.png``."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{self.name}-{state}")
        path = artifacts_dir() / f"{safe}.png"
        await self.page.screenshot(path=str(path))
        self.shots.append(path)
        return path

    async def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.violations.append(message.text)

    def check(self) -> None:
        """Fail on a dialog, a script error or a CSP violation seen so far."""
        assert not self.dialogs, f"the page opened dialogs: {self.dialogs}"
        assert not self.errors, f"the page's scripts failed: {self.errors}"
        assert not self.violations, f"Content-Security-Policy violations: {self.violations}"


@contextlib.asynccontextmanager
async def open_page(url: str, profile: Path, name: str) -> AsyncIterator[BrowserPage]:
    """Headless Chromium with a fresh profile in ``profile``, one page loaded from ``url``; closed (the
    browser process ended) on the way out."""
    executable = require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport=VIEWPORT,  # type: ignore[arg-type]
            color_scheme="light",
        )
        try:
            context.set_default_timeout(WAIT_MS)
            page = context.pages[0] if context.pages else await context.new_page()
            view = BrowserPage(page, name)
            page.on("dialog", view._dialog)
            page.on("pageerror", lambda exc: view.errors.append(str(exc)))
            page.on("console", view._console)
            await page.goto(url)
            yield view
        finally:
            await context.close()
