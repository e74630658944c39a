"""interop/bench_relay.py's reading of a process's CPU time (R1a divides relayed MiB by it)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

INTEROP = Path(__file__).resolve().parents[2] / "interop"
if str(INTEROP) not in sys.path:
    sys.path.append(str(INTEROP))  # as when bench_relay.py runs as a script

import bench_relay  # noqa: E402


def test_cpu_seconds_follows_the_process_user_and_system_time() -> None:
    """Burning CPU here shows in /proc/<pid>/stat as os.times() counts it (both in clock ticks)."""
    before, times0 = bench_relay.cpu_seconds(os.getpid()), os.times()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    after, times1 = bench_relay.cpu_seconds(os.getpid()), os.times()
    counted = (times1.user + times1.system) - (times0.user + times0.system)
    assert after - before >= 0.25
    assert abs((after - before) - counted) <= 0.05, (after - before, counted)
