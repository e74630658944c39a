"""ClientConfig: one frozen dataclass holds every MimirClient setting; keywords still work, merged into it."""

from __future__ import annotations

import dataclasses

import pytest

from mimirlite import ClientConfig as TopClientConfig
from mimirlite import Host, HostConfig, KeyPair, MimirClient
from mimirlite.errors import LocalError
from mimirlite.mimir import ClientConfig
from mimirlite.mimir.client import MIMIR_IDENTIFY_TIMEOUT, READ_TIMEOUT

NODE = "/ip4/127.0.0.1/tcp/4001"


def test_the_top_level_name_is_the_same_class() -> None:
    assert TopClientConfig is ClientConfig


def test_the_mdns_interval_default_is_discoverys_own() -> None:
    # the client keeps its own copy, so that a client without mDNS never loads discovery.mdns
    from mimirlite.discovery import DEFAULT_INTERVAL

    assert ClientConfig().mdns_interval == DEFAULT_INTERVAL


async def test_a_config_round_trips_through_the_client() -> None:
    keypair = KeyPair.generate()
    host_config = HostConfig(dial_timeout=3.0)
    cfg = ClientConfig(
        peers=[NODE],
        keypair=keypair,
        host_config=host_config,
        identify_timeout=2.0,
        read_timeout=7.0,
        mdns_interval=9.0,
        probe_models=["echo"],
        prefer_tunnel=True,
    )
    client = MimirClient(config=cfg)
    assert client.config == cfg
    assert dataclasses.replace(client.config) == cfg
    assert client.config.peers == (NODE,) and client.config.probe_models == ("echo",)
    assert client.read_timeout == 7.0 and client.identify_timeout == 2.0 and client.prefer_tunnel
    assert client.probe_models == ["echo"]
    assert client.host.peer_id == keypair.peer_id and client.host.config is host_config
    assert client.discovery is None


async def test_keywords_still_work_and_build_the_config() -> None:
    client = MimirClient([NODE], read_timeout=4.0, prefer_tunnel=True, probe_models=["a", "b"])
    assert client.config == ClientConfig(
        peers=(NODE,), read_timeout=4.0, prefer_tunnel=True, probe_models=("a", "b")
    )
    assert client.read_timeout == 4.0 and client.prefer_tunnel
    default = MimirClient()
    assert default.config == ClientConfig()
    assert default.read_timeout == READ_TIMEOUT and default.identify_timeout == MIMIR_IDENTIFY_TIMEOUT


async def test_keywords_given_with_a_config_are_merged_into_it() -> None:
    cfg = ClientConfig(peers=(NODE,), read_timeout=7.0, identify_timeout=2.0)
    client = MimirClient(config=cfg, read_timeout=1.5)
    assert client.config == dataclasses.replace(cfg, read_timeout=1.5)
    assert client.read_timeout == 1.5 and client.identify_timeout == 2.0
    other = "/ip4/127.0.0.1/tcp/4002"
    assert MimirClient([other], config=cfg).config.peers == (other,)
    assert cfg.read_timeout == 7.0  # the caller's config is left alone


async def test_a_host_config_as_config_still_configures_the_own_host() -> None:
    host_config = HostConfig(dial_timeout=3.0)
    client = MimirClient(config=host_config)
    assert client.host.config is host_config and client.config.host_config is host_config
    with pytest.raises(TypeError):
        MimirClient(config=host_config, host_config=HostConfig())


async def test_a_shared_host_is_not_part_of_the_config() -> None:
    host = Host()
    client = MimirClient(host=host, read_timeout=3.0)
    assert client.host is host and client.config == ClientConfig(read_timeout=3.0)


def test_the_config_is_frozen() -> None:
    cfg = ClientConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.read_timeout = 1.0  # type: ignore[misc]
    assert hash(ClientConfig(peers=[NODE])) == hash(ClientConfig(peers=(NODE,)))


@pytest.mark.parametrize(
    "bad",
    [{"read_timeout": 0}, {"identify_timeout": -1.0}, {"mdns_interval": 0.0}, {"peers": NODE}],
    ids=lambda d: next(iter(d)),
)
def test_bad_values_are_local_errors(bad: dict[str, object]) -> None:
    with pytest.raises(LocalError):
        ClientConfig(**bad)  # type: ignore[arg-type]
