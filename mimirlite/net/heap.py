"""Giving freed heap memory back to the OS (glibc's ``malloc_trim``), where the C library has it.

glibc keeps memory a process freed in its heap for reuse, so after peers that filled the buffer budget
leave, the resident size stays at its peak. A host that released at least :data:`TRIM_RELEASED` bytes
of peer data since its budget's peak asks glibc to return its free pages (see
``HostConfig.return_memory``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

TRIM_INTERVAL = 1.0
"""Seconds between two looks at how much peer data a host released."""
TRIM_RELEASED = 16 * 1024 * 1024
"""Bytes of peer data released since the budget's peak after which free heap pages are returned."""


@functools.cache
def malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``; None where there is none (other platforms, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)
