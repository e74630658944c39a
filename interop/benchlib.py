"""What the benchmark scripts share: a process's RSS and CPU time from /proc, and stopping a process group.

The scripts run standalone (``python interop/bench_x.py``), so this directory is on ``sys.path`` and they
``import benchlib``; stdlib only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path


def rss_kib(pid: int) -> int:
    """Process ``pid``'s resident set (VmRSS) in KiB; OSError when it is gone, RuntimeError if it has none."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def rss_mib(pid: int) -> float:
    """Process ``pid``'s resident set (VmRSS) in MiB; raises as :func:`rss_kib`."""
    return rss_kib(pid) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stop_group(
    proc: asyncio.subprocess.Process,
    *,
    interrupt_wait: float | None = None,
    stdin_wait: float | None = 5.0,
    term_wait: float = 3.0,
    kill_wait: float = 5.0,
) -> None:
    """Stop ``proc`` (started with ``start_new_session=True``) and its process group.

    SIGINT first when ``interrupt_wait`` is given (e.g. so cProfile writes its file), then stdin closed (a
    worker's signal to go; left open when ``stdin_wait`` is None), then SIGTERM, then SIGKILL to the group;
    each step waits its bound, and the next runs only if the process is still there.
    """
    if interrupt_wait is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), interrupt_wait)
    if stdin_wait is not None and proc.returncode is None and proc.stdin is not None:
        with contextlib.suppress(Exception):
            proc.stdin.close()
        if stdin_wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), stdin_wait)
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, kill_wait)):
        if proc.returncode is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), wait)
