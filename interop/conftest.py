"""Shared fixtures of the interop tests."""

from __future__ import annotations

from tests.leakcheck import no_leaks

__all__ = ["no_leaks"]
