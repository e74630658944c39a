"""A fixture that fails a test leaving tasks running, sockets or transports unclosed, or errors logged.

Shared by tests/ and interop/ through their conftest files: ``pytest.mark.usefixtures("no_leaks")``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import AsyncIterator

import pytest


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
async def no_leaks() -> AsyncIterator[None]:
    """Fail on asyncio errors (e.g. an exception never retrieved), handler crashes, leftover tasks
    and unclosed sockets or transports. Set up first, so it checks after the other fixtures ended."""
    errors = _Collect()
    loggers = [logging.getLogger("asyncio"), logging.getLogger("mimirlite")]
    for lg in loggers:
        lg.addHandler(errors)
    try:
        yield
        for _ in range(5):  # closed transports release their sockets on the next loop turns
            await asyncio.sleep(0)
        current = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        assert not left, f"tasks left running: {left}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            gc.collect()
        leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert not leaks, f"unclosed resources: {leaks}"
    finally:
        for lg in loggers:
            lg.removeHandler(errors)
    assert not errors.records, [errors.format(r) for r in errors.records]
