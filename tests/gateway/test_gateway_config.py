"""GatewayConfig: one frozen dataclass holds every Gateway setting; keywords still work, merged into it."""

from __future__ import annotations

import dataclasses

import pytest

from mimirlite import MimirClient
from mimirlite.errors import LocalError
from mimirlite.gateway import (
    DEFAULT_PORT,
    HTTP_REQUEST_TIMEOUT,
    MAX_REQUEST_BODY,
    Gateway,
    GatewayConfig,
)


async def test_a_config_round_trips_and_drives_the_gateway() -> None:
    cfg = GatewayConfig(
        host="127.0.0.1",
        port=0,
        api_key="k",
        cors_origins=["https://app.example"],
        max_body=1000,
        idle_timeout=3.0,
        request_timeout=4.0,
        write_timeout=5.0,
        max_connections=10,
        max_connections_per_ip=2,
        allow_hosts=["my.box"],
    )
    async with MimirClient() as client:
        gateway = Gateway(client, cfg)
        assert gateway.config == cfg and gateway.config.cors_origins == ("https://app.example",)
        assert (gateway.max_body, gateway.idle_timeout, gateway.request_timeout) == (1000, 3.0, 4.0)
        assert (gateway.write_timeout, gateway.max_connections, gateway.max_connections_per_ip) == (
            5.0,
            10,
            2,
        )
        assert gateway.api_key == "k" and gateway.cors is not None
        async with gateway:
            assert gateway.port != 0  # the free port chosen; the config keeps what was asked
            assert gateway.config.port == 0


async def test_keywords_still_work_and_merge_into_a_config() -> None:
    async with MimirClient() as client:
        gateway = Gateway(client, port=0, max_connections_per_ip=3, allow_hosts=["a.box"])
        assert gateway.config == GatewayConfig(port=0, max_connections_per_ip=3, allow_hosts=("a.box",))
        assert Gateway(client).config == GatewayConfig()
        assert GatewayConfig().port == DEFAULT_PORT and GatewayConfig().max_body == MAX_REQUEST_BODY
        assert GatewayConfig().request_timeout == HTTP_REQUEST_TIMEOUT
        base = GatewayConfig(port=0, idle_timeout=9.0)
        merged = Gateway(client, base, idle_timeout=2.0, api_key="x")
        assert merged.config == dataclasses.replace(base, idle_timeout=2.0, api_key="x")
        assert merged.idle_timeout == 2.0 and base.idle_timeout == 9.0
        with pytest.raises(LocalError):  # the same checks as before, from either spelling
            Gateway(client, allow_hosts=["http://my.box/"])
        with pytest.raises(LocalError):
            Gateway(client, GatewayConfig(cors_origins=["app.example"]))


def test_the_config_is_frozen() -> None:
    cfg = GatewayConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "bad",
    [{"port": 70000}, {"max_body": -1}, {"idle_timeout": 0}, {"allow_hosts": "a.box"}],
    ids=lambda d: next(iter(d)),
)
def test_bad_values_are_local_errors(bad: dict[str, object]) -> None:
    with pytest.raises(LocalError):
        GatewayConfig(**bad)  # type: ignore[arg-type]
