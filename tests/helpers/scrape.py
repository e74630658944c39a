"""Scraping Prometheus metrics in tests: one HTTP request on 127.0.0.1, read with prometheus_client's own
text parser (tests/test_prometheus.py, tests/scenarios/test_metrics_cli.py)."""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client.parser import text_string_to_metric_families

WAIT = 10.0
"""Bound on a scrape."""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, read by prometheus_client's parser: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def val(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value (0 when absent, as a counter that never moved)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return val(after, name, **labels) - val(before, name, **labels)


async def http_get(
    port: int, path: str = "/metrics", *, method: str = "GET", headers: str = "Host: 127.0.0.1\r\n"
) -> tuple[int, dict[str, str], bytes]:
    """One request to 127.0.0.1:``port`` on a new connection, read to the end (the server closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\n{headers}\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(writer.wait_closed(), WAIT)
    return split_response(raw)


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


